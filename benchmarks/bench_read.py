#!/usr/bin/env python3
"""The common FUSE read path: sequential reads of exposed disks through ``pvfs mount``
against ``cat`` of the equivalent raw file (the limit), same run, cold page cache.

One mount serves five inputs of 1 GiB each (issue 15 item 1: >= 0.8x of the limit):

* ``raw``: a raw disk image file (``storage/files/raw.img/disk.raw``);
* ``lvm``: a linear LV on a PV made by real lvm2 (``pvcreate``/``vgcreate``/``lvcreate
  -an`` on a loop device; its bytes written at the LV's extents: no device-mapper needed);
* ``thin``: a thin LV of 16,384 mapped 64 KiB blocks in shuffled 1 MiB runs
  (thin_restore's metadata, as benchmarks/bench_lvm.py makes it);
* ``qcow2``: bench_qcow2's image (7/8 incompressible data, compressed clusters in every
  8th 4 MiB), with qemu-storage-daemon's FUSE export of it as the peer;
* ``qcow2-frag``: raw.img's bytes written into a qcow2 by qemu-io in 1 MiB writes in
  shuffled order (clusters out of the disk's order, as a running VM writes them).

The limit is ``cat`` (1 MiB ``readv``) of ``raw.img``, qemu-img's conversion of the qcow2.
Each round reads every input whole, interleaved in slices (``--slice-mib``, 128): slice 1
by every reader, then slice 2 ..., each slice from a cold page cache (the inputs' and the
exposed files' pages dropped with ``posix_fadvise(DONTNEED)`` before it), so that every
reader meets the same disk: on a shared machine the disk's speed changes several times
within one 1 GiB read.  Before each slice the disk is let finish the I/O in progress (the
read-ahead a reader started past its slice is not timed as the next reader's).  A reader's speed in a round is its bytes over the sum of its
slices' times; the median of the rounds and the per-round ratios are printed with the
load average.
``--stress N`` runs ``stress-ng --cpu N`` beside it; ``--also NAME=DIR`` mounts the same
inputs a second time with the pvfs checkout in DIR (before/after in the same run);
``--direct`` adds a reader per input that opens the exposed file ``O_DIRECT`` (as ``dd
iflag=direct`` or ``qemu-img convert -T none``): the kernel keeps no page cache of the FUSE
file, each 1 MiB read is one request answered into the reader's buffer (one copy and one
page allocation fewer per byte; see the README's speed section).

Usage: python benchmarks/bench_read.py [--rounds 7] [--stress N] [--workdir DIR]
       [--size-mib 1024] [--slice-mib 128] [--also before=/path/to/other/checkout] [--direct]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT), str(ROOT / "tests")]
import common  # noqa: E402
from common import unmount  # noqa: E402

SIZE_MIB = 1024
# global/activation=0: lvm2 writes metadata only and asks nothing of device-mapper (which
# containers and VMs often lack)
LVM_CONF = ('devices{filter=["a|/dev/loop|","r|.*|"] use_devicesfile=0 '
            'obtain_device_list_from_udev=0} activation{udev_sync=0 udev_rules=0 monitoring=0} '
            'global{activation=0}')


def sh(*cmd, **kw):
    return subprocess.run(list(map(str, cmd)), check=True, capture_output=True, text=True,
                          **kw).stdout


def lvm(*args):
    env = dict(os.environ, LVM_SUPPRESS_FD_WARNINGS="1")
    return sh(args[0], "-q", "--config", LVM_CONF, *args[1:], env=env)


def build_lvm(work: Path, raw: Path) -> Path:
    """A PV image with VG ``benchvg`` and a linear LV ``disk`` holding raw.img's bytes."""
    img = work / "lvm.img"
    with open(img, "wb") as f:
        f.truncate((SIZE_MIB + 64) << 20)
    loop = sh("losetup", "-f", "--show", img).strip()
    try:
        lvm("pvcreate", loop)
        lvm("vgcreate", "benchvg", loop)
        lvm("lvcreate", "-an", "-Zn", "-y", "-L", f"{SIZE_MIB}m", "-n", "disk", "benchvg")
        pe_start = int(lvm("pvs", "--noheadings", "--units", "b", "--nosuffix",
                           "-o", "pe_start", loop).strip())
        ext = int(lvm("vgs", "--noheadings", "--units", "b", "--nosuffix",
                      "-o", "vg_extent_size", "benchvg").strip())
        seg = lvm("lvs", "--noheadings", "-o", "seg_pe_ranges", "benchvg/disk").strip()
        first_pe = int(seg.split(":")[1].split("-")[0])
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)
    with open(raw, "rb") as src, open(img, "r+b") as out:
        out.seek(pe_start + first_pe * ext)
        shutil.copyfileobj(src, out, 4 << 20)
    return img


def build(work: Path) -> dict[str, Path]:
    stamp = work / f"built-{SIZE_MIB}"
    files = {"raw": work / "raw.img", "lvm": work / "lvm.img", "thin": work / "thin.img",
             "qcow2": work / "bench.qcow2"}
    if stamp.exists() and all(p.exists() for p in files.values()):
        files["qcow2-frag"] = build_frag(work, files["raw"])
        return files
    import bench_lvm
    import bench_qcow2

    for old in work.glob("built-*"):  # inputs of another size are rebuilt
        old.unlink()
    t = time.perf_counter()
    qcow = bench_qcow2.build_image(work, SIZE_MIB)
    sh("qemu-img", "convert", "-f", "qcow2", "-O", "raw", qcow, files["raw"])
    build_lvm(work, files["raw"])
    thinwork = work / "thin"
    thinwork.mkdir(exist_ok=True)
    bench_lvm.make_image(files["thin"], 1, SIZE_MIB * 16, thinwork)
    shutil.rmtree(thinwork)
    (work / "frag.qcow2").unlink(missing_ok=True)
    files["qcow2-frag"] = build_frag(work, files["raw"])
    stamp.write_text("ok")
    print(f"inputs built in {time.perf_counter() - t:.0f} s", flush=True)
    return files


def build_frag(work: Path, raw: Path) -> Path:
    """A qcow2 holding raw.img's bytes written by qemu-io in 1 MiB writes in shuffled
    order, as a running VM allocates clusters: the disk's order is not the file's."""
    out = work / "frag.qcow2"
    if out.exists():
        return out
    import random

    pieces = work / "frag-pieces"
    pieces.mkdir(exist_ok=True)
    n = raw.stat().st_size >> 20
    with open(raw, "rb") as f:
        for i in range(n):
            (pieces / str(i)).write_bytes(f.read(1 << 20))
    order = list(range(n))
    random.Random(7).shuffle(order)
    tmp = work / "frag.qcow2.tmp"
    sh("qemu-img", "create", "-q", "-f", "qcow2", tmp, f"{n}M")
    subprocess.run(["qemu-io", "-f", "qcow2", str(tmp)], check=True, capture_output=True,
                   text=True, input="".join(f"write -q -s {pieces / str(i)} {i}M 1M\n"
                                            for i in order))
    shutil.rmtree(pieces)
    tmp.rename(out)
    return out


def mount(files: dict[str, Path], mnt: Path, tree: Path, log: Path) -> dict[str, Path]:
    mnt.mkdir(exist_ok=True)
    with open(log, "w") as f:  # a file, not a pipe: see bench_zfs.py
        subprocess.run([sys.executable, "-m", "pvfs", "mount", *map(str, files.values()),
                        str(mnt)], cwd=tree, env=dict(os.environ, PYTHONPATH=str(tree)),
                       stdout=f, stderr=f, check=True, timeout=300)
    return {"raw": mnt / "storage" / "files" / "raw.img" / "disk.raw",
            "lvm": mnt / "storage" / "lvm" / "benchvg" / "disk",
            "thin": mnt / "storage" / "lvm" / "bench" / "vm-1001-disk-0",
            "qcow2": mnt / "storage" / "files" / "bench.qcow2" / "disk.raw",
            "qcow2-frag": mnt / "storage" / "files" / "frag.qcow2" / "disk.raw"}


def start_qsd(qcow: Path, export: Path):
    qsd = shutil.which("qemu-storage-daemon")
    if not qsd:
        print("qemu-storage-daemon not installed (Debian: qemu-system-common); skipped")
        return None
    export.touch()
    proc = subprocess.Popen([qsd, "--blockdev",
                             f"driver=file,filename={qcow},node-name=f,read-only=on",
                             "--blockdev", "driver=qcow2,file=f,node-name=q,read-only=on",
                             "--export", f"type=fuse,id=e,node-name=q,mountpoint={export},"
                             "writable=off"])
    for _ in range(100):
        if os.path.ismount(export):
            break
        time.sleep(0.1)
    return proc


def in_flight(dev: int) -> int | None:
    """Reads and writes the disk holding the inputs has in progress (/proc/diskstats, the
    ninth counter), or None when it is not listed."""
    try:
        with open("/proc/diskstats") as f:
            for line in f:
                p = line.split()
                if int(p[0]) == os.major(dev) and int(p[1]) == os.minor(dev):
                    return int(p[11])
    except (OSError, ValueError, IndexError):
        pass
    return None


def settle(dev: int, limit: float = 1.0) -> None:
    """Wait (up to ``limit`` s) until the disk has no I/O in progress: the read-ahead or
    prefetch a reader started beyond its slice would otherwise still be reading when the
    next reader's slice is timed, and slow it down (the next reader, not its own)."""
    t = time.perf_counter() + limit
    while time.perf_counter() < t and (in_flight(dev) or 0) > 0:
        time.sleep(0.002)


def drop(paths) -> None:
    """Drop these files' clean pages from the page cache (FUSE files too): a cold read
    without dropping, and waiting for, everybody else's page cache."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


#: Readers (by name) that open their file O_DIRECT (``--direct``).
DIRECT: set[str] = set()


def timed_slice(path, off, n, buf, flags: int = 0) -> float:
    """Seconds to read ``n`` bytes at ``off`` in 1 MiB ``preadv`` calls (as ``cat``);
    ``flags``: more open flags (``O_DIRECT``: ``buf`` is page-aligned)."""
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        t = time.perf_counter()
        pos, end = off, off + n
        while pos < end:
            k = os.preadv(fd, [buf[:min(len(buf), end - pos)]], pos)
            assert k > 0, (path, pos)
            pos += k
        return time.perf_counter() - t
    finally:
        os.close(fd)


def sha256_of(path, flags: int = 0) -> str:
    """sha256 of the file, read in 4 MiB ``readv`` calls into a page-aligned buffer (open
    ``flags``: ``O_DIRECT`` reads it as such a reader does)."""
    import mmap

    h = hashlib.sha256()
    buf = mmap.mmap(-1, 4 << 20)
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        while n := os.readv(fd, [buf]):
            h.update(memoryview(buf)[:n])
    finally:
        os.close(fd)
        buf.close()
    return h.hexdigest()


def thin_sha256(size: int) -> str:
    """What the thin LV holds: each mapped 64 KiB data block tagged with its number
    (bench_lvm.make_image), in the order of the device's mapping runs."""
    import bench_lvm

    devs, _ = bench_lvm.layout(1, size // bench_lvm.CHUNK)
    h = hashlib.sha256()
    for _v, d, n in sorted(devs[1]):
        h.update(np.repeat(np.arange(d, d + n, dtype="<u8"), bench_lvm.CHUNK // 8).tobytes())
    return h.hexdigest()


def check_content(readers: dict[str, Path], size: int) -> None:
    """Every reader gave the right bytes: the raw-equivalent ones equal raw.img, the thin
    LVs their tagged blocks (after the timed rounds, warm)."""
    want = {"thin": thin_sha256(size)}
    for k, p in readers.items():
        kind = "thin" if k.removesuffix(" O_DIRECT").endswith(" thin") else "raw"
        flags = os.O_DIRECT if k in DIRECT else 0
        if kind not in want:
            want[kind] = sha256_of(p)  # the limit, raw.img, comes first
        assert sha256_of(p, flags) == want[kind], f"{k}: other bytes than {kind}"
    print(f"content: all {len(readers)} readers gave the expected bytes (sha256)")


def one_round(readers: dict[str, Path], inputs, size: int, slice_bytes: int) -> dict:
    import mmap

    buf = memoryview(mmap.mmap(-1, 1 << 20))  # page-aligned, for the O_DIRECT readers
    spent = dict.fromkeys(readers, 0.0)
    every = list(inputs) + list(readers.values())
    dev = os.stat(every[0]).st_dev
    for off in range(0, size, slice_bytes):
        n = min(slice_bytes, size - off)
        for k, p in readers.items():
            settle(dev)
            drop(every)
            spent[k] += timed_slice(p, off, n, buf, os.O_DIRECT if k in DIRECT else 0)
    return {k: size / t / 1e6 for k, t in spent.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="/var/tmp/pvfs-bench-read")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--stress", type=int, default=0, metavar="N",
                    help="run stress-ng --cpu N beside the reads (a loaded machine)")
    ap.add_argument("--also", action="append", default=[], metavar="NAME=DIR",
                    help="mount the inputs again with the pvfs checkout in DIR")
    ap.add_argument("--size-mib", type=int, default=1024,
                    help="size of each input (a multiple of 32)")
    ap.add_argument("--slice-mib", type=int, default=128,
                    help="readers are interleaved in slices of this size (see above)")
    ap.add_argument("--direct", action="store_true",
                    help="also read every input of the first mount O_DIRECT")
    args = ap.parse_args()
    global SIZE_MIB
    SIZE_MIB = args.size_mib
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    files = build(work)
    size = SIZE_MIB << 20
    trees = [("pvfs", ROOT)] + [(a.split("=", 1)[0], Path(a.split("=", 1)[1]).resolve())
                               for a in args.also]
    limit = "cat raw.img (limit)"
    mounts, readers = [], {limit: files["raw"]}
    qsd = None
    stress = None
    try:
        for name, tree in trees:
            mnt = work / f"mnt-{name}"
            mounts.append(mnt)
            exposed = mount(files, mnt, tree, work / f"mount-{name}.log")
            for fmt, p in exposed.items():
                readers[f"{name} {fmt}"] = p
            if args.direct and name == trees[0][0]:
                for fmt, p in exposed.items():
                    readers[f"{name} {fmt} O_DIRECT"] = p
                    DIRECT.add(f"{name} {fmt} O_DIRECT")
        qsd = start_qsd(files["qcow2"], work / "qsd.raw")
        if qsd is not None:
            readers["qemu-storage-daemon qcow2"] = work / "qsd.raw"
        if args.stress:
            stress = subprocess.Popen(["stress-ng", "--cpu", str(args.stress), "--quiet"])
            time.sleep(5)
        rounds = []
        for r in range(args.rounds):
            one = one_round(readers, files.values(), size, args.slice_mib << 20)
            rounds.append(one)
            print(f"round {r + 1} ({common.load()}): " +
                  ", ".join(f"{k} {v:.0f}" for k, v in one.items()) + " MB/s", flush=True)
        check_content(readers, size)
    finally:
        if stress is not None:
            stress.terminate()
            stress.wait()
        for mnt in mounts:
            unmount(mnt)
        if qsd is not None:
            qsd.terminate()
            qsd.wait()
    print(f"\nmedian of {len(rounds)} rounds, {common.load()} on {os.cpu_count()} CPUs"
          f"{f', stress-ng --cpu {args.stress} beside it' if args.stress else ''}:")
    for k in rounds[0]:
        print(f"  {k:36s} {statistics.median(r[k] for r in rounds):8.0f} MB/s")
    print(f"\nratio to {limit} (per round, then the median; target >= 0.80):")
    for k in list(readers)[1:]:
        per = [r[k] / r[limit] for r in rounds]
        print(f"  {k:36s} {' '.join(f'{x:5.2f}' for x in per)}   median "
              f"{statistics.median(per):.2f}")
    if qsd is not None:
        for name, _ in trees:
            per = [r[f"{name} qcow2"] / r["qemu-storage-daemon qcow2"] for r in rounds]
            print(f"  {name + ' qcow2 / qemu-storage-daemon':36s} "
                  f"{' '.join(f'{x:5.2f}' for x in per)}   median {np.median(per):.2f}")


if __name__ == "__main__":
    main()
