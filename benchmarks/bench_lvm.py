"""LVM-thin benchmark: discovery of a big pool and sequential reads of a thin LV.

1. A pool with ``--lvs`` thin LVs of ``--mappings`` mapped 64 KiB blocks each is made
   with ``thin_restore`` (thin-provisioning-tools) from generated XML, and wrapped in a
   PV/VG written here (benchmark only; the PV writer is the one of tests/test_lvm_synth).
   Measured: ``discover()`` of the image (every thin LV is probed, so every mapping tree
   is walked), and with the persistent index store: first (builds) and second (loads).
2. Sequential read of one thin LV through pvfs (``ThinSource``) versus the same bytes
   read straight from the image at the mapped offsets (the limit), same run, same
   request size.

Run: ``python benchmarks/bench_lvm.py [--lvs 1000 --mappings 10000]``.  The image is
kept in ~/.cache/pvfs-bench/ and reused when the parameters match.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from pvfs.discover import Options, discover  # noqa: E402
from pvfs.nodes import resolve  # noqa: E402
from test_lvm_synth import EXT, PE_START, lv, linear, pv_uuid, vg_text, write_pv  # noqa: E402

CHUNK = 65536
RUN = 16  # mapped blocks per run in the XML


def layout(n_lvs, n_map, seed=1):
    """Per device: list of (vblock, data_block, length) runs; devices share data blocks."""
    runs = n_map // RUN
    perm = list(range(runs))
    random.Random(seed).shuffle(perm)
    devs = {}
    for i in range(n_lvs):
        devs[i + 1] = [(r * RUN, perm[(r + i) % runs] * RUN, RUN) for r in range(runs)]
    return devs, runs * RUN


def make_image(path, n_lvs, n_map, work):
    devs, n_data = layout(n_lvs, n_map)
    xml = work / "pool.xml"
    with open(xml, "w") as f:
        f.write(f'<superblock uuid="" time="1" transaction="1" flags="0" version="2" '
                f'data_block_size="128" nr_data_blocks="{n_data}">\n')
        for dev, rs in devs.items():
            f.write(f'  <device dev_id="{dev}" mapped_blocks="{n_map}" transaction="0" '
                    f'creation_time="0" snap_time="0">\n')
            f.writelines(f'    <range_mapping origin_begin="{v}" data_begin="{d}" '
                         f'length="{n}" time="0"/>\n' for v, d, n in rs)
            f.write("  </device>\n")
        f.write("</superblock>\n")
    meta_bytes = max(64 << 20, (n_lvs * n_map // 100 + 4096) * 4096)  # ~100 entries/leaf
    meta_ext = -(-meta_bytes // EXT)
    meta = work / "tmeta"
    with open(meta, "wb") as f:
        f.truncate(meta_ext * EXT)
    t = time.perf_counter()
    subprocess.run(["thin_restore", "-q", "-i", str(xml), "-o", str(meta)], check=True)
    t_restore = time.perf_counter() - t
    data_ext = -(-n_data * CHUNK // EXT)
    lvs = lv("pool", [f'start_extent = 0\nextent_count = {data_ext}\ntype = "thin-pool"\n'
                      f'metadata = "pool_tmeta"\npool = "pool_tdata"\ntransaction_id = 1\n'
                      f'chunk_size = 128\ndiscards = "passdown"\nzero_new_blocks = 1\n'])
    lvs += lv("pool_tmeta", [linear(0, meta_ext, "pv0", 0)], visible=False)
    lvs += lv("pool_tdata", [linear(0, data_ext, "pv0", meta_ext)], visible=False)
    virt_ext = -(-n_map * CHUNK // EXT)
    lvs += "".join(lv(f"vm-{1000 + dev}-disk-0",
                      [f'start_extent = 0\nextent_count = {virt_ext}\ntype = "thin"\n'
                       f'thin_pool = "pool"\ntransaction_id = 0\ndevice_id = {dev}\n'])
                   for dev in devs)
    pe_count = meta_ext + data_ext
    text = vg_text("bench", "BENCHv-aaaa-bbbb-cccc-dddd-eeee-ffffff", 1,
                   [("pv0", pv_uuid(0), pe_count)], lvs)
    mda = 1 << 20
    while mda - 1024 < len(text):
        mda *= 2
    write_pv(path, pv_uuid(0), pe_count, [(512, text)], 0, mda_size=mda)
    with open(path, "r+b") as out, open(meta, "rb") as src:
        out.seek(PE_START)
        shutil.copyfileobj(src, out, 4 << 20)
        base = PE_START + meta_ext * EXT
        for d0 in range(0, n_data, 256):  # every data chunk tagged with its block number
            n = min(256, n_data - d0)
            arr = np.repeat(np.arange(d0, d0 + n, dtype="<u8"), CHUNK // 8)
            out.seek(base + d0 * CHUNK)
            out.write(arr.tobytes())
    return devs, base, t_restore


def bench_read(src, runs, img_path, tdata_off, req, size):
    """Same bytes, same request size: via ThinSource and via pread at mapped offsets."""
    h1 = hashlib.blake2b()
    t = time.perf_counter()
    for off in range(0, size, req):
        h1.update(src.read(off, min(req, size - off)))
    t_pvfs = time.perf_counter() - t
    h2 = hashlib.blake2b()
    fd = os.open(img_path, os.O_RDONLY)
    t = time.perf_counter()
    for v, d, n in runs:  # runs are in vblock order and cover [0, size)
        if v * CHUNK >= size:
            break
        start = tdata_off + d * CHUNK
        length = n * CHUNK
        for o in range(0, length, req):
            h2.update(os.pread(fd, min(req, length - o), start + o))
    t_raw = time.perf_counter() - t
    os.close(fd)
    assert h1.digest() == h2.digest(), "pvfs and direct reads differ"
    return t_pvfs, t_raw


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lvs", type=int, default=1000)
    ap.add_argument("--mappings", type=int, default=10000)
    ap.add_argument("--dir", default=str(Path.home() / ".cache" / "pvfs-bench" / "lvm"))
    args = ap.parse_args()
    if shutil.which("thin_restore") is None:
        sys.exit("thin_restore not found: apt-get install thin-provisioning-tools")
    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    img = work / f"bench-{args.lvs}x{args.mappings}.img"
    devs, n_data = layout(args.lvs, args.mappings)
    meta_ext = -(-max(64 << 20, (args.lvs * args.mappings // 100 + 4096) * 4096) // EXT)
    tdata_off = PE_START + meta_ext * EXT
    if not img.exists():
        t = time.perf_counter()
        _, tdata_off2, t_restore = make_image(img, args.lvs, args.mappings, work)
        assert tdata_off2 == tdata_off
        print(f"made {img.name} in {time.perf_counter() - t:.1f} s "
              f"(thin_restore {t_restore:.1f} s)")
    print(f"image: {img.stat().st_size / 2**30:.2f} GiB apparent, "
          f"{img.stat().st_blocks * 512 / 2**20:.0f} MiB allocated")

    t = time.perf_counter()
    ctx = discover([str(img)], Options())
    t_disc = time.perf_counter() - t
    thin = [p for p in resolve(ctx.root, "storage/lvm/bench").children() if p.startswith("vm-")]
    errors = [e for e in ctx.report if e.severity == "error"]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"discovery: {len(thin)} thin LVs x {args.mappings} mappings in {t_disc:.2f} s "
          f"({t_disc / max(1, len(thin)) * 1000:.2f} ms per LV), {len(errors)} errors, "
          f"max RSS {rss:.0f} MiB")

    # With the persistent index store (pvfs/index.py): the first discovery builds the
    # thin pool's mapping index and the probe results, the second loads them.
    import tempfile

    from pvfs.cache import METADATA_CACHE
    with tempfile.TemporaryDirectory() as store:
        times = []
        for _ in range(2):
            METADATA_CACHE.clear()
            t = time.perf_counter()
            ictx = discover([str(img)], Options(index_dir=store))
            times.append(time.perf_counter() - t)
        states = [(e.backend, e.state) for e in ictx.indexes.log]
    print(f"discovery with the index store: first {times[0]:.2f} s (builds), second "
          f"{times[1]:.2f} s (loads: {states})")

    # The same with only the raw and lvm backends: what LVM itself costs.
    import pvfs.backend as pb
    every = pb.load_backends()
    pb._loaded = [b for b in every if b.name in ("raw", "lvm")]
    METADATA_CACHE.clear()
    t = time.perf_counter()
    only = discover([str(img)], Options())
    t_only = time.perf_counter() - t
    pb._loaded = every
    n_only = len([p for p in resolve(only.root, "storage/lvm/bench").children()
                  if p.startswith("vm-")])
    print(f"discovery with only the raw and lvm backends: {n_only} thin LVs in {t_only:.2f} s")

    src = resolve(ctx.root, "storage/lvm/bench/vm-1001-disk-0").source
    METADATA_CACHE.clear()
    t = time.perf_counter()
    total = sum(src.pool.mapping(dev).mapped for dev in src.pool.dev_roots)
    t_maps = time.perf_counter() - t
    print(f"mapping trees alone (cold metadata cache): {len(src.pool.dev_roots)} devices, "
          f"{total} mappings in {t_maps:.2f} s ({total / t_maps / 1e6:.1f} M mappings/s)")
    size = args.mappings * CHUNK
    for req in (128 << 10, 1 << 20):
        bench_read(src, devs[1], img, tdata_off, req, size)  # warm the page cache
        runs = [bench_read(src, devs[1], img, tdata_off, req, size) for _ in range(3)]
        t_pvfs = min(r[0] for r in runs)  # best of 3: the machine is shared
        t_raw = min(r[1] for r in runs)
        mb = size / 2**20
        print(f"sequential read {mb:.0f} MiB in {req >> 10} KiB requests: pvfs "
              f"{mb / t_pvfs:.0f} MiB/s, direct pread at mapped offsets {mb / t_raw:.0f} MiB/s "
              f"(pvfs/limit = {t_raw / t_pvfs:.2f}, best of 3)")


if __name__ == "__main__":
    main()
