"""The ext2/3/4 superblock: parse, check, and the geometry everything else uses.

# References:
# - Linux fs/ext4/ext4.h (struct ext4_super_block, EXT4_BLOCK_SIZE, EXT4_DESC_SIZE,
#   EXT4_HAS_*_FEATURE), fs/ext4/super.c (ext4_superblock_csum, ext4_fill_super:
#   s_csum_seed, the geometry sanity checks), fs/ext4/balloc.c (ext4_bg_has_super,
#   ext4_group_first_block_no).
# - Documentation/filesystems/ext4/super.rst, checksums.rst.
"""

from __future__ import annotations

import struct
import uuid as uuidlib

from pvfs.errors import FormatError
from pvfs.structs import parse

from .structs import (
    COMPAT_HAS_JOURNAL, EXT4_GOOD_OLD_FIRST_INO, EXT4_GOOD_OLD_INODE_SIZE, EXT4_MIN_DESC_SIZE,
    EXT4_MIN_DESC_SIZE_64BIT, EXT4_SUPER_MAGIC, EXT4_VALID_FS, INCOMPAT_64BIT,
    INCOMPAT_CSUM_SEED, INCOMPAT_EXTENTS, INCOMPAT_FLEX_BG, INCOMPAT_JOURNAL_DEV, INCOMPAT_KNOWN,
    INCOMPAT_RECOVER, RO_COMPAT_BIGALLOC, RO_COMPAT_GDT_CSUM, RO_COMPAT_METADATA_CSUM,
    RO_COMPAT_SPARSE_SUPER, SB_CHECKSUM_OFFSET, SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE, SuperBlock,
)

try:  # C implementation (SSE4.2): the dependency every checksummed backend uses
    from crc32c import crc32c as _crc32c_std
except ImportError:  # pragma: no cover - pyproject lists it
    _crc32c_std = None


class Ext4Error(FormatError):
    """An ext2/3/4 structure is not what fs/ext4 says it must be."""


def ext4_chksum(seed: int, data: bytes) -> int:
    """The kernel's ``ext4_chksum(sbi, seed, data, len)``: crc32c without the final
    inversion, continued from ``seed`` (``crc32c_le``).  The ``crc32c`` package computes
    the standard (pre- and post-inverted) CRC, so raw(seed, d) = ~std(d, value=~seed)."""
    return (~_crc32c_std(data, (~seed) & 0xFFFFFFFF)) & 0xFFFFFFFF


class Superblock:
    """A parsed superblock with the derived geometry (``ext4_fill_super``)."""

    def __init__(self, raw: bytes, offset: int = SUPERBLOCK_OFFSET):
        if len(raw) < SUPERBLOCK_SIZE:
            raise Ext4Error(f"superblock at {offset:#x}: only {len(raw)} bytes")
        self.raw = bytes(raw[:SUPERBLOCK_SIZE])
        self.offset = offset
        sb = parse(SuperBlock, self.raw, Ext4Error, "ext4 superblock", offset)
        self.sb = sb
        if sb.s_magic != EXT4_SUPER_MAGIC:
            raise Ext4Error(f"no ext2/3/4 superblock at {offset:#x} (magic {sb.s_magic:#06x})")
        self.compat = sb.s_feature_compat
        self.incompat = sb.s_feature_incompat
        self.ro_compat = sb.s_feature_ro_compat
        if sb.s_log_block_size > 6:  # 1 KiB .. 64 KiB (EXT4_MAX_BLOCK_LOG_SIZE)
            raise Ext4Error(f"superblock at {offset:#x}: block size 2^{10 + sb.s_log_block_size}")
        self.block_size = 1024 << sb.s_log_block_size
        self.is_64bit = bool(self.incompat & INCOMPAT_64BIT)
        self.blocks_count = sb.s_blocks_count_lo | (
            (sb.s_blocks_count_hi << 32) if self.is_64bit else 0)
        self.free_blocks = sb.s_free_blocks_count_lo | (
            (sb.s_free_blocks_count_hi << 32) if self.is_64bit else 0)
        self.first_data_block = sb.s_first_data_block
        self.blocks_per_group = sb.s_blocks_per_group
        self.inodes_per_group = sb.s_inodes_per_group
        self.inodes_count = sb.s_inodes_count
        if sb.s_rev_level == 0:  # EXT4_GOOD_OLD_REV
            self.inode_size = EXT4_GOOD_OLD_INODE_SIZE
            self.first_ino = EXT4_GOOD_OLD_FIRST_INO
        else:
            self.inode_size = sb.s_inode_size
            self.first_ino = sb.s_first_ino
        if (self.inode_size < EXT4_GOOD_OLD_INODE_SIZE or self.inode_size > self.block_size
                or self.inode_size & (self.inode_size - 1)):
            raise Ext4Error(f"superblock at {offset:#x}: inode size {self.inode_size}")
        if self.is_64bit:
            self.desc_size = sb.s_desc_size
            if (self.desc_size < EXT4_MIN_DESC_SIZE_64BIT or self.desc_size > 1024
                    or self.desc_size & (self.desc_size - 1)):
                raise Ext4Error(f"superblock at {offset:#x}: group descriptor size "
                                f"{self.desc_size}")
        else:
            self.desc_size = EXT4_MIN_DESC_SIZE
        # bigalloc: the block bitmap counts clusters of 2^(s_log_cluster_size -
        # s_log_block_size) blocks, so a group spans that many times 8 * block_size blocks
        ratio = 1
        if self.ro_compat & RO_COMPAT_BIGALLOC:
            if not sb.s_log_block_size <= sb.s_log_cluster_size <= sb.s_log_block_size + 16:
                raise Ext4Error(f"superblock at {offset:#x}: cluster size 2^"
                                f"{10 + sb.s_log_cluster_size}")
            ratio = 1 << (sb.s_log_cluster_size - sb.s_log_block_size)
        if not self.blocks_per_group or self.blocks_per_group > 8 * self.block_size * ratio:
            raise Ext4Error(f"superblock at {offset:#x}: {self.blocks_per_group} blocks per group")
        if (not self.inodes_per_group or self.inodes_per_group > 8 * self.block_size
                or self.inodes_per_group * self.inode_size % self.block_size):
            raise Ext4Error(f"superblock at {offset:#x}: {self.inodes_per_group} inodes per group")
        if self.blocks_count <= self.first_data_block or self.first_data_block > 1:
            raise Ext4Error(f"superblock at {offset:#x}: {self.blocks_count} blocks, first data "
                            f"block {self.first_data_block}")
        self.group_count = -(-(self.blocks_count - self.first_data_block) // self.blocks_per_group)
        if self.inodes_count > self.group_count * self.inodes_per_group:
            raise Ext4Error(f"superblock at {offset:#x}: {self.inodes_count} inodes do not fit "
                            f"{self.group_count} groups")
        self.descs_per_block = self.block_size // self.desc_size
        self.metadata_csum = bool(self.ro_compat & RO_COMPAT_METADATA_CSUM)
        self.gdt_csum = bool(self.ro_compat & RO_COMPAT_GDT_CSUM) and not self.metadata_csum
        if self.incompat & INCOMPAT_CSUM_SEED:
            self.csum_seed = sb.s_checksum_seed
        else:
            self.csum_seed = ext4_chksum(0xFFFFFFFF, sb.s_uuid)
        self.uuid = str(uuidlib.UUID(bytes=bytes(sb.s_uuid)))
        self.label = bytes(sb.s_volume_name).split(b"\0", 1)[0].decode("utf-8", "replace")
        self.unknown_incompat = self.incompat & ~INCOMPAT_KNOWN

    # -- checks ------------------------------------------------------------------
    def checksum_ok(self) -> bool | None:
        """Whether s_checksum matches (``ext4_superblock_csum``); None without metadata_csum."""
        if not self.metadata_csum:
            return None
        return ext4_chksum(0xFFFFFFFF, self.raw[:SB_CHECKSUM_OFFSET]) == self.sb.s_checksum

    @property
    def fstype(self) -> str:
        """ext4 / ext3 / ext2 by features, as blkid and pvfs.fsprobe name them."""
        if self.incompat & ~(INCOMPAT_RECOVER | 0x2 | 0x10) or self.ro_compat & ~0x7:
            return "ext4"
        if self.incompat & INCOMPAT_EXTENTS or self.incompat & INCOMPAT_FLEX_BG:
            return "ext4"
        return "ext3" if self.compat & COMPAT_HAS_JOURNAL else "ext2"

    @property
    def clean(self) -> bool:
        """Cleanly unmounted: s_state has EXT4_VALID_FS and no journal recovery is due."""
        return bool(self.sb.s_state & EXT4_VALID_FS) and not self.incompat & INCOMPAT_RECOVER

    @property
    def needs_recovery(self) -> bool:
        return bool(self.incompat & INCOMPAT_RECOVER)

    @property
    def journal_dev(self) -> bool:
        return bool(self.incompat & INCOMPAT_JOURNAL_DEV)

    # -- geometry ----------------------------------------------------------------
    def group_first_block(self, group: int) -> int:
        """``ext4_group_first_block_no``."""
        return group * self.blocks_per_group + self.first_data_block

    def group_has_super(self, group: int) -> bool:
        """``ext4_bg_has_super``: sparse_super keeps copies in groups 0, 1 and powers of 3, 5, 7
        (sparse_super2 keeps them only in the two ``s_backup_bgs``)."""
        if group == 0:
            return True
        if self.compat & 0x0200:  # sparse_super2
            return group in struct.unpack("<II", self.sb.s_backup_bgs)
        if group <= 1 or not self.ro_compat & RO_COMPAT_SPARSE_SUPER:
            return True
        if not group & 1:
            return False
        for base in (3, 5, 7):
            n = base
            while n < group:
                n *= base
            if n == group:
                return True
        return False

    def used_bytes(self) -> int:
        return max(0, self.blocks_count - self.free_blocks) * self.block_size

    @property
    def size(self) -> int:
        return self.blocks_count * self.block_size


def backup_superblock_offsets(sb: Superblock, limit: int = 8) -> list[tuple[int, int]]:
    """``(group, byte offset)`` of the backup superblocks ``sb``'s geometry predicts (the
    groups that ``ext4_bg_has_super`` names), at most ``limit``.  For a reader that lost the
    primary: the jbd2/recovery code guesses the geometry and tries these."""
    out = []
    for g in range(1, sb.group_count):
        if sb.group_has_super(g):
            out.append((g, sb.group_first_block(g) * sb.block_size))
            if len(out) >= limit:
                break
    return out


def read_superblock(source, offset: int = SUPERBLOCK_OFFSET) -> Superblock:
    """Parse the superblock at ``offset`` of ``source`` (1024 for the primary; a backup
    sits at the start of its group's first block)."""
    raw = source.read(offset, SUPERBLOCK_SIZE)
    return Superblock(raw, offset)


def probe_superblock(source, offset: int = SUPERBLOCK_OFFSET) -> float:
    """The backend's probe score: 100 with a good metadata_csum checksum, 50 magic and
    sane geometry only, 0 otherwise; never raises."""
    try:
        if source.size < offset + SUPERBLOCK_SIZE:
            return 0.0
        raw = source.read(offset, SUPERBLOCK_SIZE)
        if raw[0x38:0x3A] != b"\x53\xef":
            return 0.0
        sb = Superblock(raw, offset)
    except Exception:  # any error: not ours (or too damaged to claim on the primary)
        return 0.0
    if sb.journal_dev:
        return 0.0
    ok = sb.checksum_ok()
    if ok is False:
        return 30.0  # magic and geometry, but the checksum disagrees
    return 100.0 if ok else 50.0
