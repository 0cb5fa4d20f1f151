"""Block-based SST tables (``NNNNNN.sst``).

Footer at the end of the file (``structs``) -> metaindex block (names ->
handles of the properties, range deletion and filter blocks) and index block
(one entry per data block: a separator key >= every key of that block and
the block's handle).  Data block keys are *internal keys*: user key + u64
``(sequence << 8) | value type``.

Decoded index and data blocks go to ``pvfs.cache.METADATA_CACHE`` keyed by
the file source's uid and offset, so reading a large table never keeps more
than the cache's budget in memory.

format_version 6 (RocksDB 8.6+): the footer carries a checksum of itself and a
``base_context_checksum``, the metaindex block ends right before the footer (only its
size is stored), the index block is found through the metaindex (``rocksdb.index``),
and every block checksum has the context modifier of its offset added.

References: rocksdb table/block_based/block_based_table_reader.cc (Open,
ReadMetaIndexBlock, index readers), table/format.{h,cc} (Footer::DecodeFrom,
ChecksumModifierForContext, ComputeBuiltinChecksum),
table/meta_blocks.cc (ReadTableProperties), include/rocksdb/table_properties.h
(property names), db/dbformat.h (internal keys, ValueType).
"""

from __future__ import annotations

import bisect
import struct

from pvfs.cache import METADATA_CACHE
from pvfs.errors import UnreadableError

from ..errors import RocksDBError
from ..checksum import crc32c, rocksdb_mask
from .block import (block_checksum, check_trailer, context_modifier, decode_handle, decompress,
                    iter_entries, iter_index_entries, kCRC32c, kNoChecksum, MAX_BLOCK)
from .coding import varint
from .structs import (footer_tail, kBlockBasedTableMagicNumber, kBlockTrailerSize,
                      kLegacyBlockBasedTableMagicNumber, kNewVersionsEncodedLength,
                      kVersion0EncodedLength)

_Q = struct.Struct("<Q")

kBinarySearch, kHashSearch, kTwoLevelIndexSearch, kBinarySearchWithFirstKey = 0, 1, 2, 3

#: ``rocksdb.*`` property values that are varint64 numbers.
_NUMERIC = {"rocksdb.column.family.id", "rocksdb.format.version", "rocksdb.num.entries",
            "rocksdb.num.data.blocks", "rocksdb.data.size", "rocksdb.index.size",
            "rocksdb.raw.key.size", "rocksdb.raw.value.size", "rocksdb.index.key.is.user.key",
            "rocksdb.index.value.is.delta.encoded", "rocksdb.num.range-deletions",
            "rocksdb.num.deletions", "rocksdb.num.merge.operands", "rocksdb.filter.size",
            "rocksdb.creation.time", "rocksdb.oldest.key.time", "rocksdb.fixed.key.length",
            "rocksdb.index.partitions", "rocksdb.top-level.index.size"}


def split_internal_key(ikey: bytes):
    """``user_key, sequence, value type`` of an internal key."""
    if len(ikey) < 8:
        raise RocksDBError(f"internal key of {len(ikey)} bytes")
    packed = _Q.unpack_from(ikey, len(ikey) - 8)[0]
    return ikey[:-8], packed >> 8, packed & 0xFF


class _Entries(list):
    """A decoded data block: ``[(user_key, seq, type, value)]`` with its memory cost."""

    cache_cost = 0


class Table:
    """One SST file over a Source."""

    def __init__(self, source, name="sst", verify=True):
        self.source = source
        self.name = name
        self.verify = verify
        size = source.size
        if size < kVersion0EncodedLength:
            raise RocksDBError(f"{name}: {size} bytes is too small for an SST")
        tail = self._read(max(0, size - kNewVersionsEncodedLength), min(size, kNewVersionsEncodedLength))
        magic = _Q.unpack_from(tail, len(tail) - 8)[0]
        if magic == kBlockBasedTableMagicNumber:
            if len(tail) < kNewVersionsEncodedLength:
                raise RocksDBError(f"{name}: footer truncated")
            ft = footer_tail.parse(tail[-12:])
            self.format_version = ft.version
            self.checksum_type = tail[0]
            handles = tail[1:41]
        elif magic == kLegacyBlockBasedTableMagicNumber:
            self.format_version = 0
            self.checksum_type = kCRC32c
            handles = tail[-kVersion0EncodedLength:-8]
        else:
            raise RocksDBError(f"{name}: not a block-based table (magic {magic:#018x})")
        self.base_context_checksum = 0
        if self.format_version > 6:
            raise RocksDBError(f"{name}: table format_version {self.format_version} "
                               "is not supported (0-6 are)")
        if self.format_version == 6:
            m_off, m_size = self._footer_v6(tail)
            i_off = i_size = None
        else:
            m_off, m_size, pos = decode_handle(handles, 0, len(handles))
            i_off, i_size, _ = decode_handle(handles, pos, len(handles))
        self.meta = {}
        if m_off < 0 or m_off + m_size + kBlockTrailerSize > size or m_size > MAX_BLOCK:
            raise RocksDBError(f"{name}: metaindex handle {m_off:#x}+{m_size:#x} outside the file")
        self.meta = {k.decode("latin-1"): decode_handle(v)[:2]
                     for k, v in iter_entries(self._block(m_off, m_size))}
        if i_off is None:  # format_version 6: the index is a meta block
            if "rocksdb.index" not in self.meta:
                raise RocksDBError(f"{name}: format_version 6 table without a rocksdb.index "
                                   "meta block")
            i_off, i_size = self.meta["rocksdb.index"]
        if i_off + i_size + kBlockTrailerSize > size or i_size > MAX_BLOCK:
            raise RocksDBError(f"{name}: index handle {i_off:#x}+{i_size:#x} outside the file")
        self.index_handle = (i_off, i_size)
        self.properties = {}
        if "rocksdb.properties" in self.meta:
            for k, v in iter_entries(self._block(*self.meta["rocksdb.properties"])):
                k = k.decode("latin-1")
                if k in _NUMERIC:
                    try:
                        v = varint(v, 0, len(v))[0]
                    except RocksDBError:
                        pass
                self.properties[k] = v
        p = self.properties
        self.index_key_is_user_key = bool(p.get("rocksdb.index.key.is.user.key", 0))
        self.index_value_delta = bool(p.get("rocksdb.index.value.is.delta.encoded", 0))
        it = p.get("rocksdb.block.based.table.index.type", b"")
        self.index_type = struct.unpack("<I", it)[0] if len(it) == 4 else 0
        self.column_family_id = p.get("rocksdb.column.family.id")
        self.column_family_name = p.get("rocksdb.column.family.name", b"").decode("latin-1")
        self.compression_name = p.get("rocksdb.compression", b"").decode("latin-1")
        self.cache_cost = 1024

    def _footer_v6(self, tail):
        """The format_version 6 footer (table/format.cc ``Footer::DecodeFrom``): checksum
        type, extended magic ``3e 00 7a 00``, footer checksum (over the 53 footer bytes
        with itself zeroed, plus the context modifier of the footer's offset),
        base_context_checksum, metaindex size (the metaindex block ends right before the
        footer), 16 unchecked + 8 zero reserved bytes, version, magic.  Returns the
        metaindex handle."""
        name = self.name
        footer_offset = self.source.size - kNewVersionsEncodedLength
        if tail[1:5] != b"\x3e\x00\x7a\x00":
            raise RocksDBError(f"{name}: bad extended footer magic {tail[1:5].hex()}")
        stored, base, meta_size = struct.unpack_from("<III", tail, 5)
        if context_modifier(base, 0) == 0:
            raise RocksDBError(f"{name}: invalid base context checksum")
        if any(tail[33:41]):
            raise RocksDBError(f"{name}: footer uses a future feature (reserved bytes set)")
        if self.verify and self.checksum_type != kNoChecksum:
            zeroed = tail[:5] + bytes(4) + tail[9:]
            if self.checksum_type == kCRC32c:
                want = rocksdb_mask(crc32c(zeroed))
            else:
                want = block_checksum(self.checksum_type, zeroed)
            if want is not None and \
                    (want + context_modifier(base, footer_offset)) & 0xFFFFFFFF != stored:
                raise RocksDBError(f"{name}: footer checksum mismatch")
        self.base_context_checksum = base
        return footer_offset - kBlockTrailerSize - meta_size, meta_size

    # -- low level ---------------------------------------------------------------------
    def _read(self, off, n):
        try:
            return self.source.read(off, n)
        except UnreadableError as e:
            raise RocksDBError(f"{self.name}: unreadable at {off:#x}: {e}") from None

    def _block(self, off, size):
        if off + size + kBlockTrailerSize > self.source.size or size > MAX_BLOCK:
            raise RocksDBError(f"{self.name}: block {off:#x}+{size:#x} outside the file")
        raw = self._read(off, size + kBlockTrailerSize)
        try:
            data, ctype = check_trailer(raw, self.checksum_type, self.verify,
                                        context_modifier(self.base_context_checksum, off))
            return decompress(ctype, data, self.format_version)
        except RocksDBError as e:
            raise RocksDBError(f"{self.name}: block at {off:#x}: {e}") from None

    # -- index -------------------------------------------------------------------------
    def index(self):
        """``(separator user keys, [(offset, size)])``, cached."""
        key = ("rocksdb-index", self.source.uid)
        return METADATA_CACHE.get_or_load(key, self._load_index)

    def _load_index(self):
        seps, handles = [], []

        def add(block):
            for k, h in iter_index_entries(block, self.index_value_delta):
                seps.append(k if self.index_key_is_user_key else k[:-8])
                handles.append(h)

        top = self._block(*self.index_handle)
        if self.index_type == kTwoLevelIndexSearch:
            for _, (off, size) in iter_index_entries(top, self.index_value_delta):
                add(self._block(off, size))
        else:
            add(top)
        out = _Index((seps, handles))
        out.cache_cost = 64 + sum(len(s) + 48 for s in seps)
        return out

    def data_block(self, off, size):
        key = ("rocksdb-block", self.source.uid, off)
        return METADATA_CACHE.get_or_load(key, lambda: self._load_data(off, size))

    def _load_data(self, off, size):
        out = _Entries()
        cost = 64
        append = out.append
        unpack = _Q.unpack_from
        for ikey, value in iter_entries(bytes(self._block(off, size))):
            n = len(ikey) - 8
            if n < 0:
                raise RocksDBError(f"{self.name}: internal key of {n + 8} bytes in block {off:#x}")
            packed = unpack(ikey, n)[0]
            append((ikey[:n], packed >> 8, packed & 0xFF, value))
            cost += n + len(value) + 160
        out.cache_cost = cost
        return out

    #: ``(smallest, largest)`` user key of the table when the MANIFEST says so.
    key_range = None
    #: ``fn(message)``: called for a data block that cannot be read, which is then
    #: skipped; None raises instead.
    on_damage = None

    def overlaps(self, start, end) -> bool:
        """May the table hold user keys in ``[start, end)``?"""
        if self.key_range is None:
            return True
        lo, hi = self.key_range
        return hi >= start and (end is None or lo < end)

    # -- iteration ---------------------------------------------------------------------
    def scan_block(self, off, size):
        """A data block for a scan that reads each block once (building an OSD's object
        index): from the cache when it is there, else decoded and not kept, so that
        millions of onode keys do not fill METADATA_CACHE (64 MiB of budget, more in
        Python objects) and push out what the mount reads again."""
        got = METADATA_CACHE.get(("rocksdb-block", self.source.uid, off))
        return got if got is not None else self._load_data(off, size)

    def iterate(self, start: bytes = b"", end: bytes | None = None, fill_cache: bool = True):
        """Yield ``(user_key, seq, type, value)`` in internal key order from ``start``;
        ``fill_cache=False``: a one-pass scan (:meth:`scan_block`)."""
        try:
            seps, handles = self.index()
        except RocksDBError as e:
            if self.on_damage is None:
                raise
            self.on_damage(f"{e}; the whole table is unreadable")
            return
        i = bisect.bisect_left(seps, start) if start else 0
        for j in range(i, len(handles)):
            try:
                block = (self.data_block if fill_cache else self.scan_block)(*handles[j])
            except RocksDBError as e:
                if self.on_damage is None:
                    raise
                lo = seps[j - 1] if j else b""
                self.on_damage(f"{e}; keys after {lo[:48]!r} up to {seps[j][:48]!r} are lost")
                continue
            for e in block:
                if e[0] < start:
                    continue
                if end is not None and e[0] >= end:
                    return
                yield e

    def range_tombstones(self):
        """``[(begin user key, seq, end user key)]`` from the range deletion block."""
        h = self.meta.get("rocksdb.range_del")
        if h is None:
            return []
        out = []
        for ikey, end_key in iter_entries(self._block(*h)):
            uk, seq, _ = split_internal_key(ikey)
            out.append((uk, seq, end_key))
        return out


class _Index(tuple):
    cache_cost = 0
