"""What the mount daemon keeps per listed file (issue 15 item 5): the kernel holds every
file ``find`` lists, so a pool of a million files keeps a million nodes, their sources and
inode table entries.  Measured with tracemalloc on the Proxmox rpool fixture (made by real
OpenZFS, 9,288 files): every directory loaded and every node given an inode by the mount's
own bookkeeping, as readdirplus does; the bounded block caches are left out.  Before slots,
int-nanosecond times, lazy file labels and one inode table entry per inode: 2,214 bytes
per file; after: 1,831, of which ~300 are the
fixture's real xattrs (SA nvlists).
"""

from __future__ import annotations

import gc
import os
import tracemalloc

import scancases
from mountd.fs import PvfsOperations
from pvfs.discover import Options, discover
from pvfs.nodes import Dir, File

LIMIT_BYTES_PER_FILE = 2000
CACHES = ("compress.py", "cache.py", "test_memory_per_file.py")


def test_bytes_kept_per_listed_file():
    images = scancases.CASES_BY_NAME["zfs-modern/rpool-raidz1"].inputs()
    ops = PvfsOperations(discover(images, Options()).root)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        seen = _walk(ops)
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    # the block caches are bounded (decompressed blocks, metadata): not per file
    bounded = [tracemalloc.Filter(False, f"*{os.sep}{f}") for f in CACHES]
    kept = sum(st.size_diff for st in after.filter_traces(bounded).compare_to(
        before.filter_traces(bounded), "filename"))
    files = len(seen)
    assert files > 5000, files
    per_file = kept / files
    assert per_file < LIMIT_BYTES_PER_FILE, f"{per_file:.0f} bytes kept per listed file ({files} files)"


def _walk(ops) -> set[int]:
    """Every directory loaded, every node given an inode as readdirplus does; the ids
    of the files met."""
    seen = set()
    todo = [(1, ops._node(1))]
    while todo:
        ino, d = todo.pop()
        for name, node in d.children().items():
            child = ops._ino(node, ino, name)
            if isinstance(node, Dir):
                todo.append((child, node))
            elif isinstance(node, File):
                seen.add(id(node))
    return seen
