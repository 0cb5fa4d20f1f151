#!/usr/bin/env python3
"""Sequential read of a 1 GiB qcow2: pvfs mount vs qemu-storage-daemon FUSE export,
qemu-img convert, and cat of the equivalent raw file (the limit). Same run, same data.

Needs root (drop_caches), qemu-utils and qemu-system-common (qemu-storage-daemon).
Usage: python benchmarks/bench_qcow2.py [--size-mib 1024] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import common  # noqa: E402
from common import drop_caches  # noqa: E402


def sh(*cmd, **kw):
    return subprocess.run(list(map(str, cmd)), check=True, capture_output=True, **kw)


def timed_read(path, size, bs=1 << 20):
    total, mbs = common.timed_read(path, bs)
    assert total == size, (total, size)
    return mbs


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

    results["cat raw file (limit)"] = timed_read(raw, size)

    mnt = work / "mnt"
    mnt.mkdir(exist_ok=True)
    py = sys.executable
    sh(py, "-m", "pvfs", "mount", qcow, mnt, cwd=ROOT)
    try:
        disk = mnt / "storage" / "files" / "bench.qcow2" / "disk.raw"
        results["pvfs mount"] = timed_read(disk, size)
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
        subprocess.run(["fusermount3", "-u", str(mnt)])

    qsd = shutil.which("qemu-storage-daemon")
    if qsd:
        export = work / "qsd.raw"
        export.touch()
        proc = subprocess.Popen([qsd, "--blockdev", f"driver=file,filename={qcow},node-name=f,read-only=on",
                                 "--blockdev", "driver=qcow2,file=f,node-name=q,read-only=on",
                                 "--export", f"type=fuse,id=e,node-name=q,mountpoint={export},writable=off"])
        try:
            for _ in range(100):
                if os.path.ismount(export):
                    break
                time.sleep(0.1)
            results["qemu-storage-daemon FUSE export"] = timed_read(export, size)
            # The same kernel read-ahead pvfs sets for its own mount, for a like-for-like figure.
            sys.path.insert(0, str(ROOT))
            from mountd.daemon import tune_readahead
            tune_readahead(str(export), 4096)
            results["qemu-storage-daemon, read-ahead 4 MiB"] = timed_read(export, size)
        finally:
            proc.terminate()
            proc.wait()
    else:
        print("qemu-storage-daemon not installed (Debian: qemu-system-common); skipped")

    print()
    for k, v in results.items():
        print(f"{k:40s} {v:8.0f} MB/s")
    if "qemu-storage-daemon FUSE export" in results:
        print(f"\nratio pvfs / qemu-storage-daemon: "
              f"{results['pvfs mount'] / results['qemu-storage-daemon FUSE export']:.2f}")
    print(f"ratio pvfs / cat raw (limit):      {results['pvfs mount'] / results['cat raw file (limit)']:.2f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
