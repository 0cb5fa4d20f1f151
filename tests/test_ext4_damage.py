"""ext4 reader on damaged images: the damage costs only what it hits, each bad thing is
one damage entry, and what is shown still equals the kernel's view of the intact image.

Locations come from debugfs (the real tool): ``imap`` for an inode's table block,
``htree`` for which names a directory block holds, ``stat`` for an extent-tree block,
``bmap`` for a data block.  Damage is laid over the image in memory (PatchedSource,
ddrescue.BadRangeSource, a ddrescue mapfile through discover()); the image is never
written.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import stat
import subprocess

import pytest
from ext4_build import build, compare_tree, populate

from backends.ext4.fs import Ext4Filesystem
from backends.ext4.volume import Ext4Volume
from pvfs.ddrescue import BadRangeSource
from pvfs.discover import discover
from pvfs.errors import UnreadableError
from pvfs.nodes import File, resolve, walk
from pvfs.source import FileSource, PatchedSource

MKFS = ["mkfs.ext4", "-q", "-F", "-b", "4096"]
BS = 4096


class Report:
    def __init__(self):
        self.entries = []

    def add(self, severity, layer, path, code, message, ranges=()):
        self.entries.append((severity, layer, path, code, message, list(ranges)))

    def codes(self):
        return [e[3] for e in self.entries]


@pytest.fixture(scope="module")
def image():
    return build("default", MKFS, 64, fill=populate)


def debugfs(img, cmd):
    return subprocess.run(["debugfs", "-R", cmd, str(img)], capture_output=True, text=True,
                          check=True).stdout


def inode_block(img, ino):
    m = re.search(r"located at block (\d+), offset (0x[0-9a-f]+)", debugfs(img, f"imap <{ino}>"))
    return int(m.group(1)), int(m.group(2), 16)


def open_fs(source, report):
    return Ext4Filesystem(Ext4Volume(source), report=report)


def without(truth, lost):
    """The kernel's view minus ``lost`` paths and everything below them."""
    return {p: r for p, r in truth.items()
            if not any(p == x or p.startswith(x + "/") for x in lost)}


@pytest.fixture(scope="module")
def victim(image):
    img, truth = image
    # the inodes of bigdir/file-00150.. are in one table block with no directory
    ino = truth["bigdir/file-00150-" + "x" * 30]["ino"]
    blk, off = inode_block(img, ino)
    first = ino - off // 256
    inos = range(first, first + BS // 256)
    lost = sorted(p for p, r in truth.items() if p and r["ino"] in inos)
    assert lost and all(stat.S_ISREG(truth[p]["mode"]) for p in lost)
    return blk, lost


@pytest.mark.parametrize("kind", ["zeroed", "garbage", "unreadable"])
def test_bad_inode_block_costs_only_its_inodes(image, victim, kind):
    img, truth = image
    blk, lost = victim
    base = FileSource(img)
    if kind == "zeroed":
        src = PatchedSource(base, {blk * BS: bytes(BS)})
    elif kind == "garbage":
        src = PatchedSource(base, {blk * BS: random.Random(7).randbytes(BS)})
    else:
        src = BadRangeSource(base, [(blk * BS, BS)])
    report = Report()
    fs = open_fs(src, report)
    n, bad = compare_tree(fs.root(), without(truth, lost))
    assert bad == [] and n == len(truth) - len(lost)
    # one error per lost entry, at its path, and nothing else
    per_path = sorted(e[2] for e in report.entries)
    assert per_path == sorted(lost)
    want = {"zeroed": {"inode-zeroed"}, "garbage": {"inode-garbage"},
            "unreadable": {"inode-unreadable"}}[kind]
    assert set(report.codes()) == want
    assert all(e[0] == "error" for e in report.entries)
    if kind == "unreadable":
        assert all(e[5] and e[5][0][0] // BS == blk for e in report.entries)
        # the core's damage mapping: the 16 inode slots on the bad block name those files
        paths, total = fs.files_in_ranges([(blk * BS, BS)])
        assert sorted(paths) == lost and total == len(lost)


def test_inode_checksum_mismatch_is_shown_and_reported(image):
    img, truth = image
    ino = truth["dir/hello.txt"]["ino"]
    blk, off = inode_block(img, ino)
    # l_i_reserved (0x7E) is covered by the checksum and read by nothing else
    src = PatchedSource(FileSource(img), {blk * BS + off + 0x7E: b"\x5a"})
    report = Report()
    fs = open_fs(src, report)
    n, bad = compare_tree(fs.root(), truth)
    assert bad == [] and n == len(truth)
    assert [(e[0], e[2], e[3]) for e in report.entries] == [
        ("warning", "dir/hello.txt", "inode-checksum")]


def _htree_blocks(img):
    """{physical block: [names]} of /bigdir's leaf blocks (debugfs htree)."""
    out = {}
    cur = None
    for line in debugfs(img, "htree /bigdir").splitlines():
        m = re.match(r"Reading directory block \d+, phys (\d+)", line)
        if m:
            cur = out.setdefault(int(m.group(1)), [])
            continue
        m = re.match(r"\d+ 0x[0-9a-f]+-[0-9a-f]+ \(\d+\) (\S+)", line.strip())
        if m and cur is not None:
            cur.append(m.group(1))
    return out


@pytest.mark.parametrize("kind", ["zeroed", "unreadable", "checksum"])
def test_bad_directory_block_costs_only_its_entries(image, kind):
    img, truth = image
    blocks = _htree_blocks(img)
    phys = sorted(blocks)[1]
    names = blocks[phys]
    assert len(names) > 20
    lost = [f"bigdir/{n}" for n in names]
    base = FileSource(img)
    if kind == "zeroed":
        src = PatchedSource(base, {phys * BS: bytes(BS)})
    elif kind == "unreadable":
        src = BadRangeSource(base, [(phys * BS, BS)])
    else:  # flip a bit of the block's checksum in its dirent tail: entries intact
        raw = base.read(phys * BS + BS - 4, 4)
        src = PatchedSource(base, {phys * BS + BS - 4: bytes([raw[0] ^ 1]) + raw[1:]})
    report = Report()
    fs = open_fs(src, report)
    root = fs.root()
    if kind == "checksum":
        n, bad = compare_tree(root, truth)
        assert bad == [] and n == len(truth)
        assert [(e[0], e[2], e[3]) for e in report.entries] == [
            ("warning", "bigdir", "directory-block-checksum")]
        return
    n, bad = compare_tree(root, without(truth, lost))
    assert bad == [] and n == len(truth) - len(lost)
    code = {"zeroed": "directory-block-bad", "unreadable": "directory-block-unreadable"}[kind]
    # the walk listed .lost+found too, which found the lost block's entries
    assert [(e[0], e[2], e[3]) for e in report.entries] == [
        ("error", "bigdir", code), ("warning", ".lost+found", "orphan-inodes")]
    if kind == "unreadable":  # the core's damage mapping names the directory
        assert fs.files_in_ranges([(phys * BS, BS)]) == (["bigdir"], 1)
    # the entries of the lost block are still in use: .lost+found/<inode> shows them
    lf = root.get(".lost+found")
    shown = {int(k): v for k, v in lf.children().items()}
    assert sorted(shown) == sorted(truth[p]["ino"] for p in lost)
    for p in lost:
        node = shown[truth[p]["ino"]]
        assert hashlib.sha256(node.source.read(0, node.size)).hexdigest() == truth[p]["sha256"]


def _etb_block(img, path):
    m = re.search(r"\(ETB0\):(\d+)", debugfs(img, f"stat {path}"))
    return int(m.group(1))


def test_bad_extent_tree_block_makes_only_its_blocks_unreadable(image):
    img, truth = image
    etb = _etb_block(img, "/dir/fragmented")
    report = Report()
    fs = open_fs(PatchedSource(FileSource(img), {etb * BS: bytes(BS)}), report)
    root = fs.root()
    node = resolve(root, "dir/fragmented")
    with pytest.raises(UnreadableError):
        node.source.read(0, 4096)
    assert [(e[0], e[2], e[3]) for e in report.entries] == [
        ("error", "dir/fragmented", "extent-tree-bad")]
    assert fs.files_in_ranges([(etb * BS, 100)]) == (["dir/fragmented"], 1)
    # every other file is intact (the damaged one is still listed)
    n, bad = compare_tree(root, without(truth, ["dir/fragmented"]))
    assert bad == ["'dir/fragmented': not in the kernel's view"]
    assert n == len(truth)


def test_unreadable_data_through_discover_names_the_file(image, tmp_path):
    """A ddrescue mapfile beside the image marks one block of dir/big.bin bad: reading
    it is EIO (the rest of the file reads), and the report names the file."""
    img, truth = image
    phys = int(debugfs(img, "bmap /dir/big.bin 5").strip())
    disk = tmp_path / "fs.img"
    os.symlink(img, disk)
    size = os.path.getsize(img)
    bad_off = phys * BS
    (tmp_path / "fs.img.map").write_text(
        "0x0 +\n"
        f"0x0 {bad_off:#x} +\n{bad_off:#x} {BS:#x} -\n"
        f"{bad_off + BS:#x} {size - bad_off - BS:#x} +\n")
    ctx = discover([str(disk)])
    root = next(v for v in ctx.volumes if v.guestfs is not None).guestfs_root
    node = resolve(root, "dir/big.bin")
    assert isinstance(node, File)
    with pytest.raises(UnreadableError):
        node.source.read(5 * BS, 10)
    whole = truth["dir/big.bin"]
    assert node.source.read(0, 5 * BS) == _kernel_bytes(img, "dir/big.bin", 0, 5 * BS)
    assert node.size == whole["size"]
    e = next(e for e in ctx.report if e.code == "files-damaged")
    assert "dir/big.bin" in e.message and e.message.startswith("1 files")
    assert e.path.endswith("fs.img/disk.files") or e.path.endswith(".files")


def _kernel_bytes(img, rel, off, n):
    from ext4_build import Mounted

    with Mounted(img) as mnt, open(mnt / rel, "rb") as f:
        f.seek(off)
        return f.read(n)


def test_directory_cycle_and_orphan_dir(tmp_path):
    """A directory entry pointing at an ancestor (made with debugfs's link, on a copy)
    is shown once and reported, with no endless walk."""
    img, _truth = build("default", MKFS, 64, fill=populate)
    copy = tmp_path / "cycle.img"
    shutil.copy(img, copy)
    subprocess.run(["debugfs", "-w", "-R", "link /dir /dir/sticky/loop", str(copy)],
                   check=True, capture_output=True)
    report = Report()
    fs = open_fs(FileSource(copy), report)
    paths = [p for p, _n in walk(fs.root())]
    assert "dir/sticky/loop" not in paths and "dir/hello.txt" in paths
    assert [(e[2], e[3]) for e in report.entries] == [("dir/sticky/loop", "directory-cycle")]


def test_htree_index_checksum_mismatch_loses_nothing(image):
    """The dx root of /bigdir (debugfs: its first block) with a flipped checksum: one
    warning, every entry still listed (the index is not needed for a linear read)."""
    img, truth = image
    root_blk = int(debugfs(img, "blocks /bigdir").split()[0])
    m = re.search(r"Number of entries \(limit\): (\d+)", debugfs(img, "htree /bigdir"))
    tail = 32 + int(m.group(1)) * 8  # dx_root: count/limit at 32, then limit entries
    off = root_blk * BS + tail + 4  # dt_checksum
    base = FileSource(img)
    b = base.read(off, 1)
    report = Report()
    fs = open_fs(PatchedSource(base, {off: bytes([b[0] ^ 0x40])}), report)
    n, bad = compare_tree(fs.root(), truth)
    assert bad == [] and n == len(truth)
    assert [(e[0], e[2], e[3]) for e in report.entries] == [
        ("warning", "bigdir", "directory-index-checksum")]
