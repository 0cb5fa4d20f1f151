#!/usr/bin/env python3
"""Ceph part A benchmark: open a BlueStore OSD (label, BlueFS replay, MANIFEST, WAL
replay) and iterate every RocksDB key, then the same on a larger RocksDB written by
RocksDB itself (db_bench), each compared with RocksDB's own ``ldb scan`` in the same run.

    python benchmarks/bench_ceph_kv.py [--keys 200000] [--value-size 200] [--dir /tmp]

Needs the unpacked Ceph fixture (tests/conftest.py unpack) and, for the comparisons,
Debian's rocksdb-tools (ldb, db_bench).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from backends.ceph.kv import open_osd  # noqa: E402
from backends.ceph.rocksdb.db import DB, HostDirFiles  # noqa: E402
from pvfs.cache import METADATA_CACHE  # noqa: E402
from pvfs.source import FileSource  # noqa: E402

from common import timed  # noqa: E402
from conftest import FIXTURES, unpack  # noqa: E402


def ldb_scan_seconds(db_dir, cfs):
    t = time.perf_counter()
    n = 0
    for cf in cfs:
        out = subprocess.run(["ldb", f"--db={db_dir}", "--hex", "scan",
                              f"--column_family={cf}"], capture_output=True, check=True)
        n += out.stdout.count(b"\n")
    return time.perf_counter() - t, n


def bench_osds(tmp):
    root = unpack(FIXTURES / "ceph" / "ceph-fixture.tar.zst") / "ceph-fixture"
    rows = []
    for name in ("osd.0", "osd.1", "osd.2", "variants/osd.0-compacted"):
        METADATA_CACHE.clear()
        src = FileSource(root / name / "block")
        t_open, osd = timed(lambda src=src: open_osd(src))
        t_iter, n = timed(lambda osd=osd: sum(1 for p in osd.kv.prefixes()
                                              for _ in osd.kv.iterate(p)))
        row = {"osd": name, "open_s": t_open, "iterate_s": t_iter, "keys": n,
               "wal_records": osd.db.wal_records}
        if shutil.which("ldb"):
            d = os.path.join(tmp, name.replace("/", "_"))
            os.makedirs(d)
            for path in osd.bluefs.files:
                dd, f = path.split("/")
                if dd in ("db", "db.wal"):
                    with open(os.path.join(d, f), "wb") as fh:
                        fh.write(osd.bluefs.read_file(path))
            row["ldb_s"], row["ldb_keys"] = ldb_scan_seconds(d, osd.db.column_family_names())
        rows.append(row)
    return rows


def bench_db_bench(tmp, keys, value_size):
    if not shutil.which("db_bench"):
        return None
    d = os.path.join(tmp, "dbbench")
    t_make, _ = timed(lambda: subprocess.run(
        ["db_bench", "--benchmarks=fillrandom,overwrite", f"--num={keys}",
         f"--value_size={value_size}", f"--db={d}", "--compression_type=lz4",
         "--checksum_type=1", "--write_buffer_size=8388608", "--compression_ratio=0.5",
         "--threads=1"], capture_output=True, check=True))
    METADATA_CACHE.clear()
    t_open, db = timed(lambda: DB(HostDirFiles(d), ""))
    t_iter, n = timed(lambda: sum(1 for _ in db.iterate("default")))
    t_warm, _ = timed(lambda: sum(1 for _ in db.iterate("default")))
    ssts = sum(len(c.tables) for c in db.cfs.values())
    size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    row = {"keys": n, "ssts": ssts, "wal_records": db.wal_records, "bytes": size,
           "make_s": t_make, "open_s": t_open, "iterate_s": t_iter, "iterate_warm_s": t_warm}
    row["ldb_s"], row["ldb_keys"] = ldb_scan_seconds(d, ["default"])
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=200_000)
    ap.add_argument("--value-size", type=int, default=200)
    ap.add_argument("--dir", default=None)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        print("fixture OSDs (Ceph 16.2, cold metadata cache):")
        for r in bench_osds(tmp):
            line = (f"  {r['osd']:26} open {r['open_s'] * 1000:7.1f} ms  iterate "
                    f"{r['keys']:5} keys {r['iterate_s'] * 1000:7.1f} ms "
                    f"({r['keys'] / max(r['iterate_s'], 1e-9):9.0f} keys/s)  WAL records "
                    f"{r['wal_records']}")
            if "ldb_s" in r:
                ours = r["open_s"] + r["iterate_s"]
                line += (f"  | ldb scan (all CFs, {r['ldb_keys']} keys) {r['ldb_s'] * 1000:7.1f} ms,"
                         f" ratio pvfs/ldb {ours / r['ldb_s']:.2f}")
            print(line)
        r = bench_db_bench(tmp, a.keys, a.value_size)
        if r:
            ours = r["open_s"] + r["iterate_s"]
            print(f"db_bench database: {r['keys']} live keys, {r['ssts']} SSTs (lz4), "
                  f"{r['wal_records']} WAL records, {r['bytes'] / 2**20:.1f} MiB")
            print(f"  pvfs: open {r['open_s']:.2f} s (WAL replay), iterate {r['iterate_s']:.2f} s "
                  f"cold / {r['iterate_warm_s']:.2f} s warm = "
                  f"{r['keys'] / r['iterate_s']:.0f} keys/s cold")
            print(f"  ldb scan: {r['ldb_s']:.2f} s ({r['ldb_keys']} keys); "
                  f"ratio pvfs/ldb {ours / r['ldb_s']:.1f}")


if __name__ == "__main__":
    main()
