"""What a backend is, and how backends are found.

A backend handles one format.  It is a class with a ``name`` and:

``probe(volume, ctx) -> float``
    Read a few KiB of ``volume.source`` and return a confidence score,
    0 for "not mine".  Must never raise.  Scores: 100 for a checked magic
    and checksum, 50 for a magic alone, 1 for "raw" fallbacks.
``open(volume, ctx)``
    Build nodes and new volumes through ``ctx`` (see
    :class:`pvfs.discover.Context`).  May raise the backend's own error,
    which becomes a damage entry for ``volume``.

Multi-member formats (ZFS vdevs, LVM PVs, Ceph OSDs, DRBD peers) set
``grouped = True`` and implement instead of ``open``:

``member_key(volume, ctx) -> hashable``
    Which group the volume belongs to (pool GUID, VG UUID ...).
``open_group(key, volumes, ctx)``
    Called once all inputs and the layers inside them have been probed.

Backends that live in directories (Proxmox directory storage, PBS
datastores) implement ``probe_dir(path, ctx) -> float`` and
``open_dir(path, ctx)``; for the same inside a recovered file system (a
directory node of the tree) ``probe_node(node, path, ctx)`` and
``open_node(node, path, ctx)``.

Each subpackage of ``backends/`` exports ``BACKENDS``, a list of backend
instances; they are imported lazily by :func:`load_backends`.
"""

from __future__ import annotations

import importlib
import pkgutil


class Backend:
    name = "backend"
    grouped = False
    #: Members in different timelines (the nodes of a DRBD resource hold copies of the
    #: same data) form separate groups, one per timeline, unless the backend pairs
    #: copies itself (DRBD on DRBD) and sets this.
    joins_timelines = False
    #: Only consider volumes of these roles (None: any).  "input" is a file given
    #: on the command line or found in a directory input.
    roles: tuple | None = None
    #: Command-line options this backend adds to ``pvfs mount`` and ``pvfs scan``:
    #: ``[("--zfs-txg", {"type": int, "help": "..."})]``.  The value lands in
    #: ``ctx.options.get("zfs_txg")`` (dest = flag without dashes, ``-`` -> ``_``).
    cli_options: list = []

    def probe(self, volume, ctx) -> float:
        return 0.0

    def open(self, volume, ctx):
        raise NotImplementedError

    def member_key(self, volume, ctx):
        raise NotImplementedError

    def open_group(self, key, volumes, ctx):
        raise NotImplementedError

    def probe_dir(self, path, ctx) -> float:
        return 0.0

    def probe_node(self, node, path, ctx) -> float:
        """Like ``probe_dir`` for a directory node of the tree (``path`` is its tree path):
        a datastore inside a recovered ZFS dataset.  Called by pvfs/treestorage.py."""
        return 0.0

    def open_node(self, node, path, ctx):
        raise NotImplementedError

    def open_dir(self, path, ctx):
        raise NotImplementedError


_loaded = None
_load_errors: list = []


def load_backends():
    """Import every ``backends.<name>`` package and collect its ``BACKENDS``."""
    global _loaded
    if _loaded is not None:
        return _loaded
    import backends

    found = []
    for info in sorted(pkgutil.iter_modules(backends.__path__), key=lambda i: i.name):
        if not info.ispkg:
            continue
        try:
            mod = importlib.import_module(f"backends.{info.name}")
        except Exception as e:  # a broken optional backend must not stop the rest
            _load_errors.append((info.name, f"{type(e).__name__}: {e}"))
            continue
        found.extend(getattr(mod, "BACKENDS", []))
    _loaded = found
    return found


def load_errors():
    load_backends()
    return list(_load_errors)
