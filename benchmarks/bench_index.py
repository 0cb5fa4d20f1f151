#!/usr/bin/env python3
"""Persistent indexes and worker processes (issue 15 items 2-3): what a second discovery
saves, and how indexing N OSDs scales with processes.

1. Ceph object index at scale: the OSD-shaped RocksDB databases of
   ``bench_scale_ceph.py`` (real RocksDB files written by ``ldb``, BlueStore onode keys;
   2 million objects over 4 OSDs by default, built there first): per OSD, building the
   index (``OsdStore.build_index``: every onode key) against loading it from the index
   store (``pvfs.index``: read, SHA-256 check, ``OsdStore.load_index``), and the index
   files' size.  Then the 4 builds in 1 and in 2 worker processes (``spawn``, as
   ``pvfs/parallel.py`` starts them): wall time.
2. Discovery of the fixtures and scale inputs with and without the store (in this
   process: no interpreter start-up): no store, first run with a new store (builds),
   re-run (loads).  The 1000-LV thin pool of ``bench_lvm.py``, the Ceph fixture, a PBS
   datastore of ``bench_scale_pbs.py`` when present.

    python benchmarks/bench_index.py [--ceph-size 2000000] [--osds 4] [--skip-discovery]
                                     [--skip-ceph-index] [--pbs-sizes 200000,1000000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import types
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE), str(HERE.parent / "tests")]

from common import load  # noqa: E402


def _store_for(d: Path):
    from backends.ceph.kv import open_kv_dir
    from backends.ceph.osd import OsdStore
    from pvfs.source import BytesSource

    kv = open_kv_dir(d)
    osd = types.SimpleNamespace(kv=kv, source=BytesSource(b"", label=d.name))
    return OsdStore(osd, d.name)


def build_one(d: str) -> tuple[str, int, float]:
    """One OSD's index in a worker: (name, objects, seconds)."""
    t = time.perf_counter()
    st = _store_for(Path(d)).build_index()
    return d, st.count, time.perf_counter() - t


def ceph_index(dbs: list[Path], store_dir: str) -> None:
    from pvfs.index import IndexStore

    store = IndexStore(store_dir)
    print(f"Ceph object index, {len(dbs)} OSD RocksDBs ({load()}):")
    for d in dbs:
        st = _store_for(d)
        t = time.perf_counter()
        st.build_index()
        t_build = time.perf_counter() - t
        ident = (f"bench:{d}", {})
        e = store.entry("ceph", "objects", None, meta=b"bench", ident=ident)
        t = time.perf_counter()
        e.save(*st.index_payload())
        t_save = time.perf_counter() - t
        t = time.perf_counter()
        got = store.entry("ceph", "objects", None, meta=b"bench", ident=ident).load()
        st2 = _store_for(d)
        assert got is not None and st2.load_index(*got)
        t_load = time.perf_counter() - t
        assert st2.count == st.count and st2.data.keys() == st.data.keys()
        size = os.path.getsize(e.path)
        print(f"  {d.name}: {st.count} objects: build {t_build:.2f} s "
              f"({st.count / t_build:,.0f} objects/s), save {t_save:.2f} s, load "
              f"{t_load:.3f} s ({t_build / max(t_load, 1e-9):.0f}x), index file "
              f"{size / 2**20:.1f} MiB ({size / max(st.count, 1):.1f} bytes/object)")
    for jobs in (1, 2):
        t = time.perf_counter()
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
            res = list(pool.map(build_one, [str(d) for d in dbs]))
        wall = time.perf_counter() - t
        print(f"  {len(dbs)} OSDs indexed in {jobs} process(es): {wall:.2f} s wall "
              f"(sum of builds {sum(r[2] for r in res):.2f} s; {load()})")


def discovery(label: str, inputs: list[str]) -> None:
    from pvfs.cache import METADATA_CACHE
    from pvfs.discover import Options, discover

    def run(d):
        METADATA_CACHE.clear()
        t = time.perf_counter()
        ctx = discover(inputs, Options(index_dir=d))
        return time.perf_counter() - t, ctx

    t_none = min(run(None)[0] for _ in range(2))
    with tempfile.TemporaryDirectory() as d:
        t_first, _ = run(d)
        again = [run(d) for _ in range(3)]
        t_again = min(a[0] for a in again)
        used = sorted({f"{e.backend} {e.name}" for e in again[-1][1].indexes.log})
    print(f"{label}: discovery without a store {t_none:.2f} s, first with a store "
          f"{t_first:.2f} s, again {t_again:.2f} s (best of 3; loads {', '.join(used)}; "
          f"{load()})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ceph-size", type=int, default=2_000_000)
    ap.add_argument("--osds", type=int, default=4)
    ap.add_argument("--workdir", default="/var/tmp/pvfs-bench-scale")
    ap.add_argument("--skip-discovery", action="store_true")
    ap.add_argument("--skip-ceph-index", action="store_true")
    ap.add_argument("--pbs-sizes", default="200000,1000000,2000000")
    args = ap.parse_args()
    work = Path(args.workdir) / f"ceph-{args.ceph_size}-{args.osds}osd"
    import bench_scale_ceph

    if not args.skip_ceph_index:
        dbs = bench_scale_ceph.build(work, args.ceph_size, args.osds)
        with tempfile.TemporaryDirectory() as d:
            ceph_index(dbs, d)
    if args.skip_discovery:
        return
    lvm = Path.home() / ".cache" / "pvfs-bench" / "lvm" / "bench-1000x10000.img"
    if lvm.exists():
        discovery("LVM thin, 1000 LVs x 10000 mappings", [str(lvm)])
    from conftest import FIXTURES, unpack

    ceph = unpack(FIXTURES / "ceph" / "ceph-fixture.tar.zst") / "ceph-fixture"
    discovery("Ceph fixture, 3 OSDs", [str(ceph / f"osd.{i}") for i in range(3)])
    for size in (int(x) for x in args.pbs_sizes.split(",") if x):
        pbs = Path(args.workdir) / f"pbs-{size}" / "store"
        if pbs.is_dir():
            discovery(f"PBS datastore, {size} chunks", [str(pbs)])


if __name__ == "__main__":
    main()
