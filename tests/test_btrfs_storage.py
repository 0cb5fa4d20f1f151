"""Proxmox btrfs storage inside a recovered btrfs filesystem, written by the kernel.

PVE/Storage/BTRFSPlugin.pm keeps a VM disk as a subvolume holding ``disk.raw``
(``images/<vmid>/vm-<vmid>-disk-<n>/disk.raw``) and a container volume as a subvolume
(``images/<vmid>/subvol-<vmid>-disk-<n>/``).  A btrfs disk whose root holds such a
storage shows the VM disk under ``vms/`` and the container's files under ``cts/``.
"""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest
from btrfs_image import have_tools, loop_mounted, run

from pvfs.discover import discover
from pvfs.nodes import resolve

WHY = have_tools()
pytestmark = pytest.mark.skipif(WHY is not None and not os.environ.get("CI"), reason=WHY or "")


def test_btrfs_storage_vm_disk_and_container(tmp_path):
    img = tmp_path / "btrfs-storage.img"
    with open(img, "wb") as f:
        f.truncate(256 << 20)
    run("mkfs.btrfs", "-q", "-L", "storage", img)
    disk = os.urandom(1 << 20) + bytes(3 << 20)
    with loop_mounted(img, "rw") as m:
        (m / "images" / "100").mkdir(parents=True)
        (m / "images" / "101").mkdir(parents=True)
        run("btrfs", "subvolume", "create", m / "images" / "100" / "vm-100-disk-0")
        (m / "images" / "100" / "vm-100-disk-0" / "disk.raw").write_bytes(disk)
        ct = m / "images" / "101" / "subvol-101-disk-0"
        run("btrfs", "subvolume", "create", ct)
        (ct / "etc").mkdir()
        (ct / "etc" / "hostname").write_text("ct101\n")
        shutil.copy("/etc/services", ct / "etc" / "services")
        run("sync")
    ctx = discover([str(img)])
    node = resolve(ctx.root, "vms/100/disk-0.raw")
    assert node is not None, [e.line() for e in ctx.report]
    assert hashlib.sha256(node.source.read(0, node.size)).digest() == hashlib.sha256(disk).digest()
    host = resolve(ctx.root, "cts/101/rootfs/etc/hostname")
    assert host is not None and host.source.read(0, 100) == b"ct101\n"
    svc = resolve(ctx.root, "cts/101/rootfs/etc/services")
    assert svc.source.read(0, svc.size) == open("/etc/services", "rb").read()
    assert resolve(ctx.root, "vms/101") is None  # a container is not a VM
