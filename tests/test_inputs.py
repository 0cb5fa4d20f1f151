"""Walking input directories: bounded and linear, every oddity a damage entry.

Symlink loops are walked once (by device and inode), dangling links, FIFOs, sockets and
character devices are reported and never opened, open descriptors stay bounded however
many images a folder holds, and the cost per file does not grow with the folder.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from pvfs import source as source_mod
from pvfs.discover import Options, discover
from pvfs.errors import UnreadableError
from pvfs.nodes import resolve

EXAMPLE = ROOT / "examples" / "vm-100-disk-0.qcow2"


def codes(ctx):
    return sorted((os.path.relpath(e.path) if e.path.startswith("/") else e.path, e.code)
                  for e in ctx.report)


def make_tree(tmp_path):
    top = tmp_path / "top"
    (top / "a" / "b").mkdir(parents=True)
    (top / "a" / "b" / "vm-100-disk-0.qcow2").write_bytes(EXAMPLE.read_bytes())
    (top / "notes.txt").write_text("hello\n")
    os.symlink("../..", top / "a" / "b" / "up")  # a loop back to top
    os.symlink("..", top / "a" / "self")  # another loop, to top as well
    os.symlink("a", top / "again")  # a second name of a directory, not a loop
    return top


def test_symlink_loops_are_walked_once(tmp_path):
    top = make_tree(tmp_path)
    ctx = discover([str(top)], Options())
    inputs = [v for v in ctx.volumes if v.role == "input"]
    assert [os.path.basename(v.input_path) for v in inputs] == ["vm-100-disk-0.qcow2"]
    assert [(s.folder, list(s)) for s in ctx.skipped] == [(str(top), [("notes.txt", 6)])]
    loops = sorted(e.path for e in ctx.report if e.code == "symlink-loop")
    assert loops == [str(top / "a" / "b" / "up"), str(top / "a" / "self")]
    assert [e.path for e in ctx.report if e.code == "same-directory"] == [str(top / "again")]
    assert list(ctx.vms_root.children()) == ["100"]


def test_many_nested_loops_stay_bounded(tmp_path):
    """Four loops in every one of three levels used to multiply the walk (1022 volumes at
    N=2, "Too many open files" at N=4); each directory is now walked once."""
    top = tmp_path / "top"
    d = top
    for level in range(3):
        d = d / f"l{level}"
        d.mkdir(parents=True)
        (d / f"disk{level}.img").write_bytes(bytes(4096))
        for k in range(4):
            os.symlink(os.path.relpath(top, d), d / f"loop{k}")
    t = time.monotonic()
    ctx = discover([str(top)], Options())
    assert time.monotonic() - t < 30
    assert len([v for v in ctx.volumes if v.role == "input"]) == 3
    assert len([e for e in ctx.report if e.code == "symlink-loop"]) == 12


def test_dangling_links_and_special_files_are_entries(tmp_path):
    top = tmp_path / "top"
    top.mkdir()
    (top / "vm-100-disk-0.qcow2").write_bytes(EXAMPLE.read_bytes())
    os.symlink("does-not-exist.img", top / "dangling.img")
    os.mkfifo(top / "pipe.img")  # opening it would block the scan forever
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(top / "sock.img"))
    os.symlink("/dev/null", top / "null.img")  # a character device, not a block device
    try:
        ctx = discover([str(top)], Options())
    finally:
        sock.close()
    got = {(os.path.basename(e.path), e.code, e.severity) for e in ctx.report}
    assert ("dangling.img", "dangling-symlink", "warning") in got
    assert ("pipe.img", "not-a-file", "warning") in got
    assert ("sock.img", "not-a-file", "warning") in got
    assert ("null.img", "not-a-file", "warning") in got
    msg = {os.path.basename(e.path): e.message for e in ctx.report}
    assert "does-not-exist.img" in msg["dangling.img"]
    assert msg["pipe.img"].startswith("a FIFO") and msg["sock.img"].startswith("a socket")
    assert "a character device (via the link to '/dev/null')" in msg["null.img"]
    assert list(ctx.vms_root.children()) == ["100"]  # the rest is still scanned


def test_special_inputs_on_the_command_line(tmp_path):
    """A dangling link or a link to a character device named on the command line: a report
    entry and exit 1 (nothing recognised), never a traceback or a silent skip."""
    os.symlink("/dev/null", tmp_path / "disk.img")
    os.symlink("gone.img", tmp_path / "dangling.img")
    r = subprocess.run([sys.executable, "-m", "pvfs", "scan", tmp_path / "disk.img",
                        tmp_path / "dangling.img"], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "a character device (via the link to '/dev/null')" in r.stdout
    assert "symbolic link to 'gone.img', which does not exist" in r.stdout
    assert "Traceback" not in r.stderr


def test_same_file_twice_is_taken_once(tmp_path):
    os.link(EXAMPLE, tmp_path / "vm-100-disk-0.qcow2") if os.stat(EXAMPLE).st_dev == \
        os.stat(tmp_path).st_dev else (tmp_path / "vm-100-disk-0.qcow2").write_bytes(
            EXAMPLE.read_bytes())
    os.symlink("vm-100-disk-0.qcow2", tmp_path / "copy.qcow2")
    ctx = discover([str(tmp_path / "vm-100-disk-0.qcow2"), str(tmp_path / "copy.qcow2")],
                   Options())
    assert len([v for v in ctx.volumes if v.role == "input"]) == 1
    assert [e.code for e in ctx.report] == ["same-file"]


def test_open_descriptors_stay_bounded(tmp_path, monkeypatch):
    """More images than the descriptor pool holds: every one is opened, read and checked,
    with at most ``limit`` descriptors (the pool reopens them on demand)."""
    pool = source_mod._FdPool(8)
    monkeypatch.setattr(source_mod, "FD_POOL", pool)
    data = EXAMPLE.read_bytes()
    for i in range(40):
        (tmp_path / f"vm-{100 + i}-disk-0.qcow2").write_bytes(data)
    before = len(os.listdir("/proc/self/fd"))
    ctx = discover([str(tmp_path)], Options())
    assert len(ctx.vms_root.children()) == 40
    assert pool.peak <= 8 and len(os.listdir("/proc/self/fd")) <= before + 8
    first = resolve(ctx.root, "vms/100/disk-0.raw").source.read(0, 1 << 20)
    for i in range(40):  # every disk reads, its descriptor reopened when it was closed
        assert resolve(ctx.root, f"vms/{100 + i}/disk-0.raw").source.read(0, 1 << 20) == first
    assert pool.peak <= 8
    # A file replaced under a closed descriptor is not read as if it were the old one.
    victim = tmp_path / "vm-100-disk-0.qcow2"
    node = resolve(ctx.root, "vms/100/disk-0.raw")
    for i in range(1, 40):
        resolve(ctx.root, f"vms/{100 + i}/disk-0.raw").source.read(0, 512)  # evict it
    (tmp_path / "new").write_bytes(bytes(len(data)))  # a new inode while the old one lives
    os.replace(tmp_path / "new", victim)
    with pytest.raises(UnreadableError, match="replaced by another file"):
        node.source.read(1 << 20, 1 << 20)


def test_walk_cost_does_not_grow_with_the_folder(tmp_path):
    """2000 recognised images (an MBR signature each): the progress count was O(volumes x
    queue) per step, 1000 files took 8.6 s and 2000 about 70 s; now it is linear."""
    d = tmp_path / "many"
    d.mkdir()
    sector = bytearray(512)
    sector[510:512] = b"\x55\xaa"
    for i in range(2000):
        with open(d / f"d{i:04d}.img", "wb") as f:
            f.write(sector)
            f.truncate(1 << 20)
    t = time.monotonic()
    ctx = discover([str(d)], Options(), progress=_CountingProgress())
    took = time.monotonic() - t
    assert len([v for v in ctx.volumes if v.role == "input"]) == 2000
    assert took < 40, f"{took:.1f} s for 2000 files"


class _CountingProgress:
    """Progress is what made the walk quadratic: discovery always has one."""

    def update(self, text, completed=None, total=None):
        pass


def test_damaged_folder_walk_does_not_rescan_the_report(tmp_path, monkeypatch):
    """300 images that each have damage (a missing backing file): discovery must not walk
    the whole damage report once per image (the Proxmox view did, to copy a disk's entries
    to its vms/ path: quadratic in a folder of damaged images)."""
    from pvfs.damage import DamageReport

    one = tmp_path / "one.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-F", "raw", "-b",
                    "/nonexistent.raw", str(one), "1M"], check=True)
    data = one.read_bytes()
    one.unlink()
    d = tmp_path / "dumps"
    d.mkdir()
    for i in range(300):  # sparse copies: only the non-zero 4 KiB blocks are written
        with open(d / f"vm-{100 + i}-disk-0.qcow2", "wb") as f:
            for off in range(0, len(data), 4096):
                block = data[off:off + 4096]
                if block.strip(b"\0"):
                    f.seek(off)
                    f.write(block)
            f.truncate(len(data))
    walks = []
    real_iter = DamageReport.__iter__
    monkeypatch.setattr(DamageReport, "__iter__", lambda self: walks.append(1) or real_iter(self))
    ctx = discover([str(d)], Options())
    assert len(ctx.vms_root.children()) == 300
    assert len([e for e in real_iter(ctx.report) if e.code == "backing-missing"]) == 300
    assert len(walks) < 60, f"{len(walks)} walks over the whole report for 300 images"


MANY_UNRECOGNISED = """\
Status of each VM and container (OK, REPAIRED, DEGRADED, PARTIAL, LOST):
    VMID  type  name              status                        node      OS      backups  disks
     100  VM    -                 OK                            -         -             0  vm-100-disk-0.qcow2 OK

Inputs:
  $D/vm-100-disk-0.qcow2 (960.0 KiB)
  $D/iso/: 1 file not recognised (12 B)
  $D/: 3,000 files not recognised (29.3 KiB)

Layers:
  storage/files/clutter/vm-100-disk-0.qcow2  [input, 960.0 KiB, qcow2]
    storage/files/clutter/vm-100-disk-0.qcow2/disk.raw  [disk, 8.0 MiB, gpt]  -> vms/100/disk-0.raw
      storage/files/clutter/vm-100-disk-0.qcow2/p1  [partition, 1007.0 KiB, raw data]  -> vms/100/disk-0.parts/p1
      storage/files/clutter/vm-100-disk-0.qcow2/p2  [partition, 6.0 MiB, ext4]  -> vms/100/disk-0.parts/p2
        files: vms/100/disk-0.files/p2  [ext4, label 'demo-root', UUID 0b7c3a52-5e36-4b43-a3a7-1f2d7f0c0d01, 1.4 MiB of 6.0 MiB used, clean, no damaged files]
    storage/files/clutter/vm-100-disk-0.qcow2/snapshots/before-upgrade/disk.raw  [disk, 8.0 MiB, gpt]  -> vms/100/snapshots/before-upgrade/disk-0.raw
      storage/files/clutter/vm-100-disk-0.qcow2/snapshots/before-upgrade/p1  [partition, 1007.0 KiB, raw data]  -> vms/100/snapshots/before-upgrade/disk-0.parts/p1
      storage/files/clutter/vm-100-disk-0.qcow2/snapshots/before-upgrade/p2  [partition, 6.0 MiB, ext4]  -> vms/100/snapshots/before-upgrade/disk-0.parts/p2
        files: vms/100/snapshots/before-upgrade/disk-0.files/p2  [ext4, label 'demo-root', UUID 0b7c3a52-5e36-4b43-a3a7-1f2d7f0c0d01, 1.4 MiB of 6.0 MiB used, clean, no damaged files]

VMs: 100

Guest filesystems, per VM and container:
  VM 100: 2 guest filesystems, all intact (ext4)

Damage report (2 entries):
  INFO    core: storage/files/clutter/iso: 1 file in $D/iso was not recognised and is not shown: readme.txt
  INFO    core: storage/files/clutter: 3,000 files (29.3 KiB) in $D were not recognised and are not shown: note-0000.txt, note-0001.txt, note-0002.txt and 2,997 more (report.json lists every one)
"""


def test_many_unrecognised_files_are_one_line_each_folder(tmp_path):
    """A folder of 3,000 small files that are no image, beside one VM disk: ``pvfs scan``
    says how many per folder with three names (it printed 3,000 inputs, 3,000 layers and
    3,000 report entries), they are not in the tree, and ``--json`` lists every one with
    the size os.stat gives (pvfs/unrecognised.py)."""
    d = tmp_path / "clutter"
    (d / "iso").mkdir(parents=True)
    for i in range(3000):
        (d / f"note-{i:04d}.txt").write_bytes(b"n" * 10)
    (d / "iso" / "readme.txt").write_text("an ISO here\n")
    (d / "vm-100-disk-0.qcow2").write_bytes(EXAMPLE.read_bytes())
    argv = [sys.executable, "-m", "pvfs", "scan", "--no-progress", "--index-dir", "none", str(d)]
    r = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout == MANY_UNRECOGNISED.replace("$D", str(d))
    r = subprocess.run(argv + ["--json"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    got = {f["folder"]: (f["path"], f["count"], f["bytes"], [(x["name"], x["size"])
                                                             for x in f["files"]])
           for f in doc["unrecognised"]}
    want = {str(p): (f"storage/files/{p.relative_to(tmp_path)}", len(files),
                     sum(s for _n, s in files), files)
            for p in (d, d / "iso")
            for files in [sorted((f.name, f.stat().st_size) for f in p.iterdir()
                                 if f.is_file() and f.suffix != ".qcow2")]}
    assert got == want
    assert [i["path"] for i in doc["inputs"]] == [str(d / "vm-100-disk-0.qcow2")]
    ctx = discover([str(d)], Options())
    assert set(resolve(ctx.root, "storage/files/clutter").children()) == {
        "iso", "vm-100-disk-0.qcow2"}
    assert resolve(ctx.root, "storage/files/clutter/iso").children() == {}


def test_unrecognised_names_that_are_no_utf8_round_trip(tmp_path):
    """Names of files not recognised are kept as bytes: one that is no UTF-8 or holds a
    newline comes back from report.json as os.listdir gives it, and the text escapes it."""
    d = tmp_path / "odd"
    d.mkdir()
    names = [b"caf\xe9.txt", b"new\nline.txt", b"plain.txt"]
    for n in names:
        with open(os.path.join(os.fsencode(d), n), "wb") as f:
            f.write(b"x")
    r = subprocess.run([sys.executable, "-m", "pvfs", "scan", "--json", "--index-dir", "none",
                        str(d)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 1, r.stderr  # nothing recognised
    [folder] = json.loads(r.stdout)["unrecognised"]
    assert [f["name"] for f in folder["files"]] == sorted(os.listdir(d), key=os.fsencode)
    r = subprocess.run([sys.executable, "-m", "pvfs", "scan", "--index-dir", "none", str(d)],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    line = [x for x in r.stdout.splitlines() if "were not recognised" in x]
    assert line == [f"  INFO    core: storage/files/odd: 3 files (3 B) in {d} were not "
                    "recognised and are not shown: caf\\udce9.txt, new\\x0aline.txt, plain.txt"], \
        r.stdout
