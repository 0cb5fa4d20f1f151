"""Recognise a bare guest filesystem by its superblock, for mount hints only.

pvfs does not read guest filesystems; the kernel does, through a loop
mount.  These checks only decide which hint to print and whether a volume
looks like a container rootfs (a filesystem with no partition table).
"""

from __future__ import annotations

import struct

from typing import TYPE_CHECKING

from .errors import PvfsError

if TYPE_CHECKING:
    from .source import Source

MOUNT_HINTS = {
    "ext4": "mount -o ro,noload,loop",
    "ext3": "mount -o ro,noload,loop",
    "ext2": "mount -o ro,loop",
    "xfs": "mount -o ro,norecovery,loop",
    "btrfs": "mount -o ro,rescue=usebackuproot,loop",
    "vfat": "mount -o ro,loop",
    "ntfs": "mount -t ntfs3 -o ro,loop",
    "swap": None,
}


def detect_filesystem(source: Source) -> str | None:
    """Return ``ext4``/``ext3``/``ext2``/``xfs``/``btrfs``/``vfat``/``ntfs``/``swap`` or None."""
    try:
        head = source.read(0, 4096)
        if head[:4] == b"XFSB":
            return "xfs"
        if head[3:11] == b"NTFS    ":
            return "ntfs"
        if head[510:512] == b"\x55\xaa" and (head[82:87] == b"FAT32" or head[54:59] == b"FAT16"
                                              or head[54:59] == b"FAT12"):
            return "vfat"
        if source.size >= 4096 and head[4086:4096] in (b"SWAPSPACE2", b"SWAP-SPACE"):
            return "swap"
        sb = source.read(1024, 1024)
        if len(sb) >= 100 and sb[56:58] == b"\x53\xef":
            compat, incompat = struct.unpack_from("<II", sb, 92)
            if incompat & 0x40 or incompat & 0x80 or incompat & 0x200:  # extents, 64bit, flex_bg
                return "ext4"
            if compat & 0x4:  # has_journal
                return "ext3"
            return "ext2"
        btr = source.read(0x10040, 8)
        if btr == b"_BHRfS_M":
            return "btrfs"
    except (PvfsError, OSError):
        return None
    return None
