"""The vdev tree: leaves (disks, files), mirrors, RAIDZ, missing devices.

References: OpenZFS module/zfs/vdev_mirror.c (every child holds the block),
vdev_raidz.c (column layout, see raidz.py), vdev_label.c / vdev_impl.h (leaf I/O
starts after the 4 MiB of labels 0/1 and the boot block: VDEV_LABEL_START_SIZE),
"ZFS On-Disk Specification" section 1.2 (vdev tree config).

A block read asks the top-level vdev for *candidates*: byte strings that may be
the block.  The caller checks each against the block pointer's checksum and stops
at the first good one, so mirrors try every child and RAIDZ tries the plain data
columns first, then every reconstruction the parity allows (combinatorial
reconstruction of a silently corrupt column).
"""

from __future__ import annotations

from pvfs.errors import UnreadableError

from . import raidz
from .structs import VDEV_LABEL_START_SIZE


class Vdev:
    kind = "vdev"
    guid = 0
    ashift = 9

    def candidates(self, offset: int, size: int):
        """Yield byte strings of ``size`` bytes that may hold the block."""
        return iter(())

    def first(self, offset: int, size: int):
        for data in self.candidates(offset, size):
            return data
        return None

    def describe(self) -> str:
        return self.kind

    def missing_leaves(self):
        return []


class Leaf(Vdev):
    kind = "leaf"

    def __init__(self, guid, path, source=None, ashift=9, volume=None):
        self.guid = guid
        self.path = path
        self.source = source
        self.ashift = ashift
        self.volume = volume
        self.errors = 0

    def candidates(self, offset, size):
        if self.source is None:
            return
        start = VDEV_LABEL_START_SIZE + offset
        if start + size > self.source.size:
            self.errors += 1
            return
        try:
            data = self.source.read(start, size)
        except UnreadableError:
            self.errors += 1
            return
        yield data

    def describe(self):
        return f"leaf {self.path} ({'present' if self.source is not None else 'MISSING'})"

    def missing_leaves(self):
        return [] if self.source is not None else [self]


class Missing(Vdev):
    """A top-level vdev whose config or members are absent (or not supported)."""

    kind = "missing"

    def __init__(self, guid=0, why="missing"):
        self.guid = guid
        self.why = why

    def describe(self):
        return f"missing ({self.why})"


class Mirror(Vdev):
    kind = "mirror"

    def __init__(self, guid, children, ashift=9):
        self.guid = guid
        self.children = children
        self.ashift = ashift

    def candidates(self, offset, size):
        for ch in self.children:
            yield from ch.candidates(offset, size)

    def describe(self):
        return f"mirror[{', '.join(c.describe() for c in self.children)}]"

    def missing_leaves(self):
        out = []
        for c in self.children:
            out.extend(c.missing_leaves())
        return out


class Raidz(Vdev):
    kind = "raidz"

    def __init__(self, guid, children, nparity, ashift=9):
        self.guid = guid
        self.children = children
        self.nparity = nparity
        self.ashift = ashift

    def candidates(self, offset, size):
        cols = raidz.map_columns(offset, size, len(self.children), self.nparity, self.ashift)
        np_ = self.nparity

        def read(col):
            devidx, coff, csize = col
            return self.children[devidx].first(coff, csize) if csize else b""

        # Data columns first: parity is read only when a column is missing or the
        # checksum of the plain data fails (the caller asks for the next candidate).
        data = [read(c) for c in cols[np_:]]
        sizes = [c[2] for c in cols[np_:]]
        missing = [j for j, d in enumerate(data) if d is None]
        if not missing:
            yield b"".join(data)[:size] if len(data) != 1 else data[0][:size]
        parity = [read(c) for c in cols[:np_]]
        parity += [None] * (np_ - len(parity))
        navail = sum(1 for p in parity if p is not None)
        # Known-missing columns first, then every suspect set the parity can repair.
        for erased in raidz.erasure_sets(len(data), missing, navail):
            rebuilt = raidz.reconstruct(parity, [None if j in erased else d for j, d in
                                                 enumerate(data)], sizes, erased)
            if rebuilt is not None:
                yield b"".join(rebuilt)[:size]

    def describe(self):
        return f"raidz{self.nparity}[{', '.join(c.describe() for c in self.children)}]"

    def missing_leaves(self):
        out = []
        for c in self.children:
            out.extend(c.missing_leaves())
        return out


MAX_TREE_DEPTH = 8


def build(cfg: dict, leaves: dict, depth: int = 0, notes=None) -> Vdev:
    """Build a vdev from its label config (``vdev_tree`` or a child of it).

    ``leaves`` maps leaf GUIDs to a list of ``(source, volume)``: more than one image of
    the same disk is read like a mirror of them.  Unknown types become :class:`Missing`
    with a note.
    """
    notes = notes if notes is not None else []
    if depth > MAX_TREE_DEPTH or not isinstance(cfg, dict):
        return Missing(why="vdev tree too deep or malformed")
    typ = cfg.get("type")
    guid = cfg.get("guid", 0)
    ashift = cfg.get("ashift", 9)
    if not isinstance(ashift, int) or not 9 <= ashift <= 16:
        ashift = 9
    children = cfg.get("children") or []
    if not isinstance(children, list):
        children = []
    if typ in ("disk", "file"):
        copies = leaves.get(guid) or [(None, None)]
        if len(copies) == 1:
            src, vol = copies[0]
            return Leaf(guid, cfg.get("path", "?"), src, ashift, vol)
        # several images of the same disk: read like a mirror of them
        return Mirror(guid, [Leaf(guid, cfg.get("path", "?"), src, ashift, vol)
                             for src, vol in copies[:16]], ashift)
    kids = [build(ch, leaves, depth + 1, notes) for ch in children[:255]]
    for k in kids:
        if k.ashift == 9 and ashift != 9:
            k.ashift = ashift
    if typ in ("mirror", "replacing", "spare"):
        return Mirror(guid, kids, ashift)
    if typ == "raidz":
        nparity = cfg.get("nparity", 1)
        if not isinstance(nparity, int) or not 1 <= nparity <= 3 or len(kids) <= nparity:
            notes.append(f"raidz vdev {guid} has a bad nparity {nparity!r}")
            return Missing(guid, "bad raidz config")
        return Raidz(guid, kids, nparity, ashift)
    if typ in ("hole", "missing"):
        return Missing(guid, typ)
    notes.append(f"vdev type {typ!r} is not supported (guid {guid})")
    return Missing(guid, f"unsupported vdev type {typ!r}")
