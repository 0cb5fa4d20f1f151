"""The mount daemon's worker threads (mountd.fs.Workers): results and exceptions come
back to the calling trio task, jobs run at most ``threads`` at once, and a cancelled task
abandons its job (unmount with a read stuck in a backend) without hanging the loop."""

from __future__ import annotations

import threading
import time

import pytest
import trio

from mountd.fs import Workers


async def test_results_exceptions_and_thread_count():
    w = Workers(3)
    assert await w.run(lambda a, b: a + b, 2, 3) == 5
    with pytest.raises(ZeroDivisionError):
        await w.run(lambda: 1 / 0)
    running, peak, lock = 0, 0, threading.Lock()

    def job(i):
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.02)
        with lock:
            running -= 1
        return threading.current_thread().name, i

    out = {}

    async def one(i):
        out[i] = await w.run(job, i)

    async with trio.open_nursery() as n:
        for i in range(12):
            n.start_soon(one, i)
    assert sorted(out) == list(range(12)) and all(out[i][1] == i for i in out)
    assert peak == 3 and {name for name, _ in out.values()} <= {
        "pvfs-worker-1", "pvfs-worker-2", "pvfs-worker-3"}
    with pytest.raises(ValueError):
        Workers(0)


async def test_a_cancelled_job_is_abandoned():
    w = Workers(1)
    release = threading.Event()
    t = time.monotonic()
    with trio.move_on_after(0.2):
        await w.run(release.wait)  # stuck until released: the task gives up at 0.2 s
    assert time.monotonic() - t < 5
    release.set()  # the thread finishes alone; its result goes nowhere
    assert await w.run(lambda: "next") == "next"
