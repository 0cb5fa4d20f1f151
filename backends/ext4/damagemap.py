"""Which files lie on unreadable bytes: walk the inode table, then name the hits.

Every inode the bitmaps mark in use is checked (bounded by a deadline): its inode-table
slot, its xattr block, its extent-tree or indirect blocks and its data blocks against
the unreadable byte ranges.  The hit inodes are then named by walking the directories
from the root (parents only, no inode loads); one no directory reaches is named
``.lost+found/<inode>``, as the tree shows it.

# References:
# - Linux fs/ext4/ialloc.c (inode bitmaps), fs/ext4/extents.c and indirect.c (which
#   blocks a file owns), e2fsprogs debugfs ``icheck``/``ncheck`` (block -> inode ->
#   name: the same two steps).
"""

from __future__ import annotations

import bisect
import time

from .fs import LOST_FOUND, fs_name
from .structs import EXT4_ROOT_INO
from .superblock import Ext4Error
from .volume import RUN_BAD

MAX_PATH_DEPTH = 4096


class _Ranges:
    """Merged, sorted byte ranges with an overlap test."""

    def __init__(self, ranges):
        merged = []
        for off, ln in sorted((int(o), int(n)) for o, n in ranges if n > 0):
            if merged and off <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], off + ln)
            else:
                merged.append([off, off + ln])
        self.starts = [a for a, _ in merged]
        self.ends = [b for _, b in merged]

    def hit(self, off: int, length: int) -> bool:
        i = bisect.bisect_right(self.starts, off + length - 1) - 1
        return i >= 0 and self.ends[i] > off


def files_in_ranges(fs, ranges, limit: int, deadline: float):
    vol = fs.vol
    sb = vol.sb
    bs = vol.block_size
    rs = _Ranges(ranges)
    if not rs.starts:
        return [], 0
    hit: set[int] = set()
    # 1. inode-table slots on bad bytes (whether or not the inode can still be read)
    for g, (it, *_rest) in enumerate(vol.groups):
        if it is None:
            continue
        start = it * bs
        tlen = sb.inodes_per_group * sb.inode_size
        if not rs.hit(start, tlen):
            continue
        for i in range(sb.inodes_per_group):
            if rs.hit(start + i * sb.inode_size, sb.inode_size):
                hit.add(g * sb.inodes_per_group + i + 1)
    # 2. blocks each inode in use owns
    for ino in _in_use(fs, deadline):
        if ino in hit:
            continue
        if time.monotonic() > deadline:
            break
        try:
            inode = vol.read_inode(ino)
        except (Ext4Error, OSError):
            continue
        if inode.file_acl and rs.hit(inode.file_acl * bs, bs):
            hit.add(ino)
            continue
        if inode.has_inline_data or not vol._mapped(inode):
            continue
        meta: list = []
        try:
            runs = vol.block_map(inode, [], meta)
        except (Ext4Error, OSError):
            continue
        if any(rs.hit(b * bs, n * bs) for b, n in meta) or any(
                kind != RUN_BAD and rs.hit(p * bs, n * bs) for _l, n, p, kind in runs):
            hit.add(ino)
    hit = {i for i in hit if i == EXT4_ROOT_INO or i >= sb.first_ino}
    if not hit:
        return [], 0
    # 3. names
    _reached, parents, _complete = fs.reachable_inodes(deadline, want=hit)
    paths = []
    for ino in sorted(hit):
        paths.append(_path(ino, parents))
    paths.sort()
    return paths[:limit], len(paths)


def _in_use(fs, deadline):
    """Inodes in use by the bitmaps; a group whose bitmap cannot be read counts whole."""
    yield EXT4_ROOT_INO
    yield from fs.used_inodes(deadline)


def _path(ino: int, parents) -> str:
    parts = []
    cur = ino
    for _ in range(MAX_PATH_DEPTH):
        if cur == EXT4_ROOT_INO:
            return "/".join(reversed(parts)) or "/"
        p = parents.get(cur)
        if p is None:
            parts.append(str(cur))
            parts.append(LOST_FOUND)
            return "/".join(reversed(parts))
        parts.append(fs_name(p[1]))
        cur = p[0]
    return f"{LOST_FOUND}/{ino}"
