"""OpenZFS 2.3 (Proxmox VE 9): a RAIDZ1 pool widened by ``zpool attach`` (raidz_expansion),
blake3, block cloning, longname, large_microzap, fast_dedup, encryption.

Ground truth: ../shared/fixtures/zfs-2.3/manifest.json, written by the real OpenZFS 2.3.9
kernel module (intact set and a copy without member 2).  Every file, zvol and snapshot is
compared by sha256, every entry's type/mode/owner/mtime (ns)/link count/symlink
target/xattrs with the manifest.  Unit tests of the expanded RAIDZ map follow
vdev_raidz.c (zfs-2.3.9).
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import stat

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.zfs import raidz
from pvfs.discover import Options, discover
from pvfs.errors import PvfsError
from pvfs.nodes import Dir, File, Symlink, resolve, time_ns

from conftest import FIXTURES, require_fixture, sha256_source, unpack

Z23 = ("zfs-2.3",)
INTACT = "rpool-raidz1-expanded.tar.zst"
DEGRADED = "rpool-raidz1-expanded-degraded.tar.zst"
KINDS = {"dir": Dir, "file": File, "symlink": Symlink}


@functools.cache
def _manifest():
    return json.loads(FIXTURES.joinpath(*Z23, "manifest.json").read_text())


def _keys():
    return tuple(f"{k}={v['key']}" for k, v in _manifest()["encryption_keys"].items())


@functools.cache
def _images(archive):
    d = unpack(require_fixture(*Z23, "images", archive))
    return tuple(sorted(glob.glob(str(d / "*" / "*.img"))))


_CTX = {}


def _open(archive, keys=True, images=None):
    key = (archive, keys, images)
    if key not in _CTX:
        _CTX.clear()  # one context alive at a time
        imgs = list(images or _images(archive))
        _CTX[key] = discover(imgs, Options(backend_options={"zfs_key": list(_keys()) if keys
                                                            else []}))
    return _CTX[key]


def _tree_root(name):
    return "storage/zfs/" + name.replace("@", "/.zfs/snapshot/")


def _content_items():
    """(tree path, sha256, size) of every zvol, zvol snapshot and file of every dataset
    and snapshot."""
    items = []
    for name, ds in _manifest()["pools"]["rpool"]["datasets"].items():
        dev = ds.get("device")
        if dev:
            items.append((f"storage/zfs/{name}", dev["sha256"], dev["size"]))
        for e in ds.get("files") or []:
            if e["type"] == "file":
                items.append((_tree_root(name) + e["path"], e["sha256"], e["size"]))
    return items


def _check_content(ctx):
    fails = []
    items = _content_items()
    for path, sha, size in items:
        node = resolve(ctx.root, path)
        if not isinstance(node, File):
            fails.append(f"missing {path}")
        elif node.size != size:
            fails.append(f"size {path}: {node.size} != {size}")
        else:
            try:
                if sha256_source(node.source) != sha:
                    fails.append(f"sha256 {path}")
            except PvfsError as e:
                fails.append(f"error {path}: {e}")
    return items, fails


def _check_metadata(ctx):
    """type, mode, owner, mtime (ns), nlink, symlink target, xattrs, hard links."""
    m = _manifest()["pools"]["rpool"]["datasets"]
    fails = []
    checked = 0
    for name, ds in m.items():
        head = name.split("@")[0]
        children = {n[len(head):] for n in m if n.startswith(head + "/") and "@" not in n}
        root = resolve(ctx.root, _tree_root(name))
        for e in ds.get("files") or []:
            p = e["path"]
            # a child dataset's mount point shows the child (README pitfall): its own
            # directory entry in the parent is not compared
            if p == "/" or p in children:
                continue
            node = resolve(root, p.strip("/"))
            where = f"{name}:{p}"
            if not isinstance(node, KINDS[e["type"]]):
                fails.append(f"{where}: {type(node).__name__} is not a {e['type']}")
                continue
            checked += 1
            if (node.mode & 0o7777) != int(e["mode"], 8) or stat.S_IFMT(node.mode) == 0:
                fails.append(f"{where}: mode {node.mode:o} != {e['mode']}")
            if (node.uid, node.gid) != (e["uid"], e["gid"]):
                fails.append(f"{where}: owner {node.uid}:{node.gid}")
            if time_ns(node.mtime) != e["mtime_ns"]:
                fails.append(f"{where}: mtime {time_ns(node.mtime)} != {e['mtime_ns']}")
            if e["type"] != "dir" and node.nlink != e["nlink"]:
                fails.append(f"{where}: nlink {node.nlink} != {e['nlink']}")
            if e["type"] == "symlink" and node.target != e["target"].encode():
                fails.append(f"{where}: target {node.target!r}")
            want_x = {k: v["sha256"] for k, v in (e.get("xattrs") or {}).items()}
            got_x = {k.decode(): hashlib.sha256(v).hexdigest() for k, v in node.xattrs.items()}
            if want_x and want_x != got_x:
                fails.append(f"{where}: xattrs {sorted(got_x)} != {sorted(want_x)}")
            if e.get("hardlink_of") and resolve(root, e["hardlink_of"].strip("/")) is not node:
                fails.append(f"{where}: not the same node as {e['hardlink_of']}")
    return checked, fails


@pytest.mark.parametrize("archive", [INTACT, DEGRADED], ids=["intact", "degraded"])
def test_zfs23_every_file_zvol_and_snapshot(archive):
    """All of zfs-2.3 (blocks born before the expansion in the 3-wide layout, after it
    4-wide, clones and dedup copies of old blocks) matches, with and without member 2."""
    ctx = _open(archive)
    items, fails = _check_content(ctx)
    assert len(items) >= 2211
    assert not fails, f"{len(fails)} of {len(items)} failed: {fails[:10]}"
    checked, fails = _check_metadata(ctx)
    assert checked == 2267  # 2276 entries less 7 dataset roots and 2 mount points
    assert not fails, f"{len(fails)} of {checked}: {fails[:10]}"
    errors = [e.line() for e in ctx.report if e.severity == "error"]
    assert not errors, errors
    unsupported = [e.line() for e in ctx.report if e.code == "unsupported-feature"]
    assert not unsupported, unsupported
    info = next(e for e in ctx.report if e.code == "uberblocks")
    assert "expanded at txg 104" in info.message
    if archive == DEGRADED:
        missing = [e for e in ctx.report if e.code == "missing-member"]
        assert len(missing) == 1 and "rpool-d2-part3" in missing[0].message
        assert any(e.code == "pool-state" and "DEGRADED" in e.message for e in ctx.report)


def test_zfs23_proxmox_view():
    """vms/ and cts/ of the expanded pool: zvols and their snapshot, container roots."""
    ctx = _open(INTACT)
    m = _manifest()["pools"]["rpool"]["datasets"]
    for path, name in (("vms/100/disk-0.raw", "rpool/data/vm-100-disk-0"),
                       ("vms/100/snapshots/before/disk-0.raw", "rpool/data/vm-100-disk-0@before"),
                       ("vms/101/disk-0.raw", "rpool/data/vm-101-disk-0")):
        assert sha256_source(resolve(ctx.root, path).source) == m[name]["device"]["sha256"], path
    files = {e["path"]: e for e in m["rpool/data/subvol-102-disk-0"]["files"]}
    clone = resolve(ctx.root, "cts/102/rootfs/root/text-from-blake3.log")
    assert sha256_source(clone.source) == files["/root/text-from-blake3.log"]["sha256"]


# -- the expanded map itself ------------------------------------------------------------
def test_logical_width_follows_the_expansion_txgs():
    """vdev_raidz_init/get_logical_width: 3 -> 4 at txg 104 (the fixture's config); two
    expansions 3 -> 4 -> 5; an expansion in progress makes every width one less."""
    assert [raidz.logical_width(4, [104], False, b) for b in (5, 103, 104, 500)] == [3, 3, 4, 4]
    assert [raidz.logical_width(5, [50, 90], False, b) for b in (49, 50, 89, 90)] == [3, 4, 4, 5]
    assert [raidz.logical_width(5, [50], True, b) for b in (10, 60)] == [3, 4]
    assert raidz.logical_width(4, [], True, 999) == 3


@settings(max_examples=200, deadline=None)
@given(st.integers(3, 8), st.integers(1, 3), st.integers(0, 1 << 30), st.integers(1, 300),
       st.sampled_from([9, 12]))
def test_expanded_map_with_full_width_is_the_classic_map(width, nparity, sector, nsec, ashift):
    """With the logical width equal to the physical one, vdev_raidz_map_alloc_expanded
    puts every data sector where vdev_raidz_map_alloc does (one map, two code paths)."""
    if width <= nparity:
        return
    offset, size = sector << ashift, nsec << ashift
    cols = raidz.map_columns(offset, size, width, nparity, ashift)
    dev, off, valid = raidz.map_expanded(offset, size, width, width, nparity, ashift)
    assert dev.shape[1] == len(cols)
    for c, (cdev, coff, csize) in enumerate(cols):
        n = int(valid[:, c].sum())
        assert n == csize >> ashift
        assert (dev[:n, c] == cdev).all()
        assert (off[:n, c] == coff + (np.arange(n) << ashift)).all()


def test_expanded_map_reflow_in_progress_and_scratch():
    """Rows wholly below the synced reflow offset use the new width, the others the old
    one; with RRSS_SCRATCH_VALID the reflowed rows come from the boot-area scratch copy."""
    ashift = 12
    size = 6 << ashift  # 3 data + 3 parity sectors in width 3 (raidz1, 2 data per row)
    offset = 30 << ashift
    dev, off, _ = raidz.map_expanded(offset, size, 4, 3, 1, ashift, synced=33 << ashift)
    # row 0 (sectors 30-32) is reflowed: 4 wide; rows 1 and 2 are not: 3 wide
    assert dev[0].tolist() == [30 % 4, 31 % 4, 32 % 4] and off[0, 0] == (30 // 4) << ashift
    assert dev[1].tolist() == [33 % 3, 34 % 3, 35 % 3] and off[1, 0] == (33 // 3) << ashift
    _, off2, _ = raidz.map_expanded(offset, size, 4, 3, 1, ashift, synced=33 << ashift,
                                    scratch=True)
    assert off2[0, 0] == off[0, 0] - raidz.VDEV_BOOT_SIZE and off2[1, 0] == off[1, 0]
    state, synced = raidz.reflow_info((1 << 55) | (0x1234 >> 9 << 9 >> 9))
    assert state == raidz.RRSS_SCRATCH_VALID and synced == 0x1234 >> 9 << 9
