"""CRC-32C (Castagnoli) as Ceph and RocksDB use it.

* Ceph's ``ceph_crc32c(seed, data)`` is the raw CRC register: no implicit
  inversion before or after, the caller passes the seed (BlueStore's label,
  BlueFS super and log use ``-1``).  In terms of the standard CRC-32C:
  ``ceph_crc32c(seed, d) == ~crc32c(d, prev=~seed)``.
* RocksDB stores ``Mask(crc32c(type + data))`` (util/crc32c.h):
  ``((crc >> 15) | (crc << 17)) + 0xa282ead8``.

The ``crc32c`` package (ICRAR, SSE4.2/ARMv8 hardware paths) is used when
present; a table-driven fallback keeps the reader working without it (slow:
use it for small structures only).

References: ceph/src/include/crc32c.h, ceph/src/common/crc32c.cc,
rocksdb/util/crc32c.h (Mask/Unmask).
"""

from __future__ import annotations

_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _TABLE.append(_c)


def crc32c_py(data, prev: int = 0) -> int:
    """Table-driven CRC-32C (slow; used when the ``crc32c`` package is missing)."""
    c = prev ^ 0xFFFFFFFF
    t = _TABLE
    for b in bytes(data):
        c = t[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


try:  # pragma: no cover - depends on the environment
    import crc32c as _crc32c_mod

    def crc32c(data, prev: int = 0) -> int:
        """Standard CRC-32C of ``data``, continuing from the CRC ``prev``."""
        return _crc32c_mod.crc32c(data, prev)

    FAST = True
except ImportError:  # pragma: no cover
    crc32c = crc32c_py
    FAST = False


def ceph_crc32c(seed: int, data) -> int:
    """Ceph's ``ceph_crc32c(seed, data, len)``."""
    return crc32c(data, (~seed) & 0xFFFFFFFF) ^ 0xFFFFFFFF


_MASK_DELTA = 0xA282EAD8


def rocksdb_mask(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def rocksdb_unmask(masked: int) -> int:
    rot = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF
