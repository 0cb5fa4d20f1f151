#!/usr/bin/env python3
"""PBS at scale: ``pvfs mount`` of a datastore with up to 2 million chunks (issue 15 item 5).

A 20 TB datastore holds about 5 million chunks; what grows with it is the number of chunk
files (mount checks that every referenced chunk exists and counts orphans) and the digest
tables, not the chunk size.  So the chunks here are small: 1 KiB of seeded random bytes per
chunk, each a real uncompressed PBS blob (magic, CRC-32, data) in ``.chunks/<4 hex>/<sha256>``
of the datastore, referenced by the fixed indexes (``.fidx``, chunk_size 1 KiB) of 20 VM
backups.  The stores of the smaller sizes hard-link the biggest one's chunk files.

Measured per size: ``pvfs scan --jobs 1`` (the discovery in one process, no index store:
its time, peak RSS (VmHWM) and the largest RssAnon and RssFile seen), then in a fresh ``pvfs mount`` daemon after dropping the page cache:
mount time with an empty index store (discovery plus the existence check of every chunk and
the orphan count, from a listing of ``.chunks``), daemon RSS after mounting, a full
sequential read of one VM disk through the mount checked against the sha256 recorded at
build time, the daemon's peak RSS after that (every RSS as VmRSS, RssAnon: the daemon's own
memory, and RssFile: file pages such as mapped index tables, which the kernel reclaims); the re-mount with the listing kept in the
index store (``--index-dir``); the load average; and, as the floor a listing is bound by,
``find .chunks -type f`` of the same store.

    python benchmarks/bench_scale_pbs.py [--sizes 200000,1000000,2000000] [--workdir DIR]
        [--snapshots K]  # K backups of each VM: K times the index entries
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from backends.pbs.blob import encode_blob  # noqa: E402
from backends.pbs.structs import FIXED_SIZED_CHUNK_INDEX_1_0  # noqa: E402
from common import (drop_caches, load, mount_daemon_pid, print_curve, rss_split,  # noqa: E402
                    run_peak, run_peak_split, unmount)

CHUNK = 1024
VMS = 20
TIME = "2024-05-05T05:05:05Z"


def chunk(i: int) -> bytes:
    return random.Random(i).randbytes(CHUNK)


def chunk_path(store: Path, digest: bytes) -> Path:
    h = digest.hex()
    return store / ".chunks" / h[:4] / h


def write_index(store: Path, vm: int, digests: list[bytes], time_=TIME) -> None:
    snap = store / "vm" / str(100 + vm) / time_
    snap.mkdir(parents=True, exist_ok=True)
    table = b"".join(digests)
    size = len(digests) * CHUNK
    head = (FIXED_SIZED_CHUNK_INDEX_1_0 + bytes(16) + struct.pack("<q", 0)
            + hashlib.sha256(table).digest() + struct.pack("<QQ", size, CHUNK)).ljust(4096, b"\0")
    (snap / "drive-scsi0.img.fidx").write_bytes(head + table)


def build(base: Path, sizes: list[int], all_dirs: bool = True) -> dict:
    """One datastore per size; chunk ``i`` is the same bytes in all of them.  A real store
    has all 65,536 prefix folders; ``all_dirs=False`` (the suite's smoke run) makes only
    those that hold chunks."""
    top = max(sizes)
    big = base / f"pbs-{top}" / "store"
    truth_file = base / f"pbs-{top}" / "truth.json"
    if not truth_file.exists():
        t = time.perf_counter()
        for d in range(1 << 16 if all_dirs else 0):
            (big / ".chunks" / f"{d:04x}").mkdir(parents=True, exist_ok=True)
        digests = []
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        for i in range(top):
            data = chunk(i)
            dg = hashlib.sha256(data).digest()
            if not all_dirs:
                chunk_path(big, dg).parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(chunk_path(big, dg), flags, 0o644)
            os.write(fd, encode_blob(data))
            os.close(fd)
            digests.append(dg)
            if i % 200000 == 199999:
                print(f"  {i + 1} chunks, {(i + 1) / (time.perf_counter() - t):.0f}/s, {load()}",
                      flush=True)
        (base / f"pbs-{top}" / "digests.bin").write_bytes(b"".join(digests))
        truth_file.write_text("{}")
    digests_raw = (base / f"pbs-{top}" / "digests.bin").read_bytes()
    truth = {}
    for n in sizes:
        store = base / f"pbs-{n}" / "store"
        stamp = base / f"pbs-{n}" / "built"
        per = n // VMS
        digests = [digests_raw[i * 32:(i + 1) * 32] for i in range(per * VMS)]
        if not stamp.exists():
            if n != top:
                for d in range(1 << 16 if all_dirs else 0):
                    (store / ".chunks" / f"{d:04x}").mkdir(parents=True, exist_ok=True)
                for dg in digests:
                    dst = chunk_path(store, dg)
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    if not dst.exists():
                        os.link(chunk_path(big, dg), dst)
            for vm in range(VMS):
                write_index(store, vm, digests[vm * per:(vm + 1) * per])
            stamp.write_text("ok")
        h = hashlib.sha256()
        for i in range(per):  # VM 100's disk: chunks 0 .. per-1
            h.update(chunk(i))
        truth[n] = (store, h.hexdigest(), per * CHUNK)
    return truth


def with_snapshots(base: Path, truth: dict, k: int) -> dict:
    """For each size, a datastore whose VMs have ``k`` backups each (the same disks on ``k``
    days: ``k`` times the index entries, the same chunk files, as daily backups of
    unchanged disks give): ``.chunks`` is a link to that size's store's."""
    out = {}
    for n, (store, sha, size) in truth.items():
        top = base / f"pbs-{n}-x{k}"
        multi = top / "store"
        if not (top / "built").exists():
            multi.mkdir(parents=True, exist_ok=True)
            if not (multi / ".chunks").exists():
                os.symlink(store / ".chunks", multi / ".chunks")
            for idx in sorted(store.glob("vm/*/*/drive-scsi0.img.fidx")):
                vm = int(idx.parent.parent.name) - 100
                table = idx.read_bytes()[4096:]
                digests = [table[i:i + 32] for i in range(0, len(table), 32)]
                for day in range(k):
                    write_index(multi, vm, digests, f"2024-05-{5 + day:02d}T05:05:05Z")
            (top / "built").write_text("ok")
        out[n] = (multi, sha, size)
    return out


def bench(store: Path, n: int, want_sha: str, size: int) -> dict:
    mnt = store.parent / "mnt"
    mnt.mkdir(exist_ok=True)
    row: dict = {"chunks": n}
    index = store.parent / "index"  # a fresh index store: the first mount lists .chunks
    shutil.rmtree(index, ignore_errors=True)
    mount = [sys.executable, "-m", "pvfs", "mount", "--index-dir", str(index), str(store),
             str(mnt)]
    drop_caches()  # the discovery alone, in one process (no workers): its peak
    code, err, row["scan s"], row["scan hwm MiB"], row["scan anon"], row["scan file"] = \
        run_peak_split([sys.executable, "-m", "pvfs", "scan", "--jobs", "1", "--index-dir", "none",
                        str(store)], cwd=ROOT)
    if code not in (0, 3):
        raise SystemExit(f"scan failed: {err}")
    drop_caches()
    code, err, row["mount s"], _peak = run_peak(mount, cwd=ROOT)
    if code not in (0, 3):
        raise SystemExit(f"mount failed: {err}")
    try:
        pid = mount_daemon_pid(mnt)
        m = rss_split(pid)
        row["mount rss MiB"], row["mount anon"], row["mount file"] = m["rss"], m["anon"], m["file"]
        disk = mnt / "vms" / "100" / "disk-0.raw"
        if not disk.exists():
            disk = next(mnt.glob("storage/pbs/*/vm/100/*/drive-scsi0.img"))
        t = time.perf_counter()
        h = hashlib.sha256()
        with open(disk, "rb") as f:
            while True:
                b = f.read(1 << 20)
                if not b:
                    break
                h.update(b)
        dt = time.perf_counter() - t
        assert h.hexdigest() == want_sha, "wrong bytes"
        row["read chunks/s"] = int(size / CHUNK / dt)
        report = json.loads((mnt / "report.json").read_text())
        errors = [e for e in report["damage"] if e["severity"] == "error"]
        assert not errors, errors[:3]
        m = rss_split(pid)
        row["read rss MiB"], row["read anon"], row["read file"] = m["rss"], m["anon"], m["file"]
        row["daemon hwm MiB"] = m["hwm"]
    finally:
        unmount(mnt)
    drop_caches()  # again, with the index kept by the first mount (folders unchanged)
    t = time.perf_counter()
    r = subprocess.run(mount, cwd=ROOT, capture_output=True, text=True)
    row["remount s"] = time.perf_counter() - t
    if r.returncode in (0, 3):
        try:
            m = rss_split(mount_daemon_pid(mnt))
            row["remount rss MiB"], row["remount anon"] = m["rss"], m["anon"]
            row["remount hwm MiB"] = m["hwm"]
        finally:
            unmount(mnt)
    drop_caches()
    t = time.perf_counter()
    out = subprocess.run(["find", str(store / ".chunks") + "/", "-type", "f"], capture_output=True,
                         check=True).stdout
    row["find .chunks s"] = time.perf_counter() - t
    assert out.count(b"\n") == n, out.count(b"\n")
    row["load"] = os.getloadavg()[0]
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="200000,1000000,2000000")
    ap.add_argument("--workdir", default="/var/tmp/pvfs-bench-scale")
    ap.add_argument("--used-dirs-only", action="store_true",
                    help="make only the prefix folders that hold chunks (smoke runs)")
    ap.add_argument("--snapshots", type=int, default=1,
                    help="backups per VM (the same disks on as many days: index entries grow, "
                         "chunk files do not)")
    args = ap.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    base = Path(args.workdir)
    t = time.perf_counter()
    truth = build(base, sizes, all_dirs=not args.used_dirs_only)
    if args.snapshots > 1:
        truth = with_snapshots(base, truth, args.snapshots)
    print(f"datastores ready ({time.perf_counter() - t:.0f} s), {load()}", flush=True)
    rows = []
    for n in sizes:
        store, sha, size = truth[n]
        rows.append({"index entries": n * args.snapshots, **bench(store, n, sha, size)})
        print(f"  {rows[-1]}", flush=True)
    print_curve(f"pvfs mount of a PBS datastore ({os.cpu_count()} CPUs)", rows,
                ["chunks", "index entries", "scan s", "scan hwm MiB", "scan anon", "scan file", "mount s",
                 "mount rss MiB", "mount anon", "mount file", "read chunks/s", "read rss MiB",
                 "read anon", "read file", "daemon hwm MiB", "remount s", "remount rss MiB",
                 "remount anon", "remount hwm MiB", "find .chunks s", "load"])


if __name__ == "__main__":
    main()
