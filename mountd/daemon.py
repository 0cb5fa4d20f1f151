"""Run the FUSE session: mount, serve until unmounted or signalled, unmount.

``serve`` is called in the foreground or, after a fork, in the background
daemon; ``ready`` is called once the kernel has the mount, so ``pvfs mount``
returns only when the tree can be used.
"""

from __future__ import annotations

import gc
import logging
import signal
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import pyfuse3
import trio

from . import session
from .fs import PvfsOperations

if TYPE_CHECKING:
    from pvfs.damage import DamageReport
    from pvfs.nodes import Dir

log = logging.getLogger("pvfs.mountd")

TERMINATE_GRACE_SECONDS = 2.0
BASE_OPTIONS = ("fsname=pvfs", "subtype=pvfs", "ro", "default_permissions")


def fuse_options(extra: Iterable[str] = ()) -> set[str]:
    opts = set(BASE_OPTIONS)
    for o in extra:
        for part in o.split(","):
            part = part.strip()
            if part and part not in ("rw",):
                opts.add(part)
    return opts


def tune_readahead(mountpoint: str, kb: int) -> None:
    """Raise the kernel read-ahead of this mount's backing device (sysfs ``bdi``).

    FUSE mounts start at 128 KiB, so a sequential ``cp`` arrives as 128 KiB
    requests and per-request overhead dominates; at 1 MiB and more the kernel
    sends 1 MiB requests.  Needs root; silently left alone otherwise.
    """
    import os

    try:
        st = os.stat(mountpoint)
        path = f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb"
        with open(path, "w") as f:
            f.write(f"{kb}\n")
        log.info("read-ahead of %s set to %d KiB", mountpoint, kb)
    except OSError as e:
        log.info("read-ahead left alone: %s", e)


#: The collector and heap tidying wait until the mount has had no request for this
#: long (at most SETTLE_MAX_SECONDS after it serves): the first listing (``ls`` right
#: after ``pvfs mount`` returns) does not wait for a full collection of what discovery
#: built (~20 ms of CPU for a 3-disk ZFS pool, 56 ms measured in the middle of the first
#: ``ls -f`` of 10,000 ZFS entries, which took 0.1-0.4 s, when it ran at a fixed 0.2 s).
SETTLE_SECONDS = 0.2
SETTLE_MAX_SECONDS = 5.0


async def _settle(wait: session.FastWait | None = None) -> None:
    seen = -1
    with trio.move_on_after(SETTLE_MAX_SECONDS):
        while True:
            await trio.sleep(SETTLE_SECONDS)
            reads = wait.reads if wait is not None else 0
            if reads == seen:
                break
            seen = reads
    tune_gc()
    release_free_memory()


async def _main(mountpoint: str, readahead_kb: int,
                wait: session.FastWait | None = None) -> None:
    async with trio.open_nursery() as nursery:
        if readahead_kb:
            # stat() of the mountpoint is served by this very loop: run it beside it.
            nursery.start_soon(trio.to_thread.run_sync, tune_readahead, mountpoint, readahead_kb)
        async def on_signals() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as sigs:
                async for _ in sigs:
                    log.info("signal received: unmounting")
                    if wait is not None:
                        wait.close()
                    pyfuse3.terminate()
                    # Requests still in flight (a read stuck in a backend) would keep
                    # pyfuse3.main waiting: after a grace period they are cancelled, their
                    # threads abandoned, and the kernel fails them at unmount.
                    await trio.sleep(TERMINATE_GRACE_SECONDS)
                    log.warning("requests still running after %.0f s: cancelling them",
                                TERMINATE_GRACE_SECONDS)
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(on_signals)
        nursery.start_soon(_settle, wait)
        if wait is not None:
            nursery.start_soon(wait.watch)
        await pyfuse3.main(min_tasks=4, max_tasks=64)
        nursery.cancel_scope.cancel()


#: The daemon's cyclic garbage collector: a mounted tree is made of many small objects
#: (nodes, dnodes, times) that live as long as the mount.  With the default thresholds
#: (700, 10, 10) listing a directory of 10,000 ZFS files ran collections over the whole
#: growing tree: ~20% of the listing's CPU.  Cycles are still collected, less often.
GC_THRESHOLDS = (20_000, 20, 20)


def tune_gc() -> None:
    """What discovery built stays for the life of the mount: move it out of the
    collector's generations (gc.freeze), and collect young objects less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def release_free_memory() -> None:
    """Give the heap memory that discovery freed back to the system (glibc ``malloc_trim``).

    Discovery's transient peaks (the digest tables of a PBS datastore sorted and compared,
    decoded metadata blocks) are freed before the mount serves, but glibc keeps them in
    the heap: freeing a large block raises its mmap threshold, so later large arrays come
    from the heap too, and the daemon's RSS stays at the peak for the life of the mount
    (measured: 240 MiB after mounting a datastore of 2 million chunks, of which 54 MiB
    live).  No-op without glibc."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


#: glibc mallopt parameters (malloc.h) and the values the daemon uses.
M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8
MMAP_THRESHOLD = 2 << 20
ARENA_MAX = 2


def tune_malloc() -> None:
    """Keep the daemon's heap from growing with what it only held for a moment.

    Reads hand 128 KiB-1 MiB blocks between worker threads.  glibc raises its mmap
    threshold each time such a block is freed, so later ones come from the heap, and
    every worker thread gets its own arena (up to 8 per core) that keeps the freed
    blocks: resident memory that no object holds.  A fixed threshold and two arenas: a
    mount of zfs/modern-rpool (79,000 files, 6.3 GB read) peaked at 282 MB without, 250 MB
    with (issue 13 item 6).  The threshold is 2 MiB, above a read's blocks (a 1 MiB reply,
    128 KiB records): at 128 KiB each of them was a fresh mapping, faulted in page by
    page and unmapped again (pread into new 1 MiB objects 2.1 GB/s against 26 GB/s into
    reused memory; a ZFS read spent 2.0 s of daemon CPU per GiB uncompressed, 0.96 at
    2 MiB; lzjb 3.8 -> 2.3).  The cost: modern-rpool read whole peaks at 227 MB instead
    of 216 MB.  Set before the worker threads start; no-op without glibc."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        libc.mallopt(M_ARENA_MAX, ARENA_MAX)
    except (OSError, AttributeError):
        pass


def serve(root: Dir, mountpoint: str, report: DamageReport | None = None,
          options: Iterable[str] = (), ready: Callable[[], None] | None = None,
          threads: int = 8, readahead_kb: int = 4096) -> None:
    """Mount ``root`` at ``mountpoint`` and serve it until unmounted."""
    ops = PvfsOperations(root, report=report, threads=threads)
    before = session.fuse_fds()
    pyfuse3.init(ops, str(mountpoint), fuse_options(options))
    new = session.fuse_fds() - before
    wait = session.install(new.pop() if len(new) == 1 else None)
    unmount = True
    try:
        tune_malloc()  # before the worker threads' first jobs
        if ready is not None:
            ready()
        trio.run(_main, str(mountpoint), readahead_kb, wait)  # tune_gc: in _settle
    except BaseException:
        unmount = True
        raise
    finally:
        try:
            pyfuse3.close(unmount=unmount)
        except Exception:  # already unmounted from outside (fusermount3 -u)
            pass
