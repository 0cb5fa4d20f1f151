"""Ceph part B, object layer: onode keys, onodes, extent maps, blobs, object data,
object_info_t / SnapSet / omap, checked against the fixture's ground truth
(ceph-objectstore-tool dumps, librados sha256s); bounded fuzzing of every decoder."""

from __future__ import annotations

import hashlib
import json
import struct
import urllib.parse
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backends.ceph.errors import CephError
from backends.ceph.keys import (CEPH_NOSNAP, ObjectId, decode_onode_key, encode_onode_key,
                                is_onode_key, split_extent_shard_key)
from backends.ceph.objects import BlobError, ObjectSource, decompress
from backends.ceph.onode import (FLAG_SHARED, Blob, Extent, decode_compression_header,
                                 decode_extents, decode_onode)
from backends.ceph.osdtypes import (decode_cls_rbd_snap, decode_object_info, decode_osdmap,
                                    decode_snapset, pg_of, str_hash_rjenkins)
from backends.ceph.rbd import Layout
from pvfs.errors import UnreadableError
from pvfs.source import BytesSource, Source

from conftest import FIXTURES, require_fixture, unpack

GT = FIXTURES / "ceph" / "ground-truth"
FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _zstd_lines(path):
    import zstandard

    with open(path, "rb") as f:
        return zstandard.ZstdDecompressor().decompressobj().decompress(f.read()).decode().splitlines()


def _zstd_json(path):
    import zstandard

    with open(path, "rb") as f:
        return json.loads(zstandard.ZstdDecompressor().decompressobj().decompress(f.read()))


@pytest.fixture(scope="session")
def ceph_dir():
    archive = require_fixture("ceph", "ceph-fixture.tar.zst")
    return unpack(archive) / "ceph-fixture"


@pytest.fixture(scope="session")
def manifest():
    return json.loads((FIXTURES / "ceph" / "manifest.json").read_text())


_STORES = {}


def store(ceph_dir, n):
    from backends.ceph.kv import open_osd
    from backends.ceph.osd import OsdStore
    from pvfs.source import FileSource

    if n not in _STORES:
        osd = open_osd(FileSource(ceph_dir / f"osd.{n}" / "block"))
        _STORES[n] = OsdStore(osd, f"osd.{n}").build_index()
    return _STORES[n]


# -- keys ---------------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, 1, 2])
def test_onode_keys_roundtrip_ground_truth(n):
    lines = _zstd_lines(require_fixture("ceph", "ground-truth", f"kv-keys-osd.{n}.txt.zst"))
    onodes = shards = 0
    for line in lines:
        prefix, key = line.split("\t", 1)
        if prefix != "O":
            continue
        kb = urllib.parse.unquote_to_bytes(key)
        if is_onode_key(kb):
            oid = decode_onode_key(kb)
            assert encode_onode_key(oid) == kb
            if oid.pool >= 0 and oid.name:  # meta objects use another hash
                assert str_hash_rjenkins(oid.name) == oid.hash
            onodes += 1
        else:
            okey, off = split_extent_shard_key(kb)
            assert is_onode_key(okey) and off % 4096 == 0
            shards += 1
    assert onodes > 100 and shards > 50


def test_key_escaping_and_locator():
    oid = ObjectId(7, 0x12345678, b"ns#1", b"a!b~\xff", b"zz", CEPH_NOSNAP)
    k = encode_onode_key(oid)
    assert b"#21" in k and b"~7e" in k and b"#ff" in k and b">" in k
    assert decode_onode_key(k) == oid


@FUZZ
@given(st.binary(max_size=120))
def test_fuzz_onode_key(data):
    try:
        decode_onode_key(data + b"o")
    except CephError:
        pass


# -- onodes against ceph-objectstore-tool dumps -----------------------------------------
_OI_FLAGS = {"lost": 1, "whiteout": 2, "dirty": 4, "omap": 8, "data_digest": 16,
             "omap_digest": 32, "cache_pin": 64, "manifest": 128}


def _overlap(text):
    text = text.strip("[]")
    if not text:
        return []
    return [tuple(int(x) for x in part.split("~")) for part in text.split(",")]


@pytest.mark.parametrize("n", [0, 1, 2])
def test_onodes_equal_objectstore_tool_dump(ceph_dir, n):
    s = store(ceph_dir, n)
    dump = _zstd_json(require_fixture("ceph", "ground-truth", f"onodes-osd.{n}.json.zst"))
    checked_extents = 0
    for obj in dump:
        o = obj["object"]
        snap = CEPH_NOSNAP if o["snapid"] == -2 else o["snapid"]
        key, oid = s.lookup(o["pool"], o["oid"].encode(), o["namespace"].encode(), snap)
        assert oid.hash == o["hash"]
        d = obj["dump"]
        on = s.onode(key)
        want = d["onode"]
        assert (on.nid, on.size) == (want["nid"], want["size"])
        assert on.shards == [(x["offset"], x["bytes"]) for x in want["extent_map_shards"]]
        assert on.expected_object_size == want["expected_object_size"]
        exts, broken = s.extents(key, on)
        assert not broken
        assert len(exts) == len(want["extents"])
        for e, w in zip(exts, want["extents"], strict=False):
            wb = w["blob"]
            assert (e.logical_offset, e.length, e.blob_offset) == \
                (w["logical_offset"], w["length"], w["blob_offset"])
            b = e.blob
            assert b.extents == [(x["offset"], x["length"]) for x in wb["extents"]]
            assert (b.flags, b.logical_length, b.compressed_length) == \
                (wb["flags"], wb["logical_length"], wb["compressed_length"])
            assert (b.csum_type, b.csum_chunk_order) == (wb["csum_type"], wb["csum_chunk_order"])
            assert b.csum_values() == wb["csum_data"]
            if b.flags & FLAG_SHARED and not wb["shared"].get("loaded"):
                assert b.sbid == wb["shared"]["sbid_unloaded"]
            checked_extents += 1
        oi = s.object_info(key)
        info = d["info"]
        assert oi.version_str() == info["version"]
        assert oi.user_version == info["user_version"]
        assert oi.size == info["size"]
        assert oi.flags == sum(_OI_FLAGS[f] for f in info["flags"])
        if snap == CEPH_NOSNAP and d.get("SnapSet", {}).get("clones") is not None:
            ss = s.snapset(key)
            assert ss.seq == d["SnapSet"]["seq"]
            assert ss.clones == [c["snap"] for c in d["SnapSet"]["clones"]]
            for c in d["SnapSet"]["clones"]:
                assert ss.clone_size[c["snap"]] == c["size"]
                assert ss.clone_overlap[c["snap"]] == _overlap(c["overlap"])
                assert ss.clone_snaps[c["snap"]] == c["snaps"]
        if "attrs" in obj:
            assert sorted(s.onode(key).attrs) == sorted(obj["attrs"])
        if obj.get("omap_keys"):
            assert sorted(s.omap(key, oid)) == sorted(k.encode() for k in obj["omap_keys"])
    assert checked_extents > 1000


# -- object data ----------------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, 1, 2])
def test_object_data_sha256(ceph_dir, manifest, n):
    s = store(ceph_dir, n)
    checked = 0
    for im in manifest["images"]:
        for ob in im["objects"]:
            name = ob["name"].encode()
            if n in ob["osds_head"] and ob["head"] is not None:
                key, _ = s.lookup(im["pool_id"], name)
                assert hashlib.sha256(s.read_small(key)).hexdigest() == ob["head"]["sha256"]
                checked += 1
            for snapid, osds in ob["osds_clones"].items():
                if n not in osds:
                    continue
                snap = next(x for x in im["snapshots"] if x["id"] == int(snapid))
                key, _ = s.lookup(im["pool_id"], name, snap=int(snapid))
                want = ob["snap_views"][snap["name"]]
                assert hashlib.sha256(s.read_small(key)).hexdigest() == want["sha256"]
                checked += 1
    live = json.loads((GT / "objects.json").read_text())["live_rados"]["pools"]
    for pool in live.values():
        for name, obj in pool["objects"].items():
            hit = s.lookup(pool["id"], name.encode())
            if hit is None or obj.get("sha256") is None:
                continue
            data = s.read_small(hit[0])
            assert hashlib.sha256(data).hexdigest() == obj["sha256"], name
            checked += 1
    assert checked >= 20


def test_rbd_header_omap_values(ceph_dir):
    s = store(ceph_dir, 0)
    live = json.loads((GT / "objects.json").read_text())["live_rados"]["pools"]
    seen = 0
    for pool in live.values():
        for name, obj in pool["objects"].items():
            if not obj.get("omap"):
                continue
            hit = s.lookup(pool["id"], name.encode())
            if hit is None:
                continue
            got = s.omap(*hit)
            for k, v in obj["omap"].items():
                hexv = v["hex"] if isinstance(v, dict) else v
                assert got[k.encode()].hex() == hexv
                if k.startswith("snapshot_"):
                    snap = decode_cls_rbd_snap(got[k.encode()])
                    assert snap.id == int(k[9:], 16) and snap.name == "snap1"
                    assert snap.image_size == 64 << 20
                seen += 1
    assert seen >= 8


def test_osdmap_from_meta_collection(ceph_dir):
    from backends.ceph.rbd import Cluster

    c = Cluster([store(ceph_dir, 0)], report=lambda *a: None)
    m = c.load_osdmap_from_osds()
    assert m.fsid == "20d52cdf-2b93-4129-877b-465e25196c5f" or len(m.fsid) == 36
    names = {p.name: (p.id, p.size, p.pg_num) for p in m.pools.values()}
    assert names["rbd"] == (2, 2, 16)
    assert names["rbd-zstd"][0] == 3 and names["rbd-lz4"][0] == 4 and names["rbd-snappy"][0] == 5
    # the placement of every object listed by ceph-objectstore-tool agrees with pg_of()
    for n in (0, 1, 2):
        for line in (GT / f"objectstore-list-osd.{n}.txt").read_text().splitlines():
            pgid, o = json.loads(line)
            if o["pool"] < 0 or not o["oid"]:
                continue
            pool, seed = pgid.split(".")
            info = m.pools[o["pool"]]
            assert pg_of(str_hash_rjenkins(o["oid"].encode()), info.pg_num) == int(seed, 16)


# -- checksums, compression ------------------------------------------------------------------
class _Flip(Source):
    def __init__(self, base, at):
        super().__init__()
        self.base, self.at, self.size, self.label = base, at, base.size, "flip"

    def _read(self, off, n):
        d = bytearray(self.base.read(off, n))
        if off <= self.at < off + n:
            d[self.at - off] ^= 0x40
        return bytes(d)


def test_csum_mismatch_is_unreadable_and_reported(ceph_dir, manifest):
    s = store(ceph_dir, 0)
    key, _ = s.lookup(2, b"rbd_data.10491c4715a0.0000000000000006")
    on = s.onode(key)
    exts, _ = s.extents(key, on)
    good = ObjectSource(s.device, exts, on.size)
    first = exts[3]
    phys = first.blob.extents[0][0]
    seen = []
    bad = ObjectSource(_Flip(s.device, phys + 100), exts, on.size,
                       on_damage=lambda *a: seen.append(a))
    lo = first.logical_offset
    assert good.read(0, 4096) == bad.read(0, 4096)
    with pytest.raises(UnreadableError) as ei:
        bad.read(lo, 8192)
    assert ei.value.ranges == [(lo, 4096)]
    assert seen and seen[0][0] == "bad-csum"
    assert good.read(lo + 4096, 4096) == bad.read(lo + 4096, 4096)


def _ceph_compressed(alg, payload, logical):
    hdr = struct.pack("<BI", alg, len(payload))
    return struct.pack("<BBI", 1, 1, len(hdr)) + hdr + payload


def test_decompress_zlib_lz4_formats():
    import lz4.block

    data = (b"pvfs ceph blob " * 700)[:8192]
    comp = zlib.compressobj(5, zlib.DEFLATED, -15)
    raw = b"\0" + comp.compress(data) + comp.flush()
    assert decompress(_ceph_compressed(2, raw, 8192), 8192) == data
    a, b = data[:5000], data[5000:]
    # an LZ4 stream of two dependent segments, as LZ4_compress_fast_continue writes them
    ca = lz4.block.compress(a, store_size=False)
    cb = lz4.block.compress(b, store_size=False, dict=a)
    body = struct.pack("<I", 2) + struct.pack("<II", len(a), len(ca)) + \
        struct.pack("<II", len(b), len(cb)) + ca + cb
    assert decompress(_ceph_compressed(4, body, 8192), 8192) == data
    with pytest.raises(BlobError):
        decompress(_ceph_compressed(9, b"xx", 10), 10)
    with pytest.raises(BlobError):
        decompress(_ceph_compressed(3, b"\x00\x20\x00\x00garbage", 8192), 8192)


@FUZZ
@given(st.binary(max_size=200), st.integers(0, 1 << 20))
def test_fuzz_decompress(data, logical):
    try:
        out = decompress(data, logical)
        assert len(out) == logical
    except BlobError:
        pass


@FUZZ
@given(st.binary(max_size=64))
def test_fuzz_compression_header(data):
    try:
        decode_compression_header(data)
    except CephError:
        pass


# -- fuzzing the decoders -----------------------------------------------------------------------
_SAMPLES = {}


def _samples(ceph_dir):
    if not _SAMPLES:
        s = store(ceph_dir, 0)
        for name in (b"rbd_data.10491c4715a0.0000000000000009", b"rbd_data.10531ec41e2c.0000000000000000",
                     b"rbd_header.10491c4715a0", b"rbd_data.10593070da12.0000000000000000"):
            key, _ = s.lookup(3 if b"10531" in name else 2, name)
            _SAMPLES[name] = s.kv.get("O", key)
            on = decode_onode(_SAMPLES[name])
            for a, v in on.attrs.items():
                _SAMPLES[(name, a)] = v
            if on.shards:
                from backends.ceph.keys import extent_shard_key

                _SAMPLES[(name, "shard")] = s.kv.get("O", extent_shard_key(key, on.shards[0][0]))
    return _SAMPLES


def _mutate(data, flips):
    b = bytearray(data)
    for pos, val in flips:
        if b:
            b[pos % len(b)] = val
    return bytes(b)


@FUZZ
@given(st.data())
def test_fuzz_onode_and_extents(ceph_dir, data):
    samples = _samples(ceph_dir)
    key = data.draw(st.sampled_from(sorted(samples, key=str)))
    base = samples[key]
    flips = data.draw(st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=6))
    cut = data.draw(st.integers(0, len(base)))
    blob = _mutate(base, flips)[:cut] if data.draw(st.booleans()) else _mutate(base, flips)
    for fn in (decode_onode, lambda b: decode_extents(b, {}), decode_object_info, decode_snapset,
               decode_osdmap, decode_cls_rbd_snap):
        try:
            fn(blob)
        except CephError:
            pass


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(blob):
    for fn in (decode_onode, lambda b: decode_extents(b, {}), decode_object_info, decode_snapset,
               decode_osdmap):
        try:
            fn(blob)
        except CephError:
            pass


def test_hostile_counts_are_refused():
    # an extent map announcing 2^32-1 extents in 10 bytes
    with pytest.raises(CephError):
        decode_extents(b"\x02\xff\xff\xff\xff\x0f" + b"\0" * 4, {})
    # an onode whose attr count is huge
    body = b"\x01\x01" + struct.pack("<I", 0xFFFFFFF0)
    with pytest.raises(CephError):
        decode_onode(struct.pack("<BBI", 1, 1, len(body)) + body)


# -- image layout -------------------------------------------------------------------------------
@FUZZ
@given(st.integers(12, 22), st.integers(0, 4), st.integers(1, 5), st.integers(1, 1 << 26),
       st.integers(0, 1 << 26), st.integers(1, 1 << 20))
def test_layout_map_inverts(order, su_shift, sc, size, off, ln):
    osz = 1 << order
    su = osz >> su_shift if osz >> su_shift >= 4096 else osz
    lay = Layout(size, osz, su, sc)
    off %= size
    ln = min(ln, size - off)
    total = 0
    for objno, o_off, pos, n in lay.map(off, ln):
        assert o_off >= 0 and o_off + n <= osz
        assert any(s <= pos and pos + n <= s + l for s, l in lay.object_ranges(objno))
        total += n
    assert total == ln
    assert lay.num_objects() >= max(objno for objno, *_ in lay.map(size - 1, 1)) + 1


def test_object_source_tail_and_holes():
    dev = BytesSource(bytes(range(256)) * 64)
    b = Blob()
    b.extents = [(4096, 4096)]
    b.logical_length = 4096
    src = ObjectSource(dev, [Extent(8192, 0, 4096, b)], 12000, size=16384)
    assert src.read(0, 8192) == bytes(8192)
    # the onode size (12000) ends the data; the slot past it reads as zeros
    assert src.read(8192, 4096) == dev.read(4096, 3808) + bytes(288)
    assert src.block_status() == [(0, 8192, "unmapped"), (8192, 3808, "data"),
                                  (12000, 4384, "unmapped")]


def test_compact_data_index_scales():
    """The per-prefix index of RBD data objects costs ~12 bytes an object."""
    import random
    import tracemalloc

    from backends.ceph.osd import _DataIndex

    rng = random.Random(3)
    objnos = rng.sample(range(1 << 30), 200_000)
    tracemalloc.start()
    di = _DataIndex()
    for o in objnos:
        di.add(o, o & 0xFFFFFFFF ^ 0x5A5A5A5A)
    di.finish()
    cur, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert cur < 200_000 * 40
    for o in objnos[:2000]:
        assert di.find(o) == (o & 0xFFFFFFFF ^ 0x5A5A5A5A)
    assert di.find((1 << 30) + 5) is None
