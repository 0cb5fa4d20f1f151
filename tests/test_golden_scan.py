"""Golden ``pvfs scan`` transcripts, qemu-iotests style: for every fixture and damaged
variant (tests/scancases.py) the whole text and ``--json`` output, with the command and
exit status, is diffed against tests/golden/scan/<case>.out, so every change of what
users see shows in review.  Regenerate with ``python scripts/golden.py --update`` and read
the diff (tests/golden/README.md)."""

from __future__ import annotations

import difflib

import pytest

import scancases
from conftest import CACHE, FIXTURES


@pytest.mark.parametrize("name", [c.name for c in scancases.CASES])
def test_scan_transcript(name, tmp_path):
    case = scancases.CASES_BY_NAME[name]
    path = scancases.golden_path(case)
    actual = scancases.run_case(case, tmp_path)
    expected = path.read_text() if path.exists() else ""
    if actual != expected:
        diff = "".join(difflib.unified_diff(
            expected.splitlines(True), actual.splitlines(True),
            f"tests/golden/scan/{name}.out", "actual", n=2))
        pytest.fail(f"scan transcript of {name} changed (python scripts/golden.py --update "
                    f"-k {name} rewrites it; review the diff):\n{diff}", pytrace=False)


def test_no_stale_golden_files():
    known = {scancases.golden_path(c) for c in scancases.CASES}
    stale = sorted(str(p.relative_to(scancases.GOLDEN_DIR))
                   for p in scancases.GOLDEN_DIR.rglob("*.out") if p not in known)
    assert not stale, f"golden files without a case (scripts/golden.py --update drops them): {stale}"


def test_normalise_replaces_only_what_varies(tmp_path):
    root = CACHE / "images-fxmirror.tar.xz-3171176-1796572476"
    text = (f'{root}/fxmirror/d0.img storage/files/{root.name}/x {tmp_path}/mnt '
            f'{FIXTURES}/qcow2 "pvfs_version": "9.9" txg 1796572476')
    assert scancases.normalise(text, [root], tmp_path) == (
        '$CACHE/images-fxmirror.tar.xz/fxmirror/d0.img storage/files/images-fxmirror.tar.xz/x '
        '$TMP/mnt $FIXTURES/qcow2 "pvfs_version": "$VERSION" txg 1796572476')
