"""The cluster database found in recovered host roots and shown as storage/pve/<node>/etc-pve."""

from __future__ import annotations

import hashlib
import json
import stat

from conftest import FIXTURES, require_fixture, sha256_source, unpack
from pmxcfs_util import T0, PmxDB, standard_cluster

from pvfs.discover import discover
from pvfs.nodes import Dir, File, Symlink, resolve, walk

# What job-zfs23.sh wrote into rpool/ROOT/pve-1's config.db (VM_A=100, CT_C=102, POOL=rpool).
Z23_FILES = {
    "nodes/pve/qemu-server/100.conf":
        b"boot: order=scsi0\ncores: 2\nmemory: 2048\nname: vm100\n"
        b"net0: virtio=BC:24:11:00:00:01,bridge=vmbr0\nostype: l26\n"
        b"scsi0: local-zfs:vm-100-disk-0,size=32M\nscsihw: virtio-scsi-single\n",
    "nodes/pve/lxc/102.conf":
        b"arch: amd64\nhostname: ct102\nmemory: 512\nostype: debian\n"
        b"rootfs: local-zfs:subvol-102-disk-0,size=64M\nunprivileged: 1\n",
    "storage.cfg": b"zfspool: local-zfs\n\tpool rpool/data\n\tsparse\n\tcontent images,rootdir\n",
}


def _z23():
    d = unpack(require_fixture("zfs-2.3", "images", "rpool-raidz1-expanded.tar.zst"))
    return discover(sorted(str(p) for p in d.rglob("*.img")))


def test_zfs23_root_dataset_database():
    ctx = _z23()
    m = json.loads((FIXTURES / "zfs-2.3" / "manifest.json").read_text())
    files = {e["path"]: e for e in m["pools"]["rpool"]["datasets"]["rpool/ROOT/pve-1"]["files"]}
    dbnode = resolve(ctx.root, "storage/zfs/rpool/ROOT/pve-1/var/lib/pve-cluster/config.db")
    assert sha256_source(dbnode.source) == files["/var/lib/pve-cluster/config.db"]["sha256"]
    etc = resolve(ctx.root, "storage/pve/pve/etc-pve")
    assert isinstance(etc, Dir)
    shown = {p: n for p, n in walk(etc) if isinstance(n, File)}
    assert {p: n.source.read(0, n.size) for p, n in shown.items()} == Z23_FILES
    for p, n in walk(etc):
        if p:
            assert n.mtime == 1717243200, p  # the database's mtime column
        if isinstance(n, Dir):
            assert stat.S_IMODE(n.mode) == 0o555
    assert resolve(ctx.root, "storage/pve/pve/etc-pve/qemu-server").target == b"nodes/pve/qemu-server"
    assert isinstance(resolve(ctx.root, "storage/pve/pve/etc-pve/local"), Symlink)
    assert not [e for e in ctx.report if e.code.startswith("config-")], [e.line() for e in ctx.report]


def test_directory_copy_of_a_host_root(tmp_path):
    db = PmxDB(tmp_path / "live.db")
    want = standard_cluster(db)
    db.checkpoint()
    db.write("nodes/pve/qemu-server/100.conf", b"name: web\nmemory: 8192\n", mtime=T0 + 50)
    want["nodes/pve/qemu-server/100.conf"] = b"name: web\nmemory: 8192\n"
    host = tmp_path / "host"
    db.copy_to(host)
    (host / "etc").mkdir()
    (host / "etc/hostname").write_text("pve\n")
    before = {p.name: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
              for p in (host / "var/lib/pve-cluster").iterdir()}
    ctx = discover([str(host)])
    db.close()
    etc = resolve(ctx.root, "storage/pve/pve/etc-pve")
    got = {p: n.source.read(0, n.size) for p, n in walk(etc) if isinstance(n, File)}
    assert got == want
    key = resolve(etc, "priv/authkey.key")
    assert stat.S_IMODE(key.mode) == 0o600
    assert stat.S_IMODE(resolve(etc, "storage.cfg").mode) == 0o444
    assert resolve(etc, "nodes/pve/qemu-server/100.conf").mtime == T0 + 50
    assert resolve(etc, "storage.cfg").mtime == T0
    after = {p.name: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
             for p in (host / "var/lib/pve-cluster").iterdir()}
    assert after == before  # inputs only read
    src = resolve(ctx.root, "storage/pve/pve/SOURCE.txt")
    assert b"config.db + WAL" in src.source.read(0, 1000)


def test_cluster_of_two_nodes_newest_first(tmp_path):
    roots = []
    for node, extra in (("pve1", 0), ("pve2", 3)):
        db = PmxDB(tmp_path / f"{node}.db")
        standard_cluster(db, node="pve1")
        db.mkdir("nodes/pve2/qemu-server")
        for i in range(extra):  # pve2 saw three more changes than pve1
            db.write(f"nodes/pve2/qemu-server/{200 + i}.conf", f"name: n2vm{i}\n".encode())
        host = tmp_path / node
        db.copy_to(host)
        (host / "etc").mkdir()
        (host / "etc/hostname").write_text(f"{node}.example.org\n")
        db.close()
        roots.append(str(host))
    ctx = discover(roots)
    assert [x.node for x in ctx.pve_databases] == ["pve2", "pve1"]
    assert resolve(ctx.root, "storage/pve/pve1/etc-pve/nodes/pve2/qemu-server/200.conf") is None
    assert resolve(ctx.root, "storage/pve/pve2/etc-pve/nodes/pve2/qemu-server/202.conf") is not None
    assert any(e.code == "config-older" and e.path == "storage/pve/pve1" for e in ctx.report)


def test_database_gone_backup_dump_used_and_reported(tmp_path):
    db = PmxDB(tmp_path / "live.db")
    want = standard_cluster(db)
    host = tmp_path / "host"
    db.dump_to(host, T0 + 600)
    db.write("storage.cfg", b"dir: local\n\tpath /srv\n", mtime=T0 + 700)  # after the dump: lost
    db.close()
    ctx = discover([str(host)])
    etc = resolve(ctx.root, "storage/pve/pve/etc-pve")
    got = {p: n.source.read(0, n.size) for p, n in walk(etc) if isinstance(n, File)}
    assert got == want
    stale = [e for e in ctx.report if e.code == "config-stale"]
    assert len(stale) == 1 and stale[0].path == f"{host}/var/lib/pve-cluster/config.db"
    assert f"config-{T0 + 600}.sql.gz" in stale[0].message
    src = resolve(ctx.root, "storage/pve/pve/SOURCE.txt")
    assert b"STALE" in src.source.read(0, 1000)
    # the VM view still uses it: the config of VM 100 is there
    assert resolve(ctx.root, "vms/100/qemu-server.conf") is not None


def _node_tree(path):
    from pvfs.source import FileSource

    d = Dir()
    for entry in sorted(path.iterdir()):
        d.add(entry.name, _node_tree(entry) if entry.is_dir() else File(FileSource(str(entry))))
    return d


def test_host_root_registered_by_a_backend(tmp_path):
    """What the PBS backend does for a host backup's pxar: ctx.add_host_root(root node)."""
    from pvfs.discover import Context, finish

    db = PmxDB(tmp_path / "live.db")
    want = standard_cluster(db, node="pbshost")
    host = tmp_path / "host"
    db.copy_to(host)
    db.close()
    ctx = Context()
    ctx.add_host_root(_node_tree(host), "storage/pbs/ds/host/pbshost/t/root.pxar", "PBS host backup")
    finish(ctx)
    etc = resolve(ctx.root, "storage/pve/pbshost/etc-pve")  # the only node in the database
    got = {p: n.source.read(0, n.size) for p, n in walk(etc) if isinstance(n, File)}
    assert got == want
    assert resolve(ctx.root, "vms/by-name/web").target == b"../100"


def test_nested_proxmox_in_a_guest_disk_does_not_drive_the_view(tmp_path):
    """A Proxmox VE running inside VM 200 keeps its own config.db (here with a higher
    version than the host's): shown under storage/pve/, but the host's drives the view."""
    import shutil
    import subprocess

    import pytest

    if not shutil.which("mke2fs"):
        pytest.skip("needs e2fsprogs")
    host_db = PmxDB(tmp_path / "host.db")
    standard_cluster(host_db, node="pve")
    host = tmp_path / "host"
    host_db.copy_to(host)
    host_db.close()
    (host / "etc").mkdir()
    (host / "etc/hostname").write_text("pve\n")
    inner_db = PmxDB(tmp_path / "inner.db")
    for i in range(20):  # more writes: a higher version than the host's
        inner_db.write(f"nodes/nested/qemu-server/{500 + i}.conf", b"name: inner\n")
    rootfs = tmp_path / "inner-root"
    inner_db.copy_to(rootfs)
    inner_db.close()
    (rootfs / "etc").mkdir()
    (rootfs / "etc/hostname").write_text("nested\n")
    disk = tmp_path / "disks" / "vm-200-disk-0.raw"
    disk.parent.mkdir()
    subprocess.run(["mke2fs", "-q", "-t", "ext4", "-d", str(rootfs), str(disk), "8M"], check=True)
    ctx = discover([str(host), str(disk)])
    assert [x.node for x in ctx.pve_databases] == ["pve", "nested"]
    assert ctx.pve_databases[1].db.version > ctx.pve_databases[0].db.version
    assert resolve(ctx.root, "storage/pve/nested/etc-pve/nodes/nested/qemu-server/500.conf")
    assert resolve(ctx.root, "vms/500") is None and resolve(ctx.root, "vms/100/qemu-server.conf")
    assert any(e.code == "config-nested" for e in ctx.report)
