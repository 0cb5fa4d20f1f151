"""A cheaper wait for the next FUSE request in pyfuse3's session loop.

pyfuse3's session loop (``_session_loop`` in pyfuse3's internal.pxi, 3.2-3.5) reads
each request after ``_wait_fuse_readable()``: a ``trio.Lock`` and
``trio.lowlevel.wait_readable`` on the FUSE fd, i.e. two or three passes through trio's
scheduler with epoll calls, even when the next request is already queued.  Measured on a
pyfuse3 file system that answers from memory (2 CPUs, load ~3): 27-48 µs per getxattr
round trip stock, 13-22 µs with :class:`FastWait`.  A request that the handler answers
inline (``ls -l``: one getattr and one or two getxattr per file) spends most of its time
there.

:class:`FastWait` replaces that module function (pyfuse3 looks it up as a module global
for each request) with one that reads at once when ``poll`` says a request is waiting, and
otherwise waits through trio as before:

- one task at a time waits on the fd (``busy``); the others park.  A task that returns
  True reads right away, with no checkpoint in between, so no other task can take its
  request and block in ``read`` on an empty fd;
- a handler that waits for a worker thread hands the fd to a parked task first
  (:func:`handoff`, called by ``mountd.fs.Workers.run``), so other requests are served
  meanwhile; handing it over at every request cost ~20% of the daemon's CPU in
  ``ls -l`` (trio's ParkingLot and reschedule);
- :meth:`watch` (a task of the daemon's nursery) wakes the parked tasks whenever none
  watches the fd for WATCH_SECONDS, so a task that left the loop (an unmount from
  outside: the read returns 0) or a handler that waits on anything else leaves no
  request unread for long;
- after BURST requests read without a checkpoint the task waits through trio once, so
  tasks woken by worker threads run between the requests of a busy client;
- :meth:`close` (before ``pyfuse3.terminate``) and a closed fd end every waiter.

If pyfuse3 has no ``_wait_fuse_readable`` (another version) nothing is replaced.
"""

from __future__ import annotations

import logging
import os
import select

import trio

log = logging.getLogger("pvfs.mountd")

#: Requests read in a row without a checkpoint (then one wait through trio).
BURST = 32
#: How often :meth:`FastWait.watch` looks whether anybody watches the fd.
WATCH_SECONDS = 0.25
_installed: FastWait | None = None


def fuse_fds() -> set[int]:
    """This process's file descriptors open on ``/dev/fuse``."""
    out = set()
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return out
    for name in names:
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "/dev/fuse":
                out.add(int(name))
        except (OSError, ValueError):
            pass
    return out


class FastWait:
    """The replacement of ``pyfuse3._wait_fuse_readable`` for session fd ``fd``."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)
        self.busy = False  # a task is in wait_readable on the fd
        self.closed = False
        self.burst = 0
        self.fast = 0  # requests read without waiting through trio (tests, benchmarks)
        self.reads = 0  # requests read (the daemon tidies its heap when this stops)
        self._lot = trio.lowlevel.ParkingLot()

    async def __call__(self) -> bool:
        while not self.closed:
            if self.busy:
                await self._lot.park()
                continue
            if self.burst < BURST and self._poll.poll(0):
                self.burst += 1
                self.fast += 1
                self.reads += 1
                return True
            self.burst = 0
            self.busy = True
            try:
                await trio.lowlevel.wait_readable(self.fd)
            except trio.ClosedResourceError:
                self.close()
                return False
            finally:
                self.busy = False
            self.reads += 1
            return True
        return False

    async def watch(self) -> None:
        """Wake the parked tasks whenever nobody watches the fd (see the module)."""
        while not self.closed:
            await trio.sleep(WATCH_SECONDS)
            if not self.busy and self._lot:
                self._lot.unpark_all()

    def close(self) -> None:
        """End every waiter (the session is ending)."""
        self.closed = True
        self._lot.unpark_all()


#: pyfuse3 releases whose session loop was read and tested with :class:`FastWait`
#: (``_session_loop`` calls ``_wait_fuse_readable()`` then reads the fd at once).  A
#: later release keeps its own wait until it is checked here: the function replaced is
#: private, and a change of its contract could leave a request unread.
KNOWN_PYFUSE3 = ((3, 2), (3, 6))


def _known_version(version: str) -> bool:
    try:
        major_minor = tuple(int(p) for p in version.split(".")[:2])
    except ValueError:
        return False
    return KNOWN_PYFUSE3[0] <= major_minor < KNOWN_PYFUSE3[1]


def install(fd: int | None) -> FastWait | None:
    """Put a :class:`FastWait` for ``fd`` in place of pyfuse3's wait (None: left alone)."""
    import pyfuse3

    if fd is None or not hasattr(pyfuse3, "_wait_fuse_readable") \
            or not _known_version(getattr(pyfuse3, "__version__", "")) \
            or os.environ.get("PVFS_PYFUSE3_WAIT"):  # (benchmarks: pyfuse3's own)
        log.info("pyfuse3's request wait left as it is")
        return None
    global _installed
    wait = _installed = FastWait(fd)
    pyfuse3._wait_fuse_readable = wait
    return wait


def handoff() -> None:
    """The calling handler is about to wait (for a worker thread): let a parked task
    watch the fd meanwhile (no-op without :class:`FastWait` or when one already does)."""
    wait = _installed
    if wait is not None and not wait.busy and wait._lot:
        wait._lot.unpark()
