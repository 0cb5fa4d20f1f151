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
    """

    def __init__(self, source, log_number=None, verify=True, max_record=256 << 20):
        self.source = source
        self.log_number = log_number
        self.verify = verify
        self.max_record = max_record
        self.stop = None  # (offset, reason) when the log ended before its size
        self.records = 0

    def __iter__(self):
        size = self.source.size
        pending = []
        pending_len = 0
        pending_start = None
        for block_off in range(0, size, kLogBlockSize):
            try:
                block = self.source.read(block_off, min(kLogBlockSize, size - block_off))
            except UnreadableError as e:
                self.stop = (block_off, f"unreadable: {e}")
                return
            pos = 0
            n = len(block)
            while pos + kHeaderSize <= n:
                crc, length, typ = _HDR.unpack_from(block, pos)
                rec_off = block_off + pos
                recyclable = kRecyclableFullType <= typ <= kRecyclableLastType or \
                    typ == kRecyclableUserDefinedTimestampSizeType
                hsize = kRecyclableHeaderSize if recyclable else kHeaderSize
                if typ == kZeroType and length == 0:
                    # preallocated (fallocate'd / recycled and zeroed) space: the end
                    if crc == 0:
                        self.stop = None if not pending else (rec_off, "zero area in a record")
                        return
                if pos + hsize > n:
                    self.stop = (rec_off, "truncated record header")
                    return
                if pos + hsize + length > n:
                    self.stop = (rec_off, "torn record: runs past the end of the block/file")
                    return
                payload_start = pos + hsize
                if self.verify:
                    actual = crc32c(block[pos + 6:payload_start + length])
                    if actual != rocksdb_unmask(crc):
                        self.stop = (rec_off, "checksum mismatch")
                        return
                if recyclable:
                    num = struct.unpack_from("<I", block, pos + 7)[0]
                    if self.log_number is not None and num != (self.log_number & 0xFFFFFFFF):
                        self.stop = (rec_off, f"stale record of recycled log {num}")
                        return
                    typ -= kRecyclableFullType - kFullType if typ <= kRecyclableLastType else 0
                data = block[payload_start:payload_start + length]
                pos = payload_start + length
                if typ == kFullType:
                    if pending:
                        self.stop = (rec_off, "FULL record inside a fragmented record")
                        return
                    self.records += 1
                    yield rec_off, data
                elif typ == kFirstType:
                    if pending:
                        self.stop = (rec_off, "FIRST record inside a fragmented record")
                        return
                    pending, pending_len, pending_start = [data], len(data), rec_off
                elif typ == kMiddleType or typ == kLastType:
                    if not pending:
                        self.stop = (rec_off, "MIDDLE/LAST record without FIRST")
                        return
                    pending.append(data)
                    pending_len += len(data)
                    if pending_len > self.max_record:
                        self.stop = (pending_start, f"record larger than {self.max_record}")
                        return
                    if typ == kLastType:
                        self.records += 1
                        yield pending_start, b"".join(pending)
                        pending, pending_len = [], 0
                elif typ in (kSetCompressionType, kUserDefinedTimestampSizeType,
                             kRecyclableUserDefinedTimestampSizeType):
                    continue  # metadata records of newer RocksDB: nothing for us
                else:
                    self.stop = (rec_off, f"unknown record type {typ}")
                    return
            # the rest of the block (< header size) is padding
        if pending:
            self.stop = (pending_start, "torn fragmented record at the end of the log")
