#!/usr/bin/env python3
"""The floor of any pyfuse3 read path: a minimal pyfuse3 file system that serves one file
(no layers, no worker threads: each request read in the event loop), against ``cat`` of
that file, same run, cold page cache (bench_read's interleaved slices).  It tells what of
pvfs's distance to ``cat`` (bench_read.py) is the FUSE path itself, and measures ways of
answering a read (issue 15 item 1):

* ``pread``: ``preadv`` into a reused 1 MiB buffer, the buffer as the reply (what
  mountd.fs does): two copies per byte in the daemon (the read, then pyfuse3's
  ``fuse_reply_buf`` writev into /dev/fuse);
* ``mmap``: the reply is a ``memoryview`` of a read-only shared mapping of the file, so the
  kernel copies from the file's page cache straight into the reply (one copy).  The range
  is faulted in with ``madvise(MADV_POPULATE_READ)`` first (an error, not SIGBUS, on a read
  error: Python never touches the mapped bytes) and dropped behind the reader with
  ``MADV_DONTNEED`` at the next request (mapped pages would pin the page cache and count in
  the daemon's RSS);
* ``direct``: ``pread``, the file opened ``direct_io`` (no page cache of the FUSE file:
  each ``read()`` of the reader is one request answered into its buffer).

Each mode is its own mount (a child process); the daemon's CPU time per GiB read through
it is printed (from /proc/PID/stat over the timed rounds).

Usage: python benchmarks/bench_fuse_floor.py [--modes pread,mmap,direct] [--rounds 5]
       [--size-mib 1024] [--slice-mib 128] [--stress N] [--workdir DIR]
       [--read-ahead-kb 4096]
"""

from __future__ import annotations

import argparse
import errno
import mmap
import os
import stat
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]
import common  # noqa: E402

MODES = ("pread", "mmap", "direct")
MADV_POPULATE_READ = 22  # Linux 5.14+ (mm/madvise.c); Python's mmap module lacks the name


def serve(path: str, mnt: str, mode: str, read_ahead_kb: int) -> None:
    """The file system of one mode: ``/f`` is the file at ``path`` (runs until unmounted)."""
    import pyfuse3
    import trio

    fd = os.open(path, os.O_RDONLY)
    size = os.fstat(fd).st_size
    mapping = mmap.mmap(fd, 0, prot=mmap.PROT_READ) if mode == "mmap" else None
    whole = memoryview(mapping) if mapping is not None else None
    buf = memoryview(bytearray(1 << 20))
    page = mmap.PAGESIZE

    class Floor(pyfuse3.Operations):
        behind: tuple[int, int] | None = None  # the previous mmap reply: dropped next time

        async def getattr(self, inode, ctx=None):
            a = pyfuse3.EntryAttributes()
            a.st_ino = inode
            a.entry_timeout = a.attr_timeout = 3600
            if inode == pyfuse3.ROOT_INODE:
                a.st_mode, a.st_nlink = stat.S_IFDIR | 0o555, 2
            else:
                a.st_mode, a.st_nlink, a.st_size = stat.S_IFREG | 0o444, 1, size
            return a

        async def lookup(self, parent, name, ctx=None):
            if name != b"f":
                raise pyfuse3.FUSEError(errno.ENOENT)
            return await self.getattr(2)

        async def open(self, inode, flags, ctx):
            return pyfuse3.FileInfo(fh=inode, keep_cache=True, direct_io=mode == "direct")

        async def read(self, fh, off, n):
            n = min(n, size - off)
            if n <= 0:
                return b""
            if mapping is None:
                return buf[:os.preadv(fd, [buf[:n]], off)]
            if self.behind is not None:  # replied by now (pyfuse3 replies at return)
                mapping.madvise(mmap.MADV_DONTNEED, *self.behind)
            start = off & ~(page - 1)
            try:
                mapping.madvise(MADV_POPULATE_READ, start, off + n - start)
            except OSError:
                self.behind = None
                return buf[:os.preadv(fd, [buf[:n]], off)]  # raises the read error
            self.behind = (start, off + n - start)
            return whole[off:off + n]

    def tune() -> None:
        st = os.stat(mnt)  # answered by the loop below: run beside it
        with open(f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/"
                  "read_ahead_kb", "w") as f:
            f.write(f"{read_ahead_kb}\n")

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, tune)
            await pyfuse3.main()

    pyfuse3.init(Floor(), mnt, {"fsname=pvfs-floor", "ro"})
    try:
        trio.run(main)
    finally:
        pyfuse3.close()


def make_source(work: Path, size: int) -> Path:
    """A file of ``size`` incompressible bytes (made once)."""
    src = work / f"floor-{size >> 20}.img"
    if not src.exists() or src.stat().st_size != size:
        tmp = src.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            for _ in range(size >> 20):
                f.write(os.urandom(1 << 20))
        tmp.rename(src)
    return src


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--slice-mib", type=int, default=128)
    ap.add_argument("--stress", type=int, default=0, metavar="N")
    ap.add_argument("--read-ahead-kb", type=int, default=4096)
    ap.add_argument("--workdir", default="/var/tmp/pvfs-bench-floor")
    ap.add_argument("--serve", nargs=3, metavar=("FILE", "MOUNTPOINT", "MODE"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(*args.serve, args.read_ahead_kb)
        return
    import bench_read

    modes = args.modes.split(",")
    if not set(modes) <= set(MODES):
        raise SystemExit(f"modes are {', '.join(MODES)}")
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    size = args.size_mib << 20
    src = make_source(work, size)
    limit = "cat (limit)"
    readers, procs = {limit: src}, {}
    try:
        for m in modes:
            mnt = work / f"mnt-{m}"
            mnt.mkdir(exist_ok=True)
            procs[m] = subprocess.Popen(
                [sys.executable, __file__, "--serve", str(src), str(mnt), m,
                 "--read-ahead-kb", str(args.read_ahead_kb)])
            for _ in range(100):
                if os.path.ismount(mnt):
                    break
                time.sleep(0.1)
            else:
                raise SystemExit(f"{m}: not mounted")
            readers[m] = mnt / "f"
        rounds = []
        with common.stress_ng(args.stress):
            cpu0 = {m: cpu_seconds(p.pid) for m, p in procs.items()}
            for r in range(args.rounds):
                one = bench_read.one_round(readers, [src], size, args.slice_mib << 20)
                rounds.append(one)
                print(f"round {r + 1} ({common.load()}): " +
                      ", ".join(f"{k} {v:.0f}" for k, v in one.items()) + " MB/s", flush=True)
            cpu = {m: (cpu_seconds(p.pid) - cpu0[m]) / (args.rounds * size / (1 << 30))
                   for m, p in procs.items()}
        want = bench_read.sha256_of(src)
        for k, p in readers.items():
            assert bench_read.sha256_of(p) == want, f"{k}: other bytes than the file"
        print(f"content: all {len(readers)} readers gave the file's bytes (sha256)")
    finally:
        for m, p in procs.items():
            common.unmount(work / f"mnt-{m}")
            p.wait(timeout=30)
    print(f"\nmedian of {len(rounds)} rounds, {common.load()} on {os.cpu_count()} CPUs"
          f"{f', stress-ng --cpu {args.stress} beside it' if args.stress else ''}, "
          f"FUSE read-ahead {args.read_ahead_kb} KiB:")
    for k in readers:
        per = [r[k] / r[limit] for r in rounds]
        extra = f"  daemon CPU {cpu[k]:.2f} s/GiB" if k in cpu else ""
        print(f"  {k:12s} {statistics.median(r[k] for r in rounds):6.0f} MB/s  ratio "
              f"{' '.join(f'{x:5.2f}' for x in per)}  median {statistics.median(per):.2f}{extra}")


if __name__ == "__main__":
    main()
