"""Random access into compressed vzdump streams (zstd, gzip, lzop) and plain files.

One sequential pass (:func:`scan`) decodes the stream once, hands the decoded bytes to a
format indexer (VMA or tar) and records restart points: zstd frame starts, gzip member
starts and lzop block starts, which are stored in the sidecar index; gzip additionally
gets in-memory ``zlib`` checkpoints (``decompressobj.copy()``) while it is read.  After
the pass, :class:`DecodedStream` serves any byte range by decoding from the nearest
restart point, caching 1 MiB pieces in the shared byte-bounded cache and keeping the
last decoder of each frame/member alive for sequential readers.

Damage: a zstd frame or gzip member that fails to decode serves its bytes up to the
error; the next frame/member (found by its magic) is decoded again ("resynchronise").
A bad lzop block keeps its place (its decoded length is in its header) and reads as
unreadable; decoding goes on with the next block.

References: zstd ``doc/zstd_compression_format.md`` (frames, block headers, skippable
frames), RFC 1952, lzop ``src/lzop.c`` / ``p_lzo.c`` (header and block layout).
"""

from __future__ import annotations

import bisect
import struct
import threading
import zlib

import zstandard

from pvfs.cache import METADATA_CACHE
from pvfs.errors import PvfsError, UnreadableError
from pvfs.source import BAD_EIO, BAD_ZERO, DATA, UNREADABLE, Source

from . import lzo
from .structs import (F_ADLER32_C, F_ADLER32_D, F_CRC32_C, F_CRC32_D, F_H_EXTRA_FIELD, F_H_FILTER,
                      GZIP_MAGIC, LZOP_MAGIC, LZOP_MAX_BLOCK, ZSTD_MAGIC, VzdumpError)

PIECE = 1 << 20  # decode/cache granularity
GZIP_CHECKPOINT_EVERY = 16 << 20
SEEK_CACHE_MIN = 32 << 20  # a frame/member decoding to more than this gets a seek cache
MAX_CHECKPOINTS = 256
ZSTD_BLOCK_MAX = 128 * 1024

# Segment kinds
RAW, ZSTD, GZIP, LZO, STORED, BAD = range(6)


def detect_codec(head: bytes) -> str:
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    if head.startswith(LZOP_MAGIC):
        return "lzop"
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    return "raw"


class Gap:
    """Decoded bytes that are lost: ``length`` of them at ``offset`` (0 when unknown)."""

    def __init__(self, offset, length, reason):
        self.offset, self.length, self.reason = offset, length, reason


class StreamIndex:
    """Where each decodable piece of a stream lies, in decoded and input coordinates."""

    def __init__(self, codec, size=0, segs=None, damage=None, shadow=None):
        self.codec = codec
        self.size = size
        self.segs = segs or []  # [out_off, out_len, in_off, in_len, kind]
        self.damage = damage or []  # [out_off, lost_len_or_0, in_off, reason]
        self.shadow = shadow  # seek cache: {"file": name, "frames": [[file_off, comp_len], ...]}

    def to_json(self):
        return {"codec": self.codec, "size": self.size, "segs": self.segs, "damage": self.damage,
                "shadow": self.shadow}

    @classmethod
    def from_json(cls, d):
        return cls(d["codec"], int(d["size"]), [list(map(int, s)) for s in d["segs"]],
                   [list(x) for x in d["damage"]], d.get("shadow"))


class _SliceIO:
    """A read-only file object over ``src[offset:offset+size]`` (for zstd.stream_reader)."""

    def __init__(self, src, offset, size):
        self.src, self.base, self.size, self.pos = src, offset, size, 0

    def read(self, n=-1):
        if n is None or n < 0:
            n = self.size - self.pos
        n = min(n, self.size - self.pos)
        if n <= 0:
            return b""
        b = self.src.read(self.base + self.pos, n)
        self.pos += len(b)
        return b

    def readinto(self, buf):
        b = self.read(len(buf))
        buf[:len(b)] = b
        return len(b)


def _find(src, magic, start, limit=None, align=1):
    """First offset >= start where ``magic`` occurs (reading 1 MiB at a time), or None."""
    end = src.size if limit is None else min(src.size, limit)
    pos = start
    while pos < end:
        buf = src.read(pos, min(PIECE + len(magic), end - pos))
        i = buf.find(magic)
        while i >= 0:
            if (pos + i) % align == 0:
                return pos + i
            i = buf.find(magic, i + 1)
        if len(buf) <= len(magic):
            break
        pos += len(buf) - len(magic) + 1
    return None


# ---------------------------------------------------------------------------------
def zstd_frame_length(src, pos):
    """Length of the zstd frame at ``pos`` from its block headers; (length, error)."""
    hdr = src.read(pos, 18)
    if len(hdr) < 6:
        return 0, "truncated frame header"
    fhd = hdr[4]
    if fhd & 0x08:
        return 0, "reserved bit set in the frame header"
    single = (fhd >> 5) & 1
    fcs = (fhd >> 6) & 3
    did = fhd & 3
    p = pos + 5 + (0 if single else 1) + (0, 1, 2, 4)[did] + ((1 if single else 0), 2, 4, 8)[fcs]
    for _ in range(1 << 30):
        bh = src.read(p, 3)
        if len(bh) < 3:
            return p - pos, "frame is truncated"
        v = int.from_bytes(bh, "little")
        last, btype, bsize = v & 1, (v >> 1) & 3, v >> 3
        if btype == 3 or bsize > ZSTD_BLOCK_MAX:
            return p - pos, f"corrupt block header at {p:#x}"
        csize = 1 if btype == 1 else bsize
        if p + 3 + csize > src.size:
            return p - pos, "frame is truncated"
        p += 3 + csize
        if last:
            break
    if (fhd >> 2) & 1:
        p += 4
    if p > src.size:
        return src.size - pos, "frame is truncated"
    return p - pos, None


def scan(src, codec, progress=None, shadow=None):
    """Decode ``src`` once: yields ``(offset, bytes)`` pieces and :class:`Gap` markers;
    the finished :class:`StreamIndex` is in ``.index`` of the returned object.  A
    :class:`SeekCacheWriter` given as ``shadow`` receives every decoded byte (zstd/gzip)."""
    return _Scan(src, codec, progress, shadow)


class _Scan:
    def __init__(self, src, codec, progress, shadow=None):
        self.src, self.codec, self.progress = src, codec, progress
        self.shadow = shadow if codec in ("zstd", "gzip") else None
        self.index = StreamIndex(codec)

    def __iter__(self):
        gen = getattr(self, "_" + self.codec)()
        if self.shadow is None:
            yield from gen
            return
        for item in gen:
            if not isinstance(item, Gap):
                self.shadow.add(item[1])
            yield item
        self.index.shadow = self.shadow.finish(self.index)

    def _note(self, in_pos):
        if self.progress is not None:
            self.progress(in_pos, self.src.size)

    def _damage(self, out, lost, in_off, reason):
        self.index.damage.append([out, lost, in_off, reason])
        return Gap(out, lost, reason)

    # -- plain file: bad sectors (ddrescue) become gaps of known length ----------------
    def _raw(self):
        src = self.src
        self.index.segs.append([0, src.size, 0, src.size, RAW])
        self.index.size = src.size
        bad = [(o, n) for o, n, s in src.block_status() if s == UNREADABLE]
        pos = 0
        for bo, bn in bad + [(src.size, 0)]:
            while pos < bo:
                n = min(PIECE, bo - pos)
                yield pos, src.read(pos, n)
                pos += n
                self._note(pos)
            if bn:
                yield self._damage(bo, bn, bo, "unreadable sectors in the input")
                pos = bo + bn

    # -- zstd: frames, decoded one after another -----------------------------------------
    def _zstd(self):
        src, idx = self.src, self.index
        pos = out = 0
        dctx = zstandard.ZstdDecompressor()
        while pos < src.size:
            magic = src.read(pos, 4)
            if len(magic) == 4 and 0x184D2A50 <= int.from_bytes(magic, "little") <= 0x184D2A5F:
                sz = src.read(pos + 4, 4)
                pos += 8 + (int.from_bytes(sz, "little") if len(sz) == 4 else src.size)
                continue
            if magic != ZSTD_MAGIC:
                if not any(src.read(pos, min(PIECE, src.size - pos))) and pos + PIECE >= src.size:
                    break  # zero padding at the end
                nxt = _find(src, ZSTD_MAGIC, pos + 1)
                yield self._damage(out, 0, pos, f"no zstd frame at input offset {pos:#x}"
                                   + (f"; resumed at {nxt:#x}" if nxt else "; nothing after it"))
                if nxt is None:
                    break
                pos = nxt
                continue
            flen, ferr = zstd_frame_length(src, pos)
            start = out
            err = None
            try:
                reader = dctx.stream_reader(_SliceIO(src, pos, max(flen, 4)), read_across_frames=False)
                while True:
                    b = reader.read(ZSTD_BLOCK_MAX)  # small reads: an error loses little
                    if not b:
                        break
                    yield out, b
                    out += len(b)
                    self._note(pos)
            except (zstandard.ZstdError, PvfsError, OSError) as e:
                err = f"zstd: {e}"
            if out > start:
                idx.segs.append([start, out - start, pos, flen, ZSTD])
            if err or ferr:
                reason = err or ferr
                nxt = _find(src, ZSTD_MAGIC, pos + max(flen, 1))
                yield self._damage(out, 0, pos, f"zstd frame at input offset {pos:#x}: {reason}; "
                                   + (f"decoding resumed at {nxt:#x}" if nxt else "the rest is lost"))
                if nxt is None:
                    break
                pos = nxt
                continue
            pos += flen
        idx.size = out

    # -- gzip: members ------------------------------------------------------------------------
    def _gzip(self):
        src, idx = self.src, self.index
        pos = out = 0
        while pos < src.size:
            if src.read(pos, 2) != GZIP_MAGIC:
                rest = src.read(pos, min(PIECE, src.size - pos))
                if not any(rest) and pos + len(rest) >= src.size:
                    break
                nxt = _find(src, GZIP_MAGIC + b"\x08", pos + 1)
                yield self._damage(out, 0, pos, f"no gzip member at input offset {pos:#x}"
                                   + (f"; resumed at {nxt:#x}" if nxt else "; nothing after it"))
                if nxt is None:
                    break
                pos = nxt
                continue
            start = out
            cur = _GzipCursor(src, pos, 0)
            err = None
            try:
                while True:
                    b = cur.read(PIECE)
                    if not b:
                        break
                    yield out, b
                    out += len(b)
                    self._note(cur.feed_pos)
            except (zlib.error, PvfsError, OSError) as e:
                err = str(e)
            mlen = (cur.end - pos) if cur.end is not None else (cur.feed_pos - pos)
            if out > start:
                idx.segs.append([start, out - start, pos, mlen, GZIP])
            if err or cur.end is None:
                reason = err or "member is truncated"
                nxt = _find(src, GZIP_MAGIC + b"\x08", pos + 1 + max(0, cur.good_in - pos))
                yield self._damage(out, 0, pos, f"gzip member at input offset {pos:#x}: {reason}; "
                                   + (f"decoding resumed at {nxt:#x}" if nxt else "the rest is lost"))
                if nxt is None:
                    break
                pos = nxt
                continue
            pos = cur.end
        idx.size = out

    # -- lzop: blocks ----------------------------------------------------------------------------
    def _lzop(self):
        src, idx = self.src, self.index
        flags, pos = lzop_header(src)
        out = 0
        for _ in range(1 << 40):
            h = src.read(pos, 8)
            if len(h) >= 4 and h[:4] == b"\0\0\0\0":
                break  # end marker
            if len(h) < 8:
                yield self._damage(out, 0, pos, f"lzop stream ends without its end marker at {pos:#x}")
                break
            dst_len, src_len = struct.unpack(">II", h)
            p = pos + 8
            if dst_len > LZOP_MAX_BLOCK or src_len > dst_len or src_len == 0:
                yield self._damage(out, 0, pos, f"corrupt lzop block header at {pos:#x}; the rest is lost")
                break
            d_sums, c_sums = [], []
            for flag, kind in ((F_ADLER32_D, "adler"), (F_CRC32_D, "crc")):
                if flags & flag:
                    d_sums.append((kind, struct.unpack(">I", src.read(p, 4).rjust(4, b"\0"))[0]))
                    p += 4
            if src_len < dst_len:
                for flag, kind in ((F_ADLER32_C, "adler"), (F_CRC32_C, "crc")):
                    if flags & flag:
                        c_sums.append((kind, struct.unpack(">I", src.read(p, 4).rjust(4, b"\0"))[0]))
                        p += 4
            if p + src_len > src.size:
                yield self._damage(out, dst_len, pos, f"lzop block at {pos:#x} is truncated")
                idx.segs.append([out, dst_len, p, src_len, BAD])
                out += dst_len
                break
            kind = STORED if src_len == dst_len else LZO
            try:
                data = decode_lzo_block(src.read(p, src_len), dst_len, kind, d_sums, c_sums)
                idx.segs.append([out, dst_len, p, src_len, kind])
                yield out, data
            except (VzdumpError, lzo.LzoError) as e:
                idx.segs.append([out, dst_len, p, src_len, BAD])
                yield self._damage(out, dst_len, pos, f"lzop block at input offset {pos:#x}: {e}")
            out += dst_len
            pos = p + src_len
            self._note(pos)
        idx.size = out


def _sum(kind, data):
    return zlib.adler32(data) if kind == "adler" else zlib.crc32(data)


def decode_lzo_block(raw, dst_len, kind, d_sums=(), c_sums=()):
    for k, v in c_sums:
        if _sum(k, raw) != v:
            raise VzdumpError(f"checksum of the compressed block mismatches ({k})")
    data = raw if kind == STORED else lzo.decompress(raw, dst_len)
    for k, v in d_sums:
        if _sum(k, data) != v:
            raise VzdumpError(f"checksum of the decompressed block mismatches ({k})")
    return data


def lzop_header(src):
    """Parse the lzop file header; returns (flags, offset of the first block)."""
    h = src.read(0, 512)
    if not h.startswith(LZOP_MAGIC):
        raise VzdumpError("no lzop magic")
    p = 9
    try:
        version = struct.unpack_from(">H", h, p)[0]
        p += 4  # version, lib_version
        if version >= 0x0940:
            p += 2  # version_needed_to_extract
        method = h[p]
        p += 1
        if version >= 0x0940:
            p += 1  # level
        flags = struct.unpack_from(">I", h, p)[0]
        p += 4
        if flags & F_H_FILTER:
            p += 4
        p += 8  # mode, mtime_low
        if version >= 0x0940:
            p += 4  # mtime_high
        p += 1 + h[p]  # name
        p += 4  # header checksum
        if flags & F_H_EXTRA_FIELD:
            extra = struct.unpack_from(">I", h, p)[0]
            p += 4 + extra + 4
    except (struct.error, IndexError):
        raise VzdumpError("lzop header is truncated") from None
    if method not in (1, 2, 3):
        raise VzdumpError(f"lzop method {method} is not LZO1X")
    return flags, p


class _GzipCursor:
    """A gzip member decoder positioned at decoded offset ``out_pos``."""

    def __init__(self, src, feed_pos, out_pos, dobj=None, tail=b""):
        self.src = src
        self.feed_pos = feed_pos  # next input byte to feed
        self.out_pos = out_pos
        self.d = dobj if dobj is not None else zlib.decompressobj(31)
        self.tail = tail  # input fed but not consumed yet
        self.end = None  # input offset where the member ended
        self.good_in = feed_pos
        self.pending = b""

    def read(self, n):
        """Up to ``n`` decoded bytes (fewer only at the member's end)."""
        out = []
        have = 0
        if self.pending:
            b, self.pending = self.pending[:n], self.pending[n:]
            out.append(b)
            have = len(b)
        while have < n and self.end is None:
            if self.tail:
                buf, self.tail = self.tail, b""
            else:
                buf = self.src.read(self.feed_pos, min(256 << 10, self.src.size - self.feed_pos))
                if not buf:
                    if have:  # serve what was decoded; the next read reports the truncation
                        break
                    raise VzdumpError("gzip member is truncated")
                self.feed_pos += len(buf)
            try:
                b = self.d.decompress(buf, n - have)
            except zlib.error:
                if have:  # serve what was decoded before the corrupt deflate data
                    self.tail = buf
                    break
                raise
            self.tail = self.d.unconsumed_tail
            self.good_in = self.feed_pos - len(self.tail)
            if self.d.eof:
                self.end = self.feed_pos - len(self.d.unused_data)
            out.append(b)
            have += len(b)
        data = b"".join(out)
        self.out_pos += len(data)
        return data

    def checkpoint(self):
        """A copy that can resume from here, or None when state is not drained."""
        if self.pending or self.end is not None:
            return None
        return (self.out_pos, self.feed_pos, self.tail, self.d.copy())


# ---------------------------------------------------------------------------------
class SeekCacheWriter:
    """Writes the decoded stream as independent 1 MiB zstd frames (level 1) to ``path``.

    A single zstd frame or gzip member cannot be entered in the middle and its decoder
    state cannot be saved, so without this a backward seek decodes from the frame start.
    Kept only when some frame/member decodes to more than ``min_segment`` bytes.
    """

    def __init__(self, path, min_segment=None):
        self.path = path
        self.tmp = path + ".tmp"
        self.f = open(self.tmp, "wb")
        self.cctx = zstandard.ZstdCompressor(level=1)
        self.buf = bytearray()
        self.frames = []
        self.pos = 0
        self.min_segment = SEEK_CACHE_MIN if min_segment is None else min_segment

    def add(self, data):
        self.buf += data
        while len(self.buf) >= PIECE:
            self._flush(bytes(self.buf[:PIECE]))
            del self.buf[:PIECE]

    def _flush(self, piece):
        z = self.cctx.compress(piece)
        self.f.write(z)
        self.frames.append([self.pos, len(z)])
        self.pos += len(z)

    def finish(self, index: StreamIndex):
        import os

        if self.buf:
            self._flush(bytes(self.buf))
            self.buf = bytearray()
        self.f.close()
        big = any(s[1] > self.min_segment and s[4] in (ZSTD, GZIP) for s in index.segs)
        if not big or len(self.frames) * PIECE < index.size:
            os.unlink(self.tmp)
            return None
        os.replace(self.tmp, self.path)
        return {"file": os.path.basename(self.path), "frames": self.frames}

    def abort(self):
        import os

        try:
            self.f.close()
            os.unlink(self.tmp)
        except OSError:
            pass


class DecodedStream(Source):
    """The decoded bytes of a scanned stream, readable at any offset."""

    def __init__(self, src, index: StreamIndex, bad=BAD_EIO, label="stream", shadow_dir=None):
        super().__init__()
        self.src = src
        self.index = index
        self.shadow = None  # (FileSource of the seek cache, frames)
        if index.shadow and shadow_dir:
            import os

            from pvfs.source import FileSource

            try:
                f = FileSource(os.path.join(shadow_dir, index.shadow["file"]))
                frames = index.shadow["frames"]
                if frames and frames[-1][0] + frames[-1][1] == f.size:
                    self.shadow = (f, frames)
            except PvfsError:
                self.shadow = None
        self.size = index.size
        self.bad = bad
        self.label = label
        self.segs = index.segs
        self._starts = [s[0] for s in self.segs]
        self._lock = threading.Lock()
        self._cursors: dict = {}  # segment number -> live cursor (zstd reader / gzip cursor)
        self._gz_points: dict = {}  # segment number -> sorted checkpoints

    def _seg(self, offset):
        i = bisect.bisect_right(self._starts, offset) - 1
        if i < 0 or offset >= self.segs[i][0] + self.segs[i][1]:
            raise UnreadableError(f"{self.label}: offset {offset:#x} lies in no decoded piece",
                                  [(offset, 1)])
        return i

    def _read(self, offset, length):
        parts = []
        end = offset + length
        pos = offset
        while pos < end:
            i = self._seg(pos)
            s_off, s_len, in_off, in_len, kind = self.segs[i]
            n = min(end, s_off + s_len) - pos
            rel = pos - s_off
            if kind == RAW:
                parts.append(self.src.read(in_off + rel, n))
            elif kind == BAD:
                if self.bad == BAD_ZERO:
                    parts.append(bytes(n))
                else:
                    raise UnreadableError(f"{self.label}: bytes {pos:#x}+{n:#x} lie in a corrupt block",
                                          [(pos, n)])
            elif kind in (LZO, STORED):
                key = ("vzdump-lzo", self.uid, i)
                blk = METADATA_CACHE.get(key)
                if blk is None:
                    try:
                        blk = decode_lzo_block(self.src.read(in_off, in_len), s_len, kind)
                    except (VzdumpError, lzo.LzoError) as e:
                        raise UnreadableError(f"{self.label}: {e}", [(s_off, s_len)]) from None
                    METADATA_CACHE.put(key, blk)
                parts.append(blk[rel:rel + n])
            elif self.shadow is not None:
                parts.append(self._from_shadow(pos, n))
            else:
                parts.append(self._framed(i, rel, n))
            pos += n
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _from_shadow(self, offset, n):
        f, frames = self.shadow
        out = []
        for p in range(offset // PIECE, (offset + n - 1) // PIECE + 1):
            key = ("vzdump-shadow", self.uid, p)
            piece = METADATA_CACHE.get(key)
            if piece is None:
                foff, flen = frames[p]
                try:
                    piece = zstandard.ZstdDecompressor().decompress(f.read(foff, flen), max_output_size=PIECE)
                except zstandard.ZstdError as e:
                    raise UnreadableError(f"{self.label}: seek cache is corrupt: {e}", [(p * PIECE, PIECE)]) from None
                METADATA_CACHE.put(key, piece)
            lo = max(offset, p * PIECE) - p * PIECE
            hi = min(offset + n, (p + 1) * PIECE) - p * PIECE
            out.append(piece[lo:hi])
        return b"".join(out)

    def _framed(self, i, rel, n):
        """Bytes ``rel..rel+n`` of zstd frame / gzip member ``i`` via 1 MiB cached pieces."""
        out = []
        first, last = rel // PIECE, (rel + n - 1) // PIECE
        for p in range(first, last + 1):
            key = ("vzdump-piece", self.uid, i, p)
            piece = METADATA_CACHE.get(key)
            if piece is None:
                piece = self._decode_piece(i, p)
            lo = max(rel, p * PIECE) - p * PIECE
            hi = min(rel + n, (p + 1) * PIECE) - p * PIECE
            out.append(piece[lo:hi])
        return b"".join(out)

    def _decode_piece(self, i, p):
        s_off, s_len, in_off, in_len, kind = self.segs[i]
        target = p * PIECE
        with self._lock:
            cur = self._cursors.pop(i, None)
        if cur is None or cur.out_pos > target:
            cur = self._new_cursor(i, target)
        try:
            while True:
                at = cur.out_pos
                want = min(PIECE - at % PIECE, s_len - at)
                if want <= 0:
                    raise VzdumpError("decoded piece beyond the end of its frame")
                b = cur.read(want)
                if len(b) != want:
                    raise VzdumpError(f"frame decodes to fewer bytes than at scan time ({at + len(b)})")
                if at % PIECE == 0:
                    METADATA_CACHE.put(("vzdump-piece", self.uid, i, at // PIECE), b)
                if kind == GZIP:
                    self._maybe_checkpoint(i, cur)
                if at // PIECE == p:
                    with self._lock:
                        self._cursors[i] = cur
                    return b
        except (zstandard.ZstdError, zlib.error, VzdumpError, OSError) as e:
            raise UnreadableError(f"{self.label}: decoding failed: {e}", [(s_off + target, PIECE)]) from None

    def _new_cursor(self, i, target):
        s_off, s_len, in_off, in_len, kind = self.segs[i]
        if kind == ZSTD:
            reader = zstandard.ZstdDecompressor().stream_reader(_SliceIO(self.src, in_off, in_len),
                                                               read_across_frames=False)
            return _ZstdCursor(reader)
        pts = self._gz_points.get(i, [])
        j = bisect.bisect_right([c[0] for c in pts], target) - 1
        if j >= 0:
            out_pos, feed, tail, d = pts[j]
            return _GzipCursor(self.src, feed, out_pos, d.copy(), tail)
        return _GzipCursor(self.src, in_off, 0)

    def _maybe_checkpoint(self, i, cur):
        pts = self._gz_points.setdefault(i, [])
        if cur.out_pos % GZIP_CHECKPOINT_EVERY or len(pts) >= MAX_CHECKPOINTS:
            return
        if pts and pts[-1][0] >= cur.out_pos:
            return
        cp = cur.checkpoint()
        if cp is not None:
            with self._lock:
                pts.append(cp)
                pts.sort(key=lambda c: c[0])

    def _block_status(self, offset, length):
        out = []
        end = offset + length
        pos = offset
        while pos < end:
            i = self._seg(pos)
            s_off, s_len, *_rest, kind = self.segs[i]
            n = min(end, s_off + s_len) - pos
            out.append((pos, n, UNREADABLE if kind == BAD else DATA))
            pos += n
        return out


class _ZstdCursor:
    def __init__(self, reader):
        self.reader = reader
        self.out_pos = 0

    def read(self, n):
        chunks = []
        have = 0
        while have < n:
            b = self.reader.read(n - have)
            if not b:
                break
            chunks.append(b)
            have += len(b)
        data = b"".join(chunks)
        self.out_pos += len(data)
        return data


class SequentialReader:
    """Reads the pieces of a :func:`scan` in order; a :class:`Gap` raises :class:`GapError`."""

    def __init__(self, pieces):
        self._it = iter(pieces)
        self.pos = 0  # decoded offset of the next byte
        self._buf = b""
        self._buf_off = 0
        self.eof = False

    def _fill(self):
        if self.eof:
            return False
        for item in self._it:
            if isinstance(item, Gap):
                self._buf = b""
                self.pos = item.offset + item.length
                self._buf_off = 0
                raise GapError(item)
            off, data = item
            self._buf = data
            self._buf_off = 0
            self.pos = off
            return True
        self.eof = True
        return False

    def read(self, n):
        out = []
        have = 0
        while have < n:
            if self._buf_off >= len(self._buf):
                if not self._fill():
                    break
                continue
            take = min(n - have, len(self._buf) - self._buf_off)
            out.append(self._buf[self._buf_off:self._buf_off + take])
            self._buf_off += take
            self.pos += take
            have += take
        return b"".join(out)

    def unread(self, data):
        """Put ``data`` (the bytes just read) back in front of the stream."""
        if data:
            self._buf = bytes(data) + self._buf[self._buf_off:]
            self._buf_off = 0
            self.pos -= len(data)
            self.eof = False if self._buf else self.eof

    def skip(self, n):
        while n > 0:
            if self._buf_off >= len(self._buf):
                if not self._fill():
                    return
                continue
            take = min(n, len(self._buf) - self._buf_off)
            self._buf_off += take
            self.pos += take
            n -= take

    def drain(self):
        """Run the scan to its end (so its index is complete)."""
        while True:
            try:
                self._buf_off = len(self._buf)
                if not self._fill():
                    return
            except GapError:
                continue


class GapError(PvfsError):
    def __init__(self, gap: Gap):
        super().__init__(gap.reason)
        self.gap = gap
