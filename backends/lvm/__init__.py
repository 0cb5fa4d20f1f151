"""LVM2 and LVM-thin: PV labels, VG text metadata (every generation in the ring), LVs,
thin pools with their dm-thin metadata; see README.md."""

from .backend import LvmBackend

BACKENDS = [LvmBackend()]
