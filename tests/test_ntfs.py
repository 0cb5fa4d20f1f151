"""NTFS reader (backends/ntfs) against ntfs-3g's view of images made by mkntfs.

The image is made by mkntfs and filled through ntfs-3g's FUSE mount (compressed
directory, sparse files, alternate data streams, hard links, Interix symlinks
and devices as ntfs-3g writes them, reparse-point symlinks and a junction set
through ``system.ntfs_reparse_data``, a DOS 8.3 name, 1960/2100 times); the ground
truth is ntfs-3g's read-only mount walked with lstat/readlink/listxattr/sha256.
Both are cached under the fixture cache, keyed by this build script.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import CACHE, IN_CI, gpt_disk_with_bad_block
from hypothesis import given, settings
from hypothesis import strategies as hst

from pvfs.ddrescue import BadRangeSource
from pvfs.discover import Context, Volume, discover
from pvfs.errors import UnreadableError
from pvfs.nodes import Dir, File, Special, Symlink, resolve, time_ns, walk
from pvfs.source import FileSource, PatchedSource

NTFS_TOOLS = all(shutil.which(t) for t in ("mkntfs", "ntfs-3g", "setfattr"))
needs_tools = pytest.mark.skipif((not NTFS_TOOLS or os.geteuid() != 0 or
                                  not os.path.exists("/dev/fuse")) and not IN_CI,
                                 reason="needs root, /dev/fuse, ntfs-3g and attr "
                                        "(backends/ntfs/deps-apt.txt)")
pytestmark = needs_tools

REPARSE_PY = r'''
import struct, sys
def symlink(sub, prt, relative):
    s = sub.encode("utf-16-le"); p = prt.encode("utf-16-le")
    body = struct.pack("<HHHHI", 0, len(s), len(s), len(p), 1 if relative else 0) + s + p
    return struct.pack("<IHH", 0xA000000C, len(body), 0) + body
def junction(sub, prt):
    s = sub.encode("utf-16-le"); p = prt.encode("utf-16-le")
    body = struct.pack("<HHHH", 0, len(s), len(s) + 2, len(p)) + s + b"\0\0" + p + b"\0\0"
    return struct.pack("<IHH", 0xA0000003, len(body), 0) + body
kind = sys.argv[1]
if kind == "rel":
    d = symlink("..\\docs\\hello.txt", "..\\docs\\hello.txt", True)
elif kind == "abs":
    d = symlink("\\??\\C:\\docs\\hello.txt", "C:\\docs\\hello.txt", False)
else:
    d = junction("\\??\\C:\\docs", "C:\\docs")
sys.stdout.write("0x" + d.hex())
'''

BUILD = r'''
set -eu
IMG=$1; MNT=$2; RP=$3
truncate -s 96M "$IMG"
mkntfs -F -f -q -L pvfs-ntfs -s 512 -c 4096 "$IMG" >/dev/null 2>&1
ntfs-3g -o streams_interface=xattr "$IMG" "$MNT"
cd "$MNT"
mkdir -p docs/deep/er/still "Program Files/App" many comp reparse
printf 'hello\n' > docs/hello.txt
ln docs/hello.txt docs/hello-link
ln docs/hello.txt hl3
head -c 4194304 /dev/urandom > big.bin
head -c 700 /dev/urandom > docs/small.bin
for i in $(seq 1 400); do printf 'file %s\n' "$i" > "many/f$i.txt"; done
LONG=$(printf '%0250d' 0 | tr 0 n).txt
printf 'long\n' > "$LONG"
printf 'u\n' > "Grüße 日本語 😀.txt"
printf 'nfd\n' > "$(printf 'e\xcc\x81t\xc3\xa9.txt')"
printf 'dos\n' > "long file name.txt"
setfattr -n system.ntfs_dos_name -v 'LONGFI~1.TXT' "long file name.txt"
ln -s docs/hello.txt link-rel
ln -s /etc/passwd link-abs
ln -s docs dirlink
ln -s "$(printf '%0200d' 0 | tr 0 t)/x" link-long
ln -s "ünï/código" link-uni
ln -s ../../docs docs/deep/er/up
setfattr -n user.small -v hi docs/hello.txt
setfattr -n user.Zone.Identifier -v '[ZoneTransfer]
ZoneId=3' big.bin
setfattr -n user.big -v "0x$(head -c 60000 /dev/urandom | od -An -v -tx1 | tr -d ' \n')" docs/small.bin
setfattr -n user.ondir -v dirstream docs
setfattr -h -v 0x00000810 -n system.ntfs_attrib_be comp
seq 1 200000 > comp/text.txt
head -c 300000 /dev/urandom > comp/random.bin
printf 'tiny\n' > comp/tiny.txt
truncate -s 20M sparse.bin
printf 'middle' | dd of=sparse.bin bs=1 seek=10485760 conv=notrunc status=none
printf 'end' | dd of=sparse.bin bs=1 seek=20971000 conv=notrunc status=none
truncate -s 5M allhole.bin
python3 -c '
import os
with open("frag.bin", "wb") as f:
    for i in range(3000):
        f.seek(i * 8192)
        f.write(os.urandom(4096))
'
truncate -s 3M leadhole.bin
printf 'tail' >> leadhole.bin
mkfifo fifo
mknod chr c 1 3
mknod blk b 8 1
printf 'old\n' > old.txt; touch -m -d '1960-05-01 12:00:00.1234567 UTC' old.txt
printf 'future\n' > future.txt; touch -m -d '2100-01-01 00:00:00.9876543 UTC' future.txt
printf 'ns\n' > ns.txt; touch -m -d '@1700000000.123456789' ns.txt
printf 'ro\n' > ro.txt; setfattr -h -v 0x00000001 -n system.ntfs_attrib_be ro.txt
touch reparse/rel reparse/abs; mkdir reparse/junc
for k in rel abs junc; do
  setfattr -h -n system.ntfs_reparse_data -v "$(python3 "$RP" $k)" "reparse/$k"
done
cd /
umount "$MNT"
'''

WALKER_VERSION = "2"


def _walk_truth(mnt: str) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(mnt):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, mnt)
            try:
                st = os.lstat(p)
            except OSError as e:
                out[rel] = {"error": e.errno, "readlink": os.fsencode(os.readlink(p)).hex()}
                continue
            e = {"mode": st.st_mode, "size": st.st_size, "ino": st.st_ino, "nlink": st.st_nlink,
                 "mtime_ns": st.st_mtime_ns, "atime_ns": st.st_atime_ns,
                 "ctime_ns": st.st_ctime_ns, "rdev": st.st_rdev, "blocks": st.st_blocks,
                 "xattrs": {}}
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    e["sha256"] = hashlib.file_digest(f, "sha256").hexdigest()
            if stat.S_ISLNK(st.st_mode):
                e["target"] = os.fsencode(os.readlink(p)).hex()
            if not stat.S_ISLNK(st.st_mode):
                for x in os.listxattr(p, follow_symlinks=False):
                    e["xattrs"][x] = os.getxattr(p, x, follow_symlinks=False).hex()
            out[rel] = e
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
    return out


def build_image() -> tuple[Path, dict]:
    """The image and ntfs-3g's view of it, built once per build script."""
    key = hashlib.sha256((BUILD + REPARSE_PY + WALKER_VERSION).encode()).hexdigest()[:16]
    d = CACHE / f"ntfs-{key}"
    img, truth = d / "ntfs.img", d / "truth.json"
    if truth.exists():
        return img, json.loads(truth.read_text())
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="ntfs-build-", dir=CACHE))
    mnt = tmp / "mnt"
    mnt.mkdir()
    rp = tmp / "rp.py"
    rp.write_text(REPARSE_PY)
    try:
        subprocess.run(["bash", "-c", BUILD, "build", str(tmp / "ntfs.img"), str(mnt), str(rp)],
                       check=True, capture_output=True, timeout=300)
        subprocess.run(["ntfs-3g", "-o", "ro,streams_interface=xattr", str(tmp / "ntfs.img"),
                        str(mnt)], check=True, capture_output=True, timeout=60)
        try:
            data = _walk_truth(str(mnt))
            root_st = os.stat(mnt)
            data[""] = {"ino": root_st.st_ino, "mtime_ns": root_st.st_mtime_ns}
        finally:
            subprocess.run(["umount", str(mnt)], check=False, timeout=60)
        (tmp / "truth.json").write_text(json.dumps(data))
        shutil.rmtree(d, ignore_errors=True)
        (tmp / "rp.py").unlink()
        mnt.rmdir()
        tmp.rename(d)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return img, json.loads(truth.read_text())


@pytest.fixture(scope="module")
def ntfs_image():
    return build_image()


def open_fs(source):
    """Open the NTFS backend on ``source`` outside discovery (damage injected below it)."""
    from backends.ntfs.backend import NtfsBackend

    ctx = Context()
    vol = Volume(source, "t", "t", "disk")
    NtfsBackend().open(vol, ctx)
    return ctx, vol.guestfs, vol.guestfs_root


def _sha(node):
    h = hashlib.sha256()
    for off in range(0, node.size, 1 << 20):
        h.update(node.source.read(off, 1 << 20))
    return h.hexdigest()


def _reparse_expected(path, ntfs3g_target: bytes, mnt_prefix: bytes) -> bytes:
    """ntfs-3g writes ``<mountpoint>/x`` for a drive-absolute target; pvfs writes the
    relative path from the link to the same place."""
    if not ntfs3g_target.startswith(b"/"):
        return ntfs3g_target
    inside = os.path.relpath(ntfs3g_target, mnt_prefix)
    return os.fsencode(os.path.relpath(os.fsdecode(inside), os.path.dirname(path) or "."))


def _ntfs3g_ns(ns: int) -> int:
    """ntfs-3g drops the fraction of a second of times before 1970 (its timespec
    conversion truncates toward zero and then loses a negative tv_nsec)."""
    if ns >= 0:
        return ns
    return -((-ns) // 10**9) * 10**9


def compare_tree(root: Dir, truth: dict, skip=()) -> int:
    """Assert every entry of ntfs-3g's view equals pvfs's; returns how many were compared."""
    ours = {p: n for p, n in walk(root) if p and not p.startswith(".lost+found")}
    theirs = {p: e for p, e in truth.items() if p and not any(p == s or p.startswith(s + "/")
                                                               for s in skip)}
    ours = {p: n for p, n in ours.items() if not any(p == s or p.startswith(s + "/")
                                                      for s in skip)}
    assert sorted(ours) == sorted(theirs)
    by_ino = {}
    for path, e in theirs.items():
        node = ours[path]
        if "error" in e:  # ntfs-3g lists a hand-made reparse point but fails lstat on it
            assert isinstance(node, Symlink), path
            continue
        mode = e["mode"]
        assert stat.S_IFMT(node.mode) == stat.S_IFMT(mode), path
        want_perm = 0o777 if stat.S_ISLNK(mode) else 0o555 if stat.S_ISDIR(mode) else 0o444
        assert stat.S_IMODE(node.mode) == want_perm, path
        for what in ("mtime", "ctime", "atime"):
            assert _ntfs3g_ns(time_ns(getattr(node, what))) == e[f"{what}_ns"], (path, what)
        assert {k.decode(): v.hex() for k, v in node.xattrs.items()} == e["xattrs"], path
        if stat.S_ISREG(mode):
            assert node.size == e["size"], path
            assert _sha(node) == e["sha256"], path
            assert node.nlink == e["nlink"], path
            assert (node.allocated_bytes() + 511) // 512 == e["blocks"], path
        elif stat.S_ISLNK(mode):
            assert node.target == bytes.fromhex(e["target"]), path
            assert node.size == e["size"], path
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            assert node.rdev == e["rdev"], path
        by_ino.setdefault(e["ino"], set()).add(id(node))
    for ino, ids in by_ino.items():
        assert len(ids) == 1, f"hard links of inode {ino} are not one node"
    return len(theirs)


def test_whole_tree_equals_ntfs3g(ntfs_image):
    img, truth = ntfs_image
    ctx = discover([str(img)])
    vol = next(v for v in ctx.filesystems)
    fs = vol.guestfs
    assert vol.files_paths == [f"storage/files/{img.name}/disk.files"]
    assert fs.info.fstype == "ntfs" and fs.info.label == "pvfs-ntfs"
    assert fs.info.size == 96 * 2**20 - 512 and fs.info.clean is True
    assert 4 * 2**20 < fs.info.used < 40 * 2**20
    blkid = subprocess.run(["blkid", "-o", "value", "-s", "UUID", str(img)],
                           capture_output=True, text=True).stdout.strip()
    if blkid:
        assert fs.info.uuid == blkid
    root = resolve(ctx.root, vol.files_paths[0])
    n = compare_tree(root, truth, skip=("reparse",))
    assert n > 430
    assert not [e for e in ctx.report if e.severity == "error"]
    # the pieces the scope names, checked by name so a regression says which
    assert resolve(root, "docs/hello-link") is resolve(root, "hl3")
    assert resolve(root, "hl3").nlink == 3
    assert "LONGFI~1.TXT" not in root.children()
    big = resolve(root, "big.bin")
    assert big.source.block_status(0, big.size)[0][2] == "data"
    sparse = resolve(root, "sparse.bin")
    assert any(s == "unmapped" for _, _, s in sparse.source.block_status())
    assert resolve(root, "allhole.bin").allocated_bytes() == 0
    assert type(resolve(root, "comp/text.txt").source).__name__ == "LibrarySource"
    assert resolve(root, "comp/text.txt").allocated_bytes() < resolve(root, "comp/text.txt").size
    # the true times from the build script (1960 keeps its 100 ns, unlike ntfs-3g's view)
    assert time_ns(resolve(root, "old.txt").mtime) == -305121600 * 10**9 + 123456700
    assert time_ns(resolve(root, "future.txt").mtime) == 4102444800 * 10**9 + 987654300


def test_reparse_points_map_like_ntfs3g(ntfs_image):
    """Symlink and junction reparse points become symlinks whose target reaches what
    ntfs-3g's readlink reaches (ntfs-3g says ``<mountpoint>/docs``, pvfs ``../docs``)."""
    img, truth = ntfs_image
    _ctx, _fs, root = open_fs(FileSource(img))
    mnt_prefix = b"/__mnt__"
    for name in ("rel", "abs", "junc"):
        path = f"reparse/{name}"
        node = resolve(root, path)
        assert isinstance(node, Symlink), path
        e = truth[path]
        raw = bytes.fromhex(e.get("target") or e["readlink"])
        # ntfs-3g's absolute answer began with the build mount point; re-root it
        if raw.startswith(b"/"):
            mnt = raw[: raw.index(b"/docs")]
            raw = mnt_prefix + raw[len(mnt):]
        assert node.target == _reparse_expected(path, raw, mnt_prefix), path
    assert resolve(root, "reparse/rel").target == b"../docs/hello.txt"
    assert resolve(root, "reparse/junc").target == b"../docs"


def _find_record(img: Path, boot_off=0):
    import struct

    with open(img, "rb") as f:
        f.seek(boot_off)
        bs = f.read(512)
    bps, spc = struct.unpack_from("<HB", bs, 11)
    mft_lcn, mirr_lcn = struct.unpack_from("<qq", bs, 48)
    return bps * spc, mft_lcn * bps * spc, mirr_lcn * bps * spc


def test_mft_record0_zeroed_uses_mirror(ntfs_image):
    img, truth = ntfs_image
    _cluster, mft, _mirr = _find_record(img)
    src = PatchedSource(FileSource(img), {mft: bytes(1024)})
    ctx, fs, root = open_fs(src)
    assert compare_tree(root, truth, skip=("reparse",)) > 430
    errs = [e for e in ctx.report if e.severity == "error"]
    assert [e.code for e in errs] == ["bad-mft-record"]
    assert "$MFTMirr copy is used" in errs[0].message


def test_mft_record0_unreadable_uses_mirror(ntfs_image):
    img, truth = ntfs_image
    _cluster, mft, _mirr = _find_record(img)
    src = BadRangeSource(FileSource(img), [(mft, 1024)])
    _ctx, _fs, root = open_fs(src)
    assert compare_tree(root, truth, skip=("reparse",)) > 430


def test_boot_sector_zeroed_uses_backup(ntfs_image):
    img, truth = ntfs_image
    src = PatchedSource(FileSource(img), {0: bytes(512)})
    ctx, _fs, root = open_fs(src)
    assert compare_tree(root, truth, skip=("reparse",)) > 430
    # every file compares equal: the backup gave everything back (repaired, no loss)
    assert [e.code for e in ctx.report if e.severity == "error"] == []
    assert [(e.severity, e.outcome) for e in ctx.report if e.code == "bad-boot-sector"] == [
        ("info", "repaired")]


def test_one_bad_record_is_one_damage_entry(ntfs_image):
    img, truth = ntfs_image
    ino = truth["docs/small.bin"]["ino"]
    _c, mft, _m = _find_record(img)
    for how in ("zero", "garbage", "unreadable"):
        off = mft + ino * 1024
        base = FileSource(img)
        if how == "zero":
            src = PatchedSource(base, {off: bytes(1024)})
        elif how == "garbage":
            src = PatchedSource(base, {off: os.urandom(1024)})
        else:
            src = BadRangeSource(base, [(off, 1024)])
        ctx, fs, root = open_fs(src)
        compare_tree(root, truth, skip=("reparse", "docs/small.bin"))
        assert resolve(root, "docs/small.bin") is None
        errs = [e for e in ctx.report if e.severity == "error"]
        assert len(errs) == 1, (how, errs)
        # the name comes from the index; with the record unreadable the library gives none
        assert errs[0].path.endswith("/docs/small.bin" if how != "unreadable" else "/docs")
        assert f"MFT entry: {ino}" in errs[0].message or f"MFT record {ino}" in errs[0].message
        assert list(resolve(root, ".lost+found").children()) == []


def test_bad_hard_linked_record_is_one_damage_entry(ntfs_image):
    img, truth = ntfs_image
    ino = truth["hl3"]["ino"]
    _c, mft, _m = _find_record(img)
    ctx, _fs, root = open_fs(PatchedSource(FileSource(img), {mft + ino * 1024: bytes(1024)}))
    lost = ("docs/hello.txt", "docs/hello-link", "hl3")
    compare_tree(root, truth, skip=("reparse", *lost))
    errs = [e for e in ctx.report if e.severity == "error"]
    assert len(errs) == 1 and f"MFT record {ino}" in errs[0].message, errs


def test_damaged_index_block_entries_found_by_parent_reference(ntfs_image):
    """An index block of many/ (400 entries) zeroed or unreadable: libfsntfs cannot open
    the directory at all; pvfs lists it from its children's $FILE_NAME parent
    references, so every entry is still there under its name: nothing is lost, and one
    warning (degraded: the index itself is gone) says why."""
    img, truth = ntfs_image
    needle = "f123.txt".encode("utf-16-le")
    with open(img, "rb") as f:
        data = f.read()
    blocks = [pos for pos in range(0, len(data), 4096)
              if data[pos:pos + 4] == b"INDX" and needle in data[pos:pos + 4096]]
    assert len(blocks) == 1
    for src in (PatchedSource(FileSource(img), {blocks[0]: bytes(4096)}),
                BadRangeSource(FileSource(img), [(blocks[0], 4096)])):
        ctx, _fs, root = open_fs(src)
        assert compare_tree(root, truth, skip=("reparse",)) > 430
        assert not [e for e in ctx.report if e.severity == "error"]
        errs = [e for e in ctx.report if e.code == "bad-directory-index"]
        assert [(e.severity, e.outcome) for e in errs] == [("warning", "degraded")], errs
        assert errs[0].path.endswith("/many")
        assert list(resolve(root, ".lost+found").children()) == []


def test_root_record_zeroed_tree_found_by_parent_reference(ntfs_image):
    """MFT record 5 (the root directory, not in $MFTMirr) zeroed: the top-level entries
    are found through their $FILE_NAME parent references; the whole tree is equal."""
    img, truth = ntfs_image
    _c, mft, _m = _find_record(img)
    ctx, _fs, root = open_fs(PatchedSource(FileSource(img), {mft + 5 * 1024: bytes(1024)}))
    assert compare_tree(root, truth, skip=("reparse",)) > 430
    assert not [e for e in ctx.report if e.severity == "error"]
    errs = [e for e in ctx.report if e.code == "bad-directory-index"]
    assert [(e.severity, e.outcome) for e in errs] == [("warning", "degraded")], errs
    assert "MFT record 5" in errs[0].message


def test_lost_directory_found_by_record(ntfs_image):
    """A directory whose parent's index entry is gone is found by scanning the MFT."""
    img, truth = ntfs_image
    rec = truth["docs/deep"]["ino"]
    parent = truth["docs"]["ino"]
    _c, mft, _m = _find_record(img)
    src = PatchedSource(FileSource(img), {mft + parent * 1024: bytes(1024)})
    ctx, fs, root = open_fs(src)
    assert resolve(root, "docs") is None
    lost = resolve(root, ".lost+found")
    found = lost.children()
    assert str(rec) in found
    assert isinstance(resolve(lost, f"{rec}/er/still"), Dir)
    assert str(truth["docs/small.bin"]["ino"]) in found
    # hello.txt is still reached through its hard link hl3 in the root: not lost
    assert str(truth["docs/hello.txt"]["ino"]) not in found
    assert any(e.code == "lost-records" for e in ctx.report)


def test_bad_sectors_in_file_data_hit_only_that_file(ntfs_image):
    img, truth = ntfs_image
    _ctx, fs, root = open_fs(FileSource(img))
    big = resolve(root, "big.bin")
    (_fo, _ln, _t, disk_off), = [e for e in big.source.extents if e[0] <= 1 << 20 < e[0] + e[1]]
    bad = (disk_off + (1 << 20) - big.source.extents[0][0] - 0, 4096)
    ext = next(e for e in big.source.extents if e[0] <= (1 << 20) < e[0] + e[1])
    bad = (ext[3] + (1 << 20) - ext[0], 4096)
    src = BadRangeSource(FileSource(img), [bad])
    ctx, fs, root = open_fs(src)
    big = resolve(root, "big.bin")
    with pytest.raises(UnreadableError):
        big.source.read(1 << 20, 4096)
    assert len(big.source.read(0, 1 << 20)) == 1 << 20
    assert compare_tree(root, truth, skip=("reparse", "big.bin")) > 430
    names, total = fs.files_in_ranges([bad])
    assert names == ["big.bin"] and total == 1
    rec_off = fs.mft_record_offset(truth["docs/hello.txt"]["ino"])
    assert fs.files_in_ranges([(rec_off, 1024)])[0][0] in ("docs/hello.txt",
                                                            "docs/hello-link", "hl3")


def test_bad_sectors_in_compressed_file_raise(ntfs_image):
    img, truth = ntfs_image
    _ctx, fs, root = open_fs(FileSource(img))
    with fs.lock:
        e = fs.volume.get_file_entry(truth["comp/random.bin"]["ino"])
        off = e.get_extent(0)[0]
    ctx, fs, root = open_fs(BadRangeSource(FileSource(img), [(off, 4096)]))
    node = resolve(root, "comp/random.bin")
    with pytest.raises(UnreadableError):
        node.source.read(0, node.size)
    text = resolve(root, "comp/text.txt")
    assert hashlib.sha256(text.source.read(0, text.size)).hexdigest() == \
        truth["comp/text.txt"]["sha256"]
    assert "comp/random.bin" in fs.files_in_ranges([(off, 4096)])[0]


def test_fragmented_file_with_attribute_list(ntfs_image):
    """3 000 runs do not fit one MFT record: the run list continues in extension
    records (an $ATTRIBUTE_LIST); data, holes and damage mapping still follow it."""
    img, truth = ntfs_image
    _ctx, fs, root = open_fs(FileSource(img))
    frag = resolve(root, "frag.bin")
    assert len(frag.source.extents) == 3000
    assert _sha(frag) == truth["frag.bin"]["sha256"]
    last = frag.source.extents[-1]
    assert fs.files_in_ranges([(last[3], 4096)]) == (["frag.bin"], 1)


def test_threads_read_compressed_and_plain_files_at_once(ntfs_image):
    """The library is not thread-safe: the per-volume lock must keep concurrent reads
    of LZNT1 files (library) and plain files (ExtentSource) correct."""
    from concurrent.futures import ThreadPoolExecutor

    img, truth = ntfs_image
    _ctx, _fs, root = open_fs(FileSource(img))
    paths = ["comp/text.txt", "comp/random.bin", "big.bin", "docs/small.bin"] * 4

    def digest(p):
        node = resolve(root, p)
        h = hashlib.sha256()
        for off in range(0, node.size, 128 << 10):
            h.update(node.source.read(off, 128 << 10))
        return h.hexdigest() == truth[p]["sha256"]

    with ThreadPoolExecutor(4) as ex:
        assert all(ex.map(digest, paths))


def test_speed_and_listing(ntfs_image):
    """Reads of uncompressed data go straight to the volume (no library call)."""
    img, _truth = ntfs_image
    _ctx, _fs, root = open_fs(FileSource(img))
    t = time.perf_counter()
    names = list(resolve(root, "many").children())
    assert len(names) == 400
    assert time.perf_counter() - t < 2.0
    big = resolve(root, "big.bin")
    t = time.perf_counter()
    for _ in range(8):
        for off in range(0, big.size, 128 << 10):
            big.source.read(off, 128 << 10)
    mbps = 8 * big.size / (time.perf_counter() - t) / 1e6
    print(f"ntfs: {mbps:.0f} MB/s through the ExtentSource (128 KiB reads)")
    assert mbps > 100


def test_dirty_flags_are_reported(ntfs_image):
    import struct

    img, _truth = ntfs_image
    _c, mft, _m = _find_record(img)
    with open(img, "rb") as f:
        f.seek(mft + 3 * 1024)
        rec = bytearray(f.read(1024))
    usa_ofs, usa_cnt = struct.unpack_from("<HH", rec, 4)
    for i in range(1, usa_cnt):  # undo the fixups to edit, then redo them
        rec[i * 512 - 2:i * 512] = rec[usa_ofs + 2 * i:usa_ofs + 2 * i + 2]
    pos = struct.unpack_from("<H", rec, 20)[0]
    while struct.unpack_from("<I", rec, pos)[0] != 0x70:
        pos += struct.unpack_from("<I", rec, pos + 4)[0]
    voff = struct.unpack_from("<H", rec, pos + 20)[0]
    struct.pack_into("<H", rec, pos + voff + 10, 1)  # VOLUME_IS_DIRTY
    for i in range(1, usa_cnt):
        rec[usa_ofs + 2 * i:usa_ofs + 2 * i + 2] = rec[i * 512 - 2:i * 512]
        rec[i * 512 - 2:i * 512] = rec[usa_ofs:usa_ofs + 2]
    # $MFTMirr holds record 3 too; a dirty flag is set in both by Windows
    _c, mft, mirr = _find_record(img)
    src = PatchedSource(FileSource(img), {mft + 3 * 1024: bytes(rec), mirr + 3 * 1024: bytes(rec)})
    ctx, fs, _root = open_fs(src)
    assert fs.info.clean is False
    assert any("dirty" in n for n in fs.info.notes)


def test_partition_of_a_vm_disk_with_bad_sectors(ntfs_image, tmp_path):
    """NTFS in partition 1 of a GPT VM disk with a ddrescue mapfile: the files show at
    vms/100/disk-0.files/p1/ and the report names the file the bad sectors hit."""
    img, truth = ntfs_image
    _ctx, _fs, root = open_fs(FileSource(img))
    big = resolve(root, "big.bin")
    ext = next(e for e in big.source.extents if e[0] <= (1 << 20) < e[0] + e[1])
    bad = (1 << 20) + ext[3] + (1 << 20) - ext[0]  # partition 1 starts at 1 MiB
    disk = tmp_path / "vm-100-disk-0.raw"
    gpt_disk_with_bad_block(img, disk, "EBD0A0A2-B9E5-4433-87C0-68B6B7269974", bad)
    ctx = discover([str(disk)])
    base = "vms/100/disk-0.files/p1"
    node = resolve(ctx.root, f"{base}/big.bin")
    with pytest.raises(UnreadableError):
        node.source.read(1 << 20, 4096)
    hello = resolve(ctx.root, f"{base}/docs/hello.txt")
    assert hello.source.read(0, 100) == b"hello\n"
    e = next(e for e in ctx.report if e.code == "files-damaged")
    assert e.message == "1 files or directories lie on unreadable bytes: big.bin"
    assert ctx.filesystems[0].guestfs.info.damaged_files == 1


def _restart_page(in_use: int, flags: int) -> bytes:
    """A $LogFile restart page as ntfs-3g's logfile.h lays it out (what Windows leaves
    after a crash: a client in use and no RESTART_VOLUME_IS_CLEAN)."""
    import struct

    page = bytearray(4096)
    usa_ofs, usa_count, ra_ofs = 30, 9, 48
    struct.pack_into("<4sHHQIIHhh", page, 0, b"RSTR", usa_ofs, usa_count, 0, 4096, 4096,
                     ra_ofs, 1, 1)
    struct.pack_into("<QHHHH", page, ra_ofs, 0x1234, 1, 0xFFFF, in_use, flags)
    usn = b"\x07\x00"
    page[usa_ofs:usa_ofs + 2] = usn
    for i in range(1, usa_count):
        page[usa_ofs + 2 * i:usa_ofs + 2 * i + 2] = page[i * 512 - 2:i * 512]
        page[i * 512 - 2:i * 512] = usn
    return bytes(page)


def test_dirty_logfile_is_reported(ntfs_image):
    img, _truth = ntfs_image
    _ctx, fs, _root = open_fs(FileSource(img))
    with fs.lock:
        log_off = fs.volume.get_file_entry(2).get_extent(0)[0]
    ctx, fs, _root = open_fs(PatchedSource(FileSource(img), {log_off: _restart_page(0, 0)}))
    assert fs.info.clean is False and "not replayed" in fs.info.journal
    assert any(e.code == "log-not-replayed" for e in ctx.report)
    ctx, fs, _root = open_fs(PatchedSource(FileSource(img), {log_off: _restart_page(0, 2)}))
    assert fs.info.clean is True  # RESTART_VOLUME_IS_CLEAN
    ctx, fs, _root = open_fs(PatchedSource(FileSource(img),
                                           {log_off: _restart_page(0xFFFF, 0)}))
    assert fs.info.clean is True  # no client in use


@pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")
def test_read_through_fuse_mount(ntfs_image, tmp_path):
    from mountutil import pvfs_mounted

    img, truth = ntfs_image
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "vm-100-disk-0.raw").symlink_to(img)
    mnt = tmp_path / "mnt"
    with pvfs_mounted([inputs / "vm-100-disk-0.raw"], mnt):
        base = mnt / "vms" / "100" / "disk-0.files"
        p = base / "comp" / "text.txt"
        assert hashlib.sha256(p.read_bytes()).hexdigest() == truth["comp/text.txt"]["sha256"]
        assert os.getxattr(base / "docs" / "hello.txt", "user.small") == b"hi"
        assert os.readlink(base / "link-rel") == "docs/hello.txt"
        st = os.lstat(base / "old.txt")
        assert _ntfs3g_ns(st.st_mtime_ns) == truth["old.txt"]["mtime_ns"]
        assert st.st_mtime_ns == -305121600 * 10**9 + 123456700
        assert os.stat(base / "hl3").st_ino == os.stat(base / "docs" / "hello.txt").st_ino


# -- damage fuzzing: the C library runs in a child process so a crash fails the test ----

FUZZ_ROUNDS = int(os.environ.get("PVFS_FUZZ_ROUNDS", "60"))


def _fuzz_child(img: str, seed: int) -> None:
    import random

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    rnd = random.Random(seed)
    base = FileSource(img)
    _c, mft, _m = _find_record(Path(img))
    with open(img, "rb") as f:  # index blocks (directory B-trees) are fuzzed too
        indx = []
        for pos in range(0, os.path.getsize(img), 4096):
            f.seek(pos)
            if f.read(4) == b"INDX":
                indx.append(pos)
    for _ in range(FUZZ_ROUNDS):
        patches = {}
        for _ in range(rnd.randint(1, 8)):
            if indx and rnd.random() < 0.3:
                off = rnd.choice(indx) + rnd.randrange(0, 4096)
            else:
                off = mft + rnd.randrange(0, 80) * 1024 + rnd.randrange(0, 1024)
            n = rnd.choice([1, 2, 8, 64])
            patches[off] = bytes(rnd.randrange(256) for _ in range(n))
        try:
            ctx, fs, root = open_fs(PatchedSource(base, patches))
        except Exception:
            continue  # a clean refusal is fine (it becomes a damage entry in discovery)
        for _p, node in walk(root):
            if isinstance(node, File) and node.size:
                try:
                    node.source.read(0, min(node.size, 1 << 16))
                except UnreadableError:
                    pass
        fs.files_in_ranges([(mft, 1 << 16)])
    print("fuzz-ok")


def test_fuzz_mft_damage_no_crash(ntfs_image):
    """Random bytes in the first 80 MFT records and in index blocks: no segfault, hang
    or stray exception."""
    img, _truth = ntfs_image
    r = subprocess.run([sys.executable, __file__, "fuzz", str(img), "7"], capture_output=True,
                       text=True, timeout=240,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "fuzz-ok" in r.stdout


def test_nodes_are_typed(ntfs_image):
    img, _truth = ntfs_image
    _ctx, _fs, root = open_fs(FileSource(img))
    assert isinstance(resolve(root, "fifo"), Special)
    assert stat.S_ISBLK(resolve(root, "blk").mode)
    assert resolve(root, "link-long").size == 202


@settings(max_examples=300, deadline=None)
@given(hst.binary(min_size=0, max_size=1100), hst.integers(0, 4))
def test_fuzz_ondisk_parsers(data, depth):
    """The structures pvfs parses itself never raise anything but FormatError."""
    from backends.ntfs import ondisk as D
    from pvfs.errors import FormatError

    for fn in (lambda: D.parse_boot(data, 1 << 30), lambda: D.check_mft_record(data, 512),
               lambda: list(D.resident_attributes(D.apply_fixups(data, 512))),
               lambda: D.parse_reparse(data), lambda: D.interix(data),
               lambda: D.logfile_clean(data)):
        try:
            fn()
        except FormatError:
            pass
    rec = bytearray(1024)
    rec[:4] = b"FILE"
    rec[4:8] = b"\x30\x00\x03\x00"
    rec[20:22] = (56).to_bytes(2, "little")
    rec[24:32] = (1024).to_bytes(4, "little") * 2
    rec[56:56 + len(data)] = data[:968]
    rec[510:512] = rec[1022:1024] = rec[48:50]
    try:
        for _t, _n, v in D.resident_attributes(bytes(rec)):
            rp = D.parse_reparse(v) if v else None
            if rp:
                D.reparse_target(rp, depth)
    except FormatError:
        pass


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "fuzz":
    _fuzz_child(sys.argv[2], int(sys.argv[3]))
