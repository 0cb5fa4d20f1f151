"""One BlueStore OSD as an object store: object index, onodes, data, attrs, omap.

Built on part A's key/value view (``kv.open_osd``).  The index is the list
of onode keys (``O`` prefix, all shards), decoded into ``(pool, nspace,
name) -> {snap: key}``; onodes and extent maps are decoded on demand and
cached in ``METADATA_CACHE`` (keyed by the device's uid).

Object data is read from ``Osd.source``: the block device with the pending
deferred writes (``L`` prefix) applied by part A (deferred.py), as
``BlueStore::_deferred_replay`` would.

References: ceph/src/os/bluestore/BlueStore.cc (``_open_collections``,
``get_onode``, ``ExtentMap::fault_range``, ``_omap_get``).
"""

from __future__ import annotations

import array
import bisect
import hashlib
import re

import numpy as np

from pvfs.cache import METADATA_CACHE

from .errors import CephError
from .keys import (CEPH_NOSNAP, NO_GEN, NO_SHARD, ObjectId, ObjectKeyError, decode_onode_key,
                   encode_onode_key, extent_shard_key, is_onode_key, omap_prefix_and_base)
from .objects import ObjectSource
from .onode import OnodeError, decode_extents, decode_onode
from .osdtypes import OsdTypeError, decode_object_info, decode_snapset

#: bound on an in-memory object read (rbd_id, rbd_object_map, osdmap objects)
MAX_SMALL_OBJECT = 64 << 20

_COLL_RE = re.compile(rb"^(\d+)\.([0-9a-f]+)(?:s(\d+))?_head$")


_DATA_RE = re.compile(rb"^(rbd_data\..+)\.([0-9a-f]{16})$")


class _DataIndex:
    """Head objects ``<prefix>.<objno as 16 hex>`` of one (pool, namespace, prefix):
    sorted objnos (u64) and their hashes (u32), 12 bytes an object instead of a
    Python dict entry (~500 bytes): an OSD of millions of RBD objects stays small."""

    __slots__ = ("objnos", "hashes", "_o", "_h")

    def __init__(self):
        self._o = array.array("Q")
        self._h = array.array("I")
        self.objnos = self.hashes = None

    def add(self, objno, hash_):
        self._o.append(objno)
        self._h.append(hash_)

    def finish(self):
        o = np.frombuffer(self._o, dtype=np.uint64) if len(self._o) else np.zeros(0, np.uint64)
        h = np.frombuffer(self._h, dtype=np.uint32) if len(self._h) else np.zeros(0, np.uint32)
        order = np.argsort(o, kind="stable")
        self.objnos = o[order].copy()
        self.hashes = h[order].copy()
        self._o = self._h = None

    def find(self, objno):
        if not 0 <= objno < 1 << 64:
            return None
        i = int(np.searchsorted(self.objnos, np.uint64(objno)))  # (a Python int would
        # make numpy convert the whole array on every call)
        if i < len(self.objnos) and int(self.objnos[i]) == objno:
            return int(self.hashes[i])
        return None


class _OtherIndex:
    """:attr:`OsdStore.other` read from flat arrays (mapped from the index store) instead
    of a dict: ``(pool, nspace, name) -> {snap: onode key}``.  Rows are kept in the order
    the keys were found, grouped by object; ``order`` sorts them by object (then row) for
    lookups by bisection.  Only the rows a lookup touches are read: a cluster of many
    snapshot clones keeps no Python objects per clone (~500 bytes each in a dict)."""

    @staticmethod
    def object_hash(obj) -> int:
        """A 64-bit hash of ``(pool, nspace, name)``: most lookups are of RBD data objects,
        which are not here, and a search in the sorted hashes says so at once."""
        pool, ns, name = obj
        h = hashlib.blake2b(b"%d\0%s\0%s" % (pool, ns, name), digest_size=8).digest()
        return int.from_bytes(h, "little")

    def __init__(self, arrays, objects):
        self.hashes = arrays["other_hashes"]
        self.pool, self.snap = arrays["other_pool"], arrays["other_snap"]
        self.name_off, self.names = arrays["other_name_off"], arrays["other_names"]
        self.key_off, self.keys = arrays["other_key_off"], arrays["other_keys"]
        self.ns_off, self.nss = arrays["other_ns_off"], arrays["other_nss"]
        self.order = arrays["other_order"]
        self.rows = len(self.pool)
        self.objects = objects

    @staticmethod
    def check(arrays, objects) -> bool:
        """Whether the arrays agree with each other (their file is checksummed; this is
        what a lookup relies on)."""
        n = len(arrays["other_pool"])
        if len(arrays["other_snap"]) != n or len(arrays["other_order"]) != n:
            return False
        for off, blob in (("other_name_off", "other_names"), ("other_key_off", "other_keys"),
                          ("other_ns_off", "other_nss")):
            o = arrays[off]
            if len(o) != n + 1 or int(o[0]) != 0 or int(o[-1]) != len(arrays[blob]) or \
                    (n and not np.all(o[1:] >= o[:-1])):
                return False
        order, hashes = arrays["other_order"], arrays["other_hashes"]
        if len(hashes) != objects or (len(hashes) > 1 and not np.all(hashes[1:] >= hashes[:-1])):
            return False
        return not n or (int(order.min()) >= 0 and int(order.max()) < n and 0 <= objects <= n)

    def _obj(self, r):
        r = int(r)
        return (int(self.pool[r]), self.nss[self.ns_off[r]:self.ns_off[r + 1]].tobytes(),
                self.names[self.name_off[r]:self.name_off[r + 1]].tobytes())

    def _key(self, r):
        return self.keys[self.key_off[r]:self.key_off[r + 1]].tobytes()

    def _rows_of(self, obj):
        """The rows of ``obj`` (each of its versions), by the sorted hashes first (most
        lookups are of objects not here), then by bisection in ``order``."""
        h = np.uint64(self.object_hash(obj))
        j = int(np.searchsorted(self.hashes, h))
        if j >= len(self.hashes) or self.hashes[j] != h:
            return
        i = bisect.bisect_left(self.order, obj, key=self._obj)
        while i < self.rows:
            r = int(self.order[i])
            if self._obj(r) != obj:
                return
            yield r
            i += 1

    def get(self, obj, default=None):
        out = {int(self.snap[r]): self._key(r) for r in self._rows_of(obj)}
        return out or default

    def row(self, obj, snap):
        """The row of version ``snap`` of ``obj`` (None: not here); rows are numbered in
        the order found, stable for the life of the index (the OSD view's inode keys)."""
        return next((r for r in self._rows_of(obj) if int(self.snap[r]) == snap), None)

    def __contains__(self, obj):
        return self.get(obj) is not None

    def __len__(self):
        return self.objects

    def items(self):
        cur, snaps = None, {}
        for r in range(self.rows):
            obj = self._obj(r)
            if obj != cur and cur is not None:
                yield cur, snaps
                snaps = {}
            cur = obj
            snaps[int(self.snap[r])] = self._key(r)
        if cur is not None:
            yield cur, snaps

    def __iter__(self):
        return (obj for obj, _snaps in self.items())

    def keys(self):
        return iter(self)

    def pools(self):
        return set(np.unique(self.pool).tolist()) if self.rows else set()

    def namespaces(self, pool):
        rows = np.flatnonzero(self.pool == pool)
        named = rows[self.ns_off[rows + 1] > self.ns_off[rows]]
        found = {self.nss[self.ns_off[r]:self.ns_off[r + 1]].tobytes() for r in named.tolist()}
        return found | ({b""} if len(named) < len(rows) else set())

    def sorted_names(self, pool, nspace):
        """The names of (pool, nspace), sorted, as a sequence (one per row: an object
        with clones is there once per version)."""
        where = (pool, nspace)

        def head(r):
            return self._obj(r)[:2]

        lo = bisect.bisect_left(self.order, where, key=head)
        hi = bisect.bisect_right(self.order, where, lo=lo, key=head)
        return _NameRows(self, lo, hi)


class _NameRows:
    """Names of rows ``lo .. hi-1`` of an :class:`_OtherIndex` in sorted order (for bisect)."""

    def __init__(self, other, lo, hi):
        self.other, self.lo, self.hi = other, lo, hi

    def __len__(self):
        return self.hi - self.lo

    def __getitem__(self, i):
        if not 0 <= i < self.hi - self.lo:
            raise IndexError(i)
        return self.other._obj(self.other.order[self.lo + i])[2]


class OsdStore:
    """Objects of one OSD.

    The index: head objects named like RBD data objects (no locator key, no shard,
    no generation) in compact per-prefix arrays (:class:`_DataIndex`); every other
    object (headers, clones, maps, meta objects, EC shards) in ``other``:
    ``(pool, nspace, name) -> {snap: key}``.  Keys of the compact part are rebuilt
    with ``encode_onode_key`` when looked up.
    """

    def __init__(self, osd, name: str, report=None):
        self.osd = osd
        self.kv = osd.kv
        self.name = name  # "osd.0"
        self.report = report  # report(severity, code, message, ranges=())
        self.device = osd.source
        self.uid = osd.source.uid
        self.other: dict = {}  # (pool, nspace, name) -> {snap: key}
        self.data: dict = {}  # (pool, nspace, prefix) -> _DataIndex
        self.collections: set = set()  # (pool, pg seed)
        self.ec_pools: set = set()  # pools whose collections are EC shards (``2.3s0_head``)
        self.count = 0
        self.bad_keys = 0
        self._sorted_other = {}

    def _note(self, severity, code, message, ranges=()):
        if self.report is not None:
            self.report(severity, code, message, ranges)

    # -- index -------------------------------------------------------------------------
    def build_index(self):
        for key, _value in self.kv.iterate("C", fill_cache=False):
            m = _COLL_RE.match(bytes(key))
            if m:
                self.collections.add((int(m.group(1)), int(m.group(2), 16)))
                if m.group(3) is not None:
                    self.ec_pools.add(int(m.group(1)))
        bad = 0
        for key, _value in self.kv.iterate("O", fill_cache=False):  # each block once
            if not is_onode_key(key):
                continue
            try:
                oid = decode_onode_key(key)
            except ObjectKeyError:
                bad += 1
                continue
            self.count += 1
            if oid.snap == CEPH_NOSNAP and not oid.key and oid.gen == NO_GEN \
                    and oid.shard == NO_SHARD:
                m = _DATA_RE.match(oid.name)
                if m:
                    di = self.data.get((oid.pool, oid.nspace, m.group(1)))
                    if di is None:
                        di = self.data[(oid.pool, oid.nspace, m.group(1))] = _DataIndex()
                    di.add(int(m.group(2), 16), oid.hash)
                    continue
            self.other.setdefault((oid.pool, oid.nspace, oid.name), {})[oid.snap] = bytes(key)
        for di in self.data.values():
            di.finish()
        self.bad_keys = bad
        self._note_bad()
        return self

    def _note_bad(self):
        if self.bad_keys:
            self._note("warning", "bad-onode-keys",
                       f"{self.bad_keys} onode keys do not decode; skipped")

    # -- the persistent index (pvfs/index.py) ------------------------------------------
    #: Bump when what :meth:`index_payload` stores changes.
    INDEX_VERSION = 3

    def index_payload(self):
        """``(info, arrays)``: :meth:`build_index`'s result in flat arrays (12 bytes an RBD
        data object; for every other object its pool, snap, namespace, name and onode key,
        rows in the order found and their order by object: :class:`_OtherIndex`)."""
        groups = sorted(self.data)
        objnos = [self.data[g].objnos for g in groups]
        hashes = [self.data[g].hashes for g in groups]
        counts = [len(o) for o in objnos]
        other = [(p, ns, n, snap, key) for (p, ns, n), snaps in self.other.items()
                 for snap, key in snaps.items()]

        def offsets(parts):
            return np.concatenate(([0], np.cumsum([len(x) for x in parts], dtype=np.int64))) \
                .astype(np.int64)

        order = sorted(range(len(other)), key=lambda r: (other[r][:3], r))
        arrays = {
            "objnos": np.concatenate(objnos) if objnos else np.zeros(0, np.uint64),
            "hashes": np.concatenate(hashes) if hashes else np.zeros(0, np.uint32),
            "data_counts": np.array(counts, np.int64),
            "other_pool": np.array([o[0] for o in other], np.int64),
            "other_snap": np.array([o[3] for o in other], np.uint64),
            "other_name_off": offsets([o[2] for o in other]),
            "other_names": np.frombuffer(b"".join(o[2] for o in other), np.uint8),
            "other_key_off": offsets([o[4] for o in other]),
            "other_keys": np.frombuffer(b"".join(o[4] for o in other), np.uint8),
            "other_ns_off": offsets([o[1] for o in other]),
            "other_nss": np.frombuffer(b"".join(o[1] for o in other), np.uint8),
            "other_order": np.array(order, np.int64),
            "other_hashes": np.sort(np.array([_OtherIndex.object_hash(o) for o in self.other],
                                             np.uint64)),
        }
        info = {"groups": [[p, ns.hex(), px.hex()] for p, ns, px in groups],
                "other_objects": len(self.other),
                "collections": sorted(self.collections), "ec_pools": sorted(self.ec_pools),
                "count": self.count, "bad_keys": self.bad_keys}
        return info, arrays

    @classmethod
    def indexed(cls, osd, name, ix, report=None, progress=None):
        """The store of ``osd`` with its object index from the index store entry ``ix``
        (``ctx.index``), built and saved when missing or stale.  Its per-object tables
        (12 bytes an RBD data object: 2 million objects on each of 12 OSDs are 290 MB) are
        the mapped file's, file pages read when looked up, not the process's own memory;
        also right after a build (saved, then mapped; without a store, copied into an
        unnamed temporary file: ``pvfs.index.scratch_map``)."""
        from pvfs.index import scratch_map

        st = cls(osd, name, report=report)
        got = ix.load(mapped=True)
        if got is not None and st.load_index(*got):
            return st
        st = cls(osd, name, report=report)
        if progress is not None:
            progress(f"ceph: indexing the objects of {name}")
        st.build_index()
        info, arrays = st.index_payload()
        got = ix.load_saved() if ix.usable and ix.save(info, arrays) else None
        if got is None:
            got = info, scratch_map(arrays)
        del arrays
        mapped = cls(osd, name)  # (the build reported its bad keys already)
        if not mapped.load_index(*got):
            return st
        mapped.report = report
        return mapped

    def load_index(self, info, arrays) -> bool:
        """Take the object index from a stored :meth:`index_payload` (checked by the
        store: same device, same label, BlueFS and RocksDB state)."""
        counts = arrays["data_counts"].tolist()
        if len(counts) != len(info["groups"]) or sum(counts) != len(arrays["objnos"]):
            return False
        pos = 0
        for (p, ns, px), n in zip(info["groups"], counts, strict=True):
            di = _DataIndex()
            di.objnos = arrays["objnos"][pos:pos + n]
            di.hashes = arrays["hashes"][pos:pos + n]
            di._o = di._h = None
            self.data[(int(p), bytes.fromhex(ns), bytes.fromhex(px))] = di
            pos += n
        objects = int(info.get("other_objects", -1))
        if not _OtherIndex.check(arrays, objects):
            return False
        self.other = _OtherIndex(arrays, objects)
        self.collections = {tuple(c) for c in info["collections"]}
        self.ec_pools = set(info["ec_pools"])
        self.count = int(info["count"])
        self.bad_keys = int(info["bad_keys"])
        self._note_bad()
        return True

    def lookup(self, pool, name: bytes, nspace=b"", snap=CEPH_NOSNAP):
        """(key, ObjectId) of an object, or None."""
        snaps = self.other.get((pool, nspace, name))
        if snaps and snap in snaps:
            key = snaps[snap]
            return key, decode_onode_key(key)
        if snap == CEPH_NOSNAP:
            m = _DATA_RE.match(name)
            if m:
                di = self.data.get((pool, nspace, m.group(1)))
                if di is not None:
                    h = di.find(int(m.group(2), 16))
                    if h is not None:
                        oid = ObjectId(pool, h, nspace, name, b"", CEPH_NOSNAP)
                        return encode_onode_key(oid), oid
        return None

    def snaps_of(self, pool, name, nspace=b""):
        """{snap: key} of every version (head, clones) of an object on this OSD."""
        out = dict(self.other.get((pool, nspace, name), {}))
        hit = None if CEPH_NOSNAP in out else self.lookup(pool, name, nspace)
        if hit is not None:
            out[CEPH_NOSNAP] = hit[0]
        return out

    def pools(self):
        other = self.other.pools() if isinstance(self.other, _OtherIndex) else \
            {p for (p, _ns, _n) in self.other}
        return other | {p for (p, _ns, _x) in self.data}

    def namespaces(self, pool):
        other = self.other.namespaces(pool) if isinstance(self.other, _OtherIndex) else \
            {ns for (p, ns, _n) in self.other if p == pool}
        return other | {ns for (p, ns, _x) in self.data if p == pool}

    def other_names(self, pool, nspace=b""):
        """Sorted names of this pool's objects outside the compact data index (a
        sequence for ``bisect``; from the arrays, an object with clones is there once per
        version)."""
        if isinstance(self.other, _OtherIndex):
            return self.other.sorted_names(pool, nspace)
        k = (pool, nspace)
        names = self._sorted_other.get(k)
        if names is None:
            names = self._sorted_other[k] = sorted(
                n for (p, ns, n) in self.other if p == pool and ns == nspace)
        return names

    def data_prefixes(self, pool, nspace=b""):
        return sorted(x for (p, ns, x) in self.data if p == pool and ns == nspace)

    def data_objnos(self, pool, nspace, prefix):
        di = self.data.get((pool, nspace, prefix))
        return di.objnos if di is not None else np.zeros(0, dtype=np.uint64)

    def names_with_prefix(self, pool, prefix: bytes, nspace=b""):
        """Sorted object names (any snap) starting with ``prefix``."""
        names = self.other_names(pool, nspace)
        i = bisect.bisect_left(names, prefix)
        out = []
        while i < len(names) and names[i].startswith(prefix):
            out.append(names[i])
            i += 1
        for dp in self.data_prefixes(pool, nspace):
            if dp.startswith(prefix) or prefix.startswith(dp + b"."):
                out.extend(n for n in (dp + b".%016x" % int(o) for o in self.data_objnos(pool, nspace, dp))
                           if n.startswith(prefix))
        return sorted(set(out))

    def iter_objects(self, pool=None):
        """Yield ``(pool, nspace, name, snap, key)`` for every object (keys built lazily
        for the compact part: ``key`` may be None there, use :meth:`lookup`)."""
        for (p, ns, n), snaps in self.other.items():
            if pool is None or p == pool:
                for snap, key in snaps.items():
                    yield p, ns, n, snap, key
        for (p, ns, dp), di in self.data.items():
            if pool is None or p == pool:
                for o in di.objnos:
                    yield p, ns, dp + b".%016x" % int(o), CEPH_NOSNAP, None

    # -- onodes ---------------------------------------------------------------------------
    def onode(self, key):
        ck = ("ceph-onode", self.uid, key)
        o = METADATA_CACHE.get(ck)
        if o is None:
            value = self.kv.get("O", key)
            if value is None:
                raise OnodeError("onode key vanished")
            o = METADATA_CACHE.put(ck, decode_onode(value))
        return o

    def extents(self, key, onode):
        """(extents, broken ranges) of an onode: inline or from its shards."""
        if onode.inline_extents is not None:
            return onode.inline_extents, []
        out, broken = [], []
        for i, (off, _nbytes) in enumerate(onode.shards):
            end = onode.shards[i + 1][0] if i + 1 < len(onode.shards) else max(onode.size, off)
            ck = ("ceph-shard", self.uid, key, off)
            exts = METADATA_CACHE.get(ck)
            if exts is None:
                value = self.kv.get("O", extent_shard_key(key, off))
                try:
                    if value is None:
                        raise OnodeError("extent map shard missing from the database")
                    exts = decode_extents(value, onode.spanning, f"extent shard {off:#x}")
                except CephError as e:
                    broken.append((off, max(0, end - off), f"extent map shard at {off:#x}: {e}"))
                    continue
                METADATA_CACHE.put(ck, _Cached(exts))
            else:
                exts = exts.items
            out.extend(exts)
        return out, broken

    def object_source(self, key, size=None, label=None, on_damage=None):
        o = self.onode(key)
        exts, broken = self.extents(key, o)
        return ObjectSource(self.device, exts, o.size, size=size, label=label or self.name,
                            broken=broken, on_damage=on_damage)

    def read_small(self, key, limit=MAX_SMALL_OBJECT) -> bytes:
        o = self.onode(key)
        if o.size > limit:
            raise OnodeError(f"object of {o.size} bytes is larger than {limit}")
        src = self.object_source(key)
        return src.read(0, src.size)

    def object_info(self, key):
        attr = self.onode(key).attrs.get("_")
        if attr is None:
            return None
        try:
            return decode_object_info(attr)
        except OsdTypeError:
            return None

    def snapset(self, key):
        attr = self.onode(key).attrs.get("snapset")
        if attr is None:
            return None
        return decode_snapset(attr)

    # -- omap ------------------------------------------------------------------------------
    def omap(self, key, oid):
        """All omap entries of an object as {key: value}."""
        o = self.onode(key)
        if not o.flags & 1:  # FLAG_OMAP
            return {}
        prefix, base = omap_prefix_and_base(o.flags, oid.pool, oid.hash, o.nid)
        out = {}
        for k, v in self.kv.iterate(prefix, base + b".", base + b"/"):
            out[bytes(k[len(base) + 1:])] = bytes(v)
            if len(out) > 1_000_000:
                break
        return out


class _Cached:
    """A list wrapped for METADATA_CACHE (cost = rough memory size)."""

    __slots__ = ("items", "cache_cost")

    def __init__(self, items):
        self.items = items
        self.cache_cost = 256 + 200 * len(items)
