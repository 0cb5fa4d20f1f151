#!/usr/bin/env python3
"""DRBD backend benchmark: discovery, reads through node-X.raw / merged.raw, the byte
comparison behind diff.json, and bitmap decoding for a large device.

Makes two synthetic split-brain nodes (random base data, some blocks changed on
each side, meta data from backends.drbd.craft) in a temporary directory and
compares every pvfs path with the plain-file equivalent:

    python benchmarks/bench_drbd.py [--size-mib 256] [--changed 2000] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from backends.drbd import craft  # noqa: E402
from backends.drbd import pair as P  # noqa: E402
from backends.drbd.meta import INTERNAL, read_bitmap, read_meta  # noqa: E402
from pvfs.cache import METADATA_CACHE  # noqa: E402
from pvfs.discover import Options, discover  # noqa: E402
from pvfs.nodes import resolve  # noqa: E402
from pvfs.source import FileSource  # noqa: E402

PIECE = 128 << 10  # a FUSE read


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def read_source(src, piece=PIECE):
    h = hashlib.sha256()
    for off in range(0, src.size, piece):
        h.update(src.read(off, min(piece, src.size - off)))
    return h.hexdigest()


def read_file(path, size, piece=PIECE):
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        for off in range(0, size, piece):
            h.update(os.pread(fd, min(piece, size - off), off))
    finally:
        os.close(fd)
    return h.hexdigest()


def compare_files(a, b, size, chunk=4 << 20):
    """The plain baseline for the comparison: read both in 4 MiB chunks, compare bytes."""
    n = 0
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for _off in range(0, size, chunk):
            if fa.read(chunk) != fb.read(chunk):
                n += 1
    return n


def make_pair(d, size, changed, rng):
    base = os.path.join(d, "base.bin")
    with open(base, "wb") as f:
        left = size
        while left:
            n = min(left, 16 << 20)
            f.write(rng.randbytes(n))
            left -= n
    nblocks = size // 4096
    blocks_a = sorted(rng.sample(range(nblocks), changed))
    blocks_b = sorted(rng.sample(range(nblocks), changed))
    paths = []
    for name, node_id, blocks, cur in (("a", 0, blocks_a, 0xA0A0), ("b", 1, blocks_b, 0xB0B0)):
        p = os.path.join(d, f"bench-{name}.img")
        craft.write_device(p, base, current_uuid=cur << 48, bitmap_uuid=0x5E2A7C9B3D1F4E60,
                           history=[0x8C3F2E1D4B5A6978], node_id=node_id, peer_node_id=1 - node_id,
                           bits=blocks)
        with open(p, "r+b") as f:
            for blk in blocks:
                f.seek(blk * 4096)
                f.write(rng.randbytes(4096))
        paths.append(p)
    os.unlink(base)
    return paths, blocks_a, blocks_b


def bench_bitmap(d, rng, tib=1, fraction=0.01):
    """Bitmap decoding of a sparse ``tib``-TiB device with ``fraction`` of the bits set."""
    dev = tib << 40
    path = os.path.join(d, "huge.img")
    md_offset, al_rel, bm_rel, md_size_sect, data = craft.internal_layout(dev)
    nbits = data // 4096
    nset = int(nbits * fraction)
    # set bits in clustered runs (as real writes are): runs of 1..64 blocks
    bits = set()
    while len(bits) < nset:
        start = rng.randrange(nbits - 64)
        bits.update(range(start, start + rng.randint(1, 64)))
    with open(path, "wb") as f:
        f.truncate(dev)
        for off, blob in craft.internal_md(dev, current_uuid=0x1234 << 32, bits=()):
            f.seek(off)
            f.write(blob)
        import numpy as np
        words = np.zeros(-(-nbits // 32), dtype="<u4")
        idx = np.fromiter(bits, dtype=np.int64)
        np.bitwise_or.at(words, idx // 32, (np.uint32(1) << (idx % 32).astype(np.uint32)))
        f.seek(md_offset + bm_rel * 512)
        f.write(words.tobytes())
    src = FileSource(path)
    METADATA_CACHE.clear()
    t_meta, md = timed(lambda: read_meta(src, INTERNAL))
    t_bm, bm = timed(lambda: read_bitmap(src, md, 0))
    os.unlink(path)
    return {"device_bytes": dev, "bitmap_bytes": -(-nbits // 8), "bits_set": bm.bits_set,
            "bits_expected": len(bits), "ranges_kept": len(bm.ranges), "ranges_truncated": bm.truncated,
            "superblock_s": round(t_meta, 4), "bitmap_decode_s": round(t_bm, 3),
            "bitmap_MiB_per_s": round(len(words) * 4 / 2**20 / t_bm, 1)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--changed", type=int, default=2000, help="4 KiB blocks changed on each node")
    ap.add_argument("--dir", default=None)
    ap.add_argument("--no-huge", action="store_true", help="skip the 1 TiB bitmap case")
    args = ap.parse_args()
    rng = random.Random(42)
    size = args.size_mib << 20
    out = {"size_bytes": size, "changed_per_node": args.changed}
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-drbd-") as d:
        (a, b), blocks_a, blocks_b = make_pair(d, size, args.changed, rng)
        METADATA_CACHE.clear()
        rf = os.path.join(d, "ranges.txt")
        with open(rf, "w") as f:
            for blk in blocks_b[:1000]:
                f.write(f"{blk}b 1b B\n")
        t, ctx = timed(lambda: discover([a, b], Options(backend_options={"drbd_ranges": [rf]})))
        out["discover_s"] = round(t, 3)
        base = "storage/drbd/bench"
        node_a = resolve(ctx.root, f"{base}/node-A.raw").source
        merged = resolve(ctx.root, f"{base}/merged.raw").source
        # reads
        t_raw, h_raw = timed(lambda: read_file(a, size))
        t_node, h_node = timed(lambda: read_source(node_a))
        assert h_raw == h_node
        t_merged, _ = timed(lambda: read_source(merged))
        out["read_raw_file_MiB_s"] = round(size / 2**20 / t_raw, 1)
        out["read_node_A_MiB_s"] = round(size / 2**20 / t_node, 1)
        out["read_node_A_ratio_vs_raw"] = round(t_node / t_raw, 2)
        out["read_merged_MiB_s"] = round(size / 2**20 / t_merged, 1)
        out["read_merged_ratio_vs_raw"] = round(t_merged / t_raw, 2)
        out["merged_extents"] = len(merged.extents)
        # the comparison behind diff.json
        node_b = resolve(ctx.root, f"{base}/node-B.raw").source
        t_cmp_raw, _ = timed(lambda: compare_files(a, b, size))
        t_cmp, (ranges, nblocks, _, _) = timed(lambda: P.compare_sources(node_a, node_b, size))
        t_diff, text = timed(lambda: resolve(ctx.root, f"{base}/diff.json").render())
        doc = json.loads(text)
        want = sorted(set(blocks_a) | set(blocks_b))
        assert doc["compared"]["blocks"] == want, "comparison disagrees with the changed blocks"
        assert doc["bitmap_claims"]["blocks"] == want and nblocks == len(want)
        out["note"] = ("discover_s includes the byte comparison when the core's tree-storage scan "
                       "lists diverged/; diff_json_s is then only the cached render")
        out["diff_json_s"] = round(t_diff, 3)
        out["compare_s"] = round(t_cmp, 3)
        out["compare_MiB_s_per_node"] = round(size / 2**20 / t_cmp, 1)
        out["compare_plain_python_s"] = round(t_cmp_raw, 3)
        out["compare_ratio_vs_plain"] = round(t_cmp / t_cmp_raw, 2)
        out["blocks_differing"] = doc["compared"]["blocks_differing"]
        t_div, names = timed(lambda: list(resolve(ctx.root, f"{base}/diverged").children()))
        out["diverged_dir_list_s"] = round(t_div, 4)
        div = resolve(ctx.root, f"{base}/diverged")
        out["diverged_entries"] = sum(len(div.get(k).children()) for k in names if k != "README.txt")
        if not args.no_huge:
            out["bitmap_1TiB"] = bench_bitmap(d, rng)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
