"""Metadata blocks read ahead in a few threads: a big directory's ZAP leaves, the dnode
blocks of the files a walk is about to stat.

OpenZFS does the same: ``zap_cursor_retrieve`` prefetches a fat ZAP's blocks when a
listing starts (``dmu_prefetch`` of the whole object) and ``zfs_readdir`` prefetches each
entry's dnode (``dmu_prefetch_dnode``), so a cold listing waits for one round of parallel
reads instead of one read after the other.  Here the reads run in PREFETCH_THREADS
threads: ``pread`` and the compiled checksum and decompression loops release the GIL,
the decoded blocks land in the block caches (``Pool.read_bp``) where the reader finds
them.

References: OpenZFS module/zfs/zap_micro.c (zap_cursor_retrieve: ``dmu_prefetch`` when
``zc_prefetch``), module/os/linux/zfs/zfs_vnops_os.c (zfs_readdir: ``dmu_prefetch_dnode``).
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

#: Threads that read ahead, and how many reads one reader keeps running ahead of it.
PREFETCH_THREADS = 4
WINDOW = 16
#: Lists shorter than this are read in the caller's thread (a thread hop costs more).
MIN_ITEMS = 3

_executor: ThreadPoolExecutor | None = None
_lock = threading.Lock()
_local = threading.local()


def executor() -> ThreadPoolExecutor:
    global _executor
    ex = _executor
    if ex is None:
        with _lock:
            if _executor is None:
                _executor = ThreadPoolExecutor(PREFETCH_THREADS, "zfs-readahead",
                                               initializer=_mark)
            ex = _executor
    return ex


def _mark() -> None:
    _local.inside = True


def _forget_after_fork() -> None:  # pvfs mount forks its daemon: threads do not follow
    global _executor, _lock
    _executor = None
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def inside() -> bool:
    """Whether the calling thread is a read-ahead thread."""
    return getattr(_local, "inside", False)


def in_order(fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[tuple[Any, Future]]:
    """``(item, future of fn(item))`` in the order of ``items``, up to WINDOW of them
    running ahead in the read-ahead threads (in the caller's thread for a short list,
    and inside a read-ahead thread: no thread waits for its own pool)."""
    items = list(items)
    if len(items) < MIN_ITEMS or getattr(_local, "inside", False):
        for item in items:
            f: Future = Future()
            try:
                f.set_result(fn(item))
            except Exception as e:  # noqa: BLE001 - handed to the caller as the read's
                f.set_exception(e)
            yield item, f
        return
    ex = executor()
    todo = iter(items)
    running: deque[tuple[Any, Future]] = deque()
    for item in todo:
        running.append((item, ex.submit(fn, item)))
        if len(running) >= WINDOW:
            break
    try:
        while running:
            item, f = running.popleft()
            nxt = next(todo, running)  # (running: a sentinel)
            if nxt is not running:
                running.append((nxt, ex.submit(fn, nxt)))
            yield item, f
    finally:
        for _item, f in running:  # the reader stopped early: nobody wants these
            f.cancel()


def start(fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Future]:
    """Run ``fn(item)`` for each item in the read-ahead threads and do not wait (errors
    are dropped: the reader meets them again and reports them)."""
    if getattr(_local, "inside", False):
        return []
    ex = executor()
    return [ex.submit(fn, item) for item in items]
