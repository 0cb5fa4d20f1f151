#!/usr/bin/env python3
"""Peak memory of the mount daemon while every file of the mount is read (issue 13 item 6).

For each fixture case (tests/scancases.py: every fixture and damaged variant), ``pvfs
mount`` the inputs, read every regular file of the tree to the end in 1 MiB pieces (as
``tar -cf /dev/null`` or ``cat`` of everything would; files that fail with EIO, the lost
bytes, count as errors and are read on past the bad piece), then take the daemon's
``VmHWM`` (peak resident set) from /proc/<pid>/status.  Prints a table (case, files,
bytes read, read errors, seconds, peak RSS) and the maximum; exit 1 when a case reaches
the limit (250 MB by default).

    PVFS_SHARED=/path/to/shared python benchmarks/bench_rss.py [-k TEXT] [--limit-mb 250]
        [--max-file-mb N]  # read at most N MiB of each file (default: all of it)
"""

from __future__ import annotations

import argparse
import errno
import os
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

import scancases  # noqa: E402
from common import mount_daemon_pid, unmount  # noqa: E402

CHUNK = 1 << 20


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def read_tree(mnt: Path, max_bytes: int | None = None) -> tuple[int, int, int]:
    """Read every regular file under ``mnt`` (symlinks not followed); (files, bytes, errors)."""
    files = nbytes = errors = 0
    buf = bytearray(CHUNK)
    for dirpath, dirnames, filenames in os.walk(mnt):
        dirnames.sort()
        for name in sorted(filenames):
            p = os.path.join(dirpath, name)
            try:
                st = os.lstat(p)
                if not stat.S_ISREG(st.st_mode):
                    continue
                fd = os.open(p, os.O_RDONLY)
            except OSError:
                errors += 1
                continue
            files += 1
            try:
                off, end = 0, st.st_size if max_bytes is None else min(st.st_size, max_bytes)
                while off < end:
                    try:
                        n = os.preadv(fd, [memoryview(buf)[:min(CHUNK, end - off)]], off)
                    except OSError as e:
                        if e.errno not in (errno.EIO, errno.ENODATA):
                            raise
                        errors += 1
                        n = CHUNK  # lost bytes: go on after them, as ddrescue-style copies do
                    if n == 0:
                        break
                    nbytes += min(n, end - off)
                    off += n
            finally:
                os.close(fd)
    return files, nbytes, errors


def measure(case: scancases.Case, max_bytes: int | None = None,
            timeout: float = 900) -> dict:
    """Mount ``case``, read everything, return the daemon's figures."""
    argv, _ = case.argv()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory(prefix="pvfs-rss-") as tmp:
        mnt = Path(tmp) / "mnt"
        mnt.mkdir()
        try:
            r = subprocess.run([sys.executable, "-m", "pvfs", "mount", *argv, str(mnt)],
                               capture_output=True, text=True, timeout=timeout, env=env,
                               cwd=tmp)
        except subprocess.TimeoutExpired:
            unmount(mnt, lazy=True)  # never let the clean-up walk into a live mount
            return {"case": case.name, "error": f"pvfs mount took over {timeout:.0f} s"}
        if r.returncode not in (0, 3) or not os.path.ismount(mnt):
            unmount(mnt, lazy=True)
            return {"case": case.name, "error": (r.stderr.strip().splitlines() or ["?"])[-1]}
        pid = mount_daemon_pid(mnt)
        try:
            after_mount = status_kb(pid, "VmRSS") if pid else 0
            t = time.monotonic()
            files, nbytes, errors = read_tree(mnt, max_bytes)
            secs = time.monotonic() - t
            peak = status_kb(pid, "VmHWM") if pid else 0
        finally:
            unmount(mnt)
    return {"case": case.name, "files": files, "bytes": nbytes, "errors": errors,
            "seconds": secs, "rss_mount_kb": after_mount, "peak_kb": peak, "pid": pid}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-k", action="append", default=[], metavar="TEXT",
                   help="only cases whose name contains TEXT (repeatable)")
    p.add_argument("--limit-mb", type=float, default=250)
    p.add_argument("--max-file-mb", type=float, default=None,
                   help="read at most this much of each file")
    args = p.parse_args(argv)
    cases = [c for c in scancases.CASES if not args.k or any(k in c.name for k in args.k)]
    max_bytes = None if args.max_file_mb is None else int(args.max_file_mb * (1 << 20))
    print(f"{'case':48} {'files':>7} {'MB read':>9} {'EIO':>6} {'s':>6} "
          f"{'RSS@mount':>10} {'peak RSS':>9}")
    worst, over = 0, []
    for case in cases:
        m = measure(case, max_bytes)
        if "error" in m:
            print(f"{case.name:48} not mounted: {m['error']}")
            continue
        peak_mb = m["peak_kb"] / 1024
        worst = max(worst, peak_mb)
        if peak_mb >= args.limit_mb:
            over.append(case.name)
        print(f"{case.name:48} {m['files']:7d} {m['bytes'] / 1e6:9.1f} {m['errors']:6d} "
              f"{m['seconds']:6.1f} {m['rss_mount_kb'] / 1024:8.1f}MB {peak_mb:7.1f}MB",
              flush=True)
    print(f"max peak RSS {worst:.1f} MB over {len(cases)} cases (limit {args.limit_mb:.0f} MB)"
          + (f"; OVER: {', '.join(over)}" if over else ""))
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
