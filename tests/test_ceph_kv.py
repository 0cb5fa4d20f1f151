"""The BlueStore key/value view (RocksDB SSTs + WAL, sharded column families, merges)
against ceph-kvstore-tool's key listings and Ceph's own compaction."""

from __future__ import annotations

import subprocess
import urllib.parse

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.ceph.bluefs import open_bluefs
from backends.ceph.errors import CephError, LabelError, RocksDBError
from backends.ceph.kv import (KV, BlueFSFiles, int64_array_add, open_kv_dir, open_osd,
                              parse_sharding, xor_merge)
from backends.ceph.rocksdb.db import DB
from pvfs.source import PatchedSource, BytesSource, FileSource, SliceSource

from conftest import FIXTURES

GT = FIXTURES / "ceph" / "ground-truth"


_osds = {}


def osd(ceph_root, name):
    if name not in _osds:
        _osds[name] = open_osd(FileSource(ceph_root / name / "block"))
    return _osds[name]


def truth_keys(n):
    txt = subprocess.run(["zstd", "-dc", str(GT / f"kv-keys-osd.{n}.txt.zst")],
                         capture_output=True, check=True).stdout.decode("latin-1")
    out = set()
    for line in txt.splitlines():
        p, k = line.split("\t", 1)
        out.add((p, urllib.parse.unquote_to_bytes(k)))
    return out


def all_keys(o):
    return {(p, k) for p in o.kv.prefixes() for k, _ in o.kv.iterate(p)}


@pytest.mark.parametrize("name,n", [("osd.0", 0), ("osd.1", 1),
                                    ("variants/osd.0-compacted", 0)])
def test_key_set_equals_kvstore_tool(ceph_root, name, n):
    o = osd(ceph_root, name)
    want = truth_keys(n)
    assert all_keys(o) == want
    assert len(want) > 1000
    assert [d for d in o.damage if d[0] != "info"] == []


def test_killed_osd_key_set(ceph_root):
    """osd.2 was SIGKILLed: its keys come from the WAL alone.  The ground truth was
    listed after ceph-objectstore-tool had mounted the OSD, which replays and deletes
    the deferred transactions (prefix L); everything else must match exactly."""
    o = osd(ceph_root, "osd.2")
    got, want = all_keys(o), truth_keys(2)
    assert want <= got
    extra = got - want
    assert extra and {p for p, _ in extra} == {"L"}
    assert all(len(k) == 8 for _, k in extra)  # deferred txn keys are u64 BE seqs
    assert {k for p, k in got if p == "L"} == {k for _, k in extra}
    assert not any(p == "L" for p, _ in want)


def test_values_equal_ceph_compaction(ceph_root):
    """Every value we build for osd.0 from the WAL (newest wins, T/b merges applied
    by our operators) equals what Ceph's own compaction wrote into the SSTs of the
    compacted copy."""
    a, b = osd(ceph_root, "osd.0"), osd(ceph_root, "variants/osd.0-compacted")
    assert a.db.wal_records > 500 and b.db.wal_records == 0
    n = 0
    for p in a.kv.prefixes():
        va, vb = dict(a.kv.iterate(p)), dict(b.kv.iterate(p))
        assert va == vb, p
        n += len(va)
    assert n == 1295
    merged = [e for c in a.db.cfs.values() for k, es in c.mem.items() for e in es if e[1] == 2]
    assert len(merged) > 100  # the WAL really held merge operands


def test_get_and_bounds(ceph_root):
    kv = osd(ceph_root, "osd.1").kv
    assert kv.get("S", b"blobid_max") is not None
    assert kv.get("S", b"no-such-key") is None
    assert kv.get("B", b"bytes_per_block") == (4096).to_bytes(8, "little")
    keys = [k for k, _ in kv.iterate("O")]
    assert keys == sorted(keys) and len(keys) > 300
    lo, hi = keys[10], keys[50]
    assert [k for k, _ in kv.iterate("O", lo, hi)] == keys[10:50]
    assert kv.get("O", keys[7]) == dict(kv.iterate("O"))[keys[7]]
    assert list(kv.iterate("Q")) == []


def test_label_and_bluefs_in_osd(ceph_root, ceph_manifest):
    o = osd(ceph_root, "osd.1")
    assert o.label.whoami == 1 and o.label.ceph_fsid == ceph_manifest["cluster"]["fsid"]
    assert o.read(0, 8) == b"bluestor"
    assert o.read_extents([(0, 4), (4, 4)]) == b"bluestor"
    assert sorted(o.kv.sharding) == ["L", "O", "P", "m", "p"]


def test_mon_store(ceph_root, ceph_manifest):
    kv = open_kv_dir(ceph_root / "mon.a" / "store.db")
    assert kv.db.wal_records > 100 and kv.damage == []
    assert {"osdmap", "paxos", "monmap", "auth"} <= set(kv.prefixes())
    last = int.from_bytes(kv.get("osdmap", b"last_committed"), "little")
    full = kv.get("osdmap", b"full_%d" % last)
    assert full is not None
    for pool in ("rbd", "rbd-zstd", "rbd-lz4", "rbd-snappy", "device_health_metrics"):
        assert pool.encode() in full


# -- damage -------------------------------------------------------------------------------
class Files:
    """BlueFS files with some replaced (truncated WAL, missing SST)."""

    def __init__(self, bluefs, replace=None, hide=()):
        self.inner = BlueFSFiles(bluefs)
        self.replace = replace or {}
        self.hide = set(hide)

    def listdir(self, d):
        return [n for n in self.inner.listdir(d) if f"{d}/{n}" not in self.hide]

    def open(self, path):
        src = self.inner.open(path)
        fn = self.replace.get(path)
        return fn(src) if fn else src


def _db(ceph_root, name, resync=True, **kw):
    fs = open_bluefs(FileSource(ceph_root / name / "block"))
    sharding = parse_sharding(fs.read_file("sharding/def").decode())
    from backends.ceph.kv import BLUESTORE_MERGE
    db = DB(Files(fs, **kw), "db", ["db.wal", "db"], ["db", "db.slow"], resync=resync)
    return KV(db, sharding, BLUESTORE_MERGE)


def test_truncated_wal_keeps_the_prefix(ceph_root):
    full = all_keys(osd(ceph_root, "osd.0"))
    kv = _db(ceph_root, "osd.0", replace={"db.wal/000035.log": lambda s: SliceSource(s, 0, 700_000)})
    got = {(p, k) for p in kv.prefixes() for k, _ in kv.iterate(p)}
    assert len(got) > 0 and len(got - full) < 50  # older versions of later-rewritten keys
    assert [c for _, c, _ in kv.damage] == ["rocksdb-wal-tail"]
    assert "replay stopped at" in kv.damage[0][2] and "live log" in kv.damage[0][2]


def test_missing_sst_is_reported(ceph_root):
    kv = _db(ceph_root, "variants/osd.0-compacted", hide={"db/000041.sst"})
    assert ("error", "rocksdb-missing-sst") in [(s, c) for s, c, _ in kv.damage]
    # O-1 (191 live onode keys) is lost, O-0 and O-2 still read
    assert sum(1 for _ in kv.iterate("O")) == 421 - 191


def test_corrupt_sst_is_reported(ceph_root):
    def flip(src):
        data = bytearray(src.read(0, src.size))
        data[100] ^= 0xFF
        return BytesSource(bytes(data))
    kv = _db(ceph_root, "variants/osd.0-compacted", replace={"db/000050.sst": flip})
    keys = [k for k, _ in kv.iterate("O")]  # the bad block is skipped and reported
    assert 421 - 127 < len(keys) < 421
    (sev, code, msg), = kv.damage
    assert (sev, code) == ("error", "rocksdb-bad-block") and "checksum mismatch" in msg
    assert len([k for k, _ in kv.iterate("O")]) == len(keys) and len(kv.damage) == 1


def test_open_osd_errors(ceph_root):
    with pytest.raises(LabelError, match="magic"):
        open_osd(BytesSource(bytes(16384)))
    with pytest.raises(CephError):
        open_osd(BytesSource(b"bluestore block device\n" + bytes(9000)))


# -- sharding and merge operators --------------------------------------------------------------
def test_parse_sharding():
    s = parse_sharding("m(3) p(3,0-12) O(3,0-13)=block_cache={type=binned_lru} L P")
    assert s["O"].cf_names() == ["O-0", "O-1", "O-2"] and s["O"].hash_h == 13
    assert s["O"].options == "block_cache={type=binned_lru}"
    assert s["L"].cf_names() == ["L"] and s["p"].hash_l == 0
    with pytest.raises(RocksDBError):
        parse_sharding("m(3")
    with pytest.raises(RocksDBError):
        parse_sharding("m(0)")


def test_merge_operators():
    a = (5).to_bytes(8, "little", signed=True) + (-3).to_bytes(8, "little", signed=True)
    b = (2).to_bytes(8, "little", signed=True) + (1).to_bytes(8, "little", signed=True)
    assert int64_array_add(None, [a, b]) == (7).to_bytes(8, "little") + \
        (-2).to_bytes(8, "little", signed=True)
    assert int64_array_add(a, [b]) == int64_array_add(None, [a, b])
    assert xor_merge(b"\x0f\xf0", [b"\xff\xff"]) == b"\xf0\x0f"
    with pytest.raises(RocksDBError):
        xor_merge(b"\x00", [b"\x00\x00"])


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_parse_sharding_fuzz(text):
    try:
        out = parse_sharding(text)
    except RocksDBError:
        return
    assert all(1 <= s.shards <= 1024 for s in out.values())


def test_missing_wal_is_reported(ceph_root):
    kv = _db(ceph_root, "osd.0", hide={"db.wal/000035.log"})
    assert [c for _, c, _ in kv.damage] == ["rocksdb-wal-missing"]
    assert sum(1 for p in kv.prefixes() for _ in kv.iterate(p)) < 100  # only the tiny SSTs


def test_damaged_label_uses_copy_or_goes_on(ceph_root):
    base = FileSource(ceph_root / "osd.1" / "block")
    label = base.read(0, 4096)
    # Ceph 19 keeps copies at 1 GiB, 10 GiB ...: a damaged label at 0 falls back to them
    o = open_osd(PatchedSource(base, {0: b"\0" * 64, 1 << 30: label}))
    assert o.label.offset == 1 << 30 and o.label.whoami == 1
    assert ("warning", "bluestore-label-copy") in [(s, c) for s, c, _ in o.damage]
    # no copy, but the body still decodes: a crc warning and the OSD opens
    bad = bytearray(label[:200])
    bad[150] ^= 1
    o = open_osd(PatchedSource(base, {0: bytes(bad)}))
    assert ("warning", "bluestore-label-crc") in [(s, c) for s, c, _ in o.damage]
    assert len(list(o.kv.iterate("O"))) == len(list(osd(ceph_root, "osd.1").kv.iterate("O")))


def test_lost_bluefs_super_is_rebuilt_from_the_log(ceph_root):
    base = FileSource(ceph_root / "osd.0" / "block")
    o = open_osd(PatchedSource(base, {4096: bytes(4096)}), bluefs_scan_limit=64 << 20)
    assert ("warning", "bluefs-super-recovered") in [(s, c) for s, c, _ in o.damage]
    assert {p: f.size for p, f in o.bluefs.files.items()} == \
        {p: f.size for p, f in osd(ceph_root, "osd.0").bluefs.files.items()}
    assert all_keys(o) == truth_keys(0)
    with pytest.raises(CephError, match="no BlueFS log found in the first 64 MiB"):
        open_osd(PatchedSource(base, {4096: bytes(4096), 0x2000: bytes(4096)}),
                 bluefs_scan_limit=64 << 20)


def test_corrupt_sst_index_loses_only_that_table(ceph_root):
    def break_index(src):
        from backends.ceph.rocksdb.table import Table
        t = Table(src, "x")
        data = bytearray(src.read(0, src.size))
        data[t.index_handle[0] + 3] ^= 0xFF
        return BytesSource(bytes(data))
    kv = _db(ceph_root, "variants/osd.0-compacted", replace={"db/000041.sst": break_index})
    assert sum(1 for _ in kv.iterate("O")) == 421 - 191  # O-1 lost, O-0 and O-2 read
    assert [c for _, c, m in kv.damage] == ["rocksdb-bad-block"]
    assert "whole table" in kv.damage[0][2]


@pytest.mark.parametrize("name,hide", [
    ("osd.0", {"db/MANIFEST-000034", "db/CURRENT"}),
    ("variants/osd.0-compacted", {"db/MANIFEST-000045"}),
])
def test_lost_manifest_is_salvaged(ceph_root, name, hide):
    """Without a MANIFEST every table in the directory and every log are read;
    the column families come from the tables' properties and the OPTIONS file."""
    kv = _db(ceph_root, name, hide=hide)
    got = {(p, k) for p in kv.prefixes() for k, _ in kv.iterate(p)}
    assert got == truth_keys(0)
    assert "rocksdb-salvage" in [c for _, c, _ in kv.damage]
    assert kv.db.column_family_names()[:4] == ["default", "m-0", "m-1", "m-2"]


def test_osd_info_is_json(ceph_root):
    import json
    info = json.loads(json.dumps(osd(ceph_root, "osd.0").info()))
    assert info["whoami"] == 0 and "osd_key" not in info["meta"]
    assert info["bluefs"]["files"]["db.wal/000035.log"] == 1981272
    assert info["rocksdb"]["column_families"]["O-2"]["tables"] == ["db/000032.sst"]
    assert info["rocksdb"]["wal_files"] == ["db.wal/000035.log"]


def test_damage_met_while_reading_reaches_the_listener(ceph_root):
    def flip(src):
        data = bytearray(src.read(0, src.size))
        data[100] ^= 0xFF
        return BytesSource(bytes(data))
    kv = _db(ceph_root, "variants/osd.0-compacted", replace={"db/000050.sst": flip})
    heard = []
    kv.damage.listener = lambda *e: heard.append(e)
    list(kv.iterate("O"))
    assert [c for _, c, _ in heard] == ["rocksdb-bad-block"]


def test_damaged_wal_block_is_skipped_not_the_rest(ceph_root):
    """A bad spot in the middle of the WAL: RocksDB's point-in-time recovery (what Ceph
    uses) would drop everything after it; the replay skips the damaged 32 KiB block
    and reports the sequence numbers lost."""
    def flip(src):
        data = bytearray(src.read(0, src.size))
        data[100_000] ^= 0x55
        return BytesSource(bytes(data))
    truth = truth_keys(0)
    kv = _db(ceph_root, "osd.0", replace={"db.wal/000035.log": flip})
    got = {(p, k) for p in kv.prefixes() for k, _ in kv.iterate(p)}
    assert sorted(c for _, c, _ in kv.damage) == ["rocksdb-wal-gap", "rocksdb-wal-skipped"]
    assert "sequence numbers 61 to 86 are lost" in " ".join(m for _, _, m in kv.damage)
    strict = _db(ceph_root, "osd.0", resync=False, replace={"db.wal/000035.log": flip})
    got_strict = {(p, k) for p in strict.prefixes() for k, _ in strict.iterate(p)}
    assert [c for _, c, _ in strict.damage] == ["rocksdb-wal-tail"]
    assert len(got ^ truth) < 20 < len(got_strict ^ truth)


@pytest.mark.parametrize("name,manifest_file", [
    ("osd.0", "db/MANIFEST-000034"), ("variants/osd.0-compacted", "db/MANIFEST-000045")])
@pytest.mark.parametrize("fraction", [0.1, 0.4, 0.7, 0.95])
def test_cut_manifest_still_gives_every_value(ceph_root, name, manifest_file, fraction):
    """A MANIFEST cut short (a damaged edit ends its replay) misses families and tables
    created after the cut: they come from the OPTIONS file and the directory listing."""
    want = {(p, k): v for p in osd(ceph_root, name).kv.prefixes()
            for k, v in osd(ceph_root, name).kv.iterate(p)}
    kv = _db(ceph_root, name, replace={manifest_file: lambda s: SliceSource(s, 0, int(s.size * fraction))})
    got = {(p, k): v for p in kv.prefixes() for k, v in kv.iterate(p)}
    assert got == want
    assert "rocksdb-salvage" in [c for _, c, _ in kv.damage]
    assert all(s != "error" for s, _, _ in kv.damage)


def test_lost_sharding_definition_is_inferred(ceph_root):
    """Without sharding/def the column family names give the sharding back."""
    fs = open_bluefs(FileSource(ceph_root / "osd.1" / "block"))
    from backends.ceph.kv import BLUESTORE_MERGE, infer_sharding
    kv = KV(DB(Files(fs), "db", ["db.wal", "db"], ["db", "db.slow"]), None, BLUESTORE_MERGE)
    assert {p: s.shards for p, s in kv.sharding.items()} == {
        "m": 3, "p": 3, "O": 3, "L": 1, "P": 1}
    assert [c for _, c, _ in kv.damage] == ["rocksdb-sharding"]
    assert all_keys(type("O", (), {"kv": kv})) == truth_keys(1)
    assert infer_sharding(["default", "x-0", "x-2"]) == {}  # shards must be 0..n-1
