#!/usr/bin/env python3
"""btrfs guest filesystem: pvfs's reader against the kernel, same run, same data.

A GPT VM disk (``vm-100-disk-0.raw``) holds one btrfs partition made by
mkfs.btrfs and filled through a kernel loop mount: a large incompressible file
(``--size-mib``, default 512) and ``--files`` small files (default 20,000) in
100 directories.  Then, with ``pvfs mount`` of the disk:

- sequential read of the large file through ``vms/100/disk-0.files/p1/``
  (pvfs's btrfs reader) versus the kernel's btrfs on a read-only loop mount of
  ``vms/100/disk-0.parts/p1`` (pvfs's own partition file as the kernel's input),
  both with cold caches (drop_caches; the pvfs daemon is restarted);
- ``find`` + ``lstat`` of every small file, both ways;
- the pvfs daemon's peak RSS.

Needs root, /dev/fuse and btrfs-progs.  The disk is made once in ``--workdir``.
Usage: python benchmarks/bench_btrfs.py [--size-mib 512] [--files 20000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import drop_caches, timed_read, unmount  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PART_START = 1 << 20


def sh(*cmd, check=True, **kw):
    return subprocess.run(list(map(str, cmd)), check=check, capture_output=True, text=True, **kw)


def build_disk(work: Path, size_mib: int, nfiles: int) -> Path:
    disk = work / "vm-100-disk-0.raw"
    stamp = work / f"built-{size_mib}-{nfiles}"
    if stamp.exists():
        return disk
    fs_bytes = (size_mib + 1024) << 20
    img = work / "fs.img"
    with open(img, "wb") as f:
        f.truncate(fs_bytes)
    sh("mkfs.btrfs", "-q", "-f", img)
    mnt = tempfile.mkdtemp()
    sh("mount", "-o", "loop", img, mnt)
    try:
        rnd = random.Random(1)
        with open(f"{mnt}/big.bin", "wb") as f:
            for _ in range(size_mib):
                f.write(rnd.randbytes(1 << 20))
        for d in range(100):
            os.mkdir(f"{mnt}/d{d:03d}")
            for i in range(nfiles // 100):
                with open(f"{mnt}/d{d:03d}/f{i:05d}", "wb") as f:
                    f.write(b"x" * (i % 3000))
    finally:
        sh("umount", mnt)
        os.rmdir(mnt)
    with open(disk, "wb") as f:
        f.truncate(PART_START + fs_bytes + (1 << 20))
    subprocess.run(["sfdisk", "-q", str(disk)], check=True, text=True,
                   input=f"label: gpt\nstart={PART_START // 512}, size={fs_bytes // 512}\n")
    sh("dd", f"if={img}", f"of={disk}", "bs=4M", f"seek={PART_START}", "oflag=seek_bytes",
       "conv=sparse,notrunc", "status=none")
    img.unlink()
    stamp.write_text("ok")
    return disk


def walk_stat(top) -> tuple[int, float]:
    t = time.perf_counter()
    n = 0
    for dirpath, _dirs, files in os.walk(top):
        for name in files:
            os.lstat(os.path.join(dirpath, name))
            n += 1
    return n, time.perf_counter() - t


def daemon_pid(mnt: Path):
    out = sh("pgrep", "-f", f"pvfs mount .* {mnt}", check=False).stdout.split()
    return int(out[0]) if out else None


def peak_rss_mib(pid) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def one_round(disk: Path, work: Path, results: dict):
    mnt = work / "mnt"
    mnt.mkdir(exist_ok=True)
    drop_caches()
    sh(sys.executable, "-m", "pvfs", "mount", disk, mnt, cwd=ROOT)
    kmnt = Path(tempfile.mkdtemp())
    try:
        files = mnt / "vms/100/disk-0.files/p1"
        n, dt = walk_stat(files)
        results.setdefault("pvfs: find+lstat (s)", []).append(dt)
        _b, mbs = timed_read(files / "big.bin")
        results.setdefault("pvfs: read big.bin (MB/s)", []).append(mbs)
        pid = daemon_pid(mnt)
        if pid:
            results.setdefault("pvfs: daemon peak RSS (MiB)", []).append(peak_rss_mib(pid))
        sh("mount", "-o", "ro,loop", mnt / "vms/100/disk-0.parts/p1", kmnt)
        try:
            drop_caches()
            n2, dt = walk_stat(kmnt)
            assert n2 == n, (n, n2)
            results.setdefault("kernel: find+lstat (s)", []).append(dt)
            _b, mbs = timed_read(kmnt / "big.bin")
            results.setdefault("kernel: read big.bin (MB/s)", []).append(mbs)
        finally:
            sh("umount", kmnt)
    finally:
        os.rmdir(kmnt)
        unmount(mnt)
    results["files"] = [n]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workdir")
    args = ap.parse_args()
    work = Path(args.workdir or Path.home() / ".cache" / "pvfs-bench-btrfs")
    work.mkdir(parents=True, exist_ok=True)
    disk = build_disk(work, args.size_mib, args.files)
    results: dict = {}
    for _ in range(args.rounds):
        one_round(disk, work, results)
    for k, v in results.items():
        print(f"{k}: " + ", ".join(f"{x:.2f}" for x in v))
    best = {k: (max(v) if "MB/s" in k else min(v)) for k, v in results.items()}
    print(f"read ratio pvfs/kernel: "
          f"{best['pvfs: read big.bin (MB/s)'] / best['kernel: read big.bin (MB/s)']:.2f} "
          f"(target >= 0.8)")
    print(f"find+lstat ratio pvfs/kernel: "
          f"{best['pvfs: find+lstat (s)'] / best['kernel: find+lstat (s)']:.2f} (target <= 2)")


if __name__ == "__main__":
    main()
