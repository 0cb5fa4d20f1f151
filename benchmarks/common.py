"""Helpers shared by the benchmark scripts: cold caches and timed sequential reads."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path


def drop_caches():
    """Write back and drop the page cache (root only), so a read comes from the disk image."""
    subprocess.run(["sync"])
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        pass


def timed(fn):
    """``(seconds, result)`` of ``fn()``."""
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def timed_read(path, bs=1 << 20, cold=True):
    """Read ``path`` sequentially in ``bs`` pieces; return ``(bytes read, MB/s)``."""
    if cold:
        drop_caches()
    fd = os.open(path, os.O_RDONLY)
    buf = bytearray(bs)
    t = time.perf_counter()
    total = 0
    try:
        while True:
            n = os.readv(fd, [buf])
            if not n:
                break
            total += n
    finally:
        os.close(fd)
    dt = time.perf_counter() - t
    return total, total / dt / 1e6
