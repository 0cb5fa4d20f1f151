"""ZFS damage handling: truncated and corrupted members, gang blocks, hostile trees.

Damaged copies are made in memory (overlay sources over the fixture images), so nothing
is written.  Every read either returns the manifest's bytes or raises EIO
(UnreadableError); nothing else may escape, and discovery never raises."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from backends.zfs import checksum
from backends.zfs.backend import ZfsBackend
from backends.zfs.blkptr import BlkPtr
from backends.zfs.pool import Pool
from backends.zfs.vdev import Leaf
from pvfs.discover import Context, Options, Volume
from pvfs.errors import UnreadableError
from pvfs.nodes import resolve
from pvfs.source import PatchedSource, BytesSource, FileSource, SliceSource

from conftest import FIXTURES, require_fixture, sha256_source, unpack




def _open_pool(sources, bad=None):
    """Run the ZFS backend on ``sources`` as if discovery had found them."""
    ctx = Context(Options(bad=bad))
    be = ZfsBackend()
    vols = []
    for i, src in enumerate(sources):
        v = Volume(src, f"storage/files/m{i}", f"m{i}", "input")
        vols.append(v)
    keyed = [v for v in vols if be.probe(v, ctx) > 0]
    if keyed:
        be.open_group(be.member_key(keyed[0], ctx), keyed, ctx)
    return ctx


def _members(archive):
    d = unpack(require_fixture("zfs", "images", archive))
    return [FileSource(p) for p in sorted(d.rglob("*.img"))]


def _files(manifest, ds):
    m = json.loads((FIXTURES / "zfs" / "manifests" / manifest).read_text())
    return {rel: e for rel, e in m["datasets"][ds]["tree"].items()
            if e.get("type") == "file" and "sha256" in e}


def _read_all(ctx, root, files):
    good = eio = 0
    for rel, e in files.items():
        node = resolve(ctx.root, f"{root}/{rel}")
        if node is None:
            eio += 1
            continue
        try:
            h = sha256_source(node.source)
        except UnreadableError:
            eio += 1
            continue
        if h == e["sha256"]:
            good += 1
        else:
            eio += 1
    return good, eio


def test_truncated_mirror_member_is_covered_by_its_twin():
    """d0 cut to half (labels 2/3 and half the data gone): d1 holds every block."""
    d0, d1 = _members("fxmirror.tar.xz")
    half = SliceSource(d0, 0, d0.size // 2)
    ctx = _open_pool([half, d1])
    good, eio = _read_all(ctx, "storage/zfs/fxmirror", _files("fxmirror.json", "fxmirror"))
    assert eio == 0 and good > 50


def test_pool_state_faulted_when_a_vdev_lost_more_than_its_parity():
    members = _members("fxraidz1.tar.xz")
    ctx = _open_pool(members[:1])
    states = [e for e in ctx.report if e.code in ("pool-state", "vdev-faulted")]
    assert any("FAULTED" in e.message for e in states)
    assert any(e.code == "vdev-faulted" and "lost 2 members" in e.message for e in states)
    ctx = _open_pool(members)
    assert not [e for e in ctx.report if e.code in ("pool-state", "vdev-faulted")]


def test_truncated_single_member_reads_what_is_there():
    """Only the first half of d0 (no twin): blocks past the cut are EIO, never garbage."""
    d0, _ = _members("fxmirror.tar.xz")
    ctx = _open_pool([SliceSource(d0, 0, d0.size // 2)])
    files = _files("fxmirror.json", "fxmirror")
    if resolve(ctx.root, "storage/zfs/fxmirror") is None:  # MOS beyond the cut: reported
        assert any(e.severity == "error" for e in ctx.report)
        return
    good, eio = _read_all(ctx, "storage/zfs/fxmirror", files)
    assert good + eio == len(files)


def test_mirror_with_both_members_zeroed_in_the_data_area():
    """8 MiB of zeros at the same place on both members: metadata survives through its
    ditto copies elsewhere (repairs reported), data blocks there are EIO, the rest reads."""
    d0, d1 = _members("fxmirror.tar.xz")
    zero = {4 << 20: bytes(8 << 20)}
    ctx = _open_pool([PatchedSource(d0, zero), PatchedSource(d1, zero)])
    good, eio = _read_all(ctx, "storage/zfs/fxmirror", _files("fxmirror.json", "fxmirror"))
    assert good > 1000 and eio > 0
    codes = {e.code for e in ctx.report}
    assert {"checksum-repaired", "unreadable-block"} <= codes


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(4 << 20, 60 << 20),
                          st.binary(min_size=1, max_size=64)), min_size=1, max_size=30))
def test_fuzz_corrupt_raidz1_members(patches):
    """Random corruption of raidz1 members: discovery never raises; every file reads
    back correctly (parity and ditto copies repair) or fails with EIO."""
    members = _members_cached()
    over = [{} for _ in members]
    for m, off, blob in patches:
        over[m][off] = blob
    ctx = _open_pool([PatchedSource(src, o) for src, o in zip(members, over, strict=False)])
    files = _files_cached()
    root = resolve(ctx.root, "storage/zfs/fxraidz1")
    if root is None:
        return
    picked = dict(list(files.items())[::17])
    good, eio = _read_all(ctx, "storage/zfs/fxraidz1", picked)
    assert good + eio == len(picked)


_C = {}


def _members_cached():
    if "m" not in _C:
        _C["m"] = _members("fxraidz1.tar.xz")
    return _C["m"]


def _files_cached():
    if "f" not in _C:
        _C["f"] = _files("fxraidz1.json", "fxraidz1")
    return _C["f"]


# -- gang blocks (no fixture has one: built here from the on-disk layout) -----------------
def _bp(words):
    return struct.pack("<16Q", *words)


def _data_bp(offset, psize, cksum, lsize=None, comp=2, typ=19):
    lsize = lsize or psize
    w = [0] * 16
    w[0] = psize >> 9  # vdev 0, asize in sectors
    w[1] = offset >> 9
    w[6] = (1 << 63) | (typ << 48) | (7 << 40) | (comp << 32) | ((psize // 512 - 1) << 16) | (lsize // 512 - 1)
    w[9] = w[10] = 5  # birth
    w[12:16] = cksum
    return w


def test_gang_block_is_assembled_from_its_children():
    a, b = bytes(range(256)) * 4, b"\x5a" * 512  # 1024 + 512 bytes of data
    data = a + b
    disk = bytearray(8 << 20)
    base = 4 << 20  # DVA offsets start after the 4 MiB label/boot reserve
    disk[base + 0x2000:base + 0x2000 + len(a)] = a
    disk[base + 0x3000:base + 0x3000 + len(b)] = b
    c1 = _data_bp(0x2000, len(a), checksum.fletcher4(a))
    c2 = _data_bp(0x3000, len(b), checksum.fletcher4(b))
    header = bytearray(512)
    header[0:128] = _bp(c1)
    header[128:256] = _bp(c2)
    gang_off = 0x1000
    header[-40:-32] = struct.pack("<Q", 0x0210DA7AB10C7A11)
    header[-32:] = struct.pack("<4Q", 0, gang_off, 5, 0)  # verifier: vdev, offset, birth
    header[-32:] = struct.pack("<4Q", *checksum.sha256_words(bytes(header)))
    disk[base + gang_off:base + gang_off + 512] = header
    w = _data_bp(gang_off, len(data), checksum.fletcher4(data))
    w[0] = 1  # asize of the gang header: one sector
    w[1] = (1 << 63) | (gang_off >> 9)  # the gang bit
    gbp = BlkPtr(_bp(w), True)
    assert gbp.dvas[0].gang
    pool = Pool("t", 1, {}, [Leaf(1, "mem", BytesSource(bytes(disk)))])
    assert pool.read_bp(gbp) == data
    # a damaged gang header: the block is unreadable, not wrong
    disk[base + gang_off + 7] ^= 0xFF
    pool = Pool("t", 1, {}, [Leaf(1, "mem", BytesSource(bytes(disk)))])
    with pytest.raises(UnreadableError):
        pool.read_bp(gbp)


def test_ditto_copy_used_when_the_first_is_corrupt():
    blk = b"ditto!" * 85 + b"xx"
    disk = bytearray(6 << 20)
    base = 4 << 20
    disk[base + 0x1000:base + 0x1200] = b"\xee" * 512  # copy 1: garbage
    disk[base + 0x8000:base + 0x8200] = blk  # copy 2: good
    w = _data_bp(0x1000, 512, checksum.fletcher4(blk))
    w[2], w[3] = 1, 0x8000 >> 9  # second DVA
    pool = Pool("t", 1, {}, [Leaf(1, "mem", BytesSource(bytes(disk)))])
    assert pool.read_bp(BlkPtr(_bp(w), True)) == blk
    assert pool.repairs == 1


def test_two_damaged_images_of_the_same_disk_complete_each_other():
    """Two partial images of one member (say two ddrescue runs): each has a hole where the
    other has data; together every file of the single-disk stripe member reads back."""
    d0, d1 = _members("fxstripe.tar.xz")
    hole_a = {4 << 20: bytes(6 << 20)}
    hole_b = {10 << 20: bytes(6 << 20)}
    only_a = _open_pool([PatchedSource(d0, hole_a), d1])
    both = _open_pool([PatchedSource(d0, hole_a), PatchedSource(d0, hole_b), d1])
    files = _files("fxstripe.json", "fxstripe")
    good_a, eio_a = _read_all(only_a, "storage/zfs/fxstripe", files)
    good, eio = _read_all(both, "storage/zfs/fxstripe", files)
    assert eio_a > 0 and eio == 0 and good == len(files)
    assert any(e.code == "duplicate-member" for e in both.report)


def test_member_with_its_front_labels_wiped_still_joins_its_pool():
    """The first 512 KiB of d0 overwritten (labels 0 and 1 gone, as after a stray
    partitioning tool): labels 2/3 at the end identify it; every file reads back and
    the lost labels are reported."""
    members = _members("fxraidz1.tar.xz")
    wiped = PatchedSource(members[0], {0: b"\x55" * (512 * 1024)})
    ctx = _open_pool([wiped] + members[1:])
    files = _files("fxraidz1.json", "fxraidz1")
    good, eio = _read_all(ctx, "storage/zfs/fxraidz1", dict(list(files.items())[::5]))
    assert eio == 0 and good > 50
    bad = [e for e in ctx.report if e.code == "bad-label"]
    assert {"label 0", "label 1"} <= {e.message.split(": ")[1] for e in bad}
    assert not any(e.code == "missing-member" for e in ctx.report)
