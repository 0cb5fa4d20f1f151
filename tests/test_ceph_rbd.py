"""Ceph part B end to end: OSD block devices -> pvfs.discover -> RBD images, snapshots,
the guest's GPT partition, the Proxmox view; replicas missing, OSDs missing,
a corrupted replica, hostile input."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import types

import pytest

from pvfs.discover import Options, discover
from backends.ceph.errors import CephError
from pvfs.errors import UnreadableError
from pvfs.nodes import resolve

from conftest import FIXTURES, require_fixture, sha256_source, unpack


@pytest.fixture(scope="session")
def ceph_dir():
    return unpack(require_fixture("ceph", "ceph-fixture.tar.zst")) / "ceph-fixture"


@pytest.fixture(scope="session")
def manifest():
    return json.loads((FIXTURES / "ceph" / "manifest.json").read_text())


def blocks(ceph_dir, *ids):
    return [str(ceph_dir / f"osd.{i}" / "block") for i in ids]


def _missing_ranges(ctx, path):
    out = []
    for e in ctx.report:
        if e.layer == "ceph" and e.path == path and e.code == "missing-objects":
            out.extend(e.ranges)
    return out


def _covered(ranges, off, n):
    return any(o <= off and off + n <= o + ln for o, ln in ranges)


def _overlaps(ranges, off, n):
    return any(o < off + n and off < o + ln for o, ln in ranges)


@pytest.fixture(scope="session")
def ctx_all(ceph_dir):
    return discover(blocks(ceph_dir, 0, 1, 2), Options())


def test_all_images_and_snapshots_sha256(ctx_all, manifest):
    n = 0
    for im in manifest["images"]:
        node = resolve(ctx_all.root, f"storage/ceph/{im['pool']}/{im['name']}")
        assert node is not None, im["name"]
        assert node.size == im["size"]
        assert sha256_source(node.source) == im["sha256"], im["name"]
        n += 1
        for s in im["snapshots"]:
            snode = resolve(ctx_all.root, f"storage/ceph/{im['pool']}/{im['name']}@{s['name']}")
            assert snode.size == s["size"]
            assert sha256_source(snode.source) == s["sha256"]
            n += 1
    assert n == 8
    errors = [e for e in ctx_all.report if e.severity == "error"]
    assert errors == []


def test_tree_proxmox_and_partition(ctx_all, manifest):
    root = ctx_all.root
    assert resolve(root, "vms/100/disk-0.raw").source is \
        resolve(root, "storage/ceph/rbd/vm-100-disk-0").source
    snap = resolve(root, "vms/100/snapshots/snap1/disk-0.raw")
    assert sha256_source(snap.source) == manifest["images"][0]["snapshots"][0]["sha256"]
    for vmid in (101, 102, 103, 200, 201, 202):
        assert resolve(root, f"vms/{vmid}/disk-0.raw") is not None
    part = manifest["ext4"]["partition"]
    p1 = resolve(root, "storage/ceph/rbd/vm-102-disk-0.parts/p1")
    assert p1 is not None and p1.size == part["length_bytes"]
    assert p1.source.read(1080, 2) == b"\x53\xef"  # ext4 superblock magic
    assert resolve(root, "vms/102/disk-0.parts/p1") is not None
    vol = next(v for v in ctx_all.volumes if v.path == "storage/ceph/rbd/vm-102-disk-0")
    assert vol.info["ceph"]["object_size"] == 4 << 20
    assert vol.info["ceph"]["features"] == manifest["images"][2]["features"]
    # expert view: every object of osd.0, data readable
    obj = resolve(root, "storage/ceph/.osd/osd.0/rbd/rbd_id.vm-100-disk-0")
    assert obj.source.read(0, 16)[4:] == b"10491c4715a0"
    assert resolve(root, "storage/ceph/.osd/osd.0/rbd/rbd_data.10491c4715a0.0000000000000008@4") \
        is not None
    meta = json.loads(resolve(root, "storage/ceph/.osd/osd.0/rbd/"
                                    "rbd_data.10491c4715a0.0000000000000008.meta.json").render())
    assert meta["object_info"]["whiteout"] and meta["snapset"]["clones"] == [4]
    hdr = json.loads(resolve(root, "storage/ceph/.osd/osd.0/rbd/"
                                   "rbd_header.10491c4715a0.meta.json").render())
    assert hdr["omap"]["size"] == "0000000400000000"


@pytest.mark.parametrize("pair", [(0, 1), (0, 2), (1, 2)])
def test_one_osd_removed_still_reads(ceph_dir, manifest, pair):
    ctx = discover(blocks(ceph_dir, *pair), Options())
    for im in manifest["images"]:
        node = resolve(ctx.root, f"storage/ceph/{im['pool']}/{im['name']}")
        assert sha256_source(node.source) == im["sha256"], (pair, im["name"])
        for s in im["snapshots"]:
            snode = resolve(ctx.root, f"storage/ceph/{im['pool']}/{im['name']}@{s['name']}")
            assert sha256_source(snode.source) == s["sha256"]
    assert not [e for e in ctx.report if e.code == "missing-objects"]


@pytest.mark.parametrize("only", [0, 1, 2])
def test_all_replicas_removed_exactly_reported(ceph_dir, manifest, only):
    """With one OSD left, objects whose replicas are all gone are reported with their
    image ranges and read as EIO (the default loss policy); every object still present
    reads back exactly."""
    ctx = discover(blocks(ceph_dir, only), Options())
    lost_objects = 0
    for im in manifest["images"]:
        path = f"storage/ceph/{im['pool']}/{im['name']}"
        node = resolve(ctx.root, path)
        osz = im["object_size"]
        if node is None:  # its name is lost with rbd_directory and rbd_id: shown by id
            path = f"storage/ceph/{im['pool']}/image-{im['id']}"
            node = resolve(ctx.root, path)
        if node is None:  # header and every data object gone
            assert all(only not in ob["osds_head"] for ob in im["objects"])
            continue
        header_lost = any(e.path == path and e.code == "rbd-header-lost" for e in ctx.report)
        if header_lost:
            assert node.size <= -(-im["size"] // osz) * osz
        ranges = _missing_ranges(ctx, path)
        for ob in im["objects"]:
            off = ob["objno"] * osz
            n = min(osz, im["size"] - off)
            if ob["head"] is None or off >= node.size:
                continue
            if only in ob["osds_head"]:
                assert not _overlaps(ranges, off, n), (im["name"], ob["name"])
                data = node.source.read(off, ob["head"]["size"])
                assert hashlib.sha256(data).hexdigest() == ob["head"]["sha256"]
            else:
                assert _covered(ranges, off, n), (im["name"], ob["name"])
                with pytest.raises(UnreadableError):
                    node.source.read(off, 4096)
                lost_objects += 1
        # every reported range is an object-sized piece of the image
        for o, ln in ranges:
            assert o % osz == 0 and (ln % osz == 0 or o + ln == node.size)
    assert lost_objects > 0


def test_object_map_tells_unwritten_from_lost(ceph_dir):
    """osd.1 alone lacks PG 2.b, where vm-100's never-written object 3 would live. The
    snapshot's object map (on osd.1) says it never existed: not reported; the head's object
    map is not on osd.1, so there the object is honestly reported as unknown."""
    from backends.ceph.osdtypes import decode_object_map

    ctx = discover(blocks(ceph_dir, 1), Options())
    head = _missing_ranges(ctx, "storage/ceph/rbd/vm-100-disk-0")
    snap = _missing_ranges(ctx, "storage/ceph/rbd/vm-100-disk-0@snap1")
    assert _covered(head, 3 << 22, 4 << 20)
    assert snap == []
    states = decode_object_map(bytes.fromhex(
        "0e00000001010800000010000000000000007c4f14010c000000e6b3c16e010000006f616110"))
    assert [i for i, s in enumerate(states) if s] == [0, 1, 2, 4, 6, 7, 9, 10, 15]


def test_missing_object_eio_policy(ceph_dir, manifest):
    ctx = discover(blocks(ceph_dir, 2), Options(bad="eio"))
    node = resolve(ctx.root, "storage/ceph/rbd/vm-101-disk-0")
    im = next(i for i in manifest["images"] if i["name"] == "vm-101-disk-0")
    lost = next(o for o in im["objects"] if 2 not in o["osds_head"])
    with pytest.raises(UnreadableError):
        node.source.read(lost["objno"] * im["object_size"], 4096)
    kept = next(o for o in im["objects"] if 2 in o["osds_head"])
    data = node.source.read(kept["objno"] * im["object_size"], kept["head"]["size"])
    assert hashlib.sha256(data).hexdigest() == kept["head"]["sha256"]
    st = node.source.block_status(lost["objno"] * im["object_size"], 4096)
    assert st == [(lost["objno"] * im["object_size"], 4096, "unreadable")]


def test_osd_and_mon_directories_as_inputs(ceph_dir, manifest):
    ctx = discover([str(ceph_dir / "osd.1"), str(ceph_dir / "osd.2"), str(ceph_dir / "mon.a")],
                   Options())
    im = manifest["images"][5]
    node = resolve(ctx.root, f"storage/ceph/{im['pool']}/{im['name']}")
    assert sha256_source(node.source) == im["sha256"]
    # the OSD data dir's small files were not taken as disks
    assert resolve(ctx.root, "storage/files/osd.1/whoami") is None
    text = resolve(ctx.root, "storage/ceph/cluster.txt").render().decode()
    assert "pools from osdmap epoch" in text and "monitor store" in text
    assert "rbd-snappy/vm-202-disk-0: id 105754424523 format 2 size 8388608" in text


def test_ceph_mon_option_names_pools(ceph_dir):
    ctx = discover(blocks(ceph_dir, 0),
                   Options(backend_options={"ceph_mon": [str(ceph_dir / "mon.a")]}))
    assert resolve(ctx.root, "storage/ceph/rbd-zstd/vm-200-disk-0") is not None
    assert b"monitor store" in resolve(ctx.root, "storage/ceph/cluster.txt").render()


def _sparse_copy(src, dst):
    subprocess.run(["cp", "--sparse=always", str(src), str(dst)], check=True)


def test_corrupted_replica_falls_back(ceph_dir, manifest, tmp_path):
    """A flipped byte in osd.0's copy of an object: its crc32c fails, the read goes to
    osd.1's replica, the damage is reported; with osd.0 alone the range is EIO."""
    from backends.ceph.kv import open_osd
    from backends.ceph.osd import OsdStore
    from pvfs.source import FileSource

    im = manifest["images"][1]  # vm-101-disk-0
    ob = next(o for o in im["objects"] if o["osds_head"] == [0, 1])
    st = OsdStore(open_osd(FileSource(ceph_dir / "osd.0" / "block")), "osd.0").build_index()
    key, _ = st.lookup(2, ob["name"].encode())
    exts, _ = st.extents(key, st.onode(key))
    e = exts[0]
    phys = e.blob.extents[0][0] + 10
    dst = tmp_path / "osd0.block"
    _sparse_copy(ceph_dir / "osd.0" / "block", dst)
    with open(dst, "r+b") as f:
        f.seek(phys)
        b = f.read(1)
        f.seek(phys)
        f.write(bytes([b[0] ^ 0xFF]))
    ctx = discover([str(dst), *blocks(ceph_dir, 1)], Options())
    node = resolve(ctx.root, "storage/ceph/rbd/vm-101-disk-0")
    assert sha256_source(node.source) == im["sha256"]
    img_off = ob["objno"] * im["object_size"] + e.logical_offset
    bad = [x for x in ctx.report if x.code == "bad-csum"]
    assert bad and bad[0].path == "storage/ceph/rbd/vm-101-disk-0"
    assert bad[0].ranges == ((img_off, 4096),)
    ctx1 = discover([str(dst)], Options(bad="eio"))
    node1 = resolve(ctx1.root, "storage/ceph/rbd/vm-101-disk-0")
    with pytest.raises(UnreadableError):
        node1.source.read(img_off, 4096)
    assert node1.source.read(img_off + 4096, 4096) == node.source.read(img_off + 4096, 4096)


def test_hostile_inputs_do_not_crash(ceph_dir, tmp_path):
    src = ceph_dir / "osd.0" / "block"
    # a truncated device: label fine, BlueFS and everything else gone
    trunc = tmp_path / "trunc.block"
    with open(src, "rb") as f, open(trunc, "wb") as g:
        g.write(f.read(1 << 16))
    # the label intact but BlueFS superblock and log zeroed
    wiped = tmp_path / "wiped.block"
    _sparse_copy(src, wiped)
    with open(wiped, "r+b") as f:
        f.seek(4096)
        f.write(bytes(1 << 20))
    for path in (trunc, wiped):
        ctx = discover([str(path)], Options())
        assert not [e for e in ctx.report if e.code == "internal-error"], list(ctx.report)
    # a copy of an OSD given twice: merged, both copies agree
    ctx = discover([*blocks(ceph_dir, 0), str(wiped)], Options())
    assert not [e for e in ctx.report if e.code == "internal-error"]
    shutil.rmtree(tmp_path, ignore_errors=True)
    assert not os.path.exists(trunc)


class _DamagedKV:
    """A KV view in which some values are replaced (damaged metadata)."""

    def __init__(self, kv, bad):
        self.kv, self.bad = kv, bad

    def get(self, prefix, key):
        if (prefix, bytes(key)) in self.bad:
            return self.bad[(prefix, bytes(key))]
        return self.kv.get(prefix, key)

    def iterate(self, prefix, start=b"", end=None, fill_cache=True):
        return self.kv.iterate(prefix, start, end, fill_cache)


def _stores(ceph_dir, *ids):
    from backends.ceph.kv import open_osd
    from backends.ceph.osd import OsdStore
    from pvfs.cache import METADATA_CACHE
    from pvfs.source import FileSource

    METADATA_CACHE.clear()
    return [OsdStore(open_osd(FileSource(ceph_dir / f"osd.{i}" / "block")), f"osd.{i}").build_index()
            for i in ids]


@pytest.mark.parametrize("what", ["onode", "shard"])
def test_damaged_metadata_uses_the_other_replica(ceph_dir, manifest, what):
    from backends.ceph.keys import extent_shard_key
    from backends.ceph.rbd import Cluster

    im = manifest["images"][1]  # vm-101-disk-0
    ob = next(o for o in im["objects"] if o["osds_head"] == [0, 1] and o["head"]["size"] == 4 << 20)
    s0, s1 = _stores(ceph_dir, 0, 1)
    key, _ = s0.lookup(2, ob["name"].encode())
    on = s0.onode(key)
    if what == "onode":
        bad = {("O", key): s0.kv.get("O", key)[:40]}  # truncated onode
    else:
        skey = extent_shard_key(key, on.shards[1][0])
        bad = {("O", skey): b"\x02\x05garbage"}
    from pvfs.cache import METADATA_CACHE

    METADATA_CACHE.clear()
    s0.kv = _DamagedKV(s0.kv, bad)
    seen = []
    for stores, ok in (([s0, s1], True), ([s0], False)):
        c = Cluster(stores, report=lambda *a, seen=seen: seen.append(a), bad="zero")
        c.load_osdmap_from_osds()
        img = c.open_image_v2(2, im["name"], im["id"])
        src = c.image_source(img, None, "storage/ceph/rbd/vm-101-disk-0")
        start = ob["objno"] * im["object_size"]
        if ok:
            assert sha256_source(src) == im["sha256"]
        else:
            data = src.read(start, 4 << 20)  # --bad zero: the damaged part reads as zeros
            assert hashlib.sha256(data).hexdigest() != ob["head"]["sha256"]
    codes = {a[2] for a in seen}
    assert ("bad-onode" in codes) if what == "onode" else ("replica-failed" in codes)


def test_clone_reads_parent_below_overlap(ceph_dir, manifest):
    """Layering: vm-101 made (in memory) a clone of vm-100@snap1 with a 28 MiB overlap: the
    objects vm-101 never wrote read the parent's bytes below the overlap, zeros above."""
    import struct

    from backends.ceph.osdtypes import decode_cls_rbd_parent
    from backends.ceph.rbd import Cluster

    body = struct.pack("<q", 2) + struct.pack("<I", 0) + struct.pack("<I", 12) + \
        b"10491c4715a0" + struct.pack("<Q", 4) + b"\x01" + struct.pack("<Q", 28 << 20)
    par = decode_cls_rbd_parent(struct.pack("<BBI", 2, 2, len(body)) + body)
    assert (par.pool_id, par.image_id, par.snap_id, par.overlap) == (2, "10491c4715a0", 4, 28 << 20)
    stores = _stores(ceph_dir, 0, 1)
    c = Cluster(stores, report=lambda *a: None)
    c.load_osdmap_from_osds()
    child = c.open_image_v2(2, "vm-101-disk-0", "104f9c933676")
    plain = c.image_source(child, None, "child-plain")
    child.parent = par
    clone = c.image_source(child, None, "child")
    pimg = c.open_image_v2(2, "vm-100-disk-0", "10491c4715a0")
    parent = c.image_source(pimg, pimg.snaps[0], "parent")
    osz = 4 << 20
    written = {o["objno"] for o in manifest["images"][1]["objects"]}
    from_parent = 0
    for objno in range(10):
        got = clone.read(objno * osz, osz)
        if objno in written:
            assert got == plain.read(objno * osz, osz)
        elif objno < 7:  # below the overlap
            assert got == parent.read(objno * osz, osz)
            from_parent += got != bytes(osz)
        else:  # vm-100 has data in object 7, but it is above the overlap
            assert got == bytes(osz) and parent.read(objno * osz, osz) != bytes(osz)
    assert from_parent == 1  # object 6 (vm-100 object 5 never existed)


def test_fuzz_damaged_onodes_never_crash(ceph_dir):
    """Random damage to onode and extent-shard values (bounded): opening and reading the
    images gives data, zeros or UnreadableError with damage entries, never another error."""
    import random

    from backends.ceph.rbd import Cluster
    from pvfs.cache import METADATA_CACHE

    (s0,) = _stores(ceph_dir, 0)
    keys = [k for k, _ in s0.kv.iterate("O")]
    base_kv = s0.kv
    rng = random.Random(1234)
    for _round in range(6):
        bad = {}
        for k in rng.sample(keys, 25):
            v = bytearray(base_kv.get("O", k))
            for _ in range(rng.randint(1, 4)):
                v[rng.randrange(len(v))] = rng.randrange(256)
            if rng.random() < 0.3:
                v = v[:rng.randrange(len(v) + 1)]
            bad[("O", k)] = bytes(v)
        METADATA_CACHE.clear()
        s0.kv = _DamagedKV(base_kv, bad)
        for eio in (False, True):
            seen = []
            c = Cluster([s0], report=lambda *a, seen=seen: seen.append(a), bad="eio" if eio else "zero")
            c.load_osdmap_from_osds()
            for pool in c.pool_ids():
                names, _ = c.list_images(pool)
                for name, iid in names.items():
                    try:
                        img = c.open_image_v2(pool, name, iid)
                    except CephError:
                        continue
                    src = c.image_source(img, None, name)
                    for off in range(0, src.size, 1 << 19):
                        try:
                            src.read(off, 1 << 16)
                        except UnreadableError:
                            assert eio
    s0.kv = base_kv
    METADATA_CACHE.clear()


def test_object_index_scan_leaves_the_block_cache_alone(ceph_dir, manifest):
    """Building an OSD's object index reads every onode key once: its data blocks are not
    put in METADATA_CACHE (bench_scale_ceph.py, 2 million objects on 4 OSDs: the cache
    filled to its budget with blocks never read again, RSS 178 MiB; 200,000: 95 -> 47 MiB),
    and the index finds every head object the manifest places on the OSD."""
    from backends.ceph.kv import open_osd
    from backends.ceph.osd import OsdStore
    from pvfs.cache import METADATA_CACHE
    from pvfs.source import FileSource

    METADATA_CACHE.clear()
    kv = open_osd(FileSource(ceph_dir / "osd.0" / "block")).kv

    def blocks():
        return {k for k in METADATA_CACHE._items if k[0] == "rocksdb-block"}

    before = blocks()
    store = OsdStore(types.SimpleNamespace(kv=kv, source=FileSource(ceph_dir / "osd.0" / "block")),
                     "osd.0").build_index()
    assert blocks() == before
    heads = [(im["pool_id"], ob["name"]) for im in manifest["images"] for ob in im["objects"]
             if 0 in ob["osds_head"]]
    missed = [n for pool, n in heads if store.lookup(pool, n.encode()) is None]
    assert heads and not missed, missed
