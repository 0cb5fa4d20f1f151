"""ext2/ext3/ext4 guest filesystems: pvfs's own reader (see README.md)."""

from __future__ import annotations

from pvfs.backend import Backend
from pvfs.guestfs import FS_ROLES

from .fs import Ext4Filesystem
from .structs import SUPERBLOCK_OFFSET
from .superblock import Ext4Error, probe_superblock, read_superblock
from .volume import Ext4Volume


class Ext4Backend(Backend):
    name = "ext4"
    roles = FS_ROLES

    def probe(self, volume, ctx):
        return probe_superblock(volume.source)

    # -- steps the journal-replay work overrides or extends (README.md, "The seam") --
    def load_superblock(self, volume, ctx):
        """``(Superblock, notes)``: the primary superblock."""
        return read_superblock(volume.source, SUPERBLOCK_OFFSET), []

    def journal_overlay(self, volume, sb, ctx):
        """``(meta source, data source, journal text)``; without replay: the volume itself."""
        text = None
        if sb.needs_recovery:
            text = "needs recovery; journal not replayed (showing the unreplayed state)"
        return volume.source, volume.source, text

    def open(self, volume, ctx):
        sb, notes = self.load_superblock(volume, ctx)
        if sb.journal_dev:
            raise Ext4Error("an external ext4 journal device, not a filesystem")
        meta, data, journal = self.journal_overlay(volume, sb, ctx)
        if meta is not volume.source:
            try:  # the journal may have replayed the superblock itself
                sb = read_superblock(meta, sb.offset)
            except Ext4Error:
                pass
        if sb.unknown_incompat:
            ctx.report.add("warning", self.name, volume.path, "unknown-features",
                           f"incompatible features {sb.unknown_incompat:#x} are unknown to "
                           "this reader; what is shown may be incomplete")
        if sb.checksum_ok() is False:
            ctx.report.add("warning", self.name, volume.path, "superblock-checksum",
                           "superblock checksum mismatch; its fields look sane and are used")
        vol = Ext4Volume(meta, data, sb)
        fs = Ext4Filesystem(vol, report=ctx.report,
                            where=lambda: volume.files_paths[0] if volume.files_paths
                            else volume.path,
                            bad=ctx.bad("eio"), journal=journal, notes=notes)
        ctx.add_filesystem(volume, fs)


BACKENDS = [Ext4Backend()]
