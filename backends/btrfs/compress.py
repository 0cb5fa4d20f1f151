"""btrfs compressed extents: zlib, LZO (btrfs's segmented framing) and zstd.

A compressed extent holds at most 128 KiB of file data (``ram_bytes``) in at
most 128 KiB on disk (``disk_num_bytes``, whole sectors).

- zlib: one zlib stream (with header); ``fs/btrfs/zlib.c``.
- zstd: one zstd frame, without a content size, window up to 128 KiB;
  ``fs/btrfs/zstd.c``.
- LZO: ``fs/btrfs/lzo.c``.  A little-endian u32 with the total compressed
  length, then one segment per sector of input: a u32 segment length and an
  LZO1X stream that expands to one sector (the last to what is left).  A
  segment header never straddles a sector boundary: when fewer than 4 bytes
  are left in the sector, the writer pads with zeros and the next header
  starts in the next sector.  LZO1X itself is decoded by ``lzallright``
  (Python >= 3.11) or ``lzokay`` (both MIT, Rust), see README.md.

``ram_bytes`` is whole sectors, so the last extent of a file usually decodes
to fewer bytes; the rest is zeros, as in the kernel (``btrfs_decompress_buf2page``
copies what the stream gives, ``zero_fill_bio`` the rest).  The kernel does not
tell a short stream from a cut one either: data checksums over the compressed
bytes catch damage before decoding.  A malformed stream is an error.
"""

from __future__ import annotations

import io
import struct
import zlib

import zstandard

from .structs import COMPRESS_LZO, COMPRESS_ZLIB, COMPRESS_ZSTD, COMPRESSION_NAMES

# LZO1X decoders, both MIT and Rust (see README.md): lzallright (Python >= 3.11) decodes
# real btrfs segments 13x faster than lzokay, which also runs on Python 3.10.
try:
    import lzallright as _lzallright
except ImportError:  # pragma: no cover - Python 3.10
    _lzallright = None
try:
    import lzokay as _lzokay
except ImportError:  # pragma: no cover
    _lzokay = None


def _lzo1x(segment: bytes, want: int) -> bytes:
    """One LZO1X stream; a stream with bytes left over is an error, as in the kernel's
    ``lzo1x_decompress_safe``."""
    if _lzallright is not None:
        return _lzallright.LZOCompressor.decompress(segment, want)
    if _lzokay is not None:
        return _lzokay.decompress(segment, want)  # zero-pads to ``want``
    raise DecompressError("no LZO decoder (install lzallright or lzokay)")


LZO_LEN = 4


class DecompressError(Exception):
    pass


def _zlib(data: bytes, ram_bytes: int) -> bytes:
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, ram_bytes)
    except zlib.error as e:
        raise DecompressError(f"zlib: {e}") from None
    if len(out) < ram_bytes and not d.eof:
        raise DecompressError(f"zlib stream ends after {len(out)} of {ram_bytes} bytes")
    return out


def _zstd(data: bytes, ram_bytes: int) -> bytes:
    """One frame, read to at most ``ram_bytes`` (a hostile frame cannot blow up memory)."""
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data),
                                                        read_across_frames=False)
    try:
        out = reader.read(ram_bytes)
    except zstandard.ZstdError as e:
        raise DecompressError(f"zstd: {e}") from None
    return out


def _lzo(data: bytes, ram_bytes: int, sectorsize: int) -> bytes:
    if len(data) < LZO_LEN:
        raise DecompressError("lzo: extent shorter than its header")
    total = struct.unpack_from("<I", data, 0)[0]
    if total > len(data) or total < LZO_LEN:
        raise DecompressError(f"lzo: total length {total} does not fit {len(data)} bytes")
    out = []
    done = 0
    pos = LZO_LEN
    while pos < total and done < ram_bytes:
        left_in_sector = sectorsize - pos % sectorsize
        if left_in_sector < LZO_LEN:
            pos += left_in_sector  # padding: a header never straddles a sector
            continue
        seg_len = struct.unpack_from("<I", data, pos)[0]
        pos += LZO_LEN
        if seg_len == 0 or pos + seg_len > total or seg_len > sectorsize + sectorsize // 16 + 67:
            raise DecompressError(f"lzo: bad segment length {seg_len} at {pos - LZO_LEN}")
        want = min(sectorsize, ram_bytes - done)
        try:
            piece = _lzo1x(data[pos:pos + seg_len], want)
        except DecompressError:
            raise
        except Exception as e:  # LZOError / LzokayError and their subclasses
            raise DecompressError(f"lzo: segment at {pos - LZO_LEN}: "
                                  f"{type(e).__name__}") from None
        if len(piece) > sectorsize:
            raise DecompressError(f"lzo: segment at {pos - LZO_LEN} expands past a sector")
        out.append(piece)
        done += len(piece)
        pos += seg_len
    return b"".join(out)


def decompress(kind: int, data: bytes, ram_bytes: int, sectorsize: int) -> bytes:
    """The ``ram_bytes`` bytes of a compressed extent (zero-filled past the stream's end)."""
    if kind == COMPRESS_ZLIB:
        out = _zlib(data, ram_bytes)
    elif kind == COMPRESS_ZSTD:
        out = _zstd(data, ram_bytes)
    elif kind == COMPRESS_LZO:
        out = _lzo(data, ram_bytes, sectorsize)
    else:
        raise DecompressError(f"unknown compression type {kind}")
    if len(out) < ram_bytes:
        out += bytes(ram_bytes - len(out))
    return out


def name(kind: int) -> str:
    return COMPRESSION_NAMES.get(kind, f"type {kind}")
