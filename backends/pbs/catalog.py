"""The catalog (``catalog.pcat1.didx``) of a pxar backup, as a text listing.

References: proxmox-backup ``pbs-datastore/src/catalog.rs`` (``CatalogWriter``: magic,
directory blocks written when the directory closes, the last 8 bytes = offset of the root
block; block = varint length + table {varint count, entries}; entry = type byte + varint
name length + name + for ``d`` varint (this block's offset - child block offset), for
``f`` varint size + ``catalog_decode_i64`` mtime).

The catalog lives in chunks of its own, so it still names the files of an archive whose
metadata chunks are lost.  Parsing is bounded: block sizes, entry counts, depth, and each
block is visited once (no loops).
"""

from __future__ import annotations

import struct

from .structs import PROXMOX_CATALOG_FILE_MAGIC_1_0, PbsError

MAX_BLOCK = 64 << 20
MAX_ENTRIES = 10_000_000
MAX_DEPTH = 4096
TYPES = {ord("d"): "dir", ord("f"): "file", ord("l"): "symlink", ord("h"): "hardlink",
         ord("b"): "blockdev", ord("c"): "chardev", ord("p"): "fifo", ord("s"): "socket"}


class CatalogError(PbsError):
    pass


def _varint(buf, p, signed=False):
    """catalog_decode_u64 / catalog_decode_i64: 7 bits a byte, low first; a signed value
    ends with a 0x00 byte when negative."""
    v = 0
    for i in range(11 if signed else 10):
        if p >= len(buf):
            raise CatalogError("varint runs past its block")
        t = buf[p]
        p += 1
        if signed and t == 0:
            return (-v if v else 0), p
        v |= (t & 0x7F) << (7 * i)
        if t < 0x80:
            return v, p
    raise CatalogError("varint without end marker")


def _u64(buf, p):
    return _varint(buf, p)


def _i64(buf, p):
    return _varint(buf, p, signed=True)


def read_catalog(src):
    """Yield ``(path, type, size, mtime)`` for every entry (directories first-visited order)."""
    if src.size < 16 or src.read(0, 8) != PROXMOX_CATALOG_FILE_MAGIC_1_0:
        raise CatalogError("no catalog magic")
    root = struct.unpack("<Q", src.read(src.size - 8, 8))[0]
    stack = [(root, "", 0)]
    seen = set()
    count = 0
    while stack:
        off, prefix, depth = stack.pop()
        if off in seen or not 8 <= off < src.size - 8 or depth > MAX_DEPTH:
            raise CatalogError(f"directory block at {off:#x} is out of range or repeats")
        seen.add(off)
        head = src.read(off, 10)
        length, p = _u64(head, 0)
        if length > MAX_BLOCK or off + p + length > src.size - 8:
            raise CatalogError(f"directory block at {off:#x} of {length} bytes is out of range")
        table = src.read(off + p, length)
        n, q = _u64(table, 0)
        subdirs = []
        for _ in range(min(n, MAX_ENTRIES)):
            if q >= len(table):
                raise CatalogError(f"directory block at {off:#x}: entries run past it")
            etype = table[q]
            nlen, q = _u64(table, q + 1)
            name = bytes(table[q:q + nlen]).decode("utf-8", "surrogateescape")
            q += nlen
            kind = TYPES.get(etype)
            if kind is None:
                raise CatalogError(f"directory block at {off:#x}: unknown entry type {etype:#x}")
            path = f"{prefix}/{name}"
            size = mtime = None
            if kind == "dir":
                back, q = _u64(table, q)
                subdirs.append((off - back, path, depth + 1))
            elif kind == "file":
                size, q = _u64(table, q)
                mtime, q = _i64(table, q)
            count += 1
            if count > MAX_ENTRIES:
                raise CatalogError(f"more than {MAX_ENTRIES} entries")
            yield path, kind, size, mtime
        stack.extend(reversed(subdirs))


def catalog_text(src, limit=64 << 20) -> bytes:
    """``type size mtime path`` lines; a damaged catalog ends with a line saying where."""
    out = []
    total = 0
    try:
        for path, kind, size, mtime in read_catalog(src):
            line = f"{kind:8} {'-' if size is None else size:>12} {'-' if mtime is None else mtime:>11} {path}\n"
            total += len(line)
            if total > limit:
                out.append("# ... listing cut at the size limit\n")
                break
            out.append(line)
    except (PbsError, OSError) as e:
        out.append(f"# catalog damaged: {e}\n")
    return "".join(out).encode("utf-8", "surrogateescape")
