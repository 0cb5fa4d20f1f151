"""The XFS backend: the primary superblock, else a secondary one, then the tree.
Declared in ``__init__.py`` (``SPECS``).

References: see ondisk.py and fs.py.
"""

from __future__ import annotations

from pvfs.backend import Backend
from pvfs.errors import FormatError, PvfsError
from pvfs.guestfs import FS_ROLES

from . import ondisk as D

LAYER = "xfs"
BLOCK_SIZES = (4096, 1024, 2048, 512, 8192, 16384, 32768, 65536)
MAX_AGCOUNT_GUESS = 64


def _try(source, off):
    try:
        data = source.read(off, 512)
        if data[:4] != b"XFSB":
            return None
        sector = source.read(off, max(512, int.from_bytes(data[102:104], "big")))
        geo = D.parse_superblock(sector, source.size)
    except (PvfsError, OSError):
        return None
    if geo.crc_ok is False:
        return None
    return geo


def secondary_superblock(source):
    """A secondary superblock (AG 1 first, as xfs_repair would use), found by trying
    the AG sizes that mkfs.xfs makes for this volume size: ``(geometry, AG number)``."""
    for bs in BLOCK_SIZES:
        dblocks = source.size // bs
        for agcount in range(2, MAX_AGCOUNT_GUESS + 1):
            for agblocks in {dblocks // agcount, -(-dblocks // agcount)}:
                if agblocks < 64:
                    continue
                geo = _try(source, agblocks * bs)
                if geo is not None and geo.agblocks == agblocks and geo.blocksize == bs:
                    return geo, 1
    return None, None


class XfsBackend(Backend):
    name = "xfs"
    roles = FS_ROLES

    def probe(self, volume, ctx):
        try:
            head = volume.source.read(0, 4096)
        except Exception:
            return 0.0
        if head[:4] != b"XFSB":
            return 0.0
        try:
            geo = D.parse_superblock(head, volume.source.size)
        except Exception:
            return 10.0  # the magic alone: open() may still find a secondary superblock
        return 100.0 if geo.crc_ok else 50.0

    def open(self, volume, ctx):
        from .fs import XfsFilesystem

        source = volume.source
        notes = []
        geo = None
        why = None
        try:
            sector = source.read(0, 4096)
            geo = D.parse_superblock(sector, source.size)
            if geo.crc_ok is False:
                why, geo = "its checksum is wrong", None
        except (PvfsError, OSError) as e:
            why = str(e)
        if geo is None:
            geo, agno = secondary_superblock(source)
            if geo is None:
                raise FormatError(f"XFS primary superblock unusable ({why}) and no secondary "
                                  "superblock found")
            msg = f"the primary superblock is unusable ({why}); the copy in AG {agno} is used " \
                  "(its free-space and inode counters are not kept up to date)"
            notes.append(msg)
            # the secondary holds the same geometry; only its counters are stale, and
            # they are not needed to read
            ctx.report.add("info", LAYER, volume.path, "bad-superblock", msg, [(0, 512)],
                           outcome="repaired")
        fs = XfsFilesystem(volume, ctx, geo, notes)
        ctx.add_filesystem(volume, fs)
