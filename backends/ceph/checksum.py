"""CRC-32C (Castagnoli) as Ceph and RocksDB use it.

* Ceph's ``ceph_crc32c(seed, data)`` is the raw CRC register: no implicit
  inversion before or after, the caller passes the seed (BlueStore's label,
  BlueFS super and log use ``-1``).  In terms of the standard CRC-32C:
  ``ceph_crc32c(seed, d) == ~crc32c(d, prev=~seed)``.
* RocksDB stores ``Mask(crc32c(type + data))`` (util/crc32c.h):
  ``((crc >> 15) | (crc << 17)) + 0xa282ead8``.

The CRC itself is pvfs.checksum's (the ``crc32c`` package, hardware paths).

References: ceph/src/include/crc32c.h, ceph/src/common/crc32c.cc,
rocksdb/util/crc32c.h (Mask/Unmask).
"""

from __future__ import annotations

from pvfs.checksum import crc32c, crc32c_raw

__all__ = ["ceph_crc32c", "crc32c", "rocksdb_mask", "rocksdb_unmask"]


def ceph_crc32c(seed: int, data) -> int:
    """Ceph's ``ceph_crc32c(seed, data, len)`` (the raw register form)."""
    return crc32c_raw(data, seed)


_MASK_DELTA = 0xA282EAD8


def rocksdb_mask(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def rocksdb_unmask(masked: int) -> int:
    rot = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF
