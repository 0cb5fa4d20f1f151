"""RocksDB on-disk structures with a fixed layout (construct).

References (facebook/rocksdb, the 6.x tree Ceph 16 bundles, and current):
- table/format.h, table/format.cc: ``Footer`` — legacy (magic
  0xdb4775248b80fb57, 48 bytes: metaindex handle + index handle padded to
  40 bytes, magic) and new (magic 0x88e241b785f4cff7, 53 bytes:
  ``checksum`` type byte, the two handles padded to 40 bytes, ``u32
  version``, magic); ``BlockHandle`` = varint64 offset + varint64 size;
  ``kBlockTrailerSize`` = 5 (``compression type`` byte + u32 checksum).
- db/log_format.h: log record header ``checksum`` (masked crc32c), ``length``
  (u16), ``type`` (u8), and for recyclable types 5-8 also ``log number``
  (u32); ``kBlockSize`` = 32768.
- db/write_batch.cc: ``WriteBatch`` header = ``sequence`` (u64) + ``count`` (u32).
"""

from construct import Int8ul, Int16ul, Int32ul, Int64ul, Struct

kBlockBasedTableMagicNumber = 0x88E241B785F4CFF7
kLegacyBlockBasedTableMagicNumber = 0xDB4775248B80FB57
kPlainTableMagicNumber = 0x8242229663BF9564
kLegacyPlainTableMagicNumber = 0x4F3418EB7A8F13B8
kCuckooTableMagicNumber = 0x926789D0C5F17873

kBlockTrailerSize = 5
kNewVersionsEncodedLength = 1 + 40 + 4 + 8
kVersion0EncodedLength = 40 + 8
kMaxBlockHandleEncodedLength = 20

#: The last 12 bytes of every footer version >= 1: ``u32 version``, ``u64 magic``.
footer_tail = Struct(
    "version" / Int32ul,
    "magic" / Int64ul,
)

#: A block trailer: ``compression type`` + ``checksum`` (masked crc32c of data + type).
block_trailer = Struct(
    "type" / Int8ul,
    "checksum" / Int32ul,
)

kLogBlockSize = 32768
kHeaderSize = 7
kRecyclableHeaderSize = 11

log_header = Struct(
    "checksum" / Int32ul,
    "length" / Int16ul,
    "type" / Int8ul,
)

recyclable_log_header = Struct(
    "checksum" / Int32ul,
    "length" / Int16ul,
    "type" / Int8ul,
    "log_number" / Int32ul,
)

write_batch_header = Struct(
    "sequence" / Int64ul,
    "count" / Int32ul,
)

#: The 8-byte trailer of an internal key: ``(sequence << 8) | value type``.
internal_key_footer = Struct("packed" / Int64ul)
