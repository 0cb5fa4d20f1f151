"""vzdump archives: VMA (VM) and tar (container), plain or zstd/gzip/lzop compressed.

The backend's light declaration (``pvfs.backend.BackendSpec``); the code (backend.py,
archive.py) is imported only for an input of 512 bytes or more that is named like a
vzdump archive, starts with a zstd, lzop or gzip magic, or is a bare VMA (its magic) or
tar (a ustar header with a good checksum): pve-manager ``PVE/VZDump.pm`` (names),
pve-qemu ``vma_spec.txt`` (``VMA\\0``), POSIX ustar (the header checksum).
"""

from __future__ import annotations

import re

from pvfs.backend import INPUT, BackendSpec

# (the same values as structs.py; test_startup checks they agree)
VMA_MAGIC = b"VMA\0"
CODEC_MAGICS = (b"\x28\xb5\x2f\xfd", b"\x89LZO\x00\r\n\x1a\n", b"\x1f\x8b")  # zstd, lzop, gzip
NAME_RE = re.compile(r"^vzdump-(qemu|lxc|openvz)-(\d+)-(\d{4})_(\d\d)_(\d\d)-(\d\d)_(\d\d)_(\d\d)"
                     r"\.(vma|tar|tgz)(\.zst|\.lzo|\.gz)?$")

CLI_OPTIONS = (
    ("--vzdump-index-dir", {"metavar": "DIR", "help": "where the persistent vzdump indexes are kept "
                                    "(default: vzdump/ in the --index-dir store; 'none' keeps them in memory)"}),
    ("--vzdump-seek-cache", {"choices": ["auto", "off"], "default": None,
                             "help": "auto (default): when a .zst/.gz archive is one big frame/member, keep "
                                     "its decoded bytes as 1 MiB zstd frames beside the index for fast "
                                     "random access; off: decode from the frame start on backward seeks"}),
)


def header_ok(block: bytes) -> bool:
    """A 512-byte ustar/GNU header with a correct checksum."""
    if len(block) < 512 or not any(block):
        return False
    try:
        stored = int(block[148:156].replace(b"\0", b" ").strip() or b"-1", 8)
    except ValueError:
        return False
    calc = sum(block[:148]) + 256 + sum(block[156:512])
    return stored == calc


def sniff(volume, ctx) -> bool:
    src = volume.source
    if src.size < 512:
        return False
    if NAME_RE.match(volume.file_name or volume.name):
        return True
    head = src.read(0, 512)
    return head.startswith(CODEC_MAGICS) or head[:4] == VMA_MAGIC or header_ok(head)


SPECS = [BackendSpec(name="vzdump", impl="backends.vzdump.backend:VzdumpBackend",
                     roles=frozenset({INPUT}), cli_options=CLI_OPTIONS, sniff=sniff)]
