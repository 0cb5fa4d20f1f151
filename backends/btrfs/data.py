"""File data: logical addresses read through the chunk map, checked against the csum tree.

``LogicalSource`` is the filesystem's logical address space over the volume's
source (so bad sectors below read as EIO in exactly the files on them).  Data
sectors are checked against the csum tree (``EXTENT_CSUM`` items keyed by
logical address, one checksum per sector, covering the bytes as written, so
compressed extents are checked before they are decompressed).  A sector that
fails its checksum or cannot be read is taken from another copy (DUP and the
RAID1 family); when none is good it raises :class:`UnreadableError` (or reads
zeros with ``--bad zero``) and is reported once, naming the file.  Files
marked NODATASUM (``chattr +C``) and preallocated extents have no checksums.

A file is an :class:`pvfs.source.ExtentSource` built on first use from its
``EXTENT_DATA`` items: regular extents point into a per-file view of the
logical source, inline extents are bytes from the leaf, compressed extents are
:class:`CompressedExtent` sources, holes and preallocated extents are left out
(they read as zeros, status ``unmapped``).

References: Linux ``fs/btrfs/file-item.c`` (``btrfs_lookup_csums_bio``: csum item
layout), ``fs/btrfs/inode.c`` (``btrfs_get_extent``, ``uncompress_inline``,
``btrfs_check_read_bio``), ``fs/btrfs/bio.c`` (repair from another mirror),
``fs/btrfs/compression.c``.
"""

from __future__ import annotations

import threading

from pvfs.cache import METADATA_CACHE
from pvfs.errors import UnreadableError
from pvfs.source import DATA, UNREADABLE, ExtentSource, Source

from . import structs as S
from .compress import DecompressError, decompress, name as compression_name
from .tree import items, last_at_or_before
from .volume import BtrfsError

CSUM_KEY_TYPE = S.EXTENT_CSUM_KEY
MAX_REPORTS_PER_FILE = 16  # data-unreadable entries for one file (a missing device: every read)


class LogicalSource(Source):
    """The logical address space of one filesystem (reads through the chunk map)."""

    def __init__(self, dev, csum_root, bad="eio", report=None):
        super().__init__()
        self.dev = dev
        self.csum_root = csum_root  # TreeRoot of the csum tree, or None
        self.bad = bad
        self.size = dev.chunks.logical_end
        self.label = "btrfs logical"
        self.report = report or (lambda *a, **k: None)
        self.ss = dev.sectorsize
        self.csize = dev.csum.size
        self._csum_warned = False
        self._last_run = None  # (start, end, csum item) that covered the last read
        self._fail_counts: dict[str, int] = {}  # data-unreadable entries per file
        self._fail_lock = threading.Lock()

    @property
    def has_unreadable(self) -> bool:
        """Asked late: the core marks volumes above damage after the filesystem opened."""
        return bool(getattr(self.dev.source, "has_unreadable", False))

    # -- checksums ---------------------------------------------------------------------
    def csums(self, a: int, b: int, path: str):
        """Expected checksums of the sectors in ``[a, b)`` (sector aligned), packed as in
        an ``EXTENT_CSUM`` item, and which sectors have one: ``(want, have)`` where
        ``have`` is None when every sector has a checksum, else a list of booleans."""
        ss, cs = self.ss, self.csize
        n = (b - a) // ss
        want = bytearray(n * cs)
        have = [False] * n
        runs = []
        if self.csum_root is not None:
            hit = self._last_run
            if hit is not None and hit[0] <= a and b <= hit[1]:
                runs = [hit[2]]
            else:
                try:
                    key = (S.EXTENT_CSUM_OBJECTID, CSUM_KEY_TYPE, a)
                    found = last_at_or_before(self.dev, self.csum_root, key)
                    runs = [found] if found is not None else []
                    if b - 1 > a:
                        runs.extend(items(self.dev, self.csum_root,
                                          (S.EXTENT_CSUM_OBJECTID, CSUM_KEY_TYPE, a + 1),
                                          (S.EXTENT_CSUM_OBJECTID, CSUM_KEY_TYPE, b - 1)))
                except BtrfsError as e:
                    if not self._csum_warned:
                        self._csum_warned = True
                        self.report("warning", "csum-tree-unreadable",
                                    f"data checksums cannot be read ({e}); data is served "
                                    f"unchecked", relpath=path)
                    runs = []
        for run in runs:
            (oid, ktype, start), data = run
            if oid != S.EXTENT_CSUM_OBJECTID or ktype != CSUM_KEY_TYPE:
                continue
            end = start + len(data) // cs * ss
            lo, hi = max(a, start), min(b, end)
            if lo >= hi:
                continue
            if start <= a and b <= end:
                self._last_run = (start, end, run)  # the next read is likely in it too
            i, j = (lo - a) // ss, (hi - a) // ss
            k = (lo - start) // ss
            want[i * cs:j * cs] = data[k * cs:(k + j - i) * cs]
            have[i:j] = [True] * (j - i)
        return bytes(want), (None if all(have) else have)

    # -- reading -----------------------------------------------------------------------
    def _pieces(self, offset, length):
        """Split at chunk boundaries: (logical, n, copies) or (logical, n, error)."""
        end = offset + length
        pos = offset
        while pos < end:
            ch = self.dev.chunks.lookup(pos)
            if ch is None:
                # up to the next chunk, or the end
                nxt = end
                for c in self.dev.chunks.chunks:
                    if c.start > pos:
                        nxt = min(end, c.start)
                        break
                yield pos, nxt - pos, BtrfsError(f"logical {pos:#x} is in no chunk")
                pos = nxt
                continue
            n = min(end, ch.end) - pos
            try:
                _ch, copies = self.dev.chunks.map(pos, n)
                yield pos, n, copies
            except BtrfsError as e:
                yield pos, n, e
            pos += n

    def _read(self, offset, length):
        return self.read_checked(offset, length, verify=True, path="")

    def read_checked(self, offset, length, verify: bool, path: str) -> bytes:
        parts = []
        for pos, n, copies in self._pieces(offset, length):
            if isinstance(copies, Exception):
                parts.append(self._fail(pos, n, str(copies), path, []))
                continue
            if verify:
                parts.append(self._read_verified(pos, n, copies, path))
            else:
                parts.append(self._read_plain(pos, n, copies, path))
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _read_plain(self, pos, n, copies, path):
        errors = []
        for phys in copies:
            try:
                return self.dev.read_phys(phys, n)
            except UnreadableError as e:
                errors.append(e)
        if len(copies) == 1:
            raise errors[0]
        # several copies, each with some bad sector: combine sector by sector
        return self._read_verified(pos, n, copies, path, checks=False)

    def _read_verified(self, pos, n, copies, path, checks=True):
        ss, cs = self.ss, self.csize
        a = pos - pos % ss
        b = -(-(pos + n) // ss) * ss
        nsec = (b - a) // ss
        if checks:
            want, have = self.csums(a, b, path)
        else:
            want, have = bytes(nsec * cs), [False] * nsec
        base = copies[0] - (pos - a)
        try:
            data = self.dev.read_phys(base, b - a)
            first_err = None
        except UnreadableError as e:
            data, first_err = None, e
        if data is not None:
            if have is not None and not any(have):
                return data if (a, b) == (pos, pos + n) else data[pos - a:pos - a + n]
            got = self.dev.csum.sectors(data, ss)
            if got == want:
                return data if (a, b) == (pos, pos + n) else data[pos - a:pos - a + n]
        fn = self.dev.csum.fn
        out = bytearray(data) if data is not None else bytearray(b - a)
        for i in range(nsec):
            rel = i * ss
            w = want[i * cs:(i + 1) * cs] if have is None or have[i] else None
            if data is not None and (w is None or got[i * cs:(i + 1) * cs] == w):
                continue
            good = None
            problems = ["copy 1 unreadable" if data is None else "copy 1 checksum mismatch"]
            for ci, phys0 in enumerate(copies[1:], start=2):
                phys = phys0 - (pos - a) + rel
                try:
                    sec = self.dev.read_phys(phys, ss)
                except UnreadableError:
                    problems.append(f"copy {ci} unreadable")
                    continue
                if w is None or fn(sec)[:cs] == w:
                    good = sec
                    break
                problems.append(f"copy {ci} checksum mismatch")
            if good is not None:
                self.report("info", "data-repaired",
                            f"data sector at logical {a + rel:#x} read from a mirror: "
                            f"{'; '.join(problems)}", ranges=[], relpath=path,
                            outcome="repaired")
                out[rel:rel + ss] = good
                continue
            if data is None and w is None and len(copies) == 1:
                raise first_err
            why = "; ".join(problems) if len(copies) > 1 else problems[0]
            phys_ranges = [(p - (pos - a) + rel, ss) for p in copies]
            out[rel:rel + ss] = self._fail(a + rel, ss, why, path, phys_ranges)
        return bytes(out[pos - a:pos - a + n])

    def _fail(self, logical, n, why, path, phys_ranges) -> bytes:
        with self._fail_lock:
            count = self._fail_counts.get(path, 0) + 1
            if count <= MAX_REPORTS_PER_FILE:
                self._fail_counts[path] = count
        if count <= MAX_REPORTS_PER_FILE:
            last = "; further unreadable ranges of this file are not reported one by one" \
                if count == MAX_REPORTS_PER_FILE else ""
            self.report("error", "data-unreadable",
                        f"{n} bytes at logical {logical:#x} cannot be read: {why}"
                        + ("; they read as zeros" if self.bad == "zero" else "") + last,
                        ranges=phys_ranges, key=("data", path, logical), relpath=path)
        if self.bad == "zero":
            return bytes(n)
        raise UnreadableError(f"btrfs: {path or 'data'}: logical {logical:#x}+{n:#x}: {why}",
                              [(logical, n)])

    def _block_status(self, offset, length):
        out = []
        src = self.dev.source
        for pos, n, copies in self._pieces(offset, length):
            if isinstance(copies, Exception):
                out.append((pos, n, UNREADABLE))
                continue
            for p, ln, st in src.status_of(copies[0], n):
                lo = pos + (p - copies[0])
                if st == UNREADABLE and len(copies) > 1:
                    ok = any(not any(s == UNREADABLE for _o, _l, s in
                                     src.status_of(c + (lo - pos), ln)) for c in copies[1:])
                    st = DATA if ok else UNREADABLE
                out.append((lo, ln, st))
        return out

    def view(self, path: str, verify: bool) -> FileView:
        return FileView(self, path, verify)


class FileView(Source):
    """The logical source as one file sees it: reads checked (or not: NODATASUM) and
    failures reported under the file's path."""

    def __init__(self, logical: LogicalSource, path: str, verify: bool):
        super().__init__()
        self.logical = logical
        self.path = path
        self.verify = verify
        self.size = logical.size
        self.label = f"btrfs:{path}"

    @property
    def has_unreadable(self) -> bool:
        return self.logical.has_unreadable

    def _read(self, offset, length):
        return self.logical.read_checked(offset, length, self.verify, self.path)

    def _block_status(self, offset, length):
        return self.logical._block_status(offset, length)


class CompressedExtent(Source):
    """The ``ram_bytes`` bytes of one compressed extent (decoded whole, cached)."""

    def __init__(self, view: FileView, disk_bytenr, disk_num_bytes, kind, ram_bytes,
                 sectorsize):
        super().__init__()
        self.view = view
        self.disk_bytenr = disk_bytenr
        self.disk_num_bytes = disk_num_bytes
        self.kind = kind
        self.size = ram_bytes
        self.sectorsize = sectorsize
        self.label = f"btrfs {compression_name(kind)} extent {disk_bytenr:#x}"

    @property
    def has_unreadable(self) -> bool:
        return self.view.has_unreadable

    def _decoded(self) -> bytes:
        ck = (self.view.logical.uid, "btrfs-z", self.disk_bytenr, self.disk_num_bytes,
              self.kind, self.size)
        got = METADATA_CACHE.get(ck)
        if got is not None:
            return got
        raw = self.view.read(self.disk_bytenr, self.disk_num_bytes)
        try:
            out = decompress(self.kind, raw, self.size, self.sectorsize)
        except DecompressError as e:  # raises EIO, or goes on with zeros (--bad zero)
            self.view.logical._fail(self.disk_bytenr, self.disk_num_bytes,
                                    f"{compression_name(self.kind)} extent does not decode: "
                                    f"{e}", self.view.path, [])
            return bytes(self.size)
        return METADATA_CACHE.put(ck, out)

    def _read(self, offset, length):
        return self._decoded()[offset:offset + length]

    def _block_status(self, offset, length):
        bad = self.view.logical.unreadable_ranges(self.disk_bytenr, self.disk_num_bytes)
        return [(offset, length, UNREADABLE if bad else DATA)]


class FileData(Source):
    """A regular file: its extents are read from the fs tree on first use
    (``fs._extents(sv, inode, relpath)``)."""

    cheap_allocation = True
    _init_lock = threading.Lock()  # guards the first extent load of any file (short)

    def __init__(self, size: int, nbytes: int, fs, sv, inode, relpath: str, sectorsize=4096):
        super().__init__()
        self.size = size
        self.nbytes = -(-nbytes // sectorsize) * sectorsize
        self._fs, self._sv, self._inode, self._rel = fs, sv, inode, relpath
        self._src = None

    @property
    def label(self):
        return f"btrfs:{self._rel}"

    @property
    def has_unreadable(self) -> bool:
        """The mount serves files of a damaged volume, and files where a bad sector was
        met, with direct I/O (no read-ahead into a bad range)."""
        logical = self._fs.logical
        return logical.has_unreadable or self._rel in logical._fail_counts

    def _source(self) -> Source:
        src = self._src
        if src is None:
            extents = self._fs._extents(self._sv, self._inode, self._rel)
            built = ExtentSource(self.size, extents, label=self.label)
            with self._init_lock:  # two threads may both load; the first one wins
                if self._src is None:
                    self._src = built
                src = self._src
        return src

    def _read(self, offset, length):
        return self._source().read(offset, length)

    def _block_status(self, offset, length):
        return self._source().block_status(offset, length)

    def allocated_bytes(self) -> int:
        """``st_blocks`` as the kernel reports it (``btrfs_getattr``): the inode's
        ``nbytes`` rounded up to whole sectors."""
        return self.nbytes
