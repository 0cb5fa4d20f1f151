"""exFAT, read-only.

# References:
- Microsoft, "exFAT file system specification" (2019): 3.1 (Main and Backup Boot Sector
  fields and their valid ranges), 3.4 (Boot Checksum: bytes 106, 107 and 112 left out),
  4.1 (FAT entries), 6.2-6.3 (entry types, the entry set and its SetChecksum), 7.1
  (Allocation Bitmap), 7.2 (Up-case Table, its compression and TableChecksum), 7.3 (Volume
  Label), 7.4 (File directory entry, timestamps: 7.4.8 10msIncrement, 7.4.10 UtcOffset),
  7.6 (Stream Extension: NoFatChain, ValidDataLength, DataLength, NameHash), 7.7 (File Name).
- torvalds/linux fs/exfat/dir.c (exfat_readdir: an unused entry ends the directory),
  fs/exfat/misc.c (exfat_get_entry_time: the UTC offset applied when OffsetValid is set,
  else the time is taken as UTC), fs/exfat/nls.c (upcase table decompression).
"""

from __future__ import annotations

import struct
from functools import partial

import numpy as np

from pvfs.errors import UnreadableError
from pvfs.guestfs import FilesystemInfo
from pvfs.nodes import Dir, File, Timestamp
from pvfs.structs import parse

from . import structs as S
from .chains import FatTable
from .common import (MAX_BAD_ENTRIES_REPORTED, ClusterFilesystem, FatError, data_source,
                     read_blocks, run_extents)
from .fat import DIR_MODE, FILE_MODE, fat_time

MAX_DIR_BYTES = 256 << 20  # exFAT spec 6.1: a directory is at most 256 MiB
MAX_BITMAP_BYTES = 64 << 20  # kept in memory for the allocation checks (ClusterCount / 8)


def _ror_add32(s: int, data) -> int:
    for b in data:
        s = ((((s & 1) << 31) | (s >> 1)) + b) & 0xFFFFFFFF
    return s


def _ror_add16(s: int, data) -> int:
    for b in data:
        s = ((((s & 1) << 15) | (s >> 1)) + b) & 0xFFFF
    return s


def boot_checksum(region: bytes, bps: int) -> int:
    """exFAT spec 3.4: the Boot Checksum over sectors 0-10, skipping VolumeFlags and
    PercentInUse (bytes 106, 107, 112 of sector 0)."""
    s = _ror_add32(0, region[:106])
    s = _ror_add32(s, region[108:112])
    return _ror_add32(s, region[113:11 * bps])


def set_checksum(data: bytes) -> int:
    """exFAT spec 6.3.3: the 16-bit SetChecksum, skipping bytes 2-3 of the File entry."""
    return _ror_add16(_ror_add16(0, data[:2]), data[4:])


def table_checksum(data: bytes) -> int:
    """exFAT spec 7.2.2: the Up-case Table's TableChecksum."""
    return _ror_add32(0, data)


def name_hash(name_units, upcase) -> int:
    """exFAT spec 7.6.4: NameHash over the up-cased UTF-16 code units."""
    h = 0
    for u in name_units:
        u = int(upcase[u]) if u < len(upcase) else u
        h = ((((h & 1) << 15) | (h >> 1)) + (u & 0xFF)) & 0xFFFF
        h = ((((h & 1) << 15) | (h >> 1)) + (u >> 8)) & 0xFFFF
    return h


def decompress_upcase(data: bytes) -> np.ndarray:
    """exFAT spec 7.2.5: 0xFFFF followed by N means N characters map to themselves."""
    table = np.arange(65536, dtype=np.uint16)
    units = np.frombuffer(data[: len(data) & ~1], dtype="<u2")
    i = c = 0
    while i < len(units) and c < 65536:
        u = int(units[i])
        if u == 0xFFFF and i + 1 < len(units):
            c += int(units[i + 1])
            i += 2
            continue
        table[c] = u
        c += 1
        i += 1
    return table


def exfat_time(ts: int, ms10: int, utc_offset: int) -> Timestamp:
    """Local date/time + 10 ms + UtcOffset (15-minute units, when bit 7 says valid) as UTC."""
    t = fat_time(ts >> 16, ts & 0xFFFF, ms10)
    if utc_offset & 0x80:
        off = utc_offset & 0x7F
        if off & 0x40:
            off -= 0x80
        return Timestamp.from_ns(t.ns - off * 15 * 60 * 1_000_000_000)
    return t


class BootSector:
    def __init__(self, bs, bps, cluster_size):
        self.bs = bs
        self.bytes_per_sector = bps
        self.cluster_size = cluster_size


def parse_boot_region(region: bytes, volume_size: int | None = None) -> BootSector:
    """Check a boot region (12 sectors: main boot sector ... checksum sector)."""
    if len(region) < 512:
        raise FatError("boot sector is short")
    bs = parse(S.ExfatBootSector, region[:512], FatError, "exFAT boot sector")
    if bs.FileSystemName != S.EXFAT_NAME:
        raise FatError("no EXFAT name")
    if any(bs.MustBeZero):
        raise FatError("MustBeZero bytes are set (not exFAT)")
    if bs.BootSignature != S.SECTOR_SIGNATURE:
        raise FatError("no 0x55AA boot signature")
    if not 9 <= bs.BytesPerSectorShift <= 12:
        raise FatError(f"BytesPerSectorShift {bs.BytesPerSectorShift} not 9..12")
    if bs.SectorsPerClusterShift > 25 - bs.BytesPerSectorShift:
        raise FatError(f"SectorsPerClusterShift {bs.SectorsPerClusterShift} too large")
    if bs.NumberOfFats not in (1, 2):
        raise FatError(f"NumberOfFats {bs.NumberOfFats}")
    bps = 1 << bs.BytesPerSectorShift
    if len(region) < 12 * bps:
        raise FatError("boot region is short")
    stored = np.frombuffer(region[11 * bps:12 * bps], dtype="<u4")
    want = boot_checksum(region, bps)
    if not (stored == want).all():
        raise FatError(f"boot checksum mismatch (stored {int(stored[0]):#x}, computed {want:#x})")
    if bs.FatOffset < 24 or bs.FatLength == 0:
        raise FatError("FAT offset or length out of range")
    if bs.ClusterHeapOffset < bs.FatOffset + bs.FatLength * bs.NumberOfFats:
        raise FatError("cluster heap overlaps the FAT")
    if bs.ClusterCount == 0 or bs.ClusterCount > 0xFFFFFFF5:
        raise FatError(f"ClusterCount {bs.ClusterCount} out of range")
    if bs.FatLength * bps < (bs.ClusterCount + 2) * 4:
        raise FatError("FAT too small for ClusterCount")
    if not 2 <= bs.FirstClusterOfRootDirectory < bs.ClusterCount + 2:
        raise FatError(f"root cluster {bs.FirstClusterOfRootDirectory} out of range")
    return BootSector(bs, bps, bps << bs.SectorsPerClusterShift)


def read_boot(source):
    """The main boot region, or the backup (sectors 12-23) when the main one fails."""
    why = None
    try:
        return parse_boot_region(source.read(0, 12 * 4096)), None
    except (FatError, UnreadableError) as e:
        why = str(e)
    for bps in (512, 4096, 1024, 2048):
        try:
            b = parse_boot_region(source.read(12 * bps, 12 * bps))
        except (FatError, UnreadableError):
            continue
        if b.bytes_per_sector == bps:
            return b, why
    raise FatError(f"main boot region: {why}; backup boot region unusable too")


def probe_score(source) -> float:
    try:
        head = source.read(0, 512)
    except UnreadableError:
        head = b""
    if head[3:11] == S.EXFAT_NAME:
        try:
            parse_boot_region(source.read(0, 12 * 4096))
            return 100.0
        except (FatError, UnreadableError):
            pass
    try:
        read_boot(source)
        return 60.0 if head[3:11] == S.EXFAT_NAME else 30.0
    except (FatError, UnreadableError):
        return 0.0


class ExfatFilesystem(ClusterFilesystem):
    """One exFAT volume, listed directory by directory."""

    def __init__(self, volume, ctx):
        self.volume = volume
        self.source = volume.source
        self.ctx = ctx
        self.bad = ctx.bad()
        self.where = volume.path
        boot, why = read_boot(self.source)
        bs = boot.bs
        self.bs = bs
        self.cs = boot.cluster_size
        bps = boot.bytes_per_sector
        if why is not None:
            self.problem("info", "boot-region-backup", f"main boot region unusable ({why}); the "
                         "backup boot region (sectors 12-23) is used", outcome="repaired")
        size = bs.VolumeLength * bps
        if size > self.source.size:
            self.problem("error", "volume-truncated", f"the filesystem spans {size} bytes but the "
                         f"volume has {self.source.size}: clusters past its end are unreadable")
        self.heap = bs.ClusterHeapOffset * bps
        self.n_entries = bs.ClusterCount + 2
        fat_bytes = bs.FatLength * bps
        copies = [bs.FatOffset * bps + i * fat_bytes for i in range(bs.NumberOfFats)]
        if bs.NumberOfFats == 2 and bs.VolumeFlags & S.VOLUME_FLAG_ACTIVE_FAT:
            copies.reverse()
        self.fat = FatTable(self.source, copies, min(fat_bytes, self.n_entries * 4), "exfat",
                            self.n_entries, self.problem)
        self.upcase = None
        self.bitmap = None
        label = self._read_root_critical()
        used = None
        if self.bitmap is not None:
            bits = np.unpackbits(np.frombuffer(self.bitmap, dtype=np.uint8),
                                 bitorder="little")[: bs.ClusterCount]
            used = int(bits.sum()) * self.cs
        serial = bs.VolumeSerialNumber
        self.info = FilesystemInfo(
            "exfat", label=label, uuid=f"{serial >> 16:04X}-{serial & 0xFFFF:04X}", size=size,
            used=used, clean=not bs.VolumeFlags & S.VOLUME_FLAG_DIRTY)
        self.info.notes.append(f"{self.cs}-byte clusters, {bs.ClusterCount} clusters")
        if bs.VolumeFlags & S.VOLUME_FLAG_MEDIA_FAILURE:
            self.info.notes.append("MediaFailure flag set: the volume reported bad sectors")
        if why is not None:
            self.info.notes.append("backup boot region used")

    def problem(self, severity, code, message, path=None, ranges=(), outcome=""):
        """One damage entry at the tree path of ``path`` (``/dir/name`` below the root) once
        the files are placed, else at the volume."""
        self.ctx.report.add(severity, "exfat", self.tree_path(path), code, message,
                            list(ranges), outcome)

    # -- the root directory's critical entries ------------------------------------------
    def _root_extents(self):
        want = min(self.bs.ClusterCount, max(1, MAX_DIR_BYTES // self.cs))
        try:
            runs, err = self.fat.runs(self.bs.FirstClusterOfRootDirectory, want)
        except UnreadableError as e:
            runs, err = [], f"FAT unreadable: {e}"
        if err is not None:
            self.problem("error", "dir-chain-broken",
                         f"root directory: {err}; entries past the break "
                         "are lost", "/")
        return run_extents(self.heap, self.cs, runs, want * self.cs)[0]

    def _read_root_critical(self):
        label = None
        bitmap_entries = []
        upcase = None
        root = self._root_extents()
        for _disk, e in self._entries(root, "/", report=False):
            if e is None:
                continue
            t = e[0]
            if t == S.ENTRY_END:
                break
            if t == S.ENTRY_BITMAP:
                bitmap_entries.append(S.BITMAP_ENTRY.unpack(e))
            elif t == S.ENTRY_UPCASE:
                upcase = S.UPCASE_ENTRY.unpack(e)
            elif t == S.ENTRY_LABEL:
                _t, n, raw = S.LABEL_ENTRY.unpack(e)
                label = raw[: 2 * min(n, 11)].decode("utf-16-le", errors="replace") or None
        # With two FATs there are two bitmaps; BitmapFlags bit 0 says which FAT each serves.
        active = 1 if (self.bs.NumberOfFats == 2 and
                       self.bs.VolumeFlags & S.VOLUME_FLAG_ACTIVE_FAT) else 0
        chosen = [b for b in bitmap_entries if (b[1] & 1) == active] or bitmap_entries
        if not chosen:
            self.problem("warning", "no-bitmap",
                         "the root directory has no Allocation Bitmap entry")
        else:
            _t, _f, first, length = chosen[0]
            need = (self.bs.ClusterCount + 7) // 8
            if length < need or need > MAX_BITMAP_BYTES:
                self.problem("warning", "bad-bitmap", f"Allocation Bitmap of {length} bytes for "
                             f"{self.bs.ClusterCount} clusters; not used")
            else:
                self.bitmap, why = self._read_stream(first, need, "bitmap")
                if why is not None:
                    self.problem("warning", "bad-bitmap", f"Allocation Bitmap {why}; used "
                                 "space unknown, allocation not checked")
        if upcase is None:
            self.problem("warning", "no-upcase", "the root directory has no Up-case Table entry")
        else:
            _t, checksum, first, length = upcase
            if length > 2 * 65536 * 2:
                self.problem("warning", "bad-upcase", f"Up-case Table of {length} bytes; not used")
            else:
                data, why = self._read_stream(first, length, "up-case table")
                if why is not None:
                    self.problem("warning", "bad-upcase", f"Up-case Table {why}; name hashes "
                                 "are not checked")
                else:
                    if table_checksum(data) != checksum:
                        self.problem("warning", "upcase-checksum",
                                     "Up-case Table checksum mismatch; "
                                     "name hashes are not checked")
                    else:
                        self.upcase = decompress_upcase(data)
        return label

    def _read_stream(self, first, length, what):
        """The bitmap or up-case table: followed through the FAT (mkfs.exfat and Windows
        write their chains there even though they are contiguous)."""
        want = max(1, -(-length // self.cs))
        try:
            runs, err = self.fat.runs(first, want)
        except UnreadableError as e:
            runs, err = [], str(e)
        extents, mapped = run_extents(self.heap, self.cs, runs, length)
        if err is not None or mapped < length:
            return None, f"chain broken ({err or 'too short'})"
        try:
            return b"".join(self.source.read(d, n) for _o, n, d in extents), None
        except UnreadableError as e:
            return None, f"unreadable: {e}"

    # -- directories ------------------------------------------------------------------
    def _entries(self, extents, path, report=True):
        """``(disk offset, 32-byte entry or None)`` for a directory's clusters."""
        bad = 0
        for disk, data, err in read_blocks(self.source, extents, self.cs):
            if err is not None:
                bad += 1
                if report and bad <= MAX_BAD_ENTRIES_REPORTED:
                    self.problem("error", "dir-unreadable",
                                 f"directory {path}: cluster at {disk:#x} is "
                                 f"unreadable ({err}); the entries in it are lost", path,
                                 ranges=err.ranges)
                for i in range(0, self.cs, 32):
                    yield disk + i, None
                continue
            for i in range(0, len(data) - 31, 32):
                yield disk + i, data[i:i + 32]

    def root(self) -> Dir:
        d = Dir(mode=DIR_MODE, mtime=Timestamp(0), loader=partial(self._load, None, "/"))
        self._root = d
        self.claim_dir(self.bs.FirstClusterOfRootDirectory)
        return d

    def _dir_extents(self, first, length, nofat, path):
        want = -(-length // self.cs)
        if nofat:
            if first + want > self.n_entries:
                return [], 0, f"contiguous clusters {first}+{want} run past the cluster heap"
            runs, err = [(first, want)], None
        else:
            try:
                runs, err = self.fat.runs(first, want)
            except UnreadableError as e:
                runs, err = [], f"FAT unreadable: {e}"
        extents, mapped = run_extents(self.heap, self.cs, runs, length)
        if err is None and mapped < length:
            err = f"cluster chain ends after {mapped} of {length} bytes"
        return extents, mapped, err

    def _load(self, stream, path, d: Dir):
        if stream is None:
            extents = self._root_extents()
        elif not self.claim_dir(stream[0]):
            self.problem("error", "dir-loop",
                         f"directory {path}: its cluster {stream[0]} belongs to "
                         "another directory (a loop or cross-link); not listed", path)
            return
        else:
            first, length, nofat = stream
            extents, _m, err = self._dir_extents(first, length, nofat, path)
            if err is not None:
                self.problem("error", "dir-chain-broken",
                             f"directory {path}: {err}; entries past the "
                             "break are lost", path)
        d.fat_clusters = [(disk, n) for _o, n, disk in extents]  # the directory's own data
        d.fat_extents = getattr(d, "fat_extents", []) + d.fat_clusters  # + its entry
        # One pass, no list of the directory's entries (it may be 256 MiB: 8 M entries).
        bad = 0
        group: list | None = None  # the entry set being collected
        need = 0
        ended_at = None  # an unused entry was seen here (spec 6.2: the directory ends)
        for disk, e in self._entries(extents, path):
            if group is not None:
                group.append((disk, e))
                if len(group) < need:
                    continue
                first_disk, group_done, group = group[0][0], group, None
                try:
                    name, node = self._entry_set(group_done, path)
                except FatError as err:
                    bad += 1
                    if bad <= MAX_BAD_ENTRIES_REPORTED:
                        self.problem("error", "bad-entry-set", f"directory {path}: entry set "
                                     f"at {first_disk:#x}: {err}", path)
                    continue
                d.add(name, node, report=self.ctx.report, layer="exfat",
                      path_hint=self.tree_path(path))
                continue
            if e is None:
                continue
            t = e[0]
            if t == S.ENTRY_END:
                if ended_at is None:
                    ended_at = disk
                continue
            if ended_at is not None:
                if not t & S.ENTRY_IN_USE:
                    continue
                # Live entries after the end: the cluster that held the unused ones was
                # zeroed (or a chain points at a zeroed cluster); go on with these.
                self.problem("error", "dir-cluster-zeroed",
                             f"directory {path}: unused entries at {ended_at:#x} but entries "
                             f"follow at {disk:#x}; the entries between were lost", path)
                ended_at = None
            if t != S.ENTRY_FILE:
                continue
            count = e[1]
            if not 2 <= count <= 18:
                bad += 1
                if bad <= MAX_BAD_ENTRIES_REPORTED:
                    self.problem("error", "bad-entry-set",
                                 f"directory {path}: File entry at {disk:#x} "
                                 f"has SecondaryCount {count}", path)
                continue
            group, need = [(disk, e)], count + 1
        if group is not None:
            bad += 1
            if bad <= MAX_BAD_ENTRIES_REPORTED:
                self.problem("error", "bad-entry-set", f"directory {path}: the entry set at "
                             f"{group[0][0]:#x} runs past the end of the directory", path)
        if bad > MAX_BAD_ENTRIES_REPORTED:
            self.problem("error", "bad-entries",
                         f"directory {path}: {bad} bad entry sets in all (the "
                         f"first {MAX_BAD_ENTRIES_REPORTED} reported)", path)

    def _entry_set(self, group, parent):
        if any(e is None for _d, e in group):
            raise FatError("part of the entry set is unreadable")
        raw = b"".join(e for _d, e in group)
        (_t, count, checksum, attrs, ctime, mtime, atime, c10, m10, coff, moff,
         aoff) = S.FILE_ENTRY.unpack(raw[:32])
        if set_checksum(raw) != checksum:
            raise FatError("SetChecksum mismatch; entry set skipped")
        st = raw[32:64]
        if st[0] != S.ENTRY_STREAM:
            raise FatError(f"second entry is {st[0]:#x}, not a Stream Extension")
        _t, flags, name_len, nhash, valid, first, length = S.STREAM_ENTRY.unpack(st)
        if name_len == 0:
            raise FatError("empty name")
        pieces = []
        for k in range(2, count + 1):
            ent = raw[32 * k:32 * k + 32]
            if ent[0] == S.ENTRY_NAME:
                pieces.append(ent[2:32])
            elif not ent[0] & S.ENTRY_BENIGN:
                raise FatError(f"unknown critical secondary entry {ent[0]:#x}")
        name_bytes = b"".join(pieces)[:2 * name_len]
        if len(name_bytes) < 2 * name_len:
            raise FatError(f"name of {name_len} characters but only {len(name_bytes) // 2} "
                           "stored")
        units = struct.unpack(f"<{name_len}H", name_bytes)
        name = name_bytes.decode("utf-16-le", errors="replace")
        path = f"/{name}" if parent == "/" else f"{parent}/{name}"
        if self.upcase is not None and name_hash(units, self.upcase) != nhash:
            self.problem("warning", "name-hash", f"{path}: NameHash does not match the name",
                         path)
        mt = exfat_time(mtime, m10, moff)
        at = exfat_time(atime, 0, aoff)
        own = [(group[0][0], 32 * len(group))]
        nofat = bool(flags & S.FLAG_NO_FAT_CHAIN)
        if valid > length:
            raise FatError(f"ValidDataLength {valid} > DataLength {length}")
        if length > self.bs.ClusterCount * self.cs:
            raise FatError(f"DataLength {length} larger than the filesystem")
        if length and not 2 <= first < self.n_entries:
            raise FatError(f"FirstCluster {first} out of range")
        if attrs & S.EXFAT_ATTR_DIRECTORY:
            if length == 0 or length > MAX_DIR_BYTES:
                raise FatError(f"directory of {length} bytes")
            node = Dir(mode=DIR_MODE, mtime=mt, atime=at, ctime=mt,
                       loader=partial(self._load, (first, length, nofat), path))
            node.fat_extents = own
            return name, node
        if length:
            extents, mapped, err = self._dir_extents(first, length, nofat, path)
        else:
            extents, mapped, err = [], 0, None
        if err is not None:
            self.problem("error", "chain-broken", f"{path}: {err}; bytes {mapped}..{length} are "
                         "unreadable", path)
        self._check_allocated(extents, path)
        # Bytes past ValidDataLength read as zeros (spec 7.6.5): not mapped.
        cut = []
        for off, n, disk in extents:
            if off < valid:
                cut.append((off, min(n, valid - off), disk))
        mapped_valid = min(mapped, valid)
        src = data_source(self.source, cut, mapped_valid, length,
                          None if err is None else f"{path}: {err}", self.bad, path)
        mode = FILE_MODE & ~0o222 if attrs & S.EXFAT_ATTR_READ_ONLY else FILE_MODE
        node = File(src, mode=mode, mtime=mt, atime=at, ctime=mt)
        node.fat_extents = [(disk, n) for _o, n, disk in extents] + own
        return name, node

    def _check_allocated(self, extents, path):
        if self.bitmap is None or not extents:
            return
        for _off, n, disk in extents:
            c0 = (disk - self.heap) // self.cs
            k = -(-n // self.cs)
            lo, hi = c0 // 8, (c0 + k + 7) // 8
            chunk = self.bitmap[lo:hi]
            mask = (1 << k) - 1
            if len(chunk) < hi - lo or \
                    (int.from_bytes(chunk, "little") >> (c0 - lo * 8)) & mask != mask:
                self.problem("warning", "not-allocated",
                             f"{path}: some of its clusters are free in the "
                             "Allocation Bitmap (cross-linked or a stale entry?)", path)
                return

