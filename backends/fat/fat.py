"""FAT12, FAT16 and FAT32 with VFAT long names, read-only.

# References:
- Microsoft, "FAT: General Overview of On-Disk Format" (fatgen103): 3 (BPB, cluster count
  decides the FAT type), 4 (FAT entries), 5 (FSInfo), 6 (directory entries and times),
  7 (long names: ordinal, checksum over the 11-byte short name, 13 UCS-2 chars a slot).
- torvalds/linux fs/fat/inode.c (fat_fill_super's BPB sanity checks, the FAT type rule
  "no FATSz16 means FAT32, else more than 4084 clusters means FAT16", fat_make_mode),
  fs/fat/dir.c (fat_parse_long / fat_parse_short: orphaned or mismatched long-name slots
  are dropped and the short name shown; DIR_NTRes bits 0x08/0x10 make the short base /
  extension lower case; entries starting with 0x00 are skipped like deleted ones),
  fs/fat/misc.c (fat_time_fat2unix: the date arithmetic used here), fs/fat/fatent.c.
- dosfstools src/boot.c (fsck.fat: FAT32 backup boot sector at sector 6, FSInfo checks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

from pvfs.damage import Problem
from pvfs.errors import UnreadableError
from pvfs.guestfs import FilesystemInfo
from pvfs.nodes import Dir, File, Timestamp
from pvfs.structs import parse

from . import structs as S
from .chains import FatTable
from .common import (MAX_BAD_ENTRIES_REPORTED, ClusterFilesystem, FatError, data_source,
                     read_blocks, run_extents)

BACKUP_BOOT_SECTOR = 6  # fatgen103 3.3: BPB_BkBootSec "no value other than 6 is recommended"
MAX_DIR_BYTES = 65536 * 32  # fatgen103 6: a directory holds at most 65536 entries
FILE_MODE = 0o644  # as Linux vfat with fmask=0133 (no x bits); read-only files: 0o444
DIR_MODE = 0o755
OEM_CODEPAGE = "cp437"  # Linux vfat's default codepage=437 for bytes >= 0x80 in short names

#: fs/fat/misc.c days_in_year: days before each month (index 1..12; 0 and 13..15 are 0).
_DAYS_BEFORE = (0, 0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334, 0, 0, 0)
_DAYS_DELTA = 365 * 10 + 2  # 1970-01-01 .. 1980-01-01


def fat_time(date: int, time: int = 0, cs: int = 0) -> Timestamp:
    """A FAT date/time (local time; read as UTC, which is Linux vfat's default ``tz``).

    Same arithmetic as Linux's fat_time_fat2unix, so impossible dates (month 0 or 13,
    day 0) come out as the kernel shows them instead of raising.  ``cs`` is the
    creation time's 10 ms count (0..199).
    """
    year = date >> 9
    month = max(1, (date >> 5) & 0xF)
    day = max(1, date & 0x1F) - 1
    leap = (year + 3) // 4
    if year > 120:  # 2100 is not a leap year
        leap -= 1
    if (year & 3) == 0 and year != 120 and month > 2:
        leap += 1
    sec = (time & 0x1F) * 2 + ((time >> 5) & 0x3F) * 60 + (time >> 11) * 3600
    sec += (year * 365 + leap + _DAYS_BEFORE[month] + day + _DAYS_DELTA) * 86400
    return Timestamp(sec + cs // 100, (cs % 100) * 10_000_000)


def lfn_checksum(short_name: bytes) -> int:
    """fatgen103 7: the checksum of an 11-byte short name kept in every long-name slot."""
    s = 0
    for b in short_name:
        s = (((s & 1) << 7) + (s >> 1) + b) & 0xFF
    return s


@dataclass
class Geometry:
    """Where everything is, in bytes of the volume."""

    fat_bits: int
    bytes_per_sector: int
    cluster_size: int
    cluster_count: int
    fat_offset: int
    fat_bytes: int
    num_fats: int
    active_fat: int
    root_offset: int  # FAT12/16: the fixed root directory region
    root_bytes: int
    root_cluster: int  # FAT32
    data_offset: int  # cluster 2
    total_bytes: int
    fsinfo_sector: int
    serial: int | None
    label: bytes | None
    state_dirty: bool
    problems: list = field(default_factory=list)


def parse_boot_sector(raw: bytes, volume_size: int | None = None) -> Geometry:
    """Check a boot sector's BPB the way Linux's fat_fill_super does and lay out the volume."""
    if len(raw) < 512:
        raise FatError("boot sector is short")
    bpb = parse(S.BiosParameterBlock, raw[:36], FatError, "BPB")
    bps, spc = bpb.BPB_BytsPerSec, bpb.BPB_SecPerClus
    if bps not in (512, 1024, 2048, 4096):
        raise FatError(f"bytes per sector {bps} is not 512..4096")
    if spc == 0 or spc & (spc - 1) or spc > 128:
        raise FatError(f"sectors per cluster {spc} is not a power of two up to 128")
    if bpb.BPB_RsvdSecCnt == 0:
        raise FatError("no reserved sectors")
    if not 1 <= bpb.BPB_NumFATs <= 4:
        raise FatError(f"{bpb.BPB_NumFATs} FATs")
    if bpb.BPB_Media != 0xF0 and bpb.BPB_Media < 0xF8:
        raise FatError(f"media descriptor {bpb.BPB_Media:#x} is invalid")
    total = bpb.BPB_TotSec16 or bpb.BPB_TotSec32
    if total == 0:
        raise FatError("total sector count is 0")
    ext32 = parse(S.Fat32Extension, raw[36:90], FatError, "FAT32 BPB")
    fat32 = bpb.BPB_FATSz16 == 0
    if fat32:
        fatsz = ext32.BPB_FATSz32
        ext = ext32
        if bpb.BPB_RootEntCnt != 0:
            raise FatError("FAT32 with root directory entries")
    else:
        fatsz = bpb.BPB_FATSz16
        ext = parse(S.Fat16Extension, raw[36:62], FatError, "FAT16 BPB")
    if fatsz == 0:
        raise FatError("FAT size is 0")
    root_sectors = (bpb.BPB_RootEntCnt * 32 + bps - 1) // bps
    first_data = bpb.BPB_RsvdSecCnt + bpb.BPB_NumFATs * fatsz + root_sectors
    if first_data >= total:
        raise FatError(f"data region starts at sector {first_data}, past the {total} sectors")
    clusters = (total - first_data) // spc
    if clusters == 0:
        raise FatError("no clusters")
    if fat32:
        bits = 32
    else:
        bits = 12 if clusters <= S.FAT12_MAX_CLUSTERS else 16
        if bpb.BPB_RootEntCnt == 0:
            raise FatError("FAT12/16 without root directory entries")
    problems = []
    capacity = fatsz * bps * 8 // bits - 2
    if clusters > capacity:
        problems.append(Problem("warning", "fat-too-small",
                         f"{clusters} clusters but the FAT has room for {capacity}; "
                         "clusters past it are not used"))
        clusters = capacity
    if fat32 and not 2 <= ext32.BPB_RootClus < clusters + 2:
        raise FatError(f"root cluster {ext32.BPB_RootClus} out of range")
    active = 0
    if fat32 and ext32.BPB_ExtFlags & 0x80:  # mirroring off: only the active FAT is current
        active = ext32.BPB_ExtFlags & 0x0F
        if active >= bpb.BPB_NumFATs:
            problems.append(Problem("warning", "bad-active-fat",
                             f"BPB_ExtFlags names FAT #{active + 1} of {bpb.BPB_NumFATs}; "
                             "FAT #1 used"))
            active = 0
    serial = label = None
    if ext.BS_BootSig in (0x28, 0x29):
        serial = ext.BS_VolID
    if ext.BS_BootSig == 0x29:
        label = bytes(ext.BS_VolLab)
    total_bytes = total * bps
    if volume_size is not None and total_bytes > volume_size:
        problems.append(Problem("error", "volume-truncated",
                         f"the filesystem spans {total_bytes} bytes but the volume has "
                         f"{volume_size}: clusters past its end are unreadable"))
    return Geometry(
        fat_bits=bits, bytes_per_sector=bps, cluster_size=bps * spc, cluster_count=clusters,
        fat_offset=bpb.BPB_RsvdSecCnt * bps, fat_bytes=fatsz * bps, num_fats=bpb.BPB_NumFATs,
        active_fat=active,
        root_offset=(bpb.BPB_RsvdSecCnt + bpb.BPB_NumFATs * fatsz) * bps,
        root_bytes=bpb.BPB_RootEntCnt * 32,
        root_cluster=ext32.BPB_RootClus if fat32 else 0,
        data_offset=first_data * bps, total_bytes=total_bytes,
        fsinfo_sector=ext32.BPB_FSInfo if fat32 else 0, serial=serial, label=label,
        state_dirty=bool(ext.BS_Reserved1 & S.FAT_STATE_DIRTY), problems=problems)


def _sector_ok(raw: bytes) -> bool:
    return len(raw) >= 512 and raw[510:512] == S.SECTOR_SIGNATURE


def read_geometry(source) -> tuple[Geometry, str | None]:
    """The primary boot sector's layout, else the FAT32 backup boot sector's (sector 6).

    Returns ``(geometry, why the primary was not used or None)``.
    """
    why = None
    try:
        raw = source.read(0, 512)
        if not _sector_ok(raw):
            raise FatError("no 0x55AA boot signature")
        return parse_boot_sector(raw, source.size), None
    except (FatError, UnreadableError) as e:
        why = str(e)
    for bps in (512, 4096, 1024, 2048):
        try:
            raw = source.read(BACKUP_BOOT_SECTOR * bps, 512)
            if not _sector_ok(raw):
                continue
            geo = parse_boot_sector(raw, source.size)
        except (FatError, UnreadableError):
            continue
        if geo.fat_bits == 32 and geo.bytes_per_sector == bps:
            return geo, why
    raise FatError(f"boot sector: {why}; no FAT32 backup boot sector either")


def probe_score(source) -> float:
    try:
        raw = source.read(0, 512)
        if _sector_ok(raw):
            parse_boot_sector(raw)
            return 50.0
    except (FatError, UnreadableError):
        pass
    try:
        read_geometry(source)
        return 30.0  # only the backup boot sector is intact
    except (FatError, UnreadableError):
        return 0.0


def short_name(raw: bytes, ntres: int) -> str:
    """An 8.3 name as Linux vfat shows it (DIR_NTRes lower-case bits honoured)."""
    if raw[0] == S.KANJI_E5:
        raw = b"\xe5" + raw[1:]
    base = raw[:8].rstrip(b" ").decode(OEM_CODEPAGE)
    ext = raw[8:11].rstrip(b" ").decode(OEM_CODEPAGE)
    if ntres & S.CASE_LOWER_BASE:
        base = base.lower()
    if ntres & S.CASE_LOWER_EXT:
        ext = ext.lower()
    return f"{base}.{ext}" if ext else base


@dataclass
class Entry:
    name: str
    attr: int
    wrt_time: int
    wrt_date: int
    acc_date: int
    first_cluster: int
    size: int
    offset: int  # byte offset of the short entry in the volume


def parse_entries(blocks, fat32=True):
    """Directory entries from ``(disk_offset, data)`` blocks (data None: unreadable).

    Yields :class:`Entry` for every file and directory (not ".", "..", the volume label,
    deleted or free slots) and ``("label", bytes)`` for a volume label entry.
    ``DIR_FstClusHI`` counts only on FAT32 (Linux fat_get_start; OS/2 kept EA indexes there).
    """
    slots: list[bytes] = []  # long-name slots collected so far, last one first
    expect = 0
    csum = -1
    for disk, data in blocks:
        if data is None:
            slots, expect = [], 0
            continue
        for i in range(0, len(data) - 31, 32):
            e = data[i:i + 32]
            first = e[0]
            attr = e[11]
            if first == 0 or first == S.DELETED:
                slots, expect = [], 0
                continue
            if attr & S.ATTR_LONG_NAME_MASK == S.ATTR_LONG_NAME:
                ordn, n1, _a, _t, ck, n2, _c, n3 = S.LDIR_ENTRY.unpack(e)
                seq = ordn & 0x1F
                if ordn & S.LAST_LONG_ENTRY:
                    if 1 <= seq <= 20:
                        slots, expect, csum = [n1 + n2 + n3], seq - 1, ck
                    else:
                        slots, expect = [], 0
                elif slots and seq == expect and seq >= 1 and ck == csum:
                    slots.append(n1 + n2 + n3)
                    expect -= 1
                else:
                    slots, expect = [], 0
                continue
            (name, attr, ntres, _ct10, _ct, _cd, adate, hi, wtime, wdate, lo,
             size) = S.DIR_ENTRY.unpack(e)
            long = None
            if slots and expect == 0 and csum == lfn_checksum(name):
                raw = b"".join(reversed(slots))
                text = raw.decode("utf-16-le", errors="replace")
                end = text.find("\0")
                long = text if end < 0 else text[:end]
            slots, expect = [], 0
            if attr & S.ATTR_VOLUME_ID:
                if not attr & S.ATTR_DIRECTORY:
                    yield ("label", name)
                continue
            if name[:1] == b"." and name.rstrip(b" ") in (b".", b".."):
                continue
            yield Entry(long or short_name(name, ntres), attr, wtime, wdate, adate,
                        (hi << 16 | lo) if fat32 else lo, size, disk + i)


class FatFilesystem(ClusterFilesystem):
    """One FAT12/16/32 volume: the tree is read directory by directory as it is listed."""

    def __init__(self, volume, ctx):
        self.volume = volume
        self.source = volume.source
        self.ctx = ctx
        self.bad = ctx.bad()
        self.where = volume.path
        geo, why = read_geometry(self.source)
        self.geo = geo
        for p in geo.problems:
            self.ctx.report.add(p.severity, "vfat", self.where, p.code, p.message,
                                outcome=p.outcome)
        if why is not None:
            self.problem("info", "boot-sector-backup",
                         f"primary boot sector unusable ({why}); the backup boot sector "
                         f"(sector {BACKUP_BOOT_SECTOR}) is used", outcome="repaired")
        copies = [geo.fat_offset + i * geo.fat_bytes for i in range(geo.num_fats)]
        copies.insert(0, copies.pop(geo.active_fat))
        self.fat = FatTable(self.source, copies, geo.fat_bytes, geo.fat_bits,
                            geo.cluster_count + 2,
                            self.problem)
        self.heap = geo.data_offset  # byte offset of cluster 2
        self.info = FilesystemInfo(
            "vfat", label=self._label(), size=geo.total_bytes,
            uuid=None if geo.serial is None else
            f"{geo.serial >> 16:04X}-{geo.serial & 0xFFFF:04X}",
            used=self._used(), clean=self._clean())
        self.info.notes.append(f"FAT{geo.fat_bits}, {geo.cluster_size}-byte clusters, "
                               f"{geo.cluster_count} clusters")
        if why is not None:
            self.info.notes.append("backup boot sector used")

    # -- reporting -------------------------------------------------------------------
    def problem(self, severity, code, message, path=None, ranges=(), outcome=""):
        """One damage entry at the tree path of ``path`` (``/dir/name`` below the root) once
        the files are placed, else at the volume."""
        self.ctx.report.add(severity, "vfat", self.tree_path(path), code, message,
                            list(ranges), outcome)

    # -- volume facts -------------------------------------------------------------------
    def _clean(self):
        if self.geo.state_dirty:
            return False
        if self.geo.fat_bits == 12:
            return True
        try:
            fat1 = self.fat.entry(1)
        except UnreadableError:
            return None
        mask = S.FAT32_CLN_SHUT if self.geo.fat_bits == 32 else S.FAT16_CLN_SHUT
        return bool(fat1 & mask)

    def _used(self):
        geo = self.geo
        free = None
        if geo.fat_bits == 32 and geo.fsinfo_sector:
            try:
                raw = self.source.read(geo.fsinfo_sector * geo.bytes_per_sector, 512)
                fsi = parse(S.FSInfo, raw, FatError, "FSInfo")
                if (fsi.FSI_LeadSig, fsi.FSI_StrucSig, fsi.FSI_TrailSig) == (
                        S.FSI_LEAD_SIG, S.FSI_STRUC_SIG, S.FSI_TRAIL_SIG) and \
                        fsi.FSI_Free_Count <= geo.cluster_count:
                    free = fsi.FSI_Free_Count
            except (FatError, UnreadableError):
                pass
        if free is None and geo.fat_bytes <= (64 << 20):
            try:
                free = self.fat.count_free()
            except UnreadableError:
                return None
        if free is None:
            return None
        return (geo.cluster_count - free) * geo.cluster_size

    def _label(self):
        label = None
        try:
            for item in parse_entries(self._dir_blocks(self._root_extents(), "/"),
                                      self.geo.fat_bits == 32):
                if isinstance(item, tuple):
                    label = item[1]
                    break
        except UnreadableError:
            pass
        if label is None or label == b"NO NAME    ":
            label = self.geo.label
        if label is None or label == b"NO NAME    ":
            return None
        if label[0] == S.KANJI_E5:
            label = b"\xe5" + label[1:]
        return label.rstrip(b" ").decode(OEM_CODEPAGE) or None

    # -- directories -------------------------------------------------------------------
    def _root_extents(self):
        geo = self.geo
        if geo.fat_bits != 32:
            return [(0, geo.root_bytes, geo.root_offset)]
        return self._chain_extents(geo.root_cluster, MAX_DIR_BYTES, "/", directory=True)[0]

    def _chain_extents(self, first, size, path, directory=False):
        """Extents of the chain from ``first`` holding ``size`` bytes (directories: up to).

        Returns ``(extents, mapped bytes, problem message or None)``.
        """
        cs = self.geo.cluster_size
        want = max(1, -(-size // cs))
        want = min(want, self.geo.cluster_count)
        if want == 1 and not directory and 2 <= first < self.geo.cluster_count + 2:
            # One cluster: the FAT is not needed to find it (Linux reads it the same way).
            return [(0, size, self.heap + (first - 2) * cs)], size, None
        try:
            runs, err = self.fat.runs(first, want)
        except UnreadableError as e:
            runs, err = [], f"FAT unreadable: {e}"
        extents, mapped = run_extents(self.heap, cs, runs, size)
        if err is None and not directory and mapped < size:
            err = f"cluster chain ends after {mapped} of {size} bytes"
        return extents, mapped, err

    def _dir_blocks(self, extents, path):
        bad = 0
        for disk, data, err in read_blocks(self.source, extents, self.geo.cluster_size):
            if err is not None:
                bad += 1
                if bad <= MAX_BAD_ENTRIES_REPORTED:
                    self.problem("error", "dir-unreadable",
                                 f"directory {path}: cluster at {disk:#x} is unreadable "
                                 f"({err}); the entries in it are lost", path,
                                 ranges=err.ranges)
            yield disk, data

    def root(self) -> Dir:
        d = Dir(mode=DIR_MODE, mtime=Timestamp(0), loader=partial(self._load, None, "/"))
        self._root = d
        if self.geo.fat_bits == 32:
            self.claim_dir(self.geo.root_cluster)
        return d

    def _load(self, first, path, d: Dir):
        if first is None:
            extents = self._root_extents()
        elif not self.claim_dir(first):
            self.problem("error", "dir-loop",
                         f"directory {path}: its cluster {first} belongs to another "
                         "directory (a loop or cross-link); not listed", path)
            return
        else:
            extents, _mapped, err = self._chain_extents(first, MAX_DIR_BYTES, path,
                                                        directory=True)
            if err is not None:
                self.problem("error", "dir-chain-broken", f"directory {path}: {err}; entries past "
                             "the break are lost", path)
        d.fat_clusters = [(disk, n) for _o, n, disk in extents]  # the directory's own data
        d.fat_extents = getattr(d, "fat_extents", []) + d.fat_clusters  # + its entry
        blocks = list(self._dir_blocks(extents, path))
        self._check_dir_clusters(blocks, first, path)
        bad_entries = 0
        for item in parse_entries(blocks, self.geo.fat_bits == 32):
            if isinstance(item, tuple):
                continue
            try:
                node = self._node(item, path)
            except FatError as e:
                bad_entries += 1
                if bad_entries <= MAX_BAD_ENTRIES_REPORTED:
                    self.problem("error", "bad-entry", f"{_join(path, item.name)}: {e}",
                                 _join(path, item.name))
                continue
            d.add(item.name, node, report=self.ctx.report, layer="vfat",
                  path_hint=self.tree_path(path))
        if bad_entries > MAX_BAD_ENTRIES_REPORTED:
            self.problem("error", "bad-entries",
                         f"directory {path}: {bad_entries} bad entries in all "
                         f"(the first {MAX_BAD_ENTRIES_REPORTED} reported)", path)

    def _check_dir_clusters(self, blocks, first, path):
        """A zeroed cluster in the middle of a directory is damage, not an end mark."""
        if first is not None and blocks and blocks[0][1] is not None and \
                blocks[0][1][:11] != b".          ":
            self.problem("error", "dir-cluster-damaged",
                         f"directory {path}: its first cluster (at {blocks[0][0]:#x}) does not "
                         "start with the '.' entry; entries in it may be lost", path)
        zero_at = None
        for disk, data in blocks:
            if data is None:
                continue
            if not any(data):
                if zero_at is None:
                    zero_at = disk
            elif zero_at is not None:
                self.problem("error", "dir-cluster-zeroed",
                             f"directory {path}: cluster at {zero_at:#x} is all zeros but "
                             "entries follow it; the entries it held are lost", path)
                zero_at = None

    def _node(self, e: Entry, parent_path):
        path = _join(parent_path, e.name)
        mtime = fat_time(e.wrt_date, e.wrt_time)
        atime = fat_time(e.acc_date)
        cs = self.geo.cluster_size
        if e.attr & S.ATTR_DIRECTORY:
            if not 2 <= e.first_cluster < self.geo.cluster_count + 2:
                raise FatError(f"directory's first cluster {e.first_cluster} is out of range")
            node = Dir(mode=DIR_MODE, mtime=mtime, atime=atime, ctime=mtime,
                       loader=partial(self._load, e.first_cluster, path))
            node.fat_extents = [(e.offset, 32)]
            return node
        mode = FILE_MODE & ~0o222 if e.attr & S.ATTR_READ_ONLY else FILE_MODE
        if e.size == 0:
            extents, mapped, err = [], 0, None
        elif e.size > self.geo.cluster_count * cs:
            raise FatError(f"size {e.size} is larger than the filesystem")
        else:
            extents, mapped, err = self._chain_extents(e.first_cluster, e.size, path)
        if err is not None:
            self.problem("error", "chain-broken", f"{path}: {err}; bytes {mapped}..{e.size} are "
                         "unreadable", path)
        src = data_source(self.source, extents, mapped, e.size,
                          None if err is None else f"{path}: {err}", self.bad, path)
        node = File(src, mode=mode, mtime=mtime, atime=atime, ctime=mtime)
        node.fat_extents = [(disk, n) for _o, n, disk in extents] + [(e.offset, 32)]
        return node


def _join(parent, name):
    return f"/{name}" if parent == "/" else f"{parent}/{name}"

