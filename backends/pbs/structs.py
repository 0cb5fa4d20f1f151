"""On-disk structures of Proxmox Backup Server datastores and pxar archives.

References:
- proxmox-backup ``pbs-datastore/src/file_formats.rs``: blob magics, ``DataBlobHeader``,
  ``EncryptedDataBlobHeader``.
- proxmox-backup ``pbs-datastore/src/data_blob.rs``: CRC32 over the payload after the
  header; zstd payload; AES-256-GCM payload (16-byte IV, 16-byte tag, empty AAD).
- proxmox-backup ``pbs-datastore/src/fixed_index.rs`` (``FixedIndexHeader``) and
  ``dynamic_index.rs`` (``DynamicIndexHeader``, ``DynamicEntry``), ``docs/file-formats.rst``.
- proxmox-backup ``pbs-key-config/src/lib.rs``: key file JSON (``KeyConfig``).
- proxmox/pxar ``src/format/mod.rs``: item header, ``Stat`` (ENTRY), ``GoodbyeItem``,
  ``Device``, ``PayloadRef``, item type constants.

All integers are little endian.  Large tables (index digests, goodbye tables) are parsed
with ``struct``/numpy in the logic modules, never with construct ``Array``.
"""

from __future__ import annotations

import construct as c

from pvfs.errors import FormatError
from pvfs.structs import parse as _parse


class PbsError(FormatError):
    """A PBS datastore structure (blob, index, manifest, pxar) is not what it must be."""


# --- file_formats.rs: magics = first 8 bytes of sha256 of a text ------------------------
UNCOMPRESSED_BLOB_MAGIC_1_0 = bytes([66, 171, 56, 7, 190, 131, 112, 161])
COMPRESSED_BLOB_MAGIC_1_0 = bytes([49, 185, 88, 66, 111, 182, 163, 127])
ENCRYPTED_BLOB_MAGIC_1_0 = bytes([123, 103, 133, 190, 34, 45, 76, 240])
ENCR_COMPR_BLOB_MAGIC_1_0 = bytes([230, 89, 27, 191, 11, 191, 216, 11])
FIXED_SIZED_CHUNK_INDEX_1_0 = bytes([47, 127, 65, 237, 145, 253, 15, 205])
DYNAMIC_SIZED_CHUNK_INDEX_1_0 = bytes([28, 145, 78, 165, 25, 186, 179, 205])
PROXMOX_CATALOG_FILE_MAGIC_1_0 = bytes([145, 253, 96, 249, 196, 103, 88, 213])

BLOB_MAGICS = {
    UNCOMPRESSED_BLOB_MAGIC_1_0: "uncompressed",
    COMPRESSED_BLOB_MAGIC_1_0: "zstd",
    ENCRYPTED_BLOB_MAGIC_1_0: "encrypted",
    ENCR_COMPR_BLOB_MAGIC_1_0: "encrypted+zstd",
}

#: ``DataBlobHeader`` (file_formats.rs): magic + CRC32 of everything after the header.
DataBlobHeader = c.Struct(
    "magic" / c.Bytes(8),
    "crc" / c.Int32ul,
)

#: ``EncryptedDataBlobHeader`` (file_formats.rs): head + AES-GCM IV and tag.
EncryptedDataBlobHeader = c.Struct(
    "head" / DataBlobHeader,
    "iv" / c.Bytes(16),
    "tag" / c.Bytes(16),
)

INDEX_HEADER_SIZE = 4096

#: ``FixedIndexHeader`` (fixed_index.rs), 4096 bytes; then ceil(size/chunk_size) digests.
FixedIndexHeader = c.Struct(
    "magic" / c.Bytes(8),
    "uuid" / c.Bytes(16),
    "ctime" / c.Int64sl,
    "index_csum" / c.Bytes(32),
    "size" / c.Int64ul,
    "chunk_size" / c.Int64ul,
    "reserved" / c.Bytes(4016),
)

#: ``DynamicIndexHeader`` (dynamic_index.rs), 4096 bytes; then ``DynamicEntry`` items
#: (``end_le`` u64 + digest, 40 bytes).
DynamicIndexHeader = c.Struct(
    "magic" / c.Bytes(8),
    "uuid" / c.Bytes(16),
    "ctime" / c.Int64sl,
    "index_csum" / c.Bytes(32),
    "reserved" / c.Bytes(4032),
)
DYNAMIC_ENTRY_SIZE = 40
FIXED_ENTRY_SIZE = 32

# --- pxar src/format/mod.rs ---------------------------------------------------------
PXAR_FORMAT_VERSION = 0x730F6C75DF16A40D
PXAR_PRELUDE = 0xE309D79D9F7B771B
PXAR_ENTRY = 0xD5956474E588ACEF
PXAR_ENTRY_V1 = 0x11DA850A1C1CCEFF
PXAR_FILENAME = 0x16701121063917B3
PXAR_SYMLINK = 0x27F971E7DBF5DC5F
PXAR_DEVICE = 0x9FC9E906586D5CE9
PXAR_XATTR = 0x0DAB0229B57DCD03
PXAR_ACL_USER = 0x2CE8540A457D55B8
PXAR_ACL_GROUP = 0x136E3ECEB04C03AB
PXAR_ACL_GROUP_OBJ = 0x10868031E9582876
PXAR_ACL_DEFAULT = 0xBBBB13415A6896F5
PXAR_ACL_DEFAULT_USER = 0xC89357B40532CD1F
PXAR_ACL_DEFAULT_GROUP = 0xF90A8A5816038FFE
PXAR_FCAPS = 0x2DA9DD9DB5F7FB67
PXAR_QUOTA_PROJID = 0xE07540E82F7D1CBB
PXAR_HARDLINK = 0x51269C8422BD7275
PXAR_PAYLOAD = 0x28147A1B0B7C1A25
PXAR_PAYLOAD_REF = 0x419D3D6BC4BA977E
PXAR_GOODBYE = 0x2FEC4FA642D5731D
PXAR_GOODBYE_TAIL_MARKER = 0xEF5EED5B753E1555
PXAR_PAYLOAD_START_MARKER = 0x834C68C2194A4ED2
PXAR_PAYLOAD_TAIL_MARKER = 0x6C72B78B984C81B5

PXAR_METADATA_ITEMS = {
    PXAR_XATTR, PXAR_ACL_USER, PXAR_ACL_GROUP, PXAR_ACL_GROUP_OBJ, PXAR_ACL_DEFAULT,
    PXAR_ACL_DEFAULT_USER, PXAR_ACL_DEFAULT_GROUP, PXAR_FCAPS, PXAR_QUOTA_PROJID,
}

#: Every item: ``Header {htype, full_size}``; full_size includes these 16 bytes.
Header = c.Struct(
    "htype" / c.Int64ul,
    "full_size" / c.Int64ul,
)
HEADER_SIZE = 16

#: ``Stat`` (ENTRY content, 40 bytes): mode, flags, uid, gid, mtime {secs, nanos, pad}.
Stat = c.Struct(
    "mode" / c.Int64ul,
    "flags" / c.Int64ul,
    "uid" / c.Int32ul,
    "gid" / c.Int32ul,
    "mtime" / c.Struct("secs" / c.Int64sl, "nanos" / c.Int32ul, "_pad" / c.Int32ul),
)

#: ``StatV1`` (ENTRY_V1 content, 32 bytes): mtime in nanoseconds.
StatV1 = c.Struct(
    "mode" / c.Int64ul,
    "flags" / c.Int64ul,
    "uid" / c.Int32ul,
    "gid" / c.Int32ul,
    "mtime" / c.Int64ul,
)

#: ``GoodbyeItem`` (24 bytes): hash, offset (backwards distance), size.
GoodbyeItem = c.Struct(
    "hash" / c.Int64ul,
    "offset" / c.Int64ul,
    "size" / c.Int64ul,
)
GOODBYE_ITEM_SIZE = 24

#: ``Device`` (DEVICE content).
Device = c.Struct("major" / c.Int64ul, "minor" / c.Int64ul)

#: ``PayloadRef`` (PAYLOAD_REF content, format v2).
PayloadRef = c.Struct("offset" / c.Int64ul, "size" / c.Int64ul)


def parse(struct, data, what, offset=None):
    """Parse a fixed-size header; a short buffer or a construct error is one :class:`PbsError`."""
    if len(data) < struct.sizeof():
        where = f" at {offset:#x}" if offset is not None else ""
        raise PbsError(f"{what}{where}: {len(data)} bytes, need {struct.sizeof()}")
    return _parse(struct, data, PbsError, what, offset)
