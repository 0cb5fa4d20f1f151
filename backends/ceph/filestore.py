"""FileStore OSDs (Ceph <= 14): objects as files of the OSD's filesystem.

The OSD data directory (an XFS/ext4 filesystem read by pvfs' guest filesystem readers,
reached here only through the node tree) holds ``type`` (``filestore``), ``fsid``,
``whoami``, ``ceph_fsid``, ``superblock``, ``journal`` and ``current/``:

- ``current/<pool>.<pg hex>[s<shard>]_head/`` (``meta/`` for the meta collection): one
  file per object, in nested ``DIR_<hex>`` hash directories (one hex digit a level, from
  the hash's last digit; any depth, files at any level) — found by walking;
- file names (``LFNIndex::lfn_generate_object_name_current``):
  ``<name>_<key>_<snap>_<HASH>_<namespace>_<pool>[_<gen>_<shard>]`` with ``\\`` ->
  ``\\\\``, ``/`` -> ``\\s``, ``_`` -> ``\\u``, NUL -> ``\\n``, a leading ``.`` ->
  ``\\.``, a leading ``DIR_`` -> ``\\d``; snap ``head``/``snapdir``/hex; pool ``none`` = -1.
  Names too long end in ``_long``: the whole name is in the ``user.cephos.lfn3`` xattr;
- xattrs ``user.ceph.<attr>`` (``_`` = object_info_t, ``snapset``, ``_<user attr>``),
  chained in pieces ``user.ceph.<attr>``, ``...@1``, ``...@2`` (``chain_xattr.cc``);
  ``user.cephos.spill_out`` = ``1`` when some attrs live in the omap (``_AXATTR_``);
- omap: ``current/omap/`` (LevelDB or RocksDB, read by rocksdb/), ``DBObjectMap``: the
  header of an object at ``_HOBJTOSEQ_`` + ``ghobject_key`` (name, key, namespace escaped
  with ``%`` -> ``%p``, ``.`` -> ``%e``, ``_`` -> ``%u``, then
  ``.<snap>.<pool>.<HASH>[.<gen>.<shard>]``), its ``seq`` (first field of the versioned
  ``_Header``), values at prefix ``_USER_<seq as 16 decimal digits>_USER_`` (``header_key``: ``%.16" PRId64``).

Journal (fsjournal.py): the entries above ``current/commit_op_seq`` (journaled, acked,
not yet applied to the files when the OSD died) are replayed in memory — writes, zeroing,
truncation, touch, remove, clone, setattr(s)/rmattr(s), omap set/remove/clear — on top of
the files and the omap, as ``FileStore::_do_transaction`` would.  An entry with another
op (or one that fails its crc before the pending range ends) stops the replay: the OSD is
reported and objects whose only copy it holds are reported ``possibly-stale``.

References: ceph/src/os/filestore/{LFNIndex.cc, HashIndex.cc, FileStore.cc,
chain_xattr.cc, DBObjectMap.cc, FileJournal.{h,cc}}, ceph/src/os/ObjectMap.h.
"""

from __future__ import annotations

import re
import struct
import types
import uuid
from dataclasses import dataclass, field

from pvfs.errors import UnreadableError
from pvfs.nodes import Dir, File
from pvfs.source import Source

from .errors import CephError
from .keys import (CEPH_NOSNAP, CEPH_SNAPDIR, NO_GEN, NO_SHARD, ObjectId, decode_onode_key,
                   encode_onode_key)
from .osd import OsdStore


class FileStoreError(CephError):
    """A FileStore object file name or omap header does not decode."""


_COLL_RE = re.compile(r"^(\d+)\.([0-9a-f]+)(?:s(\d+))?_head$")
MAX_OBJECTS = 2_000_000
MAX_DEPTH = 12  # DIR_ levels (8 hex digits of hash at most, plus slack)
CHAIN_MAX = 4096  # xattr pieces


def is_filestore_dir(node) -> bool:
    """An OSD data directory whose ``type`` file says ``filestore``."""
    if not isinstance(node, Dir):
        return False
    kids = node.children()
    t = kids.get("type")
    if not isinstance(t, File) or not isinstance(kids.get("current"), Dir) or t.size > 64:
        return False
    try:
        return t.source.read(0, t.size).strip() == b"filestore"
    except UnreadableError:
        return False


def small_file(node, name, limit=4096):
    f = node.children().get(name) if isinstance(node, Dir) else None
    if not isinstance(f, File) or f.size > limit:
        return None
    try:
        return f.source.read(0, f.size).strip().decode("utf-8", "replace")
    except UnreadableError:
        return None


# -- names ----------------------------------------------------------------------------
def _unescape(s: str) -> bytes:
    out = bytearray()
    i, n = 0, len(s)
    if s.startswith("\\d"):
        out += b"DIR_"
        i = 2
    elif s.startswith("\\."):
        out += b"."
        i = 2
    while i < n:
        c = s[i]
        if c == "\\":
            if i + 1 >= n:
                raise FileStoreError(f"object file name: trailing backslash in {s!r}")
            e = s[i + 1]
            out += {"\\": b"\\", "s": b"/", "u": b"_", "n": b"\0"}.get(e, b"")
            if e not in "\\sun":
                raise FileStoreError(f"object file name: unknown escape \\{e} in {s!r}")
            i += 2
        else:
            out += c.encode("utf-8", "surrogateescape")
            i += 1
    return bytes(out)


def parse_object_name(fname: str) -> ObjectId:
    """``LFNIndex::lfn_parse_object_name`` (the current format) -> ObjectId."""
    parts = fname.split("_")
    if len(parts) not in (6, 8):
        raise FileStoreError(f"object file name {fname[:80]!r}: {len(parts)} fields")
    name, key, snap, hash_, ns, pool = parts[:6]
    if snap == "head":
        snapv = CEPH_NOSNAP
    elif snap == "snapdir":
        snapv = CEPH_SNAPDIR
    else:
        try:
            snapv = int(snap, 16)
        except ValueError:
            raise FileStoreError(f"object file name {fname[:80]!r}: snap {snap!r}") from None
    try:
        h = int(hash_, 16)
        poolv = -1 if pool == "none" else int(pool, 16)
        gen, shard = NO_GEN, NO_SHARD
        if len(parts) == 8:
            gen, shard = int(parts[6], 16), int(parts[7], 16)
            if shard == 0xFF:
                shard = NO_SHARD
    except ValueError:
        raise FileStoreError(f"object file name {fname[:80]!r}: bad number") from None
    if len(hash_) != 8 or h >> 32:
        raise FileStoreError(f"object file name {fname[:80]!r}: hash {hash_!r}")
    return ObjectId(poolv, h, _unescape(ns), _unescape(name), _unescape(key), snapv, gen, shard)


def _omap_escape(b: bytes) -> bytes:
    return b.replace(b"%", b"%p").replace(b".", b"%e").replace(b"_", b"%u")


def ghobject_key(oid: ObjectId) -> bytes:
    """``DBObjectMap::ghobject_key``."""
    out = _omap_escape(oid.name) + b"." + _omap_escape(oid.key) + b"." + _omap_escape(oid.nspace) + b"."
    if oid.snap == CEPH_NOSNAP:
        out += b"head"
    elif oid.snap == CEPH_SNAPDIR:
        out += b"snapdir"
    else:
        out += b"%x" % oid.snap
    out += b".none" if oid.pool == -1 else b".%x" % oid.pool
    out += b".%08X" % oid.hash
    if oid.gen != NO_GEN or oid.shard != NO_SHARD:
        out += b".%x.%x" % (oid.gen, oid.shard & 0xFF)
    return out


# -- the store --------------------------------------------------------------------------
@dataclass
class FsOnode:
    """What the tree and rbd.py need of an object (BlueStore's onode stand-in)."""

    size: int
    attrs: dict
    path: str
    nid: int = 0
    flags: int = 0
    shards: list = field(default_factory=list)
    spilled: bool = False


class NodeDirFiles:
    """A LevelDB/RocksDB directory of the node tree for rocksdb.db.DB."""

    def __init__(self, node: Dir):
        self.node = node

    def _dir(self, dirname):
        d = self.node
        for p in (dirname or "").split("/"):
            if p:
                d = d.children().get(p) if isinstance(d, Dir) else None
        return d if isinstance(d, Dir) else None

    def listdir(self, dirname):
        d = self._dir(dirname)
        return sorted(n for n, c in d.children().items() if isinstance(c, File)) if d else []

    def _file(self, path):
        head, _, name = path.rpartition("/")
        d = self._dir(head)
        f = d.children().get(name) if d is not None else None
        return f if isinstance(f, File) else None

    def size(self, path):
        f = self._file(path)
        return f.size if f is not None else None

    def open(self, path):
        f = self._file(path)
        if f is None:
            raise FileNotFoundError(path)
        return f.source


class FileStoreOsd(OsdStore):
    """One FileStore OSD (its data directory as a node) with OsdStore's interface."""

    def __init__(self, root: Dir, name: str, path: str, report=None):
        self.root = root
        self.path = path
        self.name = name
        self.report = report
        self.other = {}
        self.data = {}
        self.collections = set()
        self.ec_pools = set()
        self.count = 0
        self._sorted_other = {}
        self._files = {}  # onode-style key -> (File, relative path)
        self._kv = None
        self._kv_error = None
        self._replayed = {}  # key -> _Replayed: journal entries applied in memory
        fsid = small_file(root, "fsid")
        try:
            osd_uuid = uuid.UUID(fsid) if fsid else None
        except ValueError:
            osd_uuid = None
        whoami = small_file(root, "whoami")
        self.whoami = int(whoami) if whoami and whoami.isdigit() else None
        self.ceph_fsid = small_file(root, "ceph_fsid")
        self.osd = types.SimpleNamespace(label=types.SimpleNamespace(osd_uuid=osd_uuid),
                                         damage=[])
        self.uid = id(root)
        self.kind = "filestore"
        self.journal_pending = None  # [first, last] unapplied journal seq (set by the opener)

    # -- index ---------------------------------------------------------------------------
    def build_index(self):
        cur = self.root.children().get("current")
        bad = []
        for cname, cdir in sorted(cur.children().items()):
            if not isinstance(cdir, Dir):
                continue
            if cname == "meta":
                pool = -1
            else:
                m = _COLL_RE.match(cname)
                if not m:
                    continue  # omap/, <pgid>_TEMP
                pool = int(m.group(1))
                self.collections.add((pool, int(m.group(2), 16)))
                if m.group(3) is not None:
                    self.ec_pools.add(pool)
            self._walk(cdir, f"current/{cname}", 0, bad)
        if bad:
            self._note("warning", "filestore-bad-names",
                       f"{len(bad)} files under current/ are not object files; first: {bad[0]}")
        return self

    def _walk(self, d, rel, depth, bad):
        for fname, node in d.children().items():
            if isinstance(node, Dir):
                if fname.startswith("DIR_") and depth < MAX_DEPTH:
                    self._walk(node, f"{rel}/{fname}", depth + 1, bad)
                continue
            if not isinstance(node, File) or self.count >= MAX_OBJECTS:
                continue
            try:
                if fname.endswith("_long"):
                    full = _chained(node.xattrs, b"user.cephos.lfn3") or \
                        _chained(node.xattrs, b"user.cephos.lfn")
                    if not full:
                        raise FileStoreError("long name without its user.cephos.lfn3 xattr")
                    oid = parse_object_name(full.decode("utf-8", "surrogateescape"))
                else:
                    oid = parse_object_name(fname)
            except (FileStoreError, UnicodeDecodeError) as e:
                bad.append(f"{rel}/{fname[:80]}: {e}")
                continue
            key = encode_onode_key(oid)
            self._files[key] = (node, f"{rel}/{fname}")
            self.other.setdefault((oid.pool, oid.nspace, oid.name), {})[oid.snap] = key
            self.count += 1

    def lookup(self, pool, name: bytes, nspace=b"", snap=CEPH_NOSNAP):
        snaps = self.other.get((pool, nspace, name))
        if snaps and snap in snaps:
            key = snaps[snap]
            return key, decode_onode_key(key)
        return None

    # -- objects -----------------------------------------------------------------------------
    def _file(self, key):
        hit = self._files.get(bytes(key))
        if hit is None:
            raise FileStoreError("object file vanished")
        return hit

    def onode(self, key):
        key = bytes(key)
        rep = self._replayed.get(key)
        if rep is not None and rep.node is None:  # created by the journal
            return FsOnode(rep.size(0), rep.merged_attrs({}), "(FileStore journal)")
        node, rel = self._file(key)
        attrs = {}
        names = set()
        for xname in node.xattrs:
            if xname.startswith(b"user.ceph."):
                base = xname[10:].split(b"@", 1)[0]
                names.add(base)
        for base in names:
            attrs[base.decode("utf-8", "surrogateescape")] = _chained(node.xattrs, b"user.ceph." + base)
        spilled = _chained(node.xattrs, b"user.cephos.spill_out")[:1] == b"1"
        if spilled:
            for k, v in self._spilled_attrs(key).items():
                attrs.setdefault(k, v)
        if rep is not None:
            return FsOnode(rep.size(node.size), rep.merged_attrs(attrs), rel + " (+ journal)",
                           spilled=spilled)
        return FsOnode(node.size, attrs, rel, spilled=spilled)

    def object_source(self, key, size=None, label=None, on_damage=None):
        key = bytes(key)
        rep = self._replayed.get(key)
        if rep is not None:
            base = rep.node.source if rep.node is not None else None
            return JournalPatchedSource(base, rep.ops, label=label or self.name)
        node, _rel = self._file(key)
        return node.source

    # -- omap ---------------------------------------------------------------------------------
    def kv(self):
        if self._kv is None and self._kv_error is None:
            from .kv import KV
            from .rocksdb.db import DB

            omap = self.root.children().get("current")
            omap = omap.children().get("omap") if isinstance(omap, Dir) else None
            if not isinstance(omap, Dir):
                self._kv_error = "no current/omap directory"
            else:
                try:
                    self._kv = KV(DB(NodeDirFiles(omap), "", name=f"{self.path}/current/omap"))
                    for sev, code, msg in getattr(self._kv, "damage", []) or []:
                        self._note(sev, code, f"omap: {msg}")
                except (CephError, UnreadableError, OSError) as e:
                    self._kv_error = str(e)
            if self._kv_error:
                self._note("error", "filestore-omap", f"omap store unreadable: {self._kv_error}")
        return self._kv

    def _header_seq(self, key):
        kv = self.kv()
        if kv is None:
            return None
        oid = decode_onode_key(key)
        v = kv.get("_HOBJTOSEQ_", ghobject_key(oid))
        if v is None or len(v) < 6 + 16:
            return None
        seq, parent = struct.unpack_from("<QQ", v, 6)  # after ENCODE_START's 6 bytes
        return seq, parent

    def _prefix_items(self, prefix):
        return {bytes(k): bytes(v) for k, v in self.kv().iterate(prefix)}

    def omap(self, key, oid):
        key = bytes(key)
        rep = self._replayed.get(key)
        hs = self._header_seq(key) if rep is None or rep.node is not None else None
        out = {}
        if hs is not None and not (rep is not None and rep.omap_cleared):
            seq, parent = hs
            if parent:  # a cloned object map: the parent's keys below the child's
                out.update(self._prefix_items(f"_USER_{parent:016d}_USER_"))
            out.update(self._prefix_items(f"_USER_{seq:016d}_USER_"))
        if rep is not None:
            for k, v in rep.omap.items():
                if v is None:
                    out.pop(k, None)
                else:
                    out[k] = v
        return out

    def _spilled_attrs(self, key):
        hs = self._header_seq(key)
        if hs is None:
            return {}
        return {k.decode("utf-8", "surrogateescape"): v
                for k, v in self._prefix_items(f"_USER_{hs[0]:016d}_AXATTR_").items()}

    # -- journal --------------------------------------------------------------------------------
    def replay_journal(self):
        """Apply the journal's unapplied entries in memory (``FileStore::_do_transaction``
        for the ops RBD and the PG machinery use).  An entry with an op that is not
        understood stops the replay before it.  Returns ``(applied seqs [first, last] or
        None, why it stopped or None)``."""
        from .fsjournal import JournalError, read_entries

        st = self.journal_state()
        if st is None or st[1] is None:
            return None, None
        cos = st[0]
        j = self.root.children()["journal"]
        raw = j.source.read(0, 76)
        _v, _n, _fl, _fsid, bsize, _al, max_size, start, _c, start_seq = \
            struct.unpack_from("<IIQ16sIIqqQQ", raw, 0)
        first = last = None
        try:
            for e in read_entries(j.source, start, start_seq, cos, max_size, bsize):
                bad = [o for t in e.transactions for o in t
                       if o.op not in _APPLY or (o.op != 0 and o.oid is None)]
                if bad:
                    return ((first, last) if first else None,
                            f"entry {e.seq}: op {bad[0].name} is not replayed")
                for t in e.transactions:
                    for o in t:
                        self._apply(o)
                first = e.seq if first is None else first
                last = e.seq
        except (JournalError, UnreadableError) as ex:
            return ((first, last) if first else None, f"after entry {last}: {ex}")
        done = (first, last) if first else None
        if last != st[1][1]:  # (the pending range came from a walk without crc checks)
            return done, f"entry {(last or cos) + 1} fails its crc or does not decode"
        return done, None

    def _state(self, oid, create=False):
        key = encode_onode_key(oid)
        rep = self._replayed.get(key)
        if rep is None:
            hit = self._files.get(key)
            if hit is None and not create:
                return key, None
            rep = self._replayed[key] = _Replayed(hit[0] if hit else None)
            if hit is None:
                self.other.setdefault((oid.pool, oid.nspace, oid.name), {})[oid.snap] = key
                self._sorted_other.clear()
                self.count += 1
        return key, rep

    def _apply(self, o):
        from . import fsjournal as J

        if o.op in (J.OP_NOP, J.OP_SETALLOCHINT, J.OP_COLL_HINT, 27):
            return
        if o.op == J.OP_REMOVE:
            key = encode_onode_key(o.oid)
            self._replayed.pop(key, None)
            self._files.pop(key, None)
            snaps = self.other.get((o.oid.pool, o.oid.nspace, o.oid.name))
            if snaps and snaps.get(o.oid.snap) == key:
                del snaps[o.oid.snap]
                if not snaps:
                    del self.other[(o.oid.pool, o.oid.nspace, o.oid.name)]
                self._sorted_other.clear()
            return
        if o.op == J.OP_CLONE:
            _sk, src = self._state(o.oid, create=True)
            dkey, dst = self._state(o.dest, create=True)
            dst.node, dst.ops = src.node, list(src.ops)
            dst.attrs, dst.attrs_cleared = dict(src.attrs), src.attrs_cleared
            if src.node is not None:  # the clone's own xattrs are the source's
                self._files[dkey] = self._files[encode_onode_key(o.oid)]
            return
        _key, rep = self._state(o.oid, create=True)
        if o.op == J.OP_WRITE:
            rep.ops.append(("w", o.off, o.data))
        elif o.op == J.OP_ZERO:
            rep.ops.append(("z", o.off, o.len))
        elif o.op == J.OP_TRUNCATE:
            rep.ops.append(("t", o.off, 0))
        elif o.op in (J.OP_SETATTRS, J.OP_SETATTR):
            for k, v in o.attrs.items():
                rep.attrs[k.decode("utf-8", "surrogateescape")] = v
        elif o.op == J.OP_RMATTR:
            for k in o.keys:
                rep.attrs[k.decode("utf-8", "surrogateescape")] = None
        elif o.op == J.OP_RMATTRS:
            rep.attrs, rep.attrs_cleared = {}, True
        elif o.op == J.OP_OMAP_SETKEYS:
            rep.omap.update(o.attrs)
        elif o.op == J.OP_OMAP_RMKEYS:
            for k in o.keys:
                rep.omap[k] = None
        elif o.op == J.OP_OMAP_CLEAR:
            rep.omap, rep.omap_cleared = {}, True
        # OP_TOUCH: created above

    def journal_state(self):
        """``(commit_op_seq, [first, last] seq of the journal entries not yet applied)``,
        or None when there is no readable journal.

        ``FileJournal::header_t`` (4 KiB block 0): le32 version, le32 length, u64 flags,
        uuid fsid, u32 block_size, u32 alignment, s64 max_size, s64 start, u64
        committed_up_to, u64 start_seq.  Entries from ``start`` (wrapping to
        ``block_size`` at ``max_size``): ``entry_header_t`` {u64 seq, u32 crc32c, u32 len,
        u32 pre_pad, u32 post_pad, u64 magic1 (= the entry's offset), u64 magic2}, pre
        pad, payload, post pad, the same header again as footer."""
        cos = small_file(self.root.children().get("current"), "commit_op_seq")
        j = self.root.children().get("journal")
        if not cos or not cos.isdigit() or not isinstance(j, File) or j.size < 8192:
            return None
        try:
            raw = j.source.read(0, 76)
            v, n, _fl, _fsid, bsize, _al, max_size, start, _comm, start_seq = \
                struct.unpack_from("<IIQ16sIIqqQQ", raw, 0)
            if v < 2 or n < 60 or not 512 <= bsize <= 1 << 16 or not bsize < max_size <= j.size:
                return None
            pos, seq, first, last = start, start_seq, None, None
            for _ in range(1 << 17):
                if not bsize <= pos <= max_size - 40:
                    break
                e_seq, _crc, ln, pre, post, magic1, _m2 = \
                    struct.unpack_from("<QIIIIQQ", j.source.read(pos, 40), 0)
                if e_seq != seq or magic1 != pos or ln > max_size:
                    break
                first = seq if first is None else first
                last = seq
                pos += 40 + pre + ln + post + 40
                if pos >= max_size:
                    pos = bsize + (pos - max_size)
                seq += 1
        except UnreadableError:
            return None
        pending = [first, last] if first is not None and last > int(cos) else None
        return int(cos), pending


def _chained(xattrs, name: bytes) -> bytes:
    """``chain_getxattr``: ``name``, ``name@1``, ``name@2`` ... concatenated."""
    v = xattrs.get(name)
    if v is None:
        return b""
    parts = [bytes(v)]
    for i in range(1, CHAIN_MAX):
        p = xattrs.get(name + b"@%d" % i)
        if p is None:
            break
        parts.append(bytes(p))
    return b"".join(parts)


#: ops ``replay_journal`` applies (others stop the replay)
_APPLY = {0, 9, 10, 11, 12, 13, 14, 15, 16, 17, 27, 28, 31, 32, 33, 39, 40}


class _Replayed:
    """An object as the journal left it: the file (or None: created by the journal),
    data ops in order, attrs set/removed, omap keys set/removed."""

    def __init__(self, node):
        self.node = node
        self.ops = []  # ("w", off, bytes) | ("z", off, len) | ("t", size, 0)
        self.attrs = {}
        self.attrs_cleared = False
        self.omap = {}
        self.omap_cleared = False

    def size(self, base_size):
        return _final_size(base_size if self.node is not None else 0, self.ops)

    def merged_attrs(self, base):
        out = {} if self.attrs_cleared else dict(base)
        for k, v in self.attrs.items():
            if v is None:
                out.pop(k, None)
            else:
                out[k] = v
        return out


def _final_size(size, ops):
    for kind, off, arg in ops:
        if kind == "w":
            size = max(size, off + len(arg))
        elif kind == "z":
            size = max(size, off + arg)
        else:
            size = off
    return size


class JournalPatchedSource(Source):
    """An object file (or nothing) with the journal's writes, zeroings and truncations
    applied in order."""

    def __init__(self, base, ops, label="journal"):
        super().__init__()
        self.base = base
        self.ops = ops
        self.size = _final_size(base.size if base is not None else 0, ops)
        self.label = label

    def _read(self, offset, length):
        end = offset + length
        size = self.base.size if self.base is not None else 0
        avail = max(0, min(end, size) - offset)
        buf = bytearray(self.base.read(offset, avail) if avail else b"")
        buf.extend(bytes(length - len(buf)))
        for kind, off, arg in self.ops:
            if kind == "t":
                lo = max(off, offset)
                if lo < end:
                    buf[lo - offset:] = bytes(end - lo)
                continue
            n = len(arg) if kind == "w" else arg
            lo, hi = max(off, offset), min(off + n, end)
            if lo < hi:
                buf[lo - offset:hi - offset] = arg[lo - off:hi - off] if kind == "w" else bytes(hi - lo)
        return bytes(buf)
