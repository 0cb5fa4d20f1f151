"""Helpers shared by the benchmark scripts: cold caches and timed sequential reads."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path


def drop_caches():
    """Write back and drop the page cache (root only), so a read comes from the disk image.
    ``PVFS_BENCH_WARM=1`` (the test suite's smoke runs) leaves the machine's cache alone."""
    if os.environ.get("PVFS_BENCH_WARM"):
        return
    subprocess.run(["sync"])
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        pass


def timed(fn):
    """``(seconds, result)`` of ``fn()``."""
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def timed_read(path, bs=1 << 20, cold=True):
    """Read ``path`` sequentially in ``bs`` pieces; return ``(bytes read, MB/s)``."""
    if cold:
        drop_caches()
    fd = os.open(path, os.O_RDONLY)
    buf = bytearray(bs)
    t = time.perf_counter()
    total = 0
    try:
        while True:
            n = os.readv(fd, [buf])
            if not n:
                break
            total += n
    finally:
        os.close(fd)
    dt = time.perf_counter() - t
    return total, total / dt / 1e6


# -- scale benchmarks: daemon memory and the cost curve ---------------------------------
def mount_daemon_pid(mnt) -> int | None:
    """The pid of the ``pvfs mount`` daemon serving ``mnt`` (its command line names it)."""
    want = str(mnt).encode()
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"pvfs" in cmd and b"mount" in cmd and want in cmd:
            return int(p)
    return None


#: Runs argv and writes its peak RSS (KiB) after its stderr.  A child's ru_maxrss starts at
#: its parent's peak (the kernel counts the memory a process had before exec), so the
#: command is started from this small interpreter, not from a benchmark that holds
#: hundreds of MB of test data.
_PEAK_WRAPPER = r"""
import os, subprocess, sys, time
p = subprocess.Popen(sys.argv[1:])
anon = file = 0
while True:  # the largest RssAnon and RssFile seen, every 50 ms
    pid, status, usage = os.wait4(p.pid, os.WNOHANG)
    if pid:
        break
    try:
        with open(f"/proc/{p.pid}/status") as f:
            for ln in f:
                if ln.startswith("RssAnon:"):
                    anon = max(anon, int(ln.split()[1]))
                elif ln.startswith("RssFile:"):
                    file = max(file, int(ln.split()[1]))
    except (OSError, ValueError, IndexError):
        pass
    time.sleep(0.05)
sys.stderr.write(f"\n@peak-kib {usage.ru_maxrss} {anon} {file}\n")
sys.exit(os.waitstatus_to_exitcode(status) & 0xFF)
"""


def run_peak(argv: list[str], cwd=None) -> tuple[int, str, float, float]:
    """Run ``argv`` (stdout thrown away): ``(exit status, stderr, seconds, its peak RSS in
    MiB)``.  Of ``pvfs mount`` that is the mount command's, not its daemon's."""
    return run_peak_split(argv, cwd)[:4]


def run_peak_split(argv: list[str], cwd=None) -> tuple[int, str, float, float, float, float]:
    """:func:`run_peak` and the largest RssAnon and RssFile (MiB) seen while it ran
    (sampled every 50 ms: what of the peak was anonymous memory, what file pages)."""
    import sys
    import tempfile

    with tempfile.TemporaryFile() as err:
        t = time.perf_counter()
        code = subprocess.run([sys.executable, "-c", _PEAK_WRAPPER, *argv], cwd=cwd,
                              stdout=subprocess.DEVNULL, stderr=err).returncode
        secs = time.perf_counter() - t
        err.seek(0)
        text, _, peak = err.read().decode(errors="replace").rpartition("\n@peak-kib ")
        kib = [int(x) for x in peak.split()[:3]]
        return code, text, secs, kib[0] / 1024, kib[1] / 1024, kib[2] / 1024


def rss_mib(pid: int | None) -> tuple[float, float]:
    """``(current, peak)`` resident set size of ``pid`` in MiB (VmRSS, VmHWM)."""
    m = rss_split(pid)
    return m["rss"], m["hwm"]


def rss_split(pid: int | None) -> dict:
    """VmRSS, VmHWM, RssAnon and RssFile of ``pid`` in MiB (keys ``rss``, ``hwm``, ``anon``,
    ``file``): anonymous memory is the daemon's own, file pages (mapped index tables) are
    reclaimable by the kernel."""
    want = {"VmRSS:": "rss", "VmHWM:": "hwm", "RssAnon:": "anon", "RssFile:": "file"}
    out = dict.fromkeys(want.values(), 0.0)
    if pid is None:
        return out
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            k = line.split(None, 1)[0] if line else ""
            if k in want:
                out[want[k]] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return out


def load() -> str:
    """The load average, for every printed line of a curve (2 shared cores: it matters)."""
    a, b, c = os.getloadavg()
    return f"load {a:.1f} {b:.1f} {c:.1f}"


@contextlib.contextmanager
def stress_ng(cpus: int, settle: float = 5.0):
    """``stress-ng --cpu CPUS`` running for the duration of the block (a loaded machine;
    0: nothing), ``settle`` seconds given to the load average to follow."""
    if not cpus:
        yield
        return
    if not shutil.which("stress-ng"):
        raise SystemExit("stress-ng is not installed (Debian: apt-get install stress-ng)")
    proc = subprocess.Popen(["stress-ng", "--cpu", str(cpus), "--quiet"])
    try:
        time.sleep(settle)
        yield
    finally:
        proc.terminate()
        proc.wait()


RSS_LIMIT_MIB = 300  # issue 15: the daemon stays under 300 MB at every size


def print_curve(title: str, rows: list[dict], cols: list[str], check_rss: bool = True) -> None:
    """One table: a row per size, the columns named, and whether RSS stayed under the limit."""
    print(f"\n{title}")
    print("  " + "  ".join(f"{c:>14s}" for c in cols))
    for r in rows:
        print("  " + "  ".join(f"{_fmt(r.get(c)):>14s}" for c in cols))
    peaks = [r[c] for r in rows for c in cols if "rss" in c.lower() and r.get(c) is not None]
    if peaks and check_rss:
        verdict = "under" if max(peaks) < RSS_LIMIT_MIB else "OVER"
        print(f"  peak RSS {max(peaks):.0f} MiB: {verdict} the {RSS_LIMIT_MIB} MiB limit")


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if v < 10 else f"{v:.1f}"
    return str(v)


def unmount(mnt, lazy: bool = False) -> None:
    """Unmount a pvfs mount of a benchmark, waiting (up to 10 s) while it is busy (a file or
    directory handle of the measured step may still be closing), and detach it lazily in the
    end, so no mount and no daemon outlive the benchmark.  ``lazy``: detach at once (a mount
    that never came up, or timed out: the clean-up must not walk into it)."""
    tool = shutil.which("fusermount3") or "fusermount"
    for _ in range(0 if lazy else 50):
        if subprocess.run([tool, "-u", str(mnt)], capture_output=True).returncode == 0:
            return
        time.sleep(0.2)
    if os.path.ismount(mnt):
        subprocess.run([tool, "-uz", str(mnt)], capture_output=True)
