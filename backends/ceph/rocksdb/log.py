"""The RocksDB log format (WAL files ``NNNNNN.log`` and ``MANIFEST-NNNNNN``).

A log is a sequence of 32 KiB blocks.  Each physical record has a header
``checksum u32, length u16, type u8`` (+ ``log_number u32`` for the
recyclable types 5-8) and ``length`` bytes of payload; the checksum is the
masked crc32c of ``type [+ log_number] + payload``.  A logical record is one
FULL record or FIRST, MIDDLE..., LAST fragments.  Fewer than a header's
bytes at the end of a block are zero padding.

Reading stops, as ``WALRecoveryMode::kPointInTimeRecovery`` does, at the
first record that is torn (runs past the end of the file), has a bad
checksum, belongs to an older incarnation of a recycled file (recyclable
record with another log number) or is a zero-type preallocated area; the
reason and offset are kept in ``LogReader.stop``.

References: rocksdb db/log_format.h, db/log_reader.cc (ReadRecord,
ReadPhysicalRecord), db/log_writer.cc (EmitPhysicalRecord).
"""

from __future__ import annotations

import struct

from pvfs.errors import UnreadableError

from ..checksum import crc32c, rocksdb_unmask
from .structs import kHeaderSize, kLogBlockSize, kRecyclableHeaderSize

kZeroType = 0
kFullType, kFirstType, kMiddleType, kLastType = 1, 2, 3, 4
kRecyclableFullType, kRecyclableFirstType, kRecyclableMiddleType, kRecyclableLastType = 5, 6, 7, 8
kSetCompressionType = 9
kUserDefinedTimestampSizeType = 10
kRecyclableUserDefinedTimestampSizeType = 11

_HDR = struct.Struct("<IHB")
_CHUNK = 1 << 20  # read the log 1 MiB at a time


class LogReader:
    """Iterate the logical records of a log Source: ``for offset, payload in reader``.

    ``verify``: check record checksums (recommended; a mismatch ends the log).
    ``log_number``: the file's number, to recognise stale recycled records.
    ``resync``: after a damaged spot (bad checksum, broken framing, unreadable
    block) go on at the next 32 KiB block instead of stopping, like RocksDB's
    ``kSkipAnyCorruptedRecords``; the spots that valid records followed are listed
    in ``skipped``, a damaged spot with nothing valid after it is ``stop``.
    """

    def __init__(self, source, log_number=None, verify=True, max_record=256 << 20,
                 resync=False):
        self.source = source
        self.log_number = log_number
        self.verify = verify
        self.max_record = max_record
        self.resync = resync
        self.stop = None  # (offset, reason) when the log ended before its size
        self.skipped = []  # [(offset, reason)] damaged spots passed over (resync)
        self.records = 0

    def __iter__(self):
        size = self.source.size
        pending = []
        pending_len = 0
        pending_start = None
        problem = None  # a damaged spot not yet followed by a valid record
        for block_off in range(0, size, kLogBlockSize):
            try:
                block = self.source.read(block_off, min(kLogBlockSize, size - block_off))
            except UnreadableError as e:
                if not self.resync:
                    self.stop = (block_off, f"unreadable: {e}")
                    return
                problem = problem or (block_off, f"unreadable: {e}")
                pending, pending_len = [], 0
                continue
            pos = 0
            n = len(block)
            bad = None
            final = False  # the log really ends here (zeros, stale recycled records)
            while pos + kHeaderSize <= n:
                crc, length, typ = _HDR.unpack_from(block, pos)
                rec_off = block_off + pos
                recyclable = kRecyclableFullType <= typ <= kRecyclableLastType or \
                    typ == kRecyclableUserDefinedTimestampSizeType
                hsize = kRecyclableHeaderSize if recyclable else kHeaderSize
                if typ == kZeroType and length == 0 and crc == 0:
                    # preallocated (fallocate'd / recycled and zeroed) space: the end
                    if pending:
                        bad = (rec_off, "zero area in a record")
                    final = True
                    break
                if pos + hsize > n:
                    bad = (rec_off, "truncated record header")
                    break
                if pos + hsize + length > n:
                    bad = (rec_off, "torn record: runs past the end of the block/file")
                    break
                payload_start = pos + hsize
                if self.verify:
                    actual = crc32c(block[pos + 6:payload_start + length])
                    if actual != rocksdb_unmask(crc):
                        bad = (rec_off, "checksum mismatch")
                        break
                if recyclable:
                    num = struct.unpack_from("<I", block, pos + 7)[0]
                    if self.log_number is not None and num != (self.log_number & 0xFFFFFFFF):
                        bad = (rec_off, f"stale record of recycled log {num}")
                        final = True
                        break
                    typ -= kRecyclableFullType - kFullType if typ <= kRecyclableLastType else 0
                data = block[payload_start:payload_start + length]
                pos = payload_start + length
                if typ in (kFullType, kFirstType):
                    if pending:
                        bad = (rec_off, "a new record inside a fragmented record")
                        if not self.resync:
                            break
                        self.skipped.append((pending_start, "fragmented record cut short"))
                        pending, pending_len = [], 0
                    if typ == kFullType:
                        if problem is not None:
                            self.skipped.append(problem)
                            problem = None
                        bad = None
                        self.records += 1
                        yield rec_off, data
                    else:
                        bad = None
                        pending, pending_len, pending_start = [data], len(data), rec_off
                elif typ in (kMiddleType, kLastType):
                    if not pending:
                        if self.resync:
                            continue  # the rest of a record lost at a damaged spot
                        bad = (rec_off, "MIDDLE/LAST record without FIRST")
                        break
                    pending.append(data)
                    pending_len += len(data)
                    if pending_len > self.max_record:
                        bad = (pending_start, f"record larger than {self.max_record}")
                        pending, pending_len = [], 0
                        break
                    if typ == kLastType:
                        if problem is not None:
                            self.skipped.append(problem)
                            problem = None
                        self.records += 1
                        yield pending_start, b"".join(pending)
                        pending, pending_len = [], 0
                elif typ in (kSetCompressionType, kUserDefinedTimestampSizeType,
                             kRecyclableUserDefinedTimestampSizeType):
                    continue  # metadata records of newer RocksDB: nothing for us
                else:
                    bad = (rec_off, f"unknown record type {typ}")
                    break
            # the rest of the block (< header size) is padding
            if bad is not None:
                if not self.resync or final:
                    self.stop = problem or bad
                    return
                problem = problem or bad
                pending, pending_len = [], 0
            if final:
                self.stop = problem
                return
        if pending:
            problem = problem or (pending_start, "torn fragmented record at the end of the log")
        self.stop = problem
