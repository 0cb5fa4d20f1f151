"""VMDK images made by qemu-img/qemu-io, compared with ``qemu-img convert -O raw``.

Every subformat qemu writes (monolithicSparse, streamOptimized, monolithicFlat,
twoGbMaxExtentSparse, twoGbMaxExtentFlat), a three-level backing chain with a zeroed
grain, a split image larger than 2 GiB (two extents), and a Proxmox directory storage
layout.  Images are cached under the fixture cache, keyed by a hash of the builder.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import random
import shutil
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import cached_build, sha256_file, sha256_source
from pvfs.discover import Context, Volume, discover
from pvfs.errors import UnreadableError
from pvfs.namespace import OsFiles
from pvfs.nodes import File, resolve
from pvfs.source import FileSource, PatchedSource

from backends.vmdk.backend import VmdkBackend
from backends.vmdk.descriptor import VmdkError, parse_descriptor
from backends.vmdk.image import VmdkImage

SUBFORMATS = ["monolithicSparse", "streamOptimized", "monolithicFlat", "twoGbMaxExtentSparse",
              "twoGbMaxExtentFlat"]


def _run(*cmd):
    subprocess.run(cmd, check=True, capture_output=True)


def make_base(path, size=64 << 20):
    """A raw disk with random data, repeated blocks, zero runs and holes."""
    rnd = random.Random(7)
    with open(path, "wb") as f:
        f.truncate(size)
        for _i in range(20):
            off = rnd.randrange(0, size - (1 << 20)) & ~511
            f.seek(off)
            f.write(rnd.randbytes(rnd.randrange(512, 512 << 10)))
        f.seek(size - 4096)
        f.write(b"\xee" * 4096)  # the last sectors
        f.seek(8 << 20)
        f.write(b"\xab" * (1 << 20))  # the chain's child zeroes this MiB


def build_all(dest):
    base = f"{dest}/base.raw"
    make_base(base)
    out = {}
    for fmt in SUBFORMATS:
        d = f"{dest}/{fmt}"
        os.makedirs(d)
        _run("qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", f"subformat={fmt}", base,
             f"{d}/disk.vmdk")
        _run("qemu-img", "convert", "-O", "raw", f"{d}/disk.vmdk", f"{dest}/{fmt}.ref")
        out[fmt] = {"files": sorted(os.listdir(d)), "sha256": sha256_file(f"{dest}/{fmt}.ref")}
    # A backing chain: base <- child (zeroed grains allowed) <- grandchild.
    c = f"{dest}/chain"
    os.makedirs(c)
    _run("qemu-img", "convert", "-f", "raw", "-O", "vmdk", base, f"{c}/base.vmdk")
    _run("qemu-img", "create", "-f", "vmdk", "-o", "zeroed_grain=on", "-b", "base.vmdk", "-F",
         "vmdk", f"{c}/child.vmdk")
    _run("qemu-io", "-f", "vmdk", "-c", "write -P 0x5a 1M 3M", "-c", "write -z 8M 1M",
         "-c", "write -P 0x11 40M 65536", f"{c}/child.vmdk")
    _run("qemu-img", "create", "-f", "vmdk", "-b", "child.vmdk", "-F", "vmdk",
         f"{c}/grandchild.vmdk")
    _run("qemu-io", "-f", "vmdk", "-c", "write -P 0x77 2M 100k", "-c", "write -P 0x78 63M 1M",
         f"{c}/grandchild.vmdk")
    for name in ("child", "grandchild"):
        _run("qemu-img", "convert", "-O", "raw", f"{c}/{name}.vmdk", f"{dest}/{name}.ref")
        out[name] = {"sha256": sha256_file(f"{dest}/{name}.ref")}
    # Split images past 2 GiB: two extents each (data on both sides of the split).
    big = f"{dest}/big.raw"
    with open(big, "wb") as f:
        f.truncate((2 << 30) + (64 << 20))
        for off in (0, (2 << 30) - 65536, (2 << 30) + (32 << 20)):
            f.seek(off)
            f.write(random.Random(off).randbytes(131072))
    for fmt in ("twoGbMaxExtentSparse", "twoGbMaxExtentFlat"):
        d = f"{dest}/big-{fmt}"
        os.makedirs(d)
        _run("qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", f"subformat={fmt}", big,
             f"{d}/disk.vmdk")
        out[f"big-{fmt}"] = {"files": sorted(os.listdir(d))}
        _run("qemu-img", "convert", "-O", "raw", f"{d}/disk.vmdk", f"{dest}/big-{fmt}.ref")
    # Proxmox directory storage: images/<vmid>/vm-<vmid>-disk-<n>.vmdk (+ its -flat extent).
    p = f"{dest}/pve/images/101"
    os.makedirs(p)
    _run("qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=monolithicFlat",
         base, f"{p}/vm-101-disk-0.vmdk")
    _run("qemu-img", "convert", "-f", "raw", "-O", "vmdk", base, f"{p}/vm-101-disk-1.vmdk")
    out["pve"] = {"files": sorted(os.listdir(p))}
    # The same storage inside a guest filesystem (FAT, made by mtools): found by the tree
    # storage scan and read through pvfs.namespace.TreeFiles.
    g = f"{dest}/guest/images/102"
    os.makedirs(g)
    small = f"{dest}/small.raw"
    with open(small, "wb") as f:
        f.write(random.Random(102).randbytes(3 << 20))
    _run("qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=monolithicFlat",
         small, f"{g}/vm-102-disk-0.vmdk")
    _run("mkfs.fat", "-F", "16", "-C", f"{dest}/guest.img", str(16 << 10))
    subprocess.run(["mcopy", "-s", "-i", f"{dest}/guest.img", f"{dest}/guest/images", "::/"],
                   check=True, capture_output=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
    out["guest"] = {"sha256": sha256_file(small)}
    with open(f"{dest}/manifest.json", "w") as f:
        json.dump(out, f)


@pytest.fixture(scope="module")
def images():
    src = "".join(inspect.getsource(fn) for fn in (make_base, build_all))
    key = hashlib.sha256(src.encode()).hexdigest()[:16]
    return cached_build(f"vmdk-{key}", lambda tmp: build_all(str(tmp)))


def manifest(images):
    return json.loads((images / "manifest.json").read_text())


def open_image(path, bad="eio", source=None):
    files = OsFiles(FileSource)
    src = source or FileSource(path)
    return VmdkImage(src, str(path), files, bad)


def codes(img):
    return [p.code for p in img.problems]


# ------------------------------------------------------------------------------ formats
@pytest.mark.parametrize("fmt", SUBFORMATS)
def test_subformat_equals_qemu_img_convert(images, fmt):
    m = manifest(images)[fmt]
    ctx = discover([str(images / fmt)])
    disk = resolve(ctx.root, f"storage/files/{fmt}/disk.vmdk/disk.raw")
    assert isinstance(disk, File)
    assert sha256_source(disk.source) == m["sha256"]
    # the extent files are read through the descriptor, not shown as disks of their own
    shown = sorted(ctx.root.get("storage").get("files").get(fmt).children())
    assert shown == ["disk.vmdk"], (shown, m["files"])
    assert [e for e in ctx.report if e.severity != "info"] == []
    assert len([e for e in ctx.report if e.code == "companion-file"]) == len(m["files"]) - 1


def test_descriptor_given_alone_finds_its_extents(images):
    """``pvfs scan dir/disk.vmdk``: the extents are found beside the descriptor."""
    for fmt in ("monolithicFlat", "twoGbMaxExtentSparse"):
        ctx = discover([str(images / fmt / "disk.vmdk")])
        disk = resolve(ctx.root, "storage/files/disk.vmdk/disk.raw")
        assert sha256_source(disk.source) == manifest(images)[fmt]["sha256"], fmt


def test_block_status_of_sparse_and_stream(images):
    """Unallocated grains are unmapped (holes stay holes); allocated ones data."""
    for fmt in ("monolithicSparse", "streamOptimized"):
        img = open_image(images / fmt / "disk.vmdk")
        st_ = img.disk.block_status()
        unmapped = sum(n for _o, n, s in st_ if s == "unmapped")
        data = sum(n for _o, n, s in st_ if s == "data")
        assert unmapped > 16 << 20 and data > 4 << 20, fmt
        assert unmapped + data == img.disk.size


def test_backing_chain_with_zeroed_grain(images):
    m = manifest(images)
    for name in ("child", "grandchild"):
        img = open_image(images / "chain" / f"{name}.vmdk")
        assert sha256_source(img.disk) == m[name]["sha256"], name
        assert img.problems == []
    # the zeroed grain in the child reads as zeros although the base has data there
    img = open_image(images / "chain" / "child.vmdk")
    base = FileSource(images / "base.raw")
    assert base.read(8 << 20, 1 << 20) == b"\xab" * (1 << 20)
    assert img.disk.read(8 << 20, 1 << 20) == bytes(1 << 20)
    assert img.disk.block_status(8 << 20, 1 << 20) == [(8 << 20, 1 << 20, "zero")]
    assert img.info()["parent"] == "base.vmdk"


def test_split_images_over_two_extents(images):
    """>2 GiB: two extent files; compared with qemu-img convert window by window."""
    for fmt in ("twoGbMaxExtentSparse", "twoGbMaxExtentFlat"):
        d = images / f"big-{fmt}"
        assert len(manifest(images)[f"big-{fmt}"]["files"]) == 3  # descriptor + 2 extents
        img = open_image(d / "disk.vmdk")
        assert img.disk.size == (2 << 30) + (64 << 20)
        ref = FileSource(images / f"big-{fmt}.ref")  # qemu-img convert -O raw (sparse)
        assert ref.size == img.disk.size
        for off, n in ((0, 64 << 20), (2047 << 20, 34 << 20), (ref.size - (32 << 20), 32 << 20)):
            assert img.disk.read(off, n) == ref.read(off, n), (fmt, off)
        assert img.disk.read(0, 131072) == random.Random(0).randbytes(131072)


def test_proxmox_dir_storage_layout(images):
    m = manifest(images)
    ctx = discover([str(images / "pve")])
    for n, fmt in ((0, "monolithicFlat"), (1, "monolithicSparse")):
        disk = resolve(ctx.root, f"vms/101/disk-{n}.raw")
        assert isinstance(disk, File), n
        assert sha256_source(disk.source) == m[fmt]["sha256"]
    assert sorted(n for n in ctx.root.get("vms").get("101").children()
                  if n.endswith(".raw")) == ["disk-0.raw", "disk-1.raw"]
    flat = resolve(ctx.root, "storage/files/pve/images/101")
    assert "vm-101-disk-0-flat.vmdk" not in flat.children()


def test_vmdk_in_a_storage_inside_a_guest_filesystem(images):
    """images/102/ on a FAT filesystem: the descriptor opens through the node tree and its
    -flat extent is read through it, not opened as a disk of its own."""
    ctx = discover([str(images / "guest.img")])
    disk = resolve(ctx.root, "vms/102/disk-0.raw")
    assert isinstance(disk, File)
    assert sha256_source(disk.source) == manifest(images)["guest"]["sha256"]
    names = [getattr(v, "file_name", None) for v in ctx.volumes]
    assert "vm-102-disk-0.vmdk" in names and "vm-102-disk-0-flat.vmdk" not in names
    assert [e for e in ctx.report if e.layer == "vmdk"] == []


# ------------------------------------------------------------------------------ damage
def test_missing_extent_is_eio_and_reported(images, tmp_path):
    shutil.copy(images / "monolithicFlat" / "disk.vmdk", tmp_path / "disk.vmdk")
    ctx = discover([str(tmp_path)])
    disk = resolve(ctx.root, f"storage/files/{tmp_path.name}/disk.vmdk/disk.raw")
    assert isinstance(disk, File) and disk.size == 64 << 20
    with pytest.raises(UnreadableError):
        disk.source.read(0, 4096)
    assert disk.source.block_status() == [(0, 64 << 20, "unreadable")]
    e = next(e for e in ctx.report if e.layer == "vmdk")
    assert e.code == "extent-missing" and e.severity == "error"
    ctx = discover([str(tmp_path)], _options_zero())
    disk = resolve(ctx.root, f"storage/files/{tmp_path.name}/disk.vmdk/disk.raw")
    assert disk.source.read(0, 4096) == bytes(4096)


def _options_zero():
    from pvfs.discover import Options

    return Options(bad="zero")


def test_zeroed_grain_directory_uses_the_redundant_one(images):
    m = manifest(images)["monolithicSparse"]
    path = images / "monolithicSparse" / "disk.vmdk"
    src = FileSource(path)
    img = open_image(path)
    hdr = img.header
    assert hdr.rgd_offset and hdr.gd_offset
    gd_bytes = hdr.gd_entries * 4
    # zero the primary GD and the first primary grain table
    first_gt = int(img.sparse[0].gd[0]) * 512
    patched = PatchedSource(src, {hdr.gd_offset * 512: bytes(gd_bytes),
                                  first_gt: bytes(hdr.gtes * 4)})
    img2 = open_image(path, source=patched)
    assert sha256_source(img2.disk) == m["sha256"]
    assert "gd-fallback" in codes(img2)
    # only a primary grain table zeroed
    img3 = open_image(path, source=PatchedSource(src, {first_gt: bytes(hdr.gtes * 4)}))
    assert sha256_source(img3.disk) == m["sha256"]
    assert "gt-fallback" in codes(img3)


def test_bad_compressed_grain_is_eio(images):
    path = images / "streamOptimized" / "disk.vmdk"
    img = open_image(path)
    sp = img.sparse[0]
    grain = next(g for g in range(sp.size // sp.hdr.grain_bytes) if sp.grain_entry(g) > 1)
    at = sp.grain_entry(grain) * 512
    bad = PatchedSource(FileSource(path), {at + 12: b"\xff" * 64})
    img2 = open_image(path, source=bad)
    gb = sp.hdr.grain_bytes
    with pytest.raises(UnreadableError):
        img2.disk.read(grain * gb, gb)
    good = open_image(path)
    assert img2.disk.read((grain + 1) * gb, gb) == good.disk.read((grain + 1) * gb, gb)


def test_cid_mismatch_and_missing_parent(images, tmp_path):
    for n in ("base", "child"):
        shutil.copy(images / "chain" / f"{n}.vmdk", tmp_path / f"{n}.vmdk")
    raw = bytearray((tmp_path / "base.vmdk").read_bytes())
    i = raw.index(b"CID=", 512) + 4
    raw[i:i + 8] = b"0badc0de"
    (tmp_path / "base.vmdk").write_bytes(bytes(raw))
    img = open_image(tmp_path / "child.vmdk")
    assert "cid-mismatch" in codes(img)
    assert sha256_source(img.disk) == manifest(images)["child"]["sha256"]
    # a VMware-style absolute hint from another host: the parent beside the child is used
    raw = bytearray((tmp_path / "child.vmdk").read_bytes())
    start = 512 * int.from_bytes(raw[28:36], "little")  # descriptorOffset
    end = raw.index(b"\0", start)
    text = bytes(raw[start:end]).replace(b'parentFileNameHint="base.vmdk"',
                                         b'parentFileNameHint="C:\\VMs\\old\\base.vmdk"')
    raw[start:start + len(text)] = text
    (tmp_path / "child.vmdk").write_bytes(bytes(raw))
    img = open_image(tmp_path / "child.vmdk")
    assert "parent-beside" in codes(img) and "parent-missing" not in codes(img)
    assert sha256_source(img.disk) == manifest(images)["child"]["sha256"]
    os.unlink(tmp_path / "base.vmdk")
    img = open_image(tmp_path / "child.vmdk")
    assert "parent-missing" in codes(img)
    with pytest.raises(UnreadableError):
        img.disk.read(0, img.disk.size)
    assert img.disk.read(1 << 20, 4096) == b"\x5a" * 4096  # the child's own grains read


def test_descriptor_is_parsed_tolerantly():
    d = parse_descriptor(b'# Disk DescriptorFile\r\nversion=1\r\nCID = "abcd0123"\r\n'
                         b'parentCID=ffffffff\r\n  createType = "monolithicFlat"\r\n'
                         b'some junk line\r\nRW 2048 FLAT "a b.vmdk" 0\r\n'
                         b'RDONLY 100 ZERO\r\nRW 10 VMFS "x.vmdk"\r\nddb.uuid = "1 2"\r\n\0\0\0')
    assert (d.cid, d.parent_cid, d.create_type) == (0xABCD0123, 0xFFFFFFFF, "monolithicFlat")
    assert [(e.access, e.sectors, e.type, e.filename, e.offset) for e in d.extents] == [
        ("RW", 2048, "FLAT", "a b.vmdk", 0), ("RDONLY", 100, "ZERO", None, 0),
        ("RW", 10, "VMFS", "x.vmdk", 0)]
    assert d.sectors == 2158 and len(d.problems) == 1
    with pytest.raises(VmdkError):
        parse_descriptor(b"# Disk DescriptorFile\ncreateType=x\n")


# ------------------------------------------------------------------------------ fuzz
FUZZ = settings(max_examples=120, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def _open_and_read(source, path):
    try:
        img = VmdkImage(source, str(path), OsFiles(FileSource), "eio")
    except (VmdkError, UnreadableError):
        return
    assert img.disk.size <= 1 << 62
    step = max(1, img.disk.size // 16)
    for off in range(0, min(img.disk.size, 64 << 20), step):
        try:
            img.disk.read(off, 65536)
        except UnreadableError:
            pass
    img.disk.block_status(0, min(img.disk.size, 8 << 20))


@FUZZ
@given(data=st.data())
def test_fuzz_sparse_header_gd_gt(images, data):
    fmt = data.draw(st.sampled_from(["monolithicSparse", "streamOptimized"]))
    path = images / fmt / "disk.vmdk"
    base = FileSource(path)
    img = open_image(path)
    hdr = img.header
    spots = [0, hdr.gd_offset * 512 if hdr.gd_offset != 2**64 - 1 else base.size - 1536,
             int(img.sparse[0].gd[0]) * 512, base.size - 1536, 512 * 1]
    patches = {}
    for _ in range(data.draw(st.integers(1, 4))):
        where = data.draw(st.sampled_from(spots)) + data.draw(st.integers(0, 600))
        patches[min(where, base.size - 1)] = data.draw(st.binary(min_size=1, max_size=24))
    _open_and_read(PatchedSource(base, patches), path)


@FUZZ
@given(text=st.text(max_size=400), extra=st.binary(max_size=64))
def test_fuzz_descriptor(text, extra):
    blob = b"# Disk DescriptorFile\n" + text.encode("utf-8", "replace") + extra
    try:
        d = parse_descriptor(blob)
    except VmdkError:
        return
    assert all(e.sectors >= 0 for e in d.extents)


def test_probe_and_backend_open(images):
    ctx = Context()
    vol = Volume(FileSource(images / "streamOptimized" / "disk.vmdk"), "x", "x", "input")
    assert VmdkBackend().probe(vol, ctx) == 100.0
    vol2 = Volume(FileSource(images / "base.raw"), "y", "y", "input")
    assert VmdkBackend().probe(vol2, ctx) == 0.0
