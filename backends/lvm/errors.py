"""The LVM backend's own error type."""

from pvfs.errors import FormatError


class LvmError(FormatError):
    """An LVM2 label, metadata area, VG text or thin-pool structure is not valid."""


class ThinError(LvmError):
    """dm-thin pool metadata is not valid."""
