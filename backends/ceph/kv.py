"""The key/value view BlueStore (and the monitor) have of their RocksDB.

Ceph's ``RocksDBStore`` stores a key of prefix ``P`` either in the default
column family as ``P + "\\0" + key`` or, when ``P`` is sharded (Pacific's
default sharding ``m(3) p(3,0-12) O(3,0-13)=... L P``, stored in the BlueFS
file ``sharding/def``), in column family ``P`` (one shard) or ``P-0`` ..
``P-<n-1>`` with the bare key.  Shards hash disjoint key sets, so a prefix's
keys are the ordered merge of its shards (and of any leftover default-family
entries).

Merge operators BlueStore registers (BlueStore::_open_db,
FreelistManager::setup_merge_operators): ``T`` statfs = element-wise int64
add (Int64ArrayMergeOperator), ``b`` bitmap freelist = byte-wise xor
(BitmapFreelistManager XorMergeOperator).  A first operand over no value is
taken as is (``merge_nonexistent``).

References: ceph/src/kv/RocksDBStore.cc (parse_sharding_def,
get_cf_handle, MergeOperatorRouter/Linker, WholeMergeIteratorImpl),
ceph/src/os/bluestore/BlueStore.cc (PREFIX_* names, Int64ArrayMergeOperator,
_open_db, _open_bluefs), ceph/src/os/bluestore/BitmapFreelistManager.cc.
"""

from __future__ import annotations

import heapq
import re
from dataclasses import dataclass

import numpy as np

from pvfs.errors import UnreadableError

from .bluefs import open_bluefs
from .errors import BlueFSError, CephError, LabelError, RocksDBError
from .label import find_label, probe_label
from .rocksdb.db import DB, HostDirFiles

#: BlueStore key prefixes (BlueStore.cc) with what they hold.
PREFIXES = {
    "S": "super (nid_max, blobid_max, ondisk_format ...)",
    "T": "statfs (merge: int64 add)",
    "C": "collections",
    "O": "object onodes and extent-map shards",
    "M": "omap (legacy)",
    "P": "pgmeta omap",
    "p": "per-pg omap",
    "m": "per-pool omap",
    "L": "deferred transactions",
    "B": "allocator metadata (bitmap freelist geometry)",
    "b": "bitmap freelist (merge: xor)",
    "X": "shared blobs",
    "Z": "zoned",
}


@dataclass
class ShardSpec:
    prefix: str
    shards: int
    hash_l: int = 0
    hash_h: int = 0xFFFFFFFF
    options: str = ""

    def cf_names(self):
        if self.shards == 1:
            return [self.prefix]
        return [f"{self.prefix}-{i}" for i in range(self.shards)]


_SHARD_RE = re.compile(r"^([^()=\s]+)(?:\((\d+)(?:,(\d+)-(\d+))?\))?(?:=(.*))?$")


def parse_sharding(text: str) -> dict:
    """``"m(3) p(3,0-12) O(3,0-13)=opts L P"`` -> ``{prefix: ShardSpec}``."""
    out = {}
    tokens, cur, depth = [], "", 0
    for ch in text.strip():
        if ch.isspace() and depth == 0:
            if cur:
                tokens.append(cur)
            cur = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
    if cur:
        tokens.append(cur)
    for tok in tokens:
        m = _SHARD_RE.match(tok)
        if not m:
            raise RocksDBError(f"bad sharding definition element {tok!r}")
        name, n, lo, hi, opts = m.groups()
        n = int(n) if n else 1
        if not 1 <= n <= 1024:
            raise RocksDBError(f"sharding {tok!r}: {n} shards")
        out[name] = ShardSpec(name, n, int(lo) if lo else 0,
                              int(hi) if hi else 0xFFFFFFFF, opts or "")
    return out


def infer_sharding(cf_names) -> dict:
    """The sharding the column family names imply (``O-0``..``O-2`` -> ``O(3)``, ``P`` ->
    ``P``), for a database whose ``sharding/def`` is lost.  Hash ranges cannot be
    inferred; reads do not need them (every shard is searched)."""
    groups = {}
    for name in cf_names:
        if name == "default":
            continue
        m = re.match(r"^(.+)-(\d+)$", name)
        prefix, idx = (m.group(1), int(m.group(2))) if m else (name, None)
        groups.setdefault(prefix, set()).add(idx)
    out = {}
    for prefix, idxs in groups.items():
        if idxs == {None}:
            out[prefix] = ShardSpec(prefix, 1)
        elif None not in idxs and idxs == set(range(len(idxs))):
            out[prefix] = ShardSpec(prefix, len(idxs))
    return out


# -- merge operators ---------------------------------------------------------------------
def int64_array_add(base, operands):
    acc = operands[0] if base is None else base
    rest = operands[1:] if base is None else operands
    for op in rest:
        if len(op) != len(acc) or len(op) % 8:
            raise RocksDBError(f"int64 array merge of {len(acc)} and {len(op)} bytes")
        acc = (np.frombuffer(acc, "<i8") + np.frombuffer(op, "<i8")).astype("<i8").tobytes()
    return acc


def xor_merge(base, operands):
    acc = operands[0] if base is None else base
    rest = operands[1:] if base is None else operands
    for op in rest:
        if len(op) != len(acc):
            raise RocksDBError(f"xor merge of {len(acc)} and {len(op)} bytes")
        acc = (np.frombuffer(acc, np.uint8) ^ np.frombuffer(op, np.uint8)).tobytes()
    return acc


BLUESTORE_MERGE = {"T": int64_array_add, "b": xor_merge}


class BlueFSFiles:
    """The BlueFS file table as the ``files`` interface of :class:`DB`."""

    def __init__(self, bluefs):
        self.bluefs = bluefs
        self._files = bluefs.files

    def listdir(self, dirname):
        return self.bluefs.listdir(dirname)

    def open(self, path):
        return self.bluefs.open(path)


class KV:
    """``get(prefix, key)`` / ``iterate(prefix, start, end)`` over a Ceph RocksDB."""

    def __init__(self, db: DB, sharding: dict | None = None, merge_ops: dict | None = None,
                 infer: bool = True):
        """``db`` is a :class:`DB` or a callable ``merge -> DB`` (so the WAL replay can
        fold merge operands with this view's operators)."""
        self.sharding = sharding or {}
        self.merge_ops = merge_ops or {}
        self.damage = []  # merge problems met while the DB replays its WAL
        if not isinstance(db, DB):
            db = db(self._merge)
        db.damage.extend(self.damage)
        self.damage = db.damage
        self.db = db
        db.merge = self._merge
        if not self.sharding and infer:
            self.sharding = infer_sharding(db.column_family_names())
            if self.sharding:
                self._note("warning", "rocksdb-sharding",
                           "no sharding definition; column families read as "
                           + " ".join(f"{p}({s.shards})" for p, s in self.sharding.items()))
        missing = [n for s in self.sharding.values() for n in s.cf_names()
                   if n not in db.cf_by_name]
        if missing:
            db.damage.append(("warning", "rocksdb-missing-cf",
                              f"column families of the sharding definition are missing: {missing}"))

    @staticmethod
    def _p(prefix) -> bytes:
        return prefix.encode("latin-1") if isinstance(prefix, str) else bytes(prefix)

    def _note(self, severity, code, msg):
        entry = (severity, code, msg)
        if entry not in self.damage[-16:]:  # met again on every read of the key
            self.damage.append(entry)

    def _merge(self, cf_name, key, base, operands):
        if cf_name == "default":
            prefix = key.split(b"\0", 1)[0].decode("latin-1")
        else:
            prefix = cf_name.rsplit("-", 1)[0] if cf_name not in self.sharding else cf_name
        fn = self.merge_ops.get(prefix)
        if fn is None:
            self._note("warning", "rocksdb-merge",
                       f"merge operands for prefix {prefix!r} without a merge operator")
            return operands[-1]
        try:
            return fn(base, operands)
        except RocksDBError as e:
            self._note("warning", "rocksdb-merge", f"prefix {prefix!r}: {e}")
            return operands[-1]

    def _sources(self, prefix, start, end, fill_cache=True):
        p = self._p(prefix)
        srcs = []
        spec = self.sharding.get(p.decode("latin-1"))
        if spec is not None:
            for name in spec.cf_names():
                srcs.append(self.db.iterate(name, start, end, fill_cache))
        head = p + b"\0"
        hi = head + end if end is not None else p + b"\x01"
        n = len(head)
        srcs.append(((k[n:], v) for k, v in self.db.iterate("default", head + start, hi,
                                                              fill_cache)))
        return srcs

    def iterate(self, prefix, start: bytes = b"", end: bytes | None = None,
                fill_cache: bool = True):
        """``(key, value)`` of ``prefix`` with ``start <= key < end``, in key order;
        ``fill_cache=False``: a one-pass scan that leaves the block cache as it was."""
        last = None
        for k, v in heapq.merge(*self._sources(prefix, start, end, fill_cache),
                                key=lambda e: e[0]):
            if k == last:
                continue  # same key in a shard and the default family: the shard wins
            last = k
            yield k, v

    def keys(self, prefix, start=b"", end=None):
        for k, _ in self.iterate(prefix, start, end):
            yield k

    def get(self, prefix, key: bytes):
        for k, v in self.iterate(prefix, key, key + b"\x00"):
            if k == key:
                return v
        return None

    def prefixes(self):
        """Every prefix with at least one live key, sorted."""
        found = set()
        for spec in self.sharding.values():
            if any(True for name in spec.cf_names() for _ in self.db.iterate(name)):
                found.add(spec.prefix)
        start = b""
        for _ in range(1 << 16):
            nxt = next(self.db.iterate("default", start), None)
            if nxt is None:
                break
            p = nxt[0].split(b"\0", 1)[0]
            found.add(p.decode("latin-1"))
            start = p + b"\x01"
        return sorted(found)


class Osd:
    """An opened BlueStore OSD: label, BlueFS, RocksDB key/value view, block reads.

    ``source`` (alias ``device``) is the main block device as given.  Pending
    deferred writes (prefix ``L``) are laid over it by part B (osd.OsdStore).
    """

    def __init__(self, source, label, bluefs, kv, damage):
        self.source = self.device = source
        self.label = label
        self.bluefs = bluefs
        self.kv = kv
        self.db = kv.db
        self.damage = damage

    def info(self) -> dict:
        """A JSON-ready summary for an expert's info file (label, BlueFS, RocksDB)."""
        lab = self.label
        db = self.db
        return {
            "osd_uuid": str(lab.osd_uuid), "whoami": lab.whoami, "ceph_fsid": lab.ceph_fsid,
            "size": lab.size, "description": lab.description, "label_offset": lab.offset,
            "meta": {k: v for k, v in lab.meta.items() if k != "osd_key"},
            "bluefs": {
                "uuid": str(self.bluefs.super.uuid), "block_size": self.bluefs.super.block_size,
                "layout": self.bluefs.super.layout, "log_records": self.bluefs.log_records,
                "log_end": self.bluefs.stop_reason,
                "files": {p: f.size for p, f in self.bluefs.files.items()},
            },
            "rocksdb": {
                "manifest": getattr(db, "manifest_name", None),
                "last_sequence": db.last_sequence, "wal_records": db.wal_records,
                "wal_files": [p for _, p in db.wal_files()],
                "sharding": {p: s.cf_names() for p, s in self.kv.sharding.items()},
                "column_families": {
                    c.name: {"id": c.id, "tables": [t.name for t in c.tables],
                             "memtable_keys": len(c.mem)}
                    for _, c in sorted(db.cfs.items())},
            },
            "damage": [list(d) for d in self.damage],
        }

    def read(self, offset, length) -> bytes:
        return self.source.read(offset, length)

    def read_extents(self, extents) -> bytes:
        return b"".join(self.source.read(o, n) for o, n in extents)


def open_osd(source, *, db_source=None, wal_source=None, verify=True,
             bluefs_scan_limit=4 << 30) -> Osd:
    """Open the BlueStore OSD on ``source`` (the main block device).

    ``bluefs_scan_limit``: how far to look for the BlueFS log when its superblock is lost.
    """
    damage = []
    try:
        label = find_label(source)
        if label.offset:
            damage.append(("warning", "bluestore-label-copy",
                           f"the label at 0 is damaged; using its copy at {label.offset:#x}"))
    except LabelError as e:
        label = probe_label(source.read(0, 4096)) if source.size >= 4096 else None
        if label is None:
            raise
        damage.append(("warning", "bluestore-label-crc", str(e)))
    if not label.is_main:
        raise CephError(f"this is a BlueStore '{label.description}' device, not an OSD's main "
                        "block device")
    try:
        bluefs = open_bluefs(source, db_source, wal_source, recover=True,
                             osd_uuid=label.osd_uuid, scan_limit=bluefs_scan_limit)
    except UnreadableError as e:
        raise BlueFSError(f"BlueFS unreadable: {e}") from None
    damage += [("warning", c, m) for c, m in bluefs.damage]
    if bluefs.super.osd_uuid != label.osd_uuid:
        damage.append(("warning", "bluefs-uuid",
                       f"BlueFS belongs to OSD {bluefs.super.osd_uuid}, label says {label.osd_uuid}"))
    files = BlueFSFiles(bluefs)
    bluefs.listener = lambda code, msg: damage.append(("warning", code, msg))
    sharding = {}
    if "sharding" in bluefs.dirs and "def" in bluefs.dirs["sharding"]:
        try:
            sharding = parse_sharding(bluefs.read_file("sharding/def", 1 << 20).decode("latin-1"))
        except (RocksDBError, UnreadableError, BlueFSError) as e:
            damage.append(("warning", "rocksdb-sharding", f"sharding/def: {e}"))
    kv = KV(lambda merge: DB(files, "db", wal_dirs=["db.wal", "db"], sst_dirs=["db", "db.slow"],
                             merge=merge, verify=verify, name=f"osd.{label.whoami}"),
            sharding, BLUESTORE_MERGE)
    db = kv.db
    db.damage[:0] = damage
    bluefs.listener = lambda code, msg: db.damage.append(("warning", code, msg))
    return Osd(source, label, bluefs, kv, db.damage)


def open_kv_dir(path, verify=True) -> KV:
    """A RocksDB directory on the host (the monitor's ``store.db``) as a :class:`KV`."""
    return KV(DB(HostDirFiles(path), "", verify=verify, name=str(path)))
