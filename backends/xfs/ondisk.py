"""XFS on-disk structures (all big-endian, except the little-endian CRC fields).

References:
- Linux ``fs/xfs/libxfs/xfs_format.h`` (``xfs_dsb`` superblock, ``xfs_dinode``
  with ``di_big_nextents``/``di_big_anextents`` for NREXT64, timestamps and
  ``XFS_BIGTIME_EPOCH_OFFSET``, ``xfs_bmbt_rec`` packing, ``xfs_bmdr_block`` and
  the long-format btree block headers ``BMAP``/``BMA3``, ``xfs_dsymlink_hdr``
  ``XSLM``), ``xfs_da_format.h`` (directory v2/v3 shortform, data/block blocks
  ``XD2B``/``XDB3``/``XD2D``/``XDD3``, the block tail, attribute shortform, leaf
  ``0xfbee``/``0x3bee``, node ``0xfebe``/``0x3ebe``, remote value header ``XARM``),
  ``xfs_log_format.h`` (``XLOG_HEADER_MAGIC_NUM``, ``XLOG_UNMOUNT_TRANS``),
  ``xfs_cksum.h`` (crc32c with the field zeroed, stored little-endian),
  ``fs/xfs/xfs_xattr.c`` (``SGI_ACL_FILE``/``SGI_ACL_DEFAULT`` shown as
  ``system.posix_acl_*``), ``xfs_acl.c`` and ``include/uapi/linux/posix_acl_xattr.h``.
- The XFS Algorithms & Data Structures book (kernel.org xfs-documentation).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from construct import Bytes, Const, Int8ul, Int16ub, Int32ub, Int32ul, Int64ub, Struct

from pvfs.errors import FormatError
from pvfs.structs import parse

try:
    from crc32c import crc32c
except ImportError:  # pragma: no cover - crc32c is a pvfs dependency
    crc32c = None

Superblock = Struct(
    "magicnum" / Const(b"XFSB"),
    "blocksize" / Int32ub,
    "dblocks" / Int64ub,
    "rblocks" / Int64ub,
    "rextents" / Int64ub,
    "uuid" / Bytes(16),
    "logstart" / Int64ub,
    "rootino" / Int64ub,
    "rbmino" / Int64ub,
    "rsumino" / Int64ub,
    "rextsize" / Int32ub,
    "agblocks" / Int32ub,
    "agcount" / Int32ub,
    "rbmblocks" / Int32ub,
    "logblocks" / Int32ub,
    "versionnum" / Int16ub,
    "sectsize" / Int16ub,
    "inodesize" / Int16ub,
    "inopblock" / Int16ub,
    "fname" / Bytes(12),
    "blocklog" / Int8ul,
    "sectlog" / Int8ul,
    "inodelog" / Int8ul,
    "inopblog" / Int8ul,
    "agblklog" / Int8ul,
    "rextslog" / Int8ul,
    "inprogress" / Int8ul,
    "imax_pct" / Int8ul,
    "icount" / Int64ub,
    "ifree" / Int64ub,
    "fdblocks" / Int64ub,
    "frextents" / Int64ub,
    "uquotino" / Int64ub,
    "gquotino" / Int64ub,
    "qflags" / Int16ub,
    "flags" / Int8ul,
    "shared_vn" / Int8ul,
    "inoalignmt" / Int32ub,
    "unit" / Int32ub,
    "width" / Int32ub,
    "dirblklog" / Int8ul,
    "logsectlog" / Int8ul,
    "logsectsize" / Int16ub,
    "logsunit" / Int32ub,
    "features2" / Int32ub,
    "bad_features2" / Int32ub,
    "features_compat" / Int32ub,
    "features_ro_compat" / Int32ub,
    "features_incompat" / Int32ub,
    "features_log_incompat" / Int32ub,
    "crc" / Int32ul,
    "spino_align" / Int32ub,
    "pquotino" / Int64ub,
    "lsn" / Int64ub,
    "meta_uuid" / Bytes(16),
)
SB_CRC_OFFSET = 224

XFS_SB_VERSION_NUMBITS = 0x000F
XFS_SB_VERSION_MOREBITSBIT = 0x8000
XFS_SB_VERSION2_FTYPE = 0x00000200
XFS_SB_FEAT_INCOMPAT_FTYPE = 1 << 0
XFS_SB_FEAT_INCOMPAT_SPINODES = 1 << 1
XFS_SB_FEAT_INCOMPAT_META_UUID = 1 << 2
XFS_SB_FEAT_INCOMPAT_BIGTIME = 1 << 3
XFS_SB_FEAT_INCOMPAT_NEEDSREPAIR = 1 << 4
XFS_SB_FEAT_INCOMPAT_NREXT64 = 1 << 5
XFS_SB_FEAT_INCOMPAT_EXCHRANGE = 1 << 6
XFS_SB_FEAT_INCOMPAT_PARENT = 1 << 7
XFS_SB_FEAT_INCOMPAT_METADIR = 1 << 8
#: Incompatible features this reader understands (the rest change the layout).
KNOWN_INCOMPAT = (XFS_SB_FEAT_INCOMPAT_FTYPE | XFS_SB_FEAT_INCOMPAT_SPINODES
                  | XFS_SB_FEAT_INCOMPAT_META_UUID | XFS_SB_FEAT_INCOMPAT_BIGTIME
                  | XFS_SB_FEAT_INCOMPAT_NEEDSREPAIR | XFS_SB_FEAT_INCOMPAT_NREXT64
                  | XFS_SB_FEAT_INCOMPAT_EXCHRANGE | XFS_SB_FEAT_INCOMPAT_PARENT)


@dataclass
class Geometry:
    """What the reader needs from a superblock."""

    version: int
    blocksize: int
    blocklog: int
    dblocks: int
    agblocks: int
    agblklog: int
    agcount: int
    inodesize: int
    inopblog: int
    dirblksize: int
    rootino: int
    uuid: bytes
    label: str
    ftype: bool
    bigtime: bool
    nrext64: bool
    crc_ok: bool | None
    icount: int
    ifree: int
    fdblocks: int
    logstart: int
    logblocks: int
    incompat: int
    sectsize: int = 512
    meta_inos: tuple = ()  # realtime bitmap/summary and quota inodes: in use, in no directory

    @property
    def crc(self) -> bool:
        return self.version == 5

    @property
    def size(self) -> int:
        return self.dblocks * self.blocksize

    def ino_offset(self, ino: int) -> int:
        """Byte offset of inode ``ino`` in the volume."""
        inopblog, agblklog = self.inopblog, self.agblklog
        agno = ino >> (agblklog + inopblog)
        agbno = (ino >> inopblog) & ((1 << agblklog) - 1)
        off = ino & ((1 << inopblog) - 1)
        return (agno * self.agblocks + agbno) * self.blocksize + off * self.inodesize

    def fsb_offset(self, fsbno: int) -> int:
        """Byte offset of filesystem block ``fsbno`` (AG number in the high bits)."""
        agno = fsbno >> self.agblklog
        agbno = fsbno & ((1 << self.agblklog) - 1)
        return (agno * self.agblocks + agbno) * self.blocksize


def sb_crc_ok(sector: bytes) -> bool:
    buf = bytearray(sector)
    stored = struct.unpack_from("<I", buf, SB_CRC_OFFSET)[0]
    buf[SB_CRC_OFFSET:SB_CRC_OFFSET + 4] = b"\0\0\0\0"
    return crc32c(bytes(buf)) == stored


def parse_superblock(data: bytes, volume_size: int | None = None) -> Geometry:
    """Check and decode a superblock (``data`` = its sector); :class:`FormatError`
    when it is not a sane XFS one."""
    sb = parse(Superblock, data[:264], what="XFS superblock")
    version = sb.versionnum & XFS_SB_VERSION_NUMBITS
    if version not in (4, 5):
        raise FormatError(f"XFS superblock version {version} is not 4 or 5")
    bs = sb.blocksize
    if bs < 512 or bs > 65536 or bs & (bs - 1) or 1 << sb.blocklog != bs:
        raise FormatError(f"block size {bs} (log {sb.blocklog}) is invalid")
    if sb.sectsize < 512 or sb.sectsize & (sb.sectsize - 1) or sb.sectsize > bs:
        raise FormatError(f"sector size {sb.sectsize} is invalid")
    isz = sb.inodesize
    if isz < 256 or isz > 2048 or isz & (isz - 1) or 1 << sb.inodelog != isz \
            or isz * sb.inopblock != bs or 1 << sb.inopblog != sb.inopblock:
        raise FormatError(f"inode size {isz} x {sb.inopblock} per block is invalid")
    if not (1 <= sb.agblocks <= 1 << 31) or not (1 <= sb.agcount <= 1 << 24) \
            or sb.agblklog > 31 or sb.agblocks > 1 << sb.agblklog:
        raise FormatError(f"AG geometry {sb.agcount} x {sb.agblocks} blocks is invalid")
    if sb.dblocks == 0 or sb.dblocks > sb.agcount * sb.agblocks:
        raise FormatError(f"{sb.dblocks} data blocks do not fit {sb.agcount} AGs")
    if sb.dirblklog > 8 or bs << sb.dirblklog > 65536:
        raise FormatError(f"directory block log {sb.dirblklog} is invalid")
    crc_ok = None
    if version == 5:
        incompat = sb.features_incompat
        if incompat & ~KNOWN_INCOMPAT:
            raise FormatError(f"unknown incompatible features {incompat & ~KNOWN_INCOMPAT:#x}")
        if crc32c is not None:
            crc_ok = sb_crc_ok(data[:sb.sectsize])
        ftype = bool(incompat & XFS_SB_FEAT_INCOMPAT_FTYPE)
    else:
        incompat = 0
        ftype = bool(sb.versionnum & XFS_SB_VERSION_MOREBITSBIT
                     and sb.features2 & XFS_SB_VERSION2_FTYPE)
    label = sb.fname.split(b"\0", 1)[0].decode("utf-8", "replace")
    return Geometry(
        version=version, blocksize=bs, blocklog=sb.blocklog, dblocks=sb.dblocks,
        agblocks=sb.agblocks, agblklog=sb.agblklog, agcount=sb.agcount, inodesize=isz,
        inopblog=sb.inopblog, dirblksize=bs << sb.dirblklog, rootino=sb.rootino,
        uuid=sb.uuid, label=label, ftype=ftype,
        bigtime=bool(incompat & XFS_SB_FEAT_INCOMPAT_BIGTIME),
        nrext64=bool(incompat & XFS_SB_FEAT_INCOMPAT_NREXT64), crc_ok=crc_ok,
        icount=sb.icount, ifree=sb.ifree, fdblocks=sb.fdblocks, logstart=sb.logstart,
        logblocks=sb.logblocks, incompat=incompat, sectsize=sb.sectsize,
        meta_inos=tuple(i for i in (sb.rbmino, sb.rsumino, sb.uquotino, sb.gquotino,
                                    sb.pquotino) if i not in (0, (1 << 64) - 1)))


# -- inodes ---------------------------------------------------------------------------------

XFS_DINODE_MAGIC = b"IN"
XFS_DINODE_FMT_DEV = 0
XFS_DINODE_FMT_LOCAL = 1
XFS_DINODE_FMT_EXTENTS = 2
XFS_DINODE_FMT_BTREE = 3
XFS_DIFLAG_REALTIME = 1 << 0
XFS_DIFLAG2_BIGTIME = 1 << 3
XFS_DIFLAG2_NREXT64 = 1 << 4
XFS_BIGTIME_EPOCH_OFFSET = 1 << 31
V3_CORE = 176
V2_CORE = 100

_CORE = struct.Struct(">2sHBBHIIIHH8s8s8s8sQQIIHBbIHHII")


@dataclass
class Inode:
    ino: int
    mode: int
    version: int
    format: int
    uid: int
    gid: int
    nlink: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    size: int
    nblocks: int
    nextents: int
    anextents: int
    aformat: int
    flags: int
    flags2: int
    dfork: bytes
    afork: bytes | None


def _time_ns(raw: bytes, bigtime: bool) -> int:
    if bigtime:
        return struct.unpack(">Q", raw)[0] - XFS_BIGTIME_EPOCH_OFFSET * 1_000_000_000
    sec, nsec = struct.unpack(">iI", raw)
    return sec * 1_000_000_000 + min(nsec, 999_999_999)


def parse_inode(buf: bytes, ino: int, geo: Geometry) -> Inode:
    """Decode one on-disk inode; :class:`FormatError` when it is not a sane one."""
    if len(buf) < geo.inodesize:
        raise FormatError("short inode")
    (magic, mode, version, fmt, onlink, uid, gid, nlink, _plo, _phi, pad, at, mt, ct, size,
     nblocks, _extsize, nextents, anextents, forkoff, aformat, _dmev, _dmst, flags, _gen,
     _next) = _CORE.unpack_from(buf, 0)
    if magic != XFS_DINODE_MAGIC:
        raise FormatError(f"inode {ino}: bad magic {magic!r}")
    if version not in (1, 2, 3) or (geo.crc and version != 3) or (not geo.crc and version == 3):
        raise FormatError(f"inode {ino}: version {version} on a v{geo.version} filesystem")
    flags2 = 0
    core = V2_CORE
    if version == 3:
        core = V3_CORE
        if crc32c is not None:
            mv = memoryview(buf)
            crc = crc32c(mv[104:geo.inodesize], crc32c(b"\0\0\0\0", crc32c(mv[:100])))
            if crc != struct.unpack_from("<I", buf, 100)[0]:
                raise FormatError(f"inode {ino}: checksum mismatch")
        flags2, = struct.unpack_from(">Q", buf, 120)
        if struct.unpack_from(">Q", buf, 152)[0] != ino:
            raise FormatError(f"inode {ino}: records inode number "
                              f"{struct.unpack_from('>Q', buf, 152)[0]}")
    if version == 1:
        nlink = onlink
    if flags2 & XFS_DIFLAG2_NREXT64:
        nextents = struct.unpack(">Q", pad)[0]
        anextents = struct.unpack_from(">I", buf, 76)[0]
    if fmt > XFS_DINODE_FMT_BTREE:
        raise FormatError(f"inode {ino}: data fork format {fmt}")
    if size >= 1 << 63:
        raise FormatError(f"inode {ino}: size {size} is negative")
    bigtime = bool(flags2 & XFS_DIFLAG2_BIGTIME)
    isz = geo.inodesize
    if forkoff:
        aoff = core + forkoff * 8
        if aoff >= isz:
            raise FormatError(f"inode {ino}: attribute fork offset {forkoff} is past the inode")
        dfork, afork = buf[core:aoff], buf[aoff:isz]
    else:
        dfork, afork = buf[core:isz], None
    return Inode(ino, mode, version, fmt, uid, gid, nlink, _time_ns(at, bigtime),
                 _time_ns(mt, bigtime), _time_ns(ct, bigtime), size, nblocks, nextents,
                 anextents, aformat, flags, flags2, dfork, afork)


# -- extents and the block map btree -------------------------------------------------

BMAP_MAGICS = (b"BMAP", b"BMA3")
BTREE_LBLOCK_LEN = 24
BTREE_LBLOCK_CRC_LEN = 72
XFS_EXT_UNWRITTEN = 1


def unpack_extents(data: bytes, count: int):
    """``[(file_block, fs_block, blockcount, unwritten)]`` of packed ``xfs_bmbt_rec``s."""
    out = []
    for i in range(min(count, len(data) // 16)):
        hi, lo = struct.unpack_from(">QQ", data, i * 16)
        out.append(((hi >> 9) & ((1 << 54) - 1), ((hi & 0x1FF) << 43) | (lo >> 21),
                    lo & 0x1FFFFF, hi >> 63))
    return out


def bmdr_root(fork: bytes):
    """``(level, [child fs blocks])`` of a block-map btree root in an inode fork."""
    if len(fork) < 4:
        raise FormatError("btree root does not fit the fork")
    level, numrecs = struct.unpack_from(">HH", fork, 0)
    maxrecs = (len(fork) - 4) // 16
    if level == 0 or numrecs == 0 or numrecs > maxrecs:
        raise FormatError(f"btree root level {level} with {numrecs} of {maxrecs} records")
    ptr0 = 4 + maxrecs * 8
    return level, [struct.unpack_from(">Q", fork, ptr0 + 8 * i)[0] for i in range(numrecs)]


def bmbt_block(block: bytes, crc: bool):
    """``(level, numrecs, payload offset)`` of a long-format block-map btree block."""
    magic = block[:4]
    if magic not in BMAP_MAGICS or (magic == b"BMA3") != crc:
        raise FormatError(f"bad block map btree magic {magic!r}")
    level, numrecs = struct.unpack_from(">HH", block, 4)
    hdr = BTREE_LBLOCK_CRC_LEN if crc else BTREE_LBLOCK_LEN
    if crc and crc32c is not None:
        b = bytearray(block)
        stored = struct.unpack_from("<I", b, 64)[0]
        b[64:68] = b"\0\0\0\0"
        if crc32c(bytes(b)) != stored:
            raise FormatError("block map btree block checksum mismatch")
    maxrecs = (len(block) - hdr) // (16 if level == 0 else 16)
    if numrecs > maxrecs or level > 10:
        raise FormatError(f"block map btree block with {numrecs} records at level {level}")
    return level, numrecs, hdr


def bmbt_children(block: bytes, numrecs: int, hdr: int):
    maxrecs = (len(block) - hdr) // 16
    ptr0 = hdr + maxrecs * 8
    return [struct.unpack_from(">Q", block, ptr0 + 8 * i)[0] for i in range(numrecs)]


# -- inode btree (for inodes no directory reaches) ----------------------------------

XFS_AGI_MAGIC = b"XAGI"
INOBT_MAGICS = {b"IABT": False, b"IAB3": True}
XFS_INODES_PER_CHUNK = 64
XFS_INODES_PER_HOLEMASK_BIT = 4


def agi_root(sector: bytes):
    """``(root block, levels)`` of the inode btree from an AGI sector."""
    if sector[:4] != XFS_AGI_MAGIC:
        raise FormatError(f"bad AGI magic {sector[:4]!r}")
    root, level = struct.unpack_from(">II", sector, 20)
    if level == 0 or level > 8:
        raise FormatError(f"inode btree of {level} levels")
    return root, level


def inobt_block(block: bytes, crc: bool, sparse: bool):
    """``(level, [child AG blocks])`` of a node or ``(0, [(first agino, in-use
    mask)])`` of a leaf of the inode btree."""
    if INOBT_MAGICS.get(block[:4]) is not crc:
        raise FormatError(f"bad inode btree block magic {block[:4]!r}")
    level, numrecs = struct.unpack_from(">HH", block, 4)
    hdr = 56 if crc else 16
    if level:
        maxrecs = (len(block) - hdr) // 8
        if numrecs > maxrecs:
            raise FormatError(f"inode btree node with {numrecs} records")
        ptr0 = hdr + 4 * maxrecs
        return level, [struct.unpack_from(">I", block, ptr0 + 4 * i)[0] for i in range(numrecs)]
    if hdr + 16 * numrecs > len(block):
        raise FormatError(f"inode btree leaf with {numrecs} records")
    out = []
    for i in range(numrecs):
        start, holemask, free = struct.unpack_from(">IH2xQ", block, hdr + 16 * i)
        used = ~free & ((1 << 64) - 1)
        if sparse:
            for b in range(16):
                if holemask >> b & 1:
                    used &= ~(0xF << (b * XFS_INODES_PER_HOLEMASK_BIT))
        out.append((start, used))
    return 0, out


# -- directories ----------------------------------------------------------------------

XFS_DIR2_DATA_FREE_TAG = 0xFFFF
DIR_DATA_MAGICS = {b"XD2B": (False, True), b"XD2D": (False, False),
                   b"XDB3": (True, True), b"XDD3": (True, False)}
XFS_DIR2_LEAF_OFFSET = 32 << 30  # byte offset in the directory where the leaf space starts
XFS_DIR3_FT_DIR = 2


def shortform_dir(fork: bytes, size: int, ftype: bool):
    """Yield ``(name bytes, inode)`` of a shortform directory (parent not included)."""
    data = fork[:size]
    if len(data) < 6:
        raise FormatError("shortform directory shorter than its header")
    count, i8 = data[0], data[1]
    inosize = 8 if i8 else 4
    pos = 2 + inosize
    for _ in range(count):
        if pos + 3 > len(data):
            raise FormatError("shortform directory entry runs past the fork")
        nlen = data[pos]
        pos += 3  # namelen, offset[2]
        end = pos + nlen + (1 if ftype else 0) + inosize
        if nlen == 0 or end > len(data):
            raise FormatError("shortform directory entry runs past the fork")
        name = data[pos:pos + nlen]
        pos += nlen + (1 if ftype else 0)
        ino = int.from_bytes(data[pos:pos + inosize], "big")
        pos += inosize
        yield name, ino


def data_block_entries(block: bytes, ftype: bool, crc: bool):
    """Yield ``(name bytes, inode)`` of one directory data block (block or data form)."""
    kind = DIR_DATA_MAGICS.get(block[:4])
    if kind is None or kind[0] != crc:
        raise FormatError(f"bad directory data block magic {block[:4]!r}")
    if crc and crc32c is not None:
        b = bytearray(block)
        stored = struct.unpack_from("<I", b, 4)[0]
        b[4:8] = b"\0\0\0\0"
        if crc32c(bytes(b)) != stored:
            raise FormatError("directory block checksum mismatch")
    pos = 64 if crc else 16
    end = len(block)
    if kind[1]:  # single-block directory: leaf entries and the tail at the end
        count, _stale = struct.unpack_from(">II", block, end - 8)
        end = end - 8 - count * 8
        if end < pos:
            raise FormatError("directory block tail is larger than the block")
    while pos + 16 <= end:  # the smallest entry (or free space) is 16 bytes
        if struct.unpack_from(">H", block, pos)[0] == XFS_DIR2_DATA_FREE_TAG:
            length = struct.unpack_from(">H", block, pos + 2)[0]
            if length < 8 or length % 8 or pos + length > end:
                raise FormatError(f"bad free space length {length} in a directory block")
            pos += length
            continue
        ino = struct.unpack_from(">Q", block, pos)[0]
        nlen = block[pos + 8]
        size = (8 + 1 + nlen + (1 if ftype else 0) + 2 + 7) & ~7
        if nlen == 0 or pos + size > end:
            raise FormatError("directory entry runs past the block")
        name = block[pos + 9:pos + 9 + nlen]
        pos += size
        if name in (b".", b".."):
            continue
        yield name, ino


# -- symlinks -------------------------------------------------------------------------

XFS_SYMLINK_MAGIC = b"XSLM"
XFS_SYMLINK_HDR = 56
XFS_SYMLINK_MAXLEN = 1024


# -- extended attributes --------------------------------------------------------------

XFS_ATTR_LOCAL = 1 << 0
XFS_ATTR_ROOT = 1 << 1
XFS_ATTR_SECURE = 1 << 2
XFS_ATTR_PARENT = 1 << 3
XFS_ATTR_INCOMPLETE = 1 << 7
ATTR_LEAF_MAGICS = {0xFBEE: False, 0x3BEE: True}
DA_NODE_MAGICS = {0xFEBE: False, 0x3EBE: True}
XFS_ATTR3_RMT_MAGIC = b"XARM"
XFS_ATTR3_RMT_HDR = 56
SGI_ACL_FILE = b"SGI_ACL_FILE"
SGI_ACL_DEFAULT = b"SGI_ACL_DEFAULT"


def attr_name(flags: int, name: bytes) -> bytes | None:
    """The Linux xattr name of an XFS attribute (None: not shown, e.g. parent pointers)."""
    if flags & (XFS_ATTR_INCOMPLETE | XFS_ATTR_PARENT):
        return None
    if flags & XFS_ATTR_ROOT:
        return b"trusted." + name
    if flags & XFS_ATTR_SECURE:
        return b"security." + name
    return b"user." + name


def shortform_attrs(fork: bytes):
    """Yield ``(flags, name, value)`` of a shortform attribute fork."""
    if len(fork) < 4:
        raise FormatError("shortform attribute fork shorter than its header")
    totsize, count = struct.unpack_from(">HB", fork, 0)
    data = fork[:min(totsize, len(fork))]
    pos = 4
    for _ in range(count):
        if pos + 3 > len(data):
            raise FormatError("shortform attribute runs past the fork")
        nlen, vlen, flags = data[pos], data[pos + 1], data[pos + 2]
        end = pos + 3 + nlen + vlen
        if end > len(data):
            raise FormatError("shortform attribute runs past the fork")
        yield flags, data[pos + 3:pos + 3 + nlen], data[pos + 3 + nlen:end]
        pos = end


def da_blkinfo(block: bytes):
    """``(forw, magic)`` of a directory/attribute btree block."""
    forw, _back, magic = struct.unpack_from(">IIH", block, 0)
    return forw, magic


def da_node_first_child(block: bytes, crc: bool) -> int:
    hdr = 64 if crc else 16
    count, _level = struct.unpack_from(">HH", block, hdr - (8 if crc else 4))
    if count == 0 or hdr + 8 * count > len(block):
        raise FormatError(f"attribute btree node with {count} entries")
    return struct.unpack_from(">I", block, hdr + 4)[0]


def attr_leaf_entries(block: bytes, crc: bool):
    """Yield ``(flags, name, value or None, remote block, value length)`` of an
    attribute leaf block."""
    hdr = 80 if crc else 32
    if crc and crc32c is not None:
        b = bytearray(block)
        stored = struct.unpack_from("<I", b, 12)[0]
        b[12:16] = b"\0\0\0\0"
        if crc32c(bytes(b)) != stored:
            raise FormatError("attribute leaf block checksum mismatch")
    count = struct.unpack_from(">H", block, hdr - (24 if crc else 20))[0]
    if hdr + 8 * count > len(block):
        raise FormatError(f"attribute leaf with {count} entries does not fit its block")
    for i in range(count):
        _hash, nameidx, flags = struct.unpack_from(">IHB", block, hdr + 8 * i)
        if flags & XFS_ATTR_LOCAL:
            if nameidx + 3 > len(block):
                raise FormatError("attribute name lies outside the block")
            vlen, nlen = struct.unpack_from(">HB", block, nameidx)
            end = nameidx + 3 + nlen + vlen
            if end > len(block):
                raise FormatError("attribute value lies outside the block")
            yield flags, block[nameidx + 3:nameidx + 3 + nlen], \
                block[nameidx + 3 + nlen:end], None, vlen
        else:
            if nameidx + 9 > len(block):
                raise FormatError("attribute name lies outside the block")
            valueblk, vlen, nlen = struct.unpack_from(">IIB", block, nameidx)
            if nameidx + 9 + nlen > len(block):
                raise FormatError("attribute name lies outside the block")
            yield flags, block[nameidx + 9:nameidx + 9 + nlen], None, valueblk, vlen


# -- POSIX ACLs -----------------------------------------------------------------------

ACL_USER = 0x02
ACL_GROUP = 0x08
ACL_UNDEFINED_ID = 0xFFFFFFFF
POSIX_ACL_XATTR_VERSION = 2
XFS_ACL_MAX_ENTRIES = 25 * 1024


def xfs_acl_to_posix(value: bytes) -> bytes:
    """XFS's on-disk ACL (``xfs_acl``: count, then tag/id/perm big-endian) as the Linux
    xattr format (version 2, then tag/perm/id little-endian)."""
    if len(value) < 4:
        raise FormatError("ACL shorter than its header")
    count = struct.unpack_from(">I", value, 0)[0]
    if count > XFS_ACL_MAX_ENTRIES or 4 + 12 * count > len(value):
        raise FormatError(f"ACL with {count} entries does not fit {len(value)} bytes")
    out = [struct.pack("<I", POSIX_ACL_XATTR_VERSION)]
    for i in range(count):
        tag, aid, perm = struct.unpack_from(">IIH", value, 4 + 12 * i)
        if tag not in (ACL_USER, ACL_GROUP):
            aid = ACL_UNDEFINED_ID
        out.append(struct.pack("<HHI", tag, perm, aid))
    return b"".join(out)


# -- the log --------------------------------------------------------------------------

XLOG_HEADER_MAGIC_NUM = 0xFEEDBABE
XLOG_UNMOUNT_TRANS = 0x20
XLOG_HEADER_CYCLE_SIZE = 32 * 1024


def log_record_header(bb: bytes):
    """``(lsn, num_logops, header blocks)`` when the 512-byte block starts a log record."""
    magic, _cycle, version, length, lsn = struct.unpack_from(">IIIIQ", bb, 0)
    if magic != XLOG_HEADER_MAGIC_NUM or version not in (1, 2):
        return None
    num_logops = struct.unpack_from(">I", bb, 40)[0]
    size = struct.unpack_from(">I", bb, 320)[0] if version == 2 else 0  # h_size
    hblocks = max(1, -(-size // XLOG_HEADER_CYCLE_SIZE)) if version == 2 and size else 1
    return lsn, num_logops, hblocks, length
