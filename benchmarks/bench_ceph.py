#!/usr/bin/env python3
"""Ceph part B benchmark: index an OSD (objects per second), and read an RBD image
sequentially through pvfs versus ``ceph-objectstore-tool --op get-bytes`` of the same
objects on the same OSD, in the same run.

    python benchmarks/bench_ceph.py [--image vm-101-disk-0] [--osd 1] [--dir /tmp]

Needs the unpacked Ceph fixture (tests/conftest.py unpack) and, for the comparison,
Debian's ceph-osd package (ceph-objectstore-tool).  ceph-objectstore-tool mounts the
OSD read-write (it replays and may rewrite metadata), so it runs on a sparse copy of
the OSD directory in --dir, never on the fixture.
"""

from __future__ import annotations

import argparse
import hashlib
import json
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
from backends.ceph.osd import OsdStore  # noqa: E402
from pvfs.cache import METADATA_CACHE  # noqa: E402
from pvfs.discover import Options, discover  # noqa: E402
from pvfs.nodes import resolve  # noqa: E402
from pvfs.source import FileSource  # noqa: E402

from common import timed  # noqa: E402
from conftest import FIXTURES, unpack  # noqa: E402


def bench_index(ceph_dir, n):
    METADATA_CACHE.clear()
    t_open, osd = timed(lambda: open_osd(FileSource(ceph_dir / f"osd.{n}" / "block")))
    t_index, st = timed(lambda: OsdStore(osd, f"osd.{n}").build_index())

    def decode_all():
        extents = 0
        for p, ns, name, snap, key in st.iter_objects():
            if key is None:
                key = st.lookup(p, name, ns, snap)[0]
            on = st.onode(key)
            extents += len(st.extents(key, on)[0])
        return extents

    t_meta, extents = timed(decode_all)
    return {"osd": n, "objects": st.count, "open_s": round(t_open, 3),
            "index_s": round(t_index, 3),
            "objects_per_s_index": round(st.count / t_index),
            "objects_per_s_open_and_index": round(st.count / (t_open + t_index)),
            "onodes_and_extent_maps_s": round(t_meta, 3), "extents": extents,
            "objects_per_s_full_metadata": round(st.count / (t_open + t_index + t_meta))}


def bench_index_synthetic(n_objects):
    """The object index alone (no RocksDB): onode keys of ``n_objects`` RBD data objects of
    one image, as BlueStore would list them, fed through OsdStore.build_index."""
    import tracemalloc

    from backends.ceph.keys import CEPH_NOSNAP, ObjectId, encode_onode_key
    from backends.ceph.osdtypes import str_hash_rjenkins

    keys = []
    for i in range(n_objects):
        name = b"rbd_data.1234abcd5678.%016x" % i
        keys.append(encode_onode_key(ObjectId(2, str_hash_rjenkins(name), b"", name, b"",
                                              CEPH_NOSNAP)))
    keys.sort()

    class _KV:
        def iterate(self, prefix, start=b"", end=None, fill_cache=True):
            return iter([(k, b"") for k in keys] if prefix == "O" else [])

    class _Osd:
        kv = _KV()
        source = FileSource(__file__)

    t, st = timed(lambda: OsdStore(_Osd(), "synthetic").build_index())
    del st
    tracemalloc.start()  # a second pass for the memory figure (tracemalloc slows it down)
    st = OsdStore(_Osd(), "synthetic").build_index()
    mem = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    t_look, _ = timed(lambda: [st.lookup(2, b"rbd_data.1234abcd5678.%016x" % i)
                               for i in range(0, n_objects, 97)])
    return {"objects": n_objects, "index_s": round(t, 3),
            "objects_per_s": round(n_objects / t), "index_bytes": mem,
            "bytes_per_object": round(mem / n_objects, 1),
            "lookups_per_s": round(len(range(0, n_objects, 97)) / t_look)}


def bench_read(ceph_dir, image, osd, chunk):
    METADATA_CACHE.clear()
    t_disc, ctx = timed(lambda: discover([str(ceph_dir / f"osd.{osd}" / "block")], Options()))
    manifest = json.loads((FIXTURES / "ceph" / "manifest.json").read_text())
    im = next(i for i in manifest["images"] if i["name"] == image)
    node = resolve(ctx.root, f"storage/ceph/{im['pool']}/{image}") or \
        resolve(ctx.root, f"storage/ceph/{im['pool']}/image-{im['id']}")  # name lost with rbd_id
    if node is None:
        raise SystemExit(f"{image} is not readable from osd.{osd} alone")
    src = node.source
    h = hashlib.sha256()

    def read_all():
        for off in range(0, src.size, chunk):
            h.update(src.read(off, min(chunk, src.size - off)))

    t_read, _ = timed(read_all)
    ok = h.hexdigest() == im["sha256"]
    data_bytes = sum(o["head"]["size"] for o in im["objects"] if o["head"])
    return im, {"image": image, "osd": osd, "chunk": chunk, "size": src.size,
                "discover_s": round(t_disc, 3), "read_s": round(t_read, 3),
                "MB_per_s": round(src.size / t_read / 1e6, 1),
                "object_data_MB_per_s": round(data_bytes / t_read / 1e6, 1), "sha256_ok": ok}


def bench_objectstore_tool(ceph_dir, im, osd, workdir):
    tool = shutil.which("ceph-objectstore-tool")
    if tool is None:
        return {"skipped": "ceph-objectstore-tool not installed (Debian package ceph-osd)"}
    copy = os.path.join(workdir, f"osd.{osd}")
    shutil.rmtree(copy, ignore_errors=True)
    subprocess.run(["cp", "-a", "--sparse=always", str(ceph_dir / f"osd.{osd}"), copy], check=True)
    objs = [o for o in im["objects"] if o["head"] and osd in o["osds_head"]]
    out = os.path.join(workdir, "obj.bin")
    env = dict(os.environ, CEPH_ARGS="--no-mon-config --log-file=/dev/null --debug-bluestore=0/0")
    total = 0
    t0 = time.perf_counter()
    bad = 0
    for o in objs:
        if os.path.exists(out):  # get-bytes refuses to overwrite its output file
            os.unlink(out)
        r = subprocess.run([tool, "--data-path", copy, "--no-mon-config", o["name"], "get-bytes", out],
                           capture_output=True, env=env)
        if r.returncode != 0:
            bad += 1
            continue
        with open(out, "rb") as f:
            data = f.read()
        total += len(data)
        if hashlib.sha256(data).hexdigest() != o["head"]["sha256"]:
            bad += 1
    t = time.perf_counter() - t0
    shutil.rmtree(copy, ignore_errors=True)
    return {"objects": len(objs), "bytes": total, "failed": bad, "seconds": round(t, 3),
            "object_data_MB_per_s": round(total / t / 1e6, 2),
            "seconds_per_object": round(t / max(1, len(objs)), 3)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", default="vm-101-disk-0")
    ap.add_argument("--osd", type=int, default=1)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--synthetic-objects", type=int, default=500_000)
    args = ap.parse_args()
    ceph_dir = unpack(FIXTURES / "ceph" / "ceph-fixture.tar.zst") / "ceph-fixture"
    res = {"index": [bench_index(ceph_dir, n) for n in (0, 1, 2)],
           "index_synthetic": bench_index_synthetic(args.synthetic_objects)}
    im, res["pvfs_read_128k"] = bench_read(ceph_dir, args.image, args.osd, 128 << 10)
    _, res["pvfs_read_4m"] = bench_read(ceph_dir, args.image, args.osd, 4 << 20)
    work = tempfile.mkdtemp(prefix="bench-ceph-", dir=args.dir)
    try:
        res["objectstore_tool_get_bytes"] = bench_objectstore_tool(ceph_dir, im, args.osd, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ot = res["objectstore_tool_get_bytes"]
    if "seconds" in ot:
        res["ratio_pvfs_vs_tool_object_data"] = round(
            res["pvfs_read_128k"]["object_data_MB_per_s"] / max(ot["object_data_MB_per_s"], 1e-9), 1)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
