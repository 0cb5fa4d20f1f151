"""ZPL layer (backends/zfs/zpl.py, sa.py) end to end: every manifest entry of every pool.

Each pool is opened with ``pvfs.discover.discover`` and every path of every
dataset and snapshot in the fixture manifest is looked up with
``pvfs.nodes.resolve`` under ``storage/zfs/<pool>/...`` (snapshots under
``.zfs/snapshot/<snap>/``) and compared with the manifest: type, mode, owner,
mtime, link count, size, sha256, symlink target, device numbers, xattrs,
hard links, and the exact set of names.  The manifests were written by the
real ZFS (zfs-fuse and the OpenZFS kernel module), never by this reader.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import os
import stat

import pytest

from conftest import FIXTURES, require_path, unpack
from pvfs.discover import Options, discover
from pvfs.nodes import Dir, File, Special, Symlink, resolve

ZFS = FIXTURES / "zfs"
MODERN = FIXTURES / "zfs-modern"

KINDS = {"dir": Dir, "file": File, "symlink": Symlink}
SPECIAL = {"fifo": stat.S_IFIFO, "chardev": stat.S_IFCHR, "blockdev": stat.S_IFBLK,
           "socket": stat.S_IFSOCK}


# --------------------------------------------------------------------------- manifests
def _legacy_manifest(pool):
    """zfs/manifests/<pool>.json -> {dataset: {relpath: entry}}, keys, child datasets."""
    m = json.loads((ZFS / "manifests" / f"{pool}.json").read_text())
    out = {}
    for section in ("datasets", "snapshots"):
        for name, d in (m.get(section) or {}).items():
            tree = d.get("tree")
            if not tree:
                out.setdefault(name, None)  # a dataset without files (canmount=off ...)
                continue
            ents = {}
            for p, e in tree.items():
                # child_dataset_mountpoint entries carry only their type: in a head
                # dataset the child dataset is shown there, in a snapshot the empty dir
                ents["" if p == "." else p] = e
            out[name] = ents
    keys = [f"{k}={v['key']}" for k, v in (m.get("keys") or {}).items()]
    for name in m.get("zvols") or {}:  # zvols show up as files beside the file systems
        out.setdefault(name, None)
    return out, keys


def _modern_manifest():
    """zfs-modern/manifest.json -> {dataset: {relpath: entry}} for every file system."""
    m = json.loads((MODERN / "manifest.json").read_text())
    out = {}
    for pool in m["pools"].values():
        for name, d in pool["datasets"].items():
            files = d.get("files")
            if not files:
                continue
            ents = {}
            for e in files:
                p = e["path"].strip("/")
                ents[p] = e
            out[name] = ents
        for name in pool["datasets"]:
            out.setdefault(name, None)
    return out


@functools.cache
def _open(images: tuple, keys: tuple = ()):
    return discover(list(images), Options(backend_options={"zfs_key": list(keys)}))


def _images(archive_dir, archive):
    path = archive_dir / "images" / archive
    require_path(path)
    root = unpack(path)
    return tuple(sorted(glob.glob(str(root / "*" / "*.img"))))


def _tree_path(name: str) -> str:
    head, _, snap = name.partition("@")
    path = "storage/zfs/" + head
    if snap:
        path += f"/.zfs/snapshot/{snap}"
    return path


# --------------------------------------------------------------------------- checking
def _read_all(src):
    h = hashlib.sha256()
    for off in range(0, src.size, 4 << 20):
        h.update(src.read(off, min(4 << 20, src.size - off)))
    return h.hexdigest()


def _check_entry(path, node, e, problems, dsroot):
    kind = e["type"]
    if kind in SPECIAL:
        if not isinstance(node, Special) or stat.S_IFMT(node.mode) != SPECIAL[kind]:
            problems.append(f"{path}: not a {kind} ({node!r})")
            return
    elif not isinstance(node, KINDS[kind]):
        problems.append(f"{path}: {type(node).__name__}, manifest says {kind}")
        return
    if "mode" in e and (node.mode & 0o7777) != int(e["mode"], 8):
        problems.append(f"{path}: mode {node.mode & 0o7777:o} != {e['mode']}")
    if (node.uid, node.gid) != (e.get("uid", node.uid), e.get("gid", node.gid)):
        problems.append(f"{path}: owner {node.uid}:{node.gid} != {e['uid']}:{e['gid']}")
    if "mtime_ns" in e and abs(node.mtime - e["mtime_ns"] / 1e9) > 1e-6:
        problems.append(f"{path}: mtime {node.mtime} != {e['mtime_ns'] / 1e9}")
    if "mtime" in e and int(node.mtime) != e["mtime"]:  # zfs-fuse: whole seconds
        problems.append(f"{path}: mtime {node.mtime} != {e['mtime']}")
    if "nlink" in e and node.nlink != e["nlink"]:
        problems.append(f"{path}: nlink {node.nlink} != {e['nlink']}")
    if kind == "file":
        if node.size != e["size"]:
            problems.append(f"{path}: size {node.size} != {e['size']}")
        elif _read_all(node.source) != e["sha256"]:
            problems.append(f"{path}: sha256 differs")
    if kind == "symlink" and node.target != e["target"].encode():
        problems.append(f"{path}: target {node.target!r} != {e['target']!r}")
    if kind in ("chardev", "blockdev") and "rdev" in e:
        got = [os.major(node.rdev), os.minor(node.rdev)]
        if got != list(e["rdev"]):
            problems.append(f"{path}: rdev {got} != {e['rdev']}")
    want_x = {k: v["sha256"] for k, v in (e.get("xattrs") or {}).items()}
    got_x = {k.decode(): hashlib.sha256(v).hexdigest() for k, v in node.xattrs.items()}
    if want_x != got_x:
        problems.append(f"{path}: xattrs {sorted(got_x)} != {sorted(want_x)}")
    if e.get("hardlink_of"):
        other = resolve(dsroot, e["hardlink_of"].strip("/"))
        if other is not node:
            problems.append(f"{path}: not the same node as {e['hardlink_of']}")


def _skipped(p, skip):
    # a child dataset, a zvol's snapshots (vol@snap) and partitions (vol.parts)
    return p in skip or p.split("@")[0] in skip or p.split("/")[0].removesuffix(".parts") in skip


def _walk_names(d: Dir, prefix: str, skip: set):
    """Every path below ``d`` (lazy dirs load), not entering the names in ``skip``."""
    for name, child in d.children().items():
        p = f"{prefix}/{name}" if prefix else name
        if _skipped(p, skip):
            continue
        yield p
        if isinstance(child, Dir):
            yield from _walk_names(child, p, skip)


def check_dataset(ctx, name, ents, all_names):
    problems = []
    tp = _tree_path(name)
    dsroot = resolve(ctx.root, tp)
    if not isinstance(dsroot, Dir):
        return [f"{name}: no directory at {tp}"]
    head = name.split("@")[0]
    children = {n[len(head) + 1:] for n in all_names if n.startswith(head + "/") and "@" not in n}
    skip = {".zfs"} | ({c for c in children if "/" not in c} if "@" not in name else set())
    for p, e in ents.items():
        if _skipped(p, skip):
            continue
        node = dsroot if p == "" else resolve(dsroot, p)
        if node is None:
            problems.append(f"{name}: {p} is missing")
            continue
        if p == "":
            continue  # the dataset root's own metadata: see test_dataset_root_metadata
        _check_entry(f"{name}:{p}", node, e, problems, dsroot)
    extra = set(_walk_names(dsroot, "", skip)) - set(ents)
    if extra:
        problems.append(f"{name}: not in the manifest: {sorted(extra)[:5]}")
    return problems


#: damage codes of the ZPL layer (zpl.py)
ZPL_CODES = {"zap-damaged", "bad-dir", "unreadable-dir", "bad-object", "unreadable-object",
             "bad-dirent", "bad-xattr", "sa-registry", "dir-loop", "unknown-type",
             "symlink-too-long", "xattr-too-large", "bad-snapshot", "name-clash"}

LEGACY_POOLS = ["fxmirror", "fxraidz1", "fxraidz2", "fxstripe", "modern-tank", "modern-rpool"]
DEGRADED = [("fxraidz1-degraded-missing", "fxraidz1"), ("fxraidz1-degraded-zeroed", "fxraidz1"),
            ("fxraidz1-degraded-bitrot", "fxraidz1"), ("fxraidz2-degraded-missing1", "fxraidz2"),
            ("fxraidz2-degraded-missing2", "fxraidz2")]


@pytest.mark.parametrize("archive,pool", [(p, p) for p in LEGACY_POOLS] + DEGRADED)
def test_every_manifest_entry(archive, pool):
    images = _images(ZFS, f"{archive}.tar.xz")
    man, keys = _legacy_manifest(pool)
    ctx = _open(images, tuple(keys))
    problems = []
    checked = 0
    for name, ents in sorted(man.items()):
        if ents is None:
            continue
        problems += check_dataset(ctx, name, ents, set(man))
        checked += len(ents)
    assert checked > 300
    assert not problems, "\n".join(problems[:40])


@pytest.mark.parametrize("archive", ["rpool-raidz1.tar.xz", "rpool-raidz1-degraded.tar.xz",
                                     "tank-mirror.tar.xz"])
def test_zfs_modern_every_file(archive):
    images = _images(MODERN, archive)
    man = _modern_manifest()
    ctx = _open(images)
    pool = "tank" if "tank" in archive else "rpool"
    problems = []
    checked = 0
    for name, ents in sorted(man.items()):
        if name.split("/")[0].split("@")[0] != pool or ents is None:
            continue
        problems += check_dataset(ctx, name, ents, set(man))
        checked += len(ents)
    if pool == "rpool":
        assert checked > 600
    assert not problems, "\n".join(problems[:40])


def test_dataset_root_metadata():
    """The dataset root takes mode/owner/mtime from the root znode (fxmirror: 0755 root)."""
    images = _images(ZFS, "fxmirror.tar.xz")
    man, _ = _legacy_manifest("fxmirror")
    ctx = _open(images)
    for name in ("fxmirror", "fxmirror@snap1", "fxmirror/data/subvol-101-disk-0"):
        root = resolve(ctx.root, _tree_path(name))
        root.children()  # a lazy directory knows its metadata once loaded
        e = man[name][""]
        assert (root.mode & 0o7777, root.uid, root.gid) == (int(e["mode"], 8), e["uid"], e["gid"])
        assert int(root.mtime) == e["mtime"]


def test_snapshots_differ_from_head():
    """``.zfs/snapshot/snap1`` shows the older contents (a file deleted later is there)."""
    images = _images(ZFS, "fxmirror.tar.xz")
    man, _ = _legacy_manifest("fxmirror")
    ctx = _open(images)
    only_snap = set(man["fxmirror@snap1"]) - set(man["fxmirror"])
    assert only_snap
    for p in sorted(only_snap)[:20]:
        assert resolve(ctx.root, f"storage/zfs/fxmirror/.zfs/snapshot/snap1/{p}") is not None
        assert resolve(ctx.root, f"storage/zfs/fxmirror/{p}") is None


def test_hardlinks_are_one_node():
    images = _images(ZFS, "fxmirror.tar.xz")
    man, _ = _legacy_manifest("fxmirror")
    ctx = _open(images)
    groups = {}
    for p, e in man["fxmirror"].items():
        if e["type"] == "file" and e.get("nlink", 1) > 1:
            groups.setdefault(e["ino"], []).append(p)
    assert groups and any(len(v) > 1 for v in groups.values())
    for paths in groups.values():
        # held at once: one node (the dataset's nodes live while held, InodeSpace)
        nodes = [resolve(ctx.root, f"storage/zfs/fxmirror/{p}") for p in paths]
        assert len({id(n) for n in nodes}) == 1 and nodes[0] is not None, paths


def test_sparse_file_holes_are_unmapped():
    images = _images(ZFS, "fxmirror.tar.xz")
    man, _ = _legacy_manifest("fxmirror")
    ctx = _open(images)
    e = man["fxmirror"]["sparse/all-hole.bin"]
    node = resolve(ctx.root, "storage/zfs/fxmirror/sparse/all-hole.bin")
    assert node.size == e["size"] and e["written_ranges"] == []
    assert {s for _, _, s in node.source.block_status()} <= {"unmapped", "zero"}


def test_no_zfs_errors_on_intact_pools():
    for archive in ("fxmirror.tar.xz", "modern-rpool.tar.xz"):
        images = _images(ZFS, archive)
        man, keys = _legacy_manifest(archive.split(".")[0])
        ctx = _open(images, tuple(keys))
        for name, ents in man.items():
            if ents is not None:
                check_dataset(ctx, name, ents, set(man))  # loads every directory
        bad = [e.line() for e in ctx.report if e.layer == "zfs" and e.code in ZPL_CODES]
        assert not bad, "\n".join(bad[:20])


def _with_bad_blocks(tmp_path, images, dva_offsets, length):
    """Symlinks to ``images`` with ddrescue mapfiles marking the blocks at these DVA
    offsets (+ the 4 MiB label/boot reserve) unreadable on every member."""
    bad = sorted(0x400000 + o for o in dva_offsets)
    links = []
    for img in images:
        link = tmp_path / os.path.basename(img)
        link.symlink_to(img)
        size = os.path.getsize(img)
        lines, pos = ["0 +"], 0
        for off in bad:
            lines += [f"{pos:#x} {off - pos:#x} +", f"{off:#x} {length:#x} -"]
            pos = off + length
        lines.append(f"{pos:#x} {size - pos:#x} +")
        (tmp_path / (link.name + ".map")).write_text("\n".join(lines) + "\n")
        links.append(str(link))
    return links


def test_unreadable_directory_children_appear_in_lost_and_found(tmp_path):
    """bigdir's only ZAP block is marked bad on both mirror members with ddrescue
    mapfiles: the directory is reported, and its 1400 files are found by object number
    in ``.zfs/lost+found`` with the manifest's contents.

    The block (object 85 of dataset ID 16) has two copies, directories being metadata:
    DVA[0] ``0:1e5e000:2000`` as zdb prints it, DVA[1] ``0:48000:2000`` from the block
    pointer itself (zdb -ddddd prints only the first DVA)."""
    images = _images(ZFS, "fxmirror.tar.xz")
    man, _ = _legacy_manifest("fxmirror")
    links = _with_bad_blocks(tmp_path, images, [0x48000, 0x1E5E000], 0x2000)
    ctx = discover(links, Options())
    bigdir = resolve(ctx.root, "storage/zfs/fxmirror/bigdir")
    assert isinstance(bigdir, Dir) and bigdir.children() == {}
    assert any(e.code == "unreadable-dir" and e.path == "storage/zfs/fxmirror/bigdir"
               for e in ctx.report)
    lost = resolve(ctx.root, "storage/zfs/fxmirror/.zfs/lost+found").children()
    want = {str(e["ino"]): e for p, e in man["fxmirror"].items() if p.startswith("bigdir/")}
    assert set(lost) == set(want)
    for ino in sorted(want):
        node, e = lost[ino], want[ino]
        assert node.size == e["size"] and _read_all(node.source) == e["sha256"]
    # the rest of the pool is untouched
    assert resolve(ctx.root, "storage/zfs/fxmirror/README.txt") is not None


def test_unreadable_master_node_root_found_by_scanning(tmp_path):
    """fxmirror/comp-off's master node (object 1, ``L0 0:125000:1000`` in zdb; its second
    copy ``0:1925000:1000`` from the block pointer) is unreadable on both mirror sides:
    the root directory is found by scanning and every file reads back."""
    images = _images(ZFS, "fxmirror.tar.xz")
    man, _ = _legacy_manifest("fxmirror")
    ctx = discover(_with_bad_blocks(tmp_path, images, [0x125000, 0x1925000], 0x1000),
                   Options())
    problems = check_dataset(ctx, "fxmirror/comp-off", man["fxmirror/comp-off"], set(man))
    assert not problems, problems
    assert any(e.code == "master-node" and e.path == "storage/zfs/fxmirror/comp-off"
               for e in ctx.report)


def test_fat_zap_directory_with_lost_header_block(tmp_path):
    """fxmirror's ``names`` (object 70, a fat ZAP: header block 0 + one leaf) loses its
    header block on both mirror sides (its two DVAs ``0:7ba000:1000`` and
    ``0:1b26000:1000``, taken from the object's L1 block pointers): the entries are
    salvaged from the leaf, the loss is reported, and every file reads back."""
    images = _images(ZFS, "fxmirror.tar.xz")
    man, _ = _legacy_manifest("fxmirror")
    ctx = discover(_with_bad_blocks(tmp_path, images, [0x7BA000, 0x1B26000], 0x1000),
                   Options())
    want = {p: e for p, e in man["fxmirror"].items() if p.startswith("names/")}
    assert len(want) >= 3
    problems = []
    dsroot = resolve(ctx.root, "storage/zfs/fxmirror")
    for p, e in want.items():
        node = resolve(dsroot, p)
        if node is None:
            problems.append(f"{p} missing")
        else:
            _check_entry(p, node, e, problems, dsroot)
    assert not problems, problems
    assert any(e.code == "zap-damaged" and e.path == "storage/zfs/fxmirror/names" and
               "salvaged" in e.message for e in ctx.report)


@pytest.mark.parametrize("lost", [{47}, {46, 47}, {45, 46, 47}])
def test_lost_sa_layouts_are_guessed(monkeypatch, lost):
    """The SA layouts (type 47), registry (46) and SA master node (45) objects are made
    unreadable: the ZPL's standard numbering and guessed layouts still give every
    entry of the SA file systems of modern-rpool (ZPL 5) its manifest metadata."""
    from backends.zfs import zap as zapmod
    from pvfs.errors import UnreadableError

    real = zapmod.zap_entries

    def lossy(dnode, **kw):
        if getattr(dnode, "type", None) in lost:
            raise UnreadableError("made unreadable by the test", [(0, 512)])
        return real(dnode, **kw)

    monkeypatch.setattr(zapmod, "zap_entries", lossy)
    images = _images(ZFS, "modern-rpool.tar.xz")
    man, keys = _legacy_manifest("modern-rpool")
    ctx = discover(list(images), Options(backend_options={"zfs_key": keys}))
    problems, checked = [], 0
    for name in ("rpool", "rpool/xattr-sa", "rpool/data/subvol-101-disk-0", "rpool/embedded",
                 "rpool/encrypted", "rpool@snap1"):
        problems += check_dataset(ctx, name, man[name], set(man))
        checked += len(man[name])
    assert checked > 2000
    assert not problems, "\n".join(problems[:20])
    assert any(e.code == "sa-registry" and "guessed" in e.message for e in ctx.report)
