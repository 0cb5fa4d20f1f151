"""VMDK on-disk structures (little-endian).

References:
- VMware, "Virtual Disk Format 5.0" (the VMDK specification): "Hosted Sparse Extent Header",
  "Grain Directories and Grain Tables", "Stream-Optimized Compressed Sparse Extents"
  (grain markers, metadata markers, the footer), "Descriptor File".
- qemu/qemu block/vmdk.c (VMDK4Header, VmdkGrainMarker, the footer read when
  gdOffset is GD_AT_END, VMDK4_FLAG_* bits, the zeroed-grain GTE value 1).
"""

from construct import Bytes, Const, Int8ul, Int16ul, Int32ul, Int64ul, Struct

SECTOR = 512
SPARSE_MAGIC = b"KDMV"  # hosted sparse extent ("VMDK" little-endian)
COWD_MAGIC = b"COWD"  # ESX vmfsSparse extent: not supported
SESPARSE_MAGIC = b"\xbe\xba\xfe\xca"  # seSparse (0xCAFEBABE): not supported

#: "Hosted Sparse Extent Header" (qemu VMDK4Header with the magic in front).
SparseExtentHeader = Struct(
    "magicNumber" / Const(SPARSE_MAGIC),
    "version" / Int32ul,
    "flags" / Int32ul,
    "capacity" / Int64ul,  # sectors
    "grainSize" / Int64ul,  # sectors
    "descriptorOffset" / Int64ul,  # sectors
    "descriptorSize" / Int64ul,
    "numGTEsPerGT" / Int32ul,
    "rgdOffset" / Int64ul,  # redundant grain directory, sectors
    "gdOffset" / Int64ul,  # GD_AT_END: in the footer (stream-optimized)
    "overHead" / Int64ul,
    "uncleanShutdown" / Int8ul,
    "singleEndLineChar" / Bytes(1),  # '\n'
    "nonEndLineChar" / Bytes(1),  # ' '
    "doubleEndLineChar1" / Bytes(1),  # '\r'
    "doubleEndLineChar2" / Bytes(1),  # '\n'
    "compressAlgorithm" / Int16ul,  # 0 none, 1 deflate
)
HEADER_SIZE = 79

FLAG_NL_DETECT = 1 << 0
FLAG_RGD = 1 << 1  # the redundant grain directory is valid
FLAG_ZERO_GRAIN = 1 << 2  # GTE 1 means "this grain reads as zeros"
FLAG_COMPRESSED = 1 << 16
FLAG_MARKERS = 1 << 17
GD_AT_END = 0xFFFFFFFFFFFFFFFF
COMPRESSION_DEFLATE = 1
GTE_ZEROED = 1

#: Stream-optimized "Marker": lba (grain markers) or numSectors (metadata markers), size
#: (compressed bytes; 0 for a metadata marker), type (metadata markers only).
Marker = Struct(
    "val" / Int64ul,
    "size" / Int32ul,
    "type" / Int32ul,
)
MARKER_EOS = 0
MARKER_GT = 1
MARKER_GD = 2
MARKER_FOOTER = 3
GRAIN_MARKER_HEAD = 12  # lba (8) + size (4) before the compressed bytes
