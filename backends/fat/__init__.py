"""FAT12/16/32 (EFI system partitions, USB sticks) and exFAT guest filesystems, read-only.

pvfs's own reader (see README.md for why not pytsk3 or libfsfat): cluster chains become
ExtentSources over the volume, so damage below maps to the files it hits.
"""

from __future__ import annotations

from pvfs.backend import Backend
from pvfs.guestfs import FS_ROLES


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


BACKENDS = [FatBackend(), ExfatBackend()]
