"""btrfs test images made by mkfs.btrfs and the kernel, and the kernel's view of them.

``build_image`` makes a filesystem with mkfs.btrfs (btrfs-progs) and fills it
through a real loop mount (as root): zstd mount compression, per-file lzo and
zlib (``btrfs property set``), inline and compressed inline extents, a
NODATASUM file (``chattr +C``), sparse and fallocated files, reflinks, hard
links, symlinks, xattrs and POSIX ACLs (setfacl), devices, a fifo and a
socket, nanosecond times in 1960 and 2100, setuid bits, uids above 65535, a
directory of 2000 files, non-UTF-8 and 255-byte names, subvolumes, a nested
subvolume, a read-only and a writable snapshot, and a default subvolume.

``kernel_view`` mounts the image read-only with ``subvolid=5`` and records
what the kernel shows (lstat, readlink, listxattr/getxattr, sha256): the
ground truth the reader is compared with.  Images and views are cached under
the fixture cache, keyed by a hash of this file, so a changed recipe rebuilds.
"""

from __future__ import annotations

import contextlib
import signal
import fcntl
import hashlib
import inspect
import json
import os
import random
import shutil
import socket
import stat
import subprocess
import tempfile
from pathlib import Path

from conftest import CACHE

from pvfs.discover import Context, Options, finish, run_queue
from pvfs.errors import UnreadableError
from pvfs.nodes import Dir, File, Special, Symlink, resolve, time_ns, walk

HERE = Path(__file__).resolve()
UUID = "5b7e4a0c-6d2f-4c1e-9a43-1f0e2d3c4b5a"


def recipe_key() -> str:
    """Hash of the recipe (the functions that make an image and its kernel view)."""
    parts = [inspect.getsource(fn) for fn in (
        _data, _text, _write, _compressed_file, populate, populate_small, build_image, _entry,
        walk_mounted, build_two_devices, build_with_log_tree)]
    return hashlib.sha256("".join(parts).encode()).hexdigest()[:16]


def have_tools() -> str | None:
    """Why images cannot be built here (None when they can)."""
    if os.geteuid() != 0:
        return "needs root for loop mounts"
    for tool in ("mkfs.btrfs", "btrfs", "setfacl", "mount", "losetup"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (backends/btrfs/deps-apt.txt)"
    try:
        with open("/proc/filesystems") as f:
            if "btrfs" not in f.read():
                subprocess.run(["modprobe", "btrfs"], capture_output=True)
    except OSError:
        pass
    return None


def run(*cmd, **kw):
    return subprocess.run([str(c) for c in cmd], check=True, capture_output=True, **kw)


@contextlib.contextmanager
def loop_mounted(img, opts):
    mnt = tempfile.mkdtemp(prefix="pvfs-btrfs-")
    run("mount", "-o", f"loop,{opts}", img, mnt)
    try:
        yield Path(mnt)
    finally:
        subprocess.run(["umount", mnt], check=False)
        os.rmdir(mnt)


def _data(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _text(seed: int, n: int) -> bytes:
    rng = random.Random(seed)
    words = [b"btrfs", b"pvfs", b"proxmox", b"extent", b"chunk", b"subvolume", b"leaf",
             b"node", b"checksum", b"\n", b"snapshot", b"zstd", b"lzo", b"zlib"]
    out = bytearray()
    while len(out) < n:
        out += rng.choice(words) + b" "
    return bytes(out[:n])


def _write(path, data, mode=0o644):
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def _compressed_file(path, algo, data):
    """An empty file with a per-file compression property, then its data."""
    open(path, "wb").close()
    run("btrfs", "property", "set", path, "compression", algo)
    with open(path, "ab") as f:
        f.write(data)


def populate(m: Path):
    """Fill the mounted top-level subvolume ``m``."""
    _write(m / "hello.txt", b"hello\n")
    _write(m / "empty", b"")
    os.mkdir(m / "empty-dir")
    _write(m / "ünïcødé-名前.txt", "grüße\n".encode())
    _write(m / ("L" * 251 + ".txt"), b"long name\n")
    _write(os.fsencode(m) + b"/latin1-\xe9\xff.bin", b"not utf-8\n")
    os.makedirs(m / "d1" / "d2" / "d3")
    _write(m / "d1" / "d2" / "d3" / "deep.txt", _text(1, 5000))
    # hard links: three names, one inode
    _write(m / "d1" / "hl-a", _text(2, 7000))
    os.link(m / "d1" / "hl-a", m / "d1" / "d2" / "hl-b")
    os.link(m / "d1" / "hl-a", m / "hl-c")
    # symlinks
    os.symlink("hello.txt", m / "sl-short")
    os.symlink("/" + "x" * 200 + "/" + "y" * 799, m / "sl-long")
    os.symlink("does/not/exist", m / "sl-dangling")
    # xattrs and ACLs
    _write(m / "xattr.txt", b"with xattrs\n")
    os.setxattr(m / "xattr.txt", "user.comment", b"a comment")
    os.setxattr(m / "xattr.txt", "user.binary", bytes(range(256)))
    os.setxattr(m / "xattr.txt", "user.big", _text(3, 3000))
    os.setxattr(m / "d1", "user.dir", b"on a directory")
    _write(m / "acl.txt", b"acl\n")
    run("setfacl", "-m", "u:1234:rwx,g:5678:r", m / "acl.txt")
    os.mkdir(m / "acl-dir")
    run("setfacl", "-d", "-m", "u:1234:rx", m / "acl-dir")
    # devices, fifo, socket
    os.mknod(m / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(m / "sda1", stat.S_IFBLK | 0o660, os.makedev(8, 1))
    os.mknod(m / "bigdev", stat.S_IFCHR | 0o600, os.makedev(300, 70000))
    os.mkfifo(m / "fifo", 0o640)
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(m / "socket"))
    s.close()
    # sparse and preallocated files
    with open(m / "sparse.bin", "wb") as f:
        for off in (1 << 20, 5 << 20):
            f.seek(off)
            f.write(_data(off, 10000))
        f.truncate(10 << 20)
    run("fallocate", "-l", str(1 << 20), m / "prealloc.bin")
    run("fallocate", "-l", str(2 << 20), m / "prealloc-part.bin")
    with open(m / "prealloc-part.bin", "r+b") as f:
        f.seek(300000)
        f.write(_data(4, 70000))
    # data: incompressible, compressible (zstd mount option), per-file lzo / zlib
    _write(m / "random.bin", _data(5, 3 << 20))
    _write(m / "text-zstd.txt", _text(6, (3 << 20) + 777))
    _compressed_file(m / "text-lzo.txt", "lzo", _text(7, (1 << 20) + 1234))
    _compressed_file(m / "text-zlib.txt", "zlib", _text(8, (1 << 20) + 4321))
    _compressed_file(m / "mixed-lzo.bin", "lzo", _data(9, 200000) + _text(10, 300000))
    _write(m / "inline-zstd.txt", _text(11, 3000))
    _compressed_file(m / "inline-lzo.txt", "lzo", _text(12, 3500))
    # NODATASUM (chattr +C on an empty file)
    open(m / "nocow.bin", "wb").close()
    run("chattr", "+C", m / "nocow.bin")
    with open(m / "nocow.bin", "ab") as f:
        f.write(_data(13, 300000))
    # reflink, then overwrite part of the copy
    run("cp", "--reflink=always", m / "random.bin", m / "random-reflink.bin")
    with open(m / "random-reflink.bin", "r+b") as f:
        f.seek(1 << 20)
        f.write(_data(14, 50000))
    # many small extents
    with open(m / "fragmented.bin", "wb") as f:
        for i in range(64):
            f.write(_data(100 + i, 4096 + i))
            f.flush()
            os.fsync(f.fileno())
    # modes, owners, times
    _write(m / "setuid", b"#!/bin/sh\n", 0o4755)
    os.mkdir(m / "sticky")
    os.chmod(m / "sticky", 0o1777)
    _write(m / "bigids", b"ids\n")
    os.chown(m / "bigids", 100000, 200000)
    _write(m / "old-1960", b"old\n")
    os.utime(m / "old-1960", ns=(-315619200_123456789, -315619200_987654321))
    _write(m / "future-2100", b"future\n")
    os.utime(m / "future-2100", ns=(4102444800_000000001, 4102444800_999999999))
    _write(m / "ns-time", b"ns\n")
    os.utime(m / "ns-time", ns=(1600000000_111111111, 1600000000_222222222))
    # a big directory
    os.mkdir(m / "bigdir")
    for i in range(2000):
        _write(m / "bigdir" / f"file-{i:04d}.txt", _text(1000 + i, 50 + i % 300))
    # subvolumes and snapshots
    run("btrfs", "subvolume", "create", m / "sub1")
    _write(m / "sub1" / "in-sub1.txt", _text(20, 20000))
    os.mkdir(m / "sub1" / "dir")
    _write(m / "sub1" / "dir" / "will-change.txt", b"before the snapshot\n")
    _write(m / "sub1" / "dir" / "will-go.txt", b"deleted after the snapshot\n")
    run("btrfs", "subvolume", "create", m / "sub1" / "nested")
    _write(m / "sub1" / "nested" / "in-nested.txt", b"nested\n")
    os.mkdir(m / "snaps")
    run("btrfs", "subvolume", "snapshot", "-r", m / "sub1", m / "snaps" / "sub1-ro")
    _write(m / "sub1" / "dir" / "will-change.txt", b"after the snapshot, longer\n")
    os.unlink(m / "sub1" / "dir" / "will-go.txt")
    _write(m / "sub1" / "dir" / "new.txt", b"new after the snapshot\n")
    run("btrfs", "subvolume", "snapshot", m, m / "snap-top")
    _write(m / "snap-top" / "only-in-snap-top.txt", b"writable snapshot\n")
    os.unlink(m / "snap-top" / "hello.txt")
    run("btrfs", "subvolume", "set-default", m / "sub1")


def populate_small(m: Path):
    """A few entries of each kind, for the checksum-type images and the fuzz tests."""
    _write(m / "hello.txt", b"hello\n")
    _write(m / "random.bin", _data(30, 300000))
    _write(m / "text.txt", _text(31, 200000))
    _compressed_file(m / "lzo.txt", "lzo", _text(32, 70000))
    os.makedirs(m / "dir" / "sub")
    for i in range(40):
        _write(m / "dir" / f"f{i:02d}", _text(40 + i, 100 + 37 * i))
    os.link(m / "dir" / "f00", m / "dir" / "sub" / "link")
    os.symlink("../hello.txt", m / "dir" / "sl")
    os.setxattr(m / "dir", "user.x", b"y")
    os.mknod(m / "dir" / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    run("btrfs", "subvolume", "create", m / "vol")
    _write(m / "vol" / "v.txt", _text(50, 9000))
    run("btrfs", "subvolume", "snapshot", "-r", m / "vol", m / "vol-ro")


def build_image(img: Path, size=320 << 20, mkfs_args=(), fill=populate, mount_opts="compress=zstd"):
    img.unlink(missing_ok=True)
    with open(img, "wb") as f:
        f.truncate(size)
    run("mkfs.btrfs", "-q", "-f", "-L", "pvfs-btrfs", "-U", UUID, *mkfs_args, img)
    with loop_mounted(img, mount_opts) as m:
        fill(m)
        run("sync")


def _entry(root: Path, rel: bytes, full: bytes):
    st = os.lstat(full)
    e = {"mode": st.st_mode, "uid": st.st_uid, "gid": st.st_gid, "size": st.st_size,
         "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "nlink": st.st_nlink,
         "inode": f"{st.st_dev}:{st.st_ino}", "rdev": st.st_rdev, "blocks": st.st_blocks}
    if stat.S_ISLNK(st.st_mode):
        e["target"] = os.readlink(full).hex()
    else:
        xs = {}
        for name in os.listxattr(full, follow_symlinks=False):
            xs[name] = os.getxattr(full, name, follow_symlinks=False).hex()
        e["xattrs"] = xs
    if stat.S_ISREG(st.st_mode):
        h = hashlib.sha256()
        with open(full, "rb") as f:
            while True:
                b = f.read(1 << 20)
                if not b:
                    break
                h.update(b)
        e["sha256"] = h.hexdigest()
    return e


def walk_mounted(m: Path) -> dict:
    """``{path: entry}`` of everything below the mount point ``m``."""
    out = {}
    base = os.fsencode(m)
    out[""] = _entry(m, b"", base)
    stack = [b""]
    while stack:
        rel = stack.pop()
        full = base + (b"/" + rel if rel else b"")
        for name in sorted(os.listdir(full)):
            crel = rel + b"/" + name if rel else name
            e = _entry(m, crel, full + b"/" + name)
            out[crel.decode("utf-8", "surrogateescape")] = e
            if stat.S_ISDIR(e["mode"]):
                stack.append(crel)
    return out


def kernel_view(img: Path) -> dict:
    """What the kernel shows of the image mounted with subvolid=5."""
    with loop_mounted(img, "ro,subvolid=5") as m:
        return walk_mounted(m)


@contextlib.contextmanager
def multi_mounted(imgs, opts):
    """A multi-device btrfs: every image on a loop device, the first one mounted."""
    devs = [run("losetup", "--find", "--show", i, text=True).stdout.strip() for i in imgs]
    mnt = tempfile.mkdtemp(prefix="pvfs-btrfs-")
    try:
        run("btrfs", "device", "scan", *devs)
        run("mount", "-o", opts, devs[0], mnt)
        try:
            yield Path(mnt)
        finally:
            subprocess.run(["umount", mnt], check=False)
    finally:
        os.rmdir(mnt)
        for d in devs:
            subprocess.run(["btrfs", "device", "scan", "--forget", d], check=False,
                           capture_output=True)
            subprocess.run(["losetup", "-d", d], check=False)


MULTI_UUID = "0c1d2e3f-4a5b-4c6d-8e7f-901a2b3c4d5e"


def build_two_devices(img: Path, data_profile="single"):
    """Metadata RAID1 over two devices, data ``data_profile``: ``img`` and ``img.2``."""
    imgs = [img, img.with_name(img.name + ".2")]
    for i in imgs:
        with open(i, "wb") as f:
            f.truncate(256 << 20)
    run("mkfs.btrfs", "-q", "-f", "-U", MULTI_UUID, "-m", "raid1", "-d", data_profile, *imgs)
    with multi_mounted(imgs, "compress=zstd") as m:
        for i in range(24):  # enough data that both devices get some
            _write(m / f"big-{i:02d}.bin", _data(200 + i, 3 << 20))
        populate_small(m)
        run("sync")


def kernel_view_two_devices(img: Path) -> dict:
    with multi_mounted([img, img.with_name(img.name + ".2")], "ro,subvolid=5") as m:
        return walk_mounted(m)


def build_with_log_tree(img: Path):
    """A copy taken while mounted, right after an fsync(): the superblock points at a
    log tree that holds the fsync()ed file, not yet in a commit (a VM that died)."""
    live = img.with_name(img.name + ".live")
    with open(live, "wb") as f:
        f.truncate(200 << 20)
    run("mkfs.btrfs", "-q", "-f", "-U", LOG_UUID, live)
    with loop_mounted(live, "commit=300") as m:
        populate_small(m)
        run("sync")  # a commit: everything so far is in the trees
        fd = os.open(m / "fsynced.txt", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, b"written and fsync()ed after the last commit\n")
        os.fsync(fd)
        os.close(fd)
        run("cp", "--sparse=always", live, img)
    live.unlink()


LOG_UUID = "7e8f9a0b-1c2d-4e3f-8a4b-5c6d7e8f9a0b"


def kernel_view_no_log_replay(img: Path) -> dict:
    """The committed state: what the kernel shows when told not to replay the log."""
    with loop_mounted(img, "ro,rescue=nologreplay,subvolid=5") as m:
        return walk_mounted(m)


def cached_image(name: str, builder=build_image, viewer=kernel_view) -> tuple[Path, dict]:
    """(image path, kernel view), built once per recipe version."""
    key = f"btrfs-{name}-{recipe_key()}"
    dest = CACHE / key
    if not (dest / ".complete").exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        with open(CACHE / (key + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (dest / ".complete").exists():
                tmp = CACHE / (key + ".tmp")
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
                builder(tmp / "fs.img")
                view = viewer(tmp / "fs.img")
                (tmp / "view.json").write_text(json.dumps(view))
                (tmp / ".complete").write_text("ok")
                shutil.rmtree(dest, ignore_errors=True)
                tmp.rename(dest)
    return dest / "fs.img", json.loads((dest / "view.json").read_text())



def sha256_node(node):
    h = hashlib.sha256()
    src = node.source
    for off in range(0, src.size, 1 << 20):
        h.update(src.read(off, min(1 << 20, src.size - off)))
    return h.hexdigest()


def compare(root, view, skip=()):
    """Differences between the node tree and the kernel's view: ``{"missing": [paths],
    "extra": [...], "unreadable": [...], "wrong": ["path: field ours != kernel"]}``."""
    ours = dict(walk(root))
    lost_found = {p: n for p, n in ours.items() if p.split("/", 1)[0] == ".lost+found"}
    for p in lost_found:  # pvfs's own: inodes no directory reaches (empty when all is well)
        del ours[p]
    problems = {"missing": sorted(set(view) - set(ours)), "extra": sorted(set(ours) - set(view)),
                "unreadable": [], "wrong": [],
                "lost+found": sorted(p for p in lost_found if p != ".lost+found")}
    bad = problems["wrong"]
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
            try:
                got["sha256"], want["sha256"] = sha256_node(node), k["sha256"]
            except UnreadableError:
                problems["unreadable"].append(path)
            got["blocks"], want["blocks"] = (node.allocated_bytes() + 511) // 512, k["blocks"]
        for f in got:
            if got[f] != want[f]:
                bad.append(f"{path}: {f} {str(got[f])[:80]} != kernel {str(want[f])[:80]}")
    for ino, ids in inodes.items():
        if len(ids) != 1:
            bad.append(f"inode {ino}: {len(ids)} nodes for one inode")
    return problems


def empty_subvol_dirs(view):
    """Subvolumes inside snapshots: the kernel shows made-up empty directories
    (inode 2, the time of the lookup), so only their names and types are compared."""
    return {p for p, k in view.items() if k["inode"].endswith(":2")}


FILES = "storage/files/p1.files"


@contextlib.contextmanager
def time_limit(seconds):
    def boom(*_a):
        raise TimeoutError(f"took more than {seconds} s (a hang?)")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def open_image(source, bad=None):
    ctx = Context(Options(bad=bad))
    ctx.add_volume(source, ctx.storage("files"), "p1", "storage/files", "partition",
                   children_home=None)
    run_queue(ctx)
    finish(ctx)
    return ctx, resolve(ctx.root, FILES)
