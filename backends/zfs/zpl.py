"""The ZFS POSIX layer: a ZPL object set as a tree of pvfs nodes.

Object 1 of a ZPL object set is the master node (a ZAP: ``ROOT``,
``VERSION``, ``DELETE_QUEUE``, ``SA_ATTRS`` from ZPL 5).  Directories are
ZAPs whose values hold the object number in the low 48 bits and the
``DT_*`` type in the top 4 bits (``ZFS_DIRENT_OBJ``/``ZFS_DIRENT_TYPE``).
Each object's metadata is a legacy znode or system attributes (``sa.py``).

A :class:`Zpl` is the object set's :class:`pvfs.nodes.InodeSpace`: keys are object
numbers.  Each directory is one kept :class:`pvfs.nodes.Dir` whose entries are not kept:
listing one reads the directory ZAP (decoded once into a compact
:class:`pvfs.nodes.Listing` in the byte-bounded metadata cache) and builds the node of
each entry when asked, a lookup reads one fat ZAP leaf by hash.  File, symlink and
special nodes live while somebody holds them (a weak map: a hard-linked object is one
node while held, one inode always), so listing a million files keeps none of them; what
is kept per directory is its node and its parent and path.  xattrs (SA nvlist
``ZPL_DXATTR`` and xattr directories) land in ``node.xattrs``.  Anything that cannot be
decoded becomes a damage entry and the rest of the tree goes on.

References:
  - OpenZFS ``include/sys/zfs_znode.h`` (master node names, ``ZFS_DIRENT_*``),
    ``module/zfs/zfs_dir.c``, ``module/os/linux/zfs/zfs_vnops_os.c`` (symlinks:
    ``ZPL_SYMLINK`` or the data block), ``module/zfs/zfs_sa.c`` (``zfs_sa_readlink``,
    ``zfs_sa_get_xattr``: the SA xattr nvlist is XDR-packed),
    ``module/os/linux/zfs/zpl_xattr.c`` (xattr names keep their namespace prefix; the
    handlers: ``user.`` EOPNOTSUPP unless ``ZSB_XATTR``, ``system.posix_acl_*`` EOPNOTSUPP
    unless ``z_acl_type`` is POSIX, no handler for other names), ``zfs_vfsops.c``
    (``xattr_changed_cb``, ``acltype_changed_cb``: nfsv4 is off on Linux).
  - "ZFS On-Disk Specification" (Sun, 2006), chapter 6.
"""

from __future__ import annotations

import itertools
import os
import stat
import struct
import threading
import weakref
from array import array

from pvfs.cache import METADATA_CACHE
from pvfs.errors import PvfsError, UnreadableError
from pvfs.nodes import Dir, File, InodeSpace, Listing, Special, Symlink, sanitize_name
from pvfs.source import WouldBlock

from . import zap
from .dsl import ZFS_ACLTYPE_POSIX, ZFS_XATTR_OFF
from .objset import DnodeSource, used_bytes
from .sa import SaError, SaRegistry, read_znode, rdev_split, znode_stat

LAYER = "zfs"
DIRENT_OBJ_MASK = (1 << 48) - 1
MAX_SYMLINK = 1 << 16
MAX_XATTR_VALUE = 1 << 20
MAX_XATTRS = 10_000
LINUX_XATTR_NAMESPACES = ("user.", "trusted.", "security.", "system.")
POSIX_ACL_NAMES = (b"system.posix_acl_access", b"system.posix_acl_default")
DMU_OT_PLAIN_FILE_CONTENTS = 19
DMU_OT_DIRECTORY_CONTENTS = 20
DT_DIR = 4  # ZFS_DIRENT_TYPE of a directory (IFTODT)
ZFS_XATTR = 0x1  # zp_flags: an xattr directory or a file in one
MAX_ORPHAN_SCAN = 4_000_000  # dnode slots looked at for lost+found
MAX_ORPHANS = 100_000
MAX_ROOT_SCAN = 1_000_000  # objects looked at for the root when the master node is lost
MAX_ROOT_CANDIDATES = 10_000  # directories tried as the root
DMU_OT_SA_MASTER_NODE = 45
_ZPL_IDS = itertools.count(1)  # cache keys of listings (an id() could be reused)


class _Rel:
    """A node's path in its file system, made when a message needs it: entry ``name`` of
    directory ``parent``, or object ``obj`` found by number (its znode's parent searched)."""

    __slots__ = ("fs", "parent", "name", "obj")

    def __init__(self, fs: Zpl, parent: int | None, name: str | None, obj: int = 0):
        self.fs, self.parent, self.name, self.obj = fs, parent, name, obj

    def __str__(self) -> str:
        if self.parent is None:
            return self.fs.relpath_of(self.obj)
        prefix = self.fs.dir_relpath(self.parent)
        return f"{prefix}/{self.name}" if prefix else self.name


class Zpl(InodeSpace):
    """One mounted ZPL object set (a filesystem, snapshot or clone); the
    :class:`pvfs.nodes.InodeSpace` of its objects (keys: object numbers)."""

    def __init__(self, objset, ctx, path: str, replay=None):
        self.objset = objset
        #: zilreplay.Replay: the dataset's intent log applied in memory (None: as synced)
        self.replay = replay
        self.ctx = ctx
        self.path = path
        self.bad = ctx.bad("eio") if ctx is not None else "eio"
        try:
            master = zap.zap_entries(objset.dnode(1))
        except (PvfsError, OSError) as e:
            master = self._scan_for_master(f"master node unreadable: {e}")
        for err in master.errors:
            self.report("warning", "", "zap-damaged", f"master node: {err}")
        self.version = _int(master.get("VERSION"), 0)
        self.root = _int(master.get("ROOT"))
        if self.root is None:
            master = self._scan_for_master("master node has no ROOT entry")
            self.root = _int(master.get("ROOT"))
        sa_obj = _int(master.get("SA_ATTRS"))
        self.registry = None
        if sa_obj:
            try:
                self.registry = SaRegistry.load(objset, sa_obj)
            except (PvfsError, OSError) as e:
                self.registry = SaRegistry.standard(f"SA registry unreadable: {e}")
            for err in self.registry.errors:
                self.report("error" if self.registry.guessing else "warning", "",
                            "sa-registry", err)
        #: objects the master node names (SHARES directory, delete queue, SA, FUID ...)
        self.master_objects = {v[0] for v in master.values() if isinstance(v, list) and v}
        #: nodes of files, symlinks and special files while somebody holds them
        self._live: weakref.WeakValueDictionary[int, object] = weakref.WeakValueDictionary()
        #: directory object -> (the directory it was met in, its path); and its node
        self._dirs: dict[int, tuple[int | None, str]] = {}
        self._dir_nodes: dict[int, Dir] = {}
        self._cache_id = next(_ZPL_IDS)
        self._lock = threading.RLock()  # directories may load in several FUSE threads
        #: What the kernel's ZPL would answer getxattr with, from the dataset's acltype
        #: and xattr properties (load_props); None: not known, every name is answered.
        self.posix_acl: bool | None = None
        self.user_xattrs: bool | None = None

    def load_props(self) -> None:
        """The dataset's ``acltype`` and ``xattr`` (inherited as ``zfs get`` shows
        them): ``system.posix_acl_*`` exist only with ``acltype=posix`` (``posixacl``),
        ``user.*`` only without ``xattr=off``.  Unreadable: every name is answered."""
        reader = getattr(self.objset, "dsl_props", None)
        if reader is None:
            return
        try:
            props = reader()
        except (PvfsError, OSError) as e:
            self.report("warning", "", "dataset-properties",
                        f"the dataset's properties (acltype, xattr) cannot be read ({e}); "
                        f"extended attributes are answered as if both were on")
            return
        self.posix_acl = props["acltype"] == ZFS_ACLTYPE_POSIX
        self.user_xattrs = props["xattr"] != ZFS_XATTR_OFF

    def xattr_supported(self, name: bytes) -> bool:
        """The InodeSpace hook: whether Linux's ZPL has a handler that answers ``name``
        (zpl_xattr_handler) for this dataset."""
        if self.posix_acl is None:
            return True
        if name.startswith(b"security.") or name.startswith(b"trusted."):
            return True
        if name.startswith(b"user."):
            return self.user_xattrs
        if name in POSIX_ACL_NAMES:
            return self.posix_acl
        return False  # no handler: the VFS answers EOPNOTSUPP

    def _scan_for_master(self, why: str):
        """Find the root directory and the SA master node without the master node.

        The root is the directory whose parent is itself (``zfs_create_fs``); the SA
        master node has its own object type.  Raises :class:`SaError` if no root is found.
        """
        found = zap.ZapEntries()
        limit = min(int(getattr(self.objset, "nobjects", 0) or 0), MAX_ROOT_SCAN)
        dirs = []
        obj = 2
        while obj < limit and len(dirs) < MAX_ROOT_CANDIDATES:
            try:
                dn = self.objset.dnode(obj)
            except (PvfsError, OSError):
                obj += 1
                continue
            t = getattr(dn, "type", None)
            if t == DMU_OT_SA_MASTER_NODE and "SA_ATTRS" not in found:
                found["SA_ATTRS"] = [obj]
            elif t == DMU_OT_DIRECTORY_CONTENTS:
                dirs.append((obj, dn))
            obj += 1 + (getattr(dn, "extra_slots", 0) or 0)
        reg = None
        if "SA_ATTRS" in found:
            try:
                reg = SaRegistry.load(self.objset, found["SA_ATTRS"][0])
            except (PvfsError, OSError):
                pass
        for obj, dn in dirs:
            try:
                zn = read_znode(dn, reg)
            except (PvfsError, OSError):
                continue
            if zn.parent == obj and not zn.flags & ZFS_XATTR:
                found["ROOT"] = [obj]
                break
        if "ROOT" not in found:
            raise SaError(f"{why}; no root directory found among {limit} objects")
        self.report("error", "", "master-node", f"{why}; root directory found by scanning "
                    f"the objects: object {found['ROOT'][0]}")
        return found

    # -- helpers ---------------------------------------------------------------
    def report(self, severity, relpath, code, message, ranges=()):
        where = f"{self.path}/{relpath}" if relpath else self.path
        if self.ctx is not None:
            self.ctx.report.add(severity, LAYER, where, code, message, ranges)

    def _node_kw(self, zn):
        return dict(mtime=zn.mtime, atime=zn.atime, ctime=zn.ctime, uid=zn.uid, gid=zn.gid)

    # -- the tree --------------------------------------------------------------
    def fill_root(self, dir_node: Dir):
        """Make ``dir_node`` the dataset's root directory: its metadata, and its entries
        from this space (names already in it, child datasets, win)."""
        ro = self.replay.objs.get(self.root) if self.replay is not None else None
        if ro is not None:
            zn = ro.zn
        else:
            dnode = self.objset.dnode(self.root)
            zn = read_znode(dnode, self.registry)
        if not stat.S_ISDIR(zn.mode):
            raise SaError(f"root object {self.root} is not a directory (mode {zn.mode:o})")
        dir_node.mode = stat.S_IFDIR | (zn.mode & 0o7777)
        for k, v in self._node_kw(zn).items():
            setattr(dir_node, k, v)
        dir_node.nlink = zn.links
        self._dirs[self.root] = (None, "")
        self._dir_nodes[self.root] = dir_node
        self._xattrs(dir_node, zn, "")
        self._replayed_xattrs(dir_node, ro)
        dir_node.use_space(self, self.root)

    # -- the InodeSpace ----------------------------------------------------------
    def dir_relpath(self, objnum: int) -> str:
        d = self._dirs.get(objnum)
        return d[1] if d is not None else f"<directory {objnum}>"

    def relpath_of(self, objnum: int) -> str:
        """The path of object ``objnum`` met by number: its znode names the directory
        it was created in, whose listing names it (costs a directory search)."""
        try:
            zn = self._znode(objnum)
            parent = zn.parent
            if parent in self._dirs:
                listing = self.entries(parent, report=False)
                for name, key in zip(listing.names, listing.keys, strict=True):
                    if key == objnum:
                        prefix = self.dir_relpath(parent)
                        return f"{prefix}/{name}" if prefix else name
        except (PvfsError, OSError):
            pass
        return f"<object {objnum}>"

    def path(self, key: int) -> str:
        return f"{self.path_prefix}{self.relpath_of(key)}"

    @property
    def path_prefix(self) -> str:
        return f"{self.path}/" if self.path else ""

    def _znode(self, objnum):
        ro = self.replay.objs.get(objnum) if self.replay is not None else None
        if ro is not None:
            return ro.zn
        return read_znode(self.objset.dnode(objnum), self.registry)

    def _zap(self, objnum) -> zap.ZapEntries:
        if self.replay is not None and objnum in self.replay.dirs:
            return zap.ZapEntries({n: [v] for n, v in self.replay.dirs[objnum].items()})
        return zap.zap_entries(self.objset.dnode(objnum), cache=False)  # (the listing is)

    def entries(self, objnum: int, report: bool = True) -> Listing:
        """The entries of directory ``objnum`` (names and object numbers, in ZAP order);
        kept in the metadata cache, a damaged or unreadable directory reported once."""
        ck = ("zpl-dir", self._cache_id, objnum)
        hit = METADATA_CACHE.get(ck)
        if hit is not None:
            return hit
        relpath = self.dir_relpath(objnum)
        names: list[str] = []
        keys = array("Q")
        types = array("B")
        try:
            entries = self._zap(objnum)
        except UnreadableError as e:
            if report:
                self.report("error", relpath, "unreadable-dir", f"directory unreadable: {e}",
                            e.ranges)
            return Listing(names, keys)
        except (PvfsError, OSError) as e:
            if report:
                self.report("error", relpath, "bad-dir", f"directory object {objnum}: {e}")
            return Listing(names, keys)
        if report:
            for err in entries.errors:
                self.report("error", relpath, "zap-damaged", f"directory entries lost: {err}")
        renamed = False
        for name, value in entries.items():
            obj = _int(value)
            if obj is None:
                if report:
                    self.report("error", f"{relpath}/{name}" if relpath else name,
                                "bad-dirent", "directory entry without an object number")
                continue
            if "/" in name or "\0" in name or name in ("", ".", ".."):
                name = sanitize_name(name)  # a damaged name: shown, findable by listing
                renamed = True
            names.append(name)
            keys.append(obj & DIRENT_OBJ_MASK)
            types.append(obj >> 60)  # ZFS_DIRENT_TYPE: IFTODT(mode), as DT_* values
        listing = (_RenamedListing if renamed else Listing)(names, keys, types)
        return METADATA_CACHE.put(ck, listing)

    def lookup(self, objnum: int, name: str) -> int | None:
        """One fat ZAP leaf read by hash (or the cached listing of a micro ZAP)."""
        try:
            if self.replay is not None and objnum in self.replay.dirs:
                value = self.replay.dirs[objnum].get(name)
                value = None if value is None else [value]
            else:
                errors: list[str] = []
                value = zap.zap_lookup(self.objset.dnode(objnum), name, errors)
                if errors:
                    self.entries(objnum)  # reports what the directory lost (once)
        except (PvfsError, OSError):
            value = None
            self.entries(objnum)  # reports the unreadable directory
        obj = _int(value)
        if obj is not None:
            return obj & DIRENT_OBJ_MASK
        listing = self.entries(objnum)
        if isinstance(listing, _RenamedListing):
            for n, key in zip(listing.names, listing.keys, strict=True):
                if n == name:
                    return key
        return None

    def child(self, objnum: int, name: str, child: int):
        d = self._dir_nodes.get(child)
        if d is None:
            node = self._live.get(child)
            if node is not None:
                return node
            with self._lock:  # another thread may have built this very directory meanwhile
                d = self._dir_nodes.get(child)  # (_node_for would call that a loop)
                if d is None:
                    return self._node_for(child, _Rel(self, objnum, name), parent=objnum)
        # a directory is one node, met in one directory under one name
        if self._dirs.get(child, (None,))[0] != objnum \
                or self.dir_relpath(child).rsplit("/", 1)[-1] != name:
            rel = self.dir_relpath(objnum)
            self.report("error", f"{rel}/{name}" if rel else name, "dir-loop",
                        f"directory object {child} appears twice (loop); skipped")
            return None
        return d

    def prefetch(self, keys) -> None:
        """The InodeSpace hook: start reading these objects' dnode blocks."""
        prefetch = getattr(self.objset, "prefetch_dnodes", None)
        if prefetch is not None:
            prefetch(keys)

    def stat(self, key: int):
        """The InodeSpace hook: a regular file's attributes from its dnode, as
        :meth:`_node_for` would make them (None for anything else, a file with extended
        attributes, an object the intent log changed, or one that does not read: the
        node path handles and reports it)."""
        if self.replay is not None and key in self.replay.objs:
            return None
        try:
            dnode = self.objset.dnode(key)
            mode, links, uid, gid, size, at, mt, ct, xattrs = znode_stat(dnode, self.registry)
        except (PvfsError, OSError, ValueError, struct.error):
            return None
        if xattrs or not stat.S_ISREG(mode):  # (the mount answers its xattrs: none)
            return None
        return (stat.S_IFREG | (mode & 0o7777), links, uid, gid, size, used_bytes(dnode), at, mt, ct)

    def node(self, key: int, nowait: bool = False):
        node = self._live.get(key) or self._dir_nodes.get(key)
        if node is not None:
            return node
        if nowait:
            cached = getattr(self.objset, "dnode_cached", None)
            if cached is None or not cached(key):
                raise WouldBlock(f"object {key}: its dnode block is not cached")
        return self.node_for(key, _Rel(self, None, None, key), nowait=nowait)

    def node_for(self, objnum: int, relpath, parent: int | None = None, nowait=False):
        """The node of object ``objnum`` (None, with a damage entry, if it is broken);
        ``relpath`` a str or :class:`_Rel`, ``parent`` the directory it was met in;
        ``nowait``: raise WouldBlock rather than read a symlink's target block."""
        with self._lock:  # one node per hard-linked object, one per directory
            return self._node_for(objnum, relpath, parent, nowait)

    def _node_for(self, objnum: int, relpath, parent: int | None, nowait=False):
        node = self._live.get(objnum) or self._dir_nodes.get(objnum)
        if node is not None:
            if isinstance(node, Dir):
                self.report("error", relpath, "dir-loop",
                            f"directory object {objnum} appears twice (loop); skipped")
                return None
            return node
        ro = self.replay.objs.get(objnum) if self.replay is not None else None
        try:
            if ro is not None:  # an object the intent log changed or created
                dnode = None if ro.new else self.objset.dnode(objnum)
                zn = ro.zn
            else:
                dnode = self.objset.dnode(objnum)
                zn = read_znode(dnode, self.registry)
        except UnreadableError as e:
            self.report("error", relpath, "unreadable-object",
                        f"object {objnum} unreadable: {e}")
            return None
        except (PvfsError, OSError) as e:
            self.report("error", relpath, "bad-object", f"object {objnum}: {e}")
            return None
        kind = stat.S_IFMT(zn.mode)
        if nowait and (kind == stat.S_IFLNK and zn.symlink is None or ro is not None):
            raise WouldBlock(f"object {objnum}: the target is in a data block")
        kw = self._node_kw(zn)
        try:
            if kind == stat.S_IFDIR:
                node = Dir(mode=zn.mode, **kw)
                node.use_space(self, objnum)
            elif kind == stat.S_IFREG:
                base = None
                if dnode is not None:
                    base = DnodeSource(dnode, ro.base_size if ro is not None else zn.size,
                                       relpath, bad=self.bad, ctx=self.ctx, fs=self)
                if ro is not None and ro.ext is not None:
                    from .zilreplay import ReplaySource

                    src = ReplaySource(ro.size, ro.ext, base, self.objset.pool, self.objset,
                                       f"{self.objset.name}:{relpath}",
                                       path=f"{self.path}/{relpath}", bad=self.bad,
                                       ctx=self.ctx)
                else:
                    src = base
                node = File(src, mode=zn.mode, **kw)
            elif kind == stat.S_IFLNK:
                if ro is not None and ro.symlink is not None:
                    node = Symlink(ro.symlink, **kw)
                else:
                    node = Symlink(self._symlink_target(dnode, zn, relpath), **kw)
            elif kind in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK):
                rdev = 0
                if kind in (stat.S_IFCHR, stat.S_IFBLK):
                    major, minor = rdev_split(zn.rdev)
                    try:
                        rdev = os.makedev(major, minor)
                    except (OverflowError, ValueError):
                        rdev = 0
                node = Special(stat.S_IFMT(zn.mode) | (zn.mode & 0o7777), rdev=rdev, **kw)
            else:
                self.report("warning", relpath, "unknown-type",
                            f"object {objnum} has file type {kind >> 12:#o}; not shown")
                return None
        except UnreadableError as e:
            self.report("error", relpath, "unreadable-object", f"object {objnum}: {e}",
                        e.ranges)
            return None
        except (PvfsError, OSError) as e:
            self.report("error", relpath, "bad-object", f"object {objnum}: {e}")
            return None
        node.nlink = zn.links
        self._xattrs(node, zn, relpath)
        self._replayed_xattrs(node, ro)
        if kind == stat.S_IFDIR:
            self._dirs[objnum] = (parent, str(relpath))
            self._dir_nodes[objnum] = node
        else:
            self._live[objnum] = node
        return node

    def _symlink_target(self, dnode, zn, relpath) -> bytes:
        if zn.symlink is not None:
            return zn.symlink
        n = min(zn.size, MAX_SYMLINK)
        if n < zn.size:
            self.report("warning", relpath, "symlink-too-long",
                        f"symlink target of {zn.size} bytes cut to {n}")
        return dnode.read(0, n)

    # -- lost+found ------------------------------------------------------------
    def _reachable(self, starts, known):
        """Objects named by the directories below ``starts`` (directory ZAPs only)."""
        stack = list(starts)
        seen_dirs = set(stack)
        while stack:
            obj = stack.pop()
            try:
                entries = zap.zap_entries(self.objset.dnode(obj))
            except (PvfsError, OSError):
                continue
            for value in entries.values():
                v = _int(value)
                if v is None:
                    continue
                child = v & DIRENT_OBJ_MASK
                known.add(child)
                if (v >> 60) == DT_DIR and child not in seen_dirs:
                    seen_dirs.add(child)
                    stack.append(child)
        return known

    def fill_orphans(self, dir_node: Dir, relpath: str):
        """``.zfs/lost+found``: file and directory objects no directory names.

        They are what a damaged directory hides, and files unlinked while still open
        (the delete queue).  Each is shown under its object number; an orphaned
        directory brings its subtree, so only the top of each orphaned tree is listed.
        """
        reachable = self._reachable([self.root], {self.root} | self.master_objects)
        meta = getattr(self.objset, "meta", None)
        nslots = min(int(getattr(self.objset, "nobjects", 0) or 0), MAX_ORPHAN_SCAN)
        if nslots < int(getattr(self.objset, "nobjects", 0) or 0):
            self.report("warning", relpath, "scan-limit",
                        f"only the first {MAX_ORPHAN_SCAN} objects were searched")
        ranges = [(0, nslots * 512)]
        if meta is not None and hasattr(meta, "block_status"):
            try:
                ranges = [(o, n) for o, n, st in meta.block_status(0, nslots * 512)
                          if st != "unmapped"]
            except (PvfsError, OSError):
                pass
        orphans = []
        for off, length in ranges:
            self._scan_slots(max(1, off // 512), min(nslots, (off + length) // 512),
                             reachable, orphans)
        # an orphaned directory's subtree is shown inside it
        below = self._reachable([o for o, isdir in orphans if isdir], set())
        for obj, _isdir in orphans:
            if obj in below:
                continue
            node = self.node_for(obj, f"{relpath}/{obj}")
            if node is not None:
                dir_node.add(str(obj), node)
        if dir_node.children():
            self.report("warning", relpath, "orphans",
                        f"{len(dir_node.children())} file(s)/directories that no directory "
                        f"names are shown here (damaged directories or unlinked open files)")

    def _dnode_or_none(self, obj):
        try:
            return self.objset.dnode(obj)
        except (PvfsError, OSError):
            return None

    def _scan_slots(self, obj, end, reachable, orphans):
        """Add the unreachable file and directory objects among dnode slots [obj, end)
        to ``orphans``.  Each dnode block is looked at as bytes (dn_type and
        dn_extra_slots of every 512-byte slot); only a file or directory no directory
        names is decoded, so the scan costs the dnode blocks, not a dnode per object."""
        objset = self.objset
        meta = getattr(objset, "meta", None)
        bs = getattr(meta, "datablksz", 0) if hasattr(objset, "_dnode_block") else 0
        per = bs // 512
        while obj < end and len(orphans) < MAX_ORPHANS:
            if per < 1:  # no meta-dnode to read blocks of (tests' stand-ins): one by one
                dn = self._dnode_or_none(obj)
                t = getattr(dn, "type", 0) or 0 if dn is not None else 0
                types = bytes([t if 0 <= t < 256 else 0])
                extras = bytes([min(255, getattr(dn, "extra_slots", 0) or 0)])
                first, stop = obj, obj + 1
            else:
                first = obj - obj % per
                stop = min(end, first + per)
                try:
                    data = objset._dnode_block(obj // per).data
                except (PvfsError, OSError):
                    obj = stop
                    continue
                types, extras = data[0::512], data[12::512]
            i = obj - first
            while obj < stop and len(orphans) < MAX_ORPHANS:
                t = types[i] if i < len(types) else 0
                step = 1
                if t in (DMU_OT_PLAIN_FILE_CONTENTS, DMU_OT_DIRECTORY_CONTENTS) \
                        and obj not in reachable:
                    dn = self._dnode_or_none(obj)
                    if dn is not None:
                        step = 1 + (dn.extra_slots or 0)
                        try:
                            zn = read_znode(dn, self.registry)
                            if not zn.flags & ZFS_XATTR and not self._in_xattr_dir(zn):
                                orphans.append((obj, stat.S_ISDIR(zn.mode)))
                        except (PvfsError, OSError):
                            pass
                elif t:  # another object: skip its extra slots (if they fit its block)
                    extra = extras[i] if i < len(extras) else 0
                    if per < 1 or i + extra < per:
                        step = 1 + extra
                obj += step
                i += step

    def _in_xattr_dir(self, zn) -> bool:
        try:
            parent = read_znode(self.objset.dnode(zn.parent), self.registry)
        except (PvfsError, OSError):
            return False
        return bool(parent.flags & ZFS_XATTR)

    # -- xattrs ----------------------------------------------------------------
    @staticmethod
    def _replayed_xattrs(node, ro):
        """SA xattrs set or removed by the intent log (TX_SETSAXATTR)."""
        if ro is None or not ro.xattrs:
            return
        for name, value in ro.xattrs.items():
            key = _xattr_name(name.decode("utf-8", "surrogateescape"))
            if value is None:
                if key in node.xattrs:
                    dict.__delitem__(node.xattrs, key)
            else:
                if isinstance(node.xattrs, LazyXattrs):
                    node.xattrs._fill()
                dict.__setitem__(node.xattrs, key, value)

    def _xattrs(self, node, zn, relpath):
        if zn.dxattr:
            try:
                from .nvlist import unpack_nvlist

                for name, value in list(unpack_nvlist(zn.dxattr).items())[:MAX_XATTRS]:
                    if isinstance(value, (bytes, bytearray)):
                        node.xattrs[_xattr_name(name)] = bytes(value)
                    elif isinstance(value, str):
                        node.xattrs[_xattr_name(name)] = value.encode()
            except (PvfsError, ValueError) as e:
                self.report("warning", relpath, "bad-xattr", f"SA xattrs unreadable: {e}")
        if zn.xattr:
            # An xattr directory costs a ZAP and a file read per attribute: read it when
            # somebody asks for the node's xattrs, not while listing the parent.
            node.xattrs = LazyXattrs(node.xattrs, lambda target, o=zn.xattr, r=relpath:
                                     self._xattr_dir(target, o, r))

    def _xattr_dir(self, target: dict, objnum, relpath):
        rep = self.replay
        try:
            if rep is not None and objnum in rep.dirs:
                entries = zap.ZapEntries({n: [v] for n, v in rep.dirs[objnum].items()})
            else:
                entries = zap.zap_entries(self.objset.dnode(objnum))
        except (PvfsError, OSError) as e:
            self.report("warning", relpath, "bad-xattr", f"xattr directory {objnum}: {e}")
            return
        for err in entries.errors:
            self.report("warning", relpath, "bad-xattr", f"xattr directory: {err}")
        for name, value in list(entries.items())[:MAX_XATTRS]:
            obj = _int(value)
            if obj is None:
                continue
            obj &= DIRENT_OBJ_MASK
            ro = rep.objs.get(obj) if rep is not None else None
            try:
                if ro is not None:
                    dn, zn = (None if ro.new else self.objset.dnode(obj)), ro.zn
                else:
                    dn = self.objset.dnode(obj)
                    zn = read_znode(dn, self.registry)
                if not stat.S_ISREG(zn.mode):
                    continue
                if zn.size > MAX_XATTR_VALUE:
                    self.report("warning", relpath, "xattr-too-large",
                                f"xattr {name!r} of {zn.size} bytes not shown")
                    continue
                if ro is not None and ro.ext is not None:
                    from .zilreplay import ReplaySource

                    base = (DnodeSource(dn, ro.base_size, relpath) if dn is not None
                            else None)
                    data = ReplaySource(ro.size, ro.ext, base, self.objset.pool,
                                        self.objset, relpath).read(0, zn.size)
                elif dn is None:
                    data = b""
                else:
                    data = dn.read(0, zn.size)
                if len(data) < zn.size:
                    data = data + bytes(zn.size - len(data))
            except (PvfsError, OSError) as e:
                self.report("warning", relpath, "bad-xattr", f"xattr {name!r}: {e}")
                continue
            dict.__setitem__(target, _xattr_name(name), data)


class _RenamedListing(Listing):
    """A listing with damaged names shown sanitized: a lookup of one searches it."""

    __slots__ = ()


class LazyXattrs(dict):
    """A node's xattrs, completed from its xattr directory on first use."""

    _lock = threading.Lock()

    def __init__(self, initial, load):
        super().__init__(initial)
        self._load = load

    @property
    def pending(self):
        """Whether the xattr directory is still to be read (the mount reads it in a
        worker thread, not on its event loop)."""
        return self._load is not None

    def _fill(self):
        if self._load is None:
            return
        with LazyXattrs._lock:
            load = self._load
            if load is not None:
                try:
                    load(self)
                finally:  # (only now: pending until the set is complete)
                    self._load = None

    def __getitem__(self, key):
        self._fill()
        return super().__getitem__(key)

    def __contains__(self, key):
        self._fill()
        return super().__contains__(key)

    def __iter__(self):
        self._fill()
        return super().__iter__()

    def __len__(self):
        self._fill()
        return super().__len__()

    def __eq__(self, other):
        self._fill()
        return super().__eq__(other)

    __hash__ = None

    def __repr__(self):
        self._fill()
        return super().__repr__()

    def get(self, key, default=None):
        self._fill()
        return super().get(key, default)

    def keys(self):
        self._fill()
        return super().keys()

    def items(self):
        self._fill()
        return super().items()

    def values(self):
        self._fill()
        return super().values()


def _int(value, default=None):
    if isinstance(value, list) and value:
        return value[0]
    return default


def _xattr_name(name: str) -> bytes:
    """Linux names keep their namespace; names from other systems are ``user.`` xattrs."""
    if not name.startswith(LINUX_XATTR_NAMESPACES):
        name = "user." + name
    return name.encode("utf-8", "surrogateescape")


def apply_root_metadata(objset, dir_node: Dir, ctx=None, path: str = "") -> bool:
    """Give ``dir_node`` the root directory's mode/owner/times without listing it.

    For a lazy dataset directory whose attributes are asked for before its first
    listing (``ls -l`` of the parent).  Costs the master node, the SA registry and
    one dnode.  Returns False (and changes nothing) when they cannot be read.
    """
    try:
        fs = Zpl(objset, ctx, path)
        zn = read_znode(objset.dnode(fs.root), fs.registry)
    except (PvfsError, OSError):
        return False
    if not stat.S_ISDIR(zn.mode):
        return False
    dir_node.mode = stat.S_IFDIR | (zn.mode & 0o7777)
    for k, v in fs._node_kw(zn).items():
        setattr(dir_node, k, v)
    dir_node.nlink = zn.links
    return True


class ReplayBase:
    """The synced state of a ZPL object set, as ``zilreplay.Replay`` asks for it."""

    def __init__(self, objset, ctx, path):
        self.zpl = Zpl(objset, ctx, path)

    def entries(self, objnum):
        return zap.zap_entries(self.zpl.objset.dnode(objnum))

    def znode(self, objnum):
        from .errors import ZfsError

        try:
            dn = self.zpl.objset.dnode(objnum)
        except ZfsError:  # free or beyond the meta-dnode: no such object
            return None
        return read_znode(dn, self.zpl.registry)


def build_tree(objset, dir_node: Dir, ctx, path: str, snapshots=None, replay=None) -> Zpl:
    """Fill ``dir_node`` with the ZPL filesystem in ``objset``.

    ``path`` is the tree path of ``dir_node`` (for damage entries).  Names
    already in ``dir_node`` (child datasets mounted there) are kept.
    ``snapshots``: ``[(snapname, loader)]`` where ``loader()`` returns the
    snapshot's ObjSet; they appear as lazy ``.zfs/snapshot/<snap>/``.
    Raises on a broken master node or root (the caller reports it).
    """
    fs = Zpl(objset, ctx, path, replay=replay)
    fs.load_props()
    fs.fill_root(dir_node)
    if snapshots is not None:
        add_snapshot_dir(dir_node, ctx, path, snapshots)
        zfsdir = dir_node.subdir(".zfs", mode=0o555)
        zfsdir.add("lost+found", Dir(mode=0o500, loader=lambda d: fs.fill_orphans(
            d, ".zfs/lost+found")), report=ctx.report if ctx else None, layer=LAYER,
            path_hint=f"{path}/.zfs")
    return fs


def add_snapshot_dir(dir_node: Dir, ctx, path: str, snapshots):
    """``.zfs/snapshot/<snap>/``, each filled on first listing."""
    zfsdir = dir_node.subdir(".zfs", mode=0o555)
    snapdir = zfsdir.subdir("snapshot", mode=0o555)
    for snapname, loader in snapshots:
        spath = f"{path}/.zfs/snapshot/{snapname}"

        def load(d, loader=loader, spath=spath):
            try:
                build_tree(loader(), d, ctx, spath)
            except UnreadableError as e:
                ctx.report.add("error", LAYER, spath, "unreadable", f"snapshot: {e}", e.ranges)
            except (PvfsError, OSError) as e:
                ctx.report.add("error", LAYER, spath, "bad-snapshot", f"snapshot: {e}")

        snapdir.add(snapname, Dir(mode=0o555, loader=load), report=ctx.report, layer=LAYER,
                    path_hint=f"{path}/.zfs/snapshot")
