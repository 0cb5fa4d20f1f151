"""btrfs reader on damaged copies of a kernel-made image (the input is never written:
damage is laid over it in memory with PatchedSource / unreadable extents).

Where the damage goes is found with btrfs-progs (dump-tree, btrfs-map-logical),
what must still be there with the kernel's view of the clean image.
"""

from __future__ import annotations

import re
import subprocess

import pytest
from btrfs_image import (
    build_image, build_two_devices, build_with_log_tree, cached_image, compare, empty_subvol_dirs,
    have_tools, kernel_view_no_log_replay, kernel_view_two_devices, loop_mounted, open_image,
    populate_small, sha256_node, time_limit, walk_mounted,
)

from pvfs.errors import UnreadableError
from pvfs.nodes import Dir, resolve
from pvfs.source import ExtentSource, FileSource, MissingSource, PatchedSource

pytestmark = pytest.mark.skipif(have_tools() is not None, reason=str(have_tools()))

NODESIZE = 16384


def dump_tree(img, tree="5") -> str:
    return subprocess.run(["btrfs", "inspect-internal", "dump-tree", "-t", tree, str(img)],
                          check=True, capture_output=True, text=True, errors="replace").stdout


def leaves(dump: str) -> dict[int, list[tuple[int, str, int]]]:
    """Leaf bytenr -> item keys, from dump-tree's text."""
    out, cur = {}, None
    for line in dump.splitlines():
        m = re.match(r"leaf (\d+) items", line)
        if m:
            cur = out.setdefault(int(m.group(1)), [])
            continue
        m = re.match(r"\s+item \d+ key \((\d+) (\w+) (\d+)\)", line)
        if m and cur is not None:
            cur.append((int(m.group(1)), m.group(2), int(m.group(3))))
    return out


def mirrors(img, logical, length=NODESIZE) -> list[int]:
    out = subprocess.run(["btrfs-map-logical", "-l", str(logical), "-b", str(length), str(img)],
                         check=True, capture_output=True, text=True).stdout
    return [int(m) for m in re.findall(r"mirror \d+ logical \d+ physical (\d+)", out)]


def root_node(dump: str) -> int:
    return int(re.search(r"^(?:node|leaf) (\d+) ", dump, re.M).group(1))


@pytest.fixture(scope="module")
def image():
    img, view = cached_image("main")
    dump = dump_tree(img)
    top_inodes = {int(k["inode"].split(":")[1]): p for p, k in view.items()
                  if p.startswith("bigdir/") and p.count("/") == 1}
    # a leaf that holds only items of files in bigdir (inode items, refs, inline data)
    leaf = next(b for b, keys in leaves(dump).items()
                if keys and all(oid in top_inodes for oid, _t, _o in keys))
    return img, view, dump, top_inodes, leaf


def test_one_copy_of_leaf_and_root_zeroed_is_repaired_from_mirror(image):
    img, view, dump, _inodes, leaf = image
    root = root_node(dump)
    patches = {mirrors(img, leaf)[0]: bytes(NODESIZE), mirrors(img, root)[0]: bytes(NODESIZE)}
    with time_limit(120):
        ctx, tree = open_image(PatchedSource(FileSource(img), patches))
        problems = compare(tree, view, empty_subvol_dirs(view))
    assert not any(problems.values()), problems
    repaired = [e for e in ctx.report if e.code == "repaired-from-mirror"]
    assert {int(re.search(r"tree block (0x[0-9a-f]+)", e.message).group(1), 16)
            for e in repaired} == {leaf, root}
    assert all(e.severity == "info" and "all zeros" in e.message for e in repaired)
    assert not [e for e in ctx.report if e.severity == "error"]


def test_unreadable_copy_is_repaired_from_mirror(image):
    img, view, _dump, _inodes, leaf = image
    f = FileSource(img)
    m1 = mirrors(img, leaf)[0]
    src = ExtentSource(f.size, [(0, m1, f, 0), (m1, NODESIZE, MissingSource(NODESIZE, "bad"), 0),
                                (m1 + NODESIZE, f.size - m1 - NODESIZE, f, m1 + NODESIZE)])
    with time_limit(120):
        ctx, tree = open_image(src)
        problems = compare(tree, view, empty_subvol_dirs(view))
    assert not any(problems.values()), problems
    e = next(e for e in ctx.report if e.code == "repaired-from-mirror")
    assert "copy 1" in e.message and "unreadable" in e.message


def test_both_copies_zeroed_lose_only_that_leaf(image):
    img, view, dump, top_inodes, leaf = image
    keys = leaves(dump)[leaf]
    lost_inodes = {oid for oid, t, _o in keys if t == "INODE_ITEM"}
    lost_names = {top_inodes[i].split("/")[1] for i in lost_inodes}
    touched = {top_inodes[oid].split("/")[1] for oid, _t, _o in keys}
    patches = {m: bytes(NODESIZE) for m in mirrors(img, leaf)}
    assert len(patches) == 2
    with time_limit(120):
        ctx, tree = open_image(PatchedSource(FileSource(img), patches))
        problems = compare(tree, view, empty_subvol_dirs(view))
    # the snapshot of the top level shares the leaf: the same files go in both
    want_missing = sorted(f"{d}/{n}" for d in ("bigdir", "snap-top/bigdir") for n in lost_names)
    assert lost_names and problems["missing"] == want_missing
    assert not problems["extra"] and not problems["wrong"]
    # a file whose inode item is in a neighbouring leaf but whose inline data was here
    assert set(problems["unreadable"]) <= {f"{d}/{n}" for d in ("bigdir", "snap-top/bigdir")
                                           for n in touched}
    lost = [e for e in ctx.report if e.code == "tree-block-lost"]
    assert len(lost) == 1 and f"{leaf:#x}" in lost[0].message
    assert sorted(lost[0].ranges) == sorted((m, NODESIZE) for m in patches)
    named = [e for e in ctx.report if e.code == "inodes-lost"]
    assert {e.path.rpartition(".files/")[2] for e in named} == {"bigdir", "snap-top/bigdir"}
    for e in named:
        assert e.message.startswith(f"{len(lost_names)} entries are not shown")
        assert all(n in e.message for n in sorted(lost_names)[:20])
    # everything else still lists and reads
    assert len(view) - len(want_missing) > 4000


def test_zeroed_primary_superblock_uses_a_mirror(image):
    img, view, _dump, _inodes, _leaf = image
    ctx, tree = open_image(PatchedSource(FileSource(img), {0x10000: bytes(4096)}))
    assert isinstance(tree, Dir)
    problems = compare(tree, view, empty_subvol_dirs(view))
    assert not any(problems.values()), problems
    e = next(e for e in ctx.report if e.code == "superblock")
    # the whole tree compares equal to the kernel's view: repaired, nothing lost
    assert (e.severity, e.outcome) == ("info", "repaired") and "0x4000000" in e.message


def _first_data_extent(dump, inode):
    m = re.search(rf"key \({inode} EXTENT_DATA (\d+)\).*?\n.*?type 1 \(regular\)\n"
                  rf"\s+extent data disk byte (\d+) nr (\d+)\n\s+extent data offset (\d+) nr (\d+)",
                  dump)
    foff, disk, _nr, off, num = map(int, m.groups())
    return foff, disk + off, num


def test_bad_data_checksum_is_eio_and_reported(image):
    img, view, dump, _inodes, _leaf = image
    ino = int(view["random.bin"]["inode"].split(":")[1])
    foff, logical, num = _first_data_extent(dump, ino)
    assert num >= 3 * 4096
    phys = mirrors(img, logical + 4096, 4096)
    assert len(phys) == 1  # data is SINGLE: no second copy
    good = FileSource(img).read(phys[0], 4096)
    ctx, tree = open_image(PatchedSource(FileSource(img), {phys[0] + 100: bytes([good[100] ^ 1])}))
    node = resolve(tree, "random.bin")
    at = foff + 4096
    assert not node.source.has_unreadable
    with pytest.raises(UnreadableError):
        node.source.read(at, 4096)
    # from now on the mount serves it with direct I/O; other files keep the page cache
    assert node.source.has_unreadable and not resolve(tree, "text-zstd.txt").source.has_unreadable
    with pytest.raises(UnreadableError):
        node.source.read(at + 4000, 200)
    assert len(node.source.read(0, at)) == at  # the sectors before still read
    assert len(node.source.read(at + 4096, 1 << 20)) == 1 << 20
    e = next(e for e in ctx.report if e.code == "data-unreadable")
    assert e.path.endswith(".files/random.bin") and "checksum mismatch" in e.message
    assert [tuple(r) for r in e.ranges] == [(phys[0], 4096)]
    # --bad zero: that sector reads as zeros, the rest as the kernel shows it
    clean_ctx, clean = open_image(FileSource(img))
    want = resolve(clean, "random.bin").source.read(0, 3 << 20)
    ctx, tree = open_image(PatchedSource(FileSource(img), {phys[0] + 100: bytes([good[100] ^ 1])}),
                           bad="zero")
    got = resolve(tree, "random.bin").source.read(0, 3 << 20)
    assert got == want[:at] + bytes(4096) + want[at + 4096:]


def test_unreadable_sector_names_the_files_on_it(image):
    img, view, dump, _inodes, _leaf = image
    ino = int(view["random.bin"]["inode"].split(":")[1])
    foff, logical, _num = _first_data_extent(dump, ino)
    phys = mirrors(img, logical + 8192, 4096)[0]
    f = FileSource(img)
    src = ExtentSource(f.size, [(0, phys, f, 0), (phys, 4096, MissingSource(4096, "bad"), 0),
                                (phys + 4096, f.size - phys - 4096, f, phys + 4096)])
    src.has_unreadable = True
    ctx, tree = open_image(src)
    e = next(e for e in ctx.report if e.code == "files-damaged")
    # random.bin, its reflinked copy (the sector is before the overwritten part) and the
    # same two in the writable snapshot of the top level
    assert e.message.startswith("4 files or directories lie on unreadable bytes: ")
    assert set(e.message.split(": ", 1)[1].split(", ")) == {
        "random.bin", "random-reflink.bin", "snap-top/random.bin", "snap-top/random-reflink.bin"}
    with pytest.raises(UnreadableError):
        resolve(tree, "snap-top/random-reflink.bin").source.read(foff + 8192, 10)


@pytest.mark.parametrize("device", [0, 1])
def test_one_device_of_two(device):
    """Metadata RAID1 over two devices, data SINGLE: either device alone lists every
    entry (each holds a copy of every tree block); files whose data lies on the other
    device read as EIO, the rest as the kernel shows them, and the report says which
    member this is."""
    img, view = cached_image("two-devices", build_two_devices, kernel_view_two_devices)
    path = [img, img.with_name(img.name + ".2")][device]
    with time_limit(120):
        ctx, tree = open_image(FileSource(path))
        problems = compare(tree, view, empty_subvol_dirs(view))
    assert not problems["missing"] and not problems["extra"] and not problems["wrong"]
    eio = set(problems["unreadable"])
    big = {p for p in view if p.startswith("big-")}
    assert eio & big and big - eio  # some data here, some on the other device
    w = next(e for e in ctx.report if e.code == "multi-device")
    assert f"device {device + 1} of 2" in w.message
    assert f"(devid {2 - device})" in w.message  # the missing member, named
    # files on the missing device read as EIO: that is a loss, said at scan time
    assert [(e.severity, e.outcome) for e in ctx.report
            if e.code == "chunks-on-other-devices"] == [("error", "lost")]
    assert (w.severity, w.outcome) == ("warning", "degraded")
    unread = [e for e in ctx.report if e.code == "data-unreadable"]
    assert unread and all("not here" in e.message for e in unread)


def test_log_tree_is_reported_not_replayed():
    """An image copied right after an fsync(): the reader shows the last commit, exactly
    what the kernel shows with ``rescue=nologreplay``, and says a log tree was not replayed."""
    img, view = cached_image("log-tree", build_with_log_tree, kernel_view_no_log_replay)
    assert "log_root\t\t0\n" not in subprocess.run(
        ["btrfs", "inspect-internal", "dump-super", str(img)], check=True, capture_output=True,
        text=True).stdout
    ctx, tree = open_image(FileSource(img))
    problems = compare(tree, view, empty_subvol_dirs(view))
    assert not any(problems.values()), problems
    assert "fsynced.txt" not in view and resolve(tree, "fsynced.txt") is None
    vol = next(v for v in ctx.volumes if v.guestfs is not None)
    assert vol.guestfs.info.journal == "log tree present, not replayed"
    assert vol.guestfs.info.clean is None
    assert any(e.code == "log-tree-not-replayed" for e in ctx.report)


def test_bad_sector_in_dup_data_is_read_from_the_other_copy():
    """mkfs.btrfs --data dup: a flipped byte in copy 1 of a data sector is taken from
    copy 2 (info entry), so the file still equals the kernel's view."""
    img, view = cached_image("small-dup-data", lambda p: build_image(
        p, size=256 << 20, mkfs_args=("--data", "dup"), fill=populate_small))
    dump = dump_tree(img)
    ino = int(view["random.bin"]["inode"].split(":")[1])
    _foff, logical, _num = _first_data_extent(dump, ino)
    phys = mirrors(img, logical + 4096, 4096)
    assert len(phys) == 2
    f = FileSource(img)
    good = f.read(phys[0], 4096)
    ctx, tree = open_image(PatchedSource(f, {phys[0] + 7: bytes([good[7] ^ 0x55])}))
    problems = compare(tree, view, empty_subvol_dirs(view))
    assert not any(problems.values()), problems
    e = next(e for e in ctx.report if e.code == "data-repaired")
    assert e.severity == "info" and "copy 1 checksum mismatch" in e.message
    assert not [e for e in ctx.report if e.severity == "error"]


def test_bad_compressed_extent_is_eio_and_reported(image):
    """A flipped byte in an lzo extent fails the checksum over the compressed bytes:
    the 128 KiB the extent holds read as EIO, the rest of the file reads."""
    img, view, dump, _inodes, _leaf = image
    ino = int(view["text-lzo.txt"]["inode"].split(":")[1])
    m = re.search(rf"key \({ino} EXTENT_DATA (\d+)\).*?\n.*?type 1 \(regular\)\n"
                  rf"\s+extent data disk byte (\d+) nr (\d+)\n.*?\n"
                  rf"\s+extent compression 2 \(lzo\)", dump)
    foff, disk, _nr = map(int, m.groups())
    phys = mirrors(img, disk, 4096)[0]
    good = FileSource(img).read(phys, 4096)
    ctx, tree = open_image(PatchedSource(FileSource(img), {phys + 40: bytes([good[40] ^ 1])}))
    src = resolve(tree, "text-lzo.txt").source
    with pytest.raises(UnreadableError):
        src.read(foff + 5000, 100)
    assert len(src.read(foff + (128 << 10), 4096)) == 4096  # the next extent is fine
    e = next(e for e in ctx.report if e.code == "data-unreadable")
    assert e.path.endswith(".files/text-lzo.txt") and "checksum mismatch" in e.message


def test_lost_dir_index_leaf_is_rebuilt_from_dir_items(image):
    """A leaf holding only DIR_INDEX items of bigdir, both copies zeroed: the names are
    found again in the hash-ordered DIR_ITEM copies, so nothing is missing."""
    img, view, dump, _inodes, _leaf = image
    bigdir = int(view["bigdir"]["inode"].split(":")[1])
    leaf = next(b for b, keys in leaves(dump).items()
                if keys and all(oid == bigdir and t == "DIR_INDEX" for oid, t, _o in keys))
    patches = {m: bytes(NODESIZE) for m in mirrors(img, leaf)}
    with time_limit(120):
        ctx, tree = open_image(PatchedSource(FileSource(img), patches))
        problems = compare(tree, view, empty_subvol_dirs(view))
    assert not any(problems.values()), problems
    assert len([e for e in ctx.report if e.code == "tree-block-lost"]) == 1
    w = [e for e in ctx.report if e.code == "dir-index-lost"]
    assert {e.path.rpartition(".files/")[2] for e in w} == {"bigdir", "snap-top/bigdir"}
    n = len(leaves(dump)[leaf])
    assert all(e.message.startswith(f"{n} entries of this directory") for e in w)


def test_unreadable_leaf_names_its_files(image):
    """Both copies of a leaf on unreadable sectors: files-damaged names the entries whose
    inode items were in it, in the top level and in the snapshot sharing it."""
    img, _view, dump, top_inodes, leaf = image
    keys = leaves(dump)[leaf]
    lost_names = {top_inodes[oid].split("/")[1] for oid, t, _o in keys if t == "INODE_ITEM"}
    f = FileSource(img)
    pieces, pos = [], 0
    for m in sorted(mirrors(img, leaf)):
        pieces += [(pos, m - pos, f, pos), (m, NODESIZE, MissingSource(NODESIZE, "bad"), 0)]
        pos = m + NODESIZE
    pieces.append((pos, f.size - pos, f, pos))
    src = ExtentSource(f.size, pieces)
    src.has_unreadable = True
    with time_limit(120):
        ctx, _tree = open_image(src)
    e = next(e for e in ctx.report if e.code == "files-damaged")
    named = set(re.sub(r" and \d+ more$", "", e.message.split(": ", 1)[1]).split(", "))
    want = {f"{d}/{n}" for d in ("bigdir", "snap-top/bigdir") for n in lost_names}
    assert e.message.startswith(f"{len(want)} files or directories")
    assert named == want or (len(want) > 50 and len(named) == 50 and named < want)


def test_lost_root_tree_falls_back_to_a_backup_root(image, tmp_path):
    """Both copies of the root tree's root block zeroed (in a copy of the image): the
    reader takes the newest backup root that reads, like the kernel's
    ``rescue=usebackuproot``, and shows what the kernel shows with it."""
    img, _view, _dump, _inodes, _leaf = image
    root = int(re.search(r"^root\s+(\d+)$", subprocess.run(
        ["btrfs", "inspect-internal", "dump-super", str(img)], check=True, capture_output=True,
        text=True).stdout, re.M).group(1))
    bad = tmp_path / "fs.img"
    subprocess.run(["cp", "--sparse=always", str(img), str(bad)], check=True)
    with open(bad, "r+b") as f:
        for m in mirrors(img, root):
            f.seek(m)
            f.write(bytes(NODESIZE))
    with loop_mounted(bad, "ro,rescue=usebackuproot,subvolid=5") as m:
        view = walk_mounted(m)
    with time_limit(120):
        ctx, tree = open_image(FileSource(bad))
        problems = compare(tree, view, empty_subvol_dirs(view))
    assert not any(problems.values()), problems
    e = next(e for e in ctx.report if e.code == "root-tree-backup")
    assert "using the backup root of generation" in e.message


def dir_entries_by_leaf(dump: str) -> dict[int, list[tuple[int, str, str, int]]]:
    """Leaf bytenr -> (dir objectid, DIR_ITEM|DIR_INDEX, name, inode) of its entries."""
    out, cur, item = {}, None, None
    for line in dump.splitlines():
        m = re.match(r"leaf (\d+) items", line)
        if m:
            cur = out.setdefault(int(m.group(1)), [])
            continue
        m = re.match(r"\s+item \d+ key \((\d+) (\w+) \d+\)", line)
        if m:
            item = (int(m.group(1)), m.group(2), None)
            continue
        m = re.match(r"\s+location key \((\d+) INODE_ITEM 0\)", line)
        if m and item is not None and item[1] in ("DIR_ITEM", "DIR_INDEX"):
            item = (item[0], item[1], int(m.group(1)))
            continue
        m = re.match(r"\s+name: (.*)$", line)
        if m and cur is not None and item is not None and item[2] is not None:
            cur.append((item[0], item[1], m.group(1), item[2]))
            item = None
    return out


def test_entries_lost_with_both_copies_land_in_lost_found(image):
    """Every leaf holding only bigdir's DIR_ITEM/DIR_INDEX items zeroed in both copies:
    the names found in neither list are gone, their inodes (intact) appear under
    .lost+found/<inode> with the kernel's bytes, in the top level and in the snapshot."""
    img, view, dump, _inodes, _leaf = image
    bigdir = int(view["bigdir"]["inode"].split(":")[1])
    by_leaf = dir_entries_by_leaf(dump)
    zero = [b for b, keys in leaves(dump).items()
            if keys and all(o == bigdir for o, _t, _f in keys)]
    survives = {(t, n) for b, es in by_leaf.items() if b not in zero for o, t, n, _i in es
                if o == bigdir}
    lost = {(n, i) for b in zero for o, t, n, i in by_leaf[b]
            if o == bigdir and t == "DIR_INDEX" and ("DIR_ITEM", n) not in survives}
    assert len(lost) > 100
    patches = {m: bytes(NODESIZE) for b in zero for m in mirrors(img, b)}
    with time_limit(120):
        ctx, tree = open_image(PatchedSource(FileSource(img), patches))
        problems = compare(tree, view, empty_subvol_dirs(view))
    assert problems["missing"] == sorted(f"{d}/{n}" for d in ("bigdir", "snap-top/bigdir")
                                         for n, _i in lost)
    assert not problems["extra"] and not problems["wrong"] and not problems["unreadable"]
    orphaned = next(e for e in ctx.report if e.code == "orphan-inodes")
    assert orphaned.severity == "warning"
    found = problems["lost+found"]
    top = {f".lost+found/{i}": n for n, i in lost}
    assert set(found) == set(top) | {p for p in found if "-" in p.rsplit("/", 1)[1]}
    assert len(found) == 2 * len(lost)  # the snapshot shares the leaves: <subvol>-<inode>
    for path, name in top.items():
        node = resolve(tree, path)
        assert sha256_node(node) == view[f"bigdir/{name}"]["sha256"]
        assert node.mode == view[f"bigdir/{name}"]["mode"]
