"""On-disk structures of vzdump archives: VMA and the compressed wrappers.

References:
- pve-qemu ``vma_spec.txt`` and ``debian/patches/pve/0026-PVE-Backup-add-vma-backup-format-code.patch``
  (``vma.h``: ``VmaHeader``, ``VmaDeviceInfoHeader``, ``VmaExtentHeader``; all integers
  big endian except the 2-byte blob lengths; MD5 over the header / extent header with
  the md5sum field zeroed; blockinfo = mask(16) | reserved(8) | dev_id(8) | cluster(32)).
- zstd ``doc/zstd_compression_format.md`` (frame header, block headers, skippable frames).
- RFC 1952 (gzip members).
- lzop ``src/lzop.c`` / ``src/p_lzo.c`` (file header fields and flags, block headers with
  adler32/crc32 checksums of decompressed and compressed data).
"""

from __future__ import annotations

import construct as c

from pvfs.errors import FormatError
from pvfs.structs import parse as _parse


class VzdumpError(FormatError):
    """A vzdump archive (VMA, tar or its compressed wrapper) is not what it must be."""


VMA_MAGIC = b"VMA\0"
VMA_EXTENT_MAGIC = b"VMAE"
VMA_CLUSTER_SIZE = 65536
VMA_BLOCK_SIZE = 4096
VMA_BLOCKS_PER_EXTENT = 59
VMA_EXTENT_HEADER_SIZE = 512
VMA_MAX_CONFIGS = 256
VMA_MAX_DEVICES = 256
VMA_FIXED_HEADER = 12288

#: ``VmaDeviceInfoHeader`` (vma.h), 32 bytes.
VmaDeviceInfo = c.Struct(
    "devname_ptr" / c.Int32ub,
    "reserved0" / c.Int32ub,
    "size" / c.Int64ub,
    "reserved1" / c.Bytes(16),
)

#: ``VmaHeader`` (vma.h), the fixed 12288 bytes before the blob buffer.
VmaHeader = c.Struct(
    "magic" / c.Bytes(4),
    "version" / c.Int32ub,
    "uuid" / c.Bytes(16),
    "ctime" / c.Int64sb,
    "md5sum" / c.Bytes(16),
    "blob_buffer_offset" / c.Int32ub,
    "blob_buffer_size" / c.Int32ub,
    "header_size" / c.Int32ub,
    "reserved" / c.Bytes(1984),
    "config_names" / c.Bytes(4 * VMA_MAX_CONFIGS),  # u32 BE pointers, parsed with struct
    "config_data" / c.Bytes(4 * VMA_MAX_CONFIGS),
    "reserved1" / c.Bytes(4),
    "dev_info" / c.Bytes(32 * VMA_MAX_DEVICES),  # VmaDeviceInfo[256], index = dev_id
)

#: ``VmaExtentHeader`` (vma.h), 512 bytes.
VmaExtentHeader = c.Struct(
    "magic" / c.Bytes(4),
    "reserved1" / c.Int16ub,
    "block_count" / c.Int16ub,
    "uuid" / c.Bytes(16),
    "md5sum" / c.Bytes(16),
    "blockinfo" / c.Bytes(8 * VMA_BLOCKS_PER_EXTENT),  # u64 BE each, parsed with struct
)

# --- compressed wrappers --------------------------------------------------------------
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"
LZOP_MAGIC = b"\x89LZO\x00\r\n\x1a\n"

# lzop flags (lzop's conf.h)
F_ADLER32_D = 0x00000001
F_ADLER32_C = 0x00000002
F_H_EXTRA_FIELD = 0x00000040
F_H_FILTER = 0x00000800
F_H_CRC32 = 0x00001000
F_CRC32_D = 0x00000100
F_CRC32_C = 0x00000200
LZOP_MAX_BLOCK = 64 * 1024 * 1024


def parse(struct, data, what, offset=None):
    """Parse a fixed-size header; a short buffer or a construct error is one :class:`VzdumpError`."""
    if len(data) < struct.sizeof():
        where = f" at {offset:#x}" if offset is not None else ""
        raise VzdumpError(f"{what}{where}: {len(data)} bytes, need {struct.sizeof()}")
    return _parse(struct, data, VzdumpError, what, offset)
