"""btrfs guest filesystems (single device): subvolumes, snapshots, compression, checksums."""

from .backend import BtrfsBackend

BACKENDS = [BtrfsBackend()]
