"""An XFS filesystem as a pvfs node tree (pvfs's own reader).

Inodes are read by number (the number encodes AG, block and slot), so no AG
header, free-space or inode btree is needed: a zeroed secondary AG header (or
a zeroed AGF/AGI anywhere) costs nothing, and a zeroed primary superblock is
replaced by a secondary one (in ``__init__``).  Every inode, directory block,
btree block and attribute block is checked (magic, CRC on v5, bounds) and a bad
one is one damage entry; the rest lists.

File data is an :class:`ExtentSource` over ``volume.source`` built from the
extent list (holes and unwritten extents read as zeros and are ``unmapped``), so
bad sectors below give EIO in exactly the files they hit.

References: see ondisk.py.
"""

from __future__ import annotations

import os
import stat
import threading
import time

import numpy as np

import struct

from pvfs.errors import FormatError, UnreadableError
from pvfs.guestfs import FilesystemInfo, GuestFilesystem
from pvfs.nodes import Dir, File, Special, Symlink, Timestamp
from pvfs.source import ExtentSource, MissingSource, Source

from . import ondisk as D

LAYER = "xfs"
MAX_ENTRIES_PER_DIR = 2_000_000
MAX_BMBT_BLOCKS = 1_000_000
MAX_ATTR_BLOCKS = 100_000
MAX_XATTR_VALUE = 65536
LOG_BACK_WINDOW = 2 << 20  # > the largest in-core log buffer (256 KiB) and its headers
SCAN_BUDGET_S = 60.0
#: Sparse files may be larger than the volume (a 300 GB lastlog on a 20 GB disk), but not
#: this large: a bigger size is a garbage inode (v4 has no CRC to catch it).
MAX_FILE_SIZE = 1 << 50
#: What a parser may raise on hostile bytes it did not foresee; caught per entry so
#: that one bad structure is one damage entry, never a traceback.
BAD = (FormatError, UnreadableError, IndexError, ValueError, struct.error, OverflowError)


class FileData(Source):
    """A regular file's data: its extent map is read on first use (listing a directory
    reads only the inodes), then it is an :class:`ExtentSource` over the volume.

    ``allocated_bytes`` is the inode's ``di_nblocks`` (what the kernel reports as
    ``st_blocks``), known without I/O.  A bad extent map is an :class:`UnreadableError`
    on read and one damage entry."""

    cheap_allocation = True

    def __init__(self, fs: XfsFilesystem, inode: D.Inode, path: str):
        super().__init__()
        self.fs = fs
        self.inode = inode
        self.path = path
        self.size = inode.size
        self.label = f"xfs:/{path}"
        self._map: ExtentSource | None = None
        self._lock = threading.Lock()

    @property
    def extents(self):
        return self._mapped().extents

    def _mapped(self) -> ExtentSource:
        if self._map is None:
            with self._lock:
                if self._map is None:
                    try:
                        pieces = self.fs._mapping(self.fs.fork_extents(self.inode), self.size,
                                                  self.path)
                    except BAD as e:
                        self.fs._damage("error", "bad-extent-map", f"inode {self.inode.ino}: {e}",
                                        self.path, getattr(e, "ranges", ()))
                        pieces = [(0, self.size, MissingSource(
                            self.size, f"extent map unreadable: {e}", bad=self.fs.bad), 0)]
                    self._map = ExtentSource(self.size, pieces, label=self.label)
                    self.has_unreadable = self._map.has_unreadable
        return self._map

    def _read(self, offset, length):
        return self._mapped()._read(offset, length)

    def _block_status(self, offset, length):
        return self._mapped()._block_status(offset, length)

    def allocated_bytes(self) -> int:
        return self.inode.nblocks * self.fs.geo.blocksize


class XfsFilesystem(GuestFilesystem):
    def __init__(self, volume, ctx, geo: D.Geometry, notes: list[str]):
        self.pvfs_volume = volume
        self.ctx = ctx
        self.report = ctx.report
        self.bad = ctx.bad()
        self.where = volume.path
        self.geo = geo
        self.source: Source = volume.source
        self.nodes: dict[int, object] = {}
        self.bad_inodes: set[int] = set()  # one damage entry per bad inode, not per name
        u = geo.uuid.hex()
        uuid = f"{u[:8]}-{u[8:12]}-{u[12:16]}-{u[16:20]}-{u[20:]}"
        used = max(0, geo.dblocks - geo.fdblocks) * geo.blocksize
        self.info = FilesystemInfo("xfs", label=geo.label or None, uuid=uuid, size=geo.size,
                                   used=used, notes=notes)
        self._check_log()

    # -- helpers ------------------------------------------------------------------------
    def tree_path(self, path: str) -> str:
        places = self.pvfs_volume.files_paths
        base = places[0] if places else f"{self.where}:"
        return f"{base}/{path}" if path else base

    def _damage(self, severity, code, message, path="", ranges=()):
        """One damage entry about the entry at ``path`` (relative to the root)."""
        self.report.add(severity, LAYER, self.tree_path(path), code, message, ranges)

    def _valid_fsb(self, fsb: int, count: int = 1) -> bool:
        g = self.geo
        agno, agbno = fsb >> g.agblklog, fsb & ((1 << g.agblklog) - 1)
        return agno < g.agcount and agbno + count <= g.agblocks and \
            g.fsb_offset(fsb) + count * g.blocksize <= self.source.size

    def read_block(self, fsb: int, count: int = 1) -> bytes:
        if not self._valid_fsb(fsb, count):
            raise FormatError(f"block {fsb} (+{count}) lies outside the filesystem")
        return self.source.read(self.geo.fsb_offset(fsb), count * self.geo.blocksize)

    def inode_offset(self, ino: int) -> int:
        g = self.geo
        agno = ino >> (g.agblklog + g.inopblog)
        agbno = (ino >> g.inopblog) & ((1 << g.agblklog) - 1)
        if agno >= g.agcount or agbno >= g.agblocks:
            raise FormatError(f"inode number {ino} lies outside the filesystem")
        return g.ino_offset(ino)

    def read_inode(self, ino: int) -> D.Inode:
        off = self.inode_offset(ino)
        return D.parse_inode(self.source.read(off, self.geo.inodesize), ino, self.geo)

    # -- the log --------------------------------------------------------------------------
    def _check_log(self):
        """Clean when the newest log record is an unmount record (the kernel's
        ``xlog_check_unmount_rec``); the log is never replayed."""
        g, info = self.geo, self.info
        if not g.logstart:
            info.notes.append("external log: clean state unknown")
            return
        start, length = g.fsb_offset(g.logstart), g.logblocks * g.blocksize
        if length < 1024 or start + length > self.source.size:
            return
        try:
            best = self._newest_log_record(start, length)
            if best is None:
                info.clean = True  # an empty log (fresh mkfs)
                info.journal = "log empty"
                return
            lsn, off, num_logops, hblocks = best
            op = self.source.read(off + hblocks * 512, 12)
            clean = num_logops == 1 and bool(op[9] & D.XLOG_UNMOUNT_TRANS)
        except BAD as e:
            self.report.add("warning", LAYER, self.where, "log-unreadable",
                            f"the log could not be checked: {e}")
            return
        info.clean = clean
        if clean:
            info.journal = "log clean (unmount record)"
        else:
            info.journal = "dirty log not replayed: showing the on-disk state (as " \
                           "mount -o ro,norecovery)"
            self.report.add("warning", LAYER, self.where, "log-not-replayed",
                            f"the XFS log holds transactions after its last unmount record "
                            f"(newest record cycle {lsn >> 32}, block {lsn & 0xFFFFFFFF}); "
                            "pvfs does not replay it: files changed last may be stale")

    def _newest_log_record(self, start: int, length: int):
        """``(lsn, offset, num_logops, header blocks)`` of the newest log record header.

        As the kernel's ``xlog_find_head``: every 512-byte log block starts with its
        cycle number (a record header has it after the magic); the blocks before the
        head carry the current cycle, those after it the previous one, so a binary
        search finds the head in a few reads.  The newest header is the last one
        before it (searched back over a window larger than an in-core log buffer)."""
        nbb = length // 512

        def cycle(bb):
            magic, cyc = struct.unpack(">II", self.source.read(start + bb * 512, 8))
            return cyc if magic == D.XLOG_HEADER_MAGIC_NUM else magic

        c0 = cycle(0)
        if c0 == 0:
            return None  # never written
        if cycle(nbb - 1) == c0:
            head = nbb
        else:
            lo, hi = 0, nbb - 1
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if cycle(mid) == c0:
                    lo = mid
                else:
                    hi = mid
            head = hi
        window = LOG_BACK_WINDOW // 512
        spans = [(max(0, head - window), head)]
        if head < window:  # the newest record may have wrapped to the end of the log
            spans.append((max(head, nbb - (window - head)), nbb))
        best = None
        for lo, hi in spans:
            chunk = self.source.read(start + lo * 512, (hi - lo) * 512)
            words = np.frombuffer(chunk, dtype=">u4")[::128]
            for i in np.nonzero(words == D.XLOG_HEADER_MAGIC_NUM)[0]:
                h = D.log_record_header(chunk[i * 512:i * 512 + 512])
                if h is not None and (best is None or h[0] > best[0]):
                    best = (h[0], start + (lo + int(i)) * 512, h[1], h[2])
        return best

    # -- extent maps -------------------------------------------------------------------------
    def fork_extents(self, inode: D.Inode, attr: bool = False):
        """``[(file_block, fs_block, count, unwritten)]`` of a fork in extents or btree format."""
        fmt = inode.aformat if attr else inode.format
        fork = inode.afork if attr else inode.dfork
        n = inode.anextents if attr else inode.nextents
        if fork is None:
            return []
        if fmt == D.XFS_DINODE_FMT_EXTENTS:
            if n * 16 > len(fork):
                raise FormatError(f"{n} extents do not fit the {len(fork)}-byte fork")
            return D.unpack_extents(fork, n)
        if fmt != D.XFS_DINODE_FMT_BTREE:
            raise FormatError(f"fork format {fmt} has no extent map")
        level, ptrs = D.bmdr_root(fork)
        out, seen = [], set()
        todo = [(level - 1, p) for p in reversed(ptrs)]
        while todo:
            want, fsb = todo.pop()
            if fsb in seen or len(seen) > MAX_BMBT_BLOCKS:
                raise FormatError("block map btree loops or is too large")
            seen.add(fsb)
            block = self.read_block(fsb)
            lvl, numrecs, hdr = D.bmbt_block(block, self.geo.crc)
            if lvl != want:
                raise FormatError(f"block map btree block {fsb} has level {lvl}, not {want}")
            if lvl == 0:
                out.extend(D.unpack_extents(block[hdr:hdr + 16 * numrecs], numrecs))
            else:
                todo.extend((lvl - 1, p) for p in reversed(D.bmbt_children(block, numrecs, hdr)))
        return out

    def _mapping(self, extents, size: int, path: str, what="data"):
        """ExtentSource pieces ``(offset, length, source, volume offset)`` of an extent list."""
        bs = self.geo.blocksize
        out = []
        for fblk, fsb, count, unwritten in extents:
            off, ln = fblk * bs, count * bs
            if off >= size:
                continue
            ln = min(ln, size - off)
            if unwritten:
                continue  # preallocated: reads as zeros
            if not self._valid_fsb(fsb, count):
                self._damage("error", "bad-extent", f"{what} extent at file block {fblk} points "
                             f"outside the filesystem (block {fsb} +{count})", path)
                out.append((off, ln, MissingSource(ln, "extent outside the filesystem",
                                                   bad=self.bad), 0))
                continue
            out.append((off, ln, self.source, self.geo.fsb_offset(fsb)))
        return out

    # -- the tree ------------------------------------------------------------------------------
    def root(self) -> Dir:
        ino = self.geo.rootino
        try:
            node = self._build(ino, "")
        except BAD as e:
            self._damage("error", "bad-root", f"root inode {ino}: {e}", "",
                         getattr(e, "ranges", ()))
            return Dir(mode=0o555)
        if not isinstance(node, Dir):
            self._damage("error", "bad-root", f"root inode {ino} is not a directory", "")
            return Dir(mode=0o555)
        node.add(".lost+found", Dir(mode=0o500, loader=self._load_lost))
        return node

    # -- inodes no directory reaches ---------------------------------------------------
    def _reached(self, deadline) -> set[int]:
        seen, todo = {self.geo.rootino}, [self.geo.rootino]
        while todo and time.monotonic() < deadline:
            ino = todo.pop()
            try:
                inode = self.read_inode(ino)
                if not stat.S_ISDIR(inode.mode):
                    continue
                entries = self.dir_entries(inode, [])
            except BAD:
                continue
            for _name, child in entries:
                if child not in seen:
                    seen.add(child)
                    todo.append(child)
        return seen

    def _in_use_inodes(self, deadline):
        """Yield the inode numbers the inode btrees of all AGs mark in use; an AG whose
        AGI or btree is unreadable is reported and skipped."""
        g = self.geo
        sparse = bool(g.incompat & D.XFS_SB_FEAT_INCOMPAT_SPINODES)
        for agno in range(g.agcount):
            try:
                agi = self.source.read(agno * g.agblocks * g.blocksize + 2 * g.sectsize,
                                       g.sectsize)
                root, level = D.agi_root(agi)
                todo, seen = [(root, level - 1)], set()
                while todo:
                    if time.monotonic() > deadline:
                        return
                    agbno, want = todo.pop()
                    if agbno in seen or agbno >= g.agblocks or len(seen) > MAX_BMBT_BLOCKS:
                        raise FormatError("inode btree loops or points outside its AG")
                    seen.add(agbno)
                    block = self.read_block((agno << g.agblklog) + agbno)
                    lvl, items = D.inobt_block(block, g.crc, sparse)
                    if lvl != want:
                        raise FormatError(f"inode btree block {agbno} has level {lvl}")
                    if lvl:
                        todo.extend((c, lvl - 1) for c in items)
                        continue
                    for start, used in items:
                        for i in range(D.XFS_INODES_PER_CHUNK):
                            if used >> i & 1:
                                yield (agno << (g.agblklog + g.inopblog)) | (start + i)
            except BAD as e:
                self._damage("warning", "inode-btree-unreadable", f"AG {agno}: the inode "
                             f"btree cannot be read ({e}); inodes no directory reaches are "
                             "not searched there", ".lost+found")

    def _load_lost(self, d: Dir):
        """In-use inodes that no directory reaches, by inode number (a lost directory
        brings its subtree).  Bounded by SCAN_BUDGET_S."""
        deadline = time.monotonic() + SCAN_BUDGET_S
        reached = self._reached(deadline)
        skip = reached | set(self.geo.meta_inos)
        lost = {}
        for ino in self._in_use_inodes(deadline):
            if ino in skip:
                continue
            try:
                inode = self.read_inode(ino)
            except BAD:
                continue  # reported if ever met through a directory
            if inode.nlink == 0 or inode.mode == 0:
                continue  # unlinked but still open, or a free slot
            lost[ino] = inode
        if time.monotonic() > deadline:
            self._damage("warning", "scan-incomplete", "the search for inodes no directory "
                         "reaches ran out of time", ".lost+found")
        inside = set()
        for inode in lost.values():
            if stat.S_ISDIR(inode.mode):
                try:
                    inside.update(c for _n, c in self.dir_entries(inode, []))
                except BAD:
                    pass
        shown = 0
        for ino in sorted(lost):
            if ino in inside:
                continue  # shown inside its lost directory
            node = self.nodes.get(ino)
            if node is None:
                try:
                    node = self._build(ino, f".lost+found/{ino}")
                except BAD as e:
                    self._damage("error", "bad-inode", f"inode {ino}: {e}",
                                 f".lost+found/{ino}", getattr(e, "ranges", ()))
                    continue
            d.add(str(ino), node)
            shown += 1
        if shown:
            self._damage("warning", "lost-inodes", f"{shown} in-use inodes that no directory "
                         "lists are shown here by inode number", ".lost+found")

    def dir_entries(self, inode: D.Inode, errors: list | None = None):
        """``[(name bytes, inode number)]`` of a directory inode (no ``.``/``..``).

        With ``errors``, a bad directory block is appended there as ``(offset, error)``
        and the other blocks are still read."""
        g = self.geo
        if inode.format == D.XFS_DINODE_FMT_LOCAL:
            return list(D.shortform_dir(inode.dfork, min(inode.size, len(inode.dfork)),
                                        g.ftype))
        extents = self.fork_extents(inode)
        dbs = g.dirblksize
        end = min(inode.size, D.XFS_DIR2_LEAF_OFFSET)
        src = ExtentSource(end, self._mapping(extents, end, "", "directory"))
        offsets = set()
        for fblk, _fsb, count, unwritten in extents:
            if unwritten:
                continue
            lo, hi = fblk * g.blocksize, min((fblk + count) * g.blocksize, end)
            for off in range(lo - lo % dbs, hi, dbs):
                offsets.add(off)
        out = []
        for off in sorted(offsets):
            if len(out) > MAX_ENTRIES_PER_DIR:
                raise FormatError(f"more than {MAX_ENTRIES_PER_DIR} entries")
            try:
                out.extend(D.data_block_entries(src.read(off, dbs), g.ftype, g.crc))
            except BAD as e:
                if errors is None:
                    raise
                errors.append((off, e))
        return out

    def _load_dir(self, d: Dir, inode: D.Inode, path: str):
        errors = []
        try:
            entries = self.dir_entries(inode, errors)
        except BAD as e:
            self._damage("error", "bad-directory", f"directory inode {inode.ino}: {e}", path,
                         getattr(e, "ranges", ()))
            return
        for off, e in errors:
            self._damage("error", "bad-directory", f"directory inode {inode.ino}: the block at "
                         f"directory offset {off:#x} is lost: {e}", path, getattr(e, "ranges", ()))
        for raw, ino in entries:
            name = raw.decode("utf-8", "surrogateescape")
            cpath = f"{path}/{name}" if path else name
            node = self.nodes.get(ino)
            if node is None:
                if ino in self.bad_inodes:
                    continue  # reported once, under the first name it was met by
                try:
                    node = self._build(ino, cpath)
                except BAD as e:
                    self.bad_inodes.add(ino)
                    self._damage("error", "bad-inode", f"inode {ino}: {e}", cpath,
                                 getattr(e, "ranges", ()) or self._inode_range(ino))
                    continue
            elif isinstance(node, Dir):
                self._damage("error", "directory-loop", f"directory inode {ino} is listed "
                             "a second time; skipped", cpath)
                continue
            d.add(name, node, report=self.report, layer=LAYER, path_hint=path)

    def _inode_range(self, ino):
        try:
            return [(self.inode_offset(ino), self.geo.inodesize)]
        except FormatError:
            return []

    def _build(self, ino: int, path: str):
        inode = self.read_inode(ino)
        mode = inode.mode
        kw = {"uid": inode.uid, "gid": inode.gid, "mtime": Timestamp.from_ns(inode.mtime_ns),
              "atime": Timestamp.from_ns(inode.atime_ns),
              "ctime": Timestamp.from_ns(inode.ctime_ns)}
        fmt = stat.S_IFMT(mode)
        if fmt == stat.S_IFDIR:
            node = Dir(mode=mode, loader=lambda d: self._load_dir(d, inode, path), **kw)
            node.nlink = inode.nlink
        elif fmt == stat.S_IFREG:
            node = File(self._file_source(inode, path), mode=mode, **kw)
        elif fmt == stat.S_IFLNK:
            node = Symlink(self._symlink(inode), **kw)
        elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
            if inode.format != D.XFS_DINODE_FMT_DEV or len(inode.dfork) < 4:
                raise FormatError("device inode without a device number")
            dev = int.from_bytes(inode.dfork[:4], "big")
            node = Special(mode, rdev=os.makedev(dev >> 18, dev & 0x3FFFF), **kw)
        elif fmt in (stat.S_IFIFO, stat.S_IFSOCK):
            node = Special(mode, **kw)
        else:
            raise FormatError(f"unknown file type in mode {mode:#o}")
        node.mode = mode
        node.nlink = inode.nlink
        try:
            node.xattrs.update(self._xattrs(inode))
        except BAD as e:
            self._damage("error", "bad-xattrs", f"inode {ino}: extended attributes: {e}", path,
                         getattr(e, "ranges", ()))
        self.nodes[ino] = node
        return node

    def _file_source(self, inode: D.Inode, path: str) -> Source:
        label = f"xfs:/{path}"
        if inode.flags & D.XFS_DIFLAG_REALTIME:
            self._damage("error", "realtime", "data lives on the realtime device, which a "
                         "VM disk does not carry", path)
            return MissingSource(inode.size, "realtime device data", bad=self.bad, label=label)
        if inode.format not in (D.XFS_DINODE_FMT_EXTENTS, D.XFS_DINODE_FMT_BTREE):
            raise FormatError(f"regular file in fork format {inode.format}")
        if inode.size > MAX_FILE_SIZE:
            raise FormatError(f"file size {inode.size} is beyond any real file (garbage inode?)")
        return FileData(self, inode, path)

    def _symlink(self, inode: D.Inode) -> bytes:
        size = inode.size
        if size == 0 or size > D.XFS_SYMLINK_MAXLEN:
            raise FormatError(f"symlink of {size} bytes")
        if inode.format == D.XFS_DINODE_FMT_LOCAL:
            if size > len(inode.dfork):
                raise FormatError("inline symlink longer than its fork")
            return inode.dfork[:size]
        out = []
        for _fblk, fsb, count, _u in sorted(self.fork_extents(inode)):
            data = self.read_block(fsb, count)
            for i in range(count):
                blk = data[i * self.geo.blocksize:(i + 1) * self.geo.blocksize]
                if self.geo.crc:
                    if blk[:4] != D.XFS_SYMLINK_MAGIC:
                        raise FormatError("remote symlink block without its XSLM header")
                    nbytes = int.from_bytes(blk[8:12], "big")
                    out.append(blk[D.XFS_SYMLINK_HDR:D.XFS_SYMLINK_HDR + nbytes])
                else:
                    out.append(blk)
        target = b"".join(out)[:size]
        if len(target) != size:
            raise FormatError(f"remote symlink has {len(target)} of {size} bytes")
        return target

    # -- extended attributes ------------------------------------------------------------
    def _xattrs(self, inode: D.Inode) -> dict[bytes, bytes]:
        if inode.afork is None:
            return {}
        if inode.aformat == D.XFS_DINODE_FMT_EXTENTS and inode.anextents == 0:
            return {}  # an attribute fork left empty (or made ahead at create time)
        if inode.aformat == D.XFS_DINODE_FMT_LOCAL:
            items = [(f, n, v) for f, n, v in D.shortform_attrs(inode.afork)]
        elif inode.aformat in (D.XFS_DINODE_FMT_EXTENTS, D.XFS_DINODE_FMT_BTREE):
            items = self._attr_tree(inode)
        else:
            return {}
        out = {}
        for flags, name, value in items:
            key = D.attr_name(flags, name)
            if key is None:
                continue
            if flags & D.XFS_ATTR_ROOT and name in (D.SGI_ACL_FILE, D.SGI_ACL_DEFAULT):
                which = b"access" if name == D.SGI_ACL_FILE else b"default"
                out[b"system.posix_acl_" + which] = D.xfs_acl_to_posix(value)
            out[key] = value
        return out

    def _attr_tree(self, inode: D.Inode):
        extents = self.fork_extents(inode, attr=True)
        bs = self.geo.blocksize
        size = max(((f + c) * bs for f, _b, c, _u in extents), default=0)
        src = ExtentSource(size, self._mapping(extents, size, "", "attribute"))
        crc = self.geo.crc

        def block(n):
            if n * bs >= size:
                raise FormatError(f"attribute block {n} is not mapped")
            return src.read(n * bs, bs)

        n, blk = 0, block(0)
        for _ in range(32):  # descend to the leftmost leaf
            _forw, magic = D.da_blkinfo(blk)
            if magic in D.DA_NODE_MAGICS:
                n = D.da_node_first_child(blk, crc)
                blk = block(n)
                continue
            break
        items, seen = [], set()
        while True:
            forw, magic = D.da_blkinfo(blk)
            if D.ATTR_LEAF_MAGICS.get(magic) is not crc:
                raise FormatError(f"attribute block {n} has magic {magic:#x}")
            for flags, name, value, valueblk, vlen in D.attr_leaf_entries(blk, crc):
                if value is None:
                    value = self._remote_value(src, valueblk, vlen)
                items.append((flags, name, value))
            seen.add(n)
            if not forw:
                break
            if forw in seen or len(seen) > MAX_ATTR_BLOCKS:
                raise FormatError("attribute leaf chain loops")
            n, blk = forw, block(forw)
        return items

    def _remote_value(self, src, valueblk: int, vlen: int) -> bytes:
        if vlen > MAX_XATTR_VALUE:
            raise FormatError(f"remote attribute value of {vlen} bytes")
        bs = self.geo.blocksize
        if not self.geo.crc:
            data = src.read(valueblk * bs, vlen)
            if len(data) != vlen:
                raise FormatError("remote attribute value is not mapped")
            return data
        per = bs - D.XFS_ATTR3_RMT_HDR
        out, left, blk = [], vlen, valueblk
        while left > 0:
            b = src.read(blk * bs, bs)
            if b[:4] != D.XFS_ATTR3_RMT_MAGIC:
                raise FormatError(f"remote attribute block {blk} without its XARM header")
            nbytes = min(int.from_bytes(b[8:12], "big"), per, left)
            out.append(b[D.XFS_ATTR3_RMT_HDR:D.XFS_ATTR3_RMT_HDR + nbytes])
            left -= nbytes
            blk += 1
            if nbytes == 0:
                raise FormatError("empty remote attribute block")
        return b"".join(out)

    # -- damage mapping ----------------------------------------------------------------------
    def files_in_ranges(self, ranges, limit=50):
        """Walk the directory tree (by inode, not by nodes) and name every inode whose
        own slot, directory blocks or data extents lie in ``ranges``."""
        ranges = sorted((o, o + n) for o, n in ranges)
        g = self.geo

        def hits(off, ln):
            return any(lo < off + ln and off < hi for lo, hi in ranges)

        names, total = [], 0
        seen = set()
        deadline = time.monotonic() + SCAN_BUDGET_S
        todo = [(g.rootino, "")]
        while todo and time.monotonic() < deadline:
            ino, path = todo.pop()
            if ino in seen:
                continue
            seen.add(ino)
            hit = False
            try:
                hit = hits(self.inode_offset(ino), g.inodesize)
                inode = self.read_inode(ino)
                if inode.format in (D.XFS_DINODE_FMT_EXTENTS, D.XFS_DINODE_FMT_BTREE):
                    for _f, fsb, count, unwritten in self.fork_extents(inode):
                        if not unwritten and hits(g.fsb_offset(fsb), count * g.blocksize):
                            hit = True
                            break
                if stat.S_ISDIR(inode.mode):
                    for raw, child in self.dir_entries(inode, []):
                        name = raw.decode("utf-8", "surrogateescape")
                        todo.append((child, f"{path}/{name}" if path else name))
            except BAD:
                pass
            if hit:
                total += 1
                if len(names) < limit:
                    names.append(path or ".")
        if todo:
            self._damage("warning", "damage-map-incomplete", f"the walk that maps unreadable "
                         f"bytes to files stopped after {len(seen)} inodes (time budget); more "
                         "files may be damaged than the report names")
        return names, total
