"""Bounded hypothesis fuzz of the ext4 parsers: superblock, group descriptors, inodes,
extent trees, block maps, directory blocks, xattrs, ACLs, and whole-tree walks over a
real image with a metadata block replaced by garbage.  Nothing may raise but the
reader's own errors (Ext4Error, UnreadableError for file bytes), hang or grow without
bound."""

from __future__ import annotations

import signal
import struct

import pytest
from ext4_build import build, populate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backends.ext4.fs import Ext4Filesystem
from backends.ext4.superblock import Ext4Error, Superblock, probe_superblock
from backends.ext4.volume import Ext4Volume, Inode, Problem, acl_to_xattr
from pvfs.errors import PvfsError, UnreadableError
from pvfs.nodes import Dir, File, walk
from pvfs.source import BytesSource, FileSource, PatchedSource

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def image():
    img, truth = build("default", ["mkfs.ext4", "-q", "-F", "-b", "4096"], 64, fill=populate)
    return img, truth


class Timeout:
    def __init__(self, seconds):
        self.seconds = seconds

    def __enter__(self):
        signal.signal(signal.SIGALRM, self._fire)
        signal.alarm(self.seconds)

    def _fire(self, *_):
        raise TimeoutError("hang")

    def __exit__(self, *exc):
        signal.alarm(0)


@SETTINGS
@given(st.binary(min_size=1024, max_size=1024), st.integers(0, 6))
def test_superblock_never_crashes(raw, log_bs):
    raw = bytearray(raw)
    raw[0x38:0x3A] = b"\x53\xef"
    raw[0x18:0x1C] = struct.pack("<I", log_bs)
    try:
        Superblock(bytes(raw))
    except Ext4Error:
        pass
    src = BytesSource(bytes(1024) + bytes(raw))
    assert probe_superblock(src) in (0.0, 30.0, 50.0, 100.0)


@SETTINGS
@given(st.binary(min_size=256, max_size=256))
def test_inode_parse_never_crashes(image, raw):
    vol = Ext4Volume(FileSource(image[0]))
    ino = Inode(12, raw, vol)
    problem = vol.inode_problem(ino)
    if problem is None and vol._mapped(ino):
        probs: list[Problem] = []
        try:
            runs = vol.block_map(ino, probs)
        except (Ext4Error, UnreadableError):
            return
        assert all(r[1] > 0 for r in runs)
    try:
        vol.xattrs(ino, [])
    except (Ext4Error, UnreadableError):
        pass


@SETTINGS
@given(st.binary(min_size=4096, max_size=4096), st.booleans())
def test_directory_block_never_crashes(image, block, index):
    vol = Ext4Volume(FileSource(image[0]))
    root = vol.read_inode(2)
    if index:
        root.flags |= 0x1000
    probs: list[Problem] = []
    out = list(vol._parse_dirents(block, root, 100, probs, tail=True))
    assert len(out) <= 4096 // 8
    for name, ino, _ft in out:
        assert 0 < len(name) <= 255 and 0 < ino <= vol.sb.inodes_count


@SETTINGS
@given(st.binary(max_size=200))
def test_acl_never_crashes(value):
    out = acl_to_xattr(b"\x01\x00\x00\x00" + value)
    assert out is None or (len(out) - 4) % 8 == 0


def _lookup(vol, path):
    ino = 2
    for part in path.split("/"):
        ino = next(i for n, i, _t in vol.dir_entries(vol.read_inode(ino), []) if n == part.encode())
    return ino


def _metadata_blocks(img):
    """Blocks worth breaking: group descriptors, the inode blocks of the root, dir/,
    bigdir/ (htree), a depth-1 extent file and a file with an xattr block, their
    directory, extent-tree and xattr blocks."""
    vol = Ext4Volume(FileSource(img))
    blocks = {1}
    inos = [2] + [_lookup(vol, p) for p in ("dir", "bigdir", "dir/fragmented", "dir/xattrs")]
    for ino in inos:
        blocks.add(vol.inode_location(ino) // vol.block_size)
        i = vol.read_inode(ino)
        meta: list = []
        runs = vol.block_map(i, [], meta)
        if i.ftype == 0o040000:
            for _l, n, p, _k in runs[:4]:
                blocks.update(range(p, p + min(n, 3)))
        blocks.update(b for b, _n in meta)
        if i.file_acl:
            blocks.add(i.file_acl)
    return sorted(blocks)


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(st.data())
def test_tree_walk_with_a_garbage_metadata_block(image, data):
    img = image[0]
    blocks = _metadata_blocks(img)
    blk = data.draw(st.sampled_from(blocks))
    mode = data.draw(st.sampled_from(["random", "flip", "zero"]))
    base = FileSource(img)
    orig = base.read(blk * 4096, 4096)
    if mode == "random":
        new = data.draw(st.binary(min_size=4096, max_size=4096))
    elif mode == "zero":
        new = bytes(4096)
    else:
        pos = data.draw(st.integers(0, 4095))
        new = orig[:pos] + bytes([orig[pos] ^ data.draw(st.integers(1, 255))]) + orig[pos + 1:]
    src = PatchedSource(base, {blk * 4096: new})
    report = []

    class R:
        def add(self, *a):
            report.append(a)

    with Timeout(20):
        try:
            fs = Ext4Filesystem(Ext4Volume(src), report=R())
        except PvfsError:
            return
        for count, (_p, node) in enumerate(walk(fs.root())):
            assert count < 100_000
            if isinstance(node, File):
                try:
                    node.source.read(0, 1 << 16)
                    node.source.block_status()
                except UnreadableError:
                    pass
            elif isinstance(node, Dir):
                assert len(node.children()) < 10_000
        paths, total = fs.files_in_ranges([(blk * 4096, 4096)])
        assert len(paths) <= 50 and total >= len(paths)
    # the per-entry safety net must never be what caught a problem
    assert [r for r in report if r[3] == "inode-parse-failed"] == []
