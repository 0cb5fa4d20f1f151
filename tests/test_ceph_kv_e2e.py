"""Part A's recovery paths end to end: a damaged OSD copy through pvfs.discover still
gives every RBD image with its ceph_manifest sha256."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from pvfs.discover import Options, discover
from pvfs.nodes import resolve

from conftest import FIXTURES, sha256_source


def _damaged_copy(src, dst, patches):
    if shutil.which("cp") is None:  # pragma: no cover
        pytest.skip("cp is needed for a sparse copy")
    subprocess.run(["cp", "--sparse=always", str(src), str(dst)], check=True)
    with open(dst, "r+b") as f:
        for off, data in patches.items():
            f.seek(off)
            f.write(data)
    return dst


@pytest.mark.parametrize("what,patches,code", [
    ("bluefs-super", {4096: bytes(4096)}, "bluefs-super-recovered"),
    ("label-crc", {586: b"\0\0\0\0"}, "bluestore-label-crc"),  # the stored crc of osd.0
])
def test_damaged_osd_still_gives_every_image(ceph_root, tmp_path, what, patches, code):
    ceph_manifest = json.loads((FIXTURES / "ceph" / "manifest.json").read_text())
    bad = _damaged_copy(ceph_root / "osd.0" / "block", tmp_path / "osd0-block", patches)
    ctx = discover([str(bad), str(ceph_root / "osd.1" / "block")], Options())
    assert code in [e.code for e in ctx.report], [e.line() for e in ctx.report]
    n = 0
    for im in ceph_manifest["images"]:
        node = resolve(ctx.root, f"storage/ceph/{im['pool']}/{im['name']}")
        assert node is not None and sha256_source(node.source) == im["sha256"], im["name"]
        n += 1
    assert n == 7
    assert [e for e in ctx.report if e.severity == "error"] == []
