"""Block decompression: lzjb, lz4, gzip, zle, zstd.

lzjb is a byte loop: with the optional ``numba`` package it is compiled (hundreds of
MB/s) once enough lzjb data is met (see ``_lzjb_jit``), without it pure Python does a
few MB/s.

References: OpenZFS module/zfs/lzjb.c, lz4.c / lz4_zfs.c (4-byte big-endian compressed
length before the LZ4 block), gzip.c (zlib streams), zle.c (n = 64), zfs_zstd.c
(zfs_zstdhdr_t: big-endian c_len and version/level, then a zstd frame written with
ZSTD_f_zstd1_magicless, i.e. without the 4-byte frame magic).
"""

from __future__ import annotations

import os
import struct
import threading
import zlib

import numpy as np

from .errors import ZfsError
from .structs import ZIO_COMPRESS

try:
    import lz4.block as _lz4
except ImportError:  # pragma: no cover
    _lz4 = None
try:
    import zstandard as _zstd
except ImportError:  # pragma: no cover
    _zstd = None


class DecompressError(ZfsError):
    pass


def _lzjb_python(src: bytes, d_len: int) -> bytes:
    """lzjb.c: a copy map byte before every 8 items; a match is 6 bits length - 3 and
    10 bits offset.  Pure Python (a few MB/s); literal-only groups are copied at once."""
    dst = bytearray(d_len)
    d = s = 0
    slen = len(src)
    try:
        while d < d_len:
            copymap = src[s]
            s += 1
            if copymap == 0 and d + 8 <= d_len and s + 8 <= slen:
                dst[d:d + 8] = src[s:s + 8]
                d += 8
                s += 8
                continue
            for bit in (1, 2, 4, 8, 16, 32, 64, 128):
                if d >= d_len:
                    break
                if copymap & bit:
                    b0 = src[s]
                    off = ((b0 << 8) | src[s + 1]) & 0x3FF
                    s += 2
                    mlen = (b0 >> 2) + 3
                    cpy = d - off
                    if cpy < 0 or off == 0:
                        raise DecompressError("lzjb: match before the start of the block")
                    if mlen > d_len - d:
                        mlen = d_len - d
                    if off >= mlen:
                        dst[d:d + mlen] = dst[cpy:cpy + mlen]
                    else:
                        pat = dst[cpy:d]
                        dst[d:d + mlen] = (pat * (mlen // off + 1))[:mlen]
                    d += mlen
                else:
                    dst[d] = src[s]
                    d += 1
                    s += 1
    except IndexError:
        raise DecompressError("lzjb: input ends early") from None
    return bytes(dst)


def _lzjb_kernel(src, dst):  # pragma: no cover - compiled by numba when it is installed
    """The same loop over numpy arrays, for numba: returns the bytes written, < 0 on error."""
    d_len = dst.shape[0]
    slen = src.shape[0]
    s = 0
    d = 0
    while d < d_len:
        if s >= slen:
            return -1
        copymap = np.int64(src[s])
        s += 1
        for bit in range(8):
            if d >= d_len:
                break
            if (copymap >> bit) & 1:
                if s + 1 >= slen:
                    return -1
                b0 = np.int64(src[s])
                b1 = np.int64(src[s + 1])
                s += 2
                mlen = (b0 >> 2) + 3
                off = ((b0 << 8) | b1) & 0x3FF
                cpy = d - off
                if cpy < 0 or off == 0:
                    return -2
                if mlen > d_len - d:
                    mlen = d_len - d
                for k in range(mlen):
                    dst[d + k] = dst[cpy + k]
                d += mlen
            else:
                if s >= slen:
                    return -1
                dst[d] = src[s]
                d += 1
                s += 1
    return d


_LZJB_JIT = None  # None: not tried; False: unavailable; else the compiled function
_LZJB_LOCK = threading.Lock()
_LZJB_PY_BYTES = 0  # lzjb bytes decoded by the Python loop so far
#: Compile once this much lzjb metadata went through Python (compiling costs ~1-2 s,
#: Python decodes metadata at ~8 MB/s: discovery of a 10,000-file pool stays below).
LZJB_COMPILE_AFTER = 16 * 1024 * 1024


def _compile_lzjb():
    global _LZJB_JIT
    try:
        import numba

        jit = numba.njit(cache=True, nogil=True, boundscheck=False)(_lzjb_kernel)
        dst = np.empty(16, dtype=np.uint8)
        jit(np.frombuffer(b"\x00" + b"x" * 8 + b"\x00" + b"y" * 8, dtype=np.uint8), dst)
        _LZJB_JIT = jit
    except Exception:
        _LZJB_JIT = False


def _lzjb_jit(bulk=True):
    """numba-compiled lzjb (optional, ~50x faster than Python).

    Importing numba and loading the compiled code takes a second or two, so it is done
    only when it pays: at the first block of file or zvol data (``bulk``) or after
    ``LZJB_COMPILE_AFTER`` bytes of metadata went through Python.  It is done in the
    calling thread (other threads use Python meanwhile), not in a background thread of
    the discovering process: ``pvfs mount`` forks its daemon after discovery, and a
    thread cut off by the fork in the middle of ``import numba`` would leave the child a
    half-imported module.  The forked daemon itself compiles in the background at once
    (``_after_fork_in_child``)."""
    if _LZJB_JIT is None and (bulk or _LZJB_PY_BYTES >= LZJB_COMPILE_AFTER):
        if os.environ.get("PVFS_NO_NUMBA"):
            return False
        if _LZJB_LOCK.acquire(blocking=False):
            try:
                if _LZJB_JIT is None:
                    _compile_lzjb()
            finally:
                _LZJB_LOCK.release()
    return _LZJB_JIT


def _compile_locked():
    with _LZJB_LOCK:
        if _LZJB_JIT is None:
            _compile_lzjb()


def _after_fork_in_child():
    """``pvfs mount`` forks its daemon after discovery.  Nothing forks after that, so the
    daemon may compile in a background thread: it starts at once when discovery met lzjb
    (the files are probably lzjb too), and is ready by the first reads."""
    global _LZJB_LOCK
    _LZJB_LOCK = threading.Lock()
    if _LZJB_JIT is None and _LZJB_PY_BYTES and not os.environ.get("PVFS_NO_NUMBA"):
        threading.Thread(target=_compile_locked, name="zfs-lzjb-jit", daemon=True).start()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def lzjb_jit_ready(timeout=None) -> bool:
    """Compile now if numba is installed (tests, benchmarks)."""
    return bool(_lzjb_jit(bulk=True))


def lzjb_decompress(src: bytes, d_len: int, bulk: bool = True) -> bytes:
    global _LZJB_PY_BYTES
    jit = _lzjb_jit(bulk)
    if not jit:
        _LZJB_PY_BYTES += d_len
        return _lzjb_python(src, d_len)
    dst = np.empty(d_len, dtype=np.uint8)
    r = jit(np.frombuffer(src, dtype=np.uint8), dst)
    if r == -2:
        raise DecompressError("lzjb: match before the start of the block")
    if r < 0:
        raise DecompressError("lzjb: input ends early")
    return dst.tobytes()


def zle_decompress(src: bytes, d_len: int, n: int = 64) -> bytes:
    dst = bytearray()
    s, slen = 0, len(src)
    while s < slen and len(dst) < d_len:
        ln = 1 + src[s]
        s += 1
        if ln <= n:
            if s + ln > slen or len(dst) + ln > d_len:
                raise DecompressError("zle: literal run past the end")
            dst += src[s:s + ln]
            s += ln
        else:
            ln -= n
            if len(dst) + ln > d_len:
                raise DecompressError("zle: zero run past the end")
            dst += bytes(ln)
    if len(dst) < d_len:
        dst += bytes(d_len - len(dst))
    return bytes(dst)


def lz4_decompress(src: bytes, d_len: int) -> bytes:
    if _lz4 is None:
        raise DecompressError("lz4: the lz4 package is not installed")
    if len(src) < 4:
        raise DecompressError("lz4: block shorter than its header")
    (clen,) = struct.unpack(">I", src[:4])
    if clen > len(src) - 4:
        raise DecompressError(f"lz4: header says {clen} bytes, block has {len(src) - 4}")
    try:
        out = _lz4.decompress(src[4:4 + clen], uncompressed_size=d_len)
    except Exception as e:
        raise DecompressError(f"lz4: {e}") from None
    if len(out) < d_len:
        out += bytes(d_len - len(out))
    return out


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def zstd_decompress(src: bytes, d_len: int) -> bytes:
    if _zstd is None:
        raise DecompressError("zstd: the zstandard package is not installed")
    if len(src) < 8:
        raise DecompressError("zstd: block shorter than its header")
    (clen,) = struct.unpack(">I", src[:4])
    if clen > len(src) - 8:
        raise DecompressError(f"zstd: header says {clen} bytes, block has {len(src) - 8}")
    frame = src[8:8 + clen]
    if frame[:4] != _ZSTD_MAGIC:  # OpenZFS writes ZSTD_f_zstd1_magicless frames
        frame = _ZSTD_MAGIC + frame
    try:
        dobj = _zstd.ZstdDecompressor().decompressobj()
        out = dobj.decompress(frame)
    except Exception as e:
        raise DecompressError(f"zstd: {e}") from None
    if len(out) > d_len:
        raise DecompressError(f"zstd: {len(out)} bytes, more than the block's {d_len}")
    if len(out) < d_len:
        out += bytes(d_len - len(out))
    return out[:d_len]


def gzip_decompress(src: bytes, d_len: int) -> bytes:
    try:
        d = zlib.decompressobj()
        out = d.decompress(src, d_len)
    except zlib.error as e:
        raise DecompressError(f"gzip: {e}") from None
    if len(out) < d_len:
        out += bytes(d_len - len(out))
    return out


def decompress(comp: int, data: bytes, lsize: int, bulk: bool = True) -> bytes:
    """Decompress one block's physical bytes to its logical size (``bulk``: file or zvol
    data rather than metadata; see ``_lzjb_jit``)."""
    name = ZIO_COMPRESS.get(comp)
    if name in ("off", "inherit", "on", None) and comp in (0, 2):
        return data[:lsize] if len(data) >= lsize else data + bytes(lsize - len(data))
    if name == "empty":
        return bytes(lsize)
    if name == "lzjb":
        return lzjb_decompress(data, lsize, bulk)
    if name == "lz4":
        return lz4_decompress(data, lsize)
    if name == "zle":
        return zle_decompress(data, lsize)
    if name == "zstd":
        return zstd_decompress(data, lsize)
    if name and name.startswith("gzip"):
        return gzip_decompress(data, lsize)
    raise DecompressError(f"unsupported compression {name or comp}")
