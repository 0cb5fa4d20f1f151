"""The partition table backends: each partition becomes a volume (``p1``, ``p2`` ...).
Declared in ``__init__.py`` (``SPECS``)."""

from __future__ import annotations

from pvfs.backend import Backend
from pvfs.source import SliceSource

from . import DISK_ROLES
from .tables import GPT_PROBE_SECTOR_SIZES, PartitionTableError, read_gpt, read_mbr



def _add_partitions(volume, ctx, table):
    for part in table.partitions:
        end = part.offset + part.size
        if end > volume.source.size:
            start = max(0, volume.source.size - part.offset)  # inside the partition
            ctx.report.add("error", table.scheme, f"{volume.path}:p{part.number}",
                           "partition-beyond-disk",
                           f"partition p{part.number} ends at {end:#x}, past the end of the disk "
                           f"({volume.source.size:#x}); the missing {part.size - start} bytes "
                           "are unreadable", [(start, part.size - start)])
        src = SliceSource(volume.source, part.offset, part.size,
                          label=f"{volume.name}:p{part.number}", bad=ctx.bad())
        ctx.add_child(volume, f"p{part.number}", src, role="partition", info=part.info())
    volume.info["partition_table"] = table.summary()
    for p in table.problems:
        ctx.report.add(p.severity, table.scheme, volume.path, p.code, p.message,
                       outcome=p.outcome)


class GptBackend(Backend):
    name = "gpt"
    roles = DISK_ROLES

    def probe(self, volume, ctx):
        src = volume.source
        for ss in GPT_PROBE_SECTOR_SIZES:
            if src.read(ss, 8) == b"EFI PART":
                return 90.0
        # Primary header destroyed: the backup at the last sector may still be there.
        for ss in GPT_PROBE_SECTOR_SIZES:
            if src.size >= 2 * ss and src.size % ss == 0 and \
                    src.read(src.size - ss, 8) == b"EFI PART":
                return 80.0
        return 0.0

    def open(self, volume, ctx):
        _add_partitions(volume, ctx, read_gpt(volume.source))


class MbrBackend(Backend):
    name = "mbr"
    roles = DISK_ROLES

    def probe(self, volume, ctx):
        try:
            table = read_mbr(volume.source, probe_only=True)
        except PartitionTableError:
            return 0.0
        return 40.0 if table.partitions else 0.0

    def open(self, volume, ctx):
        _add_partitions(volume, ctx, read_mbr(volume.source))
