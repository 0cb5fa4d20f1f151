#!/usr/bin/env python3
"""ZFS: sequential read of a large file from a zfs-fuse raidz1 pool (compression off and
on = lzjb) through ``pvfs mount`` versus zfs-fuse serving the same pool, same run; and the
time to mount a pool and list a dataset of 10,000 files.

The pool is made once with zfs-fuse (Debian package ``zfs-fuse``, pool version 23) in
``--workdir`` (default: the fixture cache) and reused.  A zfs-fuse daemon is started only
when none answers, and only that process is stopped again.  Needs root and /dev/fuse.
Every round prints the load average; the summary gives pvfs / zfs-fuse per round and
the median (reads: MB/s ratio; list+stat and mount: time ratio, zfs-fuse / pvfs), the
mount time against the 0.5 s target and the daemon's peak RSS.  ``--stress N`` runs
``stress-ng --cpu N`` beside it (a loaded machine).  zfs-fuse cannot make or read lz4
(pool version 23 predates feature flags), so lz4 is not part of the comparison.
Usage: python benchmarks/bench_zfs.py [--size-mib 256] [--files 10000] [--workdir DIR]
       [--rounds 3] [--stress N]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import timed_read, unmount  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
POOL = "pvfsbench"


def sh(*cmd, check=True, **kw):
    return subprocess.run(list(map(str, cmd)), check=check, capture_output=True, text=True, **kw)


def timed_walk(top):
    t = time.perf_counter()
    n = 0
    for dirpath, _dirs, files in os.walk(top):
        for f in files:
            os.lstat(os.path.join(dirpath, f))
            n += 1
    return n, time.perf_counter() - t


class ZfsFuse:
    """A zfs-fuse daemon: the one that answers, or one we start (and stop) ourselves."""

    def __init__(self, work):
        self.proc = None
        if sh("zpool", "list", check=False).returncode != 0:
            log = open(work / "zfs-fuse.log", "w")
            self.proc = subprocess.Popen(["zfs-fuse", "--no-daemon", "--no-kstat-mount"],
                                         stdout=log, stderr=log)
            for _ in range(100):
                if sh("zpool", "list", check=False).returncode == 0:
                    break
                time.sleep(0.2)
            else:
                raise SystemExit("zfs-fuse did not start")

    def stop(self):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=60)


def text_chunk(seed, size):
    """Log-like text that lzjb (1 KiB window) compresses about 2:1."""
    rnd = random.Random(seed)
    words = [b"kernel", b"zfs", b"pool", b"txg", b"sync", b"write", b"read", b"error", b"ok",
             b"vdev", b"disk", b"raidz", b"mirror", b"block", b"checksum", b"scrub"]
    out = bytearray()
    while len(out) < size:
        out += (b"Nov 26 10:%02d:%02d pve %s: " % (rnd.randint(0, 59), rnd.randint(0, 59),
                                                  rnd.choice(words))
                + b" ".join(rnd.choice(words) for _ in range(8)) + b" %d\n" % rnd.randint(0, 999))
    return bytes(out[:size])


def build_pool(work, size_mib, nfiles):
    disks = [work / f"{POOL}-d{i}.img" for i in range(3)]
    stamp = work / f"built-{size_mib}-{nfiles}"
    if stamp.exists() and all(d.exists() for d in disks):
        return disks
    zf = ZfsFuse(work)
    try:
        sh("zpool", "destroy", "-f", POOL, check=False)
        for d in disks:
            d.unlink(missing_ok=True)
            with open(d, "wb") as f:
                f.truncate(max(1024, size_mib * 2 + 512) << 20)
        mnt = work / "zmnt"
        mnt.mkdir(exist_ok=True)
        sh("zpool", "create", "-f", "-m", mnt, POOL, "raidz1", *disks)
        sh("zfs", "create", "-o", "compression=off", f"{POOL}/off")
        sh("zfs", "create", "-o", "compression=on", f"{POOL}/on")
        sh("zfs", "create", f"{POOL}/many")
        chunk = text_chunk(1, 1 << 20)
        rnd = os.urandom(1 << 20)
        for ds in ("off", "on"):
            with open(mnt / ds / "big.bin", "wb") as f:
                for i in range(size_mib):  # half text (compresses), half random (does not)
                    f.write(chunk if i % 2 == 0 else rnd)
        for i in range(nfiles):
            d = mnt / "many" / f"d{i // 100:03d}"
            if i % 100 == 0:
                d.mkdir()
            (d / f"f{i:05d}.txt").write_bytes(b"file %d\n" % i * (1 + i % 7))
        sh("zpool", "export", POOL)
    finally:
        zf.stop()
    stamp.write_text("ok")
    return disks


def daemon_rss_mib(mnt):
    """Peak RSS (VmHWM) of the pvfs daemon serving ``mnt``, in MiB (None if not found)."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
            if b"mount" in argv and str(mnt).encode() in argv:
                for line in (d / "status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            continue
    return None


def bench_pvfs(work, disks, results):
    mnt = work / "pvfs-mnt"
    mnt.mkdir(exist_ok=True)
    t = time.perf_counter()
    # output to a file, not a pipe: helper processes of discovery (multiprocessing's
    # resource tracker) may keep a pipe open after 'pvfs mount' returned
    with open(work / "pvfs-mount.log", "w") as log:
        subprocess.run([sys.executable, "-m", "pvfs", "mount", *map(str, disks), str(mnt)],
                       cwd=ROOT, stdout=log, stderr=log, check=True)
    results["pvfs: mount (discover pool)"] = ("s", time.perf_counter() - t)
    try:
        base = mnt / "storage" / "zfs" / POOL
        n, dt = timed_walk(base / "many")
        results["pvfs: list+stat files"] = ("s", dt)
        for ds in ("off", "on"):
            size, mbs = timed_read(base / ds / "big.bin")
            results[f"pvfs: read big.bin, compression={ds}"] = ("MB/s", mbs)
        results["pvfs: daemon peak RSS"] = ("MiB", daemon_rss_mib(mnt) or 0.0)
    finally:
        unmount(mnt)


def bench_zfs_fuse(work, disks, results):
    zf = ZfsFuse(work)
    try:
        t = time.perf_counter()
        sh("zpool", "import", "-d", work, POOL)
        results["zfs-fuse: zpool import (+ mounts)"] = ("s", time.perf_counter() - t)
        mnt = Path(sh("zfs", "get", "-H", "-o", "value", "mountpoint", POOL).stdout.strip())
        try:
            n, dt = timed_walk(mnt / "many")
            results["zfs-fuse: list+stat files"] = ("s", dt)
            for ds in ("off", "on"):
                size, mbs = timed_read(mnt / ds / "big.bin")
                results[f"zfs-fuse: read big.bin, compression={ds}"] = ("MB/s", mbs)
        finally:
            sh("zpool", "export", POOL, check=False)
    finally:
        zf.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--stress", type=int, default=0, metavar="N",
                    help="run stress-ng --cpu N beside the benchmark (a loaded machine)")
    args = ap.parse_args()
    for tool in ("zfs-fuse", "zpool", "zfs", "fusermount3"):
        if not shutil.which(tool):
            raise SystemExit(f"missing {tool} (Debian: zfs-fuse, fuse3)")
    work = Path(args.workdir or Path.home() / ".cache" / "pvfs-bench-zfs")
    work.mkdir(parents=True, exist_ok=True)
    print(f"pool: {args.size_mib} MiB files, {args.files} small files, in {work}", flush=True)
    t = time.perf_counter()
    disks = build_pool(work, args.size_mib, args.files)
    print(f"pool ready ({time.perf_counter() - t:.0f} s)", flush=True)
    # Rounds alternate pvfs and zfs-fuse, each with a fresh mount / import (cold caches:
    # drop_caches for the kernel, a new process for pvfs, a new import for zfs-fuse's ARC);
    # the median of the rounds is reported (shared machines are noisy).
    stress = None
    if args.stress:
        # a steady CPU load beside the benchmark (the "under load" run)
        stress = subprocess.Popen(["stress-ng", "--cpu", str(args.stress), "--quiet"])
        time.sleep(5)
    try:
        runs = run_rounds(work, disks, args.rounds)
    finally:
        if stress is not None:
            stress.terminate()
            stress.wait()
    report(runs, args)


def load():
    a, b, c = os.getloadavg()
    return f"load average {a:.1f} {b:.1f} {c:.1f} on {os.cpu_count()} CPUs"


def run_rounds(work, disks, rounds):
    # Rounds alternate pvfs and zfs-fuse, each with a fresh mount / import (cold caches:
    # drop_caches for the kernel, a new process for pvfs, a new import for zfs-fuse's ARC);
    # the median of the rounds is reported (shared machines are noisy).
    runs = []
    for r in range(rounds):
        results = {}
        try:
            bench_pvfs(work, disks, results)
            bench_zfs_fuse(work, disks, results)
        except SystemExit as e:  # zfs-fuse did not start (a loaded machine): keep the rest
            print(f"round {r + 1}: {e}; {len(runs)} rounds kept", flush=True)
            if not runs:
                raise
            break
        runs.append(results)
        print(f"round {r + 1} ({load()}):", flush=True)
        for k, (u, v) in results.items():
            print(f"    {k:45s} {v:9.2f} {u}", flush=True)
    return runs


def report(runs, args):
    med = {k: statistics.median(r[k][1] for r in runs) for k in runs[0]}
    units = {k: runs[0][k][0] for k in runs[0]}
    print(f"\nmedian of {len(runs)} rounds ({load()}"
          f"{f', stress-ng --cpu {args.stress} beside it' if args.stress else ''}):")
    for k, v in med.items():
        print(f"{k:45s} {v:9.2f} {units[k]}")
    print("\nratios pvfs / zfs-fuse (1.00 = as fast; per round, then the median):")
    rows = [("read, compression=off", "MB/s", "read big.bin, compression=off"),
            ("read, compression=on (lzjb)", "MB/s", "read big.bin, compression=on"),
            (f"list+stat {args.files} files", "s", "list+stat files"),
            ("mount / zpool import", "s", None)]
    for label, unit, key in rows:
        per = []
        for r in runs:
            if key is None:
                a, b = r["pvfs: mount (discover pool)"][1], r["zfs-fuse: zpool import (+ mounts)"][1]
            else:
                a, b = r[f"pvfs: {key}"][1], r[f"zfs-fuse: {key}"][1]
            per.append(a / b if unit == "MB/s" else b / a)
        print(f"  {label:32s} {' '.join(f'{x:5.2f}' for x in per)}   median {statistics.median(per):.2f}")
    print(f"pvfs mount (discover the 3-disk pool): {med['pvfs: mount (discover pool)']:.2f} s "
          f"(target < 0.5 s); daemon peak RSS {med['pvfs: daemon peak RSS']:.0f} MiB")

if __name__ == "__main__":
    main()
