"""Erasure-coded RADOS objects: a logical object read back from its shards.

Layout (``ECUtil::stripe_info_t``, ``ECBackend``/``ECCommon`` reads): a pool's
``stripe_width`` is ``k * stripe_unit`` (the profile's ``stripe_unit``, default
``osd_pool_erasure_code_stripe_unit`` = 4 KiB); the object is cut into stripes
of ``stripe_width`` bytes, data chunk ``i`` of stripe ``s`` holds the object
bytes ``[s * stripe_width + i * stripe_unit, + stripe_unit)`` and is stored at
``[s * stripe_unit, + stripe_unit)`` of shard ``i`` (the ghobject's
``shard_id``; without a ``mapping`` in the profile, chunk ``i`` is shard ``i``).
Shards ``k .. k+m-1`` hold the coding chunks.  Each shard is an object of its
own (onode key shard byte ``shard + 0x80``) with the logical ``object_info_t``
(``_``, whose ``size`` is the object size), the ``snapset`` and ``hinfo_key``
(``ECUtil::HashInfo``: total chunk size, cumulative crc32c per shard, kept for
append-only writes); the shard size is the object size rounded up to whole
stripes, divided by k.

Reconstruction: for ``reed_sol_van`` (the default technique of the ``isa``
plugin, Ceph 20's default, and of ``jerasure``) the first coding row of the
Vandermonde-derived generator matrix is all ones (ISA-L ``gf_gen_rs_matrix``,
jerasure ``reed_sol_vandermonde_coding_matrix``), so coding chunk ``k`` is the
XOR of the data chunks.  With ``m == 1`` that is the whole code: a lost data
chunk is the XOR of the other data chunks and the coding chunk (checked byte for
byte against the shards of the ceph-20 fixture).  Codes with ``m > 1`` would
need the full matrix; they are read while every data chunk is there and
otherwise reported as not decodable (no library was verified against Ceph's
matrices for m > 1).

References: ceph/src/osd/ECUtil.{h,cc} (stripe_info_t, HashInfo),
ceph/src/osd/ECBackend.cc, ECCommon.cc, ECTransaction.cc,
ceph/src/erasure-code/isa/ErasureCodeIsa.cc (reed_sol_van: gf_gen_rs_matrix),
ceph/src/erasure-code/jerasure/ErasureCodeJerasure.cc, ceph/src/osd/OSDMap.cc
(erasure_code_profiles).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pvfs.errors import UnreadableError
from pvfs.source import DATA, UNREADABLE, Source

#: techniques whose first coding chunk is the XOR of the data chunks
XOR_TECHNIQUES = {("isa", "reed_sol_van"), ("jerasure", "reed_sol_van")}
MAX_K = 64
#: pg_pool_t FLAG_EC_OPTIMIZATIONS (Ceph 20 ``allow_ec_optimizations``: partial writes,
#: parity-delta writes, shards of unequal sizes; not read here)
FLAG_EC_OPTIMIZATIONS = 1 << 19


@dataclass
class EcLayout:
    """What a pool's profile says about its objects."""

    k: int
    m: int
    stripe_unit: int
    plugin: str
    technique: str
    problem: str | None = None  # why the pool cannot be read at all

    @property
    def stripe_width(self):
        return self.k * self.stripe_unit

    @property
    def can_rebuild(self):
        """One lost data chunk per stripe can be rebuilt (m == 1, XOR code)."""
        return self.m == 1 and (self.plugin, self.technique) in XOR_TECHNIQUES

    def shard_of_object(self, offset):
        """(data chunk, shard offset) of an object offset."""
        s, r = divmod(offset, self.stripe_width)
        i, o = divmod(r, self.stripe_unit)
        return i, s * self.stripe_unit + o

    def object_ranges_of_shard(self, shard, offset, length):
        """Object ranges of a data shard's byte range (coding shards: the stripes)."""
        su, sw = self.stripe_unit, self.stripe_width
        out = []
        pos, end = offset, offset + length
        while pos < end:
            s, o = divmod(pos, su)
            n = min(su - o, end - pos)
            if shard < self.k:
                out.append((s * sw + shard * su + o, n))
            else:
                out.append((s * sw, sw))
            pos += n
        return out


def ec_layout(pool) -> EcLayout | None:
    """The layout of an erasure-coded pool (``PoolInfo``), or None if not EC."""
    if pool is None or not pool.erasure:
        return None
    prof = pool.ec_profile
    if prof is None:
        return EcLayout(0, 0, 0, "", "", problem=f"erasure code profile "
                        f"{pool.erasure_code_profile or '?'} not found in the OSDMap")
    plugin = prof.get("plugin", "jerasure")
    technique = prof.get("technique", "reed_sol_van")
    try:
        k, m = int(prof.get("k", "2")), int(prof.get("m", "1"))
    except ValueError:
        return EcLayout(0, 0, 0, plugin, technique, problem=f"profile k/m not numbers: {prof}")
    if not 1 <= k <= MAX_K or not 1 <= m <= MAX_K:
        return EcLayout(k, m, 0, plugin, technique, problem=f"profile k={k} m={m} out of range")
    sw = pool.stripe_width
    if sw <= 0 or sw % k:
        return EcLayout(k, m, 0, plugin, technique,
                        problem=f"stripe_width {sw} is not a multiple of k={k}")
    lay = EcLayout(k, m, sw // k, plugin, technique)
    if prof.get("mapping") or plugin in ("lrc", "shec", "clay"):
        lay.problem = f"plugin {plugin} (chunk mapping {prof.get('mapping') or 'none'}) is not supported"
    elif pool.flags & FLAG_EC_OPTIMIZATIONS:
        lay.problem = "the pool has allow_ec_optimizations (Ceph 20 optimized EC), not supported"
    return lay


class EcObjectSource(Source):
    """A logical object of ``size`` bytes from its shard sources.

    ``shards``: {shard id: [Source, ...]} (copies of the same shard, tried in turn);
    each Source gives the shard's bytes (reads past its end are zeros: a shard is
    padded to whole stripes).  A data chunk no copy can give is rebuilt from the
    others and coding chunk ``k`` when the layout allows (``on_rebuild`` is told
    once per shard), else the read fails with :class:`UnreadableError`.
    """

    def __init__(self, layout: EcLayout, shards, size, label="ec", on_rebuild=None):
        super().__init__()
        self.layout = layout
        self.shards = shards
        self.size = size
        self.label = label
        self.on_rebuild = on_rebuild
        self._told = set()

    def _shard_read(self, i, offset, length):
        """Bytes of shard ``i`` from its first copy that reads, or None."""
        for s in self.shards.get(i) or ():
            avail = max(0, min(length, s.size - offset))
            try:
                data = s.read(offset, avail) if avail else b""
            except UnreadableError:
                continue  # (the copy's source reported it) next copy, or rebuild
            return data + bytes(length - avail) if avail < length else data
        return None

    def _chunks(self, s0, s1, needed):
        """Data chunks ``needed`` of stripes ``[s0, s1)`` in a (k, n * su) array (the
        other rows zero)."""
        lay = self.layout
        su, k = lay.stripe_unit, lay.k
        off, n = s0 * su, (s1 - s0) * su
        out = np.zeros((k, n), dtype=np.uint8)
        lost = []
        for i in needed:
            data = self._shard_read(i, off, n)
            if data is None:
                lost.append(i)
            else:
                out[i] = np.frombuffer(data, dtype=np.uint8)
        if not lost:
            return out
        ranges = [r for i in lost for r in lay.object_ranges_of_shard(i, off, n)]
        if len(lost) > 1 or not lay.can_rebuild:
            why = ("no erasure code rebuild for this profile "
                   f"({lay.plugin}/{lay.technique} k={lay.k} m={lay.m})"
                   if len(lost) <= lay.m else f"{len(lost)} data shards lost, m={lay.m}")
            raise UnreadableError(f"{self.label}: shard(s) {lost} unreadable; {why}",
                                  _clip(ranges, self.size))
        parity = self._shard_read(k, off, n)
        if parity is None:
            raise UnreadableError(f"{self.label}: data shard {lost[0]} and coding shard {k} "
                                  "unreadable", _clip(ranges, self.size))
        acc = np.frombuffer(parity, dtype=np.uint8).copy()
        for i in range(k):
            if i == lost[0]:
                continue
            if i not in needed:
                data = self._shard_read(i, off, n)
                if data is None:
                    raise UnreadableError(f"{self.label}: data shards {lost[0]} and {i} "
                                          "unreadable", _clip(ranges, self.size))
                out[i] = np.frombuffer(data, dtype=np.uint8)
            acc ^= out[i]
        out[lost[0]] = acc
        if lost[0] not in self._told:
            self._told.add(lost[0])
            if self.on_rebuild is not None:
                self.on_rebuild(lost[0])
        return out

    def _read(self, offset, length):
        lay = self.layout
        su, sw, k = lay.stripe_unit, lay.stripe_width, lay.k
        s0 = offset // sw
        s1 = -(-(offset + length) // sw)
        first = (offset - s0 * sw) // su  # chunk of the first byte in the first stripe
        last = (offset + length - 1 - (s1 - 1) * sw) // su  # of the last byte, last stripe
        if s1 - s0 == 1:
            needed = range(first, last + 1)
        elif s1 - s0 == 2 and first > last + 1:
            needed = [*range(0, last + 1), *range(first, k)]
        else:
            needed = range(k)
        chunks = self._chunks(s0, s1, needed)  # (k, nstripes * su)
        n = s1 - s0
        # (k, n, su) -> (n, k, su): the object's bytes in order
        obj = chunks.reshape(k, n, su).transpose(1, 0, 2).reshape(n * sw)
        start = offset - s0 * sw
        return obj[start:start + length].tobytes()

    def _block_status(self, offset, length):
        lay = self.layout
        have = [i for i in range(lay.k + lay.m) if self.shards.get(i)]
        missing = [i for i in range(lay.k) if i not in have]
        if not missing or (len(missing) == 1 and lay.can_rebuild and lay.k in have):
            return [(offset, length, DATA)]
        return [(offset, length, UNREADABLE)]


def _clip(ranges, size):
    out = []
    for o, n in ranges:
        if o < size:
            out.append((o, min(n, size - o)))
    return out
