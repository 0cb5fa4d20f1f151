"""A Proxmox host on LVM with an ext4 root: the cluster database is read from the root LV's
files (the ext4 reader), and the VM view resolves lvm/lvmthin volume ids through storage.cfg.

The disk is written by real lvm2 (pvcreate/vgcreate/lvcreate without activation, as
tests/test_lvm.py does, ``--driverloaded n``: no device-mapper) and real mke2fs -d; the LV contents are placed at the extents
lvm2 reports (``lvs -o seg_pe_ranges``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess

import pytest
from pmxcfs_util import T0, PmxDB

from pvfs.discover import discover
from pvfs.nodes import File, resolve
from pvfs.proxmox.view import table

LVM_CONF = ('backup{backup=0 archive=0} devices{filter=["a|/dev/loop|","r|.*|"] use_devicesfile=0 '
            'obtain_device_list_from_udev=0} activation{udev_sync=0 udev_rules=0 monitoring=0}')
MIB = 1 << 20

needs_tools = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("vgcreate") or not shutil.which("mke2fs"),
    reason="needs root (loop device), lvm2 and e2fsprogs")

STORAGE_CFG = (b"dir: local\n\tpath /var/lib/vz\n\tcontent iso,vztmpl,backup\n\n"
               b"lvm: vmstore\n\tvgname pvx\n\tcontent images,rootdir\n")
VM_CONF = b"name: app\nostype: l26\nscsi0: vmstore:vm-120-disk-0,size=4M\n" \
          b"scsi1: vmstore:vm-120-disk-1,size=4M\n"


def _lvm(*args):
    env = dict(os.environ, LVM_SUPPRESS_FD_WARNINGS="1")
    return subprocess.run([args[0], "-q", "--config", LVM_CONF, *args[1:]], env=env,
                          capture_output=True, text=True, check=True).stdout


def _build(tmp_path):
    """pvx/root (ext4 holding /var/lib/pve-cluster with config.db + WAL) and pvx/vm-120-disk-0."""
    rootdir = tmp_path / "rootfs"
    (rootdir / "etc").mkdir(parents=True)
    (rootdir / "etc/hostname").write_text("pvelvm\n")
    db = PmxDB(tmp_path / "live.db")
    db.write("storage.cfg", STORAGE_CFG, mtime=T0)
    db.write("nodes/pvelvm/qemu-server/120.conf", b"name: app\n", mtime=T0)
    db.checkpoint()
    db.write("nodes/pvelvm/qemu-server/120.conf", VM_CONF, mtime=T0 + 9)  # only in the WAL
    db.copy_to(rootdir)
    db.close()
    fs = tmp_path / "root.ext4"
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(rootdir), str(fs), "16M"],
                   check=True)
    disk = bytes(range(256)) * (4 * MIB // 256)
    img = tmp_path / "pve.img"
    with open(img, "wb") as f:
        f.truncate(48 * MIB)
    loop = subprocess.run(["losetup", "-f", "--show", str(img)], capture_output=True, text=True,
                          check=True).stdout.strip()
    try:
        _lvm("pvcreate", loop)
        _lvm("vgcreate", "-s", "4M", "pvx", loop)
        for size, name in (("16M", "root"), ("4M", "vm-120-disk-0")):  # no device-mapper here
            _lvm("lvcreate", "--driverloaded", "n", "-an", "-Zn", "-L", size, "-n", name, "pvx")
        pe_start = int(_lvm("pvs", "--noheadings", "--units", "b", "--nosuffix", "-o", "pe_start",
                            loop).strip())
        ranges = {}
        for line in _lvm("lvs", "--noheadings", "-o", "lv_name,seg_pe_ranges", "pvx").splitlines():
            name, rng = line.split()
            ranges[name] = int(rng.rsplit(":", 1)[1].split("-")[0])
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)
    with open(img, "r+b") as f:
        f.seek(pe_start + ranges["root"] * 4 * MIB)
        f.write(fs.read_bytes())
        f.seek(pe_start + ranges["vm-120-disk-0"] * 4 * MIB)
        f.write(disk)
    return img, hashlib.sha256(disk).hexdigest()


@needs_tools
def test_lvm_host_with_ext4_root(tmp_path):
    img, disk_sha = _build(tmp_path)
    ctx = discover([str(img)])
    assert isinstance(resolve(ctx.root, "storage/lvm/pvx/root.files/var/lib/pve-cluster/config.db"),
                      File), [e.line() for e in ctx.report]
    conf = resolve(ctx.root, "storage/pve/pvelvm/etc-pve/nodes/pvelvm/qemu-server/120.conf")
    assert conf.source.read(0, 4096) == VM_CONF  # the WAL was applied
    assert conf.mtime == T0 + 9
    link = resolve(ctx.root, "vms/120/by-config/scsi0")
    assert link.target == b"../disk-0.raw"
    node = resolve(ctx.root, "vms/120/disk-0.raw")
    assert node.source is resolve(ctx.root, "storage/lvm/pvx/vm-120-disk-0").source
    assert hashlib.sha256(node.source.read(0, node.size)).hexdigest() == disk_sha
    assert resolve(ctx.root, "vms/by-name/app").target == b"../120"
    missing = [e for e in ctx.report if e.code == "config-disk-missing"]
    assert len(missing) == 1 and "scsi1: vmstore:vm-120-disk-1" in missing[0].message
    assert missing[0].path == "vms/120/qemu-server.conf"
    row = next(r for r in table(ctx) if r["vmid"] == 120)
    assert row["node"] == "pvelvm" and [(d["key"], d["found"], d["status"])
                                        for d in row["disks"]] == \
        [("scsi0", "found", "OK"), ("scsi1", "missing", "LOST")]
    assert row["status"] == "PARTIAL"  # one disk of two is in no input
    assert not [e for e in ctx.report if e.code.startswith("config-db") or e.code == "config-stale"]
