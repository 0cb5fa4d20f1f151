"""RocksDB decoders: log/WAL records, write batches, MANIFEST, SST blocks and tables."""

from __future__ import annotations

import re
import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backends.ceph.bluefs import open_bluefs
from backends.ceph.checksum import crc32c, rocksdb_mask
from backends.ceph.errors import RocksDBError
from backends.ceph.rocksdb.block import (check_trailer, decompress, iter_entries,
                                         iter_index_entries, restart_offset)
from backends.ceph.rocksdb.coding import encode_varint
from backends.ceph.rocksdb.log import LogReader
from backends.ceph.rocksdb.manifest import Manifest, decode_version_edit
from backends.ceph.rocksdb.table import Table, split_internal_key
from backends.ceph.rocksdb.writebatch import decode_write_batch
from pvfs.source import BytesSource, FileSource, SliceSource

from conftest import FIXTURES

GT = FIXTURES / "ceph" / "ground-truth"
SETTINGS = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


_fs = {}


def bluefs(ceph_root, name):
    if name not in _fs:
        _fs[name] = open_bluefs(FileSource(ceph_root / name / "block"))
    return _fs[name]


def sst_truth():
    """``{(section, file): (cf name, cf id, compression, entries)}`` from sst-compression.txt."""
    out, section = {}, None
    for line in (GT / "sst-compression.txt").read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].split()[0]
        m = re.match(r"^(\S+\.sst) cf=(\S+)\((\d+)\) compression=(\S+) entries=(\d+)", line)
        if m:
            out[(section, m.group(1))] = (m.group(2), int(m.group(3)), m.group(4),
                                          int(m.group(5)))
    return out


# -- SST tables against the fixture's table properties -------------------------------------
def test_every_sst_matches_its_properties(ceph_root):
    truth = sst_truth()
    assert len(truth) == 3 * 3 + 8 + 1
    seen = 0
    for (section, path), (cf, cf_id, comp, entries) in truth.items():
        if section == "mon.a":
            src = FileSource(ceph_root / "mon.a" / "store.db" / path)
        else:
            name = "variants/osd.0-compacted" if "compacted" in section else section
            src = bluefs(ceph_root, name).open(path)
        t = Table(src, path)
        assert (t.column_family_name, t.column_family_id) == (cf, cf_id)
        assert t.compression_name == comp == "NoCompression"
        ents = list(t.iterate())
        assert len(ents) == entries == t.properties["rocksdb.num.entries"]
        keys = [(e[0], -e[1]) for e in ents]
        assert keys == sorted(keys)
        seen += 1
    assert seen == len(truth)


def test_sst_seek(ceph_root):
    t = Table(bluefs(ceph_root, "variants/osd.0-compacted").open("db/000041.sst"), "41")
    ents = list(t.iterate())
    mid = ents[100][0]
    assert list(t.iterate(mid))[0][0] == mid
    assert [e[0] for e in t.iterate(mid, ents[150][0])] == [e[0] for e in ents[100:150]]


def test_sst_damage(ceph_root):
    src = bluefs(ceph_root, "variants/osd.0-compacted").open("db/000040.sst")
    data = src.read(0, src.size)
    with pytest.raises(RocksDBError, match="not a block-based table"):
        Table(BytesSource(data[:-1] + b"\0"), "x")
    with pytest.raises(RocksDBError, match="too small"):
        Table(BytesSource(data[-20:]), "x")
    with pytest.raises(RocksDBError):
        Table(BytesSource(data[-5000:]), "x")  # handles point outside the file
    bad = bytearray(data)
    bad[200] ^= 1  # inside the first data block
    t = Table(BytesSource(bytes(bad)), "x")
    with pytest.raises(RocksDBError, match="checksum mismatch"):
        list(t.iterate())
    assert len(list(Table(BytesSource(bytes(bad)), "x", verify=False).iterate())) == 103


# -- WAL and MANIFEST --------------------------------------------------------------------
def test_wal_records_and_batches(ceph_root):
    fs = bluefs(ceph_root, "osd.0")
    src = fs.open("db.wal/000035.log")
    reader = LogReader(src, 35)
    nxt, ops = None, 0
    for _off, rec in reader:
        seq, count, batch = decode_write_batch(rec)
        assert nxt is None or seq == nxt
        nxt = seq + count
        ops += count
    assert reader.stop is None and reader.records > 600 and ops > 2900


def test_wal_damage(ceph_root):
    src = bluefs(ceph_root, "osd.0").open("db.wal/000035.log")
    data = bytearray(src.read(0, src.size))
    n_all = sum(1 for _ in LogReader(BytesSource(bytes(data)), 35))
    data[100_000] ^= 0x55
    r = LogReader(BytesSource(bytes(data)), 35)
    n = sum(1 for _ in r)
    assert 0 < n < n_all and r.stop[1] == "checksum mismatch" and r.stop[0] <= 100_000
    r = LogReader(SliceSource(src, 0, 50_000), 35)
    n = sum(1 for _ in r)
    assert 0 < n < n_all and r.stop is not None and "torn" in r.stop[1]
    r = LogReader(BytesSource(bytes(65536)), 1)
    assert list(r) == [] and r.stop is None  # preallocated zeros: an empty log


def test_recyclable_records():
    def rec(typ, payload, num):
        body = bytes([typ]) + struct.pack("<I", num) + payload
        crc = rocksdb_mask(crc32c(body))
        return struct.pack("<IHB", crc, len(payload), typ) + struct.pack("<I", num) + payload
    log = rec(5, b"hello", 7) + rec(6, b"ab", 7) + rec(8, b"cd", 7) + rec(5, b"old", 3)
    r = LogReader(BytesSource(log), 7)
    assert [p for _, p in r] == [b"hello", b"abcd"]
    assert "stale" in r.stop[1]


def test_manifest(ceph_root):
    m = Manifest(bluefs(ceph_root, "osd.0").open("db/MANIFEST-000034"), 34)
    names = [c.name for c in m.live_column_families()]
    assert names == ["default", "m-0", "m-1", "m-2", "p-0", "p-1", "p-2", "O-0", "O-1", "O-2",
                     "L", "P"]
    live = {n: cf.name for cf in m.live_column_families() for n in cf.files}
    assert live == {28: "default", 31: "default", 32: "O-2"}
    assert m.damage == [] and m.comparator == "leveldb.BytewiseComparator"
    mc = Manifest(bluefs(ceph_root, "variants/osd.0-compacted").open("db/MANIFEST-000045"), 45)
    truth = sst_truth()
    assert {f"db/{n:06d}.sst": cf.name for cf in mc.live_column_families() for n in cf.files} \
        == {p: v[0] for (s, p), v in truth.items() if "compacted" in s}


def test_version_edit_errors():
    with pytest.raises(RocksDBError, match="unknown VersionEdit tag"):
        decode_version_edit(encode_varint(77))
    # an ignorable tag (bit 13) with a payload is skipped
    e = decode_version_edit(encode_varint(8193) + encode_varint(3) + b"abc" + encode_varint(2)
                            + encode_varint(9))
    assert e.log_number == 9
    with pytest.raises(RocksDBError, match="must be understood"):
        decode_version_edit(encode_varint(103) + b"\x00\x01\x02" + b"\x00\x00" + b"\x00\x00"
                            + encode_varint(66) + b"\x01x")


# -- synthetic blocks: compression, index delta encoding, hash index -------------------------
def build_block(entries, restart_interval=2, hash_buckets=None):
    out, restarts, last = bytearray(), [], b""
    for i, (k, v) in enumerate(entries):
        shared = 0
        if i % restart_interval == 0:
            restarts.append(len(out))
        else:
            while shared < min(len(k), len(last)) and k[shared] == last[shared]:
                shared += 1
        out += encode_varint(shared) + encode_varint(len(k) - shared) + encode_varint(len(v))
        out += k[shared:] + v
        last = k
    for r in restarts:
        out += struct.pack("<I", r)
    footer = len(restarts)
    if hash_buckets is not None:
        out += bytes([255] * hash_buckets) + struct.pack("<H", hash_buckets)
        footer |= 1 << 31
    return bytes(out + struct.pack("<I", footer))


ENTRIES = [(b"key%05d" % i + struct.pack("<Q", (i << 8) | 1), b"v" * (i % 7)) for i in range(50)]


def trailer(data, ctype):
    return data + bytes([ctype]) + struct.pack("<I", rocksdb_mask(crc32c(data + bytes([ctype]))))


@pytest.mark.parametrize("ctype", [0, 1, 2, 4, 7])
def test_block_compression(ctype):
    raw = build_block(ENTRIES)
    if ctype == 0:
        comp = raw
    elif ctype == 1:
        cramjam = pytest.importorskip("cramjam")
        comp = bytes(cramjam.snappy.compress_raw(raw))
    elif ctype == 2:
        c = zlib.compressobj(6, zlib.DEFLATED, -14)
        comp = encode_varint(len(raw)) + c.compress(raw) + c.flush()
    elif ctype == 4:
        import lz4.block
        comp = encode_varint(len(raw)) + lz4.block.compress(raw, store_size=False)
    else:
        import zstandard
        comp = encode_varint(len(raw)) + zstandard.ZstdCompressor().compress(raw)
    data, t = check_trailer(trailer(comp, ctype))
    assert t == ctype
    assert list(iter_entries(decompress(t, data))) == ENTRIES
    bad = bytearray(trailer(comp, ctype))
    bad[len(bad) // 2] ^= 1
    with pytest.raises(RocksDBError, match="checksum"):
        check_trailer(bytes(bad))
    if ctype:
        with pytest.raises(RocksDBError):
            decompress(ctype, data[:len(data) // 2] + b"\xff" * 8)


def test_hash_index_block_footer():
    blk = build_block(ENTRIES, 4, hash_buckets=13)
    assert list(iter_entries(blk)) == ENTRIES
    end, restarts = restart_offset(blk)
    assert len(restarts) == 13


def test_delta_encoded_index():
    # format_version 4 index: restart entries carry full handles, others a size delta
    keys = [b"a%03d" % i for i in range(6)]
    handles = [(0, 100), (105, 120), (230, 90), (325, 300), (630, 10), (645, 64)]
    out, restarts = bytearray(), []
    for i, (k, (off, size)) in enumerate(zip(keys, handles, strict=False)):
        if i % 3 == 0:
            restarts.append(len(out))
            out += encode_varint(0) + encode_varint(len(k)) + k
            out += encode_varint(off) + encode_varint(size)
        else:
            out += encode_varint(1) + encode_varint(len(k) - 1) + k[1:]
            delta = size - handles[i - 1][1]
            out += encode_varint(((delta << 1) ^ (delta >> 63)) & 0xFFFFFFFFFFFFFFFF)
    blk = bytes(out) + b"".join(struct.pack("<I", r) for r in restarts) + \
        struct.pack("<I", len(restarts))
    assert list(iter_index_entries(blk, True)) == list(zip(keys, handles, strict=False))


def test_internal_key():
    assert split_internal_key(b"abc" + struct.pack("<Q", (77 << 8) | 2)) == (b"abc", 77, 2)
    with pytest.raises(RocksDBError):
        split_internal_key(b"short")


def test_write_batch_kinds():
    s = lambda b: encode_varint(len(b)) + b  # noqa: E731
    body = (b"\x01" + s(b"k1") + s(b"v1") + b"\x05" + encode_varint(3) + s(b"k2") + s(b"v2")
            + b"\x00" + s(b"k3") + b"\x03" + s(b"blob") + b"\x0e" + encode_varint(2) + s(b"a")
            + s(b"z") + b"\x06" + encode_varint(1) + s(b"k4") + s(b"m"))
    seq, count, ops = decode_write_batch(struct.pack("<QI", 100, 5) + body)
    assert ops == [(100, 0, 1, b"k1", b"v1"), (101, 3, 1, b"k2", b"v2"), (102, 0, 0, b"k3", None),
                   (103, 2, 15, b"a", b"z"), (104, 1, 2, b"k4", b"m")]
    with pytest.raises(RocksDBError, match="says 6 ops"):
        decode_write_batch(struct.pack("<QI", 100, 6) + body)
    with pytest.raises(RocksDBError, match="unknown write batch tag"):
        decode_write_batch(struct.pack("<QI", 1, 1) + b"\x55")


# -- fuzz --------------------------------------------------------------------------------------
@SETTINGS
@given(st.binary(max_size=400))
def test_block_fuzz(data):
    try:
        for _ in iter_entries(data):
            pass
        for _ in iter_index_entries(data, True):
            pass
    except RocksDBError:
        pass


@SETTINGS
@given(st.binary(max_size=300))
def test_write_batch_fuzz(data):
    try:
        decode_write_batch(struct.pack("<QI", 1, min(len(data), 20)) + data)
    except RocksDBError:
        pass


@SETTINGS
@given(st.binary(max_size=300))
def test_version_edit_fuzz(data):
    try:
        decode_version_edit(data)
    except RocksDBError:
        pass


@SETTINGS
@given(st.binary(max_size=2000), st.integers(0, 1990))
def test_wal_reader_fuzz(data, at):
    # a valid record followed by garbage: the reader yields it and stops cleanly
    payload = data[:at % 100]
    good = struct.pack("<IHB", rocksdb_mask(crc32c(b"\x01" + payload)), len(payload), 1) + payload
    out = list(LogReader(BytesSource(good + data)))
    assert out[0] == (0, payload)


@SETTINGS
@given(st.binary(min_size=0, max_size=600))
def test_table_fuzz(data):
    tail = b"\x01" + data[:40].ljust(40, b"\0") + struct.pack("<I", 2) + \
        struct.pack("<Q", 0x88E241B785F4CFF7)
    try:
        t = Table(BytesSource(data + tail), "fuzz")
        list(t.iterate())
    except RocksDBError:
        pass


# -- a whole database from hostile files ------------------------------------------------------
class MemFiles:
    def __init__(self, files):
        self.files = files

    def listdir(self, d):
        return sorted(self.files)

    def open(self, path):
        return BytesSource(self.files[path])


def _log(*payloads):
    out = b""
    for p in payloads:
        out += struct.pack("<IHB", rocksdb_mask(crc32c(b"\x01" + p)), len(p), 1) + p
    return out


def _manifest_ok():
    s = lambda b: encode_varint(len(b)) + b  # noqa: E731
    edit = (encode_varint(1) + s(b"leveldb.BytewiseComparator") + encode_varint(2)
            + encode_varint(5) + encode_varint(3) + encode_varint(9) + encode_varint(4)
            + encode_varint(0))
    return _log(edit)


def test_small_synthetic_db():
    from backends.ceph.rocksdb.db import DB
    s = lambda b: encode_varint(len(b)) + b  # noqa: E731
    batch1 = struct.pack("<QI", 1, 3) + b"\x01" + s(b"a") + s(b"1") + b"\x01" + s(b"b") + s(b"2") \
        + b"\x0f" + s(b"a") + s(b"b")  # a range deletion [a, b) after both puts
    batch2 = struct.pack("<QI", 4, 2) + b"\x02" + s(b"b") + s(b"+") + b"\x07" + s(b"zz")
    files = {"CURRENT": b"MANIFEST-000002\n", "MANIFEST-000002": _manifest_ok(),
             "000005.log": _log(batch1, batch2), "000004.log": _log(batch2)}
    db = DB(MemFiles(files), "", merge=lambda cf, k, base, ops: base + b"".join(ops))
    assert list(db.iterate("default")) == [(b"b", b"2+")]
    assert db.get("default", b"a") is None and db.wal_records == 2
    assert [n for n, _ in db.wal_files()] == [5]  # 000004.log is older than log number 5


@SETTINGS
@given(st.binary(max_size=200), st.binary(max_size=200), st.booleans())
def test_db_fuzz(manifest_payload, wal_payload, framed):
    from backends.ceph.rocksdb.db import DB
    files = {"CURRENT": b"MANIFEST-000002\n",
             # framed: a valid first edit, then a hostile one (the replay keeps the first)
             "MANIFEST-000002": _manifest_ok() + _log(manifest_payload) if framed
             else manifest_payload,
             "000009.log": _log(struct.pack("<QI", 1, 1) + wal_payload) if framed
             else wal_payload}
    try:
        db = DB(MemFiles(files), "")
    except RocksDBError:
        return
    for name in db.column_family_names():
        try:
            list(db.iterate(name))
        except RocksDBError:
            pass


def test_log_resync_over_a_damaged_block():
    def rec(typ, payload):
        return struct.pack("<IHB", rocksdb_mask(crc32c(bytes([typ]) + payload)), len(payload),
                           typ) + payload
    blk = 32768
    # block 0: A, then the FIRST part of a record whose MIDDLE is in block 1 (damaged)
    # and whose LAST opens block 2, followed by C
    b0 = rec(1, b"A" * 100)
    b0 += rec(2, b"x" * (blk - len(b0) - 7))  # fills block 0 exactly
    b1 = bytearray(rec(3, b"y" * (blk - 7)))
    b1[5000] ^= 1  # damaged
    b2 = rec(4, b"z" * 50) + rec(1, b"C" * 10)
    data = b0 + bytes(b1) + b2
    r = LogReader(BytesSource(data), resync=True)
    assert [p for _, p in r] == [b"A" * 100, b"C" * 10]
    assert r.skipped == [(blk, "checksum mismatch")] and r.stop is None
    r = LogReader(BytesSource(data))
    assert [p for _, p in r] == [b"A" * 100] and r.stop == (blk, "checksum mismatch")
    # a damaged tail with nothing valid after it is the stop, not a skip
    r = LogReader(BytesSource(b0 + bytes(b1)), resync=True)
    assert [p for _, p in r] == [b"A" * 100] and r.skipped == [] and r.stop[0] == blk


@SETTINGS
@given(st.binary(max_size=300), st.integers(0, 0xFFFFFFFF))
def test_crc32c_forms_agree(data, prev):
    """pvfs.checksum's two spellings against a plain bitwise CRC-32C (the definition)."""
    from pvfs.checksum import crc32c_raw

    def bitwise(d, reg):
        for byte in d:
            reg ^= byte
            for _ in range(8):
                reg = (reg >> 1) ^ 0x82F63B78 if reg & 1 else reg >> 1
        return reg

    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert crc32c(data, prev) == bitwise(data, prev ^ 0xFFFFFFFF) ^ 0xFFFFFFFF
    assert crc32c_raw(data, prev) == bitwise(data, prev)
