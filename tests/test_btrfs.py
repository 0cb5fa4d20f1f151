"""btrfs reader against the kernel's view of images made by mkfs.btrfs and a loop mount.

Every entry the kernel shows with ``subvolid=5`` (name, type, size, sha256,
mode, uid, gid, mtime/ctime in ns, symlink target, xattrs incl. POSIX ACLs,
device numbers, hard-link identity) is compared with the node tree pvfs
builds from the image bytes.
"""

from __future__ import annotations

import hashlib
import subprocess

import pytest
from btrfs_image import (
    build_image, cached_image, compare, empty_subvol_dirs, have_tools, open_image,
    populate_small, sha256_node,
)

from pvfs.nodes import Dir, resolve
from pvfs.source import FileSource

pytestmark = pytest.mark.skipif(have_tools() is not None, reason=str(have_tools()))

def dump_super(img) -> dict:
    """Numeric fields of the superblock as btrfs-progs prints them."""
    out = subprocess.run(["btrfs", "inspect-internal", "dump-super", str(img)],
                         check=True, capture_output=True, text=True, errors="replace").stdout
    fields = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            fields[parts[0]] = int(parts[1])
    return fields


@pytest.fixture(scope="module")
def main_image():
    return cached_image("main")


def test_every_entry_matches_the_kernel(main_image):
    img, view = main_image
    ctx, root = open_image(FileSource(img))
    assert isinstance(root, Dir)
    skip = empty_subvol_dirs(view)
    assert {"snaps/sub1-ro/nested", "snap-top/sub1", "snap-top/snaps/sub1-ro"} <= skip
    problems = compare(root, view, skip)
    assert not any(problems.values()), problems
    assert len(view) > 4000
    errors = [e for e in ctx.report if e.severity != "info" and e.layer == "btrfs"]
    assert not errors, errors


def test_filesystem_info(main_image):
    img, _view = main_image
    ctx, _root = open_image(FileSource(img))
    vol = next(v for v in ctx.volumes if v.guestfs is not None)
    info = vol.guestfs.info
    assert (info.fstype, info.label, info.uuid) == ("btrfs", "pvfs-btrfs",
                                                     "5b7e4a0c-6d2f-4c1e-9a43-1f0e2d3c4b5a")
    sb = dump_super(img)
    assert (info.size, info.used) == (sb["total_bytes"], sb["bytes_used"]) == \
        (320 << 20, info.used)
    assert info.clean is None and info.journal is None
    assert any("default subvolume is 256" in n for n in info.notes)
    assert any("metadata DUP" in n and "data SINGLE" in n for n in info.notes)


def test_image_has_every_kind_of_extent(main_image):
    """The comparison above is only worth something if the kernel wrote every kind of
    extent this reader decodes (btrfs-progs' dump-tree says what is on disk)."""
    img, _view = main_image
    dump = subprocess.run(["btrfs", "inspect-internal", "dump-tree", "-t", "5", str(img)],
                          check=True, capture_output=True, text=True, errors="replace").stdout
    for kind in ("zlib", "lzo", "zstd"):
        assert f"extent compression {S_COMPRESS[kind]} ({kind})" in dump, kind
    for kind in ("lzo", "zstd", "none"):
        assert f"compression {S_COMPRESS[kind]} ({kind})" in "\n".join(
            line for line in dump.splitlines() if "inline extent data" in line), kind
    assert "type 2 (prealloc)" in dump and "type 1 (regular)" in dump


S_COMPRESS = {"none": 0, "zlib": 1, "lzo": 2, "zstd": 3}


VARIANTS = {
    "xxhash": ("--csum", "xxhash"),
    "sha256": ("--csum", "sha256"),
    "blake2": ("--csum", "blake2"),
    "mixed-4k-nodes": ("--mixed",),  # data and metadata in the same chunks, 4 KiB nodes
    "64k-nodes": ("--nodesize", "65536"),
    "dup-data": ("--data", "dup"),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_mkfs_variants(variant):
    """Checksum types, mixed block groups, node sizes and DUP data, each equal to the
    kernel's view."""
    img, view = cached_image(f"small-{variant}", lambda p: build_image(
        p, size=256 << 20, mkfs_args=VARIANTS[variant], fill=populate_small))
    ctx, root = open_image(FileSource(img))
    problems = compare(root, view, empty_subvol_dirs(view))
    assert not any(problems.values()), problems
    assert len(view) > 50
    notes = next(v for v in ctx.volumes if v.guestfs is not None).guestfs.info.notes
    sb = dump_super(img)
    if variant in ("xxhash", "sha256", "blake2"):
        name = {"xxhash": "xxhash64", "sha256": "sha256", "blake2": "blake2b"}[variant]
        assert any(n.startswith(f"checksums {name};") for n in notes)
    elif variant == "mixed-4k-nodes":
        assert sb["nodesize"] == 4096 and any("data+metadata" in n for n in notes)
    elif variant == "64k-nodes":
        assert sb["nodesize"] == 65536
    else:
        assert any("data DUP" in n for n in notes)
    assert not [e for e in ctx.report if e.severity != "info"]


@pytest.mark.parametrize("decoder", ["lzallright", "lzokay"])
def test_lzo_files_with_each_decoder(main_image, monkeypatch, decoder):
    """Both LZO1X decoders (lzallright on Python >= 3.11, lzokay on 3.10) give the
    kernel's bytes for the lzo files, inline ones included."""
    from backends.btrfs import compress

    pytest.importorskip(decoder)
    if decoder == "lzokay":
        monkeypatch.setattr(compress, "_lzallright", None)
    img, view = main_image
    _ctx, root = open_image(FileSource(img))
    for rel in ("text-lzo.txt", "mixed-lzo.bin", "inline-lzo.txt"):
        assert sha256_node(resolve(root, rel)) == view[rel]["sha256"], rel


def test_concurrent_reads_from_threads(main_image):
    """The mount reads from several threads at once: 8 threads hashing the big and
    compressed files in interleaved 64 KiB pieces get the kernel's bytes."""
    import threading

    img, view = main_image
    _ctx, root = open_image(FileSource(img))
    names = ["random.bin", "random-reflink.bin", "text-zstd.txt", "text-lzo.txt",
             "text-zlib.txt", "mixed-lzo.bin", "sparse.bin", "snaps/sub1-ro/in-sub1.txt"]
    got, errors = {}, []

    def work(rel):
        try:
            src = resolve(root, rel).source
            pieces = {}
            for off in range(0, src.size, 1 << 16):
                pieces[off] = src.read(off, 1 << 16)
            got[rel] = hashlib.sha256(b"".join(pieces[o] for o in sorted(pieces))).hexdigest()
        except Exception as e:  # reported below
            errors.append((rel, e))

    threads = [threading.Thread(target=work, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert got == {n: view[n]["sha256"] for n in names}


def test_scan_text_and_report_json(main_image):
    """What ``pvfs scan`` says about the filesystem, and report.json's fields."""
    from pvfs.report import report_doc, report_text

    img, _view = main_image
    ctx, _root = open_image(FileSource(img))
    used = dump_super(img)["bytes_used"] / (1 << 20)
    assert (f"files: storage/files/p1.files  [btrfs, label 'pvfs-btrfs', UUID "
            f"5b7e4a0c-6d2f-4c1e-9a43-1f0e2d3c4b5a, {used:.1f} MiB of 320.0 MiB used, "
            f"no damaged files]") in report_text(ctx)
    entry = next(v for v in report_doc(ctx)["volumes"] if v["path"] == "storage/files/p1")
    fs = entry["guest_filesystem"]
    assert (fs["type"], fs["clean"], fs["journal"], fs["damaged_files"]) == \
        ("btrfs", None, None, 0)
