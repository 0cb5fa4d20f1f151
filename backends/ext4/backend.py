"""The ext4 backend: probe the superblock (or a backup), replay the journal in memory,
hand the reader's tree to the core.  Declared in ``__init__.py`` (``SPECS``)."""

from __future__ import annotations

from pvfs.backend import Backend
from pvfs.guestfs import FS_ROLES

from . import CLI_OPTIONS, recovery
from .fs import Ext4Filesystem
from .structs import SUPERBLOCK_OFFSET
from .superblock import Ext4Error, probe_superblock, read_superblock
from .volume import Ext4Volume


class Ext4Backend(Backend):
    name = "ext4"
    roles = FS_ROLES
    cli_options = list(CLI_OPTIONS)

    def probe(self, volume, ctx):
        return probe_superblock(volume.source) or recovery.probe_backup(volume.source)

    def open(self, volume, ctx):
        # The seam (README.md): superblock (backup fallback), journal overlay, reader.
        sb, notes = recovery.load_superblock(volume, ctx)
        if sb.journal_dev:
            raise Ext4Error("an external ext4 journal device, not a filesystem")
        from_backup = sb.offset != SUPERBLOCK_OFFSET
        meta, data, journal = recovery.journal_overlay(volume, sb, ctx, from_backup=from_backup)
        if meta is not volume.source and not from_backup:
            try:  # the journal may have replayed the superblock itself
                sb = read_superblock(meta, sb.offset)
            except Ext4Error:
                pass
        if sb.unknown_incompat:
            ctx.report.add("warning", self.name, volume.path, "unknown-features",
                           f"incompatible features {sb.unknown_incompat:#x} are unknown to "
                           "this reader; what is shown may be incomplete")
        vol = Ext4Volume(meta, data, sb)
        fs = Ext4Filesystem(vol, report=ctx.report,
                            where=lambda: volume.files_paths[0] if volume.files_paths
                            else volume.path,
                            bad=ctx.bad("eio"), journal=journal, notes=notes)
        if journal and "replayed" in journal and "not replayed" not in journal:
            fs.info.clean = False  # it was dirty; the tree shows the replayed state
        ctx.add_filesystem(volume, fs)
