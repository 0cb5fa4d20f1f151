#!/usr/bin/env python3
"""ZFS at scale: a pool made by zfs-fuse with up to 1 million files, read by ``pvfs mount``
and by zfs-fuse itself in the same run (issue 15 item 5).

For each size N (default 10,000, 100,000 and 1,000,000 files) one pool on one sparse file
vdev holds dataset ``fs`` with ``big/`` (N/10 files in one directory: 100,000 entries at
1M) and ``tree/`` (the rest, 1,000 files per directory), small files of 0-99 bytes.
Measured per size, each side freshly mounted / imported, the page cache and the kernel's
dentries and inodes dropped before each step (so every step asks the daemon, and the kernel
forgets what the step before looked up):

- mount: ``pvfs mount`` until the tree answers / ``zpool import`` with its mounts;
- ``ls -f`` of ``big/`` (names only, unsorted) and the daemon's RSS right after it;
- ``ls -l`` of ``big/`` (a stat per entry);
- ``find`` of the whole dataset (``-type f``): files per second;
- ``os.walk`` + ``lstat`` of every file of ``tree/`` (list + stat, issue 15 item 1);
- RSS of the pvfs mount daemon after mounting, after ``ls -f`` and its peak after the find
  (VmHWM), and the zfs-fuse daemon's, with the load average of each line.

Pools are built once into ``--workdir`` (default ``/var/tmp/pvfs-bench-scale``: building
1M files through zfs-fuse takes several minutes) and reused.  A zfs-fuse daemon is started
only when none answers, and only that process is stopped.  Needs root and /dev/fuse;
Debian package zfs-fuse (``scripts/setup.sh --bench``).

    python benchmarks/bench_scale_zfs.py [--sizes 10000,100000,1000000] [--workdir DIR]
        [--root CHECKOUT]   # measure another checkout's pvfs (e.g. main, for a before/after)
        [--rounds N]        # N rounds per size, pvfs and zfs-fuse alternating: medians,
                            # and each step's ratio zfs-fuse time / pvfs time (> 1: pvfs
                            # faster), median of the per-round ratios
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_zfs import ZfsFuse, sh  # noqa: E402
from common import drop_caches, load, mount_daemon_pid, print_curve, rss_mib, unmount  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PER_DIR = 1000


def pool_name(n: int) -> str:
    return f"pvfsscale{n}"


def layout(n: int) -> tuple[int, int]:
    """``(files in big/, directories of tree/)``."""
    big = n // 10
    rest = n - big
    return big, (rest + PER_DIR - 1) // PER_DIR


def write_files(d: Path, names: range, prefix: str) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    for i in names:
        fd = os.open(d / f"{prefix}{i:07d}", flags, 0o644)
        if i % 100:
            os.write(fd, b"z" * (i % 100))
        os.close(fd)


def build_pool(work: Path, n: int) -> Path:
    """The pool of ``n`` files (built once); returns its vdev file."""
    disk = work / "d0.img"
    stamp = work / "built"
    if stamp.exists() and disk.exists():
        return disk
    work.mkdir(parents=True, exist_ok=True)
    pool = pool_name(n)
    zf = ZfsFuse(work)
    try:
        sh("zpool", "destroy", "-f", pool, check=False)
        disk.unlink(missing_ok=True)
        with open(disk, "wb") as f:
            f.truncate(max(2 << 30, n * (16 << 10)))
        mnt = work / "zmnt"
        mnt.mkdir(exist_ok=True)
        sh("zpool", "create", "-f", "-m", mnt, pool, disk)
        sh("zfs", "create", f"{pool}/fs")
        fs = mnt / "fs"
        big, ndirs = layout(n)
        t = time.perf_counter()
        (fs / "big").mkdir()
        write_files(fs / "big", range(big), "b")
        left = n - big
        for j in range(ndirs):
            d = fs / "tree" / f"d{j:04d}"
            d.mkdir(parents=True)
            k = min(PER_DIR, left)
            write_files(d, range(k), "f")
            left -= k
            if j % 100 == 99:
                done = n - left
                print(f"  {done} files, {done / (time.perf_counter() - t):.0f}/s, {load()}",
                      flush=True)
        sh("zpool", "export", pool)
    finally:
        zf.stop()
    stamp.write_text("ok")
    return disk


def timed(cmd: list, **kw) -> tuple[float, bytes]:
    t = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, **kw).stdout
    return time.perf_counter() - t, out


def count_find(top: Path) -> tuple[float, int]:
    dt, out = timed(["find", str(top), "-name", ".zfs", "-prune", "-o", "-type", "f",
                     "-print"])
    return dt, out.count(b"\n")


def listings(top: Path, n: int, row: dict, pid: int | None = None) -> None:
    """``ls -f`` and ``ls -l`` of ``big/`` and ``find`` below ``top``, each after dropping
    the caches; the daemon's RSS after ``ls -f`` and after the find."""
    big = layout(n)[0]
    drop_caches()
    dt, out = timed(["ls", "-f", str(top / "big")])
    names = [x for x in out.split(b"\n") if x not in (b"", b".", b"..")]
    assert len(names) == big, len(names)  # (zfs-fuse lists . and .., pvfs does not)
    row["ls -f big/ s"] = dt
    if pid is not None:
        row["rss ls MiB"] = rss_mib(pid)[0]
    drop_caches()
    dt, out = timed(["ls", "-l", str(top / "big")])
    assert out.count(b"\n") == big + 1, out.count(b"\n")  # with "total"
    row["ls -l big/ s"] = dt
    drop_caches()
    dt, found = count_find(top)
    assert found == n, (found, n)
    row["find s"] = dt
    row["find files/s"] = int(n / dt)
    drop_caches()
    t = time.perf_counter()
    stats = 0
    for dirpath, _dirs, files in os.walk(top / "tree"):
        for f in files:
            os.lstat(os.path.join(dirpath, f))
        stats += len(files)
    row["walk+lstat s"] = time.perf_counter() - t
    assert stats == n - big, (stats, n - big)
    if pid is not None:
        row["rss now MiB"], row["rss peak MiB"] = rss_mib(pid)
    row["load"] = os.getloadavg()[0]


def bench_pvfs(work: Path, disk: Path, n: int, root: Path = ROOT) -> dict:
    mnt = work / "pvfs-mnt"
    mnt.mkdir(exist_ok=True)
    drop_caches()
    row: dict = {"files": n}
    t = time.perf_counter()
    sh(sys.executable, "-m", "pvfs", "mount", disk, mnt, cwd=root)
    row["mount s"] = time.perf_counter() - t
    try:
        pid = mount_daemon_pid(mnt)
        row["rss mount MiB"] = rss_mib(pid)[0]
        listings(mnt / "storage" / "zfs" / pool_name(n) / "fs", n, row, pid)
    finally:
        unmount(mnt)
    return row


def bench_zfs_fuse(work: Path, n: int) -> dict:
    row: dict = {"files": n}
    zf = ZfsFuse(work)
    pool = pool_name(n)
    try:
        drop_caches()
        t = time.perf_counter()
        sh("zpool", "import", "-d", work, pool)
        row["mount s"] = time.perf_counter() - t
        try:
            mnt = Path(sh("zfs", "get", "-H", "-o", "value", "mountpoint", f"{pool}/fs")
                       .stdout.strip())
            listings(mnt, n, row, zf.proc.pid if zf.proc is not None else None)
        finally:
            sh("zpool", "export", pool, check=False)
    finally:
        zf.stop()
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--workdir", default="/var/tmp/pvfs-bench-scale")
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--no-peer", action="store_true", help="skip zfs-fuse's side")
    ap.add_argument("--root", type=Path, default=ROOT,
                    help="the checkout whose pvfs is measured (default: this one)")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    for tool in ("zfs-fuse", "zpool", "zfs", "fusermount3"):
        if not shutil.which(tool):
            raise SystemExit(f"missing {tool} (Debian: zfs-fuse, fuse3)")
    sizes = [int(s) for s in args.sizes.split(",")]
    base = Path(args.workdir)
    pv, zf, ratios = [], [], []
    for n in sizes:
        work = base / f"zfs-{n}"
        t = time.perf_counter()
        disk = build_pool(work, n)
        print(f"pool of {n} files ready ({time.perf_counter() - t:.0f} s), {load()}", flush=True)
        if args.build_only:
            continue
        pvr, zfr = [], []
        for _r in range(args.rounds):
            pvr.append(bench_pvfs(work, disk, n, args.root))
            print(f"  pvfs     {pvr[-1]}", flush=True)
            if not args.no_peer:
                zfr.append(bench_zfs_fuse(work, n))
                print(f"  zfs-fuse {zfr[-1]}", flush=True)
        pv.append(median_row(pvr))
        if zfr:
            zf.append(median_row(zfr))
            ratios.append(ratio_row(pvr, zfr))
    if args.build_only:
        return
    cols = ["files", "mount s", "ls -f big/ s", "ls -l big/ s", "find s", "find files/s",
            "walk+lstat s", "rss mount MiB", "rss ls MiB", "rss peak MiB", "load"]
    print_curve(f"pvfs mount of a zfs-fuse pool ({os.cpu_count()} CPUs), {args.root}", pv,
                cols)
    if zf:
        print_curve("zfs-fuse on the same pools (its daemon's RSS: ARC and caches)", zf,
                    [c for c in cols if c != "rss mount MiB"], check_rss=False)
        print_curve(f"zfs-fuse time / pvfs time (> 1: pvfs faster), median of {args.rounds} "
                    f"round(s)", ratios, ["files"] + STEPS + ["load"], check_rss=False)


STEPS = ["mount s", "ls -f big/ s", "ls -l big/ s", "find s", "walk+lstat s"]


def median_row(rows: list[dict]) -> dict:
    """Each column's median over the rounds."""
    import statistics

    out = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    out["files"] = rows[0]["files"]
    return out


def ratio_row(pv: list[dict], zf: list[dict]) -> dict:
    """Each step's median of the per-round ratios zfs-fuse / pvfs (same round: same load)."""
    import statistics

    out = {"files": pv[0]["files"], "load": statistics.median(r["load"] for r in pv + zf)}
    for k in STEPS:
        out[k] = statistics.median(z[k] / p[k] for p, z in zip(pv, zf, strict=True))
    return out


if __name__ == "__main__":
    main()
