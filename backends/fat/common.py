"""Pieces FAT and exFAT share: cluster runs as sources, walking the tree for damage.

# References:
- pvfs/guestfs.py (the contract), pvfs/source.py (ExtentSource, MissingSource).
"""

from __future__ import annotations

import bisect
import threading

from pvfs.errors import FormatError
from pvfs.guestfs import GuestFilesystem
from pvfs.nodes import Dir
from pvfs.source import ExtentSource, MissingSource

MAX_WALK = 500_000  # nodes looked at when mapping unreadable ranges to files
MAX_BAD_ENTRIES_REPORTED = 20  # per directory; more are summed up in one entry


class FatError(FormatError):
    """A FAT or exFAT structure is not what the specification says."""


def run_extents(heap_offset, cluster_size, runs, limit):
    """``(file_offset, length, disk_offset)`` for cluster ``runs``, cut at ``limit`` bytes."""
    out = []
    pos = 0
    for cluster, count in runs:
        if pos >= limit:
            break
        n = min(count * cluster_size, limit - pos)
        out.append((pos, n, heap_offset + (cluster - 2) * cluster_size))
        pos += n
    return out, pos


def data_source(volume_source, extents, mapped, size, missing_reason, bad, label):
    """A file's bytes: ``extents`` from the volume, zeros up to ``size`` past ``mapped``
    (exFAT's ValidDataLength), or unreadable bytes where the chain broke."""
    parts = [(off, n, volume_source, disk) for off, n, disk in extents]
    if missing_reason is not None and mapped < size:
        parts.append((mapped, size - mapped,
                      MissingSource(size - mapped, missing_reason, bad=bad, label=label), 0))
    return ExtentSource(size, parts, label=label)


class ClusterFilesystem(GuestFilesystem):
    """A filesystem whose nodes carry ``fat_extents`` (disk byte ranges they occupy)."""

    _root: Dir | None = None

    def tree_path(self, path: str | None) -> str:
        """Where ``path`` (``/a/b`` below the filesystem root) is shown in the tree."""
        places = self.volume.files_paths
        base = places[0] if places else self.volume.path
        return base if not path or path == "/" else base + path

    def claim_dir(self, first: int) -> bool:
        """Whether the directory starting at cluster ``first`` may be listed: each directory
        cluster is listed once, so a subdirectory entry that points at an ancestor or at
        another directory (a loop, a cross-link) cannot make the tree endless."""
        if not hasattr(self, "_dir_lock"):
            self._dir_lock = threading.Lock()
            self._dir_starts: set[int] = set()
        with self._dir_lock:
            if first in self._dir_starts:
                return False
            self._dir_starts.add(first)
            return True

    def files_in_ranges(self, ranges, limit=50):
        merged = sorted((o, o + n) for o, n in ranges if n > 0)
        starts = [a for a, _ in merged]
        ends = [b for _, b in merged]

        def hit(extents):
            for off, n in extents:
                i = bisect.bisect_right(starts, off + n - 1) - 1
                if i >= 0 and ends[i] > off:
                    return True
            return False

        names: list[str] = []
        total = 0
        seen = 0
        stack = [("", self._root)] if self._root is not None else []
        while stack and seen < MAX_WALK:
            path, node = stack.pop()
            seen += 1
            kids = node.children() if isinstance(node, Dir) else {}  # loading sets fat_extents
            if hit(getattr(node, "fat_extents", ())):
                total += 1
                if len(names) < limit:
                    names.append(path or "/")
            stack.extend((f"{path}/{k}" if path else k, v) for k, v in
                         sorted(kids.items(), reverse=True))
        return names, total


def read_blocks(source, extents, block, window=1 << 20):
    """Read ``(file_offset, length, disk_offset)`` extents in ``block``-sized pieces.

    Yields ``(disk_offset, data or None, error or None)``: up to ``window`` bytes are read
    in one call (a 256 MiB exFAT directory is never held whole) and only re-read block by
    block when they hold an unreadable byte, so one bad sector costs one block of a
    directory, not the directory.
    """
    from pvfs.errors import UnreadableError

    window = max(block, window - window % block)
    for _off, length, start in extents:
        for w in range(0, length, window):
            disk, n = start + w, min(window, length - w)
            try:
                data = source.read(disk, n)
                if len(data) < n:
                    raise UnreadableError(f"directory data past the end of the volume at "
                                          f"{disk:#x}", [(disk + len(data), n - len(data))])
            except UnreadableError:
                for b in range(0, n, block):
                    ln = min(block, n - b)
                    try:
                        piece = source.read(disk + b, ln)
                        if len(piece) < ln:
                            raise UnreadableError("past the end of the volume", [])
                        yield disk + b, piece, None
                    except UnreadableError as e:
                        yield disk + b, None, e
                continue
            for b in range(0, n, block):
                yield disk + b, data[b:b + block], None
