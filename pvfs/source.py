"""Random-access sources: the one interface every layer reads and exposes.

A :class:`Source` has a ``size`` and ``read(offset, length)`` with pread
semantics: no cursor, safe to call from several threads, short only at the
end of the source.  ``block_status`` tells, per range, whether bytes are
``data``, explicitly ``zero``, ``unmapped`` (reads as zeros, never written)
or ``unreadable`` (bad sectors, a missing member, a failed checksum).

Subclasses implement ``_read(offset, length)`` for an in-bounds range and,
when they know better than "all data", ``_block_status``.  The model is
dissect.util's stream.py and qemu's block-status API.

``readinto(offset, buffer, nowait)`` is the same read into the caller's buffer (the
mount's reply buffers: no allocation per request).  Layers whose bytes are plain
ranges of files (files, slices, extents, qcow2 data clusters) implement ``_readinto``
with ``preadv``; with ``nowait`` they read only what the page cache holds
(``RWF_NOWAIT``) and raise :class:`WouldBlock` instead of waiting for the disk, so the
mount answers cached ranges inline and sends only the rest to a worker thread.

``plain_ranges(offset, length)`` tells where the bytes of a range lie in input files, for
the parts that are plain copies of file bytes (a file, a slice, an LV extent, a thin run,
a qcow2 data cluster), from the layer's mapping alone; ``prefetch`` asks the kernel to
read those file ranges ahead (``POSIX_FADV_WILLNEED``).  The mount prefetches ahead of a
sequential reader: a thin LV or a qcow2 image reads its files at scattered places, which
the file's own read-ahead cannot guess, so every request would wait for the disk.
"""

from __future__ import annotations

import bisect
import errno
import itertools
import logging
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import NamedTuple

from .errors import PvfsError, UnreadableError

DATA = "data"
ZERO = "zero"
UNMAPPED = "unmapped"
UNREADABLE = "unreadable"
STATUSES = (DATA, ZERO, UNMAPPED, UNREADABLE)

#: What a reader does with unreadable bytes: raise EIO or read zeros.
BAD_EIO = "eio"
BAD_ZERO = "zero"

_uids = itertools.count(1)
log = logging.getLogger("pvfs.source")

#: A forward skip in a file up to this size still counts as the reader following the
#: file (its read-ahead reads across it); see Source.prefetch.
PREFETCH_GAP = 4 << 20
#: ``os.preadv`` flag: fail with EAGAIN instead of waiting for I/O (Linux 4.14+).
RWF_NOWAIT = getattr(os, "RWF_NOWAIT", 0)
_ZEROS = memoryview(bytes(1 << 20))


class WouldBlock(Exception):
    """A ``readinto(..., nowait=True)`` would wait for I/O (or for work its layer does not
    do inline): ask again without ``nowait``, from a thread that may block."""


def zero_fill(view: memoryview) -> None:
    """Write zeros over ``view`` (no allocation of its size)."""
    pos, n = 0, len(view)
    while pos < n:
        k = min(n - pos, len(_ZEROS))
        view[pos:pos + k] = _ZEROS[:k]
        pos += k


def coalesce(extents: list) -> list[tuple[int, int, str]]:
    """Join neighbouring ``(offset, length, status)`` triples of equal status."""
    out = []
    for off, ln, st in extents:
        if ln <= 0:
            continue
        if out and out[-1][2] == st and out[-1][0] + out[-1][1] == off:
            out[-1] = (out[-1][0], out[-1][1] + ln, st)
        else:
            out.append((off, ln, st))
    return out


class Source:
    """Base class of every random-access source."""

    size: int = 0
    label: str = "source"
    #: Set when some bytes are known to be unreadable.  The mount then serves the
    #: file with direct I/O, so that a read next to a bad range is not failed
    #: by kernel read-ahead that overlaps it.
    has_unreadable: bool = False
    #: True when ``allocated_bytes`` needs no I/O (a ZFS dnode's dn_used): the mount
    #: then answers ``stat`` inline instead of in a worker thread.
    cheap_allocation: bool = False
    #: True when ``_readinto`` is the layer's own (preadv into the buffer, ``nowait``
    #: honoured); the mount then reads into its reply buffers, else it uses ``read``.
    readinto_native: bool = False
    # A subclass kept per file (a ZFS file's DnodeSource) declares __slots__ and has no
    # __dict__; every other subclass gets one as usual.
    __slots__ = ("uid",)

    def __init__(self) -> None:
        self.uid = next(_uids)

    # -- public API -------------------------------------------------------
    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError("negative offset or length")
        if offset >= self.size or length == 0:
            return b""
        length = min(length, self.size - offset)
        data = self._read(offset, length)
        if len(data) != length:  # defensive: a backend must never return short
            raise UnreadableError(
                f"{self.label}: short read at {offset:#x} ({len(data)} of {length} bytes)",
                [(offset + len(data), length - len(data))])
        return data

    def readinto(self, offset: int, buf: memoryview | bytearray, nowait: bool = False) -> int:
        """Read ``len(buf)`` bytes at ``offset`` into ``buf`` (writable, byte format), with
        ``read``'s semantics: short only at the end of the source; returns the count.
        ``nowait``: raise :class:`WouldBlock` rather than wait for I/O (the bytes of
        ``buf`` are then undefined)."""
        if offset < 0:
            raise ValueError("negative offset")
        view = memoryview(buf).cast("B") if not isinstance(buf, memoryview) else buf
        if offset >= self.size or not len(view):
            return 0
        n = min(len(view), self.size - offset)
        self._readinto(offset, view[:n] if n < len(view) else view, nowait)
        return n

    def block_status(self, offset: int = 0, length: int | None = None) -> list[tuple[int, int, str]]:
        """List of ``(offset, length, status)`` covering the range, coalesced."""
        if length is None:
            length = self.size - offset
        offset = max(0, offset)
        length = min(length, self.size - offset)
        if length <= 0:
            return []
        return coalesce(self._block_status(offset, length))

    def status_of(self, offset: int, length: int) -> list[tuple[int, int, str]]:
        """Like ``block_status`` but covering the whole range: bytes past the end
        of this source (a truncated file) are ``unreadable``."""
        avail = max(0, min(length, self.size - offset))
        out = self.block_status(offset, avail) if avail else []
        if avail < length:
            out.append((offset + avail, length - avail, UNREADABLE))
        return out

    def unreadable_ranges(self, offset: int = 0, length: int | None = None) -> list[tuple[int, int]]:
        return [(o, n) for o, n, s in self.block_status(offset, length) if s == UNREADABLE]

    def allocated_bytes(self) -> int:
        """Bytes that hold data (for ``st_blocks``)."""
        return sum(n for _, n, s in self.block_status() if s == DATA)

    def close(self) -> None:
        pass

    def plain_ranges(self, offset: int, length: int) -> list[tuple[int, FileSource, int, int]]:
        """``(offset, file, file_offset, n)`` for the parts of ``[offset, offset + length)``
        whose bytes are ``n`` bytes of ``file`` at ``file_offset``, in order.  Zeros,
        compressed or unreadable parts, and whatever a layer does not map, are left out.
        The layer may read metadata (a table) but no data.  Advisory (for
        :meth:`prefetch`): a failure leaves the rest of the range out and is not raised;
        the reader's own read reports it."""
        if offset < 0 or length <= 0 or offset >= self.size:
            return []
        out: list[tuple[int, FileSource, int, int]] = []
        try:
            self._plain_ranges(offset, min(length, self.size - offset), out)
        except Exception as e:  # noqa: BLE001 - advisory: the read itself reports damage
            log.debug("%s: no plain ranges past %#x: %s", self.label, offset, e)
        return out

    #: True when ``_plain_ranges`` is the layer's own (the mount prefetches only then).
    maps_plain = False

    def prefetch(self, offset: int, length: int, start: int = 0) -> int:
        """Ask the kernel to read, in the background, the file ranges under ``[offset,
        offset + length)`` that its own read-ahead will not: ``offset`` is where a
        sequential reader is, and the file's read-ahead follows the reader along a file as
        long as the bytes come in file order (a raw image, an LV, a run of qcow2 clusters;
        a forward skip of up to :data:`PREFETCH_GAP`, such as compressed clusters read
        in between, included).  Each place where the mapping jumps elsewhere (a thin run, a
        qcow2 cluster allocated later) is advised with ``posix_fadvise(WILLNEED)``, which
        starts the I/O and does not wait for it.  Advising what read-ahead already follows
        was measured to cost more than it gains (a raw image 0.47x cat against 0.58x).
        Only bytes from ``start`` on are advised (what an earlier call advised is not
        asked again: ``posix_fadvise`` walks every page of a range, cached or not).
        Returns the bytes advised.  Never raises: a range that cannot be read is met, and
        reported, by the read that asks for it."""
        done = 0
        last: tuple | None = None  # (file, end offset) of the previous range
        advise = False  # the run being followed started where the mapping jumped
        todo: list = []  # [file, offset, length] to advise, neighbours joined
        for pos, f, foff, n in self.plain_ranges(offset, length):
            if last is None or f is not last[0] or not 0 <= foff - last[1] <= PREFETCH_GAP:
                advise = last is not None or pos > offset  # not the reader's own run
            last = (f, foff + n)
            if not advise or pos + n <= start:
                continue
            if pos < start:
                foff, n = foff + start - pos, n - (start - pos)
            if todo and todo[-1][0] is f and todo[-1][1] + todo[-1][2] == foff:
                todo[-1][2] += n
            else:
                todo.append([f, foff, n])
        for f, foff, n in todo:
            done += f.willneed(foff, n)
        return done

    # -- for subclasses ----------------------------------------------------
    def _read(self, offset: int, length: int) -> bytes:
        raise NotImplementedError

    def _plain_ranges(self, offset: int, length: int, out: list) -> None:
        """Append ``plain_ranges`` entries of the in-bounds range to ``out`` (default:
        nothing known)."""

    def _readinto(self, offset: int, view: memoryview, nowait: bool) -> None:
        """Fill all of ``view`` (in bounds).  By default from ``_read`` (never inline)."""
        if nowait:
            raise WouldBlock
        data = self._read(offset, len(view))
        if len(data) != len(view):
            raise UnreadableError(
                f"{self.label}: short read at {offset:#x} ({len(data)} of {len(view)} bytes)",
                [(offset + len(data), len(view) - len(data))])
        view[:] = data

    def _block_status(self, offset: int, length: int) -> list[tuple[int, int, str]]:
        return [(offset, length, DATA)]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label} size={self.size}>"


class _FdPool:
    """The open descriptors of every :class:`FileSource`, at most ``limit`` at once.

    A folder of 100,000 images must not need 100,000 descriptors: the least recently
    used idle one is closed when the limit is reached and opened again on its next read
    (checked to be the same file by device and inode).  A descriptor in use by a read is
    never closed under it.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._open: OrderedDict[int, FileSource] = OrderedDict()
        self.peak = 0

    def acquire(self, src: FileSource) -> int:
        with self._lock:
            if src._fd >= 0:
                self._open.move_to_end(src.uid)
                src._users += 1
                return src._fd
            self._make_room()
            fd = src._reopen()
            src._fd = fd
            src._users += 1
            self._open[src.uid] = src
            self.peak = max(self.peak, len(self._open))
            return fd

    def release(self, src: FileSource) -> None:
        with self._lock:
            src._users -= 1

    def adopt(self, src: FileSource) -> None:
        """Count a descriptor just opened by ``src`` itself."""
        with self._lock:
            self._make_room()
            self._open[src.uid] = src
            self.peak = max(self.peak, len(self._open))

    def forget(self, src: FileSource) -> None:
        with self._lock:
            self._open.pop(src.uid, None)
            if src._fd >= 0:
                os.close(src._fd)
                src._fd = -1

    def _make_room(self) -> None:
        while len(self._open) >= self.limit:
            for victim in self._open.values():  # oldest first: usually the first is idle
                if victim._users == 0:
                    break
            else:
                return  # every one is in a read right now: go over the limit for a moment
            del self._open[victim.uid]
            os.close(victim._fd)
            victim._fd = -1


def _fd_limit() -> int:
    """A quarter of the soft descriptor limit, 16 to 512: room for FUSE, sockets, logs."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft == resource.RLIM_INFINITY:
            soft = 1 << 16
    except (ImportError, ValueError, OSError):
        soft = 1024
    return max(16, min(512, soft // 4))


FD_POOL = _FdPool(_fd_limit())
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)


class FileStat(NamedTuple):
    """The fields of a :class:`FileSource`'s ``os.stat_result`` that are kept."""

    st_mode: int
    st_dev: int
    st_ino: int
    st_rdev: int
    st_size: int
    st_mtime_ns: int


class FileSource(Source):
    """A regular file or block device, opened ``O_RDONLY`` and read with pread.

    Its descriptor lives in :data:`FD_POOL` (bounded, reopened on demand); ``O_NONBLOCK``
    keeps a FIFO that replaced a file from blocking the open.
    """

    def __init__(self, path: str, label: str | None = None) -> None:
        super().__init__()
        self.path = os.fspath(path)
        self.label = label or os.path.basename(self.path)
        self._fd = -1
        self._users = 0
        try:
            fd = os.open(self.path, _OPEN_FLAGS)
        except OSError as e:
            raise PvfsError(f"cannot open {self.path}: {e.strerror}") from None
        st = os.fstat(fd)
        # The fields :attr:`stat` gives, not the stat_result (15 objects: ~600 bytes per
        # input file of a folder of 100,000)
        self._st = (st.st_mode, st.st_rdev, st.st_mtime_ns)
        if stat.S_ISBLK(st.st_mode):
            self.size = os.lseek(fd, 0, os.SEEK_END)
        elif stat.S_ISREG(st.st_mode):
            self.size = st.st_size
        else:
            os.close(fd)
            raise PvfsError(f"{self.path}: not a regular file or block device")
        self._ident = (st.st_dev, st.st_ino)
        self._fd = fd
        FD_POOL.adopt(self)

    @property
    def stat(self) -> FileStat:
        """What pvfs.index and the probe cache tell the file by, as of its opening."""
        mode, rdev, mtime_ns = self._st
        dev, ino = self._ident
        return FileStat(mode, dev, ino, rdev, self.size, mtime_ns)

    def _reopen(self) -> int:
        """Open the file again (the pool closed it); it must still be the same file."""
        try:
            fd = os.open(self.path, _OPEN_FLAGS)
        except OSError as e:
            raise UnreadableError(f"{self.label}: cannot open again: {e.strerror}") from None
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != self._ident:
            os.close(fd)
            raise UnreadableError(f"{self.label}: {self.path} was replaced by another file")
        return fd

    @property
    def fd(self) -> int:
        """The descriptor (opened again if the pool closed it); for callers that need one."""
        fd = FD_POOL.acquire(self)
        FD_POOL.release(self)
        return fd

    def _read(self, offset: int, length: int) -> bytes:
        fd = FD_POOL.acquire(self)
        try:
            data = os.pread(fd, length, offset)
        except OSError as e:
            raise UnreadableError(f"{self.label}: read error at {offset:#x}: {e.strerror}",
                                  [(offset, length)]) from None
        finally:
            FD_POOL.release(self)
        if len(data) < length:  # file shrank under us
            raise UnreadableError(f"{self.label}: file ends at {offset + len(data):#x}",
                                  [(offset + len(data), length - len(data))])
        return data

    readinto_native = True

    _nowait_unsupported = False

    def _readinto(self, offset: int, view: memoryview, nowait: bool) -> None:
        if nowait and (not RWF_NOWAIT or self._nowait_unsupported):
            raise WouldBlock
        fd = FD_POOL.acquire(self)
        try:
            n = os.preadv(fd, [view], offset, RWF_NOWAIT) if nowait else \
                os.preadv(fd, [view], offset)
        except OSError as e:
            if nowait:  # EAGAIN: not in the page cache
                if e.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # no RWF_NOWAIT on this fs
                    self._nowait_unsupported = True
                raise WouldBlock from None
            raise UnreadableError(f"{self.label}: read error at {offset:#x}: {e.strerror}",
                                  [(offset, len(view))]) from None
        finally:
            FD_POOL.release(self)
        if n < len(view):
            if nowait:  # partly cached (or the file shrank: the blocking read tells)
                raise WouldBlock
            raise UnreadableError(f"{self.label}: file ends at {offset + n:#x}",
                                  [(offset + n, len(view) - n)])

    maps_plain = True

    def _plain_ranges(self, offset: int, length: int, out: list) -> None:
        out.append((offset, self, offset, length))

    def willneed(self, offset: int, length: int) -> int:
        """``posix_fadvise(WILLNEED)`` of the range (clipped to the file); 0 when refused."""
        length = min(length, self.size - offset)
        if offset < 0 or length <= 0:
            return 0
        try:
            fd = FD_POOL.acquire(self)
        except UnreadableError:
            return 0
        try:
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
        except OSError:
            return 0
        finally:
            FD_POOL.release(self)
        return length

    def _block_status(self, offset: int, length: int) -> list[tuple[int, int, str]]:
        """Holes found with SEEK_DATA/SEEK_HOLE are ``unmapped``."""
        end = offset + length
        out = []
        pos = offset
        try:
            fd = FD_POOL.acquire(self)
        except UnreadableError:
            return [(offset, length, DATA)]
        try:
            while pos < end:
                try:
                    data = os.lseek(fd, pos, os.SEEK_DATA)
                except OSError as e:
                    if e.errno == errno.ENXIO:  # only a hole remains
                        out.append((pos, end - pos, UNMAPPED))
                        break
                    raise
                if data > pos:
                    out.append((pos, min(data, end) - pos, UNMAPPED))
                if data >= end:
                    break
                hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
                out.append((data, hole - data, DATA))
                pos = hole
        except OSError:
            return [(offset, length, DATA)]
        finally:
            FD_POOL.release(self)
        return out

    def close(self) -> None:
        FD_POOL.forget(self)


class BytesSource(Source):
    """Small in-memory data (decoded config blobs, generated files, tests)."""

    def __init__(self, data: bytes, label: str = "bytes") -> None:
        super().__init__()
        self.data = bytes(data)
        self.size = len(self.data)
        self.label = label

    readinto_native = True

    def _read(self, offset: int, length: int) -> bytes:
        return self.data[offset:offset + length]

    def _readinto(self, offset: int, view: memoryview, nowait: bool) -> None:
        view[:] = memoryview(self.data)[offset:offset + len(view)]


class ZeroSource(Source):
    """``size`` bytes of zeros; ``status`` says how they count."""

    def __init__(self, size: int, status: str = UNMAPPED, label: str = "zeros") -> None:
        super().__init__()
        self.size = size
        self.status = status
        self.label = label

    readinto_native = True

    def _read(self, offset: int, length: int) -> bytes:
        return bytes(length)

    def _readinto(self, offset: int, view: memoryview, nowait: bool) -> None:
        zero_fill(view)

    def _block_status(self, offset: int, length: int) -> list[tuple[int, int, str]]:
        return [(offset, length, self.status)]


class MissingSource(Source):
    """Bytes that exist in the layout but that nobody can give us.

    Reads raise :class:`UnreadableError` (policy ``eio``) or return zeros
    (policy ``zero``); block status is always ``unreadable``.
    """

    def __init__(self, size: int, reason: str, bad: str = BAD_EIO, label: str = "missing") -> None:
        super().__init__()
        self.size = size
        self.reason = reason
        self.bad = bad
        self.label = label

    def _read(self, offset: int, length: int) -> bytes:
        if self.bad == BAD_ZERO:
            return bytes(length)
        raise UnreadableError(f"{self.label}: {self.reason}", [(offset, length)])

    def _block_status(self, offset: int, length: int) -> list[tuple[int, int, str]]:
        return [(offset, length, UNREADABLE)]


class SliceSource(Source):
    """``size`` bytes of ``parent`` starting at ``offset`` (a partition, an LV segment).

    Bytes past the end of the parent (a truncated image) are unreadable.
    """

    def __init__(self, parent: Source, offset: int, size: int, label: str | None = None, bad: str = BAD_EIO) -> None:
        super().__init__()
        self.parent = parent
        self.offset = offset
        self.size = size
        self.bad = bad
        self.label = label or f"{parent.label}[{offset:#x}+{size:#x}]"

    def _read(self, offset: int, length: int) -> bytes:
        start = self.offset + offset
        avail = max(0, min(length, self.parent.size - start))
        data = self.parent.read(start, avail) if avail else b""
        if avail < length:
            if self.bad == BAD_ZERO:
                return data + bytes(length - avail)
            raise UnreadableError(f"{self.label}: beyond the end of {self.parent.label}",
                                  [(offset + avail, length - avail)])
        return data

    readinto_native = True

    def _readinto(self, offset: int, view: memoryview, nowait: bool) -> None:
        start = self.offset + offset
        length = len(view)
        avail = max(0, min(length, self.parent.size - start))
        if avail:
            self.parent.readinto(start, view[:avail], nowait)
        if avail < length:
            if self.bad != BAD_ZERO:
                raise UnreadableError(f"{self.label}: beyond the end of {self.parent.label}",
                                      [(offset + avail, length - avail)])
            zero_fill(view[avail:])

    maps_plain = True

    def _plain_ranges(self, offset: int, length: int, out: list) -> None:
        out.extend((pos - self.offset, f, foff, n)
                   for pos, f, foff, n in self.parent.plain_ranges(self.offset + offset, length))

    def _block_status(self, offset: int, length: int) -> list[tuple[int, int, str]]:
        return [(o - self.offset, n, s)
                for o, n, s in self.parent.status_of(self.offset + offset, length)]


class ExtentSource(Source):
    """A source assembled from extents of other sources.

    ``extents`` is a list of ``(offset, length, target, target_offset)``;
    ``target`` ``None`` means unmapped (reads zeros).  Gaps between extents
    are unmapped too.  Concatenation, LVM segments, DRBD merges and RBD
    objects are all ExtentSources.
    """

    def __init__(self, size: int, extents: list, label: str = "extents") -> None:
        super().__init__()
        self.size = size
        self.label = label
        self.extents = sorted((e for e in extents if e[1] > 0), key=lambda e: e[0])
        self._starts = [e[0] for e in self.extents]

    def _pieces(self, offset: int, length: int) -> Iterator[tuple[int, int, Source | None, int]]:
        """Yield ``(offset, length, target, target_offset)`` covering the range, gaps as None."""
        end = offset + length
        i = max(0, bisect.bisect_right(self._starts, offset) - 1)
        pos = offset
        while pos < end:
            if i < len(self.extents):
                e_off, e_len, target, t_off = self.extents[i]
                if e_off + e_len <= pos:
                    i += 1
                    continue
                if e_off > pos:
                    gap = min(e_off, end) - pos
                    yield pos, gap, None, 0
                    pos += gap
                    continue
                n = min(e_off + e_len, end) - pos
                yield pos, n, target, t_off + (pos - e_off)
                pos += n
                i += 1
            else:
                yield pos, end - pos, None, 0
                pos = end

    def _read(self, offset: int, length: int) -> bytes:
        parts = []
        for _pos, n, target, t_off in self._pieces(offset, length):
            if target is None:
                parts.append(bytes(n))
            else:
                parts.append(target.read(t_off, n))
        return b"".join(parts) if len(parts) != 1 else parts[0]

    readinto_native = True

    def _readinto(self, offset: int, view: memoryview, nowait: bool) -> None:
        for pos, n, target, t_off in self._pieces(offset, len(view)):
            part = view[pos - offset:pos - offset + n]
            if target is None:
                zero_fill(part)
            elif target.readinto(t_off, part, nowait) != n:
                raise UnreadableError(f"{target.label}: short read at {t_off:#x}",
                                      [(pos, n)])

    maps_plain = True

    def _plain_ranges(self, offset: int, length: int, out: list) -> None:
        for pos, n, target, t_off in self._pieces(offset, length):
            if target is not None:
                out.extend((pos + tpos - t_off, f, foff, k)
                           for tpos, f, foff, k in target.plain_ranges(t_off, n))

    def _block_status(self, offset: int, length: int) -> list[tuple[int, int, str]]:
        out = []
        for pos, n, target, t_off in self._pieces(offset, length):
            if target is None:
                out.append((pos, n, UNMAPPED))
            else:
                out.extend((o - t_off + pos, ln, s) for o, ln, s in target.status_of(t_off, n))
        return out



class PatchedSource(Source):
    """``base`` with some byte ranges replaced in memory (``{offset: bytes}``).

    Damage is injected this way in tests (and a repaired block could be laid
    over a member) without writing a byte of the input.
    """

    def __init__(self, base: Source, patches: dict[int, bytes], size: int | None = None,
                 label: str | None = None) -> None:
        super().__init__()
        self.base = base
        self.patches = sorted(patches.items())
        self.size = base.size if size is None else size
        self.label = label or f"patched({base.label})"
        self.has_unreadable = base.has_unreadable

    def _read(self, offset: int, length: int) -> bytes:
        avail = max(0, min(length, self.base.size - offset))
        data = bytearray(self.base.read(offset, avail) if avail else b"")
        data.extend(bytes(length - len(data)))
        for off, blob in self.patches:
            lo, hi = max(off, offset), min(off + len(blob), offset + length)
            if lo < hi:
                data[lo - offset:hi - offset] = blob[lo - off:hi - off]
        return bytes(data)

    def _block_status(self, offset: int, length: int) -> list[tuple[int, int, str]]:
        return self.base.block_status(offset, length) if offset < self.base.size else \
            [(offset, length, DATA)]


def concat(sources: list[Source], label: str = "concat") -> Source:
    """Sources one after another."""
    extents, pos = [], 0
    for s in sources:
        extents.append((pos, s.size, s, 0))
        pos += s.size
    return ExtentSource(pos, extents, label=label)
