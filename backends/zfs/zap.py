"""ZAP (ZFS Attribute Processor): micro ZAP and fat ZAP objects, read-only.

A ZAP object maps names to arrays of integers.  It is used for directories,
the MOS object directory, DSL child maps, snapshot name maps, properties,
the ZPL master node, SA registries and more.

References:
  - OpenZFS ``include/sys/zap_impl.h`` (``mzap_phys_t``, ``mzap_ent_phys_t``,
    ``zap_phys_t``, ``zap_table_phys``), ``include/sys/zap_leaf.h``
    (``zap_leaf_phys_t``, ``zap_leaf_chunk``), ``module/zfs/zap.c``
    (``zap_hash``, ``ZAP_HASH_IDX``, pointer table), ``module/zfs/zap_leaf.c``
    (``zap_leaf_array_read``: integer arrays are big-endian), ``zap_micro.c``.
  - "ZFS On-Disk Specification" (Sun, 2006), chapter 5.
  - mminkus/zfs-ondiskformat ``docs/05-zap.md``.

The reader is written against a duck-typed *dnode*: ``read(offset, length)``
(holes read as zeros), ``datablksz``, ``size`` and optionally ``cache_key``
(hashable, unique per object version) so that decoded entries are kept in
:data:`pvfs.cache.METADATA_CACHE`.

Headers are native-endian in the writer's byte order; the order is found from
the block-type magic, so other-endian pools need no byte-swap pass.  Damaged
leaves do not stop a listing: the entries that could be read are returned and
the problems are listed in ``ZapEntries.errors``.
"""

from __future__ import annotations

import struct

import numpy as np
from construct import Bytes, Int8ul, Int16ub, Int16ul, Int32ub, Int32ul, Int64ub, Int64ul, Struct

from pvfs.cache import METADATA_CACHE
from pvfs.errors import FormatError, UnreadableError
from pvfs.structs import parse

from . import readahead

#: ``zap_block_type`` values (``zap_impl.h``).
ZBT_LEAF = (1 << 63) + 0
ZBT_HEADER = (1 << 63) + 1
ZBT_MICRO = (1 << 63) + 3
ZAP_MAGIC = 0x2F52AB2AB
ZAP_LEAF_MAGIC = 0x2AB1EAF

#: ``zap_flags`` (``zap.h``).
ZAP_FLAG_HASH64 = 1 << 0
ZAP_FLAG_UINT64_KEY = 1 << 1
ZAP_FLAG_PRE_HASHED_KEY = 1 << 2

MZAP_ENT_LEN = 64
MZAP_NAME_LEN = MZAP_ENT_LEN - 8 - 4 - 2
ZAP_LEAF_CHUNKSIZE = 24
ZAP_LEAF_ARRAY_BYTES = ZAP_LEAF_CHUNKSIZE - 3
ZAP_CHUNK_FREE = 253
ZAP_CHUNK_ENTRY = 252
ZAP_CHUNK_ARRAY = 251
CHAIN_END = 0xFFFF

#: Sanity bounds against hostile objects.
MAX_BLOCK = 16 << 20  # largest block any ZFS writes
MAX_LEAVES = 1 << 20  # distinct leaves visited in one listing
MAX_PTRTBL_SHIFT = 32
MAX_SALVAGE_BLOCKS = 8192  # blocks searched for leaves when a fat ZAP header is lost
#: object types that are never ZAPs (plain file contents, zvol data, dnodes ...)
NOT_ZAP_TYPES = {10, 11, 19, 23, 25, 26}

#: CRC64 table of ``zap_hash`` (ZFS_CRC64_POLY, reflected, as in ``spa_misc.c``).
ZFS_CRC64_POLY = 0xC96C5795D7870F42


def _crc64_table():
    table = []
    for i in range(256):
        ct = i
        for _ in range(8):
            ct = (ct >> 1) ^ (ZFS_CRC64_POLY if ct & 1 else 0)
        table.append(ct)
    return table


_CRC64 = _crc64_table()


class ZapError(FormatError):
    """A ZAP object is not what ``zap_impl.h`` says it must be."""


def _structs(E):
    """Header declarations for one byte order (``E`` is ``"l"`` or ``"b"``)."""
    u16 = Int16ul if E == "l" else Int16ub
    u32 = Int32ul if E == "l" else Int32ub
    u64 = Int64ul if E == "l" else Int64ub
    # zap_impl.h: mzap_phys_t, the first 64 bytes of a micro ZAP block.
    mzap_phys = Struct("mz_block_type" / u64, "mz_salt" / u64, "mz_normflags" / u64,
                       "mz_pad" / Bytes(40))
    # zap_impl.h: zap_phys_t (the fat ZAP header block), up to zap_flags.
    zap_phys = Struct(
        "zap_block_type" / u64,
        "zap_magic" / u64,
        "zap_ptrtbl" / Struct("zt_blk" / u64, "zt_numblks" / u64, "zt_shift" / u64,
                              "zt_nextblk" / u64, "zt_blks_copied" / u64),
        "zap_freeblk" / u64,
        "zap_num_leafs" / u64,
        "zap_num_entries" / u64,
        "zap_salt" / u64,
        "zap_normflags" / u64,
        "zap_flags" / u64,
    )
    # zap_leaf.h: zap_leaf_phys_t.l_hdr, 48 bytes (two chunks).
    zap_leaf_header = Struct(
        "lh_block_type" / u64,
        "lh_pad1" / u64,
        "lh_prefix" / u64,
        "lh_magic" / u32,
        "lh_nfree" / u16,
        "lh_nentries" / u16,
        "lh_prefix_len" / u16,
        "lh_freelist" / u16,
        "lh_flags" / Int8ul,
        "lh_pad2" / Bytes(11),
    )
    return mzap_phys, zap_phys, zap_leaf_header


_STRUCTS = {"<": _structs("l"), ">": _structs("b")}
#: zap_leaf_entry as a numpy record (24 bytes, the leaf's byte order)
_ENTRY_DTYPE = {o: np.dtype([("type", "u1"), ("value_intlen", "u1"), ("next", o + "u2"),
                             ("name_chunk", o + "u2"), ("name_numints", o + "u2"),
                             ("value_chunk", o + "u2"), ("value_numints", o + "u2"),
                             ("cd", o + "u4"), ("hash", o + "u8")]) for o in "<>"}


class ZapEntries(dict):
    """``name -> value`` of one ZAP object, plus what went wrong while reading it.

    Values are ``list[int]`` (integer size 2, 4 or 8, and every micro ZAP
    value) or ``bytes`` (integer size 1, e.g. strings in property ZAPs).
    ``kind`` is ``"micro"`` or ``"fat"``; ``errors`` lists one-line messages
    for leaves that could not be read or decoded.
    """

    kind = "micro"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.errors: list[str] = []
        self.salt = 0
        self.normflags = 0
        self.flags = 0

    @property
    def cache_cost(self):
        cost = self.__dict__.get("_cost")
        if cost is None or cost[0] != len(self):  # computed once per size (cache evictions)
            # per entry: the str (49 + text), a one-int list (64), the int (32), the
            # dict's slot (~40): sys.getsizeof, so the cache's budget is what it holds
            n = len(self)
            if n > 256 and self.kind == "fat":  # a directory: one-int values (C-speed sum)
                total = 256 + n * (185 + 8) + sum(map(len, self.keys()))
            else:
                total = 256 + sum(185 + len(k) + (len(v) if isinstance(v, bytes) else 8 * len(v))
                                  for k, v in self.items())
            cost = (n, total)
            self.__dict__["_cost"] = cost
        return cost[1]


def _byteorder(block_type_raw: bytes, expected) -> str | None:
    le, = struct.unpack("<Q", block_type_raw)
    if le in expected:
        return "<"
    be, = struct.unpack(">Q", block_type_raw)
    if be in expected:
        return ">"
    return None


def _read(dnode, offset, length, what):
    try:
        data = dnode.read(offset, length)
    except UnreadableError:
        raise
    except FormatError:
        raise
    except OSError as e:
        raise UnreadableError(f"{what}: {e}", [(offset, length)]) from None
    if len(data) < length:
        raise ZapError(f"{what}: object ends at {offset + len(data):#x}")
    return data


def _block_size(dnode) -> int:
    bs = int(getattr(dnode, "datablksz", 0) or 0)
    if bs < 128 or bs > MAX_BLOCK or bs % 64:
        raise ZapError(f"ZAP object with impossible block size {bs}")
    return bs


def _decode_name(raw: bytes) -> str:
    nul = raw.find(b"\0")
    if nul >= 0:
        raw = raw[:nul]
    return raw.decode("utf-8", "surrogateescape")


def zap_hash(name: bytes | str, salt: int, flags: int = 0) -> int:
    """``zap_hash()`` for a string key (no normalization): the salted CRC64, truncated."""
    if isinstance(name, str):
        name = name.encode("utf-8", "surrogateescape")
    h = salt
    if flags & ZAP_FLAG_UINT64_KEY:
        for (word,) in struct.iter_unpack("<Q", name):
            for _ in range(8):
                h = (h >> 8) ^ _CRC64[(h ^ word) & 0xFF]
                word >>= 8
    else:
        for c in name:
            h = (h >> 8) ^ _CRC64[(h ^ c) & 0xFF]
    bits = 48 if flags & ZAP_FLAG_HASH64 else 28
    return h & ~((1 << (64 - bits)) - 1) & 0xFFFFFFFFFFFFFFFF


# --------------------------------------------------------------------------- micro ZAP
def _micro_entries(block: bytes, order: str) -> ZapEntries:
    hdr = parse(_STRUCTS[order][0], block[:64], ZapError, "mzap_phys_t")
    out = ZapEntries()
    out.kind = "micro"
    out.salt = hdr.mz_salt
    out.normflags = hdr.mz_normflags
    fmt = order + "QIH"
    for off in range(MZAP_ENT_LEN, len(block) - MZAP_ENT_LEN + 1, MZAP_ENT_LEN):
        value, _cd, _pad = struct.unpack_from(fmt, block, off)
        name = block[off + 14:off + MZAP_ENT_LEN]
        if name[0] == 0:  # an unused slot
            continue
        key = _decode_name(name)
        if key in out:  # two chunks with one name: keep the first, say so
            out.errors.append(f"micro ZAP: duplicate name {key!r}")
            continue
        out[key] = [value]
    return out


# --------------------------------------------------------------------------- fat ZAP
class _Fat:
    """One fat ZAP object: header, pointer table access, leaf decoding."""

    def __init__(self, dnode, block0: bytes, order: str):
        self.dnode = dnode
        self.order = order
        self.bs = len(block0)
        if self.bs & (self.bs - 1) or self.bs < 512:
            raise ZapError(f"fat ZAP block size {self.bs} is not a power of two >= 512")
        self.shift = self.bs.bit_length() - 1
        hdr = parse(_STRUCTS[order][1], block0[:128], ZapError, "zap_phys_t")
        if hdr.zap_magic != ZAP_MAGIC:
            raise ZapError(f"fat ZAP header has bad magic {hdr.zap_magic:#x}")
        self.hdr = hdr
        self.block0 = block0
        t = hdr.zap_ptrtbl
        if t.zt_shift > MAX_PTRTBL_SHIFT:
            raise ZapError(f"fat ZAP pointer table shift {t.zt_shift} is impossible")
        self.ptr_shift = t.zt_shift
        self.nptrs = 1 << t.zt_shift
        size = int(getattr(dnode, "size", 0) or 0)
        if t.zt_numblks == 0:
            # Embedded table: the second half of the header block (ZAP_EMBEDDED_PTRTBL_ENT).
            if self.nptrs > self.bs // 16:
                raise ZapError(f"fat ZAP embedded pointer table of {self.nptrs} entries "
                               f"does not fit a {self.bs}-byte block")
            self.ext_blk = None
        else:
            if t.zt_numblks * self.bs != self.nptrs * 8:
                raise ZapError(f"fat ZAP pointer table: {t.zt_numblks} blocks for "
                               f"{self.nptrs} entries")
            if size and (t.zt_blk + t.zt_numblks) * self.bs > size:
                raise ZapError("fat ZAP pointer table lies beyond the end of the object")
            self.ext_blk = t.zt_blk
        self.flags = hdr.zap_flags
        self.salt = hdr.zap_salt
        self.normflags = hdr.zap_normflags
        self.size = size
        self._ptr_cache = {}

    # -- pointer table ------------------------------------------------------
    def ptrtbl_block(self, i: int) -> list[int]:
        """The pointer table entries of table block ``i`` (or the embedded table)."""
        cached = self._ptr_cache.get(i)
        if cached is not None:
            return cached
        if self.ext_blk is None:
            half = self.bs // 2
            raw = self.block0[half:half + self.nptrs * 8]
        else:
            raw = _read(self.dnode, (self.ext_blk + i) * self.bs, self.bs,
                        f"fat ZAP pointer table block {self.ext_blk + i}")
        vals = [v for (v,) in struct.iter_unpack(self.order + "Q", raw)]
        self._ptr_cache[i] = vals
        return vals

    def ptr(self, idx: int) -> int:
        if self.ext_blk is None:
            return self.ptrtbl_block(0)[idx]
        per = self.bs // 8
        return self.ptrtbl_block(idx // per)[idx % per]

    def leaf_blocks(self, errors):
        """Distinct leaf block numbers in pointer-table order."""
        seen = set()
        out = []
        per = self.nptrs if self.ext_blk is None else self.bs // 8
        nblocks = 1 if self.ext_blk is None else self.hdr.zap_ptrtbl.zt_numblks
        maxblk = (self.size // self.bs) if self.size else None
        for b in range(nblocks):
            try:
                vals = self.ptrtbl_block(b)
            except (UnreadableError, ZapError) as e:
                errors.append(f"fat ZAP pointer table block {b}: {e}")
                continue
            last = None
            for v in vals[:per]:
                if v == last:  # neighbours usually share a leaf
                    continue
                last = v
                if v in seen:
                    continue
                seen.add(v)
                if v == 0 or (maxblk is not None and v >= maxblk):
                    errors.append(f"fat ZAP pointer table names impossible leaf block {v}")
                    continue
                out.append(v)
                if len(out) > MAX_LEAVES:
                    raise ZapError(f"fat ZAP with more than {MAX_LEAVES} leaves")
        return out

    # -- leaves -------------------------------------------------------------
    def read_leaf(self, blk: int) -> _Leaf:
        data = _read(self.dnode, blk * self.bs, self.bs, f"fat ZAP leaf block {blk}")
        return _Leaf(data, self.order, blk, self.flags)


class _Leaf:
    def __init__(self, data: bytes, order: str, blk: int, zap_flags: int):
        bs = len(data)
        self.data = data
        self.order = order
        self.blk = blk
        self.zap_flags = zap_flags
        hdr = parse(_STRUCTS[order][2], data[:48], ZapError, f"leaf {blk} header")
        if hdr.lh_block_type != ZBT_LEAF or hdr.lh_magic != ZAP_LEAF_MAGIC:
            raise ZapError(f"fat ZAP leaf block {blk} has bad block type/magic "
                           f"({hdr.lh_block_type:#x}/{hdr.lh_magic:#x})")
        self.hdr = hdr
        self.hash_shift = bs.bit_length() - 1 - 5
        self.nhash = 1 << self.hash_shift  # ZAP_LEAF_HASH_NUMENTRIES
        self.chunk_base = 48 + 2 * self.nhash
        self.nchunks = (bs - 2 * self.nhash) // ZAP_LEAF_CHUNKSIZE - 2  # ZAP_LEAF_NUMCHUNKS
        self._entry_fmt = order + "BBHHHHHIQ"

    def chunk(self, i):
        return self.chunk_base + i * ZAP_LEAF_CHUNKSIZE

    def entry(self, i):
        """``zap_leaf_entry`` of chunk ``i`` as a tuple."""
        return struct.unpack_from(self._entry_fmt, self.data, self.chunk(i))

    def array(self, first: int, nbytes: int, what: str) -> bytes:
        """The bytes of an array chain (``zap_leaf_array``), ``nbytes`` long."""
        parts = []
        got = 0
        i = first
        steps = 0
        data = self.data
        next_fmt = self.order + "H"
        while got < nbytes:
            if i == CHAIN_END or i >= self.nchunks:
                raise ZapError(f"leaf {self.blk}: {what} array chain broken at chunk {i}")
            off = self.chunk(i)
            if data[off] != ZAP_CHUNK_ARRAY:
                raise ZapError(f"leaf {self.blk}: {what} chunk {i} is not an array chunk")
            take = min(ZAP_LEAF_ARRAY_BYTES, nbytes - got)
            parts.append(data[off + 1:off + 1 + take])
            got += take
            i, = struct.unpack_from(next_fmt, data, off + 22)
            steps += 1
            if steps > self.nchunks:
                raise ZapError(f"leaf {self.blk}: {what} array chain loops")
        return b"".join(parts)

    def decode(self, i):
        """``(name, value, hash)`` of the entry in chunk ``i``."""
        (_t, vintlen, _next, name_chunk, name_numints, value_chunk, value_numints,
         _cd, h) = self.entry(i)
        if self.zap_flags & ZAP_FLAG_UINT64_KEY:
            raw = self.array(name_chunk, name_numints * 8, "name")
            name = ",".join(str(v) for (v,) in struct.iter_unpack(">Q", raw))
        else:
            if name_numints == 0:
                raise ZapError(f"leaf {self.blk}: entry {i} has an empty name")
            name = _decode_name(self.array(name_chunk, name_numints, "name"))
        if vintlen not in (1, 2, 4, 8):
            raise ZapError(f"leaf {self.blk}: entry {name!r} has integer size {vintlen}")
        raw = self.array(value_chunk, value_numints * vintlen, "value")
        if vintlen == 1:
            value = raw
        else:
            fmt = {2: ">H", 4: ">I", 8: ">Q"}[vintlen]  # arrays are big-endian
            value = [v for (v,) in struct.iter_unpack(fmt, raw)]
        return name, value, h

    def decode_all(self, errors: list[str]) -> list[tuple[str, object]]:
        """``(name, value)`` of every entry chunk, in chunk order (what :meth:`decode` gives
        for each of :meth:`entries`); a broken entry is named in ``errors`` and skipped.

        The common case, a string name of up to 20 bytes and one uint64 value (every
        directory entry with a short name), is taken from the chunk table with numpy:
        one array chunk each, no chain to follow (a 100,000-entry directory decoded in
        1.4 s entry by entry).  Anything else goes through :meth:`decode`."""
        data, n, base, o = self.data, self.nchunks, self.chunk_base, self.order
        table = np.frombuffer(data, np.uint8, n * ZAP_LEAF_CHUNKSIZE, base).reshape(n, -1)
        kinds = table[:, 0]
        idx = np.flatnonzero(kinds == ZAP_CHUNK_ENTRY)
        out: list[tuple[str, object]] = []
        if not len(idx):
            return out
        rec = np.frombuffer(data, _ENTRY_DTYPE[o], n, base)[idx]
        nc, nn, vc = rec["name_chunk"], rec["name_numints"], rec["value_chunk"]
        fast = ((nn >= 1) & (nn <= ZAP_LEAF_ARRAY_BYTES) & (rec["value_intlen"] == 8)
                & (rec["value_numints"] == 1) & (nc < n) & (vc < n))
        if self.zap_flags & ZAP_FLAG_UINT64_KEY:
            fast[:] = False
        ncs = np.where(fast, nc, 0)
        vcs = np.where(fast, vc, 0)
        fast &= (kinds[ncs] == ZAP_CHUNK_ARRAY) & (kinds[vcs] == ZAP_CHUNK_ARRAY)
        names = table[ncs, 1:1 + ZAP_LEAF_ARRAY_BYTES].tobytes()  # arrays are big-endian:
        values = table[vcs, 1:9].copy().view(">u8").ravel().tolist()
        w = ZAP_LEAF_ARRAY_BYTES
        for k, (i, ok, ln) in enumerate(zip(idx.tolist(), fast.tolist(), nn.tolist(),
                                            strict=True)):
            if ok:
                raw = names[k * w:k * w + ln]
                nul = raw.find(b"\0")
                if nul >= 0:
                    raw = raw[:nul]
                if raw:
                    out.append((raw.decode("utf-8", "surrogateescape"), [values[k]]))
                    continue
            try:
                name, value, _h = self.decode(i)
            except ZapError as e:
                errors.append(str(e))
                continue
            out.append((name, value))
        return out

    def entries(self):
        """Every entry chunk of the leaf (no hash-chain walk: robust to broken chains)."""
        data = self.data
        base = self.chunk_base
        for i in range(self.nchunks):
            if data[base + i * ZAP_LEAF_CHUNKSIZE] == ZAP_CHUNK_ENTRY:
                yield i

    def lookup(self, h: int, name_bytes: bytes):
        """Follow the hash chain of ``h`` (``LEAF_HASH``); value or None."""
        plen = self.hdr.lh_prefix_len
        if plen > 64 - self.hash_shift:
            return None
        idx = (h >> (64 - self.hash_shift - plen)) & (self.nhash - 1)
        i, = struct.unpack_from(self.order + "H", self.data, 48 + 2 * idx)
        steps = 0
        while i != CHAIN_END and i < self.nchunks and steps <= self.nchunks:
            steps += 1
            e = self.entry(i)
            if e[0] != ZAP_CHUNK_ENTRY:
                return None
            if e[8] == h:
                name, value, _ = self.decode(i)
                if name.encode("utf-8", "surrogateescape") == name_bytes:
                    return value
            i = e[2]
        return None


def _fat_entries(dnode, block0, order) -> ZapEntries:
    fat = _Fat(dnode, block0, order)
    out = ZapEntries()
    out.kind = "fat"
    out.salt, out.normflags, out.flags = fat.salt, fat.normflags, fat.flags
    # the leaves are read a few at a time in the read-ahead threads (zap_cursor_retrieve
    # prefetches the whole object too): a cold 10,000-entry directory waits for one
    # round of parallel reads, not one read after the other
    for blk, future in readahead.in_order(fat.read_leaf, fat.leaf_blocks(out.errors)):
        try:
            leaf = future.result()
        except (UnreadableError, ZapError) as e:
            out.errors.append(f"fat ZAP leaf block {blk}: {e}")
            continue
        for name, value in leaf.decode_all(out.errors):
            if name in out:
                out.errors.append(f"fat ZAP: duplicate name {name!r} in leaf {blk}")
                continue
            out[name] = value
    n = fat.hdr.zap_num_entries
    if not out.errors and n != len(out):
        out.errors.append(f"fat ZAP header counts {n} entries, the leaves hold {len(out)}")
    return out


# --------------------------------------------------------------------------- public API
def _open(dnode):
    """Block 0 and its byte order; raises :class:`ZapError` when it is no ZAP."""
    bs = _block_size(dnode)
    block0 = _read(dnode, 0, bs, "ZAP block 0")
    order = _byteorder(block0[:8], (ZBT_MICRO, ZBT_HEADER))
    if order is None:
        raise ZapError(f"not a ZAP object (block type {block0[:8].hex()})")
    btype, = struct.unpack(order + "Q", block0[:8])
    return block0, order, btype


def zap_entries(dnode, cache: bool = True) -> ZapEntries:
    """Every ``name -> value`` of a ZAP object (see :class:`ZapEntries`).

    Raises :class:`ZapError` when block 0 is not a ZAP header and
    :class:`pvfs.errors.UnreadableError` when it cannot be read; damaged
    leaves are skipped and named in ``.errors``.  ``cache=False``: not kept in
    METADATA_CACHE (the caller keeps its own, smaller form).
    """
    key = getattr(dnode, "cache_key", None) if cache else None
    if key is not None:
        hit = METADATA_CACHE.get(("zap", key))
        if hit is not None:
            return hit
    try:
        block0, order, btype = _open(dnode)
    except (UnreadableError, ZapError) as e:
        out = _salvage_leaves(dnode, e)
    else:
        if btype == ZBT_MICRO:
            out = _micro_entries(block0, order)
        else:
            out = _fat_entries(dnode, block0, order)
    if key is not None:
        METADATA_CACHE.put(("zap", key), out)
    return out


def _salvage_leaves(dnode, why):
    """A fat ZAP whose header block is lost: decode every block that is a leaf.

    Without the header the pointer table and the flags are unknown, so the leaves are
    found by their magic and read as string-keyed (directories, property ZAPs).
    Re-raises ``why`` when no leaf is found (a lost micro ZAP, or not a ZAP at all).
    """
    bs = _block_size(dnode)
    size = int(getattr(dnode, "size", 0) or 0)
    nblocks = min(size // bs, MAX_SALVAGE_BLOCKS) if bs & (bs - 1) == 0 else 0
    if getattr(dnode, "type", None) in NOT_ZAP_TYPES:
        nblocks = 0
    out = ZapEntries()
    out.kind = "fat"
    leaves = 0
    for blk in range(1, nblocks):
        try:
            data = _read(dnode, blk * bs, bs, f"fat ZAP block {blk}")
        except (UnreadableError, ZapError):
            continue
        order = _byteorder(data[:8], (ZBT_LEAF,))
        if order is None:
            continue
        try:
            leaf = _Leaf(data, order, blk, 0)
        except ZapError:
            continue
        leaves += 1
        for i in leaf.entries():
            try:
                name, value, _h = leaf.decode(i)
            except ZapError as e:
                out.errors.append(str(e))
                continue
            out.setdefault(name, value)
    if not leaves:
        raise why
    out.errors.insert(0, f"fat ZAP header block unreadable ({why}); {len(out)} entries "
                         f"salvaged from {leaves} leaf blocks")
    return out


def zap_lookup(dnode, name: str, errors: list | None = None):
    """The value of ``name`` or None.

    A fat ZAP is searched by hash (one leaf read); when that misses on a
    normalized or damaged object the full listing decides, and its ``errors`` (what
    the listing lost) are added to ``errors``.
    """
    def listed():
        entries = zap_entries(dnode)  # salvages the leaves or raises
        if errors is not None:
            errors.extend(entries.errors)
        return entries.get(name)

    key = getattr(dnode, "cache_key", None)
    if key is not None:
        hit = METADATA_CACHE.get(("zap", key))
        if hit is not None:
            if errors is not None:
                errors.extend(hit.errors)
            return hit.get(name)
    try:
        block0, order, btype = _open(dnode)
    except (UnreadableError, ZapError):
        return listed()
    if btype == ZBT_MICRO:  # decoded once and cached: a directory is looked up often
        return listed()
    fat = _Fat(dnode, block0, order)
    if not fat.normflags and not (fat.flags & (ZAP_FLAG_UINT64_KEY | ZAP_FLAG_PRE_HASHED_KEY)):
        nb = name.encode("utf-8", "surrogateescape")
        h = zap_hash(nb, fat.salt, fat.flags)
        try:
            idx = h >> (64 - fat.ptr_shift) if fat.ptr_shift else 0
            leaf = fat.read_leaf(fat.ptr(idx))
            value = leaf.lookup(h, nb)
            return value  # a clean miss on an intact leaf: trust the hash
        except (UnreadableError, ZapError, IndexError, struct.error):
            pass
    return listed()


def zap_int(dnode, name: str, default=None):
    """The first integer of ``name``'s value (most ZAPs hold one uint64), or ``default``."""
    v = zap_lookup(dnode, name)
    if isinstance(v, list) and v:
        return v[0]
    return default


def zap_kind(dnode) -> str:
    """``"micro"`` or ``"fat"`` (raises :class:`ZapError` for anything else)."""
    _b, _o, btype = _open(dnode)
    return "micro" if btype == ZBT_MICRO else "fat"
