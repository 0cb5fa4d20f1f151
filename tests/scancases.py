"""Every fixture and damaged variant as one ``pvfs scan`` case: its inputs and options.

Shared by the golden scan transcripts (tests/test_golden_scan.py, scripts/golden.py) and
the daemon memory benchmark (benchmarks/bench_rss.py, tests/test_rss.py).  A case is what a
user would type: the images of one set (a pool's members, a VG's disk, the OSDs of one
cluster, a datastore), the damaged copies each fixture's README defines (missing members,
zeroed or bit-rotted members, a zeroed thin superblock, a deleted chunk, a SIGKILLed OSD
alone, corrupt qcow2 headers, a ddrescue mapfile) and the options its README uses.

Inputs are found through conftest (unpack once into the cache, ``require_fixture``), so
a missing fixture skips locally and fails in CI, as everywhere else; the project's own
small fixtures (tests/fixtures, ``project_fixture``) come with the checkout.
"""

from __future__ import annotations

import json
import os
import re
import select
import shlex
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from conftest import FIXTURES, ROOT, extract_external, project_fixture, require_fixture, unpack

EXAMPLES = ROOT / "examples"


@dataclass(frozen=True)
class Case:
    """``name`` is also the golden file's name (``/`` becomes a directory)."""

    name: str
    inputs: Callable[[], list[str]]
    options: tuple[str, ...] = ()
    tags: frozenset[str] = field(default_factory=frozenset)

    def argv(self) -> tuple[list[str], list[Path]]:
        """(``pvfs scan`` arguments without --json, the unpack directories used)."""
        paths = self.inputs()
        return [*self.options, *paths], _roots(paths)


def _roots(paths: list[str]) -> list[Path]:
    from conftest import CACHE

    out = []
    for p in paths:
        try:
            rel = Path(p).relative_to(CACHE)
        except ValueError:
            continue
        root = CACHE / rel.parts[0]
        if root not in out:
            out.append(root)
    return out


def _unpacked(*archive: str, glob: str = "*", sub: str = "") -> Callable[[], list[str]]:
    def f() -> list[str]:
        d = unpack(require_fixture(*archive))
        base = d / sub if sub else d
        return sorted(str(p) for p in base.rglob(glob) if p.is_file() and p.name != ".complete")
    return f


def _files(*paths: tuple[str, ...]) -> Callable[[], list[str]]:
    return lambda: [str(require_fixture(*p)) for p in paths]


def _project(*archive: str, without: tuple[str, ...] = ()) -> Callable[[], list[str]]:
    """The ``*.img`` members of a tests/fixtures archive, less the members ``without``
    (a degraded set of a fixture that ships one archive)."""
    def f() -> list[str]:
        d = unpack(project_fixture(*archive))
        return sorted(str(p) for p in d.rglob("*.img") if p.is_file() and p.name not in without)
    return f

def _in_archive(archive: tuple[str, ...], *names: str) -> Callable[[], list[str]]:
    def f() -> list[str]:
        d = unpack(require_fixture(*archive))
        return [str(d / n) for n in names]
    return f


def _examples() -> list[str]:
    return [str(EXAMPLES)]


CASES: list[Case] = [Case("examples/all", _examples, tags=frozenset({"rss"}))]

# -- qcow2: every image of the set (corrupt-header/-refcount and the crash state are the
#    damaged copies its README defines)
_QCOW2 = ("qcow2", "qcow2-fixtures.tar.xz")
for _name in ("base", "overlay1", "chain/overlay2", "snapshots", "compressed-zlib",
              "compressed-zstd", "compressed-zlib-c4k", "compressed-mixed", "c512", "c2m", "rc1",
              "rc64", "v2-compat010", "extl2", "extl2-c2m", "extl2-overlay", "datafile-raw",
              "datafile", "prealloc-metadata", "bitmap", "dirty-lazy-refcounts",
              "corrupt-refcount", "corrupt-header"):
    CASES.append(Case(f"qcow2/{_name.replace('/', '-')}",
                      _in_archive(_QCOW2, f"img/{_name}.qcow2"),
                      tags=frozenset({"rss"} if _name in ("base", "corrupt-header") else ())))

# -- LVM-thin (user-space made, and the kernel's dm-thin)
_LVM = ("lvm-thin", "lvm-thin-fixtures.tar.xz")
CASES += [
    Case("lvm-thin/pve-disk", _in_archive(_LVM, "pve-disk.img"), tags=frozenset({"rss"})),
    Case("lvm-thin/damaged-tmeta-sb", _in_archive(_LVM, "pve-disk-damaged-tmeta-sb.img"),
         tags=frozenset({"rss"})),
    Case("lvm-thin/damaged-tmeta-sb-thin-scan",
         _in_archive(_LVM, "pve-disk-damaged-tmeta-sb.img"), ("--lvm-thin-scan",)),
]
_LVMR = ("lvm-thin-real", "lvm-thin-real.tar.xz")
CASES += [
    Case("lvm-thin-real/pve-disk", _in_archive(_LVMR, "lvm-thin-real/pve-disk.img"),
         tags=frozenset({"rss"})),
    Case("lvm-thin-real/thin-scan", _in_archive(_LVMR, "lvm-thin-real/pve-disk.img"),
         ("--lvm-thin-scan",)),
]

# -- DRBD: both split-brain pairs, and one node alone (its peer missing)
_DRBD = ("drbd", "drbd-fixtures.tar.xz")
CASES += [
    Case("drbd/v09-pair", _in_archive(_DRBD, "drbd-v09-node-a.img", "drbd-v09-node-b.img"),
         tags=frozenset({"rss"})),
    Case("drbd/v08-pair", _in_archive(_DRBD, "drbd-v08-node-a.img", "drbd-v08-node-b.img")),
    Case("drbd/v09-node-a-alone", _in_archive(_DRBD, "drbd-v09-node-a.img")),
]

# -- ZFS: zfs-fuse pools and their degraded copies, the OpenZFS 2.1 and 2.3 lab pools
for _a in ("fxmirror", "fxraidz1", "fxraidz1-degraded-missing", "fxraidz1-degraded-zeroed",
           "fxraidz1-degraded-bitrot", "fxraidz2", "fxraidz2-degraded-missing1",
           "fxraidz2-degraded-missing2", "fxstripe", "modern-rpool", "modern-tank"):
    CASES.append(Case(f"zfs/{_a}", _unpacked("zfs", "images", f"{_a}.tar.xz", glob="*.img"),
                      tags=frozenset({"rss"} if _a in ("fxmirror", "fxraidz1-degraded-bitrot")
                                     else ())))
for _a in ("rpool-raidz1", "rpool-raidz1-degraded", "tank-mirror"):
    CASES.append(Case(f"zfs-modern/{_a}",
                      _unpacked("zfs-modern", "images", f"{_a}.tar.xz", glob="*.img"),
                      tags=frozenset({"rss"} if _a == "rpool-raidz1-degraded" else ())))
# beyond redundancy: two of the raidz1's three members gone (only d1 given): the lost
# ranges of each zvol are mapped block by block
CASES.append(Case("zfs-modern/rpool-raidz1-faulted-d1",
                  _in_archive(("zfs-modern", "images", "rpool-raidz1-degraded.tar.xz"),
                              "rpool-raidz1-degraded/rpool-d1.img")))
# project-made fixtures (tests/fixtures): dRAID, and the same images less a member
for _a, _w in (("dpool-draid", ()), ("dpool-draid-degraded", ("draid-d2.img",))):
    CASES.append(Case(f"zfs-draid/{_a}",
                      _project("zfs-draid", "images", "dpool-draid.tar.zst", without=_w)))
for _a, _w in (("dpool-draid-spare", ()),  # distributed spare in use
               ("dpool-draid-spare-degraded", ("draid-d4.img",)),
               ("dpool-draid-spare-without-d1-d4-d7", ("draid-d1.img", "draid-d4.img",
                                                       "draid-d7.img"))):
    CASES.append(Case(f"zfs-draid-spare/{_a}",
                      _project("zfs-draid-spare", "images", "dpool-draid-spare.tar.zst",
                               without=_w)))
for _a in ("zil-crashed", "zil-claimed"):  # unsynced intent logs: replayed, and ignored
    CASES.append(Case(f"zfs-zil/{_a}", _project("zfs-zil", "images", f"{_a}.tar.zst")))
CASES.append(Case("zfs-zil/zil-crashed-zil-ignore",
                  _project("zfs-zil", "images", "zil-crashed.tar.zst"),
                  ("--zfs-zil", "ignore")))
_Z23_KEY = "rpool/encrypted_data=pvfs-zfs23-passphrase"  # manifest.json encryption_keys
for _a in ("rpool-raidz1-expanded", "rpool-raidz1-expanded-degraded"):
    CASES.append(Case(f"zfs-2.3/{_a}",
                      _unpacked("zfs-2.3", "images", f"{_a}.tar.zst", glob="*.img")))
CASES.append(Case("zfs-2.3/rpool-raidz1-expanded-with-key",
                  _unpacked("zfs-2.3", "images", "rpool-raidz1-expanded.tar.zst", glob="*.img"),
                  ("--zfs-key", _Z23_KEY), tags=frozenset({"rss"})))



def _external(sources: list[str]) -> Callable[[], list[str]]:
    return lambda: [p for s in sources for p in extract_external(s)]


def _external_cases() -> list[Case]:
    inv = FIXTURES / "zfs" / "external" / "INVENTORY-labels.json"
    if not inv.exists():
        return []
    out = []
    for key, ent in sorted(json.loads(inv.read_text()).items()):
        name = key.replace("zfs-images:", "").replace("(", "-").replace(")", "")
        out.append(Case(f"zfs-external/{name}", _external(ent["sources"])))
    return out


CASES += _external_cases()


# -- Ceph: all OSDs (+ mon), the README's subsets (the SIGKILLed OSD alone, a missing OSD),
#    the compacted copy
def _osds(ver: str, *names: str) -> Callable[[], list[str]]:
    def f() -> list[str]:
        d = unpack(require_fixture(ver, "ceph-fixture.tar.zst")) / "ceph-fixture"
        return [str(d / n) for n in names]
    return f


def _mon(ver: str, mon: str) -> Callable[[], list[str]]:
    def f() -> list[str]:
        d = unpack(require_fixture(ver, "ceph-fixture.tar.zst")) / "ceph-fixture"
        return ["--ceph-mon", str(d / mon), *(str(d / f"osd.{i}") for i in range(3))]
    return f


for _v in ("ceph", "ceph-20"):
    CASES += [
        Case(f"{_v}/all-osds", _osds(_v, "osd.0", "osd.1", "osd.2"),
             tags=frozenset({"rss"})),
        Case(f"{_v}/all-osds-with-mon", _mon(_v, "mon.a")),
        Case(f"{_v}/osd.0-osd.1", _osds(_v, "osd.0", "osd.1")),
        Case(f"{_v}/osd.2-alone", _osds(_v, "osd.2"), tags=frozenset({"rss"})),
        Case(f"{_v}/osd.0-compacted-osd.1", _osds(_v, "variants/osd.0-compacted", "osd.1")),
    ]
CASES.append(Case("ceph-20/all-osds-with-mon-fv6", _mon("ceph-20", "variants/mon.a-ldb-fv6")))
_CF = "ceph-14-filestore"
CASES += [
    Case(f"{_CF}/all-osds", _osds(_CF, "osd.0.xfs", "osd.1.xfs", "osd.2.xfs"),
         tags=frozenset({"rss"})),
    Case(f"{_CF}/all-osds-with-mon", lambda: _mon(_CF, "mon.a")()[:2] + _osds(
        _CF, "osd.0.xfs", "osd.1.xfs", "osd.2.xfs")()),
    Case(f"{_CF}/osd.0-osd.1", _osds(_CF, "osd.0.xfs", "osd.1.xfs")),
]

# -- PBS datastores (intact and the three damaged copies), vzdump archives, pxar streams
_GEN = ("pbs", "generated")
for _d in ("datastore", "datastore-missing-chunk", "datastore-bad-crc",
           "datastore-truncated-fidx"):
    CASES.append(Case(f"pbs/{_d}", _files((*_GEN, _d)),
                      tags=frozenset({"rss"} if _d in ("datastore", "datastore-missing-chunk")
                                     else ())))
for _f in ("vzdump-qemu-100-2024_01_15-10_00_00.vma",
           "vzdump-qemu-100-2024_01_15-10_00_00.vma.zst",
           "vzdump-qemu-100-2024_01_15-10_00_00.vma.gz",
           "vzdump-qemu-100-2024_01_15-10_00_00.vma.lzo",
           "vzdump-lxc-101-2024_01_15-11_00_00.tar.zst",
           "vzdump-lxc-101-2024_01_15-11_00_00.tar.gz",
           "vzdump-lxc-101-2024_01_15-11_00_00.tar.lzo"):
    CASES.append(Case(f"vzdump/{_f.split('-2024')[0]}{_f.split('_00_00')[1]}",
                      _files((*_GEN, "vzdump", _f)), ("--vzdump-index-dir", "none"),
                      tags=frozenset({"rss"} if _f.endswith(".vma.zst") else ())))
CASES += [
    Case("vzdump/dissect-hypervisor-test.vma.gz",
         _files(("pbs", "external", "dissect-hypervisor-test.vma.gz")),
         ("--vzdump-index-dir", "none")),
    Case("pbs/streams", _files((*_GEN, "streams"))),
]

CASES_BY_NAME = {c.name: c for c in CASES}
assert len(CASES_BY_NAME) == len(CASES), "duplicate case names"


# -- running a case: the transcript the golden files hold ----------------------------------
GOLDEN_DIR = ROOT / "tests" / "golden" / "scan"


def golden_path(case: Case) -> Path:
    return GOLDEN_DIR / f"{case.name}.out"


_KEY_TAIL = re.compile(r"-\d+-\d+$")  # cache keys end in -<archive size>-<archive mtime>


def normalise(text: str, roots: list[Path], tmp: Path) -> str:
    """Replace what legitimately differs between machines and runs, nothing else: where
    the fixtures, the unpack cache, the checkout and the temporary directory are, the
    archive's size and mtime in a cache directory's name, and pvfs's version."""
    from conftest import CACHE, FIXTURES

    subs = []
    for r in roots:
        stable = _KEY_TAIL.sub("", r.name)
        subs += [(str(r), f"$CACHE/{stable}"), (r.name, stable)]
    subs += [(str(tmp), "$TMP"), (str(EXAMPLES), "$EXAMPLES"), (str(FIXTURES), "$FIXTURES"),
             (str(CACHE), "$CACHE"), (str(ROOT), "$ROOT")]
    for old, new in subs:  # full paths first, then bare cache-key names
        text = text.replace(old, new)
    return re.sub(r'("pvfs_version": )"[^"]*"', r'\1"$VERSION"', text)


def _scan_in_child(cmds: list[list[str]], tmp: Path,
                   timeout: float = 600) -> list[tuple[int, str, str]]:
    """Run ``pvfs.cli.main(cmd)`` for each of ``cmds`` in a forked child (in ``tmp``, TZ=UTC),
    each with its own stdout and stderr: the real entry point, isolated from the caller's
    state, without a new interpreter's start-up (pvfs and its backends are imported once,
    here, before the fork)."""
    import contextlib
    import io
    import logging

    from pvfs.cli import build_parser, main

    build_parser()  # imports every backend before the fork
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            os.close(rfd)
            os.chdir(tmp)
            os.environ["TZ"] = "UTC"
            time.tzset()
            res = []
            for cmd in cmds:
                logging.root.handlers.clear()
                out, err = io.StringIO(), io.StringIO()
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    try:
                        rc = main(cmd)
                    except SystemExit as e:
                        rc = e.code if isinstance(e.code, int) else 1
                res.append([rc, out.getvalue(), err.getvalue()])
            with os.fdopen(wfd, "wb") as w:
                w.write(json.dumps(res).encode())
            code = 0
        except BaseException:  # noqa: BLE001 -- reported by the parent
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(wfd)
    chunks, deadline = [], time.monotonic() + timeout
    with os.fdopen(rfd, "rb", buffering=0) as r:
        while True:
            if not select.select([r], [], [], max(0.0, deadline - time.monotonic()))[0]:
                os.kill(pid, signal.SIGKILL)
                chunks = []
                break
            b = r.read(1 << 20)
            if not b:
                break
            chunks.append(b)
    data = b"".join(chunks).decode()
    _, status = os.waitpid(pid, 0)
    if status or not data:
        raise RuntimeError(f"scan child failed (status {status}): {cmds[0]}")
    return [tuple(x) for x in json.loads(data)]


def run_case(case: Case, tmp: Path) -> str:
    """Both transcripts of ``case`` (``pvfs scan`` and ``pvfs scan --json``): command, exit
    status, stdout and stderr, normalised."""
    argv, roots = case.argv()
    cmds = [["scan", *argv], ["scan", "--json", *argv]]
    out = []
    for cmd, (code, stdout, stderr) in zip(cmds, _scan_in_child(cmds, tmp), strict=True):
        out.append("$ pvfs " + " ".join(shlex.quote(a) for a in cmd))
        out.append(f"[exit {code}]")
        out.append(stdout.rstrip("\n"))
        if stderr:
            out.append("[stderr]")
            out.append(stderr.rstrip("\n"))
        out.append("")
    return normalise("\n".join(out), roots, tmp)
