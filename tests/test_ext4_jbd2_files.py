"""Dirty and damaged ext4 volumes through discovery: every entry against the kernel's view.

- replayed (default): the tree equals the kernel's view after it replayed the journal of a
  copy on mount (``kernel.img`` of tests/ext4_dirty.py, walked read-only);
- ``--guest-journal ignore``: the tree equals ``mount -o ro,noload`` of the dirty copy;
- a zeroed primary superblock: the same files as the intact volume, repaired from a backup.
"""

from __future__ import annotations

import hashlib
import json
import subprocess

import pytest
from ext4_build import compare_tree, kernel_truth, need_root
from ext4_dirty import VARIANTS, clean_image, dirty_image
from mountutil import needs_fuse, pvfs_mounted

from backends.ext4 import recovery
from backends.ext4.superblock import read_superblock
from pvfs.discover import Options, discover
from pvfs.nodes import resolve
from pvfs.report import report_text
from pvfs.source import FileSource, PatchedSource

_TRUTH: dict = {}


def _truth(image, opts="", unreadable: list | None = None):
    """The kernel's view of ``image``, once; entries it cannot read go to ``unreadable``
    (kernel_truth) when a list is given, else they fail."""
    key = (str(image), opts)
    if key not in _TRUTH:
        lost: list = []
        _TRUTH[key] = (kernel_truth(image, opts, lost), lost)
    truth, lost = _TRUTH[key]
    if unreadable is None:
        assert not lost, f"the kernel cannot read {lost[:5]}"
    else:
        unreadable += lost
    return truth


def _open(image, **opts):
    ctx = discover([str(image)], Options(backend_options=opts))
    vols = [v for v in ctx.volumes if v.guestfs is not None]
    assert len(vols) == 1, [(v.path, v.filesystem) for v in ctx.volumes]
    return ctx, vols[0]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_replayed_tree_equals_kernel(variant):
    need_root()
    d = dirty_image(variant)
    truth = _truth(d / "kernel.img")
    ctx, vol = _open(d / "dirty.img")
    n, bad = compare_tree(vol.guestfs_root, truth)
    assert not bad, bad[:20]
    assert n == len(truth) >= 10
    info = vol.guestfs.info
    assert info.journal.startswith("replayed ") and info.clean is False
    codes = [e.code for e in ctx.report if e.layer == "ext4"]
    assert "journal-replayed" in codes
    # the unreplayed state differs: the test is not vacuous
    assert _truth(d / "dirty.img", "noload", []) != truth
    assert "srv/www/index.html" in truth
    if variant != "ext4-wrap":  # (there, later commits took it along)
        assert "uncommitted.txt" not in truth


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_ignore_equals_noload(variant):
    need_root()
    d = dirty_image(variant)
    unreadable: list = []
    truth = _truth(d / "dirty.img", "noload", unreadable)  # mount -o ro,noload
    ctx, vol = _open(d / "dirty.img", guest_journal="ignore")
    n, bad = compare_tree(vol.guestfs_root, truth)
    assert not bad, bad[:20]
    assert n == len(truth)
    # what the kernel cannot read there (the log wrapped past inodes whose table block was
    # never written home: zeroed) is left out of our view too, each with an error entry
    errors = {e.path.split("disk.files/", 1)[-1] for e in ctx.report if e.severity == "error"}
    assert set(unreadable) <= errors, (unreadable, errors)
    assert vol.guestfs.info.journal.startswith("not replayed (--guest-journal ignore)")
    assert "journal-ignored" in [e.code for e in ctx.report]


@pytest.mark.parametrize("block_size,size", [(1024, "64M"), (4096, "300M")])
def test_zeroed_primary_superblock_same_files(block_size, size, tmp_path):
    need_root()
    d = clean_image(block_size, size)
    truth = _truth(d / "clean.img")
    src = FileSource(d / "clean.img")
    bad_src = PatchedSource(src, {1024: bytes(1024)})
    from pvfs.discover import Context, Volume
    from backends.ext4.backend import Ext4Backend

    ctx = Context()
    vol = Volume(bad_src, "storage/files/clean.img", "clean.img", "disk")
    backend = Ext4Backend()
    assert 0 < backend.probe(vol, ctx) < 50
    backend.open(vol, ctx)
    n, bad = compare_tree(vol.guestfs_root, truth)
    assert not bad, bad[:20]
    assert n == len(truth)
    e = [e for e in ctx.report if e.code == "superblock-backup"]
    assert len(e) == 1 and "repaired from backup superblock in group 1" in e[0].message


@needs_fuse
def test_fuse_mount_reads_replayed_files(tmp_path):
    """Through a real FUSE mount (pvfs mount, as a user would): a file that exists only in
    the journal is read with the kernel's bytes; --guest-journal ignore hides it."""
    need_root()
    d = dirty_image("ext4-4k")
    truth = _truth(d / "kernel.img")
    base = "storage/files/dirty.img/disk.files"
    with pvfs_mounted([d / "dirty.img"], tmp_path / "m") as m:
        for rel in ("srv/www/index.html", "home/user/big.bin", "home/user/notes.txt"):
            data = (m / base / rel).read_bytes()
            assert hashlib.sha256(data).hexdigest() == truth[rel]["sha256"], rel
        report = json.loads((m / "report.json").read_text())
        assert "journal-replayed" in {e["code"] for e in report["damage"]}
    with pvfs_mounted([d / "dirty.img"], tmp_path / "m2", "--guest-journal", "ignore") as m:
        assert not (m / base / "srv").exists()
        assert (m / base / "etc" / "old.conf").exists()  # renamed in transaction 2


def test_journal_on_bad_sectors_shows_unreplayed_state(tmp_path):
    """A ddrescue mapfile marks one logged block of the journal bad: the journal is not
    replayed, the report names the bytes, and the tree is the unreplayed (noload) state."""
    need_root()
    d = dirty_image("ext4-4k")
    src = FileSource(d / "dirty.img")
    sb = read_superblock(src)
    j, _ = recovery.open_journal(src, sb)
    bad = j.bmap(j.sb.start + 3) * sb.block_size  # inside the first transaction's blocks
    link = tmp_path / "dirty.img"
    link.symlink_to(d / "dirty.img")
    size = src.size
    (tmp_path / "dirty.img.map").write_text(
        f"0 +\n0x0 {bad:#x} +\n{bad:#x} 0x200 -\n{bad + 0x200:#x} {size - bad - 0x200:#x} +\n")
    ctx, vol = _open(link)
    assert vol.guestfs.info.journal == "unreadable, not replayed"
    e = [e for e in ctx.report if e.code == "journal-unreadable"]
    assert len(e) == 1 and e[0].severity == "error" and e[0].ranges == ((bad, 0x200),)
    n, bad_entries = compare_tree(vol.guestfs_root, _truth(d / "dirty.img", "noload"))
    assert not bad_entries, bad_entries[:20]


def test_dirty_guest_in_a_vm_disk(tmp_path):
    """The dirty filesystem as partition 1 of a GPT disk in a qcow2 named like a Proxmox
    disk: vms/100/disk-0.files/p1 shows the replayed tree and the report names the replay
    on that partition."""
    need_root()
    d = dirty_image("ext4-4k")
    raw = tmp_path / "disk.raw"
    fs_size = (d / "dirty.img").stat().st_size
    subprocess.run(["truncate", "-s", str(fs_size + (2 << 20)), str(raw)], check=True)
    subprocess.run(["sgdisk", "-n", f"1:2048:+{fs_size // 512}", str(raw)], check=True,
                   capture_output=True)
    subprocess.run(["dd", f"if={d / 'dirty.img'}", f"of={raw}", "bs=1M", "seek=1",
                    "conv=notrunc,sparse", "status=none"], check=True)
    qcow = tmp_path / "vm-100-disk-0.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(qcow)], check=True)
    raw.unlink()
    ctx = discover([str(qcow)])
    truth = _truth(d / "kernel.img")
    node = resolve(ctx.root, "vms/100/disk-0.files/p1/srv/www/index.html")
    data = node.source.read(0, node.size)
    assert hashlib.sha256(data).hexdigest() == truth["srv/www/index.html"]["sha256"]
    root = resolve(ctx.root, "vms/100/disk-0.files/p1")
    n, bad = compare_tree(root, truth)
    assert not bad and n == len(truth)
    e = [e for e in ctx.report if e.code == "journal-replayed"]
    assert len(e) == 1 and e[0].path.endswith("vm-100-disk-0.qcow2/p1")
    vol = next(v for v in ctx.volumes if v.guestfs is not None)
    assert vol.guestfs.info.journal.startswith("replayed ")
    assert vol.guestfs.info.journal in report_text(ctx)
