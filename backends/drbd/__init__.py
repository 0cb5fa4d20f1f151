"""DRBD backing devices (8.4 ``v08`` and 9.x ``v09`` meta data), both nodes side by side.

See README.md.  The backend is grouped: every DRBD backing device found is a
member; :meth:`DrbdBackend.open_group` pairs the members that share a
generation UUID (the same resource) and builds
``storage/drbd/<resource>/{node-A.raw,node-B.raw,merged.raw,diff.json,diverged/,meta.json}``.

This module is the backend's light declaration (``pvfs.backend.BackendSpec``); the code
(backend.py) is imported only for a volume with a meta-data magic where internal meta
data sits (the last 4 KiB-aligned 4 KiB), for an input with one at 0 (an external
meta-data image), or when ``--drbd-md`` names devices (drbd-utils ``drbdmeta.c``,
``v07_style_md_get_byte_offset``; drbd ``drbd_int.h``, ``DRBD_MD_MAGIC_*``).
"""

from __future__ import annotations

from pvfs.backend import INPUT, BackendSpec

# (the same values as structs.py / meta.py; test_startup checks they agree)
DRBD_MAGIC = 0x83740267
MAGICS = (DRBD_MAGIC + 4, DRBD_MAGIC + 5, DRBD_MAGIC + 6)  # v08, v08 unclean (8.4), v09
MAGIC_OFFSET = 60
MIN_DEVICE = 68 * 1024

CLI_OPTIONS = (
    ("--drbd-md", {"action": "append", "metavar": "DEVICE=MD_IMAGE[@INDEX]",
                   "help": "DRBD external meta data: the backing device (input path or "
                           "volume name) and the image holding its meta data "
                           "(@INDEX for indexed 128 MiB slots); repeatable"}),
    ("--drbd-pair", {"action": "append", "metavar": "DEVICE=DEVICE",
                     "help": "treat two DRBD backing devices (input paths or volume names) "
                             "as nodes of one resource even when their generation UUIDs "
                             "share nothing; repeatable"}),
    ("--drbd-prefer", {"action": "append", "metavar": "[RESOURCE=]A|B",
                       "help": "which node merged.raw reads by default (default: the node "
                               "the generation UUIDs call newer, else A); repeatable"}),
    ("--drbd-ranges", {"action": "append", "metavar": "[RESOURCE=]FILE",
                       "help": "ranges file for merged.raw: lines 'OFFSET LENGTH NODE' "
                               "(units s,K,M,G,b=4KiB block); later lines win"}),
    ("--drbd-compare", {"choices": ["lazy", "now", "off"],
                        "help": "byte comparison of the two nodes for diff.json: on first "
                                "read (lazy, default), during discovery (now), or never "
                                "(off: bitmaps only)"}),
)


def _magic_at(src, offset) -> bool:
    b = src.read(offset + MAGIC_OFFSET, 4)
    return len(b) == 4 and int.from_bytes(b, "big") in MAGICS


def sniff(volume, ctx) -> bool:
    if ctx.options.get("drbd_md"):
        return True  # external meta data named by the user: the backend decides
    src = volume.source
    if src.size >= MIN_DEVICE and _magic_at(src, (src.size - 4096) & ~4095):
        return True
    return src.size >= 4096 and volume.role == INPUT and _magic_at(src, 0)


SPECS = [BackendSpec(name="drbd", impl="backends.drbd.backend:DRBD", grouped=True, phase=1,
                     joins_timelines=True, cli_options=CLI_OPTIONS, sniff=sniff)]
