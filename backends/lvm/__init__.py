"""LVM2 and LVM-thin: PV labels, VG text metadata (every generation in the ring), LVs,
thin pools with their dm-thin metadata; see README.md.

The backend's light declaration (``pvfs.backend.BackendSpec``); the code is in
backend.py and imported only for a volume with a PV label (``LABELONE`` in one of the
first four sectors), a label-less metadata area (the ``FMTT_MAGIC`` of an mda_header at
4 KiB, what ``wipefs`` leaves) or, for an input file, a VG metadata backup (LVM2
``lib/label/label.c``, ``lib/format_text/layout.h``, ``lib/format_text/format-text.c``).
"""

from __future__ import annotations

import re

from pvfs.backend import BLOCK_ROLES, INPUT, BackendSpec

# (the same values as structs.py / label.py; test_startup checks they agree)
SECTOR_SIZE = 512
LABEL_SCAN_SECTORS = 4
LABEL_ID = b"LABELONE"
FMTT_MAGIC = b"\x20\x4c\x56\x4d\x32\x20\x78\x5b\x35\x41\x25\x72\x30\x4e\x2a\x3e"
DEFAULT_MDA_OFFSET = 4096
MAX_BACKUP_FILE = 64 << 20
BACKUP_MARK = re.compile(rb'contents = "Text Format Volume Group"')

CLI_OPTIONS = (
    ("--lvm-seqno", {
        "type": int, "metavar": "N",
        "help": "use LVM metadata generation (seqno) N instead of the newest one found "
                "in the metadata ring (e.g. to see an LV removed by lvremove)"}),
    ("--lvm-thin-scan", {
        "action": "store_true",
        "help": "scan all thin-pool metadata for older copies of removed thin devices "
                "and show them under storage/lvm/<vg>/.pool/<pool>/removed/"}),
)


def looks_like_backup(source) -> bool:
    """A VG metadata backup file (``vgcfgbackup``, /etc/lvm/backup, /etc/lvm/archive)."""
    from pvfs.errors import UnreadableError

    if not 0 < source.size <= MAX_BACKUP_FILE:
        return False
    try:
        head = source.read(0, min(source.size, 64 << 10))
    except UnreadableError:
        return False
    return bool(BACKUP_MARK.search(head)) and b"\0" not in head


def sniff(volume, ctx) -> bool:
    src = volume.source
    if volume.role == INPUT:  # the probe of an input asks only this
        return looks_like_backup(src)
    head = src.read(0, SECTOR_SIZE * LABEL_SCAN_SECTORS)
    if any(head[i * SECTOR_SIZE:].startswith(LABEL_ID) for i in range(LABEL_SCAN_SECTORS)):
        return True
    return src.read(DEFAULT_MDA_OFFSET + 4, 16) == FMTT_MAGIC


SPECS = [BackendSpec(name="lvm", impl="backends.lvm.backend:LvmBackend",
                     roles=BLOCK_ROLES | {INPUT}, grouped=True, cli_options=CLI_OPTIONS,
                     sniff=sniff)]
