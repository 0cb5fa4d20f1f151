"""FAT12/16/32 and exFAT on-disk structures (all little-endian).

References:
- Microsoft, "FAT: General Overview of On-Disk Format" (fatgen103), sections 3 (boot sector
  and BPB), 4 (FAT), 5 (FSInfo), 6 (directory entries), 7 (long names).
- Microsoft, "exFAT file system specification" (2019), sections 3 (volume structure), 4 (FAT),
  6 (directory structure), 7 (directory entry definitions).
- torvalds/linux include/uapi/linux/msdos_fs.h (field names of the kernel's vfat driver),
  fs/exfat/exfat_raw.h.

The boot sectors are parsed with construct; directory entries (tens of thousands per
directory) with ``struct`` formats declared here, field by field.
"""

from __future__ import annotations

import struct

from construct import Bytes, Int8ul, Int16ul, Int32ul, Int64ul, Struct

SECTOR_SIGNATURE = b"\x55\xaa"  # bytes 510-511 of a boot sector

#: fatgen103 section 3.1: BPB fields common to FAT12/16/32 (bytes 0-35).
BiosParameterBlock = Struct(
    "BS_jmpBoot" / Bytes(3),
    "BS_OEMName" / Bytes(8),
    "BPB_BytsPerSec" / Int16ul,
    "BPB_SecPerClus" / Int8ul,
    "BPB_RsvdSecCnt" / Int16ul,
    "BPB_NumFATs" / Int8ul,
    "BPB_RootEntCnt" / Int16ul,
    "BPB_TotSec16" / Int16ul,
    "BPB_Media" / Int8ul,
    "BPB_FATSz16" / Int16ul,
    "BPB_SecPerTrk" / Int16ul,
    "BPB_NumHeads" / Int16ul,
    "BPB_HiddSec" / Int32ul,
    "BPB_TotSec32" / Int32ul,
)

#: fatgen103 section 3.2: the FAT12/FAT16 extension at byte 36.
Fat16Extension = Struct(
    "BS_DrvNum" / Int8ul,
    "BS_Reserved1" / Int8ul,  # Linux: bit 0 = FAT_STATE_DIRTY (fs/fat/inode.c fat_set_state)
    "BS_BootSig" / Int8ul,  # 0x29: the next three fields are present
    "BS_VolID" / Int32ul,
    "BS_VolLab" / Bytes(11),
    "BS_FilSysType" / Bytes(8),
)

#: fatgen103 section 3.3: the FAT32 extension at byte 36.
Fat32Extension = Struct(
    "BPB_FATSz32" / Int32ul,
    "BPB_ExtFlags" / Int16ul,  # bits 0-3 active FAT, bit 7: only the active FAT is kept up
    "BPB_FSVer" / Int16ul,
    "BPB_RootClus" / Int32ul,
    "BPB_FSInfo" / Int16ul,
    "BPB_BkBootSec" / Int16ul,
    "BPB_Reserved" / Bytes(12),
    "BS_DrvNum" / Int8ul,
    "BS_Reserved1" / Int8ul,
    "BS_BootSig" / Int8ul,
    "BS_VolID" / Int32ul,
    "BS_VolLab" / Bytes(11),
    "BS_FilSysType" / Bytes(8),
)

#: fatgen103 section 5: the FAT32 FSInfo sector.
FSInfo = Struct(
    "FSI_LeadSig" / Int32ul,  # 0x41615252
    "FSI_Reserved1" / Bytes(480),
    "FSI_StrucSig" / Int32ul,  # 0x61417272
    "FSI_Free_Count" / Int32ul,  # 0xFFFFFFFF: unknown
    "FSI_Nxt_Free" / Int32ul,
    "FSI_Reserved2" / Bytes(12),
    "FSI_TrailSig" / Int32ul,  # 0xAA550000
)
FSI_LEAD_SIG = 0x41615252
FSI_STRUC_SIG = 0x61417272
FSI_TRAIL_SIG = 0xAA550000

# fatgen103 section 4: FAT entry values (FAT32 values; only the low 28 bits count).
FAT12_MAX_CLUSTERS = 4084  # Linux MAX_FAT12 (0xFF4); fatgen103 says < 4085
FAT16_MAX_CLUSTERS = 65524
BAD_CLUSTER = {12: 0xFF7, 16: 0xFFF7, 32: 0x0FFFFFF7}
EOC_MIN = {12: 0xFF8, 16: 0xFFF8, 32: 0x0FFFFFF8}  # end of chain: >= this
FAT16_CLN_SHUT = 0x8000  # FAT[1]: volume was cleanly unmounted
FAT32_CLN_SHUT = 0x08000000
FAT_STATE_DIRTY = 0x01  # BS_Reserved1 bit set by Linux while mounted

#: fatgen103 section 6: a short (8.3) directory entry (DIR_*).
DIR_ENTRY = struct.Struct("<11sBBBHHHHHHHI")
DIR_ENTRY_FIELDS = ("DIR_Name", "DIR_Attr", "DIR_NTRes", "DIR_CrtTimeTenth", "DIR_CrtTime",
                    "DIR_CrtDate", "DIR_LstAccDate", "DIR_FstClusHI", "DIR_WrtTime",
                    "DIR_WrtDate", "DIR_FstClusLO", "DIR_FileSize")
#: fatgen103 section 7: a long-name entry (LDIR_*): Ord, Name1 (5 UCS-2), Attr, Type,
#: Chksum, Name2 (6), FstClusLO (0), Name3 (2).
LDIR_ENTRY = struct.Struct("<B10sBBB12sH4s")

ATTR_READ_ONLY = 0x01
ATTR_HIDDEN = 0x02
ATTR_SYSTEM = 0x04
ATTR_VOLUME_ID = 0x08
ATTR_DIRECTORY = 0x10
ATTR_ARCHIVE = 0x20
ATTR_LONG_NAME = 0x0F
ATTR_LONG_NAME_MASK = 0x3F
LAST_LONG_ENTRY = 0x40
DELETED = 0xE5
KANJI_E5 = 0x05  # DIR_Name[0] 0x05 stands for 0xE5
CASE_LOWER_BASE = 0x08  # DIR_NTRes (Linux msdos_fs.h): the base name is shown lower-case
CASE_LOWER_EXT = 0x10  # ... the extension is

# ---------------------------------------------------------------------------- exFAT
EXFAT_NAME = b"EXFAT   "

#: exFAT spec 3.1: the Main (and Backup) Boot Sector.
ExfatBootSector = Struct(
    "JumpBoot" / Bytes(3),
    "FileSystemName" / Bytes(8),
    "MustBeZero" / Bytes(53),
    "PartitionOffset" / Int64ul,
    "VolumeLength" / Int64ul,  # sectors
    "FatOffset" / Int32ul,  # sectors
    "FatLength" / Int32ul,
    "ClusterHeapOffset" / Int32ul,
    "ClusterCount" / Int32ul,
    "FirstClusterOfRootDirectory" / Int32ul,
    "VolumeSerialNumber" / Int32ul,
    "FileSystemRevision" / Int16ul,
    "VolumeFlags" / Int16ul,
    "BytesPerSectorShift" / Int8ul,
    "SectorsPerClusterShift" / Int8ul,
    "NumberOfFats" / Int8ul,
    "DriveSelect" / Int8ul,
    "PercentInUse" / Int8ul,
    "Reserved" / Bytes(7),
    "BootCode" / Bytes(390),
    "BootSignature" / Bytes(2),
)
VOLUME_FLAG_ACTIVE_FAT = 0x1
VOLUME_FLAG_DIRTY = 0x2
VOLUME_FLAG_MEDIA_FAILURE = 0x4
BOOT_REGION_SECTORS = 12  # main boot sector, 8 extended, OEM, reserved, checksum
EXFAT_BAD_CLUSTER = 0xFFFFFFF7
EXFAT_EOC = 0xFFFFFFFF

# exFAT spec 6.2 / 7: directory entry types (EntryType byte).
ENTRY_END = 0x00
ENTRY_IN_USE = 0x80
ENTRY_BITMAP = 0x81
ENTRY_UPCASE = 0x82
ENTRY_LABEL = 0x83
ENTRY_FILE = 0x85
ENTRY_GUID = 0xA0
ENTRY_STREAM = 0xC0
ENTRY_NAME = 0xC1
ENTRY_SECONDARY = 0x40  # TypeCategory bit: a secondary entry
ENTRY_BENIGN = 0x20  # TypeImportance bit

#: exFAT spec 7.1 (Allocation Bitmap) and 7.2 (Up-case Table): EntryType, flags / reserved,
#: TableChecksum (up-case only), FirstCluster, DataLength.
BITMAP_ENTRY = struct.Struct("<BB18xIQ")
UPCASE_ENTRY = struct.Struct("<B3xI12xIQ")
#: exFAT spec 7.3: Volume Label: EntryType, CharacterCount, VolumeLabel (11 UTF-16 chars).
LABEL_ENTRY = struct.Struct("<BB22s8x")
#: exFAT spec 7.4: File: EntryType, SecondaryCount, SetChecksum, FileAttributes, Reserved1,
#: Create/LastModified/LastAccessed Timestamp, Create/LastModified 10msIncrement,
#: Create/LastModified/LastAccessed UtcOffset.
FILE_ENTRY = struct.Struct("<BBHH2xIIIBBBBB7x")
#: exFAT spec 7.6: Stream Extension: EntryType, GeneralSecondaryFlags, Reserved1, NameLength,
#: NameHash, Reserved2, ValidDataLength, Reserved3, FirstCluster, DataLength.
STREAM_ENTRY = struct.Struct("<BBxBH2xQ4xIQ")
#: exFAT spec 7.7: File Name: EntryType, GeneralSecondaryFlags, FileName (15 UTF-16 chars).
NAME_ENTRY = struct.Struct("<BB30s")
FLAG_ALLOCATION_POSSIBLE = 0x1
FLAG_NO_FAT_CHAIN = 0x2
EXFAT_ATTR_READ_ONLY = 0x01
EXFAT_ATTR_DIRECTORY = 0x10
