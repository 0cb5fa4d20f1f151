"""The DRBD backend: find members, pair them by resource, build the tree."""

from __future__ import annotations

import json
import os
import posixpath
import re
import threading
from dataclasses import dataclass, field

from pvfs.backend import Backend
from pvfs.errors import PvfsError, UsageError
from pvfs.nodes import Dir, File, GeneratedFile, Symlink
from pvfs.proxmox import parse_volname
from pvfs.proxmox.view import Locator
from pvfs.source import FileSource, SliceSource

from . import CLI_OPTIONS
from . import pair as P
from . import structs as S
from .meta import (FLEX_EXTERNAL, INTERNAL, MIN_DEVICE, DrbdError, MdLocation, magic_at, read_activity_log,
                   read_bitmap, read_meta, uuid_hex)

DIVERGED_FILE_CAP = 1 << 20  # bytes of each version shown per range in diverged/
DIVERGED_MAX_RANGES = 1000  # ranges shown as directories in diverged/
MAX_RANGES_FILE = 16 << 20
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


class Member:
    """One DRBD node found during discovery."""

    def __init__(self, volume, kind, md=None, md_source=None, md_path=None, error=None):
        self.volume = volume
        self.kind = kind  # "node" | "md-only" (an external meta-data image on its own)
        self.md = md
        self.md_source = md_source
        self.md_path = md_path  # external meta data: the image it came from
        self.error = error
        self.letter = None
        self.data = None  # SliceSource of the replicated area
        self.data_volume = None
        self.order = None


@dataclass
class DrbdState:
    """What the backend keeps for one discovery (``ctx.state(backend)``)."""

    round: int = 0  # group key generation: members found after a group opened form the next
    members: dict = field(default_factory=dict)  # id(volume) -> Member
    md_sources: dict = field(default_factory=dict)  # external meta-data image path -> Source
    specs: list | None = None  # parsed --drbd-md values


def _state(ctx) -> DrbdState:
    return ctx.state(DRBD)


def _split_spec(text, what):
    """``[RESOURCE=]VALUE`` -> (resource or None, value)."""
    if "=" in text:
        k, v = text.split("=", 1)
        if not k or not v:
            raise UsageError(f"{what}: expected [RESOURCE=]VALUE, got {text!r}")
        return k, v
    return None, text


def _md_specs(ctx):
    """``--drbd-md DEVICE=MD_IMAGE[@INDEX]`` values, parsed once."""
    st = _state(ctx)
    if st.specs is None:
        specs = []
        for text in ctx.options.get("drbd_md") or []:
            if "=" not in text:
                ctx.report.add("error", "drbd", "--drbd-md", "bad-option",
                               f"--drbd-md {text!r}: expected DEVICE=MD_IMAGE[@INDEX]")
                continue
            dev, md = text.split("=", 1)
            index = None
            if "@" in md and not os.path.exists(md):
                md, _, idx = md.rpartition("@")
                if not idx.isdigit():
                    ctx.report.add("error", "drbd", "--drbd-md", "bad-option",
                                   f"--drbd-md {text!r}: the index after @ must be a number")
                    continue
                index = int(idx)
            specs.append((dev, md, MdLocation("external", index)))
        st.specs = specs
    return st.specs


def _names(volume, dev):
    """Whether ``dev`` (an input path, a volume name or tree path) names ``volume``."""
    if volume.input_path and os.path.abspath(dev) == volume.input_path:
        return True
    return dev in (volume.name, volume.path) or volume.path.endswith("/" + dev)


def _spec_for(volume, ctx):
    for dev, md, loc in _md_specs(ctx):
        if _names(volume, dev):
            return md, loc
    return None


def _md_source(ctx, path):
    st = _state(ctx)
    key = os.path.abspath(path)
    src = st.md_sources.get(key)
    if src is None:
        src = st.md_sources[key] = FileSource(path)
    return src


def _is_md_image(volume, ctx):
    """Whether ``volume`` is an input named as the meta-data image of some --drbd-md."""
    if not volume.input_path:
        return False
    return any(os.path.abspath(md) == volume.input_path for _, md, _ in _md_specs(ctx))


class DrbdBackend(Backend):
    name = "drbd"
    grouped = True
    joins_timelines = True  # the copies of a stacked resource lie in different outer nodes
    #: Opens after every other group (an LVM VG whose LVs are DRBD backing devices, as
    #: LINSTOR makes them), so that both nodes of a resource are paired however deep
    #: each one was found.
    phase = 1
    cli_options = list(CLI_OPTIONS)

    def new_state(self, ctx):
        return DrbdState()

    # -- probing ---------------------------------------------------------------
    def probe(self, volume, ctx):
        try:
            return self._probe(volume, ctx)
        except PvfsError as e:
            if volume.parent is None or volume.parent.source is not volume.source:
                # (a raw disk.raw is its input again: reported once)
                ctx.report.add("error", self.name, volume.path, "bad-meta-data", str(e))
            return 0.0

    def _probe(self, volume, ctx):
        spec = _spec_for(volume, ctx)
        if spec is not None:
            md = read_meta(_md_source(ctx, spec[0]), spec[1], volume.source.size)
            return 100.0 if not md.problems else 60.0
        src = volume.source
        if src.size >= MIN_DEVICE and magic_at(src, INTERNAL.md_offset(src.size)) is not None:
            md = read_meta(src, INTERNAL)
            return 100.0 if not md.problems else 60.0
        if src.size >= 4096 and volume.role == "input" and magic_at(src, 0) is not None:
            return 60.0  # an external meta-data image (flexible layout)
        return 0.0

    def member_key(self, volume, ctx):
        st = _state(ctx)
        spec = _spec_for(volume, ctx)
        if spec is not None:
            mdsrc = _md_source(ctx, spec[0])
            md = read_meta(mdsrc, spec[1], volume.source.size)
            m = Member(volume, "node", md, mdsrc, os.path.abspath(spec[0]))
        elif (volume.source.size >= MIN_DEVICE
              and magic_at(volume.source, INTERNAL.md_offset(volume.source.size)) is not None):
            m = Member(volume, "node", read_meta(volume.source, INTERNAL), volume.source)
        else:
            try:
                md = read_meta(volume.source, FLEX_EXTERNAL)
                m = Member(volume, "md-only", md, volume.source)
            except DrbdError as e:
                m = Member(volume, "md-only", error=str(e))
        st.members[id(volume)] = m
        key = ("members", st.round)
        if ctx.group_opened(self, key):  # a late member (found inside a later layer)
            st.round += 1
            key = ("members", st.round)
        return key

    # -- assembling --------------------------------------------------------------
    def open_group(self, key, volumes, ctx):
        st = _state(ctx)
        members = [st.members[id(v)] for v in volumes if id(v) in st.members]
        inputs = [i["path"] for i in ctx.inputs]
        vol_index = {id(v): i for i, v in enumerate(ctx.volumes)}
        for m in members:
            root = m.volume
            while root.parent is not None:
                root = root.parent
            rank = inputs.index(root.input_path) if root.input_path in inputs else len(inputs)
            m.order = (rank, vol_index.get(id(m.volume), 0))
        members.sort(key=lambda m: m.order)
        for m in members:
            if m.kind == "md-only":
                self._show_md_only(m, ctx)
        nodes = [m for m in members if m.kind == "node"]
        # union-find over "shares a generation UUID"
        parent = list(range(len(nodes)))

        def find(i):
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for i in range(len(nodes)):
            for j in range(i + 1, len(nodes)):
                if P.same_resource(nodes[i].md, nodes[j].md):
                    parent[find(j)] = find(i)
        for text in ctx.options.get("drbd_pair") or []:  # pairs the user asserts
            first, _, second = text.partition("=")
            hit = [[i for i, m in enumerate(nodes) if _names(m.volume, dev)] for dev in (first, second)]
            if not first or not second or len(hit[0]) != 1 or len(hit[1]) != 1:
                ctx.report.add("error", self.name, "--drbd-pair", "bad-option",
                               f"--drbd-pair {text!r}: each side must name exactly one DRBD "
                               "backing device (input path or volume name)")
                continue
            parent[find(hit[1][0])] = find(hit[0][0])
        clusters = {}
        for i, m in enumerate(nodes):
            clusters.setdefault(find(i), []).append(m)
        for cluster in sorted(clusters.values(), key=lambda c: c[0].order):
            try:
                Resource(cluster, ctx).build()
            except (PvfsError, OSError) as e:  # one broken resource must not hide the others
                ctx.report.add("error", self.name, cluster[0].volume.path, "open-failed", str(e))

    def _show_md_only(self, m, ctx):
        where = m.volume.homes[0] if m.volume.homes else None
        if m.error:
            ctx.report.add("error", self.name, m.volume.path, "bad-meta-data",
                           f"external DRBD meta data: {m.error}")
            return
        used = _is_md_image(m.volume, ctx)
        msg = ("external DRBD meta data (used by --drbd-md)" if used else
               "external DRBD meta data; pass --drbd-md DEVICE=" + (m.volume.input_path or m.volume.name)
               + " to read its device's data with it")
        ctx.report.add("info", self.name, m.volume.path, "external-meta-data", msg)
        if where is not None:
            doc = json.dumps({"external_meta_data": m.md.to_json(), "note": msg}, indent=1) + "\n"
            where.dir().add("drbd-meta.json", GeneratedFile(lambda: doc.encode()),
                            report=ctx.report, path_hint=where.path)


_LINSTOR_VOLUME = re.compile(r"_\d{5}$")  # LINSTOR backing LVs: <resource>_<volume number>


def _json_lines(doc) -> bytes:
    """JSON with one top-level key a line: readable, and fast (the C encoder) for long lists."""
    body = ",\n".join(f" {json.dumps(k)}: {json.dumps(v, separators=(', ', ': '))}"
                       for k, v in doc.items())
    return ("{\n" + body + "\n}\n").encode()


def _stem(name):
    for ext in (".img", ".raw", ".bin", ".dd", ".qcow2", ".vmdk"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    return _LINSTOR_VOLUME.sub("", name)


def _member_stem(m):
    outer = m.volume.info.get("drbd", {}).get("resource")
    if m.volume.role == "drbd-data" and outer:  # DRBD stacked on DRBD
        return f"{outer}-stacked"
    return _stem(m.volume.name)


def resource_name(members):
    """The common part of the members' names (``r0-a.img``, ``r0-b.img`` -> ``r0``)."""
    stems = [_member_stem(m) for m in members]
    prefix = os.path.commonprefix(stems)
    if len(members) > 1:
        prefix = prefix.rstrip("-_. ")
        for word in ("node", "Node", "NODE"):
            if prefix.endswith(word):
                prefix = prefix[: -len(word)].rstrip("-_. ")
    if len(prefix) >= 2:
        return prefix
    return f"resource-{members[0].md.current_uuid & ~1:016x}"


def _letter(i):
    return LETTERS[i] if i < len(LETTERS) else f"N{i + 1}"


def _option_for(ctx, key, resource, what):
    """The value of a repeatable ``[RESOURCE=]VALUE`` option for ``resource``."""
    found = None
    for text in ctx.options.get(key) or []:
        res, value = _split_spec(text, what)
        if res is None and found is None or res == resource:
            found = value
    return found


def order_nodes(nodes, input_of):
    """Nodes in letter order (A, B, ...), from the meta data only, never from argument order.

    DRBD 9 (v09): ascending ``node_id`` (the node id of the superblock; unique per resource).
    DRBD 8 (v08) has no node id: of two nodes, the newer one by generation UUIDs
    (:func:`pair.uuid_compare`: A-newer / B-newer) comes first; otherwise (split brain,
    same generation, unrelated) ascending device UUID, then current UUID.  The input path is
    the last tie-break only (two copies of the same device).  Returns ``(nodes, rule)``.
    """
    def key(m):
        nid = m.md.node_id if m.md.node_id is not None and m.md.node_id >= 0 else 1 << 32
        return (nid, m.md.device_uuid & ~S.UUID_PRIMARY, m.md.current_uuid & ~S.UUID_PRIMARY,
                str(input_of(m)))

    ordered = sorted(nodes, key=key)
    if all(m.md.version == "v09" and m.md.node_id >= 0 for m in ordered):
        return ordered, "v09: ascending node_id from each superblock"
    rule = "v08 (no node id): ascending device UUID, then current UUID"
    if len(ordered) == 2:
        rel = P.uuid_compare(ordered[0].md, ordered[1].md)["relation"]
        if rel == "B-newer":
            ordered.reverse()
        if rel in ("A-newer", "B-newer"):
            rule = "v08 (no node id): the newer node by generation UUIDs first"
    return ordered, rule


class Resource:
    """One resource: its nodes, their pairing and the files made from them."""

    def __init__(self, nodes, ctx):
        self.nodes, self.letter_rule = order_nodes(nodes, self._input_of)
        self.ctx = ctx
        self.name = resource_name(nodes)
        self.dir = None
        self.path = None
        self.analysis = None
        self.merged_volume = None

    def build(self):
        ctx = self.ctx
        top = ctx.storage("drbd")
        used = top.add(self.name, Dir(), report=ctx.report, layer="drbd", path_hint="storage/drbd")
        self.name = used
        self.dir = top.get(used)
        self.path = f"storage/drbd/{used}"
        for i, m in enumerate(self.nodes):
            m.letter = _letter(i)
            self._add_node(m)
        if len(self.nodes) >= 2:
            a, b = self.nodes[0], self.nodes[1]
            self.analysis = PairAnalysis(self, a, b)
            self.analysis.report_verdict()
            self.dir.add("diff.json", GeneratedFile(self.analysis.render_json),
                         report=ctx.report, path_hint=self.path)
            self.dir.add("diverged", Dir(loader=self.analysis.fill_diverged),
                         report=ctx.report, path_hint=self.path)
            self._add_merged()
            if (ctx.options.get("drbd_compare") or "lazy") == "now":
                self.analysis.doc()
            if len(self.nodes) > 2:
                ctx.report.add("info", "drbd", self.path, "more-nodes",
                               f"{len(self.nodes)} nodes of one resource: all are shown; "
                               "diff.json, diverged/ and merged.raw cover nodes A and B")
        else:
            # the peer is DRBD's redundancy: without it the data is one copy (degraded),
            # and the peer is named from this node's bitmap slots
            peers = sorted({s.node_id for s in self.nodes[0].md.used_slots()
                            if s.node_id is not None and s.node_id != self.nodes[0].md.node_id})
            who = (", ".join(f"node-id {p}" for p in peers) if peers else "the peer")
            ctx.report.add("warning", "drbd", self.path, "single-node",
                           f"no peer of this DRBD node among the inputs ({who} missing): only "
                           f"its data is shown, with no second copy")
            self._report_own_bitmaps(self.nodes[0])
        self._add_proxmox_view()
        meta = {"resource": self.name, "letter_rule": self.letter_rule,
                "nodes": {m.letter: self._node_doc(m) for m in self.nodes}}
        text = (json.dumps(meta, indent=1) + "\n").encode()
        self.dir.add("meta.json", GeneratedFile(lambda: text), report=ctx.report, path_hint=self.path)

    def _add_proxmox_view(self):
        """A resource named like a Proxmox disk (LINSTOR: ``vm-100-disk-1``) is that VM's disk.

        One node: its data.  Two or more: merged.raw, i.e. the rule the user chose
        (default: the newer node by generation UUIDs, else A); the report says so.
        """
        if parse_volname(self.name) is None:
            return
        vol = self.merged_volume if self.merged_volume is not None else self.nodes[0].data_volume
        if self.ctx.add_proxmox(Locator("drbd", "", self.name), vol) is not None:
            what = "merged.raw" if vol is self.merged_volume else f"node-{self.nodes[0].letter}.raw"
            self.ctx.report.add("info", "drbd", self.path, "proxmox-disk",
                                f"{self.name} is shown in the VM view (vms/ or cts/) as {what}")

    def _bitmap_summary(self, m):
        """Per peer slot with a bitmap: how much this node marks out of sync towards it."""
        out = []
        for slot in m.md.used_slots():
            entry = {"peer_node_id": slot.node_id, "bitmap_index": slot.bitmap_index,
                     "bitmap_uuid": uuid_hex(slot.bitmap_uuid)}
            try:
                bm = read_bitmap(m.md_source, m.md, slot.bitmap_index)
                entry.update(bits_set=bm.bits_set,
                             bytes_out_of_sync=sum(n for _, n in bm.ranges),
                             ranges_truncated=bm.truncated)
            except (PvfsError, OSError) as e:
                entry["error"] = str(e)
            out.append(entry)
        return out

    def _report_own_bitmaps(self, m):
        for entry in self._bitmap_summary(m):
            if entry.get("bits_set"):
                peer = entry["peer_node_id"]
                towards = "its peer" if peer is None else f"node-id {peer}"
                self.ctx.report.add("info", "drbd", m.data_volume.path, "bitmap-out-of-sync",
                                    f"the bitmap towards {towards} marks {entry['bits_set']} blocks "
                                    f"({entry['bytes_out_of_sync']} bytes) out of sync; that peer "
                                    "is not among the inputs")

    def _node_doc(self, m):
        doc = {"input": self._input_of(m), "volume": m.volume.path,
               "data": f"{self.path}/node-{m.letter}.raw"}
        if m.md_path:
            doc["meta_data_image"] = m.md_path
        doc.update(m.md.to_json())
        doc["bitmaps"] = self._bitmap_summary(m)
        return doc

    @staticmethod
    def _input_of(m):
        root = m.volume
        while root.parent is not None:
            root = root.parent
        return root.input_path

    def _add_node(self, m):
        ctx, md = self.ctx, m.md
        fname = f"node-{m.letter}.raw"
        m.data = SliceSource(m.volume.source, 0, md.data_size, label=f"{self.name}/{fname}",
                             bad=ctx.bad())
        vol = ctx.add_volume(m.data, self.dir, fname, self.path, "drbd-data", parent=m.volume,
                             children_home="parts")
        m.data_volume = vol
        # Each node is its own timeline: what lies inside (an LVM VG, a ZFS pool) is
        # assembled once per node, not merged across nodes (pvfs.discover.timeline_of).
        vol.timeline = f"drbd:{self.name}:{m.letter}"
        vol.info["drbd"] = {"resource": self.name, "node": m.letter, "md_format": md.version,
                            "meta_data": md.location.describe(),
                            "node_id": md.node_id if md.version == "v09" else None,
                            "current_uuid": uuid_hex(md.current_uuid),
                            "flags": md.to_json()["flag_names"], "input": self._input_of(m)}
        ctx.report.add("info", "drbd", vol.path, "drbd-node",
                       f"node {m.letter} of DRBD resource {self.name}: {m.volume.path} "
                       f"({md.version}, {md.location.describe()} meta data"
                       + (f", node-id {md.node_id}" if md.version == "v09" else "") + ")")
        for p in md.problems:
            ctx.report.add("warning", "drbd", vol.path, "meta-data", p)
        have = m.volume.source.size
        if md.data_size > have:  # external meta data over a truncated backing device
            ctx.report.add("error", "drbd", vol.path, "truncated",
                           f"the data area ({md.data_size} bytes) goes past the end of the "
                           f"backing device ({have} bytes); the rest is unreadable",
                           [(have, md.data_size - have)])
        if md.flags & S.MDF_CRASHED_PRIMARY:
            ctx.report.add("warning", "drbd", vol.path, "crashed-primary",
                           "this node was a primary that crashed (MDF_CRASHED_PRIMARY)")
        if not md.al_clean:
            try:
                al = read_activity_log(m.md_source, md)
                ctx.report.add("warning", "drbd", vol.path, "activity-log-dirty",
                               f"activity log not applied ({al.valid}/{al.transactions} valid "
                               f"transactions): {len(al.hot_extents)} hot 4 MiB extents may hold "
                               f"writes no bitmap records{'; ' + al.note if al.note else ''}",
                               al.ranges(md.data_size))
            except (PvfsError, OSError) as e:
                ctx.report.add("warning", "drbd", vol.path, "activity-log-dirty",
                               f"activity log not applied and not readable: {e}")
        # a pointer from where the backing device is shown
        target = f"{self.path}/{fname}"
        for home in m.volume.homes[:1]:
            rel = posixpath.relpath(target, home.path)
            home.dir().add("drbd-data.raw", Symlink(rel), report=ctx.report, path_hint=home.path)

    def _add_merged(self):
        ctx, a, b = self.ctx, self.nodes[0], self.nodes[1]
        size = min(a.md.data_size, b.md.data_size)
        if a.md.data_size != b.md.data_size:
            ctx.report.add("warning", "drbd", self.path, "size-mismatch",
                           f"the nodes' data areas differ in size ({a.md.data_size} and "
                           f"{b.md.data_size} bytes); merged.raw and the comparison cover {size}")
        letters = [m.letter for m in self.nodes[:2]]
        try:
            prefer = _option_for(ctx, "drbd_prefer", self.name, "--drbd-prefer")
            if prefer is not None:
                prefer = prefer.upper().removeprefix("NODE-")
                if prefer not in letters:
                    raise UsageError(f"--drbd-prefer {prefer!r}: expected one of {', '.join(letters)}")
                why = f"--drbd-prefer {prefer}"
            else:
                rel = self.analysis.verdict["relation"]
                prefer = "B" if rel == "B-newer" else "A"
                why = (f"default: node {prefer}, " +
                       ("the newer one by generation UUIDs" if rel in ("A-newer", "B-newer")
                        else f"the first input (the UUIDs say {rel})"))
            overrides = []
            rfile = _option_for(ctx, "drbd_ranges", self.name, "--drbd-ranges")
            if rfile is not None:
                with open(rfile, "rb") as f:
                    text = f.read(MAX_RANGES_FILE + 1)
                if len(text) > MAX_RANGES_FILE:
                    raise UsageError(f"ranges file {rfile} is larger than {MAX_RANGES_FILE} bytes")
                overrides = P.parse_ranges_file(text.decode("utf-8", "replace"), letters, size)
                why += f", then the ranges of {os.path.abspath(rfile)}"
        except (PvfsError, OSError) as e:
            ctx.report.add("error", "drbd", f"{self.path}/merged.raw", "bad-merge-rule",
                           f"merged.raw not built: {e}")
            return
        src, pieces = P.merged_source(size, {"A": a.data, "B": b.data}, prefer, overrides,
                                      label=f"{self.name}/merged.raw")
        self.analysis.merge_rule = {"rule": why, "default": prefer,
                                    "pieces": [[o, n, node] for o, n, node in pieces[:10000]],
                                    "pieces_truncated": len(pieces) > 10000}
        vol = ctx.add_volume(src, self.dir, "merged.raw", self.path, "drbd-merged",
                             parent=a.data_volume, probe=False, children_home=None)
        vol.info["drbd"] = {"resource": self.name, "merged": why}
        self.merged_volume = vol


class PairAnalysis:
    """Nodes A and B of one resource: UUID verdict, bitmaps, byte comparison (lazy)."""

    def __init__(self, resource, a, b):
        self.resource = resource
        self.ctx = resource.ctx
        self.a, self.b = a, b
        self.size = min(a.md.data_size, b.md.data_size)
        self.verdict = P.uuid_compare(a.md, b.md)
        self.merge_rule = None
        self._doc = None
        self._text = None
        self._lock = threading.Lock()
        self.bitmaps = {}
        for m, other in ((a, b), (b, a)):
            self.bitmaps[m.letter] = self._bitmap(m, other)

    def _bitmap(self, m, other):
        md = m.md
        slot = md.slot_for(other.md.node_id if other.md.version == "v09" else None)
        if slot is None or slot.bitmap_index < 0:
            return {"error": "no bitmap slot for the peer"}
        try:
            bm = read_bitmap(m.md_source, md, slot.bitmap_index)
        except (PvfsError, OSError) as e:
            self.ctx.report.add("warning", "drbd", m.data_volume.path, "bitmap-unreadable",
                                f"bitmap towards node {other.letter}: {e}")
            return {"error": str(e)}
        if bm.bits_past_end:
            self.ctx.report.add("warning", "drbd", m.data_volume.path, "bitmap-past-end",
                                f"{bm.bits_past_end} bitmap bits are set beyond the data area")
        doc = bm.to_json()
        doc["towards"] = other.letter
        doc["bitmap_uuid"] = uuid_hex(slot.bitmap_uuid)
        doc["_ranges"] = bm.ranges
        return doc

    def bitmap_union(self):
        rs = []
        for doc in self.bitmaps.values():
            rs.extend(doc.get("_ranges", []))
        return P.merge_ranges(r for r in rs if r[0] < self.size)

    def changed_on(self):
        """Bitmap claims split by node: ``A-only``, ``B-only`` and ``both`` (both bitmaps set).

        A block in ``both`` was written on both nodes after they parted: neither node's
        version is the whole truth, so a merge must pick by hand.
        """
        def own(m):
            return P.merge_ranges(r for r in self.bitmaps.get(m.letter, {}).get("_ranges", [])
                                  if r[0] < self.size)
        ra, rb = own(self.a), own(self.b)
        out = {}
        for key, rs in (("A-only", P.subtract(ra, rb)), ("B-only", P.subtract(rb, ra)),
                        ("both", P._intersect(ra, rb))):
            blocks, cut = P.blocks_of(rs)
            out[key] = {"ranges": [[o, n] for o, n in rs], "bytes": sum(n for _, n in rs),
                        "blocks": blocks, "blocks_truncated": cut}
        return out

    def report_verdict(self):
        v, path = self.verdict, self.resource.path
        a, b = self.a, self.b
        who = f"A = {a.volume.path}, B = {b.volume.path}"
        sev = "warning" if v["relation"] in ("split-brain", "unrelated") else "info"
        ctx = self.ctx
        hints = "; ".join(v["hints"])
        ctx.report.add(sev, "drbd", path, f"drbd-{v['relation']}",
                       f"{v['relation']}: {v['rule']} ({who})" + (f"; {hints}" if hints else ""))
        union = self.bitmap_union()
        if union:
            ctx.report.add("info", "drbd", path, "bitmap-out-of-sync",
                           f"the bitmaps mark {sum(n for _, n in union)} bytes out of sync", union)

    # -- lazy comparison -------------------------------------------------------------
    def doc(self):
        with self._lock:
            if self._doc is None:
                self._doc = self._build()
            return self._doc

    def render_json(self):
        if self._text is None:
            doc = self.doc()
            self._text = _json_lines(doc)
        return self._text

    def _build(self):
        a, b, ctx = self.a, self.b, self.ctx
        union = self.bitmap_union()
        doc = {
            "resource": self.resource.name,
            "nodes": {m.letter: {"input": Resource._input_of(m), "volume": m.volume.path,
                                 "data": f"{self.resource.path}/node-{m.letter}.raw",
                                 "md_format": m.md.version,
                                 "node_id": m.md.node_id if m.md.version == "v09" else None,
                                 "current_uuid": uuid_hex(m.md.current_uuid),
                                 "history_uuids": m.md.to_json()["history_uuids"],
                                 "flags": m.md.to_json()["flag_names"]}
                      for m in (a, b)},
            "size": self.size,
            "block_size": S.BM_BLOCK_SIZE_4k,
            "verdict": {k: v for k, v in self.verdict.items()},
            "in_sync": self.verdict["relation"] == "in-sync" and not union,
            "bitmaps": {k: {kk: vv for kk, vv in v.items() if kk != "_ranges"}
                        for k, v in self.bitmaps.items()},
            "bitmap_claims": {"ranges": [[o, n] for o, n in union],
                              "bytes": sum(n for _, n in union)},
        }
        blocks, cut = P.blocks_of(union)
        doc["bitmap_claims"]["blocks"] = blocks
        doc["changed_on"] = self.changed_on()
        doc["bitmap_claims"]["blocks_truncated"] = cut
        mode = ctx.options.get("drbd_compare") or "lazy"
        if mode == "off":
            doc["compared"] = None
            doc["note"] = "byte comparison switched off (--drbd-compare off)"
            self.diverged = union
        else:
            name, size = self.resource.name, max(1, self.size)
            ranges, nblocks, truncated, bad = P.compare_sources(
                a.data, b.data, self.size,
                progress=lambda pos: ctx.note_progress(
                    f"drbd {name}: comparing A and B, {pos * 100 // size}%"))
            blocks, cut = P.blocks_of(ranges)
            missed = P.subtract(ranges, union)
            clean = P.subtract(union, ranges)
            doc["compared"] = {
                "method": f"byte comparison in {P.COMPARE_CHUNK >> 20} MiB chunks, "
                          f"{S.BM_BLOCK_SIZE_4k}-byte blocks; holes in both count as equal",
                "ranges": [[o, n] for o, n in ranges], "ranges_truncated": truncated,
                "bytes": sum(n for _, n in ranges), "blocks_differing": nblocks,
                "blocks": blocks, "blocks_truncated": cut,
                "unreadable": [[o, n] for o, n in bad],
            }
            doc["differ_but_not_in_bitmaps"] = [[o, n] for o, n in missed]
            doc["in_bitmaps_but_equal"] = [[o, n] for o, n in clean]
            self.diverged = ranges
            ctx.report.add("info", "drbd", self.resource.path, "compared",
                           f"byte comparison: {nblocks} blocks of {S.BM_BLOCK_SIZE_4k} bytes "
                           f"differ between A and B ({len(missed)} ranges no bitmap marks)", ranges)
            if missed:
                ctx.report.add("warning", "drbd", self.resource.path, "bitmap-missed",
                               f"{sum(n for _, n in missed)} bytes differ between the nodes "
                               "but no bitmap marks them (a bitmap that lies, or writes "
                               "outside DRBD)", missed)
            if bad:
                # the unreadable bytes are lost entries of their node; here only the
                # comparison is incomplete
                ctx.report.add("warning", "drbd", self.resource.path, "compare-unreadable",
                               "some ranges could not be compared (unreadable)", bad)
        doc["diverged_dir"] = {
            "ranges_shown": min(len(self.diverged), DIVERGED_MAX_RANGES),
            "ranges_total": len(self.diverged),
            "file_cap_bytes": DIVERGED_FILE_CAP,
            "note": f"diverged/{{a-only,b-only,both,unmarked}}/<offset>+<length>/node-A.bin and "
                    f"node-B.bin hold each version of a "
                    f"range, at most {DIVERGED_FILE_CAP} bytes each and at most "
                    f"{DIVERGED_MAX_RANGES} ranges; node-A.raw/node-B.raw have everything",
        }
        doc["merged"] = self.merge_rule
        return doc

    def diverged_split(self):
        """``self.diverged`` split by whose bitmap marks it: a-only, b-only, both, unmarked."""
        on = self.doc()["changed_on"]
        cats = {k: [tuple(r) for r in on[src]["ranges"]]
                for k, src in (("a-only", "A-only"), ("b-only", "B-only"), ("both", "both"))}
        out = {k: P._intersect(self.diverged, rs) for k, rs in cats.items()}
        out["unmarked"] = P.subtract(self.diverged, self.bitmap_union())
        return out

    def fill_diverged(self, d):
        split = self.diverged_split()
        left, shown_n, total = DIVERGED_MAX_RANGES, 0, 0
        for kind, ranges in split.items():
            kdir = Dir()
            shown = ranges[:max(0, left)]
            left -= len(shown)
            shown_n += len(shown)
            total += len(ranges)
            for off, ln in shown:
                sub = Dir()
                n = min(ln, DIVERGED_FILE_CAP)
                for m in (self.a, self.b):
                    sub.add(f"node-{m.letter}.bin", File(SliceSource(m.data, off, n,
                                                                     label=f"node-{m.letter}@{off:#x}")))
                kdir.add(f"{off:#014x}+{ln:#x}", sub)
            d.add(kind, kdir)
        note = (f"{shown_n} of {total} diverged ranges, by whose bitmap marks them: a-only/, "
                "b-only/, both/ (written on both nodes), unmarked/ (bytes differ, no bitmap "
                f"says so); each file holds at most {DIVERGED_FILE_CAP} bytes of its range. "
                "See ../diff.json.\n").encode()
        d.add("README.txt", GeneratedFile(lambda: note))


DRBD = DrbdBackend()
