"""ZFS pools: labels, vdevs (mirror, RAIDZ), objsets, datasets, zvols, snapshots."""

from .backend import ZfsBackend

BACKENDS = [ZfsBackend()]
