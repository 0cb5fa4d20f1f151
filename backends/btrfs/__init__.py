"""btrfs guest filesystems (single device): subvolumes, snapshots, compression, checksums.

The backend's light declaration (``pvfs.backend.BackendSpec``); the code is in
backend.py and imported only for a volume that has the btrfs magic in its primary
superblock or in the first mirror (Linux ``fs/btrfs/disk-io.c``, ``btrfs_sb_offset``).
"""

from __future__ import annotations

from pvfs.backend import BackendSpec
from pvfs.guestfs import FS_ROLES

BTRFS_MAGIC = b"_BHRfS_M"  # (as structs.py; test_startup checks they agree)
MAGIC_AT = 0x40  # btrfs_super_block.magic
PRIMARY = 0x10000  # 64 KiB
MIRROR_1 = 64 << 20  # btrfs_sb_offset(1)


def sniff(volume, ctx) -> bool:
    """The probe looks at the primary superblock, then the first mirror: one of them
    must carry the magic."""
    src = volume.source
    for off in (PRIMARY, MIRROR_1):
        if src.size >= off + 4096 and src.read(off + MAGIC_AT, 8) == BTRFS_MAGIC:
            return True
    return False


SPECS = [BackendSpec(name="btrfs", impl="backends.btrfs.backend:BtrfsBackend",
                     roles=FS_ROLES, sniff=sniff)]
