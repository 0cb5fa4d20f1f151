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

    python benchmarks/bench_inputs.py [--files 100000] [--qcow2 10000]
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--qcow2", type=int, default=10_000)
    ap.add_argument("--dir", default=None, help="where to build the folders (kept)")
    args = ap.parse_args()
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="pvfs-bench-inputs-"))
    try:
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
