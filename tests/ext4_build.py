"""Build ext2/3/4 images with the real tools and take the kernel's view of them.

Images are made by mkfs.ext4/mke2fs and filled either through a kernel loop mount (the
kernel writes extents, htree, inline data, ACLs, ea_inodes) or with ``mke2fs -d``.  The
ground truth is the kernel's view of the finished image: a read-only loop mount walked
with lstat/readlink/listxattr and sha256.  Built images and their truth are cached under
the fixture cache, keyed by a hash of this file and the build arguments, so the suite
stays fast; a fresh machine (CI) rebuilds them.  Needs root (loop mounts).
"""

from __future__ import annotations

import fcntl
import errno
import hashlib
import json
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from pvfs.nodes import Dir, File, Special, Symlink, time_ns, walk

CACHE = Path(os.environ.get("PVFS_FIXTURE_CACHE", Path.home() / ".cache" / "pvfs-fixtures"))
SELF_HASH = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
NON_UTF8 = b"caf\xe9-latin1.txt"
SKIP_NAMES = {".lost+found"}  # pvfs's own orphan directory


def sh(*cmd, **kw):
    return subprocess.run([str(c) for c in cmd], check=True, capture_output=True, **kw)


def need_root():
    if os.geteuid() != 0:
        pytest.skip("building ext4 images needs root (loop mounts)")


class Mounted:
    """A loop mount of ``image`` (read-only unless ``rw``), unmounted on exit."""

    def __init__(self, image, rw=False, opts=""):
        self.image = image
        self.rw = rw
        self.opts = opts

    def __enter__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="pvfs-ext4-mnt-"))
        o = "loop" + ("" if self.rw else ",ro") + (f",{self.opts}" if self.opts else "")
        sh("mount", "-o", o, self.image, self.dir)
        return self.dir

    def __exit__(self, *exc):
        subprocess.run(["umount", str(self.dir)], check=False)
        self.dir.rmdir()


def _w(path, data):
    with open(path, "wb") as f:
        f.write(data)


def populate(root: Path, nfiles_bigdir=300, big_mib=3, rng_seed=11):
    """A mixed tree (the brief's list): long/unicode/non-UTF-8 names, hard links, short
    and long symlinks, xattrs (small, large, many, ACLs), devices, fifo, socket, sparse
    and preallocated files, a fragmented file (extent tree of depth > 0), times with
    nanoseconds incl. 1960 and 2100, setuid bits, uids > 65535, a big directory."""
    import random
    import socket

    rnd = random.Random(rng_seed)
    root = Path(root)
    d = root / "dir"
    d.mkdir()
    _w(d / "hello.txt", b"hello ext4\n")
    _w(d / "empty", b"")
    _w(d / ("L" * 255), b"long name\n")
    _w(d / "ünïcødé-名前-😀.txt", b"unicode\n")
    _w(os.fsencode(str(d)) + b"/" + NON_UTF8, b"latin-1 name\n")
    _w(d / "tiny60", b"x" * 59)
    _w(d / "block4k", bytes(rnd.getrandbits(8) for _ in range(4096)))
    big = os.urandom(big_mib << 20)
    _w(d / "big.bin", big)
    # sparse: data, a hole, data, trailing hole
    with open(d / "sparse", "wb") as f:
        f.write(b"A" * 5000)
        f.seek(1 << 20)
        f.write(b"B" * 7000)
        f.truncate(3 << 20)
    with open(d / "leading-hole", "wb") as f:
        f.seek(200_000)
        f.write(b"tail")
    with open(d / "all-hole", "wb") as f:
        f.truncate(1 << 20)
    # fragmented: 300 separate 4 KiB pieces -> > 4 extents -> tree depth >= 1
    with open(d / "fragmented", "wb") as f:
        for i in range(300):
            f.seek(i * 8192)
            f.write(bytes([i & 0xFF]) * 4096)
    # preallocated (unwritten extents) with some data inside
    fd = os.open(d / "prealloc", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.posix_fallocate(fd, 0, 1 << 20)
        os.pwrite(fd, b"written", 300_000)
    finally:
        os.close(fd)
    # hard links (3-way)
    _w(d / "link-a", b"linked content\n")
    os.link(d / "link-a", d / "link-b")
    (root / "other").mkdir()
    os.link(d / "link-a", root / "other" / "link-c")
    # symlinks: short (fast), 59/60 bytes boundary, long (block), dangling, unicode, dir
    os.symlink("hello.txt", d / "sym-short")
    os.symlink("a" * 59, d / "sym-59")
    os.symlink("b" * 60, d / "sym-60")
    os.symlink("/" + "/".join(["segment"] * 30), d / "sym-long")
    os.symlink("nowhere/at/all", d / "sym-dangling")
    os.symlink("ünï/名前", d / "sym-unicode")
    os.symlink("../other", d / "sym-dir")
    # special files
    os.mknod(d / "fifo", 0o644 | stat.S_IFIFO)
    os.mknod(d / "chardev", 0o600 | stat.S_IFCHR, os.makedev(4, 64))
    os.mknod(d / "blockdev", 0o660 | stat.S_IFBLK, os.makedev(259, 70000 & 0xFFFFF))
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(str(d / "sock"))
    finally:
        s.close()
    # modes, owners
    _w(d / "setuid", b"#!/bin/sh\n")
    os.chmod(d / "setuid", 0o4755)
    (d / "sticky").mkdir()
    os.chmod(d / "sticky", 0o1777)
    _w(d / "owner", b"owned\n")
    os.chown(d / "owner", 100000, 4000000000)
    os.lchown(d / "sym-short", 1000, 1000)
    # xattrs
    x = d / "xattrs"
    _w(x, b"has xattrs\n")
    os.setxattr(x, "user.small", b"v")
    os.setxattr(x, "user.empty", b"")
    try:  # an xattr block holds it with 4 KiB blocks, not with 1 KiB ones
        os.setxattr(x, "user.big", bytes(rnd.getrandbits(8) for _ in range(3900)))
    except OSError:
        os.setxattr(x, "user.big", bytes(rnd.getrandbits(8) for _ in range(700)))
    os.setxattr(x, "trusted.t", b"trusted value")
    os.setxattr(x, "security.s", b"sec")
    many = d / "many-xattrs"
    _w(many, b"")
    for i in range(60):
        try:
            os.setxattr(many, f"user.attr{i:02d}", f"value {i}".encode() * 3)
        except OSError:  # a 1 KiB xattr block is full
            break
    os.setxattr(d, "user.on-dir", b"dir attr")
    acl = d / "acl"
    _w(acl, b"acl\n")
    sh("setfacl", "-m", "u:1000:rw,u:100000:r,g:33:r,m::rw", acl)
    (d / "acl-dir").mkdir()
    sh("setfacl", "-d", "-m", "u:1000:rwx,g::r-x,o::---", d / "acl-dir")
    sh("setfacl", "-m", "u:4000000000:r", d / "acl-dir")
    # deep path
    p = root / "deep"
    for i in range(20):
        p = p / f"level{i:02d}"
    p.mkdir(parents=True)
    _w(p / "bottom.txt", b"bottom\n")
    # a big directory (htree when the kernel writes it)
    bd = root / "bigdir"
    bd.mkdir()
    for i in range(nfiles_bigdir):
        _w(bd / f"file-{i:05d}-{'x' * (i % 40)}", f"{i}\n".encode())
    # times last (writes above changed them): nanoseconds, 1960, 2100
    ns = 1_700_000_000_123_456_789
    os.utime(d / "hello.txt", ns=(ns, ns + 1))
    os.utime(d / "owner", ns=(-315_619_200_000_000_000 + 5, -315_619_200_000_000_000 + 7))
    os.utime(d / "setuid", ns=(4_102_444_800_987_654_321, 4_102_444_800_987_654_321))
    os.utime(d / "sym-short", ns=(1_000_000_000_000_000_001, 1_000_000_000_000_000_001),
             follow_symlinks=False)
    for f in (d / "big.bin", d / "sparse"):
        os.utime(f, ns=(rnd.randrange(1 << 60), rnd.randrange(1 << 60)))


def populate_inline(root: Path):
    """Many small files and small directories (inline_data candidates)."""
    populate(root, nfiles_bigdir=120, big_mib=1, rng_seed=5)
    small = root / "small"
    small.mkdir()
    for i in range(40):
        sub = small / f"d{i:02d}"
        sub.mkdir()
        for j in range(i % 5):
            _w(sub / f"f{j}", (f"{i}.{j} " * (i + 1)).encode()[:i * 4 + j])
    for n in (0, 1, 59, 60, 61, 100, 150, 3000):
        _w(small / f"size-{n}", bytes((k * 7 + n) & 0xFF for k in range(n)))
    os.symlink("x" * 100, small / "sym-100")
    os.setxattr(small / "size-100", "user.note", b"inline + xattr")


def kernel_truth(image, opts: str = "", unreadable: list | None = None) -> dict:
    """The kernel's view: {path: record} of every entry below the root (``opts``: more
    mount options, e.g. ``noload`` for the unreplayed state of a dirty journal;
    ``unreadable``: see tree_truth)."""
    with Mounted(image, opts=opts) as mnt:
        return tree_truth(mnt, unreadable)


def tree_truth(top, unreadable: list | None = None) -> dict:
    """{path: record} of every entry below the directory ``top`` (lstat, sha256,
    readlink, listxattr/getxattr), and of ``top`` itself as "".

    With a list ``unreadable``, an entry the kernel names but cannot read (its inode
    fails the checksum: EBADMSG, EUCLEAN, as in the unreplayed state of a dirty journal)
    is appended there instead of failing, and left out of the view."""
    out = {}
    base = os.fsencode(str(top))
    for dirpath, dirnames, filenames in os.walk(base):
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, base)
            try:
                st = os.lstat(full)
            except OSError as e:
                if unreadable is None or e.errno not in (errno.EBADMSG, errno.EUCLEAN):
                    raise
                unreadable.append(rel.decode("utf-8", "surrogateescape"))
                if name in dirnames:
                    dirnames.remove(name)
                continue
            rec = {"mode": st.st_mode, "uid": st.st_uid, "gid": st.st_gid,
                   "mtime_ns": st.st_mtime_ns, "atime_ns": st.st_atime_ns,
                   "ctime_ns": st.st_ctime_ns, "nlink": st.st_nlink, "ino": st.st_ino,
                   "size": st.st_size, "blocks": st.st_blocks}
            if stat.S_ISREG(st.st_mode):
                h = hashlib.sha256()
                with open(full, "rb") as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
                rec["sha256"] = h.hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                rec["target"] = os.readlink(full).hex()
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                rec["rdev"] = st.st_rdev
            xa = {}
            for k in os.listxattr(full, follow_symlinks=False):
                xa[k] = os.getxattr(full, k, follow_symlinks=False).hex()
            rec["xattrs"] = xa
            out[rel.decode("utf-8", "surrogateescape")] = rec
    st = os.lstat(base)
    out[""] = {"mode": st.st_mode, "uid": st.st_uid, "gid": st.st_gid,
               "mtime_ns": st.st_mtime_ns, "nlink": st.st_nlink, "ino": st.st_ino,
               "xattrs": {k: os.getxattr(base, k).hex() for k in os.listxattr(base)}}
    return out


def build(name: str, mkfs: list[str], size_mib: int, fill=populate, via="mount",
          after: list[list[str]] | None = None) -> tuple[Path, dict]:
    """``(image, kernel truth)`` for an image made by ``mkfs`` and filled by ``fill``
    through a loop mount (``via="mount"``) or ``mke2fs -d`` (``via="d"``), cached."""
    need_root()
    key = hashlib.sha256(json.dumps([SELF_HASH, name, mkfs, size_mib, fill.__name__, via,
                                     after]).encode()).hexdigest()[:16]
    dest = CACHE / f"ext4-{name}-{key}"
    img, truth_path = dest / "fs.img", dest / "truth.json"
    if truth_path.exists():
        return img, json.loads(truth_path.read_text())
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"ext4-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if truth_path.exists():
            return img, json.loads(truth_path.read_text())
        tmp = Path(str(dest) + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        timg = tmp / "fs.img"
        if via == "d":
            src = tmp / "src"
            src.mkdir()
            fill(src)
            sh(*mkfs, "-d", src, timg, f"{size_mib}M")
            shutil.rmtree(src)
        else:
            sh(*mkfs, timg, f"{size_mib}M")
            with Mounted(timg, rw=True) as mnt:
                fill(mnt)
        for cmd in after or []:
            subprocess.run([*cmd, str(timg)], check=False, capture_output=True)
        truth = kernel_truth(timg)
        (tmp / "truth.json").write_text(json.dumps(truth))
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    return img, truth


def compare_tree(root: Dir, truth: dict, atime=False) -> tuple[int, list[str]]:
    """Compare every entry of the node tree with the kernel's view; returns (entries
    compared, mismatches)."""
    import hashlib as _h

    bad = []
    seen = set()
    inode_of: dict[int, object] = {}  # kernel ino -> our node (hard-link identity)
    for path, node in walk(root):
        top = path.split("/", 1)[0]
        if top in SKIP_NAMES:
            continue
        seen.add(path)
        t = truth.get(path)
        if t is None:
            bad.append(f"{path!r}: not in the kernel's view")
            continue
        mode = t["mode"]
        kind = {stat.S_IFDIR: Dir, stat.S_IFREG: File, stat.S_IFLNK: Symlink}.get(
            stat.S_IFMT(mode), Special)
        if not isinstance(node, kind):
            bad.append(f"{path!r}: {type(node).__name__}, kernel says {mode:#o}")
            continue
        if node.mode != mode:
            bad.append(f"{path!r}: mode {node.mode:#o} != {mode:#o}")
        if (node.uid, node.gid) != (t["uid"], t["gid"]):
            bad.append(f"{path!r}: owner {node.uid}:{node.gid} != {t['uid']}:{t['gid']}")
        if time_ns(node.mtime) != t["mtime_ns"]:
            bad.append(f"{path!r}: mtime {time_ns(node.mtime)} != {t['mtime_ns']}")
        if path and time_ns(node.ctime) != t["ctime_ns"]:
            bad.append(f"{path!r}: ctime {time_ns(node.ctime)} != {t['ctime_ns']}")
        if atime and path and time_ns(node.atime) != t["atime_ns"]:
            bad.append(f"{path!r}: atime {time_ns(node.atime)} != {t['atime_ns']}")
        if node.nlink != t["nlink"]:
            bad.append(f"{path!r}: nlink {node.nlink} != {t['nlink']}")
        want_x = {k: bytes.fromhex(v) for k, v in t["xattrs"].items()}
        got_x = {k.decode(): v for k, v in node.xattrs.items()}
        if got_x != want_x:
            bad.append(f"{path!r}: xattrs {sorted(got_x)} != {sorted(want_x)}"
                       + ("" if set(got_x) != set(want_x) else " (values differ)"))
        other = inode_of.setdefault(t["ino"], node)
        if other is not node:
            bad.append(f"{path!r}: hard link is a different node")
        if isinstance(node, File):
            if node.size != t["size"]:
                bad.append(f"{path!r}: size {node.size} != {t['size']}")
                continue
            h = _h.sha256()
            for off in range(0, node.size, 4 << 20):
                h.update(node.source.read(off, min(4 << 20, node.size - off)))
            if h.hexdigest() != t["sha256"]:
                bad.append(f"{path!r}: sha256 differs")
            if node.allocated_bytes() != t["blocks"] * 512:
                bad.append(f"{path!r}: allocated {node.allocated_bytes()} != "
                           f"{t['blocks'] * 512}")
        elif isinstance(node, Symlink):
            if node.target.hex() != t["target"]:
                bad.append(f"{path!r}: target {node.target!r}")
        elif isinstance(node, Special) and "rdev" in t and node.rdev != t["rdev"]:
            bad.append(f"{path!r}: rdev {node.rdev} != {t['rdev']}")
    for path in truth:
        if path not in seen:
            bad.append(f"{path!r}: missing")
    return len(seen), bad
