"""btrfs checksums: crc32c, xxhash64, sha256, blake2b-256.

The superblock, every tree block and (through the csum tree) every data
sector carry one checksum of the type named in the superblock's
``csum_type``, stored in the first ``csum_size`` bytes of a 32-byte field.
crc32c is the Castagnoli CRC with the usual ``~0`` seed and final inversion
(``crc32c(0, data)`` of the ``crc32c`` package), stored little-endian;
xxhash64 uses seed 0 and is stored little-endian; sha256 and blake2b
(256-bit digest) are stored as their digests.

References: Linux ``fs/btrfs/disk-io.c`` (``btrfs_csum_data``, ``csum_tree_block``,
``btrfs_check_super_csum``), ``fs/btrfs/ctree.c`` (``btrfs_csums[]``: sizes and
crypto driver names), ``crypto/xxhash_generic.c`` (``put_unaligned_le64`` of the digest).
"""

from __future__ import annotations

import hashlib
import struct

import crc32c as _crc32c
import xxhash as _xxhash

from .structs import CSUM_TYPE_BLAKE2, CSUM_TYPE_CRC32, CSUM_TYPE_SHA256, CSUM_TYPE_XXHASH


def _crc(data) -> bytes:
    return _crc32c.crc32c(data).to_bytes(4, "little")


def _xxh(data) -> bytes:
    return _xxhash.xxh64_intdigest(data).to_bytes(8, "little")


def _sha(data) -> bytes:
    return hashlib.sha256(data).digest()


def _blake2(data) -> bytes:
    return hashlib.blake2b(data, digest_size=32).digest()


#: csum_type -> (name, size, function)
CSUMS = {
    CSUM_TYPE_CRC32: ("crc32c", 4, _crc),
    CSUM_TYPE_XXHASH: ("xxhash64", 8, _xxh),
    CSUM_TYPE_SHA256: ("sha256", 32, _sha),
    CSUM_TYPE_BLAKE2: ("blake2b", 32, _blake2),
}


class Checksum:
    """The checksum of one filesystem."""

    def __init__(self, csum_type: int):
        self.type = csum_type
        self.name, self.size, self.fn = CSUMS[csum_type]

    def __call__(self, data) -> bytes:
        return self.fn(data)

    def matches(self, data, stored) -> bool:
        return self.fn(data) == bytes(stored[:self.size])

    def sectors(self, data, sectorsize: int) -> bytes:
        """The checksums of every ``sectorsize`` piece of ``data``, one after another
        (the layout of an ``EXTENT_CSUM`` item)."""
        mv = memoryview(data)
        rng = range(0, len(mv), sectorsize)
        if self.type == CSUM_TYPE_CRC32:
            crc = _crc32c.crc32c
            return struct.pack(f"<{len(rng)}I", *[crc(mv[r:r + sectorsize]) for r in rng])
        if self.type == CSUM_TYPE_XXHASH:
            xx = _xxhash.xxh64_intdigest
            return struct.pack(f"<{len(rng)}Q", *[xx(mv[r:r + sectorsize]) for r in rng])
        return b"".join(self.fn(mv[r:r + sectorsize]) for r in rng)
