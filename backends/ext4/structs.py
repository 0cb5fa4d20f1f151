"""ext2/ext3/ext4 on-disk structures (all little-endian).

References:
- Linux ``fs/ext4/ext4.h``: ``struct ext4_super_block``, ``struct ext4_group_desc``,
  ``struct ext4_inode``, ``struct ext4_dir_entry_2``, ``struct ext4_dir_entry_tail``,
  the ``EXT4_FEATURE_*`` bits and inode flags.
- Linux ``fs/ext4/ext4_extents.h``: ``ext4_extent_header``, ``ext4_extent_idx``,
  ``ext4_extent``, ``ext4_extent_tail``, ``EXT_INIT_MAX_LEN``.
- Linux ``fs/ext4/xattr.h``: ``ext4_xattr_header``, ``ext4_xattr_ibody_header``,
  ``ext4_xattr_entry``; ``fs/ext4/acl.h``: ``ext4_acl_header`` / ``ext4_acl_entry``.
- Linux ``fs/ext4/namei.c``: ``struct dx_root`` / ``dx_node`` (htree blocks as seen by
  a linear reader) and ``Documentation/filesystems/ext4/`` (the layout chapters).

Structures read once per volume (superblock, group descriptors) are construct
declarations with the kernel's field names; structures read per entry (inodes,
extents, directory entries) are ``struct.Struct`` formats with the same names in
comments, because they are parsed tens of thousands of times per listing.
"""

from __future__ import annotations

import struct

from construct import Bytes, Int8ul, Int16sl, Int16ul, Int32ul, Int64ul, Padding, Struct

EXT4_SUPER_MAGIC = 0xEF53
SUPERBLOCK_OFFSET = 1024  # the primary superblock, whatever the block size
SUPERBLOCK_SIZE = 1024

#: ``struct ext4_super_block`` (ext4.h), 1024 bytes.
SuperBlock = Struct(
    "s_inodes_count" / Int32ul,
    "s_blocks_count_lo" / Int32ul,
    "s_r_blocks_count_lo" / Int32ul,
    "s_free_blocks_count_lo" / Int32ul,
    "s_free_inodes_count" / Int32ul,
    "s_first_data_block" / Int32ul,
    "s_log_block_size" / Int32ul,
    "s_log_cluster_size" / Int32ul,
    "s_blocks_per_group" / Int32ul,
    "s_clusters_per_group" / Int32ul,
    "s_inodes_per_group" / Int32ul,
    "s_mtime" / Int32ul,
    "s_wtime" / Int32ul,
    "s_mnt_count" / Int16ul,
    "s_max_mnt_count" / Int16sl,
    "s_magic" / Int16ul,
    "s_state" / Int16ul,
    "s_errors" / Int16ul,
    "s_minor_rev_level" / Int16ul,
    "s_lastcheck" / Int32ul,
    "s_checkinterval" / Int32ul,
    "s_creator_os" / Int32ul,
    "s_rev_level" / Int32ul,
    "s_def_resuid" / Int16ul,
    "s_def_resgid" / Int16ul,
    # EXT4_DYNAMIC_REV superblocks only
    "s_first_ino" / Int32ul,
    "s_inode_size" / Int16ul,
    "s_block_group_nr" / Int16ul,
    "s_feature_compat" / Int32ul,
    "s_feature_incompat" / Int32ul,
    "s_feature_ro_compat" / Int32ul,
    "s_uuid" / Bytes(16),
    "s_volume_name" / Bytes(16),
    "s_last_mounted" / Bytes(64),
    "s_algorithm_usage_bitmap" / Int32ul,
    "s_prealloc_blocks" / Int8ul,
    "s_prealloc_dir_blocks" / Int8ul,
    "s_reserved_gdt_blocks" / Int16ul,
    "s_journal_uuid" / Bytes(16),
    "s_journal_inum" / Int32ul,
    "s_journal_dev" / Int32ul,
    "s_last_orphan" / Int32ul,
    "s_hash_seed" / Bytes(16),
    "s_def_hash_version" / Int8ul,
    "s_jnl_backup_type" / Int8ul,
    "s_desc_size" / Int16ul,
    "s_default_mount_opts" / Int32ul,
    "s_first_meta_bg" / Int32ul,
    "s_mkfs_time" / Int32ul,
    "s_jnl_blocks" / Bytes(17 * 4),
    # 64bit support
    "s_blocks_count_hi" / Int32ul,
    "s_r_blocks_count_hi" / Int32ul,
    "s_free_blocks_count_hi" / Int32ul,
    "s_min_extra_isize" / Int16ul,
    "s_want_extra_isize" / Int16ul,
    "s_flags" / Int32ul,
    "s_raid_stride" / Int16ul,
    "s_mmp_update_interval" / Int16ul,
    "s_mmp_block" / Int64ul,
    "s_raid_stripe_width" / Int32ul,
    "s_log_groups_per_flex" / Int8ul,
    "s_checksum_type" / Int8ul,
    "s_encryption_level" / Int8ul,
    "s_reserved_pad" / Int8ul,
    "s_kbytes_written" / Int64ul,
    "s_snapshot_inum" / Int32ul,
    "s_snapshot_id" / Int32ul,
    "s_snapshot_r_blocks_count" / Int64ul,
    "s_snapshot_list" / Int32ul,
    "s_error_count" / Int32ul,
    "s_first_error_time" / Int32ul,
    "s_first_error_ino" / Int32ul,
    "s_first_error_block" / Int64ul,
    "s_first_error_func" / Bytes(32),
    "s_first_error_line" / Int32ul,
    "s_last_error_time" / Int32ul,
    "s_last_error_ino" / Int32ul,
    "s_last_error_line" / Int32ul,
    "s_last_error_block" / Int64ul,
    "s_last_error_func" / Bytes(32),
    "s_mount_opts" / Bytes(64),
    "s_usr_quota_inum" / Int32ul,
    "s_grp_quota_inum" / Int32ul,
    "s_overhead_clusters" / Int32ul,
    "s_backup_bgs" / Bytes(8),
    "s_encrypt_algos" / Bytes(4),
    "s_encrypt_pw_salt" / Bytes(16),
    "s_lpf_ino" / Int32ul,
    "s_prj_quota_inum" / Int32ul,
    "s_checksum_seed" / Int32ul,
    "s_wtime_hi" / Int8ul,
    "s_mtime_hi" / Int8ul,
    "s_mkfs_time_hi" / Int8ul,
    "s_lastcheck_hi" / Int8ul,
    "s_first_error_time_hi" / Int8ul,
    "s_last_error_time_hi" / Int8ul,
    "s_first_error_errcode" / Int8ul,
    "s_last_error_errcode" / Int8ul,
    "s_encoding" / Int16ul,
    "s_encoding_flags" / Int16ul,
    "s_orphan_file_inum" / Int32ul,
    Padding(94 * 4),
    "s_checksum" / Int32ul,
)
assert SuperBlock.sizeof() == SUPERBLOCK_SIZE
SB_CHECKSUM_OFFSET = 0x3FC

# s_state
EXT4_VALID_FS = 0x0001  # unmounted cleanly
EXT4_ERROR_FS = 0x0002  # errors detected
EXT4_ORPHAN_FS = 0x0004  # orphans being recovered

# s_feature_compat
COMPAT_DIR_PREALLOC = 0x0001
COMPAT_IMAGIC_INODES = 0x0002
COMPAT_HAS_JOURNAL = 0x0004
COMPAT_EXT_ATTR = 0x0008
COMPAT_RESIZE_INODE = 0x0010
COMPAT_DIR_INDEX = 0x0020
COMPAT_SPARSE_SUPER2 = 0x0200
COMPAT_ORPHAN_FILE = 0x1000

# s_feature_ro_compat
RO_COMPAT_SPARSE_SUPER = 0x0001
RO_COMPAT_LARGE_FILE = 0x0002
RO_COMPAT_HUGE_FILE = 0x0008
RO_COMPAT_GDT_CSUM = 0x0010
RO_COMPAT_DIR_NLINK = 0x0020
RO_COMPAT_EXTRA_ISIZE = 0x0040
RO_COMPAT_QUOTA = 0x0100
RO_COMPAT_BIGALLOC = 0x0200
RO_COMPAT_METADATA_CSUM = 0x0400
RO_COMPAT_READONLY = 0x1000
RO_COMPAT_PROJECT = 0x2000
RO_COMPAT_VERITY = 0x8000
RO_COMPAT_ORPHAN_PRESENT = 0x10000

# s_feature_incompat
INCOMPAT_COMPRESSION = 0x0001
INCOMPAT_FILETYPE = 0x0002
INCOMPAT_RECOVER = 0x0004  # needs_recovery: the journal holds un-checkpointed transactions
INCOMPAT_JOURNAL_DEV = 0x0008  # an external journal device, not a filesystem
INCOMPAT_META_BG = 0x0010
INCOMPAT_EXTENTS = 0x0040
INCOMPAT_64BIT = 0x0080
INCOMPAT_MMP = 0x0100
INCOMPAT_FLEX_BG = 0x0200
INCOMPAT_EA_INODE = 0x0400
INCOMPAT_DIRDATA = 0x1000
INCOMPAT_CSUM_SEED = 0x2000
INCOMPAT_LARGEDIR = 0x4000
INCOMPAT_INLINE_DATA = 0x8000
INCOMPAT_ENCRYPT = 0x10000
INCOMPAT_CASEFOLD = 0x20000
#: Everything this reader understands (ext4.h EXT4_FEATURE_INCOMPAT_SUPP, minus DIRDATA).
INCOMPAT_KNOWN = (INCOMPAT_FILETYPE | INCOMPAT_RECOVER | INCOMPAT_META_BG | INCOMPAT_EXTENTS
                  | INCOMPAT_64BIT | INCOMPAT_MMP | INCOMPAT_FLEX_BG | INCOMPAT_EA_INODE
                  | INCOMPAT_CSUM_SEED | INCOMPAT_LARGEDIR | INCOMPAT_INLINE_DATA
                  | INCOMPAT_ENCRYPT | INCOMPAT_CASEFOLD)

EXT4_MIN_DESC_SIZE = 32
EXT4_MIN_DESC_SIZE_64BIT = 64

#: ``struct ext4_group_desc`` (ext4.h), read as a table with struct (thousands of groups):
#: bg_block_bitmap_lo, bg_inode_bitmap_lo, bg_inode_table_lo, bg_free_blocks_count_lo,
#: bg_free_inodes_count_lo, bg_used_dirs_count_lo, bg_flags, bg_exclude_bitmap_lo,
#: bg_block_bitmap_csum_lo, bg_inode_bitmap_csum_lo, bg_itable_unused_lo, bg_checksum.
GROUP_DESC_LO = struct.Struct("<IIIHHHHIHHHH")
#: With desc_size >= 64 (64bit): bg_block_bitmap_hi, bg_inode_bitmap_hi, bg_inode_table_hi,
#: bg_free_blocks_count_hi, bg_free_inodes_count_hi, bg_used_dirs_count_hi,
#: bg_itable_unused_hi, bg_exclude_bitmap_hi, bg_block_bitmap_csum_hi,
#: bg_inode_bitmap_csum_hi, bg_reserved.
GROUP_DESC_HI = struct.Struct("<IIIHHHHIHHI")
GD_CHECKSUM_OFFSET = 0x1E
# bg_flags
EXT4_BG_INODE_UNINIT = 0x0001
EXT4_BG_BLOCK_UNINIT = 0x0002
EXT4_BG_INODE_ZEROED = 0x0004

# -- inodes (per entry: struct) -----------------------------------------------------
EXT4_GOOD_OLD_INODE_SIZE = 128
EXT4_N_BLOCKS = 15
EXT4_ROOT_INO = 2
EXT4_GOOD_OLD_FIRST_INO = 11

#: ``struct ext4_inode`` bytes 0-127 (the "good old" inode):
#: i_mode, i_uid, i_size_lo, i_atime, i_ctime, i_mtime, i_dtime, i_gid, i_links_count,
#: i_blocks_lo, i_flags, osd1 (l_i_version), i_block[15] (60 bytes), i_generation,
#: i_file_acl_lo, i_size_high, i_obso_faddr, osd2.linux2: l_i_blocks_high,
#: l_i_file_acl_high, l_i_uid_high, l_i_gid_high, l_i_checksum_lo, l_i_reserved.
INODE_BASE = struct.Struct("<HHIIIIIHHIII60sIIII6H")
#: Bytes 128..: i_extra_isize, i_checksum_hi, i_ctime_extra, i_mtime_extra,
#: i_atime_extra, i_crtime, i_crtime_extra, i_version_hi, i_projid.
INODE_EXTRA = struct.Struct("<HHIIIIIII")
I_CHECKSUM_LO_OFFSET = 0x7C
I_CHECKSUM_HI_OFFSET = 0x82
I_EXTRA_ISIZE_OFFSET = 0x80
#: ``EXT4_FITS_IN_INODE``: a field of the extra part exists when
#: 128 + i_extra_isize >= its end offset.
I_CHECKSUM_HI_END = 0x84
I_CTIME_EXTRA_END = 0x88
I_MTIME_EXTRA_END = 0x8C
I_ATIME_EXTRA_END = 0x90

# i_flags
EXT4_SECRM_FL = 0x00000001
EXT4_COMPR_FL = 0x00000004
EXT4_INDEX_FL = 0x00001000  # htree directory
EXT4_HUGE_FILE_FL = 0x00040000  # i_blocks counts file system blocks
EXT4_EXTENTS_FL = 0x00080000
EXT4_EA_INODE_FL = 0x00200000
EXT4_INLINE_DATA_FL = 0x10000000
EXT4_ENCRYPT_FL = 0x00000800
EXT4_CASEFOLD_FL = 0x40000000

# -- extents (ext4_extents.h) ------------------------------------------------------
EXT4_EXT_MAGIC = 0xF30A
#: ext4_extent_header: eh_magic, eh_entries, eh_max, eh_depth, eh_generation.
EXTENT_HEADER = struct.Struct("<HHHHI")
#: ext4_extent: ee_block, ee_len, ee_start_hi, ee_start_lo.
EXTENT_LEAF = struct.Struct("<IHHI")
#: ext4_extent_idx: ei_block, ei_leaf_lo, ei_leaf_hi, ei_unused.
EXTENT_INDEX = struct.Struct("<IIHH")
EXT_INIT_MAX_LEN = 1 << 15  # ee_len above this: an unwritten extent of ee_len - 2^15 blocks
EXT4_MAX_EXTENT_DEPTH = 5

# -- directories -------------------------------------------------------------------
#: ext4_dir_entry_2: inode, rec_len, name_len, file_type (then the name).
DIRENT = struct.Struct("<IHBB")
EXT4_DIR_ENTRY_LEN = DIRENT.size
#: ext4_dir_entry_tail: det_reserved_zero1, det_rec_len (12), det_reserved_zero2,
#: det_reserved_ft (0xDE), det_checksum.
DIRENT_TAIL = struct.Struct("<IHBBI")
EXT4_DIR_TAIL_FT = 0xDE
EXT4_INLINE_DOTDOT_SIZE = 4  # an inline directory starts with its parent's inode number
# file_type (EXT4_FT_*)
FT_UNKNOWN, FT_REG_FILE, FT_DIR, FT_CHRDEV, FT_BLKDEV, FT_FIFO, FT_SOCK, FT_SYMLINK = range(8)

# -- extended attributes (xattr.h) -------------------------------------------------
EXT4_XATTR_MAGIC = 0xEA020000
#: ext4_xattr_header (block): h_magic, h_refcount, h_blocks, h_hash, h_checksum, h_reserved[3].
XATTR_BLOCK_HEADER = struct.Struct("<IIIII12x")
XATTR_BLOCK_CHECKSUM_OFFSET = 0x10
#: ext4_xattr_entry: e_name_len, e_name_index, e_value_offs, e_value_inum, e_value_size,
#: e_hash (then the name, padded to 4 bytes).
XATTR_ENTRY = struct.Struct("<BBHIII")
EXT4_XATTR_PAD = 4
#: e_name_index -> prefix (xattr.c ``ext4_xattr_handler_map``).
XATTR_PREFIXES = {
    1: b"user.",
    2: b"system.posix_acl_access",
    3: b"system.posix_acl_default",
    4: b"trusted.",
    6: b"security.",
    7: b"system.",
    8: b"system.richacl",
}
XATTR_INDEX_SYSTEM = 7  # system.data holds the rest of an inline_data inode

# ext4 ACLs (acl.h): version 1, short entries for the *_OBJ/MASK/OTHER tags.
EXT4_ACL_VERSION = 0x0001
ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_GROUP, ACL_MASK, ACL_OTHER = (
    0x01, 0x02, 0x04, 0x08, 0x10, 0x20)
#: Linux's xattr ACL format (include/uapi/linux/posix_acl_xattr.h): version 2 header,
#: entries e_tag u16, e_perm u16, e_id u32 (ACL_UNDEFINED_ID for the short tags).
POSIX_ACL_XATTR_VERSION = 0x0002
ACL_UNDEFINED_ID = 0xFFFFFFFF
