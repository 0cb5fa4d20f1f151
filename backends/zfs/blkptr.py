"""Block pointers (blkptr_t) and their DVAs.

References: OpenZFS include/sys/spa.h (blkptr_t layout, BP_GET_* / DVA_GET_* bit
fields, BPE_* for embedded block pointers, BP_IS_HOLE, BP_IS_GANG),
"ZFS On-Disk Specification" section 2.3.

A blkptr is 16 64-bit words: dva[3] (2 words each), blk_prop, blk_pad[2],
blk_phys_birth, blk_birth, blk_fill, blk_cksum[4].  Block-pointer arrays are parsed
with ``struct`` (never construct Array).
"""

from __future__ import annotations

import struct

from .errors import ZfsError
from .structs import BLKPTR_SIZE, SPA_MINBLOCKSHIFT

_LE16 = struct.Struct("<16Q")
_BE16 = struct.Struct(">16Q")

BP_EMBEDDED_TYPE_DATA = 0


class BlkPtr:
    __slots__ = ("raw", "words", "little_container", "dvas", "lsize", "psize", "comp",
                 "embedded", "cksum_type", "etype", "type", "level", "encrypted", "dedup",
                 "little", "birth", "phys_birth", "fill", "cksum", "hole")

    def __init__(self, raw: bytes, little: bool):
        if len(raw) != BLKPTR_SIZE:
            raise ZfsError(f"block pointer of {len(raw)} bytes")
        self.raw = raw
        w = (_LE16 if little else _BE16).unpack(raw)
        self.words = w
        self.little_container = little
        prop = w[6]
        self.embedded = bool((prop >> 39) & 1)
        self.comp = (prop >> 32) & 0x7F
        self.type = (prop >> 48) & 0xFF
        self.level = (prop >> 56) & 0x1F
        self.encrypted = bool((prop >> 61) & 1)
        self.dedup = bool((prop >> 62) & 1)
        self.little = bool((prop >> 63) & 1)  # BP_GET_BYTEORDER: 1 = little endian data
        self.birth = w[10]
        self.phys_birth = w[9]
        self.fill = w[11]
        self.cksum = w[12:16]
        if self.embedded:
            self.etype = (prop >> 40) & 0xFF
            self.cksum_type = None
            self.lsize = (prop & 0x1FFFFFF) + 1
            self.psize = ((prop >> 25) & 0x7F) + 1
            self.dvas = ()
            self.hole = False
        else:
            self.etype = None
            self.cksum_type = (prop >> 40) & 0xFF
            self.lsize = ((prop & 0xFFFF) + 1) << SPA_MINBLOCKSHIFT
            self.psize = (((prop >> 16) & 0xFFFF) + 1) << SPA_MINBLOCKSHIFT
            ndva = 2 if self.encrypted else 3  # dva[2] holds the salt and IV when encrypted
            dvas = []
            for i in range(ndva):
                w0, w1 = w[2 * i], w[2 * i + 1]
                asize = (w0 & 0xFFFFFF) << SPA_MINBLOCKSHIFT
                if asize == 0 and w1 == 0 and w0 == 0:
                    continue
                dvas.append(Dva(vdev=w0 >> 32, asize=asize,
                                offset=(w1 & ((1 << 63) - 1)) << SPA_MINBLOCKSHIFT,
                                gang=bool(w1 >> 63)))
            self.dvas = tuple(d for d in dvas if d.asize)
            # BP_IS_HOLE: DVA 0 is all zeros (the birth may be set: hole_birth).
            self.hole = w[0] == 0 and w[1] == 0 and not self.embedded

    def embedded_payload(self) -> bytes:
        """BPE payload: every word except blk_prop (6) and blk_birth (10), in byte order."""
        # decode_embedded_bp_compressed: byte i of the payload is bits (i % 8) * 8 of its
        # word, whatever the host byte order.
        w = self.words
        payload = struct.pack("<14Q", *(w[0:6] + w[7:10] + w[11:16]))
        return payload[:self.psize]

    def __repr__(self):
        if self.embedded:
            return f"<BlkPtr embedded etype={self.etype} lsize={self.lsize} psize={self.psize}>"
        if self.hole:
            return f"<BlkPtr hole birth={self.birth}>"
        return (f"<BlkPtr L{self.level} type={self.type} {self.lsize:#x}L/{self.psize:#x}P "
                f"comp={self.comp} cksum={self.cksum_type} birth={self.birth} "
                f"dvas={list(self.dvas)}>")


class Dva:
    __slots__ = ("vdev", "asize", "offset", "gang")

    def __init__(self, vdev, asize, offset, gang):
        self.vdev = vdev
        self.asize = asize
        self.offset = offset
        self.gang = gang

    def __repr__(self):
        return f"{self.vdev}:{self.offset:#x}:{self.asize:#x}{'G' if self.gang else ''}"


def is_zero(raw: bytes) -> bool:
    return not any(raw)


def parse_array(buf: bytes, little: bool, count: int | None = None):
    """Block pointers of an indirect block or a dnode's dn_blkptr[]."""
    n = len(buf) // BLKPTR_SIZE if count is None else count
    return [BlkPtr(buf[i * BLKPTR_SIZE:(i + 1) * BLKPTR_SIZE], little) for i in range(n)]
