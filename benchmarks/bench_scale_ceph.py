#!/usr/bin/env python3
"""Ceph at scale: the OSD object index (``backends/ceph/osd.py`` ``OsdStore.build_index``)
over 2 million objects spread across several OSD-shaped RocksDB databases (issue 15 item 5).

A real 12-OSD cluster of 8 TB disks holds about 2 million objects per OSD; no fixture that
big can be made here with real ceph-osd daemons.  What can be exercised at full scale
without them is everything above BlueStore's block device: each OSD here is a real RocksDB
written by RocksDB itself (``ldb load --bulk_load --compact``, Debian rocksdb-tools), whose
default column family holds BlueStore's ``O`` prefix with onode keys encoded as
``get_object_key`` does (pool 2, RBD data objects ``rbd_data.<id>.<objno>`` of 100 GiB
images placed on an OSD by their rjenkins hash, 1% of them with a clone, and each image's
``rbd_header``/``rbd_id``/``rbd_object_map``).  pvfs opens each with its own RocksDB reader
(``open_kv_dir``: MANIFEST, SST index and data blocks) and builds the index, then looks up
10,000 random objects.  Onode values are one byte: the index never decodes them (onodes are
decoded on demand and cached in the byte-bounded METADATA_CACHE).

Each size runs in a fresh process so that its peak RSS is its own.  Databases are built once
under ``--workdir`` (default /var/tmp/pvfs-bench-scale) and reused.

    python benchmarks/bench_scale_ceph.py [--sizes 200000,1000000,2000000] [--osds 4]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from common import load, print_curve, rss_mib  # noqa: E402

OBJECTS_PER_IMAGE = 25600  # a 100 GiB RBD image in 4 MiB objects
POOL = 2


def build(work: Path, total: int, osds: int) -> list[Path]:
    """``osds`` RocksDB directories holding ``total`` objects between them (built once)."""
    from backends.ceph.keys import CEPH_NOSNAP, ObjectId, encode_onode_key
    from backends.ceph.osdtypes import str_hash_rjenkins

    dbs = [work / f"osd.{i}" for i in range(osds)]
    stamp = work / "built"
    if stamp.exists():
        return dbs
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    procs, outs = [], []
    for d in dbs:
        p = subprocess.Popen(["ldb", f"--db={d}", "--create_if_missing", "--hex", "load",
                              "--bulk_load", "--compact"], stdin=subprocess.PIPE,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(p)
        outs.append(p.stdin)
    t = time.perf_counter()
    rnd = random.Random(15)
    made = 0
    img = 0

    def put(name: bytes, snap: int = CEPH_NOSNAP) -> None:
        h = str_hash_rjenkins(name)
        key = b"O\0" + encode_onode_key(ObjectId(POOL, h, b"", name, b"", snap))
        outs[h % osds].write(b"0x%s ==> 0x00\n" % key.hex().upper().encode())

    while made < total:
        image_id = b"%012x" % rnd.getrandbits(48)
        for name in (b"rbd_header." + image_id, b"rbd_object_map." + image_id,
                     b"rbd_id.vm-%d-disk-0" % (100 + img)):
            put(name)
            made += 1
        for objno in range(min(OBJECTS_PER_IMAGE, total - made)):
            name = b"rbd_data.%s.%016x" % (image_id, objno)
            put(name)
            made += 1
            if objno % 100 == 7:  # a clone of a snapshot (snap id 4)
                put(name, 4)
                made += 1
        img += 1
        print(f"  {made} objects, {made / (time.perf_counter() - t):.0f}/s", flush=True)
    for p, o in zip(procs, outs, strict=True):
        o.close()
        err = p.stderr.read()
        if p.wait() != 0:
            raise SystemExit(f"ldb load failed: {err.decode(errors='replace')}")
    stamp.write_text(json.dumps({"objects": made}))
    return dbs


def measure(dbs: list[Path]) -> dict:
    """Open every OSD's database and build its index, in this (fresh) process."""
    from backends.ceph.kv import open_kv_dir
    from backends.ceph.osd import OsdStore
    from pvfs.source import BytesSource

    gc.collect()
    base = rss_mib(os.getpid())[0]
    row = {"open s": 0.0, "index s": 0.0, "objects": 0}
    stores = []
    for d in dbs:
        t = time.perf_counter()
        kv = open_kv_dir(d)
        row["open s"] += time.perf_counter() - t
        osd = types.SimpleNamespace(kv=kv, source=BytesSource(b"", label=d.name))
        t = time.perf_counter()
        st = OsdStore(osd, d.name).build_index()
        row["index s"] += time.perf_counter() - t
        row["objects"] += st.count
        stores.append(st)
    row["objects/s"] = int(row["objects"] / (row["open s"] + row["index s"]))
    names = []
    for st in stores[:1]:
        for (p, ns, dp), di in st.data.items():
            names += [(p, ns, dp + b".%016x" % int(o)) for o in di.objnos[:3000]]
    rnd = random.Random(3)
    sample = [rnd.choice(names) for _ in range(10000)]
    t = time.perf_counter()
    hits = sum(stores[0].lookup(p, n, ns) is not None for p, ns, n in sample)
    row["lookups/s"] = int(len(sample) / (time.perf_counter() - t))
    assert hits == len(sample), hits
    gc.collect()
    row["index MiB"] = rss_mib(os.getpid())[0] - base
    row["rss MiB"] = rss_mib(os.getpid())[0]
    row["rss peak MiB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row["load"] = os.getloadavg()[0]
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="200000,1000000,2000000")
    ap.add_argument("--osds", type=int, default=4)
    ap.add_argument("--workdir", default="/var/tmp/pvfs-bench-scale")
    ap.add_argument("--measure", nargs="+", help=argparse.SUPPRESS)  # one size, in a child
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure([Path(p) for p in args.measure])))
        return
    if not shutil.which("ldb"):
        raise SystemExit("missing ldb (Debian: rocksdb-tools)")
    rows = []
    for total in (int(s) for s in args.sizes.split(",")):
        work = Path(args.workdir) / f"ceph-{total}-{args.osds}osd"
        t = time.perf_counter()
        dbs = build(work, total, args.osds)
        print(f"{total} objects on {args.osds} OSDs ready ({time.perf_counter() - t:.0f} s), "
              f"{load()}", flush=True)
        out = subprocess.run([sys.executable, __file__, "--measure", *map(str, dbs)],
                             check=True, capture_output=True, text=True).stdout
        row = {"objects": total, **json.loads(out.splitlines()[-1])}
        row["objects"] = row.pop("objects")
        rows.append(row)
        print(f"  {row}", flush=True)
    print_curve(f"Ceph OSD index over {args.osds} OSD RocksDBs ({os.cpu_count()} CPUs)", rows,
                ["objects", "open s", "index s", "objects/s", "lookups/s", "index MiB",
                 "rss MiB", "rss peak MiB", "load"])


if __name__ == "__main__":
    main()
