"""LZO1X decompression in pure Python (lzop's default method, LZO1X-1/999).

References: the LZO1X bit-stream as decoded by Linux ``lib/lzo/lzo1x_decompress_safe.c``
and ``lzo/src/lzo1x_d.ch`` (Markus Oberhumer): literal runs, M1..M4 matches, the
two-bit trailing-literal state and the end marker (M4 with distance 0).  Every read is
bounds-checked; malformed input raises :class:`LzoError`.
"""

from __future__ import annotations

from pvfs.errors import FormatError


class LzoError(FormatError):
    """Corrupt LZO1X data."""


def _ext_len(src, ip, base, n):
    """Extended length: zero bytes add 255 each, then a final non-zero byte."""
    t = 0
    while True:
        if ip >= n:
            raise LzoError("input overrun in a length")
        b = src[ip]
        ip += 1
        if b:
            return base + t + b, ip
        t += 255
        if t > (1 << 26):
            raise LzoError("length run too long")


def decompress(src: bytes, dst_len: int) -> bytes:
    """Decode one LZO1X block that must produce exactly ``dst_len`` bytes."""
    out = bytearray()
    ip = 0
    n = len(src)
    state = 0
    if n == 0:
        raise LzoError("empty block")

    def copy_match(dist, length):
        start = len(out) - dist
        if start < 0:
            raise LzoError("match distance before the start of the block")
        if len(out) + length > dst_len:
            raise LzoError("output overrun")
        if dist >= length:
            out.extend(out[start:start + length])
        else:  # overlapping copy repeats the pattern
            pat = out[start:]
            reps, rest = divmod(length, dist)
            out.extend(pat * reps + pat[:rest])

    def literals(ip, t):
        if ip + t > n:
            raise LzoError("input overrun in literals")
        if len(out) + t > dst_len:
            raise LzoError("output overrun")
        out.extend(src[ip:ip + t])
        return ip + t

    first = src[0]
    if first > 17:
        ip = 1
        t = first - 17
        ip = literals(ip, t)
        state = t if t < 4 else 4
    while True:
        if ip >= n:
            raise LzoError("input ends without the end marker")
        t = src[ip]
        ip += 1
        if t < 16:
            if state == 0:
                if t == 0:
                    t, ip = _ext_len(src, ip, 15, n)
                ip = literals(ip, t + 3)
                state = 4
                continue
            if ip >= n:
                raise LzoError("input overrun")
            if state != 4:
                dist = 1 + (t >> 2) + (src[ip] << 2)
                length = 2
            else:
                dist = 1 + 0x800 + (t >> 2) + (src[ip] << 2)
                length = 3
            ip += 1
            nxt = t & 3
        elif t >= 64:
            if ip >= n:
                raise LzoError("input overrun")
            dist = 1 + ((t >> 2) & 7) + (src[ip] << 3)
            ip += 1
            length = (t >> 5) + 1
            nxt = t & 3
        elif t >= 32:
            length = t & 31
            if length == 0:
                length, ip = _ext_len(src, ip, 31, n)
            length += 2
            if ip + 2 > n:
                raise LzoError("input overrun")
            v = src[ip] | (src[ip + 1] << 8)
            ip += 2
            dist = 1 + (v >> 2)
            nxt = v & 3
        else:
            high = (t & 8) << 11
            length = t & 7
            if length == 0:
                length, ip = _ext_len(src, ip, 7, n)
            length += 2
            if ip + 2 > n:
                raise LzoError("input overrun")
            v = src[ip] | (src[ip + 1] << 8)
            ip += 2
            dist = high + (v >> 2)
            nxt = v & 3
            if dist == 0:  # end of stream marker
                if len(out) != dst_len:
                    raise LzoError(f"block decodes to {len(out)} bytes, header says {dst_len}")
                if ip != n:
                    raise LzoError("data after the end marker")
                return bytes(out)
            dist += 0x4000
        copy_match(dist, length)
        state = nxt
        if nxt:
            ip = literals(ip, nxt)
