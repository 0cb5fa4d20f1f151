"""The ext4 guests inside the shared fixtures, read through discover() down every storage
layer (ZFS zvol on raidz, ZFS 2.3 after raidz expansion, Ceph RBD, LVM thin LV and
linear LV, a qcow2 with GPT) and compared with the fixtures' manifests: every entry's
type, mode, owner, size, sha256, symlink target, link count, mtime and hard-link
identity, and no entry more or less."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
from conftest import FIXTURES, require_fixture, unpack

from pvfs.discover import Options, discover
from pvfs.nodes import Dir, File, Special, Symlink, resolve, time_ns, walk

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TYPES = {"dir": Dir, "file": File, "symlink": Symlink}


def _manifest(*parts):
    return json.loads(FIXTURES.joinpath(*parts).read_text())


def compare_manifest(root, entries, strict=True):
    """Every manifest entry against the node tree below ``root``; with ``strict`` also
    the optional fields (mode, owner, nlink, mtime, hard links) and no extra entries.
    Returns (entries compared, failures)."""
    assert isinstance(root, Dir)
    fails = []
    by_path = {}
    for e in entries:
        rel = e["path"].strip("/")
        node = root if not rel else resolve(root, rel)
        by_path[e["path"]] = node
        if node is None:
            fails.append(f"missing {e['path']}")
            continue
        kind = TYPES.get(e["type"], Special)
        if not isinstance(node, kind):
            fails.append(f"type {e['path']}: {type(node).__name__} != {e['type']}")
            continue
        if isinstance(node, File):
            if node.size != e["size"]:
                fails.append(f"size {e['path']}: {node.size} != {e['size']}")
                continue
            h = hashlib.sha256()
            for off in range(0, node.size, 4 << 20):
                h.update(node.source.read(off, min(4 << 20, node.size - off)))
            if h.hexdigest() != e["sha256"]:
                fails.append(f"sha256 {e['path']}")
        if "target" in e and isinstance(node, Symlink) and node.target != e["target"].encode():
            fails.append(f"target {e['path']}: {node.target!r}")
        if not strict:
            continue
        if "mode" in e and node.mode & 0o7777 != int(e["mode"], 8):
            fails.append(f"mode {e['path']}: {node.mode & 0o7777:o} != {e['mode']}")
        if "uid" in e and (node.uid, node.gid) != (e["uid"], e["gid"]):
            fails.append(f"owner {e['path']}: {node.uid}:{node.gid}")
        if "nlink" in e and node.nlink != e["nlink"]:
            fails.append(f"nlink {e['path']}: {node.nlink} != {e['nlink']}")
        if "mtime_ns" in e and time_ns(node.mtime) != e["mtime_ns"]:
            fails.append(f"mtime {e['path']}: {time_ns(node.mtime)} != {e['mtime_ns']}")
    for e in entries:
        if e.get("hardlink_of") and by_path.get(e["path"]) is not by_path.get(e["hardlink_of"]):
            fails.append(f"hard link {e['path']} is not the node of {e['hardlink_of']}")
    if strict:
        listed = {"/" + p for p, _n in walk(root) if p and not p.startswith(".lost+found")}
        listed.add("/")
        extra = listed - set(by_path)
        if extra:
            fails.append(f"not in the manifest: {sorted(extra)[:5]}")
    return len(entries), fails


def _guestfs(ctx, path):
    node = resolve(ctx.root, path)
    assert isinstance(node, Dir), path
    return node


def _no_ext4_damage(ctx):
    assert [e for e in ctx.report if e.layer == "ext4"] == []


@pytest.mark.parametrize("fixture,archive", [
    ("zfs-modern", "rpool-raidz1.tar.xz"),
    ("zfs-2.3", "rpool-raidz1-expanded.tar.zst"),
])
def test_zvol_ext4(fixture, archive):
    d = unpack(require_fixture(fixture, "images", archive))
    ctx = discover(sorted(str(p) for p in d.rglob("*.img")), Options())
    ds = _manifest(fixture, "manifest.json")["pools"]["rpool"]["datasets"]
    total = 0
    for name, tree in (("vm-100-disk-0", "vms/100/disk-0.files/p1"),
                       ("vm-100-disk-0@before", "vms/100/snapshots/before/disk-0.files/p1")):
        n, fails = compare_manifest(_guestfs(ctx, tree), ds[f"rpool/data/{name}"]
                                    ["partition_files"]["1"])
        assert fails == [], f"{name}: {fails[:10]}"
        total += n
    assert total > 30
    _no_ext4_damage(ctx)


@pytest.mark.parametrize("fixture", ["ceph", "ceph-20"])
def test_ceph_rbd_ext4(fixture):
    d = unpack(require_fixture(fixture, "ceph-fixture.tar.zst")) / "ceph-fixture"
    osds = sorted(str(p) for p in d.glob("osd.*/block"))
    ctx = discover(osds, Options())
    m = _manifest(fixture, "manifest.json")["ext4"]
    root = _guestfs(ctx, f"storage/ceph/{m['image']}.files/p1")
    n, fails = compare_manifest(root, m["files"], strict=False)
    assert fails == [] and n >= 10
    vol = next(v for v in ctx.volumes if v.guestfs_root is root)
    assert (vol.guestfs.info.label, vol.guestfs.info.uuid) == (m["fs"]["label"], m["fs"]["uuid"])
    _no_ext4_damage(ctx)


def test_lvm_thin_real_root_and_container():
    d = unpack(require_fixture("lvm-thin-real", "lvm-thin-real.tar.xz"))
    ctx = discover([str(d / "lvm-thin-real" / "pve-disk.img")], Options())
    lvs = _manifest("lvm-thin-real", "manifest.json")["lvs"]
    n1, fails = compare_manifest(_guestfs(ctx, "storage/lvm/pve/root.files"),
                                 lvs["root"]["files"])
    assert fails == []
    n2, fails = compare_manifest(_guestfs(ctx, "cts/101/rootfs"), lvs["vm-101-disk-0"]["files"])
    assert fails == [] and n1 + n2 > 20
    _no_ext4_damage(ctx)


def test_bundled_example_equals_the_kernel(tmp_path):
    """examples/vm-100-disk-0.qcow2 p2 (and its snapshot): the kernel's loop mount of the
    partition cut out by qemu-img/sfdisk is the truth."""
    from ext4_build import compare_tree, kernel_truth

    raw = tmp_path / "disk.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(EXAMPLES / "vm-100-disk-0.qcow2"),
                    str(raw)], check=True)
    table = json.loads(subprocess.run(["sfdisk", "-J", str(raw)], check=True,
                                      capture_output=True, text=True).stdout)
    p2 = table["partitiontable"]["partitions"][1]
    part = tmp_path / "p2.img"
    with open(raw, "rb") as f, open(part, "wb") as out:
        f.seek(p2["start"] * 512)
        out.write(f.read(p2["size"] * 512))
    truth = kernel_truth(part)
    ctx = discover([str(EXAMPLES / "vm-100-disk-0.qcow2")])
    n, bad = compare_tree(_guestfs(ctx, "vms/100/disk-0.files/p2"), truth)
    assert bad == [] and n == len(truth) > 5
    _no_ext4_damage(ctx)
