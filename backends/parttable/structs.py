"""On-disk structures of MBR and GPT partition tables.

References:
- UEFI Specification 2.10, section 5.2 "LBA 0 Format" (legacy MBR, protective MBR)
  and 5.3 "GUID Partition Table (GPT) Disk Layout" (GPT header, partition entry).
- Extended boot records: the "EBR" chain as Linux reads it (block/partitions/msdos.c).
"""

from construct import Bytes, Const, Int8ul, Int32ul, Int64ul, Padding, Struct

#: One of the four 16-byte entries at offset 446 of an MBR or EBR.
MbrPartitionEntry = Struct(
    "status" / Int8ul,  # 0x80 bootable, 0x00 inactive
    "chs_first" / Bytes(3),
    "type" / Int8ul,  # 0x05/0x0f/0x85 extended, 0xee GPT protective
    "chs_last" / Bytes(3),
    "lba_first" / Int32ul,
    "num_sectors" / Int32ul,
)

MBR_ENTRIES_OFFSET = 446
MBR_SIGNATURE = b"\x55\xaa"
EXTENDED_TYPES = {0x05, 0x0F, 0x85}
GPT_PROTECTIVE = 0xEE

#: UEFI 2.10 table 5.5, "GPT Header".
GptHeader = Struct(
    "signature" / Const(b"EFI PART"),
    "revision" / Int32ul,
    "header_size" / Int32ul,
    "header_crc32" / Int32ul,
    Padding(4),
    "my_lba" / Int64ul,
    "alternate_lba" / Int64ul,
    "first_usable_lba" / Int64ul,
    "last_usable_lba" / Int64ul,
    "disk_guid" / Bytes(16),
    "partition_entry_lba" / Int64ul,
    "number_of_partition_entries" / Int32ul,
    "size_of_partition_entry" / Int32ul,
    "partition_entry_array_crc32" / Int32ul,
)
GPT_HEADER_MIN = 92

#: UEFI 2.10 table 5.6, "GPT Partition Entry".
GptPartitionEntry = Struct(
    "partition_type_guid" / Bytes(16),
    "unique_partition_guid" / Bytes(16),
    "starting_lba" / Int64ul,
    "ending_lba" / Int64ul,
    "attributes" / Int64ul,
    "partition_name" / Bytes(72),  # UTF-16LE, NUL padded
)
GPT_ENTRY_MIN = 128

#: A few well-known partition type GUIDs (mixed-endian text form), for the report.
GPT_TYPES = {
    "c12a7328-f81f-11d2-ba4b-00a0c93ec93b": "EFI System",
    "21686148-6449-6e6f-744e-656564454649": "BIOS boot",
    "0fc63daf-8483-4772-8e79-3d69d8477de4": "Linux filesystem",
    "e6d6d379-f507-44c2-a23c-238f2a3df928": "Linux LVM",
    "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f": "Linux swap",
    "a19d880f-05fc-4d3b-a006-743f0f84911e": "Linux RAID",
    "6a898cc3-1dd2-11b2-99a6-080020736631": "Solaris /usr (ZFS)",
    "516e7cba-6ecf-11d6-8ff8-00022d09712b": "FreeBSD ZFS",
    "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7": "Microsoft basic data",
    "e3c9e316-0b5c-4db8-817d-f92df00215ae": "Microsoft reserved",
}
