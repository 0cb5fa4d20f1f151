"""One btrfs device: superblock choice, the chunk map, checked tree blocks.

The superblock has copies at 64 KiB, 64 MiB and 256 GiB (``btrfs_sb_offset``);
the valid copy (magic, checksum, ``bytenr`` equal to its own offset) with the
highest generation is used, the primary winning ties.  Logical addresses map
to device offsets through chunks: the superblock's ``sys_chunk_array``
bootstraps the SYSTEM chunks, which hold the chunk tree with every chunk.

A SINGLE chunk has one stripe; DUP (two stripes on the one device) and the
RAID1 family keep a whole copy of the chunk in every stripe.  A tree block is
read from the first copy and checked like the kernel's ``btree_read_extent_buffer_pages``
and ``btrfs_validate_extent_buffer``: checksum, ``bytenr``, fsid, generation
(the parent pointer's transid), level and first key; a copy that fails any check
(or cannot be read) is replaced by the next copy, and the repair is reported.
Striped profiles (RAID0/10/5/6) and stripes on other devices are not read.

References: Linux ``fs/btrfs/disk-io.c`` (``btrfs_sb_offset``, ``btrfs_read_dev_super``,
``btrfs_validate_extent_buffer``, ``read_tree_block``), ``fs/btrfs/volumes.c``
(``btrfs_read_sys_array``, ``read_one_chunk``, ``btrfs_map_block``),
``fs/btrfs/tree-checker.c`` (leaf item and key order checks); btrfs-progs
``Documentation/dev/On-disk-format.rst``.
"""

from __future__ import annotations

import bisect
import struct
import threading
import uuid

from pvfs.cache import METADATA_CACHE
from pvfs.errors import FormatError, UnreadableError

from . import structs as S
from .checksum import CSUMS, Checksum

MAX_CHUNKS = 1_000_000
MAX_SECTORSIZE = 64 * 1024
MAX_NODESIZE = 64 * 1024


class BtrfsError(FormatError):
    """A btrfs structure is damaged or not supported."""


class TreeBlockError(BtrfsError):
    """No copy of a tree block passed the checks."""

    def __init__(self, message, logical=0, ranges=()):
        super().__init__(message)
        self.logical = logical
        self.ranges = list(ranges)


# -- superblock --------------------------------------------------------------------------
class Superblock:
    """A parsed, checked superblock copy."""

    def __init__(self, raw: bytes, mirror: int):
        sb = S.super_block.parse(raw)
        self.raw = raw
        self.mirror = mirror
        self.offset = S.sb_offset(mirror)
        for k, v in sb.items():
            if not k.startswith("_"):
                setattr(self, k, v)
        self.label_text = sb.label.split(b"\0", 1)[0].decode("utf-8", "replace")
        self.fsid_uuid = str(uuid.UUID(bytes=sb.fsid))
        self.metadata_fsid = (sb.metadata_uuid if sb.incompat_flags & S.INCOMPAT_METADATA_UUID
                              else sb.fsid)


def check_superblock(raw: bytes, mirror: int) -> tuple[Superblock | None, str]:
    """Parse ``raw`` read at mirror ``mirror``; (superblock, "") or (None, why not)."""
    if len(raw) < S.SUPER_INFO_SIZE:
        return None, "short read"
    if raw[0x40:0x48] != S.BTRFS_MAGIC:
        return None, "no btrfs magic"
    csum_type = struct.unpack_from("<H", raw, 0xC4)[0]
    if csum_type not in CSUMS:
        return None, f"unknown checksum type {csum_type}"
    ck = Checksum(csum_type)
    if not ck.matches(raw[S.CSUM_SIZE:S.SUPER_INFO_SIZE], raw):
        return None, f"{ck.name} checksum mismatch"
    sb = Superblock(raw, mirror)
    if sb.bytenr != sb.offset:
        return None, f"bytenr {sb.bytenr:#x} is not its own offset {sb.offset:#x}"
    if not (4096 <= sb.sectorsize <= MAX_SECTORSIZE and sb.sectorsize & (sb.sectorsize - 1) == 0):
        return None, f"bad sectorsize {sb.sectorsize}"
    if not (sb.sectorsize <= sb.nodesize <= MAX_NODESIZE and sb.nodesize & (sb.nodesize - 1) == 0):
        return None, f"bad nodesize {sb.nodesize}"
    if sb.sys_chunk_array_size > S.SYSTEM_CHUNK_ARRAY_SIZE:
        return None, f"sys_chunk_array_size {sb.sys_chunk_array_size} too large"
    if sb.root_level >= S.MAX_LEVEL or sb.chunk_root_level >= S.MAX_LEVEL:
        return None, "tree level out of range"
    return sb, ""


def read_superblocks(source) -> list[tuple[int, Superblock | None, str]]:
    """Every superblock copy that fits on ``source``: (mirror, superblock or None, problem)."""
    out = []
    for mirror in range(S.SUPER_MIRROR_MAX):
        off = S.sb_offset(mirror)
        if off + S.SUPER_INFO_SIZE > source.size:
            break
        try:
            raw = source.read(off, S.SUPER_INFO_SIZE)
        except UnreadableError as e:
            out.append((mirror, None, f"unreadable: {e}"))
            continue
        sb, why = check_superblock(raw, mirror)
        out.append((mirror, sb, why))
    return out


def pick_superblock(copies) -> Superblock | None:
    """The valid copy with the highest generation (the primary on ties), of one fsid."""
    valid = [sb for _m, sb, _w in copies if sb is not None]
    if not valid:
        return None
    primary = next((sb for sb in valid if sb.mirror == 0), None)
    if primary is not None:  # a mirror left over from an older filesystem does not win
        valid = [sb for sb in valid if sb.fsid == primary.fsid]
    return max(valid, key=lambda sb: (sb.generation, -sb.mirror))


# -- chunks ------------------------------------------------------------------------------
class Chunk:
    __slots__ = ("start", "length", "type", "stripe_len", "stripes", "num_stripes")

    def __init__(self, start, length, ctype, stripe_len, stripes):
        self.start = start
        self.length = length
        self.type = ctype
        self.stripe_len = stripe_len
        self.stripes = stripes  # [(devid, offset)]
        self.num_stripes = len(stripes)

    @property
    def end(self):
        return self.start + self.length

    @property
    def profile(self) -> str:
        for bit, name in S.PROFILE_NAMES.items():
            if self.type & bit:
                return name
        return "SINGLE"

    def copies(self, devid: int) -> list[int] | None:
        """Device offsets where this chunk's bytes start, one per whole copy on ``devid``;
        None for a striped profile (each stripe holds only part of the chunk)."""
        if self.type & S.STRIPED_PROFILES and self.num_stripes > 1:
            return None
        return [off for dev, off in self.stripes if dev == devid]


def parse_chunk(data, key_offset: int, at: int = 0) -> tuple[Chunk, int]:
    """A ``btrfs_chunk`` with its stripes at ``data[at:]``; (chunk, bytes used)."""
    if len(data) - at < S.CHUNK_SIZE:
        raise BtrfsError("chunk item truncated")
    ch = S.chunk.parse(bytes(data[at:at + S.CHUNK_SIZE]))
    n = ch.num_stripes
    # btrfs_chunk embeds the first stripe: the item is 48 + 32 * num_stripes bytes
    need = S.CHUNK_SIZE + n * S.STRIPE_SIZE
    if n == 0 or len(data) - at < need:
        raise BtrfsError(f"chunk at logical {key_offset:#x}: {n} stripes do not fit")
    if ch.length == 0 or ch.length > (1 << 50):
        raise BtrfsError(f"chunk at logical {key_offset:#x}: bad length {ch.length:#x}")
    stripes = []
    for i in range(n):
        devid, off = struct.unpack_from("<QQ", data, at + S.CHUNK_SIZE + i * S.STRIPE_SIZE)
        stripes.append((devid, off))
    return Chunk(key_offset, ch.length, ch.type, ch.stripe_len, stripes), need


class ChunkMap:
    """Logical -> device offsets, for one device (``devid``)."""

    def __init__(self, devid: int, device_size: int):
        self.devid = devid
        self.device_size = device_size
        self.chunks: list[Chunk] = []
        self._starts: list[int] = []

    def add(self, ch: Chunk):
        i = bisect.bisect_left(self._starts, ch.start)
        if i < len(self.chunks) and self.chunks[i].start == ch.start:
            return  # the chunk tree repeats the sys_chunk_array's chunks
        if len(self.chunks) >= MAX_CHUNKS:
            raise BtrfsError(f"more than {MAX_CHUNKS} chunks")
        if (i > 0 and self.chunks[i - 1].end > ch.start) or \
                (i < len(self.chunks) and ch.end > self.chunks[i].start):
            raise BtrfsError(f"chunk at logical {ch.start:#x} overlaps another")
        self.chunks.insert(i, ch)
        self._starts.insert(i, ch.start)

    def lookup(self, logical: int) -> Chunk | None:
        i = bisect.bisect_right(self._starts, logical) - 1
        if i >= 0 and logical < self.chunks[i].end:
            return self.chunks[i]
        return None

    @property
    def logical_end(self) -> int:
        return self.chunks[-1].end if self.chunks else 0

    def map(self, logical: int, length: int) -> tuple[Chunk, list[int]]:
        """The chunk holding ``[logical, logical+length)`` and the device offsets of its
        copies; raises :class:`BtrfsError` when unmapped, striped or on other devices."""
        ch = self.lookup(logical)
        if ch is None:
            raise BtrfsError(f"logical {logical:#x} is in no chunk")
        if logical + length > ch.end:
            raise BtrfsError(f"logical range {logical:#x}+{length:#x} crosses the end of "
                             f"its chunk")
        copies = ch.copies(self.devid)
        if copies is None:
            raise BtrfsError(f"logical {logical:#x} lies in a {ch.profile} chunk "
                             f"(striped profiles are not supported)")
        if not copies:
            devs = sorted({d for d, _o in ch.stripes})
            raise BtrfsError(f"logical {logical:#x} lies only on device(s) "
                             f"{', '.join(map(str, devs))}, which are not here")
        rel = logical - ch.start
        return ch, [off + rel for off in copies]

    def to_logical(self, phys: int, length: int):
        """Yield ``(chunk, copy_index, logical, length)`` for the parts of device range
        ``[phys, phys+length)`` that hold chunk data."""
        end = phys + length
        for ch in self.chunks:
            copies = ch.copies(self.devid)
            if not copies:
                continue
            for ci, off in enumerate(copies):
                lo, hi = max(phys, off), min(end, off + ch.length)
                if lo < hi:
                    yield ch, ci, ch.start + (lo - off), hi - lo


def parse_sys_chunk_array(sb: Superblock) -> list[Chunk]:
    """The SYSTEM chunks in the superblock (``btrfs_read_sys_array``)."""
    data = sb.sys_chunk_array[:sb.sys_chunk_array_size]
    out, pos = [], 0
    while pos < len(data):
        if len(data) - pos < S.DISK_KEY_SIZE:
            raise BtrfsError("sys_chunk_array: truncated key")
        objectid, ktype, offset = struct.unpack_from("<QBQ", data, pos)
        pos += S.DISK_KEY_SIZE
        if ktype != S.CHUNK_ITEM_KEY:
            raise BtrfsError(f"sys_chunk_array: unexpected key type {ktype}")
        ch, used = parse_chunk(data, offset, pos)
        out.append(ch)
        pos += used
    return out


# -- tree blocks ---------------------------------------------------------------------------
class Node:
    """A checked tree block: a leaf (items) or an internal node (key pointers)."""

    __slots__ = ("bytenr", "generation", "owner", "level", "keys", "ptrs", "offs", "sizes",
                 "raw", "cache_cost")

    def item(self, i: int) -> bytes:
        o = S.HEADER_SIZE + self.offs[i]
        return self.raw[o:o + self.sizes[i]]


def parse_node(raw: bytes, nodesize: int) -> Node:
    """Items or key pointers of a tree block whose header was checked; raises
    :class:`BtrfsError` when the layout is impossible (tree-checker.c)."""
    h_bytenr, h_gen, h_owner, nritems, level = (
        struct.unpack_from("<Q", raw, 0x30)[0], struct.unpack_from("<Q", raw, 0x50)[0],
        struct.unpack_from("<Q", raw, 0x58)[0], struct.unpack_from("<I", raw, 0x60)[0],
        raw[0x64])
    n = Node()
    n.bytenr, n.generation, n.owner, n.level, n.raw = h_bytenr, h_gen, h_owner, level, raw
    room = nodesize - S.HEADER_SIZE
    if level >= S.MAX_LEVEL:
        raise BtrfsError(f"level {level} out of range")
    if level == 0:
        if nritems * S.ITEM.size > room:
            raise BtrfsError(f"{nritems} items do not fit in a leaf")
        table = raw[S.HEADER_SIZE:S.HEADER_SIZE + nritems * S.ITEM.size]
        keys, offs, sizes = [], [], []
        table_end = nritems * S.ITEM.size
        for oid, kt, koff, ioff, isz in S.ITEM.iter_unpack(table):
            if ioff < table_end or ioff + isz > room:
                raise BtrfsError(f"item data {ioff}+{isz} outside the leaf")
            keys.append((oid, kt, koff))
            offs.append(ioff)
            sizes.append(isz)
        n.offs, n.sizes, n.ptrs = offs, sizes, None
    else:
        if nritems == 0 or nritems * S.KEY_PTR.size > room:
            raise BtrfsError(f"{nritems} key pointers in a node")
        table = raw[S.HEADER_SIZE:S.HEADER_SIZE + nritems * S.KEY_PTR.size]
        keys, ptrs = [], []
        for oid, kt, koff, ptr, gen in S.KEY_PTR.iter_unpack(table):
            keys.append((oid, kt, koff))
            ptrs.append((ptr, gen))
        n.ptrs, n.offs, n.sizes = ptrs, None, None
    for i in range(1, len(keys)):
        if keys[i - 1] >= keys[i]:
            raise BtrfsError(f"keys out of order at slot {i}")
    n.keys = keys
    n.cache_cost = nodesize + 200 * len(keys) + 256
    return n


class _OnceReport:
    """Drops reports (a Device used without a filesystem: tests, probing)."""

    def __call__(self, severity, code, message, ranges=(), key=None, outcome=""):
        pass


class Device:
    """A btrfs filesystem on one device (``source``): superblock, chunks, tree blocks."""

    def __init__(self, source, sb: Superblock, report=None):
        self.source = source
        self.sb = sb
        self.csum = Checksum(sb.csum_type)
        self.nodesize = sb.nodesize
        self.sectorsize = sb.sectorsize
        self.fsid = sb.metadata_fsid
        self.devid = sb.dev_item.devid
        #: ``report(severity, code, message, ranges, key=...)`` for repairs and damage seen
        #: while reading (one entry per ``key``)
        self.report = report or _OnceReport()
        self.chunks = ChunkMap(self.devid, source.size)
        self._lock = threading.Lock()
        self.repaired = 0  # tree blocks read from a second copy

    # -- chunk map ---------------------------------------------------------------------
    def load_chunks(self, chunk_tree_items):
        """Add the chunks of the chunk tree (``(key, data)`` pairs)."""
        for (_oid, ktype, offset), data in chunk_tree_items:
            if ktype != S.CHUNK_ITEM_KEY:
                continue
            try:
                ch, _used = parse_chunk(data, offset)
                self.chunks.add(ch)
            except BtrfsError as e:
                self.report("error", "bad-chunk", f"chunk item at logical {offset:#x}: {e}",
                            key=("chunk", offset))

    def read_phys(self, phys: int, length: int) -> bytes:
        """``length`` bytes at device offset ``phys``; past the end of the device (a
        truncated image, a hostile stripe offset) is unreadable, never short."""
        if phys + length > self.source.size:
            raise UnreadableError(f"device offset {phys:#x}+{length:#x} lies beyond the end "
                                  f"of the device ({self.source.size:#x})",
                                  [(phys, length)])
        return self.source.read(phys, length)

    # -- tree blocks -------------------------------------------------------------------
    def _check(self, raw: bytes, logical: int, gen, level, first_key) -> str:
        """Why a copy of a tree block is wrong ("" when it is right)."""
        if not self.csum.matches(raw[S.CSUM_SIZE:], raw):
            if not any(raw):
                return "all zeros"
            return f"{self.csum.name} checksum mismatch"
        bytenr = struct.unpack_from("<Q", raw, 0x30)[0]
        if bytenr != logical:
            return f"header bytenr {bytenr:#x}, expected {logical:#x}"
        if raw[0x20:0x30] != self.fsid:
            return "header fsid is not this filesystem's"
        if gen is not None:
            hgen = struct.unpack_from("<Q", raw, 0x50)[0]
            if hgen != gen:
                return f"generation {hgen}, parent expects {gen} (a lost or stale write)"
        if level is not None and raw[0x64] != level:
            return f"level {raw[0x64]}, expected {level}"
        if first_key is not None and struct.unpack_from("<I", raw, 0x60)[0]:
            k = struct.unpack_from("<QBQ", raw, S.HEADER_SIZE)
            if k != tuple(first_key):
                return f"first key {k}, parent says {tuple(first_key)}"
        return ""

    def read_node(self, logical: int, gen=None, level=None, first_key=None) -> Node:
        """The tree block at ``logical``, from the first copy that passes every check."""
        ck = (self.source.uid, "btrfs-node", logical, self.nodesize)
        node = METADATA_CACHE.get(ck)
        if node is not None and (gen is None or node.generation == gen) and \
                (level is None or node.level == level) and \
                (first_key is None or not node.keys or node.keys[0] == tuple(first_key)):
            return node
        try:
            _ch, copies = self.chunks.map(logical, self.nodesize)
        except BtrfsError as e:
            raise TreeBlockError(f"tree block {logical:#x}: {e}", logical) from None
        problems, bad_ranges = [], []
        for i, phys in enumerate(copies):
            try:
                raw = self.read_phys(phys, self.nodesize)
            except UnreadableError as e:
                problems.append(f"copy {i + 1} at {phys:#x} unreadable ({e})")
                bad_ranges.append((phys, self.nodesize))
                continue
            why = self._check(raw, logical, gen, level, first_key)
            if not why:
                try:
                    node = parse_node(raw, self.nodesize)
                except BtrfsError as e:
                    why = str(e)
            if why:
                problems.append(f"copy {i + 1} at {phys:#x}: {why}")
                bad_ranges.append((phys, self.nodesize))
                continue
            if problems:
                with self._lock:
                    self.repaired += 1
                self.report("info", "repaired-from-mirror",
                            f"tree block {logical:#x} repaired from mirror: "
                            f"{'; '.join(problems)}; copy {i + 1} is good", bad_ranges,
                            key=("repaired", logical), outcome="repaired")
            return METADATA_CACHE.put(ck, node)
        if not copies:
            problems.append("no copy on this device")
        raise TreeBlockError(f"tree block {logical:#x}: no good copy ({'; '.join(problems)})",
                             logical, bad_ranges)
