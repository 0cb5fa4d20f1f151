"""DRBD on-disk meta data structures (8.4 ``v08`` and 9.x ``v09``).

Every field is big-endian except the bitmap, which is an array of
little-endian 32-bit words.  Names are the upstream ones.

References:
- drbd-headers ``drbd_meta_data.h``: ``struct meta_data_on_disk_9``,
  ``struct peer_dev_md_on_disk_9``, ``struct al_transaction_on_disk``.
- drbd-headers ``linux/drbd.h``: ``enum mdf_flag``, ``enum mdf_peer_flag``,
  ``DRBD_MAGIC`` and ``DRBD_MD_MAGIC_*``, ``DRBD_PEERS_MAX``, ``HISTORY_UUIDS``,
  ``enum drbd_uuid_index``, ``UUID_JUST_CREATED``.
- drbd-utils ``user/shared/drbdmeta.c``: ``struct md_on_disk_08``,
  ``is_valid_md()``, ``v07_style_md_get_byte_offset()``, ``bm_bytes()``,
  ``re_initialize_md_offsets()``, ``replay_al_84()``,
  ``al_tr_number_to_on_disk_slot()``, ``fprintf_bm()``.
- drbd kernel ``drbd_bitmap.c``: ``interleaved_word32()`` (peer bitmaps are
  interleaved in 32-bit words).
"""

from __future__ import annotations

import struct

from construct import Array, Int16ub, Int32sb, Int32ub, Int64ub, Struct

# -- linux/drbd.h -----------------------------------------------------------
DRBD_MAGIC = 0x83740267
DRBD_MD_MAGIC_07 = DRBD_MAGIC + 3
DRBD_MD_MAGIC_08 = DRBD_MAGIC + 4
DRBD_MD_MAGIC_84_UNCLEAN = DRBD_MAGIC + 5  # 8.4 layout, activity log not yet applied
DRBD_MD_MAGIC_09 = DRBD_MAGIC + 6

DRBD_PEERS_MAX = 32
DRBD_NODE_ID_MAX = DRBD_PEERS_MAX
HISTORY_UUIDS = DRBD_PEERS_MAX  # v09
HISTORY_UUIDS_V08 = 2  # UI_HISTORY_START .. UI_HISTORY_END

# enum drbd_uuid_index (v08 on-disk order of uuid[])
UI_CURRENT, UI_BITMAP, UI_HISTORY_START, UI_HISTORY_END = 0, 1, 2, 3
UI_SIZE = 4

UUID_JUST_CREATED = 4
UUID_PRIMARY = 1  # bit 0 of a generation UUID: made while primary

# enum mdf_flag
MDF_CONSISTENT = 1 << 0
MDF_PRIMARY_IND = 1 << 1
MDF_WAS_UP_TO_DATE = 1 << 4
MDF_CRASHED_PRIMARY = 1 << 6
MDF_AL_CLEAN = 1 << 7
MDF_AL_DISABLED = 1 << 8
MDF_PRIMARY_LOST_QUORUM = 1 << 9
MDF_HAVE_QUORUM = 1 << 10
MDF_NAMES = {
    MDF_CONSISTENT: "CONSISTENT",
    MDF_PRIMARY_IND: "PRIMARY_IND",
    MDF_WAS_UP_TO_DATE: "WAS_UP_TO_DATE",
    MDF_CRASHED_PRIMARY: "CRASHED_PRIMARY",
    MDF_AL_CLEAN: "AL_CLEAN",
    MDF_AL_DISABLED: "AL_DISABLED",
    MDF_PRIMARY_LOST_QUORUM: "PRIMARY_LOST_QUORUM",
    MDF_HAVE_QUORUM: "HAVE_QUORUM",
}

# DRBD 8.4 only (user/v84/linux/drbd.h): per-peer facts kept in the v08 flags word;
# drbdmeta's md_convert_08_to_09() moves them to peers[0].flags.
MDF_CONNECTED_IND = 1 << 2
MDF_FULL_SYNC = 1 << 3
MDF_PEER_OUT_DATED = 1 << 5
MDF_NAMES_V08 = {**MDF_NAMES, MDF_CONNECTED_IND: "CONNECTED_IND", MDF_FULL_SYNC: "FULL_SYNC",
                 MDF_PEER_OUT_DATED: "PEER_OUT_DATED"}

# enum mdf_peer_flag (v09 peers[].flags)
MDF_PEER_CONNECTED = 1 << 0
MDF_PEER_OUTDATED = 1 << 1
MDF_PEER_FENCING = 1 << 2
MDF_PEER_FULL_SYNC = 1 << 3
MDF_PEER_DEVICE_SEEN = 1 << 4
MDF_NODE_EXISTS = 1 << 16
MDF_PEER_NAMES = {
    MDF_PEER_CONNECTED: "PEER_CONNECTED",
    MDF_PEER_OUTDATED: "PEER_OUTDATED",
    MDF_PEER_FENCING: "PEER_FENCING",
    MDF_PEER_FULL_SYNC: "PEER_FULL_SYNC",
    MDF_PEER_DEVICE_SEEN: "PEER_DEVICE_SEEN",
    MDF_NODE_EXISTS: "NODE_EXISTS",
}

# -- drbd_meta_data.h -------------------------------------------------------
BM_BLOCK_SHIFT_4k = 12
BM_BLOCK_SIZE_4k = 1 << BM_BLOCK_SHIFT_4k
BM_BLOCK_SHIFT_MAX = 20
BM_BLOCK_SIZE_MAX = 1 << BM_BLOCK_SHIFT_MAX
DRBD_AL_MAGIC = 0x69CB65A2  # base64 "actlog=="
DRBD_AL_PMEM_MAGIC = 0x6AA667A6
AL_UPDATES_PER_TRANSACTION = 64
AL_CONTEXT_PER_TRANSACTION = 919
AL_TR_UPDATE = 0
AL_TR_INITIALIZED = 0xFFFF
AL_EXTENT_SHIFT = 22  # one activity-log extent covers 4 MiB
AL_EXTENTS_MAX = 65534  # DRBD_AL_EXTENTS_MAX (8.4 drbd_limits.h)

# -- drbdmeta.c ---------------------------------------------------------------
MD_AL_OFFSET_07 = 8  # sectors: superblock (4 KiB) before the AL in external layouts
MD_RESERVED_SECT_07 = 128 << 11  # fixed 128 MiB slot of indexed external meta data
MD_SUPERBLOCK_SIZE = 4096

#: ``struct md_on_disk_08`` (drbdmeta.c, "DRBD 8.0, 8.2, 8.3", also 8.4):
#: the superblock, 4 KiB at ``md_offset``.
md_on_disk_08 = Struct(
    "effective_size" / Int64ub,  # last agreed size, sectors (la-size-sect)
    "uuid" / Array(UI_SIZE, Int64ub),  # current, bitmap, history start, history end
    "device_uuid" / Int64ub,
    "reserved_u64_1" / Int64ub,
    "flags" / Int32ub,  # enum mdf_flag
    "magic" / Int32ub,
    "md_size_sect" / Int32ub,
    "al_offset" / Int32sb,  # signed sector offset of the AL, from this block
    "al_nr_extents" / Int32ub,
    "bm_offset" / Int32sb,  # signed sector offset of the bitmap, from this block
    "bm_bytes_per_bit" / Int32ub,
    "la_peer_max_bio_size" / Int32ub,
    "al_stripes" / Int32ub,
    "al_stripe_size_4k" / Int32ub,
    "reserved_u32" / Int32ub,
)

#: ``struct peer_dev_md_on_disk_9`` (drbd_meta_data.h): one slot per peer node id.
peer_dev_md_on_disk_9 = Struct(
    "bitmap_uuid" / Int64ub,
    "bitmap_dagtag" / Int64ub,
    "flags" / Int32ub,  # enum mdf_peer_flag
    "bitmap_index" / Int32sb,  # which interleaved bitmap, -1 = none
    "reserved_u32" / Array(2, Int32ub),
)

#: ``struct meta_data_on_disk_9`` (drbd_meta_data.h).  The header declares
#: al_offset/bm_offset as ``be_u32`` but they are signed (drbdmeta stores them
#: in ``int``; internal meta data has negative offsets).
meta_data_on_disk_9 = Struct(
    "effective_size" / Int64ub,
    "current_uuid" / Int64ub,
    "members" / Int64ub,  # only if MDF_HAVE_MEMBERS_MASK
    "reserved_u64" / Array(3, Int64ub),
    "device_uuid" / Int64ub,
    "flags" / Int32ub,
    "magic" / Int32ub,
    "md_size_sect" / Int32ub,
    "al_offset" / Int32sb,
    "al_nr_extents" / Int32ub,
    "bm_offset" / Int32sb,
    "bm_bytes_per_bit" / Int32ub,
    "la_peer_max_bio_size" / Int32ub,
    "bm_max_peers" / Int32ub,
    "node_id" / Int32sb,
    "al_stripes" / Int32ub,
    "al_stripe_size_4k" / Int32ub,
    "reserved_u32" / Array(2, Int32ub),
    "peers" / Array(DRBD_PEERS_MAX, peer_dev_md_on_disk_9),
    "history_uuids" / Array(HISTORY_UUIDS, Int64ub),
)

#: Offset of ``magic`` in both layouts ("to have the magic at the same position
#: as in v07, and v08").
MAGIC_OFFSET = 60

#: ``struct al_transaction_on_disk`` header (drbd_meta_data.h), 36 bytes.
al_transaction_header = Struct(
    "magic" / Int32ub,
    "tr_number" / Int32ub,
    "crc32c" / Int32ub,  # over the 4 KiB block with this field zeroed
    "transaction_type" / Int16ub,
    "n_updates" / Int16ub,
    "context_size" / Int16ub,
    "context_start_slot_nr" / Int16ub,
    "__reserved" / Array(4, Int32ub),
)

#: The whole 4 KiB ``al_transaction_on_disk`` for ``struct``: header, then
#: ``update_slot_nr[64]`` (u16), ``update_extent_nr[64]`` (u32),
#: ``context[919]`` (u32).  Parsed with struct, not construct (1047 numbers).
AL_TRANSACTION = struct.Struct(f">IIIHHHH16x{AL_UPDATES_PER_TRANSACTION}H"
                               f"{AL_UPDATES_PER_TRANSACTION}I{AL_CONTEXT_PER_TRANSACTION}I")
assert AL_TRANSACTION.size == 4096

#: ``struct al_sector_on_disk`` (drbdmeta.c, DRBD 0.7 - 8.3 activity log): 512-byte
#: sectors of ``magic`` (DRBD_MAGIC), ``tr_number``, ``updates[62]`` of
#: ``(pos, extent)``, ``xor_sum`` (of the 62 extents) and ``pad``.
AL_EXTENTS_PT = 61
AL_SECTOR_07 = struct.Struct(f">II{2 * (AL_EXTENTS_PT + 1)}III")
assert AL_SECTOR_07.size == 512
MD_AL_MAX_SECT_07 = 64
