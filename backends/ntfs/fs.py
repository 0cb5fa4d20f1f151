"""An NTFS volume as a pvfs node tree, read through libfsntfs (pyfsntfs).

The library walks directory indexes, attribute lists and run lists and
decompresses LZNT1; pvfs adds what a recovery tool needs around it:

- one lock per volume (libfsntfs is not thread-safe) and a file-like object
  over ``volume.source`` that remembers the last :class:`UnreadableError`;
- ``$MFTMirr`` laid over a broken ``$MFT`` record 0..3, the backup boot sector
  over a broken first one (the library would refuse the volume);
- each directory entry built in its own ``try``: one bad MFT record is one
  damage entry and the rest lists;
- uncompressed non-resident ``$DATA`` served as an :class:`ExtentSource` over
  ``volume.source`` from the run list (holes stay holes, bad sectors give EIO in
  exactly the file they hit); resident and compressed data through the library;
- ntfs-3g's view of special files: Interix symlinks and devices, SYSTEM files
  of size 0/1 as fifo/socket, symlink and junction reparse points as symlinks,
  named ``$DATA`` streams as ``user.<stream>`` xattrs;
- ``.lost+found/<record>`` for in-use MFT records no directory reaches (filled
  only when listed);
- ``files_in_ranges`` from the MFT record locations and the run lists.

References: libyal libfsntfs ``pyfsntfs`` API (``volume.open_file_object``,
``file_entry.get_sub_file_entry``, ``get_extent`` flags
``LIBFSNTFS_EXTENT_FLAG_IS_SPARSE = 1``, ``..._IS_COMPRESSED = 2``); ntfs-3g
``src/ntfs-3g.c`` (``ntfs_fuse_getattr``: st_ino = MFT record, st_ctime =
``last_mft_change_time``, st_nlink = link count; ``ntfs_fuse_filler`` hides
records below ``FILE_first_user`` = 16); see ondisk.py for the structures.
"""

from __future__ import annotations

import io
import stat
import struct
import threading
import time

import pyfsntfs

from pvfs.errors import FormatError, UnreadableError
from pvfs.guestfs import FilesystemInfo, GuestFilesystem
from pvfs.nodes import Dir, File, Special, Symlink, Timestamp
from pvfs.source import BAD_ZERO, BytesSource, ExtentSource, MissingSource, Source

from . import ondisk as D

LAYER = "ntfs"
ROOT_RECORD = 5
EXTEND_RECORD = 11
FIRST_USER_RECORD = 16  # ntfs-3g's FILE_first_user: records below are metafiles
MREF_MASK = (1 << 48) - 1
EXTENT_SPARSE = 1
EXTENT_COMPRESSED = 2
MAX_ENTRIES_PER_DIR = 1_000_000
MAX_XATTR_VALUE = 65536  # Linux's XATTR_SIZE_MAX: larger streams are not shown as xattrs
MAX_INTERIX = 4096 + 8  # PATH_MAX UTF-16 characters and the magic
MAX_PATH_DEPTH = 512
SCAN_BUDGET_S = 60.0
#: Sparse files may be larger than the volume (a 300 GB lastlog on a 20 GB disk), but not
#: this large: a bigger size is a garbage record, not a file.
MAX_FILE_SIZE = 1 << 50
MAX_BITMAP_READ = 16 << 20

DIR_MODE = 0o555
FILE_MODE = 0o444


class VolumeFile(io.RawIOBase):
    """The file-like object libfsntfs reads: ``volume.source`` with a cursor.

    Used only under the filesystem's lock, so one cursor is enough.  The last
    :class:`UnreadableError` is kept, because the library turns it into a
    plain ``OSError`` whose ranges are lost.
    """

    def __init__(self, source: Source):
        super().__init__()
        self.source = source
        self.pos = 0
        self.last_error: UnreadableError | None = None

    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, offset, whence=io.SEEK_SET):
        if whence == io.SEEK_SET:
            self.pos = offset
        elif whence == io.SEEK_CUR:
            self.pos += offset
        else:
            self.pos = self.source.size + offset
        return self.pos

    def tell(self):
        return self.pos

    def get_size(self):
        return self.source.size

    def read(self, size=-1):
        if size is None or size < 0:
            size = self.source.size - self.pos
        try:
            data = self.source.read(self.pos, size)
        except UnreadableError as e:
            self.last_error = e
            raise
        self.pos += len(data)
        return data


class OverlaySource(Source):
    """``base`` with a few byte ranges served from memory and never read below
    (a broken ``$MFT`` record or boot sector that may also be unreadable)."""

    def __init__(self, base: Source, patches: dict[int, bytes]):
        super().__init__()
        self.base = base
        self.size = base.size
        self.label = base.label
        self.has_unreadable = base.has_unreadable
        self.patches = sorted(patches.items())

    def _read(self, offset, length):
        out = []
        pos, end = offset, offset + length
        for p_off, blob in self.patches:
            p_end = p_off + len(blob)
            if p_end <= pos or p_off >= end:
                continue
            if p_off > pos:
                out.append(self.base.read(pos, p_off - pos))
                pos = p_off
            hi = min(p_end, end)
            out.append(blob[pos - p_off:hi - p_off])
            pos = hi
        if pos < end:
            out.append(self.base.read(pos, end - pos))
        return b"".join(out)

    def _block_status(self, offset, length):
        return self.base.block_status(offset, length)


class RunListSource(ExtentSource):
    """Uncompressed non-resident data: the run list mapped onto the volume.
    ``allocated_bytes`` is the clusters the runs allocate (ntfs-3g's st_blocks), known
    without I/O."""

    cheap_allocation = True

    def __init__(self, size, extents, label, allocated: int):
        super().__init__(size, extents, label=label)
        self.allocated = allocated

    def allocated_bytes(self) -> int:
        return self.allocated


class ResidentSource(BytesSource):
    """Data stored inside the MFT record (small files): in memory, so its allocation is
    known without I/O and the mount answers ``stat`` inline."""

    cheap_allocation = True


class LibrarySource(Source):
    """A data stream read through the library (LZNT1-compressed or resident data).

    A failure inside the library becomes :class:`UnreadableError` (or zeros with
    ``--bad zero``); its ranges are the file's own when the source below said
    nothing more precise."""

    cheap_allocation = True

    def __init__(self, fs: NtfsFilesystem, record: int, size: int, label: str,
                 stream: str | None = None, allocated: int | None = None):
        super().__init__()
        self.allocated = size if allocated is None else allocated
        self.fs = fs
        self.record = record
        self.stream = stream
        self.size = size
        self.label = label
        self._entry = None

    def _read(self, offset, length):
        fs = self.fs
        with fs.lock:
            try:
                if self._entry is None:
                    e = fs.volume.get_file_entry(self.record)
                    if self.stream is not None:
                        e = e.get_alternate_data_stream_by_name(self.stream)
                    self._entry = e
                fs.file.last_error = None
                data = self._entry.read_buffer_at_offset(length, offset)
            except Exception as e:
                if fs.bad == BAD_ZERO:
                    return bytes(length)
                raise UnreadableError(f"{self.label}: cannot read {length} bytes at {offset:#x}: "
                                      f"{_short(e)}", [(offset, length)]) from None
        if len(data) != length:
            if fs.bad == BAD_ZERO:
                return data + bytes(length - len(data))
            raise UnreadableError(f"{self.label}: short read at {offset:#x}",
                                  [(offset + len(data), length - len(data))])
        return data

    def allocated_bytes(self) -> int:
        """The clusters the compressed runs take (ntfs-3g's st_blocks), without I/O."""
        return self.allocated


def _short(e: Exception) -> str:
    """libyal's messages repeat the call chain; keep the last, most specific line."""
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    return lines[-1] if lines else type(e).__name__


def _index_reference(child) -> int:
    """The MFT record a directory entry points to, from the index entry ($I30) when
    there is one: the record's own copy is gone when the record is zeroed."""
    try:
        if child.has_i30_entry():
            return child.get_i30_file_reference() & MREF_MASK
    except Exception:
        pass
    return child.file_reference & MREF_MASK


def _ts(ft: int | None) -> Timestamp | None:
    if ft is None:
        return None
    return Timestamp.from_ns(D.filetime_ns(ft))


class NtfsFilesystem(GuestFilesystem):
    def __init__(self, volume, ctx, boot: D.Boot, source: Source, notes: list[str]):
        self.pvfs_volume = volume
        self.ctx = ctx
        self.report = ctx.report
        self.bad = ctx.bad()
        self.where = volume.path
        self.boot = boot
        self.source = source  # volume.source, or an overlay with the mirror's records
        self.lock = threading.RLock()
        self.file = VolumeFile(source)
        self.volume = pyfsntfs.volume()
        try:
            self.volume.open_file_object(self.file)
        except Exception as e:
            raise FormatError(f"libfsntfs cannot open the volume: {_short(e)}") from None
        self.nodes: dict[int, object] = {}  # MFT record -> node (hard links are one node)
        self.bad_records: set[int] = set()  # one damage entry per bad record, not per name
        self._placed_dirs: set[int] = set()  # directories already shown somewhere
        self._parent_map: dict[int, list[tuple[str, int]]] | None = None
        self._mft_extents = self._extents_of(0)
        self.info = FilesystemInfo("ntfs", size=boot.size, uuid=f"{boot.serial:016X}",
                                   notes=notes)
        self._fill_info()

    # -- volume-wide facts -------------------------------------------------------
    def _fill_info(self):
        info = self.info
        with self.lock:
            try:
                info.label = self.volume.name or None
            except Exception:
                pass
            dirty = None
            try:
                e = self.volume.get_file_entry(3)
                for a in e.attributes:
                    if a.attribute_type == D.AT_VOLUME_INFORMATION:
                        dirty = bool(a.flags & D.VOLUME_IS_DIRTY)
            except Exception as e:
                self.report.add("warning", LAYER, self.where, "volume-info",
                                f"$Volume information unreadable: {_short(e)}")
            log_clean = None
            try:
                e = self.volume.get_file_entry(2)
                log_clean = D.logfile_clean(e.read_buffer_at_offset(4096, 0))
            except Exception as e:
                self.report.add("warning", LAYER, self.where, "logfile",
                                f"$LogFile restart page unreadable: {_short(e)}")
            info.used = self._used_bytes()
        if dirty:
            info.notes.append("volume dirty flag set in $Volume (not cleanly unmounted, "
                              "or chkdsk requested)")
        if log_clean is False:
            info.journal = "dirty $LogFile not replayed: showing the state before its " \
                           "last transactions"
            self.report.add("warning", LAYER, self.where, "log-not-replayed",
                            "the $LogFile holds transactions that were not checkpointed; "
                            "pvfs does not replay it (files changed last may be stale)")
        elif log_clean:
            info.journal = "clean $LogFile"
        info.clean = None if dirty is None and log_clean is None else \
            not dirty and log_clean is not False

    def _used_bytes(self):
        """Set bits of ``$Bitmap`` times the cluster size.  NTFS keeps no free-cluster
        count, so this reads the bitmap: at most 16 MiB (512 GiB at 4 KiB clusters) at
        open; larger volumes report ``used`` as unknown."""
        try:
            e = self.volume.get_file_entry(6)
            size = e.size
            if size > MAX_BITMAP_READ:
                self.info.notes.append("used space not counted: $Bitmap larger than "
                                       f"{MAX_BITMAP_READ >> 20} MiB")
                return None
            used, pos = 0, 0
            while pos < size:
                chunk = e.read_buffer_at_offset(min(1 << 20, size - pos), pos)
                if not chunk:
                    break
                used += int.from_bytes(chunk, "little").bit_count()
                pos += len(chunk)
            return used * self.boot.cluster_size
        except Exception:
            return None

    def _extents_of(self, record):
        """``[(file_offset, length, volume_offset or None, flags)]`` of a record's
        unnamed ``$DATA``."""
        out, pos = [], 0
        try:
            e = self.volume.get_file_entry(record)
            for i in range(e.number_of_extents):
                off, ln, flags = e.get_extent(i)
                out.append((pos, ln, None if flags & EXTENT_SPARSE else off, flags))
                pos += ln
        except Exception:
            return []
        return out

    def mft_record_offset(self, record: int) -> int | None:
        """Volume offset of MFT record ``record`` (through ``$MFT``'s own run list)."""
        fo = record * self.boot.mft_record_size
        for pos, ln, off, _f in self._mft_extents:
            if pos <= fo < pos + ln and off is not None:
                return off + fo - pos
        return None

    # -- the tree ------------------------------------------------------------------
    def root(self) -> Dir:
        with self.lock:
            try:
                r = self.volume.get_file_entry(ROOT_RECORD)
                t = self._times(r)
            except Exception as e:
                self.report.add("error", LAYER, self.where, "bad-root",
                                f"root directory (MFT record 5): {_short(e)}")
                t = {}
        root = Dir(mode=DIR_MODE, loader=lambda d: self._load_dir(d, ROOT_RECORD, "", 0), **t)
        self.nodes[ROOT_RECORD] = root
        root.add(".lost+found", Dir(mode=0o500, loader=self._load_lost))
        return root

    @staticmethod
    def _times(e):
        return {"mtime": _ts(e.get_modification_time_as_integer()),
                "atime": _ts(e.get_access_time_as_integer()),
                "ctime": _ts(e.get_entry_modification_time_as_integer())}

    def tree_path(self, path: str) -> str:
        """Where an entry is shown in the mount (the volume's path before placement)."""
        places = self.pvfs_volume.files_paths
        base = places[0] if places else f"{self.where}:"
        return f"{base}/{path}" if path else base

    def _damage(self, severity, code, message, path="", ranges=()):
        """One damage entry about the entry at ``path`` (relative to the root)."""
        self.report.add(severity, LAYER, self.tree_path(path), code, message, ranges)

    def _load_dir(self, d: Dir, record: int, path: str, depth: int):
        listed: set[int] = set()
        failed, whole = self._list_index(d, record, path, depth, listed)
        if whole is not None:  # the directory's own record or index root is gone
            found = self._recover_entries(d, record, path, depth, listed)
            # the entries come back from the in-use records that name this directory as
            # their parent: listed, but a record reused since cannot be told (degraded)
            self._damage("warning", "bad-directory-index", f"{whole}; {found} entries found "
                         "through their records' $FILE_NAME parent references", path,
                         self._last_ranges(record))
        elif failed:
            found = self._recover_entries(d, record, path, depth, listed)
            if found < len(failed):  # not all of them came back: say what was lost
                for msg, ranges in failed:
                    self._damage("error", "bad-entry", msg, path, ranges)

    def _recover_entries(self, d: Dir, record: int, path: str, depth: int, listed: set):
        """A directory whose index could not be read in full: its entries are found by
        the ``$FILE_NAME`` parent references of every in-use record (one MFT scan per
        volume, bounded), and shown under their own names."""
        found = 0
        for name, rec in self._parents().get(record, ()):
            if rec in listed or rec in self.bad_records:
                continue
            cpath = f"{path}/{name}" if path else name
            node = self.nodes.get(rec)
            if node is None:
                with self.lock:
                    try:
                        node = self._build(self.volume.get_file_entry(rec), rec, cpath,
                                           depth + 1)
                    except Exception:
                        node = self._synthetic(rec, cpath, depth + 1)
                if node is None:
                    self.bad_records.add(rec)
                    continue
                self.nodes[rec] = node
            elif isinstance(node, Dir) and rec in self._placed_dirs:
                continue
            listed.add(rec)
            if isinstance(node, Dir):
                self._placed_dirs.add(rec)
            d.add(name, node, report=self.report, layer=LAYER, path_hint=path)
            found += 1
        if found:
            self.report.add("warning", LAYER, self.tree_path(path), "entries-recovered",
                            f"{found} entries of this directory (MFT record {record}) were "
                            "found through their records' $FILE_NAME parent references")
        return found

    def _synthetic(self, rec: int, path: str, depth: int):
        """A directory record the library cannot open (its index is damaged), built from
        the raw record: listed through the parent references of its children."""
        try:
            raw = self._raw_record(rec)
            hdr = D.parse(D.MftRecordHeader, raw, what="MFT record header")
            si = None
            for atype, _n, v in D.resident_attributes(raw):
                if atype == D.AT_STANDARD_INFORMATION and v is not None and len(v) >= 32:
                    si = struct.unpack_from("<QQQQ", v, 0)
        except Exception as e:  # hostile bytes: one damage entry, never a traceback
            self._damage("error", "bad-record", f"MFT record {rec}: {e}", path,
                         getattr(e, "ranges", ()))
            return None
        if not hdr.flags & 1 or not hdr.flags & 2 or si is None:
            self._damage("error", "bad-record", f"MFT record {rec} cannot be opened and is "
                         "not an in-use directory", path)
            return None
        self._damage("warning", "bad-directory-index", f"the index of directory MFT record "
                     f"{rec} is unreadable; its entries are listed from their records' "
                     "$FILE_NAME parent references", path, self._last_ranges())
        node = Dir(mode=DIR_MODE, mtime=_ts(si[1]), ctime=_ts(si[2]), atime=_ts(si[3]),
                   loader=lambda d: self._recover_entries(d, rec, path, depth, set()))
        return node

    def _parents(self) -> dict[int, list[tuple[str, int]]]:
        """``{parent record: [(name, record)]}`` from every in-use base record's
        ``$FILE_NAME`` attributes (DOS-only names left out); built once, bounded."""
        if self._parent_map is not None:
            return self._parent_map
        out: dict[int, list[tuple[str, int]]] = {}
        deadline = time.monotonic() + SCAN_BUDGET_S
        with self.lock:
            try:
                total = self.volume.number_of_file_entries
            except Exception:
                total = 0
        for rec in range(FIRST_USER_RECORD, total):
            if time.monotonic() > deadline:
                self._damage("warning", "scan-incomplete", f"MFT scan for parent references "
                             f"stopped at record {rec} of {total} (time budget)")
                break
            names = []
            with self.lock:
                try:
                    e = self.volume.get_file_entry(rec)
                    if not e.is_allocated() or e.base_record_file_reference & MREF_MASK:
                        continue
                    for a in e.attributes:
                        if a.attribute_type == D.AT_FILE_NAME and a.name_space != 2:
                            names.append((a.parent_file_reference & MREF_MASK, a.name))
                except Exception:
                    names = self._raw_names(rec)
            for parent, name in names:
                out.setdefault(parent, []).append((name, rec))
        self._parent_map = out
        return out

    def _raw_names(self, rec: int):
        """``[(parent, name)]`` of an in-use base record, parsed without the library."""
        try:
            raw = self._raw_record(rec)
            hdr = D.parse(D.MftRecordHeader, raw, what="MFT record header")
            if not hdr.flags & 1 or hdr.base_mft_record & MREF_MASK:
                return []
            out = []
            for atype, _n, v in D.resident_attributes(raw):
                if atype == D.AT_FILE_NAME and v is not None:
                    fn = D.file_name(v)
                    if fn is not None and fn[2] != 2:
                        out.append((fn[0], fn[1]))
            return out
        except Exception:  # an unreadable or hostile record names nothing
            return []

    def _list_index(self, d: Dir, record: int, path: str, depth: int, listed: set):
        """The entries of a directory's index.  Returns ``([(message, ranges)] of the
        entries that could not be read, message when the whole index is unreadable)``;
        the caller reports them unless the entries are recovered."""
        failed = []
        with self.lock:
            try:
                parent = self.volume.get_file_entry(record)
                if not parent.is_allocated() or not parent.has_directory_entries_index():
                    return [], f"directory MFT record {record} has no index (zeroed or " \
                               "overwritten?)"
                n = parent.number_of_sub_file_entries
            except Exception as e:
                return [], f"directory MFT record {record} cannot be listed: {_short(e)}"
            if n > MAX_ENTRIES_PER_DIR:
                self._damage("error", "directory-too-large", f"{n} entries; only the first "
                             f"{MAX_ENTRIES_PER_DIR} are listed", path)
                n = MAX_ENTRIES_PER_DIR
            for i in range(n):
                try:
                    child = parent.get_sub_file_entry(i)
                    name = child.name
                    rec = _index_reference(child)
                except Exception as e:
                    failed.append((f"entry {i} of directory (MFT record {record}): "
                                   f"{_short(e)}", self._last_ranges()))
                    continue
                listed.add(rec)
                if rec < FIRST_USER_RECORD:
                    continue  # metafiles ($MFT, $Extend ...) are hidden as ntfs-3g does
                if rec in self.bad_records:
                    continue  # reported once, under the first name it was met by
                if not name:  # libfsntfs takes the name from the record, not the index
                    self.bad_records.add(rec)
                    try:
                        child.is_allocated()
                        why = "has no name"
                    except Exception as e:
                        why = _short(e)
                    self._damage("error", "bad-record", f"entry {i} of this directory: MFT "
                                 f"record {rec}: {why}", path, self._last_ranges(rec))
                    continue
                cpath = f"{path}/{name}" if path else name
                node = self.nodes.get(rec)
                if node is None:
                    try:
                        node = self._build(child, rec, cpath, depth + 1)
                    except Exception as e:
                        self.bad_records.add(rec)
                        self._damage("error", "bad-record", f"MFT record {rec}: {_short(e)}",
                                     cpath, self._last_ranges(rec))
                        continue
                    self.nodes[rec] = node
                elif isinstance(node, Dir):
                    self._damage("error", "directory-loop", f"directory (MFT record {rec}) "
                                 f"is listed a second time (in record {record}); skipped", cpath)
                    continue
                if isinstance(node, Dir):
                    self._placed_dirs.add(rec)
                d.add(name, node, report=self.report, layer=LAYER, path_hint=path)
        return failed, None

    def _last_ranges(self, record=None):
        err = self.file.last_error
        self.file.last_error = None
        if err is not None:
            return err.ranges
        if record is not None:
            off = self.mft_record_offset(record)
            if off is not None:
                return [(off, self.boot.mft_record_size)]
        return []

    def _raw_record(self, rec: int) -> bytes:
        off = self.mft_record_offset(rec)
        if off is None:
            raise FormatError(f"MFT record {rec} lies outside $MFT's run list")
        raw = self.source.read(off, self.boot.mft_record_size)
        return D.check_mft_record(raw, self.boot.bytes_per_sector)

    def _build(self, e, rec: int, path: str, depth: int):
        """The node of one file entry (called under the lock)."""
        if not e.is_allocated():
            raise FormatError("record is not in use")
        flags = e.file_attribute_flags or 0
        times = self._times(e)
        if times["mtime"] is None:  # libfsntfs lists a zeroed record with no metadata
            raise FormatError("record has no $STANDARD_INFORMATION (zeroed or overwritten?)")
        # ntfs-3g reports the record's link count, which counts a DOS 8.3 name too
        nlink = sum(1 for a in e.attributes if a.attribute_type == D.AT_FILE_NAME)
        if flags & D.FILE_ATTRIBUTE_REPARSE_POINT:
            node = self._reparse_node(rec, path, depth - 1, times)
            if node is not None:
                node.nlink = max(1, nlink)
                return node
        if e.has_directory_entries_index():
            node = Dir(mode=DIR_MODE, loader=lambda d: self._load_dir(d, rec, path, depth),
                       **times)
            node.nlink = 1
            self._xattrs(e, rec, path, node)
            return node
        size = e.size if e.has_default_data_stream() else 0
        if size > MAX_FILE_SIZE:
            raise FormatError(f"file size {size} is beyond any real NTFS file (garbage record?)")
        if flags & D.FILE_ATTRIBUTE_SYSTEM:
            special = self._interix(e, size, times)
            if special is not None:
                special.nlink = max(1, nlink)
                return special
        node = File(self._data_source(e, rec, path, size, flags), mode=FILE_MODE, **times)
        node.nlink = max(1, nlink)
        self._xattrs(e, rec, path, node)
        return node

    def _reparse_node(self, rec, path, depth, times):
        value = None
        try:
            for atype, _name, v in D.resident_attributes(self._raw_record(rec)):
                if atype == D.AT_REPARSE_POINT:
                    value = v
            rp = D.parse_reparse(value)
        except (FormatError, UnreadableError) as ex:
            self._damage("error", "bad-reparse-point", f"MFT record {rec}: {ex}", path)
            return None
        if rp is None:
            return None  # another tag (dedup, cloud files ...): shown as the file it is
        return Symlink(D.reparse_target(rp, depth), **times)

    def _interix(self, e, size, times):
        """ntfs-3g's special files: SYSTEM files of size 0 (fifo), 1 (socket) or with an
        Interix header."""
        if size == 0:
            return Special(stat.S_IFIFO | FILE_MODE, **times)
        if size == 1:
            return Special(stat.S_IFSOCK | FILE_MODE, **times)
        if size > MAX_INTERIX:
            return None
        data = e.read_buffer_at_offset(size, 0)
        kind = D.interix(data)
        if kind is None:
            return None
        if kind[0] == "lnk":
            return Symlink(kind[1], **times)
        major, minor = kind[1]
        rdev = ((major & 0xFFF) << 8) | (minor & 0xFF) | ((minor & ~0xFF) << 12) | \
            ((major & ~0xFFF) << 32)
        mode = stat.S_IFCHR if kind[0] == "chr" else stat.S_IFBLK
        return Special(mode | FILE_MODE, rdev=rdev, **times)

    def _data_attribute(self, e):
        for a in e.attributes:
            if a.attribute_type == D.AT_DATA and not a.attribute_name:
                return a
        return None

    def _data_source(self, e, rec, path, size, flags) -> Source:
        label = f"ntfs:/{path}"
        if size == 0:
            return ResidentSource(b"", label=label)
        if flags & D.FILE_ATTRIBUTE_ENCRYPTED:
            self.report.add("info", LAYER, self.tree_path(path), "encrypted",
                            "EFS-encrypted file: its data cannot be decrypted here")
            return MissingSource(size, "EFS-encrypted data", bad=self.bad, label=label)
        n = e.number_of_extents
        if n == 0:  # resident: at most one MFT record of data
            if size > self.boot.mft_record_size:
                raise FormatError(f"resident data of {size} bytes in a "
                                  f"{self.boot.mft_record_size}-byte record")
            return ResidentSource(e.read_buffer_at_offset(size, 0), label=label)
        extents, pos, allocated = [], 0, 0
        compressed = bool(flags & D.FILE_ATTRIBUTE_COMPRESSED)
        for i in range(n):
            off, ln, eflags = e.get_extent(i)
            compressed = compressed or bool(eflags & EXTENT_COMPRESSED)
            if not eflags & EXTENT_SPARSE:
                allocated += ln
            extents.append((pos, ln, None if eflags & EXTENT_SPARSE else off))
            pos += ln
        if compressed:
            return LibrarySource(self, rec, size, label, allocated=allocated)
        a = self._data_attribute(e)
        valid = size
        if a is not None:
            try:
                valid = min(size, a.valid_data_size)
            except Exception:
                pass
        vsize = self.source.size
        out = []
        for fpos, ln, off in extents:
            ln = min(ln, valid - fpos)
            if ln <= 0 or off is None:
                continue
            if off < 0 or off + ln > vsize:
                self._damage("error", "bad-data-run", f"MFT record {rec}: a data run "
                             f"[{off:#x}+{ln:#x}] lies outside the volume", path)
                out.append((fpos, ln, MissingSource(ln, "data run outside the volume",
                                                    bad=self.bad, label=label), 0))
                continue
            out.append((fpos, ln, self.source, off))
        return RunListSource(size, out, label, allocated)

    def _xattrs(self, e, rec, path, node):
        """Named ``$DATA`` streams as ``user.<stream>``, as ntfs-3g's
        ``streams_interface=xattr`` (its default) shows them."""
        try:
            n = e.number_of_alternate_data_streams
        except Exception:
            return
        for i in range(n):
            try:
                s = e.get_alternate_data_stream(i)
                name = s.name
                size = s.size
                if size > MAX_XATTR_VALUE:
                    self.report.add("info", LAYER, self.tree_path(path), "stream-too-big",
                                    f"stream {name!r} has {size} bytes, more than an xattr "
                                    "can hold; not shown")
                    continue
                value = s.read_buffer_at_offset(size, 0) if size else b""
            except Exception as ex:
                self._damage("error", "bad-stream", f"MFT record {rec}: alternate data stream "
                             f"{i}: {_short(ex)}", path, self._last_ranges())
                continue
            node.xattrs[b"user." + name.encode("utf-8", "surrogateescape")] = value

    # -- lost records ------------------------------------------------------------------
    def _reached(self, deadline):
        """MFT records that some directory index lists (root and ``$Extend`` trees).
        The lock is taken per directory, so reads go on while this runs."""
        seen = {ROOT_RECORD, EXTEND_RECORD}
        todo = [ROOT_RECORD, EXTEND_RECORD]
        while todo and time.monotonic() < deadline:
            rec = todo.pop()
            found, failed = [], False
            with self.lock:
                try:
                    d = self.volume.get_file_entry(rec)
                    if not d.has_directory_entries_index():
                        continue
                    n = min(d.number_of_sub_file_entries, MAX_ENTRIES_PER_DIR)
                except Exception:
                    d, n, failed = None, 0, True
                for i in range(n):
                    try:
                        found.append(_index_reference(d.get_sub_file_entry(i)))
                    except Exception:
                        failed = True
            if failed:  # what _load_dir recovers through parent references is reached too
                found.extend(r for _name, r in self._parents().get(rec, ()))
            for r in found:
                if r not in seen:
                    seen.add(r)
                    todo.append(r)
        return seen

    def _parent_of(self, e):
        for a in e.attributes:
            if a.attribute_type == D.AT_FILE_NAME:
                return a.parent_file_reference & MREF_MASK
        return None

    def _load_lost(self, d: Dir):
        """In-use base records that no index reaches, by record number (a lost
        directory brings its subtree).  Bounded by SCAN_BUDGET_S."""
        deadline = time.monotonic() + SCAN_BUDGET_S
        reached = self._reached(deadline)
        with self.lock:
            try:
                total = self.volume.number_of_file_entries
            except Exception:
                return
        lost = {}
        for rec in range(FIRST_USER_RECORD, total):
            if rec in reached:
                continue
            if time.monotonic() > deadline:
                self._damage("warning", "scan-incomplete", f"MFT scan stopped at record {rec} "
                             f"of {total} (time budget)", ".lost+found")
                break
            with self.lock:
                try:
                    e = self.volume.get_file_entry(rec)
                    if not e.is_allocated() or e.base_record_file_reference & MREF_MASK:
                        continue
                    if e.get_modification_time_as_integer() is None:
                        continue  # not a usable record
                    lost[rec] = self._parent_of(e)
                except Exception:
                    continue
        shown = 0
        for rec, parent in sorted(lost.items()):
            if parent in lost:
                continue  # shown inside its lost parent directory
            path = f".lost+found/{rec}"
            with self.lock:
                try:
                    node = self.nodes.get(rec) or \
                        self._build(self.volume.get_file_entry(rec), rec, path, 2)
                except Exception as ex:
                    self._damage("error", "bad-record", f"MFT record {rec}: {_short(ex)}", path)
                    continue
            self.nodes[rec] = node
            d.add(str(rec), node)
            shown += 1
        if shown:
            self.report.add("warning", LAYER, self.tree_path(".lost+found"), "lost-records",
                            f"{shown} in-use MFT records that no directory lists are shown "
                            "here by record number")

    # -- damage mapping -------------------------------------------------------------
    def _path_of(self, rec: int, cache: dict) -> str:
        parts = []
        cur = rec
        for _ in range(MAX_PATH_DEPTH):
            if cur == ROOT_RECORD:
                break
            if cur in cache:
                parts.append(cache[cur])
                break
            try:
                e = self.volume.get_file_entry(cur)
                name, parent = None, None
                for a in e.attributes:
                    if a.attribute_type == D.AT_FILE_NAME and a.name_space != 2:
                        name, parent = a.name, a.parent_file_reference & MREF_MASK
                        break
            except Exception:
                name, parent = None, None
            if name is None:
                parts.append(f".lost+found/{cur}")
                break
            parts.append(name)
            cur = parent
        path = "/".join(reversed(parts))
        cache[rec] = path
        return path

    def files_in_ranges(self, ranges, limit=50):
        ranges = sorted((o, o + n) for o, n in ranges)

        def hits(off, ln):
            return any(lo < off + ln and off < hi for lo, hi in ranges)

        names, total, cache = [], 0, {}
        deadline = time.monotonic() + SCAN_BUDGET_S
        rsize = self.boot.mft_record_size
        with self.lock:
            try:
                count = self.volume.number_of_file_entries
            except Exception:
                return [], 0
            for rec in range(FIRST_USER_RECORD, count):
                if time.monotonic() > deadline:
                    self._damage("warning", "damage-map-incomplete", f"the MFT scan that maps "
                                 f"unreadable bytes to files stopped at record {rec} of {count} "
                                 "(time budget); more files may be damaged than the report "
                                 "names")
                    break
                roff = self.mft_record_offset(rec)
                record_hit = roff is not None and hits(roff, rsize)
                hit = False
                try:
                    e = self.volume.get_file_entry(rec)
                    if not e.is_allocated():
                        continue
                    base = e.base_record_file_reference & MREF_MASK
                    if base:  # an extension record: its damage is its base record's
                        if not record_hit:
                            continue
                        rec = base
                    hit = record_hit
                    for i in range(0 if hit else e.number_of_extents):
                        off, ln, fl = e.get_extent(i)
                        if not fl & EXTENT_SPARSE and hits(off, ln):
                            hit = True
                            break
                except Exception:
                    hit = record_hit  # an unreadable record on a bad range: name its number
                    if hit:
                        total += 1
                        if len(names) < limit:
                            names.append(f"$MFT record {rec}")
                    continue
                if hit:
                    total += 1
                    if len(names) < limit:
                        names.append(self._path_of(rec, cache))
        return names, total
