"""Pool and dataset feature flags: which are active, which this reader cannot read.

References: OpenZFS module/zcommon/zfeature_common.c (zfs-2.3.9: every feature's guid
and flags: READONLY_COMPAT features live in ``features_for_write`` and are not needed
to read; PER_DATASET features are also flagged in each dataset's ZAP),
module/zfs/zfeature.c (the MOS object directory's ``features_for_read`` /
``features_for_write`` ZAPs: guid -> reference count, > 0 = active),
dsl_dataset.c (dsl_dataset_activate_feature: the dataset object is zapified and holds
the guid of every per-dataset feature it uses), brt.c / brt_impl.h (block cloning:
``com.fudosecurity:brt:vdev:<id>`` objects whose bonus is brt_vdev_phys_t with
bvp_usedspace / bvp_savedspace), ddt.c / ddt_impl.h (``DDT-<checksum>``: a legacy
table or, with fast_dedup, a directory ZAP with ``version`` = 1).
"""

from __future__ import annotations

import struct

from pvfs.errors import PvfsError

from . import zap

#: features for read (not READONLY_COMPAT) and how this reader handles each: a
#: feature in neither this table nor READONLY_COMPAT is unknown and named as such.
READABLE = {
    "com.delphix:hole_birth": "holes with a birth txg",
    "com.delphix:embedded_data": "data embedded in block pointers",
    "com.delphix:extensible_dataset": "dataset ZAPs",
    "org.illumos:lz4_compress": "lz4",
    "org.freebsd:zstd_compress": "zstd",
    "org.open-zfs:large_blocks": "blocks up to 16 MiB",
    "org.zfsonlinux:large_dnode": "dnodes larger than 512 bytes",
    "org.illumos:sha512": "checksum sha512 (verified)",
    "org.illumos:skein": "checksum skein (verified)",
    "org.illumos:edonr": "checksum edonr (verified)",
    "org.openzfs:blake3": "checksum blake3 (verified)",
    "com.datto:encryption": "encrypted datasets (with --zfs-key)",
    "com.joyent:multi_vdev_crash_dump": "dump zvols (nothing special to read)",
    "com.delphix:redaction_bookmarks": "bookmarks (not read)",
    "com.delphix:bookmark_written": "bookmarks (not read)",
    "com.datto:bookmark_v2": "bookmarks (not read)",
    "com.delphix:redaction_list_spill": "bookmarks (not read)",
    "com.klarasystems:vdev_zaps_v2": "the root vdev's ZAP (not needed to read)",
    "org.openzfs:raidz_expansion": "RAIDZ vdevs widened by zpool attach",
    "org.openzfs:draid": "dRAID vdevs (permutation maps, distributed spares)",
    "org.zfsonlinux:longname": "file names longer than 255 bytes",
    "com.delphix:head_errlog": "the persistent error log per head dataset (not needed)",
}
#: features for read whose blocks this reader cannot map
UNREADABLE = {
    "com.delphix:device_removal": "indirect vdevs (device removal) are not mapped: blocks "
                                  "remapped to other vdevs read EIO",
    "com.delphix:redacted_datasets": "redacted datasets (from a redacted send) have blocks "
                                     "that were never received",
}
#: ZFEATURE_FLAG_READONLY_COMPAT: a read-only import does not need them
READONLY_COMPAT = {
    "com.delphix:async_destroy", "com.delphix:empty_bpobj", "com.delphix:spacemap_histogram",
    "com.delphix:enabled_txg", "com.delphix:zpool_checkpoint", "com.delphix:spacemap_v2",
    "com.delphix:bookmarks", "com.joyent:filesystem_limits", "com.delphix:livelist",
    "com.delphix:log_spacemap", "com.delphix:obsolete_counts",
    "org.zfsonlinux:userobj_accounting", "org.zfsonlinux:project_quota",
    "org.zfsonlinux:allocation_classes", "com.datto:resilver_defer",
    "org.openzfs:device_rebuild", "org.openzfs:zilsaxattr", "com.fudosecurity:block_cloning",
    "com.klarasystems:fast_dedup", "com.klarasystems:large_microzap",
}
READABLE_ALL = set(READABLE) | READONLY_COMPAT
#: ZFEATURE_FLAG_PER_DATASET: named at each dataset that uses them
PER_DATASET = {
    "org.open-zfs:large_blocks", "org.zfsonlinux:large_dnode", "org.illumos:sha512",
    "org.illumos:skein", "org.illumos:edonr", "com.delphix:redacted_datasets",
    "org.zfsonlinux:userobj_accounting", "com.datto:encryption",
    "org.zfsonlinux:project_quota", "org.freebsd:zstd_compress", "org.openzfs:zilsaxattr",
    "org.openzfs:blake3", "org.zfsonlinux:longname", "com.klarasystems:large_microzap",
}


def cannot_read(name: str) -> str | None:
    """Why blocks of feature ``name`` cannot be read here, or None."""
    if name in UNREADABLE:
        return UNREADABLE[name]
    if name in READABLE_ALL:
        return None
    return "a feature this reader does not know"


def pool_features(mos) -> dict:
    """Active features of the pool: ``{guid: refcount}`` from ``features_for_read`` and
    ``features_for_write`` (refcount > 0).  Raises on an unreadable object directory."""
    objdir = mos.dnode(1)
    out = {}
    for key in ("features_for_read", "features_for_write"):
        obj = zap.zap_int(objdir, key)
        if not obj:
            continue
        for name, val in zap.zap_entries(mos.dnode(obj)).items():
            if isinstance(val, list) and val and val[0] > 0:
                out[name] = val[0]
    return out


def dataset_features(mos, dsobj: int) -> list:
    """The per-dataset features recorded in dataset ``dsobj``'s ZAP (empty when the
    dataset object holds no ZAP)."""
    try:
        dn = mos.dnode(dsobj)
        if dn.maxblkid < 0 or not dn.blkptrs or dn.blkptrs[0].hole:
            return []
        return sorted(n for n in zap.zap_entries(dn) if ":" in n)
    except (PvfsError, ValueError):
        return []


def clone_summary(mos) -> list:
    """Block reference tables: ``[(vdev id, used bytes, saved bytes)]``."""
    out = []
    prefix = "com.fudosecurity:brt:vdev:"
    for name, val in zap.zap_entries(mos.dnode(1)).items():
        if not name.startswith(prefix) or not isinstance(val, list) or not val:
            continue
        try:
            dn = mos.dnode(val[0])
            fmt = "<7Q" if dn.little else ">7Q"
            bvp = struct.unpack(fmt, dn.bonus[:56].ljust(56, b"\0"))
        except (PvfsError, ValueError, struct.error):
            continue
        out.append((name[len(prefix):], bvp[5], bvp[6]))
    return out


def dedup_tables(mos) -> list:
    """``[(table name, format)]`` of the dedup tables (not needed to read any file)."""
    out = []
    for name, val in zap.zap_entries(mos.dnode(1)).items():
        if not name.startswith("DDT-") or name == "DDT-statistics":
            continue
        fmt = "legacy"
        if isinstance(val, list) and val and "-zap-" not in name:
            try:
                ver = zap.zap_int(mos.dnode(val[0]), "version")
                fmt = "fast_dedup (FDT)" if ver == 1 else f"version {ver}"
            except (PvfsError, ValueError):
                fmt = "unreadable"
        out.append((name, fmt))
    return sorted(out)
