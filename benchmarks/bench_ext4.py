#!/usr/bin/env python3
"""ext4 guest files through pvfs vs the kernel, same run, same data (issue 11).

A GPT VM disk (``vm-150-disk-0.raw``) holds one ext4 (Debian defaults: 64bit,
metadata_csum, extents, 4 KiB blocks) filled through a kernel loop mount with a 512 MiB
random file and 20,000 small files in 20 directories.  pvfs mounts the disk; the kernel
loop-mounts pvfs's own partition file ``vms/150/disk-0.parts/p1`` read-only, so both read
the same bytes through the same lower layers.  Measured, with the page cache dropped
before each cold run:

- sequential read (1 MiB reads) of the 512 MiB file: ``disk-0.files/p1/big.bin`` vs the
  kernel mount (target: pvfs >= 0.8x the kernel);
- ``find -printf`` (one lstat per entry) of the 20,000 files: a fresh pvfs mount vs the
  kernel mount (target: pvfs <= 2x the kernel's time);
- the pvfs daemon's peak RSS (target: < 250 MB).

Needs root (loop mounts, drop_caches), e2fsprogs, util-linux (sfdisk), fuse3.
Usage: python benchmarks/bench_ext4.py [--files 20000] [--big-mib 512] [--rounds 3]
       [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import common  # noqa: E402
from common import drop_caches, unmount  # noqa: E402


def sh(*cmd, **kw):
    return subprocess.run(list(map(str, cmd)), check=True, capture_output=True, **kw)


def build_disk(work: Path, nfiles: int, big_mib: int) -> Path:
    fs = work / "fs.img"
    fs_mib = big_mib + nfiles * 8 // 1024 + 256
    sh("mkfs.ext4", "-q", "-F", "-b", "4096", fs, f"{fs_mib}M")
    mnt = work / "fill"
    mnt.mkdir(exist_ok=True)
    sh("mount", "-o", "loop", fs, mnt)
    try:
        chunk = os.urandom(4 << 20)
        with open(mnt / "big.bin", "wb") as f:
            for _ in range(big_mib // 4):
                f.write(chunk)
        per_dir = max(1, nfiles // 20)
        for i in range(nfiles):
            d = mnt / "tree" / f"d{i // per_dir:02d}"
            if i % per_dir == 0:
                d.mkdir(parents=True)
            with open(d / f"file-{i:06d}.txt", "wb") as f:
                f.write(b"x" * (i % 3000))
    finally:
        sh("umount", mnt)
    disk = work / "vm-150-disk-0.raw"
    size = os.path.getsize(fs)
    with open(disk, "wb") as f:
        f.truncate(size + (2 << 20))
    subprocess.run(["sfdisk", "-q", str(disk)], input=f"label: gpt\nstart=2048, size={size // 512}\n",
                   text=True, check=True, capture_output=True)
    sh("dd", f"if={fs}", f"of={disk}", "bs=4M", "seek=1M", "oflag=seek_bytes", "conv=notrunc,sparse")
    os.unlink(fs)
    return disk


def find_stat(top: Path) -> tuple[float, int]:
    """Cold ``find -printf`` (lstat of every entry): seconds and entries."""
    drop_caches()
    t = time.perf_counter()
    out = subprocess.run(["find", str(top), "-printf", "%s %m %T@\n"], check=True,
                         capture_output=True).stdout
    return time.perf_counter() - t, out.count(b"\n")


def daemon_rss(disk: Path) -> float | None:
    pids = subprocess.run(["pgrep", "-f", f"pvfs mount {disk}"], capture_output=True,
                          text=True).stdout.split()
    for p in pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def mount_pvfs(disk: Path, mnt: Path):
    mnt.mkdir(exist_ok=True)
    sh(sys.executable, "-m", "pvfs", "mount", disk, mnt, cwd=ROOT)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--big-mib", type=int, default=512)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="pvfs-bench-ext4-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"load before: {os.getloadavg()}", flush=True)
    print(f"building the disk in {work} ...", flush=True)
    disk = build_disk(work, args.files, args.big_mib)
    size = args.big_mib << 20
    mnt = work / "mnt"
    kmnt = work / "kernel"
    kmnt.mkdir(exist_ok=True)
    runs: dict[str, list[float]] = {}
    rss = None
    for _ in range(args.rounds):  # the machine is shared: medians of a few rounds
        mount_pvfs(disk, mnt)  # fresh: nothing listed yet
        try:
            files = mnt / "vms" / "150" / "disk-0.files" / "p1"
            t, n_p = find_stat(files / "tree")
            runs.setdefault("find+stat pvfs (fresh mount) s", []).append(t)
            t, _ = find_stat(files / "tree")
            runs.setdefault("find+stat pvfs (listed again) s", []).append(t)
            sh("mount", "-o", "ro,loop,noload", mnt / "vms" / "150" / "disk-0.parts" / "p1",
               kmnt)
            try:
                t, n_k = find_stat(kmnt / "tree")
                runs.setdefault("find+stat kernel s", []).append(t)
                assert n_p == n_k == args.files + 21, (n_p, n_k)
                assert os.path.getsize(files / "big.bin") == size
                runs.setdefault("read pvfs MB/s", []).append(
                    common.timed_read(files / "big.bin")[1])
                runs.setdefault("read kernel MB/s", []).append(
                    common.timed_read(kmnt / "big.bin")[1])
            finally:
                sh("umount", kmnt)
            rss = max(rss or 0, daemon_rss(disk) or 0)
        finally:
            unmount(mnt)
    res = {k: statistics.median(v) for k, v in runs.items()}
    print(f"load after: {os.getloadavg()}")
    print()
    for k, v in res.items():
        print(f"{k:34s} {v:10.2f}   (rounds: {', '.join(f'{x:.2f}' for x in runs[k])})")
    print(f"pvfs daemon peak RSS:              {rss:.0f} MiB" if rss else "RSS unknown")
    print(f"\nsequential read pvfs / kernel:     {res['read pvfs MB/s'] / res['read kernel MB/s']:.2f}"
          "  (target >= 0.8)")
    print(f"find+stat pvfs / kernel (time):    "
          f"{res['find+stat pvfs (fresh mount) s'] / res['find+stat kernel s']:.2f}  (target <= 2)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
