"""The pvfs command: exit codes, one-line errors, stable JSON, the README's promises."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

EXAMPLES = ROOT / "examples"


def pvfs(*args, **kw):
    return subprocess.run([sys.executable, "-m", "pvfs", *map(str, args)], capture_output=True,
                          text=True, cwd=kw.get("cwd", ROOT), timeout=300)


def test_scan_examples_text_and_exit_code():
    r = pvfs("scan", EXAMPLES)
    assert r.returncode == 3, r.stderr  # the damaged example has a bad sector
    assert "VMs: 100, 101, 102" in r.stdout
    assert "storage/files/examples/vm-100-disk-0.qcow2/p2  [partition, 6.0 MiB, ext4]" in r.stdout
    assert "Traceback" not in r.stderr


def test_scan_clean_input_exits_zero():
    r = pvfs("scan", EXAMPLES / "vm-100-disk-0.qcow2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Damage report: nothing found." in r.stdout


def test_scan_json_is_stable():
    a = json.loads(pvfs("scan", "--json", EXAMPLES).stdout)
    b = json.loads(pvfs("scan", "--json", EXAMPLES).stdout)
    assert a == b
    assert a["schema"] == "pvfs-report/1"
    assert set(a["vms"]) == {"100", "101", "102"}
    vol = {v["path"]: v for v in a["volumes"]}
    d = vol["storage/files/examples/vm-100-disk-0.qcow2/disk.raw"]
    assert d["format"] == "gpt" and d["size"] == 8 << 20 and d["also_at"] == ["vms/100/disk-0.raw"]
    assert a["summary"]["damage"]["error"] == sum(1 for e in a["damage"] if e["severity"] == "error")
    for e in a["damage"]:
        assert set(e) == {"severity", "layer", "path", "code", "message", "ranges"}
        assert "\n" not in e["message"]


@pytest.mark.parametrize("args, code, text", [
    (["scan", "/nonexistent/disk.img"], 2, "pvfs: usage error: /nonexistent/disk.img: no such file"),
    (["mount", "/nonexistent/disk.img"], 2, "mount needs at least one input and a mountpoint"),
    (["mount", EXAMPLES / "vm-100-disk-0.qcow2", "/nonexistent-mnt"], 2, "is not a directory"),
    (["scan", "--mapfile", "/nonexistent.map", EXAMPLES / "vm-100-disk-0.qcow2"], 2,
     "mapfile /nonexistent.map does not exist"),
])
def test_errors_are_one_line(args, code, text):
    r = pvfs(*args)
    assert r.returncode == code
    assert text in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr


def test_hostile_inputs_never_traceback(tmp_path):
    (tmp_path / "zero.img").write_bytes(bytes(1 << 20))
    (tmp_path / "random.img").write_bytes(os.urandom(1 << 20))
    (tmp_path / "vm-1-disk-0.qcow2").write_bytes(b"QFI\xfb" + os.urandom(70000))
    (tmp_path / "empty.img").write_bytes(b"")
    (tmp_path / "bad.img.map").write_text("not a mapfile\n")
    (tmp_path / "bad.img").write_bytes(bytes(4096))
    r = pvfs("scan", "--json", tmp_path)
    assert r.returncode in (0, 3), r.stderr
    assert "Traceback" not in r.stderr
    doc = json.loads(r.stdout)
    codes = {(os.path.basename(e["path"]), e["code"]) for e in doc["damage"]}
    assert ("bad.img", "bad-mapfile") in codes
    assert ("vm-1-disk-0.qcow2", "open-failed") in codes or any(
        e["layer"] == "qcow2" for e in doc["damage"])
    assert not [e for e in doc["damage"] if e["code"] in ("internal-error", "probe-failed")]


def test_mapfile_option_and_bad_zero():
    img = EXAMPLES / "damaged" / "vm-102-disk-0.qcow2"
    doc = json.loads(pvfs("scan", "--json", "--bad", "zero", img).stdout)
    assert doc["inputs"][0]["bad_bytes"] == 1024
    assert any(e["code"] == "unreadable-range" and e["path"] == "vms/102/disk-0.raw"
               for e in doc["damage"])


def test_help_lists_backend_options():
    r = pvfs("scan", "--help")
    assert r.returncode == 0
    assert "--qcow2-cluster-bits" in r.stdout and "--bad" in r.stdout


def test_help_and_readme_agree_on_the_loss_policy():
    """``--help`` and README say the same: EIO by default for every kind of lost bytes."""
    r = pvfs("scan", "--help")
    text = " ".join(r.stdout.split())
    assert "'eio' (the default) fails the read" in text
    assert "zeros for missing backup chunks" not in text
    readme = (ROOT / "README.md").read_text()
    assert "`eio` (the default) fails the read" in readme
    assert "zeros for missing backup chunks" not in readme
