"""BlueStore onodes: ``bluestore_onode_t``, extent maps, blobs, physical extents.

References (ceph/src/os/bluestore/):
- bluestore_types.h: ``bluestore_onode_t`` (DENC v1: varint nid, varint size,
  attrs map<string, bufferptr>, u8 flags, vector<shard_info{varint offset,
  varint bytes}>, varint expected_object_size / expected_write_size /
  alloc_hint_flags), ``bluestore_pextent_t`` (``denc_lba`` offset +
  ``denc_varint_lowz`` length; ``INVALID_OFFSET`` = ~0 is a hole),
  ``PExtentVector`` (varint count), ``bluestore_blob_t`` (extents, varint flags,
  lowz logical/compressed length when FLAG_COMPRESSED, u8 csum_type, u8
  csum_chunk_order, varint-length csum_data when FLAG_CSUM, le16 unused when
  FLAG_HAS_UNUSED), ``bluestore_blob_use_tracker_t``,
  ``bluestore_extent_ref_map_t``, ``bluestore_compression_header_t``.
- BlueStore.cc: ``Onode::decode`` (onode, then the spanning blobs, then, when
  the extent map is not sharded, the inline extent map as a bufferlist),
  ``ExtentMap::decode_spanning_blobs``, ``ExtentMap::decode_some`` (u8
  struct_v, varint extent count, then per extent a varint blobid with the
  BLOBID_FLAG_* bits, lowz gap / blob_offset / length, and either a new blob,
  a back reference to the blob of an earlier extent, or a spanning blob id),
  ``Blob::decode`` (blob; le64 sbid when FLAG_SHARED; ref map for spanning
  blobs).
- common/Checksummer.h: CSUM_* types and value sizes.
"""

from __future__ import annotations

import struct

from .denc import Reader
from .errors import CephError

INVALID_OFFSET = 0xFFFFFFFFFFFFFFFF

# bluestore_blob_t flags
FLAG_MUTABLE = 1
FLAG_COMPRESSED = 2
FLAG_CSUM = 4
FLAG_HAS_UNUSED = 8
FLAG_SHARED = 16

# ExtentMap::decode_some blob id bits
BLOBID_FLAG_CONTIGUOUS = 0x1
BLOBID_FLAG_ZEROOFFSET = 0x2
BLOBID_FLAG_SAMELENGTH = 0x4
BLOBID_FLAG_SPANNING = 0x8
BLOBID_SHIFT_BITS = 4

# Checksummer CSUM_* and their value sizes
CSUM_NONE = 1
CSUM_XXHASH32 = 2
CSUM_XXHASH64 = 3
CSUM_CRC32C = 4
CSUM_CRC32C_16 = 5
CSUM_CRC32C_8 = 6
CSUM_VALUE_SIZE = {CSUM_NONE: 0, CSUM_XXHASH32: 4, CSUM_XXHASH64: 8, CSUM_CRC32C: 4,
                   CSUM_CRC32C_16: 2, CSUM_CRC32C_8: 1}
CSUM_NAMES = {CSUM_NONE: "none", CSUM_XXHASH32: "xxhash32", CSUM_XXHASH64: "xxhash64",
              CSUM_CRC32C: "crc32c", CSUM_CRC32C_16: "crc32c_16", CSUM_CRC32C_8: "crc32c_8"}

#: Bounds against hostile encodings (a 4 MiB object has at most 1024 4 KiB
#: extents; BlueStore objects are far below these).
MAX_EXTENTS = 1 << 20
MAX_OBJECT_SIZE = 1 << 40
MAX_ATTRS = 1 << 16


class OnodeError(CephError):
    """An onode, extent map, blob or compression header does not decode."""


class Blob:
    """``bluestore_blob_t`` (+ the shared blob id of ``Blob::decode``)."""

    __slots__ = ("extents", "flags", "logical_length", "compressed_length", "csum_type",
                 "csum_chunk_order", "csum_data", "unused", "sbid", "id")

    def __init__(self):
        self.extents = []  # [(offset, length)], offset INVALID_OFFSET = hole
        self.flags = 0
        self.logical_length = 0
        self.compressed_length = 0
        self.csum_type = CSUM_NONE
        self.csum_chunk_order = 0
        self.csum_data = b""
        self.unused = 0
        self.sbid = 0
        self.id = None  # spanning blob id

    @property
    def is_compressed(self):
        return bool(self.flags & FLAG_COMPRESSED)

    @property
    def is_shared(self):
        return bool(self.flags & FLAG_SHARED)

    @property
    def has_csum(self):
        return bool(self.flags & FLAG_CSUM)

    def ondisk_length(self):
        return sum(n for _, n in self.extents)

    def csum_values(self):
        """The checksum values as a list of ints (little-endian words)."""
        size = CSUM_VALUE_SIZE.get(self.csum_type, 0)
        if not size or not self.has_csum:
            return []
        fmt = {1: "B", 2: "<H", 4: "<I", 8: "<Q"}[size]
        n = len(self.csum_data) // size
        return [v[0] for v in struct.iter_unpack(fmt, self.csum_data[:n * size])]

    def __repr__(self):
        ext = ",".join("-" if o == INVALID_OFFSET else f"{o:#x}" + f"/{n:#x}"
                       for o, n in self.extents)
        return f"<Blob [{ext}] flags={self.flags:#x} llen={self.logical_length:#x}>"


class Extent:
    """A logical extent of an object: ``length`` bytes at ``logical_offset`` are
    ``blob`` bytes from ``blob_offset`` (in the blob's logical, uncompressed space)."""

    __slots__ = ("logical_offset", "blob_offset", "length", "blob")

    def __init__(self, logical_offset, blob_offset, length, blob):
        self.logical_offset = logical_offset
        self.blob_offset = blob_offset
        self.length = length
        self.blob = blob

    @property
    def end(self):
        return self.logical_offset + self.length

    def __repr__(self):
        return f"<Extent {self.logical_offset:#x}+{self.length:#x} b_off={self.blob_offset:#x}>"


class Onode:
    """``bluestore_onode_t`` with its spanning blobs and inline extent map."""

    __slots__ = ("nid", "size", "attrs", "flags", "shards", "expected_object_size",
                 "expected_write_size", "alloc_hint_flags", "spanning", "inline_extents",
                 "cache_cost")

    def __init__(self):
        self.nid = 0
        self.size = 0
        self.attrs = {}
        self.flags = 0
        self.shards = []  # [(offset, bytes)]
        self.expected_object_size = 0
        self.expected_write_size = 0
        self.alloc_hint_flags = 0
        self.spanning = {}
        self.inline_extents = None  # list[Extent] when not sharded
        self.cache_cost = 512

    @property
    def is_sharded(self):
        return bool(self.shards)


# -- decoders ---------------------------------------------------------------------
def _vcount(c: Reader, min_item_size):
    """A varint element count, checked against the bytes left."""
    n = c.varint()
    if n * min_item_size > c.remaining():
        raise OnodeError(f"count {n} at offset {c.pos} exceeds the {c.remaining()} bytes left")
    return n


def _decode_pextents(c: Reader):
    n = _vcount(c, 2)
    out = []
    for _ in range(n):
        off = c.lba()
        ln = c.varint_lowz()
        out.append((off, ln))
    return out


def decode_blob(c: Reader, struct_v: int, include_ref_map: bool) -> Blob:
    """``Blob::decode`` (``bluestore_blob_t::decode`` + sbid + optional ref map)."""
    if struct_v not in (1, 2):
        raise OnodeError(f"blob: unknown extent map struct_v {struct_v}")
    b = Blob()
    b.extents = _decode_pextents(c)
    b.flags = c.varint()
    if b.flags & FLAG_COMPRESSED:
        b.logical_length = c.varint_lowz()
        b.compressed_length = c.varint_lowz()
    else:
        b.logical_length = b.ondisk_length()
    if b.flags & FLAG_CSUM:
        b.csum_type = c.u8()
        b.csum_chunk_order = c.u8()
        n = c.varint()
        b.csum_data = c.take(n)
        if b.csum_chunk_order > 40:
            raise OnodeError(f"blob: csum chunk order {b.csum_chunk_order} is absurd")
    if b.flags & FLAG_HAS_UNUSED:
        b.unused = c.u16()
    if b.flags & FLAG_SHARED:
        b.sbid = c.u64()
    if include_ref_map:
        if struct_v > 1:  # bluestore_blob_use_tracker_t
            au_size = c.varint()
            if au_size:
                num_au = c.varint()
                if not num_au:
                    c.varint()  # total_bytes
                else:
                    if num_au > c.remaining():
                        raise OnodeError(f"blob: {num_au} allocation units cannot fit")
                    for _ in range(num_au):
                        c.varint()
        else:  # legacy bluestore_extent_ref_map_t
            n = _vcount(c, 2)
            for _ in range(n):
                c.varint_lowz()  # pos / delta
                c.varint_lowz()  # length
                c.varint()  # refs
    return b


def decode_extents(data, spanning: dict, what="extent map") -> list:
    """``ExtentMap::decode_some``: the extents of an inline map or of one shard."""
    c = Reader(data, error=OnodeError)
    struct_v = c.u8()
    if struct_v not in (1, 2):
        raise OnodeError(f"{what}: unknown struct_v {struct_v}")
    num = c.varint()
    if num > MAX_EXTENTS or num > c.remaining():
        raise OnodeError(f"{what}: {num} extents cannot fit in {c.remaining()} bytes")
    blobs = [None] * num
    out = []
    pos = 0
    prev_len = 0
    n = 0
    while c.remaining() > 0:
        if n >= num:
            raise OnodeError(f"{what}: more extents than the {num} announced")
        blobid = c.varint()
        if not blobid & BLOBID_FLAG_CONTIGUOUS:
            pos += c.varint_lowz()
        logical_offset = pos
        blob_offset = 0 if blobid & BLOBID_FLAG_ZEROOFFSET else c.varint_lowz()
        if not blobid & BLOBID_FLAG_SAMELENGTH:
            prev_len = c.varint_lowz()
        if blobid & BLOBID_FLAG_SPANNING:
            sid = blobid >> BLOBID_SHIFT_BITS
            blob = spanning.get(sid)
            if blob is None:
                raise OnodeError(f"{what}: extent {n} uses unknown spanning blob {sid}")
        else:
            ref = blobid >> BLOBID_SHIFT_BITS
            if ref:
                if ref > n or blobs[ref - 1] is None:
                    raise OnodeError(f"{what}: extent {n} refers to blob {ref} not yet seen")
                blob = blobs[ref - 1]
            else:
                blob = decode_blob(c, struct_v, False)
                blobs[n] = blob
        if pos + prev_len > MAX_OBJECT_SIZE:
            raise OnodeError(f"{what}: extent {n} lies beyond {MAX_OBJECT_SIZE:#x}")
        out.append(Extent(logical_offset, blob_offset, prev_len, blob))
        pos += prev_len
        n += 1
    if n != num:
        raise OnodeError(f"{what}: {n} extents decoded, {num} announced")
    return out


def decode_onode(value) -> Onode:
    """``Onode::decode``: the value of an onode key."""
    c = Reader(value, error=OnodeError)
    struct_v, _compat, body_end = c.start(max_compat=1, what="bluestore_onode_t")
    b = c.sub(body_end)
    o = Onode()
    o.nid = b.varint()
    o.size = b.varint()
    if o.size > MAX_OBJECT_SIZE:
        raise OnodeError(f"onode: object size {o.size:#x} is absurd")
    n = b.count(8)
    if n > MAX_ATTRS:
        raise OnodeError(f"onode: {n} attributes")
    for _ in range(n):
        k = b.bytes32()
        o.attrs[k.decode("utf-8", "surrogateescape")] = b.bytes32()
    o.flags = b.u8()
    n = b.count(2)
    prev = -1
    for _ in range(n):
        off = b.varint()
        nbytes = b.varint()
        if off <= prev:
            raise OnodeError("onode: extent map shards out of order")
        prev = off
        o.shards.append((off, nbytes))
    o.expected_object_size = b.varint()
    o.expected_write_size = b.varint()
    o.alloc_hint_flags = b.varint()
    # ExtentMap::decode_spanning_blobs
    sv = c.u8()
    if sv not in (1, 2):
        raise OnodeError(f"onode: unknown spanning blob struct_v {sv}")
    n = _vcount(c, 3)
    for _ in range(n):
        bid = c.varint()
        blob = decode_blob(c, sv, True)
        blob.id = bid
        o.spanning[bid] = blob
    if not o.shards:
        inline = c.bytes32()
        o.inline_extents = decode_extents(inline, o.spanning, "inline extent map") if inline else []
    o.cache_cost = 256 + len(value) * 4
    return o


# -- other small encodings ----------------------------------------------------------
COMP_ALG_NONE = 0
COMP_ALG_SNAPPY = 1
COMP_ALG_ZLIB = 2
COMP_ALG_ZSTD = 3
COMP_ALG_LZ4 = 4
COMP_ALG_BROTLI = 5
COMP_NAMES = {0: "none", 1: "snappy", 2: "zlib", 3: "zstd", 4: "lz4", 5: "brotli"}


def decode_compression_header(data) -> tuple[int, int, int | None, int]:
    """``bluestore_compression_header_t`` (DENC v2: u8 type, le32 length,
    optional<le32> compressor_message): (type, length, message, payload offset)."""
    c = Reader(data, error=OnodeError)
    struct_v, _compat, body_end = c.start(max_compat=2, what="compression header")
    b = c.sub(body_end)
    typ = b.u8()
    length = b.u32()
    msg = None
    if struct_v >= 2 and b.remaining() > 0 and b.u8():
        msg = b.s32()
    if length > len(data) - c.pos:
        raise OnodeError(f"compressed blob: payload of {length} bytes, "
                          f"only {len(data) - c.pos} stored")
    return typ, length, msg, c.pos
