"""XDR-encoded name-value lists (the vdev label config, the MOS "config" object).

References: OpenZFS module/nvpair/nvpair.c (nvs_xdr_*, nvpair_xdr_*), include/sys/nvpair.h
(data_type_t); "ZFS On-Disk Specification" section 1.3.3 (label nvlist).

Layout: a 4-byte header (encoding 1 = XDR, endian, 2 reserved), then an nvlist:
``nvl_version``, ``nvl_nvflag`` and pairs, each ``encoded size, decoded size, name,
type, nelem, value``; a pair with encoded size 0 ends the list.  Every XDR item is
big-endian and padded to 4 bytes; bytes, int8 and booleans take 4 bytes.  Byte arrays
are ``xdr_opaque`` (nelem bytes, no length word); numeric arrays are ``xdr_array`` (a
count word first); string and nvlist arrays are the elements one after another.
"""

from __future__ import annotations

import struct

from .errors import ZfsError

NV_ENCODE_NATIVE = 0
NV_ENCODE_XDR = 1

# data_type_t
BOOLEAN, BYTE, INT16, UINT16, INT32, UINT32, INT64, UINT64, STRING = range(1, 10)
(BYTE_ARRAY, INT16_ARRAY, UINT16_ARRAY, INT32_ARRAY, UINT32_ARRAY, INT64_ARRAY,
 UINT64_ARRAY, STRING_ARRAY, HRTIME, NVLIST, NVLIST_ARRAY, BOOLEAN_VALUE, INT8, UINT8,
 BOOLEAN_ARRAY, INT8_ARRAY, UINT8_ARRAY, DOUBLE) = range(10, 28)

_SCALAR4 = {BYTE: ">I", INT16: ">i", UINT16: ">I", INT32: ">i", UINT32: ">I",
            BOOLEAN_VALUE: ">I", INT8: ">i", UINT8: ">I"}
_SCALAR8 = {INT64: ">q", UINT64: ">Q", HRTIME: ">q", DOUBLE: ">d"}
_ARRAY_OF = {INT16_ARRAY: INT16, UINT16_ARRAY: UINT16, INT32_ARRAY: INT32,
             UINT32_ARRAY: UINT32, INT64_ARRAY: INT64, UINT64_ARRAY: UINT64,
             BOOLEAN_ARRAY: BOOLEAN_VALUE, INT8_ARRAY: INT8, UINT8_ARRAY: UINT8}

MAX_DEPTH = 32
MAX_PAIRS = 100_000


class NvlistError(ZfsError):
    """A packed nvlist is malformed."""


class _Reader:
    def __init__(self, data: bytes, pos: int = 0, end: int | None = None):
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end
        self.pairs = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise NvlistError(f"nvlist: truncated at byte {self.pos} (need {n})")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def u32(self) -> int:
        return struct.unpack(">I", self.take(4))[0]

    def i32(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def string(self) -> str:
        n = self.u32()
        if n > self.end - self.pos:
            raise NvlistError(f"nvlist: string of {n} bytes at byte {self.pos} runs past the end")
        b = self.take(n)
        self.take((-n) % 4)
        return b.decode("utf-8", "replace")

    def value(self, typ: int, nelem: int, depth: int):
        if typ == BOOLEAN:
            return True
        if typ in _SCALAR4:
            return struct.unpack(_SCALAR4[typ], self.take(4))[0]
        if typ in _SCALAR8:
            return struct.unpack(_SCALAR8[typ], self.take(8))[0]
        if typ == STRING:
            return self.string()
        if nelem < 0 or nelem > self.end - self.pos:
            raise NvlistError(f"nvlist: bad element count {nelem}")
        if typ == BYTE_ARRAY:  # xdr_opaque: nelem bytes, padded, no length word
            b = self.take(nelem)
            self.take((-nelem) % 4)
            return b
        if typ in _ARRAY_OF:  # xdr_array: a count word, then 4- or 8-byte elements
            count = self.u32()
            if count != nelem:
                raise NvlistError(f"nvlist: array count {count} != nelem {nelem}")
            et = _ARRAY_OF[typ]
            return [self.value(et, 1, depth) for _ in range(nelem)]
        if typ == STRING_ARRAY:
            return [self.string() for _ in range(nelem)]
        if typ == NVLIST:
            return self.nvlist(depth + 1)
        if typ == NVLIST_ARRAY:
            return [self.nvlist(depth + 1) for _ in range(nelem)]
        raise NvlistError(f"nvlist: unknown data type {typ}")

    def nvlist(self, depth: int = 0) -> dict:
        if depth > MAX_DEPTH:
            raise NvlistError("nvlist: nested too deeply")
        self.take(8)  # nvl_version, nvl_nvflag
        out = {}
        while True:
            start = self.pos
            encoded = self.i32()
            decoded = self.i32()
            if encoded == 0 and decoded == 0:
                return out
            self.pairs += 1
            if self.pairs > MAX_PAIRS:
                raise NvlistError("nvlist: too many pairs")
            if encoded < 16 or start + encoded > self.end:
                raise NvlistError(f"nvlist: bad pair size {encoded} at byte {start}")
            name = self.string()
            typ = self.i32()
            nelem = self.i32()
            try:
                out[name] = self.value(typ, nelem, depth)
            except NvlistError:
                if typ in (NVLIST, NVLIST_ARRAY):
                    raise
                out[name] = None  # an unknown/odd scalar: keep the rest of the list
            self.pos = start + encoded


def unpack_nvlist(data: bytes) -> dict:
    """Decode a packed nvlist (4-byte header + XDR nvlist) into nested dicts."""
    if len(data) < 12:
        raise NvlistError("nvlist: too short")
    encoding = data[0]
    if encoding != NV_ENCODE_XDR:
        raise NvlistError(f"nvlist: encoding {encoding} is not XDR")
    return _Reader(data, 4).nvlist()
