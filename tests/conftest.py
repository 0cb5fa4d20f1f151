"""Shared test helpers: where the fixtures are and how to unpack them once."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("PVFS_SHARED", ROOT.parent / "shared")).resolve()
FIXTURES = SHARED / "fixtures"
CACHE = Path(os.environ.get("PVFS_FIXTURE_CACHE", Path.home() / ".cache" / "pvfs-fixtures"))


def sha256_file(path, chunk=4 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def sha256_source(src, chunk=4 << 20):
    h = hashlib.sha256()
    for off in range(0, src.size, chunk):
        h.update(src.read(off, min(chunk, src.size - off)))
    return h.hexdigest()


def unpack(archive: Path) -> Path:
    """Unpack ``archive`` (tar, any compression GNU tar knows) into the cache, once.

    The cache key includes the archive's size and mtime, so a new fixture
    is unpacked again.  Holes are kept (``--sparse``).
    """
    archive = Path(archive)
    st = archive.stat()
    key = f"{archive.parent.name}-{archive.name}-{st.st_size}-{int(st.st_mtime)}"
    dest = CACHE / key
    if (dest / ".complete").exists():
        return dest
    CACHE.mkdir(parents=True, exist_ok=True)
    # Several test sessions may unpack the same archive at once: one does, the others wait.
    with open(CACHE / (key + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (dest / ".complete").exists():
            return dest
        tmp = CACHE / (key + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        subprocess.run(["tar", "--sparse", "-xf", str(archive), "-C", str(tmp)], check=True)
        (tmp / ".complete").write_text("ok")
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    return dest


def require_fixture(*parts) -> Path:
    p = FIXTURES.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"fixture {p} is not present")
    return p


@pytest.fixture(scope="session")
def fixtures_root():
    return FIXTURES


@pytest.fixture(scope="session")
def ceph_root():
    """The unpacked Ceph 16 fixture (three BlueStore OSDs and the mon store)."""
    return unpack(require_fixture("ceph", "ceph-fixture.tar.zst")) / "ceph-fixture"


@pytest.fixture(scope="session")
def ceph_manifest():
    return json.loads(require_fixture("ceph", "manifest.json").read_text())
