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

The registry
    Each subpackage of ``backends/`` declares ``SPECS``, a list of
    :class:`BackendSpec`: the name, roles, options and optional hooks of each of its
    backends, where its code lives, and cheap "sniffs" (a magic at an offset) that
    rule a volume out without that code.  :func:`load_backends` imports only these
    light declarations and checks them (names unique, roles known, command-line
    options that do not clash); a backend's code is imported when a sniff says "maybe"
    or one of its hooks is called (:class:`LazyBackend`), and must agree with its
    declaration.  A start-up of ``pvfs`` that meets one format imports that format's
    code alone (the model is dissect.target's ``register(module, class)`` lists of
    lazily imported plug-ins, ``dissect/target/filesystem.py``).
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from .startup import importing

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


# -- the registry: light declarations, heavy code imported on first use ------------------
#: The optional hooks a declaration lists when its class overrides them: the core asks
#: only the backends that have them (probe_node of tree storages, companions of folders,
#: finish at the end of discovery).
OPTIONAL_HOOKS = ("probe_dir", "probe_node", "companions", "finish")

VolumeSniff = Callable[["Volume", "Context"], bool]
DirSniff = Callable[[str, "Context"], bool]
NodeSniff = Callable[["Dir", str, "Context"], bool]
CompanionsSniff = Callable[[Any, str, "list[str]", "Context"], bool]


@dataclass(frozen=True)
class BackendSpec:
    """What the core knows of a backend before its code is imported.

    Each ``backends/<fmt>/__init__.py`` declares ``SPECS = [BackendSpec(...)]`` and
    imports nothing heavy (no numpy, construct, compressors or the backend's own
    parsers): ``pvfs --help``, option parsing and the probe of a volume that is not
    this format cost no import of the backend.  ``impl`` (``"module:attribute"``, a
    :class:`Backend` subclass or instance) is imported when a sniff says "maybe" or a
    hook of the backend is called.  The class must agree with the declaration (name,
    roles, grouping, options, optional hooks); :meth:`LazyBackend.load` checks it.

    A sniff is a necessary condition of its hook, over the same arguments, from the
    same bytes: False means the hook would return "not mine" (0, ``{}``) and add no
    report entry, so the core answers that without importing the backend.  A sniff
    that cannot decide (an unreadable sector) answers True; the hook decides.  None:
    no sniff, the hook is always asked.  Best written as the first step of the probe
    itself, shared with it (``backends/zfs/__init__.py``: the label magics).
    """

    name: str
    impl: str
    roles: frozenset[str] | None = None
    grouped: bool = False
    phase: int = 0
    joins_timelines: bool = False
    cli_options: tuple[CliOption, ...] = ()
    hooks: frozenset[str] = frozenset()
    sniff: VolumeSniff | None = None
    sniff_dir: DirSniff | None = None
    sniff_node: NodeSniff | None = None
    sniff_companions: CompanionsSniff | None = None

    def __post_init__(self) -> None:
        if self.roles is not None:
            object.__setattr__(self, "roles", frozenset(self.roles))
        object.__setattr__(self, "hooks", frozenset(self.hooks))
        object.__setattr__(self, "cli_options", tuple(self.cli_options))
        unknown = self.hooks - set(OPTIONAL_HOOKS)
        if unknown:
            raise BackendDeclarationError(f"backend {self.name}: unknown hooks {sorted(unknown)}")


class BackendUnavailable(Exception):
    """A declared backend whose code cannot be imported (a missing dependency)."""


def _maybe(sniff: Callable[..., bool] | None, *args: Any) -> bool:
    """A sniff's answer; a sniff that raises cannot decide: the hook is asked."""
    if sniff is None:
        return True
    try:
        return bool(sniff(*args))
    except Exception:
        return True


class LazyBackend(Backend):
    """A declared backend: answers from its :class:`BackendSpec` and sniffs, imports the
    implementation on the first hook that needs it and hands every hook to it."""

    def __init__(self, spec: BackendSpec, package: str) -> None:
        self.spec = spec
        self.package = package
        self.name = spec.name  # type: ignore[misc]
        self.roles = spec.roles  # type: ignore[misc]
        self.grouped = spec.grouped  # type: ignore[misc]
        self.phase = spec.phase  # type: ignore[misc]
        self.joins_timelines = spec.joins_timelines  # type: ignore[misc]
        self.cli_options = list(spec.cli_options)  # type: ignore[misc]
        self._impl: Backend | None = None
        self._error: str | None = None

    def __repr__(self) -> str:
        state = "loaded" if self._impl is not None else "not loaded"
        return f"<LazyBackend {self.name} ({state})>"

    @classmethod
    def of(cls, impl: Backend, package: str) -> LazyBackend:
        """An implementation already imported (a package that exports ``BACKENDS``
        instances, the contract before :class:`BackendSpec`), with the spec it implies."""
        if not isinstance(impl, Backend):
            raise BackendDeclarationError(f"backends.{package}: {impl!r} is not a "
                                          "pvfs.backend.Backend")
        spec = BackendSpec(name=impl.name, impl=f"{type(impl).__module__}:{type(impl).__name__}",
                           roles=impl.roles, grouped=impl.grouped, phase=impl.phase,
                           joins_timelines=impl.joins_timelines,
                           cli_options=tuple(impl.cli_options),
                           hooks=frozenset(h for h in OPTIONAL_HOOKS if impl.implements(h)))
        lazy = cls(spec, package)
        lazy._impl = impl
        return lazy

    @property
    def loaded(self) -> bool:
        return self._impl is not None

    def load(self) -> Backend:
        """The implementation (imported once); BackendUnavailable when it cannot be."""
        if self._impl is not None:
            return self._impl
        if self._error is not None:
            raise BackendUnavailable(self._error)
        module, _, attr = self.spec.impl.partition(":")
        try:
            with importing():  # its code lives as long as the process (pvfs/startup.py)
                obj = getattr(importlib.import_module(module), attr)
        except Exception as e:  # a broken optional backend must not stop the rest
            self._error = f"{type(e).__name__}: {e}"
            log.debug("backend %s failed to import: %s", self.name, self._error)
            _load_errors.append((self.package, self._error))
            raise BackendUnavailable(self._error) from None
        impl = obj() if isinstance(obj, type) else obj
        check_agrees(self.spec, impl)
        self._impl = impl
        return impl

    def implements(self, hook: str) -> bool:
        if hook in OPTIONAL_HOOKS:
            return hook in self.spec.hooks
        return self.load().implements(hook)

    # -- hooks answered by a sniff when it can ------------------------------------
    def probe(self, volume: Volume, ctx: Context) -> float:
        if not _maybe(self.spec.sniff, volume, ctx):
            return 0.0
        try:
            impl = self.load()
        except BackendUnavailable:
            return 0.0
        return impl.probe(volume, ctx)

    def probe_dir(self, path: str, ctx: Context) -> float:
        if "probe_dir" not in self.spec.hooks or not _maybe(self.spec.sniff_dir, path, ctx):
            return 0.0
        try:
            impl = self.load()
        except BackendUnavailable:
            return 0.0
        return impl.probe_dir(path, ctx)

    def probe_node(self, node: Dir, path: str, ctx: Context) -> float:
        if "probe_node" not in self.spec.hooks \
                or not _maybe(self.spec.sniff_node, node, path, ctx):
            return 0.0
        try:
            impl = self.load()
        except BackendUnavailable:
            return 0.0
        return impl.probe_node(node, path, ctx)

    def companions(self, files: Any, folder: str, names: list[str],
                   ctx: Context) -> dict[str, str]:
        if "companions" not in self.spec.hooks \
                or not _maybe(self.spec.sniff_companions, files, folder, names, ctx):
            return {}
        try:
            impl = self.load()
        except BackendUnavailable:
            return {}
        return impl.companions(files, folder, names, ctx)

    def finish(self, ctx: Context) -> None:
        # Not imported yet: none of its hooks ran in this process, so there is nothing
        # for it to finish (its state in ``ctx`` does not exist).
        if "finish" in self.spec.hooks and self._impl is not None:
            self._impl.finish(ctx)

    # -- hooks that need the implementation ---------------------------------------
    def new_state(self, ctx: Context) -> Any:
        return self.load().new_state(ctx)

    def open(self, volume: Volume, ctx: Context) -> None:
        self.load().open(volume, ctx)

    def member_key(self, volume: Volume, ctx: Context) -> Hashable | None:
        return self.load().member_key(volume, ctx)

    def open_group(self, key: Hashable, volumes: list[Volume], ctx: Context) -> None:
        self.load().open_group(key, volumes, ctx)

    def open_dir(self, path: str, ctx: Context) -> None:
        self.load().open_dir(path, ctx)

    def open_node(self, node: Dir, path: str, ctx: Context) -> None:
        self.load().open_node(node, path, ctx)


def check_agrees(spec: BackendSpec, impl: Backend) -> None:
    """The implementation declares what its spec says (a programming error otherwise)."""
    if not isinstance(impl, Backend):
        raise BackendDeclarationError(f"{spec.impl} is not a pvfs.backend.Backend")
    roles = None if impl.roles is None else frozenset(impl.roles)
    have = {"name": impl.name, "roles": roles, "grouped": impl.grouped, "phase": impl.phase,
            "joins_timelines": impl.joins_timelines,
            "cli_options": tuple(tuple(o) for o in impl.cli_options),
            "hooks": frozenset(h for h in OPTIONAL_HOOKS if impl.implements(h))}
    want = {"name": spec.name, "roles": spec.roles, "grouped": spec.grouped,
            "phase": spec.phase, "joins_timelines": spec.joins_timelines,
            "cli_options": tuple(tuple(o) for o in spec.cli_options), "hooks": spec.hooks}
    for key, value in want.items():
        if have[key] != value:
            raise BackendDeclarationError(f"backend {spec.name}: {spec.impl} has {key} "
                                          f"{have[key]!r}, its declaration says {value!r}")


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
    """Every declared backend, as :class:`LazyBackend` objects: imports each
    ``backends.<name>`` package (light: its ``SPECS``), not the backends' code."""
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
        if not hasattr(mod, "SPECS") and hasattr(mod, "BACKENDS"):
            # The contract before lazy loading (instances, imported with the package):
            # still loaded, eagerly, so that a backend written for it is not lost.
            log.debug("backends.%s exports BACKENDS, not SPECS: loaded eagerly", info.name)
            found.extend(LazyBackend.of(b, info.name) for b in mod.BACKENDS)
            continue
        for spec in getattr(mod, "SPECS", []):
            if not isinstance(spec, BackendSpec):
                raise BackendDeclarationError(f"backends.{info.name}: {spec!r} in SPECS is "
                                              "not a pvfs.backend.BackendSpec")
            found.append(LazyBackend(spec, info.name))
    check_backends(found)
    _loaded = found
    return found


def load_errors() -> list[tuple[str, str]]:
    """``(package, error)`` of every backend that could not be imported so far (its
    package, or its code on first use)."""
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
