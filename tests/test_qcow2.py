"""qcow2 against the qemu-img fixtures: every disk and snapshot by sha256."""

from __future__ import annotations

import os
import shutil

import pytest

from conftest import (FIXTURES, fixture_json, require_fixture, sha256_readinto,
                      sha256_readinto_warm, sha256_source, unpack)
from pvfs.discover import Options, discover
from pvfs.errors import UnreadableError
from pvfs.nodes import resolve
from pvfs.source import UNREADABLE, FileSource, WouldBlock
from backends.qcow2.image import Qcow2Error, Qcow2Image, parse_header

MANIFEST_PATH = FIXTURES / "qcow2" / "manifest.json"
MANIFEST = fixture_json(MANIFEST_PATH, {"images": {}})
BASE_SHA = MANIFEST["images"].get("base.qcow2", {}).get("raw_sha256")


@pytest.fixture(scope="module")
def imgdir():
    return unpack(require_fixture("qcow2", "qcow2-fixtures.tar.xz")) / "img"


def _expected(entry):
    return entry.get("expected_raw_sha256") or entry["raw_sha256"]


@pytest.mark.parametrize("name", sorted(MANIFEST["images"]))
def test_every_image_matches_manifest(imgdir, name):
    entry = MANIFEST["images"][name]
    ctx = discover([str(imgdir / name)])
    base = os.path.basename(name)
    node = resolve(ctx.root, f"storage/files/{base}/disk.raw")
    assert node is not None, [d.line() for d in ctx.report]
    assert node.size == entry["virtual_size"]
    assert sha256_source(node.source) == _expected(entry)
    for snap, sentry in (entry.get("snapshots") or {}).items():
        snode = resolve(ctx.root, f"storage/files/{base}/snapshots/{snap}/disk.raw")
        assert snode is not None
        assert sha256_source(snode.source) == sentry["raw_sha256_applied"]
    assert not [d for d in ctx.report if d.severity == "error" and d.layer == "qcow2"]


@pytest.mark.parametrize("name", sorted(MANIFEST["images"]))
def test_readinto_matches_manifest(imgdir, name):
    """The mount's path (preadv of data clusters into its reply buffer, inline when the
    page cache and the table cache hold them): every image and snapshot, twice (cold
    tables, then cached), gives qemu-img's sha256."""
    entry = MANIFEST["images"][name]
    ctx = discover([str(imgdir / name)])
    base = os.path.basename(name)
    node = resolve(ctx.root, f"storage/files/{base}/disk.raw")
    assert node is not None and node.source.readinto_native
    for _ in range(2):
        assert sha256_readinto(node.source)[0] == _expected(entry)
    for snap, sentry in (entry.get("snapshots") or {}).items():
        snode = resolve(ctx.root, f"storage/files/{base}/snapshots/{snap}/disk.raw")
        assert sha256_readinto(snode.source)[0] == sentry["raw_sha256_applied"]


def test_readinto_inline_once_cached_and_eio_where_read_fails(imgdir, tmp_path):
    """Once the image is in the page cache and its tables are cached, every piece is read
    inline (no worker thread).  A truncated copy: ``readinto`` fails exactly where
    ``read`` does, with or without ``nowait``, and the bytes before are the same."""
    node = resolve(discover([str(imgdir / "base.qcow2")]).root,
                   "storage/files/base.qcow2/disk.raw")
    sha256_readinto(node.source)
    sha, inline = sha256_readinto_warm(node.source)
    assert sha == BASE_SHA and inline == -(-node.size // ((1 << 20) + 4093))
    data = (imgdir / "base.qcow2").read_bytes()
    p = tmp_path / "base.qcow2"
    p.write_bytes(data[:len(data) // 2])
    src = resolve(discover([str(p)]).root, "storage/files/base.qcow2/disk.raw").source
    off = src.unreadable_ranges()[0][0]
    buf = bytearray(8192)
    with pytest.raises((UnreadableError, WouldBlock)):  # inline: EIO, or "ask a thread"
        src.readinto(off, memoryview(buf)[:512], nowait=True)
    with pytest.raises(UnreadableError):
        src.readinto(off, memoryview(buf)[:512])
    if off >= 4096:
        assert src.readinto(off - 4096, memoryview(buf)[:4096]) == 4096
        assert bytes(buf[:4096]) == src.read(off - 4096, 4096)
        with pytest.raises(UnreadableError):  # a read that runs into the bad range
            src.readinto(off - 4096, buf)


def test_snapshot_dates_and_sizes(imgdir):
    img = Qcow2Image(FileSource(imgdir / "snapshots.qcow2"), str(imgdir / "snapshots.qcow2"),
                     FileSource)
    snaps = {s.name: s for s in img.snapshots}
    assert set(snaps) == {"before-upgrade", "after-upgrade"}
    assert snaps["before-upgrade"].disk_size == 16 << 20
    assert img.hdr.size == 24 << 20
    # 2024-05-01 10:00 and 2024-05-02 11:30 (faketime, UTC)
    assert sorted(s.date_sec for s in snaps.values()) == [1714557600, 1714649400]


def test_proxmox_view_from_name(imgdir, tmp_path):
    shutil.copy(imgdir / "base.qcow2", tmp_path / "vm-100-disk-0.qcow2")
    shutil.copy(imgdir / "snapshots.qcow2", tmp_path / "base-9000-disk-1.qcow2")
    ctx = discover([str(tmp_path)])
    node = resolve(ctx.root, "vms/100/disk-0.raw")
    assert sha256_source(node.source) == BASE_SHA
    snap = resolve(ctx.root, "vms/9000/snapshots/before-upgrade/disk-1.raw")
    entry = MANIFEST["images"]["snapshots.qcow2"]["snapshots"]["before-upgrade"]
    assert sha256_source(snap.source) == entry["raw_sha256_applied"]


def test_missing_backing_file_still_mounts(imgdir, tmp_path):
    shutil.copy(imgdir / "overlay1.qcow2", tmp_path / "overlay1.qcow2")
    ctx = discover([str(tmp_path / "overlay1.qcow2")])
    codes = {d.code for d in ctx.report}
    assert "backing-missing" in codes
    node = resolve(ctx.root, "storage/files/overlay1.qcow2/disk.raw")
    # 40M was written in the overlay itself: readable.
    assert node.source.read(40 << 20, 16).startswith(b"QCOW2FIX")
    # 10M comes from the (missing) backing file: EIO by default ...
    with pytest.raises(UnreadableError):
        node.source.read(10 << 20, 512)
    assert node.source.block_status(10 << 20, 512)[0][2] == UNREADABLE
    # ... zeros with --bad zero.
    ctx = discover([str(tmp_path / "overlay1.qcow2")], Options(bad="zero"))
    node = resolve(ctx.root, "storage/files/overlay1.qcow2/disk.raw")
    assert node.source.read(10 << 20, 512) == bytes(512)


def test_backing_loop_is_reported(imgdir, tmp_path):
    # overlay -> itself: make a copy of overlay1 whose backing name points at itself.
    data = bytearray((imgdir / "overlay1.qcow2").read_bytes())
    hdr = parse_header(FileSource(imgdir / "overlay1.qcow2"))
    off = int.from_bytes(data[8:16], "big")
    name = b"loop.qcow2".ljust(len(hdr.backing_file.encode()), b"\0")
    data[off:off + len(name)] = name
    data[16:20] = len(b"loop.qcow2").to_bytes(4, "big")
    (tmp_path / "loop.qcow2").write_bytes(bytes(data))
    ctx = discover([str(tmp_path / "loop.qcow2")])
    assert any(d.code == "backing-loop" for d in ctx.report)


def test_destroyed_header_recovered_by_l1_scan(imgdir, tmp_path):
    data = bytearray((imgdir / "base.qcow2").read_bytes())
    data[:65536] = bytes(65536)  # the whole header cluster
    p = tmp_path / "base.qcow2"
    p.write_bytes(bytes(data))
    ctx = discover([str(p)])
    assert any(d.code == "header-destroyed" for d in ctx.report)
    node = resolve(ctx.root, "storage/files/base.qcow2/disk.raw")
    from pvfs.source import SliceSource

    assert sha256_source(SliceSource(node.source, 0, 64 << 20)) == BASE_SHA


def test_unknown_incompatible_bit_refused(imgdir, tmp_path):
    data = bytearray((imgdir / "base.qcow2").read_bytes()[:1 << 20])
    data[72:80] = (1 << 40).to_bytes(8, "big")
    p = tmp_path / "x.qcow2"
    p.write_bytes(bytes(data))
    with pytest.raises(Qcow2Error, match="unknown incompatible feature bits"):
        parse_header(FileSource(p))
    ctx = discover([str(p)])
    errs = [d for d in ctx.report if d.layer == "qcow2" and d.severity == "error"]
    assert errs and "unknown incompatible feature bits" in errs[0].message


@pytest.mark.parametrize("damage, message", [
    (lambda d: d[:50], "file too small for a qcow2 header"),
    (lambda d: d[:4] + (9).to_bytes(4, "big") + d[8:], "unsupported qcow2 version 9"),
    (lambda d: d[:20] + (30).to_bytes(4, "big") + d[24:], "cluster_bits 30 outside 9..21"),
])
def test_bad_headers_give_clear_errors(imgdir, tmp_path, damage, message):
    data = (imgdir / "base.qcow2").read_bytes()[:65536]
    p = tmp_path / "bad.qcow2"
    p.write_bytes(damage(data))
    with pytest.raises(Qcow2Error, match=message):
        parse_header(FileSource(p))


def test_truncated_image_reads_eio_not_garbage(imgdir, tmp_path):
    data = (imgdir / "base.qcow2").read_bytes()
    p = tmp_path / "base.qcow2"
    p.write_bytes(data[:len(data) // 2])
    ctx = discover([str(p)])
    node = resolve(ctx.root, "storage/files/base.qcow2/disk.raw")
    bad = node.source.unreadable_ranges()
    assert bad, "clusters past the end of the truncated file must be unreadable"
    off = bad[0][0]
    with pytest.raises(UnreadableError):
        node.source.read(off, 512)


def test_missing_backing_damage_reaches_every_layer(tmp_path):
    """A missing backing file makes ranges of the disk, its partitions and the vms/ view
    unreadable; each gets its own entry with its own offsets."""
    import subprocess

    from conftest import ROOT

    base = tmp_path / "base.qcow2"
    shutil.copy(ROOT / "examples" / "vm-100-disk-0.qcow2", base)
    clone = tmp_path / "vm-100-disk-0.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", "base.qcow2",
                    str(clone)], check=True, cwd=tmp_path)
    base.unlink()
    ctx = discover([str(clone)])
    entries = {d.path: d for d in ctx.report if d.code == "unreadable-range"}
    assert entries["vms/100/disk-0.raw"].ranges == ((0, 8 << 20),)
    assert entries["storage/files/vm-100-disk-0.qcow2/disk.raw"].ranges == ((0, 8 << 20),)


@pytest.mark.parametrize("name", ["base.qcow2", "extl2.qcow2", "c512.qcow2",
                                  "v2-compat010.qcow2"])
def test_truncated_image_is_reported_at_scan(imgdir, tmp_path, name):
    """A qcow2 cut to half its size: ``scan`` names the lost virtual ranges before any read.
    The oracle is ``qemu-img map`` of the whole image: every data cluster (or subcluster)
    whose host bytes lie past the cut is lost, nothing else."""
    import json
    import subprocess

    data = (imgdir / name).read_bytes()
    cut = len(data) // 2
    p = tmp_path / "vm-100-disk-0.qcow2"
    p.write_bytes(data[:cut])
    whole = tmp_path / "whole.qcow2"
    whole.write_bytes(data)
    m = json.loads(subprocess.run(["qemu-img", "map", "--output=json", str(whole)], check=True,
                                  capture_output=True, text=True).stdout)
    want = []
    for e in m:
        if not e.get("data") or "offset" not in e or e["depth"] != 0:
            continue
        lo = max(e["start"], e["start"] + cut - e["offset"])
        if e["offset"] + e["length"] > cut:
            want.append((lo, e["start"] + e["length"] - lo))
    # Where an L2 table itself lies past the cut, nothing it mapped can be known: all lost.
    import struct

    bits, l1_size, l1_off = struct.unpack_from(">I", data, 20)[0], *struct.unpack_from(">IQ", data, 36)
    ext = bool(len(data) > 80 and struct.unpack_from(">Q", data, 72)[0] & 16)
    span = 1 << (bits - (4 if ext else 3) + bits)
    vsize = struct.unpack_from(">Q", data, 24)[0]
    for i in range(l1_size):
        l2 = struct.unpack_from(">Q", data, l1_off + 8 * i)[0] & 0x00FFFFFFFFFFFE00
        if l2 and l2 + (1 << bits) > cut:
            want.append((i * span, min(span, vsize - i * span)))
    from pvfs.damage import merge_ranges

    want = tuple(merge_ranges(want))
    assert want, "the cut must hit data clusters"
    ctx = discover([str(p)])
    got = {e.path: e.ranges for e in ctx.report if e.code == "beyond-eof"}
    assert got == {"storage/files/vm-100-disk-0.qcow2/disk.raw": want, "vms/100/disk-0.raw": want}
    node = resolve(ctx.root, "vms/100/disk-0.raw")
    with pytest.raises(UnreadableError):  # the default policy
        node.source.read(want[0][0], 512)
    ctx = discover([str(p)], Options(bad="zero"))
    node = resolve(ctx.root, "vms/100/disk-0.raw")
    assert node.source.read(want[0][0], 512) == bytes(512)
    assert all("read as zeros" in e.message for e in ctx.report if e.code == "beyond-eof")


@pytest.mark.parametrize("name", ["compressed-zlib.qcow2", "compressed-zstd.qcow2"])
def test_truncated_compressed_image_policy(imgdir, tmp_path, name):
    """Compressed clusters cut off by truncation: EIO by default, zeros with --bad zero,
    exactly the ranges the scan reported; every other cluster equals qemu-img's raw."""
    import subprocess

    data = (imgdir / name).read_bytes()
    p = tmp_path / "vm-100-disk-0.qcow2"
    p.write_bytes(data[:len(data) // 2])
    truth = tmp_path / "truth.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(imgdir / name), str(truth)], check=True)
    want = truth.read_bytes()
    cs = 1 << 16
    lost = []
    ctx = discover([str(p)])
    src = resolve(ctx.root, "vms/100/disk-0.raw").source
    for off in range(0, src.size, cs):
        try:
            assert src.read(off, cs) == want[off:off + cs], off
        except UnreadableError:
            lost.append((off, cs))
    from pvfs.damage import merge_ranges

    assert lost, "the cut must hit compressed clusters"
    reported = [e.ranges for e in ctx.report
                if e.code == "beyond-eof" and e.path == "vms/100/disk-0.raw"]
    assert reported == [tuple(merge_ranges(lost))]
    zctx = discover([str(p)], Options(bad="zero"))
    zsrc = resolve(zctx.root, "vms/100/disk-0.raw").source
    for off, n in lost:
        assert zsrc.read(off, n) == bytes(n)


@pytest.mark.parametrize("name", ["base.qcow2", "c512.qcow2", "c2m.qcow2", "extl2.qcow2",
                                  "extl2-c2m.qcow2", "compressed-mixed.qcow2",
                                  "datafile.qcow2", "overlay1.qcow2", "extl2-overlay.qcow2",
                                  "chain/overlay2.qcow2", "prealloc-metadata.qcow2",
                                  "v2-compat010.qcow2", "compressed-zlib-c4k.qcow2",
                                  "datafile-raw.qcow2", "snapshots.qcow2"])
def test_plain_ranges_equal_qemu_img_map(imgdir, name):
    """What the mount prefetches ahead of a reader (``plain_ranges``): the host ranges
    ``qemu-img map`` gives for the image's data clusters, its external data file's and its
    backing chain's (depth), and no compressed or zero cluster (images without a backing
    file or subclusters go by the numpy path, the others cluster by cluster)."""
    import json
    import subprocess

    path = imgdir / name
    chain = json.loads(subprocess.run(
        ["qemu-img", "info", "--backing-chain", "--output=json", str(path)],
        capture_output=True, text=True, check=True, cwd=path.parent).stdout)
    files = []  # the file each depth's offsets are in
    for img in chain:
        data_file = img.get("format-specific", {}).get("data", {}).get("data-file")
        files.append(os.path.realpath(os.path.join(os.path.dirname(img["filename"]), data_file)
                                      if data_file else img["filename"]))
    # (qemu opens an external data file by its name relative to the working directory)
    entries = json.loads(subprocess.run(["qemu-img", "map", "--output=json", str(path)],
                                        capture_output=True, text=True, check=True,
                                        cwd=path.parent).stdout)

    def joined(ranges):
        out = []
        for pos, f, off, n in ranges:
            if out and out[-1][1] == f and out[-1][0] + out[-1][3] == pos \
                    and out[-1][2] + out[-1][3] == off:
                out[-1] = (out[-1][0], f, out[-1][2], out[-1][3] + n)
            else:
                out.append((pos, f, off, n))
        return out

    want = joined([(e["start"], files[e["depth"]], e["offset"], e["length"])
                   for e in entries if e["data"] and "offset" in e])
    base = os.path.basename(name)
    src = resolve(discover([str(path)]).root, f"storage/files/{base}/disk.raw").source
    got = joined([(p, os.path.realpath(f.path), o, n) for p, f, o, n in
                  src.plain_ranges(0, src.size)])
    assert got == want and want
    for pos, f, off, n in got[:20]:  # and the bytes there are the disk's
        with open(f, "rb") as fh:
            fh.seek(off)
            assert fh.read(min(n, 1 << 16)) == src.read(pos, min(n, 1 << 16))
