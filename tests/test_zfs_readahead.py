"""backends/zfs/readahead.py: metadata reads run ahead in a few threads, results handed
back in the reader's order, errors to the reader, no thread waiting for its own pool."""

from __future__ import annotations

import threading
import time

import pytest

from backends.zfs import readahead


def test_in_order_results_errors_and_parallelism():
    started, lock = [], threading.Lock()

    def read(i):
        with lock:
            started.append((i, threading.current_thread().name))
        time.sleep(0.02)
        if i == 7:
            raise OSError("block 7 unreadable")
        return i * i

    t = time.perf_counter()
    got = []
    for i, f in readahead.in_order(read, range(40)):
        try:
            got.append((i, f.result()))
        except OSError as e:
            got.append((i, str(e)))
    took = time.perf_counter() - t
    assert got == [(i, "block 7 unreadable" if i == 7 else i * i) for i in range(40)]
    assert all(name.startswith("zfs-readahead") for _, name in started)
    # 40 reads of 20 ms in 4 threads: well under the 0.8 s one after the other
    assert took < 0.6, took


def test_short_lists_and_nested_use_run_in_the_callers_thread():
    me = threading.current_thread().name
    names = [f.result() for _, f in readahead.in_order(
        lambda i: threading.current_thread().name, [1, 2])]
    assert names == [me, me]

    def outer(i):  # a read-ahead thread that reads ahead itself must not wait for the pool
        return [threading.current_thread().name == n for n, _ in
                ((threading.current_thread().name, f.result())
                 for _, f in readahead.in_order(lambda j: j, range(10)))]

    for _, f in readahead.in_order(outer, range(readahead.PREFETCH_THREADS * 2)):
        assert all(f.result(timeout=20))
    assert readahead.start(lambda i: i, []) == []


def test_a_reader_that_stops_early_cancels_what_it_will_not_read():
    ran = []

    def read(i):
        time.sleep(0.01)
        ran.append(i)
        return i

    for i, f in readahead.in_order(read, range(1000)):
        assert f.result() == i
        if i == 3:
            break
    time.sleep(0.3)
    assert len(ran) < 3 + readahead.WINDOW + readahead.PREFETCH_THREADS + 2, len(ran)


def test_the_executor_is_made_again_after_fork():
    import os

    readahead.executor()
    pid = os.fork()
    if pid == 0:  # the child: a fresh pool (the parent's threads did not follow)
        try:
            ok = [f.result(timeout=10) for _, f in readahead.in_order(lambda i: i, range(8))]
            os._exit(0 if ok == list(range(8)) else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.parametrize("n", [0, 1, 3, 50])
def test_every_item_once(n):
    assert [i for i, _ in readahead.in_order(lambda i: None, range(n))] == list(range(n))
