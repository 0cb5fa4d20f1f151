"""Our RocksDB view against RocksDB itself: Debian's ``ldb`` (rocksdb-tools) scans the
same databases (the monitor store, and the BlueFS files of osd.0 and of the SIGKILLed
osd.2 exported to a directory) and must list the same keys and values.

``ldb`` has no Ceph merge operators, so the default family's ``T`` and ``b`` keys (merge
chains) are left out here; test_ceph_kv checks them against Ceph's own compaction.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from backends.ceph.errors import RocksDBError
from backends.ceph.kv import open_kv_dir, open_osd
from pvfs.source import FileSource


LDB = shutil.which("ldb")
pytestmark = pytest.mark.skipif(LDB is None, reason="ldb (Debian rocksdb-tools) is not installed")


def ldb_scan(db_dir, cf="default"):
    out = subprocess.run([LDB, f"--db={db_dir}", "--hex", "scan", f"--column_family={cf}"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = {}
    for line in out.stdout.splitlines():
        k, v = line.split(" : ")
        rows[bytes.fromhex(k[2:])] = bytes.fromhex(v[2:])
    return rows


def test_mon_store_equals_ldb(ceph_root, tmp_path):
    db = tmp_path / "store.db"
    shutil.copytree(ceph_root / "mon.a" / "store.db", db)  # ldb may write: never the fixture
    mine = dict(open_kv_dir(ceph_root / "mon.a" / "store.db").db.iterate("default"))
    theirs = ldb_scan(db)
    assert len(theirs) == 440
    assert mine == theirs


@pytest.mark.parametrize("name", ["osd.0", "osd.2"])
def test_osd_column_families_equal_ldb(ceph_root, tmp_path, name):
    o = open_osd(FileSource(ceph_root / name / "block"))
    db = tmp_path / "db"
    db.mkdir()
    for path in o.bluefs.files:
        d, f = path.split("/")
        if d in ("db", "db.wal"):  # ldb finds the WAL beside the tables
            (db / f).write_bytes(o.bluefs.read_file(path))
    total = 0
    for cf in o.db.column_family_names():
        theirs = ldb_scan(db, cf)
        mine = dict(o.db.iterate(cf))
        if cf == "default":
            merged = {k for k in set(mine) | set(theirs) if k[:2] in (b"T\0", b"b\0")}
            assert merged and set(theirs) == set(mine)
            mine = {k: v for k, v in mine.items() if k not in merged}
            theirs = {k: v for k, v in theirs.items() if k not in merged}
        assert mine == theirs, cf
        total += len(theirs)
    assert total > 500


# -- databases written by RocksDB itself (db_bench), every table variant we read ---------
DB_BENCH = shutil.which("db_bench")
VARIANTS = [  # compression, format_version, partitioned index, data block hash, index restart, checksum
    ("none", 2, False, False, 1, 1),
    ("snappy", 3, False, True, 1, 1),
    ("zlib", 4, True, False, 4, 1),
    ("lz4", 5, True, True, 3, 1),
    ("lz4hc", 2, False, False, 1, 1),
    ("zstd", 5, True, True, 16, 1),
    ("bzip2", 5, False, False, 1, 1),
    ("zlib", 1, False, False, 1, 1),
    ("lz4", 1, False, False, 1, 1),
    ("snappy", 0, False, False, 1, 1),
    ("zstd", 5, False, False, 1, 4),  # XXH3 block checksums (verified with xxhash)
    ("lz4", 4, False, False, 1, 2),  # xxHash32
    ("none", 3, False, False, 1, 3),  # xxHash64
]


@pytest.mark.skipif(DB_BENCH is None, reason="db_bench (Debian rocksdb-tools) is not installed")
@pytest.mark.parametrize("comp,fv,part,hashidx,irestart,cksum", VARIANTS)
def test_db_bench_databases_equal_ldb(tmp_path, comp, fv, part, hashidx, irestart, cksum):
    from backends.ceph.rocksdb.db import DB, HostDirFiles
    d = tmp_path / "db"
    args = [DB_BENCH, "--benchmarks=fillrandom,overwrite,deleterandom", "--num=3000",
            "--value_size=100", f"--db={d}", f"--compression_type={comp}",
            f"--format_version={fv}", f"--partition_index={str(part).lower()}",
            f"--use_data_block_hash_index={str(hashidx).lower()}",
            f"--index_block_restart_interval={irestart}", f"--checksum_type={cksum}",
            "--write_buffer_size=131072", "--compression_ratio=0.5", "--threads=1"]
    subprocess.run(args, capture_output=True, check=True, timeout=120)
    db = DB(HostDirFiles(d), "")
    tables = db.cfs[0].tables
    assert tables and db.wal_records > 0  # both SSTs and an unflushed WAL
    t = tables[0]
    assert t.format_version == fv and t.checksum_type == cksum
    assert t.compression_name.lower().replace("nocompression", "none") == comp
    assert (t.index_type == 2) == part
    mine = dict(db.iterate("default"))
    assert mine == ldb_scan(d)
    assert len(mine) > 500 and db.damage == []
    # a flipped bit in a data block is caught by every checksum type we verify
    from backends.ceph.rocksdb import block as blockmod
    if cksum in (2, 3, 4) and blockmod._xxhash is None:
        return
    from backends.ceph.rocksdb.table import Table
    from pvfs.source import BytesSource
    raw = bytearray((d / t.name).read_bytes())
    off, size = t.index()[1][0]
    raw[off + size // 2] ^= 0x10
    bad = Table(BytesSource(bytes(raw)), "bad")
    with pytest.raises(RocksDBError, match="checksum mismatch"):
        list(bad.iterate())
