"""Object sets and dnodes: the DMU layer every dataset, zvol and the MOS is made of.

References: OpenZFS include/sys/dnode.h (dnode_phys_t, DN_SLOTS / dn_extra_slots for
large dnodes, DNODE_FLAG_SPILL_BLKPTR, DN_SPILL_BLKPTR at the end of the dnode),
dmu_objset.h (objset_phys_t), module/zfs/dbuf.c (dbuf_findbp: the block tree walk,
``epbs = indblkshift - SPA_BLKPTRSHIFT``), "ZFS On-Disk Specification" chapters 3-4.
"""

from __future__ import annotations

import struct

import numpy as np

from pvfs.cache import METADATA_CACHE
from pvfs.errors import UnreadableError
from pvfs.source import BAD_ZERO, DATA, UNMAPPED, UNREADABLE, Source

from . import readahead
from .blkptr import BlkPtr
from .errors import ZfsError
from .structs import (BLKPTR_SIZE, DNODE_CORE_SIZE, DNODE_FLAG_SPILL_BLKPTR, DNODE_SIZE,
                      OBJSET_PHYS_OS_TYPE, SPA_MAXBLOCKSIZE)

_CORE = struct.Struct("<BBBBBBBBHHB3xQQ32x")
_CORE_BE = struct.Struct(">BBBBBBBBHHB3xQQ32x")
SPA_BLKPTRSHIFT = 7
MAX_LEVELS = 10
#: Distinct dnode blocks looked at per prefetch_dnodes call.
PREFETCH_BLOCKS = 32


class Dnode:
    """One dnode (object) of an object set; see INTERFACE.md."""

    __slots__ = ("objset", "objnum", "raw", "little", "type", "indblkshift", "nlevels",
                 "nblkptr", "bonustype", "checksum", "compress", "flags", "datablksz",
                 "bonuslen", "extra_slots", "maxblkid", "used", "_blkptrs", "bonus",
                 "_spill", "_spill_bp", "cache_key")

    def __init__(self, objset, objnum: int, raw: bytes, little: bool):
        self.objset = objset
        self.objnum = objnum
        self.raw = raw
        self.little = little
        (self.type, self.indblkshift, self.nlevels, self.nblkptr, self.bonustype,
         self.checksum, self.compress, self.flags, dsec, self.bonuslen, self.extra_slots,
         self.maxblkid, self.used) = (_CORE if little else _CORE_BE).unpack_from(raw, 0)
        self.datablksz = dsec * 512
        size = len(raw)
        if self.nblkptr < 1 or DNODE_CORE_SIZE + self.nblkptr * BLKPTR_SIZE > size:
            raise ZfsError(f"object {objnum}: bad dn_nblkptr {self.nblkptr}")
        if self.nlevels < 1 or self.nlevels > MAX_LEVELS:
            raise ZfsError(f"object {objnum}: bad dn_nlevels {self.nlevels}")
        if self.datablksz == 0 or self.datablksz > SPA_MAXBLOCKSIZE:
            raise ZfsError(f"object {objnum}: bad data block size {self.datablksz}")
        if self.nlevels > 1 and not 7 <= self.indblkshift <= 17:
            raise ZfsError(f"object {objnum}: bad dn_indblkshift {self.indblkshift}")
        self._blkptrs = None  # parsed on first use: listing a directory needs only the bonus
        bstart = DNODE_CORE_SIZE + self.nblkptr * BLKPTR_SIZE
        bmax = size - bstart - (BLKPTR_SIZE if self.flags & DNODE_FLAG_SPILL_BLKPTR else 0)
        self.bonus = raw[bstart:bstart + min(self.bonuslen, max(0, bmax))]
        self._spill = None
        self._spill_bp = None
        if self.flags & DNODE_FLAG_SPILL_BLKPTR:
            self._spill_bp = BlkPtr(raw[size - BLKPTR_SIZE:], little)
        self.cache_key = (objset.key, objnum, raw)

    @property
    def blkptrs(self):
        if self._blkptrs is None:
            raw = self.raw
            self._blkptrs = [BlkPtr(raw[DNODE_CORE_SIZE + i * BLKPTR_SIZE:
                                        DNODE_CORE_SIZE + (i + 1) * BLKPTR_SIZE], self.little)
                             for i in range(self.nblkptr)]
        return self._blkptrs

    @property
    def size(self) -> int:
        return (self.maxblkid + 1) * self.datablksz

    @property
    def spill(self):
        if self._spill_bp is None or self._spill_bp.hole:
            return None
        if self._spill is None:
            self._spill = self.objset.pool.read_bp(self._spill_bp, self.objset)
        return self._spill

    @property
    def spill_bp(self):
        return self._spill_bp

    # -- the block tree ---------------------------------------------------------------
    def _indirect(self, bp: BlkPtr):
        key = ("zfs-ind", self.objset.pool.uid, bp.dvas[0].offset if bp.dvas else 0,
               bp.birth, bp.cksum)
        arr = METADATA_CACHE.get(key)
        if arr is None:
            data = self.objset.pool.read_bp(bp, self.objset)
            arr = _BpArray(data, bp.little)
            METADATA_CACHE.put(key, arr)
        return arr

    def block_bp(self, blkid: int):
        """The level-0 block pointer of ``blkid`` (None when beyond the tree: a hole)."""
        if blkid < 0 or blkid > self.maxblkid:
            return None
        epbs = self.indblkshift - SPA_BLKPTRSHIFT
        shift = epbs * (self.nlevels - 1)
        top = blkid >> shift if self.nlevels > 1 else blkid
        if top >= self.nblkptr:
            return None
        bp = self.blkptrs[top]
        for level in range(self.nlevels - 1, 0, -1):
            if bp.hole:
                return bp
            if bp.embedded:
                raise ZfsError(f"object {self.objnum}: embedded block pointer at level {level}")
            try:
                arr = self._indirect(bp)
            except UnreadableError as e:  # every block under it is lost: name them all
                if e.ranges:
                    raise
                a = ((blkid >> shift) << shift) * self.datablksz
                n = max(0, min((1 << shift) * self.datablksz, self.size - a))
                raise UnreadableError(e.message, [(a, n)]) from None
            shift -= epbs
            idx = (blkid >> shift) & ((1 << epbs) - 1)
            bp = arr.get(idx)
            if bp is None:
                return None
        return bp

    def read_block(self, blkid: int, cache: bool = True) -> bytes:
        """Block ``blkid``'s logical bytes (``cache``: keep them in the block cache)."""
        bp = self.block_bp(blkid)
        if bp is None or bp.hole:
            return bytes(self.datablksz)
        try:
            data = self.objset.pool.read_bp(bp, self.objset, cache=cache)
        except (UnreadableError, ZfsError) as e:  # no good copy, undecodable, encrypted
            raise UnreadableError(f"object {self.objnum} block {blkid}: {e}",
                                  [(blkid * self.datablksz, self.datablksz)]) from None
        if len(data) < self.datablksz:
            data += bytes(self.datablksz - len(data))
        return data[:self.datablksz]

    def read(self, offset: int, length: int, bad=None) -> bytes:
        """Object bytes; holes are zeros.  ``bad == "zero"`` reads bad blocks as zeros."""
        end = min(offset + length, self.size)
        if offset >= end:
            return b""
        bs = self.datablksz
        out = []
        first, last = offset // bs, (end - 1) // bs
        for blkid in range(first, last + 1):
            try:
                data = self.read_block(blkid)
            except UnreadableError:
                if bad != BAD_ZERO:
                    raise
                data = bytes(bs)
            lo = offset - blkid * bs if blkid == first else 0
            hi = end - blkid * bs if blkid == last else bs
            out.append(data[lo:hi] if (lo or hi != bs) else data)
        return b"".join(out)

    def block_status(self, offset: int = 0, length: int | None = None):
        """``[(offset, length, status)]`` in object coordinates: ``data`` or ``unmapped``
        (holes), ``unreadable`` where an indirect block cannot be read.  The block tree is
        walked top-down: a hole high up covers its whole subtree at once, and the block
        pointers of level-1 blocks are classified with numpy, so a sparse 100 GiB zvol
        costs its indirect blocks, not one step per data block."""
        if length is None:
            length = self.size - offset
        end = min(offset + length, self.size)
        if offset >= end:
            return []
        bs = self.datablksz
        lo, hi = offset // bs, (end - 1) // bs + 1  # block ids [lo, hi)
        runs = []  # (first blkid, count, status)
        epbs = self.indblkshift - SPA_BLKPTRSHIFT if self.nlevels > 1 else 0
        top_span = 1 << (epbs * (self.nlevels - 1))
        for i, bp in enumerate(self.blkptrs):
            first = i * top_span
            if first >= hi:
                break
            if first + top_span <= lo:
                continue
            self._status_walk(bp, self.nlevels - 1, first, lo, hi, epbs, runs)
        if runs and runs[-1][0] + runs[-1][1] < hi:
            runs.append((runs[-1][0] + runs[-1][1], hi - runs[-1][0] - runs[-1][1], UNMAPPED))
        elif not runs:
            runs.append((lo, hi - lo, UNMAPPED))
        out = []
        for b, n, st in runs:
            a, z = max(offset, b * bs), min(end, (b + n) * bs)
            if a >= z:
                continue
            if out and out[-1][2] == st and out[-1][0] + out[-1][1] == a:
                out[-1] = (out[-1][0], out[-1][1] + z - a, st)
            else:
                out.append((a, z - a, st))
        return out

    def _status_walk(self, bp, level, first, lo, hi, epbs, runs):
        span = 1 << (epbs * level)
        a, z = max(first, lo), min(first + span, hi)
        if a >= z:
            return
        if bp is None or bp.hole:
            _add_run(runs, a, z - a, UNMAPPED)
            return
        if level == 0 or bp.embedded:
            _add_run(runs, a, z - a, DATA)
            return
        try:
            arr = self._indirect(bp)
        except (UnreadableError, ZfsError):
            _add_run(runs, a, z - a, UNREADABLE)
            return
        child_span = 1 << (epbs * (level - 1))
        i0, i1 = (a - first) // child_span, (z - 1 - first) // child_span + 1
        if level == 1:  # children are level-0 pointers: classify them all at once
            holes = arr.hole_mask()[i0:i1]
            idx = 0
            n = len(holes)
            while idx < n:
                st = holes[idx]
                j = idx + 1
                while j < n and holes[j] == st:  # runs are long: few iterations
                    j += 1
                b0 = max(first + i0 + idx, lo)
                b1 = min(first + i0 + j, hi)
                if b1 > b0 and not st and self._lossy():
                    self._data_status(arr, first, b0, b1, runs)
                elif b1 > b0:
                    _add_run(runs, b0, b1 - b0, UNMAPPED if st else DATA)
                idx = j
            if i1 > arr.n:  # beyond the block's pointers: holes
                _add_run(runs, first + arr.n, min(first + i1, hi) - first - arr.n, UNMAPPED)
            return
        for i in range(i0, i1):
            self._status_walk(arr.get(i), level - 1, first + i * child_span, lo, hi, epbs, runs)

    def _lossy(self) -> bool:
        pool = getattr(self.objset, "pool", None)
        return pool is not None and bool(pool._lossy_tops())

    def _data_status(self, arr, first, b0, b1, runs):
        """Data blocks ``[b0, b1)`` under a level-1 block of a pool with a top-level vdev
        beyond its redundancy: a block whose every copy lies there is readable only if
        it can be rebuilt, which only a read (and its checksum) tells
        (vdev_raidz_reconstruct needs no more missing columns than parity)."""
        pool = self.objset.pool
        for b in range(b0, b1):
            bp = arr.get(b - first)
            st = DATA
            if bp is not None and pool.may_be_lost(bp):
                try:
                    pool.read_physical(bp)
                except (UnreadableError, ZfsError):
                    st = UNREADABLE
            _add_run(runs, b, 1, st)

    def __repr__(self):
        return (f"<Dnode {self.objnum} type={self.type} bonustype={self.bonustype} "
                f"blksz={self.datablksz} levels={self.nlevels} maxblkid={self.maxblkid}>")


def _add_run(runs, first, count, status):
    if count <= 0:
        return
    if runs and runs[-1][2] == status and runs[-1][0] + runs[-1][1] == first:
        runs[-1] = (runs[-1][0], runs[-1][1] + count, status)
    elif runs and runs[-1][0] + runs[-1][1] < first:  # a gap: beyond a short tree = hole
        gap = runs[-1][0] + runs[-1][1]
        _add_run(runs, gap, first - gap, UNMAPPED)
        _add_run(runs, first, count, status)
    else:
        runs.append((first, count, status))


class _BpArray:
    """An indirect block's block pointers, parsed on demand."""

    def __init__(self, data: bytes, little: bool):
        self.data = data
        self.little = little
        self.n = len(data) // BLKPTR_SIZE
        self.cache_cost = len(data) + 128
        self._holes = None

    def hole_mask(self):
        """numpy bool per pointer: BP_IS_HOLE (DVA 0 all zero and not embedded)."""
        if self._holes is None:
            w = np.frombuffer(self.data, dtype="<u8" if self.little else ">u8",
                              count=self.n * 16).reshape(self.n, 16)
            emb = (w[:, 6] >> np.uint64(39)) & np.uint64(1)
            self._holes = (w[:, 0] == 0) & (w[:, 1] == 0) & (emb == 0)
        return self._holes

    def get(self, i):
        if i >= self.n:
            return None
        return BlkPtr(self.data[i * BLKPTR_SIZE:(i + 1) * BLKPTR_SIZE], self.little)


class ObjSet:
    """An object set: the meta-dnode and the objects it describes; see INTERFACE.md."""

    def __init__(self, pool, bp: BlkPtr, name: str, crypt=None):
        self.pool = pool
        self.name = name
        self.bp = bp
        self.crypt = crypt
        self.dsl_crypto_key_obj = None
        #: The dataset's DSL properties the ZPL reads (``dsl.dataset_props``): a callable
        #: set by whoever opened the object set from its dataset (None: not known).
        self.dsl_props = None
        self.key = (pool.uid, bp.dvas[0].offset if bp.dvas else 0, bp.birth, bp.cksum)
        self._last_block = None  # (blkid, _Block): the dnode block read last
        self._inflight: dict = {}  # blkid -> Future: dnode blocks being read ahead
        if bp.hole:
            raise ZfsError(f"{name}: the object set block pointer is a hole")
        raw = pool.read_bp(bp, self)
        if len(raw) < DNODE_SIZE + 192 + 16:
            raise ZfsError(f"{name}: object set block of {len(raw)} bytes")
        self.little = bp.little
        self.raw = raw
        self.os_type, self.os_flags = struct.unpack_from("<QQ" if self.little else ">QQ", raw,
                                                         OBJSET_PHYS_OS_TYPE)
        self.meta = Dnode(self, 0, raw[:DNODE_SIZE], self.little)
        self.nobjects = self.meta.size // DNODE_SIZE
        # zil_header_t after the meta-dnode: zh_claim_txg, zh_replay_seq, zh_log (blkptr)
        self.zil_log = BlkPtr(raw[DNODE_SIZE + 16:DNODE_SIZE + 16 + BLKPTR_SIZE], self.little)

    @property
    def has_intent_log(self) -> bool:
        """Records of synchronous writes that were never replayed into the objects.

        ``zh_log`` also points at the next, preallocated log block after a clean
        shutdown; records exist only when that block carries a valid embedded checksum
        for the verifier in the block pointer (zil.c zil_read_log_block: ZILOG2 keeps a
        zil_chain_t with its zio_eck_t at the start, the old ZILOG a trailer at the end).
        """
        bp = self.zil_log
        if bp.hole or bp.embedded or not bp.dvas:
            return False
        return self.pool.zil_block_valid(bp)

    def _dnode_block(self, blkid):
        last = self._last_block  # a directory's objects are mostly in one dnode block
        if last is not None and last[0] == blkid:
            return last[1]
        key = ("zfs-dnblk", self.key, blkid)
        hit = METADATA_CACHE.get(key)
        if hit is None:
            ahead = self._inflight.get(blkid)
            if ahead is not None and not readahead.inside():
                try:
                    hit = ahead.result()
                except Exception:  # noqa: BLE001 - read again below, and reported there
                    hit = None
        if hit is None:
            bp = self.meta.block_bp(blkid)
            little = bp.little if bp is not None and not bp.hole else self.little
            # cached once, here (read_bp's own cache would count the same bytes again:
            # half the dnode blocks in the same budget, and ls -l of a 100,000-entry
            # directory re-read most of them)
            data = self.meta.read_block(blkid, cache=False)
            hit = METADATA_CACHE.put(key, _Block(data, little))
        self._last_block = (blkid, hit)
        return hit

    def prefetch_dnodes(self, objnums) -> None:
        """Start reading the dnode blocks of these objects in the read-ahead threads (the
        ones not cached or on their way already); ``zfs_readdir``'s dmu_prefetch_dnode."""
        bs = self.meta.datablksz
        if not bs:
            return
        inflight = self._inflight
        seen: set = set()
        todo = []
        for o in objnums:  # the first PREFETCH_BLOCKS distinct blocks (a big directory
            b = o * DNODE_SIZE // bs  # in hash order touches a block per entry)
            if o <= 0 or b in seen:
                continue
            seen.add(b)
            if b not in inflight and not self._block_cached(b):
                todo.append(b)
            if len(seen) >= PREFETCH_BLOCKS:
                break
        if not todo:
            return
        for b, f in zip(todo, readahead.start(self._dnode_block, todo), strict=False):
            inflight[b] = f
            f.add_done_callback(lambda _f, b=b: inflight.pop(b, None))

    def dnode_cached(self, objnum: int) -> bool:
        """Whether ``dnode(objnum)`` is answered from memory (its dnode block is cached)."""
        bs = self.meta.datablksz
        if not bs or objnum <= 0:
            return False
        return self._block_cached(objnum * DNODE_SIZE // bs)

    def _block_cached(self, blkid: int) -> bool:
        """Whether dnode block ``blkid`` is in memory (the block read last, or in the
        metadata cache under :meth:`_dnode_block`'s key)."""
        last = self._last_block
        return (last is not None and last[0] == blkid) or \
            ("zfs-dnblk", self.key, blkid) in METADATA_CACHE

    def dnode(self, objnum: int) -> Dnode:
        if objnum <= 0 or objnum >= self.nobjects:
            raise ZfsError(f"{self.name}: object {objnum} is out of range (0..{self.nobjects})")
        off = objnum * DNODE_SIZE
        bs = self.meta.datablksz
        blk = self._dnode_block(off // bs)
        boff = off % bs
        data = blk.data
        if len(data) < boff + DNODE_SIZE or data[boff] == 0:
            raise ZfsError(f"{self.name}: object {objnum} is free")
        extra = data[boff + 12]  # dn_extra_slots
        size = DNODE_SIZE * (1 + extra)
        if boff + size > bs:
            raise ZfsError(f"{self.name}: object {objnum}: dn_extra_slots {extra} runs past "
                           f"its dnode block")
        return Dnode(self, objnum, data[boff:boff + size], blk.little)

    def dnode_or_none(self, objnum: int):
        try:
            return self.dnode(objnum)
        except (ZfsError, UnreadableError):
            return None

    def __repr__(self):
        return f"<ObjSet {self.name} type={self.os_type} objects={self.nobjects}>"


class _Block:
    __slots__ = ("data", "little", "cache_cost")

    def __init__(self, data, little):
        self.data = data
        self.little = little
        self.cache_cost = len(data) + 96


def used_bytes(dnode) -> int:
    """``dn_used`` in bytes: DNODE_FLAG_USED_BYTES (flag 1) says bytes, else it counts
    512-byte sectors (include/sys/dnode.h): what ``du`` shows on ZFS."""
    return dnode.used if dnode.flags & 1 else dnode.used * 512


class DnodeSource(Source):
    """A file's or zvol's bytes: ``size`` bytes of a dnode's data; see INTERFACE.md.

    It keeps the object set and the object number, not the :class:`Dnode`: each read
    fetches the dnode again from its dnode block (in METADATA_CACHE, and ObjSet keeps the
    last one), which costs microseconds against a read of up to 1 MiB.  A kept dnode
    cost every listed file about 1.3 KiB (its raw 512+ bytes, the bonus copy, the cache
    key) and, once the file was read, its parsed block pointers: a mount daemon reading
    every file of a 70,000-file pool grew past 400 MB that way (issue 13 item 6).  The
    meta-dnode (object 0) is not in its object set's dnode array and stays kept.
    """

    __slots__ = ("objset", "objnum", "_kept", "_used", "size", "_label", "_path", "_fs",
                 "bad", "ctx", "has_unreadable")

    def __init__(self, dnode: Dnode, size: int, label: str, path=None, bad="eio", ctx=None,
                 fs=None):
        """``fs``: the file's ZPL file system (its ``objset.name`` and tree ``path``);
        ``label`` is then the file's path in it, and the label and tree path are made
        from them when asked (two path strings per listed file are not kept)."""
        super().__init__()
        self.objset = getattr(dnode, "objset", None)
        self.objnum = getattr(dnode, "objnum", 0)
        refetch = self.objnum > 0 and isinstance(self.objset, ObjSet)
        self._kept = None if refetch else dnode  # (also any dnode not from an ObjSet)
        self._used = None  # dn_used in bytes (DNODE_FLAG_USED_BYTES) or 512-byte sectors
        if hasattr(dnode, "flags"):
            self._used = used_bytes(dnode)
        self.size = size
        self._label = label
        self._path = path
        self._fs = fs
        self.has_unreadable = False  # (a slot: pvfs/report.py sets it on a damaged zvol)
        self.bad = bad
        if ctx is None:
            ctx = getattr(getattr(dnode.objset, "pool", None), "ctx", None)
        self.ctx = ctx

    @property
    def label(self) -> str:
        fs = self._fs
        return self._label if fs is None else f"{fs.objset.name}:{self._label}"

    @property
    def path(self) -> str | None:
        fs = self._fs
        return self._path if fs is None else f"{fs.path}/{self._label}"

    @property
    def dnode(self) -> Dnode:
        if self._kept is not None:
            return self._kept
        try:
            return self.objset.dnode(self.objnum)
        except ZfsError as e:  # it was read before: the dnode block went bad since?
            raise UnreadableError(f"{self.label}: {e}", [(0, self.size)]) from None

    def _read(self, offset, length):
        d = self.dnode
        avail = max(0, min(length, d.size - offset))
        try:
            data = d.read(offset, avail) if avail else b""
        except UnreadableError as e:
            self._report(e)
            if self.bad == BAD_ZERO:
                data = d.read(offset, avail, bad=BAD_ZERO)
            else:
                raise UnreadableError(f"{self.label}: {e}", e.ranges) from None
        if len(data) < length:  # file size beyond the last block: zeros (sparse tail)
            data += bytes(length - len(data))
        return data

    def _report(self, e):
        if self.ctx is not None and self.path:
            self.ctx.report.add("error", "zfs", self.path, "unreadable-block", str(e), e.ranges)

    cheap_allocation = True  # dn_used is in the dnode already read

    def allocated_bytes(self) -> int:
        """dn_used (DNODE_FLAG_USED_BYTES: bytes, else 512-byte sectors): what ``du``
        shows on ZFS, without walking the block tree."""
        if self._used is None:
            return used_bytes(self.dnode)
        return self._used

    def _block_status(self, offset, length):
        d = self.dnode
        avail = max(0, min(length, d.size - offset))
        out = d.block_status(offset, avail) if avail else []
        if avail < length:
            out.append((offset + avail, length - avail, UNMAPPED))
        return out
