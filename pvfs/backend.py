"""The backend contract: what a format plug-in is, and how plug-ins are found.

A backend handles one format.  Every hook it may implement is declared here,
with its types, so that no backend needs to hang state or ordering tricks on
the shared :class:`pvfs.discover.Context` (the model is dissect.target's
registered base classes, ``dissect/target/filesystem.py``).

Volumes (``probe`` / ``open``)
    ``probe(volume, ctx) -> float`` reads a few KiB of ``volume.source`` and
    returns a confidence score, 0 for "not mine"; it must never raise.
    Scores: 100 for a checked magic and checksum, 50 for a magic alone, 1 for
    "raw" fallbacks.  The best score ``open``\\ s the volume; ``open`` builds
    nodes and new volumes through ``ctx`` and may raise the backend's own
    error, which becomes a damage entry of ``volume``.
Groups (``grouped = True``: ZFS vdevs, LVM PVs, Ceph OSDs, DRBD peers)
    ``member_key(volume, ctx)`` says which group a volume belongs to (pool
    GUID, VG UUID ...); ``open_group(key, volumes, ctx)`` runs once nothing is
    left to probe.  Groups open by ``phase``: a group of phase 1 waits until no
    volume is queued and no group of phase 0 is pending (DRBD waits for the
    LVM VGs whose LVs may be its backing devices).
Directories
    ``probe_dir(path, ctx)`` / ``open_dir(path, ctx)`` for folders given by the
    user; ``probe_node(node, path, ctx)`` / ``open_node(node, path, ctx)`` for
    the same inside a recovered file system (a directory node of the tree).
Folders of image files
    ``companions(files, folder, names, ctx)`` names the files of a folder that
    belong to another one there (VMDK extent files of a descriptor); the core
    does not open them as inputs of their own.
Per-run state and the end of discovery
    ``new_state(ctx)`` makes the backend's state for one discovery;
    ``ctx.state(backend)`` returns it (created on first use).  ``finish(ctx)``
    runs once after every layer and tree storage is open, before the core
    maps damage and writes the report.

Persistent indexes
    What a backend works out at cost from an input's bytes (an OSD's object list, a
    thin pool's mappings) it keeps through ``ctx.index(backend, name, source, meta=...,
    version=N)`` (:mod:`pvfs.index`): ``load()`` or build and ``save(info, arrays)``.
    The core checks an entry before it is used (input identity, ``meta`` hash, versions,
    SHA-256) and remembers which backend won each probe, so a probe must depend only on
    the bytes it reads, the options and the inputs.

Each subpackage of ``backends/`` exports ``BACKENDS``, a list of backend
instances; :func:`load_backends` imports them and checks their declarations
(names unique, roles known, command-line options that do not clash).
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from .discover import Context, Volume
    from .nodes import Dir

log = logging.getLogger("pvfs.backend")


# -- roles ---------------------------------------------------------------------------
@dataclass(frozen=True)
class RoleInfo:
    name: str
    is_block: bool  # holds a block device's bytes: partition tables, PVs, filesystems live here
    doc: str


#: Every role a volume can have; ``Context`` refuses a volume with an undeclared role.
ROLES: dict[str, RoleInfo] = {}


def declare_role(name: str, is_block: bool, doc: str) -> str:
    ROLES[name] = RoleInfo(name, is_block, doc)
    return name


INPUT = declare_role("input", False, "a file given by the user or found in a directory input")
DISK = declare_role("disk", True, "a virtual disk an image format holds (qcow2, VMA, PBS fidx)")
PARTITION = declare_role("partition", True, "a partition of an MBR or GPT table")
LV = declare_role("lv", True, "an LVM logical volume (linear, striped, thin)")
LV_HIDDEN = declare_role("lv-hidden", False, "an LVM sub-LV (_tmeta, _rimage ...), not probed")
THIN_META = declare_role("thin-pool-tmeta", False, "a thin pool's metadata device")
THIN_DATA = declare_role("thin-pool-tdata", False, "a thin pool's data device")
ZVOL = declare_role("zvol", True, "a ZFS volume")
RBD = declare_role("rbd", True, "a Ceph RBD image")
DRBD_DATA = declare_role("drbd-data", True, "the replicated area of a DRBD backing device")
DRBD_MERGED = declare_role("drbd-merged", False, "DRBD nodes merged block by block (not probed)")

#: Roles whose volumes can hold a partition table, a PV, an OSD or a filesystem.
BLOCK_ROLES: frozenset[str] = frozenset(r for r, i in ROLES.items() if i.is_block)


# -- the contract ----------------------------------------------------------------------
CliOption = tuple[str, dict[str, Any]]


class Backend:
    """Base class of every backend; the defaults say "not mine"."""

    #: Unique name; also the layer name in damage entries.
    name: ClassVar[str] = "backend"
    #: Multi-member format: ``member_key`` + ``open_group`` instead of ``open``.
    grouped: ClassVar[bool] = False
    #: Groups open in phase order (see the module docstring).
    phase: ClassVar[int] = 0
    #: Members in different timelines (the nodes of a DRBD resource hold copies of the
    #: same data) form separate groups, one per timeline, unless the backend pairs
    #: copies itself (DRBD on DRBD) and sets this.
    joins_timelines: ClassVar[bool] = False
    #: Only volumes of these roles are offered (None: any role).
    roles: ClassVar[frozenset[str] | Sequence[str] | None] = None
    #: Command-line options added to ``pvfs mount`` and ``pvfs scan``:
    #: ``[("--zfs-txg", {"type": int, "help": "..."})]``.  The value lands in
    #: ``ctx.options.get("zfs_txg")`` (dest = flag without dashes, ``-`` -> ``_``).
    cli_options: ClassVar[list[CliOption]] = []

    # -- per-run state ----------------------------------------------------------
    def new_state(self, ctx: Context) -> Any:
        """This backend's state for one discovery (see ``Context.state``)."""
        return None

    # -- volumes ----------------------------------------------------------------
    def probe(self, volume: Volume, ctx: Context) -> float:
        return 0.0

    def open(self, volume: Volume, ctx: Context) -> None:
        raise NotImplementedError

    # -- groups -----------------------------------------------------------------
    def member_key(self, volume: Volume, ctx: Context) -> Hashable | None:
        raise NotImplementedError

    def open_group(self, key: Hashable, volumes: list[Volume], ctx: Context) -> None:
        raise NotImplementedError

    # -- directories --------------------------------------------------------------
    def probe_dir(self, path: str, ctx: Context) -> float:
        return 0.0

    def open_dir(self, path: str, ctx: Context) -> None:
        raise NotImplementedError

    def companions(self, files: Any, folder: str, names: list[str],
                   ctx: Context) -> dict[str, str]:
        """Files of ``folder`` (a :mod:`pvfs.namespace` path) that are parts of another
        file there and must not be opened on their own: ``{part: owner}`` (the extent
        files a VMDK descriptor names).  The core asks before it turns each file of a
        folder input or of a storage's ``images/<vmid>/`` into an input."""
        return {}

    def probe_node(self, node: Dir, path: str, ctx: Context) -> float:
        """Like ``probe_dir`` for a directory node of the tree (``path`` is its tree
        path): a datastore inside a recovered ZFS dataset.  Called by pvfs/treestorage.py."""
        return 0.0

    def open_node(self, node: Dir, path: str, ctx: Context) -> None:
        raise NotImplementedError

    # -- the end ----------------------------------------------------------------
    def finish(self, ctx: Context) -> None:
        """Runs once after every layer is open (only for backends that override it)."""

    # -- introspection ------------------------------------------------------------
    def implements(self, hook: str) -> bool:
        """Whether this backend overrides ``hook`` (``"probe_node"``, ``"finish"`` ...)."""
        return getattr(type(self), hook) is not getattr(Backend, hook)

    def accepts(self, role: str) -> bool:
        return self.roles is None or role in self.roles


class BackendDeclarationError(Exception):
    """A backend declares something the core cannot accept (a programming error)."""


_loaded: list[Backend] | None = None
_load_errors: list[tuple[str, str]] = []


def check_backends(found: Sequence[Backend]) -> None:
    """Refuse duplicate names, unknown roles and clashing command-line options."""
    names: dict[str, Backend] = {}
    flags: dict[str, str] = {}
    for b in found:
        if not isinstance(b, Backend):
            raise BackendDeclarationError(f"{b!r} is not a pvfs.backend.Backend")
        if b.name in names:
            raise BackendDeclarationError(f"two backends are named {b.name!r}")
        names[b.name] = b
        for r in b.roles or ():
            if r not in ROLES:
                raise BackendDeclarationError(f"backend {b.name}: unknown role {r!r} "
                                              f"(declare it in pvfs/backend.py)")
        for flag, _kw in b.cli_options:
            if not flag.startswith("--"):
                raise BackendDeclarationError(f"backend {b.name}: option {flag!r} must be long")
            if flag in flags:
                raise BackendDeclarationError(f"option {flag} is declared by both "
                                              f"{flags[flag]} and {b.name}")
            flags[flag] = b.name


def load_backends() -> list[Backend]:
    """Import every ``backends.<name>`` package, collect its ``BACKENDS`` and check them."""
    global _loaded
    if _loaded is not None:
        return _loaded
    import backends

    found: list[Backend] = []
    for info in sorted(pkgutil.iter_modules(backends.__path__), key=lambda i: i.name):
        if not info.ispkg:
            continue
        try:
            mod = importlib.import_module(f"backends.{info.name}")
        except Exception as e:  # a broken optional backend must not stop the rest
            log.debug("backend package %s failed to import: %s", info.name, e)
            _load_errors.append((info.name, f"{type(e).__name__}: {e}"))
            continue
        found.extend(getattr(mod, "BACKENDS", []))
    check_backends(found)
    _loaded = found
    return found


def load_errors() -> list[tuple[str, str]]:
    load_backends()
    return list(_load_errors)


def pick_best(candidates: Sequence[Backend], score: Any,
              on_error: Any) -> tuple[float, Backend] | None:
    """The one probe loop: ask each candidate ``score(backend) -> float``; a probe that
    raises is reported through ``on_error(backend, exc)`` and counts as 0.  Returns the
    best ``(score, backend)`` (the first one listed wins a tie) or None."""
    best: tuple[float, Backend] | None = None
    for b in candidates:
        try:
            s = float(score(b) or 0)
        except Exception as e:  # a probe must never raise; if it does, report and go on
            on_error(b, e)
            s = 0.0
        if s > 0:
            log.debug("probe %s: %.0f", b.name, s)
        if s > 0 and (best is None or s > best[0]):
            best = (s, b)
    return best
