"""VMA (vzdump-qemu-*.vma): header, configs, devices, and the cluster map of its extents.

References: pve-qemu ``vma_spec.txt`` and the ``vma.h`` / ``vma-reader.c`` parts of
``debian/patches/pve/0026-PVE-Backup-add-vma-backup-format-code.patch``: header MD5 over
``header_size`` bytes with the md5sum field zeroed; blob pointers relative to
``blob_buffer_offset`` (2-byte little-endian length + data); extents of a 512-byte header
(MD5 over it with md5sum zeroed, uuid of the archive) and ``block_count`` 4 KiB blocks;
blockinfo bits 63..48 mask, 39..32 dev_id, 31..0 cluster number; mask bit j set =>
block j of the 64 KiB cluster is stored (in order), clear => zeros.
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np

from pvfs.errors import UnreadableError
from pvfs.source import BAD_EIO, BAD_ZERO, DATA, UNREADABLE, ZERO, Source

from .streams import GapError, SequentialReader
from .structs import (VMA_BLOCK_SIZE, VMA_CLUSTER_SIZE, VMA_EXTENT_HEADER_SIZE,
                      VMA_EXTENT_MAGIC, VMA_FIXED_HEADER, VMA_MAGIC, VMA_MAX_DEVICES, VmaDeviceInfo,
                      VmaExtentHeader, VmaHeader, VzdumpError, parse)

MAX_HEADER = 16 << 20
MAX_DEVICE_CLUSTERS = 1 << 28  # 16 TiB per device


def _blob(buf, blob_off, ptr, what):
    """Blob at ``ptr`` of the blob buffer: 2-byte LE length + data."""
    p = blob_off + ptr
    if ptr == 0 or p + 2 > len(buf):
        raise VzdumpError(f"{what}: blob pointer {ptr} outside the header")
    n = buf[p] | (buf[p + 1] << 8)
    if p + 2 + n > len(buf):
        raise VzdumpError(f"{what}: blob at {ptr} runs past the header")
    return buf[p + 2:p + 2 + n]


class VmaHeaderInfo:
    def __init__(self, raw: bytes):
        h = parse(VmaHeader, raw[:VMA_FIXED_HEADER], "VMA header")
        if h.magic != VMA_MAGIC:
            raise VzdumpError("no VMA magic")
        if h.version != 1:
            raise VzdumpError(f"VMA version {h.version} is not supported")
        if not (VMA_FIXED_HEADER <= h.header_size <= MAX_HEADER):
            raise VzdumpError(f"VMA header size {h.header_size} is impossible")
        if len(raw) < h.header_size:
            raise VzdumpError(f"VMA header of {h.header_size} bytes is truncated ({len(raw)})")
        raw = raw[:h.header_size]
        self.uuid = h.uuid
        self.ctime = h.ctime
        self.header_size = h.header_size
        zeroed = raw[:32] + bytes(16) + raw[48:]
        self.md5_ok = hashlib.md5(zeroed).digest() == h.md5sum
        boff = h.blob_buffer_offset
        if not (VMA_FIXED_HEADER <= boff <= h.header_size):
            raise VzdumpError(f"blob buffer offset {boff} is outside the header")
        self.configs = {}
        names = struct.unpack(">256I", h.config_names)
        datas = struct.unpack(">256I", h.config_data)
        self.problems = []
        for i, (np_, dp) in enumerate(zip(names, datas, strict=False)):
            if not np_ and not dp:
                continue
            try:
                name = _blob(raw, boff, np_, f"config {i} name").rstrip(b"\0").decode("utf-8", "replace")
                self.configs[name.replace("/", "_") or f"config{i}"] = bytes(_blob(raw, boff, dp, f"config {i} data"))
            except VzdumpError as e:
                self.problems.append(str(e))
        self.devices = {}  # dev_id -> (name, size)
        for dev_id in range(1, VMA_MAX_DEVICES):
            d = VmaDeviceInfo.parse(h.dev_info[dev_id * 32:(dev_id + 1) * 32])
            if not d.devname_ptr:
                continue
            try:
                name = _blob(raw, boff, d.devname_ptr, f"device {dev_id} name").rstrip(b"\0").decode("utf-8", "replace")
            except VzdumpError as e:
                self.problems.append(str(e))
                name = f"dev{dev_id}"
            if d.size > MAX_DEVICE_CLUSTERS * VMA_CLUSTER_SIZE:
                self.problems.append(f"device {name}: size {d.size} is implausible; skipped")
                continue
            self.devices[dev_id] = (name.replace("/", "_"), d.size)


class ClusterMap:
    """Per device: 1 + stream offset of each cluster's first stored block (0: never seen),
    and its mask.  ``np.zeros`` is calloc: a huge device declared by a hostile header costs
    no memory until the archive really holds its clusters."""

    def __init__(self, devices):
        self.offsets = {}
        self.masks = {}
        self._seen = {}  # dev_id -> cluster numbers found (list while indexing)
        for dev_id, (_name, size) in devices.items():
            n = -(-size // VMA_CLUSTER_SIZE)
            self.offsets[dev_id] = np.zeros(n, dtype=np.int64)
            self.masks[dev_id] = np.zeros(n, dtype=np.uint16)
            self._seen[dev_id] = []

    def set(self, dev_id, cluster, off, mask):
        self.offsets[dev_id][cluster] = off + 1
        self.masks[dev_id][cluster] = mask
        self._seen[dev_id].append(cluster)

    def seen(self, dev_id):
        """Sorted cluster numbers the archive holds (never a scan of the whole map)."""
        s = self._seen[dev_id]
        if isinstance(s, list):
            s = self._seen[dev_id] = np.unique(np.asarray(s, dtype=np.int64))
        return s

    def to_arrays(self):
        """Sparse form for the sidecar: only clusters that were seen."""
        out = {}
        for dev_id, offs in self.offsets.items():
            nz = self.seen(dev_id)
            out[f"idx{dev_id}"] = nz
            out[f"off{dev_id}"] = offs[nz]
            out[f"mask{dev_id}"] = self.masks[dev_id][nz]
        return out

    @classmethod
    def from_arrays(cls, devices, arrays):
        cm = cls(devices)
        for dev_id in devices:
            idx, off, mask = (arrays.get(f"{k}{dev_id}") for k in ("idx", "off", "mask"))
            if idx is None or off is None or mask is None or not (len(idx) == len(off) == len(mask)):
                raise VzdumpError(f"sidecar index has no cluster map for device {dev_id}")
            n = len(cm.offsets[dev_id])
            if len(idx) and (idx.min() < 0 or idx.max() >= n):
                raise VzdumpError(f"sidecar index: cluster numbers of device {dev_id} out of range")
            cm.offsets[dev_id][idx] = off
            cm.masks[dev_id][idx] = mask
            cm._seen[dev_id] = np.unique(idx.astype(np.int64))
        return cm


def _extent_ok(eh, uuid):
    return (len(eh) >= VMA_EXTENT_HEADER_SIZE and eh[:4] == VMA_EXTENT_MAGIC and eh[8:24] == uuid and
            hashlib.md5(eh[:24] + bytes(16) + eh[40:VMA_EXTENT_HEADER_SIZE]).digest() == eh[24:40])


def _resync(r: SequentialReader, uuid, piece=1 << 20):
    """Advance ``r`` to the next valid extent header (magic + uuid + MD5), at any alignment
    (a lost region of a compressed stream shifts everything after it)."""
    while True:
        try:
            buf = r.read(piece)
        except GapError:
            continue
        if len(buf) < VMA_EXTENT_HEADER_SIZE:
            return False
        i = buf.find(VMA_EXTENT_MAGIC)
        while i >= 0:
            if i + VMA_EXTENT_HEADER_SIZE > len(buf):
                r.unread(buf[i:])  # the header straddles this piece: read it whole next time
                break
            if _extent_ok(buf[i:i + VMA_EXTENT_HEADER_SIZE], uuid):
                r.unread(buf[i:])
                return True
            i = buf.find(VMA_EXTENT_MAGIC, i + 1)
        else:
            r.unread(buf[-3:])  # a magic split across pieces


def index_vma(pieces, progress=None):
    """Walk the decoded stream once; returns (header, ClusterMap, problems)."""
    r = SequentialReader(pieces)
    problems = []
    try:
        head = r.read(VMA_FIXED_HEADER)
        if len(head) < 60 or head[:4] != VMA_MAGIC:
            raise VzdumpError("no VMA magic")
        hsize = struct.unpack_from(">I", head, 56)[0]
        if not (VMA_FIXED_HEADER <= hsize <= MAX_HEADER):
            raise VzdumpError(f"VMA header size {hsize} is impossible")
        head += r.read(hsize - len(head))
    except GapError as e:
        raise VzdumpError(f"the VMA header is unreadable: {e}") from None
    hdr = VmaHeaderInfo(head)
    if not hdr.md5_ok:
        problems.append(("warning", "bad-header-md5", None, "VMA header MD5 mismatch; header used anyway"))
    for p in hdr.problems:
        problems.append(("error", "bad-header", None, p))
    cmap = ClusterMap(hdr.devices)
    while True:
        pos = r.pos
        try:
            eh = r.read(VMA_EXTENT_HEADER_SIZE)
        except GapError as e:
            problems.append(("error", "stream-gap", e.gap, str(e)))
            continue
        if not eh:
            break
        if len(eh) < VMA_EXTENT_HEADER_SIZE:
            problems.append(("error", "truncated", None, f"archive ends inside an extent header at {pos:#x}"))
            break
        if not _extent_ok(eh, hdr.uuid):
            problems.append(("error", "bad-extent", None,
                             f"no valid extent header at stream offset {pos:#x}; searching for the next one"))
            r.unread(eh)
            r.skip(1)
            if not _resync(r, hdr.uuid):
                problems.append(("error", "truncated", None,
                                 f"no valid extent header after stream offset {pos:#x}"))
                break
            continue
        e = parse(VmaExtentHeader, eh, "extent header", pos)
        data_off = pos + VMA_EXTENT_HEADER_SIZE
        found = []
        nblocks = 0
        for info in struct.unpack(">59Q", e.blockinfo):
            dev_id = (info >> 32) & 0xFF
            if not dev_id:
                continue
            mask = info >> 48
            cluster = info & 0xFFFFFFFF
            found.append((dev_id, cluster, data_off + nblocks * VMA_BLOCK_SIZE, mask))
            nblocks += bin(mask).count("1")
        if nblocks != e.block_count:
            problems.append(("error", "bad-extent", None,
                             f"extent at {pos:#x}: masks say {nblocks} blocks, header says {e.block_count}"))
        try:
            r.skip(e.block_count * VMA_BLOCK_SIZE)
        except GapError as ge:
            g = ge.gap
            problems.append(("error", "stream-gap", g, str(ge)))
            lost_from = g.offset
            lost_to = g.offset + g.length if g.length else None
            found = [f for f in found if f[2] + bin(f[3]).count("1") * VMA_BLOCK_SIZE <= lost_from
                     or (lost_to is not None and f[2] >= lost_to)]
        if r.eof and r.pos < data_off + e.block_count * VMA_BLOCK_SIZE:
            problems.append(("error", "truncated", None, f"archive ends inside the extent at {pos:#x}"))
            found = [f for f in found if f[2] + bin(f[3]).count("1") * VMA_BLOCK_SIZE <= r.pos]
        for dev_id, cluster, off, mask in found:
            offs = cmap.offsets.get(dev_id)
            if offs is None or cluster >= len(offs):
                problems.append(("warning", "bad-extent", None,
                                 f"extent at {pos:#x}: cluster {cluster} of unknown device {dev_id}"))
                continue
            cmap.set(dev_id, cluster, off, mask)
        if progress is not None:
            progress(r.pos)
        if r.eof:
            break
    return hdr, cmap, problems


class VmaDevice(Source):
    """One device of a VMA archive as a raw disk, read through the cluster map."""

    def __init__(self, stream: Source, size, offsets, masks, bad=BAD_EIO, label="vma", seen=None):
        """``offsets``: 1 + stream offset per cluster, 0 = not in the archive; ``seen``:
        sorted numbers of the clusters present (for :meth:`missing_ranges`)."""
        super().__init__()
        self.seen = seen
        self.stream = stream
        self.size = size
        self.offsets = offsets
        self.masks = masks
        self.bad = bad
        self.label = label

    def _read(self, offset, length):
        parts = []
        end = offset + length
        pos = offset
        while pos < end:
            c = pos // VMA_CLUSTER_SIZE
            cstart = c * VMA_CLUSTER_SIZE
            n = min(end, cstart + VMA_CLUSTER_SIZE) - pos
            off = int(self.offsets[c]) - 1
            mask = int(self.masks[c])
            if off < 0:
                if self.bad != BAD_ZERO:
                    raise UnreadableError(f"{self.label}: cluster {c} is not in the archive", [(pos, n)])
                parts.append(bytes(n))
            elif mask == 0xFFFF:
                parts.append(self.stream.read(off + pos - cstart, n))
            elif mask == 0:
                parts.append(bytes(n))
            else:
                parts.append(self._partial(off, mask, pos - cstart, n))
            pos += n
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _partial(self, off, mask, rel, n):
        out = []
        stored = 0
        for j in range(16):
            bstart = j * VMA_BLOCK_SIZE
            have = (mask >> j) & 1
            if bstart + VMA_BLOCK_SIZE > rel and bstart < rel + n:
                lo = max(rel, bstart) - bstart
                hi = min(rel + n, bstart + VMA_BLOCK_SIZE) - bstart
                if have:
                    out.append(self.stream.read(off + stored * VMA_BLOCK_SIZE + lo, hi - lo))
                else:
                    out.append(bytes(hi - lo))
            stored += have
        return b"".join(out)

    def _block_status(self, offset, length):
        """Runs of equal status, found with numpy (the core asks 16 GiB windows at a time)."""
        end = offset + length
        c0, c1 = offset // VMA_CLUSTER_SIZE, (end - 1) // VMA_CLUSTER_SIZE
        offs = self.offsets[c0:c1 + 1]
        st = np.where(offs == 0, 2, np.where(self.masks[c0:c1 + 1] == 0, 1, 0)).astype(np.int8)
        change = np.flatnonzero(np.diff(st)) + 1
        starts = np.concatenate(([0], change)).tolist()
        ends = np.concatenate((change, [len(st)])).tolist()
        names = (DATA, ZERO, UNREADABLE)
        out = []
        for a, b in zip(starts, ends, strict=False):
            lo = max(offset, (c0 + a) * VMA_CLUSTER_SIZE)
            hi = min(end, (c0 + b) * VMA_CLUSTER_SIZE)
            out.append((lo, hi - lo, names[st[a]]))
        return out

    def missing_ranges(self):
        """Byte ranges of clusters the archive does not hold: the gaps between the seen
        clusters (work in proportion to the archive, not to the declared device size)."""
        n = len(self.offsets)
        seen = self.seen if self.seen is not None else np.flatnonzero(self.offsets)
        bounds = np.concatenate(([-1], seen, [n]))
        gaps = np.flatnonzero(np.diff(bounds) > 1)
        out = []
        for g in gaps.tolist():
            first, last = int(bounds[g]) + 1, int(bounds[g + 1])  # clusters [first, last)
            s = first * VMA_CLUSTER_SIZE
            out.append((s, min(last * VMA_CLUSTER_SIZE, self.size) - s))
        return out
