"""``pvfs copy``: files of the tree copied out without FUSE.

Every copy is compared by sha256 with ground truth made by the real tools (the fixtures'
manifests: qemu-img convert, the thin pool's own dd; ``qemu-img convert`` run here; the
raw image itself), never with pvfs's own reader.  Damage: the ddrescue mapfile of
examples/damaged, whose bad host bytes are placed in the guest disk by ``qemu-img map``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import FIXTURES, ROOT, fixture_json, require_fixture, sha256_file, unpack
from pvfs.cli import main
from pvfs.copyout import SECTOR, Copier, mapfile_text
from pvfs.ddrescue import parse_mapfile
from pvfs.errors import UnreadableError
from pvfs.source import BytesSource, Source

EXAMPLES = ROOT / "examples"
SUMS = {line.split("  ", 1)[1]: line.split()[0]
        for line in (EXAMPLES / "SHA256SUMS").read_text().splitlines()}
QCOW2 = fixture_json(FIXTURES / "qcow2" / "manifest.json", {"images": {}})["images"]
LVM = fixture_json(FIXTURES / "lvm-thin" / "manifest.json", {})


def pvfs(*args):
    return subprocess.run([sys.executable, "-m", "pvfs", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)


def sha256_bytes(b):
    return hashlib.sha256(b).hexdigest()


def allocated(path):
    return os.stat(path).st_blocks * 512


def test_cli_copies_the_example_vm_disk_sparse_and_in_the_kernel(tmp_path):
    """The whole command, as a user runs it: the qcow2 example's VM disk, by sha256
    against SHA256SUMS and against qemu-img convert; sparse where the disk has holes; the
    data clusters copied with copy_file_range; the input untouched."""
    img = EXAMPLES / "vm-100-disk-0.qcow2"
    before = sha256_file(img)
    dest = tmp_path / "vm-100-disk-0.raw"
    r = pvfs("copy", img, "--path", "vms/100/disk-0.raw", "--to", dest)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert sha256_file(dest) == SUMS["vm-100-disk-0.raw (virtual disk)"]
    truth = tmp_path / "convert.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(img), str(truth)],
                   check=True)
    assert sha256_file(dest) == sha256_file(truth)
    assert dest.stat().st_size == 8 << 20
    data = sum(e["length"] for e in json.loads(subprocess.run(
        ["qemu-img", "map", "--output=json", str(img)], check=True, capture_output=True,
        text=True).stdout) if e["data"])
    assert allocated(dest) <= data  # holes stay holes (allocated-but-zero clusters too)
    line = r.stdout.strip()
    assert line.startswith(f"vms/100/disk-0.raw -> {dest}: 8.0 MiB in ")
    assert " copied in the kernel, 0 bytes read, " in line  # every data cluster: plain
    assert sha256_file(img) == before


@pytest.fixture(scope="module")
def qcow2_dir():
    return unpack(require_fixture("qcow2", "qcow2-fixtures.tar.xz")) / "img"


@pytest.mark.parametrize("name", ["base.qcow2", "compressed-zstd.qcow2", "chain/overlay2.qcow2",
                                  "extl2-overlay.qcow2", "datafile.qcow2", "snapshots.qcow2"])
def test_qcow2_fixture_disks_match_qemu_img(qcow2_dir, tmp_path, capsys, name):
    """Plain clusters (kernel copy), compressed clusters (read), backing chains, subclusters,
    an external data file: each copy's sha256 is the manifest's qemu-img convert."""
    entry = QCOW2[name]
    base = os.path.basename(name)
    dest = tmp_path / "out.raw"
    assert main(["copy", str(qcow2_dir / name), "--path", f"storage/files/{base}/disk.raw",
                 "--to", str(dest)]) == 0
    assert sha256_file(dest) == (entry.get("expected_raw_sha256") or entry["raw_sha256"])
    assert dest.stat().st_size == entry["virtual_size"]
    assert allocated(dest) < entry["virtual_size"] // 2  # sparse
    out = capsys.readouterr().out
    if name == "base.qcow2":
        assert " 0 bytes read, " in out and "0 bytes copied in the kernel" not in out
    if name == "compressed-zstd.qcow2":
        assert " 0 bytes read, " not in out  # compressed clusters go through the reader


@pytest.fixture(scope="module")
def lvm_img():
    return unpack(require_fixture("lvm-thin", "lvm-thin-fixtures.tar.xz")) / "pve-disk.img"


def test_thin_and_linear_lvs_into_a_directory(lvm_img, tmp_path, capsys):
    """Several --path into a directory: thin LVs (runs of the pool's data LV, in the
    kernel) and a linear LV, by the manifest's sha256; a thin LV's copy allocates only
    its mapped chunks."""
    before = sha256_file(lvm_img)
    out = tmp_path / "out"
    out.mkdir()
    paths = ["vms/100/disk-0.raw", "storage/lvm/pve/vm-101-disk-0", "storage/lvm/pve/root"]
    argv = ["copy", str(lvm_img)]
    for p in paths:
        argv += ["--path", p]
    assert main(argv + ["--to", str(out)]) == 0
    thin = LVM["thin_volumes"]
    assert sha256_file(out / "disk-0.raw") == thin["vm-100-disk-0"]["sha256"]
    assert sha256_file(out / "vm-101-disk-0") == thin["vm-101-disk-0"]["sha256"]
    assert sha256_file(out / "root") == LVM["linear_volumes"]["root"]["sha256"]
    chunk = LVM["thin_pool"]["chunk_size_bytes"]
    assert allocated(out / "vm-101-disk-0") <= thin["vm-101-disk-0"]["mapped_blocks"] * chunk
    assert allocated(out / "disk-0.raw") <= thin["vm-100-disk-0"]["mapped_blocks"] * chunk
    text = capsys.readouterr().out
    assert text.count(" 0 bytes read, ") == 3, text  # all of it copy_file_range
    # the snapshot's disk has the same base name as vms/100/disk-0.raw: refused up front
    code = main(argv + ["--path", "vms/100/snapshots/before/disk-0.raw", "--to", str(out)])
    assert code == 2
    assert sha256_file(lvm_img) == before


def test_raw_image_sparse_copy_equals_the_image(tmp_path, capsys):
    """A raw VM disk with holes: the copy is the image byte for byte and allocates what the
    image allocates, all of it copied in the kernel."""
    img = tmp_path / "in" / "vm-200-disk-0.raw"
    img.parent.mkdir()
    with open(img, "wb") as f:
        f.truncate(48 << 20)
        for off in (0, 5 << 20, (20 << 20) + 4096, 47 << 20):
            f.seek(off)
            f.write(os.urandom(300_000))
    dest = tmp_path / "out.raw"
    assert main(["copy", str(img), "--path", "vms/200/disk-0.raw", "--to", str(dest)]) == 0
    assert sha256_file(dest) == sha256_file(img)
    assert allocated(dest) <= allocated(img)
    assert "0 bytes read" in capsys.readouterr().out


# -- damage ----------------------------------------------------------------------------------
DAMAGED = EXAMPLES / "damaged" / "vm-102-disk-0.qcow2"


def _bad_guest_ranges():
    """The mapfile's bad host ranges, placed in the guest disk by qemu-img map."""
    bad = parse_mapfile((DAMAGED.parent / (DAMAGED.name + ".map")).read_text())
    extents = json.loads(subprocess.run(["qemu-img", "map", "--output=json", str(DAMAGED)],
                                        check=True, capture_output=True, text=True).stdout)
    out = []
    for e in extents:
        if "offset" not in e:
            continue
        for o, n in bad:
            lo, hi = max(o, e["offset"]), min(o + n, e["offset"] + e["length"])
            if lo < hi:
                out.append((e["start"] + lo - e["offset"], hi - lo))
    return sorted(out)


def test_damage_stops_the_copy_and_removes_it(tmp_path):
    (o, n), = _bad_guest_ranges()
    before = sha256_file(DAMAGED)
    dest = tmp_path / "vm-102.raw"
    r = pvfs("copy", DAMAGED, "--path", "vms/102/disk-0.raw", "--to", dest)
    assert r.returncode == 3
    assert r.stdout == ""
    assert r.stderr == (
        f"pvfs: error: vms/102/disk-0.raw: bytes {o:#x}-{o + n - 1:#x} ({n} bytes) cannot be "
        f"read: vm-102-disk-0.qcow2: bad sectors at 0x91800+0x400 (ddrescue mapfile); {dest} "
        "removed (--keep-going copies the rest, with zeros for these bytes and a mapfile)\n")
    assert not dest.exists() and not (tmp_path / "vm-102.raw.map").exists()
    assert sha256_file(DAMAGED) == before


def test_keep_going_writes_zeros_and_a_ddrescue_mapfile(tmp_path, capsys):
    bad = _bad_guest_ranges()
    dest = tmp_path / "vm-102.raw"
    assert main(["copy", "--keep-going", str(DAMAGED), "--path", "vms/102/disk-0.raw",
                 "--to", str(dest)]) == 3
    truth = tmp_path / "convert.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(DAMAGED), str(truth)],
                   check=True)
    want = bytearray(truth.read_bytes())
    for o, n in bad:
        want[o:o + n] = bytes(n)
    assert dest.read_bytes() == want
    text = (tmp_path / "vm-102.raw.map").read_text()
    assert parse_mapfile(text) == bad
    blocks = [line.split() for line in text.splitlines() if line and not line.startswith("#")][1:]
    pos = 0
    for p, s, _st in blocks:  # the blocks cover the disk, in order
        assert int(p, 16) == pos
        pos += int(s, 16)
    assert pos == 8 << 20
    out = capsys.readouterr().out
    assert f"damage: 1 unreadable ranges, {bad[0][1]} bytes, copied as zeros" in out
    # a second run: both the copy and its mapfile exist
    assert main(["copy", "--keep-going", str(DAMAGED), "--path", "vms/102/disk-0.raw",
                 "--to", str(dest)]) == 2
    assert main(["copy", "--keep-going", "--force", str(DAMAGED), "--path",
                 "vms/102/disk-0.raw", "--to", str(dest)]) == 3
    assert dest.read_bytes() == want


class _HiddenBad(Source):
    """``data`` whose block status says all is data but whose reads of ``bad`` fail (a
    checksum found wrong only when read)."""

    def __init__(self, data, bad):
        super().__init__()
        self.data, self.size, self.bad, self.label = data, len(data), bad, "hidden"

    def _read(self, offset, length):
        lo, hi = max(offset, self.bad[0]), min(offset + length, self.bad[1])
        if lo < hi:
            raise UnreadableError("hidden: checksum", [(lo, hi - lo)])
        return self.data[offset:offset + length]


def test_unforeseen_bad_bytes_are_narrowed_to_sectors(tmp_path):
    data = os.urandom(3 << 20)
    src = _HiddenBad(data, (1_000_000, 1_003_000))
    with open(tmp_path / "out", "wb") as f:
        res = Copier(src, f.fileno(), "x", keep_going=True).run()
    lo, hi = 1_000_000 // SECTOR * SECTOR, -(-1_003_000 // SECTOR) * SECTOR
    assert res.bad == [(lo, hi - lo)]
    got = (tmp_path / "out").read_bytes()
    assert got == data[:lo] + bytes(hi - lo) + data[hi:]
    assert parse_mapfile(mapfile_text(len(data), res.bad)) == res.bad
    with open(tmp_path / "out2", "wb") as f, pytest.raises(Exception, match="cannot be read"):
        Copier(src, f.fileno(), "x").run()


def test_bytes_source_through_the_buffer(tmp_path):
    data = os.urandom((9 << 20) + 123)
    with open(tmp_path / "out", "wb") as f:
        res = Copier(BytesSource(data), f.fileno(), "x").run()
    assert (tmp_path / "out").read_bytes() == data and res.read_bytes == len(data)


# -- refusals --------------------------------------------------------------------------------
def test_refusals_are_one_line(tmp_path):
    img = EXAMPLES / "vm-100-disk-0.qcow2"
    dest = tmp_path / "d.raw"
    dest.write_bytes(b"keep me")
    cases = [
        (["--path", "vms/100/disk-0.raw", "--to", dest], 2,
         f"pvfs: usage error: {dest} exists (--force replaces it)"),
        (["--path", "vms/999/disk-0.raw", "--to", tmp_path / "new.raw"], 2,
         "pvfs: usage error: --path vms/999/disk-0.raw: not in the tree (run 'pvfs scan' to "
         "see it)"),
        (["--path", "vms/100", "--to", tmp_path / "new.raw"], 2,
         "pvfs: usage error: --path vms/100: not a regular file"),
        (["--path", "vms/100/disk-0.raw", "--path", "README.txt", "--to", dest], 2,
         f"pvfs: usage error: --to {dest}: not a directory (several --path need one)"),
        (["--path", "vms/100/disk-0.raw", "--to", tmp_path / "nodir" / "x.raw"], 2,
         f"pvfs: usage error: --to {tmp_path / 'nodir' / 'x.raw'}: directory "
         f"{tmp_path / 'nodir'} does not exist"),
    ]
    for args, code, err in cases:
        r = pvfs("copy", img, *args)
        assert (r.returncode, r.stderr) == (code, err + "\n"), args
    assert dest.read_bytes() == b"keep me"
    assert not (tmp_path / "new.raw").exists()
    r = pvfs("copy", "--force", img, "--path", "vms/100/disk-0.raw", "--to", dest)
    assert r.returncode == 0 and sha256_file(dest) == SUMS["vm-100-disk-0.raw (virtual disk)"]


def test_dest_among_the_inputs_is_refused(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    img = d / "vm-100-disk-0.qcow2"
    img.write_bytes((EXAMPLES / "vm-100-disk-0.qcow2").read_bytes())
    before = sha256_file(img)
    for dest in (img, d / "sub.raw"):
        r = pvfs("copy", "--force", d, "--path", "vms/100/disk-0.raw", "--to", dest)
        assert r.returncode == 2
        assert r.stderr == (f"pvfs: usage error: --to {dest}: is an input or inside an input "
                            f"directory ({d}); inputs are never written\n")
    assert sha256_file(img) == before and sorted(os.listdir(d)) == [img.name]


def test_progress_lines_name_the_copy(tmp_path):
    """--progress into a pipe: plain lines with MiB done of the total and the rate, the
    last one saying which copy finished."""
    dest = tmp_path / "d.raw"
    r = pvfs("copy", "--progress", EXAMPLES / "vm-100-disk-0.qcow2", "--path",
             "vms/100/disk-0.raw", "--to", dest)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert any(re.search(r"\] 8/8 vms/100/disk-0\.raw: \d+ MB/s$", x) for x in lines), lines
    assert lines[-1].endswith("8/8 copy of vms/100/disk-0.raw done after 1 steps"), lines


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs (root)")
def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    """DEST on a 1 MiB tmpfs (another file system: copy_file_range refused, the buffer path
    writes) that 1.2 MiB of data do not fit: one line, exit 1, no partial DEST."""
    img = tmp_path / "vm-200-disk-0.raw"
    with open(img, "wb") as f:
        f.truncate(16 << 20)
        for off in (0, 8 << 20, 15 << 20):
            f.seek(off)
            f.write(os.urandom(400_000))
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        dest = small / "d.raw"
        r = pvfs("copy", img, "--path", "vms/200/disk-0.raw", "--to", dest)
        assert r.returncode == 1
        assert re.fullmatch(rf"pvfs: error: {re.escape(str(dest))}: cannot write at 0x[0-9a-f]+: "
                            r"No space left on device; removed\n", r.stderr), r.stderr
        assert os.listdir(small) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)
