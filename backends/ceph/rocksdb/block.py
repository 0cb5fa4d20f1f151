"""Block-based table blocks: trailer, decompression, entries, restart points.

A block is ``entries | restarts (u32 each) | [hash index] | u32 footer`` and
is followed on disk by a 5-byte trailer: ``compression type`` and the
checksum of ``block + type`` (masked crc32c when the table's checksum type is
kCRC32c).  The footer is ``num_restarts``, with bit 31 set when a data block
hash index (``u8`` buckets + ``u16 num_buckets``) sits before it.

An entry is ``varint32 shared, varint32 non_shared, varint32 value_length,
key delta, value``: its key is the first ``shared`` bytes of the previous key
+ the delta.  Index blocks of format_version >= 4 with
``index_value_is_delta_encoded`` drop ``value_length``: the value is a full
``BlockHandle`` when the entry shares no key bytes (``shared == 0``, always the
case at a restart point) and else only a ``varsignedint64`` size delta
(offset = previous offset + previous size + trailer).  The data block hash
index exists only in blocks of at most 64 KiB.

Compression (table/format.cc UncompressBlockData): 0 none, 1 snappy (raw
snappy with its own length header), 2 zlib (raw deflate), 4 lz4 / 5 lz4hc
(LZ4 block), 7 zstd (frame); for format_version >= 2 the zlib/lz4/zstd data
is prefixed by ``varint32 decompressed size`` (before: zlib and bzip2 carry
no size, lz4 an 8-byte little-endian size); 3 bzip2 is read too.

References: rocksdb table/block_based/block.cc (DecodeEntry, DecodeKeyV4,
IndexBlockIter), table/block_based/block_builder.cc,
table/block_based/data_block_footer.cc, table/format.cc, util/compression.h.
"""

from __future__ import annotations

import struct
import zlib

from ..checksum import crc32c, rocksdb_unmask
from ..errors import RocksDBError
from .coding import varint, varint32, varsigned64
from .structs import kBlockTrailerSize

kNoCompression = 0
kSnappyCompression = 1
kZlibCompression = 2
kBZip2Compression = 3
kLZ4Compression = 4
kLZ4HCCompression = 5
kXpressCompression = 6
kZSTD = 7
kZSTDNotFinalCompression = 0x40
COMPRESSION_NAMES = {0: "none", 1: "snappy", 2: "zlib", 3: "bzip2", 4: "lz4", 5: "lz4hc",
                     6: "xpress", 7: "zstd", 0x40: "zstd"}

kNoChecksum, kCRC32c, kxxHash, kxxHash64, kXXH3 = range(5)

#: Never inflate a block beyond this (RocksDB blocks are KiB..MiB).
MAX_BLOCK = 64 << 20

_U32 = struct.Struct("<I")


def _snappy(data, size_hint):
    try:
        import cramjam
        return bytes(cramjam.snappy.decompress_raw(data))
    except ImportError:  # pragma: no cover - depends on the environment
        try:
            import snappy
            return snappy.uncompress(data)
        except ImportError:
            raise RocksDBError("snappy block: neither cramjam nor python-snappy is installed") \
                from None


def _inflate(kind, body, size):
    """Decompress ``body`` (``size`` None: unknown, bounded by MAX_BLOCK)."""
    limit = MAX_BLOCK if size is None else size
    if kind == kZlibCompression:
        d = zlib.decompressobj(-15)
        return d.decompress(body, limit)
    if kind == kBZip2Compression:
        import bz2
        return bz2.BZ2Decompressor().decompress(body, max_length=limit)
    if kind in (kLZ4Compression, kLZ4HCCompression):
        import lz4.block
        return lz4.block.decompress(body, uncompressed_size=limit)
    if kind in (kZSTD, kZSTDNotFinalCompression):
        import zstandard
        return zstandard.ZstdDecompressor().decompress(body, max_output_size=limit)
    raise RocksDBError(f"unsupported block compression {COMPRESSION_NAMES.get(kind, kind)}")


def decompress(ctype: int, data: bytes, format_version=2) -> bytes:
    """Undo a block's compression; raise :class:`RocksDBError` on bad input.

    ``compress_format_version`` is 2 for table format_version >= 2 (varint32
    decompressed size first) and 1 before (zlib/bzip2: no size; lz4: the size
    as a little-endian size_t in 8 bytes).
    """
    if ctype == kNoCompression:
        return data
    name = COMPRESSION_NAMES.get(ctype, ctype)
    try:
        if ctype == kSnappyCompression:
            size, _ = varint32(data, 0, len(data))
            if size > MAX_BLOCK:
                raise RocksDBError(f"snappy block claims {size} bytes")
            out = _snappy(data, size)
        elif format_version >= 2:
            size, pos = varint32(data, 0, len(data))
            if size > MAX_BLOCK:
                raise RocksDBError(f"compressed block claims {size} bytes")
            out = _inflate(ctype, data[pos:], size)
        elif ctype in (kLZ4Compression, kLZ4HCCompression):
            if len(data) < 8:
                raise RocksDBError("lz4 block shorter than its header")
            size = struct.unpack_from("<Q", data)[0]
            if size > MAX_BLOCK:
                raise RocksDBError(f"compressed block claims {size} bytes")
            out = _inflate(ctype, data[8:], size)
        elif ctype in (kZlibCompression, kBZip2Compression):
            size = None
            out = _inflate(ctype, data, None)
        else:
            raise RocksDBError(f"{name} blocks of format_version {format_version} "
                               "are not supported")
        if size is not None and len(out) != size:
            raise RocksDBError(f"block inflated to {len(out)} bytes, expected {size}")
    except RocksDBError:
        raise
    except Exception as e:  # library errors: corrupt compressed data
        raise RocksDBError(f"cannot decompress {name} block: {type(e).__name__}: {e}") from None
    return bytes(out)


try:  # optional: xxHash-family block checksums (RocksDB >= 6.27 defaults to XXH3)
    import xxhash as _xxhash
except ImportError:  # pragma: no cover - depends on the environment
    _xxhash = None

_kRandomPrime = 0x6B9083D9


def block_checksum(checksum_type, data_and_type: bytes):
    """The stored form of a block checksum (table/format.cc ComputeBuiltinChecksum...);
    None when it cannot be computed here (unknown type, or no ``xxhash`` module)."""
    if checksum_type == kCRC32c:
        return None  # handled by the caller with the mask
    if _xxhash is None:
        return None
    if checksum_type == kxxHash:
        return _xxhash.xxh32_intdigest(data_and_type)
    if checksum_type == kxxHash64:
        return _xxhash.xxh64_intdigest(data_and_type) & 0xFFFFFFFF
    if checksum_type == kXXH3:
        v = _xxhash.xxh3_64_intdigest(data_and_type[:-1]) & 0xFFFFFFFF
        return v ^ ((data_and_type[-1] * _kRandomPrime) & 0xFFFFFFFF)
    return None


def context_modifier(base_context_checksum: int, offset: int) -> int:
    """``ChecksumModifierForContext`` (table/format.h, format_version >= 6): added to a
    block's (and the footer's) stored checksum; 0 when the table has no base."""
    if not base_context_checksum:
        return 0
    return base_context_checksum ^ (((offset & 0xFFFFFFFF) + (offset >> 32)) & 0xFFFFFFFF)


def check_trailer(raw: bytes, checksum_type=kCRC32c, verify=True, modifier=0):
    """Split ``block + trailer``; verify the checksum -> ``(block, compression type)``.

    crc32c (the default of the RocksDB in Ceph 16/17/18) is always verified; the
    xxHash family when the ``xxhash`` module is installed.  ``modifier``: the
    format_version 6 context modifier of the block's offset (subtracted from the
    stored value).
    """
    if len(raw) < kBlockTrailerSize:
        raise RocksDBError("block shorter than its trailer")
    n = len(raw) - kBlockTrailerSize
    ctype = raw[n]
    if verify and checksum_type != kNoChecksum:
        stored = (_U32.unpack_from(raw, n + 1)[0] - modifier) & 0xFFFFFFFF
        if checksum_type == kCRC32c:
            ok = crc32c(raw[:n + 1]) == rocksdb_unmask(stored)
        else:
            want = block_checksum(checksum_type, raw[:n + 1])
            ok = want is None or want == stored
        if not ok:
            raise RocksDBError("block checksum mismatch")
    return raw[:n], ctype


def restart_offset(block) -> tuple:
    """``(end of entries, [restart offsets])`` of a block."""
    n = len(block)
    if n < 4:
        raise RocksDBError(f"block of {n} bytes has no restart footer")
    footer = _U32.unpack_from(block, n - 4)[0]
    hashed = footer & 0x80000000 and n <= (1 << 16)  # data block hash index (<= 64 KiB)
    num_restarts = footer & 0x7FFFFFFF if hashed else footer
    end = n - 4
    if hashed:
        if end < 2:
            raise RocksDBError("block hash index footer truncated")
        num_buckets = struct.unpack_from("<H", block, end - 2)[0]
        end -= 2 + num_buckets
    end -= 4 * num_restarts
    if end < 0 or (num_restarts == 0 and n > 4):
        raise RocksDBError(f"block of {n} bytes cannot hold {num_restarts} restarts")
    restarts = list(struct.unpack_from(f"<{num_restarts}I", block, end))
    if restarts and (restarts[0] != 0 or max(restarts) > end):
        raise RocksDBError("block restart points out of range")
    return end, restarts


def iter_entries(block, start=0):
    """Yield ``(key, value)`` for every entry of a block (from restart offset ``start``)."""
    end, _ = restart_offset(block)
    return _entries(block, start, end)


def _entries(block, pos, end):
    key = b""
    while pos < end:
        # the three lengths are nearly always single bytes: decode those inline
        b = block[pos]
        if b < 0x80:
            shared, pos = b, pos + 1
        else:
            shared, pos = varint32(block, pos, end)
        b = block[pos] if pos < end else 0xFF
        if b < 0x80:
            non_shared, pos = b, pos + 1
        else:
            non_shared, pos = varint32(block, pos, end)
        b = block[pos] if pos < end else 0xFF
        if b < 0x80:
            vlen, pos = b, pos + 1
        else:
            vlen, pos = varint32(block, pos, end)
        if shared > len(key) or pos + non_shared + vlen > end:
            raise RocksDBError(f"corrupt block entry at offset {pos}")
        key = key[:shared] + block[pos:pos + non_shared] if shared else block[pos:pos + non_shared]
        pos += non_shared
        yield key, block[pos:pos + vlen]
        pos += vlen


def decode_handle(buf, pos=0, end=None):
    """``BlockHandle``: varint64 offset, varint64 size -> ``(offset, size, new_pos)``."""
    end = len(buf) if end is None else end
    off, pos = varint(buf, pos, end)
    size, pos = varint(buf, pos, end)
    return off, size, pos


def iter_index_entries(block, value_delta_encoded=False):
    """Yield ``(key, (offset, size))`` of an index block."""
    if not value_delta_encoded:
        for k, v in iter_entries(block):
            off, size, _ = decode_handle(v)
            yield k, (off, size)
        return
    end, _ = restart_offset(block)
    pos, key = 0, b""
    prev = None
    while pos < end:
        shared, pos = varint32(block, pos, end)
        non_shared, pos = varint32(block, pos, end)
        if shared > len(key) or pos + non_shared > end:
            raise RocksDBError(f"corrupt index entry at offset {pos}")
        key = key[:shared] + bytes(block[pos:pos + non_shared])
        pos += non_shared
        if shared == 0 or prev is None:  # IndexBlockIter::DecodeCurrentValue
            off, size, pos = decode_handle(block, pos, end)
        else:
            delta, pos = varsigned64(block, pos, end)
            off = prev[0] + prev[1] + kBlockTrailerSize
            size = prev[1] + delta
            if size < 0:
                raise RocksDBError("negative block size in a delta-encoded index")
        prev = (off, size)
        yield key, prev
