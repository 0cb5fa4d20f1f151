"""Block decompression: lzjb, lz4, gzip, zle, zstd.

lzjb is a byte loop: compiled with numba (kernels.py: ahead of time at set-up, else just
in time) it decodes hundreds of MB/s; pure Python, the fallback, does a few MB/s.

References: OpenZFS module/zfs/lzjb.c, lz4.c / lz4_zfs.c (4-byte big-endian compressed
length before the LZ4 block), gzip.c (zlib streams), zle.c (n = 64), zfs_zstd.c
(zfs_zstdhdr_t: big-endian c_len and version/level, then a zstd frame written with
ZSTD_f_zstd1_magicless, i.e. without the 4-byte frame magic).
"""

from __future__ import annotations

import importlib
import struct
import zlib

import numpy as np

from . import kernels
from .errors import ZfsError
from .structs import ZIO_COMPRESS

_optional: dict[str, object] = {}  # imported at the first block that needs them (None: not installed)


def optional_module(name: str):
    """The module ``name``, imported at first use (lz4, zstandard here; blake3, skein in
    checksum.py: 3-4 ms of every ZFS start-up otherwise, and few pools use them); None
    when it is not installed (such blocks read EIO)."""
    try:
        return _optional[name]
    except KeyError:
        try:
            mod = importlib.import_module(name)
        except ImportError:  # pragma: no cover - dependencies
            mod = None
        _optional[name] = mod
        return mod


def _lz4_block():
    return optional_module("lz4.block")


def _zstandard():
    return optional_module("zstandard")


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


def lzjb_jit_ready(timeout=None) -> bool:
    """Make the compiled lzjb available now (tests, benchmarks): True when it is."""
    return kernels.get(bulk=True, wait=True) is not None


def lzjb_decompress(src: bytes, d_len: int, bulk: bool = True) -> bytes:
    """lzjb.c's lzjb_decompress: compiled (kernels.py) when available, else Python.
    ``bulk``: file or zvol data (worth compiling for, see ``kernels.jit``)."""
    k = kernels.get(bulk, wait=bulk)
    if k is None:
        kernels._State.py_lzjb_bytes += d_len
        return _lzjb_python(src, d_len)
    dst = np.empty(d_len, dtype=np.uint8)
    r = k.lzjb(np.frombuffer(src, dtype=np.uint8), dst)
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
    lz4 = _lz4_block()
    if lz4 is None:
        raise DecompressError("lz4: the lz4 package is not installed")
    if len(src) < 4:
        raise DecompressError("lz4: block shorter than its header")
    (clen,) = struct.unpack(">I", src[:4])
    if clen > len(src) - 4:
        raise DecompressError(f"lz4: header says {clen} bytes, block has {len(src) - 4}")
    try:
        out = lz4.decompress(src[4:4 + clen], uncompressed_size=d_len)
    except Exception as e:
        raise DecompressError(f"lz4: {e}") from None
    if len(out) < d_len:
        out += bytes(d_len - len(out))
    return out


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def zstd_decompress(src: bytes, d_len: int) -> bytes:
    zstd = _zstandard()
    if zstd is None:
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
        dobj = zstd.ZstdDecompressor().decompressobj()
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
    data rather than metadata; see ``kernels.jit``)."""
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
