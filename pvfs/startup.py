"""The ``pvfs`` command's start-up: Python's cyclic garbage collector, and package
versions read without ``importlib.metadata`` (:func:`light_metadata`).

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

Where the CPU of a start-up goes (``benchmarks/bench_startup.py``; ``pvfs mount`` of a
3-disk raidz1 pool until ``ls`` answers, 0.17 s of CPU, 7 December): the interpreter 17
ms, the command's own imports (argparse, logging, typing ...) 24 ms, numpy 40 ms, the ZFS
backend's code and construct 17 ms, trio and pyfuse3 49 ms (asyncio is 10 ms, but the
mount daemon is written on trio, and pyfuse3 3.5 imports trio when it is imported, in its
asyncio mode too), discovery, fork and FUSE start ~20 ms.  On a busy
machine the wall time is that CPU time over the share of a core the process gets.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
import sys
import types
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


# -- package versions without importlib.metadata ---------------------------------------

METADATA = "importlib.metadata"


class _PackageNotFoundError(ModuleNotFoundError):
    """Stands for ``importlib.metadata.PackageNotFoundError`` in :func:`light_metadata`."""


def _real_metadata(shim: types.ModuleType) -> types.ModuleType:
    """The real ``importlib.metadata``, imported in place of the stand-in."""
    if sys.modules.get(METADATA) is shim:
        del sys.modules[METADATA]
    return importlib.import_module(METADATA)


def _dist_info_version(name: str) -> str | None:
    """``Version:`` of the first ``NAME-*.dist-info`` on ``sys.path``, in the order
    ``importlib.metadata.version`` searches it; None when anything is unusual (an
    egg-info, a zip on the path, two matches, no header): the caller asks the real
    module then."""
    norm = name.replace("-", "_").replace(".", "_").lower()
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            if os.path.exists(entry):  # a zip or an unreadable directory
                return None
            continue
        hits = [n for n in names if n.lower().startswith(norm + "-")
                or n.lower() in (norm + ".egg-info", norm + ".egg")]
        if not hits:
            continue
        if len(hits) != 1 or not hits[0].endswith(".dist-info"):
            return None
        try:
            with open(os.path.join(entry or ".", hits[0], "METADATA"), encoding="utf-8") as f:
                for line in f:
                    if not line.strip():
                        return None  # end of the headers
                    if line.startswith("Version:"):
                        return line[len("Version:"):].strip()
        except OSError:
            return None
        return None
    return None


@contextlib.contextmanager
def light_metadata() -> Iterator[None]:
    """Imports of packages that read their own version at import time, with
    ``importlib.metadata.version`` answered from the ``dist-info`` directory.

    pyfuse3 (``_pyfuse3.py``) and crc32c (``__init__.py``) do ``from importlib.metadata
    import version`` and ``version(NAME)`` when imported: ~7 ms of CPU to import
    ``importlib.metadata`` (email, zipfile, csv ...) and ~2 ms per lookup, on every mount
    and every scan of a Ceph OSD, for a string pvfs never reads.  The stand-in module
    reads the same ``Version:`` header the real one returns (the first matching
    distribution on ``sys.path``) and hands anything unusual, and every other name, to
    the real module.  Outside the block nothing changes."""
    if METADATA in sys.modules:  # already imported: nothing to save
        yield
        return
    shim = types.ModuleType(METADATA)
    shim.PackageNotFoundError = _PackageNotFoundError

    def version(name: str) -> str:
        found = _dist_info_version(name)
        if found is not None:
            return found
        try:
            return _real_metadata(shim).version(name)
        except ModuleNotFoundError as e:  # the real PackageNotFoundError
            raise _PackageNotFoundError(str(e)) from e

    def __getattr__(attr: str) -> object:  # other names: the real module's
        if attr.startswith("__"):  # the import system's own look-ups (__path__ ...)
            raise AttributeError(attr)
        return getattr(_real_metadata(shim), attr)

    shim.version = version
    shim.__getattr__ = __getattr__  # type: ignore[attr-defined]
    sys.modules[METADATA] = shim
    try:
        yield
    finally:
        if sys.modules.get(METADATA) is shim:
            del sys.modules[METADATA]
