"""``WriteBatch``: the payload of every WAL record.

``u64 sequence, u32 count`` then ``count`` operations, each a tag byte and
its fields (length-prefixed slices, varint32 column family ids).  Every
key-carrying operation consumes one sequence number, starting at
``sequence``; LogData, Noop and the 2PC markers do not.

References: rocksdb db/write_batch.cc (ReadRecordFromWriteBatch,
WriteBatchInternal::Iterate), db/dbformat.h (ValueType).
"""

from __future__ import annotations

import struct

from ..errors import RocksDBError
from .coding import slice_, varint32
from .structs import write_batch_header

_HEADER = struct.Struct("<QI")
assert _HEADER.size == write_batch_header.sizeof()

# ValueType / record tags (db/dbformat.h)
kTypeDeletion = 0x0
kTypeValue = 0x1
kTypeMerge = 0x2
kTypeLogData = 0x3
kTypeColumnFamilyDeletion = 0x4
kTypeColumnFamilyValue = 0x5
kTypeColumnFamilyMerge = 0x6
kTypeSingleDeletion = 0x7
kTypeColumnFamilySingleDeletion = 0x8
kTypeBeginPrepareXID = 0x9
kTypeEndPrepareXID = 0xA
kTypeCommitXID = 0xB
kTypeRollbackXID = 0xC
kTypeNoop = 0xD
kTypeColumnFamilyRangeDeletion = 0xE
kTypeRangeDeletion = 0xF
kTypeColumnFamilyBlobIndex = 0x10
kTypeBlobIndex = 0x11
kTypeBeginPersistedPrepareXID = 0x12
kTypeBeginUnprepareXID = 0x13
kTypeDeletionWithTimestamp = 0x14
kTypeCommitXIDAndTimestamp = 0x15
kTypeWideColumnEntity = 0x16
kTypeColumnFamilyWideColumnEntity = 0x17

#: What an operation means once decoded (the internal value type it becomes).
PUT, DELETE, MERGE, SINGLE_DELETE, RANGE_DELETE, BLOB_INDEX, ENTITY = (
    kTypeValue, kTypeDeletion, kTypeMerge, kTypeSingleDeletion, kTypeRangeDeletion,
    kTypeBlobIndex, kTypeWideColumnEntity)

# tag -> (has column family, kind, number of slices)
_OPS = {
    kTypeValue: (False, PUT, 2),
    kTypeColumnFamilyValue: (True, PUT, 2),
    kTypeDeletion: (False, DELETE, 1),
    kTypeColumnFamilyDeletion: (True, DELETE, 1),
    kTypeSingleDeletion: (False, SINGLE_DELETE, 1),
    kTypeColumnFamilySingleDeletion: (True, SINGLE_DELETE, 1),
    kTypeMerge: (False, MERGE, 2),
    kTypeColumnFamilyMerge: (True, MERGE, 2),
    kTypeRangeDeletion: (False, RANGE_DELETE, 2),
    kTypeColumnFamilyRangeDeletion: (True, RANGE_DELETE, 2),
    kTypeBlobIndex: (False, BLOB_INDEX, 2),
    kTypeColumnFamilyBlobIndex: (True, BLOB_INDEX, 2),
    kTypeDeletionWithTimestamp: (False, DELETE, 1),
    kTypeWideColumnEntity: (False, ENTITY, 2),
    kTypeColumnFamilyWideColumnEntity: (True, ENTITY, 2),
}
# tag -> number of slices, no sequence consumed
_MARKERS = {kTypeLogData: 1, kTypeNoop: 0, kTypeBeginPrepareXID: 0,
            kTypeBeginPersistedPrepareXID: 0, kTypeBeginUnprepareXID: 0,
            kTypeEndPrepareXID: 1, kTypeCommitXID: 1, kTypeRollbackXID: 1,
            kTypeCommitXIDAndTimestamp: 2}


def decode_write_batch(data):
    """``(sequence, count, ops)``; ops are ``(seq, cf_id, kind, key, value)``.

    For RANGE_DELETE ``key`` is the begin and ``value`` the end key; for
    DELETE/SINGLE_DELETE ``value`` is None.  Raises :class:`RocksDBError`.
    """
    if len(data) < 12:
        raise RocksDBError(f"write batch of {len(data)} bytes is shorter than its header")
    # the header as declared in structs.write_batch_header; struct in this hot loop
    seq, count = _HEADER.unpack_from(data)
    if count > len(data):  # every op needs at least one byte
        raise RocksDBError(f"write batch claims {count} ops in {len(data)} bytes")
    ops = []
    pos, end = 12, len(data)
    cur = seq
    while pos < end:
        tag = data[pos]
        pos += 1
        spec = _OPS.get(tag)
        if spec is not None:
            has_cf, kind, nslices = spec
            cf = 0
            if has_cf:
                cf, pos = varint32(data, pos, end)
            key, pos = slice_(data, pos, end)
            value = None
            if nslices == 2:
                value, pos = slice_(data, pos, end)
            ops.append((cur, cf, kind, key, value))
            cur += 1
        elif tag in _MARKERS:
            for _ in range(_MARKERS[tag]):
                _, pos = slice_(data, pos, end)
        else:
            raise RocksDBError(f"unknown write batch tag {tag:#x} at offset {pos - 1}")
    if len(ops) != count:
        raise RocksDBError(f"write batch says {count} ops, holds {len(ops)}")
    return seq, count, ops
