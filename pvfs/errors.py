"""Error types shared by the core and every backend.

Each backend derives its own error from :class:`PvfsError` (``Qcow2Error``,
``ZfsError`` ...).  The CLI prints any ``PvfsError`` as one line and exits
non-zero; only ``--debug`` shows a traceback.
"""

from __future__ import annotations

from collections.abc import Iterable



class PvfsError(Exception):
    """Base of every error pvfs raises on purpose."""


class UsageError(PvfsError):
    """The command line or an option value is wrong."""


class FormatError(PvfsError):
    """An on-disk structure is not what its format says it must be."""


class UnreadableError(PvfsError, OSError):
    """A byte range cannot be read (bad sectors, missing member, bad checksum).

    ``ranges`` lists ``(offset, length)`` pairs in the coordinates of the
    source that raised it.  It is an ``OSError`` with ``errno = EIO`` so that
    code which only knows about I/O errors still handles it.
    """

    def __init__(self, message: str, ranges: Iterable[tuple[int, int]] = ()) -> None:
        import errno

        OSError.__init__(self, errno.EIO, message)
        self.message = message
        self.ranges = list(ranges)

    def __str__(self) -> str:
        return self.message
