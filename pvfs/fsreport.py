"""Per guest, one line about its guest filesystems (for ``pvfs scan`` and README.txt).

A recovery lab checks every recovered VM by opening its filesystems; pvfs has
opened them already, so the summary says per VM and container whether every
filesystem is intact, or which ones are dirty or hold damaged files.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .discover import Context, Volume

_GUEST = re.compile(r"^(vms|cts)/(\d+)/")


def _guest_of(vol: Volume) -> tuple[str, int] | None:
    for p in vol.files_paths:
        m = _GUEST.match(p)
        if m:
            return m.group(1), int(m.group(2))
    return None


def guest_fs_lines(ctx: Context) -> list[str]:
    """``VM 100: 2 guest filesystems, all intact (ext4, vfat)`` or one line per problem."""
    by_guest: dict[tuple[str, int], list[Volume]] = {}
    for vol in ctx.filesystems:
        g = _guest_of(vol)
        if g is not None and vol.guestfs is not None:
            by_guest.setdefault(g, []).append(vol)
    out = []
    for (kind, vmid), vols in sorted(by_guest.items(), key=lambda t: (t[0][0] != "vms", t[0][1])):
        who = f"{'VM' if kind == 'vms' else 'CT'} {vmid}"
        bad = [v for v in vols if v.guestfs.info.damaged_files or v.guestfs.info.clean is False]
        types = ", ".join(sorted({v.guestfs.info.fstype for v in vols}))
        n = len(vols)
        if not bad:
            out.append(f"  {who}: {n} guest filesystem{'s' if n > 1 else ''}, "
                       f"{'all ' if n > 1 else ''}intact ({types})")
            continue
        out.append(f"  {who}: {n - len(bad)} of {n} guest filesystems intact ({types})")
        for v in bad:
            i = v.guestfs.info
            what = []
            if i.damaged_files:
                what.append(f"{i.damaged_files} damaged file{'s' if i.damaged_files > 1 else ''}")
            if i.clean is False:
                what.append(i.journal or "dirty (not cleanly unmounted)")
            where = next((p for p in v.files_paths if _GUEST.match(p)), v.files_paths[0])
            out.append(f"    {where} ({i.fstype}): {'; '.join(what)}")
    return out
