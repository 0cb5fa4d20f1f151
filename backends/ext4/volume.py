"""An opened ext2/3/4 volume: group descriptors, inodes, block mapping, directories, xattrs.

Everything here works on two sources (see README.md, "The seam"): ``meta`` for the
metadata (a journal replay lays its overlay there) and ``data`` for file extents.
Nothing builds nodes; ``fs.py`` turns inodes into the pvfs tree and reports damage.

# References:
# - Linux fs/ext4/ext4.h (struct ext4_inode, EXT4_INODE_SIZE, EXT4_FITS_IN_INODE,
#   ext4_decode_extra_time, ext4_rec_len_from_disk), fs/ext4/inode.c (__ext4_iget: the
#   sanity checks, ext4_inode_csum, i_csum_seed, ext4_inode_is_fast_symlink, the
#   device-number decoding in ext4_iget/init_special_inode), fs/ext4/super.c
#   (ext4_group_desc_csum, ext4_max_size), fs/ext4/extents.c (ext4_ext_check,
#   ext4_extent_block_csum), fs/ext4/indirect.c (ext4_block_to_path: 12 direct blocks,
#   single/double/triple indirect), fs/ext4/dir.c + namei.c (ext4_check_dir_entry,
#   ext4_dirblock_csum_verify, dx_root/dx_node fake entries), fs/ext4/inline.c
#   (i_block + system.data, EXT4_INLINE_DOTDOT_SIZE), fs/ext4/xattr.c
#   (ext4_xattr_check_entries, ext4_xattr_block_csum, ea_inode values), fs/ext4/acl.c
#   (ext4_acl_from_disk) and include/uapi/linux/posix_acl_xattr.h.
# - Documentation/filesystems/ext4/ (dynamic.rst, dynamic/inodes, ifork, directory,
#   attributes, checksums).
"""

from __future__ import annotations

import stat
import struct
from typing import NamedTuple

from pvfs.cache import METADATA_CACHE
from pvfs.errors import UnreadableError
from pvfs.nodes import Timestamp

from .structs import (
    ACL_GROUP, ACL_UNDEFINED_ID, ACL_USER, DIRENT, DIRENT_TAIL, EXT4_ACL_VERSION,
    EXT4_DIR_TAIL_FT, EXT4_EA_INODE_FL, EXT4_EXT_MAGIC, EXT4_EXTENTS_FL, EXT4_GOOD_OLD_INODE_SIZE,
    EXT4_INDEX_FL, EXT4_INLINE_DATA_FL, EXT4_INLINE_DOTDOT_SIZE, EXT4_MAX_EXTENT_DEPTH,
    EXT4_XATTR_MAGIC, EXT_INIT_MAX_LEN, EXTENT_HEADER, EXTENT_INDEX, EXTENT_LEAF,
    GD_CHECKSUM_OFFSET, GROUP_DESC_HI, GROUP_DESC_LO, I_ATIME_EXTRA_END, I_CHECKSUM_HI_END,
    I_CHECKSUM_HI_OFFSET, I_CHECKSUM_LO_OFFSET, I_CTIME_EXTRA_END, I_MTIME_EXTRA_END,
    INCOMPAT_FILETYPE, INCOMPAT_META_BG, INODE_BASE, INODE_EXTRA, POSIX_ACL_XATTR_VERSION,
    XATTR_BLOCK_CHECKSUM_OFFSET, XATTR_BLOCK_HEADER, XATTR_ENTRY, XATTR_INDEX_SYSTEM,
    XATTR_PREFIXES, EXT4_BG_INODE_UNINIT,
)
from .superblock import Ext4Error, Superblock, ext4_chksum, read_superblock

#: The xattr name indices the kernel lists (ext4_xattr_handler_map): system.data (7) and
#: system.richacl (8) are internal and never shown by listxattr.
LISTED_XATTR_INDICES = (1, 2, 3, 4, 6)
XATTR_SIZE_MAX = 65536  # include/uapi/linux/limits.h
INODE_CHUNK = 64 * 1024  # inode tables are read (and cached) in pieces of this size
MAX_INDIRECT_BLOCKS = 1 << 20  # bound on the blocks one block-mapped file may need
DIRECTORY_MAX_BYTES = 1 << 31  # largedir directories are at most 2 GiB (3-level htree)

_VALID_TYPES = frozenset((stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFCHR,
                          stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK))

# What a mapped run of blocks is (fourth element of a block-map tuple).
RUN_DATA = 0
RUN_UNWRITTEN = 1  # preallocated: reads as zeros
RUN_BAD = 2  # its mapping is lost (an unreadable or broken tree block): unreadable


class Problem(NamedTuple):
    """One bad thing found while reading (the caller reports it at the entry's path)."""

    severity: str
    code: str
    message: str
    ranges: list = []


class InodeError(Ext4Error):
    """One inode cannot be used (unreadable, zeroed, garbage); ``code`` names why."""

    def __init__(self, problem: Problem):
        super().__init__(problem.message)
        self.problem = problem
        self.code = problem.code
        self.ranges = list(problem.ranges)


def _crc16_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0xA001 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC16 = _crc16_table()


def crc16(crc: int, data: bytes) -> int:
    """lib/crc16.c (polynomial 0x8005, reflected): the old uninit_bg descriptor checksum."""
    for b in data:
        crc = (crc >> 8) ^ _CRC16[(crc ^ b) & 0xFF]
    return crc


#: The 160 bytes of INODE_BASE then INODE_EXTRA in one unpack, the fields this reader does
#: not use (l_i_version, i_obso_faddr, l_i_reserved, i_crtime*, i_version_hi, i_projid)
#: skipped as padding: one call and fewer objects per listed inode.
_INODE_FULL = struct.Struct("<HHIIIIIHHII4x60sIII4x5H2xHHIII16x")
assert _INODE_FULL.size == INODE_BASE.size + INODE_EXTRA.size
_INUM_GEN = struct.Struct("<II")


def decode_time(base: int, extra: int | None) -> Timestamp:
    """``ext4_decode_extra_time``: seconds are the signed 32-bit base plus the two epoch
    bits of ``extra`` times 2^32; the other 30 bits of ``extra`` are nanoseconds.
    The last result is reused (a file's ctime and mtime are often the same)."""
    global _last_time
    last = _last_time
    if last[0] == base and last[1] == extra:
        return last[2]
    t = _decode_time(base, extra)
    _last_time = (base, extra, t)
    return t


_last_time: tuple = (None, None, None)


def _decode_time(base: int, extra: int | None) -> Timestamp:
    sec = base - (1 << 32) if base & 0x80000000 else base
    if not extra:
        return Timestamp(sec, 0)
    sec += (extra & 3) << 32
    nsec = extra >> 2
    if nsec > 999_999_999:
        nsec = 0
    return Timestamp(sec, nsec)


class Inode:
    """The fields of one on-disk inode that the reader uses (``struct ext4_inode``)."""

    __slots__ = ("ino", "raw", "mode", "uid", "gid", "size", "atime", "ctime", "mtime",
                 "dtime", "links", "blocks", "flags", "i_block", "generation", "file_acl",
                 "extra_isize", "csum_ok", "csum_seed")

    def __init__(self, ino: int, raw: bytes, vol: Ext4Volume):
        self.ino = ino
        self.raw = raw
        n = len(raw)
        full = raw if n >= _INODE_FULL.size else raw + bytes(_INODE_FULL.size - n)
        (mode, uid_lo, size_lo, atime, ctime, mtime, dtime, gid_lo, links, blocks_lo, flags,
         i_block, generation, file_acl_lo, size_hi, blocks_hi, file_acl_hi, uid_hi, gid_hi,
         csum_lo, extra_isize, csum_hi, ctime_x, mtime_x, atime_x) = \
            _INODE_FULL.unpack_from(full, 0)
        self.mode = mode
        self.uid = uid_lo | (uid_hi << 16)
        self.gid = gid_lo | (gid_hi << 16)
        self.size = size_lo | (size_hi << 32)
        self.dtime = dtime
        self.links = links
        self.blocks = blocks_lo | (blocks_hi << 32)
        self.flags = flags
        self.i_block = i_block
        self.generation = generation
        self.file_acl = file_acl_lo | (file_acl_hi << 32)
        # EXT4_FITS_IN_INODE: an extra field exists when 128 + i_extra_isize covers it
        end = EXT4_GOOD_OLD_INODE_SIZE
        if n > EXT4_GOOD_OLD_INODE_SIZE:
            if extra_isize + EXT4_GOOD_OLD_INODE_SIZE <= n and not extra_isize & 3:
                end += extra_isize
        else:
            extra_isize = 0
        self.extra_isize = extra_isize
        self.atime = decode_time(atime, atime_x if end >= I_ATIME_EXTRA_END else None)
        self.ctime = decode_time(ctime, ctime_x if end >= I_CTIME_EXTRA_END else None)
        self.mtime = decode_time(mtime, mtime_x if end >= I_MTIME_EXTRA_END else None)
        if vol.metadata_csum:
            # i_csum_seed = crc(crc(s_csum_seed, inum), generation): one continued crc
            seed = ext4_chksum(vol.sb.csum_seed, _INUM_GEN.pack(ino, generation))
            self.csum_seed = seed
            # ext4_inode_csum: the inode with both checksum halves taken as zeros
            if n > EXT4_GOOD_OLD_INODE_SIZE and end >= I_CHECKSUM_HI_END:
                calc = ext4_chksum(seed, raw[:I_CHECKSUM_LO_OFFSET] + b"\0\0"
                                   + raw[I_CHECKSUM_LO_OFFSET + 2:I_CHECKSUM_HI_OFFSET] + b"\0\0"
                                   + raw[I_CHECKSUM_HI_OFFSET + 2:])
                self.csum_ok = calc == csum_lo | (csum_hi << 16)
            else:
                calc = ext4_chksum(seed, raw[:I_CHECKSUM_LO_OFFSET] + b"\0\0"
                                   + raw[I_CHECKSUM_LO_OFFSET + 2:])
                self.csum_ok = calc & 0xFFFF == csum_lo
        else:
            self.csum_seed = None
            self.csum_ok = None

    @property
    def ftype(self) -> int:
        return self.mode & 0o170000

    @property
    def has_extents(self) -> bool:
        return bool(self.flags & EXT4_EXTENTS_FL)

    @property
    def has_inline_data(self) -> bool:
        return bool(self.flags & EXT4_INLINE_DATA_FL)


class Ext4Volume:
    """An ext2/3/4 filesystem read from ``meta`` (metadata) and ``data`` (file extents).

    ``sb`` may be given (a backup superblock or a replayed one); the group descriptor
    table then follows the block holding it, or sits at ``gdt_block``.
    """

    def __init__(self, meta, data=None, sb: Superblock | None = None,
                 gdt_block: int | None = None):
        self.meta = meta
        self.data = meta if data is None else data
        self.sb = read_superblock(meta) if sb is None else sb
        sb = self.sb
        self.block_size = sb.block_size
        self.blocks_count = sb.blocks_count
        if sb.blocks_count * sb.block_size > meta.size + sb.block_size * 1024 * 1024:
            # Grossly larger than the volume: a garbage superblock (a slightly shorter
            # volume is a truncated image and reads EIO past its end).
            raise Ext4Error(f"superblock says {sb.blocks_count} blocks of {sb.block_size} "
                            f"bytes, the volume has {meta.size} bytes")
        self.filetype = bool(sb.incompat & INCOMPAT_FILETYPE)
        self.metadata_csum = sb.metadata_csum
        self.max_size = self._max_size()
        self.gdt_problems: list[Problem] = []
        self.groups = self._load_group_descriptors(gdt_block)
        self._ck = ("ext4", meta.uid)  # cache key prefix
        self._last_chunk: tuple = (None, None)
        self._zero_inode = bytes(self.sb.inode_size)

    # -- geometry ------------------------------------------------------------------
    def _max_size(self) -> int:
        """``ext4_max_size``/``ext4_max_bitmap_size``, loosely: 2^32 blocks for extents,
        the triple-indirect limit for block maps.  A larger i_size is garbage."""
        bs = self.block_size
        extent_max = (1 << 32) * bs
        per = bs // 4
        map_max = (12 + per + per * per + per * per * per) * bs
        return max(extent_max, map_max)

    def read_blocks(self, block: int, count: int = 1, source=None) -> bytes:
        """``count`` blocks from ``block`` on (metadata source unless ``source``)."""
        if block < 0 or block + count > self.blocks_count:
            raise Ext4Error(f"block {block}+{count} is outside the filesystem "
                            f"({self.blocks_count} blocks)")
        src = self.meta if source is None else source
        return src.read(block * self.block_size, count * self.block_size)

    def _load_group_descriptors(self, gdt_block):
        """The descriptor table as a list of tuples
        ``(inode_table, inode_bitmap, flags, free_inodes, itable_unused, block_bitmap)``."""
        sb = self.sb
        ds = sb.desc_size
        n = sb.group_count
        per_block = sb.descs_per_block
        nblocks = -(-n // per_block)
        if gdt_block is None:
            gdt_block = sb.offset // sb.block_size + 1 if sb.offset >= sb.block_size else \
                sb.first_data_block + 1
        raw = bytearray()
        meta_bg = bool(sb.incompat & INCOMPAT_META_BG)
        first_meta = sb.sb.s_first_meta_bg if meta_bg else nblocks
        plain = min(nblocks, first_meta)
        if plain:
            raw += self._read_gdt(gdt_block, plain)
        for i in range(plain, nblocks):  # meta_bg: each meta group keeps its own block
            g = i * per_block
            blk = sb.group_first_block(g) + (1 if sb.group_has_super(g) else 0)
            raw += self._read_gdt(blk, 1)
        groups = []
        lo = GROUP_DESC_LO
        hi = GROUP_DESC_HI if ds >= 64 else None
        itb = -(-sb.inodes_per_group * sb.inode_size // sb.block_size)
        bad_csum = 0
        for g in range(n):
            off = g * ds
            d = bytes(raw[off:off + ds])
            (bb_lo, ib_lo, it_lo, _fb_lo, fi_lo, _ud_lo, flags, _ex_lo, _bbc, _ibc, unused_lo,
             csum) = lo.unpack_from(d, 0)
            bb, ib, it, fi, unused = bb_lo, ib_lo, it_lo, fi_lo, unused_lo
            if hi is not None:
                (bb_hi, ib_hi, it_hi, _fb_hi, fi_hi, _ud_hi, unused_hi, _ex_hi, _bbch, _ibch,
                 _res) = hi.unpack_from(d, 32)
                bb |= bb_hi << 32
                ib |= ib_hi << 32
                it |= it_hi << 32
                fi |= fi_hi << 16
                unused |= unused_hi << 16
            if not self._gd_checksum_ok(g, d, csum):
                bad_csum += 1
                if bad_csum <= 5:
                    self.gdt_problems.append(Problem(
                        "warning", "group-descriptor-checksum",
                        f"group {g}: descriptor checksum mismatch; its inode table at block "
                        f"{it} is used if it lies inside the filesystem"))
            if d == bytes(ds) or it + itb > self.blocks_count or it == 0:
                self.gdt_problems.append(Problem(
                    "error", "group-descriptor-bad",
                    f"group {g}: descriptor {'zeroed' if d == bytes(ds) else 'garbage'} "
                    f"(inode table at block {it}); inodes "
                    f"{g * sb.inodes_per_group + 1}-{(g + 1) * sb.inodes_per_group} are lost"))
                it = None
            groups.append((it, ib, flags, fi, unused, bb))
        if bad_csum > 5:
            self.gdt_problems.append(Problem("warning", "group-descriptor-checksum",
                                      f"{bad_csum} group descriptors in all fail their checksum"))
        return groups

    def _read_gdt(self, block: int, count: int) -> bytes:
        try:
            return self.read_blocks(block, count)
        except (UnreadableError, Ext4Error) as e:
            if count > 1:
                return b"".join(self._read_gdt(block + i, 1) for i in range(count))
            self.gdt_problems.append(Problem("error", "group-descriptor-unreadable",
                                      f"group descriptor block {block}: {e}"))
            return bytes(self.block_size)

    def _gd_checksum_ok(self, group: int, desc: bytes, stored: int) -> bool:
        """``ext4_group_desc_csum``: crc32c & 0xFFFF with metadata_csum, crc16 with
        uninit_bg (gdt_csum), nothing to check otherwise."""
        sb = self.sb
        if not (sb.metadata_csum or sb.gdt_csum):
            return True
        le_group = struct.pack("<I", group)
        zeroed = desc[:GD_CHECKSUM_OFFSET] + b"\0\0" + desc[GD_CHECKSUM_OFFSET + 2:]
        if sb.metadata_csum:
            return ext4_chksum(ext4_chksum(sb.csum_seed, le_group), zeroed) & 0xFFFF == stored
        crc = crc16(crc16(0xFFFF, bytes(sb.sb.s_uuid)), le_group)
        crc = crc16(crc, desc[:GD_CHECKSUM_OFFSET])
        if sb.is_64bit and len(desc) > GD_CHECKSUM_OFFSET + 2:
            crc = crc16(crc, desc[GD_CHECKSUM_OFFSET + 2:])
        return crc == stored

    # -- inodes --------------------------------------------------------------------
    def inode_location(self, ino: int) -> int | None:
        """Byte offset of inode ``ino`` in ``meta`` (None: its group's table is unknown)."""
        sb = self.sb
        g, idx = divmod(ino - 1, sb.inodes_per_group)
        it = self.groups[g][0]
        if it is None:
            return None
        return it * sb.block_size + idx * sb.inode_size

    def read_inode_raw(self, ino: int) -> bytes:
        """The inode's bytes, from a cached 64 KiB piece of its inode table; a piece that
        cannot be read falls back to the inode alone, so a bad sector costs only the
        inodes on it."""
        sb = self.sb
        if not 1 <= ino <= sb.inodes_count:
            raise InodeError(Problem("error", "bad-inode-number",
                                     f"inode {ino} does not exist ({sb.inodes_count} inodes)"))
        off = self.inode_location(ino)
        if off is None:
            raise InodeError(Problem("error", "inode-table-lost",
                                     f"inode {ino}: the descriptor of its group is lost"))
        g = (ino - 1) // sb.inodes_per_group
        table_start = self.groups[g][0] * sb.block_size
        table_end = table_start + sb.inodes_per_group * sb.inode_size
        chunk = table_start + (off - table_start) // INODE_CHUNK * INODE_CHUNK
        key = (self._ck, "itab", chunk)
        last = self._last_chunk  # listing a directory reads neighbouring inodes
        piece = last[1] if last[0] == key else METADATA_CACHE.get(key)
        if piece is None:
            try:
                piece = self.meta.read(chunk, min(INODE_CHUNK, table_end - chunk))
            except UnreadableError:
                piece = None
            if piece is not None:
                METADATA_CACHE.put(key, piece)
        if piece is not None and len(piece) >= off - chunk + sb.inode_size:
            self._last_chunk = (key, piece)
            return piece[off - chunk:off - chunk + sb.inode_size]
        try:
            raw = self.meta.read(off, sb.inode_size)
        except UnreadableError as e:
            raise InodeError(Problem("error", "inode-unreadable",
                                     f"inode {ino}: inode table unreadable at {off:#x}: {e}",
                                     [(off, sb.inode_size)])) from None
        if len(raw) < sb.inode_size:
            raise InodeError(Problem("error", "inode-unreadable",
                                     f"inode {ino} lies past the end of the volume",
                                     [(off, sb.inode_size)]))
        return raw

    def read_inode(self, ino: int) -> Inode:
        """Inode ``ino``, sanity-checked like ``__ext4_iget``; raises :class:`InodeError`
        for a zeroed, deleted or garbage inode.  A checksum mismatch alone does not raise
        (``inode.csum_ok`` is False): the caller shows the entry and reports it."""
        raw = self.read_inode_raw(ino)
        if raw == self._zero_inode:
            raise InodeError(Problem("error", "inode-zeroed", f"inode {ino} is zeroed",
                                     [(self.inode_location(ino), len(raw))]))
        inode = Inode(ino, raw, self)
        why = self.inode_problem(inode)
        if why:
            extra = " (and its checksum does not match)" if inode.csum_ok is False else ""
            raise InodeError(Problem("error", "inode-garbage", f"inode {ino}: {why}{extra}",
                                     [(self.inode_location(ino), len(raw))]))
        return inode

    def inode_problem(self, inode: Inode) -> str | None:
        """Why ``inode`` is unusable (the checks of ``__ext4_iget`` and a few more), or None."""
        sb = self.sb
        x = inode.extra_isize
        if x and (EXT4_GOOD_OLD_INODE_SIZE + x > sb.inode_size or x & 3):
            return f"extra inode size {x} is impossible"
        if inode.links == 0:
            return "not in use (link count 0)"
        t = inode.mode & 0o170000
        if t not in _VALID_TYPES:
            return f"mode {inode.mode:#o} has no valid file type"
        size = inode.size
        if size > self.max_size:
            return f"size {size} is larger than ext4 allows ({self.max_size})"
        acl = inode.file_acl
        if acl and not sb.first_data_block < acl < self.blocks_count:
            return f"xattr block {acl} is outside the filesystem"
        flags = inode.flags
        if flags & EXT4_INLINE_DATA_FL:
            if t not in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK):
                return "inline data on a special file"
        elif flags & EXT4_EXTENTS_FL and (t == stat.S_IFREG or t == stat.S_IFDIR
                                          or self._mapped(inode)):
            magic, entries, emax, depth, _gen = EXTENT_HEADER.unpack_from(inode.i_block, 0)
            if magic != EXT4_EXT_MAGIC:
                return f"extent header magic {magic:#06x}"
            if entries > emax or emax > 4 or depth > EXT4_MAX_EXTENT_DEPTH:
                return f"extent header impossible (entries {entries}, max {emax}, depth {depth})"
        if t == stat.S_IFDIR and size > DIRECTORY_MAX_BYTES:
            return f"directory of {size} bytes"
        return None

    def _mapped(self, inode: Inode) -> bool:
        """Whether i_block maps blocks (not a fast symlink or a device number)."""
        t = inode.ftype
        if t in (stat.S_IFREG, stat.S_IFDIR):
            return True
        if t == stat.S_IFLNK:
            return not self.is_fast_symlink(inode)
        return False

    def is_fast_symlink(self, inode: Inode) -> bool:
        """``ext4_inode_is_fast_symlink``: the target is in i_block itself."""
        if inode.has_inline_data:
            return False
        if inode.flags & EXT4_EA_INODE_FL:
            return 0 < inode.size < 60
        ea_blocks = (self.block_size >> 9) if inode.file_acl else 0
        if inode.flags & 0x00040000:  # huge_file: i_blocks counts file system blocks
            ea_blocks = 1 if inode.file_acl else 0
        if inode.blocks - ea_blocks == 0:
            return True
        return inode.size < 60 and not inode.has_extents

    # -- block mapping -------------------------------------------------------------
    def block_map(self, inode: Inode, problems: list | None = None,
                  meta_blocks: list | None = None, max_blocks: int | None = None):
        """The file's blocks as sorted runs ``(logical, count, physical, kind)`` (kind:
        RUN_DATA, RUN_UNWRITTEN or RUN_BAD; holes are absent).  ``problems`` collects
        ``(code, message, ranges)``; ``meta_blocks`` collects ``(block, count)`` of the
        tree/indirect blocks (for mapping damage to files).  Bounded: at most as many
        blocks as i_size needs (``max_blocks``)."""
        if problems is None:
            problems = []
        if max_blocks is None:
            max_blocks = -(-inode.size // self.block_size)
        if inode.has_extents:
            runs = self._extent_map(inode, problems, meta_blocks, max_blocks)
        else:
            runs = self._indirect_map(inode, problems, meta_blocks, max_blocks)
        return runs

    def _extent_map(self, inode, problems, meta_blocks, max_blocks):
        runs = []
        # (node bytes, depth expected or None, logical range start, end, block number)
        stack = [(inode.i_block, None, 0, 1 << 32, None)]
        visited = 0
        limit_nodes = 1 + max_blocks  # a tree can never have more nodes than blocks
        bs = self.block_size
        while stack:
            node, want_depth, lo, hi, blk = stack.pop()
            visited += 1
            if visited > limit_nodes + 16:
                problems.append(Problem("error", "extent-tree-loop",
                                 f"inode {inode.ino}: extent tree larger than the file; stopped",
                                 []))
                break
            magic, entries, emax, depth, _gen = EXTENT_HEADER.unpack_from(node, 0)
            cap = (len(node) - 12) // 12
            why = None
            if magic != EXT4_EXT_MAGIC:
                why = f"extent block magic {magic:#06x}"
            elif entries > emax or emax > cap or depth > EXT4_MAX_EXTENT_DEPTH:
                why = f"extent header impossible (entries {entries}, max {emax}, depth {depth})"
            elif want_depth is not None and depth != want_depth:
                why = f"extent block depth {depth}, expected {want_depth}"
            elif blk is not None and self.sb.metadata_csum:
                tail = 12 + 12 * emax
                if tail + 4 <= len(node):
                    stored = struct.unpack_from("<I", node, tail)[0]
                    if ext4_chksum(inode.csum_seed, node[:tail]) != stored:
                        why = "extent block checksum mismatch"
            if why:
                where = f" (block {blk})" if blk is not None else ""
                problems.append(Problem("error", "extent-tree-bad",
                                 f"inode {inode.ino}: {why}{where}; file blocks {lo}-{hi - 1} "
                                 "are unreadable",
                                 [(blk * bs, bs)] if blk is not None else []))
                runs.append((lo, min(hi, max(max_blocks, lo + 1)) - lo, 0, RUN_BAD))
                continue
            if depth == 0:
                for i in range(entries):
                    ee_block, ee_len, start_hi, start_lo = EXTENT_LEAF.unpack_from(node,
                                                                                   12 + 12 * i)
                    kind = RUN_DATA
                    if ee_len > EXT_INIT_MAX_LEN:
                        ee_len -= EXT_INIT_MAX_LEN
                        kind = RUN_UNWRITTEN
                    if not ee_len or ee_block >= max_blocks:
                        continue
                    pblk = start_lo | (start_hi << 32)
                    if pblk + ee_len > self.blocks_count or pblk < self.sb.first_data_block:
                        problems.append(Problem("error", "extent-out-of-range",
                                         f"inode {inode.ino}: extent {ee_block}+{ee_len} -> block "
                                         f"{pblk} lies outside the filesystem; unreadable", []))
                        kind = RUN_BAD
                        pblk = 0
                    runs.append((ee_block, ee_len, pblk, kind))
                continue
            idx = [EXTENT_INDEX.unpack_from(node, 12 + 12 * i) for i in range(entries)]
            for i in range(entries - 1, -1, -1):
                ei_block, leaf_lo, leaf_hi, _unused = idx[i]
                child_hi = idx[i + 1][0] if i + 1 < entries else hi
                if ei_block >= max_blocks:
                    continue
                child = leaf_lo | (leaf_hi << 32)
                if meta_blocks is not None:
                    meta_blocks.append((child, 1))
                try:
                    data = self.read_blocks(child)
                except (UnreadableError, Ext4Error) as e:
                    problems.append(Problem("error", "extent-tree-unreadable",
                                     f"inode {inode.ino}: extent block {child}: {e}; file "
                                     f"blocks {ei_block}-{min(child_hi, max_blocks) - 1} are "
                                     "unreadable",
                                     [(child * bs, bs)] if child < self.blocks_count else []))
                    runs.append((ei_block, min(child_hi, max_blocks) - ei_block, 0, RUN_BAD))
                    continue
                stack.append((data, depth - 1, ei_block, child_hi, child))
        runs.sort()
        return _drop_overlaps(runs, inode, problems)

    def _indirect_map(self, inode, problems, meta_blocks, max_blocks):
        """ext2/3 block maps: i_block[0..11] direct, [12] single, [13] double, [14] triple
        indirect (``ext4_block_to_path``)."""
        ptrs = struct.unpack("<15I", inode.i_block)
        per = self.block_size // 4
        blocks: list[tuple[int, int]] = []  # (logical, physical) in order
        bad: list[tuple[int, int]] = []  # (logical, count) whose mapping is lost
        for i in range(min(12, max_blocks)):
            if ptrs[i]:
                blocks.append((i, ptrs[i]))
        base = 12
        span = per
        budget = [MAX_INDIRECT_BLOCKS]
        for level, p in enumerate(ptrs[12:15], start=1):
            if base >= max_blocks:
                break
            if p:
                self._walk_indirect(inode, p, level, base, per, max_blocks, blocks, bad,
                                    problems, meta_blocks, budget)
            base += span
            span *= per
        runs = [(lblk, count, 0, RUN_BAD) for lblk, count in bad]
        outside = 0
        for lblk, pblk in blocks:
            if pblk >= self.blocks_count:
                outside += 1
                runs.append((lblk, 1, 0, RUN_BAD))
                continue
            if runs and runs[-1][3] == RUN_DATA and runs[-1][0] + runs[-1][1] == lblk \
                    and runs[-1][2] + runs[-1][1] == pblk:
                last = runs[-1]
                runs[-1] = (last[0], last[1] + 1, last[2], RUN_DATA)
            else:
                runs.append((lblk, 1, pblk, RUN_DATA))
        if outside:
            problems.append(Problem("error", "block-out-of-range",
                             f"inode {inode.ino}: {outside} block pointers lie outside the "
                             "filesystem; those blocks are unreadable", []))
        runs.sort()
        return runs

    def _walk_indirect(self, inode, block, level, base, per, max_blocks, out, bad, problems,
                       meta_blocks, budget):
        span = per ** (level - 1)  # file blocks one pointer of this block covers
        count = min(per * span, max_blocks - base)
        if block >= self.blocks_count or budget[0] <= 0:
            problems.append(Problem("error", "indirect-block-bad",
                             f"inode {inode.ino}: indirect block {block} is outside the "
                             f"filesystem; file blocks {base}-{base + count - 1} are unreadable",
                             []))
            bad.append((base, count))
            return
        budget[0] -= 1
        if meta_blocks is not None:
            meta_blocks.append((block, 1))
        try:
            data = self.read_blocks(block)
        except (UnreadableError, Ext4Error) as e:
            problems.append(Problem("error", "indirect-block-unreadable",
                             f"inode {inode.ino}: indirect block {block}: {e}; file blocks "
                             f"{base}-{base + count - 1} are unreadable",
                             [(block * self.block_size, self.block_size)]))
            bad.append((base, count))
            return
        ptrs = struct.unpack(f"<{per}I", data)
        for i, p in enumerate(ptrs):
            lblk = base + i * span
            if lblk >= max_blocks:
                break
            if not p:
                continue
            if level == 1:
                out.append((lblk, p))
            else:
                self._walk_indirect(inode, p, level - 1, lblk, per, max_blocks, out, bad,
                                    problems, meta_blocks, budget)

    # -- file contents -------------------------------------------------------------
    def inline_data(self, inode: Inode) -> bytes:
        """An inline_data inode's bytes: i_block, then the ``system.data`` xattr value."""
        head = inode.i_block
        rest = b""
        for index, name, value in self._ibody_xattrs(inode, [], raw_names=True):
            if index == XATTR_INDEX_SYSTEM and name == b"data":
                rest = value
                break
        return (head + rest)[:inode.size] if inode.ftype != stat.S_IFDIR else head + rest

    def read_small(self, inode: Inode, limit: int, problems: list) -> bytes:
        """All bytes of a small mapped file (a block symlink, a directory, an ea_inode
        value) from ``meta``; unmapped blocks read as zeros; raises on unreadable parts."""
        size = min(inode.size, limit)
        nblocks = -(-size // self.block_size)
        out = bytearray(nblocks * self.block_size)
        for lblk, count, pblk, kind in self.block_map(inode, problems, max_blocks=nblocks):
            count = min(count, nblocks - lblk)
            if count <= 0:
                continue
            if kind == RUN_BAD:
                raise Ext4Error(f"inode {inode.ino}: block map damaged")
            if kind == RUN_DATA:
                out[lblk * self.block_size:(lblk + count) * self.block_size] = \
                    self.read_blocks(pblk, count)
        return bytes(out[:size])

    # -- directories ---------------------------------------------------------------
    def dir_entries(self, inode: Inode, problems: list):
        """Yield ``(name bytes, inode number, file_type)`` of a directory, without "." and
        "..".  Each bad block is one ``(code, message, ranges)`` in ``problems`` and costs
        only its own entries; a block whose checksum fails is still parsed (its entries are
        yielded and ``problems`` says so)."""
        if inode.has_inline_data:
            data = self.inline_data(inode)
            body = data[EXT4_INLINE_DOTDOT_SIZE:60]
            yield from self._parse_dirents(body, inode, None, problems, tail=False)
            if len(data) > 60:
                yield from self._parse_dirents(data[60:], inode, None, problems, tail=False)
            return
        bs = self.block_size
        nblocks = -(-inode.size // bs)
        runs = self.block_map(inode, problems, max_blocks=nblocks)
        index = bool(inode.flags & EXT4_INDEX_FL)
        for lblk, count, pblk, kind in runs:
            count = min(count, nblocks - lblk)
            if count <= 0 or kind == RUN_UNWRITTEN:
                continue
            if kind == RUN_BAD:
                continue  # reported by block_map
            try:
                chunk = self.read_blocks(pblk, count)
            except (UnreadableError, Ext4Error):
                chunk = None
            for i in range(count):
                blk = pblk + i
                if chunk is not None:
                    data = chunk[i * bs:(i + 1) * bs]
                else:
                    try:
                        data = self.read_blocks(blk)
                    except (UnreadableError, Ext4Error) as e:
                        problems.append(Problem("error", "directory-block-unreadable",
                                         f"directory inode {inode.ino}: block {blk}: {e}; its "
                                         "entries are lost", [(blk * bs, bs)]))
                        continue
                yield from self._parse_dirents(data, inode, blk, problems,
                                               tail=True, dx_root=index and lblk + i == 0)

    def _parse_dirents(self, data, inode, blk, problems, tail, dx_root=False):
        """Linear parse of one directory block (``ext4_check_dir_entry`` rules).  htree
        blocks read linearly: the root's ".." spans the dx_root info, a dx_node is one empty
        entry spanning the block, so both yield nothing."""
        n = len(data)
        bs = self.block_size
        csum_state = None  # None: not checked, True/False
        if tail and blk is not None and self.sb.metadata_csum:
            first_ino, first_rec = struct.unpack_from("<IH", data, 0)
            is_dx_node = bool(inode.flags & EXT4_INDEX_FL) and first_ino == 0 and \
                self._rec_len(first_rec) == bs
            if dx_root or is_dx_node:
                if self._dx_checksum_ok(data, inode, is_dx_node) is False:
                    problems.append(Problem(
                        "warning", "directory-index-checksum",
                        f"directory inode {inode.ino}, block {blk}: htree index checksum "
                        "mismatch; the index is not needed (entries are read linearly), "
                        "nothing is lost", [(blk * bs, bs)]))
            else:
                t_zero, t_rec, t_zero2, t_ft, t_csum = DIRENT_TAIL.unpack_from(data, n - 12)
                if t_zero == 0 and t_rec == 12 and t_zero2 == 0 and t_ft == EXT4_DIR_TAIL_FT:
                    csum_state = ext4_chksum(inode.csum_seed, data[:n - 12]) == t_csum
                    n -= 12
                else:
                    csum_state = False
        out = []
        pos = 0
        filetype = self.filetype
        broken = None
        unpack = DIRENT.unpack_from
        while pos + 8 <= n:
            d_ino, rec_len, name_len, ftype = unpack(data, pos)
            if rec_len >= 65532 or (rec_len == 0 and bs >= 65536):
                rec_len = self._rec_len(rec_len)
            if not filetype:
                name_len |= ftype << 8
                ftype = 0
            if rec_len < 12 and not (rec_len == 8 and name_len == 0) or rec_len & 3 \
                    or pos + rec_len > n or name_len + 8 > rec_len:
                broken = f"bad entry at byte {pos} (rec_len {rec_len}, name_len {name_len})"
                break
            if d_ino:
                name = data[pos + 8:pos + 8 + name_len]
                if name_len == 0 or (name_len <= 2 and name in (b".", b"..")):
                    pass
                elif d_ino > self.sb.inodes_count:
                    broken = f"entry {name!r} names inode {d_ino}, beyond {self.sb.inodes_count}"
                else:
                    out.append((name, d_ino, ftype))
            pos += rec_len
        where = f"block {blk}" if blk is not None else "inline data"
        rng = [(blk * bs, bs)] if blk is not None else []
        if broken or csum_state is False:  # one entry per bad block
            what = "checksum mismatch" if csum_state is False else ""
            if broken:
                what = f"{what}, {broken}" if what else broken
                shown = (f"the {len(out)} entries before it are shown, the rest of the block "
                         "is lost")
            else:
                shown = f"its {len(out)} entries parse and are shown as they are"
            if broken:
                problems.append(Problem("error", "directory-block-bad",
                                        f"directory inode {inode.ino}, {where}: {what}; {shown}",
                                        rng))
            else:
                problems.append(Problem("warning", "directory-block-checksum",
                                        f"directory inode {inode.ino}, {where}: {what}; {shown}",
                                        rng))
        yield from out

    def _dx_checksum_ok(self, data: bytes, inode: Inode, node: bool) -> bool | None:
        """``ext4_dx_csum_verify`` of an htree root or node block: crc32c of the block up
        to the last used dx_entry, then the dx_tail's reserved word and a zero checksum.
        None when the block does not look like an index block (nothing to verify)."""
        if node:
            count_offset = 8
        else:
            dot_rec = struct.unpack_from("<H", data, 4)[0]
            dotdot_rec = struct.unpack_from("<H", data, 16)[0]
            reserved, _hv, info_len = struct.unpack_from("<IBB", data, 24)
            if dot_rec != 12 or dotdot_rec != self.block_size - 12 or reserved or info_len != 8:
                return None
            count_offset = 32
        limit, count = struct.unpack_from("<HH", data, count_offset)
        tail = count_offset + limit * 8
        if count > limit or tail + 8 > len(data):
            return None
        reserved, stored = struct.unpack_from("<II", data, tail)
        calc = ext4_chksum(inode.csum_seed, data[:count_offset + count * 8]
                           + data[tail:tail + 4] + b"\0\0\0\0")
        return calc == stored

    def _rec_len(self, raw: int) -> int:
        """``ext4_rec_len_from_disk`` (65536-byte blocks encode the length specially)."""
        if self.block_size < 65536:
            return raw
        if raw in (65535, 0):
            return self.block_size
        return (raw & 65532) | ((raw & 3) << 16)

    # -- extended attributes -------------------------------------------------------
    def xattrs(self, inode: Inode, problems: list) -> dict[bytes, bytes]:
        """The attributes listxattr/getxattr show: in-inode first, then the xattr block;
        ACLs converted to Linux's xattr format."""
        out: dict[bytes, bytes] = {}
        items = list(self._ibody_xattrs(inode, problems))
        if inode.file_acl:
            items += self._block_xattrs(inode, problems)
        for index, name, value in items:
            if index not in LISTED_XATTR_INDICES:
                continue
            full = XATTR_PREFIXES[index] + (name if index not in (2, 3) else b"")
            if index in (2, 3):
                conv = acl_to_xattr(value)
                if conv is None:
                    problems.append(Problem("error", "xattr-acl-bad",
                                     f"inode {inode.ino}: {full.decode()} is not a valid ext4 "
                                     "ACL; left out", []))
                    continue
                value = conv
            out[full] = value
        return out

    def _ibody_xattrs(self, inode, problems, raw_names=False):
        raw = inode.raw
        if len(raw) <= EXT4_GOOD_OLD_INODE_SIZE or not inode.extra_isize:
            return []
        start = EXT4_GOOD_OLD_INODE_SIZE + inode.extra_isize
        if start + 4 > len(raw) or struct.unpack_from("<I", raw, start)[0] != EXT4_XATTR_MAGIC:
            return []
        body = raw[start + 4:]
        return self._parse_xattr_entries(body, 0, body, inode, problems, "in-inode")

    def _block_xattrs(self, inode, problems):
        blk = inode.file_acl
        bs = self.block_size
        key = (self._ck, "xattr", blk)
        cached = METADATA_CACHE.get(key)
        if cached is not None:
            items, problem = cached
            if problem:
                problems.append(problem._replace(message=f"inode {inode.ino}: {problem.message}"))
            return items
        problem = None
        items = []
        try:
            data = self.read_blocks(blk)
        except (UnreadableError, Ext4Error) as e:
            problem = Problem("error", "xattr-block-unreadable",
                              f"xattr block {blk}: {e}; its attributes "
                       "are lost", [(blk * bs, bs)])
            data = None
        if data is not None:
            magic, _refcount, h_blocks, _hash, h_csum = XATTR_BLOCK_HEADER.unpack_from(data, 0)
            if magic != EXT4_XATTR_MAGIC or h_blocks != 1:
                problem = Problem("error", "xattr-block-bad",
                                  f"xattr block {blk}: bad header (magic "
                           f"{magic:#x}, blocks {h_blocks}); its attributes are lost",
                           [(blk * bs, bs)])
            else:
                if self.sb.metadata_csum:
                    c = ext4_chksum(self.sb.csum_seed, struct.pack("<Q", blk))
                    c = ext4_chksum(c, data[:XATTR_BLOCK_CHECKSUM_OFFSET] + b"\0\0\0\0"
                                    + data[XATTR_BLOCK_CHECKSUM_OFFSET + 4:])
                    if c != h_csum:
                        problem = Problem("warning", "xattr-block-checksum",
                                          f"xattr block {blk}: checksum "
                                   "mismatch; its attributes are shown as parsed",
                                   [(blk * bs, bs)])
                sub: list = []
                items = self._parse_xattr_entries(data, 32, data, inode, sub, f"block {blk}")
                if sub and problem is None:
                    problem = sub[0]._replace(ranges=[(blk * bs, bs)])
        METADATA_CACHE.put(key, _Cost((items, problem), 64 + sum(
            len(n) + len(v) + 64 for _i, n, v in items)))
        if problem:
            problems.append(problem._replace(message=f"inode {inode.ino}: {problem.message}"))
        return items

    def _parse_xattr_entries(self, buf, pos, values, inode, problems, where):
        """``ext4_xattr_entry`` list ending in 4 zero bytes; values at ``e_value_offs`` of
        ``values`` (the block, or the in-inode area after its magic) or in an ea_inode."""
        out = []
        n = len(buf)
        for _ in range(1024):
            if pos + 4 > n or buf[pos:pos + 4] == b"\0\0\0\0":
                break
            if pos + XATTR_ENTRY.size > n:
                problems.append(Problem("error", "xattr-bad",
                                f"inode {inode.ino}: {where}: truncated "
                                 "attribute entry", []))
                break
            name_len, index, voffs, vinum, vsize, _hash = XATTR_ENTRY.unpack_from(buf, pos)
            name = bytes(buf[pos + 16:pos + 16 + name_len])
            if pos + 16 + name_len > n or vsize > XATTR_SIZE_MAX:
                problems.append(Problem("error", "xattr-bad",
                                f"inode {inode.ino}: {where}: attribute entry "
                                 f"at {pos} is impossible", []))
                break
            pos += (16 + name_len + 3) & ~3
            if vinum:
                value = self._ea_inode_value(inode, vinum, vsize, problems)
                if value is None:
                    continue
            else:
                if voffs + vsize > len(values):
                    problems.append(Problem("error", "xattr-bad",
                                    f"inode {inode.ino}: {where}: value of "
                                     f"{name!r} lies outside its area", []))
                    continue
                value = bytes(values[voffs:voffs + vsize])
            out.append((index, name, value))
        return out

    def _ea_inode_value(self, inode, vinum, vsize, problems):
        """A large value stored as the contents of an ea_inode (``ext4_xattr_inode_get``)."""
        try:
            ea = self.read_inode(vinum)
            if not ea.flags & EXT4_EA_INODE_FL or ea.size != vsize:
                raise Ext4Error(f"inode {vinum} is not its value's ea_inode")
            return self.read_small(ea, XATTR_SIZE_MAX, problems)
        except (Ext4Error, UnreadableError) as e:
            problems.append(Problem("error", "xattr-ea-inode-bad",
                            f"inode {inode.ino}: attribute value in "
                             f"inode {vinum}: {e}; left out", []))
            return None

    # -- bitmaps -------------------------------------------------------------------
    def inode_bitmap(self, group: int) -> bytes | None:
        """Group ``group``'s inode bitmap (None: uninitialised, all free)."""
        it, ib, flags, _fi, _unused, _bb = self.groups[group]
        if it is None:
            raise Ext4Error(f"group {group}: descriptor lost")
        if flags & EXT4_BG_INODE_UNINIT:
            return None
        return self.read_blocks(ib)[: -(-self.sb.inodes_per_group // 8)]


class _Cost:
    """A cache value with a declared byte cost (pvfs.cache.ByteLRU reads ``cache_cost``)."""

    __slots__ = ("value", "cache_cost")

    def __init__(self, value, cost):
        self.value = value
        self.cache_cost = cost

    def __iter__(self):
        return iter(self.value)


def _drop_overlaps(runs, inode, problems):
    """Extents must not overlap in file blocks (``ext4_valid_extent_entries``); keep the
    first of two that do and report."""
    out = []
    end = 0
    for r in runs:
        if r[0] < end:
            if r[0] + r[1] <= end:
                problems.append(Problem("error", "extent-overlap",
                                f"inode {inode.ino}: extents overlap at "
                                 f"file block {r[0]}; the later one is ignored", []))
                continue
            r = (end, r[0] + r[1] - end, r[2] + (end - r[0]) if r[3] == RUN_DATA else r[2], r[3])
        out.append(r)
        end = r[0] + r[1]
    return out


def acl_to_xattr(value: bytes) -> bytes | None:
    """ext4's on-disk ACL (``ext4_acl_header`` version 1, 4-byte entries for the *_OBJ,
    MASK and OTHER tags, 8-byte ones with an id for USER/GROUP) as Linux's
    ``posix_acl_xattr`` (version 2, every entry 8 bytes, ACL_UNDEFINED_ID for no id) — what
    getxattr("system.posix_acl_access") gives on a kernel mount.  None if malformed."""
    if len(value) < 4 or struct.unpack_from("<I", value, 0)[0] != EXT4_ACL_VERSION:
        return None
    out = [struct.pack("<I", POSIX_ACL_XATTR_VERSION)]
    pos = 4
    for _ in range(4096):
        if pos == len(value):
            return b"".join(out)
        if pos + 4 > len(value):
            return None
        tag, perm = struct.unpack_from("<HH", value, pos)
        if tag in (ACL_USER, ACL_GROUP):
            if pos + 8 > len(value):
                return None
            eid = struct.unpack_from("<I", value, pos + 4)[0]
            pos += 8
        elif tag in (0x01, 0x04, 0x10, 0x20):
            eid = ACL_UNDEFINED_ID
            pos += 4
        else:
            return None
        out.append(struct.pack("<HHI", tag, perm, eid))
    return None


def device_number(inode: Inode) -> tuple[int, int]:
    """(major, minor) of a device inode: old 16-bit encoding in i_block[0], else the new
    32-bit one in i_block[1] (``ext4_iget`` / ``old_decode_dev`` / ``new_decode_dev``)."""
    b0, b1 = struct.unpack_from("<II", inode.i_block, 0)
    if b0:
        return (b0 >> 8) & 0xFF, b0 & 0xFF
    return (b1 & 0xFFF00) >> 8, (b1 & 0xFF) | ((b1 >> 12) & 0xFFF00)
