"""btrfs reader against the kernel's view of images made by mkfs.btrfs and a loop mount.

Every entry the kernel shows with ``subvolid=5`` (name, type, size, sha256,
mode, uid, gid, mtime/ctime in ns, symlink target, xattrs incl. POSIX ACLs,
device numbers, hard-link identity) is compared with the node tree pvfs
builds from the image bytes.
"""

from __future__ import annotations

import hashlib
import stat
import subprocess

import pytest
from btrfs_image import cached_image, have_tools

from pvfs.discover import Context, Options, finish, run_queue
from pvfs.nodes import Dir, File, Special, Symlink, resolve, time_ns, walk
from pvfs.source import FileSource

pytestmark = pytest.mark.skipif(have_tools() is not None, reason=str(have_tools()))

FILES = "storage/files/p1.files"


def open_image(source, bad=None):
    opts = Options()
    if bad:
        opts.bad = bad
    ctx = Context(opts)
    ctx.add_volume(source, ctx.storage("files"), "p1", "storage/files", "partition",
                   children_home=None)
    run_queue(ctx)
    finish(ctx)
    return ctx


def dump_super(img) -> dict:
    """Numeric fields of the superblock as btrfs-progs prints them."""
    out = subprocess.run(["btrfs", "inspect-internal", "dump-super", str(img)],
                         check=True, capture_output=True, text=True, errors="replace").stdout
    fields = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            fields[parts[0]] = int(parts[1])
    return fields


def sha256_node(node):
    h = hashlib.sha256()
    src = node.source
    for off in range(0, src.size, 1 << 20):
        h.update(src.read(off, min(1 << 20, src.size - off)))
    return h.hexdigest()


def compare(root, view, skip=()):
    """Mismatches between the node tree and the kernel's view (a list of strings)."""
    ours = dict(walk(root))
    bad = []
    missing = sorted(set(view) - set(ours))
    extra = sorted(set(ours) - set(view))
    if missing:
        bad.append(f"missing: {missing[:10]} ({len(missing)})")
    if extra:
        bad.append(f"extra: {extra[:10]} ({len(extra)})")
    inodes = {}
    for path, k in view.items():
        node = ours.get(path)
        if node is None or path in skip:
            continue
        inodes.setdefault(k["inode"], set()).add(id(node))
        kind = stat.S_IFMT(k["mode"])
        want_cls = {stat.S_IFDIR: Dir, stat.S_IFREG: File, stat.S_IFLNK: Symlink}.get(kind,
                                                                                    Special)
        if not isinstance(node, want_cls):
            bad.append(f"{path}: {type(node).__name__}, kernel {oct(k['mode'])}")
            continue
        got = {"mode": node.mode, "uid": node.uid, "gid": node.gid,
               "mtime_ns": time_ns(node.mtime), "ctime_ns": time_ns(node.ctime)}
        want = {f: k[f] for f in got}
        if kind != stat.S_IFDIR:
            got["size"], want["size"] = node.size, k["size"]
            got["nlink"], want["nlink"] = node.nlink, k["nlink"]
        if kind == stat.S_IFLNK:
            got["target"], want["target"] = node.target.hex(), k["target"]
        else:
            got["xattrs"] = {n.decode(): v.hex() for n, v in node.xattrs.items()}
            want["xattrs"] = k["xattrs"]
        if kind in (stat.S_IFCHR, stat.S_IFBLK):
            got["rdev"], want["rdev"] = node.rdev, k["rdev"]
        if kind == stat.S_IFREG:
            got["sha256"], want["sha256"] = sha256_node(node), k["sha256"]
            got["blocks"], want["blocks"] = (node.allocated_bytes() + 511) // 512, k["blocks"]
        for f in got:
            if got[f] != want[f]:
                bad.append(f"{path}: {f} {str(got[f])[:80]} != kernel {str(want[f])[:80]}")
    for ino, ids in inodes.items():
        if len(ids) != 1:
            bad.append(f"inode {ino}: {len(ids)} nodes for one inode")
    return bad


def empty_subvol_dirs(view):
    """Subvolumes inside snapshots: the kernel shows made-up empty directories
    (inode 2, the time of the lookup), so only their names and types are compared."""
    return {p for p, k in view.items() if k["inode"].endswith(":2")}


@pytest.fixture(scope="module")
def main_image():
    return cached_image("main")


def test_every_entry_matches_the_kernel(main_image):
    img, view = main_image
    ctx = open_image(FileSource(img))
    root = resolve(ctx.root, FILES)
    assert isinstance(root, Dir)
    skip = empty_subvol_dirs(view)
    assert {"snaps/sub1-ro/nested", "snap-top/sub1", "snap-top/snaps/sub1-ro"} <= skip
    bad = compare(root, view, skip)
    assert not bad, "\n".join(bad[:40])
    assert len(view) > 4000
    errors = [e for e in ctx.report if e.severity != "info" and e.layer == "btrfs"]
    assert not errors, errors


def test_filesystem_info(main_image):
    img, _view = main_image
    ctx = open_image(FileSource(img))
    vol = next(v for v in ctx.volumes if v.guestfs is not None)
    info = vol.guestfs.info
    assert (info.fstype, info.label, info.uuid) == ("btrfs", "pvfs-btrfs",
                                                     "5b7e4a0c-6d2f-4c1e-9a43-1f0e2d3c4b5a")
    sb = dump_super(img)
    assert (info.size, info.used) == (sb["total_bytes"], sb["bytes_used"]) == \
        (320 << 20, info.used)
    assert info.clean is None and info.journal is None
    assert any("default subvolume is 256" in n for n in info.notes)
    assert any("metadata DUP" in n and "data SINGLE" in n for n in info.notes)


def test_image_has_every_kind_of_extent(main_image):
    """The comparison above is only worth something if the kernel wrote every kind of
    extent this reader decodes (btrfs-progs' dump-tree says what is on disk)."""
    img, _view = main_image
    dump = subprocess.run(["btrfs", "inspect-internal", "dump-tree", "-t", "5", str(img)],
                          check=True, capture_output=True, text=True, errors="replace").stdout
    for kind in ("zlib", "lzo", "zstd"):
        assert f"extent compression {S_COMPRESS[kind]} ({kind})" in dump, kind
    for kind in ("lzo", "zstd", "none"):
        assert f"compression {S_COMPRESS[kind]} ({kind})" in "\n".join(
            line for line in dump.splitlines() if "inline extent data" in line), kind
    assert "type 2 (prealloc)" in dump and "type 1 (regular)" in dump


S_COMPRESS = {"none": 0, "zlib": 1, "lzo": 2, "zstd": 3}
