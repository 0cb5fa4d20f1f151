"""pyfuse3 operations over a :class:`pvfs.nodes.Dir` tree, read-only.

Every handler goes through :func:`handler`: blocking work (lazy directory
loading, reads, allocation maps) runs in a fixed set of worker threads
(:class:`Workers`), and any exception other than ``FUSEError`` becomes EIO plus a damage
entry, because pyfuse3 ends the session on anything it does not expect.
Inode numbers are handed out once per node object and never reused, so they
stay stable for the life of the mount; the tree never changes, hence long
kernel cache timeouts and ``keep_cache``.  Entries of a directory that takes them
from an :class:`pvfs.nodes.InodeSpace` (a ZFS dataset) are numbered from the space and
their key instead (``space index << 48 | key``) and not kept: the daemon holds a few
thousand of their nodes for the kernel's next ``getattr``/``open`` and forgets one when
the kernel does (FUSE ``forget``), and builds it again from its key when asked.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import queue
import stat
import threading
from array import array
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import outcome
import pyfuse3
import trio

from pvfs.errors import UnreadableError
from pvfs.nodes import Dir, File, GeneratedFile, InodeSpace, Listing, Node, Symlink
from pvfs.source import WouldBlock

from . import session

if TYPE_CHECKING:
    from pvfs.damage import DamageReport

log = logging.getLogger("pvfs.mountd")

TIMEOUT = 3600.0  # the tree is immutable
GENERATED_TIMEOUT = 1.0  # README.txt / report.json change as damage is found
#: Directory prefetch (see PvfsOperations._walk_prefetch): at most this many sibling
#: directories are queued per walked parent, and the last this many opened directories
#: are remembered to recognise a walk.
PREFETCH_SIBLINGS = 256
RECENT_DIRS = 256
#: Reply buffers of reads into buffers (see PvfsOperations.read): the size of one (the
#: kernel asks for at most max_pages = 256 pages, 1 MiB, per request) and how many idle
#: ones are kept.
READ_BUFFER = 1 << 20
IDLE_READ_BUFFERS = 4
#: Prefetch ahead of a sequential reader (see PvfsOperations._follow): once SEQUENTIAL_READS
#: requests in a row have followed each other (within SEQUENTIAL_SLACK: the kernel's
#: read-ahead requests may arrive a little out of order), the file ranges under the next
#: PREFETCH_BYTES are asked of the kernel, again each time the reader has used half.
SEQUENTIAL_READS = 2
SEQUENTIAL_SLACK = 4 << 20
PREFETCH_BYTES = 16 << 20
DT_DIR = stat.S_IFDIR >> 12
#: Inodes of InodeSpace entries: the space's index above KEY_BITS, its key below.
KEY_BITS = 48
KEY_MASK = (1 << KEY_BITS) - 1
MAX_SPACES = (1 << 15) - 1  # inode numbers stay below 2**63 (signed in some tools)
#: Nodes of InodeSpace entries kept for the kernel's next request about them (getattr,
#: open, readlink); one is built again from its key when it is not here.
#: (PVFS_NODE_CACHE: the tests make it small, to see what happens past it.)
NODE_CACHE = int(os.environ.get("PVFS_NODE_CACHE", "8192"))
#: Entries of an InodeSpace directory made (node, attributes) per worker-thread hop,
#: and how many entries from there on the space is asked to read ahead
#: (InodeSpace.prefetch) when they are made with full attributes.
READDIR_BATCH = 128
PREFETCH_AHEAD = 4 * READDIR_BATCH
#: Listings opened last: a request about a dropped inode of one of them means the
#: lister stats what it lists (``ls -l``, ``os.walk`` + ``lstat``): that listing answers
#: the rest with full attributes, and the nodes of the next READDIR_BATCH entries are
#: built at once in a worker thread (stat-ahead) instead of one thread hop per file.
RECENT_LISTINGS = 4
#: After such a request, the next this many listings are answered with full attributes
#: from their start (a walk that stats: ``os.walk`` lists a whole directory before its
#: ``lstat`` calls, ``du``, ``rsync``); the one after is type-only again, a probe: a walk
#: that lists names only (``find``) is back to type-only, one that stats stays full.
STAT_WALK_LISTINGS = 16


class _HeldBits:
    """Which keys of one space the kernel holds with full attributes (from a lookup, a
    getattr or a full readdir entry, until it forgets the inode): one bit per key, so
    flat in the number of files (a dataset of a million objects: 128 KiB); keys beyond
    MAX_BITS (damaged numbers) go to a set."""

    MAX_BITS = 1 << 27

    __slots__ = ("bits", "big")

    def __init__(self) -> None:
        self.bits = bytearray()
        self.big: set[int] = set()

    def __contains__(self, key: int) -> bool:
        if key >= self.MAX_BITS:
            return key in self.big
        i = key >> 3
        return i < len(self.bits) and bool(self.bits[i] >> (key & 7) & 1)

    def add(self, key: int) -> None:
        if key >= self.MAX_BITS:
            self.big.add(key)
            return
        i = key >> 3
        if i >= len(self.bits):
            self.bits.extend(bytes(max(i + 1, 2 * len(self.bits)) - len(self.bits)))
        self.bits[i] |= 1 << (key & 7)

    def discard(self, key: int) -> None:
        if key >= self.MAX_BITS:
            self.big.discard(key)
        elif (key >> 3) < len(self.bits):
            self.bits[key >> 3] &= ~(1 << (key & 7)) & 0xFF


class _SpaceListing:
    """An open directory whose entries come from an InodeSpace: its kept entries, the
    space's compact listing, the last batch of made entries (the kernel's buffer may take
    only part of it), and whether its entries are answered with full attributes."""

    __slots__ = ("dir", "kept", "listing", "batch", "full")

    def __init__(self, d: Dir, kept: list[tuple[str, Node]], listing: Listing) -> None:
        self.dir = d
        self.kept = kept
        self.listing = listing
        self.batch: list[tuple[int, str, Node | None, int, Any]] = []
        self.full = listing.types is None


class Workers:
    """``threads`` worker threads for the blocking work of handlers, started on first use.

    ``trio.to_thread.run_sync`` costs about as much per call as a ZFS record's read: per
    job it renames the OS thread twice (ctypes), goes through a capacity limiter and the
    thread cache.  Here a job is a queue entry; its thread hands the result back with one
    ``run_sync_soon`` (the loop's wake-up).  A task cancelled while its job runs (unmount
    with a read stuck in a backend) is abandoned: the thread finishes alone and its
    result is dropped; the threads are daemons and do not keep the process alive.
    """

    def __init__(self, threads: int) -> None:
        if threads < 1:  # no thread would park every read forever
            raise ValueError(f"threads must be 1 or more, not {threads}")
        self.threads = threads
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._started = 0
        self.jobs = 0  # handed to the threads so far (tests count thread hops)
        self.submitted = 0  # fire-and-forget jobs (prefetch)

    def _start(self) -> None:
        while self._started < self.threads:
            self._started += 1
            threading.Thread(target=self._work, name=f"pvfs-worker-{self._started}",
                             daemon=True).start()

    def _work(self) -> None:
        while True:
            fn, args, deliver = self._jobs.get()
            deliver(outcome.capture(fn, *args))
            del fn, args, deliver

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` in a worker thread and forget it (its result and errors are
        dropped): work nobody waits for, such as a prefetch.  Not counted in ``jobs``."""
        if self._started < self.threads:
            self._start()
        self._jobs.put((fn, args, _dropped))
        self.submitted += 1

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._started < self.threads:
            self._start()
        task = trio.lowlevel.current_task()
        token = trio.lowlevel.current_trio_token()
        abandoned = False

        def resume(result: outcome.Outcome) -> None:
            if not abandoned:
                trio.lowlevel.reschedule(task, result)

        def deliver(result: outcome.Outcome) -> None:
            try:
                token.run_sync_soon(resume, result)
            except trio.RunFinishedError:  # the loop ended (unmounted) meanwhile
                pass

        def abort(_: Any) -> trio.lowlevel.Abort:
            nonlocal abandoned
            abandoned = True
            return trio.lowlevel.Abort.SUCCEEDED

        self._jobs.put((fn, args, deliver))
        self.jobs += 1
        session.handoff()  # the FUSE fd is watched by another task meanwhile
        return await trio.lowlevel.wait_task_rescheduled(abort)


def _dropped(result: outcome.Outcome) -> None:
    """What becomes of a :meth:`Workers.submit` job's result: nothing."""


class _Stream:
    """What the reads of one open file have looked like (see PvfsOperations._follow)."""

    __slots__ = ("end", "run", "ahead")

    def __init__(self) -> None:
        self.end = -1 << 62  # end of the furthest read so far (none yet)
        self.run = 0  # requests in a row that followed the previous ones
        self.ahead = 0  # prefetch asked up to here


def handler(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """The one wrapper of every handler: FUSEError passes, anything else is EIO."""

    @functools.wraps(fn)
    async def wrapper(self: PvfsOperations, *args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(self, *args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except UnreadableError as e:
            self.note_error(fn.__name__, args, e, "unreadable")
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception as e:  # noqa: BLE001 - the mount must never die
            log.exception("handler %s failed", fn.__name__)
            self.note_error(fn.__name__, args, e, "handler-error")
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


class PvfsOperations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, root: Dir, report: DamageReport | None = None, threads: int = 8) -> None:
        super().__init__()
        self.report = report
        self.workers = Workers(threads)
        self._lock = threading.Lock()
        # Per inode handed out: (node, parent inode, name), the name being the string the
        # parent directory holds; paths are made from these when asked (error entries).
        # The kernel may look up every file of a pool: no path strings, no lookup counts
        # (nodes stay in their directories, so forgetting would free next to nothing).
        self._entries: dict[int, tuple[Node, int, str]] = {
            pyfuse3.ROOT_INODE: (root, pyfuse3.ROOT_INODE, "")}
        self._inos: dict[int, int] = {id(root): pyfuse3.ROOT_INODE}
        self._next_ino = pyfuse3.ROOT_INODE + 1
        # InodeSpace entries: the spaces by index (spaces live as long as their kept
        # directories, so their id() is stable), and the nodes the kernel asked about last.
        self._spaces: list[InodeSpace | None] = [None]
        self._held: list[_HeldBits] = [_HeldBits()]
        # keys answered from InodeSpace.stat: files without extended attributes (for the
        # life of the mount: the image does not change)
        self._bare: list[_HeldBits] = [_HeldBits()]
        self._space_index: dict[int, int] = {}
        self._keyed: OrderedDict[int, Node] = OrderedDict()
        self._listings: deque[_SpaceListing] = deque(maxlen=RECENT_LISTINGS)
        self._full_listings = 0
        self._handles: dict[int, tuple] = {}
        self._streams: dict[int, _Stream] = {}  # per open file handle, once read
        self.prefetches = 0  # prefetch jobs handed to the worker threads
        self._next_fh = 1
        self._recent_dirs: OrderedDict[int, None] = OrderedDict()
        self._prefetched: set[int] = set()  # parents whose subdirectories were queued
        self._prefetch_queue: deque[Dir] = deque()
        self._prefetch_thread: threading.Thread | None = None
        self._buffers: list[memoryview] = []  # idle reply buffers (used in the trio thread)
        self.inline_reads = 0  # reads answered from the page cache without a thread
        self.uid = os.getuid()
        self.gid = os.getgid()

    # -- bookkeeping -----------------------------------------------------------
    def _ino(self, node: Node, parent_ino: int, name: str) -> int:
        """The inode of ``node``, first met as ``name`` in directory ``parent_ino``
        (a hard link keeps the inode and the path it was first met at)."""
        ino = self._inos.get(id(node))
        if ino is not None:
            return ino
        with self._lock:
            ino = self._inos.get(id(node))
            if ino is None:
                ino = self._next_ino
                self._next_ino += 1
                self._inos[id(node)] = ino
                self._entries[ino] = (node, parent_ino, name)
            return ino

    def _space_ino(self, space: InodeSpace, key: int) -> int | None:
        """The inode of entry ``key`` of ``space`` (None: too many spaces, or a key that
        does not fit: the entry is then numbered and kept as any node)."""
        if not 0 < key <= KEY_MASK:
            return None
        idx = self._space_index.get(id(space))
        if idx is None:
            with self._lock:
                idx = self._space_index.get(id(space))
                if idx is None:
                    if len(self._spaces) > MAX_SPACES:
                        return None
                    idx = len(self._spaces)
                    self._held.append(_HeldBits())
                    self._bare.append(_HeldBits())
                    self._spaces.append(space)
                    self._space_index[id(space)] = idx
        return idx << KEY_BITS | key

    def _child_ino(self, parent: Dir, parent_ino: int, name: str, node: Node,
                   key: int | None) -> int:
        """The inode of ``node``, entry ``name`` of ``parent``; ``key``: its key when it
        is an entry of the parent's space (directories are kept nodes: numbered as any)."""
        if key is not None and parent.space is not None and not isinstance(node, Dir):
            ino = self._space_ino(parent.space, key)
            if ino is not None:
                return ino
        return self._ino(node, parent_ino, name)

    def _remember(self, ino: int, node: Node, held: bool = True) -> None:
        """Keep the node of a space inode for the kernel's next request; ``held``: the
        kernel now holds the inode with full attributes (event loop only)."""
        if ino >> KEY_BITS:
            if held:
                self._held[ino >> KEY_BITS].add(ino & KEY_MASK)
            cache = self._keyed
            cache[ino] = node
            cache.move_to_end(ino)
            if len(cache) > NODE_CACHE:
                cache.popitem(last=False)

    def _node(self, ino: int) -> Node:
        entry = self._entries.get(ino)
        if entry is None:
            node = self._keyed.get(ino)
            if node is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return node
        return entry[0]

    async def _get(self, ino: int) -> Node:
        """The node of ``ino``; a space inode's is built again from its key if dropped."""
        entry = self._entries.get(ino)
        if entry is not None:
            return entry[0]
        node = self._keyed.get(ino)
        if node is not None:
            self._keyed.move_to_end(ino)
            return node
        idx = ino >> KEY_BITS
        space = self._spaces[idx] if 0 < idx < len(self._spaces) else None
        if space is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        key = ino & KEY_MASK
        for h in reversed(self._listings):  # the newest first: the lister's own
            j = _index(h.listing.keys, key) if h.dir.space is space else -1
            if j >= 0:
                for other in self._listings:
                    if other.dir is h.dir:  # (an older listing of it may still be read)
                        other.full = True
                self._full_listings = STAT_WALK_LISTINGS
                ahead = await self._run(self._stat_ahead, h, j)
                for other, n in ahead:
                    self._remember(other, n, held=False)
                node = self._keyed.get(ino)
                if node is not None:
                    return node
                break
        try:  # inline when the space has what it needs in memory: no thread hop
            node = space.node(key, True)
        except WouldBlock:
            node = await self._run(space.node, key)
        if node is None:  # broken since it was listed: reported by the space
            raise pyfuse3.FUSEError(errno.EIO)
        self._remember(ino, node, held=False)
        return node

    def _stat_ahead(self, h: _SpaceListing, j: int) -> list[tuple[int, Node]]:
        """``(inode, node)`` of the files of ``h``'s listing from index ``j`` on, up to
        READDIR_BATCH of them (worker thread)."""
        d, listing = h.dir, h.listing
        space = d.space
        assert space is not None
        types = listing.types
        space.prefetch(listing.keys[j:j + PREFETCH_AHEAD])
        out = []
        for k in range(j, min(j + READDIR_BATCH, len(listing))):
            if types is not None and types[k] == DT_DIR or listing.names[k] in d._children:
                continue
            key = listing.keys[k]
            ino = self._space_ino(space, key)
            if ino is None or ino in self._keyed:
                continue
            node = space.child(d.key, listing.names[k], key)
            if node is not None and not isinstance(node, Dir):
                out.append((ino, node))
        return out

    def _parent(self, ino: int) -> int | None:
        entry = self._entries.get(ino)
        return None if entry is None else entry[1]

    def path_of(self, ino: int) -> str | None:
        entry = self._entries.get(ino)
        if entry is None:
            idx = ino >> KEY_BITS
            if 0 < idx < len(self._spaces):
                space = self._spaces[idx]
                if space is not None:
                    return space.path(ino & KEY_MASK)
            return f"<inode {ino}>"
        names = []
        while ino != pyfuse3.ROOT_INODE and entry is not None and len(names) < 4096:
            names.append(entry[2])
            ino = entry[1]
            entry = self._entries.get(ino)
        return "/".join(reversed(names))

    def note_error(self, op: str, args: tuple, exc: BaseException, code: str) -> None:
        if self.report is None:
            return
        ino = args[0] if args and isinstance(args[0], int) else None
        path = self.path_of(ino) if ino is not None else "?"
        if op == "read" and ino in self._handles:
            path = self.path_of(self._handles[ino][0])
        ranges = getattr(exc, "ranges", None) or []
        self.report.add("error", "mount", path or "/", code,
                        f"{op}: {type(exc).__name__}: {exc}", ranges)

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        # At unmount (SIGTERM) a read stuck in a backend is left to its thread instead of
        # keeping the daemon alive; the process exits around it (see Workers).
        return await self.workers.run(fn, *args)

    def _attrs(self, node: Node, ino: int) -> pyfuse3.EntryAttributes:
        return _full_attrs(
            ino, GENERATED_TIMEOUT if isinstance(node, GeneratedFile) else TIMEOUT,
            node.mode, node.nlink if not isinstance(node, Dir) else max(2, node.nlink),
            node.uid, node.gid, node.rdev, node.size, node.allocated_bytes(),
            *node.times_ns())

    async def _attrs_async(self, node: Node, ino: int) -> pyfuse3.EntryAttributes:
        if isinstance(node, GeneratedFile) and node.stale:
            await self._run(node.content)  # render report.json off the event loop, once
        if isinstance(node, File) and node._allocated is None \
                and not node.source.cheap_allocation:
            return await self._run(self._attrs, node, ino)  # may walk an allocation map
        return self._attrs(node, ino)

    # -- handlers ------------------------------------------------------------------
    @handler
    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.EntryAttributes:
        parent = await self._get(parent_inode)
        if not isinstance(parent, Dir):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        name_s = os.fsdecode(name)
        if name_s == ".":
            node, ino = parent, parent_inode
        elif name_s == "..":
            ino = self._parent(parent_inode) or pyfuse3.ROOT_INODE
            node = self._node(ino)
        elif parent.space is not None:
            node, key = await self._run(_space_lookup, parent, name_s)
            if node is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            ino = self._child_ino(parent, parent_inode, name_s, node, key)
            self._remember(ino, node)
        else:
            children = parent.children() if parent.loaded else await self._run(parent.children)
            node = children.get(name_s)
            if node is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            ino = self._ino(node, parent_inode, name_s)
        return await self._attrs_async(node, ino)

    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        """The kernel evicted these inodes (it sends their whole lookup count at once).
        A space inode's node is dropped (built again from its key if the kernel asks
        about it later); every other inode stays: its node is kept by its directory,
        and its number is stable for the life of the mount."""
        keyed = self._keyed
        held = self._held
        for ino, _nlookup in inode_list:
            if ino >> KEY_BITS:
                keyed.pop(ino, None)
                if ino >> KEY_BITS < len(held):
                    held[ino >> KEY_BITS].discard(ino & KEY_MASK)

    @handler
    async def getattr(self, inode: int,
                      ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.EntryAttributes:
        node = await self._get(inode)
        self._remember(inode, node)  # (marks it held with full attributes)
        return await self._attrs_async(node, inode)

    @handler
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EROFS)

    @handler
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        node = await self._get(inode)
        if not isinstance(node, Symlink):
            raise pyfuse3.FUSEError(errno.EINVAL)
        return node.target

    @handler
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = await self._get(inode)
        if not isinstance(node, Dir):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if node.space is not None:
            h = await self._run(_space_listing, node)
            if self._full_listings > 0:
                self._full_listings -= 1
                h.full = True
            self._listings.append(h)
            entries: object = h
        else:
            children = node.children() if node.loaded else await self._run(node.children)
            entries = list(children.items())
        fh = self._new_handle((inode, entries))
        self._walk_prefetch(inode)
        return fh

    # -- directory prefetch ----------------------------------------------------------
    def _walk_prefetch(self, inode: int) -> None:
        """A subdirectory of a directory listed a moment ago is being listed: a walk
        (``find``, ``ls -R``, ``os.walk``, ``rsync``).  Its unloaded sibling directories
        are loaded in a background thread meanwhile, so the walk's next ``opendir`` is
        answered at once instead of decoding the directory (a ZFS ZAP and a dnode per
        entry) in a worker thread while the walker waits.  Bounded: siblings of one
        parent are queued once, at most PREFETCH_SIBLINGS of them."""
        recent = self._recent_dirs
        recent[inode] = None
        recent.move_to_end(inode)
        while len(recent) > RECENT_DIRS:
            recent.popitem(last=False)
        parent_ino = self._parent(inode)
        if parent_ino is None or parent_ino == inode or parent_ino not in recent \
                or parent_ino in self._prefetched:
            return
        self._prefetched.add(parent_ino)
        parent = self._entries[parent_ino][0]
        if not isinstance(parent, Dir) or not parent.loaded:
            return
        todo = [c for c in parent.children().values() if isinstance(c, Dir) and not c.loaded]
        if not todo:
            return
        self._prefetch_queue.extend(todo[:PREFETCH_SIBLINGS])
        if self._prefetch_thread is None or not self._prefetch_thread.is_alive():
            self._prefetch_thread = threading.Thread(target=self._prefetch_run,
                                                     name="pvfs-prefetch", daemon=True)
            self._prefetch_thread.start()

    def _prefetch_run(self) -> None:
        queue = self._prefetch_queue
        while True:
            try:
                d = queue.popleft()
            except IndexError:
                return
            if d.loaded:
                continue
            try:
                d.children()  # damage found while loading is reported by the backend
            except Exception as e:  # noqa: BLE001 - reported as opendir would have
                log.exception("prefetch of a directory failed")
                ino = self._inos.get(id(d))
                self.note_error("opendir", (ino,) if ino is not None else (), e,
                                "handler-error")

    @handler
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        inode, entries = self._handles[fh]
        if isinstance(entries, _SpaceListing):
            return await self._readdir_space(inode, entries, start_id, token)
        for i in range(start_id, len(entries)):
            name, node = entries[i]
            ino = self._ino(node, inode, name)
            if isinstance(node, GeneratedFile) and node.stale:
                # README.txt, report.json, report.html: not rendered for a listing (the
                # first ``ls`` of a mount of a thousand guests waited ~0.3 s for them).
                # Inode and type only, expired at once: a stat asks getattr, which
                # renders; reads are direct_io and do not go by the size.
                attrs = _type_only_attrs(ino, node.mode, GENERATED_TIMEOUT)
            else:
                attrs = await self._attrs_async(node, ino)
            if not pyfuse3.readdir_reply(token, os.fsencode(name), attrs, i + 1):
                return

    async def _readdir_space(self, inode: int, h: _SpaceListing, start_id: int,
                             token: pyfuse3.ReaddirToken) -> None:
        """Entries from ``start_id`` on: kept ones first, then the space's listing.

        Readdirplus hands the kernel attributes with each entry.  When the listing
        knows the entry's type, a file's are its inode and type only, expired at once
        (``attr_timeout`` 0): ``ls``, ``find -type f`` and ``du``'s walk take them as
        they are, and a ``stat`` asks getattr, which builds the node.  When the lister
        does stat what it lists, the rest of the listing gets full attributes (nodes
        built READDIR_BATCH at a time in a worker thread), and so do the next
        STAT_WALK_LISTINGS listings; directories (kept nodes), entries whose node is at
        hand and inodes the kernel holds with full attributes always get them.  An
        entry whose object is broken is left out when its node is built, and answers
        EIO when asked by inode."""
        total = len(h.kept) + len(h.listing)
        i = start_id
        # one for every type-only entry: the reply copies it (fuse_add_direntry_plus)
        type_only = _type_only_attrs(0, 0, TIMEOUT)
        while i < total:
            batch = h.batch
            if not batch or not batch[0][0] <= i <= batch[-1][0]:
                batch = h.batch = self._batch(inode, h, i, build=False)  # no image read
                if not batch:
                    batch = h.batch = await self._run(self._batch, inode, h, i, True)
                if not batch:
                    return
            for idx, name, node, ino, attrs in batch:
                if idx < i:
                    continue
                if node is None:  # attrs: the DT_* type
                    type_only.st_ino = ino
                    type_only.st_mode = attrs << 12
                    attrs = type_only
                if not pyfuse3.readdir_reply(token, os.fsencode(name), attrs, idx + 1):
                    return
                if node is ATTRS_ONLY:  # held with full attributes; no node to keep
                    self._held[ino >> KEY_BITS].add(ino & KEY_MASK)
                    self._bare[ino >> KEY_BITS].add(ino & KEY_MASK)  # and no xattrs
                elif node is not None:
                    self._remember(ino, node)
                i = idx + 1
            i = max(i, batch[-1][0] + 1)

    def _batch(self, inode: int, h: _SpaceListing, start: int, build: bool
               ) -> list[tuple[int, str, Node | None, int, Any]]:
        """Up to READDIR_BATCH entries from index ``start``: ``(index, name, node,
        inode, attributes)``, or ``(index, name, None, inode, DT_* type)`` for a
        type-only entry.  Without ``build`` (on the event loop: no image read) it
        stops at the first entry that needs its node built; with it (a worker thread) it
        builds them, and leaves out the broken ones."""
        d, kept, listing = h.dir, h.kept, h.listing
        space = d.space
        assert space is not None
        types = None if h.full else listing.types
        if build and (h.full or types is None):  # the next entries' dnodes, in parallel
            j0 = max(0, start - len(kept))
            space.prefetch(listing.keys[j0:j0 + PREFETCH_AHEAD])
        keyed = self._keyed
        held = self._held[self._space_index.get(id(space), 0)]
        nk = len(kept)
        total = nk + len(listing)
        out: list[tuple[int, str, Node | None, int, Any]] = []
        i = start
        while i < total and len(out) < READDIR_BATCH:
            node: Node | None
            if i < nk:
                name, node = kept[i]
                key = None
                if not build and not isinstance(node, Dir):  # attributes may cost
                    break
            else:
                j = i - nk
                name, key = listing.names[j], listing.keys[j]
                if name in d._children:  # a kept entry of that name hides it
                    i += 1
                    continue
                dt = types[j] if types is not None else 0
                ino = self._space_ino(space, key) if dt not in (0, DT_DIR) else None
                node = keyed.get(ino) if ino is not None else None
                # type-only, unless the kernel holds the inode with full attributes: it
                # would take size 0 and truncate the file's cached pages (a read racing
                # with it could end early)
                if ino is not None and node is None and key not in held:
                    out.append((i, name, None, ino, dt))
                    i += 1
                    continue
                if node is None:
                    if not build:
                        break
                    if listing.types is None or listing.types[j] != DT_DIR:
                        # a regular file's attributes without its node (a walk that
                        # stats: ~2x cheaper per file); anything else builds the node
                        st = space.stat(key)
                        sino = self._space_ino(space, key) if st is not None else None
                        if sino is not None:
                            out.append((i, name, ATTRS_ONLY, sino, _stat_attrs(st, sino)))
                            i += 1
                            continue
                    node = space.child(d.key, name, key)
            if node is not None:
                ino = self._child_ino(d, inode, name, node, key)
                out.append((i, name, node, ino, self._attrs(node, ino)))
            i += 1
        return out

    @handler
    async def releasedir(self, fh: int) -> None:
        self._handles.pop(fh, None)

    @handler
    async def open(self, inode: int, flags: int,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = await self._get(inode)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        if isinstance(node, GeneratedFile):
            data = await self._run(node.content)
            fi = pyfuse3.FileInfo(fh=self._new_handle((inode, data)), direct_io=True,
                                  keep_cache=False)
            return fi
        if not isinstance(node, File):
            raise pyfuse3.FUSEError(errno.EINVAL if not stat.S_ISDIR(node.mode) else errno.EISDIR)
        damaged = getattr(node.source, "has_unreadable", False)
        return pyfuse3.FileInfo(fh=self._new_handle((inode, node.source)), keep_cache=not damaged,
                                direct_io=damaged)

    @handler
    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        inode, what = self._handles[fh]
        if isinstance(what, bytes):
            return what[off:off + size]
        if getattr(what, "maps_plain", False):
            self._follow(fh, what, off, size)
        try:
            if what.readinto_native:
                return await self._read_into(what, off, size)
            return await self._run(what.read, off, size)
        except UnreadableError as e:
            if self.report is not None:
                # e.ranges are in the coordinates of the layer that raised it (a qcow2
                # file's host offsets, an OSD's ...): the entry is about this file, so its
                # ranges are asked of this file's source (report.html draws them on it)
                ranges = [(off, size)]
                if getattr(what, "has_unreadable", False):  # mapped at scan: cheap to ask
                    try:
                        ranges = what.unreadable_ranges(off, size) or ranges
                    except Exception:
                        pass
                self.report.add("error", "mount", self.path_of(inode) or "/", "read-eio",
                                f"read failed: {e}", ranges)
            raise pyfuse3.FUSEError(errno.EIO) from None

    def _follow(self, fh: int, src: Any, off: int, size: int) -> None:
        """Prefetch ahead of a sequential reader: the file ranges under the next
        PREFETCH_BYTES of ``src`` (``Source.prefetch``, in a worker thread, not waited for).

        The kernel's read-ahead of the FUSE file asks only a few MiB ahead, and a layer
        that maps the disk onto scattered places of a file (thin runs, qcow2 clusters)
        defeats the file's own read-ahead: each request then waits for the disk in a
        worker thread.  Ahead of the reader, the requests find the bytes in the page cache
        and are answered inline.  A random reader (a request not following the previous
        ones) asks for nothing; prefetch reads only what the layer maps to file bytes and
        never reports or raises (the reader's own request meets any damage)."""
        st = self._streams.get(fh)
        if st is None:
            st = self._streams[fh] = _Stream()
        end = off + size
        if st.end - SEQUENTIAL_SLACK <= off <= st.end + SEQUENTIAL_SLACK:
            st.run += 1
            st.end = max(st.end, end)
        else:
            st.run = 0
            st.end = end
            st.ahead = 0
        if st.run < SEQUENTIAL_READS or st.ahead - st.end >= PREFETCH_BYTES // 2 \
                or st.ahead >= src.size:  # asked up to the end already
            return
        asked, st.ahead = st.ahead, min(st.end + PREFETCH_BYTES, src.size)
        if st.end < st.ahead:  # from the reader on (what continues its run is left alone),
            # advising only what was not asked before
            self.workers.submit(src.prefetch, st.end, st.ahead - st.end, asked)
            self.prefetches += 1

    async def _read_into(self, src: Any, off: int, size: int) -> memoryview:
        """Read into a reply buffer: inline when the page cache holds the bytes (``nowait``:
        no worker thread, no wake-ups), else in a worker thread.  No buffer is allocated
        per request (a fresh 1 MiB object is mapped and faulted in page by page: measured
        2.1 GB/s for pread into new bytes against 26 GB/s into a reused buffer).

        The buffer goes back to the idle list before the reply is sent, which is safe
        because pyfuse3 (fuse_read_async) copies the returned buffer into the kernel
        (fuse_reply_buf) right after this coroutine returns, without a checkpoint: no other
        request's handler runs in between, and buffers are only taken in this thread.  A
        read cancelled at unmount may leave a thread writing into its buffer: that buffer
        is dropped, never reused."""
        buffers = self._buffers
        buf = buffers.pop() if buffers and len(buffers[-1]) >= size else \
            memoryview(bytearray(max(size, READ_BUFFER)))
        view = buf[:size]
        try:
            try:
                n = src.readinto(off, view, True)
                self.inline_reads += 1
            except WouldBlock:
                n = await self._run(src.readinto, off, view)
        except Exception:
            self._give_back(buf)
            raise
        self._give_back(buf)
        return view[:n]

    def _give_back(self, buf: memoryview) -> None:
        if len(self._buffers) < IDLE_READ_BUFFERS:
            self._buffers.append(buf)

    @handler
    async def release(self, fh: int) -> None:
        self._handles.pop(fh, None)
        self._streams.pop(fh, None)

    @handler
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = 65536
        s.f_frsize = 65536
        s.f_blocks = 0
        s.f_bfree = 0
        s.f_bavail = 0
        s.f_files = len(self._entries)
        s.f_ffree = 0
        s.f_favail = 0
        s.f_namemax = 255
        return s

    def _space_of(self, inode: int, node: Node | None = None) -> InodeSpace | None:
        """The InodeSpace whose xattr rules apply to ``inode``: the space of its key, or
        for a kept node (given as ``node``) the space a directory lists; else None."""
        idx = inode >> KEY_BITS
        if idx:
            return self._spaces[idx] if idx < len(self._spaces) else None
        return node.space if isinstance(node, Dir) else None

    def _is_bare(self, inode: int) -> bool:
        """Whether ``inode`` was listed from :meth:`InodeSpace.stat` (no extended
        attributes)."""
        idx = inode >> KEY_BITS
        return 0 < idx < len(self._bare) and (inode & KEY_MASK) in self._bare[idx]

    @handler
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        """The value of attribute ``name``; ENODATA when the node has none of that name
        (pyfuse3 answers the kernel's size probe and ERANGE from the value).  ``ls -l``
        asks two per file (``security.selinux``, ``system.posix_acl_access``): answered
        on the event loop whenever the node's attributes are in memory (any built node:
        ZFS SA xattrs are decoded with the znode).  Only a set that must still be read
        from the image (:attr:`pvfs.nodes.Node.xattrs` ``pending``: a ZFS xattr
        directory) is read in a worker thread, once.

        A name the file system does not have at all (:meth:`InodeSpace.xattr_supported`:
        ``system.posix_acl_access`` of a ZFS dataset with ``acltype=off``) answers
        EOPNOTSUPP, as its kernel driver does; ``ls`` then stops asking it (per device:
        in one ``ls -lR`` that goes on into a dataset with ACLs it shows no ``+``).

        A file listed with attributes from :meth:`InodeSpace.stat` has no extended
        attributes: ENODATA without building its node (``ls -l`` asks every file)."""
        space = self._space_of(inode)  # an InodeSpace entry: asked before any node
        if space is not None:
            if not space.xattr_supported(name):
                raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
            if self._is_bare(inode):
                raise pyfuse3.FUSEError(errno.ENODATA)
        node = await self._get(inode)
        if space is None:  # a kept node: a directory of a space answers for it
            space = self._space_of(inode, node)
            if space is not None and not space.xattr_supported(name):
                raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        xattrs = node._xattrs  # None: none (no dict made for asking)
        if xattrs is None:
            raise pyfuse3.FUSEError(errno.ENODATA)
        if _pending(xattrs):
            value = await self._run(xattrs.get, name)
        else:
            value = xattrs.get(name)
        if value is None:
            raise pyfuse3.FUSEError(errno.ENODATA)
        return value

    @handler
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        if self._is_bare(inode):
            return []  # listed from InodeSpace.stat: no extended attributes
        node = await self._get(inode)
        if _pending(node._xattrs):
            names = await self._run(node.xattr_names)  # read from the image: not here
        else:
            names = node.xattr_names()
        space = self._space_of(inode, node)
        if space is not None and names:
            names = [n for n in names if space.xattr_supported(n)]
        return names

    @handler
    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        if mode & os.W_OK:
            raise pyfuse3.FUSEError(errno.EROFS)
        return True

    # -- write operations: read-only file system ------------------------------------
    async def create(self, *a: Any, **k: Any) -> NoReturn:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def write(self, *a: Any, **k: Any) -> NoReturn:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def mkdir(self, *a: Any, **k: Any) -> NoReturn:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def unlink(self, *a: Any, **k: Any) -> NoReturn:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def rmdir(self, *a: Any, **k: Any) -> NoReturn:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def rename(self, *a: Any, **k: Any) -> NoReturn:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def symlink(self, *a: Any, **k: Any) -> NoReturn:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def link(self, *a: Any, **k: Any) -> NoReturn:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def mknod(self, *a: Any, **k: Any) -> NoReturn:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def setxattr(self, *a: Any, **k: Any) -> NoReturn:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def removexattr(self, *a: Any, **k: Any) -> NoReturn:
        raise pyfuse3.FUSEError(errno.EROFS)

    def _new_handle(self, value: object) -> int:
        with self._lock:
            fh = self._next_fh
            self._next_fh += 1
        self._handles[fh] = value
        return fh


def _pending(xattrs: Any) -> bool:
    """Whether a node's extended attributes must still be read from the image (a ZFS
    xattr directory: :attr:`pvfs.nodes.Node.xattrs` ``pending``), in a worker thread."""
    return xattrs is not None and type(xattrs) is not dict and getattr(xattrs, "pending", False)


def _index(keys: Sequence[int], key: int) -> int:
    """The index of ``key`` in a listing's keys, -1 if absent.  An ``array`` of keys
    (a ZFS listing) is searched by numpy: ``in`` and ``index`` on an array make an int
    object per element (~2 ms for 100,000 keys, twice per stat-ahead: 1.5 s of an
    ``ls -l`` of a 100,000-entry directory)."""
    if isinstance(keys, array) and keys.typecode in "QqLl" and keys.itemsize == 8:
        import numpy as np  # (imported by then: a ZFS mount's checksums use it)

        hit = np.flatnonzero(np.frombuffer(keys, dtype=np.uint64 if keys.typecode in "QL"
                                           else np.int64) == key)
        return int(hit[0]) if hit.size else -1
    try:
        return keys.index(key)
    except ValueError:
        return -1


#: A listing entry answered with full attributes from InodeSpace.stat (no node built).
ATTRS_ONLY: Any = Node(0)


def _full_attrs(ino: int, timeout: float, mode: int, nlink: int, uid: int, gid: int,
                rdev: int, size: int, used: int, atime: int, mtime: int, ctime: int
                ) -> pyfuse3.EntryAttributes:
    """EntryAttributes with every field, valid for ``timeout`` (a node's, or a file's
    from :meth:`InodeSpace.stat`: the same answer either way)."""
    a = pyfuse3.EntryAttributes()
    a.st_ino = ino
    a.generation = 0
    a.entry_timeout = timeout
    a.attr_timeout = timeout
    a.st_mode = mode
    a.st_nlink = nlink
    a.st_uid = uid
    a.st_gid = gid
    a.st_rdev = rdev
    a.st_size = size
    a.st_blksize = 65536
    a.st_blocks = (used + 511) // 512
    a.st_atime_ns, a.st_mtime_ns, a.st_ctime_ns = atime, mtime, ctime
    return a


def _type_only_attrs(ino: int, mode: int, entry_timeout: float) -> pyfuse3.EntryAttributes:
    """A listing entry's inode and type only, expired at once (``attr_timeout`` 0): a
    ``stat`` of it asks getattr, which answers in full."""
    a = pyfuse3.EntryAttributes()
    a.st_ino = ino
    a.st_mode = mode
    a.entry_timeout = entry_timeout
    a.attr_timeout = 0
    a.st_blksize = 65536
    return a


def _stat_attrs(st: tuple, ino: int) -> pyfuse3.EntryAttributes:
    """EntryAttributes from an :meth:`InodeSpace.stat` tuple ``(mode, nlink, uid, gid,
    size, used, atime, mtime, ctime)``: what :meth:`PvfsOperations._attrs` gives for the
    file's node (a regular file: no rdev)."""
    mode, nlink, uid, gid, size, used, atime, mtime, ctime = st
    return _full_attrs(ino, TIMEOUT, mode, nlink, uid, gid, 0, size, used, atime, mtime,
                       ctime)


def _space_lookup(d: Dir, name: str) -> tuple[Node | None, int | None]:
    """``(node, key)`` of ``name`` in ``d``: a kept entry (no key) or the space's."""
    node = d.kept().get(name)
    if node is not None:
        return node, None
    space = d.space
    assert space is not None
    key = space.lookup(d.key, name)
    if key is None:
        return None, None
    return space.child(d.key, name, key), key


def _space_listing(d: Dir) -> _SpaceListing:
    space = d.space
    assert space is not None
    kept = list(d.kept().items())
    return _SpaceListing(d, kept, space.entries(d.key))
