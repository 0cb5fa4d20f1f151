"""Input walking: how fast ``pvfs scan DIR`` gets through a folder of many small files.

Three folders, made fresh (in $TMPDIR) unless they exist:

- ``notes``: N small files that are no image (4 KiB of text each), the usual clutter of a
  copied /var/lib/vz or a home directory;
- ``qcow2``: M tiny qcow2 images made by qemu-img (copies of one 1 MiB image), named as
  Proxmox disks, so each becomes an input, a disk, and a ``vms/`` entry;
- ``nested``: the notes spread over 100 sub-folders, with a symlink loop back to the top in
  every one (a loop must be walked once, not multiplied).

For each: ``discover()`` in this process (wall time, files/s, microseconds per file, peak
open file descriptors) and the file count shown in the tree.

``--curve 10000,100000,300000`` (issue 15 item 5) then, for each size, times ``pvfs scan``
of the ``notes`` folder (its peak RSS) and mounts it with ``pvfs mount`` (a fresh daemon
each, page cache dropped): mount time, the daemon's RSS after mounting and its peak after a
``find`` of the mount and a read of ``report.json`` (which lists every file not recognised),
with the load average.  One of the files is a VM disk image; a size over 100,000 (a
folder's limit) is made as sub-folders of 100,000.

    python benchmarks/bench_inputs.py [--files 100000] [--qcow2 10000] [--curve SIZES]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (drop_caches, load, mount_daemon_pid, print_curve, rss_mib,  # noqa: E402
                    run_peak, unmount)
from pvfs.discover import Options, discover  # noqa: E402


def make_notes(d: Path, n: int, subdirs: int = 0):
    d.mkdir(parents=True, exist_ok=True)
    blob = b"".join(f"line {i}: nothing to recover here\n".encode() for i in range(128))[:4096]
    for i in range(n):
        sub = d / f"d{i % subdirs:03d}" if subdirs else d
        if subdirs and i < subdirs:
            sub.mkdir(exist_ok=True)
            os.symlink("..", sub / "loop")  # back to the top: a cycle
        (sub / f"note-{i:06d}.txt").write_bytes(blob)


def make_qcow2(d: Path, n: int):
    d.mkdir(parents=True, exist_ok=True)
    base = d / "base.tmp"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "1M"], check=True)
    data = base.read_bytes()
    base.unlink()
    for i in range(n):
        (d / f"vm-{100 + i}-disk-0.qcow2").write_bytes(data)


class FdWatch:
    """Peak number of open file descriptors of this process while it runs."""

    def __enter__(self):
        self.peak = len(os.listdir("/proc/self/fd"))
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, len(os.listdir("/proc/self/fd")))

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def run(label, path, files):
    t = time.perf_counter()
    with FdWatch() as fds:
        ctx = discover([str(path)], Options(progress=False))
    dt = time.perf_counter() - t
    codes = {}
    for e in ctx.report:
        codes[e.code] = codes.get(e.code, 0) + 1
    print(f"{label:8s} {files:7d} files  {dt:7.2f} s  {files / dt:9.0f} files/s  "
          f"{dt / files * 1e6:7.1f} us/file  peak fds {fds.peak:4d}  volumes {len(ctx.volumes)}  "
          f"VMs {len(ctx.vms_root.children())}  entries {dict(sorted(codes.items()))}")
    return dt


def _unrecognised(report: bytes) -> int:
    """Files the report says were not recognised (report.json lists every one)."""
    import json

    doc = json.loads(report)
    listed = sum(len(f["files"]) for f in doc.get("unrecognised", []))
    return listed + sum(1 for e in doc["damage"] if e["code"] == "not-recognised")


def mount_row(folder: Path, n: int) -> dict:
    """``pvfs scan`` and ``pvfs mount`` of ``folder``: time, RSS, find and report.json."""
    mnt = folder.parent / f"mnt-{n}"
    mnt.mkdir(exist_ok=True)
    row = {"files": n}
    root = Path(__file__).resolve().parent.parent
    drop_caches()
    code, _err, row["scan s"], row["scan rss peak MiB"] = run_peak(
        [sys.executable, "-m", "pvfs", "scan", "--no-progress", "--index-dir", "none",
         str(folder)], root)
    if code not in (0, 3):
        raise SystemExit(f"scan failed: exit {code}")
    drop_caches()
    code, err, row["mount s"], _peak = run_peak(
        [sys.executable, "-m", "pvfs", "mount", "--index-dir", "none", str(folder), str(mnt)],
        cwd=root)
    if code not in (0, 1, 3) or not os.path.ismount(mnt):
        raise SystemExit(f"mount failed: {err}")
    try:
        pid = mount_daemon_pid(mnt)
        row["rss mount MiB"] = rss_mib(pid)[0]
        t = time.perf_counter()
        subprocess.run(["find", str(mnt)], check=True, capture_output=True)
        row["find s"] = time.perf_counter() - t
        t = time.perf_counter()
        skipped = _unrecognised((mnt / "report.json").read_bytes())
        row["report.json s"] = time.perf_counter() - t
        assert skipped == n - 1, (skipped, n)
        row["rss now MiB"], row["rss peak MiB"] = rss_mib(pid)
        row["load"] = os.getloadavg()[0]
    finally:
        unmount(mnt)
    return row


MAX_FOLDER = 100_000  # pvfs/discover.py MAX_DIR_FILES: more are made as sub-folders


def make_curve_folder(folder: Path, n: int) -> None:
    """n entries: n - 1 notes and one real image, so that there is something to mount
    (clutter alone is "nothing recognised"); over 100,000, sub-folders of 100,000."""
    notes = n - 1
    if n <= MAX_FOLDER:
        make_notes(folder, notes)
    else:
        for k in range(0, notes, MAX_FOLDER):
            make_notes(folder / f"part{k // MAX_FOLDER}", min(MAX_FOLDER, notes - k))
    shutil.copy(Path(__file__).resolve().parent.parent / "examples" / "vm-100-disk-0.qcow2",
                folder / "vm-100-disk-0.qcow2")


def curve(base: Path, sizes: list[int]) -> None:
    rows = []
    for n in sizes:
        folder = base / f"curve-{n}"
        if not folder.exists():
            make_curve_folder(folder, n)
        rows.append(mount_row(folder, n))
        print(f"  {rows[-1]}  ({load()})", flush=True)
    print_curve(f"pvfs scan and mount of a folder of small files that are no image "
                f"({os.cpu_count()} CPUs)", rows,
                ["files", "scan s", "scan rss peak MiB", "mount s", "rss mount MiB", "find s",
                 "report.json s", "rss peak MiB", "load"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--qcow2", type=int, default=10_000)
    ap.add_argument("--dir", default=None, help="where to build the folders (kept)")
    ap.add_argument("--curve", default=None, metavar="SIZES",
                    help="only the scan and mount curve, e.g. 10000,100000,300000")
    args = ap.parse_args()
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="pvfs-bench-inputs-"))
    try:
        if args.curve:
            curve(base, [int(s) for s in args.curve.split(",")])
            return
        notes, qcow2, nested = base / f"notes-{args.files}", base / f"qcow2-{args.qcow2}", \
            base / f"nested-{args.files}"
        for d, make in ((notes, lambda: make_notes(notes, args.files)),
                        (qcow2, lambda: make_qcow2(qcow2, args.qcow2)),
                        (nested, lambda: make_notes(nested, args.files, subdirs=100))):
            if not d.exists():
                t = time.perf_counter()
                make()
                print(f"made {d} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        print(f"pvfs input walk, {os.cpu_count()} CPUs")
        run("notes", notes, args.files)
        run("qcow2", qcow2, args.qcow2)
        run("nested", nested, args.files)
    finally:
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
