"""RocksDB's integer and slice encodings (util/coding.h).

* ``varint32``/``varint64``: LEB128, 7 bits a byte, low group first; at most
  5 / 10 bytes.
* ``varsignedint64``: zig-zag then varint64 (delta-encoded index handles).
* length-prefixed slice: ``varint32 length`` + bytes.

All functions take ``(buf, pos)`` and return ``(value, new_pos)``; they raise
:class:`RocksDBError` instead of reading past ``end``.
"""

from __future__ import annotations

from ..errors import RocksDBError


def varint(buf, pos: int, end: int, max_bytes=10):
    """Decode a varint at ``buf[pos:end]`` -> ``(value, new_pos)``."""
    result = shift = 0
    stop = min(end, pos + max_bytes)
    while pos < stop:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
    raise RocksDBError(f"bad or truncated varint at offset {pos}")


def varint32(buf, pos, end):
    return varint(buf, pos, end, 5)


def varsigned64(buf, pos, end):
    v, pos = varint(buf, pos, end, 10)
    return (v >> 1) ^ -(v & 1), pos


def slice_(buf, pos, end):
    """A length-prefixed slice -> ``(bytes, new_pos)``."""
    n, pos = varint(buf, pos, end, 5)
    if pos + n > end:
        raise RocksDBError(f"slice of {n} bytes at offset {pos} runs past the end ({end})")
    return bytes(buf[pos:pos + n]), pos + n


def encode_varint(v: int) -> bytes:
    """For tests and synthetic data."""
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)
