"""ZFS pools: labels, vdevs (mirror, RAIDZ), objsets, datasets, zvols, snapshots.

This module is the backend's light declaration (``pvfs.backend.BackendSpec``): it
imports nothing but the standard library, so that a discovery without ZFS never loads
the ZFS code (numpy, construct, the compiled kernels).  The probe's first step, the
zio_eck_t magics at the end of the four labels' nvlist areas, lives here and is shared
with ``label.read_labels``.

References: OpenZFS module/zfs/vdev_label.c (vdev_label_offset), include/sys/zio.h
(zio_eck_t, ZEC_MAGIC).
"""

from __future__ import annotations

import struct

from pvfs.backend import BackendSpec
from pvfs.errors import PvfsError

# (the same values as structs.py, which imports construct; test_startup checks they agree)
VDEV_LABEL_SIZE = 256 * 1024
VDEV_LABELS = 4
VDEV_PHYS_OFFSET = 16 * 1024
VDEV_PHYS_SIZE = 112 * 1024
ZIO_ECK_SIZE = 40
ZEC_MAGIC = 0x0210DA7AB10C7A11
BSWAP_ZEC_MAGIC = int.from_bytes(ZEC_MAGIC.to_bytes(8, "little"), "big")

CLI_OPTIONS = (
    ("--zfs-txg", {"type": int, "metavar": "TXG",
                   "help": "ZFS: open pools at this transaction group (an older "
                           "uberblock) instead of the newest one"}),
    ("--zfs-zil", {"choices": ["replay", "ignore"], "default": None,
                   "help": "ZFS: replay the intent log (records of synchronous writes "
                           "the pool never synced) in memory as an import would "
                           "(replay, the default) or show the datasets as last synced "
                           "(ignore)"}),
    ("--zfs-key", {"action": "append", "metavar": "DATASET=KEY",
                   "help": "key of an encrypted ZFS dataset (or of its encryption root): "
                           "the passphrase, the 64 hex digits of a hex or raw key, or "
                           "file:PATH of a raw 32-byte key file; repeatable"}),
)


def label_offset(psize: int, l: int) -> int:
    """vdev_label_offset: L0/L1 at the start, L2/L3 in the last 512 KiB of the
    device size rounded down to a multiple of 256 KiB."""
    psize = psize - psize % VDEV_LABEL_SIZE
    return l * VDEV_LABEL_SIZE + (0 if l < VDEV_LABELS // 2 else psize - VDEV_LABELS * VDEV_LABEL_SIZE)


def label_magics(source) -> int:
    """How many of the four labels end their nvlist area with the zio_eck_t magic (a
    label that cannot be read counts as none): the cheap first look of every probe,
    4 reads of 8 bytes.  0: not a ZFS member."""
    magics = 0
    for l in range(VDEV_LABELS):
        tail = label_offset(source.size, l) + VDEV_PHYS_OFFSET + VDEV_PHYS_SIZE - ZIO_ECK_SIZE
        try:
            m = source.read(tail, 8)
        except PvfsError:
            continue
        if len(m) == 8 and struct.unpack("<Q", m)[0] in (ZEC_MAGIC, BSWAP_ZEC_MAGIC):
            magics += 1
    return magics


def sniff(volume, ctx) -> bool:
    src = volume.source
    return src.size >= VDEV_LABELS * VDEV_LABEL_SIZE and label_magics(src) > 0


SPECS = [BackendSpec(name="zfs", impl="backends.zfs.backend:ZfsBackend", grouped=True,
                     cli_options=CLI_OPTIONS, sniff=sniff)]
