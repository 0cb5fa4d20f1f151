"""Images inside recovered file systems (/var/lib/vz on a ZFS root dataset) are opened too."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from conftest import ROOT, sha256_source
from pvfs.discover import Context, finish, run_queue
from pvfs.nodes import Dir, File, resolve
from pvfs.source import FileSource
from pvfs.treestorage import scan_tree_storages

EXAMPLES = ROOT / "examples"


def _fake_root_dataset(ctx, files):
    """storage/zfs/rpool/ROOT/pve-1/var/lib/vz/... as a backend would build it."""
    d = ctx.storage("zfs")
    for name in ("rpool", "ROOT", "pve-1"):  # datasets, marked as the ZFS backend marks them
        d = d.subdir(name)
        d.filesystem_root = True
    for rel, path in files.items():
        parts = rel.split("/")
        sub = d
        for p in parts[:-1]:
            sub = sub.subdir(p)
        sub.add(parts[-1], File(FileSource(path)))


@pytest.mark.skipif(not shutil.which("qemu-img"), reason="qemu-img not installed")
def test_linked_clone_in_var_lib_vz(tmp_path):
    (tmp_path / "9000").mkdir()
    base = tmp_path / "9000" / "base-9000-disk-0.qcow2"
    shutil.copy(EXAMPLES / "vm-100-disk-0.qcow2", base)
    (tmp_path / "100").mkdir()
    clone = tmp_path / "100" / "vm-100-disk-0.qcow2"
    # The backing name is relative, as Proxmox writes it for linked clones.
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2",
                    "-b", "../9000/base-9000-disk-0.qcow2", str(clone)], check=True, cwd=tmp_path)
    ctx = Context()
    _fake_root_dataset(ctx, {
        "var/lib/vz/images/9000/base-9000-disk-0.qcow2": base,
        "var/lib/vz/images/100/vm-100-disk-0.qcow2": clone,
        "var/lib/vz/template/iso/x.iso": EXAMPLES / "SHA256SUMS",
    })
    run_queue(ctx)
    assert scan_tree_storages(ctx) == 2
    run_queue(ctx)
    finish(ctx)
    want = sha256_source(resolve(ctx.root, "vms/9000/disk-0.raw").source)
    node = resolve(ctx.root, "vms/100/disk-0.raw")
    assert node is not None, [d.line() for d in ctx.report]
    assert sha256_source(node.source) == want  # the clone reads through its base in the tree
    assert resolve(ctx.root, "vms/100/disk-0.parts/p2") is not None
    assert resolve(ctx.root, "storage/files/zfs/rpool/ROOT/pve-1/var/lib/vz/images/100/"
                             "vm-100-disk-0.qcow2/disk.raw") is not None
    assert not [d for d in ctx.report if d.severity == "error"], [d.line() for d in ctx.report]
    assert scan_tree_storages(ctx) == 0  # each storage is taken once


@pytest.mark.skipif(not shutil.which("qemu-img"), reason="qemu-img not installed")
def test_missing_base_in_tree_is_damage(tmp_path):
    clone = tmp_path / "vm-100-disk-0.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-u", "-f", "qcow2", "-F", "qcow2",
                    "-b", "../9000/base-9000-disk-0.qcow2", str(clone), "8M"], check=True)
    ctx = Context()
    _fake_root_dataset(ctx, {"var/lib/vz/images/100/vm-100-disk-0.qcow2": clone})
    scan_tree_storages(ctx)
    run_queue(ctx)
    finish(ctx)  # the Proxmox view is built after discovery
    assert any(d.code == "backing-missing" for d in ctx.report)
    assert resolve(ctx.root, "vms/100/disk-0.raw") is not None


def _mirror(src_dir, node):
    """Copy a real folder into Dir/File nodes (as a ZFS dataset would show it)."""
    for entry in sorted(src_dir.iterdir()):
        if entry.is_dir():
            _mirror(entry, node.subdir(entry.name))
        elif entry.is_file():
            node.add(entry.name, File(FileSource(entry)))


def test_pbs_datastore_on_a_dataset_is_opened():
    from conftest import FIXTURES

    store = FIXTURES / "pbs" / "generated" / "datastore"
    if not store.is_dir():
        pytest.skip("PBS fixture datastore absent")
    ctx = Context()
    tank = ctx.storage("zfs").subdir("tank")
    backup = tank.subdir("backup")
    tank.filesystem_root = backup.filesystem_root = True
    _mirror(store, backup)
    run_queue(ctx)
    scan_tree_storages(ctx)
    run_queue(ctx)
    finish(ctx)
    from pvfs.discover import discover

    plain = discover([str(store)])
    want = resolve(plain.root, "storage/pbs/datastore/vm/100/2024-01-15T10:00:00Z/drive-scsi0.img")
    got = resolve(ctx.root, "storage/pbs/backup/vm/100/2024-01-15T10:00:00Z/drive-scsi0.img")
    assert got is not None, sorted(resolve(ctx.root, "storage").children())
    assert sha256_source(got.source) == sha256_source(want.source)


def test_only_file_system_roots_are_listed():
    """Ordinary directories inside a dataset are never listed by the scan (they may be huge)."""
    ctx = Context()
    pool = ctx.storage("zfs").subdir("pool")
    pool.filesystem_root = True
    listed = []
    big = Dir(loader=lambda d: listed.append("big"))
    pool.add("big", big)
    nested = pool.subdir("nested")
    nested.filesystem_root = True
    nested.add("inner", Dir(loader=lambda d: listed.append("inner")))
    scan_tree_storages(ctx)
    assert listed == []
