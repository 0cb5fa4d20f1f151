"""Ceph's ``denc`` / ``encoding.h`` primitives, decoded from bytes.

Everything is little-endian.  Versioned structures start with
``ENCODE_START``/``DENC_START``: ``u8 struct_v, u8 struct_compat, u32 len``
and ``len`` bytes of body; a decoder may stop early and must then skip to
the end of the body (newer writers append fields).

Variable-length integers (src/include/denc.h):

* ``denc_varint``: 7 bits a byte, low group first, high bit = more follows.
* ``denc_signed_varint``: varint of ``(|v| << 1) | sign``.
* ``denc_varint_lowz``: varint whose low 2 bits count low zero *nibbles*
  (0-3) that were shifted out.
* ``denc_signed_varint_lowz``: bit 0 sign, bits 1-2 zero nibbles.
* ``denc_lba``: a little-endian u32 whose low bits say how many low zero
  bits were dropped (``*0`` 12, ``*01`` 16, ``*011`` 20, ``*111`` none),
  28-30 bits of value, bit 31 = continuation bytes (7 bits each) follow.

References: ceph/src/include/denc.h, ceph/src/include/encoding.h
(ENCODE_START/DECODE_START), ceph/src/include/utime.h.
"""

from __future__ import annotations

import struct
import uuid as _uuid

from .errors import DencError

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_S32 = struct.Struct("<i")
_S64 = struct.Struct("<q")

#: No varint in Ceph is longer than 10 bytes (64 bits / 7).
_MAX_VARINT_BYTES = 10


class Reader:
    """A cursor over an immutable buffer; every read is bounds-checked.

    ``end`` limits the readable range (a structure's body); reads past it
    raise :class:`DencError` (or the ``error`` class given), never
    IndexError or struct.error.
    """

    __slots__ = ("buf", "pos", "end", "error")

    def __init__(self, buf, pos=0, end=None, error=DencError):
        self.buf = buf if isinstance(buf, (bytes, memoryview)) else bytes(buf)
        self.pos = pos
        self.end = len(self.buf) if end is None else min(end, len(self.buf))
        self.error = error

    # -- basic --------------------------------------------------------------
    def remaining(self) -> int:
        return self.end - self.pos

    def _need(self, n):
        if n < 0 or self.pos + n > self.end:
            raise self.error(f"truncated: need {n} bytes at offset {self.pos}, "
                             f"{max(0, self.end - self.pos)} left")

    def take(self, n) -> bytes:
        self._need(n)
        b = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return b

    def skip(self, n):
        self._need(n)
        self.pos += n

    def u8(self) -> int:
        self._need(1)
        v = self.buf[self.pos]
        self.pos += 1
        return v

    def _unpack(self, st):
        self._need(st.size)
        v = st.unpack_from(self.buf, self.pos)[0]
        self.pos += st.size
        return v

    def u16(self):
        return self._unpack(_U16)

    def u32(self):
        return self._unpack(_U32)

    def u64(self):
        return self._unpack(_U64)

    def s32(self):
        return self._unpack(_S32)

    def s64(self):
        return self._unpack(_S64)

    # -- variable length integers ----------------------------------------------
    def varint(self) -> int:
        v = shift = 0
        for _ in range(_MAX_VARINT_BYTES):
            b = self.u8()
            v |= (b & 0x7F) << shift
            if not b & 0x80:
                return v
            shift += 7
        raise self.error(f"varint longer than {_MAX_VARINT_BYTES} bytes at {self.pos}")

    def signed_varint(self) -> int:
        i = self.varint()
        return -(i >> 1) if i & 1 else i >> 1

    def varint_lowz(self) -> int:
        i = self.varint()
        return (i >> 2) << ((i & 3) * 4)

    def signed_varint_lowz(self) -> int:
        i = self.varint()
        v = (i >> 3) << (((i & 6) >> 1) * 4)
        return -v if i & 1 else v

    def lba(self) -> int:
        word = self.u32()
        low = word & 7
        if not word & 1:  # *0: 12 low zero bits
            v, shift = (word & 0x7FFFFFFE) << 11, 12 + 30
        elif low in (1, 5):  # *01: 16
            v, shift = (word & 0x7FFFFFFC) << 14, 16 + 29
        elif low == 3:  # *011: 20
            v, shift = (word & 0x7FFFFFF8) << 17, 20 + 28
        else:  # *111: no zero bits dropped
            v, shift = (word & 0x7FFFFFF8) >> 3, 28
        more = word & 0x80000000
        for _ in range(_MAX_VARINT_BYTES):
            if not more:
                return v
            b = self.u8()
            v |= (b & 0x7F) << shift
            shift += 7
            more = b & 0x80
        raise self.error(f"lba value too long at {self.pos}")

    # -- composite ---------------------------------------------------------------
    def bytes32(self) -> bytes:
        """A ``bufferlist``/``std::string``: u32 length + bytes."""
        return self.take(self.u32())

    def string(self) -> str:
        return self.bytes32().decode("utf-8", "replace")

    def uuid(self) -> _uuid.UUID:
        """A ``uuid_d``: 16 raw bytes (boost::uuids byte order = RFC 4122)."""
        return _uuid.UUID(bytes=self.take(16))

    def utime(self) -> tuple:
        """A ``utime_t``: u32 seconds, u32 nanoseconds."""
        return self.u32(), self.u32()

    def count(self, min_item_size=1) -> int:
        """A container's u32 element count, checked against the bytes left."""
        n = self.u32()
        if n * max(1, min_item_size) > self.remaining():
            raise self.error(f"count {n} at offset {self.pos - 4} exceeds the "
                             f"{self.remaining()} bytes left")
        return n

    def str_map(self) -> dict:
        """``map<string,string>`` (also ``map<string,bufferlist>`` with bytes values)."""
        out = {}
        for _ in range(self.count(8)):
            k = self.string()
            out[k] = self.string()
        return out

    def start(self, max_compat=None, what="structure"):
        """ENCODE_START/DENC_START header -> ``(struct_v, struct_compat, body_end)``.

        ``max_compat``: the newest ``struct_compat`` this decoder understands
        (DECODE_START's ``v``); a newer one is an error, as in Ceph.
        """
        v = self.u8()
        compat = self.u8()
        length = self.u32()
        body_end = self.pos + length
        if body_end > self.end:
            raise self.error(f"{what}: body of {length} bytes at offset {self.pos} runs past "
                             f"the end ({self.end - self.pos} bytes left)")
        if max_compat is not None and compat > max_compat:
            raise self.error(f"{what}: struct_compat {compat} is newer than {max_compat}")
        return v, compat, body_end

    def finish(self, body_end):
        """DECODE_FINISH: skip what a newer encoder appended."""
        if self.pos > body_end:
            raise self.error(f"decoded past the end of a structure body ({self.pos} > {body_end})")
        self.pos = body_end

    def sub(self, body_end) -> Reader:
        """A reader limited to ``[pos, body_end)``; advances this one past it."""
        r = Reader(self.buf, self.pos, body_end, self.error)
        self.pos = body_end
        return r
