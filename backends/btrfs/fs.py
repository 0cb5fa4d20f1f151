"""A btrfs filesystem as a pvfs node tree: subvolumes, directories, inodes, files.

The root is the top-level subvolume (tree 5), as the kernel shows it when
mounted with ``-o subvolid=5``.  A directory entry whose location is a
``ROOT_ITEM`` key links a subvolume or snapshot: if the root tree has the
matching ``ROOT_REF`` (this tree, this directory, this name) the entry shows
the subvolume's root directory, otherwise (a subvolume inside a snapshot, a
deleted subvolume) an empty directory, exactly as ``fixup_tree_root_location``
and ``new_simple_dir`` do.  Directory entries come from ``DIR_INDEX`` items (in
index order); when a block of them is lost, the hash-ordered ``DIR_ITEM``
copies of the same entries fill in what they can.  An inode's ``INODE_ITEM``,
``INODE_REF`` and ``XATTR_ITEM`` items lie together in key order and are read
with one range walk; file extents are read when the file is first opened.

One object number per tree is one node, so hard links are one node.  A tree
block that no copy can give is one damage entry; the walk goes on around it.

References: Linux ``fs/btrfs/inode.c`` (``btrfs_lookup_dentry``,
``fixup_tree_root_location``, ``new_simple_dir``, ``btrfs_read_locked_inode``,
``btrfs_real_readdir``), ``fs/btrfs/xattr.c``, ``fs/btrfs/dir-item.c``,
``include/uapi/linux/btrfs_tree.h``.
"""

from __future__ import annotations

import bisect
import os
import stat
import struct
import threading
import time
import weakref
from dataclasses import dataclass

from pvfs.guestfs import FilesystemInfo, GuestFilesystem
from pvfs.nodes import gc_paused, Dir, File, Special, Symlink, Timestamp
from pvfs.source import BytesSource, MissingSource

from . import structs as S
from .compress import DecompressError, decompress
from .data import CompressedExtent, FileData, LogicalSource
from .tree import TreeRoot, items, items_of, leaves, lookup
from .volume import BtrfsError

LAYER = "btrfs"
MAX = S.MAX_KEY
MAX_DIR_ENTRIES = 1_000_000
MAX_FILE_EXTENTS = 4_000_000
MAX_XATTRS = 10_000
MAX_SYMLINK = 1 << 16
MAX_NAMES_IN_MESSAGE = 20
MAX_PATH_DEPTH = 4096
FILES_IN_RANGES_BUDGET = 30.0  # seconds
ORPHAN_SCAN_BUDGET = 20.0  # seconds for .lost+found
LOST_FOUND = ".lost+found"
_NLINK = struct.Struct("<I")  # btrfs_inode_item.nlink at offset 40
FILES_IN_RANGES_ITEMS = 20_000_000


@dataclass
class Subvol:
    tree_id: int
    root: TreeRoot
    dirid: int
    flags: int

    @property
    def readonly(self) -> bool:
        return bool(self.flags & S.ROOT_SUBVOL_RDONLY)


@dataclass(slots=True)
class DirEntry:
    loc: tuple
    ftype: int
    name: bytes
    data: bytes = b""


def parse_dir_items(data: bytes) -> list[DirEntry]:
    """Every ``btrfs_dir_item`` packed in one item (hash collisions share an item)."""
    out, pos = [], 0
    while pos + S.DIR_ITEM.size <= len(data) and len(out) < MAX_XATTRS:
        oid, kt, koff, _transid, data_len, name_len, ftype = S.DIR_ITEM.unpack_from(data, pos)
        pos += S.DIR_ITEM.size
        if pos + name_len + data_len > len(data) or name_len == 0:
            raise BtrfsError("directory item overruns its item")
        name = bytes(data[pos:pos + name_len])
        value = bytes(data[pos + name_len:pos + name_len + data_len])
        out.append(DirEntry((oid, kt, koff), ftype & ~S.FT_ENCRYPTED, name, value))
        pos += name_len + data_len
    return out


def _ts(raw, at: int) -> Timestamp:
    sec, nsec = S.TIMESPEC.unpack_from(raw, at)
    return Timestamp(sec, nsec if nsec < 1_000_000_000 else 0)


@dataclass(slots=True)
class Inode:
    ino: int
    size: int
    nbytes: int
    nlink: int
    uid: int
    gid: int
    mode: int
    rdev: int
    flags: int
    atime: Timestamp
    ctime: Timestamp
    mtime: Timestamp


def parse_inode(ino: int, raw: bytes) -> Inode:
    if len(raw) < S.INODE_ITEM_SIZE:
        raise BtrfsError(f"inode item of {len(raw)} bytes")
    (_gen, _transid, size, nbytes, _bg, nlink, uid, gid, mode, rdev,
     flags) = S.INODE_HEAD.unpack_from(raw, 0)
    return Inode(ino, size, nbytes, nlink, uid, gid, mode, rdev, flags,
                 _ts(raw, S.INODE_ATIME), _ts(raw, S.INODE_CTIME), _ts(raw, S.INODE_MTIME))


def kernel_rdev(rdev: int) -> int:
    """btrfs stores the kernel's ``dev_t`` (major << 20 | minor); user space wants
    ``makedev``."""
    return os.makedev((rdev >> 20) & 0xFFF, rdev & 0xFFFFF)


class BtrfsFilesystem(GuestFilesystem):
    """One opened btrfs filesystem (single device)."""

    def __init__(self, dev, ctx, volume, root_tree: TreeRoot, csum_root: TreeRoot | None,
                 info: FilesystemInfo):
        self.dev = dev
        self.ctx = ctx
        self.volume = volume
        self.root_tree = root_tree
        self.info = info
        self.bad = ctx.bad("eio") if ctx is not None else "eio"
        self.logical = LogicalSource(dev, csum_root, self.bad, report=self.report)
        dev.report = self.report
        self._nodes: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self._placed_dirs: set = set()
        self._subvols: dict[int, Subvol | Exception] = {}
        self._reported: set = set()
        self._lock = threading.RLock()

    # -- reporting -----------------------------------------------------------------------
    @property
    def path(self) -> str:
        v = self.volume
        if v is None:
            return ""
        return v.files_paths[0] if v.files_paths else v.path

    def report(self, severity, code, message, ranges=(), relpath="", key=None, outcome=""):
        """One damage entry at ``relpath`` below the filesystem's root (once per ``key``,
        by default per code, place and message)."""
        key = key if key is not None else (code, relpath, message)
        with self._lock:
            if key in self._reported:
                return
            self._reported.add(key)
        where = f"{self.path}/{relpath}" if relpath else self.path
        if self.ctx is not None:
            self.ctx.report.add(severity, LAYER, where, code, message, ranges, outcome)

    def _lost_block(self, relpath, tree_id, lo, hi, err):
        """One entry per tree block that no copy gives."""
        logical = getattr(err, "logical", None)
        span = f"keys {lo} to {hi if hi is not None else 'the end'}" if lo is not None else \
            "its whole tree"
        self.report("error", "tree-block-lost",
                    f"{err}; the items in it ({span} of tree {tree_id}) are missing",
                    ranges=getattr(err, "ranges", ()),
                    key=("block", logical) if logical is not None else None, relpath=relpath)

    # -- subvolumes ----------------------------------------------------------------------
    def subvol(self, tree_id: int) -> Subvol:
        with self._lock:
            got = self._subvols.get(tree_id)
        if got is None:
            try:
                got = self._load_subvol(tree_id)
            except BtrfsError as e:
                got = e
            with self._lock:
                self._subvols[tree_id] = got
        if isinstance(got, Exception):
            raise got
        return got

    def _load_subvol(self, tree_id: int) -> Subvol:
        found = None
        for key, data in items(self.dev, self.root_tree, (tree_id, S.ROOT_ITEM_KEY, 0),
                               (tree_id, S.ROOT_ITEM_KEY, MAX)):
            found = (key, data)
        if found is None:
            raise BtrfsError(f"subvolume {tree_id} has no root item")
        data = found[1]
        if len(data) < S.ROOT_ITEM_V1_SIZE:
            raise BtrfsError(f"root item of subvolume {tree_id} is {len(data)} bytes")
        ri = S.root_item.parse(data[:S.ROOT_ITEM_V1_SIZE])
        if ri.refs == 0:
            raise BtrfsError(f"subvolume {tree_id} is deleted (refs 0)")
        if ri.level >= S.MAX_LEVEL:
            raise BtrfsError(f"subvolume {tree_id}: root level {ri.level}")
        return Subvol(tree_id, TreeRoot(tree_id, ri.bytenr, ri.level, ri.generation),
                      ri.root_dirid, ri.flags)

    def _root_ref_matches(self, parent_tree: int, child: int, dirid: int, name: bytes) -> bool:
        """Whether the root tree links subvolume ``child`` at ``dirid/name`` of
        ``parent_tree`` (``fixup_tree_root_location``)."""
        data = lookup(self.dev, self.root_tree, (parent_tree, S.ROOT_REF_KEY, child))
        if data is None or len(data) < S.ROOT_REF_SIZE:
            return False
        ref_dirid, _seq, name_len = struct.unpack_from("<QQH", data, 0)
        return ref_dirid == dirid and bytes(data[S.ROOT_REF_SIZE:S.ROOT_REF_SIZE + name_len]) \
            == name

    # -- the tree ------------------------------------------------------------------------
    def root(self) -> Dir:
        try:
            sv = self.subvol(S.FS_TREE_OBJECTID)
            node = self.inode_node(sv.tree_id, sv.dirid, "", [])
        except BtrfsError as e:
            self.report("error", "root-unreadable", f"top-level subvolume: {e}")
            node = None
        if not isinstance(node, Dir):
            node = Dir(mode=0o755, loader=self._add_lost_found)
        return node

    def _fill_dir(self, dnode: Dir, tree_id: int, ino: int, relpath: str):
        with gc_paused():
            self._fill_dir_entries(dnode, tree_id, ino, relpath)
            if tree_id == S.FS_TREE_OBJECTID and relpath == "":
                self._add_lost_found(dnode)

    # -- unreachable inodes ----------------------------------------------------------------
    def _add_lost_found(self, root: Dir):
        root.add(LOST_FOUND, Dir(mode=0o500, loader=self._load_orphans),
                 report=self.ctx.report if self.ctx is not None else None, layer=LAYER,
                 path_hint=self.path)

    def orphans(self, sv: Subvol, deadline: float) -> tuple[list[int], bool]:
        """Inodes of ``sv`` with links that no directory entry names (their entries were
        in a lost tree block), and whether the scan finished.  A directory among them
        brings its own subtree, so what it names is not an orphan of its own."""
        inodes, named = [], {sv.dirid}
        complete = True
        inode_t, index_t, item_t = S.INODE_ITEM_KEY, S.DIR_INDEX_KEY, S.DIR_ITEM_KEY
        dir_item, head = S.DIR_ITEM, S.HEADER_SIZE
        for leaf in leaves(self.dev, sv.root, lambda *a: None):
            if time.monotonic() > deadline:
                complete = False
                break
            raw = leaf.raw
            for j, (oid, ktype, _off) in enumerate(leaf.keys):
                if ktype == inode_t:
                    at = head + leaf.offs[j]
                    if leaf.sizes[j] >= S.INODE_HEAD.size and _NLINK.unpack_from(raw, at + 40)[0]:
                        inodes.append(oid)  # nlink > 0: an unlinked, still open file has 0
                elif ktype in (index_t, item_t) and leaf.sizes[j] >= dir_item.size:
                    loc, ltype, _o, _t, dlen, nlen, _ft = dir_item.unpack_from(
                        raw, head + leaf.offs[j])
                    if dir_item.size + nlen + dlen == leaf.sizes[j]:  # one entry: the usual
                        if ltype == inode_t:
                            named.add(loc)
                        continue
                    try:  # hash collisions: several entries in one DIR_ITEM
                        for e in parse_dir_items(leaf.item(j)):
                            if e.loc[1] == inode_t:
                                named.add(e.loc[0])
                    except BtrfsError:
                        continue
        inodes = [i for i in inodes if S.FIRST_FREE_OBJECTID <= i <= S.LAST_FREE_OBJECTID]
        return [i for i in inodes if i not in named], complete

    def _load_orphans(self, d: Dir):
        """``.lost+found/<inode>`` (top level) and ``.lost+found/<subvolume>-<inode>``:
        inodes no directory reaches, shown (btrfs check would relink them)."""
        deadline = time.monotonic() + ORPHAN_SCAN_BUDGET
        found = 0
        with gc_paused():
            for tree_id, _prefix in sorted(self.subvolume_paths(deadline).items()):
                try:
                    sv = self.subvol(tree_id)
                    lost, complete = self.orphans(sv, deadline)
                except BtrfsError:
                    continue
                if not complete:
                    self.report("warning", "orphan-scan-incomplete",
                                "time budget used up while looking for inodes that no "
                                "directory reaches; the search stopped", relpath=LOST_FOUND)
                loaded = self.load_inodes(sv, lost, LOST_FOUND) if lost else None
                for ino in lost:
                    name = str(ino) if tree_id == S.FS_TREE_OBJECTID else f"{tree_id}-{ino}"
                    node = self.inode_node(tree_id, ino, f"{LOST_FOUND}/{name}", [], loaded, sv)
                    if node is not None:
                        d.add(name, node)
                        found += 1
                if not complete:
                    break
        if found:
            self.report("warning", "orphan-inodes",
                        f"{found} inodes with links are reached by no directory (their "
                        f"entries were in lost tree blocks); shown under {LOST_FOUND}/<inode> "
                        f"(<subvolume>-<inode> outside the top level)", relpath=LOST_FOUND)

    def _fill_dir_entries(self, dnode: Dir, tree_id: int, ino: int, relpath: str):
        try:
            sv = self.subvol(tree_id)
        except BtrfsError as e:
            self.report("error", "subvolume-unreadable", str(e), relpath=relpath)
            return
        lost = []

        def damage(lo, hi, err):
            lost.append(err)
            self._lost_block(relpath, tree_id, lo, hi, err)

        entries: list[DirEntry] = []
        for _key, data in items(self.dev, sv.root, (ino, S.DIR_INDEX_KEY, 0),
                                (ino, S.DIR_INDEX_KEY, MAX), damage):
            try:
                entries.extend(parse_dir_items(data)[:1])
            except BtrfsError as e:
                self.report("error", "bad-dir-entry", f"directory {ino}: {e}", relpath=relpath)
            if len(entries) >= MAX_DIR_ENTRIES:
                self.report("error", "dir-too-large",
                            f"more than {MAX_DIR_ENTRIES} entries; the rest are not shown",
                            relpath=relpath)
                break
        if lost:  # the hash-ordered DIR_ITEM copies may still name what was lost
            have = {e.name for e in entries}
            n_before = len(entries)
            for _key, data in items(self.dev, sv.root, (ino, S.DIR_ITEM_KEY, 0),
                                    (ino, S.DIR_ITEM_KEY, MAX), damage):
                try:
                    for e in parse_dir_items(data):
                        if e.name not in have and len(entries) < MAX_DIR_ENTRIES:
                            have.add(e.name)
                            entries.append(e)
                except BtrfsError:
                    continue
            if len(entries) > n_before:
                self.report("warning", "dir-index-lost",
                            f"{len(entries) - n_before} entries of this directory were found "
                            f"only in its DIR_ITEM copies (their DIR_INDEX block is lost)",
                            relpath=relpath)
        missing: list[str] = []
        hint = f"{self.path}/{relpath}".rstrip("/")
        report = self.ctx.report if self.ctx is not None else None
        loaded = self.load_inodes(sv, [e.loc[0] for e in entries
                                       if e.loc[1] == S.INODE_ITEM_KEY], relpath)
        for e in entries:
            name = e.name.decode("utf-8", "surrogateescape")
            child_rel = f"{relpath}/{name}" if relpath else name
            try:
                if e.loc[1] == S.ROOT_ITEM_KEY:
                    node = self._subvol_link(tree_id, ino, e, child_rel)
                elif e.loc[1] == S.INODE_ITEM_KEY:
                    node = self.inode_node(tree_id, e.loc[0], child_rel, missing, loaded, sv)
                else:
                    self.report("error", "bad-dir-entry",
                                f"directory entry points at key type {e.loc[1]}", relpath=child_rel)
                    continue
            except BtrfsError as err:
                self.report("error", "bad-inode", str(err), relpath=child_rel)
                continue
            if node is not None:
                dnode.add(name, node, report=report, layer=LAYER, path_hint=hint)
        if missing:
            shown = ", ".join(missing[:MAX_NAMES_IN_MESSAGE])
            more = f" and {len(missing) - MAX_NAMES_IN_MESSAGE} more" \
                if len(missing) > MAX_NAMES_IN_MESSAGE else ""
            self.report("error", "inodes-lost",
                        f"{len(missing)} entries are not shown: their inodes lie in lost "
                        f"tree blocks: {shown}{more}", relpath=relpath)

    def _subvol_link(self, parent_tree, dirid, e: DirEntry, relpath):
        child = e.loc[0]
        if not self._root_ref_matches(parent_tree, child, dirid, e.name):
            # a subvolume inside a snapshot, or one being deleted: the kernel shows an
            # empty directory (BTRFS_EMPTY_SUBVOL_DIR_OBJECTID)
            return Dir(mode=0o755, mtime=Timestamp(int(time.time())))
        try:
            sv = self.subvol(child)
        except BtrfsError as err:
            self.report("error", "subvolume-unreadable", str(err), relpath=relpath)
            return Dir(mode=0o755)
        return self.inode_node(child, sv.dirid, relpath, [])

    def inode_node(self, tree_id: int, ino: int, relpath: str, missing: list, loaded=None,
                   sv: Subvol | None = None):
        """The node of inode ``ino`` of tree ``tree_id`` (None, reported, if broken).

        ``loaded`` is what :meth:`load_inodes` read for a whole directory at once.  Only
        inodes with several links are looked up in (and kept in) the node map: a hard
        link is one node; everything else has one name and needs no lookup."""
        key = (tree_id, ino)
        if loaded is None:
            with self._lock:
                node = self._nodes.get(key)
            if node is not None:
                return self._place(key, node, relpath)
        if sv is None:
            sv = self.subvol(tree_id)
        if loaded is None:
            loaded = self.load_inodes(sv, [ino], relpath)
        raws, xattr_map, lost = loaded
        raw_inode = raws.get(ino)
        if raw_inode is None:
            if ino in lost:
                missing.append(relpath.rpartition("/")[2])
                return None
            self.report("error", "inode-missing",
                        f"inode {ino} of tree {tree_id} has no inode item", relpath=relpath)
            return None
        inode = parse_inode(ino, raw_inode)
        shared = inode.nlink > 1
        if shared:
            with self._lock:
                node = self._nodes.get(key)
            if node is not None:
                return self._place(key, node, relpath)
        node = self._make_node(sv, inode, relpath)
        if node is None:
            return None
        xattrs = xattr_map.get(ino)
        if xattrs:
            node.xattrs.update(xattrs)
        node.nlink = inode.nlink
        if shared:
            with self._lock:
                node = self._nodes.setdefault(key, node)
        return self._place(key, node, relpath)

    def load_inodes(self, sv: Subvol, inos, relpath: str):
        """The inode items and xattrs of the inodes ``inos`` of ``sv``, read in one walk:
        ``({ino: inode item}, {ino: {name: value}}, {inos whose inode item may have been
        in a lost tree block})``."""
        wanted = sorted(set(inos))
        lost_ranges = []

        def damage(lo, hi, err):
            lost_ranges.append((lo, hi))
            self._lost_block(relpath, sv.tree_id, lo, hi, err)

        raws: dict[int, bytes] = {}
        xattrs: dict[int, dict] = {}
        for (oid, ktype, _koff), data in items_of(self.dev, sv.root, wanted, S.INODE_ITEM_KEY,
                                                  S.XATTR_ITEM_KEY, damage):
            if ktype == S.INODE_ITEM_KEY:
                raws.setdefault(oid, data)
            elif ktype == S.XATTR_ITEM_KEY:
                xs = xattrs.setdefault(oid, {})
                if len(xs) >= MAX_XATTRS:
                    continue
                try:
                    for x in parse_dir_items(data):
                        xs[x.name] = x.data
                except BtrfsError as err:
                    self.report("error", "bad-xattr", f"inode {oid}: {err}", relpath=relpath)
        lost = set()
        if lost_ranges:
            for ino in wanted:
                k = (ino, S.INODE_ITEM_KEY, 0)
                if ino not in raws and any((lo is None or lo <= k) and (hi is None or k < hi)
                                           for lo, hi in lost_ranges):
                    lost.add(ino)
        return raws, xattrs, lost

    def _place(self, key, node, relpath):
        """A directory is shown in one place only (a loop or a hard-linked directory
        in a damaged tree would make the tree infinite)."""
        if not isinstance(node, Dir):
            return node
        with self._lock:
            if key in self._placed_dirs:
                self.report("error", "directory-loop",
                            f"directory {key[1]} of tree {key[0]} is linked a second time; "
                            f"shown only at its first place", relpath=relpath)
                return None
            self._placed_dirs.add(key)
        return node

    def _make_node(self, sv: Subvol, ino: Inode, relpath: str):
        kw = dict(mtime=ino.mtime, atime=ino.atime, ctime=ino.ctime, uid=ino.uid, gid=ino.gid)
        fmt = stat.S_IFMT(ino.mode)
        perm = ino.mode & 0o7777
        tree_id, num = sv.tree_id, ino.ino
        if fmt == stat.S_IFDIR:
            return Dir(mode=perm, loader=lambda d: self._fill_dir(d, tree_id, num, relpath), **kw)
        if fmt == stat.S_IFREG:
            size = ino.size
            if size > (1 << 63):
                self.report("error", "bad-inode", f"inode {num}: size {size}", relpath=relpath)
                return None
            src = FileData(size, ino.nbytes, self, sv, ino, relpath, self.dev.sectorsize)
            return File(src, mode=perm, **kw)
        if fmt == stat.S_IFLNK:
            target = self._symlink_target(sv, ino, relpath)
            if target is None:
                return None
            node = Symlink(target, **kw)
            return node
        if fmt in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK):
            rdev = kernel_rdev(ino.rdev) if fmt in (stat.S_IFCHR, stat.S_IFBLK) else 0
            return Special(fmt | perm, rdev=rdev, **kw)
        self.report("error", "bad-inode", f"inode {num}: unknown mode {ino.mode:o}",
                    relpath=relpath)
        return None

    def _symlink_target(self, sv, ino: Inode, relpath: str):
        try:
            data = lookup(self.dev, sv.root, (ino.ino, S.EXTENT_DATA_KEY, 0))
        except BtrfsError as e:
            self.report("error", "symlink-unreadable", str(e),
                        ranges=getattr(e, "ranges", ()), relpath=relpath)
            return None
        if data is None or len(data) < S.FILE_EXTENT_INLINE_DATA_START:
            self.report("error", "symlink-unreadable",
                        f"symlink inode {ino.ino} has no inline extent", relpath=relpath)
            return None
        _g, ram_bytes, comp, _enc, _oe, etype = S.FILE_EXTENT_HEAD.unpack_from(data, 0)
        raw = bytes(data[S.FILE_EXTENT_INLINE_DATA_START:])
        if etype != S.FILE_EXTENT_INLINE:
            self.report("error", "symlink-unreadable",
                        f"symlink inode {ino.ino}: extent type {etype} is not inline",
                        relpath=relpath)
            return None
        if comp:
            try:
                raw = decompress(comp, raw, min(ram_bytes, MAX_SYMLINK), self.dev.sectorsize)
            except DecompressError as e:
                self.report("error", "symlink-unreadable", str(e), relpath=relpath)
                return None
        return raw[:min(ino.size, MAX_SYMLINK)]

    # -- file data -----------------------------------------------------------------------
    def _extents(self, sv: Subvol, ino: Inode, relpath: str):
        """``ExtentSource`` extents of a regular file (called on first read)."""
        size = ino.size
        view = self.logical.view(relpath, verify=not ino.flags & S.INODE_NODATASUM)
        out, lost = [], []

        def damage(lo, hi, err):
            self._lost_block(relpath, sv.tree_id, lo, hi, err)
            start = lo[2] if lo is not None and lo >= (ino.ino, S.EXTENT_DATA_KEY, 0) else 0
            end = hi[2] if hi is not None and hi <= (ino.ino, S.EXTENT_DATA_KEY, MAX) \
                and hi[:2] == (ino.ino, S.EXTENT_DATA_KEY) else size
            if start < min(end, size):
                lost.append((start, min(end, size) - start, str(err)))

        n = 0
        for (_o, _t, foff), data in items(self.dev, sv.root, (ino.ino, S.EXTENT_DATA_KEY, 0),
                                          (ino.ino, S.EXTENT_DATA_KEY, MAX), damage):
            n += 1
            if n > MAX_FILE_EXTENTS:
                self.report("error", "too-many-extents",
                            f"more than {MAX_FILE_EXTENTS} extents; the rest read as EIO",
                            relpath=relpath)
                lost.append((foff, max(0, size - foff), "too many extents"))
                break
            if foff >= size:
                continue
            try:
                ext = self._one_extent(view, foff, data, size)
            except (BtrfsError, DecompressError) as e:
                self.report("error", "bad-extent", f"extent at file offset {foff}: {e}",
                            relpath=relpath)
                ext = None
                nbytes = _extent_len(data)
                lost.append((foff, min(nbytes or (size - foff), size - foff), str(e)))
            if ext is not None:
                out.append(ext)
        for start, length, why in lost:
            out.append((start, length, MissingSource(length, f"extent items lost: {why}",
                                                     bad=self.bad), 0))
        return _no_overlaps(out)

    def _one_extent(self, view, foff: int, data: bytes, size: int):
        if len(data) < S.FILE_EXTENT_HEAD.size:
            raise BtrfsError(f"file extent item of {len(data)} bytes")
        _gen, ram_bytes, comp, enc, other, etype = S.FILE_EXTENT_HEAD.unpack_from(data, 0)
        if enc or other:
            raise BtrfsError(f"encrypted or encoded extent ({enc}, {other}) is not supported")
        if etype == S.FILE_EXTENT_INLINE:
            raw = bytes(data[S.FILE_EXTENT_INLINE_DATA_START:])
            if comp:
                if ram_bytes > S.MAX_UNCOMPRESSED:
                    raise BtrfsError(f"inline extent of {ram_bytes} bytes")
                raw = decompress(comp, raw, ram_bytes, self.dev.sectorsize)
            n = min(len(raw), size - foff)
            return (foff, n, BytesSource(raw[:n], label="btrfs inline extent"), 0) if n > 0 \
                else None
        if etype not in (S.FILE_EXTENT_REG, S.FILE_EXTENT_PREALLOC):
            raise BtrfsError(f"unknown extent type {etype}")
        if len(data) < S.FILE_EXTENT_HEAD.size + S.FILE_EXTENT_REG_TAIL.size:
            raise BtrfsError(f"regular extent item of {len(data)} bytes")
        disk_bytenr, disk_num_bytes, offset, num_bytes = S.FILE_EXTENT_REG_TAIL.unpack_from(
            data, S.FILE_EXTENT_HEAD.size)
        if etype == S.FILE_EXTENT_PREALLOC or disk_bytenr == 0:
            return None  # preallocated (reads as zeros) or a hole
        n = min(num_bytes, size - foff)
        if n <= 0:
            return None
        if comp == S.COMPRESS_NONE:
            if disk_bytenr + offset + n > self.logical.size:
                raise BtrfsError(f"extent {disk_bytenr:#x}+{offset:#x} lies beyond the chunks")
            return (foff, n, view, disk_bytenr + offset)
        if ram_bytes > S.MAX_UNCOMPRESSED or disk_num_bytes > S.MAX_COMPRESSED or \
                offset + n > ram_bytes or disk_num_bytes == 0:
            raise BtrfsError(f"compressed extent {disk_bytenr:#x}: ram_bytes {ram_bytes}, "
                             f"disk_num_bytes {disk_num_bytes}, offset {offset}, length {n}")
        ce = CompressedExtent(view, disk_bytenr, disk_num_bytes, comp, ram_bytes,
                              self.dev.sectorsize)
        return (foff, n, ce, offset)


    # -- damage to files -------------------------------------------------------------------
    def lost_logical(self, ranges) -> list[tuple[int, int]]:
        """Logical ranges whose every copy lies in the device ``ranges`` (merged, sorted)."""
        out = []
        for ch in self.dev.chunks.chunks:
            copies = ch.copies(self.dev.devid)
            if not copies:
                continue
            per_copy = []
            for off in copies:
                hits = []
                for start, length in ranges:
                    lo, hi = max(start, off), min(start + length, off + ch.length)
                    if lo < hi:
                        hits.append((ch.start + lo - off, ch.start + hi - off))
                per_copy.append(_merge(hits))
            common = per_copy[0]
            for other in per_copy[1:]:
                common = _intersect(common, other)
            out.extend(common)
        return _merge(out)

    def subvolume_paths(self, deadline) -> dict[int, str]:
        """Tree id -> path in the shown tree of every subvolume linked from the top level
        (``ROOT_BACKREF`` chains, checked against ``ROOT_REF`` like a lookup would)."""
        backrefs = {}
        try:
            for (child, ktype, parent), data in items(self.dev, self.root_tree, (0, 0, 0),
                                                      (MAX, 255, MAX), lambda *a: None):
                if ktype == S.ROOT_BACKREF_KEY and len(data) >= S.ROOT_REF_SIZE:
                    dirid, _seq, nlen = struct.unpack_from("<QQH", data, 0)
                    backrefs[child] = (parent, dirid,
                                       bytes(data[S.ROOT_REF_SIZE:S.ROOT_REF_SIZE + nlen]))
                if time.monotonic() > deadline:
                    break
        except BtrfsError:
            pass
        paths = {S.FS_TREE_OBJECTID: ""}

        def path_of(tree_id, depth=0):
            if tree_id in paths:
                return paths[tree_id]
            if depth > 64 or tree_id not in backrefs:
                return None
            parent, dirid, name = backrefs[tree_id]
            base = path_of(parent, depth + 1)
            if base is None or not self._root_ref_matches(parent, tree_id, dirid, name):
                return None
            try:
                sv = self.subvol(parent)
                d = self.inode_path(sv, dirid)
            except BtrfsError:
                return None
            if d is None:
                return None
            p = "/".join(x for x in (base, d, name.decode("utf-8", "surrogateescape")) if x)
            paths[tree_id] = p
            return p

        for tree_id in list(backrefs):
            path_of(tree_id)
        return {k: v for k, v in paths.items() if v is not None}

    def inode_path(self, sv: Subvol, ino: int) -> str | None:
        """Path of ``ino`` inside subvolume ``sv`` through its first ``INODE_REF``s."""
        parts = []
        for _depth in range(MAX_PATH_DEPTH):
            if ino == sv.dirid:
                return "/".join(reversed(parts))
            ref = None
            for (_o, _t, parent), data in items(self.dev, sv.root, (ino, S.INODE_REF_KEY, 0),
                                                (ino, S.INODE_REF_KEY, MAX), lambda *a: None):
                if len(data) >= S.INODE_REF.size:
                    _idx, nlen = S.INODE_REF.unpack_from(data, 0)
                    ref = (parent, bytes(data[S.INODE_REF.size:S.INODE_REF.size + nlen]))
                    break
            if ref is None:
                for (_o, _t, _h), data in items(self.dev, sv.root,
                                                (ino, S.INODE_EXTREF_KEY, 0),
                                                (ino, S.INODE_EXTREF_KEY, MAX), lambda *a: None):
                    if len(data) >= S.INODE_EXTREF.size:
                        parent, _idx, nlen = S.INODE_EXTREF.unpack_from(data, 0)
                        ref = (parent, bytes(data[S.INODE_EXTREF.size:
                                                  S.INODE_EXTREF.size + nlen]))
                        break
            if ref is None or ref[0] == ino:
                return None
            parts.append(ref[1].decode("utf-8", "surrogateescape"))
            ino = ref[0]
        return None

    def files_in_ranges(self, ranges, limit=50):
        """Files whose data or inode lie on device ``ranges`` in every copy.

        The logical ranges lost are matched against the ``EXTENT_DATA`` items of every
        subvolume shown; when a tree block of a subvolume is lost too, the directory
        entries (``DIR_INDEX``) whose inode items it held are named as well.  Bounded in
        time and items."""
        lost = self.lost_logical(ranges)
        if not lost:
            return [], 0
        starts = [lo for lo, _hi in lost]

        def hits(lo, hi):
            i = bisect.bisect_right(starts, hi - 1) - 1
            return i >= 0 and lost[i][1] > lo

        deadline = time.monotonic() + FILES_IN_RANGES_BUDGET
        names: list[str] = []
        total = 0
        budget = FILES_IN_RANGES_ITEMS
        nodesize = self.dev.nodesize
        for tree_id, prefix in sorted(self.subvolume_paths(deadline).items(),
                                      key=lambda kv: kv[1]):
            try:
                sv = self.subvol(tree_id)
            except BtrfsError:
                continue
            hit: list[tuple] = []  # (ino,) for data, (dir ino, name) for lost inodes
            lost_blocks = []

            def damage(lo, hi, err, lost_blocks=lost_blocks):
                logical = getattr(err, "logical", None)
                if logical is not None and hits(logical, logical + nodesize):
                    lost_blocks.append((lo, hi))

            for (ino, ktype, _foff), data in items(self.dev, sv.root, (0, 0, 0),
                                                    (MAX, 255, MAX), damage):
                budget -= 1
                if budget <= 0 or time.monotonic() > deadline:
                    break
                if ktype != S.EXTENT_DATA_KEY or len(data) < S.FILE_EXTENT_HEAD.size + \
                        S.FILE_EXTENT_REG_TAIL.size:
                    continue
                _g, _ram, comp, _e, _o, etype = S.FILE_EXTENT_HEAD.unpack_from(data, 0)
                if etype != S.FILE_EXTENT_REG:
                    continue
                bytenr, disk_num, offset, num = S.FILE_EXTENT_REG_TAIL.unpack_from(
                    data, S.FILE_EXTENT_HEAD.size)
                if bytenr == 0:
                    continue
                lo, hi = (bytenr, bytenr + disk_num) if comp else \
                    (bytenr + offset, bytenr + offset + num)
                if hits(lo, hi) and (not hit or hit[-1] != (ino,)):
                    hit.append((ino,))
            if lost_blocks:
                hit.extend(self._entries_of_lost_inodes(sv, lost_blocks, deadline))
            for h in hit:
                total += 1
                if len(names) >= limit:
                    continue
                try:
                    p = self.inode_path(sv, h[0])
                except BtrfsError:
                    p = None
                if p is None:
                    p = f"<inode {h[0]} of subvolume {tree_id}>"
                if len(h) > 1:
                    p = "/".join(x for x in (p, h[1]) if x)
                names.append("/".join(x for x in (prefix, p) if x))
            if budget <= 0 or time.monotonic() > deadline:
                self.report("warning", "damage-map-partial",
                            "mapping damage to files stopped early (time or item budget); "
                            "more files may be hit")
                break
        return names, total

    def _entries_of_lost_inodes(self, sv: Subvol, lost_blocks, deadline):
        """``(directory inode, name)`` of the entries whose inode item lies in one of the
        lost blocks' key ranges (``DIR_INDEX`` items elsewhere still name them)."""
        def in_lost(oid):
            k = (oid, S.INODE_ITEM_KEY, 0)
            return any((lo is None or lo <= k) and (hi is None or k < hi)
                       for lo, hi in lost_blocks)

        out = []
        for (parent, ktype, _idx), data in items(self.dev, sv.root, (0, 0, 0), (MAX, 255, MAX),
                                                 lambda *a: None):
            if time.monotonic() > deadline:
                break
            if ktype != S.DIR_INDEX_KEY:
                continue
            try:
                e = parse_dir_items(data)[0]
            except (BtrfsError, IndexError):
                continue
            if e.loc[1] == S.INODE_ITEM_KEY and in_lost(e.loc[0]):
                out.append((parent, e.name.decode("utf-8", "surrogateescape")))
        return out


def _merge(ranges):
    out = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _intersect(a, b):
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo < hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def _extent_len(data: bytes):
    if len(data) >= S.FILE_EXTENT_HEAD.size + S.FILE_EXTENT_REG_TAIL.size:
        return S.FILE_EXTENT_REG_TAIL.unpack_from(data, S.FILE_EXTENT_HEAD.size)[3]
    return None


def _no_overlaps(extents):
    """Sorted by file offset, each clipped to start where the previous one ends."""
    out = []
    end = 0
    for off, n, target, toff in sorted(extents, key=lambda e: e[0]):
        if off < end:
            cut = end - off
            if cut >= n:
                continue
            off, n, toff = off + cut, n - cut, toff + cut
        out.append((off, n, target, toff))
        end = off + n
    return out
