"""Shared test helpers: where the fixtures are and how to unpack them once."""

from __future__ import annotations

import bz2
import fcntl
import hashlib
import struct
import json
import os
import tempfile
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


def gpt_partition(path, number: int) -> tuple[int, int]:
    """(first byte, size) of GPT partition ``number`` (1-based) of a disk image with
    512-byte sectors, read straight from its entry in the primary array (LBA 2, 128-byte
    entries; first and last LBA at offset 32 of an entry, UEFI spec 5.3.3): the tests
    lay a ZFS member over it without going through the partition-table backend."""
    with open(path, "rb") as f:
        f.seek(1024 + (number - 1) * 128 + 32)
        first, last = struct.unpack("<2Q", f.read(16))
    return first * 512, (last - first + 1) * 512


def sha256_readinto(src, chunk=(1 << 20) + 4093):
    """sha256 of ``src`` read as the mount reads it: ``readinto`` one reused buffer, each
    piece first with ``nowait`` (inline), else blocking.  Returns (hex, pieces inline)."""
    from pvfs.source import WouldBlock

    h = hashlib.sha256()
    buf = memoryview(bytearray(chunk))
    inline = 0
    for off in range(0, src.size, chunk):
        try:
            n = src.readinto(off, buf, nowait=True)
            inline += 1
        except WouldBlock:
            n = src.readinto(off, buf)
        assert n == min(chunk, src.size - off)
        h.update(buf[:n])
    return h.hexdigest(), inline


def sha256_readinto_warm(src, chunk=(1 << 20) + 4093, tries=3):
    """:func:`sha256_readinto` of a source read once already: repeated (up to ``tries``
    times) while some piece was not served inline, since anything else on the machine
    (another process dropping the page cache, memory pressure) may evict pages between two
    passes.  Returns the last (hex, pieces inline); the caller asserts both."""
    for _ in range(tries):
        sha, inline = sha256_readinto(src, chunk)
        if inline == -(-src.size // chunk):
            break
    return sha, inline


def unpack(archive: Path) -> Path:
    """Unpack ``archive`` (tar, any compression GNU tar knows) into the cache, once.

    The cache key includes the archive's size and mtime, so a new fixture
    is unpacked again.  Holes are kept (``--sparse``).
    """
    archive = require_path(Path(archive))
    st = archive.stat()
    key = f"{archive.parent.name}-{archive.name}-{st.st_size}-{int(st.st_mtime)}"
    return cached_build(key, lambda tmp: subprocess.run(
        ["tar", "--sparse", "-xf", str(archive), "-C", str(tmp)], check=True))


def cached_build(key: str, build) -> Path:
    """``CACHE/key``, made once by ``build(tmp_dir)``.  Several test sessions may ask at
    once: one builds under a lock, the others wait; a half-built directory never shows."""
    dest = CACHE / key
    if (dest / ".complete").exists():
        return dest
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / (key + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (dest / ".complete").exists():
            return dest
        tmp = CACHE / (key + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        build(tmp)
        (tmp / ".complete").write_text("ok")
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    return dest


#: In CI (``CI`` set, as .ci/run does) a missing fixture is a failure, never a skip: a
#: clone without ../shared must not report green while testing little.
IN_CI = bool(os.environ.get("CI"))
_MISSING: set[str] = set()
def require_path(p: Path) -> Path:
    """``p`` (a path under the fixtures); a missing one fails in CI and skips elsewhere."""
    p = Path(p)
    if not p.exists():
        _MISSING.add(str(p))
        msg = f"fixture {p} is not present"
        if IN_CI:
            pytest.fail(msg + " (CI: missing fixtures are failures)", pytrace=False)
        pytest.skip(msg)
    return p


def require_fixture(*parts) -> Path:
    return require_path(FIXTURES.joinpath(*parts))


#: Small fixtures the project made itself (tests/fixtures/<name>/: archive, manifest, the
#: script that made them, README).  They are part of the repository, so CI always has them.
PROJECT_FIXTURES = ROOT / "tests" / "fixtures"


def project_fixture(*parts) -> Path:
    """A file of tests/fixtures; a missing one is a failure everywhere (never a skip):
    these fixtures come with the checkout."""
    p = PROJECT_FIXTURES.joinpath(*parts)
    if not p.exists():
        pytest.fail(f"project fixture {p} is missing from the checkout", pytrace=False)
    return p


def fixture_json(path: Path, default):
    """A fixture's JSON document for module-level use (parametrisation).  Missing: an
    error at collection in CI, ``default`` elsewhere (the tests then skip or collect nothing)."""
    path = Path(path)
    if path.exists():
        return json.loads(path.read_text())
    _MISSING.add(str(path))
    if IN_CI:
        raise FileNotFoundError(f"fixture {path} is not present (CI: missing fixtures are errors)")
    return default


def fixture_bytes(path: Path, default: bytes = b"") -> bytes:
    """Like :func:`fixture_json` for raw bytes."""
    path = Path(path)
    if path.exists():
        return path.read_bytes()
    _MISSING.add(str(path))
    if IN_CI:
        raise FileNotFoundError(f"fixture {path} is not present (CI: missing fixtures are errors)")
    return default


def skip_without(path: Path, what: str):
    """A ``skipif`` mark for tests that need fixture ``path``; never skips in CI (there the
    tests run and fail on the missing file)."""
    path = Path(path)
    missing = not path.exists()
    if missing:
        _MISSING.add(str(path))
    return pytest.mark.skipif(missing and not IN_CI, reason=f"{what} ({path}) are absent")


_FIXTURE_ITEMS: set[str] = set()  # tests in modules that read ../shared/fixtures
_FIXTURE_PASSED: set[str] = set()


def pytest_collection_modifyitems(items):
    for item in items:
        mod = getattr(item, "module", None)
        if mod is not None and any(hasattr(mod, n) for n in
                                   ("FIXTURES", "require_fixture", "unpack", "require_path")):
            _FIXTURE_ITEMS.add(item.nodeid)


def pytest_runtest_logreport(report):
    if report.when == "call" and report.passed and report.nodeid in _FIXTURE_ITEMS:
        _FIXTURE_PASSED.add(report.nodeid)


#: Scratch space a whole run needs (measured 6 December 2026: 4.5 GB of unpacked fixtures
#: in CACHE, up to ~0.5 GB of tmp_path at a time).
SCRATCH_NEEDED = 6 << 30


def _free_space() -> list[tuple[str, int]]:
    out = []
    for p in (CACHE, Path(tempfile.gettempdir())):  # (CACHE may not exist yet)
        there = next((q for q in (p, *p.parents) if q.exists()), Path("/"))
        out.append((str(p), shutil.disk_usage(there).free))
    return out


_FREE_AT_START: list[tuple[str, int]] = []


def pytest_sessionstart(session):
    _FREE_AT_START[:] = _free_space()


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(
        f"fixture cases run: {len(_FIXTURE_PASSED)} of {len(_FIXTURE_ITEMS)} collected tests "
        f"in fixture-reading modules passed ({FIXTURES})"
        + (f"; {len(_MISSING)} fixture paths were MISSING" if _MISSING else ""))
    # a run that ran out of disk fails far from the cause: say how much there was
    start = dict(_FREE_AT_START)
    terminalreporter.write_line("scratch space free at the start / end: " + ", ".join(
        f"{p} {start.get(p, 0) / 2**30:.1f} / {f / 2**30:.1f} GiB" for p, f in _free_space())
        + (f" (LOW: the suite needs about {SCRATCH_NEEDED >> 30} GiB)"
           if start and min(start.values()) < SCRATCH_NEEDED else ""))


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


def gpt_disk_with_bad_block(img: Path, disk: Path, type_guid: str, bad: int) -> int:
    """Lay filesystem image ``img`` into partition 1 (from 1 MiB) of a GPT disk ``disk``
    made by sfdisk, with a GNU ddrescue mapfile ``disk.map`` marking the 4 KiB at disk
    offset ``bad`` unreadable.  Returns the disk's size."""
    size = img.stat().st_size
    with open(disk, "wb") as f:
        f.truncate(size + (2 << 20))
    subprocess.run(["sfdisk", "-q", str(disk)], check=True, text=True,
                   input=f"label: gpt\nstart=2048, size={size // 512}, type={type_guid}\n")
    subprocess.run(["dd", f"if={img}", f"of={disk}", "bs=1M", "seek=1", "conv=notrunc,sparse",
                    "status=none"], check=True)
    total = disk.stat().st_size
    Path(str(disk) + ".map").write_text(
        "# Mapfile. Created by GNU ddrescue\n0x0 + 1\n"
        f"0x0 {bad:#x} +\n{bad:#x} 0x1000 -\n{bad + 4096:#x} {total - bad - 4096:#x} +\n")
    return total


def ext4_disk_with_one_damaged_file(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """An ext4 image (mke2fs -d) whose root holds one 1 MiB file ``name`` (inode 12: the
    first free one after lost+found), laid into a GPT disk ``vm-100-disk-0.raw`` whose
    ddrescue mapfile marks the file's 4th block unreadable.  Returns ``(image, disk)``."""
    src = tmp_path / "src"
    src.mkdir()
    (src / name).write_bytes(b"A" * (1 << 20))
    img = tmp_path / "fs.img"
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-d", str(src),
                    str(img), "8M"], check=True)
    out = subprocess.run(["debugfs", "-R", "bmap <12> 3", str(img)], check=True,
                         capture_output=True, text=True).stdout
    disk = tmp_path / "vm-100-disk-0.raw"
    gpt_disk_with_bad_block(img, disk, "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
                            (1 << 20) + int(out.split()[-1]) * 4096)
    return img, disk


def _sparse_copy(f, path):
    zero = bytes(1 << 16)
    pos = 0
    with open(path, "wb") as o:
        while True:
            b = f.read(1 << 16)
            if not b:
                break
            if b == zero[:len(b)]:
                o.seek(len(b), 1)
            else:
                o.write(b)
            pos += len(b)
        o.truncate(pos)


def extract_external(rel: str) -> list[str]:
    """Decompress one image of ../shared/fixtures/zfs/external (.bz2, .Z, .tar.*) into the
    cache, once; returns its files."""
    src = FIXTURES / "zfs" / "external" / rel
    require_path(src)
    st = src.stat()
    key = f"zfs-external-{src.name}-{st.st_size}-{int(st.st_mtime)}"

    def build(tmp: Path) -> None:
        n = src.name
        if ".tar." in n:
            subprocess.run(["tar", "--sparse", "-xf", str(src), "-C", str(tmp)], check=True)
        elif n.endswith(".bz2"):
            with bz2.open(src) as f:
                _sparse_copy(f, tmp / n[:-4])
        elif n.endswith(".Z"):
            p = subprocess.Popen(["gzip", "-dc", str(src)], stdout=subprocess.PIPE)
            _sparse_copy(p.stdout, tmp / n[:-2])
            p.wait()
    dest = cached_build(key, build)
    return sorted(str(p) for p in dest.rglob("*") if p.is_file() and p.name != ".complete")
