"""Where the core shows a guest filesystem's files (pvfs.guestfs contract).

A stand-in filesystem (one file) is laid on the partitions that discovery
found in the bundled example, so this checks only the core's placement and
damage mapping; the filesystem readers have their own tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pvfs.backend import load_backends
from pvfs.discover import discover, finish, map_filesystem_damage
from pvfs.guestfs import FilesystemInfo, GuestFilesystem
from pvfs.nodes import Dir, File, resolve
from pvfs.report import report_doc, report_text
from pvfs.source import BytesSource

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(autouse=True)
def _no_real_ext4(monkeypatch):
    """The examples' p2 is a real ext4, which the ext4 backend now opens; the stand-in
    filesystem below takes its place so only the core's placement is tested."""
    for b in load_backends():
        if b.name == "ext4":
            monkeypatch.setattr(b, "probe", lambda volume, ctx: 0.0)


class OneFile(GuestFilesystem):
    def __init__(self, size, hits=()):
        self.info = FilesystemInfo("testfs", label="t", uuid="u-1", size=size, used=1, clean=True)
        self.hits = list(hits)
        self.asked = []

    def root(self):
        def load(d):
            d.add("hello.txt", File(BytesSource(b"hello\n")))
        return Dir(loader=load)

    def files_in_ranges(self, ranges, limit=50):
        self.asked.append(ranges)
        return self.hits[:limit], len(self.hits)


def _partition(ctx, path):
    return next(v for v in ctx.volumes if v.path == path)


def test_partition_files_beside_disk_and_under_vm():
    ctx = discover([str(EXAMPLES / "vm-100-disk-0.qcow2")])
    vol = _partition(ctx, "storage/files/vm-100-disk-0.qcow2/p2")
    used = ctx.add_filesystem(vol, OneFile(vol.source.size))
    assert used == ["storage/files/vm-100-disk-0.qcow2/disk.files/p2",
                    "vms/100/disk-0.files/p2"]
    a = resolve(ctx.root, "vms/100/disk-0.files/p2/hello.txt")
    b = resolve(ctx.root, "storage/files/vm-100-disk-0.qcow2/disk.files/p2/hello.txt")
    assert a is b and a.source.read(0, 6) == b"hello\n"
    doc = report_doc(ctx)
    entry = next(v for v in doc["volumes"] if v["path"] == vol.path)
    assert entry["guest_filesystem"]["type"] == "testfs"
    assert entry["files_at"] == used
    assert "files: vms/100/disk-0.files/p2  [testfs, label 't', " \
           "UUID u-1, 1 B of 6.0 MiB used, clean, no damaged files]" in report_text(ctx)


def test_whole_disk_filesystem_is_a_container_rootfs():
    ctx = discover([str(EXAMPLES / "vm-100-disk-0.qcow2")])
    disk = _partition(ctx, "storage/files/vm-100-disk-0.qcow2/disk.raw")
    ctx.add_filesystem(disk, OneFile(disk.source.size))
    assert disk.files_paths == ["storage/files/vm-100-disk-0.qcow2/disk.files",
                                "vms/100/disk-0.files"]
    finish(ctx)
    assert resolve(ctx.root, "cts/100/rootfs/hello.txt") is not None
    assert isinstance(resolve(ctx.root, "cts/100/rootfs.raw"), File)


def test_damage_is_mapped_to_files():
    ctx = discover([str(EXAMPLES / "damaged" / "vm-102-disk-0.qcow2")])
    vol = _partition(ctx, "storage/files/vm-102-disk-0.qcow2/p2")
    assert vol.source.has_unreadable  # marked by propagate_unreadable in finish()
    fs = OneFile(vol.source.size, hits=[f"dir/f{i}" for i in range(60)])
    ctx.add_filesystem(vol, fs)
    map_filesystem_damage(ctx)
    assert fs.asked and fs.info.damaged_files == 60
    e = next(e for e in ctx.report if e.code == "files-damaged")
    assert e.path == "vms/102/disk-0.files/p2"  # the place users look first
    assert e.message.startswith("60 files or directories lie on unreadable bytes: dir/f0, ")
    assert e.message.endswith("dir/f49 and 10 more")
    assert [tuple(r) for r in e.ranges] == [tuple(r) for r in fs.asked[0]]


def test_lv_of_a_guest_vg_lands_under_the_vm_disk():
    """A VG inside a VM disk (PV on p2): the LV's files also show as disk-0.files/<vg>-<lv>/."""
    ctx = discover([str(EXAMPLES / "vm-100-disk-0.qcow2")])
    pv = _partition(ctx, "storage/files/vm-100-disk-0.qcow2/p2")
    lv = ctx.add_volume(pv.source, ctx.storage("lvm").subdir("vg0"), "root", "storage/lvm/vg0",
                        "lv", parent=pv, probe=False)
    used = ctx.add_filesystem(lv, OneFile(lv.source.size))
    assert used == ["storage/lvm/vg0/root.files", "vms/100/disk-0.files/vg0-root"]
    assert resolve(ctx.root, "vms/100/disk-0.files/vg0-root/hello.txt") is not None

