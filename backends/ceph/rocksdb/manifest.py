"""The MANIFEST: a log of ``VersionEdit`` records.

Replaying it gives the column families (id -> name), each family's live SST
files (level, number, size, smallest/largest key, seqnos) and log number
(WAL files older than it hold nothing unflushed for that family), and the
DB-wide next file number, last sequence and prev/min log numbers.

Every edit is a list of ``varint32 tag`` + fields.  Tags with bit 13
(``kTagSafeIgnoreMask``) set are length-prefixed and may be skipped;
``kNewFile4`` carries custom fields up to ``kTerminate``, where a field with
bit 6 (``kCustomTagNonSafeIgnoreMask``) set that we do not know must not be
skipped.

References: rocksdb db/version_edit.h (Tag, NewFileCustomTag),
db/version_edit.cc (VersionEdit::DecodeFrom, DecodeNewFile4From),
db/version_set.cc (VersionSet::Recover, column family handling).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import RocksDBError
from .coding import slice_, varint, varint32
from .log import LogReader

kComparator = 1
kLogNumber = 2
kNextFileNumber = 3
kLastSequence = 4
kCompactPointer = 5
kDeletedFile = 6
kNewFile = 7
kPrevLogNumber = 9
kMinLogNumberToKeep = 10
kNewFile2 = 100
kNewFile3 = 102
kNewFile4 = 103
kColumnFamily = 200
kColumnFamilyAdd = 201
kColumnFamilyDrop = 202
kMaxColumnFamily = 203
kInAtomicGroup = 300
kBlobFileAddition = 400
kBlobFileGarbage = 401
kTagSafeIgnoreMask = 1 << 13

# NewFile4 custom tags
kTerminate = 1
kNeedCompaction = 2
kMinLogNumberToKeepHack = 3
kCustomTagNonSafeIgnoreMask = 1 << 6
kPathId = kCustomTagNonSafeIgnoreMask + 1

kFileNumberMask = 0x3FFFFFFFFFFFFFFF


@dataclass
class FileMeta:
    level: int
    number: int
    size: int
    smallest: bytes = b""
    largest: bytes = b""
    smallest_seqno: int = 0
    largest_seqno: int = 0
    path_id: int = 0


@dataclass
class ColumnFamily:
    id: int
    name: str
    log_number: int = 0
    files: dict = field(default_factory=dict)  # number -> FileMeta
    dropped: bool = False


@dataclass
class VersionEdit:
    column_family: int = 0
    comparator: str | None = None
    log_number: int | None = None
    prev_log_number: int | None = None
    next_file_number: int | None = None
    last_sequence: int | None = None
    min_log_number_to_keep: int | None = None
    max_column_family: int | None = None
    cf_add: str | None = None
    cf_drop: bool = False
    new_files: list = field(default_factory=list)
    deleted_files: list = field(default_factory=list)


def _new_file4(buf, pos, end, edit):
    level, pos = varint32(buf, pos, end)
    number, pos = varint(buf, pos, end)
    size, pos = varint(buf, pos, end)
    smallest, pos = slice_(buf, pos, end)
    largest, pos = slice_(buf, pos, end)
    sseq, pos = varint(buf, pos, end)
    lseq, pos = varint(buf, pos, end)
    path_id = 0
    for _ in range(1000):
        tag, pos = varint32(buf, pos, end)
        if tag == kTerminate:
            break
        value, pos = slice_(buf, pos, end)
        if tag == kPathId:
            path_id = value[0] if value else 0
        elif tag == kMinLogNumberToKeepHack:
            edit.min_log_number_to_keep = int.from_bytes(value[:8], "little")
        elif tag & kCustomTagNonSafeIgnoreMask:
            raise RocksDBError(f"NewFile4 field {tag} must be understood, and is not")
    else:
        raise RocksDBError("NewFile4 without kTerminate")
    edit.new_files.append(FileMeta(level, number & kFileNumberMask, size, smallest, largest,
                                   sseq, lseq, path_id))
    return pos


def decode_version_edit(buf) -> VersionEdit:
    e = VersionEdit()
    pos, end = 0, len(buf)
    while pos < end:
        tag, pos = varint32(buf, pos, end)
        if tag == kComparator:
            name, pos = slice_(buf, pos, end)
            e.comparator = name.decode("latin-1")
        elif tag == kLogNumber:
            e.log_number, pos = varint(buf, pos, end)
        elif tag == kPrevLogNumber:
            e.prev_log_number, pos = varint(buf, pos, end)
        elif tag == kNextFileNumber:
            e.next_file_number, pos = varint(buf, pos, end)
        elif tag == kLastSequence:
            e.last_sequence, pos = varint(buf, pos, end)
        elif tag == kMinLogNumberToKeep:
            e.min_log_number_to_keep, pos = varint(buf, pos, end)
        elif tag == kMaxColumnFamily:
            e.max_column_family, pos = varint32(buf, pos, end)
        elif tag == kCompactPointer:
            _, pos = varint32(buf, pos, end)
            _, pos = slice_(buf, pos, end)
        elif tag == kDeletedFile:
            level, pos = varint32(buf, pos, end)
            number, pos = varint(buf, pos, end)
            e.deleted_files.append((level, number))
        elif tag in (kNewFile, kNewFile2, kNewFile3):
            level, pos = varint32(buf, pos, end)
            number, pos = varint(buf, pos, end)
            path_id = 0
            if tag == kNewFile3:
                path_id, pos = varint32(buf, pos, end)
            size, pos = varint(buf, pos, end)
            smallest, pos = slice_(buf, pos, end)
            largest, pos = slice_(buf, pos, end)
            sseq = lseq = 0
            if tag != kNewFile:
                sseq, pos = varint(buf, pos, end)
                lseq, pos = varint(buf, pos, end)
            e.new_files.append(FileMeta(level, number, size, smallest, largest, sseq, lseq,
                                        path_id))
        elif tag == kNewFile4:
            pos = _new_file4(buf, pos, end, e)
        elif tag == kColumnFamily:
            e.column_family, pos = varint32(buf, pos, end)
        elif tag == kColumnFamilyAdd:
            name, pos = slice_(buf, pos, end)
            e.cf_add = name.decode("utf-8", "replace")
        elif tag == kColumnFamilyDrop:
            e.cf_drop = True
        elif tag == kInAtomicGroup:
            _, pos = varint32(buf, pos, end)
        elif tag & kTagSafeIgnoreMask:
            _, pos = slice_(buf, pos, end)
        else:
            raise RocksDBError(f"unknown VersionEdit tag {tag}")
    return e


class Manifest:
    """The replayed MANIFEST: ``column_families`` by id, DB-wide numbers."""

    def __init__(self, source, number=None, max_edits=10_000_000):
        self.column_families = {0: ColumnFamily(0, "default")}
        self.log_number = 0
        self.prev_log_number = 0
        self.next_file_number = 0
        self.last_sequence = 0
        self.min_log_number_to_keep = 0
        self.comparator = None
        self.edits = 0
        self.damage = []
        reader = LogReader(source, number)
        for off, rec in reader:
            try:
                self._apply(decode_version_edit(rec))
            except RocksDBError as err:
                self.damage.append(("rocksdb-manifest-bad-edit", f"MANIFEST edit at {off:#x}: {err}"))
                break
            self.edits += 1
            if self.edits > max_edits:
                raise RocksDBError("MANIFEST has too many edits")
        if reader.stop is not None:
            off, why = reader.stop
            self.damage.append(("rocksdb-manifest-tail", f"MANIFEST ends early at {off:#x}: {why}"))
        if self.edits == 0:
            raise RocksDBError("MANIFEST holds no readable version edit")
        if self.comparator not in (None, "leveldb.BytewiseComparator", "rocksdb.BytewiseComparator"):
            raise RocksDBError(f"unsupported comparator {self.comparator}")

    def _apply(self, e: VersionEdit):
        cfs = self.column_families
        if e.comparator is not None and e.column_family == 0:
            self.comparator = e.comparator
        if e.cf_add is not None:
            cfs[e.column_family] = ColumnFamily(e.column_family, e.cf_add)
        cf = cfs.get(e.column_family)
        if cf is None:
            raise RocksDBError(f"edit for unknown column family {e.column_family}")
        if e.cf_drop:
            cf.dropped = True
        if e.log_number is not None:
            cf.log_number = e.log_number
            self.log_number = max(self.log_number, e.log_number)
        if e.prev_log_number is not None:
            self.prev_log_number = e.prev_log_number
        if e.next_file_number is not None:
            self.next_file_number = e.next_file_number
        if e.last_sequence is not None:
            self.last_sequence = e.last_sequence
        if e.min_log_number_to_keep is not None:
            self.min_log_number_to_keep = max(self.min_log_number_to_keep,
                                              e.min_log_number_to_keep)
        for _level, number in e.deleted_files:
            cf.files.pop(number, None)
        for f in e.new_files:
            cf.files[f.number] = f

    @classmethod
    def empty(cls):
        """A MANIFEST with nothing in it, for salvage (the caller fills it)."""
        m = cls.__new__(cls)
        m.column_families = {0: ColumnFamily(0, "default")}
        m.log_number = m.prev_log_number = m.next_file_number = m.last_sequence = 0
        m.min_log_number_to_keep = 0
        m.comparator = None
        m.edits = 0
        m.damage = []
        return m

    def live_column_families(self):
        return [cf for _, cf in sorted(self.column_families.items()) if not cf.dropped]

    def min_log_number(self) -> int:
        """The oldest WAL that may hold unflushed data of a live column family."""
        nums = [cf.log_number for cf in self.live_column_families()]
        return min(nums) if nums else 0
