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

Each size runs twice, each time in a fresh process so that its peak RSS is its own: with
an empty index store (``pvfs/index.py``: built and saved, as a first mount does), then
with the store it filled (a re-mount).  RSS is given as VmRSS, RssAnon (the process's own
memory) and RssFile (file pages: mapped index tables, reclaimable), and VmHWM.  Databases are built once
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

from common import load, print_curve, rss_split  # noqa: E402

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


def _indexed(osd_store, osd, name, ix):
    """The store with its index as a mount gets it (``cluster_tree``): from the index
    store, else built and saved (and, where pvfs maps its tables, mapped)."""
    if hasattr(osd_store, "indexed"):
        return osd_store.indexed(osd, name, ix)
    got = ix.load()  # pvfs before the mapped tables
    st = osd_store(osd, name)
    if got is not None and st.load_index(*got):
        return st
    st = osd_store(osd, name).build_index()
    if ix.usable:
        ix.save(*st.index_payload())
    return st


def measure(dbs: list[Path], store: str) -> dict:
    """Open every OSD's database and take its index from the index store ``store`` (built
    and saved there when empty), in this (fresh) process, as a mount does."""
    from backends.ceph.kv import open_kv_dir
    from backends.ceph.osd import OsdStore
    from pvfs.index import IndexStore
    from pvfs.source import BytesSource

    gc.collect()
    base = rss_split(os.getpid())["anon"]
    row = {"open s": 0.0, "index s": 0.0, "objects": 0}
    stores = []
    indexes = IndexStore(store)
    for d in dbs:
        t = time.perf_counter()
        kv = open_kv_dir(d)
        row["open s"] += time.perf_counter() - t
        osd = types.SimpleNamespace(kv=kv, source=BytesSource(b"", label=d.name))
        t = time.perf_counter()
        ix = indexes.entry("ceph", "objects", None, meta=b"bench", version=OsdStore.INDEX_VERSION,
                           ident=(f"bench:{d}", {}))
        st = _indexed(OsdStore, osd, d.name, ix)
        row["index s"] += time.perf_counter() - t
        row["objects"] += st.count
        stores.append(st)
    row["objects/s"] = int(row["objects"] / (row["open s"] + row["index s"]))
    gc.collect()  # what the indexes cost, before the lookups' own sample is made
    m = rss_split(os.getpid())
    row["anon growth MiB"] = m["anon"] - base
    row["rss MiB"], row["anon MiB"], row["file MiB"] = m["rss"], m["anon"], m["file"]
    rnd = random.Random(3)
    groups = [(k, di) for k, di in stores[0].data.items() if len(di.objnos)]
    sample = []
    for _ in range(10000):
        (p, ns, dp), di = rnd.choice(groups)
        sample.append((p, ns, dp + b".%016x" % int(di.objnos[rnd.randrange(len(di.objnos))])))
    t = time.perf_counter()
    hits = sum(stores[0].lookup(p, n, ns) is not None for p, ns, n in sample)
    row["lookups/s"] = int(len(sample) / (time.perf_counter() - t))
    assert hits == len(sample), hits
    row["file after lookups MiB"] = rss_split(os.getpid())["file"]
    row["hwm MiB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row["load"] = os.getloadavg()[0]
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="200000,1000000,2000000")
    ap.add_argument("--osds", type=int, default=4)
    ap.add_argument("--workdir", default="/var/tmp/pvfs-bench-scale")
    ap.add_argument("--measure", nargs="+", help=argparse.SUPPRESS)  # one size, in a child
    ap.add_argument("--store", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure([Path(p) for p in args.measure], args.store)))
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
        store = work / "index"
        shutil.rmtree(store, ignore_errors=True)
        for phase in ("first", "again"):  # an empty index store, then the one it filled
            out = subprocess.run([sys.executable, __file__, "--store", str(store), "--measure",
                                  *map(str, dbs)], check=True, capture_output=True,
                                 text=True).stdout
            row = {"objects": total, "run": phase, **json.loads(out.splitlines()[-1])}
            row["objects"] = row.pop("objects")
            rows.append(row)
            print(f"  {row}", flush=True)
    print_curve(f"Ceph OSD index over {args.osds} OSD RocksDBs ({os.cpu_count()} CPUs)", rows,
                ["objects", "run", "open s", "index s", "objects/s", "lookups/s",
                 "anon growth MiB", "rss MiB", "anon MiB", "file MiB",
                 "file after lookups MiB", "hwm MiB", "load"])


if __name__ == "__main__":
    main()
