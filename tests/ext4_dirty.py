"""Dirty ext3/ext4 images made by the real kernel, for the jbd2 replay tests.

Each variant is a fresh filesystem (``mke2fs -d`` with a small tree), loop
mounted with ``commit=600`` (no timer commits) and ``nodelalloc`` (ordered
mode then writes a file's data before the commit that names it), changed in
a few steps each ended by one ``fsync`` (one jbd2 commit), and copied with
``cp --sparse`` while still mounted.  ``sync`` is not used: it would also
write every journaled block to its home location, and the copy would show
the same files with or without replay.  Journaled metadata reaches its home
location only after the 30 s dirty-expire time, so a copy taken right after
the last fsync holds committed transactions the kernel has not checkpointed
(``needs_recovery`` set).  A last change is left uncommitted.

Beside ``dirty.img`` the cache holds ``kernel.img``: a copy of it mounted
read-write once and unmounted at once, so the kernel replayed the journal
into it (ground truth for the replay, block for block).

Images are cached under ``~/.cache/pvfs-fixtures/ext4-dirty-<hash>/<variant>/``
keyed by a hash of this file, so CI rebuilds them when the script changes.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from conftest import CACHE

#: variant -> (mkfs command, mount options)
VARIANTS = {
    # ext4 defaults: 64bit, metadata_csum -> journal csum v3, 16-byte tags, extents
    "ext4-4k": (["mkfs.ext4", "-b", "4096"], "nodelalloc"),
    # 1 KiB blocks, data=journal: file data goes through the journal too, and a
    # block that starts with the jbd2 magic is escaped (JBD2_FLAG_ESCAPE)
    "ext4-1k-journal": (["mkfs.ext4", "-b", "1024"], "data=journal"),
    # ext3: no journal checksums, 32-bit 8-byte tags, a block-mapped journal inode
    "ext3": (["mkfs.ext3", "-b", "4096"], "nodelalloc"),
    # no metadata_csum + journal_checksum: journal checksum v1 (crc32_be over each
    # transaction, in the commit block)
    # (the ext3 driver mode refuses journal_checksum: mounted as -t ext4)
    "ext3-csum-v1": (["mkfs.ext3", "-b", "4096"], "journal_checksum,nodelalloc"),
    # journal_async_commit: csum v3 with JBD2_FEATURE_INCOMPAT_ASYNC_COMMIT
    "ext4-async": (["mkfs.ext4", "-b", "4096"],
                   "data=writeback,journal_async_commit,nodelalloc"),
    # the smallest journal (1024 blocks) under data=journal: the log wraps many times and
    # the live transactions straddle its end (the kernel's wrap())
    "ext4-wrap": (["mkfs.ext4", "-b", "1024", "-J", "size=1"], "data=journal"),
}

SIZE = "64M"
MAGIC = bytes.fromhex("c03b3998")


def _script_hash() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def _seed_tree(root: Path):
    (root / "etc").mkdir()
    (root / "etc" / "hostname").write_bytes(b"guest\n")
    (root / "etc" / "old.conf").write_bytes(b"old=1\n" * 50)
    (root / "var" / "log").mkdir(parents=True)
    (root / "var" / "log" / "syslog").write_bytes(b"boot\n" * 1000)
    (root / "gone").mkdir()
    for i in range(40):
        (root / "gone" / f"old-{i:03d}").write_bytes(os.urandom(3000))


def _fsync(path: Path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(path: Path, data: bytes, append=False):
    with open(path, "ab" if append else "wb") as f:
        f.write(data)
        f.flush()


def _commit(m: Path, n: int):
    """One jbd2 commit: fsync of a file commits the whole running transaction."""
    p = m / "commit-marker"
    _write(p, f"commit {n}\n".encode(), append=True)
    _fsync(p)


def _exercise(m: Path, variant: str):
    # transaction 1: new files and directories, a big file, a file that starts with
    # the jbd2 magic, a directory of many entries (journaled directory blocks)
    (m / "home" / "user").mkdir(parents=True)
    _write(m / "home" / "user" / "notes.txt", b"first line\n")
    _write(m / "home" / "user" / "big.bin", os.urandom(3 << 20) + b"tail")
    _write(m / "magic.bin", MAGIC + b"starts like a journal block " * 200)
    (m / "tmp").mkdir()
    for i in range(200):
        _write(m / "tmp" / f"scratch-file-with-a-long-name-{i:04d}", os.urandom(100))
    os.symlink("home/user/notes.txt", m / "notes-link")
    keep = m / "keep"  # many entries that exist only in the journal (htree directory)
    for i in range(150):
        sub = keep / f"d{i % 7}"
        sub.mkdir(parents=True, exist_ok=True)
        name = f"{i:03d}-" + ("ä" * (i % 5)) + ("n" * (i % 120))
        _write(sub / name, os.urandom((i * 997) % 20000))
        if i % 10 == 0:
            os.setxattr(sub / name, "user.i", str(i).encode())
        if i % 25 == 0:
            os.symlink("x" * (i + 60), sub / f"{name}.lnk")
    _commit(m, 1)
    # transaction 2: append, rename, delete (the tmp directory's blocks are revoked),
    # chmod/chown, a hard link, an xattr
    _write(m / "home" / "user" / "notes.txt", b"second line\n", append=True)
    os.rename(m / "etc" / "old.conf", m / "etc" / "new.conf")
    shutil.rmtree(m / "tmp")
    shutil.rmtree(m / "gone")
    os.chmod(m / "home" / "user" / "big.bin", 0o600)
    os.chown(m / "home" / "user" / "big.bin", 1000, 100000)
    os.link(m / "home" / "user" / "notes.txt", m / "notes-hardlink")
    os.setxattr(m / "etc" / "hostname", "user.comment", b"set in transaction 2")
    _commit(m, 2)
    # transaction 3: overwrite in place, truncate, a new directory tree
    with open(m / "var" / "log" / "syslog", "r+b") as f:
        f.seek(100)
        f.write(b"OVERWRITTEN")
    os.truncate(m / "home" / "user" / "big.bin", 1 << 20)
    (m / "srv" / "www").mkdir(parents=True)
    _write(m / "srv" / "www" / "index.html", b"<h1>hello</h1>\n")
    os.unlink(m / "magic.bin")
    _write(m / "magic2.bin", MAGIC + b"escaped again " * 300)
    for p in sorted((m / "keep" / "d3").iterdir())[:5]:
        if p.is_symlink():
            continue
        _write(p, b"rewritten in transaction 3\n", append=True)
        os.utime(p, ns=(1_000_000_123, 2_000_000_456))
    _commit(m, 3)
    # not committed: must not appear after replay
    _write(m / "uncommitted.txt", b"never committed\n")


def _log_wrapped(img: Path) -> bool:
    """Whether the last commit block of the live log (``debugfs logdump`` of the image,
    read while mounted) lies before the log's start: the log straddles the journal's end.
    ``-c`` (catastrophic mode) skips the bitmaps: on the live image their checksums do not
    match until the kernel checkpoints, and debugfs would refuse to open it at all."""
    out = subprocess.run(["debugfs", "-c", "-R", "logdump", str(img)], capture_output=True,
                         text=True).stdout
    start = re.search(r"Journal starts at block (\d+)", out)
    commits = re.findall(r"\(commit block\) at block (\d+)", out)
    return bool(start and commits and int(commits[-1]) < int(start.group(1)))


def _until_wrapped(m: Path, img: Path, limit: int = 2000):
    """Commit small transactions until the live log straddles the journal's end, then one
    transaction with a new directory (blocks only the log holds), still wrapped."""
    for i in range(limit):
        _write(m / "wrap.log", f"line {i}\n".encode() * 40, append=True)
        _fsync(m / "wrap.log")
        if not _log_wrapped(img):
            continue
        d = m / f"after-wrap-{i}"
        d.mkdir()
        for k in range(3):
            _write(d / f"f{k}", f"written after the wrap {k}\n".encode())
        _commit(m, 100 + i)
        if _log_wrapped(img):
            return
    raise RuntimeError("the journal never wrapped")


def build(variant: str, out: Path):
    mkfs, opts = VARIANTS_ALL[variant]
    with tempfile.TemporaryDirectory(prefix="pvfs-ext4dirty-") as td:
        td = Path(td)
        seed = td / "seed"
        seed.mkdir()
        _seed_tree(seed)
        img = td / "fs.img"
        subprocess.run(["truncate", "-s", SIZE, str(img)], check=True)
        loopdev = None
        if variant == "ext4-external":  # the journal on its own (loop) device
            jimg = td / "journal.img"
            subprocess.run(["truncate", "-s", "8M", str(jimg)], check=True)
            subprocess.run(["mke2fs", "-q", "-F", "-O", "journal_dev", "-b", "4096",
                            str(jimg)], check=True)
            loopdev = subprocess.run(["losetup", "-f", "--show", str(jimg)], check=True,
                                     capture_output=True, text=True).stdout.strip()
            mkfs = [*mkfs, "-J", f"device={loopdev}"]
        try:
            subprocess.run([*mkfs, "-q", "-F", "-E",
                            "lazy_itable_init=0,lazy_journal_init=0", "-d", str(seed),
                            str(img)], check=True)
            m = td / "mnt"
            m.mkdir()
            subprocess.run(["mount", "-t", "ext4", "-o", f"loop,commit=600,{opts}", str(img),
                            str(m)], check=True)
            try:
                if variant == "ext4-fast-commit":
                    _fast_commits(m)
                else:
                    _exercise(m, variant)
                if variant == "ext4-wrap":
                    _until_wrapped(m, img)
                subprocess.run(["cp", "--sparse=always", str(img), str(out / "dirty.img")],
                               check=True)
            finally:
                subprocess.run(["umount", str(m)], check=True)
        finally:
            if loopdev:
                subprocess.run(["losetup", "-d", loopdev], check=False)
        if variant in OTHER_VARIANTS:
            return
        # ground truth: the kernel replays the journal of a copy on mount
        subprocess.run(["cp", "--sparse=always", str(out / "dirty.img"),
                        str(out / "kernel.img")], check=True)
        subprocess.run(["mount", "-o", "loop", str(out / "kernel.img"), str(m)], check=True)
        subprocess.run(["umount", str(m)], check=True)


#: Variants pvfs does not replay as the kernel does (not in VARIANTS): fast commits are
#: reported only; an external journal device is not read.
OTHER_VARIANTS = {
    "ext4-fast-commit": (["mkfs.ext4", "-b", "4096", "-O", "fast_commit"], "nodelalloc"),
    "ext4-external": (["mkfs.ext4", "-b", "4096"], "nodelalloc"),
}
VARIANTS_ALL = {**VARIANTS, **OTHER_VARIANTS}


def _fast_commits(m: Path):
    """fsync() of new and appended files: logged as ext4 fast commits, not jbd2 commits."""
    _commit(m, 1)
    for i in range(3):
        _write(m / f"fc-{i}.txt", f"fast commit {i}\n".encode() * 100)
        _fsync(m / f"fc-{i}.txt")
    _write(m / "fc-0.txt", b"appended\n", append=True)
    _fsync(m / "fc-0.txt")


def dirty_image(variant: str) -> Path:
    """The cached folder of ``variant`` (``dirty.img``, ``kernel.img``), built once."""
    dest = CACHE / f"ext4-dirty-{_script_hash()}" / variant
    if (dest / ".complete").exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / f"{variant}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (dest / ".complete").exists():
            return dest
        tmp = dest.parent / f"{variant}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        t0 = time.time()
        build(variant, tmp)
        (tmp / ".complete").write_text(f"built in {time.time() - t0:.1f}s\n")
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    return dest


def clean_image(block_size: int, size: str) -> Path:
    """A clean filesystem made by ``mke2fs -d`` (no mount needed) with several groups, so
    that backup superblocks exist: cached like the dirty images."""
    name = f"clean-{block_size}-{size}"
    dest = CACHE / f"ext4-dirty-{_script_hash()}" / name
    if (dest / ".complete").exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (dest / ".complete").exists():
            return dest
        tmp = dest.parent / f"{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        seed = tmp / "seed"
        seed.mkdir()
        _seed_tree(seed)
        img = tmp / "clean.img"
        subprocess.run(["truncate", "-s", size, str(img)], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-b", str(block_size), "-d", str(seed),
                        str(img)], check=True)
        shutil.rmtree(seed)
        (tmp / ".complete").write_text("ok\n")
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    return dest
