"""Reading MBR (with extended/logical partitions) and GPT (with backup header fallback).

References: UEFI Specification 2.10 sections 5.2-5.3; Linux block/partitions/msdos.c
and efi.c for the tolerated deviations (EBR chain, protective MBR, backup header).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

from pvfs.damage import Problem
from pvfs.errors import FormatError, UnreadableError
from pvfs.structs import guid_str, parse

from .structs import (EXTENDED_TYPES, GPT_ENTRY_MIN, GPT_HEADER_MIN, GPT_PROTECTIVE, GPT_TYPES,
                      MBR_ENTRIES_OFFSET, MBR_SIGNATURE, GptHeader, GptPartitionEntry,
                      MbrPartitionEntry)

GPT_PROBE_SECTOR_SIZES = (512, 4096)
MAX_GPT_ENTRIES_BYTES = 1 << 20  # 8192 entries of 128 bytes; the spec minimum is 16 KiB
MAX_LOGICAL = 256


class PartitionTableError(FormatError):
    pass


@dataclass
class Partition:
    number: int
    offset: int
    size: int
    type: str
    name: str = ""
    guid: str = ""
    bootable: bool = False

    def info(self):
        d = {"number": self.number, "offset": self.offset, "size": self.size, "type": self.type}
        if self.name:
            d["name"] = self.name
        if self.guid:
            d["guid"] = self.guid
        return d


@dataclass
class PartitionTable:
    scheme: str
    sector_size: int
    partitions: list = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    disk_guid: str = ""

    def summary(self):
        d = {"scheme": self.scheme, "sector_size": self.sector_size,
             "partitions": len(self.partitions)}
        if self.disk_guid:
            d["disk_guid"] = self.disk_guid
        return d


# -- MBR ---------------------------------------------------------------------
def _mbr_entries(sector: bytes):
    return [parse(MbrPartitionEntry, sector[MBR_ENTRIES_OFFSET + 16 * i:MBR_ENTRIES_OFFSET + 16 * i + 16],
                  PartitionTableError, "MBR partition entry") for i in range(4)]


def read_mbr(source, probe_only=False) -> PartitionTable:
    """Primary partitions are p1-p4, logical partitions p5 and up (Linux numbering)."""
    sector = source.read(0, 512)
    if len(sector) < 512 or sector[510:512] != MBR_SIGNATURE:
        raise PartitionTableError("no MBR signature (55 AA) in sector 0")
    entries = _mbr_entries(sector)
    if any(e.status not in (0x00, 0x80) for e in entries):
        raise PartitionTableError("MBR status bytes are not 00/80: a boot sector, not a partition table")
    if any(e.type == GPT_PROTECTIVE for e in entries):
        raise PartitionTableError("protective MBR: the disk uses GPT")
    total = source.size // 512
    table = PartitionTable("mbr", 512)
    used = [(i, e) for i, e in enumerate(entries, 1) if e.type != 0 and e.num_sectors != 0]
    # A partial image (ddrescue stopped early, only the first sectors copied) keeps a
    # table whose partitions lie past its end: they are real when the entries are
    # consistent (start after sector 0, no overlaps); their bytes are reported missing.
    spans = sorted((e.lba_first, e.lba_first + e.num_sectors) for _, e in used)
    consistent = all(s >= 1 for s, _ in spans) and all(
        a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:], strict=False))
    truncated = consistent and any(e.lba_first >= total for _, e in used)
    if truncated and not probe_only:
        end = max(e for _, e in spans) * 512
        table.problems.append(Problem(
            "error", "disk-truncated",
            f"the image holds {source.size} bytes but its partition table describes "
            f"{end} bytes: partitions past the end are listed and read as unreadable"))
    for i, e in used:
        if e.lba_first == 0 or (e.lba_first >= max(total, 1) and not truncated):
            if probe_only:
                raise PartitionTableError(f"partition {i} starts outside the disk")
            table.problems.append(Problem("warning", "bad-entry",
                                   f"MBR entry {i} starts at LBA {e.lba_first}, outside the disk; skipped"))
            continue
        if e.type in EXTENDED_TYPES:
            if not probe_only and e.lba_first < total:
                _read_ebr_chain(source, e.lba_first, e.num_sectors, table)
            elif not probe_only:
                table.problems.append(Problem("error", "ebr-unreadable",
                                              f"extended partition {i} lies past the end of the "
                                              "image: its logical partitions are unknown"))
            continue
        table.partitions.append(Partition(i, e.lba_first * 512, e.num_sectors * 512,
                                          f"0x{e.type:02x}", bootable=e.status == 0x80))
    if probe_only and not table.partitions and not any(e.type in EXTENDED_TYPES for e in entries):
        return table
    return table


def _read_ebr_chain(source, ext_start, ext_sectors, table):
    """Follow the chain of extended boot records; stop at loops and bad links."""
    number = 5
    rel = 0
    seen = set()
    for _ in range(MAX_LOGICAL):
        lba = ext_start + rel
        if lba in seen:
            table.problems.append(Problem("error", "ebr-loop", f"extended partition chain loops at LBA {lba}"))
            return
        seen.add(lba)
        try:
            ebr = source.read(lba * 512, 512)
        except UnreadableError as e:
            table.problems.append(Problem("error", "ebr-unreadable", f"EBR at LBA {lba} unreadable: {e}"))
            return
        if len(ebr) < 512 or ebr[510:512] != MBR_SIGNATURE:
            table.problems.append(Problem("error", "ebr-bad", f"EBR at LBA {lba} has no 55 AA signature; "
                                   "later logical partitions are lost"))
            return
        first, link = _mbr_entries(ebr)[:2]
        if first.type and first.num_sectors:
            table.partitions.append(Partition(number, (lba + first.lba_first) * 512,
                                              first.num_sectors * 512, f"0x{first.type:02x}"))
            number += 1
        if link.type not in EXTENDED_TYPES or link.lba_first == 0:
            return
        rel = link.lba_first
        if rel >= ext_sectors and ext_sectors:
            table.problems.append(Problem("error", "ebr-bad", f"EBR link to LBA {ext_start + rel} leaves "
                                   "the extended partition"))
            return
    table.problems.append(Problem("error", "ebr-loop", f"more than {MAX_LOGICAL} logical partitions"))


# -- GPT ---------------------------------------------------------------------
class ArrayCrcError(PartitionTableError):
    """A GPT header that is good but whose partition array fails its CRC."""

    def __init__(self, message, header, array):
        super().__init__(message)
        self.header, self.array = header, array


def _check_header(source, lba, ss):
    """Read and verify the GPT header at ``lba``; return (header, entries) or raise
    (:class:`ArrayCrcError` when only the array's CRC is wrong)."""
    raw = source.read(lba * ss, ss)
    if raw[:8] != b"EFI PART":
        raise PartitionTableError(f"no GPT signature at LBA {lba}")
    hdr = parse(GptHeader, raw, PartitionTableError, "GPT header", lba * ss)
    if not GPT_HEADER_MIN <= hdr.header_size <= ss:
        raise PartitionTableError(f"GPT header at LBA {lba}: header size {hdr.header_size} invalid")
    crc_data = raw[:16] + b"\0\0\0\0" + raw[20:hdr.header_size]
    if zlib.crc32(crc_data) != hdr.header_crc32:
        raise PartitionTableError(f"GPT header at LBA {lba}: header CRC mismatch")
    n, esz = hdr.number_of_partition_entries, hdr.size_of_partition_entry
    if esz < GPT_ENTRY_MIN or esz % 8 or n * esz > MAX_GPT_ENTRIES_BYTES:
        raise PartitionTableError(f"GPT header at LBA {lba}: {n} entries of {esz} bytes is not sane")
    array = source.read(hdr.partition_entry_lba * ss, n * esz)
    if len(array) != n * esz:
        raise PartitionTableError(f"GPT partition array at LBA {hdr.partition_entry_lba} "
                                  "lies past the end of the disk")
    if zlib.crc32(array) != hdr.partition_entry_array_crc32:
        raise ArrayCrcError(f"GPT partition array of header at LBA {lba}: CRC mismatch", hdr, array)
    return hdr, array


def read_gpt(source) -> PartitionTable:
    """Primary header at LBA 1; if it or its array fail their CRC, the backup header."""
    errors = []
    bad_array = None  # (ss, lba, header, array) of a good header whose array fails its CRC
    for ss in GPT_PROBE_SECTOR_SIZES:
        if source.size < 3 * ss:
            continue
        last = source.size // ss - 1
        candidates = [(1, "primary")]
        try:
            if source.read(ss, 8) == b"EFI PART":
                alt = parse(GptHeader, source.read(ss, 92), PartitionTableError, "GPT header").alternate_lba
                if 1 < alt <= last:
                    candidates.append((alt, "backup"))
        except (PartitionTableError, UnreadableError):
            pass
        if (last, "backup") not in candidates:
            candidates.append((last, "backup"))
        for lba, which in candidates:
            try:
                hdr, array = _check_header(source, lba, ss)
            except (PartitionTableError, UnreadableError) as e:
                if isinstance(e, ArrayCrcError) and bad_array is None:
                    bad_array = (ss, lba, e.header, e.array)
                if source.read(lba * ss, 8) == b"EFI PART" or which == "primary" and lba == 1 and \
                        source.read(ss, 8) == b"EFI PART":
                    errors.append(str(e))
                continue
            table = PartitionTable("gpt", ss, disk_guid=guid_str(hdr.disk_guid))
            if which == "backup":
                table.problems.append(Problem("info", "gpt-primary-damaged",
                                       "primary GPT header or partition array is damaged ("
                                       + "; ".join(errors or ["not found"])
                                       + f"); using the backup header at LBA {lba}",
                                       "repaired"))
            elif errors:
                table.problems.append(Problem("warning", "gpt", "; ".join(errors)))
            _gpt_partitions(hdr, array, ss, table, source.size)
            return table
    if bad_array is not None:
        # As sgdisk does: with no good copy left, show the entries of the header whose
        # array merely fails its CRC, and say that they are unverified.
        ss, lba, hdr, array = bad_array
        table = PartitionTable("gpt", ss, disk_guid=guid_str(hdr.disk_guid))
        table.problems.append(Problem(  # shown, but not provably right: degraded
            "warning", "gpt-array-unverified",
            f"the partition array of the GPT header at LBA {lba} fails its CRC and no other "
            "copy is valid (" + "; ".join(errors) + "); its entries are shown unverified"))
        _gpt_partitions(hdr, array, ss, table, source.size)
        return table
    raise PartitionTableError("no valid GPT header: " + ("; ".join(errors) or "no signature"))


def _gpt_partitions(hdr, array, ss, table, disk_size):
    esz = hdr.size_of_partition_entry
    for i in range(hdr.number_of_partition_entries):
        raw = array[i * esz:i * esz + GPT_ENTRY_MIN]
        if raw[:16] == bytes(16):
            continue
        e = parse(GptPartitionEntry, raw, PartitionTableError, "GPT partition entry")
        if e.ending_lba < e.starting_lba:
            table.problems.append(Problem("warning", "bad-entry",
                                   f"GPT entry {i + 1}: ends before it starts; skipped"))
            continue
        name = e.partition_name.decode("utf-16-le", "replace").split("\0", 1)[0]
        tguid = guid_str(e.partition_type_guid)
        table.partitions.append(Partition(
            i + 1, e.starting_lba * ss, (e.ending_lba - e.starting_lba + 1) * ss,
            GPT_TYPES.get(tguid, tguid), name=name, guid=guid_str(e.unique_partition_guid)))
