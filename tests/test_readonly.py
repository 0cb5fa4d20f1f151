"""Read-only is a guarantee: no backend opens an input for writing, and inputs stay unchanged.

An audit hook (PEP 578) sees every ``open`` and ``os.open`` of the process while
discovery runs and while every file of the tree is read; any open of an input
path with a write flag fails the test.  Sizes, mtimes and (for inputs up to
256 MiB) sha256 are compared before and after.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from conftest import FIXTURES, ROOT, require_path, sha256_file, unpack
from pvfs.discover import discover
from pvfs.errors import PvfsError
from pvfs.nodes import Dir, File

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
_watch: list = []  # (prefixes, violations) while a test runs


def _hook(event, args):
    if event != "open" or not _watch:
        return
    path, mode, flags = (list(args) + [None, None, None])[:3]
    if not isinstance(path, (str, bytes, os.PathLike)):
        return
    writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
        (isinstance(flags, int) and flags & WRITE_FLAGS)
    if writes:
        p = os.path.realpath(os.fsdecode(path))
        prefixes, violations = _watch[-1]
        if any(p == pre or p.startswith(pre + os.sep) for pre in prefixes):
            violations.append((p, mode, flags))


sys.addaudithook(_hook)


def _inputs():
    cases = {"examples": [ROOT / "examples"]}
    arch = {
        "qcow2": ("qcow2", "qcow2-fixtures.tar.xz", lambda d: [d / "img"]),
        "lvm-thin": ("lvm-thin", "lvm-thin-fixtures.tar.xz", lambda d: sorted(d.glob("*.img"))),
        "zfs-mirror": ("zfs/images", "fxmirror.tar.xz", lambda d: sorted(d.glob("*/*.img"))),
        "drbd": ("drbd", "drbd-fixtures.tar.xz", lambda d: sorted(d.glob("drbd-v09-*.img"))),
        "ceph": ("ceph", "ceph-fixture.tar.zst",
                 lambda d: sorted(d.glob("ceph-fixture/osd.*/block"))),
    }
    for name, (folder, archive, pick) in arch.items():
        cases[name] = (FIXTURES / folder / archive, pick)
    cases["pbs"] = [FIXTURES / "pbs" / "generated" / "datastore"]
    cases["vzdump"] = [FIXTURES / "pbs" / "generated" / "vzdump"]
    return cases


CASES = _inputs()


def _resolve_case(name):
    case = CASES[name]
    if isinstance(case, list):
        return [require_path(p) for p in case]
    archive, pick = case
    require_path(archive)
    return pick(unpack(archive))


def _state(paths):
    out = {}
    for top in paths:
        files = [top] if top.is_file() else [p for p in top.rglob("*") if p.is_file()]
        for f in files:
            st = f.stat()
            digest = sha256_file(f) if st.st_size <= (256 << 20) else None
            out[str(f)] = (st.st_size, st.st_mtime_ns, digest)
    return out


def _read_everything(root, max_files=400, max_nodes=4000):
    """Read the head and tail of every file in the tree (bounded), errors allowed."""
    stack, files, nodes = [root], 0, 0
    while stack and files < max_files and nodes < max_nodes:
        node = stack.pop()
        nodes += 1
        if isinstance(node, Dir):
            stack.extend(node.children().values())
        elif isinstance(node, File):
            files += 1
            for off in (0, max(0, node.size - 65536)):
                try:
                    node.source.read(off, 65536)
                except (PvfsError, OSError):
                    pass
    return files


@pytest.mark.parametrize("name", sorted(CASES))
def test_inputs_never_opened_for_writing(name):
    paths = [Path(p) for p in _resolve_case(name)]
    before = _state(paths)
    violations: list = []
    _watch.append(([os.path.realpath(p) for p in paths], violations))
    try:
        ctx = discover([str(p) for p in paths])
        read = _read_everything(ctx.root)
    finally:
        _watch.pop()
    assert read > 0
    assert violations == [], violations
    assert _state(paths) == before


def test_the_audit_hook_sees_write_opens(tmp_path):
    """The check above can fail: a write open of a watched path is caught."""
    victim = tmp_path / "disk.img"
    victim.write_bytes(b"x")
    violations: list = []
    _watch.append(([os.path.realpath(tmp_path)], violations))
    try:
        with open(victim, "r+b"):
            pass
        os.close(os.open(victim, os.O_RDWR))
        with open(victim, "rb"):
            pass
    finally:
        _watch.pop()
    assert [v[0] for v in violations] == [str(victim.resolve())] * 2
