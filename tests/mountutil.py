"""Mounting helpers for the FUSE tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time

import pytest

FUSE_OK = os.path.exists("/dev/fuse") and bool(shutil.which("fusermount3") or shutil.which("fusermount"))
needs_fuse = pytest.mark.skipif(not FUSE_OK, reason="needs /dev/fuse and fusermount3")


def unmount(mnt):
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    for _ in range(50):
        r = subprocess.run([tool, "-u", str(mnt)], capture_output=True)
        if r.returncode == 0 or not os.path.ismount(mnt):
            return
        time.sleep(0.1)
    subprocess.run([tool, "-uz", str(mnt)], capture_output=True)


@contextlib.contextmanager
def pvfs_mounted(inputs, mnt, *extra):
    """``pvfs mount INPUTS MNT`` in the background; unmounted on exit."""
    os.makedirs(mnt, exist_ok=True)
    r = subprocess.run([sys.executable, "-m", "pvfs", "mount", *map(str, inputs), str(mnt), *extra],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode in (0, 3), r.stderr  # 3: mounted, and the report has lost bytes
    assert os.path.ismount(mnt)
    try:
        yield mnt
    finally:
        unmount(mnt)
