"""jbd2 journal replay (backends/ext4/jbd2.py, recovery.py) against the kernel's own replay.

The dirty images are made by the real kernel (tests/ext4_dirty.py: a loop mount,
changes ended by fsync, a copy taken while mounted).  Ground truth is the same
image after the kernel replayed it (mounted read-write once): every block of
the volume read through pvfs's overlay must equal the kernel's, except the ext4
superblock and the journal superblock, which the kernel rewrites on mount.
"""

from __future__ import annotations

import os
import struct
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import ext4_dirty
from ext4_dirty import MAGIC, clean_image, dirty_image
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backends.ext4 import jbd2, recovery
from backends.ext4.superblock import Ext4Error, read_superblock
from pvfs.discover import Context, Options
from pvfs.errors import UnreadableError
from pvfs.source import FileSource, PatchedSource, Source

VARIANTS = list(ext4_dirty.VARIANTS)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="loop mounts need root")


class _Vol:
    def __init__(self, source, path="vms/100/disk-0.parts/p1"):
        self.source = source
        self.path = path


def _ctx(**opts):
    return Context(Options(backend_options=opts))


def _journal(source):
    sb = read_superblock(source)
    j, notes = recovery.open_journal(source, sb)
    return sb, j


def _differing_blocks(a: Source, b: Source, bs: int, chunk=1 << 20):
    out = []
    for off in range(0, a.size, chunk):
        x = np.frombuffer(a.read(off, chunk), np.uint8).reshape(-1, bs)
        y = np.frombuffer(b.read(off, chunk), np.uint8).reshape(-1, bs)
        out.extend((off // bs + np.nonzero((x != y).any(axis=1))[0]).tolist())
    return out


def _kernel_replay(image: Path) -> bool:
    """Let the kernel replay ``image`` (a copy): mount read-write, unmount.  Returns
    whether the mount succeeded; a refused mount may still have replayed blocks
    (``jbd2_journal_recover`` syncs what it replayed before ``jbd2_journal_load``
    fails on ``j_failed_commit``)."""
    with tempfile.TemporaryDirectory() as m:
        r = subprocess.run(["mount", "-o", "loop", str(image), m], capture_output=True)
        if r.returncode:
            return False
        subprocess.run(["umount", m], check=True)
    return True


# -- replay == the kernel's replay, block for block ---------------------------------------
@needs_root
@pytest.mark.parametrize("variant", VARIANTS)
def test_replay_matches_kernel(variant):
    d = dirty_image(variant)
    src = FileSource(d / "dirty.img")
    kernel = FileSource(d / "kernel.img")
    sb, j = _journal(src)
    assert sb.needs_recovery
    rec = j.recover()
    assert not rec.problems and not rec.kernel_would_fail
    assert rec.transactions >= 3  # three fsyncs after the last checkpoint
    overlay = jbd2.JournalOverlay(src, sb.block_size, rec)
    bs = sb.block_size
    sb_block = 1024 // bs
    jsb_block = j.bmap(0)
    diff = _differing_blocks(overlay, kernel, bs)
    assert diff == sorted({sb_block, jsb_block}), diff
    # not vacuous: without replay, many blocks differ from the kernel's view
    unreplayed = _differing_blocks(src, kernel, bs)
    assert len(unreplayed) >= 10
    assert set(rec.fs_blocks.tolist()) >= set(unreplayed) - {sb_block, jsb_block}
    if variant == "ext4-wrap":  # some replayed blocks come from after the wrap
        wrapped = {j.bmap(b) for b in range(j.sb.first_block, j.sb.start)}
        assert wrapped & set(rec.journal_blocks.tolist())
    if variant == "ext4-1k-journal":
        assert rec.escaped.any()  # magic.bin's data block went through the journal escaped
        i = int(np.nonzero(rec.escaped)[0][0])
        assert overlay.read(int(rec.fs_blocks[i]) * bs, 4) == MAGIC
    elif variant != "ext4-wrap":
        assert rec.nr_revoke_hits > 0  # the deleted directories' blocks were revoked
    assert rec.summary() == f"replayed {rec.transactions} transactions ({rec.blocks} blocks)"


@needs_root
def test_overlay_unaligned_reads_and_status():
    d = dirty_image("ext4-4k")
    src = FileSource(d / "dirty.img")
    kernel = FileSource(d / "kernel.img")
    sb, j = _journal(src)
    rec = j.recover()
    overlay = jbd2.JournalOverlay(src, sb.block_size, rec)
    bs = sb.block_size
    rng = np.random.default_rng(5)
    skip = {0, j.bmap(0)}
    for fsb in rec.fs_blocks[:50].tolist():
        if fsb in skip or fsb + 1 in skip:
            continue
        off = fsb * bs + int(rng.integers(1, bs - 1))
        n = int(rng.integers(1, 3 * bs))
        assert overlay.read(off, n) == kernel.read(off, n)
    st_ = overlay.block_status(0, overlay.size)
    assert sum(n for _o, n, _s in st_) == overlay.size


# -- the hook: needs_recovery, --guest-journal ignore, damage entries -------------------------
@needs_root
def test_hook_replays_and_reports():
    d = dirty_image("ext4-4k")
    src = FileSource(d / "dirty.img")
    sb = read_superblock(src)
    ctx = _ctx()
    meta, data, text = recovery.journal_overlay(_Vol(src), sb, ctx)
    assert isinstance(meta, jbd2.JournalOverlay) and data is meta
    assert text.startswith("replayed ") and text.endswith(" blocks)")
    e = [e for e in ctx.report if e.code == "journal-replayed"]
    assert len(e) == 1 and e[0].severity == "info" and text in e[0].message

    ctx = _ctx(guest_journal="ignore")
    meta, data, text = recovery.journal_overlay(_Vol(src), sb, ctx)
    assert meta is src and data is src
    assert text.startswith("not replayed (--guest-journal ignore): ")
    assert [e.code for e in ctx.report] == ["journal-ignored"]

    kernel = FileSource(d / "kernel.img")  # replayed and unmounted: clean journal
    ctx = _ctx()
    meta, _data, text = recovery.journal_overlay(_Vol(kernel), read_superblock(kernel), ctx)
    assert meta is kernel and text == "clean" and not list(ctx.report)


# -- a corrupt commit block: the kernel and pvfs replay the transactions before it ------------
def _commit_blocks(j):
    """Logical journal blocks of the commit blocks of the live log, in order."""
    out = []
    sb = j.sb
    blk, seq = sb.start, sb.sequence
    for _ in range(sb.maxlen):
        buf = j.jread(blk)
        magic, btype, s = struct.unpack_from(">III", buf)
        if magic != jbd2.JBD2_MAGIC_NUMBER or s != seq:
            break
        if btype == jbd2.JBD2_DESCRIPTOR_BLOCK:
            blk = j._wrap(blk + 1 + len(j.tags(buf)))
            continue
        if btype == jbd2.JBD2_COMMIT_BLOCK:
            out.append(blk)
            seq += 1
        blk = j._wrap(blk + 1)
    return out


@needs_root
@pytest.mark.parametrize("which", [-1, -2])
def test_corrupt_commit_checksum_replays_prefix(tmp_path, which):
    d = dirty_image("ext4-4k")
    src = FileSource(d / "dirty.img")
    sb, j = _journal(src)
    commits = _commit_blocks(j)
    assert len(commits) >= 3
    target = j.bmap(commits[which]) * sb.block_size
    # flip a byte of h_commit_nsec: the commit block's crc32c no longer matches
    old = src.read(target + 56, 1)
    patched = PatchedSource(src, {target + 56: bytes([old[0] ^ 0xFF])})
    sb2, j2 = _journal(patched)
    rec = j2.recover()
    assert rec.transactions == len(commits) + which
    codes = [p.code for p in rec.problems]
    assert codes == ["journal-commit-checksum"]
    assert rec.problems[0].ranges == [(target, sb.block_size)]
    # ground truth: the kernel mounts a copy with the same corruption and replays the prefix
    img = tmp_path / "corrupt.img"
    subprocess.run(["cp", "--sparse=always", str(d / "dirty.img"), str(img)], check=True)
    with open(img, "r+b") as f:
        f.seek(target + 56)
        f.write(bytes([old[0] ^ 0xFF]))
    assert rec.kernel_would_fail
    assert not _kernel_replay(img)  # "JBD2: journal transaction N is corrupt", after replay
    overlay = jbd2.JournalOverlay(patched, sb.block_size, rec)
    diff = _differing_blocks(overlay, FileSource(img), sb.block_size)
    assert not diff, diff
    assert len(_differing_blocks(patched, FileSource(img), sb.block_size)) >= 5
    # and the hook says so
    ctx = _ctx()
    _m, _d, text = recovery.journal_overlay(_Vol(patched), sb2, ctx)
    assert text == rec.summary()
    assert {e.code for e in ctx.report} == {"journal-commit-checksum", "journal-replayed"}


def _data_blocks(j):
    """Logical journal blocks holding logged data (not descriptors/commits/revokes), per
    transaction, in log order."""
    out = []
    sb = j.sb
    blk, seq = sb.start, sb.sequence
    cur = []
    for _ in range(sb.maxlen):
        buf = j.jread(blk)
        magic, btype, s = struct.unpack_from(">III", buf)
        if magic != jbd2.JBD2_MAGIC_NUMBER or s != seq:
            break
        blk = j._wrap(blk + 1)
        if btype == jbd2.JBD2_DESCRIPTOR_BLOCK:
            for _t in j.tags(buf):
                cur.append(blk)
                blk = j._wrap(blk + 1)
        elif btype == jbd2.JBD2_COMMIT_BLOCK:
            out.append(cur)
            cur = []
            seq += 1
    return out


@needs_root
@pytest.mark.parametrize("variant", ["ext4-4k", "ext3-csum-v1"])
def test_corrupt_logged_block(tmp_path, variant):
    """A flipped byte in a logged block of the last transaction.  csum v3: that block's tag
    checksum fails, it alone is left out (the kernel replays the rest, then fails the
    mount).  csum v1: the commit block's crc32_be over the transaction fails, the
    transaction is left out (the kernel replays the earlier ones, then fails the mount)."""
    d = dirty_image(variant)
    src = FileSource(d / "dirty.img")
    sb, j = _journal(src)
    per_tx = _data_blocks(j)
    victim = per_tx[-1][0]
    off = j.bmap(victim) * sb.block_size + 100
    flip = bytes([src.read(off, 1)[0] ^ 0x5A])
    patched = PatchedSource(src, {off: flip})
    _sb2, j2 = _journal(patched)
    rec = j2.recover()
    assert rec.kernel_would_fail
    if variant == "ext4-4k":
        assert rec.transactions == len(per_tx)
        assert [p.code for p in rec.problems] == ["journal-block-checksum"]
    else:
        assert rec.transactions == len(per_tx) - 1
        assert [p.code for p in rec.problems] == ["journal-commit-checksum"]
    img = tmp_path / "corrupt.img"
    subprocess.run(["cp", "--sparse=always", str(d / "dirty.img"), str(img)], check=True)
    with open(img, "r+b") as f:
        f.seek(off)
        f.write(flip)
    assert not _kernel_replay(img)
    overlay = jbd2.JournalOverlay(patched, sb.block_size, rec)
    assert not _differing_blocks(overlay, FileSource(img), sb.block_size)


@needs_root
def test_corrupt_descriptor_replays_prefix_kernel_refuses():
    d = dirty_image("ext4-4k")
    src = FileSource(d / "dirty.img")
    sb, j = _journal(src)
    commits = _commit_blocks(j)
    # the descriptor right after the first commit belongs to the second transaction
    desc = j._wrap(commits[0] + 1)
    off = j.bmap(desc) * sb.block_size
    patched = PatchedSource(src, {off + 20: b"\xff"})  # inside the first tag
    j2 = jbd2.Journal(patched, sb.block_size, _extents(j), j.total_len, sb.blocks_count)
    j2.load_superblock()
    r = j2.recover()
    assert r.transactions == 1 and r.kernel_would_fail
    assert [p.code for p in r.problems] == ["journal-checksum"]


def _extents(j):
    return j.extents


# -- unreadable journal: reported, unreplayed state -----------------------------------------
class _Holey(Source):
    def __init__(self, base, bad):
        super().__init__()
        self.base, self.bad, self.size, self.label = base, bad, base.size, "holey"

    def _read(self, offset, length):
        lo, hi = self.bad
        if offset < hi and offset + length > lo:
            raise UnreadableError("bad sector", [(max(lo, offset), min(hi, offset + length)
                                                  - max(lo, offset))])
        return self.base.read(offset, length)


@needs_root
def test_unreadable_journal_block_shows_unreplayed_state():
    d = dirty_image("ext4-4k")
    src = FileSource(d / "dirty.img")
    sb, j = _journal(src)
    commits = _commit_blocks(j)
    bad = j.bmap(commits[1] - 1) * sb.block_size  # a data block of transaction 2
    holey = _Holey(src, (bad, bad + 512))
    ctx = _ctx()
    meta, data, text = recovery.journal_overlay(_Vol(holey), sb, ctx)
    assert meta is holey and data is holey
    assert text == "unreadable, not replayed"
    e = [e for e in ctx.report if e.code == "journal-unreadable"]
    assert len(e) == 1 and e[0].severity == "error" and e[0].ranges == ((bad, 512),)


# -- fuzz: journal superblock, descriptor, revoke and commit blocks ----------------------------
_FUZZ = {}


def _fuzz_base(variant):
    if variant not in _FUZZ:
        d = dirty_image(variant)
        src = FileSource(d / "dirty.img")
        sb, j = _journal(src)
        log = [j.bmap(b) for b in range(j.sb.start, j.sb.start + 64)]
        _FUZZ[variant] = (src, sb, _extents(j), j.total_len, [j.bmap(0), *log])
    return _FUZZ[variant]


@needs_root
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(variant=st.sampled_from(["ext3", "ext4-4k"]),
       edits=st.lists(st.tuples(st.integers(0, 64), st.integers(0, 4095), st.binary(min_size=1, max_size=16)),
                      min_size=1, max_size=8))
def test_fuzz_journal_blocks(variant, edits):
    src, sb, ext, total, blocks = _fuzz_base(variant)
    bs = sb.block_size
    patches = {}
    for bi, off, blob in edits:
        patches[blocks[bi % len(blocks)] * bs + off % bs] = blob
    j = jbd2.Journal(PatchedSource(src, patches), bs, ext, total, sb.blocks_count)
    try:
        j.load_superblock()
    except jbd2.Jbd2Error:
        return
    rec = j.recover()
    assert rec.blocks <= j.total_len
    assert len(rec.fs_blocks) == len(rec.journal_blocks) == len(rec.escaped)
    assert (np.diff(rec.fs_blocks.astype(np.int64)) > 0).all()


@settings(max_examples=300, deadline=None)
@given(buf=st.binary(min_size=1024, max_size=1024), bs=st.sampled_from([1024, 4096]),
       total=st.integers(0, 1 << 33))
def test_fuzz_journal_superblock(buf, bs, total):
    raw = bytearray(buf)
    raw[0:4] = struct.pack(">I", jbd2.JBD2_MAGIC_NUMBER)  # get past the magic check
    try:
        j = jbd2.parse_journal_superblock(bytes(raw), bs, total)
    except jbd2.Jbd2Error:
        return
    assert 0 < j.first < j.maxlen <= total and j.last_block <= j.maxlen


@settings(max_examples=300, deadline=None)
@given(i_block=st.binary(min_size=60, max_size=60), flags=st.sampled_from([0, 0x80000]),
       nblocks=st.integers(0, 1 << 20))
def test_fuzz_journal_inode_map(i_block, flags, nblocks):
    zero = bytes(4096)
    try:
        ext = jbd2.iblock_extents(i_block, flags, nblocks, lambda n: zero, 4096,
                                  max_extents=10000)
    except jbd2.Jbd2Error:
        return
    assert all(lo + n <= nblocks for lo, _p, n in ext)


# -- backup superblocks -------------------------------------------------------------------------
@pytest.mark.parametrize("block_size,size,group", [(1024, "64M", 1), (4096, "300M", 1),
                                                   (2048, "200M", 1)])
@pytest.mark.parametrize("damage", ["zero", "garbage", "checksum"])
def test_backup_superblock(block_size, size, group, damage):
    d = clean_image(block_size, size)
    src = FileSource(d / "clean.img")
    intact = read_superblock(src)
    assert recovery.probe_backup(src) == 0.0  # the primary is fine: no backup claim
    if damage == "zero":
        patch = bytes(1024)
    elif damage == "garbage":
        patch = bytes(np.random.default_rng(1).integers(0, 256, 1024, np.uint8))
    else:  # one bit of the free-blocks count: only the crc32c says so
        raw = bytearray(src.read(1024, 1024))
        raw[0x0C] ^= 1
        patch = bytes(raw)
    bad = PatchedSource(src, {1024: patch})
    assert recovery.primary_problem(bad) is not None
    assert recovery.probe_backup(bad) == 40.0
    ctx = _ctx()
    sb, notes = recovery.load_superblock(_Vol(bad), ctx)
    assert sb.offset == intact.group_first_block(group) * block_size
    assert sb.sb.s_block_group_nr == group
    for f in ("block_size", "blocks_count", "blocks_per_group", "inodes_per_group",
              "inode_size", "desc_size", "uuid", "label", "csum_seed", "group_count"):
        assert getattr(sb, f) == getattr(intact, f), f
    e = [e for e in ctx.report if e.code == "superblock-backup"]
    assert len(e) == 1 and (e[0].severity, e[0].outcome) == ("info", "repaired")
    assert f"repaired from backup superblock in group {group}" in e[0].message
    assert notes == [e[0].message]
    # the group descriptors that follow the backup equal the primary's
    gd = intact.group_count * intact.desc_size
    assert bad.read(sb.offset + block_size, gd) == src.read(
        (intact.offset // block_size + 1) * block_size, gd)


def test_no_backup_superblock():
    src = PatchedSource(FileSource(Path(__file__)), {}, size=4 << 20)
    assert recovery.probe_backup(src) == 0.0
    with pytest.raises(Ext4Error, match="no backup superblock found"):
        recovery.load_superblock(_Vol(src), _ctx())


@needs_root
def test_backup_superblock_and_dirty_journal():
    """A zeroed primary on a dirty volume: the backup's needs_recovery flag is stale (set at
    mkfs), so the journal is replayed whenever it has a log (as e2fsck -b does)."""
    d = dirty_image("ext4-1k-journal")
    src = FileSource(d / "dirty.img")
    bad = PatchedSource(src, {1024: bytes(1024)})
    ctx = _ctx()
    sb, _notes = recovery.load_superblock(_Vol(bad), ctx)
    assert sb.sb.s_block_group_nr == 1 and not sb.needs_recovery
    meta, _data, text = recovery.journal_overlay(_Vol(bad), sb, ctx, from_backup=True)
    assert isinstance(meta, jbd2.JournalOverlay) and text.startswith("replayed ")
    kernel = FileSource(d / "kernel.img")
    jsb = recovery.open_journal(src, read_superblock(src))[0].bmap(0)
    assert _differing_blocks(meta, kernel, sb.block_size) == [1, jsb]  # 1: the zeroed primary


# -- what pvfs does not replay: reported ---------------------------------------------------------
@needs_root
def test_fast_commits_are_reported():
    d = dirty_image("ext4-fast-commit")
    src = FileSource(d / "dirty.img")
    sb = read_superblock(src)
    assert sb.needs_recovery
    ctx = _ctx()
    _meta, _data, text = recovery.journal_overlay(_Vol(src), sb, ctx)
    assert text.endswith(", fast commits not replayed")
    e = [e for e in ctx.report if e.code == "journal-fast-commit"]
    assert len(e) == 1 and e[0].severity == "warning"


@needs_root
def test_external_journal_device_is_reported():
    d = dirty_image("ext4-external")
    src = FileSource(d / "dirty.img")
    sb = read_superblock(src)
    assert sb.needs_recovery and sb.sb.s_journal_inum == 0 and any(sb.sb.s_journal_uuid)
    ctx = _ctx()
    meta, _data, text = recovery.journal_overlay(_Vol(src), sb, ctx)
    assert meta is src and text == "external journal device (not supported), not replayed"
    assert [(e.severity, e.code) for e in ctx.report] == [("warning", "journal-external")]


@needs_root
def test_aborted_journal_is_reported():
    """s_errno in the journal superblock (jbd2_journal_abort): a warning, replay goes on."""
    d = dirty_image("ext4-4k")
    src = FileSource(d / "dirty.img")
    sb, j = _journal(src)
    off = j.bmap(0) * sb.block_size
    raw = bytearray(src.read(off, 1024))
    raw[0x20:0x24] = struct.pack(">i", -5)  # -EIO
    raw[0xFC:0x100] = bytes(4)
    raw[0xFC:0x100] = struct.pack(">I", jbd2.crc32c(0xFFFFFFFF, bytes(raw)))
    ctx = _ctx()
    _m, _d, text = recovery.journal_overlay(_Vol(PatchedSource(src, {off: bytes(raw)})), sb, ctx)
    assert text.startswith("replayed ")
    e = [e for e in ctx.report if e.code == "journal-aborted"]
    assert len(e) == 1 and "EIO -5" in e[0].message


# -- the journal inode: the reader's map, and the superblock's backup of it ----------------
@needs_root
@pytest.mark.parametrize("variant", ["ext4-4k", "ext3", "ext4-wrap"])
def test_journal_map_equals_reader_and_backup(variant):
    from backends.ext4.volume import Ext4Volume

    d = dirty_image(variant)
    src = FileSource(d / "dirty.img")
    sb = read_superblock(src)
    ext, nblocks, notes = recovery.journal_extents(src, sb)
    assert not notes
    vol = Ext4Volume(src, src, sb)
    runs = vol.block_map(vol.read_inode(8))
    assert [(lo, ph, n) for lo, n, ph, _kind in runs] == ext
    assert sum(n for _lo, _ph, n in ext) == nblocks
    # the inode zeroed: the superblock's s_jnl_blocks copy gives the same map and replay
    off = vol.inode_location(8)
    bad = PatchedSource(src, {off: bytes(sb.inode_size)})
    ext2, nblocks2, notes2 = recovery.journal_extents(bad, sb)
    assert (ext2, nblocks2) == (ext, nblocks) and len(notes2) == 1
    ctx = _ctx()
    meta, _d, text = recovery.journal_overlay(_Vol(bad), sb, ctx)
    assert text.startswith("replayed ")
    assert "journal-inode" in [e.code for e in ctx.report]
    j, _ = recovery.open_journal(src, sb)
    diff = _differing_blocks(meta, FileSource(d / "kernel.img"), sb.block_size)
    assert set(diff) <= {1024 // sb.block_size, j.bmap(0), off // sb.block_size}, diff


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(edits=st.lists(st.tuples(st.integers(0, 1023), st.binary(min_size=1, max_size=8)),
                      max_size=6), bs=st.sampled_from([1024, 4096]))
def test_fuzz_backup_superblock(edits, bs):
    """A zeroed primary and a damaged backup in group 1: probe_backup and load_superblock
    give a checked backup or a clean Ext4Error, never anything else."""
    d = clean_image(1024, "64M") if bs == 1024 else clean_image(4096, "300M")
    src = FileSource(d / "clean.img")
    backup = (8 * bs + (1 if bs == 1024 else 0)) * bs
    patches = {1024: bytes(1024)}
    for off, blob in edits:
        patches[backup + off] = blob
    bad = PatchedSource(src, patches)
    score = recovery.probe_backup(bad)
    try:
        sb, _notes = recovery.load_superblock(_Vol(bad), _ctx())
    except Ext4Error:
        return
    assert score in (0.0, 40.0)
    assert sb.offset % bs == 0 and sb.sb.s_block_group_nr in (1, 3, 5, 7)


@needs_root
def test_replay_bug_keeps_the_filesystem(monkeypatch):
    """An unexpected error inside the replay is reported and the unreplayed state shown,
    instead of losing the whole filesystem to a failed open."""
    d = dirty_image("ext4-4k")
    src = FileSource(d / "dirty.img")

    def boom(self):
        raise IndexError("simulated")
    monkeypatch.setattr(jbd2.Journal, "recover", boom)
    ctx = _ctx()
    meta, _d, text = recovery.journal_overlay(_Vol(src), read_superblock(src), ctx)
    assert meta is src and text == "replay failed, not replayed"
    e = [e for e in ctx.report if e.code == "journal-replay-failed"]
    assert len(e) == 1 and "IndexError: simulated" in e[0].message


@needs_root
def test_recovery_flag_clear_is_not_replayed(tmp_path):
    """A log with needs_recovery clear: the kernel wipes it (jbd2_journal_wipe) instead of
    replaying, and so does pvfs, saying so."""
    from backends.ext4.superblock import ext4_chksum

    d = dirty_image("ext4-4k")
    src = FileSource(d / "dirty.img")
    raw = bytearray(src.read(1024, 1024))
    raw[0x60] &= ~0x04  # EXT4_FEATURE_INCOMPAT_RECOVER
    raw[0x3FC:0x400] = struct.pack("<I", ext4_chksum(0xFFFFFFFF, bytes(raw[:0x3FC])))
    patched = PatchedSource(src, {1024: bytes(raw)})
    sb = read_superblock(patched)
    assert not sb.needs_recovery and sb.checksum_ok()
    ctx = _ctx()
    meta, _d, text = recovery.journal_overlay(_Vol(patched), sb, ctx)
    assert meta is patched and text == "not replayed (recovery flag clear)"
    assert [e.code for e in ctx.report] == ["journal-not-needed"]
    img = tmp_path / "flag-clear.img"
    subprocess.run(["cp", "--sparse=always", str(d / "dirty.img"), str(img)], check=True)
    with open(img, "r+b") as f:
        f.seek(1024)
        f.write(raw)
    assert _kernel_replay(img)
    j, _ = recovery.open_journal(src, sb)
    assert set(_differing_blocks(patched, FileSource(img), sb.block_size)) <= {0, j.bmap(0)}


# -- every tag format, written by e2fsprogs (debugfs journal_write), replayed by the kernel -----
@needs_root
@pytest.mark.parametrize("mkfs_opts,jo,tag_bytes", [
    (["-O", "64bit"], "-c -v 3", 16),
    (["-O", "^64bit"], "-c -v 3", 16),
    (["-O", "64bit"], "-c -v 2", 14),
    (["-O", "^64bit"], "-c -v 2", 10),
    (["-O", "64bit,^metadata_csum"], "-c", 12),   # checksum v1
    (["-O", "^64bit,^metadata_csum"], "", 8),     # no checksums, 32-bit tags
])
def test_tag_formats_written_by_debugfs(tmp_path, mkfs_opts, jo, tag_bytes):
    img = tmp_path / "fs.img"
    subprocess.run(["truncate", "-s", "64M", str(img)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "4096", *mkfs_opts, str(img)], check=True)
    rng = np.random.default_rng(len(jo) + tag_bytes)
    a = tmp_path / "a.bin"
    a.write_bytes(rng.integers(0, 256, 3 * 4096, np.uint8).tobytes())
    b = tmp_path / "b.bin"  # starts with the jbd2 magic: logged escaped
    b.write_bytes(MAGIC + rng.integers(0, 256, 4092, np.uint8).tobytes())
    cmds = tmp_path / "cmds"
    cmds.write_text(f"jo {jo}\n"
                    f"jw -b 3000,3001,3002 {a}\n"
                    f"jw -r 3001\n"            # revokes the first transaction's 3001
                    f"jw -b 3003 {b}\n"
                    f"jw -b 3000 {b}\n"        # a later write of 3000 wins
                    f"jc\n")
    subprocess.run(["debugfs", "-w", "-f", str(cmds), str(img)], check=True,
                   capture_output=True)
    src = FileSource(img)
    sb, j = _journal(src)
    assert sb.needs_recovery and j.sb.tag_bytes == tag_bytes
    rec = j.recover()
    overlay = jbd2.JournalOverlay(src, sb.block_size, rec)
    kernel = tmp_path / "kernel.img"
    subprocess.run(["cp", "--sparse=always", str(img), str(kernel)], check=True)
    mounted = _kernel_replay(kernel)
    if j.sb.csum_v1:
        # debugfs gives the revoke-only transaction a v1 commit checksum the kernel
        # rejects ("journal transaction 2 is corrupt"): it replays transaction 1 and
        # refuses the mount; pvfs replays the same and reports it.
        assert not mounted and rec.transactions == 1 and rec.kernel_would_fail
        assert [p.code for p in rec.problems] == ["journal-commit-checksum"]
        assert not _differing_blocks(overlay, FileSource(kernel), 4096)
        return
    assert mounted and not rec.problems and rec.transactions == 4
    assert rec.nr_revoke_hits == 1 and int(rec.escaped.sum()) == 2
    assert _differing_blocks(overlay, FileSource(kernel), 4096) == [0, j.bmap(0)]
    assert overlay.read(3003 * 4096, 4096) == b.read_bytes()
    assert overlay.read(3000 * 4096, 4096) == b.read_bytes()  # the later write wins
    assert overlay.read(3001 * 4096, 4096) == src.read(3001 * 4096, 4096)  # revoked


class _BlockPatched(Source):
    """``base`` with whole blocks replaced (a dict lookup per block read: PatchedSource
    scans its patch list on every read, too slow for thousands of patches)."""

    def __init__(self, base, patches, bs):
        super().__init__()
        self.base, self.patches, self.bs = base, patches, bs
        self.size, self.label = base.size, "block-patched"

    def _read(self, offset, length):
        if length == self.bs and offset in self.patches:
            return self.patches[offset]
        assert not any(offset <= o < offset + length for o in self.patches)
        return self.base.read(offset, length)


@needs_root
def test_hostile_revoke_flood_is_bounded():
    """Every block of the log a full revoke block, then a commit: a million revoke records
    go through numpy arrays, not Python dicts; peak memory and time stay small."""
    import time
    import tracemalloc

    d = dirty_image("ext3")
    src = FileSource(d / "dirty.img")
    sb, j = _journal(src)
    bs, seq = sb.block_size, j.sb.sequence
    rblock = bytearray(bs)
    struct.pack_into(">IIII", rblock, 0, jbd2.JBD2_MAGIC_NUMBER, jbd2.JBD2_REVOKE_BLOCK, seq, bs)
    rblock[16:] = np.arange(16, bs // 4 * 4 // 4 * 4, 4, dtype=">u4").tobytes()[:bs - 16]
    commit = bytearray(bs)
    struct.pack_into(">III", commit, 0, jbd2.JBD2_MAGIC_NUMBER, jbd2.JBD2_COMMIT_BLOCK, seq)
    log = list(range(j.sb.first_block, j.sb.last_block))
    patches = {j.bmap(b) * bs: bytes(rblock) for b in log[:-1]}
    patches[j.bmap(log[-1]) * bs] = bytes(commit)
    sbuf = bytearray(src.read(j.bmap(0) * bs, bs))
    struct.pack_into(">I", sbuf, 0x1C, j.sb.first_block)  # s_start
    patches[j.bmap(0) * bs] = bytes(sbuf)
    j2 = jbd2.Journal(_BlockPatched(src, patches, bs), bs, j.extents, j.total_len,
                      sb.blocks_count)
    j2.load_superblock()
    tracemalloc.start()
    t0 = time.time()
    rec = j2.recover()
    _cur, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert rec.transactions == 1 and rec.nr_revokes >= 1_000_000 and not rec.blocks
    assert peak < 100 << 20, peak
    assert time.time() - t0 < 20


@needs_root
def test_v1_journal_superblock(tmp_path):
    """A version-1 journal superblock (JBD2_SUPERBLOCK_V1: no feature fields) on the ext3
    log: replayed as the kernel replays it."""
    d = dirty_image("ext3")
    src = FileSource(d / "dirty.img")
    sb, j = _journal(src)
    off = j.bmap(0) * sb.block_size
    raw = bytearray(src.read(off, 1024))
    raw[4:8] = struct.pack(">I", jbd2.JBD2_SUPERBLOCK_V1)
    raw[0x24:0x30] = bytes(12)  # a v1 superblock has no feature words
    patched = PatchedSource(src, {off: bytes(raw)})
    _sb, j1 = _journal(patched)
    assert j1.sb.version == 1 and not j1.sb.features()
    rec = j1.recover()
    assert not rec.problems and rec.transactions >= 3
    img = tmp_path / "v1.img"
    subprocess.run(["cp", "--sparse=always", str(d / "dirty.img"), str(img)], check=True)
    with open(img, "r+b") as f:
        f.seek(off)
        f.write(raw)
    assert _kernel_replay(img)
    overlay = jbd2.JournalOverlay(patched, sb.block_size, rec)
    assert _differing_blocks(overlay, FileSource(img), sb.block_size) == [0, j.bmap(0)]


@needs_root
@pytest.mark.parametrize("age", [-1000, 1000])
def test_stale_transaction_after_the_log(tmp_path, age):
    """After the last commit, a descriptor with the next sequence but a bad checksum and
    a commit block (``need_check_commit_time``).  An older commit time is a stale block of
    an earlier log: the log ends there, all transactions replay (the kernel mounts).  A
    newer one is corruption: the kernel fails the whole recovery and refuses the mount;
    pvfs replays the transactions before it and says so."""
    d = dirty_image("ext4-4k")
    src = FileSource(d / "dirty.img")
    sb, j = _journal(src)
    bs = sb.block_size
    commits = _commit_blocks(j)
    full = j.recover()
    first_desc = bytearray(j.jread(j.sb.start))
    assert struct.unpack_from(">I", first_desc, 4)[0] == jbd2.JBD2_DESCRIPTOR_BLOCK
    struct.pack_into(">I", first_desc, 8, full.end_transaction)
    ntags = len(j.tags(first_desc))
    last_commit = bytearray(j.jread(commits[-1]))
    sec = struct.unpack_from(">Q", last_commit, 48)[0]
    struct.pack_into(">I", last_commit, 8, full.end_transaction)
    struct.pack_into(">Q", last_commit, 48, sec + age)
    dpos = j._wrap(commits[-1] + 1)
    cpos = j._wrap(dpos + 1 + ntags)
    patches = {j.bmap(dpos) * bs: bytes(first_desc), j.bmap(cpos) * bs: bytes(last_commit)}
    patched = PatchedSource(src, patches)
    _sb, j2 = _journal(patched)
    rec = j2.recover()
    img = tmp_path / "stale.img"
    subprocess.run(["cp", "--sparse=always", str(d / "dirty.img"), str(img)], check=True)
    with open(img, "r+b") as f:
        for off, blob in patches.items():
            f.seek(off)
            f.write(blob)
    mounted = _kernel_replay(img)
    if age < 0:
        assert mounted and not rec.problems and rec.transactions == full.transactions
        overlay = jbd2.JournalOverlay(patched, bs, rec)
        assert _differing_blocks(overlay, FileSource(img), bs) == [0, j.bmap(0)]
    else:
        assert not mounted and rec.kernel_would_fail
        assert rec.transactions == full.transactions
        assert [p.code for p in rec.problems] == ["journal-checksum"]
