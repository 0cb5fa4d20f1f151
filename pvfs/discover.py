"""Discovery: stack the layers found in the inputs into one node tree.

Every input file becomes a :class:`Volume`.  Each volume is probed by every
backend; the best score opens it, and what it exposes (a virtual disk, a
partition, an LV) becomes a new volume that is probed in turn, so layers
stack without knowing each other.  Members of multi-member formats are
collected by key and opened as a group once nothing is left to probe.  A file found by
walking an input folder is probed as soon as it is found; one that no backend recognises
keeps only its name and size (pvfs/unrecognised.py).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import ddrescue
from .backend import ROLES, Backend, load_backends, load_errors, pick_best
from .damage import DamageReport
from .errors import PvfsError, UnreadableError, UsageError
from .fsprobe import detect_filesystem
from .guestfs import GuestFilesystem
from .index import IndexEntry, IndexStore
from .nbd import is_nbd_uri
from .namespace import OsFiles, TreeFiles
from .nodes import Dir, File, resolve, sanitize_name
from .proxmox.view import Locator
from .source import BAD_EIO, FileSource, Source
from .unrecognised import SkippedFiles

if TYPE_CHECKING:
    from .nodes import Node
    from .progress import Progress

log = logging.getLogger("pvfs.discover")

MAX_DEPTH = 12  # layers inside layers; protects against loops in hostile images
MAX_VOLUMES = 100_000


@dataclass
class Options:
    bad: str | None = None  # None: each backend's default; "eio" or "zero"
    mapfiles: dict = field(default_factory=dict)  # input path -> mapfile path
    backend_options: dict = field(default_factory=dict)  # e.g. {"zfs_txg": 123}
    progress: bool | None = None  # None: when stderr is a terminal
    #: The persistent index store (pvfs/index.py); None keeps nothing (the library
    #: default: the command line passes ``~/.cache/pvfs/index`` unless ``--index-dir none``).
    index_dir: str | None = None
    #: Worker processes that index independent inputs before discovery (pvfs/parallel.py).
    jobs: int = 1
    #: Remember which backend won each probe (ProbeCache); off in the workers.
    probe_cache: bool = True

    def get(self, key: str, default: Any = None) -> Any:
        return self.backend_options.get(key, default)


@dataclass
class Home:
    """A place where a volume's children (partitions) are shown."""

    parent: Dir
    subdir: str | None  # None: children go straight into parent
    path: str  # tree path of the directory the children land in

    def dir(self) -> Dir:
        if self.subdir is None:
            return self.parent
        return self.parent.subdir(self.subdir)


class Volume:
    """A random-access source found during discovery, and where it is shown."""

    def __init__(self, source: Source, path: str, name: str, role: str,
                 parent: Volume | None = None, input_path: str | None = None) -> None:
        self.source = source
        self.path = path  # tree path of the node that exposes it ("storage/files/a.img")
        self.name = name
        self.role = role  # input | disk | partition | lv | zvol | member-data ...
        self.parent = parent
        self.depth = 0 if parent is None else parent.depth + 1
        self.input_path = input_path
        self.homes: list[Home] = []
        self.children: list[tuple[str, Volume]] = []
        self.claimed_by: str | None = None
        self.info: dict = {}
        self.filesystem: str | None = None
        self.fs_checked = False  # detect_filesystem ran (or the probe cache answered for it)
        self.vm_paths: list[str] = []
        self.mtime = None  # from the source where known; children (partitions) inherit it
        self.timeline = None  # set on one of several copies of the same data (DRBD nodes)
        self.files = None  # pvfs.namespace object to find files an image names (backing files)
        self.file_path = None  # this volume's path in ``files``
        self.guestfs: GuestFilesystem | None = None  # the guest filesystem opened on it
        self.guestfs_root: Dir | None = None
        self.files_paths: list[str] = []  # where its files are shown
        self.file_name: str | None = None  # an input's real file name (before clash renaming)
        self.from_dir = False  # an input found by walking a directory, not named by the user
        # Tree paths of layers it is read through besides its parent chain (a thin LV's
        # pool): damage entries about them concern this volume (the per-guest status).
        self.layers: list[str] = []

    def __repr__(self) -> str:
        return f"<Volume {self.path} {self.role}>"


class ProbeCache:
    """Which backend won each volume's probe when the very same inputs were discovered
    before (the same files, sizes and mtimes, options, backends and code): kept in the
    index store, so that a second discovery of a thousand thin LVs does not ask every
    backend about every LV again.

    A remembered winner is asked again (its probe must still say yes, else every backend
    is asked); for a volume nobody recognised, no backend is asked.  The report entries
    the probes made are kept and given again in the same place.  Inputs without an
    identity (a ddrescue mapfile, a directory-only run) turn it off.
    """

    VERSION = 1

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.entry: IndexEntry | None = None
        self.known: dict = {}
        self.seen: dict = {}
        self.missed = 0

    def open(self) -> None:
        import json

        from . import __version__
        from .index import code_fingerprint, source_identity

        ctx = self.ctx
        inputs = [v for v in ctx.volumes if v.role == "input" and v.parent is None]
        if not ctx.indexes.enabled or not inputs or ctx.has_bad_ranges \
                or not ctx.options.probe_cache:
            return
        idents = [source_identity(v.source) for v in inputs]
        if any(i is None for i in idents):
            return
        check: dict = {}
        for _w, c in idents:
            check.update(c)
        where = "probes:" + hashlib.sha256(
            "|".join(f"{v.path}={i[0]}" for v, i in zip(inputs, idents, strict=True))
            .encode()).hexdigest()
        opts = ctx.options
        meta = json.dumps([__version__, code_fingerprint(), opts.bad, sorted(opts.mapfiles.items()),
                           sorted(opts.backend_options.items()),
                           [b.name for b in load_backends()]], default=str).encode()
        self.entry = ctx.indexes.entry("core", "probes", None, meta=meta, version=self.VERSION,
                                       label=f"{len(inputs)} inputs", ident=(where, check))
        got = self.entry.load()
        if got is not None and self._files_unchanged(got[0].get("files", {})):
            self.known = got[0].get("volumes", {})

    @staticmethod
    def _stat_of(src: FileSource) -> list:
        st = src.stat
        return [st.st_dev, st.st_ino, src.size, st.st_mtime_ns]

    @staticmethod
    def _files_unchanged(files: dict) -> bool:
        """The files opened last time (a qcow2's backing file, a VMDK's extents) are
        still the same: a changed one may change what a volume holds."""
        for path, want in files.items():
            try:
                st = os.stat(path)
            except OSError:
                return False
            size = want[2] if stat.S_ISBLK(st.st_mode) else st.st_size
            if [st.st_dev, st.st_ino, size, st.st_mtime_ns] != want:
                return False
        return True

    @staticmethod
    def _key(volume: Volume) -> str:
        return f"{volume.role}\0{volume.path}"

    def lookup(self, volume: Volume) -> list | None:
        return self.known.get(self._key(volume))

    def note(self, volume: Volume, winner: str, fs: str | None, first: int) -> None:
        if self.entry is None:
            return
        new = self.ctx.report.entries[first:]
        self.seen[self._key(volume)] = [winner, fs, [
            [e.severity, e.layer, e.path, e.code, e.message, [list(r) for r in e.ranges],
             e.outcome] for e in new]]

    def note_fs(self, volume: Volume, fs: str | None) -> None:
        rec = self.seen.get(self._key(volume))
        if rec is not None:
            rec[1] = fs

    def replay(self, volume: Volume, rec: list) -> None:
        for sev, layer, path, code, msg, ranges, outcome in rec[2]:
            self.ctx.report.add(sev, layer, path, code, msg, [tuple(r) for r in ranges], outcome)
        self.seen[self._key(volume)] = list(rec)

    def save(self) -> None:
        if self.entry is not None and self.entry.usable and self.missed:
            files = {os.path.abspath(f.path): self._stat_of(f) for f in self.ctx.files_opened}
            self.entry.save({"volumes": self.seen, "files": files})


class Context:
    """What backends use to build the tree and report damage."""

    def __init__(self, options: Options | None = None) -> None:
        self.options = options or Options()
        self.report = DamageReport()
        self.root = Dir(mode=0o555)
        self.storage_root = self.root.subdir("storage")
        self.vms_root = self.root.subdir("vms")
        self.cts_root = self.root.subdir("cts")
        self.volumes: list[Volume] = []
        self.inputs: list[dict] = []
        self.queue: deque[Volume] = deque()
        self.seen_inputs: dict = {}  # st_dev << 64 | st_ino of every input walked -> its path
        self.groups: dict = {}
        self.opened_groups: set = set()
        self.progress = None
        self.started = time.time()
        self.extra_readme: list[str] = []
        self.has_bad_ranges = False  # some opened file has a ddrescue mapfile
        self.scanned_storage_dirs: set = set()  # pvfs/treestorage.py: storages already taken
        self.probed_node_dirs: set = set()  # ... and directories already offered to probe_node
        self.filesystems: list[Volume] = []  # volumes whose guest filesystem was opened
        self.host_roots: list = []  # pvfs.proxmox.cluster.HostRoot: roots holding /var/lib/pve-cluster
        self.host_roots_seen: set = set()
        self._states: dict[str, object] = {}
        self.indexes = IndexStore(self.options.index_dir)
        self.workers_log: list[dict] = []  # pvfs/parallel.py: what each worker indexed
        self.cold_units: list[str] = []  # ... and the inputs it found without a current index
        self.probes = ProbeCache(self)
        self.files_opened: list[FileSource] = []  # inputs and the files images name
        self.skipped: list = []  # pvfs.unrecognised.SkippedFiles: per input folder

    # -- per-backend state -----------------------------------------------------
    def state(self, backend: Backend) -> Any:
        """``backend``'s state for this discovery (``backend.new_state(ctx)``, made once)."""
        st = self._states.get(backend.name)
        if st is None:
            st = self._states[backend.name] = backend.new_state(self)
        return st

    # -- persistent indexes ------------------------------------------------------
    def index(self, backend: Backend | str, name: str, source: Source | None, meta: bytes = b"",
              version: int = 1, path: str | None = None,
              ident: tuple[str, dict] | None = None) -> IndexEntry:
        """The persistent index ``name`` of ``backend`` for ``source`` (:mod:`pvfs.index`):
        ``load()`` it, or build and ``save(info, arrays)`` it.  ``meta``: the metadata it
        is built from (a label, a superblock); ``version``: bump it when what is stored
        changes.  Stale, truncated or corrupt entries are info entries at ``path``.
        ``ident``: an explicit ``(where, check)`` for what is no Source (a folder)."""
        bname = backend if isinstance(backend, str) else backend.name

        label = path or getattr(source, "label", "?")

        def notify(severity: str, code: str, message: str) -> None:
            self.report.add(severity, "core", label, code, message)

        return self.indexes.entry(bname, name, source, meta=meta, version=version,
                                  label=label, notify=notify, ident=ident)

    # -- options -----------------------------------------------------------
    def bad(self, default: str = BAD_EIO) -> str:
        """The unreadable-bytes policy: the user's ``--bad`` or the backend's default."""
        return self.options.bad or default

    # -- tree helpers --------------------------------------------------------
    def storage(self, area: str) -> Dir:
        """``storage/<area>/`` (zfs, lvm, ceph, pbs, drbd, files)."""
        return self.storage_root.subdir(area)

    def add_volume(self, source: Source, directory: Dir, name: str, dir_path: str, role: str,
                   parent: Volume | None = None, probe: bool = True,
                   children_home: str | None = "sibling", mtime: float | None = None,
                   input_path: str | None = None) -> Volume:
        """Show ``source`` as file ``name`` in ``directory`` and queue it for probing.

        ``children_home`` says where its partitions go: ``"sibling"`` (into
        the same directory, as ``storage/files/<input>/p1``) or ``"parts"``
        (into ``<name>.parts/``) or None (nowhere).
        """
        name = directory.add(name, File(source, mtime=mtime), report=self.report,
                             path_hint=dir_path)
        path = f"{dir_path}/{name}"
        vol = Volume(source, path, name, role, parent=parent, input_path=input_path)
        vol.mtime = mtime
        if children_home == "sibling":
            vol.homes.append(Home(directory, None, dir_path))
        elif children_home == "parts":
            vol.homes.append(Home(directory, f"{name}.parts", f"{dir_path}/{name}.parts"))
        self._register(vol, probe)
        return vol

    def _register(self, vol: Volume, probe: bool) -> None:
        if vol.role not in ROLES:
            raise PvfsError(f"internal: volume {vol.path} has undeclared role {vol.role!r}")
        if len(self.volumes) >= MAX_VOLUMES:
            raise PvfsError(f"more than {MAX_VOLUMES} volumes found; refusing to go on")
        self.volumes.append(vol)
        if probe and vol.depth <= MAX_DEPTH:
            self.queue.append(vol)
        elif probe:
            self.report.add("warning", "core", vol.path, "too-deep",
                            f"more than {MAX_DEPTH} layers deep; not probed further")

    def add_child(self, volume: Volume, name: str, source: Source, role: str = "partition",
                  info: dict | None = None) -> Volume:
        """Add a child of ``volume`` (a partition) in every one of its homes."""
        first = None
        for home in volume.homes:
            d = home.dir()
            used = d.add(name, File(source, mtime=volume.mtime), report=self.report,
                         path_hint=home.path)
            if first is None:
                first = Volume(source, f"{home.path}/{used}", used, role, parent=volume)
                first.mtime = volume.mtime
                first.info.update(info or {})
                first.homes.append(Home(d, f"{used}.parts", f"{home.path}/{used}.parts"))
            else:
                first.vm_paths.append(f"{home.path}/{used}")
        if first is None:  # no home: still probe it (e.g. LVM inside an unlisted partition)
            first = Volume(source, f"{volume.path}#{name}", name, role, parent=volume)
        volume.children.append((name, first))
        self._register(first, True)
        return first

    def add_home(self, volume: Volume, home: Home) -> None:
        """Show ``volume``'s children in one more place (children added later follow)."""
        volume.homes.append(home)
        for name, child in volume.children:
            used = home.dir().add(name, File(child.source, mtime=child.mtime),
                                  report=self.report, path_hint=home.path)
            child.vm_paths.append(f"{home.path}/{used}")

    def add_input_disk(self, input_vol: Volume, source: Source, snapshot: str | None = None,
                       info: dict | None = None, mtime: float | None = None) -> Volume:
        """Show the virtual disk that an input file holds (qcow2, raw, vmdk ...).

        It lands at ``storage/files/<input>/disk.raw`` (or
        ``snapshots/<snapshot>/disk.raw``) with its partitions beside it, and
        under ``vms/<vmid>/`` when the input follows Proxmox naming.
        """
        d = input_vol.homes[0].dir()
        dpath = input_vol.homes[0].path
        if snapshot is not None:
            d = d.subdir("snapshots").subdir(snapshot)
            dpath = f"{dpath}/snapshots/{snapshot}"
        mtime = mtime if mtime is not None else input_vol.mtime
        vol = self.add_volume(source, d, "disk.raw", dpath, "disk", parent=input_vol,
                              children_home="sibling", mtime=mtime)
        vol.info.update(info or {})
        self.add_proxmox(_input_locator(input_vol, snapshot), vol, mtime=mtime)
        return vol

    # -- guest filesystems --------------------------------------------------------
    def add_filesystem(self, volume: Volume, fs: GuestFilesystem) -> list[str]:
        """Show the files of guest filesystem ``fs`` found on ``volume``.

        The tree goes beside every place the volume is shown: a partition's
        files into ``<disk>.files/<pk>/``, a whole volume's into
        ``<name>.files/`` (``vms/100/disk-0.files/``, ``storage/lvm/pve/root.files/``).
        A Proxmox volume that is one bare filesystem is a container's rootfs; it
        also lands at ``cts/<vmid>/rootfs/`` (in :func:`finish`).  Returns the
        tree paths used.
        """
        root = fs.root()
        volume.filesystem = fs.info.fstype
        volume.guestfs = fs
        volume.guestfs_root = root
        self.filesystems.append(volume)
        used_paths = []
        for place in [volume.path, *volume.vm_paths]:
            used = self.show_files_at(volume, place)
            if used is not None:
                used_paths.append(used)
        used_paths += self._guest_lv_places(volume, root)
        volume.files_paths = used_paths
        return used_paths

    def show_files_at(self, volume: Volume, place: str) -> str | None:
        """Show ``volume``'s guest filesystem beside ``place``, one of the paths the
        volume is shown at; returns the tree path used."""
        root = volume.guestfs_root
        if root is None:
            return None
        dpath, _, name = place.rpartition("/")
        target = self._files_place(volume, dpath, name)
        if target is None:
            return None
        base_path, parts = target
        d = resolve(self.root, base_path)
        if not isinstance(d, Dir):
            return None
        for part in parts[:-1]:
            d = d.subdir(part)
        tdir_path = "/".join([base_path, *parts[:-1]])
        used = d.add(parts[-1], root, report=self.report, path_hint=tdir_path)
        return f"{tdir_path}/{used}"

    def _guest_lv_places(self, volume: Volume, root: Dir) -> list[str]:
        """An LV of a VG found inside a VM disk (a RHEL/Ubuntu LVM install): its files
        also go to ``vms/<vmid>/disk-<n>.files/<vg>-<lv>/`` of the disk holding the PV."""
        if volume.role != "lv" or volume.parent is None:
            return []
        out = []
        for place in [volume.parent.path, *volume.parent.vm_paths]:
            used = self.guest_lv_place(volume, root, place)
            if used is not None:
                out.append(used)
        return out

    def guest_lv_place(self, volume: Volume, root: Dir, place: str) -> str | None:
        """:meth:`_guest_lv_places` for one place ``place`` of the PV (the Proxmox view
        calls it when it shows the PV's disk under ``vms/``)."""
        vg = volume.path.rstrip("/").split("/")[-2] if volume.path.count("/") >= 2 else "vg"
        dpath, _, _pname = place.rpartition("/")
        if not place.startswith(("vms/", "cts/")) or not dpath.endswith(".parts"):
            return None
        head, _, stem = dpath[: -len(".parts")].rpartition("/")
        d = resolve(self.root, head)
        if not isinstance(d, Dir):
            return None
        fdir = d.subdir(f"{_stem(stem)}.files")
        tdir_path = f"{head}/{_stem(stem)}.files"
        used = fdir.add(f"{vg}-{volume.name}", root, report=self.report, path_hint=tdir_path)
        return f"{tdir_path}/{used}"

    def _files_place(self, volume: Volume, dpath: str,
                     name: str) -> tuple[str, list[str]] | None:
        """Where the files of the filesystem shown at ``dpath/name`` go: an existing
        directory and the names below it."""
        if volume.role == "partition" and volume.parent is not None:
            if dpath.endswith(".parts"):  # vms/100/disk-0.parts/p1 -> vms/100/disk-0.files/p1
                head, _, stem = dpath[: -len(".parts")].rpartition("/")
                return head, [f"{_stem(stem)}.files", name]
            for ppath in [volume.parent.path, *volume.parent.vm_paths]:
                phead, _, pname = ppath.rpartition("/")
                if phead == dpath:  # storage/files/a.qcow2/p1 beside .../disk.raw
                    return dpath, [f"{_stem(pname)}.files", name]
        if not dpath:
            return None
        return dpath, [f"{_stem(name)}.files"]

    # -- Proxmox view ------------------------------------------------------------
    def add_proxmox(self, loc: Locator, volume: Volume | None = None, tree: Dir | None = None,
                    node: Node | None = None, mtime: float | None = None,
                    where: str | None = None, lost: str | None = None) -> str | None:
        """Register what a backend found for the Proxmox view (:mod:`pvfs.proxmox.view`).

        ``loc`` says where Proxmox would say it lives (storage kind, pool / VG /
        directory, volume name, snapshot; for backups the guest, VMID and time).
        A disk (``volume``) or container subvolume (``tree``) is placed in
        ``vms/`` or ``cts/`` after discovery, when the cluster configs are known;
        a backup's disk, tree or file (``node``) is placed at once.  Returns the
        tree path for a backup, ``""`` for a disk queued for the view, None when
        ``loc`` does not name a Proxmox guest's volume.  ``where``: the tree path a
        ``tree`` is also shown at (README.txt says where each view entry comes from).
        ``lost``: the volume exists (its name is known: a dataset, LV or RBD image) but
        none of its bytes can be read, and why; its guest keeps its ``vms/<id>/`` or
        ``cts/<id>/`` folder with a ``LOST.txt`` saying so, instead of vanishing.
        """
        from .proxmox.view import register

        return register(self, loc, volume, tree, node, mtime, where, lost)

    def add_proxmox_disk(self, volname: str, volume: Volume, snapshot: str | None = None,
                         mtime: float | None = None) -> bool:
        """A disk known only by its Proxmox name (no storage): :meth:`add_proxmox`."""
        return self.add_proxmox(Locator("file", "", volname, snapshot), volume,
                                mtime=mtime) is not None

    def add_host_root(self, root: Dir, path: str, what: str) -> None:
        """A recovered root file system (a PBS host backup's pxar) that may hold the
        Proxmox cluster database; :mod:`pvfs.proxmox` reads it after discovery."""
        from .proxmox.cluster import NodeFiles, note_root

        note_root(self, NodeFiles(root, path), path, what, key=id(root))

    # -- groups ----------------------------------------------------------------
    def add_member(self, backend: Backend, key: Any, volume: Volume) -> None:
        """Hold ``volume`` for ``backend.open_group``; members found in different
        timelines (the two nodes of a DRBD split-brain) make different groups."""
        tl = None if backend.joins_timelines else timeline_of(volume)
        gkey = (backend.name, key, tl)
        if gkey in self.opened_groups:
            self.report.add("warning", backend.name, volume.path, "late-member",
                            "member found after its group was assembled; not used")
            return
        self.groups.setdefault(gkey, (backend, []))[1].append(volume)

    def group_opened(self, backend: Backend, key: Any) -> bool:
        """Whether a group of ``backend`` with ``key`` was assembled (in any timeline)."""
        return any(k[0] == backend.name and k[1] == key for k in self.opened_groups)

    def note_progress(self, text: str) -> None:
        if self.progress is not None:  # the queue is a subset of volumes: O(1), not O(n^2)
            done = len(self.volumes) - len(self.queue)
            self.progress.update(text, completed=done, total=len(self.volumes))


def _stem(name: str) -> str:
    for ext in (".raw", ".img"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


_IMAGES_RE = re.compile(r"^(?P<store>.*)/images/(?P<vmid>\d+)/(?P<file>[^/]+)$")


def _input_locator(input_vol: Volume, snapshot: str | None) -> Locator:
    """Where an image file lies, as Proxmox would say: ``<storage path>/images/<vmid>/<file>``
    is a directory storage's volume ``<vmid>/<file>``; anything else is a plain file."""
    path = input_vol.file_path or input_vol.file_name or input_vol.name
    fs_root = getattr(input_vol.files, "fs_root", None)
    if fs_root is not None and path.startswith(fs_root + "/"):
        path = path[len(fs_root):]  # the path inside the recovered root: /var/lib/vz/...
    name = input_vol.file_name or os.path.basename(path)
    m = _IMAGES_RE.match(path)
    if m and m["file"] == name:
        return Locator("dir", m["store"] or "/", f"{m['vmid']}/{name}", snapshot)
    return Locator("file", os.path.dirname(path), name, snapshot)


def timeline_of(volume: Volume | None) -> str | None:
    """The timeline a volume lies in (a DRBD node), from it or the layers below it."""
    v = volume
    while v is not None:
        if v.timeline is not None:
            return v.timeline
        v = v.parent
    return None


# ---------------------------------------------------------------------------
def _probe_error(ctx: Context, volume_path: str) -> Callable[[Backend, Exception], None]:
    def report(backend: Backend, e: Exception) -> None:
        if isinstance(e, UnreadableError):
            # A note, not a warning: the bytes are lost and reported where they are lost
            # (the lost entry counts them); this says only what the loss hid.
            ctx.report.add("info", backend.name, volume_path, "probe-unreadable",
                           f"could not read enough to recognise a {backend.name} structure: {e}",
                           e.ranges)
        else:  # a probe must never raise; if it does, it is a bug, not damage
            ctx.report.add("warning", backend.name, volume_path, "probe-failed",
                           f"probe raised {type(e).__name__}: {e}")
    return report


def _run_backend(ctx: Context, backend: Backend, volume: Volume | None, what: str,
                 fn: Callable[..., object], *args: Any) -> bool:
    try:
        fn(*args)
        return True
    except UnreadableError as e:
        ctx.report.add("error", backend.name, volume.path if volume else what, "unreadable",
                       f"{what}: {e}", e.ranges)
    except UsageError as e:  # an option value that does not fit what was found: exit 2
        ctx.report.add("error", backend.name, volume.path if volume else what, "bad-option",
                       str(e))
    except PvfsError as e:
        ctx.report.add("error", backend.name, volume.path if volume else what, "open-failed",
                       f"{what}: {e}")
    except (RecursionError, MemoryError) as e:
        ctx.report.add("error", backend.name, volume.path if volume else what, "open-failed",
                       f"{what}: {type(e).__name__} (hostile structure?)")
    except Exception as e:
        ctx.report.add("error", backend.name, volume.path if volume else what, "internal-error",
                       f"{what}: {type(e).__name__}: {e}")
    return False


def _probe_best(ctx: Context, volume: Volume) -> tuple[float, Backend] | None:
    """The best backend for ``volume``: from the probe cache (pvfs.discover.ProbeCache)
    when the same inputs were discovered before, else by asking every backend."""
    walked = volume.__dict__.pop("walk_probe", None)
    if walked is not None:  # probed when its folder was walked (_probe_walked)
        ctx.report.put_back(walked[1])
        return walked[0]
    rec = ctx.probes.lookup(volume)
    if rec is not None:
        winner = rec[0]
        if not winner:
            ctx.probes.replay(volume, rec)
            return None
        b = next((b for b in load_backends() if b.name == winner), None)
        if b is not None:
            ctx.probes.replay(volume, rec)
            try:
                score = float(b.probe(volume, ctx) or 0)
            except Exception:
                score = 0.0
            if score > 0:
                return score, b
    ctx.probes.missed += 1
    first = len(ctx.report.entries)
    candidates = [b for b in load_backends() if b.accepts(volume.role)]
    found = pick_best(candidates, lambda b: b.probe(volume, ctx), _probe_error(ctx, volume.path))
    ctx.probes.note(volume, found[1].name if found else "", None, first)
    return found


def probe_volume(ctx: Context, volume: Volume) -> None:
    found = _probe_best(ctx, volume)
    if found is None:
        log.debug("%s (%s): no backend recognises it", volume.path, volume.role)
        if volume.role == "input":
            ctx.report.add("info", "core", volume.path, "not-recognised",
                           "no format recognised; file skipped")
        else:
            rec = ctx.probes.lookup(volume)
            volume.filesystem = rec[1] if rec is not None and not rec[0] else \
                detect_filesystem(volume.source)
            volume.fs_checked = True
            ctx.probes.note_fs(volume, volume.filesystem)
        return
    score, best = found
    log.debug("%s (%s): %s wins with %.0f", volume.path, volume.role, best.name, score)
    volume.claimed_by = best.name
    ctx.note_progress(f"{best.name}: {volume.path}")
    if best.grouped:
        key = None
        try:
            key = best.member_key(volume, ctx)
        except Exception as e:
            ctx.report.add("error", best.name, volume.path, "open-failed",
                           f"member label: {type(e).__name__}: {e}")
        if key is not None:
            log.debug("%s: member of %s group %r", volume.path, best.name, key)
            ctx.add_member(best, key, volume)
        return
    _run_backend(ctx, best, volume, volume.path, best.open, volume, ctx)


def open_file_source(ctx: Context, path: str, label: str | None = None
                     ) -> tuple[Source, str | None, list[tuple[int, int]]]:
    """Open ``path`` read-only, with the bad ranges of its ddrescue mapfile if any.

    Returns ``(source, mapfile path or None, bad ranges)``.  Backends use it to
    open files that an image refers to (qcow2 backing files, data files).
    """
    src: Source = FileSource(path, label=label)
    ctx.files_opened.append(src)  # the probe cache checks them again next time
    bad_ranges: list[tuple[int, int]] = []
    mapfile = ctx.options.mapfiles.get(os.path.abspath(path))
    if mapfile is None and os.path.exists(path + ".map"):
        mapfile = path + ".map"
    if mapfile:
        try:
            bad_ranges = ddrescue.load_mapfile(mapfile)
        except ddrescue.MapfileError as e:
            ctx.report.add("error", "ddrescue", path, "bad-mapfile", str(e))
    if bad_ranges:
        ctx.has_bad_ranges = True
        src = ddrescue.BadRangeSource(src, bad_ranges, bad=ctx.bad(BAD_EIO), label=src.label)
        ctx.report.add("error", "ddrescue", os.path.abspath(path), "bad-sectors",
                       f"{len(bad_ranges)} unreadable ranges ({sum(n for _, n in bad_ranges)} bytes) "
                       f"in the ddrescue mapfile {os.path.basename(mapfile)}", bad_ranges)
    return src, mapfile, bad_ranges


def _os_files(ctx: Context) -> OsFiles:
    """The machine's files, opened through ``ctx``: one OsFiles (it keeps no state) for
    every input, not one with its own closure each (a folder of 100,000 inputs)."""
    files = ctx.__dict__.get("_os_files")
    if files is None:
        files = ctx._os_files = OsFiles(lambda p: open_file_source(ctx, p)[0])
    return files


def _open_input_file(ctx: Context, path: str, directory: Dir, dir_path: str, name: str,
                     from_dir: bool = False, skipped: SkippedFiles | None = None
                     ) -> Volume | None:
    src, mapfile, bad_ranges = open_file_source(ctx, path, label=name)
    abspath = os.path.abspath(path)  # one string for the three places below
    st = os.stat(path)
    # The input itself is a volume without its own node: what it holds is shown in d.
    vol = Volume(src, f"{dir_path}/{name}", name, "input", input_path=abspath)
    vol.mtime = st.st_mtime
    vol.file_name = os.path.basename(path)
    vol.files = _os_files(ctx)
    vol.file_path = abspath
    vol.from_dir = from_dir
    if skipped is not None and not mapfile and sanitize_name(name) == name \
            and directory.get(name) is None and not _probe_walked(ctx, vol):
        skipped.add(name, src.size)  # nothing else of it is kept (pvfs/unrecognised.py)
        src.close()
        if ctx.files_opened and ctx.files_opened[-1] is src:
            ctx.files_opened.pop()
        return None
    ctx.inputs.append({"path": abspath, "size": src.size,
                       "mapfile": os.path.abspath(mapfile) if mapfile else None,
                       "bad_bytes": sum(n for _, n in bad_ranges)})
    d = Dir()
    name = directory.add(name, d, report=ctx.report, path_hint=dir_path)  # unique per input
    vol.path, vol.name = f"{dir_path}/{name}", name
    vol.homes.append(Home(d, None, vol.path))
    ctx._register(vol, True)
    return vol


def _probe_walked(ctx: Context, volume: Volume) -> bool:
    """Probe a file of an input folder as soon as the walk finds it: one that no backend
    recognises is then dropped at once (a folder of 100,000 notes keeps no source or
    volume per note).  A recognised one keeps the result and the entries its probes made
    (taken out of the report for now), both given back when the queue reaches it, so that
    it is opened and reported exactly as if probed there."""
    first = len(ctx.report.entries)
    found = _probe_best(ctx, volume)
    if found is None:
        return False  # a probe's own entries (probe-failed ...) stay in the report
    volume.walk_probe = (found, ctx.report.take_since(first))
    return True


MAX_DIR_FILES = 100_000


def add_tree_input(ctx: Context, node: File, tree_path: str, fs_root: str) -> Volume:
    """An image file found inside the tree (a qcow2 in a ZFS dataset) becomes an input.

    What it holds is shown under ``storage/files/<its tree path without storage/>/``.
    """
    parts = tree_path.split("/")[1:]
    d = ctx.storage("files")
    for p in parts[:-1]:
        d = d.subdir(p)
    dir_path = "storage/files/" + "/".join(parts[:-1])
    sub = Dir()
    name = d.add(parts[-1], sub, report=ctx.report, path_hint=dir_path)
    dpath = f"{dir_path}/{name}"
    vol = Volume(node.source, dpath, name, "input")
    vol.file_name = parts[-1]
    vol.mtime = node.mtime
    vol.from_dir = True
    vol.files = TreeFiles(ctx.root, fs_root)
    vol.file_path = tree_path
    vol.homes.append(Home(sub, None, dpath))
    vol.info["found_in"] = tree_path
    ctx._register(vol, True)
    return vol


def _open_input_dir(ctx: Context, path: str, directory: Dir, dir_path: str, name: str,
                    depth: int = 0) -> None:
    from .proxmox.cluster import note_input_dir

    note_input_dir(ctx, path)  # a copy of a host root: its /var/lib/pve-cluster
    found = pick_best(load_backends(), lambda b: b.probe_dir(path, ctx), _probe_error(ctx, path))
    if found:
        log.debug("%s: directory format %s (%.0f)", path, found[1].name, found[0])
        _run_backend(ctx, found[1], None, path, found[1].open_dir, path, ctx)
        return
    # A plain folder: every file in it is an input, sub-folders are probed again.
    if depth > 8:
        ctx.report.add("warning", "core", path, "too-deep", "directory nesting too deep; skipped")
        return
    try:
        with os.scandir(path) as it:  # one descriptor, closed before the entries are opened
            entries = sorted((e.name for e in it), key=os.fsencode)
    except OSError as e:
        ctx.report.add("error", "core", path, "unreadable-dir", f"cannot list: {e.strerror}")
        return
    if len(entries) > MAX_DIR_FILES:
        ctx.report.add("warning", "core", path, "too-many-files",
                       f"{len(entries)} entries; only the first {MAX_DIR_FILES} are looked at")
        entries = entries[:MAX_DIR_FILES]
    d = Dir()
    name = directory.add(name, d, report=ctx.report, path_hint=dir_path)
    # images with a ddrescue mapfile beside them (not a set of every name: 100,000 names)
    stems = {e[:-4] for e in entries if e.endswith(".map")}
    mapped = {e for e in entries if e in stems} if stems else stems
    owners = companion_files(ctx, OsFiles(), path, entries)
    skipped = SkippedFiles(os.path.abspath(path), f"{dir_path}/{name}")
    for i, e in enumerate(entries):
        if i and not i % 1000:
            ctx.note_progress(f"walking {path}: {i:,} of {len(entries):,} files")
        if e.endswith(".map") and e[:-4] in mapped:
            continue  # a ddrescue mapfile beside its image (open_file_source finds it)
        if e in owners:
            ctx.report.add("info", "core", os.path.join(path, e), "companion-file",
                           f"part of {owners[e]}; read through it, not on its own")
            continue
        add_input(ctx, os.path.join(path, e), d, f"{dir_path}/{name}", depth=depth + 1,
                  skipped=skipped)
    if skipped.count:
        ctx.skipped.append(skipped)
        skipped.report(ctx.report)


_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device"}


def companion_files(ctx: Context, files: OsFiles | TreeFiles, folder: str,
                    names: list[str]) -> dict[str, str]:
    """``{name: owner}`` for files of ``folder`` that a backend says belong to another
    file there (``Backend.companions``: VMDK extents); a failing hook is reported."""
    owners: dict[str, str] = {}
    for b in load_backends():
        if not b.implements("companions"):
            continue
        try:
            owners.update(b.companions(files, folder, names, ctx))
        except Exception as e:  # a hook must not stop the walk
            ctx.report.add("warning", b.name, folder, "probe-failed",
                           f"companions: {type(e).__name__}: {e}")
    return owners


def add_input(ctx: Context, path: str, directory: Dir | None = None,
              dir_path: str = "storage/files", depth: int = 0,
              skipped: SkippedFiles | None = None) -> None:
    """Add one input (file, block device or directory): named by the user, or found by
    walking a directory (``depth`` > 0).

    The walk is bounded and linear: every file and directory is taken once by (device,
    inode), so a symlink back to a parent (a loop) or a second name of the same image is
    one damage entry, not another walk; dangling links, FIFOs, sockets and character
    devices are entries too, never opened.  ``skipped``: where a walked file that no
    backend recognises goes instead of the tree (:mod:`pvfs.unrecognised`).
    """
    if directory is None:
        directory = ctx.storage("files")
    if depth == 0 and is_nbd_uri(path):  # nbd://host/export: pvfs/nbd.py
        from .nbd import add_nbd_input

        add_nbd_input(ctx, path, directory, dir_path)
        return
    name = os.path.basename(os.path.normpath(path)) or "input"
    try:
        st = os.stat(path)
    except OSError as e:
        if os.path.islink(path):
            ctx.report.add("warning", "core", path, "dangling-symlink",
                           f"symbolic link to {_readlink(path)!r}, which does not exist "
                           f"({e.strerror}); skipped")
        else:
            ctx.report.add("error", "core", path, "unreadable-input",
                           f"cannot stat: {e.strerror}; skipped")
        return
    fmt = stat.S_IFMT(st.st_mode)
    if fmt not in (stat.S_IFDIR, stat.S_IFREG, stat.S_IFBLK):
        via = f" (via the link to {_readlink(path)!r})" if os.path.islink(path) else ""
        ctx.report.add("warning", "core", path, "not-a-file",
                       f"{_KINDS.get(fmt, 'not a regular file')}{via}, not an image, block "
                       "device or directory; not opened")
        return
    # one int per file or folder (a folder of 100,000 files kept a tuple and a path each)
    key = ("blk", st.st_rdev) if fmt == stat.S_IFBLK else st.st_dev << 64 | st.st_ino
    first = ctx.seen_inputs.get(key)
    if first is not None:
        if fmt == stat.S_IFDIR:
            ctx.report.add("warning", "core", path, "symlink-loop" if _is_under(first, path)
                           else "same-directory",
                           f"the same directory as {first} (a symbolic link loop or a second "
                           "name); walked once")
        else:
            ctx.report.add("info", "core", path, "same-file",
                           f"the same {'device' if fmt == stat.S_IFBLK else 'file'} as {first}; "
                           "taken once")
        return
    ctx.seen_inputs[key] = path
    if fmt == stat.S_IFDIR:
        _open_input_dir(ctx, path, directory, dir_path, name, depth)
        return
    try:
        if _open_input_file(ctx, path, directory, dir_path, name, from_dir=depth > 0,
                            skipped=skipped) is None:
            # not kept: a second name of a file not recognised is one more such name
            # (the walk stays bounded: folders are walked once), not worth 100 bytes a file
            del ctx.seen_inputs[key]
    except PvfsError as e:  # it went away, or cannot be opened: say so and go on
        ctx.report.add("error", "core", path, "unreadable-input", f"{e}; skipped")


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "?"


def _is_under(first: str, path: str) -> bool:
    """Whether ``path`` (a name of the directory ``first``) lies inside ``first``: a loop."""
    a = os.path.abspath(first).rstrip("/") + "/"
    return os.path.abspath(path).startswith(a)


def run_queue(ctx: Context) -> None:
    """Probe until nothing is queued; then open pending groups, lowest phase first."""
    while True:
        while ctx.queue:
            vol = ctx.queue.popleft()
            probe_volume(ctx, vol)
        pending = [(k, v) for k, v in ctx.groups.items() if k not in ctx.opened_groups]
        if not pending:
            break
        phase = min(b.phase for _k, (b, _m) in pending)
        for gkey, (backend, members) in pending:
            if backend.phase != phase:
                continue
            ctx.opened_groups.add(gkey)
            log.debug("assembling %s group %r from %d members (phase %d)",
                      backend.name, gkey[1], len(members), phase)
            ctx.note_progress(f"{backend.name}: assembling {gkey[1]}")
            if gkey[2] is not None and any(k[:2] == gkey[:2] and k[2] != gkey[2]
                                           for k in ctx.groups):
                ctx.report.add("info", backend.name, members[0].path, "timeline",
                               f"{backend.name} group {gkey[1]} exists in several timelines; "
                               f"this one is {gkey[2]} (names that clash get ~2)")
            _run_backend(ctx, backend, members[0], f"{backend.name} group {gkey[1]}",
                         backend.open_group, gkey[1], members, ctx)
            if ctx.queue:  # what this group exposed is probed before the next group opens
                break


def finish_backends(ctx: Context) -> None:
    """Every backend's ``finish`` hook, once, in load order."""
    for b in load_backends():
        if b.implements("finish"):
            log.debug("finish hook of %s", b.name)
            _run_backend(ctx, b, None, f"{b.name} finish", b.finish, ctx)


def finish(ctx: Context) -> None:
    """Steps after all layers are open: container rootfs view, damage of bad ranges."""
    from .report import attach_generated_files, propagate_unreadable

    for vol in ctx.volumes:
        if vol.claimed_by is None and vol.filesystem is None and vol.role != "input" \
                and not vol.fs_checked:  # (a thousand LVs without one: once, not twice)
            vol.filesystem = detect_filesystem(vol.source)
    from .proxmox.view import build

    build(ctx)  # vms/ and cts/ (a bare-filesystem volume of a guest without config is a CT's)
    propagate_unreadable(ctx)
    map_filesystem_damage(ctx)
    attach_generated_files(ctx)


FS_DAMAGE_BUDGET_S = 30.0  # time for mapping unreadable ranges to files, all filesystems


def map_filesystem_damage(ctx: Context) -> None:
    """Name the files that unreadable ranges below a guest filesystem hit."""
    from .report import _bounded_unreadable

    deadline = time.monotonic() + FS_DAMAGE_BUDGET_S
    for vol in ctx.filesystems:
        fs = vol.guestfs
        if fs is None or not vol.source.has_unreadable:
            continue  # propagate_unreadable marks every volume above damage
        if time.monotonic() > deadline:
            ctx.report.add("warning", "core", vol.path, "damage-map-skipped",
                           "time budget for mapping damage to files used up; not checked")
            continue
        try:
            ranges, _complete = _bounded_unreadable(vol.source, deadline)
        except Exception as e:
            ctx.report.add("warning", "core", vol.path, "damage-map-failed",
                           f"could not list unreadable ranges: {type(e).__name__}: {e}")
            continue
        if not ranges:
            continue
        try:
            names, total = fs.files_in_ranges(ranges)
        except Exception as e:
            ctx.report.add("warning", fs.info.fstype, vol.path, "damage-map-failed",
                           f"could not map damage to files: {type(e).__name__}: {e}")
            continue
        fs.info.damaged_files = total
        fs.info.damaged_names = list(names)
        if total:
            shown = [p for p in vol.files_paths if p.startswith(("vms/", "cts/"))]
            where = (shown or vol.files_paths or [vol.path])[0]
            shown = ", ".join(names)
            more = f" and {total - len(names)} more" if total > len(names) else ""
            ctx.report.add("error", fs.info.fstype, where, "files-damaged",
                           f"{total} files or directories lie on unreadable bytes: "
                           f"{shown}{more}", ranges)


def discover(inputs: Iterable[str], options: Options | None = None,
             progress: Progress | None = None) -> Context:
    """Open every input, stack every layer, return the finished :class:`Context`."""
    ctx = Context(options)
    ctx.progress = progress
    reported = load_errors()
    for name, err in reported:
        ctx.report.add("warning", "core", f"backends/{name}", "backend-unavailable",
                       f"backend {name} could not be loaded: {err}")
    inputs = list(inputs)
    if ctx.indexes.enabled:
        from .parallel import warm

        warm(ctx, inputs, ctx.options.jobs)  # workers index independent inputs first
    for path in inputs:
        ctx.note_progress(f"opening {path}")
        add_input(ctx, path)
    if not any(os.path.isdir(p) for p in inputs):  # a folder's files may change unseen
        ctx.probes.open()
    run_queue(ctx)
    from .treestorage import scan_tree_storages

    for _ in range(4):  # storages inside storages (a qcow2 on ZFS holding ZFS ...), bounded
        if not scan_tree_storages(ctx):
            break
        run_queue(ctx)
    finish_backends(ctx)
    run_queue(ctx)  # a finish hook may expose volumes
    # A backend's code is imported on first use (pvfs.backend.LazyBackend): one that
    # failed to import during this discovery is said here, before the report is built.
    for name, err in load_errors()[len(reported):]:
        ctx.report.add("warning", "core", f"backends/{name}", "backend-unavailable",
                       f"backend {name} could not be loaded: {err}")
    finish(ctx)
    ctx.probes.save()
    if ctx.cold_units:
        from .parallel import mark_warm

        for unit in ctx.cold_units:
            mark_warm(ctx.indexes.root, unit, ctx.options)
    return ctx
