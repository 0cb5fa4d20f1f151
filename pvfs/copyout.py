"""``pvfs copy``: a file of the tree (a VM disk, a backup's disk, a container's file)
copied out to a local file without FUSE.

A sequential read through the FUSE mount is capped by the FUSE path itself (README,
"Expected speeds": a minimal pyfuse3 file system serving pread reaches 0.64-0.68x of
``cat``).  This walks the file's :class:`~pvfs.source.Source` directly, a piece at a time:

* bytes that ``block_status`` calls ``zero`` or ``unmapped`` are not written: the copy is
  sparse like the source (the file is extended with ``ftruncate`` at the end);
* ``data`` bytes that ``plain_ranges`` maps to bytes of a plain input file (a raw image,
  an LV extent, a thin run, a qcow2 data cluster) are copied in the kernel with
  ``copy_file_range(2)``, as coreutils' ``cp`` does (no copy through user space; on a
  file system with reflinks, no copy at all); refused (EXDEV, EINVAL, ENOSYS, EOPNOTSUPP:
  an old kernel, a block device, another file system type), it falls back to
  pread + pwrite;
* everything else (compressed clusters, ZFS blocks, chunks of backups) is read with
  ``readinto`` and written with ``pwrite``;
* where the mapping jumps elsewhere in an input file (a thin LV's runs, qcow2 clusters
  allocated out of order), the next step is advised to the kernel ahead
  (:meth:`~pvfs.source.Source.prefetch`), as the mount does: the file's own read-ahead
  cannot guess those places.

A copied disk is either right or the copy fails: an unreadable range (``block_status``
says ``unreadable``, or a read raises :class:`~pvfs.errors.UnreadableError`: a bad
sector in a ddrescue mapfile, a checksum that fails, a missing member) stops the copy
and the partial file is removed.  With ``keep_going`` it is left as a hole (zeros) and
listed in a GNU ddrescue mapfile ``DEST.map`` (bad ``-``, the rest ``+``): the format pvfs
itself reads (:mod:`pvfs.ddrescue`), so the copy can be mounted again with its damage known.
An unreadable range that ``block_status`` did not foresee is narrowed down by halving the
failing read to 512-byte sectors.

# References:
#   copy_file_range(2) (Linux man-pages: EXDEV, EINVAL, ENOSYS, EOPNOTSUPP, short copies);
#   coreutils src/copy.c (sparse copy: SEEK_DATA/SEEK_HOLE, copy_file_range, ftruncate);
#   GNU ddrescue manual, "Mapfile structure".
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .errors import PvfsError, UnreadableError
from .source import DATA, UNREADABLE, FileSource, Source

#: Bytes walked per step (block status, plain ranges, progress): large enough that the
#: per-step work is nothing next to the copy, small enough for a smooth progress line.
STEP = 32 << 20
#: Buffer of the pread + pwrite path: small enough to stay in the CPU's cache between the
#: read and the write.  Measured (1 GiB, cold, 3 rounds, copy_file_range off): a raw image
#: 128 KiB 2139-2251 MiB/s, 1 MiB 1543-2187, 8 MiB 441-907 (cp: 1986-2261); a qcow2 with
#: compressed clusters 128 KiB 2419-2507, 256 KiB 2430-2503, 1 MiB 1555-2519, 8 MiB 417-1003.
BUF = 256 << 10
#: The smallest range a failing read is halved down to.
SECTOR = 512
#: copy_file_range's errors that mean "not here, do it yourself" (copy_file_range(2)).
_CFR_FALLBACK = {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF,
                 errno.ETXTBSY, errno.EPERM}


class CopyDamage(PvfsError):
    """The copy met unreadable bytes (without ``keep_going``)."""

    def __init__(self, message: str, offset: int, length: int) -> None:
        super().__init__(message)
        self.offset, self.length = offset, length


class CopyWriteError(PvfsError):
    """DEST could not be written (a full or failing disk)."""


@dataclass
class CopyResult:
    size: int = 0
    bad: list[tuple[int, int]] = field(default_factory=list)  # (offset, length), sorted
    kernel_bytes: int = 0  # copied with copy_file_range
    read_bytes: int = 0  # copied through readinto + pwrite
    hole_bytes: int = 0  # left as holes (zero / unmapped in the source)
    seconds: float = 0.0

    @property
    def bad_bytes(self) -> int:
        return sum(n for _, n in self.bad)


def _plain_file(f: FileSource) -> bool:
    """A regular input file (copy_file_range copies only between regular files)."""
    return type(f) is FileSource and stat.S_ISREG(f.stat.st_mode)


class Copier:
    """Copies one source into ``dest_fd`` (a new, empty regular file)."""

    def __init__(self, src: Source, dest_fd: int, name: str, keep_going: bool = False,
                 tick: Callable[[int], None] | None = None) -> None:
        self.src, self.fd, self.name = src, dest_fd, name
        self.keep_going = keep_going
        self.tick = tick or (lambda done: None)
        self.result = CopyResult(size=src.size)
        self._buf = memoryview(bytearray(BUF))
        self._cfr = hasattr(os, "copy_file_range")

    def run(self) -> CopyResult:
        t0 = time.monotonic()
        size, pos = self.src.size, 0
        self.src.prefetch(0, STEP)
        ahead = ThreadPoolExecutor(1, thread_name_prefix="pvfs-copy-ahead")
        try:
            while pos < size:
                n = min(STEP, size - pos)
                # the next step's scattered runs (a thin LV's, a qcow2's clusters allocated
                # out of order) read ahead by the kernel while this one is copied
                # (Source.prefetch; posix_fadvise takes a while to queue them: a thread)
                pending = ahead.submit(self.src.prefetch, pos + n, STEP)
                for off, ln, st in self.src.status_of(pos, n):
                    if st == DATA:
                        self._data(off, ln)
                    elif st == UNREADABLE:
                        self._bad(off, ln, "unreadable (block status)")
                    else:  # zero or unmapped: a hole
                        self.result.hole_bytes += ln
                pending.result()
                pos += n
                self.tick(pos)
        finally:
            ahead.shutdown(wait=True, cancel_futures=True)
        try:
            os.ftruncate(self.fd, size)
        except OSError as e:
            raise CopyWriteError(f"cannot extend to {size} bytes: {e.strerror}") from None
        self.result.seconds = time.monotonic() - t0
        return self.result

    # -- pieces ---------------------------------------------------------------------
    def _data(self, off: int, ln: int) -> None:
        pos, end = off, off + ln
        for ppos, f, foff, k in self.src.plain_ranges(off, ln):
            lo, hi = max(ppos, pos), min(ppos + k, end)
            if hi <= lo:
                continue
            if lo > pos:
                self._through_buffer(pos, lo - pos)
            if not self._kernel_copy(f, foff + (lo - ppos), lo, hi - lo):
                self._through_buffer(lo, hi - lo)
            pos = hi
        if pos < end:
            self._through_buffer(pos, end - pos)

    def _kernel_copy(self, f: FileSource, foff: int, pos: int, n: int) -> bool:
        """``copy_file_range`` of ``n`` bytes of ``f`` at ``foff`` to ``pos``; False
        (nothing or part copied; the caller copies the range again its own way) when the
        kernel refuses or the input fails to read."""
        if not self._cfr or not _plain_file(f):
            return False
        try:
            fd = f.fd
        except UnreadableError:
            return False
        done = 0
        try:
            while done < n:
                k = os.copy_file_range(fd, self.fd, n - done, foff + done, pos + done)
                if k <= 0:  # the input ended early: the read path reports it
                    return False
                done += k
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise CopyWriteError(f"cannot write at {pos + done:#x}: {e.strerror}") from None
            if e.errno in _CFR_FALLBACK:
                self._cfr = False  # the same refusal for every range: stop asking
            return False  # EIO and friends: the read path finds and reports the bytes
        self.result.kernel_bytes += n
        return True

    def _through_buffer(self, off: int, ln: int) -> None:
        step = len(self._buf)
        for pos in range(off, off + ln, step):
            self._piece(pos, min(step, off + ln - pos))

    def _piece(self, off: int, ln: int) -> None:
        """Read ``[off, off + ln)`` (at most the buffer) and write it.  A read that fails is
        halved down to sectors: what reads is copied, what does not is recorded (or stops
        the copy) by :meth:`_bad`."""
        view = self._buf[:ln]
        try:
            self.src.readinto(off, view)
        except UnreadableError as e:
            if ln <= SECTOR:
                self._bad(off, ln, str(e))
                return
            half = max(SECTOR, (ln // 2) // SECTOR * SECTOR)
            self._piece(off, half)
            self._piece(off + half, ln - half)
        else:
            self._write(view, off)

    def _write(self, view: memoryview, pos: int) -> None:
        self.result.read_bytes += len(view)
        while view:
            try:
                k = os.pwrite(self.fd, view, pos)
            except OSError as e:
                raise CopyWriteError(f"cannot write at {pos:#x}: {e.strerror}") from None
            view, pos = view[k:], pos + k

    def _bad(self, off: int, ln: int, why: str) -> None:
        if not self.keep_going:
            if why.endswith("(block status)"):  # the reader's own words for it, if any
                try:
                    self.src.read(off, min(ln, BUF))
                except UnreadableError as e:
                    why = str(e)
            raise CopyDamage(f"{self.name}: bytes {off:#x}-{off + ln - 1:#x} ({ln} bytes) "
                             f"cannot be read: {why}", off, ln)
        bad = self.result.bad
        if bad and bad[-1][0] + bad[-1][1] == off:
            bad[-1] = (bad[-1][0], bad[-1][1] + ln)
        else:
            bad.append((off, ln))


def mapfile_text(size: int, bad: list[tuple[int, int]], command: str = "pvfs copy") -> str:
    """A GNU ddrescue mapfile (manual, "Mapfile structure") of a finished copy whose
    ``bad`` ranges are bad sectors (``-``) and the rest finished (``+``)."""
    lines = ["# Mapfile. Created by pvfs copy (GNU ddrescue mapfile format)",
             f"# Command line: {command}",
             "# current_pos  current_status  current_pass",
             "0x00000000     +               1",
             "#      pos        size  status"]
    pos = 0
    for o, n in bad + [(size, 0)]:
        if o > pos:
            lines.append(f"{pos:#010x}  {o - pos:#010x}  +")
        if n:
            lines.append(f"{o:#010x}  {n:#010x}  -")
        pos = o + n
    return "\n".join(lines) + "\n"
