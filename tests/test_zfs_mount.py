"""A ZFS dataset through the FUSE mount (issue 15 item 5): its directories take their entries
from the dataset (pvfs.nodes.InodeSpace) and keep none, so what the kernel sees must still be
the pool the manifest describes (zfs/fxmirror, made by zfs-fuse: 1,484 entries, a fat-ZAP
directory of 1,400 files, hard links, symlinks, special files), with inode numbers that are
the objects' own and stat answers that do not change when the kernel forgets the inodes
and the daemon builds the nodes again.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from mountutil import needs_fuse, pvfs_mounted
from test_zfs_zpl import ZFS, _images, _legacy_manifest, _skipped

KINDS = {"dir": stat.S_IFDIR, "file": stat.S_IFREG, "symlink": stat.S_IFLNK,
         "fifo": stat.S_IFIFO, "chardev": stat.S_IFCHR, "blockdev": stat.S_IFBLK,
         "socket": stat.S_IFSOCK}
KEY_MASK = (1 << 48) - 1


def _drop_kernel_caches() -> None:
    """Dentries and inodes (root): the kernel sends FORGET for the mount's inodes."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("2\n")


def _walk(top: str) -> dict[str, os.DirEntry]:
    out = {}
    todo = [""]
    while todo:
        rel = todo.pop()
        with os.scandir(os.path.join(top, rel)) as it:
            for e in it:
                p = f"{rel}/{e.name}" if rel else e.name
                out[p] = e
                if e.is_dir(follow_symlinks=False) and e.name != ".zfs":
                    todo.append(p)
    return out


@needs_fuse
def test_dataset_through_the_mount(tmp_path):
    images = _images(ZFS, "fxmirror.tar.xz")
    man, _ = _legacy_manifest("fxmirror")
    want = man["fxmirror"]
    children = {n[len("fxmirror/"):] for n in man if n.startswith("fxmirror/") and "@" not in n}
    skip = {".zfs"} | {c for c in children if "/" not in c}
    want = {p: e for p, e in want.items() if p and not _skipped(p, skip)}
    with pvfs_mounted(images, tmp_path / "m") as mnt:
        top = os.path.join(mnt, "storage/zfs/fxmirror")
        listed = _walk(top)
        # the listing (type-only attributes: d_type, no stat) names every entry once
        got = {p for p in listed if not _skipped(p, skip)}
        assert got == set(want), (sorted(got - set(want))[:5], sorted(set(want) - got)[:5])
        for p, e in want.items():
            assert listed[p].is_dir(follow_symlinks=False) == (e["type"] == "dir"), p

        def stats():
            return {p: os.lstat(os.path.join(top, p)) for p in sorted(want)}

        first = stats()
        inodes: dict[int, int] = {}
        for p, e in want.items():
            st = first[p]
            assert stat.S_IFMT(st.st_mode) == KINDS[e["type"]], p
            assert stat.S_IMODE(st.st_mode) == int(e["mode"], 8), p
            assert (st.st_uid, st.st_gid, int(st.st_mtime)) == (e["uid"], e["gid"],
                                                                e["mtime"]), p
            assert st.st_nlink == e["nlink"], p
            if e["type"] != "dir":  # numbered from the object: a hard link is one inode
                assert st.st_ino & KEY_MASK == e["ino"], p
                assert inodes.setdefault(e["ino"], st.st_ino) == st.st_ino, p
            if e["type"] == "file":
                assert st.st_size == e["size"], p
                with open(os.path.join(top, p), "rb") as f:
                    assert hashlib.sha256(f.read()).hexdigest() == e["sha256"], p
            elif e["type"] == "symlink":
                assert os.readlink(os.path.join(top, p)) == e["target"], p
        assert any(e["nlink"] > 1 and e["type"] == "file" for e in want.values())
        sub = next(p for p, e in want.items() if e["type"] == "dir" and "/" in p)
        assert os.stat(os.path.join(top, sub, "..")).st_ino == \
            os.stat(os.path.join(top, sub.rsplit("/", 1)[0])).st_ino
        # the kernel forgets; the daemon drops and rebuilds: the same answers
        _drop_kernel_caches()
        again = stats()
        fields = ("st_ino", "st_mode", "st_nlink", "st_uid", "st_gid", "st_size",
                  "st_blocks", "st_mtime_ns", "st_ctime_ns", "st_atime_ns")
        for p in want:
            assert [getattr(first[p], f) for f in fields] == \
                [getattr(again[p], f) for f in fields], p
        # a big (fat ZAP) directory listed after the forget: complete, and `ls -l`-style
        # (stat after each listed name) agrees with the manifest
        big = [p for p in want if p.startswith("bigdir/")]
        assert len(big) == 1400
        _drop_kernel_caches()
        names = os.listdir(os.path.join(top, "bigdir"))
        assert sorted(f"bigdir/{n}" for n in names) == sorted(big)
        for n in names:
            assert os.lstat(os.path.join(top, "bigdir", n)).st_size == want[f"bigdir/{n}"]["size"]


def _cached_size(path: str) -> int:
    """The size the kernel has cached for ``path``, not asking the daemon (statx with
    AT_STATX_DONT_SYNC)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(256)
    at_fdcwd, nofollow, dont_sync, basic = -100, 0x100, 0x4000, 0x7FF
    if libc.statx(at_fdcwd, os.fsencode(path), nofollow | dont_sync, basic, buf) != 0:
        raise OSError(ctypes.get_errno(), path)
    return int.from_bytes(buf.raw[40:48], "little")  # stx_size


@needs_fuse
def test_listing_keeps_the_attributes_the_kernel_holds(tmp_path, monkeypatch):
    """A listing answers files with their type only (size 0, expired at once) unless the
    kernel holds the inode with full attributes: it would take size 0 and drop the
    file's cached pages, and a read racing with the listing could end early.  The
    daemon keeps 16 nodes here: the held inodes' nodes are gone when it lists again."""
    monkeypatch.setenv("PVFS_NODE_CACHE", "16")
    images = _images(ZFS, "fxmirror.tar.xz")
    man, _ = _legacy_manifest("fxmirror")
    want = man["fxmirror"]
    with pvfs_mounted(images, tmp_path / "m") as mnt:
        top = os.path.join(mnt, "storage/zfs/fxmirror")
        _drop_kernel_caches()
        names = sorted(os.listdir(os.path.join(top, "bigdir")))  # type-only entries
        files = [n for n in names if want[f"bigdir/{n}"]["size"] > 0][:50]
        assert len(files) == 50
        assert _cached_size(os.path.join(top, "bigdir", files[0])) == 0  # never stat'ed
        for n in files:  # now held with full attributes (and pages cached)
            with open(os.path.join(top, "bigdir", n), "rb") as f:
                assert len(f.read()) == want[f"bigdir/{n}"]["size"]
        assert sorted(os.listdir(os.path.join(top, "bigdir"))) == names
        for n in files:
            assert _cached_size(os.path.join(top, "bigdir", n)) == \
                want[f"bigdir/{n}"]["size"], n


def test_a_lister_that_stats_gets_full_attributes():
    """Without the kernel: the mount's handlers on fxmirror's bigdir.  A listing starts
    type-only; a getattr of one of its entries builds the next entries' nodes in one
    worker-thread hop (stat-ahead), switches the listing to full attributes, and so the
    next listings (a walk that stats: os.walk lists a whole directory first)."""
    import trio

    from mountd import fs as mountfs
    from mountd.fs import PvfsOperations
    from pvfs.discover import Options, discover

    man, _ = _legacy_manifest("fxmirror")
    ops = PvfsOperations(discover(list(_images(ZFS, "fxmirror.tar.xz")), Options()).root)

    async def go():
        ino = 1
        for part in (b"storage", b"zfs", b"fxmirror", b"bigdir"):
            ino = (await ops.lookup(ino, part)).st_ino
        h = ops._handles[await ops.opendir(ino, None)][1]
        batch = ops._batch(ino, h, 0, False)
        assert len(batch) == mountfs.READDIR_BATCH and not h.full
        assert all(node is None for _, _, node, _, _ in batch)  # (ino, DT_* type) only
        _, name, _, file_ino, dt = batch[5]
        assert dt == stat.S_IFREG >> 12
        got = await ops.getattr(file_ino)
        e = man["fxmirror"][f"bigdir/{name}"]
        assert (got.st_ino & KEY_MASK, got.st_size, got.attr_timeout) == (
            e["ino"], e["size"], mountfs.TIMEOUT)
        assert h.full and len(ops._keyed) >= mountfs.READDIR_BATCH // 2  # stat-ahead
        assert all(n is not None for _, _, n, _, _ in ops._batch(ino, h, 200, True))
        h2 = ops._handles[await ops.opendir(ino, None)][1]
        assert h2.full  # the next listing
        # its files come with full attributes read from their dnodes, no node built
        # (InodeSpace.stat): what the node gives, and what the manifest says
        ops._keyed.clear()
        space = h2.dir.space
        fields = ("st_ino", "st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size",
                  "st_blocks", "st_atime_ns", "st_mtime_ns", "st_ctime_ns", "attr_timeout",
                  "entry_timeout")
        seen, i = 0, 0
        while i < len(h2.listing):
            batch = ops._batch(ino, h2, i, True)
            for _, name, node, file_ino, attrs in batch:
                e = man["fxmirror"][f"bigdir/{name}"]
                assert node is mountfs.ATTRS_ONLY, name  # bigdir holds regular files only
                built = ops._attrs(space.child(h2.dir.key, name, file_ino & KEY_MASK),
                                   file_ino)
                assert [getattr(attrs, f) for f in fields] == \
                    [getattr(built, f) for f in fields], name
                assert (file_ino & KEY_MASK, attrs.st_size, attrs.st_nlink,
                        attrs.st_mtime_ns // 10**9) == (e["ino"], e["size"], e["nlink"],
                                                         e["mtime"]), name
                seen += 1
            i = batch[-1][0] + 1
        assert seen == 1400

    trio.run(go)


def test_xattrs_of_a_listed_directory_without_thread_hops():
    """``ls -l`` asks every listed file for two xattrs (security.selinux,
    system.posix_acl_access; the second is EOPNOTSUPP with acltype=off): the mount
    answers them, and listxattr, on its event loop,
    with no worker-thread hop once the node is built (zfs-modern subvol-105: 400 files
    with 2 SA xattrs each, made by OpenZFS; values against the manifest's sha256).  An
    xattr directory (subvol-104, xattr=on) is read in a worker thread, once."""
    import errno
    import json

    import pyfuse3
    import pytest
    import trio

    import scancases
    from conftest import require_fixture
    from mountd import fs as mountfs
    from mountd.fs import PvfsOperations
    from pvfs.discover import Options, discover

    man = json.loads(require_fixture("zfs-modern", "manifest.json").read_text())
    sets = man["pools"]["rpool"]["datasets"]
    want = {f"{ds.rsplit('/', 1)[-1]}{e['path']}": {
        k.encode(): v["sha256"] for k, v in e["xattrs"].items()}
        for ds in ("rpool/data/subvol-104-disk-0", "rpool/data/subvol-105-disk-0")
        for e in sets[ds]["files"] if e.get("xattrs")}
    size = {e["path"].rsplit("/", 1)[-1]: e["size"]
            for e in sets["rpool/data/subvol-105-disk-0"]["files"]}
    images = scancases.CASES_BY_NAME["zfs-modern/rpool-raidz1"].inputs()
    ops = PvfsOperations(discover(images, Options()).root)

    async def walk_to(*parts: str) -> int:
        ino = 1
        for part in ("storage", "zfs", "rpool", "data", *parts):
            ino = (await ops.lookup(ino, part.encode())).st_ino
        return ino

    async def absent(ino: int, name: bytes, err: int = errno.ENODATA) -> None:
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.getxattr(ino, name, None)
        assert e.value.errno == err

    async def go():
        many = await walk_to("subvol-105-disk-0", "many")
        h = ops._handles[await ops.opendir(many, None)][1]
        names, i = [], 0
        while True:  # what readdir hands the kernel (type-only: no node built)
            batch = ops._batch(many, h, i, False)
            if not batch:
                break
            names += [(name, ino) for _, name, node, ino, _ in batch if node is None]
            i = batch[-1][0] + 1
        assert len(names) == 400
        xattr_hops = got = 0
        for name, ino in names:
            assert (await ops.getattr(ino)).st_size == size[name]  # (+ stat-ahead)
            before = ops.workers.jobs
            await absent(ino, b"security.selinux")
            # acltype=off (the manifest): no ACL handler, as the kernel module answers
            await absent(ino, b"system.posix_acl_access", errno.EOPNOTSUPP)
            listed = await ops.listxattr(ino, None)
            values = {n: hashlib.sha256(await ops.getxattr(ino, n, None)).hexdigest()
                      for n in listed}
            xattr_hops += ops.workers.jobs - before
            assert values == want[f"subvol-105-disk-0/many/{name}"], name
            got += len(values)
        assert xattr_hops == 0 and got == 800
        # the stat-ahead built the files' nodes READDIR_BATCH at a time, not one per file
        assert ops.workers.jobs < 400 // mountfs.READDIR_BATCH + 10, ops.workers.jobs

        docs = await walk_to("subvol-104-disk-0", "docs")
        ino = (await ops.lookup(docs, b"with-xattrs.txt")).st_ino
        before = ops.workers.jobs
        await absent(ino, b"security.selinux")  # reads the xattr directory: one hop
        assert ops.workers.jobs == before + 1
        listed = await ops.listxattr(ino, None)
        assert {n: hashlib.sha256(await ops.getxattr(ino, n, None)).hexdigest()
                for n in listed} == want["subvol-104-disk-0/docs/with-xattrs.txt"]
        assert ops.workers.jobs == before + 1  # read once

    trio.run(go)


def _getfacl_lines(value: bytes) -> list[str]:
    """What ``getfacl -cnE`` prints for a ``system.posix_acl_access`` value, decoded here
    from the manifest's bytes (linux/include/uapi/linux/posix_acl_xattr.h: a u32 version
    2, then (u16 tag, u16 perm, u32 id) entries)."""
    import struct

    assert struct.unpack_from("<I", value)[0] == 2
    kinds = {1: "user", 2: "user", 4: "group", 8: "group", 0x10: "mask", 0x20: "other"}
    out = []
    for off in range(4, len(value), 8):
        tag, perm, ident = struct.unpack_from("<HHI", value, off)
        who = str(ident) if tag in (2, 8) else ""
        rwx = "".join(c if perm & bit else "-" for c, bit in (("r", 4), ("w", 2), ("x", 1)))
        out.append(f"{kinds[tag]}:{who}:{rwx}")
    return out


@needs_fuse
def test_acltype_and_xattr_properties_through_the_mount(tmp_path):
    """getxattr answers what OpenZFS's Linux ZPL answers for the dataset's properties
    (zfs-modern, written by OpenZFS 2.1; the manifest has ``zfs get`` of each dataset):
    with acltype=posix (subvol-102 and its snapshot, which inherits it) the POSIX ACL
    the kernel module stored is shown, by getxattr and by getfacl; with acltype=off
    (subvol-103, -104, the default) ``system.posix_acl_*`` are EOPNOTSUPP (GNU ``ls -l``
    then stops asking for them) and not listed, while ``security.selinux`` is ENODATA
    and the user xattrs (xattr=on) are still there, against the manifest's sha256."""
    import errno
    import json
    import subprocess

    import pytest

    import scancases
    from conftest import require_fixture

    man = json.loads(require_fixture("zfs-modern", "manifest.json").read_text())
    sets = man["pools"]["rpool"]["datasets"]

    def entry(ds: str, path: str) -> dict:
        return next(e for e in sets[ds]["files"] if e["path"] == path)

    def errno_of(path: str, name: str) -> int:
        with pytest.raises(OSError) as e:
            os.getxattr(path, name, follow_symlinks=False)
        return e.value.errno

    assert sets["rpool/data/subvol-102-disk-0"]["properties"]["acltype"]["value"] == "posix"
    assert sets["rpool/data/subvol-102-disk-0@before"]["properties"]["acltype"][
        "value"] == "posix"
    for ds in ("rpool/data/subvol-103-disk-0", "rpool/data/subvol-104-disk-0"):
        assert sets[ds]["properties"]["acltype"]["value"] == "off"
        assert sets[ds]["properties"]["xattr"]["value"] != "off"
    images = scancases.CASES_BY_NAME["zfs-modern/rpool-raidz1"].inputs()
    with pvfs_mounted(images, tmp_path / "m") as mnt:
        data = os.path.join(mnt, "storage/zfs/rpool/data")
        acls = 0
        for ds, rel in (("rpool/data/subvol-102-disk-0", "opt/app2/config.json"),
                        ("rpool/data/subvol-102-disk-0@before", "opt/app/config.json")):
            want = bytes.fromhex(entry(ds, "/" + rel)["xattrs"]["system.posix_acl_access"]["hex"])
            top = os.path.join(data, ds.split("/")[-1].replace("@", "/.zfs/snapshot/"))
            path = os.path.join(top, rel)
            assert os.getxattr(path, "system.posix_acl_access") == want
            assert "system.posix_acl_access" in os.listxattr(path)
            out = subprocess.run(["getfacl", "-cnE", path], capture_output=True, text=True,
                                 check=True).stdout.split()
            assert out == _getfacl_lines(want)
            assert errno_of(path, "security.selinux") == errno.ENODATA
            assert errno_of(path, "system.posix_acl_default") == errno.ENODATA
            acls += 1
        assert acls == 2
        checked = 0
        for ds in ("rpool/data/subvol-103-disk-0", "rpool/data/subvol-104-disk-0"):
            top = os.path.join(data, ds.split("/")[-1])
            for e in sets[ds]["files"]:
                path = top + e["path"]
                if e["type"] == "symlink":
                    continue
                assert errno_of(path, "system.posix_acl_access") == errno.EOPNOTSUPP, path
                assert errno_of(path, "system.posix_acl_default") == errno.EOPNOTSUPP, path
                assert errno_of(path, "security.selinux") == errno.ENODATA, path
                listed = os.listxattr(path)
                assert sorted(listed) == sorted(e.get("xattrs") or {}), path
                for name, x in (e.get("xattrs") or {}).items():
                    assert hashlib.sha256(os.getxattr(path, name)).hexdigest() == x["sha256"]
                checked += 1
        assert checked > 20, checked


def test_full_listing_attributes_without_nodes_on_system_attributes():
    """A listing answered with full attributes takes a regular file's from its dnode
    (InodeSpace.stat) instead of building its node: on a dataset written by OpenZFS
    2.1 with system attributes (zfs-modern subvol-102: hard links, symlinks, a fifo,
    sparse files, ACLs, and its snapshot), every directory's entries equal what the
    built nodes give and the manifest; other kinds still build their nodes."""
    import json

    import trio

    import scancases
    from conftest import require_fixture
    from mountd import fs as mountfs
    from mountd.fs import PvfsOperations
    from pvfs.discover import Options, discover

    man = json.loads(require_fixture("zfs-modern", "manifest.json").read_text())
    images = scancases.CASES_BY_NAME["zfs-modern/rpool-raidz1"].inputs()
    ops = PvfsOperations(discover(images, Options()).root)
    fields = ("st_ino", "st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size",
              "st_blocks", "st_atime_ns", "st_mtime_ns", "st_ctime_ns")

    async def check(ds: str, parts: tuple[str, ...]) -> tuple[int, int]:
        want = {e["path"]: e for e in man["pools"]["rpool"]["datasets"][ds]["files"]}
        top = 1
        for part in parts:
            top = (await ops.lookup(top, part.encode())).st_ino
        files = others = 0
        todo = [(top, "")]
        while todo:
            ino, rel = todo.pop()
            h = ops._handles[await ops.opendir(ino, None)][1]
            if isinstance(h, list):  # a dataset's root before its first listing loaded it
                h = ops._handles[await ops.opendir(ino, None)][1]
            h.full = True
            space = h.dir.space
            i = 0
            while i < len(h.kept) + len(h.listing):
                batch = ops._batch(ino, h, i, True)
                if not batch:
                    break
                for _, name, node, child_ino, attrs in batch:
                    path = f"{rel}/{name}"
                    if name == ".zfs":
                        continue
                    e = want[path]
                    if node is mountfs.ATTRS_ONLY:
                        assert e["type"] == "file" and not e.get("xattrs"), path
                        built = ops._attrs(space.child(h.dir.key, name, child_ino & KEY_MASK),
                                           child_ino)
                        assert [getattr(attrs, f) for f in fields] == \
                            [getattr(built, f) for f in fields], path
                        assert (attrs.st_size, attrs.st_nlink, attrs.st_uid,
                                attrs.st_mtime_ns, stat.S_IMODE(attrs.st_mode)) == (
                            e["size"], e["nlink"], e["uid"], e["mtime_ns"],
                            int(e["mode"], 8)), path
                        files += 1
                    else:  # (a file with xattrs builds its node: the mount answers them)
                        assert e["type"] != "file" or e.get("xattrs"), path
                        others += 1
                        if e["type"] == "dir":
                            todo.append((child_ino, path))
                i = batch[-1][0] + 1
        return files, others

    async def go():
        live = await check("rpool/data/subvol-102-disk-0",
                           ("storage", "zfs", "rpool", "data", "subvol-102-disk-0"))
        snap = await check("rpool/data/subvol-102-disk-0@before",
                           ("storage", "zfs", "rpool", "data", "subvol-102-disk-0", ".zfs",
                            "snapshot", "before"))
        assert live[0] > 20 and live[1] > 10 and snap[0] > 20, (live, snap)

    trio.run(go)


def test_xattrs_of_files_listed_from_their_dnodes(monkeypatch):
    """A full listing answers a file without extended attributes from its dnode
    (InodeSpace.stat), and then its getxattr ENODATA and its listxattr empty without
    building its node or a worker-thread hop (``ls -l`` asks every file); a file with
    xattrs (SA xattrs, an xattr directory, POSIX ACLs) is listed from its node and still
    answers them.  Every file of zfs-modern's subvol-102 (ACLs), -104 (xattr directory)
    and -105 (400 files with SA xattrs): listxattr and getxattr through the readdir
    handler against the manifest's sha256 and against the built node's."""
    import errno
    import json

    import pyfuse3
    import pytest
    import trio

    import scancases
    from conftest import require_fixture
    from mountd.fs import PvfsOperations
    from pvfs.discover import Options, discover

    man = json.loads(require_fixture("zfs-modern", "manifest.json").read_text())
    sets = man["pools"]["rpool"]["datasets"]
    images = scancases.CASES_BY_NAME["zfs-modern/rpool-raidz1"].inputs()
    ops = PvfsOperations(discover(images, Options()).root)
    replies: list[tuple[bytes, pyfuse3.EntryAttributes]] = []

    def reply(token, name, attrs, next_id):  # what readdir hands the kernel
        a = pyfuse3.EntryAttributes()
        for f in ("st_ino", "st_mode", "st_size"):
            setattr(a, f, getattr(attrs, f))
        replies.append((name, a))
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)

    async def xattrs_of(ino: int) -> dict[bytes, str]:
        names = await ops.listxattr(ino, None)
        with pytest.raises(pyfuse3.FUSEError) as e:  # absent unless the manifest has it
            await ops.getxattr(ino, b"security.pvfs-none", None)
        assert e.value.errno == errno.ENODATA
        return {n: hashlib.sha256(await ops.getxattr(ino, n, None)).hexdigest()
                for n in names}

    async def check(ds: str) -> tuple[int, int]:
        want = {e["path"]: e for e in sets[ds]["files"]}
        top = 1
        for part in ("storage", "zfs", *ds.split("/")):
            top = (await ops.lookup(top, part.encode())).st_ino
        bare = rich = 0
        todo = [(top, "")]
        while todo:
            ino, rel = todo.pop()
            fh = await ops.opendir(ino, None)
            if isinstance(ops._handles[fh][1], list):  # a dataset's root, first listing
                fh = await ops.opendir(ino, None)
            h = ops._handles[fh][1]
            h.full = True
            replies.clear()
            await ops.readdir(fh, 0, None)
            for name_b, attrs in list(replies):
                name = name_b.decode()
                path = f"{rel}/{name}"
                if name == ".zfs":
                    continue
                e = want[path]
                if stat.S_ISDIR(attrs.st_mode):
                    todo.append((attrs.st_ino, path))
                if not stat.S_ISREG(attrs.st_mode):
                    continue
                ino_f = attrs.st_ino
                fast = (ino_f & KEY_MASK) in ops._bare[ino_f >> 48]
                ops._keyed.pop(ino_f, None)  # as after the kernel forgot it
                before = ops.workers.jobs
                got = await xattrs_of(ino_f)
                assert got == {k.encode(): v["sha256"]
                               for k, v in (e.get("xattrs") or {}).items()}, path
                node = h.dir.space.child(h.dir.key, name, ino_f & KEY_MASK)
                assert sorted(got) == sorted(n for n in node.xattr_names()
                                             if h.dir.space.xattr_supported(n)), path
                if fast:
                    assert not e.get("xattrs") and ops.workers.jobs == before, path
                    bare += 1
                else:
                    assert e.get("xattrs"), path  # (all files here are plain)
                    rich += 1
        return bare, rich

    async def go():
        counts = {ds: await check(f"rpool/data/{ds}")
                  for ds in ("subvol-102-disk-0", "subvol-104-disk-0", "subvol-105-disk-0")}
        assert counts["subvol-105-disk-0"][1] == 400, counts
        assert counts["subvol-104-disk-0"][1] == 1 and counts["subvol-102-disk-0"][1] == 2
        assert all(b > 5 for b, _ in counts.values()), counts

    trio.run(go)


def test_dnode_blocks_are_cached_once():
    """A dnode block sits in the metadata cache once, as the object set's decoded block:
    read_bp kept the same bytes under its own key too, so the budget held half as many
    dnode blocks, and ``ls -l`` of a 100,000-entry directory (hash order: every stat-ahead
    batch touches ~120 dnode blocks) re-read most of them (11.0 s of getattr answers
    in-process, 3.5 s now)."""
    from pvfs.cache import METADATA_CACHE
    from pvfs.nodes import resolve

    METADATA_CACHE.clear()
    ctx_root = _mounted_tree()
    d = resolve(ctx_root, "storage/zfs/fxmirror/bigdir")
    space = d.space
    listing = space.entries(d.key)
    for name, key in list(zip(listing.names, listing.keys, strict=True))[:600]:
        assert space.stat(key) is not None, name  # reads the dnode blocks
    items = list(METADATA_CACHE._items.items())
    dn = [v for k, v in items if k[0] == "zfs-dnblk"]
    assert len(dn) >= 600 * 512 // (16 << 10)  # 600 objects' dnodes: 19+ blocks
    held = {id(b.data) for b in dn}
    assert not [k for k, v in items if k[0] == "zfs-blk" and id(v) in held]


def _mounted_tree():
    from pvfs.discover import Options, discover
    from pvfs.nodes import resolve

    root = discover(list(_images(ZFS, "fxmirror.tar.xz")), Options()).root
    d = resolve(root, "storage/zfs/fxmirror/bigdir")
    d.children()
    return root


def test_listing_key_index():
    """The stat-ahead finds an entry's place in a listing by its key: a ZFS listing's
    array of keys through numpy (no int object per element), any other sequence as is."""
    from array import array

    from mountd.fs import _index

    keys = array("Q", [5, 9, (1 << 63) + 1, 7] + list(range(100, 100_100)))
    assert [_index(keys, k) for k in (5, 9, (1 << 63) + 1, 7, 8, 100_099)] == \
        [0, 1, 2, 3, -1, 100_003]
    assert (_index([3, 4], 4), _index([3, 4], 5), _index(range(10), 7)) == (1, -1, 7)
