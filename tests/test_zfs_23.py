"""OpenZFS 2.3 (Proxmox VE 9): a RAIDZ1 pool widened by ``zpool attach`` (raidz_expansion),
blake3, block cloning, longname, large_microzap, fast_dedup, encryption.

Ground truth: ../shared/fixtures/zfs-2.3/manifest.json, written by the real OpenZFS 2.3.9
kernel module (intact set and a copy without member 2).  Every file, zvol and snapshot is
compared by sha256, every entry's type/mode/owner/mtime (ns)/link count/symlink
target/xattrs with the manifest.  Unit tests of the expanded RAIDZ map follow
vdev_raidz.c (zfs-2.3.9).
"""

from __future__ import annotations

import functools
import glob
import hashlib
import itertools
import json
import stat
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.zfs import checksum, compress, raidz
from backends.zfs.backend import ZfsBackend
from backends.zfs.structs import VDEV_LABEL_START_SIZE
from pvfs.discover import Context, Options, Volume, discover
from pvfs.errors import PvfsError, UnreadableError
from pvfs.source import FileSource, PatchedSource, SliceSource
from pvfs.nodes import Dir, File, Symlink, resolve, time_ns

from conftest import FIXTURES, gpt_partition, require_fixture, sha256_source, unpack

Z23 = ("zfs-2.3",)
INTACT = "rpool-raidz1-expanded.tar.zst"
DEGRADED = "rpool-raidz1-expanded-degraded.tar.zst"
KINDS = {"dir": Dir, "file": File, "symlink": Symlink}


@functools.cache
def _manifest():
    return json.loads(FIXTURES.joinpath(*Z23, "manifest.json").read_text())


def _keys():
    return tuple(f"{k}={v['key']}" for k, v in _manifest()["encryption_keys"].items())


@functools.cache
def _images(archive):
    d = unpack(require_fixture(*Z23, "images", archive))
    return tuple(sorted(glob.glob(str(d / "*" / "*.img"))))


_CTX = {}


def _open(archive, keys=True, images=None):
    key = (archive, keys, images)
    if key not in _CTX:
        _CTX.clear()  # one context alive at a time
        imgs = list(images or _images(archive))
        _CTX[key] = discover(imgs, Options(backend_options={"zfs_key": list(_keys()) if keys
                                                            else []}))
    return _CTX[key]


def _tree_root(name):
    return "storage/zfs/" + name.replace("@", "/.zfs/snapshot/")


def _content_items():
    """(tree path, sha256, size) of every zvol, zvol snapshot and file of every dataset
    and snapshot, and every file of the ext4 trees inside the zvols (zvol.files/pN)."""
    items = []
    for name, ds in _manifest()["pools"]["rpool"]["datasets"].items():
        dev = ds.get("device")
        if dev:
            items.append((f"storage/zfs/{name}", dev["sha256"], dev["size"]))
        for part, ents in (ds.get("partition_files") or {}).items():
            items += [(f"storage/zfs/{name}.files/p{part}{e['path']}", e["sha256"], e["size"])
                      for e in ents if e["type"] == "file"]
        for e in ds.get("files") or []:
            if e["type"] == "file":
                items.append((_tree_root(name) + e["path"], e["sha256"], e["size"]))
    return items


def _check_content(ctx):
    fails = []
    items = _content_items()
    for path, sha, size in items:
        node = resolve(ctx.root, path)
        if not isinstance(node, File):
            fails.append(f"missing {path}")
        elif node.size != size:
            fails.append(f"size {path}: {node.size} != {size}")
        else:
            try:
                if sha256_source(node.source) != sha:
                    fails.append(f"sha256 {path}")
            except PvfsError as e:
                fails.append(f"error {path}: {e}")
    return items, fails


def _check_metadata(ctx):
    """type, mode, owner, mtime (ns), nlink, symlink target, xattrs, hard links."""
    m = _manifest()["pools"]["rpool"]["datasets"]
    fails = []
    checked = 0
    for name, ds in m.items():
        head = name.split("@")[0]
        children = {n[len(head):] for n in m if n.startswith(head + "/") and "@" not in n}
        root = resolve(ctx.root, _tree_root(name))
        for e in ds.get("files") or []:
            p = e["path"]
            # a child dataset's mount point shows the child (README pitfall): its own
            # directory entry in the parent is not compared
            if p == "/" or p in children:
                continue
            node = resolve(root, p.strip("/"))
            where = f"{name}:{p}"
            if not isinstance(node, KINDS[e["type"]]):
                fails.append(f"{where}: {type(node).__name__} is not a {e['type']}")
                continue
            checked += 1
            if (node.mode & 0o7777) != int(e["mode"], 8) or stat.S_IFMT(node.mode) == 0:
                fails.append(f"{where}: mode {node.mode:o} != {e['mode']}")
            if (node.uid, node.gid) != (e["uid"], e["gid"]):
                fails.append(f"{where}: owner {node.uid}:{node.gid}")
            if time_ns(node.mtime) != e["mtime_ns"]:
                fails.append(f"{where}: mtime {time_ns(node.mtime)} != {e['mtime_ns']}")
            if node.nlink != e["nlink"]:
                fails.append(f"{where}: nlink {node.nlink} != {e['nlink']}")
            if e["type"] == "symlink" and node.target != e["target"].encode():
                fails.append(f"{where}: target {node.target!r}")
            want_x = {k: v["sha256"] for k, v in (e.get("xattrs") or {}).items()}
            got_x = {k.decode(): hashlib.sha256(v).hexdigest() for k, v in node.xattrs.items()}
            if want_x != got_x:
                fails.append(f"{where}: xattrs {sorted(got_x)} != {sorted(want_x)}")
            if e.get("hardlink_of") and resolve(root, e["hardlink_of"].strip("/")) is not node:
                fails.append(f"{where}: not the same node as {e['hardlink_of']}")
    return checked, fails


@pytest.mark.parametrize("archive", [INTACT, DEGRADED], ids=["intact", "degraded"])
def test_zfs23_every_file_zvol_and_snapshot(archive):
    """All of zfs-2.3 (blocks born before the expansion in the 3-wide layout, after it
    4-wide, clones and dedup copies of old blocks) matches, with and without member 2."""
    ctx = _open(archive)
    items, fails = _check_content(ctx)
    assert len(items) == 2211 + 13  # + the files of the ext4 trees in vm-100-disk-0(@before)
    assert not fails, f"{len(fails)} of {len(items)} failed: {fails[:10]}"
    checked, fails = _check_metadata(ctx)
    assert checked == 2267  # 2276 entries less 7 dataset roots and 2 mount points
    assert not fails, f"{len(fails)} of {checked}: {fails[:10]}"
    errors = [e.line() for e in ctx.report if e.severity == "error"]
    assert not errors, errors
    unsupported = [e.line() for e in ctx.report if e.code == "unsupported-feature"]
    assert not unsupported, unsupported
    info = next(e for e in ctx.report if e.code == "uberblocks")
    assert "expanded at txg 104" in info.message
    if archive == DEGRADED:
        missing = [e for e in ctx.report if e.code == "missing-member"]
        assert len(missing) == 1 and "rpool-d2-part3" in missing[0].message
        assert any(e.code == "pool-state" and "DEGRADED" in e.message for e in ctx.report)


def test_zfs23_proxmox_view():
    """vms/ and cts/ of the expanded pool: zvols and their snapshot, container roots."""
    ctx = _open(INTACT)
    m = _manifest()["pools"]["rpool"]["datasets"]
    for path, name in (("vms/100/disk-0.raw", "rpool/data/vm-100-disk-0"),
                       ("vms/100/snapshots/before/disk-0.raw", "rpool/data/vm-100-disk-0@before"),
                       ("vms/101/disk-0.raw", "rpool/data/vm-101-disk-0")):
        assert sha256_source(resolve(ctx.root, path).source) == m[name]["device"]["sha256"], path
    files = {e["path"]: e for e in m["rpool/data/subvol-102-disk-0"]["files"]}
    clone = resolve(ctx.root, "cts/102/rootfs/root/text-from-blake3.log")
    assert sha256_source(clone.source) == files["/root/text-from-blake3.log"]["sha256"]


# -- the expanded map itself ------------------------------------------------------------
def test_logical_width_follows_the_expansion_txgs():
    """vdev_raidz_init/get_logical_width: 3 -> 4 at txg 104 (the fixture's config); two
    expansions 3 -> 4 -> 5; an expansion in progress makes every width one less."""
    assert [raidz.logical_width(4, [104], False, b) for b in (5, 103, 104, 500)] == [3, 3, 4, 4]
    assert [raidz.logical_width(5, [50, 90], False, b) for b in (49, 50, 89, 90)] == [3, 4, 4, 5]
    assert [raidz.logical_width(5, [50], True, b) for b in (10, 60)] == [3, 4]
    assert raidz.logical_width(4, [], True, 999) == 3


@settings(max_examples=200, deadline=None)
@given(st.integers(3, 8), st.integers(1, 3), st.integers(0, 1 << 30), st.integers(1, 300),
       st.sampled_from([9, 12]))
def test_expanded_map_with_full_width_is_the_classic_map(width, nparity, sector, nsec, ashift):
    """With the logical width equal to the physical one, vdev_raidz_map_alloc_expanded
    puts every data sector where vdev_raidz_map_alloc does (one map, two code paths)."""
    if width <= nparity:
        return
    offset, size = sector << ashift, nsec << ashift
    cols = raidz.map_columns(offset, size, width, nparity, ashift)
    dev, off, valid = raidz.map_expanded(offset, size, width, width, nparity, ashift)
    assert dev.shape[1] == len(cols)
    for c, (cdev, coff, csize) in enumerate(cols):
        n = int(valid[:, c].sum())
        assert n == csize >> ashift
        assert (dev[:n, c] == cdev).all()
        assert (off[:n, c] == coff + (np.arange(n) << ashift)).all()


def test_expanded_map_reflow_in_progress_and_scratch():
    """Rows wholly below the synced reflow offset use the new width, the others the old
    one; with RRSS_SCRATCH_VALID the reflowed rows come from the boot-area scratch copy."""
    ashift = 12
    size = 6 << ashift  # 3 data + 3 parity sectors in width 3 (raidz1, 2 data per row)
    offset = 30 << ashift
    dev, off, _ = raidz.map_expanded(offset, size, 4, 3, 1, ashift, synced=33 << ashift)
    # row 0 (sectors 30-32) is reflowed: 4 wide; rows 1 and 2 are not: 3 wide
    assert dev[0].tolist() == [30 % 4, 31 % 4, 32 % 4] and off[0, 0] == (30 // 4) << ashift
    assert dev[1].tolist() == [33 % 3, 34 % 3, 35 % 3] and off[1, 0] == (33 // 3) << ashift
    _, off2, _ = raidz.map_expanded(offset, size, 4, 3, 1, ashift, synced=33 << ashift,
                                    scratch=True)
    assert off2[0, 0] == off[0, 0] - raidz.VDEV_BOOT_SIZE and off2[1, 0] == off[1, 0]
    state, synced = raidz.reflow_info((1 << 55) | (0x1234 >> 9 << 9 >> 9))
    assert state == raidz.RRSS_SCRATCH_VALID and synced == 0x1234 >> 9 << 9


# -- blake3 (and every other checksum) verified; damage repaired or reported -------------
def _members(archive, patches=None):
    """The pool's partitions as sources; ``patches``: {image index: {offset in the
    partition: bytes}} laid over them in memory (PatchedSource, nothing is written)."""
    out = []
    for i, img in enumerate(_images(archive)):
        start, size = gpt_partition(img, 3)
        src = SliceSource(FileSource(img), start, size)
        if patches and i in patches:
            src = PatchedSource(src, patches[i])
        out.append(src)
    return out


def _open_members(sources, bad=None):
    ctx = Context(Options(bad=bad, backend_options={"zfs_key": list(_keys())}))
    be = ZfsBackend()
    vols = [Volume(src, f"storage/files/m{i}", f"m{i}", "input") for i, src in enumerate(sources)]
    be.open_group(be.member_key(vols[0], ctx), vols, ctx)
    return ctx


BLAKE3_FILE = "rpool/data/subvol-103-disk-0/pre/random.bin"  # 512 KiB random, before txg 104


def _blake3_block_sectors():
    """The first block of pre/random.bin: its bp, and (member, offset in the partition)
    of the data sectors of its first row in the old 3-wide layout."""
    ctx = _open(INTACT)
    node = resolve(ctx.root, f"storage/zfs/{BLAKE3_FILE}")
    bp = node.source.dnode.block_bp(0)
    top = node.source.dnode.objset.pool.tops[0]
    width = top.width_at(bp.phys_birth or bp.birth)
    dva = bp.dvas[0]
    dev, off, valid = raidz.map_expanded(dva.offset, bp.psize, len(top.children), width,
                                         top.nparity, top.ashift)
    leaves = [c.path for c in top.children]
    sectors = [(leaves.index(top.children[int(dev[0, c])].path), VDEV_LABEL_START_SIZE
                + int(off[0, c])) for c in range(top.nparity, dev.shape[1])]
    return bp, width, sectors


def test_zfs23_blocks_carry_the_checksums_we_verify():
    """The fixture's blake3 block really is blake3 (keyed with the pool's salt): its words
    are recomputed from the data, and a flipped bit does not match."""
    bp, width, _ = _blake3_block_sectors()
    assert checksum.algo_name(bp.cksum_type) == "blake3" and width == 3 and bp.birth < 104
    ctx = _open(INTACT)
    pool = resolve(ctx.root, f"storage/zfs/{BLAKE3_FILE}").source.dnode.objset.pool
    data = pool.read_physical(bp)
    salt = pool.checksum_salt
    assert len(salt) == 32
    assert checksum.compute("blake3", data, bp.little, salt) == tuple(bp.cksum)
    bad = bytearray(data)
    bad[1000] ^= 4
    assert checksum.compute("blake3", bytes(bad), bp.little, salt) != tuple(bp.cksum)
    with pytest.raises(checksum.Unverifiable):
        checksum.compute("blake3", data, bp.little, None)
    with pytest.raises(checksum.Unverifiable):
        checksum.compute("checksum-99", data)


def test_zfs23_corrupt_blake3_block_is_repaired_from_parity():
    """Garbage over one data sector of a blake3 block (random data: no decompressor would
    notice) on one member: the block is rebuilt from parity, the file matches and the
    repair is reported."""
    _, _, sectors = _blake3_block_sectors()
    member, offset = sectors[0]
    ctx = _open_members(_members(INTACT, {member: {offset: b"\xa5" * 4096}}))
    want = {e["path"]: e for e in _manifest()["pools"]["rpool"]["datasets"][
        "rpool/data/subvol-103-disk-0"]["files"]}["/pre/random.bin"]["sha256"]
    assert sha256_source(resolve(ctx.root, f"storage/zfs/{BLAKE3_FILE}").source) == want
    assert any(e.code == "checksum-repaired" for e in ctx.report)
    assert not [e for e in ctx.report if e.severity == "error"]


def test_zfs23_unrepairable_blake3_block_reads_eio_and_is_named():
    """Two data sectors of one row destroyed (more than raidz1 can rebuild): the range
    reads EIO, never the damaged bytes, and the damage entry names the file; with
    --bad zero the range reads as zeros (and is still reported)."""
    _, _, sectors = _blake3_block_sectors()
    assert len(sectors) >= 2
    patches = {}
    for member, offset in sectors[:2]:
        patches.setdefault(member, {})[offset] = b"\x5a" * 4096
    ctx = _open_members(_members(INTACT, patches))
    src = resolve(ctx.root, f"storage/zfs/{BLAKE3_FILE}").source
    with pytest.raises(UnreadableError):
        src.read(0, 4096)
    assert src.read(4 << 20, 10) == b""  # past the end: short, not an error
    lost = [e for e in ctx.report if e.code == "unreadable-block"]
    assert lost and lost[0].path == f"storage/zfs/{BLAKE3_FILE}" and lost[0].severity == "error"
    assert "checksum mismatch" in lost[0].message
    # the clone of those blocks (same DVAs) is just as unreadable: never served as is
    with pytest.raises(UnreadableError):
        sha256_source(resolve(ctx.root, "storage/zfs/rpool/data/subvol-103-disk-0/"
                                        "clone-of-pre-random.bin").source)
    ctx = _open_members(_members(INTACT, patches), bad="zero")
    src = resolve(ctx.root, f"storage/zfs/{BLAKE3_FILE}").source
    assert src.read(0, 4096) == bytes(4096)
    assert any(e.code == "unreadable-block" for e in ctx.report)


def test_zfs23_unverifiable_checksum_is_never_served(monkeypatch):
    """Without the blake3 library its blocks cannot be verified: never served.  The
    blake3 dataset (its metadata is blake3 too) is named as unreadable; the cross-dataset
    clone of its blocks in subvol-102 (fletcher4 metadata) reads EIO with a damage entry
    naming the file; the pool says why once; everything else reads on."""
    monkeypatch.setitem(compress._optional, "blake3", None)  # as if not installed
    ctx = _open_members(_members(INTACT))
    why = [e for e in ctx.report if e.code == "checksum-unverifiable"]
    assert len(why) == 1 and "blake3 package is not installed" in why[0].message
    ds = "storage/zfs/rpool/data/subvol-103-disk-0"
    assert not resolve(ctx.root, ds).children()
    assert any(e.path == ds and e.severity == "error" and "blake3" in e.message
               for e in ctx.report)
    clone = "storage/zfs/rpool/data/subvol-102-disk-0/root/text-from-blake3.log"
    with pytest.raises(UnreadableError):
        sha256_source(resolve(ctx.root, clone).source)
    named = [e for e in ctx.report if e.code == "unreadable-block" and e.path == clone]
    assert named and "blake3" in named[0].message
    host = resolve(ctx.root, "storage/zfs/rpool/ROOT/pve-1/etc/hostname")
    assert host.source.read(0, 100) == b"pve\n"


# -- OpenZFS 2.2-2.3 features -----------------------------------------------------------
def test_zfs23_active_features_brt_and_ddt_are_reported():
    """The MOS's active features are exactly `zpool get all`'s active ones; the BRT's
    used/saved bytes are `bcloneused`/`bclonesaved`; the fast_dedup table is named and
    not needed; nothing is reported unsupported."""
    ctx = _open(INTACT)
    m = _manifest()["pools"]["rpool"]
    info = next(e.message for e in ctx.report if e.code == "features")
    active = info.split("active features: ")[1].split(";")[0].split(", ")
    assert sorted(a.split(":")[1] for a in active) == sorted(m["features_active"])
    used, saved = m["properties"]["bcloneused"]["value"], m["properties"]["bclonesaved"]["value"]
    assert f"BRT of vdev 0: {used} bytes of cloned blocks, {saved} bytes saved" in info
    assert "DDT-sha256 (fast_dedup (FDT))" in info
    assert not [e for e in ctx.report if e.code == "unsupported-feature"]


def test_zfs23_per_dataset_features(monkeypatch):
    """Per-dataset features come from each dataset's ZAP (longname on subvol-104 only,
    large_microzap on subvol-103, blake3 also on subvol-102 through the cross-dataset
    clone).  A feature this reader could not read is named at the datasets that use it,
    and the pool opens with the rest."""
    from backends.zfs import dsl, features

    ctx = _open(INTACT)
    pool = resolve(ctx.root, "storage/zfs/rpool/ROOT/pve-1/etc/hostname").source.dnode.objset.pool
    by_name = {ds.name: features.dataset_features(pool.mos, ds.dsobj)
               for ds in dsl.iter_datasets(dsl.walk(pool.mos, [], "rpool"))}
    assert [n for n, f in by_name.items() if "org.zfsonlinux:longname" in f] == [
        "rpool/data/subvol-104-disk-0"]
    assert "com.klarasystems:large_microzap" in by_name["rpool/data/subvol-103-disk-0"]
    assert sorted(n for n, f in by_name.items() if "org.openzfs:blake3" in f) == [
        "rpool/data/subvol-102-disk-0", "rpool/data/subvol-103-disk-0"]
    monkeypatch.setitem(features.UNREADABLE, "org.zfsonlinux:longname", "pretend")
    ctx = _open_members(_members(INTACT))
    named = [e for e in ctx.report if e.code == "unsupported-feature"]
    assert [e.path for e in named] == ["storage/zfs/rpool/data/subvol-104-disk-0"]
    assert "org.zfsonlinux:longname (pretend)" in named[0].message
    host = resolve(ctx.root, "storage/zfs/rpool/ROOT/pve-1/etc/hostname")
    assert host.source.read(0, 100) == b"pve\n"


def test_zfs23_longname_and_large_microzap_directories():
    """300-byte names (ASCII and 150 x 2-byte UTF-8), a 400-byte directory name, and the
    2150-entry micro ZAP > 128 KiB: listed completely, named as in the manifest."""
    ctx = _open(INTACT)
    m = _manifest()["pools"]["rpool"]["datasets"]
    longs = [e["path"] for e in m["rpool/data/subvol-104-disk-0"]["files"]
             if any(len(p.encode()) > 255 for p in e["path"].split("/"))]
    assert len(longs) >= 3
    for p in longs:
        assert resolve(ctx.root, "storage/zfs/rpool/data/subvol-104-disk-0" + p) is not None, p
    big = resolve(ctx.root, "storage/zfs/rpool/data/subvol-103-disk-0/bigdir")
    want = {e["path"].rsplit("/", 1)[1] for e in m["rpool/data/subvol-103-disk-0"]["files"]
            if e["path"].startswith("/bigdir/")}
    assert len(want) == 2150 and set(big.children()) == want


class _MemLeaf:
    """A child vdev in memory for the map tests (reads from its allocatable area)."""

    def __init__(self, size):
        self.buf = bytearray(size)

    def first(self, offset, size):
        if offset < 0 or offset + size > len(self.buf):
            return None
        return bytes(self.buf[offset:offset + size])

    def candidates(self, offset, size, birth=0):
        data = self.first(offset, size)
        if data is not None:
            yield data


@settings(max_examples=60, deadline=None)
@given(st.integers(4, 6), st.integers(1, 2), st.integers(0, 4000), st.integers(1, 70),
       st.booleans(), st.integers(0, 2**32))
def test_expanded_fast_read_equals_the_sector_map(physical, shrink, sector, nsec, bit20, seed):
    """The one-read-per-child path (cached patterns) returns exactly the data sectors the
    row map (vdev_raidz_map_alloc_expanded) names, incl. short last rows and the
    single-parity swap; with a child missing, the per-row reconstruction gives the
    same bytes."""
    from backends.zfs.vdev import Raidz

    ashift, nparity = 9, 1
    logical = physical - shrink
    offset = (sector << ashift) | ((1 << 20) if bit20 else 0)
    size = nsec << ashift
    kids = [_MemLeaf(1 << 22) for _ in range(physical)]
    vd = Raidz(1, kids, nparity, ashift, expand_txgs=list(range(10, 10 + shrink)))
    assert vd.width_at(5) == logical
    dev, off, valid = raidz.map_expanded(offset, size, physical, logical, nparity, ashift)
    data = np.random.default_rng(seed).bytes(size)
    unit = 1 << ashift
    sect = np.zeros((*dev.shape, unit), dtype=np.uint8)
    sect[:, nparity:].transpose(1, 0, 2)[valid[:, nparity:].T] = np.frombuffer(
        data, dtype=np.uint8).reshape(-1, unit)
    sect[:, 0] = np.bitwise_xor.reduce(sect[:, nparity:], axis=1)
    for r in range(dev.shape[0]):
        for c in range(dev.shape[1]):
            if valid[r, c]:
                kids[int(dev[r, c])].buf[int(off[r, c]):int(off[r, c]) + unit] = sect[r, c].tobytes()
    assert next(vd.candidates(offset, size, birth=5)) == data
    kids[int(dev[0, 1])] = _MemLeaf(0)  # the child of the first data sector is gone
    assert next(vd.candidates(offset, size, birth=5)) == data


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.none(), st.integers(-5, 1 << 64), st.lists(st.integers(-5, 1 << 64),
                                                                max_size=8),
                 st.text(max_size=5)),
       st.booleans(), st.integers(0, (1 << 64) - 1), st.integers(0, 1 << 40),
       st.integers(1, 1 << 15), st.integers(0, 1 << 64))
def test_fuzz_hostile_expansion_config(txgs, expanding, reflow, offset, size, birth):
    """A damaged config (raidz_expand_txgs of any shape, raidz_expanding) and uberblock
    (ub_raidz_reflow_info) never raise anything but candidates or nothing."""
    from backends.zfs import vdev as vdevmod

    kids = [{"type": "disk", "guid": g, "path": f"d{g}"} for g in range(1, 5)]
    cfg = {"type": "raidz", "guid": 9, "nparity": 1, "ashift": 12, "children": kids,
           "raidz_expand_txgs": txgs}
    if expanding:
        cfg["raidz_expanding"] = 1
    leaves = {g: [(_MemLeafSource(), None)] for g in range(1, 5)}
    notes = []
    vd = vdevmod.build(cfg, leaves, notes=notes)
    if isinstance(vd, vdevmod.Raidz):
        vd.set_reflow(reflow)
        for cand in itertools.islice(vd.candidates(offset << 9, size << 9, birth), 3):
            assert len(cand) == size << 9


class _MemLeafSource:
    """A small member source for the fuzz test (zeros)."""

    size = 8 << 20

    def read(self, offset, length):
        if offset < 0 or length < 0:
            raise ValueError("negative offset or length")
        return bytes(max(0, min(length, self.size - offset)))


# -- intent log lister ---------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=3000), st.integers(0, 5), st.booleans())
def test_fuzz_zil_records(payload, nblocks, claimed):
    """Log blocks with any contents (as if their checksums matched): the lister returns
    records or names the damage, never raises, and stops on a chain that loops."""
    from backends.zfs import zil
    from backends.zfs.blkptr import BlkPtr

    def bp(seq):
        w = [0] * 16
        w[0], w[1] = 8, 1 << 10
        w[6] = 7 | (7 << 16) | (2 << 32) | (9 << 40) | (1 << 63)  # 4K zilog2
        w[12:16] = [11, 22, 33, seq]
        return struct.pack("<16Q", *w)

    blocks = {}
    for seq in range(1, nblocks + 1):
        head = struct.pack("<Q", 0) + bp(seq + 1 if seq < nblocks else seq) + struct.pack(
            "<Q", min(len(payload) + zil.ZIL_CHAIN_SIZE, 4096)) + bytes(40)
        blocks[seq] = (head + payload).ljust(4096, b"\0")[:4096]

    class Pool:
        def read_zil_block(self, b):
            got = blocks.get(b.cksum[3])
            return (got, True) if got is not None else None

    class Objset:
        little = True
        pool = Pool()
        raw = (bytes(512) + struct.pack("<QQ", 5 if claimed else 0, 0) + bp(1)
               + struct.pack("<QQQ", 3, 2, 10)).ljust(1024, b"\0")
        zil_log = BlkPtr(bp(1), True)

    records, problem = zil.log_records(Objset(), 0)
    assert problem is None or isinstance(problem, str)
    assert len(records) <= nblocks * 4096 // zil.LR_SIZE
    zil.summary(records)
