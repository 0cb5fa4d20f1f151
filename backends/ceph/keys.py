"""BlueStore RocksDB key encodings: onode keys, extent-shard keys, omap keys.

References:
- ceph/src/os/bluestore/BlueStore.cc: ``get_object_key``, ``get_key_object``,
  ``append_escaped``/``decode_escaped``, ``_key_encode_shard``,
  ``_key_encode_u32``/``_key_encode_u64`` (big-endian so keys sort
  numerically), ``ONODE_KEY_SUFFIX`` ``'o'``, ``EXTENT_SHARD_KEY_SUFFIX``
  ``'x'``, ``generate_extent_shard_key_and_apply``,
  ``Onode::calc_omap_prefix``/``calc_omap_key``/``calc_omap_tail``.
- ceph/src/common/hobject.h: ``hobject_t::get_bitwise_key_u32`` (the hash
  with its 32 bits reversed), ``CEPH_NOSNAP`` = -2, ``CEPH_SNAPDIR`` = -1.

Onode key layout (no shard = ``0x7f``)::

    shard u8 (+0x80) | pool u64 BE (+2^63) | reversed hash u32 BE |
    escaped nspace '!' | escaped name '!' '=' (or key '!' '<'|'>' name '!') |
    snap u64 BE | generation u64 BE | 'o'

Escaping: bytes ``<= '#'`` (signed char, so also >= 0x80) become ``#xx``,
bytes ``>= '~'`` become ``~xx``; ``!`` ends the string.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import CephError


class ObjectKeyError(CephError):
    """A BlueStore onode / extent-shard key does not decode."""

CEPH_NOSNAP = 0xFFFFFFFFFFFFFFFE
CEPH_SNAPDIR = 0xFFFFFFFFFFFFFFFF
NO_GEN = 0xFFFFFFFFFFFFFFFF
NO_SHARD = -1

ONODE_KEY_SUFFIX = ord("o")
EXTENT_SHARD_KEY_SUFFIX = ord("x")

# Key prefixes (BlueStore.cc PREFIX_*); the sharded column families of
# Pacific carry no prefix byte, the KV layer (kv.py) maps them.
PREFIX_SUPER = "S"
PREFIX_STAT = "T"
PREFIX_COLL = "C"
PREFIX_OBJ = "O"
PREFIX_OMAP = "M"
PREFIX_PGMETA_OMAP = "P"
PREFIX_PERPOOL_OMAP = "m"
PREFIX_PERPG_OMAP = "p"
PREFIX_DEFERRED = "L"
PREFIX_ALLOC = "B"
PREFIX_SHARED_BLOB = "X"

_BE32 = struct.Struct(">I")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_BE64 = struct.Struct(">Q")


_REV8 = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def reverse_bits32(v: int) -> int:
    """``hobject_t::_reverse_bits``: the hash as BlueStore sorts it."""
    r = _REV8
    return (r[v & 0xFF] << 24) | (r[(v >> 8) & 0xFF] << 16) | (r[(v >> 16) & 0xFF] << 8) \
        | r[(v >> 24) & 0xFF]


def escape(s: bytes) -> bytes:
    """``append_escaped`` including the terminating ``!``."""
    out = bytearray()
    for c in s:
        if c <= 0x23 or c >= 0x80:  # '#' and below; a signed char >= 0x80 is negative
            out += b"#%02x" % c
        elif c >= 0x7E:  # '~'
            out += b"~%02x" % c
        else:
            out.append(c)
    out.append(0x21)
    return bytes(out)


def unescape(key: bytes, pos: int) -> tuple[bytes, int]:
    """``decode_escaped``: the string at ``pos`` and the position after its ``!``."""
    end = key.find(b"!", pos)  # '!' itself is always escaped, so the first one ends it
    if end >= 0:
        seg = key[pos:end]
        if b"#" not in seg and b"~" not in seg:
            return bytes(seg), end + 1
    out = bytearray()
    n = len(key)
    while pos < n:
        c = key[pos]
        if c == 0x21:
            return bytes(out), pos + 1
        if c in (0x23, 0x7E):  # '#' or '~' + two hex digits
            h = bytes(key[pos + 1:pos + 3])
            if len(h) != 2 or not all(ch in _HEX for ch in h):
                raise ObjectKeyError(f"onode key: bad escape {h!r} at byte {pos}")
            out.append(int(h, 16))
            pos += 3
        else:
            out.append(c)
            pos += 1
    raise ObjectKeyError("onode key: string without its '!' terminator")


@dataclass(frozen=True)
class ObjectId:
    """A ghobject_t as BlueStore keys it."""

    pool: int
    hash: int  # hobject_t hash (not reversed)
    nspace: bytes
    name: bytes
    key: bytes  # locator key ('' = same as name)
    snap: int
    gen: int = NO_GEN
    shard: int = NO_SHARD

    @property
    def is_head(self):
        return self.snap == CEPH_NOSNAP

    def display(self) -> str:
        return display(self.nspace, self.name, self.snap)


def display(nspace: bytes, name: bytes, snap: int) -> str:
    """``[<namespace>/]<name>[@<snap>|@snapdir]``: :meth:`ObjectId.display` from the parts
    alone (the OSD view names objects from its index's rows without an ObjectId)."""
    n = name.decode("utf-8", "backslashreplace")
    if nspace:
        n = nspace.decode("utf-8", "backslashreplace") + "/" + n
    if snap == CEPH_NOSNAP:
        return n
    if snap == CEPH_SNAPDIR:
        return n + "@snapdir"
    return f"{n}@{snap}"


def encode_onode_key(oid: ObjectId) -> bytes:
    """``get_object_key``."""
    out = bytearray()
    out.append((oid.shard + 0x80) & 0xFF)
    out += _BE64.pack((oid.pool + 0x8000000000000000) & 0xFFFFFFFFFFFFFFFF)
    out += _BE32.pack(reverse_bits32(oid.hash))
    out += escape(oid.nspace)
    if oid.key and oid.key != oid.name:
        out += escape(oid.key)
        out += b">" if oid.key > oid.name else b"<"
        out += escape(oid.name)
    else:
        out += escape(oid.name)
        out += b"="
    out += _BE64.pack(oid.snap & 0xFFFFFFFFFFFFFFFF)
    out += _BE64.pack(oid.gen & 0xFFFFFFFFFFFFFFFF)
    out.append(ONODE_KEY_SUFFIX)
    return bytes(out)


def decode_onode_key(key: bytes) -> ObjectId:
    """``get_key_object``: raises :class:`ObjectKeyError` on a malformed key."""
    key = bytes(key)
    if len(key) < 1 + 8 + 4 + 2 + 1 + 16 + 1 or key[-1] != ONODE_KEY_SUFFIX:
        raise ObjectKeyError(f"onode key: not an onode key ({len(key)} bytes)")
    shard = key[0] - 0x80
    pool = (_BE64.unpack_from(key, 1)[0] - 0x8000000000000000)
    rhash = _BE32.unpack_from(key, 9)[0]
    pos = 13
    nspace, pos = unescape(key, pos)
    first, pos = unescape(key, pos)
    if pos >= len(key):
        raise ObjectKeyError("onode key: truncated after the name")
    c = key[pos]
    pos += 1
    if c == 0x3D:  # '='
        name, loc = first, b""
    elif c in (0x3C, 0x3E):  # '<' '>'
        loc = first
        name, pos = unescape(key, pos)
    else:
        raise ObjectKeyError(f"onode key: unexpected byte {c:#x} after the name")
    if len(key) - pos != 17:
        raise ObjectKeyError(f"onode key: {len(key) - pos} bytes after the name, expected 17")
    snap = _BE64.unpack_from(key, pos)[0]
    gen = _BE64.unpack_from(key, pos + 8)[0]
    return ObjectId(pool, reverse_bits32(rhash), nspace, name, loc, snap, gen, shard)


def is_onode_key(key: bytes) -> bool:
    return len(key) > 0 and key[-1] == ONODE_KEY_SUFFIX


def is_extent_shard_key(key: bytes) -> bool:
    return len(key) > 5 and key[-1] == EXTENT_SHARD_KEY_SUFFIX


def extent_shard_key(onode_key: bytes, offset: int) -> bytes:
    """``generate_extent_shard_key_and_apply``: onode key + u32 BE offset + ``x``."""
    return bytes(onode_key) + _BE32.pack(offset & 0xFFFFFFFF) + b"x"


def split_extent_shard_key(key: bytes) -> tuple[bytes, int]:
    """(onode key, shard offset) of an extent-shard key."""
    if not is_extent_shard_key(key):
        raise ObjectKeyError("extent shard key: bad suffix")
    return bytes(key[:-5]), _BE32.unpack_from(key, len(key) - 5)[0]


# -- omap --------------------------------------------------------------------------
# bluestore_onode_t flags (bluestore_types.h)
FLAG_OMAP = 1
FLAG_PGMETA_OMAP = 2
FLAG_PERPOOL_OMAP = 4
FLAG_PERPG_OMAP = 8


def omap_prefix_and_base(onode_flags: int, pool: int, hash_: int, nid: int) -> tuple[str, bytes]:
    """``Onode::calc_omap_header``/``get_omap_prefix``: (KV prefix, key base without
    the trailing ``-``/``.``/``~``)."""
    if onode_flags & FLAG_PGMETA_OMAP:
        return PREFIX_PGMETA_OMAP, _BE64.pack(nid)
    if onode_flags & FLAG_PERPG_OMAP:
        return PREFIX_PERPG_OMAP, (_BE64.pack(pool & 0xFFFFFFFFFFFFFFFF)
                                   + _BE32.pack(reverse_bits32(hash_)) + _BE64.pack(nid))
    if onode_flags & FLAG_PERPOOL_OMAP:
        return PREFIX_PERPOOL_OMAP, _BE64.pack(pool & 0xFFFFFFFFFFFFFFFF) + _BE64.pack(nid)
    return PREFIX_OMAP, _BE64.pack(nid)
