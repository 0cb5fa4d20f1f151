"""Block checksums: fletcher2, fletcher4 (numpy), sha256, sha512/256.

References: OpenZFS module/zcommon/zfs_fletcher.c (fletcher_2_native / _byteswap,
fletcher_4_native / _byteswap), module/zfs/sha256.c (digest stored as four
big-endian 64-bit words), sha512 = SHA-512/256 stored in native word order, module/zfs/zio_checksum.c (zio_checksum_table,
zio_checksum_handle_crypt), "ZFS On-Disk Specification" section 2.4.

Fletcher sums are running sums modulo 2**64; with numpy they are prefix sums
(``cumsum`` wraps in uint64), so ``a = sum(w)``, ``b = sum(cumsum(w))`` and so on.
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np

from .structs import ZIO_CHECKSUM

VERIFIED = ("fletcher2", "fletcher4", "sha256", "sha512", "label", "gang_header",
            "zilog", "zilog2")


def fletcher4(data, little=True):
    n = len(data) // 4
    w = np.frombuffer(data, dtype="<u4" if little else ">u4", count=n).astype(np.uint64)
    if n == 0:
        return (0, 0, 0, 0)
    a = np.cumsum(w, dtype=np.uint64)
    b = np.cumsum(a, dtype=np.uint64)
    c = np.cumsum(b, dtype=np.uint64)
    d = np.cumsum(c, dtype=np.uint64)
    return (int(a[-1]), int(b[-1]), int(c[-1]), int(d[-1]))


def fletcher2(data, little=True):
    n = len(data) // 16 * 2
    if n == 0:
        return (0, 0, 0, 0)
    w = np.frombuffer(data, dtype="<u8" if little else ">u8", count=n)
    a0 = np.cumsum(w[0::2], dtype=np.uint64)
    a1 = np.cumsum(w[1::2], dtype=np.uint64)
    b0 = np.cumsum(a0, dtype=np.uint64)
    b1 = np.cumsum(a1, dtype=np.uint64)
    return (int(a0[-1]), int(a1[-1]), int(b0[-1]), int(b1[-1]))


def sha256_words(data):
    return struct.unpack(">4Q", hashlib.sha256(data).digest())


def _sha512_256_words(data, little=True):
    """SHA-512/256; unlike sha256 the digest bytes are stored as they are, so the words
    are in the writer's byte order (zio_checksum.c abd_checksum_sha512_native)."""
    try:
        h = hashlib.new("sha512_256", data)
    except ValueError:
        return None
    return struct.unpack("<4Q" if little else ">4Q", h.digest())


def compute(algo: str, data, little=True):
    """The four checksum words, or None when the algorithm is not implemented."""
    with np.errstate(over="ignore"):
        if algo in ("fletcher4", "zilog2"):
            return fletcher4(data, little)
        if algo in ("fletcher2", "zilog"):
            return fletcher2(data, little)
    if algo in ("sha256", "label", "gang_header"):
        return sha256_words(data)
    if algo == "sha512":
        return _sha512_256_words(data, little)
    return None


def verify_words(actual, expected, crypt=False) -> bool:
    if actual is None:
        return True
    if crypt:  # encrypted / authenticated blocks keep a MAC in words 2-3
        if tuple(actual[:2]) == tuple(expected[:2]):
            return True
        return ((actual[0] ^ actual[2]) == expected[0] and (actual[1] ^ actual[3]) == expected[1])
    return tuple(actual) == tuple(expected)


def algo_name(num: int) -> str:
    return ZIO_CHECKSUM.get(num, f"checksum-{num}")
