"""Bounded fuzzing of the btrfs parsers: garbage must give a BtrfsError, a damage entry
or EIO, never another exception, a hang or unbounded memory.

The strongest case re-seals the checksum after mutating a tree block of a
kernel-made image, so the garbage gets past the checksum into the item parsers.
"""

from __future__ import annotations

import re
import subprocess

import crc32c
import pytest
from btrfs_image import (
    build_image, cached_image, have_tools, open_image, populate_small, time_limit,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backends.btrfs import structs as S
from backends.btrfs.compress import DecompressError, decompress
from backends.btrfs.fs import parse_dir_items, parse_inode
from backends.btrfs.volume import BtrfsError, check_superblock, parse_node, parse_sys_chunk_array
from pvfs.errors import PvfsError, UnreadableError
from pvfs.nodes import File, Symlink, walk
from pvfs.source import FileSource, PatchedSource

FUZZ = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def _reseal(block: bytes) -> bytes:
    return crc32c.crc32c(block[32:]).to_bytes(4, "little") + block[4:]


@given(st.binary(min_size=0, max_size=4096))
@FUZZ
def test_superblock_garbage(raw):
    sb, why = check_superblock(raw.ljust(4096, b"\0"), 0)
    assert sb is None and why


@given(st.lists(st.tuples(st.integers(0x20, 4095), st.integers(0, 255)), max_size=12))
@FUZZ
def test_resealed_superblock_mutations(edits):
    raw = bytearray(4096)
    raw[0x40:0x48] = S.BTRFS_MAGIC
    raw[0x30:0x38] = (0x10000).to_bytes(8, "little")
    raw[0x90:0x98] = (4096).to_bytes(4, "little") + (16384).to_bytes(4, "little")
    for at, v in edits:
        raw[at] = v
    sb, why = check_superblock(_reseal(bytes(raw)), 0)
    if sb is not None:
        try:
            parse_sys_chunk_array(sb)
        except BtrfsError:
            pass


@given(st.binary(min_size=101, max_size=16384), st.integers(0, 7))
@FUZZ
def test_node_garbage(raw, level):
    block = bytearray(raw.ljust(16384, b"\0"))
    block[0x64] = level
    try:
        parse_node(bytes(block), 16384)
    except BtrfsError:
        pass


@given(st.binary(max_size=600))
@FUZZ
def test_item_parsers_garbage(raw):
    for fn in (parse_dir_items, lambda d: parse_inode(256, d)):
        try:
            fn(raw)
        except BtrfsError:
            pass


@given(st.sampled_from([1, 2, 3]), st.binary(max_size=3000), st.integers(0, 1 << 17))
@FUZZ
def test_decompress_garbage(kind, raw, ram):
    try:
        out = decompress(kind, raw, ram, 4096)
        assert len(out) == ram
    except DecompressError:
        pass


# -- mutated tree blocks of a real image ------------------------------------------------------
@pytest.fixture(scope="module")
def small():
    if have_tools() is not None:
        pytest.skip(have_tools())
    img, _view = cached_image("small-crc32c", lambda p: build_image(
        p, size=200 << 20, fill=populate_small))
    dump = subprocess.run(["btrfs", "inspect-internal", "dump-tree", str(img)], check=True,
                          capture_output=True, text=True, errors="replace").stdout
    blocks = sorted({int(b) for b in re.findall(r"^(?:leaf|node) (\d+) ", dump, re.M)})
    copies = {}
    for b in blocks:
        out = subprocess.run(["btrfs-map-logical", "-l", str(b), "-b", "16384", str(img)],
                             check=True, capture_output=True, text=True).stdout
        copies[b] = [int(p) for p in re.findall(r"physical (\d+)", out)]
    return img, blocks, copies


def _exercise(img, patches):
    ctx, tree = open_image(PatchedSource(FileSource(img), patches))
    internal = [e for e in ctx.report if e.code == "internal-error" or "hostile" in e.message]
    assert not internal, internal
    n = 0
    if tree is None:
        return ctx, 0
    for _path, node in walk(tree):
        n += 1
        if isinstance(node, File):
            try:
                node.source.read(0, min(node.size, 1 << 20))
                node.source.block_status(0, node.size)
            except UnreadableError:
                pass
        elif isinstance(node, Symlink):
            assert len(node.target) <= 1 << 16
    return ctx, n


@given(data=st.data())
@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_mutated_tree_blocks_resealed(small, data):
    img, blocks, copies = small
    f = FileSource(img)
    block = data.draw(st.sampled_from(blocks))
    raw = bytearray(f.read(copies[block][0], 16384))
    edits = data.draw(st.lists(st.tuples(st.integers(0x20, 16383), st.integers(0, 255)),
                               min_size=1, max_size=20))
    for at, v in edits:
        raw[at] = v
    sealed = _reseal(bytes(raw))
    patches = {p: sealed for p in copies[block]}  # every copy the same garbage
    with time_limit(60):
        try:
            _exercise(img, patches)
        except PvfsError:
            pass  # e.g. no usable root tree: a one-line error, which the CLI prints


def test_stale_mirror_of_another_filesystem_does_not_win():
    """pick_superblock: the highest generation among the copies of the primary's fsid."""
    from backends.btrfs.volume import pick_superblock

    class Sb:
        def __init__(self, mirror, fsid, gen):
            self.mirror, self.fsid, self.generation = mirror, fsid, gen

    a0, a1, old2 = Sb(0, b"A", 10), Sb(1, b"A", 11), Sb(2, b"B", 5000)
    assert pick_superblock([(0, a0, ""), (1, a1, ""), (2, old2, "")]) is a1
    assert pick_superblock([(0, None, "zeroed"), (1, a1, ""), (2, old2, "")]) is old2
    assert pick_superblock([(0, a0, ""), (1, Sb(1, b"A", 10), "")]) is a0
