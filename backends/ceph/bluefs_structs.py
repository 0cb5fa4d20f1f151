"""Fixed-size heads of BlueFS structures (construct); the variable tails are
decoded with :mod:`backends.ceph.denc`.

References: ceph/src/os/bluestore/bluefs_types.h and bluefs_types.cc
(``bluefs_super_t::encode``, ``bluefs_transaction_t::encode``),
ceph/src/include/encoding.h (ENCODE_START writes ``u8 v, u8 compat, u32 len``).
"""

from construct import Bytes, Int8ul, Int32ul, Int64ul, Struct

#: ENCODE_START / DENC_START header.
encode_start = Struct(
    "struct_v" / Int8ul,
    "struct_compat" / Int8ul,
    "struct_len" / Int32ul,
)

#: The first fields of ``bluefs_super_t`` (at byte 4096 of the BlueFS DB device):
#: ENCODE_START(2, 1), ``uuid_d uuid``, ``uuid_d osd_uuid``, ``u64 version``
#: (named ``seq`` in newer trees), ``u32 block_size``; then ``bluefs_fnode_t log_fnode``
#: and (v2) ``optional<bluefs_layout_t> memorized_layout``, then ``u32 crc``.
bluefs_super_head = Struct(
    "struct_v" / Int8ul,
    "struct_compat" / Int8ul,
    "struct_len" / Int32ul,
    "uuid" / Bytes(16),
    "osd_uuid" / Bytes(16),
    "version" / Int64ul,
    "block_size" / Int32ul,
)

#: What ``BlueFS::_replay`` peeks at in the first block of a log record:
#: ENCODE_START(1, 1) of ``bluefs_transaction_t``, ``uuid_d uuid``, ``u64 seq``.
#: ``u32 op_bl length``, the ops and ``u32 crc`` (= ceph_crc32c(-1, op_bl)) follow.
bluefs_transaction_head = Struct(
    "struct_v" / Int8ul,
    "struct_compat" / Int8ul,
    "struct_len" / Int32ul,
    "uuid" / Bytes(16),
    "seq" / Int64ul,
)

BLUEFS_SUPER_OFFSET = 4096
