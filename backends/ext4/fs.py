"""The pvfs tree of an ext2/3/4 filesystem: lazy directories, files over extents, damage.

One inode is one node (hard links share the node), a directory is listed the first time
it is asked for, and every bad thing (an unreadable inode-table block, a garbage inode,
a directory block whose checksum fails) is one damage entry naming the tree path, while
the rest of the filesystem lists.

# References:
# - Linux fs/ext4/namei.c (ext4_lookup: the inode behind a directory entry),
#   fs/ext4/inode.c (ext4_iget: types, device numbers, symlinks), fs/ext4/symlink.c,
#   fs/ext4/inline.c (ext4_read_inline_data), fs/ext4/ialloc.c (inode bitmaps: what is
#   in use), e2fsprogs e2fsck/pass3.c (unreachable inodes go to lost+found: here shown,
#   never moved).
"""

from __future__ import annotations

import os
import stat
import struct
import threading
import time

from pvfs.guestfs import FilesystemInfo, GuestFilesystem
from pvfs.nodes import gc_paused, Dir, File, Special, Symlink
from pvfs.source import (
    BAD_EIO, BytesSource, ExtentSource, MissingSource, SliceSource, Source,
)

from .structs import (
    EXT4_ENCRYPT_FL, EXT4_HUGE_FILE_FL, EXT4_INLINE_DATA_FL, EXT4_ROOT_INO, EXT4_XATTR_MAGIC,
)
from .superblock import Ext4Error
from .volume import (
    RUN_BAD, RUN_DATA, Ext4Volume, InodeError, Problem, device_number,
)

LAYER = "ext4"
#: Exceptions a parser may raise on bytes no check foresaw (caught per entry, so a bug on
#: hostile input costs that entry, not the directory; the fuzz tests look for them).
_PARSER_SLIPS = (struct.error, ValueError, IndexError, KeyError, OverflowError)
_XATTR_MAGIC_LE = struct.pack("<I", EXT4_XATTR_MAGIC)  # the in-inode xattr area's header
#: Regular files that need more than an extent map (ExtentSource) to read.
_SLOW_FILE_FLAGS = EXT4_ENCRYPT_FL | EXT4_INLINE_DATA_FL
MAX_LINK_CACHE = 1_000_000  # hard-linked inodes remembered (one node per inode)
MAX_SYMLINK = 4096  # PATH_MAX
MAX_DIR_ENTRIES = 5_000_000  # one directory; more is garbage
ORPHAN_SCAN_BUDGET_S = 120.0
DAMAGE_MAP_BUDGET_S = 20.0
LOST_FOUND = ".lost+found"


def fs_name(raw: bytes) -> str:
    """A name as the mount hands it to the kernel (os.fsencode gives the bytes back)."""
    return raw.decode("utf-8", "surrogateescape")


class Ext4FileSource(Source):
    """A regular file's bytes: its block map becomes an ExtentSource on first use (one
    per open file, kept), so a 128 KiB read costs one bisect and one read below.
    Unwritten extents and holes read as zeros (``unmapped``); blocks whose mapping is
    lost read EIO (or zeros with ``--bad zero``)."""

    cheap_allocation = True

    def __init__(self, fs: Ext4Filesystem, ino: int, size: int, allocated: int, path: str):
        super().__init__()
        self.fs = fs
        self.ino = ino
        self.size = size
        self.path = path
        self.label = f"ext4 inode {ino}"
        self._allocated = allocated
        self._ext: ExtentSource | None = None
        self.has_unreadable = fs.vol.data.has_unreadable

    def _source(self) -> ExtentSource:
        ext = self._ext
        if ext is None:
            with self.fs.extent_lock:  # one per filesystem: a lock per file costs µs each
                if self._ext is None:
                    self._ext = self.fs.extent_source(self.ino, self.size, self.path)
                    if any(isinstance(e[2], MissingSource) for e in self._ext.extents):
                        self.has_unreadable = True
                ext = self._ext
        return ext

    def _read(self, offset, length):
        return self._source()._read(offset, length)

    def _block_status(self, offset, length):
        return self._source()._block_status(offset, length)

    def allocated_bytes(self) -> int:
        return self._allocated


def _flatten(target, offset, length):
    """``(target, offset)`` with plain slices (a partition of a raw disk) taken out:
    the same bytes, status and errors, one Python layer less per read.  Only a range
    that lies wholly inside the slice's parent is moved (past its end the slice decides)."""
    for _ in range(8):
        if type(target) is not SliceSource or offset + length > target.size \
                or target.offset + offset + length > target.parent.size:
            break
        offset += target.offset
        target = target.parent
    return target, offset


class InlineSource(BytesSource):
    """An inline_data file's bytes.  Its allocation is what ``ext4_file_getattr`` reports:
    the xattr block if any plus the size rounded up to sectors (so tools do not take the
    file for all holes)."""

    cheap_allocation = True

    def __init__(self, data: bytes, allocated: int, ino: int):
        super().__init__(data, label=f"ext4 inode {ino}")
        self._allocated = allocated

    def allocated_bytes(self) -> int:
        return self._allocated


class Ext4Filesystem(GuestFilesystem):
    """One ext2/3/4 filesystem shown as a tree (``pvfs.guestfs`` contract)."""

    def __init__(self, vol: Ext4Volume, report=None, where=None, bad: str = BAD_EIO,
                 journal: str | None = None, notes=()):
        self.vol = vol
        self.sb = vol.sb
        self._report = report
        self._where = where or (lambda: "")
        self.bad = bad
        self._links: dict[int, object] = {}
        self._dirs_seen: set[int] = set()
        self._lock = threading.Lock()
        self.extent_lock = threading.Lock()
        self._encrypted_reported = False
        self.damage_count = 0
        sb = vol.sb
        self.info = FilesystemInfo(
            sb.fstype, label=sb.label or None, uuid=sb.uuid, size=sb.size,
            used=sb.used_bytes(), clean=sb.clean, journal=journal, notes=list(notes))
        self._problems(vol.gdt_problems, "")

    # -- damage -------------------------------------------------------------------
    def path_of(self, rel: str) -> str:
        base = self._where()
        return f"{base}/{rel}" if rel and base else rel or base

    def damage(self, severity, code, message, ranges=(), at=""):
        """One damage entry at the tree path of the entry ``at`` (relative to the root)."""
        self.damage_count += 1
        if self._report is not None:
            self._report.add(severity, LAYER, self.path_of(at), code, message, list(ranges))

    def _problems(self, problems, rel):
        for p in problems:
            self.damage(p.severity, p.code, p.message, p.ranges, at=rel)

    # -- the tree -----------------------------------------------------------------
    def root(self) -> Dir:
        try:
            inode = self.vol.read_inode(EXT4_ROOT_INO)
            if not stat.S_ISDIR(inode.mode):
                raise InodeError(Problem("error", "root-bad", "root inode is not a directory"))
        except InodeError as e:
            self._problems([e.problem._replace(
                message=f"{e} (the tree is reached only through {LOST_FOUND})")], "")
            d = Dir(mode=0o755, loader=lambda d: self._add_lost_found(d, ""))
            return d
        self._dirs_seen.add(EXT4_ROOT_INO)
        d = Dir(mode=inode.mode, loader=lambda d: self._load_dir(d, EXT4_ROOT_INO, "", True),
                uid=inode.uid, gid=inode.gid, mtime=inode.mtime, atime=inode.atime,
                ctime=inode.ctime)
        d.nlink = inode.links
        self._set_xattrs(d, inode, "")
        return d

    def _load_dir(self, d: Dir, ino: int, rel: str, is_root: bool = False):
        with gc_paused():
            self._load_dir_entries(d, ino, rel, is_root)

    def _load_dir_entries(self, d: Dir, ino: int, rel: str, is_root: bool):
        problems: list = []
        try:
            inode = self.vol.read_inode(ino)
            entries = self.vol.dir_entries(inode, problems)
            hint = self.path_of(rel)
            report = self._report
            for n, (name, child_ino, _ftype) in enumerate(entries, 1):
                if n > MAX_DIR_ENTRIES:
                    self.damage("error", "directory-too-large",
                                f"directory inode {ino}: more than {MAX_DIR_ENTRIES} entries; "
                                "the rest is not listed", at=rel)
                    break
                sname = fs_name(name)
                crel = f"{rel}/{sname}" if rel else sname
                try:
                    node = self.node(child_ino, crel)
                except _PARSER_SLIPS as e:  # a parser bug on hostile bytes: one entry lost
                    self.damage("error", "inode-parse-failed",
                                f"inode {child_ino}: {type(e).__name__}: {e}", at=crel)
                    continue
                if node is not None:
                    d.add(sname, node, report=report, layer=LAYER, path_hint=hint)
        except InodeError as e:
            self._problems([e.problem._replace(
                message=f"directory {e}; listed as far as it could be read")], rel)
        except (Ext4Error, OSError) as e:
            self.damage("error", "directory-unreadable",
                        f"directory inode {ino}: {e}; listed as far as it could be read",
                        getattr(e, "ranges", ()), at=rel)
        self._problems(problems, rel)
        if is_root:
            self._add_lost_found(d, rel)

    def node(self, ino: int, rel: str):
        """The node of inode ``ino`` (reached as ``rel``), or None after reporting why."""
        cached = self._links.get(ino)
        if cached is not None:
            return cached
        try:
            inode = self.vol.read_inode(ino)
        except InodeError as e:
            self._problems([e.problem], rel)
            return None
        except (Ext4Error, OSError) as e:
            self.damage("error", "inode-unreadable", f"inode {ino}: {e}", at=rel)
            return None
        if inode.csum_ok is False:
            self.damage("warning", "inode-checksum",
                        f"inode {ino}: checksum mismatch; shown as parsed (its fields are "
                        "sane), its data read through a block map the checksum no longer "
                        "vouches for: check the contents",
                        [(self.vol.inode_location(ino), len(inode.raw))], at=rel)
        t = inode.mode & 0o170000
        problems: list = []
        if t == stat.S_IFREG and not inode.flags & _SLOW_FILE_FLAGS:
            # the common case, kept short: a listing makes tens of thousands of these
            node = File(Ext4FileSource(self, ino, inode.size, self._allocated(inode), rel),
                        mode=inode.mode, uid=inode.uid, gid=inode.gid, mtime=inode.mtime,
                        atime=inode.atime, ctime=inode.ctime)
            return self._finish(node, inode, rel, problems, t)
        kw = {"uid": inode.uid, "gid": inode.gid, "mtime": inode.mtime, "atime": inode.atime,
              "ctime": inode.ctime}
        try:
            if t == stat.S_IFDIR:
                with self._lock:
                    if ino in self._dirs_seen:
                        self.damage("error", "directory-cycle",
                                    f"directory inode {ino} is reached a second time (a "
                                    "directory hard link or a cycle); not shown again here", at=rel)
                        return None
                    self._dirs_seen.add(ino)
                node = Dir(mode=inode.mode, loader=lambda d: self._load_dir(d, ino, rel), **kw)
            elif t == stat.S_IFREG:
                node = File(self._file_source(inode, rel, problems), mode=inode.mode, **kw)
            elif t == stat.S_IFLNK:
                node = Symlink(self._symlink_target(inode, problems), **kw)
            elif t in (stat.S_IFCHR, stat.S_IFBLK):
                node = Special(inode.mode, rdev=os.makedev(*device_number(inode)), **kw)
            else:
                node = Special(inode.mode, **kw)
        except InodeError as e:
            self._problems([*problems, e.problem._replace(message=f"inode {ino}: {e}")], rel)
            return None
        except (Ext4Error, OSError) as e:
            self._problems(problems, rel)
            self.damage("error", "inode-data-unreadable", f"inode {ino}: {e}",
                        getattr(e, "ranges", ()), at=rel)
            return None
        return self._finish(node, inode, rel, problems, t)

    def _finish(self, node, inode, rel, problems, t):
        """Link count, xattrs, problems, and one node per hard-linked inode."""
        node.nlink = links = inode.links
        x = inode.extra_isize
        if inode.file_acl or (x and inode.raw[128 + x:132 + x] == _XATTR_MAGIC_LE):
            node.xattrs = self.vol.xattrs(inode, problems)  # else there are none
        if problems:
            self._problems(problems, rel)
        if links > 1 and t != stat.S_IFDIR and len(self._links) < MAX_LINK_CACHE:
            with self._lock:
                node = self._links.setdefault(inode.ino, node)
        return node

    def _set_xattrs(self, node, inode, rel, problems=None):
        own = problems is None
        problems = [] if own else problems
        node.xattrs = self.vol.xattrs(inode, problems)
        if own:
            self._problems(problems, rel)

    def _allocated(self, inode) -> int:
        """st_blocks * 512 as the kernel reports it (``ext4_inode_blocks``)."""
        if inode.flags & EXT4_HUGE_FILE_FL:
            return inode.blocks * self.vol.block_size
        return inode.blocks * 512

    def _file_source(self, inode, rel, problems) -> Source:
        if inode.flags & EXT4_ENCRYPT_FL:  # fscrypt: the blocks are ciphertext
            if not self._encrypted_reported:
                self._encrypted_reported = True
                self.damage("warning", "encrypted-files",
                            "this filesystem has fscrypt-encrypted files (this one is the first "
                            "found); pvfs has no keys: their names are shown as stored and "
                            "their contents are unreadable", at=rel)
            return MissingSource(inode.size, "fscrypt-encrypted file", bad=self.bad,
                                 label=f"ext4 inode {inode.ino}")
        if inode.has_inline_data:
            return InlineSource(self.vol.inline_data(inode), self._allocated(inode)
                                + (inode.size + 511) // 512 * 512, inode.ino)
        return Ext4FileSource(self, inode.ino, inode.size, self._allocated(inode), rel)

    def _symlink_target(self, inode, problems) -> bytes:
        if inode.size > MAX_SYMLINK:
            raise InodeError(Problem("error", "symlink-bad", f"symlink of {inode.size} bytes"))
        if inode.has_inline_data:
            return self.vol.inline_data(inode)[:inode.size]
        if self.vol.is_fast_symlink(inode):
            return inode.i_block[:inode.size]
        return self.vol.read_small(inode, MAX_SYMLINK, problems)

    def extent_source(self, ino: int, size: int, rel: str) -> ExtentSource:
        """The ExtentSource of a regular file (built once per file, on first read)."""
        vol = self.vol
        bs = vol.block_size
        problems: list = []
        try:
            inode = vol.read_inode(ino)
            runs = vol.block_map(inode, problems)
        except InodeError as e:
            self._problems([e.problem._replace(message=f"{e}; the file is unreadable")], rel)
            runs = [(0, -(-size // bs), 0, RUN_BAD)]
        except (Ext4Error, OSError) as e:
            self.damage("error", "file-map-unreadable", f"inode {ino}: {e}; the file is unreadable",
                        getattr(e, "ranges", ()), at=rel)
            runs = [(0, -(-size // bs), 0, RUN_BAD)]
        self._problems(problems, rel)
        missing = None
        extents = []
        for lblk, count, pblk, kind in runs:
            off = lblk * bs
            if off >= size:
                continue
            ln = min(count * bs, size - off)
            if kind == RUN_DATA:
                extents.append((off, ln, *_flatten(vol.data, pblk * bs, ln)))
            elif kind == RUN_BAD:
                if missing is None:
                    missing = MissingSource(size, f"ext4 inode {ino}: block map damaged",
                                            bad=self.bad, label=f"ext4 inode {ino}")
                extents.append((off, ln, missing, off))
            # RUN_UNWRITTEN: left out, reads as zeros
        return ExtentSource(size, extents, label=f"ext4 inode {ino}")

    # -- orphans --------------------------------------------------------------------
    def _add_lost_found(self, d: Dir, rel: str):
        d.add(LOST_FOUND, Dir(mode=0o500, loader=lambda od: self._load_orphans(od)),
              report=self._report, layer=LAYER, path_hint=self.path_of(rel))

    def reachable_inodes(self, deadline: float, want=frozenset()):
        """``(reached, parents, complete)``: the set of inode numbers reached from the root
        (directories walked, other inodes not loaded) and ``{ino: (parent ino, name
        bytes)}`` for the directories and the inodes in ``want`` only (names for a million
        files would cost more memory than the mount may use).  Bounded by ``deadline``;
        ``complete`` is False when it ran out."""
        parents: dict[int, tuple[int, bytes]] = {EXT4_ROOT_INO: (0, b"")}
        reached = {EXT4_ROOT_INO}
        todo = [EXT4_ROOT_INO]
        complete = True
        filetype = self.vol.filetype
        while todo:
            if time.monotonic() > deadline:
                complete = False
                break
            ino = todo.pop()
            try:
                inode = self.vol.read_inode(ino)
                if not stat.S_ISDIR(inode.mode):
                    continue
                for name, child, ftype in self.vol.dir_entries(inode, []):
                    # without the filetype feature every child is tried as a directory
                    is_dir = ftype == 2 or not filetype
                    if is_dir or child in want:
                        parents.setdefault(child, (ino, name))
                    if child not in reached:
                        reached.add(child)
                        if is_dir:
                            todo.append(child)
            except (Ext4Error, OSError):
                continue
        return reached, parents, complete

    def internal_inodes(self) -> set[int]:
        """Inodes the superblock names for the filesystem's own use (journal, orphan file,
        quota files, snapshot): in use, in no directory, and not lost."""
        x = self.sb.sb
        return {i for i in (x.s_journal_inum, x.s_orphan_file_inum, x.s_usr_quota_inum,
                            x.s_grp_quota_inum, x.s_prj_quota_inum, x.s_snapshot_inum) if i}

    def used_inodes(self, deadline: float):
        """Yield inode numbers the inode bitmaps mark in use (from s_first_ino on); a
        group whose bitmap cannot be read counts as all in use (callers load and check
        each inode)."""
        sb = self.sb
        ipg = sb.inodes_per_group
        internal = self.internal_inodes()
        for g in range(sb.group_count):
            if time.monotonic() > deadline:
                return
            try:
                bm = self.vol.inode_bitmap(g)
            except (Ext4Error, OSError):
                if self.vol.groups[g][0] is None:
                    continue
                bm = b"\xff" * (ipg // 8)
            if bm is None or not any(bm):
                continue
            base = g * ipg + 1
            for byte_i, byte in enumerate(bm):
                if not byte:
                    continue
                for bit in range(8):
                    if byte >> bit & 1:
                        ino = base + byte_i * 8 + bit
                        if sb.first_ino <= ino <= sb.inodes_count and ino not in internal:
                            yield ino

    def _load_orphans(self, d: Dir):
        """Inodes in use (bitmap bit set, links > 0) that no directory reaches, under their
        number; directories among them bring their subtrees (e2fsck pass 3/4, shown only)."""
        deadline = time.monotonic() + ORPHAN_SCAN_BUDGET_S
        reached, _parents, complete = self.reachable_inodes(deadline)
        if not complete:
            self.damage("warning", "orphan-scan-incomplete",
                        "time budget used up while walking the directories; unreachable "
                        "inodes were not searched", at=LOST_FOUND)
            return
        orphans = []
        for ino in self.used_inodes(deadline):
            if ino in reached:
                continue
            try:
                inode = self.vol.read_inode(ino)
            except (Ext4Error, OSError):
                continue
            if inode.flags & 0x00200000:  # EA_INODE: an xattr value, not a file
                continue
            orphans.append((ino, inode))
        # Directories among the orphans: what they reach is not an orphan of its own.
        reached_below = set()
        for _ino, inode in orphans:
            if stat.S_ISDIR(inode.mode):
                try:
                    for _n, child, _t in self.vol.dir_entries(inode, []):
                        reached_below.add(child)
                except (Ext4Error, OSError):
                    pass
        for ino, _inode in orphans:
            if ino in reached_below:
                continue
            node = self.node(ino, f"{LOST_FOUND}/{ino}")
            if node is not None:
                d.add(str(ino), node)
        found = len(d.children())  # the loader is running: no recursion
        if found:
            self.damage("warning", "orphan-inodes",
                        f"{found} inodes in use are reached by no directory; "
                        f"shown under {LOST_FOUND}/<inode number>", at=LOST_FOUND)

    # -- damage to files ----------------------------------------------------------------
    def files_in_ranges(self, ranges, limit=50):
        from .damagemap import files_in_ranges

        return files_in_ranges(self, ranges, limit, time.monotonic() + DAMAGE_MAP_BUDGET_S)
