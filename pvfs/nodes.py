"""The node tree that is mounted: directories, files, symlinks, special files.

Nodes know nothing about FUSE; ``mountd`` turns them into inodes.  A node
object is one inode: a hard link is the same node placed in two
directories.  Directories may be lazy: ``loader`` is called once, on first
listing, to fill the children (large ZFS or pxar directories).

A directory may also take its entries from an :class:`InodeSpace` (``Dir.use_space``):
the backend's own numbering of a file system's objects (a ZFS object set's object
numbers).  Such entries are not kept: each listing or lookup asks the backend, which
builds the node when asked and may drop it after, so a mount that lists a million files
keeps none of them (issue 15 item 5); the mount numbers their inodes from the keys, so
an inode stays the same across drop and rebuild and a hard link is one inode.
"""

from __future__ import annotations

import contextlib
import gc
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from .source import Source

if TYPE_CHECKING:
    from .damage import DamageReport

_START_TIME = time.time()


class Timestamp(float):
    """Seconds since the epoch as a float that also keeps the exact nanoseconds.

    A float has about 16 significant digits, so ``sec + nsec / 1e9`` loses the
    last few hundred nanoseconds of a 2020s date; backends that know exact
    times (ZFS znodes, pxar entries) build a Timestamp, and the mount reports
    ``ns`` unchanged.  Everything else sees an ordinary float.
    """

    __slots__ = ("ns",)

    def __new__(cls, sec: int, nsec: int = 0) -> Timestamp:
        ns = int(sec) * 1_000_000_000 + int(nsec)
        obj = super().__new__(cls, ns / 1e9)
        obj.ns = ns
        return obj

    @classmethod
    def from_ns(cls, ns: int) -> Timestamp:
        return cls(0, ns)


def time_ns(t: float) -> int:
    """Nanoseconds of a node time (exact for a :class:`Timestamp`)."""
    ns = getattr(t, "ns", None)
    return ns if ns is not None else int(round(t * 1e9))


def _stored_time(t: float) -> float | int:
    """What a node keeps of a time: a :class:`Timestamp` as its int nanoseconds (one
    int instead of a float subclass with an int slot: 32 instead of 88 bytes), any other
    number as a float."""
    ns = getattr(t, "ns", None)
    return ns if ns is not None else float(t)


def _loaded_time(v: float | int) -> float:
    return Timestamp.from_ns(v) if type(v) is int else v


class Node:
    """One inode.  ``__slots__`` (and a ``__dict__``, made only when a backend sets an
    attribute of its own, such as FAT's ``fat_extents``) and times kept as int
    nanoseconds: a pool of a million listed files keeps a million nodes (issue 15
    item 5)."""

    __slots__ = ("mode", "_atime", "_mtime", "_ctime", "uid", "gid", "_xattrs", "nlink",
                 "rdev", "__dict__", "__weakref__")
    kind = "node"

    def __init__(self, mode: int, mtime: float | None = None, uid: int = 0, gid: int = 0, atime: float | None = None, ctime: float | None = None) -> None:
        self.mode = mode
        m = self._mtime = _stored_time(_START_TIME if mtime is None else mtime)
        self._atime = m if atime is None else _stored_time(atime)
        self._ctime = m if ctime is None else _stored_time(ctime)
        self.uid = uid
        self.gid = gid
        self._xattrs: dict[bytes, bytes] | None = None
        self.nlink = 1
        self.rdev = 0

    # Times read as floats (a Timestamp when the nanoseconds are known); *_ns for the mount.
    @property
    def mtime(self) -> float:
        return _loaded_time(self._mtime)

    @mtime.setter
    def mtime(self, t: float) -> None:
        self._mtime = _stored_time(t)

    @property
    def atime(self) -> float:
        return _loaded_time(self._atime)

    @atime.setter
    def atime(self, t: float) -> None:
        self._atime = _stored_time(t)

    @property
    def ctime(self) -> float:
        return _loaded_time(self._ctime)

    @ctime.setter
    def ctime(self, t: float) -> None:
        self._ctime = _stored_time(t)

    def times_ns(self) -> tuple[int, int, int]:
        """``(atime, mtime, ctime)`` in nanoseconds (exact when stored so)."""
        return tuple(v if type(v) is int else int(round(v * 1e9))
                     for v in (self._atime, self._mtime, self._ctime))

    @property
    def xattrs(self) -> dict[bytes, bytes]:
        """Extended attributes; the dict is made on first use (most nodes have none).

        A backend may set a dict subclass that reads the rest of the set from the image on
        first use (a ZFS xattr directory): it then has a ``pending`` attribute, true until
        that read happened, and the mount reads it in a worker thread."""
        x = self._xattrs
        if x is None:
            x = self._xattrs = {}
        return x

    @xattrs.setter
    def xattrs(self, value: dict[bytes, bytes]) -> None:
        self._xattrs = value

    def xattr_names(self) -> list[bytes]:
        return list(self._xattrs) if self._xattrs else []

    @property
    def size(self) -> int:
        return 0

    def allocated_bytes(self) -> int:
        return 0


class Listing(Sequence):
    """The entries of one directory of an :class:`InodeSpace`, compactly: names and keys
    side by side (a list of str and an array of ints, no node or tuple per entry), and
    when the directory says so, each entry's file type (``stat.S_IFMT`` bits >> 12, the
    ``DT_*`` value; 0: unknown), which lets the mount answer a listing without building
    the entries' nodes.  ``names`` is any sequence the mount can index and iterate (a
    backend may make names on demand, as the Ceph ``.osd/`` view does; such a listing
    says its own :attr:`cache_cost`)."""

    __slots__ = ("names", "keys", "types")

    def __init__(self, names: Sequence[str], keys: Sequence[int],
                 types: Sequence[int] | None = None) -> None:
        self.names = names
        self.keys = keys
        self.types = types

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> tuple[str, int]:  # type: ignore[override]
        return self.names[i], self.keys[i]

    @property
    def cache_cost(self) -> int:
        """Bytes, for :class:`pvfs.cache.ByteLRU` (a str is ~50 bytes plus its text)."""
        return 128 + sum(map(len, self.names)) + len(self.names) * (58 + 8 + 1)


class InodeSpace:
    """A backend's own numbering of the objects of one file system, for directories whose
    entries are not kept (``Dir.use_space``).

    Keys are ints below ``2**48`` (a ZFS object number), one per object: two names of
    one object (a hard link) have one key.  Directory keys are only ever handed to
    :meth:`entries` and :meth:`lookup`; the directories themselves are ordinary, kept
    :class:`Dir` nodes, so only files, symlinks and special files come and go.  The mount
    numbers the inode of such an entry from its key: after the node is dropped and built
    again it has the same inode and attributes.  Every method may read the image (call
    them off the event loop); each reports damage itself and returns None or skips the
    entry instead of raising, except :meth:`entries` for an unreadable directory.
    """

    def entries(self, key: int) -> Listing:
        """The entries of directory ``key`` (in the file system's own order)."""
        raise NotImplementedError

    def lookup(self, key: int, name: str) -> int | None:
        """The key of ``name`` in directory ``key`` (None: no such entry)."""
        raise NotImplementedError

    def child(self, key: int, name: str, child: int) -> Node | None:
        """The node of entry ``name`` (key ``child``) of directory ``key`` (None: it is
        broken and reported).  A directory's node is the same object each time."""
        raise NotImplementedError

    def node(self, key: int, nowait: bool = False) -> Node | None:
        """The node of ``key`` met by number only (the kernel still holds its inode).
        ``nowait``: raise :class:`pvfs.source.WouldBlock` instead of waiting for I/O (the
        mount asks first on its event loop, then from a worker thread)."""
        raise NotImplementedError

    def path(self, key: int) -> str:
        """The tree path of ``key``, for messages (may cost a directory search)."""
        raise NotImplementedError

    def prefetch(self, keys: Sequence[int]) -> None:
        """A hint: the nodes or attributes of these keys will be asked for soon (a walk
        that stats); start reading what they need in the background, do not wait."""

    def stat(self, key: int) -> tuple | None:
        """The attributes of file ``key`` without building its node, for listings the
        mount answers with full attributes (a walk that stats every file): ``(mode,
        nlink, uid, gid, size, allocated bytes, atime_ns, mtime_ns, ctime_ns)`` of a
        regular file, exactly what its node would give, or None: the mount builds the node
        (any other kind, a file with extended attributes, an object that is not plain or
        not readable: the node's building reports it).  A file answered here has no
        extended attributes: the mount answers its getxattr ENODATA and its listxattr
        empty without building its node (``ls -l`` asks one per file).  May read the
        image (worker thread)."""
        return None

    def xattr_supported(self, name: bytes) -> bool:
        """Whether this file system has extended attribute ``name`` at all, for every
        object of the space and its directories.  False: the mount answers getxattr
        with EOPNOTSUPP and leaves the name out of listxattr, as the file system's own
        kernel driver does for a namespace turned off (a ZFS dataset's ``acltype=off``:
        ``system.posix_acl_*``; ``xattr=off``: ``user.*``).  Asked on the event loop for
        every getxattr (``ls -l`` asks two per file): answer from memory."""
        return True


class Dir(Node):
    __slots__ = ("_children", "filesystem_root", "_loader", "_loading", "_lock", "space",
                 "key")
    kind = "dir"

    def __init__(self, mode: int = 0o555, loader: Callable[[Dir], None] | None = None, **kw: Any) -> None:
        super().__init__(stat.S_IFDIR | (mode & 0o7777), **kw)
        self._children: dict[str, Node] = {}
        #: The root of a recovered file system (a ZFS dataset): pvfs/treestorage.py looks
        #: for Proxmox storages (/var/lib/vz, PBS datastores) below such directories.
        self.filesystem_root = False
        self._loader = loader
        self._loading = False
        self._lock = threading.RLock()
        #: Where the entries that are not kept come from (see :meth:`use_space`).
        self.space: InodeSpace | None = None
        self.key = 0

    def use_space(self, space: InodeSpace, key: int) -> None:
        """Take the entries of directory ``key`` of ``space`` besides the kept ones
        (which win on a name both have: a child dataset mounted on its mount point)."""
        self.space = space
        self.key = key

    def _load(self) -> None:
        if self._loader is not None:
            with self._lock:  # an RLock: the loader itself may look at this directory
                loader = self._loader
                if loader is not None and not self._loading:
                    self._loading = True
                    try:
                        loader(self)
                    finally:
                        self._loader = None
                        self._loading = False

    def children(self) -> dict:
        """The entries, filled by the loader on first use.

        Other threads asking while the loader runs wait for it to finish (they
        must not see a half-filled directory).  A loader that fails leaves
        what it added and is not retried.  Entries of an :class:`InodeSpace` are
        built for this call (sorted by name) and not kept.
        """
        self._load()
        space = self.space
        if space is None:
            return self._children
        out = dict(self._children)
        listing = space.entries(self.key)
        for name, child in sorted(zip(listing.names, listing.keys, strict=True)):
            if name not in out:
                node = space.child(self.key, name, child)
                if node is not None:
                    out[name] = node
        return out

    def kept(self) -> dict[str, Node]:
        """The entries the directory keeps (after its loader ran), without the space's."""
        self._load()
        return self._children

    @property
    def loaded(self) -> bool:
        """Whether listing costs nothing (no loader left to run, no space to ask)."""
        return self._loader is None and self.space is None

    def get(self, name: str) -> Node | None:
        node = self.kept().get(name)
        space = self.space
        if node is None and space is not None:
            child = space.lookup(self.key, name)
            if child is not None:
                node = space.child(self.key, name, child)
        return node

    def add(self, name: str, node: Node, report: DamageReport | None = None, layer: str = "core", path_hint: str = "") -> str:
        """Add ``node`` under ``name``; a clashing name gets ``~2``, ``~3`` ...

        Returns the name used.  A renamed entry is reported (nothing is
        silently hidden).
        """
        name = sanitize_name(name)
        chosen = name
        n = 2
        while chosen in self._children:
            stem, dot, ext = name.partition(".") if not isinstance(node, Dir) else (name, "", "")
            chosen = f"{stem}~{n}{dot}{ext}"
            n += 1
        self._children[chosen] = node
        if chosen != name and report is not None:
            where = f"{path_hint}/{chosen}" if path_hint else chosen
            report.add("info", layer, where, "name-clash",
                       f"name {name!r} was taken; this entry is shown as {chosen!r}")
        return chosen

    def subdir(self, name: str, **kw: Any) -> Dir:
        """The child directory ``name``, created if missing."""
        node = self._children.get(name)
        if isinstance(node, Dir):
            return node
        node = Dir(**kw)
        self.add(name, node)
        return node


class File(Node):
    __slots__ = ("source", "_allocated")
    kind = "file"

    def __init__(self, source: Source, mode: int = 0o444, **kw: Any) -> None:
        super().__init__(stat.S_IFREG | (mode & 0o7777), **kw)
        self.source = source
        self._allocated = None

    @property
    def size(self) -> int:
        return self.source.size

    def allocated_bytes(self) -> int:
        if self._allocated is None:
            try:
                self._allocated = self.source.allocated_bytes()
            except Exception:
                self._allocated = self.source.size
        return self._allocated


class GeneratedFile(Node):
    """A small file whose text is made from the tree's state (README.txt, report.json).

    ``render()`` makes the bytes; ``version()`` says when they may have changed (the
    damage report's length: entries are only ever appended).  The text is rendered
    once per version and kept, so ``stat`` does not render it again; the mount
    calls :meth:`content` in a worker thread when :attr:`stale`.
    """

    __slots__ = ("render", "version", "_cached", "_lock")
    kind = "generated"

    def __init__(self, render: Callable[[], bytes], mode: int = 0o444,
                 version: Callable[[], object] | None = None, **kw: Any) -> None:
        super().__init__(stat.S_IFREG | (mode & 0o7777), **kw)
        self.render = render
        self.version = version
        self._cached: tuple[object, bytes] | None = None
        self._lock = threading.Lock()

    @property
    def stale(self) -> bool:
        c = self._cached
        return c is None or self.version is None or c[0] != self.version()

    def content(self) -> bytes:
        with self._lock:
            if self.version is None:
                return self.render()
            v = self.version()
            if self._cached is None or self._cached[0] != v:
                self._cached = (v, self.render())
            return self._cached[1]

    @property
    def size(self) -> int:
        return len(self.content())

    def allocated_bytes(self) -> int:
        return self.size


class Symlink(Node):
    __slots__ = ("target",)
    kind = "symlink"

    def __init__(self, target: bytes | str, **kw: Any) -> None:
        super().__init__(stat.S_IFLNK | 0o777, **kw)
        self.target = target.encode() if isinstance(target, str) else target

    @property
    def size(self) -> int:
        return len(self.target)


class Special(Node):
    """Device node, fifo or socket: shown with its type, never opened."""

    __slots__ = ()
    kind = "special"

    def __init__(self, mode: int, rdev: int = 0, **kw: Any) -> None:
        super().__init__(mode, **kw)
        self.rdev = rdev


_gc_lock = threading.Lock()
_gc_users = 0
_gc_was_enabled = True


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a directory is loaded.

    A listing makes tens of thousands of short-lived objects and no cycles, and the
    collections they trigger walk the whole, growing node tree (measured by the ext4
    and btrfs readers: 20,000 entries 0.45 s instead of 0.78 s of CPU).  One pause is
    shared by nested and concurrent loaders of every filesystem; the collector is back
    on when the last one ends."""
    global _gc_users, _gc_was_enabled
    with _gc_lock:
        _gc_users += 1
        if _gc_users == 1:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
    try:
        yield
    finally:
        with _gc_lock:
            _gc_users -= 1
            if _gc_users == 0 and _gc_was_enabled:
                gc.enable()


def sanitize_name(name: str) -> str:
    """A name that is valid as one path component."""
    name = name.replace("/", "_").replace("\0", "_")
    if name in ("", ".", ".."):
        name = name.replace(".", "_") or "_"
    return name


def walk(node: Node, path: str = "") -> Iterator[tuple[str, Node]]:
    """Yield ``(path, node)`` for every node below ``node`` (loads lazy dirs)."""
    yield path, node
    if isinstance(node, Dir):
        for name, child in node.children().items():
            yield from walk(child, f"{path}/{name}" if path else name)


def resolve(root: Dir, path: str) -> Node | None:
    node = root
    for part in [p for p in path.split("/") if p]:
        if not isinstance(node, Dir):
            return None
        node = node.get(part)
        if node is None:
            return None
    return node
