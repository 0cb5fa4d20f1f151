"""qcow2 on-disk structures (all big-endian).

Reference: qemu docs/interop/qcow2.txt ("Header", "Header extensions",
"Cluster mapping", "Extended L2 Entries", "Snapshots", "Compression type").
"""

from construct import Bytes, Int8ub, Int16ub, Int32ub, Int64ub, Struct

QCOW_MAGIC = b"QFI\xfb"

#: Bytes 0-71: the version 2 header.
HeaderV2 = Struct(
    "magic" / Bytes(4),
    "version" / Int32ub,
    "backing_file_offset" / Int64ub,
    "backing_file_size" / Int32ub,
    "cluster_bits" / Int32ub,
    "size" / Int64ub,
    "crypt_method" / Int32ub,
    "l1_size" / Int32ub,
    "l1_table_offset" / Int64ub,
    "refcount_table_offset" / Int64ub,
    "refcount_table_clusters" / Int32ub,
    "nb_snapshots" / Int32ub,
    "snapshots_offset" / Int64ub,
)
HEADER_V2_LENGTH = 72

#: Bytes 72-103: the version 3 additions.
HeaderV3Extra = Struct(
    "incompatible_features" / Int64ub,
    "compatible_features" / Int64ub,
    "autoclear_features" / Int64ub,
    "refcount_order" / Int32ub,
    "header_length" / Int32ub,
)
HEADER_V3_LENGTH = 104

HeaderExtension = Struct(
    "type" / Int32ub,
    "length" / Int32ub,
)

EXT_END = 0x00000000
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_NAME_TABLE = 0x6803F857
EXT_BITMAPS = 0x23852875
EXT_FULL_DISK_ENCRYPTION = 0x0537BE77
EXT_EXTERNAL_DATA_FILE = 0x44415441

# Incompatible feature bits.
INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
INCOMPAT_KNOWN = (INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION
                  | INCOMPAT_EXTL2)
# Autoclear bits.
AUTOCLEAR_BITMAPS = 1 << 0
AUTOCLEAR_DATA_FILE_RAW = 1 << 1

COMPRESSION_ZLIB = 0
COMPRESSION_ZSTD = 1

#: Snapshot table entry, fixed part ("Snapshots" section).
SnapshotHeader = Struct(
    "l1_table_offset" / Int64ub,
    "l1_size" / Int32ub,
    "id_str_size" / Int16ub,
    "name_size" / Int16ub,
    "date_sec" / Int32ub,
    "date_nsec" / Int32ub,
    "vm_clock_nsec" / Int64ub,
    "vm_state_size" / Int32ub,
    "extra_data_size" / Int32ub,
)
SNAPSHOT_HEADER_LENGTH = 40

# L1 / L2 entry bits ("Cluster mapping").
OFFSET_MASK = ((1 << 56) - 1) & ~0x1FF  # bits 9-55
L1E_RESERVED = ((1 << 63) - 1) & ~OFFSET_MASK  # bits 0-8 and 56-62
L2E_COMPRESSED = 1 << 62
L2E_COPIED = 1 << 63
L2E_ZERO = 1 << 0
L2E_STD_RESERVED = ((1 << 62) - 1) & ~OFFSET_MASK & ~L2E_ZERO  # bits 1-8, 56-61

CompressionTypeByte = Int8ub
