#!/usr/bin/env python3
"""Copying a whole disk out: ``pvfs copy`` against ``cp`` of the equivalent raw file (the
limit) and against ``cat`` of the disk through ``pvfs mount`` into a file, same run, cold
page cache, the output on the same file system as the inputs.

The inputs are bench_read.py's (built by it, shared: raw, linear LV, thin LV, qcow2 with
compressed clusters, fragmented qcow2; 1 GiB each).  Each round copies every input once
per way, interleaved (``cp`` of raw.img, then input 1 by the other ways, then ``cp`` again,
input 2 ...: each input is compared with the ``cp`` just before it); before each copy the
previous output is removed, written-back dirty pages flushed (``sync``), the disk let
finish its I/O and the inputs' and exposed files' pages dropped
(``posix_fadvise(DONTNEED)``), so every copy starts cold and does not pay for the one
before.  A copy is timed until its command exits (no ``fsync``: as ``cp`` is used).
``pvfs copy``'s time includes its start-up and discovery of the input (about 0.2 s: a
sizeable part of a 1 GiB copy at 2 GB/s, nothing of a disk of 100 GiB); "copy alone" is
the rate it reports itself, from the first byte to the last.  Outputs are
checked by sha256 in the first round (raw.img's, or the thin LV's tagged blocks).  The CPU
each way spends per GiB is printed too (the mount daemon's counted for ``cat`` through
it): on a shared machine whose "cold" disk is the host's page cache it is steadier than
the speed.  The
median of the rounds and the per-round ratios to ``cp`` are printed with the load.

Usage: python benchmarks/bench_copy.py [--rounds 5] [--stress N] [--size-mib 1024]
       [--inputs /var/tmp/pvfs-bench-read] [--workdir /var/tmp/pvfs-bench-copy]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT), str(ROOT / "tests")]
import bench_read  # noqa: E402
import common  # noqa: E402

#: The tree path of each input's disk (as bench_read.mount exposes them).
TREE = {"raw": "storage/files/raw.img/disk.raw", "lvm": "storage/lvm/benchvg/disk",
        "thin": "storage/lvm/bench/vm-1001-disk-0",
        "qcow2": "storage/files/bench.qcow2/disk.raw",
        "qcow2-frag": "storage/files/frag.qcow2/disk.raw"}


def cpu_of(pid: int | None) -> float:
    """CPU seconds (user + system) ``pid`` has used so far (/proc/PID/stat)."""
    if pid is None:
        return 0.0
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def timed_run(argv: list[str], stdout=subprocess.PIPE,
              daemon: int | None = None) -> tuple[float, float, str]:
    """Seconds until ``argv`` exits, the CPU seconds it used (with the mount daemon's, when
    ``daemon`` is its pid: a read through FUSE costs there too), and its output."""
    ru0, d0 = resource.getrusage(resource.RUSAGE_CHILDREN), cpu_of(daemon)
    t = time.perf_counter()
    r = subprocess.run(argv, check=True, stdout=stdout, stderr=subprocess.PIPE,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT)
    secs = time.perf_counter() - t
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = ru1.ru_utime - ru0.ru_utime + ru1.ru_stime - ru0.ru_stime + cpu_of(daemon) - d0
    return secs, cpu, (r.stdout or b"").decode()


def cold(paths, dev: int) -> None:
    if not os.environ.get("PVFS_BENCH_WARM"):  # the test suite's smoke run: no sync
        os.sync()
    bench_read.settle(dev, 3.0)
    bench_read.drop(paths)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--inputs", default="/var/tmp/pvfs-bench-read",
                    help="bench_read.py's work directory (inputs built there if missing)")
    ap.add_argument("--workdir", default="/var/tmp/pvfs-bench-copy",
                    help="outputs and the mount (the same file system as the inputs)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--stress", type=int, default=0, metavar="N",
                    help="run stress-ng --cpu N beside the copies")
    ap.add_argument("--only", action="append", default=[], choices=list(TREE),
                    help="copy only these inputs (repeatable)")
    ap.add_argument("--size-mib", type=int, default=1024,
                    help="size of each input (a multiple of 32; bench_read.py's builders)")
    args = ap.parse_args()
    bench_read.SIZE_MIB = args.size_mib
    inputs = Path(args.inputs)
    inputs.mkdir(parents=True, exist_ok=True)
    files = bench_read.build(inputs)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    size = files["raw"].stat().st_size
    names = args.only or list(TREE)
    want = {"raw": bench_read.sha256_of(files["raw"]), "thin": bench_read.thin_sha256(size)}
    mnt = work / "mnt"
    exposed = bench_read.mount(files, mnt, ROOT, work / "mount.log")
    out = work / "out.raw"
    dev = files["raw"].stat().st_dev
    every = list(files.values()) + list(exposed.values())
    daemon = common.mount_daemon_pid(mnt)
    rounds, cpus = [], {}
    try:
        with common.stress_ng(args.stress):
            for r in range(args.rounds):
                one = {}
                for name in names:
                    ways = {
                        f"cp raw.img ({name})": ["cp", str(files["raw"]), str(out)],
                        f"pvfs copy {name}": [sys.executable, "-m", "pvfs", "copy",
                                              "--no-progress", "--index-dir", "none",
                                              str(files[name]), "--path", TREE[name],
                                              "--to", str(out)],
                        f"cat mount {name} > file": ["cat", str(exposed[name])],
                    }
                    for way, argv in ways.items():
                        out.unlink(missing_ok=True)
                        cold(every, dev)
                        if way.startswith("cat "):
                            with open(out, "wb") as f:
                                secs, cpu, text = timed_run(argv, stdout=f, daemon=daemon)
                        else:
                            secs, cpu, text = timed_run(argv)
                        one[way] = size / secs / 1e6
                        cpus.setdefault(way, []).append(cpu / (size / 2**30))
                        if way.startswith("pvfs "):  # its own report: the copy alone
                            one[f"{way} (copy alone)"] = float(
                                re.search(r"\((\d+) MB/s;", text)[1])
                        if r == 0:
                            kind = "thin" if name == "thin" and not way.startswith("cp ") \
                                else "raw"
                            got = bench_read.sha256_of(out)
                            assert got == want[kind], f"{way}: other bytes than {kind}"
                out.unlink(missing_ok=True)
                rounds.append(one)
                print(f"round {r + 1} ({common.load()}): " +
                      ", ".join(f"{k} {v:.0f}" for k, v in one.items()) + " MB/s", flush=True)
    finally:
        out.unlink(missing_ok=True)
        common.unmount(mnt)
    print("content: every output of round 1 had the expected sha256")
    print(f"\nmedian of {len(rounds)} rounds, {common.load()} on {os.cpu_count()} CPUs"
          f"{f', stress-ng --cpu {args.stress} beside it' if args.stress else ''}:")
    for k in rounds[0]:
        print(f"  {k:40s} {statistics.median(x[k] for x in rounds):8.0f} MB/s")
    print("\nCPU seconds per GiB (the command's; for cat through the mount with the mount "
          "daemon's), median:")
    for k, v in cpus.items():
        print(f"  {k:40s} {statistics.median(v):8.2f}")
    print("\nratio to cp of raw.img just before it (per round, then the median):")
    for name in names:
        for k in (f"pvfs copy {name}", f"pvfs copy {name} (copy alone)",
                  f"cat mount {name} > file"):
            per = [x[k] / x[f"cp raw.img ({name})"] for x in rounds]
            print(f"  {k:40s} {' '.join(f'{v:5.2f}' for v in per)}   median "
                  f"{statistics.median(per):.2f}")

if __name__ == "__main__":
    main()
