"""Vdev labels: the four copies of the config nvlist and the uberblock rings.

References: OpenZFS module/zfs/vdev_label.c (vdev_label_offset, label layout,
uberblock ring slots of ``1 << MAX(ashift, UBERBLOCK_SHIFT)`` capped at
MAX_UBERBLOCK_SHIFT), zio_checksum.c (zio_checksum_error with an embedded
zio_eck_t, ZIO_CHECKSUM_LABEL: SHA-256 with the physical offset as verifier),
uberblock.c (uberblock_verify), "ZFS On-Disk Specification" chapter 1.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from pvfs.cache import METADATA_CACHE
from pvfs.errors import PvfsError

from . import checksum, label_magics, label_offset
from .blkptr import BlkPtr
from .errors import ZfsError
from .nvlist import NvlistError, unpack_nvlist
from .structs import (MAX_UBERBLOCK_SHIFT, UBERBLOCK_MAGIC, UBERBLOCK_SHIFT, VDEV_LABEL_SIZE,
                      VDEV_LABELS, VDEV_PHYS_OFFSET, VDEV_PHYS_SIZE, VDEV_UBERBLOCK_OFFSET,
                      VDEV_UBERBLOCK_RING, ZEC_MAGIC, ZIO_ECK_SIZE)

_BSWAP_ZEC_MAGIC = int.from_bytes(ZEC_MAGIC.to_bytes(8, "little"), "big")
#: structs.py's ``uberblock`` as one struct.Struct: a discovery parses every slot of
#: 128-slot rings (4 labels per disk), where construct took ~0.1 ms a slot (60 ms of a
#: 3-disk pool's 0.25 s discovery).  tests/test_zfs_pool.py checks both agree.
UB_FIELDS = ("ub_magic", "ub_version", "ub_txg", "ub_guid_sum", "ub_timestamp", "ub_rootbp",
             "ub_software_version", "ub_mmp_magic", "ub_mmp_delay", "ub_mmp_config",
             "ub_checkpoint_txg", "ub_raidz_reflow_info")
UB_STRUCT = {True: struct.Struct("<5Q128s6Q"), False: struct.Struct(">5Q128s6Q")}


def verify_eck(buf: bytes, verifier_offset: int):
    """Check a buffer that ends in a zio_eck_t. Returns (ok, little) or (False, None)."""
    if len(buf) < ZIO_ECK_SIZE:
        return False, None
    tail = buf[-ZIO_ECK_SIZE:]
    (magic_le,) = struct.unpack("<Q", tail[:8])
    if magic_le == ZEC_MAGIC:
        little = True
    elif magic_le == _BSWAP_ZEC_MAGIC:
        little = False
    else:
        return False, None
    fmt = "<4Q" if little else ">4Q"
    stored = struct.unpack(fmt, tail[8:40])
    verifier = struct.pack(fmt, verifier_offset, 0, 0, 0)
    actual = checksum.sha256_words(buf[:-32] + verifier)
    return actual == stored, little


@dataclass
class Uberblock:
    txg: int
    timestamp: int
    version: int
    guid_sum: int
    rootbp: BlkPtr
    little: bool
    label: int
    slot: int
    checkpoint_txg: int = 0
    mmp_magic: int = 0
    raidz_reflow_info: int = 0


@dataclass
class LabelInfo:
    """What the labels of one device say."""

    configs: list = field(default_factory=list)  # (label index, config dict)
    uberblocks: list = field(default_factory=list)
    bad_labels: list = field(default_factory=list)  # (label index, reason)

    @property
    def config(self):
        """The newest valid config (highest "txg"; the first on a tie)."""
        best = None
        for _, cfg in self.configs:
            if best is None or (cfg.get("txg", 0) or 0) > (best.get("txg", 0) or 0):
                best = cfg
        return best


def parse_uberblock(buf: bytes, phys_offset: int, label: int, slot: int):
    """One uberblock ring slot: None when empty or invalid."""
    (m_le,) = struct.unpack("<Q", buf[:8])
    if m_le == UBERBLOCK_MAGIC:
        little = True
    elif int.from_bytes(buf[:8], "big") == UBERBLOCK_MAGIC:
        little = False
    else:
        return None
    ok, eck_little = verify_eck(buf, phys_offset)
    if not ok:
        return None
    st = UB_STRUCT[little]
    if len(buf) < st.size:
        return None
    (_magic, version, txg, guid_sum, timestamp, rootbp, _sw, mmp_magic, _mmp_delay,
     _mmp_config, checkpoint_txg, reflow) = st.unpack_from(buf, 0)
    if txg == 0:
        return None
    try:
        bp = BlkPtr(rootbp, little)
    except ZfsError:
        return None
    return Uberblock(txg=txg, timestamp=timestamp, version=version, guid_sum=guid_sum,
                     rootbp=bp, little=little, label=label, slot=slot,
                     checkpoint_txg=checkpoint_txg, mmp_magic=mmp_magic,
                     raidz_reflow_info=reflow)


def read_labels(source, want_uberblocks=True) -> LabelInfo:
    """Read and check all four labels of a device; never raises for bad labels."""
    key = ("zfs-labels", source.uid, want_uberblocks)
    cached = METADATA_CACHE.get(key)
    if cached is not None:
        return cached
    info = LabelInfo()
    size = source.size
    if size < 4 * VDEV_LABEL_SIZE:
        info.bad_labels.append((-1, f"device of {size} bytes is too small for labels"))
        return info
    # Cheap first look (every volume of a discovery is probed): the zio_eck_t magic at
    # the end of each label's nvlist area.  No magic anywhere: not a ZFS member.
    if label_magics(source) == 0:
        info.bad_labels.append((-1, "no vdev label"))
        METADATA_CACHE.put(key, _wrap(info))
        return info
    for l in range(VDEV_LABELS):
        base = label_offset(size, l)
        try:
            phys = source.read(base + VDEV_PHYS_OFFSET, VDEV_PHYS_SIZE)
        except PvfsError as e:
            info.bad_labels.append((l, f"unreadable: {e}"))
            continue
        ok, _ = verify_eck(phys, base + VDEV_PHYS_OFFSET)
        if not ok:
            info.bad_labels.append((l, "bad checksum or no label"))
        else:
            try:
                cfg = unpack_nvlist(phys[:-ZIO_ECK_SIZE])
                info.configs.append((l, cfg))
            except NvlistError as e:
                info.bad_labels.append((l, str(e)))
        if not want_uberblocks:
            continue
        cfg = info.configs[-1][1] if info.configs and info.configs[-1][0] == l else None
        ashift = None
        if cfg:
            ashift = (cfg.get("vdev_tree") or {}).get("ashift") if isinstance(
                cfg.get("vdev_tree"), dict) else None
        try:
            ring = source.read(base + VDEV_UBERBLOCK_OFFSET, VDEV_UBERBLOCK_RING)
        except PvfsError:
            continue
        shifts = [min(max(ashift, UBERBLOCK_SHIFT), MAX_UBERBLOCK_SHIFT)] if isinstance(
            ashift, int) else list(range(UBERBLOCK_SHIFT, MAX_UBERBLOCK_SHIFT + 1))
        for shift in shifts:
            slot_size = 1 << shift
            found = []
            for n in range(VDEV_UBERBLOCK_RING // slot_size):
                off = n * slot_size
                ub = parse_uberblock(ring[off:off + slot_size],
                                     base + VDEV_UBERBLOCK_OFFSET + off, l, n)
                if ub is not None:
                    found.append(ub)
            if found:
                info.uberblocks.extend(found)
                break
    METADATA_CACHE.put(key, _wrap(info))
    return info


class _Cached(LabelInfo):
    cache_cost = 4096


def _wrap(info):
    obj = _Cached(info.configs, info.uberblocks, info.bad_labels)
    obj.cache_cost = 4096 + 64 * len(info.uberblocks)
    return obj
