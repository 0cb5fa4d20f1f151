"""Erasure-coded data pools (backends/ceph/ec.py) against real Ceph 20 shards: the
``rbd-ec`` pool of ceph-20 (isa reed_sol_van, k=2 m=1, stripe unit 4 KiB) holding the data
objects of rbd/vm-300-disk-0; its sha256 (from ``rbd export``) with all OSDs and with
each single OSD left out (a data shard rebuilt from parity), EIO and a report with two
OSDs left out; the OSDMap's erasure code profile; bounded fuzzing."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backends.ceph.ec import EcLayout, EcObjectSource
from backends.ceph.errors import CephError
from backends.ceph.kv import open_osd
from backends.ceph.osd import OsdStore
from backends.ceph.osdtypes import decode_osdmap
from backends.ceph.rbd import Cluster
from pvfs.discover import Options, discover
from pvfs.errors import UnreadableError
from pvfs.nodes import resolve
from pvfs.source import BytesSource, FileSource

from conftest import FIXTURES, require_fixture, sha256_source, unpack

IMAGE = "storage/ceph/rbd/vm-300-disk-0"
FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def ceph_dir():
    return unpack(require_fixture("ceph-20", "ceph-fixture.tar.zst")) / "ceph-fixture"


@pytest.fixture(scope="module")
def image():
    m = json.loads((FIXTURES / "ceph-20" / "manifest.json").read_text())
    return next(im for im in m["images"] if im["name"] == "vm-300-disk-0")


@pytest.fixture(scope="module")
def stores(ceph_dir):
    return [OsdStore(open_osd(FileSource(str(ceph_dir / f"osd.{i}" / "block"))), f"osd.{i}")
            .build_index() for i in range(3)]


def _blocks(ceph_dir, ids):
    return [str(ceph_dir / f"osd.{i}" / "block") for i in ids]


def _shards(stores, name):
    out = {}
    for st_ in stores:
        hit = st_.lookup(6, name)
        if hit is not None:
            out[hit[1].shard] = st_.read_small(hit[0])
    return out


def test_profile_from_the_osdmap(stores):
    c = Cluster(stores[:1], lambda *a, **k: None)
    m = c.load_osdmap_from_osds()
    pool = m.pools[6]
    assert (pool.name, pool.erasure, pool.size, pool.pg_num) == ("rbd-ec", True, 3, 8)
    assert pool.erasure_code_profile == "ec-fixture"
    prof = m.ec_profiles["ec-fixture"]
    assert (prof["k"], prof["m"], prof["plugin"], prof["technique"]) == ("2", "1", "isa", "reed_sol_van")
    assert prof["crush-failure-domain"] == "osd"  # make-ceph-fixture.sh's profile
    lay = c.ec_layout(6)
    assert (lay.k, lay.m, lay.stripe_unit, lay.problem, lay.can_rebuild) == (2, 1, 4096, None, True)
    assert c.ec_layout(2) is None  # replicated


def test_parity_is_the_xor_of_the_data_shards(stores, image):
    """Ceph's own coding chunk equals the XOR of the data chunks, and the data chunks
    interleaved by stripe unit are the object (sha256 of the librados view)."""
    n = 0
    for obj in image["objects"]:
        sh = _shards(stores, obj["name"].encode())
        assert sorted(sh) == [0, 1, 2]
        a, b, c = (np.frombuffer(sh[i], np.uint8) for i in range(3))
        assert len(a) == len(b) == len(c) == -(-obj["head"]["size"] // 8192) * 4096
        assert np.array_equal(a ^ b, c), obj["name"]
        joined = np.stack([a.reshape(-1, 4096), b.reshape(-1, 4096)], axis=1).tobytes()
        assert hashlib.sha256(joined[:obj["head"]["size"]]).hexdigest() == obj["head"]["sha256"]
        n += 1
    assert n == 3


@pytest.mark.parametrize("ids", [(0, 1, 2), (0, 1), (0, 2), (1, 2)])
def test_image_sha256(ceph_dir, image, ids):
    ctx = discover(_blocks(ceph_dir, ids), Options())
    node = resolve(ctx.root, IMAGE)
    assert node is not None and node.size == image["size"]
    assert sha256_source(node.source) == image["sha256"]
    assert resolve(ctx.root, "vms/300/disk-0.raw").source is node.source
    codes = {e.code for e in ctx.report if e.path == IMAGE}
    assert "erasure-coded-data" not in codes and "ec-shards-missing" not in codes
    rebuilt = [e for e in ctx.report if e.code == "ec-rebuilt" and e.path == IMAGE]
    if len(ids) == 3:
        assert rebuilt == []
    else:
        # every object whose data shard was on the OSD left out is named (and only those)
        lost_osd = ({0, 1, 2} - set(ids)).pop()
        expect = {o["name"] for o in image["objects"]
                  if _shard_on(ceph_dir, o["name"], lost_osd) in (0, 1)}
        assert {e.message.split(":")[0] for e in rebuilt} == expect
        assert expect


_SHARD_CACHE = {}


def _shard_on(ceph_dir, name, osd):
    """The shard id of ``name`` that ``ground-truth/objectstore-list-osd.N.txt`` lists."""
    if osd not in _SHARD_CACHE:
        p = FIXTURES / "ceph-20" / "ground-truth" / f"objectstore-list-osd.{osd}.txt"
        m = {}
        for line in p.read_text().splitlines():
            if line.startswith("["):
                _pg, o = json.loads(line)
                if o.get("pool") == 6 and o["oid"]:
                    m[o["oid"]] = o["shard_id"]
        _SHARD_CACHE[osd] = m
    return _SHARD_CACHE[osd].get(name)


@pytest.fixture(scope="module")
def truth(ceph_dir, image):
    """The image read with all OSDs, checked against the manifest (rbd export)."""
    ctx = discover(_blocks(ceph_dir, (0, 1, 2)), Options())
    data = resolve(ctx.root, IMAGE).source.read(0, image["size"])
    assert hashlib.sha256(data).hexdigest() == image["sha256"]
    return data


@pytest.mark.parametrize("only", [0, 1])
@pytest.mark.parametrize("bad", ["eio", "zero"])
def test_two_osds_missing(ceph_dir, image, truth, only, bad):
    """osd.2 and one more left out: every object has one shard; the stripe units of its
    lost data shards are reported and read EIO (or zeros); every other byte is right."""
    ctx = discover(_blocks(ceph_dir, [only]), Options(bad=bad))
    src = resolve(ctx.root, IMAGE).source
    rep = [e for e in ctx.report if e.path == IMAGE and e.code == "ec-shards-missing"]
    assert len(rep) == 1 and rep[0].severity == "error"
    ranges = sorted(rep[0].ranges)
    lost = np.zeros(image["size"], bool)
    for o, n in ranges:
        lost[o:o + n] = True
    osz, su = image["object_size"], 4096
    for obj in image["objects"]:
        start, size = obj["objno"] * osz, obj["head"]["size"]
        have = {_shard_on(ceph_dir, obj["name"], only)}
        for s in range(0, -(-size // (2 * su))):
            for i in (0, 1):
                o = start + s * 2 * su + i * su
                if o < start + size:
                    assert lost[o] == (i not in have), (obj["name"], s, i)
    assert lost.sum() > 0
    assert not lost[2 * osz:3 * osz].any()  # object 2 never written (its PG is here)
    # every byte outside the reported ranges equals the truth; inside: EIO or zeros
    got = bytearray()
    for off in range(0, image["size"], su):
        if lost[off]:
            assert lost[off:off + su].all()
            if bad == "eio":
                with pytest.raises(UnreadableError):
                    src.read(off, su)
                got += truth[off:off + su]
            else:
                assert src.read(off, su) == bytes(su)
                got += truth[off:off + su]
        else:
            got += src.read(off, su)
    assert bytes(got) == truth


def test_cluster_txt_names_the_profile(ceph_dir):
    ctx = discover(_blocks(ceph_dir, (0, 1, 2)), Options())
    text = resolve(ctx.root, "storage/ceph/cluster.txt").render().decode()
    assert "rbd-ec erasure profile ec-fixture (isa reed_sol_van k=2 m=1) stripe_width=8192" in text


# -- synthetic: layout, rebuild, refusals ------------------------------------------------------
def _encode(obj, k, su):
    sw = k * su
    nstripes = -(-len(obj) // sw)
    padded = np.frombuffer(obj + bytes(nstripes * sw - len(obj)), np.uint8)
    chunks = padded.reshape(nstripes, k, su).transpose(1, 0, 2).reshape(k, -1)
    parity = np.bitwise_xor.reduce(chunks, axis=0)
    return [c.tobytes() for c in chunks] + [parity.tobytes()]


class _Bad(BytesSource):
    def _read(self, offset, length):
        raise UnreadableError("bad", [(offset, length)])


@FUZZ
@given(st.data())
def test_fuzz_layout_and_rebuild(data):
    k = data.draw(st.integers(1, 5))
    su = data.draw(st.sampled_from([512, 1024, 4096]))
    size = data.draw(st.integers(1, 6 * k * su))
    obj = data.draw(st.binary(min_size=size, max_size=size))
    shards = _encode(obj, k, su)
    lost = data.draw(st.one_of(st.none(), st.integers(0, k)))
    how = data.draw(st.sampled_from(["absent", "bad", "bad-then-good"]))
    srcs = {}
    for i, s in enumerate(shards):
        if i == lost and how == "absent":
            continue
        if i == lost:
            srcs[i] = [_Bad(s)] + ([BytesSource(s)] if how == "bad-then-good" else [])
        else:
            srcs[i] = [BytesSource(s)]
    told = []
    src = EcObjectSource(EcLayout(k, 1, su, "isa", "reed_sol_van"), srcs, size, on_rebuild=told.append)
    off = data.draw(st.integers(0, size - 1))
    n = data.draw(st.integers(1, size - off))
    assert src.read(off, n) == obj[off:off + n]
    assert src.read(0, size) == obj
    if lost is not None and lost < k and how != "bad-then-good" and size > lost * su:
        assert told == [lost]
    else:
        assert told == []


def test_m2_lost_data_shard_is_not_guessed():
    obj = bytes(range(256)) * 64
    shards = _encode(obj, 2, 1024)  # (its "parity" row would be right; m=2 is still refused)
    src = EcObjectSource(EcLayout(2, 2, 1024, "isa", "reed_sol_van"),
                         {1: [BytesSource(shards[1])], 2: [BytesSource(shards[2])]}, len(obj))
    assert src.read(1024, 1024) == obj[1024:2048]  # data chunk 1 of stripe 0: no decoding
    with pytest.raises(UnreadableError) as ei:
        src.read(0, 10)
    assert ei.value.ranges and ei.value.ranges[0][0] == 0
    cauchy = EcObjectSource(EcLayout(2, 1, 1024, "jerasure", "cauchy_good"),
                            {1: [BytesSource(shards[1])], 2: [BytesSource(shards[2])]}, len(obj))
    with pytest.raises(UnreadableError):
        cauchy.read(0, 10)


@FUZZ
@given(st.data())
def test_fuzz_osdmap_profiles(stores, data):
    """The pg_pool_t tail and the erasure_code_profiles walk of a real Ceph 20 OSDMap, mutated."""
    c = Cluster(stores[:1], lambda *a, **k: None)
    base = _osdmap_bytes(stores[0])
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(base) - 1), st.integers(0, 255)),
                               max_size=6))
    blob = bytearray(base)
    for pos, v in flips:
        blob[pos] = v
    cut = data.draw(st.integers(0, len(blob)))
    try:
        m = decode_osdmap(bytes(blob[:cut]) if data.draw(st.booleans()) else bytes(blob))
    except CephError:
        return
    for p in m.pools.values():
        c.pools = m.pools
        c.ec_layout(p.id)  # never raises


_OSDMAP = {}


def _osdmap_bytes(st_):
    if "b" not in _OSDMAP:
        best = max(((int(n[7:]), snaps) for (p, _ns, n), snaps in st_.other.items()
                    if p == -1 and n.startswith(b"osdmap.")), key=lambda t: t[0])
        _OSDMAP["b"] = st_.read_small(next(iter(best[1].values())))
    return _OSDMAP["b"]


def test_unsupported_profiles_are_named():
    from backends.ceph.ec import ec_layout
    from backends.ceph.osdtypes import PoolInfo

    def pool(prof, flags=0, sw=8192):
        return PoolInfo(9, "p", 3, 3, 8, 8, flags, sw, "x", prof)

    base = {"k": "2", "m": "1", "plugin": "isa", "technique": "reed_sol_van"}
    assert ec_layout(pool(base)).problem is None
    assert "optimized EC" in ec_layout(pool(base, flags=1 << 19)).problem
    assert "lrc" in ec_layout(pool(dict(base, plugin="lrc"))).problem
    assert "not a multiple" in ec_layout(pool(base, sw=8193)).problem
    assert "not found" in ec_layout(PoolInfo(9, "p", 3, 3, 8, 8, 0, 8192, "gone", None)).problem
    assert not ec_layout(pool(dict(base, m="2"))).can_rebuild
    assert not ec_layout(pool(dict(base, plugin="jerasure", technique="cauchy_good"))).can_rebuild
