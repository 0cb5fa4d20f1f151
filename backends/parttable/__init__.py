"""MBR and GPT partition tables: each partition becomes a volume (``p1``, ``p2`` ...).

The backends' light declarations (``pvfs.backend.BackendSpec``); the code (backend.py,
tables.py) is imported only for a volume with a GPT header signature (primary or
backup, UEFI 2.10 5.3.2) or an MBR boot signature 0x55AA.
"""

from __future__ import annotations

from pvfs.backend import BLOCK_ROLES, PARTITION, BackendSpec

#: Volume roles a partition table can live on (not inside a partition: no nesting
#: except the MBR extended chain, which the MBR reader follows itself).
DISK_ROLES = BLOCK_ROLES - {PARTITION}
GPT_SIGNATURE = b"EFI PART"
GPT_PROBE_SECTOR_SIZES = (512, 4096)  # (as tables.py; test_startup checks they agree)
MBR_SIGNATURE = b"\x55\xaa"


def sniff_gpt(volume, ctx) -> bool:
    src = volume.source
    for ss in GPT_PROBE_SECTOR_SIZES:
        if src.read(ss, 8) == GPT_SIGNATURE:
            return True
    return any(src.size >= 2 * ss and src.size % ss == 0
               and src.read(src.size - ss, 8) == GPT_SIGNATURE for ss in GPT_PROBE_SECTOR_SIZES)


def sniff_mbr(volume, ctx) -> bool:
    return volume.source.read(510, 2) == MBR_SIGNATURE


SPECS = [
    BackendSpec(name="gpt", impl="backends.parttable.backend:GptBackend", roles=DISK_ROLES,
                sniff=sniff_gpt),
    BackendSpec(name="mbr", impl="backends.parttable.backend:MbrBackend", roles=DISK_ROLES,
                sniff=sniff_mbr),
]
