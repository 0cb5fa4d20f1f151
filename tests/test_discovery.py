"""Discovery rules: directory storages, containers, name clashes, depth limits."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from conftest import ROOT, sha256_file, sha256_source
from pvfs.discover import discover
from pvfs.nodes import File, resolve

EXAMPLES = ROOT / "examples"
needs_mke2fs = pytest.mark.skipif(not shutil.which("mke2fs"), reason="mke2fs (e2fsprogs) not installed")


@needs_mke2fs
def test_var_lib_vz_copy_with_container_raw(tmp_path):
    vz = tmp_path / "vz"
    (vz / "images" / "105").mkdir(parents=True)
    (vz / "images" / "100").mkdir(parents=True)
    (vz / "template" / "iso").mkdir(parents=True)
    (vz / "template" / "iso" / "notes.txt").write_text("an ISO would be here\n")
    src = tmp_path / "rootfs"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "hostname").write_text("ct105\n")
    raw = vz / "images" / "105" / "vm-105-disk-0.raw"
    subprocess.run(["mke2fs", "-q", "-t", "ext4", "-d", str(src), str(raw), "4M"], check=True)
    shutil.copy(EXAMPLES / "vm-100-disk-0.qcow2", vz / "images" / "100" / "vm-100-disk-0.qcow2")
    ctx = discover([str(vz)])
    ct = resolve(ctx.root, "cts/105/rootfs.raw")
    assert isinstance(ct, File) and sha256_source(ct.source) == sha256_file(raw)
    assert resolve(ctx.root, "vms/105") is None  # a container is never also a VM
    assert resolve(ctx.root, "vms/100/disk-0.parts/p2") is not None
    assert resolve(ctx.root, "storage/files/vz/images/105/vm-105-disk-0.raw/disk.raw") is not None
    skipped = [(d.path, d.message) for d in ctx.report if "not-recognised" in d.code]
    assert skipped == [("storage/files/vz/template/iso", f"1 file in {vz}/template/iso was not "
                        "recognised and is not shown: notes.txt")]
    assert [(s.folder, list(s)) for s in ctx.skipped] == [(f"{vz}/template/iso",
                                                           [("notes.txt", 21)])]
    assert resolve(ctx.root, "storage/files/vz/template/iso").children() == {}


def test_name_clashes_are_unique_and_reported(tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        shutil.copy(EXAMPLES / "vm-100-disk-0.qcow2", tmp_path / sub / "vm-100-disk-0.qcow2")
    ctx = discover([str(tmp_path / "a" / "vm-100-disk-0.qcow2"),
                    str(tmp_path / "b" / "vm-100-disk-0.qcow2")])
    vm = resolve(ctx.root, "vms/100")
    # The second copy is named by where it comes from (its directory), not ~2.
    assert {"disk-0.raw", "disk-0@b.raw", "disk-0.parts", "disk-0@b.parts"} <= set(vm.children())
    assert set(resolve(ctx.root, "storage/files").children()) == {
        "vm-100-disk-0.qcow2", "vm-100-disk-0.qcow2~2"}
    clashes = [d for d in ctx.report if d.code == "name-clash"]
    assert {d.path for d in clashes} >= {"vms/100/disk-0@b.raw", "storage/files/vm-100-disk-0.qcow2~2"}
    # Same order, same names: deterministic.
    ctx2 = discover([str(tmp_path / "a" / "vm-100-disk-0.qcow2"),
                     str(tmp_path / "b" / "vm-100-disk-0.qcow2")])
    assert [v.path for v in ctx2.volumes] == [v.path for v in ctx.volumes]


def test_qcow2_inside_qcow2_layers_stop_at_depth(tmp_path):
    """A raw file holding a copy of itself would loop forever without the depth limit;
    qcow2 is only probed on input files, so nesting is bounded by construction."""
    ctx = discover([str(EXAMPLES / "vm-100-disk-0.qcow2")])
    assert max(v.depth for v in ctx.volumes) <= 3


@needs_mke2fs
def test_container_snapshot_lands_in_its_snapshot_folder(tmp_path):
    """A bare filesystem that is a snapshot of a container disk goes to
    cts/<vmid>/snapshots/<snap>/, not over the live rootfs."""
    from pvfs.discover import Context, finish, run_queue
    from pvfs.source import FileSource

    fs = tmp_path / "fs.img"
    subprocess.run(["mke2fs", "-q", "-t", "ext4", str(fs), "4M"], check=True)
    ctx = Context()
    d = ctx.storage("lvm").subdir("pve")
    live = ctx.add_volume(FileSource(fs), d, "vm-105-disk-0", "storage/lvm/pve", "lv")
    ctx.add_proxmox_disk("vm-105-disk-0", live)
    snap = ctx.add_volume(FileSource(fs), d, "snap_vm-105-disk-0_pre", "storage/lvm/pve", "lv")
    ctx.add_proxmox_disk("vm-105-disk-0", snap, snapshot="pre")
    run_queue(ctx)
    finish(ctx)
    assert resolve(ctx.root, "cts/105/rootfs.raw") is not None
    assert resolve(ctx.root, "cts/105/snapshots/pre/rootfs.raw") is not None
    # the ext4 reader opens the bare filesystem: its files are the rootfs directory
    assert set(resolve(ctx.root, "cts/105").children()) == {"rootfs.raw", "rootfs", "snapshots"}
    assert resolve(ctx.root, "cts/105/snapshots/pre/rootfs") is not None


def test_readme_says_where_each_vm_disk_comes_from(tmp_path):
    from pvfs.report import readme_text

    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        shutil.copy(EXAMPLES / "vm-100-disk-0.qcow2", tmp_path / sub / "vm-100-disk-0.qcow2")
    ctx = discover([str(tmp_path / "a"), str(tmp_path / "b")])
    text = readme_text(ctx)
    assert "vms/100/disk-0.raw                       <- storage/files/a/vm-100-disk-0.qcow2/disk.raw" in text
    assert "vms/100/disk-0@b.raw                     <- storage/files/b/vm-100-disk-0.qcow2/disk.raw" in text
