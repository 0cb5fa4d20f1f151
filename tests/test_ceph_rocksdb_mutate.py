"""Bounded fuzz from real data: the fixture's own SST, WAL and BlueFS log with random
bytes changed or cut short must give a clean error or a result, never a crash."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backends.ceph.bluefs import open_bluefs
from backends.ceph.errors import CephError, RocksDBError
from backends.ceph.rocksdb.log import LogReader
from backends.ceph.rocksdb.table import Table
from backends.ceph.rocksdb.writebatch import decode_write_batch
from pvfs.source import BytesSource, FileSource

from conftest import FIXTURES, require_path, unpack

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])
_cache = {}


def _real():
    if not _cache:
        archive = FIXTURES / "ceph" / "ceph-fixture.tar.zst"
        require_path(archive)
        root = Path(unpack(archive)) / "ceph-fixture"
        fs = open_bluefs(FileSource(root / "variants" / "osd.0-compacted" / "block"))
        _cache["sst"] = fs.read_file("db/000040.sst")
        fs0 = open_bluefs(FileSource(root / "osd.0" / "block"))
        _cache["wal"] = fs0.read_file("db.wal/000035.log")[:96 << 10]
        with open(root / "osd.0" / "block", "rb") as f:
            _cache["head"] = f.read(0x2000 + 64 * 4096)  # label, super, start of the log
    return _cache


def _mutate(data, edits, cut):
    buf = bytearray(data)
    for pos, val in edits:
        buf[pos % len(buf)] = val
    return bytes(buf[:max(1, len(buf) - cut)])


EDITS = st.lists(st.tuples(st.integers(0, 1 << 30), st.integers(0, 255)), max_size=8)


@SETTINGS
@given(EDITS, st.integers(0, 4096))
def test_mutated_sst(edits, cut):
    data = _mutate(_real()["sst"], edits, cut)
    try:
        t = Table(BytesSource(data), "m")
        n = sum(1 for _ in t.iterate())
    except RocksDBError:
        return
    assert n >= 0


@SETTINGS
@given(EDITS, st.integers(0, 70000))
def test_mutated_wal(edits, cut):
    r = LogReader(BytesSource(_mutate(_real()["wal"], edits, cut)), 35)
    for _, rec in r:
        try:
            decode_write_batch(rec)
        except RocksDBError:
            pass


@SETTINGS
@given(st.lists(st.tuples(st.integers(0x1000, 0x2000 + 64 * 4096 - 1), st.integers(0, 255)),
                max_size=6))
def test_mutated_bluefs_super_and_log(edits):
    head = bytearray(_real()["head"])
    for pos, val in edits:
        head[pos] = val
    dev = BytesSource(bytes(head) + bytes(1 << 20))
    try:
        fs = open_bluefs(dev)
    except CephError:
        return
    assert fs.log_records >= 0 and isinstance(fs.files, dict)
