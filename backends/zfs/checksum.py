"""Block checksums: fletcher2, fletcher4 (compiled, kernels.py), sha256, sha512/256, skein, edonr, blake3.

References: OpenZFS module/zcommon/zfs_fletcher.c (fletcher_2_native / _byteswap,
fletcher_4_native / _byteswap), module/zfs/sha256.c (digest stored as four
big-endian 64-bit words), sha512 = SHA-512/256 stored in native word order,
module/zfs/zio_checksum.c (zio_checksum_table, zio_checksum_handle_crypt,
zio_checksum_template_init: the salted checksums take the pool's 32-byte salt,
DMU_POOL_CHECKSUM_SALT "org.illumos:checksum_salt" in the MOS object directory),
module/zfs/skein_zfs.c (Skein-512 with a 256-bit output keyed by the salt,
Skein_512_InitExt), module/zfs/edonr_zfs.c (Edon-R 512 after a salt block
H(salt) || H(H(salt)), the first 256 bits), module/zfs/blake3_zfs.c (BLAKE3 keyed
with the salt); all three store the digest bytes as they are (native word order).
"ZFS On-Disk Specification" section 2.4.

Libraries (measured in README.md): ``blake3`` (the Rust crate's bindings) and
``pyskein`` (C, the Skein reference code); Edon-R has no maintained Python package:
``edonr.py`` here, compiled with numba like lzjb.

Fletcher sums are running sums modulo 2**64.  With numpy they are dot products of the
words with fixed coefficient vectors (``b = sum((n - i) * w[i])`` ...), which uint64
arithmetic wraps exactly like the C code; very large blocks use prefix sums instead.
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np

from . import kernels
from .compress import optional_module
from .structs import ZIO_CHECKSUM

_NATIVE_LE = np.dtype("<u4")
_NATIVE_BE = np.dtype(">u4")

VERIFIED = ("fletcher2", "fletcher4", "sha256", "sha512", "label", "gang_header",
            "zilog", "zilog2", "skein", "edonr", "blake3")
#: checksums keyed with the pool's salt (ZCHECKSUM_FLAG_SALTED)
SALTED = ("skein", "edonr", "blake3")


class Unverifiable(Exception):
    """The checksum of a block cannot be computed here (why in the message): the block
    is never served as verified data."""


#: Fletcher as dot products: for n words, word i (from 0) is added into b (n - i) times,
#: into c C(n - i + 1, 2) times and into d C(n - i + 2, 3) times (all modulo 2**64).
#: Coefficient vectors are kept for blocks up to 1 MiB; larger ones use prefix sums.
_COEF_MAX_WORDS = 1 << 18
_COEFS: dict = {}


def _coefs(n):
    co = _COEFS.get(n)
    if co is None:
        one, two, three = np.uint64(1), np.uint64(2), np.uint64(3)
        kb = np.arange(n, 0, -1, dtype=np.uint64)
        kc = kb * (kb + one) // two  # exact: < 2**37 for n <= 2**18
        # kd = kb (kb+1) (kb+2) / 6, divided by 3 before the product so it stays exact
        kd = np.where(kc % three == 0, (kc // three) * (kb + two), kc * ((kb + two) // three))
        if len(_COEFS) >= 6:  # at most 6 block sizes (<= 6 MiB each) are kept
            _COEFS.clear()
        co = _COEFS[n] = np.stack([kb, kc, kd])  # one matrix product for b, c, d
    return co


def fletcher4(data, little=True):
    n = len(data) // 4
    if n == 0:
        return (0, 0, 0, 0)
    k = kernels.get()
    if k is not None:  # compiled (kernels.py): ~7 GB/s
        w = np.frombuffer(data, dtype=_NATIVE_LE if little else _NATIVE_BE, count=n)
        if w.dtype != np.uint32:  # the writer's byte order is not this machine's
            w = w.astype(np.uint32)
        return tuple(int(x) for x in k.fletcher4(w))
    w = np.frombuffer(data, dtype="<u4" if little else ">u4", count=n).astype(np.uint64)
    if n <= _COEF_MAX_WORDS:
        b, c, d = _coefs(n) @ w
        return (int(w.sum(dtype=np.uint64)), int(b), int(c), int(d))
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
    w0, w1 = w[0::2], w[1::2]
    m = n // 2
    if m <= _COEF_MAX_WORDS:
        kb = _coefs(m)[0]
        return (int(w0.sum(dtype=np.uint64)), int(w1.sum(dtype=np.uint64)),
                int(np.dot(w0, kb)), int(np.dot(w1, kb)))
    a0 = np.cumsum(w0, dtype=np.uint64)
    a1 = np.cumsum(w1, dtype=np.uint64)
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


def _native_words(digest: bytes, little: bool):
    """Digests stored byte for byte (sha512, skein, edonr, blake3): as words in the
    writer's byte order (BP_GET_BYTEORDER)."""
    return struct.unpack("<4Q" if little else ">4Q", digest[:32])


def compute(algo: str, data, little=True, salt: bytes | None = None):
    """The four checksum words.  Raises :class:`Unverifiable` when they cannot be
    computed (unknown algorithm, library missing, salted checksum without the salt)."""
    with np.errstate(over="ignore"):
        if algo in ("fletcher4", "zilog2"):
            return fletcher4(data, little)
        if algo in ("fletcher2", "zilog"):
            return fletcher2(data, little)
    if algo in ("sha256", "label", "gang_header"):
        return sha256_words(data)
    if algo == "sha512":
        words = _sha512_256_words(data, little)
        if words is None:
            raise Unverifiable("this Python's hashlib has no SHA-512/256")
        return words
    if algo in SALTED:
        if salt is None or len(salt) != 32:
            raise Unverifiable("the pool's checksum salt (org.illumos:checksum_salt in the "
                               "MOS object directory) could not be read")
        if algo == "blake3":
            blake3 = optional_module("blake3")
            if blake3 is None:
                raise Unverifiable("the blake3 package is not installed")
            return _native_words(blake3.blake3(data, key=salt).digest(), little)
        if algo == "skein":
            skein = optional_module("skein")
            if skein is None:
                raise Unverifiable("the pyskein package is not installed")
            return _native_words(skein.skein512(data, digest_bits=256, key=salt).digest(),
                                 little)
        from . import edonr

        return _native_words(edonr.zfs_edonr(data, salt), little)
    raise Unverifiable(f"checksum algorithm {algo} is not known to this reader")


def verify_words(actual, expected, crypt=False) -> bool:
    if crypt:  # encrypted / authenticated blocks keep a MAC in words 2-3
        if tuple(actual[:2]) == tuple(expected[:2]):
            return True
        return ((actual[0] ^ actual[2]) == expected[0] and (actual[1] ^ actual[3]) == expected[1])
    return tuple(actual) == tuple(expected)


def algo_name(num: int) -> str:
    return ZIO_CHECKSUM.get(num, f"checksum-{num}")
