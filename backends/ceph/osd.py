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

import re

from pvfs.cache import METADATA_CACHE

from .errors import CephError
from .keys import (CEPH_NOSNAP, ObjectKeyError, decode_onode_key, extent_shard_key,
                   is_onode_key, omap_prefix_and_base)
from .objects import ObjectSource
from .onode import OnodeError, decode_extents, decode_onode
from .osdtypes import OsdTypeError, decode_object_info, decode_snapset

#: bound on an in-memory object read (rbd_id, rbd_object_map, osdmap objects)
MAX_SMALL_OBJECT = 64 << 20

_COLL_RE = re.compile(rb"^(\d+)\.([0-9a-f]+)(?:s(\d+))?_head$")


class OsdStore:
    """Objects of one OSD."""

    def __init__(self, osd, name: str, report=None):
        self.osd = osd
        self.kv = osd.kv
        self.name = name  # "osd.0"
        self.report = report  # report(severity, code, message, ranges=())
        self.device = osd.source
        self.uid = osd.source.uid
        self.objects: dict = {}  # (pool, nspace, name) -> {snap: key}
        self.collections: set = set()  # (pool, pg seed)
        self.ec_pools: set = set()  # pools whose collections are EC shards (``2.3s0_head``)
        self.count = 0

    def _note(self, severity, code, message, ranges=()):
        if self.report is not None:
            self.report(severity, code, message, ranges)

    # -- index -------------------------------------------------------------------------
    def build_index(self):
        for key, _value in self.kv.iterate("C"):
            m = _COLL_RE.match(bytes(key))
            if m:
                self.collections.add((int(m.group(1)), int(m.group(2), 16)))
                if m.group(3) is not None:
                    self.ec_pools.add(int(m.group(1)))
        bad = 0
        for key, _value in self.kv.iterate("O"):
            if not is_onode_key(key):
                continue
            try:
                oid = decode_onode_key(key)
            except ObjectKeyError:
                bad += 1
                continue
            self.objects.setdefault((oid.pool, oid.nspace, oid.name), {})[oid.snap] = (bytes(key), oid)
            self.count += 1
        if bad:
            self._note("warning", "bad-onode-keys", f"{bad} onode keys do not decode; skipped")
        return self

    def lookup(self, pool, name: bytes, nspace=b"", snap=CEPH_NOSNAP):
        """(key, ObjectId) of an object, or None."""
        snaps = self.objects.get((pool, nspace, name))
        if not snaps:
            return None
        return snaps.get(snap)

    def snaps_of(self, pool, name, nspace=b""):
        return self.objects.get((pool, nspace, name), {})

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
