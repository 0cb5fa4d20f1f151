"""Checksums several formats share, in one place.

CRC-32C (Castagnoli) comes in two spellings:

* the standard CRC (``crc32c(data)``: initial register ~0, final xor ~0), what
  RocksDB, ext4's ``metadata_csum`` and btrfs store;
* the raw register form of the Linux kernel and of Ceph, ``crc32c(seed, data)``
  with no implicit inversion: dm-thin's ``dm_bm_checksum`` (seed ~0), DRBD's
  activity log (seed 0), Ceph's ``ceph_crc32c(-1, data)``.
  ``raw(seed, d) == ~standard(d, prev=~seed)``.

Both go through the ``crc32c`` package (ICRAR; SSE4.2 / ARMv8 hardware paths),
a hard dependency: a table-driven Python CRC is about 1000x slower, so there is
no fallback copy.

References: linux/lib/crc32.c (``crc32c``), ceph/src/include/crc32c.h,
rocksdb/util/crc32c.h.
"""

from __future__ import annotations

from .startup import light_metadata

with light_metadata():  # crc32c reads its version at import (pvfs/startup.py)
    import crc32c as _crc32c

_MASK32 = 0xFFFFFFFF


def crc32c(data: bytes | bytearray | memoryview, prev: int = 0) -> int:
    """Standard CRC-32C of ``data``, continuing from the CRC ``prev``."""
    return _crc32c.crc32c(data, prev)


def crc32c_raw(data: bytes | bytearray | memoryview, seed: int = _MASK32) -> int:
    """The kernel's/Ceph's ``crc32c(seed, data)``: the raw register, no final inversion."""
    return _crc32c.crc32c(data, (~seed) & _MASK32) ^ _MASK32
