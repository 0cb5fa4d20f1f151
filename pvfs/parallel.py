"""Discovery on all cores: independent inputs are indexed in worker processes first.

Parsing is Python and holds the GIL, so threads do not help; processes do.  The
expensive per-input work of discovery is what the persistent index store
(:mod:`pvfs.index`) keeps: an OSD's object index, a thin pool's mappings, a vzdump
archive's stream index.  So, before the main discovery, every independent input
("unit": a file, a block device, an NBD export, or a folder a backend takes whole such as
an OSD data directory or a PBS datastore; plain folders are walked for their units) whose index is
not known to be current is discovered alone in a worker process
(``concurrent.futures.ProcessPoolExecutor`` with the ``spawn`` context: a fresh
interpreter per worker, reused for several inputs).  A worker keeps nothing but the index
entries it writes; the main process then runs the one discovery of all inputs, which finds the
indexes and loads them.  Its result is therefore the serial result: a worker that fails
or dies is a warning entry (``index-worker-failed``) and the main process builds what it
would have built.

A script that calls ``discover`` with ``jobs`` > 1 needs the usual ``if __name__ ==
"__main__":`` guard: a spawned worker imports the main module.

Units that need other inputs (a VG spread over several PVs) build only what they can
alone; the rest is built by the main discovery.  A unit is "warm" when a marker written
after its worker ran still matches its size and mtime (a folder: the sizes and mtimes
of its entries); warm units get no worker, so a second run starts no processes.

References: Python's ``concurrent.futures`` and ``multiprocessing`` documentation
(contexts and start methods).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .nbd import is_nbd_uri

if TYPE_CHECKING:  # multiprocessing is imported when workers start, not at start-up
    import multiprocessing.context

    from .discover import Context, Options

log = logging.getLogger("pvfs.parallel")

MAX_UNITS = 10_000
MAX_DEPTH = 8
#: Fault injection for tests: ``raise:<text>`` or ``exit:<text>`` makes the worker of a
#: unit whose path contains ``<text>`` raise or die.
FAULT_ENV = "PVFS_WORKER_FAULT"


def default_jobs() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


# -- units -------------------------------------------------------------------------------
def units(ctx: Context, inputs: Iterable[str]) -> list[str]:
    """The independent inputs in ``inputs``, in the order discovery meets them."""
    from .backend import load_backends, pick_best

    out: list[str] = []
    seen: set = set()

    def walk(path: str, depth: int) -> None:
        if len(out) >= MAX_UNITS:
            return
        if depth == 0 and is_nbd_uri(path):  # an export on another machine: one unit
            if path not in seen:
                seen.add(path)
                out.append(path)
            return
        try:
            st = os.stat(path)
        except OSError:
            return  # the main discovery reports it
        key = (st.st_dev, st.st_ino)
        if key in seen:
            return
        seen.add(key)
        if stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode):
            out.append(path)
            return
        if not stat.S_ISDIR(st.st_mode) or depth > MAX_DEPTH:
            return
        found = pick_best(load_backends(), lambda b: b.probe_dir(path, ctx), lambda b, e: None)
        if found is not None:
            out.append(path)
            return
        try:
            with os.scandir(path) as it:
                names = sorted((e.name for e in it), key=os.fsencode)
        except OSError:
            return
        have = set(names)
        for n in names:
            if n.endswith(".map") and n[:-4] in have:
                continue
            walk(os.path.join(path, n), depth + 1)

    for p in inputs:
        walk(p, 0)
    return out


#: Less than this many allocated bytes is discovered in about a second or less (an OSD of
#: a few thousand objects, a small archive, a thin pool of a few million mappings); a
#: worker costs about that to start (a new interpreter importing every backend), so such
#: inputs stay in the main process.
WORKER_MIN_BYTES = 1 << 30


def _allocated(path: str) -> int:
    try:
        st = os.stat(path)
    except OSError:
        return 0
    if stat.S_ISBLK(st.st_mode):
        return WORKER_MIN_BYTES  # a disk: always worth it
    return st.st_blocks * 512 if stat.S_ISREG(st.st_mode) else 0


def _worth_a_worker(path: str) -> bool:
    """Files and block devices of at least :data:`WORKER_MIN_BYTES` allocated; folders a
    backend takes whole whose files hold that much (an OSD data directory: its ``block``),
    and PBS datastores (65,536 chunk folders to list)."""
    if is_nbd_uri(path):
        return True  # a remote disk: reading it is the slow part, worth a process
    try:
        st = os.stat(path)
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        return _allocated(path) >= WORKER_MIN_BYTES
    if os.path.isdir(os.path.join(path, ".chunks")):
        return True
    total = 0
    try:
        with os.scandir(path) as it:
            for i, e in enumerate(it):
                if i >= 4096:
                    break
                total += _allocated(e.path)
    except OSError:
        return False
    return total >= WORKER_MIN_BYTES


def _stamp(path: str) -> list | None:
    """What must be unchanged for a unit's marker to count (size and mtime; a folder's
    entries' names, sizes and mtimes; an NBD export: its URI only, a changed export is
    then indexed again by the main discovery, which checks every entry)."""
    if is_nbd_uri(path):
        return ["nbd", path]
    try:
        st = os.stat(path)
    except OSError:
        return None
    if stat.S_ISBLK(st.st_mode):
        return ["blk", st.st_rdev]
    if not stat.S_ISDIR(st.st_mode):
        return ["file", st.st_size, st.st_mtime_ns]
    ents = []
    try:
        with os.scandir(path) as it:
            for i, e in enumerate(it):
                if i >= 4096:
                    break
                try:
                    s = e.stat()
                except OSError:
                    continue
                ents.append([e.name, s.st_size, s.st_mtime_ns])
    except OSError:
        return None
    return ["dir", st.st_mtime_ns, sorted(ents)]


def _marker(root: str, path: str) -> str | None:
    if is_nbd_uri(path):
        key = hashlib.sha256(path.encode()).hexdigest()[:32]
        return os.path.join(root, f"warm-{key}.json")
    try:
        st = os.stat(path)
    except OSError:
        return None
    key = hashlib.sha256(f"{st.st_dev}:{st.st_ino}".encode()).hexdigest()[:32]
    return os.path.join(root, f"warm-{key}.json")


def _options_key(options: Options) -> str:
    from . import __version__

    return json.dumps([__version__, options.bad, sorted(options.backend_options.items())],
                      default=str, sort_keys=True)


def is_warm(root: str, path: str, options: Options) -> bool:
    m = _marker(root, path)
    if m is None:
        return False
    try:
        with open(m) as f:
            got = json.load(f)
    except (OSError, ValueError):
        return False
    return got == {"stamp": _stamp(path), "options": _options_key(options)}


def mark_warm(root: str, path: str, options: Options) -> None:
    m = _marker(root, path)
    stamp = _stamp(path)
    if m is None or stamp is None:
        return
    tmp = f"{m}.{os.getpid()}~"
    try:
        os.makedirs(root, exist_ok=True)
        with open(tmp, "w") as f:
            json.dump({"stamp": stamp, "options": _options_key(options)}, f)
        os.replace(tmp, m)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


# -- workers ----------------------------------------------------------------------------
_queue: Any = None


def _init(queue: Any) -> None:
    global _queue
    _queue = queue


class _Relay:
    """Stands in for :class:`pvfs.progress.Progress` in a worker: sends its steps to the
    main process (at most five a second)."""

    def __init__(self, unit: str) -> None:
        self.unit = unit
        self.last = 0.0

    def update(self, text: str, completed: int | None = None, total: int | None = None) -> None:
        now = time.monotonic()
        if _queue is not None and now - self.last >= 0.2:
            self.last = now
            try:
                _queue.put_nowait((os.getpid(), self.unit, text))
            except Exception:  # a full or closed queue must not stop the work
                pass


def _fault(unit: str, spec: str) -> None:
    how, _, text = spec.partition(":")
    if text and text in unit:
        if how == "exit":
            os._exit(70)
        if how == "raise":
            raise RuntimeError(f"injected fault for {unit}")


def work(unit: str, options: Options, fault: str = "") -> dict:
    """One worker's job: discover ``unit`` alone; the index entries it wrote are kept."""
    from .cache import METADATA_CACHE
    from .discover import discover

    _fault(unit, fault)
    relay = _Relay(unit)
    relay.update("starting")
    t = time.monotonic()
    ctx = discover([unit], options, progress=relay)
    METADATA_CACHE.clear()
    return {"unit": unit, "seconds": time.monotonic() - t,
            "entries": [(e.backend, e.name, e.label, e.state, e.nbytes)
                        for e in ctx.indexes.log]}


def _context() -> multiprocessing.context.BaseContext:
    """``spawn``: each worker is a new interpreter.  ``forkserver`` would import the
    backends only once, but its server is a per-process singleton that a forked copy of
    this process (a daemon, a test harness) inherits and cannot use; ``fork`` would copy
    threads and locks in any state."""
    import multiprocessing

    return multiprocessing.get_context("spawn")


def _quiet_resource_tracker() -> None:
    """Start multiprocessing's resource tracker with stdin, stdout and stderr on
    /dev/null.  It lives as long as this process (the mount daemon) and would otherwise
    keep the caller's pipes open: ``subprocess.run(["pvfs", "mount", ...],
    capture_output=True)`` would wait until the file system is unmounted."""
    from multiprocessing import resource_tracker

    null = os.open(os.devnull, os.O_RDWR)
    saved = [os.dup(fd) for fd in (0, 1, 2)]
    try:
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        resource_tracker.ensure_running()
    finally:
        for fd, old in zip((0, 1, 2), saved, strict=True):
            os.dup2(old, fd)
            os.close(old)
        os.close(null)


def warm(ctx: Context, inputs: Iterable[str], jobs: int) -> list[dict]:
    """Index the cold units of ``inputs`` in up to ``jobs`` worker processes."""
    store = ctx.indexes
    if not store.enabled or jobs < 2:
        return []
    todo = [u for u in units(ctx, inputs) if not is_warm(store.root, u, ctx.options)]
    big = [u for u in todo if _worth_a_worker(u)]
    ctx.cold_units = list(big)  # marked warm once the main discovery has indexed them
    if len(big) < 2:
        return []  # one unit: the main discovery does the same work without a process
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    if multiprocessing.current_process().daemon:
        log.debug("a daemonic process cannot start workers: indexing here")
        return []
    todo = big
    from dataclasses import replace

    opts = replace(ctx.options, jobs=1, progress=False, probe_cache=False)
    mp = _context()
    _quiet_resource_tracker()
    queue = mp.Queue(1000)
    n = min(jobs, len(todo))
    ctx.note_progress(f"indexing {len(todo)} inputs in {n} worker processes")
    done: list[dict] = []
    stop = threading.Event()
    workers: dict[int, int] = {}

    def listen() -> None:
        while not stop.is_set():
            try:
                pid, unit, text = queue.get(timeout=0.2)
            except Exception:
                continue
            wid = workers.setdefault(pid, len(workers) + 1)
            if ctx.progress is not None:
                shown = getattr(ctx.progress, "worker", None)
                if shown is not None:
                    shown(wid, f"{os.path.basename(unit)}: {text}")
                else:
                    ctx.progress.update(f"worker {wid}: {os.path.basename(unit)}: {text}")

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    t = time.monotonic()
    try:
        with ProcessPoolExecutor(max_workers=n, mp_context=mp, initializer=_init,
                                 initargs=(queue,)) as pool:
            fault = os.environ.get(FAULT_ENV, "")  # passed on: tests set it late
            futs = {pool.submit(work, u, opts, fault): u for u in todo}
            for fut in as_completed(futs):
                unit = futs[fut]
                try:
                    res = fut.result()
                except BaseException as e:  # noqa: BLE001 - a dead worker is an entry
                    ctx.report.add("warning", "core", unit, "index-worker-failed",
                                   f"the worker process indexing {unit} failed "
                                   f"({type(e).__name__}: {e}); indexed in this process "
                                   f"instead")
                    continue
                done.append(res)
                if ctx.progress is not None:
                    ctx.progress.update(f"indexed {len(done)}/{len(todo)} inputs in workers "
                                        f"({os.path.basename(unit)}: {res['seconds']:.1f} s)")
    finally:
        stop.set()
        listener.join(timeout=1)
        if ctx.progress is not None and hasattr(ctx.progress, "workers_done"):
            ctx.progress.workers_done()
    log.debug("workers: %d units in %.2f s", len(todo), time.monotonic() - t)
    ctx.workers_log.extend(done)
    return done
