"""Hosted sparse extents: monolithicSparse, twoGbMaxExtentSparse and streamOptimized.

# References:
- VMware "Virtual Disk Format 5.0": "Hosted Sparse Extent Header", "Grain Directories and
  Grain Tables" (GD entries point at GTs, GT entries at grains, both in sectors; 0 =
  unallocated), "Stream-Optimized Compressed Sparse Extents" (grain markers, the footer
  holding the real gdOffset).
- qemu/qemu block/vmdk.c: vmdk_open_vmdk4 (footer at end - 1536 when gdOffset is
  GD_AT_END; sanity limits on numGTEsPerGT and grainSize), get_cluster_offset (GTE 1 with
  VMDK4_FLAG_ZERO_GRAIN = zeroed grain, 0 = unallocated: the parent's bytes),
  vmdk_read_cluster (a compressed grain is ``lba, size`` and zlib data).

The grain directory is read whole at open (numpy), grain tables on demand through the
shared byte-bounded cache, decompressed grains too.  A GD entry that points outside the file
or at an unreadable table is taken from the redundant GD when there is one.
"""

from __future__ import annotations

import threading
import zlib

import numpy as np

from pvfs.cache import METADATA_CACHE
from pvfs.errors import UnreadableError
from pvfs.source import BAD_ZERO, DATA, UNMAPPED, UNREADABLE, ZERO, Source
from pvfs.structs import parse

from . import structs as S
from .descriptor import VmdkError

MAX_GD_ENTRIES = 1 << 24  # 64 MiB of GD: far beyond any real disk
MAX_GRAIN = 1 << 27  # bytes (qemu refuses grains above 2 GiB; 128 MiB is plenty)


class SparseHeader:
    """A checked sparse extent header (the footer's, for stream-optimized extents)."""

    def __init__(self, h, file_size: int, source_label: str):
        self.h = h
        self.flags = h.flags
        self.capacity = h.capacity
        self.grain_sectors = h.grainSize
        self.gtes = h.numGTEsPerGT
        self.gd_offset = h.gdOffset
        self.rgd_offset = h.rgdOffset if h.flags & S.FLAG_RGD else 0
        self.compressed = bool(h.flags & S.FLAG_COMPRESSED) and h.compressAlgorithm == \
            S.COMPRESSION_DEFLATE
        self.markers = bool(h.flags & S.FLAG_MARKERS)
        self.zero_grain = bool(h.flags & S.FLAG_ZERO_GRAIN)
        self.descriptor = (h.descriptorOffset, h.descriptorSize)
        self.unclean = bool(h.uncleanShutdown)
        gs = self.grain_sectors
        if gs == 0 or gs & (gs - 1) or gs * S.SECTOR > MAX_GRAIN:
            raise VmdkError(f"{source_label}: grain size {gs} sectors is not a power of two "
                            f"up to {MAX_GRAIN >> 20} MiB")
        if not 1 <= self.gtes <= 1 << 16:
            raise VmdkError(f"{source_label}: numGTEsPerGT {self.gtes} out of range")
        if h.compressAlgorithm not in (0, S.COMPRESSION_DEFLATE):
            raise VmdkError(f"{source_label}: unknown compression {h.compressAlgorithm}")
        if self.capacity > (1 << 62) // S.SECTOR:
            raise VmdkError(f"{source_label}: capacity {self.capacity} sectors is absurd")
        self.grain_bytes = gs * S.SECTOR
        self.gt_coverage = self.grain_bytes * self.gtes
        self.gd_entries = -(-self.capacity * S.SECTOR // self.gt_coverage)
        if self.gd_entries > MAX_GD_ENTRIES:
            raise VmdkError(f"{source_label}: {self.gd_entries} grain directory entries")


def read_header(source) -> tuple[SparseHeader, list[tuple[str, str, str]]]:
    """The extent's header; the footer's when the header says the GD is at the end."""
    problems: list[tuple[str, str, str]] = []
    raw = source.read(0, S.SECTOR)
    h = parse(S.SparseExtentHeader, raw[:S.HEADER_SIZE], VmdkError, "sparse extent header")
    if h.version not in (1, 2, 3):
        raise VmdkError(f"{source.label}: sparse extent version {h.version} unknown")
    if h.gdOffset == S.GD_AT_END:
        foot = source.size - 3 * S.SECTOR
        if foot < S.SECTOR:
            raise VmdkError(f"{source.label}: GD is at the end but the file has no footer")
        data = source.read(foot, 3 * S.SECTOR)
        m1 = parse(S.Marker, data[:16], VmdkError, "footer marker")
        m2 = parse(S.Marker, data[1024:1040], VmdkError, "end-of-stream marker")
        if (m1.size, m1.type, m2.val, m2.size, m2.type) != (0, S.MARKER_FOOTER, 0, 0,
                                                            S.MARKER_EOS):
            raise VmdkError(f"{source.label}: stream-optimized footer missing (the image was "
                            "not closed; its grain tables cannot be found)")
        h = parse(S.SparseExtentHeader, data[512:512 + S.HEADER_SIZE], VmdkError,
                  "footer header")
        if h.gdOffset == S.GD_AT_END:
            raise VmdkError(f"{source.label}: the footer's gdOffset is GD_AT_END too")
    return SparseHeader(h, source.size, source.label), problems


class SparseExtent(Source):
    """The ``capacity`` bytes one sparse extent file describes.

    Unallocated grains read from ``parent`` at ``parent_base + offset`` (the extent's
    place in the virtual disk) or as zeros when there is no parent.
    """

    def __init__(self, source, header: SparseHeader, bad="eio", problem=None, label=None,
                 size=None):
        super().__init__()
        self.file = source
        self.hdr = header
        self.size = header.capacity * S.SECTOR if size is None else size
        self.bad = bad
        self.label = label or source.label
        self.parent = None
        self.parent_base = 0
        self._problem = problem or (lambda sev, code, msg, outcome="": None)
        self._reported: set = set()
        self._lock = threading.Lock()
        self.gd = self._load_gd(header.gd_offset, "grain directory")
        self.rgd = None
        if header.rgd_offset and header.rgd_offset != header.gd_offset:
            try:
                self.rgd = self._load_gd(header.rgd_offset, "redundant grain directory")
            except (VmdkError, UnreadableError) as e:
                self._problem("warning", "rgd-unusable",
                              f"{self.label}: redundant grain directory unusable ({e})")
        if self.gd is None and self.rgd is None:
            raise VmdkError(f"{self.label}: no usable grain directory")
        if self.gd is None:
            self._problem("info", "gd-fallback", f"{self.label}: grain directory unusable; "
                          "the redundant grain directory is used", outcome="repaired")

    # -- tables -------------------------------------------------------------------
    def _load_gd(self, sector, what):
        n = self.hdr.gd_entries
        off = sector * S.SECTOR
        if off + n * 4 > self.file.size:
            raise VmdkError(f"{self.label}: {what} at sector {sector} lies past the end of "
                            "the file")
        try:
            raw = self.file.read(off, n * 4)
        except UnreadableError as e:
            if what.startswith("redundant"):
                raise
            self._problem("error", "gd-unreadable", f"{self.label}: {what} unreadable ({e})")
            return None
        return np.frombuffer(raw, dtype="<u4")

    def _gt(self, gde):
        """The grain table at sector ``gde`` (numpy), or None when it cannot be used."""
        off = int(gde) * S.SECTOR
        n = self.hdr.gtes * 4
        if off + n > self.file.size:
            return None
        key = ("vmdk-gt", self.file.uid, off)

        def load():
            return np.frombuffer(self.file.read(off, n), dtype="<u4")

        try:
            return METADATA_CACHE.get_or_load(key, load)
        except UnreadableError:
            return None

    def _first_time(self, key) -> bool:
        with self._lock:
            if key in self._reported or len(self._reported) > 200:
                return False
            self._reported.add(key)
        return True

    def _table(self, gi):
        """Grain table ``gi``: the primary's, with entries the primary lost (0, or a table
        that cannot be read) taken from the redundant copy; None when neither has it."""
        key = ("vmdk-merged-gt", self.uid, gi)
        hit = METADATA_CACHE.get(key)
        if hit is not None:
            return hit
        tables = []
        for which, gd in (("primary", self.gd), ("redundant", self.rgd)):
            if gd is None or gi >= len(gd):
                tables.append(None)
                continue
            gde = int(gd[gi])
            if gde == 0:
                tables.append(0)
                continue
            gt = self._gt(gde)
            if gt is None and self._first_time(("gt", which, gi)):
                self._problem("warning", "gt-unusable",
                              f"{self.label}: {which} grain table {gi} at sector {gde} is "
                              "unreadable or past the end of the file")
            tables.append(gt)
        prim, red = tables
        if red is None or (isinstance(red, int) and not isinstance(prim, np.ndarray)):
            table = prim if prim is not None else None  # 0 = all unallocated
        elif not isinstance(prim, np.ndarray):
            table = red  # primary GD entry zero or its table lost: the redundant copy
            if isinstance(red, np.ndarray) and self._first_time(("rgd", gi)):
                self._problem("info", "gd-fallback",
                              f"{self.label}: grain table {gi} is missing from the grain "
                              "directory; the redundant grain directory's copy is used",
                              outcome="repaired")
        elif isinstance(red, np.ndarray):
            lost = (prim == 0) & (red != 0)
            table = prim
            if lost.any():
                table = np.where(lost, red, prim)
                if self._first_time(("rgt", gi)):
                    self._problem("info", "gt-fallback",
                                  f"{self.label}: grain table {gi} has {int(lost.sum())} "
                                  "entries that only its redundant copy has; those are used",
                                  outcome="repaired")
        else:
            table = prim
        if table is None:
            table = -1  # lost in both: unreadable
        return METADATA_CACHE.put(key, table)

    def grain_entry(self, grain: int) -> int | None:
        """The GT entry of ``grain`` (0 unallocated, 1 zeroed, else a sector), None: lost."""
        gi, ti = divmod(grain, self.hdr.gtes)
        table = self._table(gi)
        if isinstance(table, int):
            return 0 if table == 0 else None
        return int(table[ti])

    # -- reading -------------------------------------------------------------------
    def _pieces(self, offset, length):
        """``(pos, n, kind, where)`` with kind data/zero/unalloc/compressed/bad."""
        gb = self.hdr.grain_bytes
        end = offset + length
        pos = offset
        out = []
        while pos < end:
            grain, inner = divmod(pos, gb)
            n = min(gb - inner, end - pos)
            e = self.grain_entry(grain)
            if e is None:
                out.append([pos, n, "bad", f"grain {grain}: grain table lost"])
            elif e == 0:
                out.append([pos, n, "unalloc", None])
            elif e == S.GTE_ZEROED and self.hdr.zero_grain:
                out.append([pos, n, "zero", None])
            elif self.hdr.compressed:
                out.append([pos, n, "compressed", (grain, e * S.SECTOR, inner)])
            else:
                at = e * S.SECTOR + inner
                prev = out[-1] if out else None
                if prev and prev[2] == "data" and prev[3] + prev[1] == at:
                    prev[1] += n  # contiguous in the file: one read
                else:
                    out.append([pos, n, "data", at])
            pos += n
        return out

    def _grain(self, grain, at):
        key = ("vmdk-grain", self.file.uid, at)

        def load():
            if not self.hdr.markers:  # qemu: the zlib stream starts at the grain itself
                size = max(0, min(2 * self.hdr.grain_bytes, self.file.size - at))
                blob = self.file.read(at, size)
            else:
                head = self.file.read(at, S.SECTOR)
                if len(head) < S.GRAIN_MARKER_HEAD:
                    raise UnreadableError(f"{self.label}: grain {grain} marker past the end",
                                          [(at, S.SECTOR)])
                lba = int.from_bytes(head[0:8], "little")
                size = int.from_bytes(head[8:12], "little")
                if size == 0 or size > 2 * self.hdr.grain_bytes + 4096:
                    raise UnreadableError(f"{self.label}: grain {grain}: compressed size "
                                          f"{size} is implausible", [(at, S.SECTOR)])
                if lba != grain * self.hdr.grain_sectors:
                    raise UnreadableError(f"{self.label}: grain {grain}: marker says LBA {lba}, "
                                          f"expected {grain * self.hdr.grain_sectors}",
                                          [(at, S.SECTOR)])
                if at + S.GRAIN_MARKER_HEAD + size > self.file.size:
                    raise UnreadableError(f"{self.label}: grain {grain} runs past the end of "
                                          "the file", [(at, size)])
                blob = self.file.read(at + S.GRAIN_MARKER_HEAD, size)
            try:
                d = zlib.decompressobj()
                data = d.decompress(blob, self.hdr.grain_bytes)
            except zlib.error as e:
                raise UnreadableError(f"{self.label}: grain {grain} does not inflate: {e}",
                                      [(at, size)]) from None
            if len(data) < self.hdr.grain_bytes:
                data += bytes(self.hdr.grain_bytes - len(data))  # the last grain may be short
            return data

        return METADATA_CACHE.get_or_load(key, load)

    def _bad(self, n, msg, pos):
        if self.bad == BAD_ZERO:
            return bytes(n)
        raise UnreadableError(f"{self.label}: {msg}", [(pos, n)])

    def _read(self, offset, length):
        parts = []
        for pos, n, kind, where in self._pieces(offset, length):
            if kind == "data":
                if where + n > self.file.size:
                    parts.append(self._bad(n, f"grain data at {where:#x} lies past the end of "
                                           "the file", pos))
                else:
                    parts.append(self.file.read(where, n))
            elif kind == "zero":
                parts.append(bytes(n))
            elif kind == "unalloc":
                if self.parent is not None:
                    parts.append(self.parent.read(self.parent_base + pos, n))
                else:
                    parts.append(bytes(n))
            elif kind == "compressed":
                grain, at, inner = where
                try:
                    g = self._grain(grain, at)
                except UnreadableError as e:
                    if self.bad == BAD_ZERO:
                        parts.append(bytes(n))
                        continue
                    raise UnreadableError(str(e), [(pos, n)]) from None
                parts.append(g[inner:inner + n])
            else:
                parts.append(self._bad(n, where, pos))
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _block_status(self, offset, length):
        out = []
        for pos, n, kind, where in self._pieces(offset, length):
            if kind == "data":
                out.extend((o - where + pos, ln, s) for o, ln, s in
                           self.file.status_of(where, n))
            elif kind == "compressed":
                out.append((pos, n, DATA))
            elif kind == "zero":
                out.append((pos, n, ZERO))
            elif kind == "unalloc":
                if self.parent is not None:
                    base = self.parent_base
                    out.extend((o - base, ln, s) for o, ln, s in
                               self.parent.status_of(base + pos, n))
                else:
                    out.append((pos, n, UNMAPPED))
            else:
                out.append((pos, n, UNREADABLE))
        return out
