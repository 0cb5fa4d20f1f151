"""btrfs on-disk structures (construct declarations, upstream field names).

Everything is little-endian.  Structures read once per filesystem (the
superblock, chunk items, root items, tree block headers) are construct
``Struct``s; the per-item hot paths (leaf item tables, inode items, directory
items, file extent items) use precompiled ``struct.Struct`` formats with the
same field order, as pvfs STYLE.md asks for big tables.

References:
- Linux ``include/uapi/linux/btrfs_tree.h`` (keys, item types, btrfs_dev_item,
  btrfs_chunk, btrfs_stripe, btrfs_inode_item, btrfs_dir_item, btrfs_root_item,
  btrfs_root_ref, btrfs_file_extent_item, block group flags),
  ``fs/btrfs/accessors.h`` and ``fs/btrfs/ctree.h`` (btrfs_header, btrfs_item,
  btrfs_key_ptr, btrfs_super_block, btrfs_root_backup), ``fs/btrfs/disk-io.c``
  (superblock checksum over bytes 32..4095, btrfs_sb_offset), ``fs/btrfs/volumes.c``
  (sys_chunk_array parsing).
- btrfs-progs ``Documentation/dev/On-disk-format.rst``.
"""

from __future__ import annotations

import struct

import construct as c

u8, u16, u32, u64 = c.Int8ul, c.Int16ul, c.Int32ul, c.Int64ul

# -- constants -------------------------------------------------------------------------
BTRFS_MAGIC = b"_BHRfS_M"
SUPER_INFO_OFFSET = 0x10000  # 64 KiB
SUPER_INFO_SIZE = 4096
SUPER_MIRROR_MAX = 3
SUPER_MIRROR_SHIFT = 12
CSUM_SIZE = 32  # BTRFS_CSUM_SIZE: room for a checksum in headers
SYSTEM_CHUNK_ARRAY_SIZE = 2048
MAX_LEVEL = 8  # BTRFS_MAX_LEVEL
UUID_SIZE = 16
LABEL_SIZE = 256
NUM_BACKUP_ROOTS = 4


def sb_offset(mirror: int) -> int:
    """``btrfs_sb_offset``: 64 KiB, 64 MiB, 256 GiB."""
    if mirror == 0:
        return SUPER_INFO_OFFSET
    return (16 * 1024) << (SUPER_MIRROR_SHIFT * mirror)


# Tree object ids (btrfs_tree.h)
ROOT_TREE_OBJECTID = 1
EXTENT_TREE_OBJECTID = 2
CHUNK_TREE_OBJECTID = 3
DEV_TREE_OBJECTID = 4
FS_TREE_OBJECTID = 5
ROOT_TREE_DIR_OBJECTID = 6
CSUM_TREE_OBJECTID = 7
FIRST_FREE_OBJECTID = 256
LAST_FREE_OBJECTID = (1 << 64) - 256
FIRST_CHUNK_TREE_OBJECTID = 256
EXTENT_CSUM_OBJECTID = (1 << 64) - 10
TREE_LOG_OBJECTID = (1 << 64) - 6
EMPTY_SUBVOL_DIR_OBJECTID = 2
MAX_KEY = (1 << 64) - 1

# Key types
INODE_ITEM_KEY = 1
INODE_REF_KEY = 12
INODE_EXTREF_KEY = 13
XATTR_ITEM_KEY = 24
DIR_ITEM_KEY = 84
DIR_INDEX_KEY = 96
EXTENT_DATA_KEY = 108
EXTENT_CSUM_KEY = 128
ROOT_ITEM_KEY = 132
ROOT_BACKREF_KEY = 144
ROOT_REF_KEY = 156
DEV_ITEM_KEY = 216
CHUNK_ITEM_KEY = 228

# Directory entry types (btrfs_dir_item.type); the top bit flags an encrypted name
FT_UNKNOWN, FT_REG_FILE, FT_DIR, FT_CHRDEV, FT_BLKDEV, FT_FIFO, FT_SOCK, FT_SYMLINK, \
    FT_XATTR = range(9)
FT_ENCRYPTED = 0x80

# Block group / chunk type flags
BLOCK_GROUP_DATA = 1 << 0
BLOCK_GROUP_SYSTEM = 1 << 1
BLOCK_GROUP_METADATA = 1 << 2
BLOCK_GROUP_RAID0 = 1 << 3
BLOCK_GROUP_RAID1 = 1 << 4
BLOCK_GROUP_DUP = 1 << 5
BLOCK_GROUP_RAID10 = 1 << 6
BLOCK_GROUP_RAID5 = 1 << 7
BLOCK_GROUP_RAID6 = 1 << 8
BLOCK_GROUP_RAID1C3 = 1 << 9
BLOCK_GROUP_RAID1C4 = 1 << 10
#: Profiles whose every stripe holds a whole copy of the chunk.
MIRROR_PROFILES = BLOCK_GROUP_DUP | BLOCK_GROUP_RAID1 | BLOCK_GROUP_RAID1C3 | BLOCK_GROUP_RAID1C4
STRIPED_PROFILES = BLOCK_GROUP_RAID0 | BLOCK_GROUP_RAID10 | BLOCK_GROUP_RAID5 | BLOCK_GROUP_RAID6
PROFILE_NAMES = {
    BLOCK_GROUP_RAID0: "RAID0", BLOCK_GROUP_RAID1: "RAID1", BLOCK_GROUP_DUP: "DUP",
    BLOCK_GROUP_RAID10: "RAID10", BLOCK_GROUP_RAID5: "RAID5", BLOCK_GROUP_RAID6: "RAID6",
    BLOCK_GROUP_RAID1C3: "RAID1C3", BLOCK_GROUP_RAID1C4: "RAID1C4",
}

# Checksum types (btrfs_csum_type) and their sizes
CSUM_TYPE_CRC32 = 0
CSUM_TYPE_XXHASH = 1
CSUM_TYPE_SHA256 = 2
CSUM_TYPE_BLAKE2 = 3

# Feature flags (fs/btrfs/ctree.h / uapi btrfs.h)
INCOMPAT_MIXED_BACKREF = 1 << 0
INCOMPAT_DEFAULT_SUBVOL = 1 << 1
INCOMPAT_MIXED_GROUPS = 1 << 2
INCOMPAT_COMPRESS_LZO = 1 << 3
INCOMPAT_COMPRESS_ZSTD = 1 << 4
INCOMPAT_BIG_METADATA = 1 << 5
INCOMPAT_EXTENDED_IREF = 1 << 6
INCOMPAT_RAID56 = 1 << 7
INCOMPAT_SKINNY_METADATA = 1 << 8
INCOMPAT_NO_HOLES = 1 << 9
INCOMPAT_METADATA_UUID = 1 << 10
INCOMPAT_RAID1C34 = 1 << 11
INCOMPAT_ZONED = 1 << 12
INCOMPAT_EXTENT_TREE_V2 = 1 << 13
INCOMPAT_RAID_STRIPE_TREE = 1 << 14
INCOMPAT_SIMPLE_QUOTA = 1 << 16
#: incompat features this reader understands (others are named in the report).
INCOMPAT_SUPPORTED = (INCOMPAT_MIXED_BACKREF | INCOMPAT_DEFAULT_SUBVOL | INCOMPAT_MIXED_GROUPS
                      | INCOMPAT_COMPRESS_LZO | INCOMPAT_COMPRESS_ZSTD | INCOMPAT_BIG_METADATA
                      | INCOMPAT_EXTENDED_IREF | INCOMPAT_RAID56 | INCOMPAT_SKINNY_METADATA
                      | INCOMPAT_NO_HOLES | INCOMPAT_METADATA_UUID | INCOMPAT_RAID1C34
                      | INCOMPAT_SIMPLE_QUOTA)
INCOMPAT_NAMES = {
    INCOMPAT_ZONED: "zoned", INCOMPAT_EXTENT_TREE_V2: "extent-tree-v2",
    INCOMPAT_RAID_STRIPE_TREE: "raid-stripe-tree",
}

# Inode flags (btrfs_inode_item.flags)
INODE_NODATASUM = 1 << 0
INODE_NODATACOW = 1 << 1

# Root item flags
ROOT_SUBVOL_RDONLY = 1 << 0

# File extent types and compression (btrfs_file_extent_item)
FILE_EXTENT_INLINE = 0
FILE_EXTENT_REG = 1
FILE_EXTENT_PREALLOC = 2
COMPRESS_NONE, COMPRESS_ZLIB, COMPRESS_LZO, COMPRESS_ZSTD = range(4)
COMPRESSION_NAMES = {COMPRESS_ZLIB: "zlib", COMPRESS_LZO: "lzo", COMPRESS_ZSTD: "zstd"}
MAX_UNCOMPRESSED = 128 * 1024  # BTRFS_MAX_UNCOMPRESSED
MAX_COMPRESSED = 128 * 1024  # BTRFS_MAX_COMPRESSED

# -- construct declarations --------------------------------------------------------------
#: struct btrfs_disk_key
disk_key = c.Struct("objectid" / u64, "type" / u8, "offset" / u64)

#: struct btrfs_dev_item (98 bytes)
dev_item = c.Struct(
    "devid" / u64,
    "total_bytes" / u64,
    "bytes_used" / u64,
    "io_align" / u32,
    "io_width" / u32,
    "sector_size" / u32,
    "type" / u64,
    "generation" / u64,
    "start_offset" / u64,
    "dev_group" / u32,
    "seek_speed" / u8,
    "bandwidth" / u8,
    "uuid" / c.Bytes(UUID_SIZE),
    "fsid" / c.Bytes(UUID_SIZE),
)

#: struct btrfs_root_backup (168 bytes): the superblock's four newest tree roots.
root_backup = c.Struct(
    "tree_root" / u64, "tree_root_gen" / u64,
    "chunk_root" / u64, "chunk_root_gen" / u64,
    "extent_root" / u64, "extent_root_gen" / u64,
    "fs_root" / u64, "fs_root_gen" / u64,
    "dev_root" / u64, "dev_root_gen" / u64,
    "csum_root" / u64, "csum_root_gen" / u64,
    "total_bytes" / u64, "bytes_used" / u64, "num_devices" / u64,
    "unused_64" / c.Bytes(32),
    "tree_root_level" / u8, "chunk_root_level" / u8, "extent_root_level" / u8,
    "fs_root_level" / u8, "dev_root_level" / u8, "csum_root_level" / u8,
    "unused_8" / c.Bytes(10),
)

#: struct btrfs_super_block (4096 bytes; the checksum covers bytes 32..4095)
super_block = c.Struct(
    "csum" / c.Bytes(CSUM_SIZE),
    "fsid" / c.Bytes(UUID_SIZE),
    "bytenr" / u64,
    "flags" / u64,
    "magic" / c.Bytes(8),
    "generation" / u64,
    "root" / u64,
    "chunk_root" / u64,
    "log_root" / u64,
    "log_root_transid" / u64,
    "total_bytes" / u64,
    "bytes_used" / u64,
    "root_dir_objectid" / u64,
    "num_devices" / u64,
    "sectorsize" / u32,
    "nodesize" / u32,
    "leafsize" / u32,
    "stripesize" / u32,
    "sys_chunk_array_size" / u32,
    "chunk_root_generation" / u64,
    "compat_flags" / u64,
    "compat_ro_flags" / u64,
    "incompat_flags" / u64,
    "csum_type" / u16,
    "root_level" / u8,
    "chunk_root_level" / u8,
    "log_root_level" / u8,
    "dev_item" / dev_item,
    "label" / c.Bytes(LABEL_SIZE),
    "cache_generation" / u64,
    "uuid_tree_generation" / u64,
    "metadata_uuid" / c.Bytes(UUID_SIZE),
    "nr_global_roots" / u64,
    "reserved" / c.Bytes(27 * 8),
    "sys_chunk_array" / c.Bytes(SYSTEM_CHUNK_ARRAY_SIZE),
    "super_roots" / c.Array(NUM_BACKUP_ROOTS, root_backup),
    "padding" / c.Bytes(565),
)
assert super_block.sizeof() == SUPER_INFO_SIZE

#: struct btrfs_header (101 bytes) at the start of every tree block
header = c.Struct(
    "csum" / c.Bytes(CSUM_SIZE),
    "fsid" / c.Bytes(UUID_SIZE),
    "bytenr" / u64,
    "flags" / u64,
    "chunk_tree_uuid" / c.Bytes(UUID_SIZE),
    "generation" / u64,
    "owner" / u64,
    "nritems" / u32,
    "level" / u8,
)
HEADER_SIZE = header.sizeof()
assert HEADER_SIZE == 101

#: struct btrfs_stripe (32 bytes)
stripe = c.Struct("devid" / u64, "offset" / u64, "dev_uuid" / c.Bytes(UUID_SIZE))

#: struct btrfs_chunk (48 bytes + 32 per stripe; the first stripe is part of the struct)
chunk = c.Struct(
    "length" / u64,
    "owner" / u64,
    "stripe_len" / u64,
    "type" / u64,
    "io_align" / u32,
    "io_width" / u32,
    "sector_size" / u32,
    "num_stripes" / u16,
    "sub_stripes" / u16,
)
CHUNK_SIZE = chunk.sizeof()
STRIPE_SIZE = stripe.sizeof()
DISK_KEY_SIZE = disk_key.sizeof()

#: struct btrfs_timespec
timespec = c.Struct("sec" / c.Int64sl, "nsec" / u32)

#: struct btrfs_inode_item (160 bytes)
inode_item = c.Struct(
    "generation" / u64,
    "transid" / u64,
    "size" / u64,
    "nbytes" / u64,
    "block_group" / u64,
    "nlink" / u32,
    "uid" / u32,
    "gid" / u32,
    "mode" / u32,
    "rdev" / u64,
    "flags" / u64,
    "sequence" / u64,
    "reserved" / c.Bytes(32),
    "atime" / timespec,
    "ctime" / timespec,
    "mtime" / timespec,
    "otime" / timespec,
)
INODE_ITEM_SIZE = inode_item.sizeof()
assert INODE_ITEM_SIZE == 160

#: struct btrfs_root_item (439 bytes with the v2 fields; old ones end after ``level``)
root_item = c.Struct(
    "inode" / c.Bytes(INODE_ITEM_SIZE),
    "generation" / u64,
    "root_dirid" / u64,
    "bytenr" / u64,
    "byte_limit" / u64,
    "bytes_used" / u64,
    "last_snapshot" / u64,
    "flags" / u64,
    "refs" / u32,
    "drop_progress" / disk_key,
    "drop_level" / u8,
    "level" / u8,
)
ROOT_ITEM_V1_SIZE = root_item.sizeof()  # 239

#: struct btrfs_root_ref (ROOT_REF and ROOT_BACKREF items), followed by the name
root_ref = c.Struct("dirid" / u64, "sequence" / u64, "name_len" / u16)
ROOT_REF_SIZE = root_ref.sizeof()

# -- struct formats for the hot paths (same layouts as the declarations above) -----------
#: struct btrfs_item: key, offset, size (offset counts from the end of the header)
ITEM = struct.Struct("<QBQII")
#: struct btrfs_key_ptr: key, blockptr, generation
KEY_PTR = struct.Struct("<QBQQQ")
#: btrfs_inode_item up to the times: generation, transid, size, nbytes, block_group,
#: nlink, uid, gid, mode, rdev, flags (sequence and reserved skipped)
INODE_HEAD = struct.Struct("<QQQQQIIIIQQ")
TIMESPEC = struct.Struct("<qI")
INODE_ATIME, INODE_CTIME, INODE_MTIME, INODE_OTIME = 112, 124, 136, 148
#: btrfs_dir_item: location key, transid, data_len, name_len, type (30 bytes)
DIR_ITEM = struct.Struct("<QBQQHHB")
#: btrfs_inode_ref: index, name_len
INODE_REF = struct.Struct("<QH")
#: btrfs_inode_extref: parent_objectid, index, name_len
INODE_EXTREF = struct.Struct("<QQH")
#: btrfs_file_extent_item head: generation, ram_bytes, compression, encryption,
#: other_encoding, type (21 bytes; inline data follows)
FILE_EXTENT_HEAD = struct.Struct("<QQBBHB")
#: the rest of a regular/prealloc extent: disk_bytenr, disk_num_bytes, offset, num_bytes
FILE_EXTENT_REG_TAIL = struct.Struct("<QQQQ")
FILE_EXTENT_INLINE_DATA_START = FILE_EXTENT_HEAD.size  # 21
