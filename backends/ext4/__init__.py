"""ext2/ext3/ext4 guest filesystems: pvfs's own reader (see README.md).

The backend's light declaration (``pvfs.backend.BackendSpec``); the code (backend.py)
is imported only for a volume with the ext2/3/4 magic 0xEF53 in its primary superblock
or where the group-1 backup superblock would be (Linux ``fs/ext4/ext4.h``, ``struct
ext4_super_block``; e2fsprogs ``lib/ext2fs/closefs.c``, backup placement).
"""

from __future__ import annotations

from pvfs.backend import BackendSpec
from pvfs.guestfs import FS_ROLES

# (the same values as structs.py / recovery.py; test_startup checks they agree)
SUPERBLOCK_OFFSET = 1024
SUPERBLOCK_SIZE = 1024
MAGIC_AT = 0x38  # s_magic
MAGIC = b"\x53\xef"
PROBE_BLOCK_SIZES = (4096, 1024, 2048, 65536)

#: ``--guest-journal``
CLI_OPTIONS = (
    ("--guest-journal", {
        "choices": ["replay", "ignore"], "default": None,
        "help": "ext3/ext4 guests with a dirty journal: replay its committed transactions "
                "in memory (default) or show the unreplayed state"}),
)


def group1_backups(size: int):
    """Offsets of the group-1 backup superblock for the default geometry (``8 *
    block_size`` blocks per group, first data block 1 for 1 KiB blocks) at each block
    size the probe tries, inside ``size`` bytes (recovery.backup_candidates)."""
    for bs in PROBE_BLOCK_SIZES:
        off = (8 * bs + (1 if bs == 1024 else 0)) * bs
        if off + SUPERBLOCK_SIZE <= size:
            yield off


def sniff(volume, ctx) -> bool:
    """The probe takes the primary superblock, else a group-1 backup: the magic must be
    in one of them."""
    src = volume.source
    return any(src.read(off + MAGIC_AT, 2) == MAGIC
               for off in (SUPERBLOCK_OFFSET, *group1_backups(src.size))
               if off + SUPERBLOCK_SIZE <= src.size)


SPECS = [BackendSpec(name="ext4", impl="backends.ext4.backend:Ext4Backend", roles=FS_ROLES,
                     cli_options=CLI_OPTIONS, sniff=sniff)]
