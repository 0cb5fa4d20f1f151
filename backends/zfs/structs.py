"""ZFS on-disk structures (construct declarations, upstream field names).

References:
- "ZFS On-Disk Specification" (Sun Microsystems, 2006), chapters 1-6.
- OpenZFS include/sys/uberblock_impl.h, vdev_impl.h (vdev_label_t, vdev_phys_t),
  zio.h (zio_eck_t), spa.h (blkptr_t, dva_t), dnode.h (dnode_phys_t),
  dmu_objset.h (objset_phys_t), dsl_dir.h (dsl_dir_phys_t), dsl_dataset.h
  (dsl_dataset_phys_t), zil.h (zil_header_t).
Structures are built once per byte order (``LE``/``BE``), pvfs STYLE.md.
Big arrays (block-pointer arrays, dnode blocks) are parsed with ``struct``.
"""

from __future__ import annotations

import construct as c

# -- constants (spa.h, vdev_impl.h, zio.h) ------------------------------------------------
UBERBLOCK_MAGIC = 0x00BAB10C
ZEC_MAGIC = 0x0210DA7AB10C7A11  # zio_eck_t.zec_magic
VDEV_LABEL_SIZE = 256 * 1024  # sizeof(vdev_label_t)
VDEV_LABELS = 4
VDEV_PAD_SIZE = 8 * 1024  # vl_pad1
VDEV_BOOT_HEADER_SIZE = 8 * 1024  # vl_be / vl_pad2
VDEV_PHYS_SIZE = 112 * 1024  # vl_vdev_phys
VDEV_UBERBLOCK_RING = 128 * 1024
VDEV_PHYS_OFFSET = VDEV_PAD_SIZE + VDEV_BOOT_HEADER_SIZE  # 16 KiB
VDEV_UBERBLOCK_OFFSET = VDEV_PHYS_OFFSET + VDEV_PHYS_SIZE  # 128 KiB
VDEV_LABEL_START_SIZE = 2 * VDEV_LABEL_SIZE + 3584 * 1024  # 4 MiB: labels 0/1 + boot block
VDEV_LABEL_END_SIZE = 2 * VDEV_LABEL_SIZE
UBERBLOCK_SHIFT = 10
MAX_UBERBLOCK_SHIFT = 13
ZIO_ECK_SIZE = 40  # zec_magic + zec_cksum[4]
SPA_MINBLOCKSHIFT = 9
SPA_MAXBLOCKSIZE = 16 * 1024 * 1024
SPA_GANGBLOCKSIZE = 512
DNODE_SHIFT = 9
DNODE_SIZE = 512
DNODE_CORE_SIZE = 64
BLKPTR_SIZE = 128
DNODE_FLAG_SPILL_BLKPTR = 1 << 2


def _byte_order(little: bool):
    u8, u16 = c.Int8ul, (c.Int16ul if little else c.Int16ub)
    u32 = c.Int32ul if little else c.Int32ub
    u64 = c.Int64ul if little else c.Int64ub
    return u8, u16, u32, u64


def _build(little: bool):
    u8, u16, u32, u64 = _byte_order(little)
    ns = {}
    #: uberblock_impl.h struct uberblock (without the blkptr, parsed by blkptr.py).
    ns["uberblock"] = c.Struct(
        "ub_magic" / u64,
        "ub_version" / u64,
        "ub_txg" / u64,
        "ub_guid_sum" / u64,
        "ub_timestamp" / u64,
        "ub_rootbp" / c.Bytes(BLKPTR_SIZE),
        "ub_software_version" / u64,
        "ub_mmp_magic" / u64,
        "ub_mmp_delay" / u64,
        "ub_mmp_config" / u64,
        "ub_checkpoint_txg" / u64,
        "ub_raidz_reflow_info" / u64,  # OpenZFS 2.3: RAIDZ expansion progress (0 before)
    )
    #: zio.h zio_eck_t: the embedded checksum at the end of labels, uberblocks, gang headers.
    ns["zio_eck"] = c.Struct("zec_magic" / u64, "zec_cksum" / c.Array(4, u64))
    #: dnode.h dnode_phys_t, the 64-byte core before dn_blkptr[].
    ns["dnode_core"] = c.Struct(
        "dn_type" / u8,
        "dn_indblkshift" / u8,
        "dn_nlevels" / u8,
        "dn_nblkptr" / u8,
        "dn_bonustype" / u8,
        "dn_checksum" / u8,
        "dn_compress" / u8,
        "dn_flags" / u8,
        "dn_datablkszsec" / u16,
        "dn_bonuslen" / u16,
        "dn_extra_slots" / u8,
        "dn_pad2" / c.Bytes(3),
        "dn_maxblkid" / u64,
        "dn_used" / u64,
        "dn_pad3" / c.Bytes(32),
    )
    #: dsl_dir.h dsl_dir_phys_t (bonus of a DMU_OT_DSL_DIR object).
    ns["dsl_dir_phys"] = c.Struct(
        "dd_creation_time" / u64,
        "dd_head_dataset_obj" / u64,
        "dd_parent_obj" / u64,
        "dd_origin_obj" / u64,
        "dd_child_dir_zapobj" / u64,
        "dd_used_bytes" / u64,
        "dd_compressed_bytes" / u64,
        "dd_uncompressed_bytes" / u64,
        "dd_quota" / u64,
        "dd_reserved" / u64,
        "dd_props_zapobj" / u64,
        "dd_deleg_zapobj" / u64,
    )
    #: dsl_dataset.h dsl_dataset_phys_t (bonus of a DMU_OT_DSL_DATASET object).
    ns["dsl_dataset_phys"] = c.Struct(
        "ds_dir_obj" / u64,
        "ds_prev_snap_obj" / u64,
        "ds_prev_snap_txg" / u64,
        "ds_next_snap_obj" / u64,
        "ds_snapnames_zapobj" / u64,
        "ds_num_children" / u64,
        "ds_creation_time" / u64,
        "ds_creation_txg" / u64,
        "ds_deadlist_obj" / u64,
        "ds_referenced_bytes" / u64,
        "ds_compressed_bytes" / u64,
        "ds_uncompressed_bytes" / u64,
        "ds_unique_bytes" / u64,
        "ds_fsid_guid" / u64,
        "ds_guid" / u64,
        "ds_flags" / u64,
        "ds_bp" / c.Bytes(BLKPTR_SIZE),
        "ds_next_clones_obj" / u64,
        "ds_props_obj" / u64,
        "ds_userrefs_obj" / u64,
    )
    #: dmu_objset.h objset_phys_t: os_meta_dnode (512) + os_zil_header (192) + type/flags.
    ns["objset_tail"] = c.Struct("os_type" / u64, "os_flags" / u64)
    return ns


LE = _build(True)
BE = _build(False)


def order(little: bool):
    return LE if little else BE


def parse(struct_name: str, data: bytes, little: bool, what: str = ""):
    """Parse with the format's error instead of construct's."""
    from pvfs.structs import parse as _parse

    from .errors import ZfsError

    return _parse(order(little)[struct_name], data, ZfsError, what or struct_name)


OBJSET_PHYS_OS_TYPE = DNODE_SIZE + 192  # offset of os_type in objset_phys_t
OBJSET_USERUSED_OFFSET = 1024  # os_userused_dnode (v15+ objsets, 2 KiB and larger)

# -- enums (zio.h, dmu.h) ----------------------------------------------------------------
ZIO_CHECKSUM = {0: "inherit", 1: "on", 2: "off", 3: "label", 4: "gang_header", 5: "zilog",
                6: "fletcher2", 7: "fletcher4", 8: "sha256", 9: "zilog2", 10: "noparity",
                11: "sha512", 12: "skein", 13: "edonr", 14: "blake3"}
ZIO_COMPRESS = {0: "inherit", 1: "on", 2: "off", 3: "lzjb", 4: "empty", 5: "gzip-1",
                6: "gzip-2", 7: "gzip-3", 8: "gzip-4", 9: "gzip-5", 10: "gzip-6",
                11: "gzip-7", 12: "gzip-8", 13: "gzip-9", 14: "zle", 15: "lz4", 16: "zstd"}
DMU_OST = {0: "none", 1: "meta", 2: "zfs", 3: "zvol", 4: "other"}
DMU_OT_OBJECT_DIRECTORY = 1
DMU_OT_PACKED_NVLIST = 3
DMU_OT_DNODE = 10
DMU_OT_OBJSET = 11
DMU_OT_DSL_DIR = 12
DMU_OT_DSL_DATASET = 16
DMU_OT_ZVOL = 23
DMU_OT_ZVOL_PROP = 24
