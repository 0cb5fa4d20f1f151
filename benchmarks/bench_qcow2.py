#!/usr/bin/env python3
"""Sequential read of a 1 GiB qcow2: pvfs mount vs qemu-storage-daemon FUSE export,
qemu-img convert, and cat of the equivalent raw file (the limit). Same run, same data.

Needs root (drop_caches), qemu-utils and qemu-system-common (qemu-storage-daemon).
Rounds alternate cat, pvfs and qemu-storage-daemon, each from a cold page cache; the
median and the per-round ratios are printed with the load average.
Usage: python benchmarks/bench_qcow2.py [--size-mib 1024] [--workdir DIR] [--rounds 3]
       [--stress N]
"""

from __future__ import annotations

import argparse
import contextlib
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


def timed_read(path, size, bs=1 << 20):
    total, mbs = common.timed_read(path, bs)
    assert total == size, (total, size)
    return mbs


def load():
    a, b, c = os.getloadavg()
    return f"load average {a:.1f} {b:.1f} {c:.1f} on {os.cpu_count()} CPUs"


def build_image(work, size_mib):
    raw = work / "src.raw"
    qcow = work / "bench.qcow2"
    # 7/8 random (incompressible, allocated), 1/8 left for compressed clusters.
    with open(raw, "wb") as f:
        chunk = os.urandom(4 << 20)
        for i in range(size_mib // 4):
            f.write(chunk if i % 8 != 7 else bytes(4 << 20))
    sh("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, qcow)
    # Compressed clusters in every 8th 4 MiB block (compressible text pattern).
    cmds = []
    for i in range(size_mib // 4):
        if i % 8 == 7:
            cmds += ["-c", f"write -c -P 0x{(i % 200) + 32:02x} {i * 4}M 1M"]
    for k in range(0, len(cmds), 64):
        sh("qemu-io", "-f", "qcow2", *cmds[k:k + 64], qcow)
    os.unlink(raw)
    return qcow


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--stress", type=int, default=0, metavar="N",
                    help="run stress-ng --cpu N beside the reads (a loaded machine)")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="pvfs-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"building a {args.size_mib} MiB qcow2 in {work} ...", flush=True)
    qcow = build_image(work, args.size_mib)
    size = args.size_mib << 20
    results = {}

    t = time.perf_counter()
    raw = work / "bench.raw"
    sh("qemu-img", "convert", "-f", "qcow2", "-O", "raw", qcow, raw)
    drop_caches()
    t = time.perf_counter()
    sh("qemu-img", "convert", "-f", "qcow2", "-O", "raw", qcow, work / "convert.raw")
    results["qemu-img convert -O raw"] = size / (time.perf_counter() - t) / 1e6
    os.unlink(work / "convert.raw")

    mnt = work / "mnt"
    mnt.mkdir(exist_ok=True)
    py = sys.executable
    with open(work / "pvfs-mount.log", "w") as log:  # a file: see bench_zfs.py
        subprocess.run([py, "-m", "pvfs", "mount", str(qcow), str(mnt)], cwd=ROOT,
                       stdout=log, stderr=log, check=True)
    qsd = shutil.which("qemu-storage-daemon")
    proc = None
    export = work / "qsd.raw"
    if qsd:
        export.touch()
        proc = subprocess.Popen([qsd, "--blockdev", f"driver=file,filename={qcow},node-name=f,read-only=on",
                                 "--blockdev", "driver=qcow2,file=f,node-name=q,read-only=on",
                                 "--export", f"type=fuse,id=e,node-name=q,mountpoint={export},writable=off"])
        for _ in range(100):
            if os.path.ismount(export):
                break
            time.sleep(0.1)
    else:
        print("qemu-storage-daemon not installed (Debian: qemu-system-common); skipped")
    # Rounds alternate the readers, each from a cold page cache, so that the limit (cat
    # of the raw file) and pvfs are measured under the same load and disk contention.
    rounds = []
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(common.stress_ng(args.stress))
        disk = mnt / "storage" / "files" / "bench.qcow2" / "disk.raw"
        for r in range(args.rounds):
            one = {"cat raw file (limit)": timed_read(raw, size), "pvfs mount": timed_read(disk, size)}
            if proc is not None:
                one["qemu-storage-daemon FUSE export"] = timed_read(export, size)
            rounds.append(one)
            print(f"round {r + 1} ({load()}): " +
                  ", ".join(f"{k} {v:.0f} MB/s" for k, v in one.items()), flush=True)
        results["pvfs mount (again, page cache)"] = common.timed_read(disk, cold=False)[1]
        pid = subprocess.run(["pgrep", "-f", f"pvfs mount {qcow}"], capture_output=True,
                             text=True).stdout.split()
        rss = None
        for p in pid:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    rss = int(line.split()[1]) / 1024
        print(f"pvfs daemon peak RSS: {rss:.0f} MiB" if rss else "pvfs daemon RSS: unknown")
    finally:
        stack.close()
        unmount(mnt)
        if proc is not None:
            proc.terminate()
            proc.wait()
    for k in rounds[0]:
        results[k] = statistics.median(r[k] for r in rounds)

    print(f"\nmedian of {len(rounds)} rounds, {load()}"
          f"{f', stress-ng --cpu {args.stress} beside it' if args.stress else ''}:")
    for k, v in results.items():
        print(f"{k:40s} {v:8.0f} MB/s")
    per = [r["pvfs mount"] / r["cat raw file (limit)"] for r in rounds]
    print(f"\nratio pvfs / cat raw (limit), per round: {' '.join(f'{x:.2f}' for x in per)}"
          f"   median {statistics.median(per):.2f}")
    if proc is not None:
        per = [r["pvfs mount"] / r["qemu-storage-daemon FUSE export"] for r in rounds]
        print(f"ratio pvfs / qemu-storage-daemon, per round: {' '.join(f'{x:.2f}' for x in per)}"
              f"   median {statistics.median(per):.2f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
