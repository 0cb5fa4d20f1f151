"""On-disk structures of LVM2 PVs and of dm-thin pool metadata.

References:
- lvm2 ``lib/label/label.h`` (``struct label_header``), ``lib/format_text/layout.h``
  (``struct pv_header``, ``struct pv_header_extension``, ``struct disk_locn``,
  ``struct mda_header``, ``struct raw_locn``, ``FMTT_MAGIC``, ``MDA_HEADER_SIZE``),
  ``lib/misc/crc.c`` (``calc_crc``, ``INITIAL_CRC``).
- Linux ``drivers/md/dm-thin-metadata.c`` (``struct thin_disk_superblock``,
  ``struct disk_device_details``, ``THIN_SUPERBLOCK_MAGIC``, ``SUPERBLOCK_CSUM_XOR``),
  ``drivers/md/persistent-data/dm-btree-internal.h`` (``struct node_header``,
  ``BTREE_CSUM_XOR``), ``dm-space-map-common.h`` (``struct disk_sm_root``,
  ``struct disk_index_entry``, ``struct disk_metadata_index``,
  ``struct disk_bitmap_header``), ``dm-block-manager.c`` (``dm_bm_checksum``).
- thin-provisioning-tools ``persistent-data/data-structures/btree_disk_structures.h``.

Field names are the upstream ones without the ``_xl`` / ``__le`` decoration.
All LVM2 and dm-thin structures are little-endian.
"""

from __future__ import annotations

import zlib

from construct import Bytes, Const, Int32ul, Int64ul, Struct

# -- LVM2 label (lib/label/label.h) -------------------------------------------------
SECTOR_SIZE = 512
LABEL_ID = b"LABELONE"
LABEL_SCAN_SECTORS = 4  # the label may sit in any of sectors 0..3
LVM2_LABEL = b"LVM2 001"
INITIAL_CRC = 0xF597A6CF

#: ``struct label_header``: the crc covers from ``offset`` to the end of the sector.
label_header = Struct(
    "id" / Const(LABEL_ID),
    "sector" / Int64ul,
    "crc" / Int32ul,
    "offset" / Int32ul,
    "type" / Bytes(8),
)

ID_LEN = 32

#: ``struct disk_locn``: a list of them ends with offset 0.
disk_locn = Struct("offset" / Int64ul, "size" / Int64ul)
DISK_LOCN_SIZE = 16

#: ``struct pv_header`` (fixed part); the data area list, then the metadata area list
#: follow, each ending with a zero ``disk_locn``; then ``struct pv_header_extension``.
pv_header = Struct(
    "pv_uuid" / Bytes(ID_LEN),
    "device_size" / Int64ul,
)

pv_header_extension = Struct("version" / Int32ul, "flags" / Int32ul)

# -- metadata area (lib/format_text/layout.h) ---------------------------------------
FMTT_MAGIC = b"\x20\x4c\x56\x4d\x32\x20\x78\x5b\x35\x41\x25\x72\x30\x4e\x2a\x3e"
FMTT_VERSION = 1
MDA_HEADER_SIZE = 512

#: ``struct raw_locn``: where one copy of the VG text sits, relative to the mda start.
raw_locn = Struct(
    "offset" / Int64ul,
    "size" / Int64ul,
    "checksum" / Int32ul,
    "flags" / Int32ul,
)
RAW_LOCN_SIZE = 24
RAW_LOCN_IGNORED = 0x00000001

#: ``struct mda_header``: ``checksum`` is ``calc_crc`` over bytes 4..511.
#: ``raw_locns[0]`` is the committed text, ``raw_locns[1]`` the precommitted one.
mda_header = Struct(
    "checksum" / Int32ul,
    "magic" / Bytes(16),
    "version" / Int32ul,
    "start" / Int64ul,
    "size" / Int64ul,
)
MDA_HEADER_FIXED = 40


def calc_crc(data: bytes, initial: int = INITIAL_CRC) -> int:
    """lvm2's ``calc_crc``: the CRC-32 polynomial, given initial value, no final xor."""
    return (~zlib.crc32(data, ~initial & 0xFFFFFFFF)) & 0xFFFFFFFF


# -- dm-thin metadata ---------------------------------------------------------------
THIN_METADATA_BLOCK_SIZE = 4096
THIN_SUPERBLOCK_MAGIC = 27022010
SUPERBLOCK_CSUM_XOR = 160774
BTREE_CSUM_XOR = 121107
INDEX_CSUM_XOR = 160478
BITMAP_CSUM_XOR = 240779
SPACE_MAP_ROOT_SIZE = 128
THIN_MAX_SUPPORTED_VERSION = 2

#: ``struct disk_sm_root`` (dm-space-map-common.h), stored inside the superblock.
disk_sm_root = Struct(
    "nr_blocks" / Int64ul,
    "nr_allocated" / Int64ul,
    "bitmap_root" / Int64ul,
    "ref_count_root" / Int64ul,
)

#: ``struct thin_disk_superblock`` (dm-thin-metadata.c); ``csum`` covers bytes
#: 4..4095 of the 4 KiB block (``dm_bm_checksum`` with ``SUPERBLOCK_CSUM_XOR``).
thin_disk_superblock = Struct(
    "csum" / Int32ul,
    "flags" / Int32ul,
    "blocknr" / Int64ul,
    "uuid" / Bytes(16),
    "magic" / Int64ul,
    "version" / Int32ul,
    "time" / Int32ul,
    "trans_id" / Int64ul,
    "held_root" / Int64ul,
    "data_space_map_root" / Bytes(SPACE_MAP_ROOT_SIZE),
    "metadata_space_map_root" / Bytes(SPACE_MAP_ROOT_SIZE),
    "data_mapping_root" / Int64ul,
    "device_details_root" / Int64ul,
    "data_block_size" / Int32ul,
    "metadata_block_size" / Int32ul,
    "metadata_nr_blocks" / Int64ul,
    "compat_flags" / Int32ul,
    "compat_ro_flags" / Int32ul,
    "incompat_flags" / Int32ul,
)

#: ``struct node_header`` (dm-btree-internal.h): 32 bytes, then ``max_entries``
#: u64 keys, then ``max_entries`` values of ``value_size`` bytes.
node_header = Struct(
    "csum" / Int32ul,
    "flags" / Int32ul,
    "blocknr" / Int64ul,
    "nr_entries" / Int32ul,
    "max_entries" / Int32ul,
    "value_size" / Int32ul,
    "padding" / Int32ul,
)
NODE_HEADER_SIZE = 32
INTERNAL_NODE = 1
LEAF_NODE = 2

#: ``struct disk_device_details`` (dm-thin-metadata.c): the device-details btree value.
disk_device_details = Struct(
    "mapped_blocks" / Int64ul,
    "transaction_id" / Int64ul,
    "creation_time" / Int32ul,
    "snapshotted_time" / Int32ul,
)
DEVICE_DETAILS_SIZE = 24

#: ``struct disk_index_entry``: one bitmap block of a space map.
disk_index_entry = Struct(
    "blocknr" / Int64ul,
    "nr_free" / Int32ul,
    "none_free_before" / Int32ul,
)
INDEX_ENTRY_SIZE = 16
#: ``struct disk_metadata_index``: csum, padding, blocknr, then up to 255 index entries.
METADATA_INDEX_HEADER = 16
MAX_METADATA_BITMAPS = 255
#: ``struct disk_bitmap_header``: csum, not_used, blocknr; then 2 bits per block.
BITMAP_HEADER_SIZE = 16

#: Mapping leaf values pack ``(data_block << 24) | time`` (dm-thin-metadata.c
#: ``pack_block_time``).
TIME_BITS = 24
