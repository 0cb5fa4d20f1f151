"""dm-thin pool metadata: superblock, btrees, device mappings, and recovery by scanning.

References: Linux ``drivers/md/dm-thin-metadata.c`` (superblock layout and checksum,
the two-level mapping tree ``dev_id -> (virtual block -> (data block << 24 | time))``,
the device-details tree), ``drivers/md/persistent-data/dm-btree.c`` and
``dm-btree-internal.h`` (node layout: header, ``max_entries`` keys, then values;
internal nodes hold child block numbers; ``btree_node_validator`` checks csum and
blocknr), ``dm-block-manager.c`` (``dm_bm_checksum`` = crc32c(~0) ^ xor),
``dm-space-map-common.h``/``dm-space-map-disk.c`` (``struct disk_sm_root``);
thin-provisioning-tools ``thin-provisioning/metadata_dumper.cc`` and
``thin_repair``/``thin_dump --repair`` (finding roots by scanning for nodes).

A thin device is exposed as a :class:`ThinSource` whose mapping is loaded on first
read.  Unmapped blocks read as zeros (block status ``unmapped``).  Virtual ranges whose
mapping could not be read (a bad btree node) are ``unreadable``.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass, field

import numpy as np

from pvfs.damage import Problem
from pvfs.cache import METADATA_CACHE
from pvfs.checksum import crc32c_raw
from pvfs.errors import UnreadableError
from pvfs.source import (BAD_EIO, BAD_ZERO, DATA, UNMAPPED, UNREADABLE, Source, WouldBlock,
                         zero_fill)

from . import structs as S
from .errors import ThinError

BLOCK = S.THIN_METADATA_BLOCK_SIZE
MAX_TREE_DEPTH = 16
MAX_DEVICE_ID = (1 << 24) - 1
MAX_SCAN_NODES = 4_000_000
_NODE_HDR = struct.Struct("<IIQIIII")


def dm_checksum(block: bytes, xor: int) -> int:
    """``dm_bm_checksum`` of a metadata block (everything after the csum field)."""
    return crc32c_raw(block[4:]) ^ xor


# ---------------------------------------------------------------------------
@dataclass
class Superblock:
    flags: int
    blocknr: int
    uuid: bytes
    version: int
    time: int
    trans_id: int
    held_root: int
    data_sm: dict
    metadata_sm: dict
    data_mapping_root: int
    device_details_root: int
    data_block_size: int  # sectors
    metadata_block_size: int
    metadata_nr_blocks: int
    incompat_flags: int


def parse_superblock(block: bytes) -> Superblock:
    """Check and parse metadata block 0; raise :class:`ThinError` when it is not valid."""
    if len(block) < BLOCK:
        raise ThinError("thin superblock: short block")
    sb = S.thin_disk_superblock.parse(block)
    if sb.magic != S.THIN_SUPERBLOCK_MAGIC:
        raise ThinError(f"thin superblock: bad magic {sb.magic}")
    if dm_checksum(block, S.SUPERBLOCK_CSUM_XOR) != sb.csum:
        raise ThinError("thin superblock: checksum mismatch")
    if sb.blocknr != 0:
        raise ThinError(f"thin superblock: blocknr {sb.blocknr}, expected 0")
    if not 1 <= sb.version <= S.THIN_MAX_SUPPORTED_VERSION:
        raise ThinError(f"thin superblock: unsupported version {sb.version}")
    if sb.metadata_block_size != BLOCK // 512:
        raise ThinError(f"thin superblock: metadata block size {sb.metadata_block_size} sectors")
    if sb.data_block_size == 0 or sb.data_block_size % 128 or sb.data_block_size > 2097152:
        raise ThinError(f"thin superblock: implausible data block size {sb.data_block_size}")
    dsm = S.disk_sm_root.parse(sb.data_space_map_root)
    msm = S.disk_sm_root.parse(sb.metadata_space_map_root)
    return Superblock(sb.flags, sb.blocknr, bytes(sb.uuid), sb.version, sb.time, sb.trans_id,
                      sb.held_root, dict(dsm), dict(msm), sb.data_mapping_root,
                      sb.device_details_root, sb.data_block_size, sb.metadata_block_size,
                      sb.metadata_nr_blocks, sb.incompat_flags)


@dataclass
class Node:
    """A btree node whose checksum and block number were verified."""

    blocknr: int
    flags: int
    value_size: int
    keys: np.ndarray
    values: bytes  # nr_entries * value_size bytes

    @property
    def is_leaf(self):
        return self.flags & S.LEAF_NODE != 0

    @property
    def nbytes(self):
        return self.keys.nbytes + len(self.values) + 64

    def u64_values(self):
        return np.frombuffer(self.values, "<u8")


class ChecksumError(ThinError):
    """A btree node whose checksum fails (its content may still be mostly right)."""


def parse_node(block: bytes, blocknr: int, verify=True) -> Node:
    """Verify and parse one btree node (``btree_node_validator``).

    ``verify=False`` skips only the checksum (for salvaging an internal node whose
    children are then checked one by one)."""
    if len(block) < BLOCK:
        raise ThinError(f"btree node {blocknr}: short block")
    csum, flags, bnr, nr, max_e, vsize, _pad = _NODE_HDR.unpack_from(block)
    if bnr != blocknr:
        raise ThinError(f"btree node {blocknr}: header says block {bnr}")
    if verify and dm_checksum(block, S.BTREE_CSUM_XOR) != csum:
        raise ChecksumError(f"btree node {blocknr}: checksum mismatch")
    if flags not in (S.INTERNAL_NODE, S.LEAF_NODE):
        raise ThinError(f"btree node {blocknr}: bad flags {flags:#x}")
    if vsize == 0 or vsize > BLOCK or max_e == 0 or nr > max_e \
            or S.NODE_HEADER_SIZE + max_e * (8 + vsize) > BLOCK:
        raise ThinError(f"btree node {blocknr}: bad sizes (nr {nr}, max {max_e}, "
                        f"value size {vsize})")
    if flags == S.INTERNAL_NODE and vsize != 8:
        raise ThinError(f"btree node {blocknr}: internal node with value size {vsize}")
    keys = np.frombuffer(block, "<u8", nr, S.NODE_HEADER_SIZE).copy()
    voff = S.NODE_HEADER_SIZE + 8 * max_e
    values = bytes(block[voff:voff + nr * vsize])
    if nr > 1 and not np.all(keys[1:] > keys[:-1]):
        raise ThinError(f"btree node {blocknr}: keys out of order")
    return Node(blocknr, flags, vsize, keys, values)


@dataclass
class Walk:
    """What a tree walk found: leaf entries, and key ranges that could not be read."""

    keys: np.ndarray
    values: bytes
    unknown: list  # [(lo, hi)] key ranges below bad nodes (hi exclusive, None = open)
    bad: list  # messages
    nodes: int = 0


class ThinMetadata:
    """Random access to the btree nodes of a tmeta device."""

    def __init__(self, tmeta: Source):
        self.tmeta = tmeta
        self.nr_blocks = tmeta.size // BLOCK

    def read_block(self, b: int) -> bytes:
        if not 0 <= b < self.nr_blocks:
            raise ThinError(f"metadata block {b} is beyond the metadata device "
                            f"({self.nr_blocks} blocks)")
        return self.tmeta.read(b * BLOCK, BLOCK)

    def node(self, b: int, cache_leaf=True, raw=None) -> Node:
        key = ("lvm-thin-node", self.tmeta.uid, b)
        n = METADATA_CACHE.get(key)
        if n is None:
            n = parse_node(raw if raw is not None else self.read_block(b), b)
            if cache_leaf or not n.is_leaf:  # mapping leaves are read once into runs
                METADATA_CACHE.put(key, n)
        return n

    def walk(self, root: int, value_size: int, max_entries=50_000_000,
             cache_leaves=True) -> Walk:
        """Collect every leaf entry of the tree at ``root``; bad subtrees become unknown."""
        keys, vals, unknown, bad = [], [], [], []
        stack = [(root, 0, None, 0)]
        seen = set()
        pre = {}  # block -> raw bytes read ahead with its neighbours
        count = nodes = 0
        while stack:
            b, lo, hi, depth = stack.pop()
            try:
                if b in seen:
                    raise ThinError(f"btree node {b} appears twice (loop)")
                seen.add(b)
                if depth > MAX_TREE_DEPTH:
                    raise ThinError(f"btree deeper than {MAX_TREE_DEPTH} at node {b}")
                try:
                    n = self.node(b, cache_leaves, pre.pop(b, None))
                except ChecksumError as e:
                    n = self._salvage(b, lo, hi)
                    if n is None:
                        raise
                    bad.append(f"{e}; salvaged: an internal node whose {len(n.keys)} "
                               f"children are all valid nodes in key order")
                nodes += 1
                if n.is_leaf and n.value_size != value_size:
                    raise ThinError(f"btree node {b}: value size {n.value_size}, "
                                    f"expected {value_size}")
            except (ThinError, UnreadableError) as e:
                unknown.append((lo, hi))
                bad.append(str(e))
                continue
            if n.is_leaf:
                k = n.keys
                if len(k) and (k[0] < lo or (hi is not None and k[-1] >= hi)):
                    sel = (k >= lo) if hi is None else ((k >= lo) & (k < hi))
                    bad.append(f"btree node {b}: keys outside the range its parent gives")
                    k = k[sel]
                    v = np.frombuffer(n.values, np.uint8).reshape(-1, value_size)[sel]
                    vals.append(v.tobytes())
                else:
                    vals.append(n.values)
                count += len(k)
                if count > max_entries:
                    raise ThinError(f"btree at {root}: more than {max_entries} entries")
                keys.append(k)
                continue
            children = n.u64_values()
            ks = n.keys
            self._read_ahead(children.tolist(), pre)
            # push in reverse so leaves come out in key order
            for i in range(len(ks) - 1, -1, -1):
                c_lo = max(lo, int(ks[i])) if i else lo
                c_hi = int(ks[i + 1]) if i + 1 < len(ks) else hi
                stack.append((int(children[i]), c_lo, c_hi, depth + 1))
        k = np.concatenate(keys) if keys else np.zeros(0, np.uint64)
        return Walk(k, b"".join(vals), unknown, bad, nodes)

    def _salvage(self, b, lo, hi):
        """An internal node failing only its checksum is used when every child is a valid
        node whose first key fits the separator keys (flipped bits in unused space)."""
        try:
            n = parse_node(self.read_block(b), b, verify=False)
        except (ThinError, UnreadableError):
            return None
        if n.is_leaf or not len(n.keys):
            return None
        ks = n.keys.tolist()
        if ks[0] < lo and lo and ks[0] != 0 or (hi is not None and ks[-1] >= hi):
            return None
        for i, c in enumerate(n.u64_values().tolist()):
            try:
                child = self.node(c)
            except (ThinError, UnreadableError):
                return None
            if len(child.keys):
                first, last = int(child.keys[0]), int(child.keys[-1])
                if first < ks[i] or (i + 1 < len(ks) and last >= ks[i + 1]):
                    return None
        return n

    def _read_ahead(self, blocks, pre, max_run=64):
        """Read runs of consecutive child blocks with one read each (writers such as
        thin_restore, and often the kernel, place siblings next to each other)."""
        if len(pre) > 4096:
            pre.clear()
        i, n = 0, len(blocks)
        while i < n:
            j = i + 1
            while j < n and j - i < max_run and blocks[j] == blocks[j - 1] + 1:
                j += 1
            first, cnt = blocks[i], j - i
            if cnt > 1 and first >= 0 and first + cnt <= self.nr_blocks:
                try:
                    data = self.tmeta.read(first * BLOCK, cnt * BLOCK)
                except UnreadableError:
                    data = None
                if data is not None and len(data) == cnt * BLOCK:
                    for k in range(cnt):
                        pre[first + k] = data[k * BLOCK:(k + 1) * BLOCK]
            i = j


# ---------------------------------------------------------------------------
@dataclass
class DeviceDetails:
    mapped_blocks: int
    transaction_id: int
    creation_time: int
    snapshotted_time: int


def details_from_walk(w: Walk) -> dict:
    out = {}
    for i, k in enumerate(w.keys.tolist()):
        mb, tid, ct, st = struct.unpack_from("<QQII", w.values, i * S.DEVICE_DETAILS_SIZE)
        out[int(k)] = DeviceDetails(mb, tid, ct, st)
    return out


@dataclass
class Mapping:
    """A thin device's mapping as runs of consecutive blocks (numpy arrays)."""

    vstart: np.ndarray  # virtual block of each run
    dstart: np.ndarray  # data block of each run
    length: np.ndarray
    unknown: list  # [(vlo, vhi)] virtual block ranges that could not be read
    mapped: int
    max_time: int
    notes: list = field(default_factory=list)

    @property
    def nbytes(self):
        return self.vstart.nbytes * 3 + 64 * len(self.unknown) + 128


MAX_VBLOCK = 1 << 48  # far beyond any device (2^48 chunks of 64 KiB = 16 EiB)


def mapping_from_entries(vblocks: np.ndarray, values: np.ndarray, unknown):
    sane = vblocks < np.uint64(MAX_VBLOCK)
    if not sane.all():
        vblocks, values = vblocks[sane], values[sane]
    order = np.argsort(vblocks, kind="stable")
    vb = vblocks[order].astype(np.int64)
    val = values[order]
    db = (val >> np.uint64(S.TIME_BITS)).astype(np.int64)
    tm = (val & np.uint64((1 << S.TIME_BITS) - 1)).astype(np.int64)
    if len(vb):
        brk = np.flatnonzero((np.diff(vb) != 1) | (np.diff(db) != 1)) + 1
        starts = np.concatenate(([0], brk))
        ends = np.concatenate((brk, [len(vb)]))
        vstart, dstart, length = vb[starts], db[starts], ends - starts
    else:
        vstart = dstart = length = np.zeros(0, np.int64)
    return Mapping(vstart, dstart, length.astype(np.int64), list(unknown), len(vb),
                   int(tm.max()) if len(tm) else 0)


# ---------------------------------------------------------------------------
ENTRIES_PER_BITMAP = (BLOCK - S.BITMAP_HEADER_SIZE) * 4


def bitmap_counts(block: bytes) -> np.ndarray:
    """The 2-bit reference counts of one space-map bitmap block (``sm_lookup_bitmap``:
    entry ``b`` is bits ``2b`` (high) and ``2b+1`` (low) of the little-endian words)."""
    bits = np.unpackbits(np.frombuffer(block, np.uint8, offset=S.BITMAP_HEADER_SIZE),
                         bitorder="little")
    return (bits[0::2] << 1) | bits[1::2]


def metadata_in_use(md: ThinMetadata, sb: Superblock):
    """Boolean array: metadata blocks the superblock's metadata space map counts as used.

    Copy-on-write leaves older tree nodes behind, still checksummed; the space map of
    the committed transaction tells them apart.  None when the map cannot be read."""
    root = sb.metadata_sm
    nr = min(int(root["nr_blocks"]), md.nr_blocks)
    try:
        idx = md.read_block(int(root["bitmap_root"]))
    except (ThinError, UnreadableError):
        return None
    csum, _pad, bnr = struct.unpack_from("<IIQ", idx)
    if bnr != root["bitmap_root"] or dm_checksum(idx, S.INDEX_CSUM_XOR) != csum:
        return None
    used = np.zeros(nr, bool)
    n_bitmaps = -(-nr // ENTRIES_PER_BITMAP)
    if n_bitmaps > S.MAX_METADATA_BITMAPS:
        return None
    for i in range(n_bitmaps):
        bb = _u64(idx, S.METADATA_INDEX_HEADER + i * S.INDEX_ENTRY_SIZE)
        try:
            blk = md.read_block(bb)
        except (ThinError, UnreadableError):
            return None
        csum, _nu, bnr = struct.unpack_from("<IIQ", blk)
        if bnr != bb or dm_checksum(blk, S.BITMAP_CSUM_XOR) != csum:
            return None
        lo = i * ENTRIES_PER_BITMAP
        hi = min(nr, lo + ENTRIES_PER_BITMAP)
        used[lo:hi] = bitmap_counts(blk)[:hi - lo] != 0
    return used


def _u64(b, o):
    return int.from_bytes(b[o:o + 8], "little")


MAX_DATA_SM_BLOCKS = 1 << 26  # 4 TiB of 64 KiB chunks; larger pools skip the check


def data_refcounts(md: ThinMetadata, sb: Superblock) -> np.ndarray:
    """Reference count of every data block from the data space map
    (``dm-space-map-disk.c``: a btree of ``disk_index_entry`` keyed by bitmap number,
    2-bit counts in the bitmaps, a btree of u32 counts for 3 and more)."""
    nr = int(sb.data_sm["nr_blocks"])
    if nr > MAX_DATA_SM_BLOCKS:
        raise ThinError(f"data space map of {nr} blocks is too large to check")
    counts = np.zeros(nr, np.uint32)  # 4 bytes a block, bounded by MAX_DATA_SM_BLOCKS
    w = md.walk(int(sb.data_sm["bitmap_root"]), S.INDEX_ENTRY_SIZE)
    if w.unknown:
        raise ThinError("data space map index: " + "; ".join(w.bad[:3]))
    for i, key in enumerate(w.keys.tolist()):
        bb = _u64(w.values, i * S.INDEX_ENTRY_SIZE)
        blk = md.read_block(bb)
        csum, _nu, bnr = struct.unpack_from("<IIQ", blk)
        if bnr != bb or dm_checksum(blk, S.BITMAP_CSUM_XOR) != csum:
            raise ThinError(f"data space map bitmap at block {bb} fails its checks")
        lo = key * ENTRIES_PER_BITMAP
        if lo >= nr:
            continue
        hi = min(nr, lo + ENTRIES_PER_BITMAP)
        counts[lo:hi] = bitmap_counts(blk)[:hi - lo]
    rc = md.walk(int(sb.data_sm["ref_count_root"]), 4)
    if rc.unknown:
        raise ThinError("data space map reference counts: " + "; ".join(rc.bad[:3]))
    ok = rc.keys < np.uint64(nr)  # compare unsigned: a hostile key must not wrap
    counts[rc.keys[ok].astype(np.int64)] = np.frombuffer(rc.values, "<u4")[ok]
    return counts


def mapping_refcounts(mappings, nr) -> np.ndarray:
    """How many mapping entries point at each data block."""
    diff = np.zeros(nr + 1, np.int32)
    for m in mappings:
        ok = m.dstart + m.length <= nr
        np.add.at(diff, m.dstart[ok], 1)
        np.add.at(diff, (m.dstart + m.length)[ok], -1)
    return np.cumsum(diff[:-1])


# ---------------------------------------------------------------------------
@dataclass
class ScanResult:
    """Every checksummed btree node found in the metadata device, summarised."""

    leaves24: dict = field(default_factory=dict)  # blocknr -> nr_entries
    leaves8: dict = field(default_factory=dict)  # blocknr -> (nr, first key, last key)
    internal: dict = field(default_factory=dict)  # blocknr -> children (list)
    other: dict = field(default_factory=dict)  # blocknr -> value_size (space maps)
    scanned_blocks: int = 0

    def valid(self, b):
        return b in self.leaves24 or b in self.leaves8 or b in self.internal or b in self.other


def scan_nodes(md: ThinMetadata) -> ScanResult:
    """Checksum-verify every metadata block that claims to be a btree node at its place."""
    res = ScanResult()
    per = 256
    found = 0
    for first in range(0, md.nr_blocks, per):
        n = min(per, md.nr_blocks - first)
        try:
            chunk = md.tmeta.read(first * BLOCK, n * BLOCK)
        except UnreadableError:  # bad sectors: block by block, unreadable ones as zeros
            parts = []
            for b in range(first, first + n):
                try:
                    parts.append(md.tmeta.read(b * BLOCK, BLOCK))
                except UnreadableError:
                    parts.append(bytes(BLOCK))
            chunk = b"".join(parts)
        arr = np.frombuffer(chunk, "<u8").reshape(n, BLOCK // 8)
        flags = (arr[:, 0] >> np.uint64(32)).astype(np.int64)
        cand = np.flatnonzero((arr[:, 1] == np.arange(first, first + n, dtype=np.uint64))
                              & ((flags == S.INTERNAL_NODE) | (flags == S.LEAF_NODE)))
        for i in cand.tolist():
            b = first + i
            try:
                node = parse_node(chunk[i * BLOCK:(i + 1) * BLOCK], b)
            except ThinError:
                continue
            found += 1
            if found > MAX_SCAN_NODES:
                raise ThinError(f"more than {MAX_SCAN_NODES} btree nodes in the metadata")
            if not node.is_leaf:
                res.internal[b] = node.u64_values().tolist()
            elif node.value_size == 8:
                nr = len(node.keys)
                res.leaves8[b] = (nr, int(node.keys[0]) if nr else 0,
                                  int(node.keys[-1]) if nr else 0)
            elif node.value_size == S.DEVICE_DETAILS_SIZE:
                res.leaves24[b] = len(node.keys)
            else:
                res.other[b] = node.value_size
        res.scanned_blocks += n
    return res


class Recovery:
    """Rebuild the roots of a pool whose superblock or tree roots are damaged.

    The kind of each tree is told by its leaves: 24-byte values are device details;
    8-byte leaf values that are all block numbers of valid nodes make the top-level
    tree (``dev_id -> mapping root``); other 8-byte leaves are mappings.  A node
    nobody references is a root.  Among several candidate roots (copy-on-write leaves
    older generations behind) the newest is preferred: the details tree with the
    highest transaction id, the top-level tree that agrees best with the LVM text and
    the device details.
    """

    def __init__(self, md: ThinMetadata, scan: ScanResult, expected_devs=(), nr_data_blocks=None,
                 in_use=None):
        self.md = md
        self.scan = scan
        self.in_use = in_use  # metadata space map of the committed transaction, if known
        self.notes = []
        self.kind = {}
        self.expected = set(expected_devs)
        self.nr_data_blocks = nr_data_blocks
        self._tops = None
        self._classify()

    def _leaf8_kind(self, b):
        try:
            node = self.md.node(b)
        except (ThinError, UnreadableError):
            return "bad"
        vals = node.u64_values().tolist()
        # Top-level values are metadata block numbers (most of them valid nodes); a
        # mapping leaf of two or more entries always has a value >= 2**24.
        if vals and int(node.keys[-1]) <= MAX_DEVICE_ID \
                and all(0 < v < self.md.nr_blocks and v != b for v in vals) \
                and 2 * sum(1 for v in vals if self.scan.valid(v)) >= len(vals):
            return "top"
        return "map"

    def _kind_of(self, b, depth=0):
        k = self.kind.get(b)
        if k is not None:
            return k
        s = self.scan
        if b in s.leaves24:
            k = "details"
        elif b in s.leaves8:
            k = self._leaf8_kind(b)
        elif b in s.internal and depth < MAX_TREE_DEPTH:
            k = "bad"
            for c in s.internal[b]:
                if s.valid(c) and c != b:
                    k = self._kind_of(c, depth + 1)
                    if k != "bad":
                        break
        elif b in s.other:
            k = "spacemap"
        else:
            k = "bad"
        self.kind[b] = k
        return k

    def _classify(self):
        s = self.scan
        # With the committed space map, only current nodes count as parents: a stale
        # copy of a damaged node must not hide the damaged node's children.
        referenced = set()
        for b, children in s.internal.items():
            if self.current(b):
                referenced.update(c for c in children if c != b)
        for b in list(s.leaves8) + list(s.internal) + list(s.leaves24) + list(s.other):
            self._kind_of(b)
        for b in s.leaves8:
            if self.kind[b] == "top" and self.current(b):
                referenced.update(v for v in self.md.node(b).u64_values().tolist()
                                  if s.valid(v))
        self.referenced = referenced
        self.roots = [b for b in self.kind if b not in referenced]

    def current(self, b):
        """False for a node the committed metadata space map says is free (stale)."""
        return self.in_use is None or (0 <= b < len(self.in_use) and bool(self.in_use[b]))

    def roots_of(self, kind, only_current=True):
        return sorted(b for b in self.roots if self.kind.get(b) == kind
                      and (not only_current or self.current(b)))

    def _pick(self, ranked, what):
        """The best of ``[(rank, root, value)]``; notes how many others were found."""
        if not ranked:
            return None, {}
        _, root, value = max(ranked, key=lambda t: t[0])
        if len(ranked) > 1:
            self.notes.append(f"{len(ranked) - 1} older {what} found; using the one at "
                              f"block {root}")
        return root, value

    def best_details(self):
        """The device-details tree: most devices the LVM text names, then the newest.

        Newest is the root with the highest block number: every commit that changes a
        tree shadows its path up to a new root (dm-btree.c ``btree_insert_raw`` /
        ``dm_tm_shadow_block``), and the metadata space map hands out blocks from a
        cursor that only moves forward (dm-space-map-metadata.c ``sm_metadata_new_block``
        ``smm->begin = *b + 1``) until the device is full.  Neither the number of devices
        nor their transaction ids say which tree is newer: a deleted device leaves a
        newer tree with fewer devices, all of them older, so an older tree that still has
        the deleted one would win and bring it back as live (issue 13)."""
        ranked = []
        for r in self.roots_of("details"):
            d = details_from_walk(self.md.walk(r, S.DEVICE_DETAILS_SIZE))
            if d:
                ranked.append(((len(self.expected & set(d)), r), r, d))
        return self._pick(ranked, "device-details tree(s)")

    def _entries(self, root):
        """Number of leaf entries below ``root`` from the scan summaries (no parsing)."""
        total, stack, seen = 0, [(root, 0)], set()
        while stack:
            b, d = stack.pop()
            if b in seen or d > MAX_TREE_DEPTH:
                continue
            seen.add(b)
            if b in self.scan.leaves8:
                total += self.scan.leaves8[b][0]
            elif b in self.scan.internal:
                stack.extend((c, d + 1) for c in self.scan.internal[b])
        return total

    def top_trees(self):
        """{root: {dev_id: mapping root}} for every top-level tree found (all generations)."""
        if self._tops is None:
            self._tops = {}
            for r in self.roots_of("top", only_current=False):
                w = self.md.walk(r, 8)
                self._tops[r] = dict(zip(w.keys.tolist(),
                                         np.frombuffer(w.values, "<u8").tolist(), strict=False))
        return self._tops

    def device_roots(self, dev):
        """Every mapping root some top-level tree (of any generation) gives ``dev``."""
        return sorted({devs[dev] for devs in self.top_trees().values()
                       if dev in devs and self.scan.valid(devs[dev])
                       and self.current(devs[dev])})

    def max_time(self, root):
        w = self.md.walk(root, 8, cache_leaves=False)
        v = np.frombuffer(w.values, "<u8")
        return int((v & np.uint64(0xFFFFFF)).max()) if len(v) else -1

    def best_top(self, details):
        """The top-level tree: most devices the LVM text names, then the one whose devices
        are those of the chosen device details, each with as many entries as its
        mapped_blocks (they were committed together), then the newest (highest root
        block, see :meth:`best_details`).  Devices the details do not have count against
        a tree: that is an older tree still holding a deleted device."""
        ranked = []
        for r, devs in self.top_trees().items():
            if not self.current(r):
                continue
            agree = sum(1 for d, root in devs.items()
                        if d in details and self._entries(root) == details[d].mapped_blocks)
            extra = sum(1 for d in devs if d not in details) if details else 0
            ranked.append(((len(self.expected & set(devs)), agree - extra, r), r, devs))
        return self._pick(ranked, "top-level mapping tree(s)")

    def orphan_mapping_roots(self, used_roots):
        """Mapping subtrees nobody references: candidates for devices whose tree is lost."""
        return [r for r in self.roots_of("map") if r not in used_roots]


# ---------------------------------------------------------------------------
class ThinPool:
    """One thin pool: metadata, data device and the device table.

    ``hints`` come from the LVM text: ``chunk_size`` (sectors), ``transaction_id``,
    ``device_ids`` (of the thin LVs) — enough to go on without the superblock.
    """

    def __init__(self, tmeta: Source, tdata: Source, name="pool", hints=None):
        self.name = name
        self.tmeta = tmeta
        self.tdata = tdata
        self.md = ThinMetadata(tmeta)
        self.hints = hints or {}
        self.problems: list[Problem] = []
        self.info = []
        self.sb = None
        self.recovered = False
        self.usable = False
        self.details = {}
        self.dev_roots = {}
        self._lock = threading.Lock()
        self._rec = None
        self.stale_devs = set()  # devices restored from older copies of the trees
        #: Mappings and the space-map check from the persistent index (see
        #: :meth:`load_index`); ``_kept`` holds what was computed, to be stored.
        self.indexed: dict[int, Mapping] = {}
        self._kept: dict[int, Mapping] | None = None
        self._space_map_check: list | None = None
        self._open()

    def _problem(self, severity, code, msg, outcome=""):
        self.problems.append(Problem(severity, code, msg, outcome))

    def _open(self):
        chunk_hint = self.hints.get("chunk_size")
        causes = []  # (code, message) of the damage that sent us to recovery
        try:
            self.sb = parse_superblock(self.md.read_block(0))
        except (ThinError, UnreadableError) as e:
            causes.append(("thin-superblock", str(e)))
        if self.sb is not None:
            self.chunk_sectors = self.sb.data_block_size
            if chunk_hint and chunk_hint != self.chunk_sectors:
                self._problem("warning", "thin-chunk-size",
                              f"LVM says chunk_size {chunk_hint}, the superblock "
                              f"{self.chunk_sectors}; using the superblock")
            tid = self.hints.get("transaction_id")
            if tid is not None and tid != self.sb.trans_id:
                self._problem("warning", "thin-transaction-mismatch",
                              f"transaction id mismatch: LVM metadata says {tid}, the pool "
                              f"superblock {self.sb.trans_id}")
            if self.sb.held_root:
                self.info.append(f"a metadata snapshot is held at block {self.sb.held_root}")
        else:
            if not isinstance(chunk_hint, int) or chunk_hint <= 0 or chunk_hint % 128 \
                    or chunk_hint > 2097152:
                raise ThinError(f"thin pool {self.name}: no superblock and no usable chunk "
                                f"size in the LVM metadata ({chunk_hint!r})")
            self.chunk_sectors = chunk_hint
        self.chunk_bytes = self.chunk_sectors * 512
        self.nr_data_blocks = self.tdata.size // self.chunk_bytes
        if self.sb is not None:
            dsm = self.sb.data_sm
            self.info.append(f"superblock: transaction {self.sb.trans_id}, time {self.sb.time}, "
                             f"data blocks {dsm['nr_allocated']}/{dsm['nr_blocks']} allocated, "
                             f"metadata blocks {self.sb.metadata_sm['nr_allocated']}/"
                             f"{self.sb.metadata_sm['nr_blocks']}")
            if dsm["nr_blocks"] != self.nr_data_blocks:
                self._problem("warning", "thin-data-size",
                              f"data space map has {dsm['nr_blocks']} blocks, the data LV "
                              f"{self.nr_data_blocks}")
            bad = self._load_roots(self.sb.device_details_root, self.sb.data_mapping_root)
            if bad is None:
                self.usable = True
                return
            causes += [("thin-btree", msg) for msg in bad]
        self._recover()
        self._judge_recovery(causes)

    def _judge_recovery(self, causes):
        """Say what the damage that forced a recovery cost, once it is done: nothing when
        every device LVM names got a mapping tree holding exactly the blocks its device
        details count and no tree was guessed (``repaired``); else the doubts and losses
        are in their own entries (guessed roots here, devices or ranges without a mapping
        at the LVs) and these say the metadata itself is damaged (``degraded``); nothing
        usable at all is a loss."""
        if not self.usable:
            for cause, msg in causes:
                code = "thin-superblock" if cause == "thin-superblock" else "thin-btree"
                self._problem("error", code, f"{msg}; the btree nodes left do not rebuild "
                              f"any thin device")
            return
        wanted = set(self.hints.get("device_ids", ())) | set(self.details)
        guessed = any(p.code == "thin-guessed-root" for p in self.problems)
        rec = self._rec
        exact = bool(self.details) and all(
            dev in self.dev_roots and dev in self.details and rec._entries(
                self.dev_roots[dev]) == self.details[dev].mapped_blocks
            for dev in wanted)
        for cause, msg in causes:
            code = "thin-superblock" if cause == "thin-superblock" else "thin-btree"
            if exact and not guessed:
                self._problem("info", code,
                              f"{msg}; rebuilt from the other btree nodes: all {len(wanted)} "
                              f"thin devices found, each with as many mapped blocks as its "
                              f"device details record", outcome="repaired")
            else:
                self._problem("warning", code,
                              f"{msg}; rebuilt from the other btree nodes, but not provably "
                              f"complete (see the entries about guessed trees and unmapped "
                              f"devices)")

    def _load_roots(self, details_root, mapping_root):
        """Load the two top trees; None when they are whole, else the damage found
        (then recovery runs, and :meth:`_judge_recovery` says what it cost)."""
        dw = self.md.walk(details_root, S.DEVICE_DETAILS_SIZE)
        tw = self.md.walk(mapping_root, 8)
        if dw.unknown or tw.unknown:
            return list(dw.bad + tw.bad) or ["the top-level trees are incomplete"]
        for msg in dw.bad + tw.bad:  # damage the walk went around: parts may be missing
            self._problem("warning", "thin-btree", msg)
        self.details = details_from_walk(dw)
        self.dev_roots = dict(zip(tw.keys.tolist(), np.frombuffer(tw.values, "<u8").tolist(), strict=False))
        return None

    def _scan_once(self):
        with self._lock:
            if self._rec is None:
                scan = scan_nodes(self.md)
                in_use = metadata_in_use(self.md, self.sb) if self.sb is not None else None
                if self.sb is not None and in_use is None:
                    self._problem("warning", "thin-space-map",
                                  "the metadata space map cannot be read; stale btree nodes "
                                  "cannot be told from current ones")
                self._rec = Recovery(self.md, scan, self.hints.get("device_ids", ()),
                                     self.nr_data_blocks, in_use)
            return self._rec

    def adopt_stale(self, dev):
        """A device the current metadata lacks (a removed thin LV): the newest copy of its
        mapping tree that older top-level trees still reference, or None.

        Copy-on-write leaves those trees behind until their blocks are reused; the data
        blocks they point at may have been reused too, so the result is reported."""
        rec = self._scan_once()
        cands = {devs[dev] for devs in rec.top_trees().values() if dev in devs}
        cands = [r for r in cands if r not in self.dev_roots.values() and rec.scan.valid(r)]
        if not cands:
            return None
        best = max(cands, key=lambda r: (rec.max_time(r), rec._entries(r), r))
        with self._lock:
            self.dev_roots[dev] = best
            self.stale_devs.add(dev)
        METADATA_CACHE.put(("lvm-thin-map", self.tmeta.uid, dev), self._load_mapping(dev))
        return best

    def orphan_roots(self):
        """Mapping subtrees no valid node references (their parent is damaged or stale)."""
        return self._scan_once().orphan_mapping_roots(set(self.dev_roots.values()))

    def _recover(self):
        self.recovered = True
        rec = self._scan_once()
        scan = rec.scan
        droot, details = rec.best_details()
        troot, devs = rec.best_top(details)
        self.details = details
        self.dev_roots = dict(devs)
        self.info.extend(rec.notes)
        self.info.append(f"recovery: scanned {scan.scanned_blocks} metadata blocks, "
                         f"{len(scan.internal) + len(scan.leaves8) + len(scan.leaves24)} valid "
                         f"btree nodes; device details at {droot}, top-level tree at {troot}")
        # Per device, every tree that may be its mapping: what the chosen top-level tree
        # says, what older top-level trees say, and unreferenced mapping trees whose entry
        # count is the device's mapped_blocks.  The one agreeing with the device details,
        # then the one with the newest time, wins.
        orphans = rec.orphan_mapping_roots(set(self.dev_roots.values()))
        wanted = set(self.hints.get("device_ids", ())) | set(details) | set(self.dev_roots)
        for dev in sorted(wanted):
            cur = self.dev_roots.get(dev)
            want_n = details[dev].mapped_blocks if dev in details else None
            cands = set(rec.device_roots(dev))
            if cur is not None:
                cands.add(cur)
            if want_n is not None:
                cands.update(r for r in orphans if rec._entries(r) == want_n)
            if not cands or (cur is not None and rec._entries(cur) == want_n):
                continue
            best = max(cands, key=lambda r: (rec._entries(r) == want_n, rec.max_time(r),
                                             r == cur, r))
            if best != cur:
                self.dev_roots[dev] = best
                how = ("matches its mapped_blocks" if rec._entries(best) == want_n
                       else "newest time")
                self._problem("warning", "thin-guessed-root",
                              f"thin device {dev}: using the mapping tree at block {best} "
                              f"({how}; the top-level tree gave {cur})")
        if not self.dev_roots:
            self._problem("error", "thin-metadata-unusable",
                          "no thin device mapping could be recovered; only the pool data "
                          "area is exposed (for carving)")
            return
        self.usable = True

    def check_data_space_map(self):
        """Compare the data space map with the mappings: ``(severity, message)`` list."""
        if self.sb is None or self.recovered:
            return []
        if self._space_map_check is None:
            self._space_map_check = self._check_data_space_map()
        return self._space_map_check

    def _check_data_space_map(self):
        try:
            sm = data_refcounts(self.md, self.sb)
        except (ThinError, UnreadableError) as e:
            return [("warning", f"data space map not readable: {e}")]
        maps = [self.mapping(d) for d in self.dev_roots if d not in self.stale_devs]
        if any(m.unknown for m in maps):
            return []
        ref = mapping_refcounts(maps, len(sm))
        out = []
        used = int(np.count_nonzero(sm))
        if used != self.sb.data_sm["nr_allocated"]:
            out.append(("warning", f"data space map bitmaps count {used} blocks in use, its "
                                   f"root says {self.sb.data_sm['nr_allocated']}"))
        free_ref = np.flatnonzero((sm == 0) & (ref > 0))
        if len(free_ref):
            out.append(("error", f"{len(free_ref)} data blocks are mapped but free in the "
                                  f"space map (may have been reused), e.g. "
                                  f"{free_ref[:8].tolist()}"))
        leaked = np.flatnonzero((sm > 0) & (ref == 0))
        if len(leaked):
            out.append(("warning", f"{len(leaked)} data blocks are in use in the space map "
                                    f"but no device maps them, e.g. {leaked[:8].tolist()}"))
        other = np.count_nonzero((sm > 0) & (ref > 0) & (sm != ref))
        if other:
            out.append(("warning", f"{other} data blocks have a space-map reference count "
                                    f"other than the number of mappings to them"))
        if not out:
            out.append(("info", f"data space map agrees with the mappings: {used} of "
                                f"{len(sm)} blocks in use"))
        return out

    # -- mappings ---------------------------------------------------------------
    def mapping(self, dev_id, nowait=False) -> Mapping:
        """The device's mapping; ``nowait``: :class:`WouldBlock` rather than walk its
        tree now (the mount's inline reads)."""
        m = self.indexed.get(dev_id)
        if m is None and self._kept is not None:
            m = self._kept.get(dev_id)
        if m is not None:
            return m
        key = ("lvm-thin-map", self.tmeta.uid, dev_id)
        m = METADATA_CACHE.get(key)
        if m is None:
            if nowait:
                raise WouldBlock
            m = METADATA_CACHE.put(key, self._load_mapping(dev_id))
        if self._kept is not None:
            self._kept[dev_id] = m
        return m

    # -- the persistent index (pvfs/index.py) -------------------------------------
    INDEX_VERSION = 1

    def index_meta(self) -> bytes | None:
        """What the mappings are derived from: the superblock (transaction, roots, time)
        and the device table.  None for a pool rebuilt by scanning (not indexed)."""
        if self.sb is None or self.recovered or not self.usable:
            return None
        self._kept = {}
        return self.md.read_block(0) + repr(sorted(self.dev_roots.items())).encode()

    def load_index(self, info, arrays) -> bool:
        """Take every device's mapping and the space-map check from a stored index."""
        devs = [int(d) for d in info["devs"]]
        if sorted(devs) != sorted(self.dev_roots):
            return False
        off = arrays["offsets"]
        v, d, n = arrays["vstart"], arrays["dstart"], arrays["length"]
        if len(off) != len(devs) + 1 or not len(v) == len(d) == len(n) == int(off[-1]):
            return False
        for i, dev in enumerate(devs):
            lo, hi = int(off[i]), int(off[i + 1])
            self.indexed[dev] = Mapping(v[lo:hi], d[lo:hi], n[lo:hi], [],
                                        int(arrays["mapped"][i]), int(arrays["max_time"][i]))
        self._space_map_check = [tuple(x) for x in info["space_map"]]
        self._kept = None
        return True

    def index_payload(self):
        """``(info, arrays)`` to store, or None when something was damaged, restored or
        guessed (such pools are worked out again every time)."""
        if self._kept is None or self.stale_devs or self.recovered:
            return None
        devs = sorted(self.dev_roots)
        maps = [self.mapping(dev) for dev in devs]
        if any(m.unknown or m.notes for m in maps):
            return None
        counts = np.array([len(m.vstart) for m in maps], np.int64)
        offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)

        def cat(attr):
            parts = [getattr(m, attr).astype(np.int64) for m in maps]
            return np.concatenate(parts) if parts else np.zeros(0, np.int64)

        arrays = {"vstart": cat("vstart"), "dstart": cat("dstart"), "length": cat("length"),
                  "offsets": offsets,
                  "mapped": np.array([m.mapped for m in maps], np.int64),
                  "max_time": np.array([m.max_time for m in maps], np.int64)}
        info = {"devs": devs, "space_map": [list(x) for x in self.check_data_space_map()]}
        return info, arrays

    def _load_mapping(self, dev_id) -> Mapping:
        root = self.dev_roots.get(dev_id)
        if root is None:
            return Mapping(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64),
                           [(0, None)], 0, 0)
        w = self.md.walk(int(root), 8, cache_leaves=False)
        keys, vals, unknown = w.keys, np.frombuffer(w.values, "<u8"), list(w.unknown)
        notes = list(w.bad)
        if unknown:
            keys, vals, filled = self._fill_unknown(dev_id, int(root), keys, vals, unknown)
            if filled:
                notes.append(f"{filled} block mapping(s) in the lost range(s) taken from "
                             f"unreferenced leaves and older copies of the tree (newest "
                             f"time wins; may be stale)")
        m = mapping_from_entries(keys, vals, unknown)
        m.notes = notes
        return m

    def _fill_unknown(self, dev, root, keys, vals, unknown):
        """Entries for keys inside the lost ranges, from mapping trees nobody references
        (a damaged node's children) and from older copies of this device's tree."""
        best = {}  # key -> (time, preference, value)
        rec = self._scan_once()
        sources = [(r, 1) for r in self.orphan_roots()]
        if rec.in_use is None:
            # Without the committed space map, older copies of this device's tree are the
            # best evidence left (stale where the device changed since; reported).  With
            # it, an "older copy" still in use is a snapshot's tree: not this device's data.
            sources += [(r, 0) for r in rec.device_roots(dev) if r != root]
        for r, pref in sources:
            w = self.md.walk(r, 8, cache_leaves=False)
            v = np.frombuffer(w.values, "<u8")
            for k, val in zip(w.keys.tolist(), v.tolist(), strict=False):
                if any(lo <= k and (hi is None or k < hi) for lo, hi in unknown):
                    rank = (val & 0xFFFFFF, pref)
                    old = best.get(k)
                    if old is None or rank > old[:2]:
                        best[k] = (*rank, val)
        if not best:
            return keys, vals, 0
        add_k = np.array(list(best), np.uint64)
        add_v = np.array([x[2] for x in best.values()], np.uint64)
        return np.concatenate([keys, add_k]), np.concatenate([vals, add_v]), len(best)


class ThinSource(Source):
    """A thin device: virtual blocks -> pool data blocks; unmapped reads as zeros."""

    def __init__(self, pool: ThinPool, dev_id: int, size: int, label="thin", bad=BAD_EIO,
                 external=None):
        super().__init__()
        self.external = external  # lvm2 external_origin: unmapped blocks read from it
        self.pool = pool
        self.dev_id = dev_id
        self.size = size
        self.label = label
        self.bad = bad

    def _map(self, nowait=False):
        return self.pool.mapping(self.dev_id, nowait)

    def _pieces(self, offset, length, nowait=False):
        """Yield (offset, n, data_offset | None, status) over the range."""
        m = self._map(nowait)
        cb = self.pool.chunk_bytes
        end = offset + length
        pos = offset
        vstart, dstart, rlen = m.vstart, m.dstart, m.length
        while pos < end:
            vb = pos // cb
            i = int(np.searchsorted(vstart, vb, "right")) - 1
            if i >= 0 and vb < vstart[i] + rlen[i]:
                run_end = int(vstart[i] + rlen[i]) * cb
                n = min(end, run_end) - pos
                doff = int(dstart[i]) * cb + (pos - int(vstart[i]) * cb)
                if doff + n > self.pool.tdata.size:
                    yield pos, n, None, UNREADABLE
                else:
                    yield pos, n, doff, DATA
                pos += n
                continue
            nxt = int(vstart[i + 1]) * cb if i + 1 < len(vstart) else end
            gap_end = min(end, nxt)
            # split the gap by unknown ranges
            for g_off, g_n, st in _split_unknown(pos, gap_end, m.unknown, cb):
                yield g_off, g_n, None, st
            pos = gap_end

    def _read(self, offset, length):
        parts = []
        for pos, n, doff, st in self._pieces(offset, length):
            if st == DATA:
                parts.append(self.pool.tdata.read(doff, n))
            elif st == UNMAPPED and self.external is not None and pos < self.external.size:
                parts.append(self.external.read(pos, n).ljust(n, b"\0"))
            elif st == UNMAPPED or self.bad == BAD_ZERO:
                parts.append(bytes(n))
            else:
                raise UnreadableError(f"{self.label}: mapping of this range is lost "
                                      f"(damaged thin-pool metadata)", [(pos, n)])
        return parts[0] if len(parts) == 1 else b"".join(parts)

    readinto_native = True

    def _readinto(self, offset, view, nowait):
        """``_read`` into the caller's buffer: mapped runs are read from the pool's data
        LV straight into it (inline with ``nowait`` when cached, see pvfs.source)."""
        for pos, n, doff, st in self._pieces(offset, len(view), nowait):
            part = view[pos - offset:pos - offset + n]
            if st == DATA:
                self.pool.tdata.readinto(doff, part, nowait)
            elif st == UNMAPPED and self.external is not None and pos < self.external.size:
                got = self.external.readinto(pos, part, nowait)
                zero_fill(part[got:])
            elif st == UNMAPPED or self.bad == BAD_ZERO:
                zero_fill(part)
            else:
                raise UnreadableError(f"{self.label}: mapping of this range is lost "
                                      f"(damaged thin-pool metadata)", [(pos, n)])

    maps_plain = True

    def _plain_ranges(self, offset, length, out):
        """Mapped runs: where they lie under the pool's data LV (unmapped, lost: left out)."""
        for pos, n, doff, st in self._pieces(offset, length):
            if st == DATA:
                out.extend((pos + p - doff, f, foff, k)
                           for p, f, foff, k in self.pool.tdata.plain_ranges(doff, n))
            elif st == UNMAPPED and self.external is not None and pos < self.external.size:
                out.extend(self.external.plain_ranges(pos, n))

    def _block_status(self, offset, length):
        out = []
        for pos, n, doff, st in self._pieces(offset, length):
            if st == DATA:  # bad sectors or a missing PV under the pool's data LV show
                out.extend((pos + o - doff, ln, s)
                           for o, ln, s in self.pool.tdata.block_status(doff, n))
            elif st == UNMAPPED and self.external is not None and pos < self.external.size:
                m = min(n, self.external.size - pos)
                out.extend(self.external.block_status(pos, m))
                if m < n:
                    out.append((pos + m, n - m, UNMAPPED))
            else:
                out.append((pos, n, st))
        return out


def _split_unknown(start, end, unknown, cb):
    if not unknown:
        yield start, end - start, UNMAPPED
        return
    pos = start
    for lo, hi in sorted(unknown, key=lambda r: r[0]):
        u_lo = lo * cb
        u_hi = end if hi is None else min(end, hi * cb)
        if u_hi <= pos or u_lo >= end:
            continue
        if u_lo > pos:
            yield pos, u_lo - pos, UNMAPPED
            pos = u_lo
        yield pos, u_hi - pos, UNREADABLE
        pos = u_hi
    if pos < end:
        yield pos, end - pos, UNMAPPED
