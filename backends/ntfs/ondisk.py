"""NTFS on-disk structures that pvfs reads itself, around libfsntfs.

libfsntfs (pyfsntfs) does the directory indexes, attribute lists, run lists and
LZNT1.  pvfs parses only what it must check or what the library does not give:
the boot sector (and its backup in the last sector, when the first is gone),
MFT record headers with their update sequence fixups (to find a zeroed or torn
``$MFT`` record 0 and lay ``$MFTMirr`` over it), resident attributes of one
record (the reparse point, which pyfsntfs 20260827 does not expose), the
``$LogFile`` restart area (clean or not), and ntfs-3g's Interix special files.

References:
- libyal libfsntfs, ``documentation/New Technologies File System (NTFS).asciidoc``
  (boot sector, MFT entry header, fixups, attribute header, reparse point data,
  ``$LogFile`` restart page/area, ``$Volume`` information flags).
- ntfs-3g ``include/ntfs-3g/layout.h`` and ``logfile.h`` (``RESTART_AREA``,
  ``RESTART_VOLUME_IS_CLEAN``, ``LOGFILE_NO_CLIENT``, ``INTX_FILE`` magics),
  ``libntfs-3g/reparse.c`` (symlink/junction mapping), ``src/ntfs-3g.c``
  ``ntfs_fuse_getattr`` (SYSTEM files of size 0/1 are fifo/socket, Interix
  ``IntxLNK``/``IntxCHR``/``IntxBLK``).
- [MS-FSCC] 2.1.2.1 (reparse tags), 2.1.2.4 (symbolic link reparse data),
  2.1.2.5 (mount point reparse data).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from construct import Bytes, Const, Int8sl, Int8ul, Int16ul, Int32ul, Int64sl, Int64ul, Struct

from pvfs.errors import FormatError
from pvfs.structs import parse

BootSector = Struct(
    "jump" / Bytes(3),
    "oem_id" / Const(b"NTFS    "),
    "bytes_per_sector" / Int16ul,
    "sectors_per_cluster" / Int8ul,
    "reserved_sectors" / Int16ul,
    "fats" / Int8ul,
    "root_entries" / Int16ul,
    "sectors" / Int16ul,
    "media_type" / Int8ul,
    "sectors_per_fat" / Int16ul,
    "sectors_per_track" / Int16ul,
    "heads" / Int16ul,
    "hidden_sectors" / Int32ul,
    "large_sectors" / Int32ul,
    "unused" / Bytes(4),
    "number_of_sectors" / Int64sl,
    "mft_lcn" / Int64sl,
    "mftmirr_lcn" / Int64sl,
    "clusters_per_mft_record" / Int8sl,
    "reserved0" / Bytes(3),
    "clusters_per_index_record" / Int8sl,
    "reserved1" / Bytes(3),
    "volume_serial_number" / Int64ul,
    "checksum" / Int32ul,
)

MftRecordHeader = Struct(
    "magic" / Bytes(4),  # "FILE"; "BAAD" after a failed multi-sector write
    "usa_ofs" / Int16ul,
    "usa_count" / Int16ul,
    "lsn" / Int64ul,
    "sequence_number" / Int16ul,
    "link_count" / Int16ul,
    "attrs_offset" / Int16ul,
    "flags" / Int16ul,  # 1 in use, 2 directory
    "bytes_in_use" / Int32ul,
    "bytes_allocated" / Int32ul,
    "base_mft_record" / Int64ul,
    "next_attr_instance" / Int16ul,
)

#: attribute header: type, length, non_resident, name_length, name_offset, flags, instance
_ATTR_HDR = struct.Struct("<IIBBHHH")
_RESIDENT = struct.Struct("<IH")  # value_length, value_offset (at +16)

AT_STANDARD_INFORMATION = 0x10
AT_FILE_NAME = 0x30
AT_VOLUME_INFORMATION = 0x70
AT_DATA = 0x80
AT_REPARSE_POINT = 0xC0
AT_END = 0xFFFFFFFF

# $STANDARD_INFORMATION / $FILE_NAME file attribute flags ([MS-FSCC] 2.6)
FILE_ATTRIBUTE_READONLY = 0x0001
FILE_ATTRIBUTE_SYSTEM = 0x0004
FILE_ATTRIBUTE_REPARSE_POINT = 0x0400
FILE_ATTRIBUTE_COMPRESSED = 0x0800
FILE_ATTRIBUTE_ENCRYPTED = 0x4000

IO_REPARSE_TAG_MOUNT_POINT = 0xA0000003
IO_REPARSE_TAG_SYMLINK = 0xA000000C
SYMLINK_FLAG_RELATIVE = 1

VOLUME_IS_DIRTY = 0x0001
RESTART_VOLUME_IS_CLEAN = 0x0002
LOGFILE_NO_CLIENT = 0xFFFF

#: ntfs-3g's Interix file types (a SYSTEM file whose data starts with one of these)
INTX_SYMBOLIC_LINK = b"IntxLNK\x01"
INTX_CHARACTER_DEVICE = b"IntxCHR\x00"
INTX_BLOCK_DEVICE = b"IntxBLK\x00"

#: Windows FILETIME (100 ns since 1601-01-01) of the Unix epoch.
FILETIME_UNIX_EPOCH = 116_444_736_000_000_000


@dataclass
class Boot:
    bytes_per_sector: int
    cluster_size: int
    number_of_sectors: int
    mft_offset: int
    mftmirr_offset: int
    mft_record_size: int
    serial: int

    @property
    def size(self) -> int:
        """Bytes the filesystem spans (the backup boot sector is the one after them)."""
        return self.number_of_sectors * self.bytes_per_sector


def parse_boot(data: bytes, volume_size: int | None = None) -> Boot:
    """Check and decode a boot sector; :class:`FormatError` when it is not a sane NTFS one."""
    b = parse(BootSector, data[:512], what="NTFS boot sector")
    bps = b.bytes_per_sector
    if bps not in (256, 512, 1024, 2048, 4096):
        raise FormatError(f"bytes per sector {bps} is not a power of two in 256..4096")
    spc = b.sectors_per_cluster
    if spc > 0x80:  # Windows 10 writes 2**(256 - n) for clusters above 64 KiB
        spc = 1 << (256 - spc)
    if spc == 0 or spc & (spc - 1) or spc * bps > 2 << 20:
        raise FormatError(f"sectors per cluster {b.sectors_per_cluster} is invalid")
    cluster = spc * bps
    cpm = b.clusters_per_mft_record
    rec = cpm * cluster if cpm > 0 else (1 << -cpm if -31 <= cpm < 0 else 0)
    if rec < 256 or rec > 65536 or rec & (rec - 1) or rec % bps:
        raise FormatError(f"MFT record size {rec} (clusters_per_mft_record {cpm}) is invalid")
    if b.number_of_sectors <= 0:
        raise FormatError(f"number of sectors {b.number_of_sectors} is invalid")
    total = b.number_of_sectors * bps
    limit = total if volume_size is None else max(total, volume_size)
    for what, lcn in (("MFT", b.mft_lcn), ("MFT mirror", b.mftmirr_lcn)):
        if lcn <= 0 or lcn * cluster + rec > limit:
            raise FormatError(f"{what} cluster {lcn} lies outside the volume")
    return Boot(bps, cluster, b.number_of_sectors, b.mft_lcn * cluster,
                b.mftmirr_lcn * cluster, rec, b.volume_serial_number)


def apply_fixups(record: bytes, sector_size: int, magics=(b"FILE",)) -> bytes:
    """The record with its update sequence array applied; :class:`FormatError` when the
    magic is wrong or a sector was torn (its last two bytes do not match the USN)."""
    if len(record) < 48 or record[:4] not in magics:
        raise FormatError(f"bad record magic {record[:4]!r}")
    usa_ofs, usa_count = struct.unpack_from("<HH", record, 4)
    step = 512  # the USA protects 512-byte strides whatever the sector size (NTFS_BLOCK_SIZE)
    if usa_count < 1 or (usa_count - 1) * step > len(record) or \
            usa_ofs + 2 * usa_count > len(record) or usa_ofs < 8:
        raise FormatError(f"bad update sequence array ({usa_ofs}, {usa_count})")
    buf = bytearray(record)
    usn = buf[usa_ofs:usa_ofs + 2]
    for i in range(1, usa_count):
        end = i * step
        if buf[end - 2:end] != usn:
            raise FormatError(f"torn write: sector {i - 1} of the record does not end in the USN")
        buf[end - 2:end] = buf[usa_ofs + 2 * i:usa_ofs + 2 * i + 2]
    return bytes(buf)


def check_mft_record(record: bytes, sector_size: int) -> bytes:
    """A fixed-up ``FILE`` record whose header is self-consistent."""
    rec = apply_fixups(record, sector_size)
    h = parse(MftRecordHeader, rec, what="MFT record header")
    if not (h.attrs_offset >= 42 and h.attrs_offset < h.bytes_in_use <= len(rec)
            and h.bytes_allocated == len(rec)):
        raise FormatError("MFT record header sizes are inconsistent")
    return rec


def resident_attributes(rec: bytes):
    """Yield ``(type, name, value)`` for the resident attributes of a fixed-up record
    (non-resident ones yield ``value=None``).  Bounded by the record."""
    h = parse(MftRecordHeader, rec, what="MFT record header")
    pos = h.attrs_offset
    end = min(h.bytes_in_use, len(rec))
    while pos + 16 <= end:
        atype, alen, nonres, nlen, noff, _flags, _inst = _ATTR_HDR.unpack_from(rec, pos)
        if atype == AT_END or alen < 16 or pos + alen > end or alen % 8:
            return
        name = None
        if nlen and noff + 2 * nlen <= alen:
            name = rec[pos + noff:pos + noff + 2 * nlen].decode("utf-16-le", "surrogatepass")
        value = None
        if not nonres and alen >= 24:
            vlen, voff = _RESIDENT.unpack_from(rec, pos + 16)
            if voff + vlen <= alen:
                value = rec[pos + voff:pos + voff + vlen]
        yield atype, name, value
        pos += alen


def file_name(value: bytes):
    """``(parent record, name, namespace)`` of a ``$FILE_NAME`` value; None if short."""
    if len(value) < 66:
        return None
    parent = struct.unpack_from("<Q", value, 0)[0] & ((1 << 48) - 1)
    nlen, space = value[64], value[65]
    if 66 + 2 * nlen > len(value):
        return None
    return parent, value[66:66 + 2 * nlen].decode("utf-16-le", "surrogatepass"), space


@dataclass
class Reparse:
    tag: int
    substitute: str
    printname: str
    relative: bool


def parse_reparse(value: bytes) -> Reparse | None:
    """A symlink or mount-point (junction) reparse buffer; None for other tags."""
    if value is None or len(value) < 8:
        return None
    tag, dlen, _res = struct.unpack_from("<IHH", value, 0)
    body = value[8:8 + dlen]
    if tag == IO_REPARSE_TAG_SYMLINK:
        if len(body) < 12:
            raise FormatError("symlink reparse buffer too short")
        so, sl, po, pl, flags = struct.unpack_from("<HHHHI", body, 0)
        base = 12
    elif tag == IO_REPARSE_TAG_MOUNT_POINT:
        if len(body) < 8:
            raise FormatError("mount point reparse buffer too short")
        so, sl, po, pl = struct.unpack_from("<HHHH", body, 0)
        flags, base = 0, 8
    else:
        return None
    path = body[base:]
    if so + sl > len(path) or po + pl > len(path) or sl % 2 or pl % 2:
        raise FormatError("reparse names lie outside the buffer")
    sub = path[so:so + sl].decode("utf-16-le", "surrogatepass")
    prt = path[po:po + pl].decode("utf-16-le", "surrogatepass")
    return Reparse(tag, sub, prt, bool(flags & SYMLINK_FLAG_RELATIVE))


def reparse_target(rp: Reparse, depth: int) -> bytes:
    """The POSIX symlink target for a reparse point ``depth`` directories below the root.

    Relative symlinks keep their path with ``\\`` turned into ``/``.  Absolute
    targets on a drive (``\\??\\C:\\dir\\x``, junctions always are) are taken to lie
    on this volume, as ntfs-3g does, which makes them ``<mountpoint>/dir/x``; pvfs
    cannot know its mount point, so it writes the equivalent relative path
    (``../../dir/x``) that reaches the same place inside the mount.  Anything else
    (``\\??\\UNC\\server\\share``, volume GUID paths) keeps its text with ``/``.
    """
    sub = rp.substitute or rp.printname
    if rp.relative:
        return sub.replace("\\", "/").encode("utf-8", "surrogateescape")
    s = sub
    for prefix in ("\\??\\", "\\\\?\\"):
        if s.startswith(prefix):
            s = s[len(prefix):]
            break
    if len(s) >= 2 and s[1] == ":" and s[0].isalpha():
        rest = "/".join(p for p in s[2:].split("\\") if p)
        up = "/".join([".."] * depth)
        target = "/".join(p for p in (up, rest) if p) or "."
        return target.encode("utf-8", "surrogateescape")
    return s.replace("\\", "/").encode("utf-8", "surrogateescape")


def interix(data: bytes):
    """ntfs-3g's Interix special file: ``("lnk", target)``, ``("chr"|"blk", (major, minor))``
    or None."""
    if data.startswith(INTX_SYMBOLIC_LINK):
        raw = data[8:]
        if len(raw) % 2:
            return None
        return "lnk", raw.decode("utf-16-le", "surrogatepass").encode("utf-8", "surrogateescape")
    if len(data) == 24 and data[:8] in (INTX_CHARACTER_DEVICE, INTX_BLOCK_DEVICE):
        major, minor = struct.unpack_from("<QQ", data, 8)
        kind = "chr" if data[:8] == INTX_CHARACTER_DEVICE else "blk"
        return kind, (major & 0xFFFFFFFF, minor & 0xFFFFFFFF)
    return None


def logfile_clean(page: bytes) -> bool | None:
    """Whether the first ``$LogFile`` restart page says the log holds nothing to replay.

    True for a clean restart area or a log emptied by ntfs-3g (all 0xFF), False for
    a restart area with clients in use and no clean flag, None when unreadable.
    """
    if len(page) < 512:
        return None
    if page[:4] == b"\xff\xff\xff\xff":
        return True  # ntfs-3g resets the whole log on mount
    try:
        fixed = apply_fixups(page, 512, magics=(b"RSTR", b"CHKD"))
    except FormatError:
        return None
    ra_ofs = struct.unpack_from("<H", fixed, 24)[0]
    if ra_ofs + 16 > len(fixed):
        return None
    in_use, flags = struct.unpack_from("<HH", fixed, ra_ofs + 12)
    return in_use == LOGFILE_NO_CLIENT or bool(flags & RESTART_VOLUME_IS_CLEAN)


def filetime_ns(ft: int) -> int:
    """Nanoseconds since the Unix epoch (negative before 1970) of a FILETIME."""
    return (ft - FILETIME_UNIX_EPOCH) * 100
