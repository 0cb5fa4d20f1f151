"""The ZFS backend's error type."""

from pvfs.errors import FormatError


class ZfsError(FormatError):
    """A ZFS on-disk structure is not what the format says it must be."""
