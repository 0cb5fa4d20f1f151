"""NTFS guest filesystems (Windows VMs), read through libfsntfs with pvfs's checks.

``probe`` reads the boot sector (or the backup boot sector in the last sector);
``open`` checks ``$MFT`` records 0-3 against ``$MFTMirr``, opens the library on
``volume.source`` (with the mirror's records laid over broken ones) and shows
the tree lazily.  See README.md for what is supported and why libfsntfs.

References: see ondisk.py and fs.py.
"""

from __future__ import annotations

from pvfs.backend import BackendSpec
from pvfs.guestfs import FS_ROLES

OEM_ID = b"NTFS    "  # (ondisk.BootSector's oem_id; test_startup checks they agree)


def sniff(volume, ctx) -> bool:
    """The probe takes the boot sector (its OEM id is ``NTFS``), or, when the first
    sector names NTFS or is zeroed, the backup boot sector in the last sector."""
    src = volume.source
    head = src.read(0, 512)
    if head[3:11] == OEM_ID:
        return True
    if not head or any(head):
        return False
    return any(src.read(src.size - bps + 3, 8) == OEM_ID
               for bps in (512, 4096) if src.size >= 2 * bps)


SPECS = [BackendSpec(name="ntfs", impl="backends.ntfs.backend:NtfsBackend", roles=FS_ROLES,
                     sniff=sniff)]
