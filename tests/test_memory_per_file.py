"""What the mount daemon keeps per listed file (issue 15 item 5): the kernel may hold every
file ``find`` lists, so a pool of a million files kept a million nodes, their sources and
inode table entries: 2,214 bytes per file, 1,831 after slots and int times (tracemalloc,
the Proxmox rpool fixture), a 1M-file zfs-fuse pool's daemon at 1,022 MiB after ``find``.
A ZFS directory now takes its entries from the dataset (pvfs.nodes.InodeSpace): each is
built when listed or asked for by inode and not kept, except in bounded caches (the
decoded-metadata cache, the mount's NODE_CACHE of nodes the kernel asked about last).
What stays per listed file is the directories' share (a directory is a kept node).
"""

from __future__ import annotations

import gc
import json
import os
import tracemalloc
import weakref

import scancases
from backends.zfs import pool as zfs_pool
from mountd import fs as mountfs
from mountd.fs import PvfsOperations, _space_listing
from pvfs.cache import METADATA_CACHE
from pvfs.discover import Options, discover
from pvfs.nodes import Dir, File
from pvfs.report import report_json

#: bytes kept per listed entry (file or directory: the fixture has one directory per four
#: files) once the bounded caches are emptied; it was 1,831 per file (1,450 per entry),
#: now 431: directories' nodes and paths, datasets' SA registries, the mount's dict tables
LIMIT_BYTES_PER_ENTRY = 500
CACHES = ("compress.py", "cache.py", "test_memory_per_file.py")


def test_bytes_kept_per_listed_file():
    images = scancases.CASES_BY_NAME["zfs-modern/rpool-raidz1"].inputs()
    ops = PvfsOperations(discover(images, Options()).root)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        listed = weakref.WeakSet()
        files, dirs = _walk(ops, listed)
        assert len(ops._keyed) <= mountfs.NODE_CACHE
        ops._keyed.clear()  # bounded caches: not per file
        METADATA_CACHE.clear()
        zfs_pool.DATA_CACHE.clear()
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    bounded = [tracemalloc.Filter(False, f"*{os.sep}{f}") for f in CACHES]
    kept = sum(st.size_diff for st in after.filter_traces(bounded).compare_to(
        before.filter_traces(bounded), "filename"))
    assert files > 5000 and dirs > 1000, (files, dirs)
    # no node of a file listed from a dataset outlives its listing and the bounded caches
    survivors = [n.source.path for n in listed]
    assert not survivors, survivors
    per_entry = kept / (files + dirs)
    assert per_entry < LIMIT_BYTES_PER_ENTRY, \
        f"{per_entry:.0f} bytes kept per listed entry ({files} files, {dirs} directories)"


def _walk(ops, listed: weakref.WeakSet) -> tuple[int, int]:
    """Every directory listed as readdirplus does with full attributes (the costlier way:
    every entry's node built and remembered), every file's node built again by inode as a
    getattr after it was dropped does; the files and directories met."""
    files = dirs = 0
    todo = [(1, ops._node(1))]
    while todo:
        ino, d = todo.pop()
        dirs += 1
        if d.space is None:
            entries = [(name, node, ops._ino(node, ino, name))
                       for name, node in d.children().items()]
        else:
            h = _space_listing(d)
            h.full = True
            entries, i = [], 0
            while batch := ops._batch(ino, h, i, True):
                for _i, name, node, child, _attrs in batch:
                    if node is mountfs.ATTRS_ONLY:  # a file's attributes from its dnode:
                        # its node is built as a getattr or an open would
                        node = d.space.child(d.key, name, child & mountfs.KEY_MASK)
                    ops._remember(child, node)
                    if child >> mountfs.KEY_BITS:  # (not a kept entry: a zvol, .zfs)
                        listed.add(node)
                    entries.append((name, node, child))
                i = batch[-1][0] + 1
        for _name, node, child in entries:
            if isinstance(node, Dir):
                todo.append((child, node))
            elif isinstance(node, File):
                files += 1
                if child >> mountfs.KEY_BITS:  # dropped and asked for again
                    ops._keyed.pop(child, None)
                    space = ops._spaces[child >> mountfs.KEY_BITS]
                    again = space.node(child & mountfs.KEY_MASK)
                    assert again.size == node.size and again.times_ns() == node.times_ns()
    return files, dirs


def test_report_json_rendering_peak(tmp_path):
    """report.json of a folder of many files that no backend recognises lists every one
    (name and size, as os.stat says) and is written piece by piece: tracemalloc's peak
    while rendering stays within 6.5 times the text (2,000 inputs with one report entry
    each: 7.6 times with json.dumps and indent, 5.2 with json.dump into a StringIO; now
    names and sizes streamed from pvfs/unrecognised.py)."""
    folder = tmp_path / "clutter"
    folder.mkdir()
    for i in range(2000):
        (folder / f"note-{i:05d}.txt").write_bytes(b"not an image\n" * (i % 7 + 1))
    ctx = discover([str(folder)], Options())
    gc.collect()
    tracemalloc.start()
    try:
        text = report_json(ctx)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    doc = json.loads(text)
    [skipped] = doc["unrecognised"]
    assert skipped["folder"] == str(folder) and skipped["count"] == 2000
    assert [(f["name"], f["size"]) for f in skipped["files"]] == sorted(
        (p.name, p.stat().st_size) for p in folder.iterdir())
    assert peak < 6.5 * len(text), f"peak {peak} bytes for {len(text)} bytes of JSON"


def _discovery_memory(folder, n: int) -> tuple[int, int]:
    """(bytes kept after discovery, tracemalloc peak during it) for a folder of ``n``
    small files that are no image (4 KiB of text each)."""
    folder.mkdir()
    blob = b"".join(b"line %d: nothing to recover here\n" % i for i in range(128))[:4096]
    for i in range(n):
        (folder / f"note-{i:06d}.txt").write_bytes(blob)
    discover([str(folder)], Options(progress=False))  # imports and first-use caches
    gc.collect()
    tracemalloc.start()
    try:
        ctx = discover([str(folder)], Options(progress=False))
        gc.collect()
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sum(s.count for s in ctx.skipped) == n and not ctx.volumes
    return kept, peak


def test_unrecognised_files_memory_is_flat(tmp_path):
    """Issue 15 item 5: an input folder's files that no backend recognises keep only a
    name and a size (pvfs/unrecognised.py).  Each kept a volume, a source, a tree node, an
    inputs record and a report entry: 3.2 KB per file after discovery (10,000 files:
    3.1 MB -> 31 MB; `pvfs scan` of 100,000 peaked at 423 MiB); now 26 bytes (a 17-byte
    name and 8 of size), 136 at the peak (the folder's sorted names while it is walked).
    Measured between 1,000 and 4,000 files, so that what every discovery keeps cancels."""
    k1, p1 = _discovery_memory(tmp_path / "a", 1000)
    k4, p4 = _discovery_memory(tmp_path / "b", 4000)
    kept, peak = (k4 - k1) / 3000, (p4 - p1) / 3000
    assert kept < 64, f"{kept:.0f} bytes kept per file not recognised"
    assert peak < 300, f"{peak:.0f} bytes more peak per file not recognised"
