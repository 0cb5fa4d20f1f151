"""Benchmark for the pbs and vzdump backends (a script, not a test).

1. A datastore with one VM disk of --size-mib (default 1024) is written to a temp dir with
   our own fixed-size chunker (4 MiB chunks, zstd level 1 blobs, a mix of random, text and
   zero chunks).  The disk is read sequentially through pvfs (discover + resolve, 128 KiB
   reads as FUSE sends them) and compared with the limit: reading and zstd-decoding the same
   chunk files in one process (and that plus the sha256 check pvfs also does).
2. A .vma.zst of the same size (written from vma_spec.txt, compressed by the zstd tool):
   first mount (one decoding pass builds the sidecar index) and re-mount (index reused).

    python benchmarks/bench_pbs.py [--size-mib 1024] [--keep DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import zstandard  # noqa: E402

from backends.pbs.blob import encode_blob  # noqa: E402
from backends.pbs.structs import FIXED_SIZED_CHUNK_INDEX_1_0  # noqa: E402
from pvfs.cache import METADATA_CACHE  # noqa: E402
from pvfs.discover import Options, discover  # noqa: E402
from pvfs.nodes import resolve  # noqa: E402
from vma_writer import extent_header, vma_header  # noqa: E402

CS = 4 << 20
TEXT = b"".join(b"line %08d: the quick brown fox jumps over the lazy dog\n" % i for i in range(80000))


def chunk_data(i):
    """Deterministic disk content: 1 in 8 chunks zero, else random / text halves."""
    if i % 8 == 5:
        return bytes(CS)
    r = random.Random(i)
    rnd = r.randbytes(CS // 4)
    off = r.randrange(len(TEXT) - CS)
    return rnd + TEXT[off:off + CS // 2] + bytes(CS // 4)


def make_datastore(root, size):
    snap = os.path.join(root, "vm", "900", "2024-05-05T05:05:05Z")
    os.makedirs(snap)
    digests = []
    for i in range(size // CS):
        data = chunk_data(i)
        d = hashlib.sha256(data).digest()
        digests.append(d)
        p = os.path.join(root, ".chunks", d.hex()[:4])
        os.makedirs(p, exist_ok=True)
        f = os.path.join(p, d.hex())
        if not os.path.exists(f):
            with open(f, "wb") as fh:
                fh.write(encode_blob(data))
    table = b"".join(digests)
    head = (FIXED_SIZED_CHUNK_INDEX_1_0 + bytes(16) + struct.pack("<q", 0) + hashlib.sha256(table).digest()
            + struct.pack("<QQ", size, CS)).ljust(4096, b"\0")
    with open(os.path.join(snap, "drive-scsi0.img.fidx"), "wb") as f:
        f.write(head + table)
    return digests


def limit(root, digests, verify):
    dctx = zstandard.ZstdDecompressor()
    t = time.perf_counter()
    n = 0
    for d in digests:
        with open(os.path.join(root, ".chunks", d.hex()[:4], d.hex()), "rb") as f:
            raw = f.read()
        data = dctx.stream_reader(raw[12:]).read(CS + 1) if raw[:8] != b"\x42\xab\x38\x07\xbe\x83\x70\xa1" else raw[12:]
        if verify:
            import zlib

            zlib.crc32(raw[12:])
            assert hashlib.sha256(data).digest() == d
        n += len(data)
    return n / (time.perf_counter() - t)


def through_pvfs(root, piece=128 << 10):
    METADATA_CACHE.clear()
    t0 = time.perf_counter()
    ctx = discover([root], Options())
    t1 = time.perf_counter()
    node = resolve(ctx.root, f"storage/pbs/{os.path.basename(root)}/vm/900/2024-05-05T05:05:05Z/drive-scsi0.img")
    src = node.source
    h = hashlib.sha256()
    for off in range(0, src.size, piece):
        h.update(src.read(off, piece))
    t2 = time.perf_counter()
    return src.size / (t2 - t1), t1 - t0, h.hexdigest()


def write_vma_zst(path, size):
    """A VMA of one device (vma_spec.txt), clusters in extents of 58, piped into zstd -T2."""
    uuid = bytes(range(16))
    head = vma_header({"qemu-server.conf": b"memory: 2048\nscsi0: local:vm-900-disk-0,size=1G\n"},
                      {"drive-scsi0": size}, uuid)
    with open(path, "wb") as out:
        z = subprocess.Popen(["zstd", "-q", "-T2", "-c"], stdin=subprocess.PIPE, stdout=out)
        z.stdin.write(bytes(head))
        nclusters = size // 65536
        per_chunk = CS // 65536
        cached = [None, None]
        for first in range(0, nclusters, 58):
            infos, body = [], []
            for c in range(first, min(nclusters, first + 58)):
                if cached[0] != c // per_chunk:
                    cached[:] = [c // per_chunk, chunk_data(c // per_chunk)]
                chunk = cached[1]
                data = chunk[(c % per_chunk) * 65536:(c % per_chunk + 1) * 65536]
                mask = 0
                for j in range(16):
                    blk = data[j * 4096:(j + 1) * 4096]
                    if blk.count(0) != 4096:
                        mask |= 1 << j
                        body.append(blk)
                infos.append((mask << 48) | (1 << 32) | c)
            eh = extent_header(infos, len(body), uuid)
            z.stdin.write(bytes(eh) + b"".join(body))
        z.stdin.close()
        z.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--keep", help="keep the generated data in this folder")
    a = ap.parse_args()
    size = a.size_mib << 20
    tmp = a.keep or tempfile.mkdtemp(prefix="bench-pbs-")
    try:
        ds = os.path.join(tmp, "benchstore")
        t = time.perf_counter()
        digests = make_datastore(ds, size) if not os.path.exists(ds) else None
        if digests is None:
            digests = [hashlib.sha256(chunk_data(i)).digest() for i in range(size // CS)]
        print(f"datastore: {size >> 20} MiB disk, {len(set(digests))} chunk files, "
              f"written in {time.perf_counter() - t:.1f} s")
        lim = limit(ds, digests, verify=False)
        limv = limit(ds, digests, verify=True)
        speed, mount_t, digest = through_pvfs(ds)
        speed4, _, _ = through_pvfs(ds, piece=4 << 20)
        want = hashlib.sha256(b"".join(chunk_data(i) for i in range(size // CS))).hexdigest()
        assert digest == want, "pvfs read the wrong bytes"
        print(f"limit: read + zstd-decode chunks in one process: {lim / 2**20:8.0f} MiB/s")
        print(f"limit + CRC32 + sha256 digest check (what pvfs does): {limv / 2**20:8.0f} MiB/s")
        print(f"pvfs: mount {mount_t * 1000:.0f} ms; sequential 128 KiB reads: {speed / 2**20:8.0f} MiB/s "
              f"({speed / lim:.2f} of the limit, {speed / limv:.2f} of the checked limit); "
              f"4 MiB reads: {speed4 / 2**20:.0f} MiB/s")

        vma = os.path.join(tmp, "vzdump-qemu-900-2024_05_05-05_05_05.vma.zst")
        if not os.path.exists(vma):
            t = time.perf_counter()
            write_vma_zst(vma, size)
            print(f"vma.zst: {os.path.getsize(vma) >> 20} MiB compressed, written in {time.perf_counter() - t:.1f} s")
        idx = os.path.join(tmp, "index")
        shutil.rmtree(idx, ignore_errors=True)
        times = []
        for _ in range(2):
            METADATA_CACHE.clear()
            t = time.perf_counter()
            ctx = discover([vma], Options(backend_options={"vzdump_index_dir": idx, "vzdump_seek_cache": "off"}))
            times.append(time.perf_counter() - t)
            vol = next(v for v in ctx.volumes if v.role == "input")
            assert vol.claimed_by == "vzdump", vol.claimed_by
        print(f"vma.zst first mount (index built): {times[0]:.2f} s; re-mount (sidecar reused): "
              f"{times[1] * 1000:.0f} ms ({times[0] / times[1]:.0f}x faster)")
        METADATA_CACHE.clear()
        t = time.perf_counter()
        discover([vma], Options(backend_options={"vzdump_index_dir": os.path.join(tmp, "index-auto")}))
        print(f"vma.zst first mount with the seek cache written too: {time.perf_counter() - t:.2f} s")
        node = resolve(ctx.root, f"storage/files/{os.path.basename(vma)}/drive-scsi0.raw")
        t = time.perf_counter()
        h = hashlib.sha256()
        for off in range(0, node.size, 128 << 10):
            h.update(node.source.read(off, 128 << 10))
        dt = time.perf_counter() - t
        assert h.hexdigest() == want, "VMA device differs"
        print(f"vma.zst device sequential read after re-mount: {node.size / dt / 2**20:.0f} MiB/s")
        # Random 64 KiB reads, backwards through the disk (what a guest filesystem does).
        rnd = random.Random(4)
        offs = sorted((rnd.randrange(node.size - 65536) for _ in range(200)), reverse=True)
        for mode in ("auto", "off"):
            METADATA_CACHE.clear()
            ctx = discover([vma], Options(backend_options={"vzdump_index_dir": os.path.join(tmp, "index-" + mode),
                                                           "vzdump_seek_cache": mode}))
            node = resolve(ctx.root, f"storage/files/{os.path.basename(vma)}/drive-scsi0.raw")
            METADATA_CACHE.clear()
            n = 200 if mode == "auto" else 5
            t = time.perf_counter()
            for o in offs[:n]:
                node.source.read(o, 65536)
            dt = (time.perf_counter() - t) / n
            print(f"vma.zst random 64 KiB reads (backwards), seek cache {mode}: {dt * 1000:.1f} ms per read")
    finally:
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
