"""RocksDB table format_version 6 (RocksDB 8.6+): the ceph-20 fixture's mon store compacted
by Debian's RocksDB 9.11.2 ``ldb`` (variants/mon.a-ldb-fv6, Snappy blocks, footer checksum,
context checksums) reads with the same keys and values as the mon store Ceph 20 wrote
(format_version 5, checked against ``ldb scan`` in test_ceph_rocksdb_ldb.py); damage in it is
reported with its cause."""

from __future__ import annotations

import shutil
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backends.ceph.errors import RocksDBError
from backends.ceph.kv import open_kv_dir
from backends.ceph.rocksdb.block import check_trailer, context_modifier
from backends.ceph.rocksdb.table import Table
from pvfs.discover import Options, discover
from pvfs.nodes import resolve
from pvfs.source import BytesSource, FileSource

from conftest import require_fixture, unpack

SST = "000018.sst"


@pytest.fixture(scope="module")
def ceph_dir():
    return unpack(require_fixture("ceph-20", "ceph-fixture.tar.zst")) / "ceph-fixture"


@pytest.fixture(scope="module")
def fv6(ceph_dir):
    return ceph_dir / "variants" / "mon.a-ldb-fv6"


def _all(kv):
    return {p: list(kv.iterate(p)) for p in kv.prefixes()}


def test_fv6_store_equals_the_ceph_written_store(ceph_dir, fv6):
    t = Table(FileSource(str(fv6 / "store.db" / SST)), SST)
    assert t.format_version == 6 and t.base_context_checksum != 0
    assert t.compression_name == "Snappy"
    new, old = open_kv_dir(fv6 / "store.db"), open_kv_dir(ceph_dir / "mon.a" / "store.db")
    assert new.damage == []
    a, b = _all(new), _all(old)
    assert a == b
    assert sum(len(v) for v in a.values()) > 400 and "osdmap" in a


def test_context_checksum_is_applied(fv6):
    """The stored block checksum only matches with the offset's context modifier."""
    src = FileSource(str(fv6 / "store.db" / SST))
    t = Table(src, SST)
    off, size = t.index_handle
    raw = src.read(off, size + 5)
    check_trailer(raw, t.checksum_type, True, context_modifier(t.base_context_checksum, off))
    with pytest.raises(RocksDBError):
        check_trailer(raw, t.checksum_type, True, 0)
    with pytest.raises(RocksDBError):
        check_trailer(raw, t.checksum_type, True, context_modifier(t.base_context_checksum, off + 1))


def test_mon_option_with_fv6_store(ceph_dir, fv6):
    ctx = discover([str(ceph_dir / f"osd.{i}" / "block") for i in range(3)],
                   Options(backend_options={"ceph_mon": [str(fv6)]}))
    assert [e for e in ctx.report if e.code.startswith("mon-store") or "rocksdb" in e.code] == []
    assert b"from the monitor store" in resolve(ctx.root, "storage/ceph/cluster.txt").render()


def _copy(fv6, tmp_path):
    dst = tmp_path / "mon"
    shutil.copytree(fv6, dst)
    return dst


def test_damaged_footer_reports_its_cause(ceph_dir, fv6, tmp_path):
    dst = _copy(fv6, tmp_path)
    sst = dst / "store.db" / SST
    b = bytearray(sst.read_bytes())
    b[-53 + 6] ^= 0x40  # the footer's own checksum
    sst.write_bytes(bytes(b))
    ctx = discover([str(ceph_dir / f"osd.{i}" / "block") for i in range(3)],
                   Options(backend_options={"ceph_mon": [str(dst)]}))
    mine = [e for e in ctx.report if e.path == str(dst)]
    cause = [e for e in mine if e.code == "rocksdb-bad-sst"]
    assert cause and "footer checksum mismatch" in cause[0].message
    conseq = [e for e in mine if e.code == "mon-store-unreadable"]
    assert conseq and "footer checksum mismatch" in conseq[0].message
    # the pools are still named, from the OSDs' own osdmap
    assert b"pools from osdmap epoch" in resolve(ctx.root, "storage/ceph/cluster.txt").render()


def test_damaged_block_is_reported(fv6, tmp_path):
    dst = _copy(fv6, tmp_path)
    sst = dst / "store.db" / SST
    t = Table(FileSource(str(sst)), SST)
    seps, handles = t.index()
    off, size = handles[len(handles) // 2]
    b = bytearray(sst.read_bytes())
    b[off + size // 2] ^= 1
    sst.write_bytes(bytes(b))
    kv = open_kv_dir(dst / "store.db")
    n = sum(len(v) for v in _all(kv).values())
    codes = {c for _s, c, _m in kv.damage}
    assert "rocksdb-bad-block" in codes
    total = sum(len(v) for v in _all(open_kv_dir(fv6 / "store.db")).values())
    assert 0 < n < total  # the keys of that block are lost (and named), the rest reads


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.data())
def test_fuzz_fv6_footer_and_meta(fv6, data):
    base = (fv6 / "store.db" / SST).read_bytes()
    tail = data.draw(st.integers(60, 4096))  # the footer, metaindex and properties live here
    flips = data.draw(st.lists(st.tuples(st.integers(1, tail), st.integers(0, 255)), max_size=4))
    b = bytearray(base)
    for pos, v in flips:
        b[len(b) - pos] = v
    verify = data.draw(st.booleans())
    try:
        t = Table(BytesSource(bytes(b)), SST, verify=verify)
        t.index()
        t.range_tombstones()
    except RocksDBError:
        pass


def test_format_version_7_is_named():
    tail = bytearray(53)
    tail[0] = 1
    struct.pack_into("<IQ", tail, 41, 7, 0x88E241B785F4CFF7)
    with pytest.raises(RocksDBError, match="format_version 7 is not supported"):
        Table(BytesSource(bytes(4096) + bytes(tail)), "x.sst")


def test_metaindex_size_beyond_the_file(fv6):
    """(found by the fuzz test) a v6 footer whose metaindex size reaches before the file
    start is a RocksDBError, not a negative read."""
    b = bytearray((fv6 / "store.db" / SST).read_bytes())
    struct.pack_into("<I", b, len(b) - 53 + 13, len(b) + 100)
    with pytest.raises(RocksDBError, match="metaindex"):
        Table(BytesSource(bytes(b)), SST, verify=False)
