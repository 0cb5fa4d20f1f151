"""What the mount daemon keeps per listed file (issue 15 item 5): the kernel holds every
file ``find`` lists, so a pool of a million files keeps a million nodes, their sources and
inode table entries.  Measured with tracemalloc on the Proxmox rpool fixture (made by real
OpenZFS, 9,288 files): every directory loaded and every node given an inode by the mount's
own bookkeeping, as readdirplus does; the bounded block caches are left out.  Before slots,
int-nanosecond times, lazy file labels and one inode table entry per inode: 2,214 bytes
per file; after: 1,831, of which ~300 are the fixture's real xattrs (SA nvlists).
"""

from __future__ import annotations

import gc
import os
import tracemalloc

import scancases
from mountd.fs import PvfsOperations
from pvfs.discover import Options, discover
from pvfs.nodes import Dir, File
from pvfs.report import report_json

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


def test_report_json_rendering_peak(tmp_path):
    """report.json of a folder of many inputs (one not-recognised entry each) is rendered
    without a second copy of itself in small pieces: tracemalloc's peak while rendering
    (the document, then the text) stays within 6.5 times the text (2,000 entries: 7.6 times
    with json.dumps and indent, 5.2 with json.dump into a StringIO; 10,000: 7.7 and 3.0)."""
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
    assert text.count('"not-recognised"') == 2000
    assert peak < 6.5 * len(text), f"peak {peak} bytes for {len(text)} bytes of JSON"
