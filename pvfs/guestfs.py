"""Guest filesystems: the contract between filesystem readers and the core.

A filesystem backend (``backends/ext4``, ``backends/btrfs`` ...) is an
ordinary backend whose ``roles`` are the block roles (a disk, a partition,
an LV, a zvol, an RBD image, a DRBD data area).  Its ``probe`` checks the
superblock; its ``open`` reads only what it needs to answer
:meth:`GuestFilesystem.root` lazily (mounting 50 VMs must not walk 50
filesystems) and hands the result to :meth:`pvfs.discover.Context.add_filesystem`,
which shows the tree in every place the volume is shown:

- ``vms/<vmid>/disk-<n>.files/p<k>/`` for partition ``k`` of a VM disk,
- ``vms/<vmid>/disk-<n>.files/`` when the whole disk is one filesystem,
- ``cts/<vmid>/rootfs/`` for a container volume,
- ``<name>.files/`` beside any other volume (``storage/lvm/pve/root.files/``).

File data is exposed as a :class:`pvfs.source.Source` over the volume's
source (an :class:`pvfs.source.ExtentSource` for plain extents), so bad
sectors, missing members and lost objects below read as EIO (or zeros with
``--bad zero``) in exactly the files they hit, and ``block_status`` reports
holes as ``unmapped``.  After discovery the core maps every unreadable range
of the volume to the files it hits with :meth:`GuestFilesystem.files_in_ranges`
and reports them.

References: dissect.target ``filesystem.py`` (a typed base class per
filesystem, a cheap detect); ratarmount's MountSource (lazy listing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .backend import BLOCK_ROLES
from .nodes import Dir

#: Roles of volumes that hold a block device's bytes (what a filesystem can live on).
FS_ROLES = BLOCK_ROLES


@dataclass
class FilesystemInfo:
    """What ``pvfs scan`` and report.json say about one guest filesystem."""

    fstype: str  # ext4, xfs, ntfs, vfat, exfat, btrfs ...
    label: str | None = None
    uuid: str | None = None
    size: int = 0  # bytes the filesystem spans
    used: int | None = None  # bytes in use, from the superblock/bitmaps when known
    clean: bool | None = None  # False: dirty journal/log (not cleanly unmounted)
    journal: str | None = None  # "replayed 12 transactions", "dirty log not replayed" ...
    damaged_files: int = 0  # filled by the core after mapping damage to files
    damaged_names: list[str] = field(default_factory=list)  # the first of them (root-relative)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"type": self.fstype, "label": self.label, "uuid": self.uuid,
                "size": self.size, "used": self.used, "clean": self.clean,
                "journal": self.journal, "damaged_files": self.damaged_files,
                "notes": list(self.notes)}


class GuestFilesystem:
    """One opened guest filesystem.  Subclasses set ``info`` and implement ``root``."""

    info: FilesystemInfo

    def root(self) -> Dir:
        """The root directory, lazily loaded (``Dir(loader=...)``); called once."""
        raise NotImplementedError

    def files_in_ranges(self, ranges: list[tuple[int, int]],
                        limit: int = 50) -> tuple[list[str], int]:
        """Paths (relative to the filesystem root, ``/``-separated) of the files and
        directories whose data or metadata lie in ``ranges`` (byte offsets of the
        volume), at most ``limit`` of them, and how many there are in all.

        Called only when the volume has unreadable ranges; it may walk the inode
        table / MFT but must stay bounded in time and memory.  The default says
        nothing is known."""
        return [], 0
