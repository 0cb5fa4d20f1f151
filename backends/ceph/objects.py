"""A BlueStore object's data as a :class:`pvfs.source.Source`.

An object's logical bytes are a sorted list of extents (onode.py); each
extent points into a blob, a blob's logical space is the concatenation of its
physical extents on the main block device (or, for a compressed blob, the
decompressed contents of those physical extents).  Logical ranges without an
extent are unwritten and read as zeros (``unmapped``).

Checksums: every blob with ``FLAG_CSUM`` carries one value per
``1 << csum_chunk_order`` bytes of its on-disk data; reads verify every chunk
they touch (``bluestore_blob_t::verify_csum``), compressed blobs are verified
over their whole on-disk length before decompression.  A mismatch raises
:class:`pvfs.errors.UnreadableError` for the object range it covers and is
reported through ``on_damage``: the replica merge in rbd.py then tries the
next copy.

CRC-32C comes from ``checksum.crc32c`` (the ``crc32c`` package: SSE4.2 /
ARMv8 hardware CRC, ~10 GB/s, versus ~1 MB/s for a pure-Python table), in
Ceph's seed form ``ceph_crc32c(-1, chunk)`` = standard CRC-32C xor ~0.

Decompression (``BlueStore::_decompress`` + ``compressor/*``): the payload
behind a ``bluestore_compression_header_t`` is
- zstd: le32 original length + a zstd stream (``zstandard``);
- lz4: le32 segment count, (le32 original, le32 compressed) pairs, then the
  segments as one LZ4 block stream (each may refer to the previous output);
- snappy: a raw snappy block (``cramjam.snappy.decompress_raw``);
- zlib: one "variation" byte, then raw deflate with the window bits of the
  header's ``compressor_message`` (default -15).

References: ceph/src/os/bluestore/BlueStore.cc (``_do_read``,
``_verify_csum``, ``_decompress``), bluestore_types.cc
(``bluestore_blob_t::verify_csum``), common/Checksummer.h,
compressor/{zstd,lz4,snappy,zlib}/*Compressor.{h,cc}.
"""

from __future__ import annotations

import bisect
import struct
import zlib

from pvfs.cache import METADATA_CACHE
from pvfs.errors import UnreadableError
from pvfs.source import DATA, UNMAPPED, Source

from .checksum import crc32c
from .errors import CephError
from .onode import (COMP_ALG_LZ4, COMP_ALG_SNAPPY, COMP_ALG_ZLIB, COMP_ALG_ZSTD, COMP_NAMES,
                    CSUM_CRC32C, CSUM_CRC32C_8, CSUM_CRC32C_16, CSUM_NAMES, CSUM_NONE,
                    CSUM_VALUE_SIZE, CSUM_XXHASH32, CSUM_XXHASH64, INVALID_OFFSET, OnodeError,
                    decode_compression_header)

try:  # optional: only for xxhash checksums, which BlueStore does not use by default
    import xxhash as _xxhash
except ImportError:  # pragma: no cover
    _xxhash = None


class BlobError(CephError):
    """A compressed blob cannot be decompressed."""


#: A blob's logical length is bounded by bluestore_max_blob_size (512 KiB by
#: default); a hostile length over this is refused before decompressing.
MAX_BLOB_LOGICAL = 64 << 20


def _csum_value(csum_type, data):
    if csum_type in (CSUM_CRC32C, CSUM_CRC32C_16, CSUM_CRC32C_8):
        v = crc32c(data) ^ 0xFFFFFFFF  # ceph_crc32c(-1, data)
        if csum_type == CSUM_CRC32C_16:
            return v & 0xFFFF
        if csum_type == CSUM_CRC32C_8:
            return v & 0xFF
        return v
    if _xxhash is not None and csum_type == CSUM_XXHASH32:
        return _xxhash.xxh32_intdigest(data, 0xFFFFFFFF)
    if _xxhash is not None and csum_type == CSUM_XXHASH64:
        return _xxhash.xxh64_intdigest(data, 0xFFFFFFFFFFFFFFFF)
    return None  # unsupported: not verified


def decompress(raw: bytes, logical_length: int) -> bytes:
    """``BlueStore::_decompress`` of a compressed blob's on-disk bytes."""
    try:
        typ, length, msg, off = decode_compression_header(raw)
    except OnodeError as e:
        raise BlobError(f"compressed blob: {e}") from None
    payload = raw[off:off + length]
    name = COMP_NAMES.get(typ, f"type {typ}")
    if logical_length > MAX_BLOB_LOGICAL:
        raise BlobError(f"compressed blob: logical length {logical_length} is absurd")
    try:
        if typ == COMP_ALG_ZSTD:
            import zstandard

            if len(payload) < 4:
                raise BlobError("zstd payload shorter than its length word")
            want = struct.unpack_from("<I", payload)[0]
            if want > MAX_BLOB_LOGICAL:
                raise BlobError(f"zstd payload claims {want} bytes")
            out = zstandard.ZstdDecompressor().decompressobj().decompress(payload[4:])
        elif typ == COMP_ALG_LZ4:
            import lz4.block

            if len(payload) < 4:
                raise BlobError("lz4 payload shorter than its segment count")
            count = struct.unpack_from("<I", payload)[0]
            if 4 + 8 * count > len(payload):
                raise BlobError(f"lz4 payload: {count} segments cannot fit")
            pairs = [struct.unpack_from("<II", payload, 4 + 8 * i) for i in range(count)]
            if sum(p[0] for p in pairs) > MAX_BLOB_LOGICAL:
                raise BlobError("lz4 payload: segments too large")
            pos = 4 + 8 * count
            out = b""
            for orig, comp in pairs:
                seg = payload[pos:pos + comp]
                pos += comp
                out += lz4.block.decompress(seg, uncompressed_size=orig, dict=out[-65536:])
        elif typ == COMP_ALG_SNAPPY:
            try:
                import cramjam
            except ImportError:  # pragma: no cover
                raise BlobError("snappy-compressed blob, but cramjam is not installed") from None
            out = bytes(cramjam.snappy.decompress_raw(payload))
        elif typ == COMP_ALG_ZLIB:
            wbits = msg if msg is not None else -15
            d = zlib.decompressobj(wbits)
            out = d.decompress(payload[1:], MAX_BLOB_LOGICAL)
        else:
            raise BlobError(f"compressed blob: unsupported algorithm {name}")
    except BlobError:
        raise
    except Exception as e:
        raise BlobError(f"compressed blob ({name}): {type(e).__name__}: {e}") from None
    if len(out) < logical_length:
        raise BlobError(f"compressed blob ({name}): {len(out)} bytes decompressed, "
                        f"{logical_length} expected")
    return out[:logical_length]


class ObjectSource(Source):
    """One object's bytes.

    ``device`` is the main block device Source; ``extents`` the decoded,
    sorted extent map; ``data_size`` the onode size; ``size`` may be larger
    (an RBD object slot), the tail reads as zeros.  ``broken`` lists
    ``(offset, length, reason)`` logical ranges whose extent-map shard was
    lost: they are unreadable.  ``on_damage(code, message, ranges)`` is called
    for checksum and decompression failures.
    """

    def __init__(self, device: Source, extents, data_size, size=None, label="object",
                 broken=(), on_damage=None):
        super().__init__()
        self.device = device
        self.extents = [e for e in extents if e.length > 0 and e.logical_offset < data_size]
        self.extents.sort(key=lambda e: e.logical_offset)
        self._starts = [e.logical_offset for e in self.extents]
        self.data_size = data_size
        self.size = data_size if size is None else size
        self.label = label
        self.broken = list(broken)
        self.on_damage = on_damage

    # -- helpers -------------------------------------------------------------
    def _fail(self, code, msg, ranges):
        if self.on_damage is not None:
            try:
                self.on_damage(code, msg, ranges)
            except Exception:
                pass
        raise UnreadableError(f"{self.label}: {msg}", ranges)

    def _device_read(self, blob, b_off, length):
        """Bytes ``[b_off, b_off+length)`` of a blob's on-disk space; holes are zeros."""
        parts = []
        pos = 0
        end = b_off + length
        for p_off, p_len in blob.extents:
            if pos >= end:
                break
            s = max(pos, b_off)
            e = min(pos + p_len, end)
            if s < e:
                if p_off == INVALID_OFFSET:
                    parts.append(bytes(e - s))
                else:
                    parts.append(self.device.read(p_off + (s - pos), e - s))
            pos += p_len
        data = b"".join(parts)
        if len(data) < length:
            data += bytes(length - len(data))
        return data

    def _verify(self, blob, chunk_start, data, obj_off):
        """Check the csum of whole chunks ``data`` starting at blob offset ``chunk_start``."""
        if not blob.has_csum or blob.csum_type == CSUM_NONE:
            return
        vsize = CSUM_VALUE_SIZE.get(blob.csum_type, 0)
        if not vsize:
            return
        csize = 1 << blob.csum_chunk_order
        values = blob.csum_data
        first = chunk_start // csize
        for i in range(0, len(data), csize):
            idx = first + i // csize
            if (idx + 1) * vsize > len(values):
                break
            want = int.from_bytes(values[idx * vsize:(idx + 1) * vsize], "little")
            got = _csum_value(blob.csum_type, data[i:i + csize])
            if got is not None and got != want:
                lo = max(0, obj_off + i)
                self._fail("bad-csum",
                           f"{CSUM_NAMES.get(blob.csum_type)} mismatch in blob chunk {idx} "
                           f"(stored {want:#x}, computed {got:#x}) at object offset {lo:#x}",
                           [(lo, csize)])

    def _decompressed(self, blob, obj_off):
        key = ("ceph-blob", self.device.uid, tuple(blob.extents), blob.compressed_length)
        out = METADATA_CACHE.get(key)
        if out is not None:
            return out
        ondisk = blob.ondisk_length()
        if ondisk > MAX_BLOB_LOGICAL:
            self._fail("bad-blob", f"compressed blob of {ondisk} bytes on disk", [(obj_off, 1)])
        raw = self._device_read(blob, 0, ondisk)
        self._verify(blob, 0, raw, obj_off)
        try:
            out = decompress(raw, blob.logical_length)
        except BlobError as e:
            self._fail("bad-compressed-blob", str(e), [(obj_off, blob.logical_length)])
        return METADATA_CACHE.put(key, out)

    def _blob_read(self, ext, s, n):
        """``n`` object bytes at object offset ``s`` from extent ``ext``."""
        blob = ext.blob
        b_off = ext.blob_offset + (s - ext.logical_offset)
        if blob.is_compressed:
            full = self._decompressed(blob, ext.logical_offset - ext.blob_offset)
            piece = full[b_off:b_off + n]
            return piece + bytes(n - len(piece))
        csize = 1 << blob.csum_chunk_order if blob.has_csum else 1
        a = b_off - b_off % csize
        z = -(-(b_off + n) // csize) * csize
        ondisk = blob.ondisk_length()
        z = min(z, max(ondisk, b_off + n))
        raw = self._device_read(blob, a, z - a)
        if blob.has_csum:
            self._verify(blob, a, raw[:max(0, min(z, ondisk) - a)], s - (b_off - a))
        return raw[b_off - a:b_off - a + n]

    # -- Source --------------------------------------------------------------------
    def _read(self, offset, length):
        end = offset + length
        for b_off, b_len, reason in self.broken:
            if b_off < end and offset < b_off + b_len:
                self._fail("lost-extent-map", reason, [(max(offset, b_off),
                                                        min(end, b_off + b_len) - max(offset, b_off))])
        out = bytearray(length)
        i = max(0, bisect.bisect_right(self._starts, offset) - 1)
        exts = self.extents
        while i < len(exts):
            e = exts[i]
            if e.logical_offset >= end:
                break
            s = max(offset, e.logical_offset)
            t = min(end, e.logical_offset + e.length, self.data_size)
            if s < t:
                out[s - offset:t - offset] = self._blob_read(e, s, t - s)
            i += 1
        return bytes(out)

    def _block_status(self, offset, length):
        end = offset + length
        out = []
        pos = offset
        i = max(0, bisect.bisect_right(self._starts, offset) - 1)
        while i < len(self.extents) and pos < end:
            e = self.extents[i]
            s = max(pos, e.logical_offset)
            t = min(end, e.logical_offset + e.length, self.data_size)
            if t <= pos:
                i += 1
                continue
            if s >= end:
                break
            if s > pos:
                out.append((pos, s - pos, UNMAPPED))
            if t > s:
                out.append((s, t - s, DATA))
                pos = t
            i += 1
        if pos < end:
            out.append((pos, end - pos, UNMAPPED))
        for _b_off, _b_len, _ in self.broken:
            pass  # reads fail there; block status stays as mapped
        return out
