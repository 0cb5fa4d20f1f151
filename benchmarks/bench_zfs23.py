#!/usr/bin/env python3
"""ZFS RAIDZ expansion: do blocks in the pre-expansion layout read as fast as the same
blocks on a pool that was never expanded?  (issue 12: >= 0.9x)

zfs-fuse cannot expand a raidz vdev, and the only expanded pool, the zfs-2.3 fixture
(made by the OpenZFS 2.3.9 kernel module), holds a few MB; so two measurements:

A. Same pool, real blocks: every level-0 block of every file and zvol of the zfs-2.3
   fixture, read through ``Pool.read_physical`` (vdev read + checksum verification, no
   decompression, no cache): blocks born before the expansion (txg < 104: 3-wide logical
   rows spread over 4 disks, the expanded map) against blocks born after it (the classic
   4-wide map), in MB/s of physical block bytes.  Like for like: the 16 KiB fletcher4
   blocks (zvol records, volblocksize 16K: 79 written before, 32 after); then all
   blocks (different sizes and checksums on each side).
B. Same data, three pools made here: ``--size-mib`` of random 128 KiB blocks (ashift 12,
   raidz1) written (1) as blocks born before a 3 -> 4 expansion (``map_expanded``, 4
   member files), (2) on a 3-wide raidz1 never expanded, (3) on a 4-wide raidz1 never
   expanded (classic ``map_columns``), each member a sparse file read through the page
   cache.  Every block is read through ``Pool.read_bp`` (the path of every file and zvol
   block: vdev read, fletcher4 verification, no cache) with a block pointer like the
   ones ZFS writes (uncompressed: the data is random), and compared with the data it
   was made from; the vdev read alone is timed too.  Rounds alternate between the
   pools; the median of the rounds is reported, with the machine load (the machine
   is shared by several sessions: single runs vary by 2x).

Usage: python benchmarks/bench_zfs23.py [--size-mib 64] [--rounds 5] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from backends.zfs import checksum, raidz  # noqa: E402
from backends.zfs.pool import Pool  # noqa: E402
from backends.zfs.structs import VDEV_LABEL_START_SIZE  # noqa: E402
from backends.zfs.vdev import Leaf, Raidz  # noqa: E402
from pvfs.source import FileSource  # noqa: E402

ASHIFT = 12
UNIT = 1 << ASHIFT
BLOCK = 128 * 1024


def load():
    a, b, c = os.getloadavg()
    return f"load average {a:.2f} {b:.2f} {c:.2f} on {os.cpu_count()} CPUs"


# -- A: the fixture pool, before vs after the expansion ------------------------------------
def fixture_blocks():
    from conftest import FIXTURES, unpack
    from pvfs.discover import Options, discover
    from pvfs.nodes import File

    m = FIXTURES / "zfs-2.3"
    d = unpack(m / "images" / "rpool-raidz1-expanded.tar.zst")
    keys = ["rpool/encrypted_data=pvfs-zfs23-passphrase"]
    ctx = discover(sorted(glob.glob(str(d / "*" / "*.img"))),
                   Options(backend_options={"zfs_key": keys}))
    seen = set()
    blocks = {"before": [], "after": []}
    pool = None

    def walk(node):
        nonlocal pool
        for name, child in list(node.children().items()):
            if name == ".zfs":  # older txgs and snapshots: the same blocks again
                continue
            if isinstance(child, File):
                dn = getattr(child.source, "dnode", None)
                if dn is None:
                    continue
                pool = dn.objset.pool
                for blkid in range(dn.maxblkid + 1):
                    bp = dn.block_bp(blkid)
                    if bp is None or bp.hole or bp.embedded or bp.encrypted:
                        continue
                    key = (bp.dvas[0].vdev, bp.dvas[0].offset)
                    if key in seen:
                        continue
                    seen.add(key)
                    born = bp.phys_birth or bp.birth
                    blocks["before" if born < 104 else "after"].append(bp)
            elif hasattr(child, "children"):
                walk(child)

    from pvfs.nodes import resolve

    walk(resolve(ctx.root, "storage/zfs/rpool"))
    return pool, blocks


def bench_fixture(rounds):
    pool, blocks = fixture_blocks()
    sets = {}
    for kind, bps in blocks.items():
        sets[f"16K fletcher4, born {kind}"] = [bp for bp in bps if bp.psize == 16384
                                                and bp.cksum_type == 7]
    for kind, bps in blocks.items():
        sets[f"all blocks, born {kind}"] = bps
    out = {}
    for _ in range(rounds):
        for name, bps in sets.items():
            n = 0
            t = time.perf_counter()
            while time.perf_counter() - t < 0.5:
                for bp in bps:
                    n += len(pool.read_physical(bp))
            out.setdefault(name, []).append(n / (time.perf_counter() - t) / 1e6)
    return {k: (statistics.median(v), max(v), len(sets[k]), sum(b.psize for b in sets[k]))
            for k, v in out.items()}


# -- B: the same data on an expanded pool and on pools never expanded ---------------------
def _write_sector(members, dev, off, data):
    members[dev][VDEV_LABEL_START_SIZE + off:VDEV_LABEL_START_SIZE + off + len(data)] = data


def make_pools(work: Path, size_mib: int):
    rng = np.random.default_rng(23)
    nblocks = size_mib * 1024 * 1024 // BLOCK
    blocks = [rng.integers(0, 256, BLOCK, dtype=np.uint8) for _ in range(nblocks)]
    layouts = {}
    for name, physical, logical in (("expanded-3to4", 4, 3), ("never-3wide", 3, 3),
                                    ("never-4wide", 4, 4)):
        s = BLOCK >> ASHIFT
        q, r = divmod(s, logical - 1)
        tot = s + q + (1 if r else 0)
        asize = (tot + (tot % 2)) << ASHIFT  # roundup(tot, nparity + 1)
        span = VDEV_LABEL_START_SIZE + nblocks * asize // physical + 16 * UNIT
        members = [bytearray(span) for _ in range(physical)]
        offsets = []
        for i, blk in enumerate(blocks):
            offset = i * asize
            offsets.append(offset)
            if logical != physical:
                dev, off, valid = raidz.map_expanded(offset, BLOCK, physical, logical, 1, ASHIFT)
                rows, cols = dev.shape
                sect = np.zeros((rows, cols, UNIT), dtype=np.uint8)
                datav = blk.reshape(-1, UNIT)
                sect[:, 1:].transpose(1, 0, 2)[valid[:, 1:].T] = datav
                sect[:, 0] = np.bitwise_xor.reduce(sect[:, 1:], axis=1)
                for rr in range(rows):
                    for c in range(cols):
                        if valid[rr, c]:
                            _write_sector(members, int(dev[rr, c]), int(off[rr, c]),
                                          sect[rr, c].tobytes())
            else:
                cols = raidz.map_columns(offset, BLOCK, physical, 1, ASHIFT)
                sizes = [c[2] for c in cols[1:]]
                data = blk.tobytes()
                pieces, pos = [], 0
                for sz in sizes:
                    pieces.append(data[pos:pos + sz])
                    pos += sz
                parity = raidz.parity_of(pieces, 1, cols[0][2])[0]
                for (devidx, coff, _), piece in zip(cols, [parity] + pieces, strict=True):
                    _write_sector(members, devidx, coff, piece)
        paths = []
        for j, mem in enumerate(members):
            p = work / f"{name}-d{j}.img"
            p.write_bytes(bytes(mem))
            paths.append(p)
        kids = [Leaf(j, str(p), FileSource(str(p)), ASHIFT) for j, p in enumerate(paths)]
        vd = Raidz(1, kids, 1, ASHIFT, expand_txgs=[104] if logical != physical else [])
        with np.errstate(over="ignore"):
            bps = [blkptr(o, asize, checksum.fletcher4(b.tobytes()))
                   for o, b in zip(offsets, blocks, strict=True)]
        layouts[name] = (Pool(name, 1, {}, [vd]), vd, offsets, bps)
    return layouts, [b.tobytes() for b in blocks]


def blkptr(offset, asize, cksum):
    """A level-0 file block pointer as ZFS writes it: one DVA, 128K logical = physical,
    compression off, fletcher4, birth txg 50 (before the expansion at 104)."""
    from backends.zfs.blkptr import BlkPtr

    words = [0] * 16
    words[0] = asize >> 9
    words[1] = offset >> 9
    words[6] = (((BLOCK >> 9) - 1) | (((BLOCK >> 9) - 1) << 16) | (2 << 32) | (7 << 40)
                | (19 << 48) | (1 << 63))
    words[10] = 50
    words[11] = 1
    words[12:16] = cksum
    return BlkPtr(struct.pack("<16Q", *words), True)


def read_all(pool, bps, blocks):
    n = 0
    for bp, want in zip(bps, blocks, strict=True):
        data = pool.read_bp(bp, cache=False)
        if data != want:
            raise SystemExit(f"block {bp!r}: wrong bytes")
        n += len(data)
    return n


def read_vdev(vd, offsets):
    n = 0
    for off in offsets:
        n += len(next(vd.candidates(off, BLOCK, birth=50)))
    return n


def bench_synthetic(size_mib, rounds, work):
    t = time.perf_counter()
    layouts, blocks = make_pools(work, size_mib)
    print(f"  pools made in {time.perf_counter() - t:.1f} s")
    res = {}
    for _ in range(rounds):
        for name, (pool, vd, offsets, bps) in layouts.items():
            t = time.perf_counter()
            n = read_all(pool, bps, blocks)
            res.setdefault(name, []).append(n / (time.perf_counter() - t) / 1e6)
            t = time.perf_counter()
            n = read_vdev(vd, offsets)
            res.setdefault(name + " vdev", []).append(n / (time.perf_counter() - t) / 1e6)
    return {k: (statistics.median(v), max(v)) for k, v in res.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mib", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args()
    print(f"start: {load()}")
    print("A. zfs-2.3 fixture pool, read_physical (vdev + checksum) per block, MB/s "
          "(median / best round):")
    fx = bench_fixture(a.rounds)
    for name, (med, best, n, size) in fx.items():
        print(f"  {name:28s} {n:4d} blocks, {size / 1e6:5.2f} MB: {med:7.1f} / {best:7.1f}")
    for what in ("16K fletcher4", "all blocks"):
        b, f = fx[f"{what}, born before"], fx[f"{what}, born after"]
        print(f"  ratio before/after ({what}): median {b[0] / f[0]:.2f}, best {b[1] / f[1]:.2f}")
    print(f"B. {a.size_mib} MiB of 128 KiB blocks, raidz1 ashift 12 (read_bp: vdev read + "
          f"fletcher4; vdev: the vdev read alone):")
    with tempfile.TemporaryDirectory(dir=a.workdir) as work:
        syn = bench_synthetic(a.size_mib, a.rounds, Path(work))
    for name, (med, best) in syn.items():
        print(f"  {name:20s} {med:7.1f} / {best:7.1f} MB/s (median / best round)")
    for suffix in ("", " vdev"):
        e = syn["expanded-3to4" + suffix]
        n3, n4 = syn["never-3wide" + suffix], syn["never-4wide" + suffix]
        print(f"  ratio{suffix or ' read_bp'}: expanded/never-3wide median {e[0] / n3[0]:.2f} "
              f"best {e[1] / n3[1]:.2f}; expanded/never-4wide median {e[0] / n4[0]:.2f} "
              f"best {e[1] / n4[1]:.2f}")
    print(f"end: {load()}")


if __name__ == "__main__":
    main()
