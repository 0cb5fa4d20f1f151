"""Proxmox VE volume naming (PVE::Storage::Plugin, ``parse_volname``).

Disk images are named ``vm-<vmid>-disk-<n>`` (``base-`` for templates),
container subvolumes ``subvol-<vmid>-disk-<n>``; thin and ZFS snapshots of
them carry the snapshot name.  Files may end in ``.raw``, ``.qcow2`` or
``.vmdk``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_VOL_RE = re.compile(
    r"^(?P<kind>vm|base|subvol|basevol)-(?P<vmid>\d+)-disk-(?P<disk>\d+)"
    r"(?:\.(?P<ext>raw|qcow2|vmdk|subvol))?$")


@dataclass(frozen=True)
class VolName:
    kind: str  # vm | base | subvol | basevol
    vmid: int
    disk: int
    ext: str | None

    @property
    def is_container(self) -> bool:
        return self.kind in ("subvol", "basevol")


def parse_volname(name: str) -> VolName | None:
    m = _VOL_RE.match(name)
    if not m:
        return None
    return VolName(m["kind"], int(m["vmid"]), int(m["disk"]), m["ext"])
