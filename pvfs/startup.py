"""The ``pvfs`` command's start-up and Python's cyclic garbage collector.

A start-up imports 30,000-60,000 objects (modules, functions, classes: argparse, numpy,
construct, trio, pyfuse3) that live as long as the process, and the collector runs its
generations over them again and again while they are created and afterwards: 30-90 ms
of CPU of a 0.3 s ``pvfs mount`` of a 3-disk ZFS pool, the Ceph fixture or 1000 thin LVs
(measured with ``gc.callbacks``, thread CPU time, load ~3).  So the command starts with the
collector off (:func:`begin`), and what start-up imported is moved out of the collector's
generations (``gc.freeze``) before discovery begins (:func:`discovery_begins`); a
backend's code imported during discovery is frozen too (:func:`importing`), when discovery
has allocated little since the last freeze: a freeze also keeps the garbage that lies in
the generations at that moment, so that is bounded to a few thousand objects per backend,
whatever the input's size.  The collector is on for all of discovery.

Only the command does this (``pvfs.cli.run``): used as a library (tests, another program)
nothing here changes the collector.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

#: Collections since the last freeze up to which a backend's import is frozen: each is
#: ~700 objects allocated (the youngest generation's threshold), so at most a few thousand
#: objects of discovery are frozen with it (measured: the ZFS, LVM and Ceph backends load
#: after 0-3 collections).
FREEZE_WITHIN = 5


class _State:
    active = False  # begin() was called: this process is the command
    base = 0  # collections counted at the last freeze


def _collections() -> int:
    return sum(s["collections"] for s in gc.get_stats())


def begin() -> None:
    """The command starts: collector off until discovery begins."""
    _State.active = True
    gc.disable()


def discovery_begins() -> None:
    """What start-up imported stays for the life of the process: frozen, collector on."""
    if not _State.active or gc.isenabled():
        return
    gc.freeze()
    _State.base = _collections()
    gc.enable()


@contextlib.contextmanager
def importing() -> Iterator[None]:
    """A backend's modules imported during discovery: no collection while they are
    created, and frozen afterwards when little of discovery could be frozen with them."""
    if not _State.active or not gc.isenabled():
        yield
        return
    fresh = _collections() - _State.base <= FREEZE_WITHIN
    gc.disable()
    try:
        yield
    finally:
        if fresh:
            gc.freeze()
            _State.base = _collections()
        gc.enable()
