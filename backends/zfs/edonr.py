"""Edon-R 512, the ``checksum=edonr`` of ZFS (salted, 256 of its 512 bits).

References: OpenZFS module/icp/algs/edonr/edonr.c (Q512: four rows of quasigroup
e-transformations LS1_512/LS2_512/QEF_512 per 128-byte block, the tweak that XORs the
message into the double pipe; EdonRFinal: a 1 bit, zeros, the bit count in the last
word of one or two blocks; the digest is DoublePipe[8..15], little-endian words) and
module/zfs/edonr_zfs.c (the MAC: the state after a salt block H(salt) || H(H(salt)),
the first 32 digest bytes are the four checksum words).

No maintained Python package implements Edon-R.  The block loop is compiled with numba
(a dependency, as for lzjb): ahead of time at set-up with the other kernels (kernels.py),
else just in time (~2 s once and ~100 MB of memory for numba, then hundreds of MB/s);
without numba the same loop runs on numpy scalars, correct but ~1000x slower.
"""

from __future__ import annotations

import struct
import threading

import numpy as np

_U = np.uint64
#: EdonR512 initial double chaining pipe (i512p2)
_INIT = np.array([0x8081828384858687 + 0x0808080808080808 * i for i in range(16)],
                 dtype=np.uint64)
_AA = _U(0xAAAAAAAAAAAAAAAA)
_NAA = _U(0x5555555555555555)  # ~0xaaaaaaaaaaaaaaaa
_R = tuple(_U(n) for n in (5, 15, 40, 50, 22, 31, 59, 19, 10, 36, 29, 55, 44, 48))
_L = tuple(_U(64 - int(n)) for n in _R)


def _q512(data, p):  # pragma: no cover - compiled by numba; the body is exercised by tests
    """Q512 over ``data`` (uint64 words, a multiple of 16) into the pipe ``p`` (16 words)."""
    r5, r15, r40, r50, r22, r31, r59, r19, r10, r36, r29, r55, r44, r48 = _R
    l5, l15, l40, l50, l22, l31, l59, l19, l10, l36, l29, l55, l44, l48 = _L
    aa = _AA
    naa = _NAA
    pp = (aa, aa, aa, aa, aa, aa, aa, aa)
    qq = pp
    for blk in range(len(data) // 16):
        d = data[blk * 16:blk * 16 + 16]
        # four rows of two quasigroup e-transformations each
        for step in range(8):
            if step == 0:
                x = (d[15], d[14], d[13], d[12], d[11], d[10], d[9], d[8])
                y = (d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7])
            elif step == 1:
                x = pp
                y = (d[8], d[9], d[10], d[11], d[12], d[13], d[14], d[15])
            elif step == 2:
                x = (p[8], p[9], p[10], p[11], p[12], p[13], p[14], p[15])
                y = pp
            elif step == 3:
                x = pp
                y = qq
            elif step == 4:
                x = pp
                y = (p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7])
            elif step == 5:
                x = qq
                y = pp
            elif step == 6:
                x = (d[7], d[6], d[5], d[4], d[3], d[2], d[1], d[0])
                y = pp
            else:
                x = pp
                y = qq
            x0, x1, x2, x3, x4, x5, x6, x7 = x
            y0, y1, y2, y3, y4, y5, y6, y7 = y
            # LS1_512
            z1 = x0 + x4
            z2 = x1 + x7
            z5 = z1 + z2
            s0 = aa + z5 + x2
            v = z5 + x3
            s1 = (v << r5) | (v >> l5)
            v = z5 + x6
            s2 = (v << r15) | (v >> l15)
            z3 = x2 + x3
            v = z1 + z3 + x5
            s5 = (v << r40) | (v >> l40)
            z4 = x5 + x6
            v = z2 + z4 + x0
            s6 = (v << r50) | (v >> l50)
            z6 = z3 + z4
            v = z6 + x7
            s3 = (v << r22) | (v >> l22)
            v = z6 + x1
            s4 = (v << r31) | (v >> l31)
            v = z6 + x4
            s7 = (v << r59) | (v >> l59)
            # LS2_512
            z1 = y0 + y1
            z2 = y2 + y5
            z6 = z1 + z2
            t0 = naa + z6 + y7
            v = z6 + y3
            t2 = (v << r19) | (v >> l19)
            z3 = y3 + y4
            z5 = z1 + z3
            v = z5 + y6
            t1 = (v << r10) | (v >> l10)
            v = z5 + y5
            t4 = (v << r36) | (v >> l36)
            z4 = y6 + y7
            z8 = z3 + z4
            v = z8 + y2
            t3 = (v << r29) | (v >> l29)
            v = z8 + y0
            t7 = (v << r55) | (v >> l55)
            z7 = z2 + z4
            v = z7 + y4
            t5 = (v << r44) | (v >> l44)
            v = z7 + y1
            t6 = (v << r48) | (v >> l48)
            # QEF_512
            z1 = s0 ^ s4
            z5 = t0 ^ t1
            o0 = (z1 ^ s1) + (z5 ^ t5)
            z8 = t6 ^ t7
            o1 = (z1 ^ s7) + (t2 ^ z8)
            z3 = s2 ^ s3
            o7 = (z3 ^ s5) + (t4 ^ z8)
            z7 = t3 ^ t4
            o3 = (z3 ^ s4) + (t0 ^ z7)
            z4 = s5 ^ s6
            o5 = (s3 ^ z4) + (z7 ^ t6)
            z6 = t2 ^ t5
            o6 = (s2 ^ z4) + (z6 ^ t7)
            z2 = s1 ^ s7
            o4 = (s0 ^ z2) + (t1 ^ z6)
            o2 = (z2 ^ s6) + (z5 ^ t3)
            out = (o0, o1, o2, o3, o4, o5, o6, o7)
            if step % 2 == 0:
                pp = out
            else:
                qq = out
        for i in range(8):  # the Edon-R tweak
            p[i] ^= d[8 + i] ^ pp[i]
            p[8 + i] ^= d[i] ^ qq[i]


_jit = None
_jit_lock = threading.Lock()


def _kernel():
    """The compiled Q512: the ahead-of-time build (kernels.py, no numba at run time),
    else numba's just-in-time compilation, else numpy scalars."""
    global _jit
    if _jit is None:
        with _jit_lock:
            if _jit is None:
                from . import kernels

                mod = kernels.aot()
                if mod is not None and hasattr(mod, "edonr_q512"):
                    _jit = mod.edonr_q512
                    return _jit
                try:
                    import numba

                    jit = numba.njit(cache=True, nogil=True, boundscheck=False)(_q512)
                    jit(np.zeros(16, dtype=np.uint64), _INIT.copy())  # compiles now
                    _jit = jit
                except Exception:  # no numba (or it cannot compile here): numpy scalars
                    _jit = _python_q512
    return _jit


def _python_q512(data, p):
    with np.errstate(over="ignore"):
        _q512(data, p)


def _words(b: bytes):
    return np.frombuffer(b, dtype="<u8").astype(np.uint64)


def _final(p, tail: bytes, nbits: int, q512):
    """EdonRFinal for whole bytes: ``tail`` (< 128 bytes) not yet processed."""
    n = len(tail)
    buf = bytearray(256)
    buf[:n] = tail
    buf[n] = 0x80
    nblk = 1 if n * 8 < 960 else 2
    struct.pack_into("<Q", buf, 128 * nblk - 8, nbits & 0xFFFFFFFFFFFFFFFF)
    q512(_words(bytes(buf[:128 * nblk])), p)
    return p[8:16].astype("<u8").tobytes()


def edonr512(msg: bytes) -> bytes:
    """EdonRHash over whole bytes: the 64-byte digest."""
    q512 = _kernel()
    p = _INIT.copy()
    full = len(msg) // 128 * 128
    if full:
        q512(_words(msg[:full]), p)
    return _final(p, msg[full:], len(msg) * 8, q512)


_SALTED: dict = {}


def zfs_edonr(data, salt: bytes) -> bytes:
    """abd_checksum_edonr_native: 64 digest bytes (the first 32 are the checksum)."""
    q512 = _kernel()
    pipe = _SALTED.get(salt)
    if pipe is None:  # abd_checksum_edonr_tmpl_init
        h = edonr512(salt)
        block = h + edonr512(h)
        pipe = _INIT.copy()
        q512(_words(block), pipe)
        if len(_SALTED) > 8:
            _SALTED.clear()
        _SALTED[salt] = pipe
    p = pipe.copy()
    data = bytes(data)
    full = len(data) // 128 * 128
    if full:
        q512(_words(data[:full]), p)
    return _final(p, data[full:], (1024 + len(data) * 8), q512)
