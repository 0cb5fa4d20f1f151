"""The LVM2 backend: PVs grouped by VG UUID, LVs and thin volumes into the tree.

Tree::

    storage/lvm/<vg>/<lv>                      every visible LV (raw), partitions in <lv>.parts/
    storage/lvm/<vg>/.pool/<pool>/tmeta|tdata   thin-pool internals (for experts and carving)
    storage/lvm/<vg>/.pool/<pool>/orphans/thin-<id>   thin devices the LVM text does not name
    storage/lvm/<vg>/.pool/<pool>/removed/<lv>  thin LVs removed since an older generation
    storage/lvm/<vg>/.hidden/<lv>               other hidden LVs (pmspare, mirror/raid images)
    storage/lvm/<vg>/.metadata/seqno-<N>.vg     every VG text generation, as found
    vms/<vmid>/disk-<n>.raw                     vm-<vmid>-disk-<n>
    vms/<vmid>/snapshots/<snap>/disk-<n>.raw    snap_vm-<vmid>-disk-<n>_<snap>
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from pvfs.backend import BLOCK_ROLES, INPUT, Backend
from pvfs.cache import METADATA_CACHE
from pvfs.errors import UnreadableError
from pvfs.nodes import Dir, File
from pvfs.proxmox.view import Locator
from pvfs.source import BytesSource, MissingSource

from . import CLI_OPTIONS
from . import structs as S
from .config import parse_config
from .errors import LvmError, ThinError
from .label import headless_mda, looks_like_backup, read_backup, read_pv
from .thin import ThinPool, ThinSource
from .vg import VolumeGroup

#: Group key of PVs without a metadata area (``pvcreate --metadatacopies 0``): they
#: are matched by PV UUID when a VG that names them is assembled.
NO_MDA_KEY = "pv-without-metadata"
PV_ROLES = BLOCK_ROLES
#: An input file may be a VG metadata backup (vgcfgbackup, /etc/lvm/backup/<vg>).
ROLES = PV_ROLES | {INPUT}
_SNAP_RE = re.compile(r"^snap_((?:vm|base)-\d+-disk-\d+)_(.+)$")


#: VG texts at least this long are parsed once and kept in the index store (a VG of a
#: thousand LVs is ~230 KB of text, ~45,000 tokens: 60 ms to parse, 2 ms to load); the
#: shorter ones parse in a few milliseconds.
CACHED_TEXT_MIN = 64 << 10
VG_TEXT_INDEX_VERSION = 1


def config_parser(backend, ctx, path):
    """``parse_config``, keeping the result of long VG texts in the index store
    (pvfs/index.py), keyed by the text's SHA-256 and checked against it (``meta``)."""
    if not ctx.indexes.enabled:
        return parse_config

    def parse(text):
        if len(text) < CACHED_TEXT_MIN:
            return parse_config(text)
        text = bytes(text)
        ident = (f"vg-text:{hashlib.sha256(text).hexdigest()}", {})
        entry = ctx.index(backend, "vg-text", None, meta=text, version=VG_TEXT_INDEX_VERSION,
                          path=path, ident=ident)
        got = entry.load()
        if got is not None and isinstance(got[0].get("config"), dict):
            return got[0]["config"]
        cfg = parse_config(text)
        entry.save({"config": cfg})
        return cfg
    return parse


def pv_info(volume, parse=parse_config):
    """The PV's label and metadata generations, cached by source uid."""
    key = ("lvm-pv", volume.source.uid)
    info = METADATA_CACHE.get(key)
    if info is None:
        info = read_pv(volume.source, parse)
        if info is None:
            raise LvmError("no LVM2 label in sectors 0-3")
        METADATA_CACHE.put(key, info)
    return info


@dataclass
class LvmState:
    """Per-discovery state: VG metadata backup files given as inputs (by volume)."""

    backups: dict = field(default_factory=dict)  # id(volume) -> Generation


class LvmBackend(Backend):
    name = "lvm"
    grouped = True
    roles = ROLES
    cli_options = list(CLI_OPTIONS)

    def new_state(self, ctx):
        return LvmState()

    def probe(self, volume, ctx):
        if volume.role == "input":  # a PV image given as a file is probed as its disk.raw
            return 60.0 if looks_like_backup(volume.source) else 0.0
        try:
            head = volume.source.read(0, S.SECTOR_SIZE * S.LABEL_SCAN_SECTORS)
        except Exception:
            return 0.0
        for i in range(S.LABEL_SCAN_SECTORS):
            sec = head[i * S.SECTOR_SIZE:(i + 1) * S.SECTOR_SIZE]
            if len(sec) == S.SECTOR_SIZE and sec.startswith(S.LABEL_ID) \
                    and sec[24:32] == S.LVM2_LABEL:
                crc = int.from_bytes(sec[16:20], "little")
                return 100.0 if S.calc_crc(sec[20:]) == crc else 50.0
        # A wiped label (wipefs) with the metadata area still in place.
        return 40.0 if headless_mda(volume.source) is not None else 0.0

    def member_key(self, volume, ctx):
        if volume.role == "input":
            g = read_backup(volume.source)
            volume.info["lvm_backup"] = {"vg": g.vgname, "vg_id": g.vg_id, "seqno": g.seqno}
            ctx.state(self).backups[id(volume)] = g
            return g.vg_id
        info = pv_info(volume, config_parser(self, ctx, volume.path))
        for msg in info.problems:
            ctx.report.add("warning", self.name, volume.path, "pv-metadata", msg)
        newest = info.current()
        for g in info.generations:
            if newest is not None and g.vg_id != newest.vg_id:
                ctx.report.add("info", self.name, volume.path, "stale-vg-text",
                               f"the metadata ring also holds seqno {g.seqno} of an earlier VG "
                               f"{g.vgname} (id {g.vg_id}); the mda header points at VG "
                               f"{newest.vgname} id {newest.vg_id}: the older text is history")
        volume.info["lvm_pv"] = {
            "pv_uuid": info.label.pv_uuid,
            "device_size": info.label.device_size,
            "metadata_areas": [[o, n] for o, n in info.label.metadata_areas],
            "vg": newest.vgname if newest else None,
            "vg_id": newest.vg_id if newest else None,
            "generations": [g.seqno for g in info.generations],
        }
        return newest.vg_id if newest else NO_MDA_KEY

    # -- assembling a VG ---------------------------------------------------------
    def open_group(self, key, volumes, ctx):
        if key == NO_MDA_KEY:
            for v in volumes:
                ctx.report.add("info", self.name, v.path, "pv-without-metadata",
                               f"PV {pv_info(v).label.pv_uuid} has no metadata area; it is "
                               f"used by the VG whose metadata names it")
            return
        pv_sources, gens = {}, {}
        backup_gens = ctx.state(self).backups
        backups = [v for v in volumes if id(v) in backup_gens]
        volumes = [v for v in volumes if id(v) not in backup_gens]
        first = (volumes or backups)[0]
        for v in backups:  # a generation from a backup file, used when the rings lack it
            g = backup_gens[id(v)]
            gens.setdefault(g.seqno, g)
        for v in volumes:
            info = pv_info(v)
            uuid = info.label.pv_uuid
            if uuid in pv_sources:
                ctx.report.add("warning", self.name, v.path, "duplicate-pv",
                               f"PV {uuid} was found twice; using {pv_sources[uuid][1]}")
                continue
            pv_sources[uuid] = (v.source, v.path)
            for g in info.generations:
                if g.vg_id != key:
                    continue
                old = gens.get(g.seqno)
                if old is None or old.how == "backup" or (g.crc_ok is True
                                                         and old.crc_ok is not True):
                    gens[g.seqno] = g
        if not gens:
            raise LvmError(f"VG {key}: no metadata generation could be read")
        ordered = [gens[s] for s in sorted(gens)]
        want = ctx.options.get("lvm_seqno")
        gen = ordered[-1]
        if want is not None:
            if want in gens:
                gen = gens[want]
            else:
                ctx.report.add("error", self.name, first.path, "seqno-not-found",
                               f"VG {gen.vgname}: metadata seqno {want} is not in the ring "
                               f"(found {', '.join(str(g.seqno) for g in ordered)}); using "
                               f"{gen.seqno}")
        committed = [g for g in ordered if g.how == "committed" and g.crc_ok]
        if want is None and committed and committed[-1].seqno < gen.seqno:
            ctx.report.add("warning", self.name, first.path, "uncommitted-generation",
                           f"VG {gen.vgname}: using seqno {gen.seqno} ({gen.how}), newer than "
                           f"the committed seqno {committed[-1].seqno}: a metadata update may "
                           f"have been interrupted; --lvm-seqno {committed[-1].seqno} shows "
                           f"the committed one")
        # PVs without a metadata area join when the generation in use names them.
        named = {p.get("id") for p in (gen.vg.get("physical_volumes") or {}).values()
                 if isinstance(p, dict)}
        nomda = [v for gkey, (_, members) in list(ctx.groups.items())
                 if gkey[0] == self.name and gkey[1] == NO_MDA_KEY for v in members]
        for v in nomda:
            uuid = pv_info(v).label.pv_uuid
            if uuid in named and uuid not in pv_sources:
                pv_sources[uuid] = (v.source, v.path)
        vg = VolumeGroup(gen, pv_sources, bad=ctx.bad())
        lvm_dir = ctx.storage("lvm")
        vgdir = Dir()
        used = lvm_dir.add(vg.name, vgdir, report=ctx.report, layer=self.name,
                           path_hint="storage/lvm")
        base = f"storage/lvm/{used}"
        mdir = vgdir.subdir(".metadata")
        for g in ordered:
            # each generation's text as lvm2 wrote it (usable with vgcfgrestore -f)
            mdir.add(f"seqno-{g.seqno}.vg", File(BytesSource(g.text, label=f"seqno {g.seqno}"),
                                                 mtime=g.config.get("creation_time")
                                                 if isinstance(g.config.get("creation_time"),
                                                               int) else None),
                     report=ctx.report, path_hint=f"{base}/.metadata")
        for g in ordered:
            mark = "in use" if g is gen else "available with --lvm-seqno"
            ctx.report.add("info", self.name, base, "metadata-generation",
                           f"VG {g.vgname} {g.describe()} [{mark}]")
        if len(ordered) > 1:
            ctx.extra_readme.append(
                f"LVM VG {vg.name} ({base}): metadata seqno {gen.seqno} in use; generations "
                f"found: {', '.join(str(g.seqno) for g in ordered)} (pvfs mount --lvm-seqno N "
                f"shows an older one, e.g. LVs removed since)")
        for v in volumes:
            v.info.setdefault("lvm_pv", {})["seqno_used"] = gen.seqno
        for ref in vg.pvs.values():
            if ref.source is not None and ref.pe_count:
                need = ref.pe_start + ref.pe_count * vg.extent_bytes
                if ref.source.size < need:
                    ctx.report.add("error", self.name, ref.path, "pv-truncated",
                                   f"PV {ref.name} is {ref.source.size} bytes, its extents "
                                   f"need {need}", [(ref.source.size, need - ref.source.size)])
        for uuid, (_, path) in pv_sources.items():
            if uuid not in {r.uuid for r in vg.pvs.values()}:
                ctx.report.add("warning", self.name, path, "pv-not-in-vg",
                               f"PV {uuid} is not listed by VG {vg.name} seqno {gen.seqno}")
        _Builder(self, ctx, vg, vgdir, base, first, ordered).build()
        for p in vg.problems:  # after the build: sources add theirs lazily
            ctx.report.add(p.severity, self.name, base, p.code, p.message, outcome=p.outcome)


class _Builder:
    def __init__(self, backend, ctx, vg, vgdir, base, parent, generations=()):
        self.b, self.ctx, self.vg, self.dir, self.base, self.parent = \
            backend, ctx, vg, vgdir, base, parent
        self.generations = generations
        self.pools = {}
        self.pool_indexes = {}  # pool name -> pvfs.index.IndexEntry to store after build

    def report(self, sev, code, msg, path=None, ranges=(), outcome=""):
        self.ctx.report.add(sev, self.b.name, path or self.base, code, msg, ranges, outcome)

    def build(self):
        vg = self.vg
        internal = set()
        for lv in vg.lvs.values():
            for seg in lv.segments:
                if seg.type == "thin-pool":
                    internal.update(str(seg.fields.get(k)) for k in ("metadata", "pool"))
        for lv in vg.lvs.values():
            if "thin-pool" in lv.types:
                self.open_pool(lv)
        for lv in vg.lvs.values():
            if "thin-pool" in lv.types or lv.name in internal:
                continue
            try:
                if "thin" in lv.types:
                    self.add_thin(lv)
                else:
                    self.add_plain(lv)
            except (LvmError, UnreadableError) as e:
                self.report("error", "lv-failed", f"LV {lv.name}: {e}")
                self.lost(lv, f"LV {self.vg.name}/{lv.name}: {e}")
            except (ValueError, TypeError, KeyError, IndexError) as e:
                # values of the wrong kind in a hostile text: this LV only
                self.report("error", "lv-failed", f"LV {lv.name}: bad metadata value "
                                                  f"({type(e).__name__}: {e})")
                self.lost(lv, f"LV {self.vg.name}/{lv.name}: bad metadata value")
        for name, pool in self.pools.items():
            if pool is not None:
                for p in pool.problems:  # also those found while loading
                    self.report(p.severity, p.code, f"thin pool {name}: {p.message}",
                                path=f"{self.base}/.pool/{name}", outcome=p.outcome)
                for sev, msg in pool.check_data_space_map():
                    self.report(sev, "thin-data-space-map", f"thin pool {name}: {msg}",
                                path=f"{self.base}/.pool/{name}")
                ix = self.pool_indexes.pop(name, None)
                payload = pool.index_payload() if ix is not None and ix.usable else None
                if payload is not None:
                    ix.save(*payload)

    def lost(self, lv, why):
        """An LV that is named by the metadata but cannot be shown at all: its guest keeps
        its folder in vms/ or cts/ with a LOST.txt (a Proxmox volume name only)."""
        kind = "lvmthin" if "thin" in lv.types else "lvm"
        m = _SNAP_RE.match(lv.name)
        volname, snap = (m.group(1), m.group(2)) if m else (lv.name, None)
        self.ctx.add_proxmox(Locator(kind, self.vg.name, volname, snap), lost=why,
                             where=f"{self.base}/{lv.name}")

    def _info(self, vol, lv, **extra):
        vol.info["lvm"] = {"vg": self.vg.name, "vg_id": self.vg.id, "lv": lv.name,
                           "lv_id": lv.id, "seqno": self.vg.seqno,
                           "segments": [[s.start_extent, s.extent_count, s.type]
                                        for s in lv.segments[:64]], **extra}

    def _show(self, lv, src, **extra):
        probe = True
        try:
            probe = not src.unreadable_ranges(0, min(src.size, 1 << 20))
        except Exception:
            probe = False
        vol = self.ctx.add_volume(src, self.dir, lv.name, self.base, "lv", parent=self.parent,
                                  probe=probe, children_home="parts", mtime=lv.creation_time)
        self._info(vol, lv, **extra)
        if extra.get("thin_pool"):  # read through the pool's metadata: its entries concern it
            vol.layers.append(f"{self.base}/.pool/{extra['thin_pool']}")
        kind = "lvmthin" if "thin" in lv.types else "lvm"
        m = _SNAP_RE.match(lv.name)  # Proxmox's LV snapshots: snap_<volume>_<snapshot>
        volname, snap = (m.group(1), m.group(2)) if m else (lv.name, None)
        self.ctx.add_proxmox(Locator(kind, self.vg.name, volname, snap), vol, mtime=lv.creation_time)
        return vol

    def add_plain(self, lv):
        src = self.vg.lv_source(lv.name)
        if lv.visible:
            self._show(lv, src)
        else:
            hdir = self.dir.subdir(".hidden")
            vol = self.ctx.add_volume(src, hdir, lv.name, f"{self.base}/.hidden", "lv-hidden",
                                      parent=self.parent, probe=False, children_home=None)
            self._info(vol, lv)

    def open_pool(self, lv):
        vg, ctx = self.vg, self.ctx
        if len(lv.segments) != 1:
            self.report("error", "thin-pool-segments",
                        f"thin pool {lv.name} has {len(lv.segments)} segments; expected 1")
            return
        f = lv.segments[0].fields
        pdir = self.dir.subdir(".pool").subdir(lv.name)
        ppath = f"{self.base}/.pool/{lv.name}"
        try:
            tmeta = vg.lv_source(str(f.get("metadata")))
            tdata = vg.lv_source(str(f.get("pool")))
        except (LvmError, KeyError, ValueError, TypeError, IndexError) as e:
            self.report("error", "thin-pool-failed", f"thin pool {lv.name}: {e}")
            return
        for name, src in (("tmeta", tmeta), ("tdata", tdata)):
            ctx.add_volume(src, pdir, name, ppath, "thin-pool-" + name, parent=self.parent,
                           probe=False, children_home=None)
        devs = [s.fields.get("device_id") for l2 in vg.lvs.values() for s in l2.segments
                if s.type == "thin" and s.fields.get("thin_pool") == lv.name]
        hints = {"chunk_size": f.get("chunk_size"), "transaction_id": f.get("transaction_id"),
                 "device_ids": [d for d in devs if isinstance(d, int)]}
        try:
            pool = ThinPool(tmeta, tdata, name=f"{vg.name}/{lv.name}", hints=hints)
        except (ThinError, UnreadableError) as e:
            self.report("error", "thin-metadata-unusable",
                        f"thin pool {lv.name}: {e}; the data area is at {ppath}/tdata "
                        f"for carving", path=ppath)
            self.pools[lv.name] = None
            return
        for p in pool.problems:
            self.report(p.severity, p.code, f"thin pool {lv.name}: {p.message}", path=ppath,
                        outcome=p.outcome)
        for msg in pool.info:
            self.report("info", "thin-pool", f"thin pool {lv.name}: {msg}", path=ppath)
        self.pools[lv.name] = pool
        meta = pool.index_meta()
        if meta is not None:  # the mappings of every thin device, kept between runs
            ix = ctx.index(self.b, f"thin-pool {vg.id}/{lv.name}", tmeta, meta=meta,
                           version=pool.INDEX_VERSION, path=ppath)
            # mapped: the file's pages, not a copy (15 MB for 1000 LVs x 10,000 mappings:
            # ~5 ms of CPU faulting in a fresh copy, and as much resident memory)
            got = ix.load(mapped=True)
            if got is None or not pool.load_index(*got):
                self.pool_indexes[lv.name] = ix  # stored once every mapping is known
        named = set(hints["device_ids"])
        for dev in sorted(set(pool.dev_roots) - named):
            m = pool.mapping(dev)
            if not len(m.vstart):
                continue
            size = int(m.vstart[-1] + m.length[-1]) * pool.chunk_bytes
            src = ThinSource(pool, dev, size, label=f"{lv.name}:thin-{dev}", bad=ctx.bad())
            odir = pdir.subdir("orphans")
            ctx.add_volume(src, odir, f"thin-{dev}", f"{ppath}/orphans", "lv",
                           parent=self.parent, children_home="parts")
            self.report("warning", "thin-orphan",
                        f"thin device {dev} is in pool {lv.name} but no LV of this "
                        f"metadata generation names it; shown as {ppath}/orphans/thin-{dev} "
                        f"(size from its last mapped block)", path=ppath)
        self.restore_removed(lv.name, pool, pdir, ppath, named)

    def removed_thin(self, pool_name, named):
        """Thin LVs of ``pool_name`` that other metadata generations name and the one in
        use does not: ``{device_id: (lv name, size, seqno)}`` (newest generation wins)."""
        out = {}
        for g in self.generations:
            if g.seqno == self.vg.seqno:
                continue
            vgc = g.vg
            eb = vgc.get("extent_size")
            if not isinstance(eb, int) or eb <= 0:
                continue
            for name, l in (vgc.get("logical_volumes") or {}).items():
                seg = l.get("segment1") if isinstance(l, dict) else None
                if not isinstance(seg, dict) or seg.get("type") != "thin" \
                        or seg.get("thin_pool") != pool_name:
                    continue
                dev, n = seg.get("device_id"), seg.get("extent_count")
                if isinstance(dev, int) and isinstance(n, int) and dev not in named:
                    out[dev] = (name, n * eb * 512, g.seqno)
        return out

    def restore_removed(self, pool_name, pool, pdir, ppath, named):
        """Removed thin LVs (named only by other generations) whose mapping trees are
        still in the metadata as older copies: ``.pool/<pool>/removed/<lv>``; with
        ``--lvm-thin-scan`` also devices no generation names (``removed/thin-<id>``)."""
        removed = self.removed_thin(pool_name, named)
        if self.ctx.options.get("lvm_thin_scan") and pool.usable:
            try:
                tops = pool._scan_once().top_trees()
            except (ThinError, UnreadableError):
                tops = {}
            for dev in sorted({d for devs in tops.values() for d in devs}):
                if dev not in pool.dev_roots and dev not in removed and dev not in named:
                    removed[dev] = (f"thin-{dev}", None, None)
        for dev, (name, size, seqno) in sorted(removed.items()):
            if dev in pool.dev_roots:
                continue  # still in the pool: shown under orphans/
            try:
                root = pool.adopt_stale(dev)
            except (ThinError, UnreadableError):
                root = None
            if root is None:
                self.report("info", "thin-removed-lost",
                            f"thin LV {name} (device {dev}, metadata seqno {seqno}) was "
                            f"removed; no copy of its mapping tree is left", path=ppath)
                continue
            if size is None:  # named by no generation: up to its last mapped block
                m = pool.mapping(dev)
                if not len(m.vstart):
                    continue
                size = int(m.vstart[-1] + m.length[-1]) * pool.chunk_bytes
            src = ThinSource(pool, dev, size, label=f"{pool_name}:removed:{name}",
                             bad=self.ctx.bad())
            vol = self.ctx.add_volume(src, pdir.subdir("removed"), name, f"{ppath}/removed",
                                      "lv", parent=self.parent, children_home="parts")
            vol.info["lvm"] = {"vg": self.vg.name, "lv": name, "thin_pool": pool_name,
                               "device_id": dev, "from_seqno": seqno, "stale_root": root}
            why = (f"is named by metadata seqno {seqno}" if seqno is not None
                   else "is in an older top-level tree only (size from its last mapped block)")
            self.report("warning", "thin-removed-restored",
                        f"thin LV {name} (device {dev}) {why} "
                        f"but is gone from the pool; restored from an older copy of its "
                        f"mapping tree (block {root}) as {vol.path}: its data blocks may have "
                        f"been reused since, check the contents", path=ppath)

    def add_thin(self, lv):
        if len(lv.segments) != 1:
            raise LvmError(f"thin LV with {len(lv.segments)} segments")
        f = lv.segments[0].fields
        pname, dev = f.get("thin_pool"), f.get("device_id")
        if pname not in self.pools:
            raise LvmError(f"its thin pool {pname!r} is not in the VG")
        pool = self.pools[pname]
        size = lv.extents * self.vg.extent_bytes
        path = f"{self.base}/{lv.name}"
        if pool is None or not isinstance(dev, int):
            self.report("error", "thin-lv-lost",
                        f"thin LV {lv.name}: pool {pname} metadata is unusable", path=path)
            self.lost(lv, f"thin LV {self.vg.name}/{lv.name}: the metadata of thin pool "
                          f"{pname} is unusable, so its blocks cannot be found (the pool's data "
                          f"area is at {self.base}/.pool/{pname}/tdata, for carving)")
            return
        ext = f.get("external_origin")
        ext_src = None
        if isinstance(ext, str):
            if ext in self.vg.lvs:
                ext_src = self.vg.lv_source(ext)
            else:
                self.report("error", "external-origin-missing",
                            f"thin LV {lv.name}: external origin {ext} is not in the VG; "
                            f"the blocks the thin LV never wrote are lost: they read EIO "
                            f"(zeros with --bad zero)", path=path)
                # never zeros by default: the origin's bytes exist, nobody can give them
                ext_src = MissingSource(size, f"external origin {ext} is not in the VG",
                                        bad=self.ctx.bad(), label=f"{self.vg.name}/{ext}")
        src = ThinSource(pool, dev, size, label=f"{self.vg.name}/{lv.name}", bad=self.ctx.bad(),
                         external=ext_src)
        stale = None
        if dev not in pool.dev_roots and pool.usable:
            try:
                stale = pool.adopt_stale(dev)
            except (ThinError, UnreadableError) as e:
                self.report("warning", "thin-btree", f"thin LV {lv.name}: {e}", path=path)
        if stale is not None:
            self.report("warning", "thin-device-stale",
                        f"thin device {dev} of LV {lv.name} is not in the current pool "
                        f"metadata (removed?); restored from an older copy of its mapping "
                        f"tree at metadata block {stale}: its data blocks may have been "
                        f"reused since, check the contents", path=path)
        if dev not in pool.dev_roots:
            self.report("error", "thin-device-missing",
                        f"thin device {dev} of LV {lv.name} is not in the pool metadata "
                        f"(deleted, or its tree is lost); it reads as unreadable", path=path,
                        ranges=[(0, size)])
        else:
            m = pool.mapping(dev)
            cb = pool.chunk_bytes
            ranges = [(lo * cb, (size if hi is None else min(size, hi * cb)) - lo * cb)
                      for lo, hi in m.unknown if lo * cb < size]
            for note in m.notes:
                self.report("warning", "thin-btree", f"thin LV {lv.name}: {note}", path=path)
            if ranges:
                self.report("error", "thin-mapping-lost",
                            f"thin LV {lv.name}: the mapping of {len(ranges)} range(s) could not "
                            f"be read (damaged btree nodes)", path=path, ranges=ranges)
            if m.mapped and int(m.vstart[-1] + m.length[-1]) * cb > size:
                self.report("warning", "thin-beyond-size",
                            f"thin LV {lv.name}: blocks are mapped past its LVM size", path=path)
            det = pool.details.get(dev)
            if det is not None and det.mapped_blocks != m.mapped:
                self.report("warning", "thin-mapped-count",
                            f"thin LV {lv.name}: device details say {det.mapped_blocks} "
                            f"mapped blocks, the mapping tree has {m.mapped}", path=path)
        extra = {"thin_pool": pname, "device_id": dev, "origin": f.get("origin"),
                 "external_origin": ext, "chunk_bytes": pool.chunk_bytes}
        if dev in pool.dev_roots:
            m = pool.mapping(dev)
            extra.update(mapped_blocks=m.mapped, mapping_root=int(pool.dev_roots[dev]),
                         restored_from_older_tree=dev in pool.stale_devs)
            det = pool.details.get(dev)
            if det is not None:
                extra.update(transaction_id=det.transaction_id,
                             creation_time=det.creation_time,
                             snapshotted_time=det.snapshotted_time)
        self._show(lv, src, **extra)
