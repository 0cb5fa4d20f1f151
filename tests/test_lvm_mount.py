"""LVM through the real FUSE mount (``pvfs mount``): thin LVs, snapshots, the container
rootfs and an older metadata generation, checked against the fixtures' manifests."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess

import pytest

from conftest import FIXTURES, require_fixture, sha256_file, unpack
from mountutil import needs_fuse, pvfs_mounted


@needs_fuse
def test_real_pool_through_the_mount(tmp_path):
    require_fixture("lvm-thin-real", "lvm-thin-real.tar.xz")
    img = unpack(FIXTURES / "lvm-thin-real" / "lvm-thin-real.tar.xz") / "lvm-thin-real" / \
        "pve-disk.img"
    m = json.loads((FIXTURES / "lvm-thin-real" / "manifest.json").read_text())
    lvs = m["lvs"]
    with pvfs_mounted([img], tmp_path / "mnt") as mnt:
        assert sha256_file(mnt / "vms/100/disk-0.raw") == lvs["vm-100-disk-0"]["device"]["sha256"]
        assert sha256_file(mnt / "vms/100/snapshots/before/disk-0.raw") == \
            lvs["snap_vm-100-disk-0_before"]["device"]["sha256"]
        assert sha256_file(mnt / "cts/101/rootfs.raw") == lvs["vm-101-disk-0"]["device"]["sha256"]
        assert sha256_file(mnt / "storage/lvm/pve/root") == lvs["root"]["device"]["sha256"]
        st = os.stat(mnt / "vms/100/disk-0.raw")
        assert st.st_size == lvs["vm-100-disk-0"]["device"]["size"]
        # thin: unmapped blocks are holes, so the file is sparse
        assert st.st_blocks * 512 < st.st_size
        report = json.loads((mnt / "report.json").read_text())
        assert "lvm" in json.dumps(report)
        if shutil.which("debugfs"):
            # a file inside the container rootfs, read by e2fsprogs from the mounted LV
            want = next(f for f in lvs["vm-101-disk-0"]["files"]
                        if f.get("type") == "file" and f.get("size", 0) > 0)
            r = subprocess.run(["debugfs", "-R", f"cat {want['path']}",
                                str(mnt / "cts/101/rootfs.raw")], capture_output=True,
                               timeout=60)
            assert hashlib.sha256(r.stdout).hexdigest() == want["sha256"]


@needs_fuse
def test_lvm_seqno_on_the_command_line(tmp_path):
    require_fixture("lvm-thin", "lvm-thin-fixtures.tar.xz")
    d = unpack(FIXTURES / "lvm-thin" / "lvm-thin-fixtures.tar.xz")
    m = json.loads((FIXTURES / "lvm-thin" / "manifest.json").read_text())
    with pvfs_mounted([d / "pve-disk.img"], tmp_path / "mnt", "--lvm-seqno", "8") as mnt:
        assert sha256_file(mnt / "storage/lvm/pve/data") == m["linear_volumes"]["data_tdata"]["sha256"]
        assert not (mnt / "storage/lvm/pve/vm-100-disk-0").exists()
        assert (mnt / "storage/lvm/pve/.metadata/seqno-9.vg").exists()


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])
