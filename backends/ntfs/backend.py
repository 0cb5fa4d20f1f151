"""The NTFS backend: boot sector (or its backup), ``$MFT`` records checked against
``$MFTMirr``, the tree from libfsntfs.  Declared in ``__init__.py`` (``SPECS``).

References: see ondisk.py and fs.py.
"""

from __future__ import annotations

from pvfs.backend import Backend
from pvfs.errors import FormatError, PvfsError, UnreadableError
from pvfs.guestfs import FS_ROLES

from . import ondisk as D

LAYER = "ntfs"
MIRROR_RECORDS = 4  # $MFTMirr holds $MFT, $MFTMirr, $LogFile, $Volume


def _boot_candidates(source):
    """``(offset, label)`` of the boot sector and its backups: the last sector of the
    volume (mkntfs and Windows put it there) for 512- and 4096-byte sectors."""
    out = [(0, "boot sector")]
    for bps in (512, 4096):
        if source.size >= 2 * bps:
            out.append((source.size - bps, "backup boot sector"))
    return out


def read_boot(source):
    """``(Boot, offset it came from)``; FormatError when no copy is usable."""
    errors = []
    for off, what in _boot_candidates(source):
        try:
            data = source.read(off, 512)
            boot = D.parse_boot(data, source.size)
            if off and boot.size != off:  # a backup sits in the sector after the volume
                raise FormatError(f"it describes {boot.size} bytes, not {off}")
            return boot, off
        except (PvfsError, OSError) as e:
            errors.append(f"{what}: {e}")
    raise FormatError("no usable NTFS boot sector (" + "; ".join(errors) + ")")


def mirror_patches(source, boot):
    """Records 0..3 of ``$MFT`` that are broken or unreadable, replaced by their
    ``$MFTMirr`` copies when those are good: ``({offset: record}, [messages])``."""
    rs = boot.mft_record_size
    patches, notes = {}, []
    for i in range(MIRROR_RECORDS):
        off = boot.mft_offset + i * rs
        try:
            D.check_mft_record(source.read(off, rs), boot.bytes_per_sector)
            continue
        except (FormatError, UnreadableError) as e:
            why = str(e)
        try:
            mirror = source.read(boot.mftmirr_offset + i * rs, rs)
            D.check_mft_record(mirror, boot.bytes_per_sector)
        except (FormatError, UnreadableError) as e:
            notes.append(f"$MFT record {i} is broken ({why}) and so is its $MFTMirr copy ({e})")
            continue
        patches[off] = mirror
        notes.append(f"$MFT record {i} is broken ({why}); its $MFTMirr copy is used")
    return patches, notes


class NtfsBackend(Backend):
    name = "ntfs"
    roles = FS_ROLES

    def probe(self, volume, ctx):
        try:
            head = volume.source.read(0, 512)
        except Exception:
            head = b""
        try:
            D.parse_boot(head, volume.source.size)
            return 100.0 if head[510:512] == b"\x55\xaa" else 50.0
        except Exception:
            pass
        if head[3:11] == b"NTFS    " or head == bytes(len(head)) and head:
            try:  # the first sector is gone but the backup in the last one is fine
                read_boot(volume.source)
                return 50.0
            except Exception:
                return 0.0
        return 0.0

    def open(self, volume, ctx):
        from .fs import NtfsFilesystem, OverlaySource

        source = volume.source
        boot, boot_off = read_boot(source)
        notes = []
        patches = {}
        if boot_off:
            notes.append("boot sector unusable; the backup boot sector is used")
            ctx.report.add("info", LAYER, volume.path, "bad-boot-sector",
                           "the NTFS boot sector is unusable; its backup in the last "
                           "sector is used", [(0, 512)], outcome="repaired")
            patches[0] = source.read(boot_off, 512)
        mp, mnotes = mirror_patches(source, boot)
        for msg in mnotes:
            ctx.report.add("error", LAYER, volume.path, "bad-mft-record", msg)
        notes.extend(mnotes)
        patches.update(mp)
        if patches:
            source = OverlaySource(source, patches)
        fs = NtfsFilesystem(volume, ctx, boot, source, notes)
        ctx.add_filesystem(volume, fs)
