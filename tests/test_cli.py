"""The pvfs command: exit codes, one-line errors, stable JSON, the README's promises."""

from __future__ import annotations

import json
import os
import re
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
        assert set(e) == {"severity", "outcome", "layer", "path", "code", "message", "ranges"}
        assert (e["severity"], e["outcome"]) in {("error", "lost"), ("warning", "degraded"),
                                                 ("info", "note"), ("info", "repaired")}
        assert "\n" not in e["message"]


@pytest.mark.parametrize("args, code, text", [
    (["scan", "/nonexistent/disk.img"], 2, "pvfs: usage error: /nonexistent/disk.img: no such file"),
    (["mount", "/nonexistent/disk.img"], 2, "the following arguments are required: MOUNTPOINT"),
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


# --- the command line as a new user meets it ------------------------------------------------
LVM_ARCHIVE = ("lvm-thin", "lvm-thin-fixtures.tar.xz")
ZFS_ARCHIVE = ("zfs", "images", "fxstripe.tar.xz")


@pytest.fixture(scope="module")
def lvm_img():
    from conftest import require_fixture, unpack

    return unpack(require_fixture(*LVM_ARCHIVE)) / "pve-disk.img"


@pytest.fixture(scope="module")
def zfs_dir():
    from conftest import require_fixture, unpack

    return unpack(require_fixture(*ZFS_ARCHIVE)) / "fxstripe"


def test_mount_help_shows_mountpoint_description_examples_defaults():
    r = pvfs("mount", "--help")
    assert r.returncode == 0
    usage = r.stdout.split("\n\n")[0]
    assert usage.startswith("usage: pvfs mount") and usage.rstrip().endswith(
        "IMAGE_OR_DIR [IMAGE_OR_DIR ...] MOUNTPOINT")
    assert "Discover like 'pvfs scan', then mount the result read-only" in r.stdout
    assert "examples:\n  pvfs mount sda.img sdb.img /mnt/pvfs" in r.stdout
    assert "(default: 8)" in r.stdout and "(default: 4096)" in r.stdout
    assert "exit status: 0 mounted, nothing lost; 3 mounted, something lost" in r.stdout
    for cmd in ("scan", "umount"):
        r = pvfs(cmd, "--help")
        assert "examples:" in r.stdout and "exit status:" in r.stdout, cmd


@pytest.mark.parametrize("flag", ["-V", "--version"])
def test_version(flag):
    from pvfs import __version__

    r = pvfs(flag)
    assert r.returncode == 0 and r.stdout.strip() == f"pvfs {__version__}"


def test_global_options_before_or_after_the_command(tmp_path):
    """``--debug`` and ``--progress`` work on either side of the subcommand; ``--progress``
    with stderr not a terminal (here a pipe) prints plain lines."""
    img = EXAMPLES / "vm-100-disk-0.qcow2"
    for args in (["--progress", "scan", img], ["scan", img, "--progress"]):
        r = pvfs(*args)
        assert r.returncode == 0, r.stderr
        lines = r.stderr.splitlines()
        assert lines and all(line.startswith("pvfs: [") for line in lines), r.stderr
        assert "discovery done" in lines[-1], r.stderr
    r = pvfs("scan", img)  # without --progress and not on a terminal: nothing on stderr
    assert r.stderr == ""
    for args in (["--debug", "scan", "/nonexistent"], ["scan", "/nonexistent", "--debug"]):
        r = pvfs(*args)  # --debug shows the traceback of a usage error
        assert r.returncode != 0 and "Traceback" in r.stderr, args


@pytest.mark.parametrize("args, named", [
    (["mount", "--threads", "0", EXAMPLES, "/tmp"], "--threads: '0': must be 1 or more"),
    (["scan", "--drbd-prefer", "C", EXAMPLES], "--drbd-prefer C: expected [RESOURCE=]A or B"),
    (["scan", "--pbs-keyfile", "/missing", EXAMPLES], "--pbs-keyfile /missing: no such key file"),
    (["scan", "--zfs-txg", "0", EXAMPLES], "--zfs-txg 0: must be 1 or more"),
    (["scan", "--qcow2-cluster-bits", "30", EXAMPLES], "--qcow2-cluster-bits 30"),
    (["scan", "--zfs-key", "rpool/data", EXAMPLES], "--zfs-key rpool/data: expected DATASET=KEY"),
    (["scan", "--lvm-seqno", "999", EXAMPLES],
     "--lvm-seqno 999: no LVM volume group found in the inputs"),
    (["scan", "--zfs-txg", "99999", EXAMPLES], "--zfs-txg 99999: no ZFS pool found in the inputs"),
    (["scan", "--drbd-md", "a.img", EXAMPLES], "--drbd-md a.img: expected DEVICE=MD_IMAGE[@INDEX]"),
    (["mount", "-o", "bogus", EXAMPLES, "/tmp"], "-o bogus: not a FUSE mount option"),
    (["mount", "-o", "rw", EXAMPLES, "/tmp"], "-o rw: pvfs mounts are always read-only"),
])
def test_bad_values_exit_2_naming_the_value(args, named, tmp_path):
    args = [tmp_path / "mnt" if a == "/tmp" else a for a in args]
    (tmp_path / "mnt").mkdir()
    r = pvfs(*args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert named in r.stderr
    assert r.stderr.count("pvfs:") == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stdout == ""  # nothing was scanned or printed


def test_values_known_only_after_discovery_exit_2(lvm_img, zfs_dir, tmp_path):
    r = pvfs("scan", "--lvm-seqno", "999", lvm_img)
    assert r.returncode == 2 and r.stdout == ""
    assert "--lvm-seqno 999: VG pve: metadata seqno 999 is not in the ring (found 8, 9)" in r.stderr
    r = pvfs("scan", "--zfs-txg", "99999", zfs_dir)
    assert r.returncode == 2 and r.stdout == ""
    assert "--zfs-txg 99999: pool fxstripe: no valid uberblock with txg 99999 (valid: 34," in r.stderr
    r = pvfs("scan", "--zfs-key", "fxstripe/nosuch=secret", zfs_dir)
    assert r.returncode == 2 and r.stdout == ""
    assert "no ZFS dataset fxstripe/nosuch found" in r.stderr
    import base64

    from conftest import require_fixture

    store = require_fixture("pbs", "generated", "datastore")
    bad_key = tmp_path / "not-a-key.json"
    bad_key.write_text("{ not json")
    r = pvfs("scan", "--pbs-keyfile", bad_key, store)
    assert r.returncode == 2 and r.stdout == ""
    assert f"--pbs-keyfile: cannot read key file {bad_key}" in r.stderr
    key = tmp_path / "key.json"  # a valid unprotected key (kdf null), but nothing to use it on
    key.write_text(json.dumps({"kdf": None, "data": base64.b64encode(bytes(32)).decode()}))
    r = pvfs("scan", "--pbs-keyfile", key, lvm_img)
    assert r.returncode == 2 and "no PBS datastore found in the inputs" in r.stderr, r.stderr
    assert pvfs("scan", "--lvm-seqno", "8", lvm_img).returncode == 0  # ones that exist work
    assert pvfs("scan", "--zfs-txg", "30", zfs_dir).returncode == 0


def test_nothing_recognised_exits_1(tmp_path):
    d = tmp_path / "junk"
    d.mkdir()
    (d / "notes.txt").write_text("nothing to see\n")
    (d / "zeros.bin").write_bytes(bytes(8192))
    r = pvfs("scan", d)
    assert r.returncode == 1, r.stdout + r.stderr
    # the report still says what was looked at
    assert f"1 file in {d} was not recognised and is not shown: notes.txt" in r.stdout
    assert r.stderr == "pvfs: nothing recognised in the inputs\n"
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = pvfs("mount", d, mnt)
    assert r.returncode == 1 and "not mounted" in r.stderr
    assert not os.path.ismount(mnt)


# --- mount and umount (FUSE) -------------------------------------------------------------
from mountutil import needs_fuse, unmount  # noqa: E402


@needs_fuse
def test_mount_refuses_a_non_empty_mountpoint_unless_nonempty(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    (mnt / "precious.txt").write_text("would be hidden")
    img = EXAMPLES / "vm-100-disk-0.qcow2"
    r = pvfs("mount", img, mnt)
    assert r.returncode == 2 and not os.path.ismount(mnt)
    assert f"mountpoint {mnt} is not empty" in r.stderr and "-o nonempty" in r.stderr
    r = pvfs("mount", "-o", "nonempty", img, mnt)
    try:
        assert r.returncode == 0, r.stderr
        assert os.path.ismount(mnt) and (mnt / "vms" / "100" / "disk-0.raw").exists()
    finally:
        unmount(mnt)
    assert (mnt / "precious.txt").read_text() == "would be hidden"


@needs_fuse
def test_mount_exit_status_says_whether_something_is_lost(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = pvfs("mount", EXAMPLES / "damaged" / "vm-102-disk-0.qcow2", mnt)
    try:
        assert r.returncode == 3, r.stderr  # mounted, with lost bytes (the bad sectors)
        assert os.path.ismount(mnt) and "damage: " in r.stderr
        assert re.search(r"damage: \d+ lost", r.stderr), r.stderr  # outcome words
    finally:
        unmount(mnt)


@needs_fuse
def test_umount_exit_codes_busy_lazy_not_mounted(tmp_path):
    """guestunmount's codes: 3 not mounted, 2 still busy after the retries, 0 done;
    --lazy detaches a busy mount."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = pvfs("umount", mnt)
    assert r.returncode == 3 and r.stderr == f"pvfs: {mnt} is not mounted\n"
    r = pvfs("umount", tmp_path / "nosuch")
    assert r.returncode == 1
    assert pvfs("mount", EXAMPLES / "vm-100-disk-0.qcow2", mnt).returncode == 0
    try:
        with open(mnt / "vms" / "100" / "disk-0.raw", "rb"):
            r = pvfs("umount", "--retry", "1", mnt)
            assert r.returncode == 2, r.stderr
            assert "is busy" in r.stderr and "--lazy" in r.stderr
            assert len(r.stderr.strip().splitlines()) == 1
            assert os.path.ismount(mnt)
            r = pvfs("umount", "--lazy", mnt)
            assert r.returncode == 0, r.stderr
            assert not os.path.ismount(mnt)
    finally:
        unmount(mnt)
    assert pvfs("mount", EXAMPLES / "vm-100-disk-0.qcow2", mnt).returncode == 0
    r = pvfs("umount", mnt)
    assert r.returncode == 0 and r.stderr == "" and not os.path.ismount(mnt)


def test_man_page_and_completion_match_the_parser(tmp_path):
    """docs/pvfs.1 and completions/pvfs are generated from the argparse definitions; a
    changed option without regenerating them fails here."""
    import shutil

    from pvfs import clidocs

    assert clidocs.main(["--check"]) == 0, "run: python -m pvfs.clidocs"
    page = clidocs.MAN_PATH.read_text()
    assert "\\fB\\-\\-threads\\fR\\fI N\\fR" in page and "(default: 8)" in page
    if shutil.which("groff"):
        r = subprocess.run(["groff", "-man", "-Tutf8", "-ww", str(clidocs.MAN_PATH)],
                           capture_output=True, text=True)
        assert r.returncode == 0 and r.stderr == "", r.stderr
        text = " ".join(re.sub(".\x08", "", r.stdout).split())  # no overstrike (bold)
        assert "IMAGE_OR_DIR [IMAGE_OR_DIR ...] MOUNTPOINT" in text
    # The completion, run by bash as bash-completion would.
    script = tmp_path / "t.sh"
    script.write_text(f"""
source {clidocs.COMPLETION_PATH}
show() {{ COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _pvfs; echo "${{COMPREPLY[*]}}"; }}
show pvfs sc
show pvfs scan --ba
show pvfs scan --bad ''
show pvfs mount --pbs-ver
show pvfs --deb
""")
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True).stdout.splitlines()
    assert out == ["scan", "--bad", "eio zero", "--pbs-verify", "--debug"]


GOLDEN = ROOT / "tests" / "golden" / "cli-errors.txt"
TRANSCRIPT = [
    [],
    ["frobnicate"],
    ["scan"],
    ["scan", "nosuch.img"],
    ["mount", "examples"],
    ["mount", "--threads", "0", "examples", "mnt"],
    ["mount", "-o", "bogus", "examples/vm-100-disk-0.qcow2", "mnt"],
    ["mount", "examples/vm-100-disk-0.qcow2", "full"],
    ["scan", "--drbd-prefer", "C", "examples"],
    ["scan", "--pbs-keyfile", "/missing", "examples"],
    ["scan", "--zfs-txg", "99999", "examples/vm-100-disk-0.qcow2"],
    ["scan", "--bad", "maybe", "examples"],
    ["umount", "mnt"],
    ["scan", "junk"],
    ["copy", "examples/vm-100-disk-0.qcow2", "--to", "out.raw"],
    ["copy", "examples/vm-100-disk-0.qcow2", "--path", "vms/100/disk-0.raw", "--to", "full/x"],
    ["copy", "examples/vm-100-disk-0.qcow2", "--path", "vms/1/disk-0.raw", "--to", "out.raw"],
    ["copy", "junk", "--path", "vms/100/disk-0.raw", "--to", "out.raw"],
]


def test_error_transcript_golden(tmp_path):
    """The whole transcript of common mistakes (command, exit status, stderr), diffed
    against tests/golden/cli-errors.txt (PVFS_REGEN_GOLDEN=1 rewrites it), so a change of
    wording or status shows in review."""
    os.symlink(EXAMPLES, tmp_path / "examples")
    (tmp_path / "mnt").mkdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("nothing\n")
    out = []
    for args in TRANSCRIPT:
        r = pvfs(*args, cwd=tmp_path)
        out.append(f"$ pvfs {' '.join(args)}".rstrip())
        out.append(f"[exit {r.returncode}]")
        out.extend(r.stderr.replace(str(tmp_path), "$TMP").splitlines())
        if r.returncode == 2:
            assert r.stdout == "", args  # a usage error comes before any work
        out.append("")
    text = "\n".join(out)
    if os.environ.get("PVFS_REGEN_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_plain_progress_has_a_heartbeat(monkeypatch, capsys):
    """--progress into a log: a long step without updates still prints a line now and then."""
    import time

    from pvfs import progress

    monkeypatch.setattr(progress, "HEARTBEAT_SECONDS", 0.2)
    with progress.Progress(enabled=True) as p:
        p.update("zfs: assembling rpool")
        time.sleep(0.7)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].endswith("] zfs: assembling rpool")
    assert sum("still at: zfs: assembling rpool" in line for line in lines) >= 2
    assert lines[-1].endswith("discovery done after 1 steps")
