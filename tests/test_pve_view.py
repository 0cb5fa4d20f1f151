"""The Proxmox view (vms/, cts/) built from the cluster configs, storage.cfg and volume names."""

from __future__ import annotations

import json
import os
import posixpath
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FIXTURES, ROOT, require_fixture, sha256_source, unpack
from mountutil import needs_fuse
from pmxcfs_util import T0, PmxDB

from pvfs.discover import Context, discover, finish
from pvfs.nodes import Dir, File, Symlink, resolve
from pvfs.proxmox.cluster import note_input_dir
from pvfs.proxmox.view import (DEFAULT_STORAGES, Locator, disk_volumes, expected, parse_config,
                               parse_storage_cfg, table)
from pvfs.report import readme_text, report_doc, report_text
from pvfs.source import BytesSource

STORAGE_CFG = b"""dir: local
\tpath /var/lib/vz
\tcontent iso,vztmpl,backup,images

zfspool: local-zfs
\tpool rpool/data
\tsparse
\tcontent images,rootdir

lvmthin: local-lvm
\tthinpool data
\tvgname pve
\tcontent rootdir,images

lvm: san
\tvgname vmdata
\tcontent images
\tshared 1

rbd: ceph-vm
\tpool vmpool
\tcontent images

rbd: ceph-default
\tcontent images
\tkrbd 0

drbd: drbdstorage
\tcontent images,rootdir
\tcontroller 10.0.0.1

iscsi: san-lun
\tportal 10.0.0.2
\ttarget iqn.2003-01.org.example:storage
\tcontent images
"""

VM100 = b"""boot: order=scsi0
memory: 2048
name: web
ostype: l26
efidisk0: local-lvm:vm-100-disk-1,efitype=4m,size=4M
ide2: local:iso/debian-12.iso,media=cdrom,size=600M
scsi0: local-zfs:vm-100-disk-0,size=32M
scsi1: san:vm-100-disk-2,size=8M
scsi2: local:100/vm-100-disk-3.qcow2,size=8M
virtio0: ceph-vm:vm-100-disk-4,size=8M
virtio1: ceph-default:vm-100-disk-5,size=8M
sata0: drbdstorage:vm-100-disk-6,size=8M
sata1: san-lun:0.0.1.scsi-3600,size=8M
unused0: local-zfs:vm-100-disk-7
tpmstate0: local-lvm:vm-100-disk-8,size=4M,version=v2.0
parent: before

[before]
memory: 1024
name: web
scsi0: local-zfs:vm-100-disk-0,size=32M
snaptime: 1760000000
"""

CT101 = b"""arch: amd64
hostname: db
ostype: debian
rootfs: local-lvm:vm-101-disk-0,size=8G
mp0: local-zfs:subvol-101-disk-1,mp=/srv,size=8G
"""


def _host(tmp_path, files):
    db = PmxDB(tmp_path / "live.db")
    for p, data in files.items():
        db.write(p, data, mtime=T0)
    host = tmp_path / "host"
    db.copy_to(host)
    (host / "etc").mkdir()
    (host / "etc/hostname").write_text("pve\n")
    db.close()
    return host


def _disk(ctx, area, dpath, name, data, loc, role="zvol"):
    d = ctx.storage(area)
    for p in dpath.split("/"):
        d = d.subdir(p)
    vol = ctx.add_volume(BytesSource(data), d, name, f"storage/{area}/{dpath}", role, probe=False)
    ctx.add_proxmox(loc, vol)
    return vol


def test_every_storage_type_resolves(tmp_path):
    host = _host(tmp_path, {"storage.cfg": STORAGE_CFG,
                            "nodes/pve/qemu-server/100.conf": VM100,
                            "nodes/pve/lxc/101.conf": CT101,
                            "nodes/pve/qemu-server/300.conf": b"name: empty\nostype: win11\n"})
    ctx = Context()
    note_input_dir(ctx, str(host))
    vols = {
        "scsi0": _disk(ctx, "zfs", "rpool/data", "vm-100-disk-0", b"A" * 512,
                       Locator("zfspool", "rpool/data", "vm-100-disk-0")),
        "efidisk0": _disk(ctx, "lvm", "pve", "vm-100-disk-1", b"B" * 512,
                          Locator("lvmthin", "pve", "vm-100-disk-1"), "lv"),
        "scsi1": _disk(ctx, "lvm", "vmdata", "vm-100-disk-2", b"C" * 512,
                       Locator("lvm", "vmdata", "vm-100-disk-2"), "lv"),
        "scsi2": _disk(ctx, "files", "vz/images/100", "vm-100-disk-3.qcow2", b"D" * 512,
                       Locator("dir", "/var/lib/vz", "100/vm-100-disk-3.qcow2"), "disk"),
        "virtio0": _disk(ctx, "ceph", "vmpool", "vm-100-disk-4", b"E" * 512,
                         Locator("rbd", "vmpool", "vm-100-disk-4"), "rbd"),
        "virtio1": _disk(ctx, "ceph", "rbd", "vm-100-disk-5", b"F" * 512,
                         Locator("rbd", "rbd", "vm-100-disk-5"), "rbd"),
        "sata0": _disk(ctx, "drbd", "vm-100-disk-6", "merged.raw", b"G" * 512,
                       Locator("drbd", "", "vm-100-disk-6"), "disk"),
        "tpmstate0": _disk(ctx, "lvm", "pve", "vm-100-disk-8", b"H" * 512,
                           Locator("lvmthin", "pve", "vm-100-disk-8"), "lv"),
    }
    snap = _disk(ctx, "zfs", "rpool/data", "vm-100-disk-0@before", b"a" * 512,
                 Locator("zfspool", "rpool/data", "vm-100-disk-0", "before"))
    # The same name in a second pool (a copy): named by its storage, the configured one plain.
    other = _disk(ctx, "zfs", "tank/data", "vm-100-disk-0", b"Z" * 512,
                  Locator("zfspool", "tank/data", "vm-100-disk-0"))
    leftover = _disk(ctx, "zfs", "rpool/data", "vm-100-disk-9", b"L" * 512,
                     Locator("zfspool", "rpool/data", "vm-100-disk-9"))
    ctroot = _disk(ctx, "lvm", "pve", "vm-101-disk-0", b"R" * 512,
                   Locator("lvmthin", "pve", "vm-101-disk-0"), "lv")
    ctx.report.add("error", "lvm", vols["scsi1"].path, "unreadable", "bad sectors", [(0, 512)])
    sub = Dir()
    sub.add("hostname", File(BytesSource(b"db\n")))
    ctx.add_proxmox(Locator("zfspool", "rpool/data", "subvol-101-disk-1"), tree=sub)
    finish(ctx)

    vm = resolve(ctx.root, "vms/100")
    for key, vol in vols.items():
        link = resolve(vm, f"by-config/{key}")
        assert isinstance(link, Symlink), key
        real = posixpath.normpath(posixpath.join("vms/100/by-config", link.target.decode()))
        target = resolve(ctx.root, real)
        assert isinstance(target, File) and target.source is vol.source, key
    assert resolve(vm, "by-config/scsi0").target == b"../disk-0.raw"
    assert resolve(vm, "disk-0@tank-data.raw").source is other.source
    assert resolve(vm, "snapshots/before/by-config/scsi0").target == b"../disk-0.raw"
    assert resolve(vm, "snapshots/before/disk-0.raw").source is snap.source
    assert resolve(vm, "qemu-server.conf").source.read(0, 4096) == VM100
    assert resolve(ctx.root, "vms/by-name/web").target == b"../100"
    assert resolve(ctx.root, "vms/300/qemu-server.conf") is not None  # config only: still a folder
    assert resolve(ctx.root, "vms/by-name/empty").target == b"../300"
    # the container: by its config, on LVM, never under vms/
    assert resolve(ctx.root, "vms/101") is None
    assert resolve(ctx.root, "cts/101/rootfs.raw").source is ctroot.source
    assert resolve(ctx.root, "cts/101/by-config/rootfs").target == b"../rootfs.raw"
    assert resolve(ctx.root, "cts/101/by-config/mp0").target == b"../disk-1.files"
    assert resolve(ctx.root, "cts/101/disk-1.files/hostname") is not None
    assert resolve(ctx.root, "cts/by-name/db").target == b"../101"
    assert resolve(ctx.root, "cts/101/pct.conf").source.read(0, 4096) == CT101

    entries = {(e.code, e.path, e.message) for e in ctx.report if e.layer == "pve"}
    codes = [(c, p) for c, p, _m in entries]
    assert ("config-disk-missing", "vms/100/qemu-server.conf") in codes
    missing = [m for c, _p, m in entries if c == "config-disk-missing"]
    assert len(missing) == 1 and "unused0: local-zfs:vm-100-disk-7" in missing[0]
    assert "a volume of that name" not in missing[0]
    unknown = [m for c, _p, m in entries if c == "config-disk-unresolved"]
    assert len(unknown) == 1 and "san-lun" in unknown[0] and "'iscsi'" in unknown[0] \
        and "not guessed" in unknown[0]
    assert ("disk-not-in-config", "vms/100/disk-9.raw") in codes
    assert ("disk-not-in-config", "vms/100/disk-0@tank-data.raw") in codes
    assert leftover.vm_paths == ["vms/100/disk-9.raw"]

    rows = {r["vmid"]: r for r in table(ctx)}
    assert rows[100]["name"] == "web" and rows[100]["node"] == "pve" and rows[100]["ostype"] == "l26"
    status = {d["key"]: d["status"] for d in rows[100]["disks"]}
    found = {d["key"]: d["found"] for d in rows[100]["disks"]}
    assert status["scsi0"] == "OK" and found["unused0"] == "missing"
    assert status["unused0"] == "LOST"  # in the config, in no input
    assert status["scsi1"] == "LOST"  # all its 512 bytes: the backend's entry, repeated at the view path:
    assert [(e.path, e.ranges) for e in ctx.report if e.code == "unreadable"] == [
        ("storage/lvm/vmdata/vm-100-disk-2", ((0, 512),)), ("vms/100/disk-2.raw", ((0, 512),))]
    assert found["sata1"] == "unresolved" and status["sata1"] is None
    assert "ide2" not in status  # a CD-ROM is not a disk
    # one disk lost, one partly: the VM is PARTIAL, 512 bytes, no filesystem to name files
    assert (rows[100]["status"], rows[100]["files"], rows[100]["bytes"]) == ("PARTIAL", None, 512)
    assert rows[101]["type"] == "CT" and rows[300]["disks"] == []
    text = readme_text(ctx)
    assert "web" in text and "scsi0 OK" in text and "unused0 missing" in text
    assert "scsi0 OK" in report_text(ctx)
    doc = json.loads(json.dumps(report_doc(ctx), default=str))
    assert set(doc["vms"]) == {"100", "300"} and set(doc["cts"]) == {"101"}
    assert {g["vmid"] for g in doc["guests"]} == {100, 101, 300}


def test_expected_locators():
    st = parse_storage_cfg(STORAGE_CFG)
    assert expected(st, "local-zfs:base-9000-disk-0/vm-100-disk-0")[:3] == \
        (("zfspool",), "rpool/data", "vm-100-disk-0")
    assert expected(st, "ceph-default:vm-1-disk-0")[:3] == (("rbd",), "rbd", "vm-1-disk-0")
    assert expected(st, "ceph-vm:vm-1-disk-0")[:3] == (("rbd",), "vmpool", "vm-1-disk-0")
    assert expected(st, "local:1/vm-1-disk-0.qcow2")[:3] == \
        (("dir", "file"), "/var/lib/vz", "1/vm-1-disk-0.qcow2")
    assert expected(st, "nowhere:vm-1-disk-0")[4] == "storage 'nowhere' is not in storage.cfg"
    assert expected(st, "garbage")[4] is not None


def test_zfs23_host_view():
    d = unpack(require_fixture("zfs-2.3", "images", "rpool-raidz1-expanded.tar.zst"))
    ctx = discover(sorted(str(p) for p in d.rglob("*.img")))
    m = json.loads((FIXTURES / "zfs-2.3" / "manifest.json").read_text())
    ds = m["pools"]["rpool"]["datasets"]
    link = resolve(ctx.root, "vms/100/by-config/scsi0")
    assert link.target == b"../disk-0.raw"
    disk = resolve(ctx.root, "vms/100/disk-0.raw")
    assert sha256_source(disk.source) == ds["rpool/data/vm-100-disk-0"]["device"]["sha256"]
    assert b"name: vm100" in resolve(ctx.root, "vms/100/qemu-server.conf").source.read(0, 4096)
    assert resolve(ctx.root, "vms/by-name/vm100").target == b"../100"
    assert resolve(ctx.root, "cts/by-name/ct102").target == b"../102"
    assert resolve(ctx.root, "cts/102/by-config/rootfs").target == b"../rootfs"
    files = {e["path"]: e for e in ds["rpool/data/subvol-102-disk-0"]["files"]}
    host = resolve(ctx.root, "cts/102/rootfs/etc/hostname")
    assert sha256_source(host.source) == files["/etc/hostname"]["sha256"]
    assert resolve(ctx.root, "vms/102") is None
    # vm-101 and the subvols 103-106 are in storage but in no config
    notin = {e.path for e in ctx.report if e.code == "disk-not-in-config"}
    assert "vms/101/disk-0.raw" in notin and "cts/103/rootfs" in notin
    rows = {r["vmid"]: r for r in table(ctx)}
    assert [{k: d[k] for k in ("key", "volid", "found", "status", "path")}
            for d in rows[100]["disks"]] == [{"key": "scsi0", "volid": "local-zfs:vm-100-disk-0",
                                              "found": "found", "status": "OK",
                                              "path": "vms/100/disk-0.raw"}]
    assert rows[102]["type"] == "CT" and rows[102]["name"] == "ct102"
    assert not [e for e in ctx.report if e.code in ("config-disk-missing", "config-stale")]
    text = readme_text(ctx)
    assert "  cts/102/rootfs                           <- storage/zfs/rpool/data/subvol-102-disk-0" \
        in text.splitlines()
    assert any(ln.split()[:8] == ["100", "VM", "vm100", "OK", "pve", "l26", "0", "scsi0"]
               for ln in text.splitlines())


def test_backups_counted_per_guest_without_cluster():
    """No cluster database: the guests and their names come from the backups' configs."""
    gen = require_fixture("pbs", "generated")
    gt = json.loads((gen / "ground-truth.json").read_text())
    ctx = discover([str(gen / "datastore")])
    want: dict = {}
    for s in gt["snapshots"]:
        parts = s["path"].split("/")
        kind, vmid = parts[-3], parts[-2]
        if kind in ("vm", "ct"):
            want[int(vmid)] = want.get(int(vmid), 0) + 1
    rows = {r["vmid"]: r for r in table(ctx)}
    assert {v: r["backups"] for v, r in rows.items()} == want
    assert rows[101]["type"] == "CT" and rows[100]["type"] == "VM"
    conf = resolve(ctx.root, "vms/100/backups/2024-01-16T10:00:00Z/qemu-server.conf")
    text = conf.source.read(0, conf.size).decode()
    name = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("name:")),
                "")
    assert rows[100]["name"] == name and rows[100]["config"] == "backup 2024-01-16T10:00:00Z"
    # no cluster: nothing is called missing or not-in-config
    assert not [e for e in ctx.report if e.code in ("disk-not-in-config", "config-disk-missing")]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000), st.text(max_size=80))
def test_fuzz_config_parsers(blob, volid):
    storages = parse_storage_cfg(blob)
    for sec in parse_config(blob).values():
        for guest in ("qemu", "lxc"):
            for _key, vid, _note in disk_volumes(guest, sec):
                expected(storages, vid)
    expected(storages, volid)
    expected(DEFAULT_STORAGES, volid)


def test_zfs_modern_without_cluster_database():
    """rpool/ROOT/pve-1 of zfs-modern holds no config.db: the view comes from the volume names
    alone, nothing is called missing or unreferenced, and storage/pve/ does not exist."""
    d = unpack(require_fixture("zfs-modern", "images", "rpool-raidz1.tar.xz"))
    ctx = discover(sorted(str(p) for p in d.rglob("*.img")))
    assert isinstance(resolve(ctx.root, "storage/zfs/rpool/ROOT/pve-1"), Dir)
    assert resolve(ctx.root, "storage/pve") is None
    assert not [e for e in ctx.report if e.layer == "pve"]
    rows = {r["vmid"]: r for r in table(ctx)}
    m = json.loads((FIXTURES / "zfs-modern" / "manifest.json").read_text())
    want = {}
    for name in m["pools"]["rpool"]["datasets"]:  # vm-/base- zvols are VMs, subvol- datasets CTs
        short = name.rsplit("/", 1)[-1]
        if "@" not in short and short.count("-") == 3:
            want[int(short.split("-")[1])] = "CT" if short.startswith("subvol-") else "VM"
    assert {v: r["type"] for v, r in rows.items()} == want and len(want) == 8
    assert all(r["config"] is None and r["node"] == "" for r in rows.values())
    assert resolve(ctx.root, "vms/by-name") is None


@needs_fuse
@pytest.mark.fuse
def test_view_through_fuse(tmp_path):
    """The links and etc-pve through the kernel: readlink, following by-config/ to the disk,
    by-name/ to the guest folder, priv/ mode and the database mtimes."""
    import hashlib
    import os
    import stat

    from mountutil import pvfs_mounted

    host = _host(tmp_path, {"storage.cfg": STORAGE_CFG, "nodes/pve/qemu-server/100.conf": VM100,
                            "priv/authkey.key": b"secret\n"})
    img = tmp_path / "in" / "100" / "vm-100-disk-3.qcow2"
    img.parent.mkdir(parents=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(img), "1M"], check=True)
    subprocess.run(["qemu-io", "-c", "write -P 0x5a 0 64k", str(img)], check=True,
                   capture_output=True)
    mnt = tmp_path / "mnt"
    with pvfs_mounted([host, img], mnt):
        assert os.readlink(mnt / "vms/by-name/web") == "../100"
        assert os.readlink(mnt / "vms/100/by-config/scsi2") == "../disk-3.raw"
        data = (mnt / "vms/100/by-config/scsi2").read_bytes()
        assert data[:65536] == b"\x5a" * 65536 and len(data) == 1 << 20
        assert (mnt / "vms/by-name/web/qemu-server.conf").read_bytes() == VM100
        etc = mnt / "storage/pve/pve/etc-pve"
        assert stat.S_IMODE(os.stat(etc / "priv/authkey.key").st_mode) == 0o600
        assert os.stat(etc / "storage.cfg").st_mtime == T0
        assert hashlib.sha256((etc / "storage.cfg").read_bytes()).digest() == \
            hashlib.sha256(STORAGE_CFG).digest()
        assert "scsi2 OK" in (mnt / "README.txt").read_text()


def test_missing_disk_names_a_same_named_volume_elsewhere_and_scan_prints_the_table(tmp_path):
    """The config says local-lvm but the only vm-100-disk-0 found is a qcow2 file: missing
    from its storage, and the entry says where a volume of that name is; `pvfs scan` shows
    the guest table."""
    host = _host(tmp_path, {"storage.cfg": STORAGE_CFG,
                            "nodes/pve/qemu-server/100.conf": b"name: web\nostype: l26\n"
                                                               b"scsi0: local-lvm:vm-100-disk-0\n"})
    img = tmp_path / "loose" / "vm-100-disk-0.qcow2"
    img.parent.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(img), "1M"], check=True)
    ctx = discover([str(host), str(img)])
    e = next(e for e in ctx.report if e.code == "config-disk-missing")
    assert e.message.endswith("(a volume of that name is at vms/100/disk-0.raw)")
    r = subprocess.run([sys.executable, "-m", "pvfs", "scan", str(host), str(img)],
                       capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    line = next(ln for ln in r.stdout.splitlines() if ln.split()[:2] == ["100", "VM"])
    assert line.split()[2:7] == ["web", "PARTIAL", "(1", "disk", "missing)"]
    assert line.split()[7:9] == ["pve", "l26"] and "scsi0 missing" in line
    assert "vm-100-disk-0.qcow2 OK, not in config" in line
