"""FAT12/16/32 (EFI system partitions, USB sticks) and exFAT guest filesystems, read-only.

pvfs's own reader (see README.md for why not pytsk3 or libfsfat): cluster chains become
ExtentSources over the volume, so damage below maps to the files it hits.
"""

from __future__ import annotations

from pvfs.backend import Backend, BackendSpec
from pvfs.guestfs import FS_ROLES

# (the same values as structs.py / fat.py; test_startup checks they agree)
SECTOR_SIGNATURE = b"\x55\xaa"
BACKUP_BOOT_SECTOR = 6  # FAT32 BPB_BkBootSec
EXFAT_NAME = b"EXFAT   "
EXFAT_BACKUP_REGION = 12  # sectors 12-23
SECTOR_SIZES = (512, 4096, 1024, 2048)


def sniff_fat(volume, ctx) -> bool:
    """fat.probe_score takes the boot sector or the FAT32 backup boot sector: one of them
    ends in 0x55AA (fatgen103 3.1, 3.3)."""
    src = volume.source
    return any(src.read(off + 510, 2) == SECTOR_SIGNATURE
               for off in (0, *(BACKUP_BOOT_SECTOR * bps for bps in SECTOR_SIZES)))


def sniff_exfat(volume, ctx) -> bool:
    """exfat.probe_score takes the main or the backup boot region: one of them names
    itself ``EXFAT`` (exFAT specification 3.1.2, FileSystemName)."""
    src = volume.source
    return any(src.read(off + 3, 8) == EXFAT_NAME
               for off in (0, *(EXFAT_BACKUP_REGION * bps for bps in SECTOR_SIZES)))


class FatBackend(Backend):
    name = "vfat"
    roles = FS_ROLES

    def probe(self, volume, ctx):
        from .fat import probe_score

        return probe_score(volume.source)

    def open(self, volume, ctx):
        from .fat import FatFilesystem

        ctx.add_filesystem(volume, FatFilesystem(volume, ctx))


class ExfatBackend(Backend):
    name = "exfat"
    roles = FS_ROLES

    def probe(self, volume, ctx):
        from .exfat import probe_score

        return probe_score(volume.source)

    def open(self, volume, ctx):
        from .exfat import ExfatFilesystem

        ctx.add_filesystem(volume, ExfatFilesystem(volume, ctx))


SPECS = [
    BackendSpec(name="vfat", impl="backends.fat:FatBackend", roles=FS_ROLES, sniff=sniff_fat),
    BackendSpec(name="exfat", impl="backends.fat:ExfatBackend", roles=FS_ROLES,
                sniff=sniff_exfat),
]
