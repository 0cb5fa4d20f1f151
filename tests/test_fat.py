"""FAT12/16/32 and exFAT readers (backends/fat) against mtools and exfat-fuse.

Images are made by the real tools: mkfs.fat + mcopy (mtools) for FAT, mkfs.exfat +
the exfat-fuse driver (through a loop device) for exFAT.  Ground truth is what those
tools show: ``mcopy -s -m`` extraction (names, sha256, size, mtime), ``mattrib`` (the
read-only bit) and the exfat-fuse mount walked with lstat.  Built images and their
ground truth are cached under the fixture cache, keyed by a hash of this builder code.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import random
import shutil
import stat
import subprocess
import time

import pytest

from conftest import cached_build, sha256_file
from mountutil import needs_fuse, pvfs_mounted
from pvfs.ddrescue import BadRangeSource
from pvfs.discover import Context, Volume, discover
from pvfs.errors import UnreadableError
from pvfs.nodes import Dir, File, resolve, walk
from pvfs.source import FileSource, PatchedSource

from backends.fat import ExfatBackend, FatBackend

ENV = {**os.environ, "TZ": "UTC", "MTOOLS_SKIP_CHECK": "1", "LC_ALL": "C.UTF-8"}
LONG255 = "L" * 251 + ".txt"  # a 255-character long name (pytsk3 cuts it to 247)


def make_tree(root, n_many=600, unicode_astral=True, big2=True):
    """The tree every image gets: long, unicode and case-flagged names, a 255-char name,
    a 24-level path, a 3 MiB file, a 600-file directory, old and far-future mtimes."""
    rnd = random.Random(11)
    os.makedirs(f"{root}/EFI/BOOT")
    files = {
        "EFI/BOOT/BOOTX64.EFI": rnd.randbytes(70_000),
        "README.TXT": b"upper-case 8.3\n",
        "lower.txt": b"lower-case 8.3: NT case flags\n",
        "MiXed.Txt": b"mixed case needs a long name\n",
        "UPPER.lower": b"upper base, lower ext\n",
        "a long file name with spaces.text": b"x" * 5000,
        "Grüße-ñ.txt": b"latin-1 range\n",
        "日本語のファイル名.txt": b"cjk\n",
        LONG255: b"255\n",
        "empty": b"",
        "big.bin": rnd.randbytes(3 << 20),
        "ro.txt": b"read-only\n",
    }
    if unicode_astral:
        files["emoji-😀.txt"] = b"astral plane\n"
    if big2:  # with 512-byte clusters its chain crosses FAT chunk boundaries (16384, 32768)
        files["big2.bin"] = rnd.randbytes(14 << 20)
    deep = "/".join(f"level{i:02d}" for i in range(24))
    files[f"deep/{deep}/bottom.txt"] = b"bottom\n"
    for i in range(n_many):
        files[f"many/file-{i:04d}.dat"] = rnd.randbytes(rnd.randrange(0, 3000))
    for rel, data in files.items():
        p = os.path.join(root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)
    os.utime(f"{root}/lower.txt", (0, 315_532_802))  # 1980-01-01 00:00:02
    os.utime(f"{root}/big.bin", (0, 4_102_444_799))  # 2099-12-31 23:59:59
    os.utime(f"{root}/MiXed.Txt", (0, 1_234_567_891.37))
    return files


def make_small_tree(root, unicode_astral=True):
    """A few files and nested directories over several 512-byte clusters, for fuzzing."""
    rnd = random.Random(5)
    for d in range(3):
        for f in range(12):
            p = f"{root}/dir{d}/sub/Long File Name {f}.txt"
            os.makedirs(os.path.dirname(p), exist_ok=True)
            with open(p, "wb") as fh:
                fh.write(rnd.randbytes(rnd.randrange(0, 3000)))
    with open(f"{root}/frag.bin", "wb") as fh:
        fh.write(rnd.randbytes(20_000))
    return None


def _run(*cmd, **kw):
    subprocess.run(cmd, check=True, env=ENV, capture_output=True, **kw)


def build_fat(dest, fat_bits, size_kb, cluster_sectors, tree=make_tree, **tree_opts):
    stage = f"{dest}.stage"
    tree(stage, unicode_astral=False, **tree_opts)  # mtools 4.0.32 stores no astral names
    img = f"{dest}.img"
    _run("mkfs.fat", "-F", str(fat_bits), "-s", str(cluster_sectors), "-n", f"FAT{fat_bits}",
         "-i", "1234abcd", "-C", img, str(size_kb))
    entries = sorted(os.listdir(stage))
    _run("mcopy", "-s", "-m", "-i", img, *[f"{stage}/{e}" for e in entries], "::/")
    if os.path.exists(f"{stage}/ro.txt"):
        _run("mattrib", "-i", img, "+r", "::/ro.txt")
    shutil.rmtree(stage)
    # Ground truth: what mtools extracts (-m keeps FAT mtimes) and mattrib's R flags.
    out = f"{dest}.out"
    os.makedirs(out)
    _run("mcopy", "-s", "-m", "-n", "-i", img, "::/*", out)
    truth = walk_host(out)
    attrs = subprocess.run(["mattrib", "-/", "-i", img, "::"], env=ENV, capture_output=True,
                           text=True, check=True).stdout
    ro = [line[line.index("::/") + 3:] for line in attrs.splitlines()
          if "::/" in line and "R" in line[:line.index("::/")]]
    shutil.rmtree(out)
    return {"image": os.path.basename(img), "entries": truth, "readonly": ro}


def build_exfat(dest, size=96 << 20, tree=make_tree, mkfs_opts=()):
    stage = f"{dest}.stage"
    tree(stage)
    img = f"{dest}.img"
    with open(img, "wb") as f:
        f.truncate(size)
    _run("mkfs.exfat", "-L", "EXLABEL", *mkfs_opts, img)
    mnt = f"{dest}.mnt"
    os.makedirs(mnt)
    loop = subprocess.run(["losetup", "-f", "--show", img], check=True, capture_output=True,
                          text=True).stdout.strip()
    try:
        _run("mount.exfat-fuse", loop, mnt)
        try:
            _run("cp", "-a", f"{stage}/.", mnt)
            if tree is make_tree:
                os.mkdir(f"{mnt}/emptydir")
                os.utime(f"{mnt}/emptydir", (0, 1_500_000_000.5))
                os.utime(f"{mnt}/ro.txt", (0, 1_600_000_000.25))
            subprocess.run(["sync"], check=True)
            truth = walk_host(mnt)  # ground truth: the exfat-fuse view
            sv = os.statvfs(mnt)
            used = (sv.f_blocks - sv.f_bfree) * sv.f_frsize
        finally:
            for _ in range(50):
                if subprocess.run(["umount", mnt], capture_output=True).returncode == 0:
                    break
                time.sleep(0.1)
    finally:
        subprocess.run(["losetup", "-d", loop], check=True)
    os.rmdir(mnt)
    shutil.rmtree(stage)
    return {"image": os.path.basename(img), "entries": truth, "used": used}


def walk_host(top):
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, top)
            st = os.lstat(p)
            e = {"type": "dir" if stat.S_ISDIR(st.st_mode) else "file",
                 "mtime_ns": st.st_mtime_ns}
            if e["type"] == "file":
                e["size"] = st.st_size
                with open(p, "rb") as f:
                    e["sha256"] = hashlib.sha256(f.read()).hexdigest()
            out[rel] = e
    return out


def build_all(dest):
    manifest = {
        # FAT32 needs >= 65525 clusters (mtools and Windows decide the type by the count)
        "fat32": build_fat(f"{dest}/fat32", 32, 300 << 10, 1),
        "fat16": build_fat(f"{dest}/fat16", 16, 30 << 10, 1),
        "fat12": build_fat(f"{dest}/fat12", 12, 8 << 10, 8, big2=False),
        "exfat": build_exfat(f"{dest}/exfat", mkfs_opts=("-c", "512")),
        "fat12-small": build_fat(f"{dest}/fat12-small", 12, 1024, 1, tree=make_small_tree),
        "exfat-small": build_exfat(f"{dest}/exfat-small", 2 << 20, make_small_tree,
                                   ("-b", "4096", "-c", "512")),
    }
    # An ESP inside a GPT disk named like a Proxmox volume.
    disk = f"{dest}/vm-105-disk-0.raw"
    with open(disk, "wb") as f:
        f.truncate(320 << 20)
    _run("sgdisk", "-n", "1:2048:+300M", "-t", "1:ef00", "-c", "1:EFI system partition", disk)
    _run("dd", f"if={dest}/fat32.img", f"of={disk}", "bs=1M", "seek=1", "conv=notrunc,sparse")
    with open(f"{dest}/manifest.json", "w") as f:
        json.dump(manifest, f)


@pytest.fixture(scope="module")
def images():
    """Build (once per builder version) and return the cache directory with the images."""
    src = "".join(inspect.getsource(fn) for fn in (make_tree, make_small_tree, build_fat,
                                                   build_exfat, walk_host, build_all))
    key = hashlib.sha256(src.encode()).hexdigest()[:16]
    return cached_build(f"fat-{key}", lambda tmp: build_all(str(tmp)))


def manifest(images, kind):
    return json.loads((images / "manifest.json").read_text())[kind]


# --------------------------------------------------------------------------------- helpers
def open_fs(source, backend, bad=None):
    ctx = Context()
    if bad:
        ctx.options.bad = bad
    vol = Volume(source, "vol", "vol", "partition")
    assert backend.probe(vol, ctx) > 0
    backend.open(vol, ctx)
    return ctx, vol.guestfs, vol.guestfs_root


def tree_view(root):
    out = {}
    for path, node in walk(root):
        if not path:
            continue
        if isinstance(node, Dir):
            out[path] = {"type": "dir", "mtime_ns": node.mtime.ns, "mode": node.mode}
        else:
            assert isinstance(node, File)
            data = node.source.read(0, node.size)
            out[path] = {"type": "file", "mtime_ns": node.mtime.ns, "size": node.size,
                         "sha256": hashlib.sha256(data).hexdigest(), "mode": node.mode}
    return out


def compare(view, truth, granularity_ns):
    """Every entry: same name set, type, size, sha256, mtime (at the fs granularity)."""
    assert sorted(view) == sorted(truth)
    for path, t in truth.items():
        v = view[path]
        assert v["type"] == t["type"], path
        if t["type"] == "file":
            assert (v["size"], v["sha256"]) == (t["size"], t["sha256"]), path
        assert v["mtime_ns"] // granularity_ns == t["mtime_ns"] // granularity_ns, path
    return len(truth)


def disk_offset(extents, pos):
    """Where byte ``pos`` of a directory's data (``fat_clusters``) lies on the volume."""
    for off, n in extents:
        if pos < n:
            return off + pos
        pos -= n
    raise AssertionError("position past the extents")


def blkid(path):
    """(LABEL, UUID) as util-linux's blkid reads them."""
    out = subprocess.run(["blkid", "-p", "-o", "export", str(path)], capture_output=True,
                         text=True, check=True).stdout
    kv = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return kv.get("LABEL"), kv.get("UUID")


def codes(ctx):
    return [e.code for e in ctx.report]


# ----------------------------------------------------------------------------------- FAT
@pytest.mark.parametrize("kind", ["fat32", "fat16", "fat12"])
def test_fat_matches_mtools(images, kind):
    m = manifest(images, kind)
    ctx, fs, root = open_fs(FileSource(images / m["image"]), FatBackend())
    view = tree_view(root)
    n = compare(view, m["entries"], 2_000_000_000)
    assert n > 630
    assert [e for e in ctx.report if e.severity == "error"] == []
    # the read-only attribute takes the write bits away; nothing else has it
    assert m["readonly"] == ["ro.txt"]
    for path, v in view.items():
        want = 0o755 if v["type"] == "dir" else (0o444 if path == "ro.txt" else 0o644)
        assert stat.S_IMODE(v["mode"]) == want, path
    info = fs.info
    assert (info.fstype, info.label, info.uuid, info.clean) == ("vfat", kind.upper(),
                                                                "1234-ABCD", True)
    assert (info.label, info.uuid) == blkid(images / m["image"])
    assert info.notes[0].startswith(f"FAT{kind[3:]},")
    # size and used as mtools sees them: minfo's sector count, mdir's free bytes
    img = str(images / m["image"])
    out = subprocess.run(["minfo", "-i", img, "::"], env=ENV, capture_output=True, text=True,
                         check=True).stdout
    sectors = [int(line.split(":")[1].split()[0]) for line in out.splitlines()
               if line.startswith(("small size:", "big size:"))]
    assert info.size == max(sectors) * 512
    out = subprocess.run(["mdir", "-i", img, "::"], env=ENV, capture_output=True, text=True,
                         check=True).stdout
    free = int(next(ln for ln in out.splitlines() if "bytes free" in ln)
               .split("bytes free")[0].replace(" ", ""))
    geo = _fat_geometry(FileSource(img))
    assert info.used == geo.cluster_count * geo.cluster_size - free


def test_fat_names_as_linux_shows_them(images):
    """NT case flags, long names, the 255-char name and the 8.3 names with no LFN."""
    m = manifest(images, "fat32")
    _ctx, _fs, root = open_fs(FileSource(images / m["image"]), FatBackend())
    names = set(root.children())
    assert {"README.TXT", "lower.txt", "MiXed.Txt", "UPPER.lower", LONG255,
            "日本語のファイル名.txt", "Grüße-ñ.txt"} <= names
    deep = "/".join(f"level{i:02d}" for i in range(24))
    assert resolve(root, f"deep/{deep}/bottom.txt").source.read(0, 10) == b"bottom\n"


def test_lfn_with_a_wrong_checksum_is_dropped(images, tmp_path):
    """Linux and mtools drop long-name slots whose checksum does not match the 8.3 entry
    that follows (an orphan left by a DOS tool): the 8.3 name is shown instead."""
    m = manifest(images, "fat16")
    src = FileSource(images / m["image"])
    _ctx, _fs, root = open_fs(src, FatBackend())
    node = root.get("MiXed.Txt")
    short_at = node.fat_extents[-1][0]  # the 8.3 entry; its one LFN slot is just before it
    slot = src.read(short_at - 32, 32)
    assert slot[11] == 0x0F and slot[0] == 0x41
    patched = PatchedSource(src, {short_at - 32 + 13: bytes([slot[13] ^ 0x55])})
    _ctx, _fs, root2 = open_fs(patched, FatBackend())
    names = set(root2.children())
    assert "MIXED.TXT" in names and "MiXed.Txt" not in names
    assert root2.get("MIXED.TXT").source.read(0, 100) == b"mixed case needs a long name\n"
    copy = tmp_path / "patched.img"
    shutil.copy(images / m["image"], copy)
    with open(copy, "r+b") as f:
        f.seek(short_at - 32 + 13)
        f.write(bytes([slot[13] ^ 0x55]))
    out = subprocess.run(["mdir", "-i", str(copy), "::"], env=ENV, capture_output=True,
                         check=True).stdout.decode()
    assert "MiXed.Txt" not in out and "MIXED    TXT" in out  # mtools agrees


def test_fat_times_and_dirty_flag(images):
    m = manifest(images, "fat16")
    src = FileSource(images / m["image"])
    _ctx, fs, root = open_fs(src, FatBackend())
    assert root.get("lower.txt").mtime.ns == 315_532_802 * 10**9  # 1980-01-01 00:00:02
    assert root.get("big.bin").mtime.ns == 4_102_444_798 * 10**9  # 2 s granularity
    # BS_Reserved1 bit 0 is what Linux sets while mounted: dirty
    boot = src.read(0, 512)
    dirty = PatchedSource(src, {37: bytes([boot[37] | 1])})
    _ctx, fs2, _root = open_fs(dirty, FatBackend())
    assert fs.info.clean is True and fs2.info.clean is False


def test_fat32_backup_boot_sector(images):
    m = manifest(images, "fat32")
    src = PatchedSource(FileSource(images / m["image"]), {0: bytes(512)})
    ctx, fs, root = open_fs(src, FatBackend())
    assert "boot-sector-backup" in codes(ctx)
    compare(tree_view(root), m["entries"], 2_000_000_000)
    assert fs.info.label == "FAT32"


def _fat_geometry(src):
    from backends.fat.fat import read_geometry

    return read_geometry(src)[0]


def test_unreadable_fat1_sector_uses_fat2(images):
    m = manifest(images, "fat32")
    src = FileSource(images / m["image"])
    geo = _fat_geometry(src)
    # the FAT sectors holding big.bin's chain (and the root's) are unreadable in FAT #1
    # and 1 KiB across the first 128 KiB chunk boundary, which big2.bin's chain crosses
    bad = BadRangeSource(src, [(geo.fat_offset, 16 * 512),
                               (geo.fat_offset + (128 << 10) - 512, 1024)])
    ctx, _fs, root = open_fs(bad, FatBackend())
    compare(tree_view(root), m["entries"], 2_000_000_000)
    msgs = [e.message for e in ctx.report if e.code == "fat-copy-used"]
    assert len(msgs) == 2 and all("FAT #2 used" in m for m in msgs)
    # every file compares equal: FAT #2 repaired it, nothing is lost
    assert {(e.severity, e.outcome) for e in ctx.report if e.code == "fat-copy-used"} == {
        ("info", "repaired")}
    assert not [e for e in ctx.report if e.outcome == "lost"]


def test_inconsistent_fat1_entry_uses_fat2(images):
    m = manifest(images, "fat16")
    src = FileSource(images / m["image"])
    geo = _fat_geometry(src)
    _ctx, _fs, root = open_fs(src, FatBackend())
    big = root.get("big.bin")
    first = (big.source.extents[0][3] - geo.data_offset) // geo.cluster_size + 2
    # FAT #1 says "free" in the middle of big.bin's chain
    patched = PatchedSource(src, {geo.fat_offset + 2 * (first + 3): b"\0\0"})
    ctx, _fs, root2 = open_fs(patched, FatBackend())
    data = root2.get("big.bin").source.read(0, big.size)
    assert "fat-copy-used" in codes(ctx)
    assert hashlib.sha256(data).hexdigest() == m["entries"]["big.bin"]["sha256"]
    assert {(e.severity, e.outcome) for e in ctx.report if e.code == "fat-copy-used"} == {
        ("info", "repaired")}


def test_chain_loop_is_bounded_and_reported(images):
    """A chain that loops back (in both FAT copies, so no copy can repair it): the
    clusters before the loop read, the rest of the file is EIO, one chain-broken entry."""
    m = manifest(images, "fat16")
    src = FileSource(images / m["image"])
    geo = _fat_geometry(src)
    _ctx, _fs, root = open_fs(src, FatBackend())
    big = root.get("big.bin")
    first = (big.source.extents[0][3] - geo.data_offset) // geo.cluster_size + 2
    loop = (first + 2).to_bytes(2, "little")  # cluster first+9 -> first+2
    patched = PatchedSource(src, {geo.fat_offset + i * geo.fat_bytes + 2 * (first + 9): loop
                                  for i in range(geo.num_fats)})
    ctx, _fs, root2 = open_fs(patched, FatBackend())
    node = root2.get("big.bin")
    ok = 10 * geo.cluster_size
    assert node.source.read(0, ok) == big.source.read(0, ok)
    with pytest.raises(UnreadableError):
        node.source.read(ok, 4096)
    e = [e for e in ctx.report if e.severity == "error"]
    assert [x.code for x in e] == ["chain-broken"] and "loops back" in e[0].message
    assert node.source.block_status(ok, 4096) == [(ok, 4096, "unreadable")]


def test_zeroed_directory_cluster_loses_only_its_entries(images):
    m = manifest(images, "fat32")
    src = FileSource(images / m["image"])
    _ctx, _fs, root = open_fs(src, FatBackend())
    cs = _fat_geometry(src).cluster_size
    many = root.get("many")
    many.children()
    assert sum(n for _, n in many.fat_clusters) >= 5 * cs
    off = disk_offset(many.fat_clusters, 2 * cs)  # the third cluster of the 600-entry directory
    ctx, _fs, root2 = open_fs(PatchedSource(src, {off: bytes(cs)}), FatBackend())
    view = tree_view(root2)
    truth = m["entries"]
    lost = [p for p in truth if p not in view]
    assert 0 < len(lost) <= cs // 64 and all(p.startswith("many/") for p in lost)
    assert [e.code for e in ctx.report if e.severity == "error"] == ["dir-cluster-zeroed"]
    compare(view, {p: t for p, t in truth.items() if p in view}, 2_000_000_000)


def test_unreadable_file_data_is_eio_and_named(images):
    m = manifest(images, "fat32")
    src = FileSource(images / m["image"])
    _ctx, _fs, root = open_fs(src, FatBackend())
    big = root.get("big.bin")
    disk_off = big.source.extents[1][3] if len(big.source.extents) > 1 else \
        big.source.extents[0][3] + (1 << 20)
    bad = BadRangeSource(src, [(disk_off, 4096)])
    _ctx, fs, root2 = open_fs(bad, FatBackend())
    names, total = fs.files_in_ranges([(disk_off, 4096)])
    assert (names, total) == (["big.bin"], 1)
    node = root2.get("big.bin")
    with pytest.raises(UnreadableError):
        node.source.read(0, node.size)
    assert root2.get("README.TXT").source.read(0, 6) == b"upper-"


def test_esp_in_gpt_disk_through_discover(images):
    m = manifest(images, "fat32")
    ctx = discover([str(images / "vm-105-disk-0.raw")])
    node = resolve(ctx.root, "vms/105/disk-0.files/p1/EFI/BOOT/BOOTX64.EFI")
    assert isinstance(node, File)
    assert hashlib.sha256(node.source.read(0, node.size)).hexdigest() == \
        m["entries"]["EFI/BOOT/BOOTX64.EFI"]["sha256"]
    vol = next(v for v in ctx.filesystems)
    assert vol.guestfs.info.fstype == "vfat"
    assert "vms/105/disk-0.files/p1" in vol.files_paths


def test_bad_sectors_under_the_esp_name_the_file(images, tmp_path):
    """A ddrescue mapfile on the GPT disk: the report names the file on the bad sectors,
    that file reads EIO, every other file of the ESP still equals mtools' extraction."""
    from pvfs.discover import Options

    m = manifest(images, "fat32")
    disk = images / "vm-105-disk-0.raw"
    ctx = discover([str(disk)])
    esp = resolve(ctx.root, "vms/105/disk-0.files/p1")
    big = esp.get("big2.bin")
    part_off = 1 << 20  # p1 starts at sector 2048
    bad_at = part_off + big.source.extents[0][3] + (5 << 20)  # inside its first extent
    assert big.source.extents[0][1] > 6 << 20
    size = disk.stat().st_size
    mapfile = tmp_path / "disk.map"
    mapfile.write_text("# Mapfile. Created by GNU ddrescue version 1.27\n"
                       "# current_pos  current_status  current_pass\n0x0 + 1\n"
                       f"0x0 {bad_at:#x} +\n{bad_at:#x} 0x1000 -\n"
                       f"{bad_at + 0x1000:#x} {size - bad_at - 0x1000:#x} +\n")
    ctx = discover([str(disk)], Options(mapfiles={str(disk): str(mapfile)}))
    e = next(e for e in ctx.report if e.code == "files-damaged")
    assert e.path == "vms/105/disk-0.files/p1" or e.path.endswith("disk.files/p1")
    assert "1 files or directories" in e.message and "big2.bin" in e.message
    esp = resolve(ctx.root, "vms/105/disk-0.files/p1")
    node = esp.get("big2.bin")
    with pytest.raises(UnreadableError):
        node.source.read(0, node.size)
    view = tree_view_except(esp, {"big2.bin"})
    compare(view, {p: t for p, t in m["entries"].items() if p != "big2.bin"}, 2_000_000_000)


def tree_view_except(root, skip):
    from pvfs.nodes import Dir as _Dir

    keep = _Dir()
    for name, node in root.children().items():
        if name not in skip:
            keep.add(name, node)
    return tree_view(keep)


@needs_fuse
def test_esp_file_through_fuse_mount(images, tmp_path):
    m = manifest(images, "fat32")
    mnt = tmp_path / "mnt"
    with pvfs_mounted([images / "vm-105-disk-0.raw"], mnt):
        base = mnt / "vms/105/disk-0.files/p1"
        assert sha256_file(base / "EFI/BOOT/BOOTX64.EFI") == \
            m["entries"]["EFI/BOOT/BOOTX64.EFI"]["sha256"]
        st_ = os.stat(base / LONG255)
        assert st_.st_mtime_ns == m["entries"][LONG255]["mtime_ns"]
        assert sorted(os.listdir(base / "many")) == sorted(
            p[5:] for p in m["entries"] if p.startswith("many/"))


# --------------------------------------------------------------------------------- exFAT
def test_exfat_matches_exfat_fuse(images):
    m = manifest(images, "exfat")
    ctx, fs, root = open_fs(FileSource(images / m["image"]), ExfatBackend())
    view = tree_view(root)
    n = compare(view, m["entries"], 10_000_000)  # exFAT keeps 10 ms
    assert n > 630
    assert [e for e in ctx.report if e.severity != "info"] == []
    info = fs.info
    assert (info.fstype, info.label, info.clean) == ("exfat", "EXLABEL", True)
    assert (info.label, info.uuid) == blkid(images / m["image"])
    # exfat-fuse's statfs counts the space before the cluster heap as used; Linux's exfat
    # and pvfs count clusters only: the same free-cluster count
    heap = fs.bs.ClusterCount * fs.cs
    assert info.size == 96 << 20 and info.used == m["used"] - (info.size - heap)
    assert "emoji-😀.txt" in root.children() and LONG255 in root.children()


def test_exfat_dirty_flag(images):
    """VolumeFlags is outside the boot checksum: a set VolumeDirty bit reads as not clean."""
    src = FileSource(images / manifest(images, "exfat")["image"])
    flags = int.from_bytes(src.read(106, 2), "little")
    _ctx, fs, _root = open_fs(PatchedSource(src, {106: (flags | 2).to_bytes(2, "little")}),
                              ExfatBackend())
    assert fs.info.clean is False


def test_exfat_backup_boot_region_and_zeroed_dir_cluster(images):
    m = manifest(images, "exfat")
    src = FileSource(images / m["image"])
    ctx, _fs, root = open_fs(PatchedSource(src, {0: bytes(512)}), ExfatBackend())
    assert "boot-region-backup" in codes(ctx)
    compare(tree_view(root), m["entries"], 10_000_000)
    many = root.get("many")
    many.children()
    cs = _fs.cs
    assert sum(n for _, n in many.fat_clusters) >= 5 * cs
    off = disk_offset(many.fat_clusters, 2 * cs)
    ctx, _fs, root2 = open_fs(PatchedSource(src, {off: bytes(cs)}), ExfatBackend())
    view = tree_view(root2)
    lost = [p for p in m["entries"] if p not in view]
    assert 0 < len(lost) <= cs // 96 + 2 and all(p.startswith("many/") for p in lost)
    assert "dir-cluster-zeroed" in codes(ctx)
    compare(view, {p: t for p, t in m["entries"].items() if p in view}, 10_000_000)


def test_exfat_valid_data_length_reads_zeros(images):
    """Bytes past ValidDataLength read as zeros and are unmapped (spec 7.6.5)."""
    from backends.fat import structs as S

    m = manifest(images, "exfat")
    src = FileSource(images / m["image"])
    _ctx, _fs, root = open_fs(src, ExfatBackend())
    node = root.get("a long file name with spaces.text")
    set_off = node.fat_extents[-1][0]
    raw = bytearray(src.read(set_off, node.fat_extents[-1][1]))
    struct_off = 32 + 8  # ValidDataLength in the Stream Extension
    raw[struct_off:struct_off + 8] = (1000).to_bytes(8, "little")
    from backends.fat.exfat import set_checksum

    raw[2:4] = set_checksum(bytes(raw)).to_bytes(2, "little")
    assert raw[32] == S.ENTRY_STREAM
    _ctx, _fs, root2 = open_fs(PatchedSource(src, {set_off: bytes(raw)}), ExfatBackend())
    n2 = root2.get("a long file name with spaces.text")
    assert n2.source.read(0, 5000) == b"x" * 1000 + bytes(4000)
    assert n2.source.block_status()[-1][2] == "unmapped"
    # a broken set checksum: the entry is skipped and reported, not trusted
    raw[2] ^= 0xFF
    ctx3, _fs, root3 = open_fs(PatchedSource(src, {set_off: bytes(raw)}), ExfatBackend())
    assert root3.get("a long file name with spaces.text") is None
    assert "bad-entry-set" in codes(ctx3)


# ---------------------------------------------------------------------------------- fuzz
FUZZ_READ = 64 * 1024


def _fuzz_walk(source, backend):
    """Open and walk a damaged volume: only FatError at open, damage entries after it."""
    from backends.fat.common import FatError

    ctx = Context()
    vol = Volume(source, "vol", "vol", "partition")
    if backend.probe(vol, ctx) <= 0:
        return 0
    try:
        backend.open(vol, ctx)
    except FatError:
        return 0
    n = 0
    for _path, node in walk(vol.guestfs_root):
        n += 1
        assert n < 20_000
        if isinstance(node, File):
            assert node.size <= source.size * 2
            try:
                node.source.read(0, FUZZ_READ)
            except UnreadableError:
                pass
    fs = vol.guestfs
    fs.files_in_ranges([(0, source.size)], limit=5)
    return n


def _fuzz(images, kind, backend, span, data):
    m = manifest(images, kind)
    base = FileSource(images / m["image"])
    patches = {}
    for _ in range(data.draw(st.integers(1, 6))):
        off = data.draw(st.integers(0, span - 1))
        if data.draw(st.booleans()):
            blob = data.draw(st.binary(min_size=1, max_size=64))
        else:  # a zeroed or 0xFF sector: the common shapes of real damage
            blob = bytes([data.draw(st.sampled_from([0, 0xFF]))]) * 512
        patches[off] = blob
    _fuzz_walk(PatchedSource(base, patches), backend)


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(data=st.data())
def test_fuzz_fat12(images, data):
    _fuzz(images, "fat12-small", FatBackend(), 96 * 1024, data)


@FUZZ
@given(data=st.data())
def test_fuzz_exfat(images, data):
    _fuzz(images, "exfat-small", ExfatBackend(), 160 * 1024, data)


def test_fuzz_images_are_whole(images):
    """The fuzz inputs list everything before they are damaged."""
    assert _fuzz_walk(FileSource(images / manifest(images, "fat12-small")["image"]),
                      FatBackend()) == len(manifest(images, "fat12-small")["entries"]) + 1
    assert _fuzz_walk(FileSource(images / manifest(images, "exfat-small")["image"]),
                      ExfatBackend()) == len(manifest(images, "exfat-small")["entries"]) + 1
