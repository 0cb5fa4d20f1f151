#!/usr/bin/env python3
"""Start-up of the ``pvfs`` command (issue 15): time to a listable mount and re-mounts
from the persistent index store.

Each case is a new ``pvfs`` process, as a user runs it, timed from its start until the
answer (wall time, and the CPU time of the process and its children, which a busy
machine changes less); 7 rounds by default, the median reported with the load average:

* ``import``: ``python -c "import pvfs.cli; pvfs.cli.build_parser()"`` (what every
  command pays before it reads anything);
* ``zfs mount``: ``pvfs mount`` of the zfs-fuse raidz1 pool of ``bench_zfs.py`` (3 file
  vdevs) until ``ls MOUNTPOINT`` answers, and ``pvfs scan`` of the same pool (discovery
  alone: the difference is the mount daemon's start, fork and FUSE init); the peer in the
  same rounds, when zfs-fuse is installed: ``zpool import -d DIR`` of the same pool
  (its datasets mounted) and ``zpool export``;
* ``ceph re-mount`` / ``thin re-mount``: ``pvfs mount`` (until ``ls``) and ``pvfs scan``
  of the Ceph fixture's three OSDs and of the 1000-LV thin pool of ``bench_lvm.py``,
  with an index store filled by a first, untimed run.

The CPU column of a mount adds the daemon's CPU until the listing to the command's: on
this shared 2-core machine the wall time is the CPU time divided by the share of a core
the process gets, so the CPU time is what a change moves and the load does not.
``--compare DIR`` runs every case with the code of another checkout too, in the same
rounds (``--compare /work/main``: before and after a change, under the same load).
Python's bytecode caches are written first (``compileall``), as an installed package
has them: without them every start compiles every module it imports.  Needs root and
/dev/fuse for the mounts.

``--stress N`` runs ``stress-ng --cpu N`` during the rounds (a machine whose cores are
busy: the wall times are then about the CPU times times the run-queue's share).  Each
tree's line says whether its ZFS kernels are built ahead of time (``python -m
backends.zfs.kernels``): without them a tree decodes lzjb metadata in Python and the
ZFS mount is not comparable.

    python benchmarks/bench_startup.py [--rounds 7] [--compare DIR] [--stress N]
                                       [--skip-zfs-fuse]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT / "tests")]

from common import load, stress_ng, unmount  # noqa: E402

TARGETS = {"zfs mount": 0.5, "ceph re-mount": 1.0, "thin re-mount": 1.0}


def _cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _daemon_cpu(mnt) -> float:
    """CPU seconds the mount daemon of ``mnt`` used so far: its run time in ns from
    ``/proc/PID/schedstat`` (utime + stime of ``/proc/PID/stat`` count 10 ms ticks, as
    much as the daemon uses until the listing: a 0-or-10 ms step in every round)."""
    from common import mount_daemon_pid

    pid = mount_daemon_pid(mnt)
    if pid is None:
        return 0.0
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        pass
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Tree:
    """One checkout's code, run as ``python -m pvfs`` with it first on the path."""

    def __init__(self, root: Path, label: str):
        self.root = root
        self.label = label
        self.env = dict(os.environ, PYTHONPATH=str(root))
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)
        subprocess.run([sys.executable, "-m", "compileall", "-q", "pvfs", "backends",
                        "mountd"], cwd=root, check=False, stdout=subprocess.DEVNULL)
        r = subprocess.run([sys.executable, "-c", "from backends.zfs import kernels; "
                            "print(bool(kernels.aot()))"], env=self.env, cwd=root,
                           capture_output=True, text=True)
        self.aot = r.stdout.strip() == "True"

    def run(self, args, check=True):
        """``(wall s, cpu s)`` of one ``pvfs`` command."""
        c0, t0 = _cpu_children(), time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "pvfs", *map(str, args)], env=self.env,
                           cwd=self.root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True)
        wall = time.perf_counter() - t0
        if check and r.returncode not in (0, 3):
            raise SystemExit(f"{self.label}: pvfs {' '.join(map(str, args))}: exit "
                             f"{r.returncode}: {r.stderr.strip()[-400:]}")
        return wall, _cpu_children() - c0

    def import_time(self):
        c0, t0 = _cpu_children(), time.perf_counter()
        subprocess.run([sys.executable, "-c", "import pvfs.cli; pvfs.cli.build_parser()"],
                       env=self.env, cwd=self.root, check=True)
        return time.perf_counter() - t0, _cpu_children() - c0

    def mount_ready(self, inputs, mnt, index_dir):
        """``pvfs mount`` until ``ls`` of the mountpoint answers; then unmounted."""
        c0, t0 = _cpu_children(), time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "pvfs", "mount", "--index-dir", index_dir,
                            *map(str, inputs), str(mnt)], env=self.env, cwd=self.root,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if r.returncode not in (0, 3):
            raise SystemExit(f"{self.label}: pvfs mount: exit {r.returncode}: "
                             f"{r.stderr.strip()[-400:]}")
        names = os.listdir(mnt)
        wall = time.perf_counter() - t0
        # the command's CPU and the daemon's until the listing (it forked from the command)
        cpu = _cpu_children() - c0 + _daemon_cpu(mnt)
        unmount(mnt)
        for _ in range(50):  # the daemon exits after the unmount
            if not os.path.ismount(mnt):
                break
            time.sleep(0.1)
        if "storage" not in names:
            raise SystemExit(f"{self.label}: the mount shows {names}")
        return wall, cpu


def zfs_pool():
    import bench_zfs

    work = Path.home() / ".cache" / "pvfs-bench-zfs"
    if not all((work / f"{bench_zfs.POOL}-d{i}.img").exists() for i in range(3)):
        if not shutil.which("zpool"):
            return None, None
        work.mkdir(parents=True, exist_ok=True)
        bench_zfs.build_pool(work, 256, 10000)
    return work, [work / f"{bench_zfs.POOL}-d{i}.img" for i in range(3)]


def zfs_fuse_busy():
    """A zfs-fuse daemon this script did not start (another benchmark on this shared
    machine): importing or exporting a pool of the same name would break its run."""
    for pattern in (["-x", "zfs-fuse"], ["-f", "bench_zfs.py"]):  # (it starts one per round)
        if subprocess.run(["pgrep", *pattern], capture_output=True).returncode == 0:
            return True
    return False


def zpool_import(work):
    """zfs-fuse's ``zpool import -d`` of the same pool (datasets mounted), then export;
    None when zfs-fuse is in use by someone else."""
    import bench_zfs

    if zfs_fuse_busy():
        return None
    zf = bench_zfs.ZfsFuse(work)
    try:
        t = time.perf_counter()
        bench_zfs.sh("zpool", "import", "-d", work, bench_zfs.POOL)
        dt = time.perf_counter() - t
        bench_zfs.sh("zpool", "export", bench_zfs.POOL, check=False)
        return dt
    finally:
        zf.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--compare", metavar="DIR", help="another checkout, run in the same rounds")
    ap.add_argument("--stress", type=int, default=0, metavar="N",
                    help="run stress-ng --cpu N during the rounds (a loaded machine)")
    ap.add_argument("--skip-zfs-fuse", action="store_true")
    args = ap.parse_args()
    trees = [Tree(ROOT, "this tree")]
    if args.compare:
        trees.append(Tree(Path(args.compare).resolve(), f"{args.compare}"))
    from conftest import FIXTURES, unpack

    cases = {}
    work, disks = zfs_pool()
    if disks:
        cases["zfs"] = disks
    ceph = unpack(FIXTURES / "ceph" / "ceph-fixture.tar.zst") / "ceph-fixture"
    cases["ceph"] = [ceph / f"osd.{i}" for i in range(3)]
    lvm = Path.home() / ".cache" / "pvfs-bench" / "lvm" / "bench-1000x10000.img"
    if not lvm.exists():
        subprocess.run([sys.executable, str(HERE / "bench_lvm.py")], check=True)
    cases["thin"] = [lvm]
    peer = bool(disks) and not args.skip_zfs_fuse and shutil.which("zfs-fuse") is not None

    tmp = Path(tempfile.mkdtemp(prefix="pvfs-bench-startup-"))
    mnt = tmp / "mnt"
    mnt.mkdir()
    stores = {t.label: str(tmp / f"index-{i}") for i, t in enumerate(trees)}
    for t in trees:
        print(f"tree {t.label} ({t.root}): ZFS kernels "
              f"{'built ahead of time' if t.aot else 'NOT built (lzjb in Python)'}")
    print(f"{load()}; stress-ng --cpu {args.stress}" if args.stress else load(), flush=True)
    for t in trees:  # fill the index stores (the first mount of an input builds them)
        for inputs in cases.values():
            t.run(["scan", "--index-dir", stores[t.label], *inputs])
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    loads = []
    try:
        with stress_ng(args.stress):
            for r in range(args.rounds):
                for t in trees if r % 2 == 0 else trees[::-1]:  # neither always first
                    res = {"import": t.import_time()}
                    for name, inputs in cases.items():
                        key = "zfs mount" if name == "zfs" else f"{name} re-mount"
                        res[key] = t.mount_ready(inputs, mnt, stores[t.label])
                        res[f"{name} scan"] = t.run(["scan", "--index-dir", stores[t.label],
                                                     *inputs])
                    for k, v in res.items():
                        results.setdefault((t.label, k), []).append(v)
                if peer:
                    dt = zpool_import(work)
                    if dt is None:
                        print("  zfs-fuse is in use by another process: no peer this round")
                    else:
                        results.setdefault(("zfs-fuse", "zpool import -d"), []).append((dt, 0.0))
                loads.append(os.getloadavg()[0])
                print(f"round {r + 1}: load {loads[-1]:.1f}: " + ", ".join(
                    f"{lab[:12]} {k} {v[-1][0]:.2f}" for (lab, k), v in results.items()),
                    flush=True)
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-uz", str(mnt)], check=False)
        shutil.rmtree(tmp, ignore_errors=True)

    stressed = f", stress-ng --cpu {args.stress} running" if args.stress else ""
    print(f"\nmedian of {args.rounds} rounds (load average during the rounds "
          f"{min(loads):.1f}-{max(loads):.1f}{stressed}; now {load()}); "
          f"wall s / CPU s of the command:")
    med = {key: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v))
           for key, v in results.items()}
    first = trees[0].label
    head = "".join(f"  {t.label[-17:]:>17s}" for t in trees)
    print(f"  {'':18s}{head}" + (f"   wall: this / {trees[1].label[-17:]}"
                                  if len(trees) > 1 else ""))
    for k in dict.fromkeys(k for (_lab, k) in results if _lab != "zfs-fuse"):
        cells = "".join(f"  {med[(t.label, k)][0]:7.3f} / {med[(t.label, k)][1]:5.3f} s"
                        if (t.label, k) in med else f"  {'-':>17s}" for t in trees)
        ratio = ""
        if len(trees) > 1 and (trees[1].label, k) in med:
            ratio = f"   {med[(first, k)][0] / med[(trees[1].label, k)][0]:5.2f}"
        target = TARGETS.get(k)
        mark = "" if target is None else \
            f"   target < {target} s: {'met' if med[(first, k)][0] < target else 'NOT met'}"
        print(f"  {k:18s}{cells}{ratio}{mark}")
    for (lab, k), (wall, _cpu) in med.items():
        if lab == "zfs-fuse":
            print(f"  {'zfs-fuse ' + k:18s}  {wall:7.3f} s")
    if ("zfs-fuse", "zpool import -d") in results:
        zi = statistics.median(x[0] for x in results[("zfs-fuse", "zpool import -d")])
        zm = statistics.median(x[0] for x in results[(trees[0].label, "zfs mount")])
        print(f"  pvfs mount until ls / zpool import -d (same pool, same rounds): "
              f"{zm / zi:.2f}")


if __name__ == "__main__":
    main()
