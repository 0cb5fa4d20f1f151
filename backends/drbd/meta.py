"""Find, decode and check DRBD meta data: superblock, activity log, bitmap.

Layouts (drbdmeta.c ``max_usable_sectors()``)::

  internal:   [data ......][ bitmap ][ activity log ][ 4k superblock ]   (end of device)
                           | bm_offset < 0 (sectors, relative to the superblock)
                                     | al_offset < 0
  external:   [ 4k superblock ][ activity log ][ bitmap ]               (separate device)
              | al_offset == 8, bm_offset == 8 + al size (sectors)

References: drbd-utils ``user/shared/drbdmeta.c`` (``v07_style_md_get_byte_offset``,
``is_valid_md``, ``bm_bytes``, ``clip_effective_size_and_bm_bytes``,
``replay_al_84``, ``al_tr_number_to_on_disk_slot``, ``fprintf_bm``) and the
drbd kernel's ``drbd_bitmap.c`` (``interleaved_word32``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pvfs.cache import METADATA_CACHE
from pvfs.checksum import crc32c_raw
from pvfs.errors import FormatError
from pvfs.structs import parse

from . import structs as S

MIN_DEVICE = 68 * 1024  # drbdmeta's SO_MUCH: smaller devices cannot hold DRBD meta data
MAX_AL_TRANSACTIONS = 4096  # decode at most 16 MiB of activity log
MAX_BM_RANGES = 100_000  # ranges kept per bitmap; the bit count stays exact beyond
BM_CHUNK_WORDS = 1 << 18  # 32-bit words read per step (1 MiB), shared by all peers' bitmaps


class DrbdError(FormatError):
    """DRBD meta data that cannot be used."""


# ---------------------------------------------------------------------------
# where the superblock is

@dataclass(frozen=True)
class MdLocation:
    """Where a device's meta data lives: ``internal``, ``flex-external`` or ``index N``."""

    kind: str  # "internal" | "external"
    index: int | None = None  # external: None = flexible (whole device), N = 128 MiB slot

    def md_offset(self, md_size: int) -> int:
        """Byte offset of the superblock (``v07_style_md_get_byte_offset``)."""
        if self.kind == "internal":
            return (md_size - 4096) & ~4095
        if self.index is None:
            return 0
        return S.MD_RESERVED_SECT_07 * 512 * self.index

    def describe(self):
        if self.kind == "internal":
            return "internal"
        return "external" if self.index is None else f"external[{self.index}]"


INTERNAL = MdLocation("internal")
FLEX_EXTERNAL = MdLocation("external")


def magic_at(source, offset) -> int | None:
    """The meta-data magic at ``offset`` (a superblock start), or None."""
    try:
        b = source.read(offset + S.MAGIC_OFFSET, 4)
    except Exception:
        return None
    if len(b) != 4:
        return None
    m = int.from_bytes(b, "big")
    if m in (S.DRBD_MD_MAGIC_08, S.DRBD_MD_MAGIC_84_UNCLEAN, S.DRBD_MD_MAGIC_09):
        return m
    return None


# ---------------------------------------------------------------------------
# the decoded superblock

@dataclass
class PeerSlot:
    node_id: int | None  # v08: None (one anonymous peer)
    bitmap_uuid: int
    bitmap_dagtag: int
    flags: int
    bitmap_index: int

    def to_json(self):
        return {
            "node_id": self.node_id,
            "bitmap_index": self.bitmap_index,
            "bitmap_uuid": uuid_hex(self.bitmap_uuid),
            "bitmap_dagtag": self.bitmap_dagtag,
            "flags": f"{self.flags:#010x}",
            "flag_names": flag_names(self.flags, S.MDF_PEER_NAMES),
        }


@dataclass
class DrbdMeta:
    """One node's meta data, with absolute offsets and checked sizes."""

    version: str  # "v08" | "v09"
    magic: int
    location: MdLocation
    md_offset: int  # bytes in the meta-data source
    effective_size: int  # la-size-sect as on disk
    current_uuid: int
    history_uuids: list
    device_uuid: int
    flags: int
    md_size_sect: int
    al_offset_sect: int  # relative to the superblock, as on disk
    al_nr_extents: int
    bm_offset_sect: int
    bm_bytes_per_bit: int
    la_peer_max_bio_size: int
    max_peers: int
    node_id: int  # -1 for v08 (unknown)
    al_stripes: int
    al_stripe_size_4k: int
    members: int
    peers: list  # PeerSlot; v08: one
    # derived
    al_offset: int = 0  # bytes in the meta-data source
    al_size: int = 0
    bm_offset: int = 0
    bm_usable: bool = True
    data_size: int = 0  # bytes of replicated data exposed
    max_usable: int = 0  # bytes the layout allows
    problems: list = field(default_factory=list)

    # -- convenience ---------------------------------------------------------
    @property
    def al_clean(self):
        return bool(self.flags & S.MDF_AL_CLEAN) and self.magic != S.DRBD_MD_MAGIC_84_UNCLEAN

    @property
    def bm_bits(self):
        """Bits per peer bitmap that cover the data area."""
        return -(-self.data_size // self.bm_bytes_per_bit)

    def used_slots(self):
        """Peer slots that own a bitmap (v08: the single one)."""
        return [p for p in self.peers if 0 <= p.bitmap_index < self.max_peers]

    def slot_for(self, peer_node_id):
        """The peer slot describing ``peer_node_id`` (v09) or the only one (v08)."""
        if self.version == "v08":
            return self.peers[0]
        if peer_node_id is not None and 0 <= peer_node_id < len(self.peers):
            p = self.peers[peer_node_id]
            if p.bitmap_index >= 0 or p.bitmap_uuid:
                return p
        used = self.used_slots()
        return used[0] if len(used) == 1 else None

    def bitmap_uuids(self):
        return [p.bitmap_uuid for p in self.peers if p.bitmap_uuid]

    def to_json(self):
        doc = {
            "md_format": self.version,
            "magic": f"{self.magic:#010x}",
            "meta_data": self.location.describe(),
            "md_offset": self.md_offset,
            "la_size_sect": self.effective_size,
            "data_area_bytes": self.data_size,
            "current_uuid": uuid_hex(self.current_uuid),
            "history_uuids": [uuid_hex(u) for u in _strip_zeros(self.history_uuids)],
            "device_uuid": uuid_hex(self.device_uuid),
            "flags": f"{self.flags:#010x}",
            "flag_names": flag_names(self.flags, S.MDF_NAMES_V08 if self.version == "v08"
                                     else S.MDF_NAMES),
            "al_clean": self.al_clean,
            "md_size_sect": self.md_size_sect,
            "al_offset": self.al_offset,
            "al_offset_sect_rel": self.al_offset_sect,
            "al_nr_extents": self.al_nr_extents,
            "al_stripes": self.al_stripes,
            "al_stripe_size_4k": self.al_stripe_size_4k,
            "bm_offset": self.bm_offset,
            "bm_offset_sect_rel": self.bm_offset_sect,
            "bm_bytes_per_bit": self.bm_bytes_per_bit,
            "la_peer_max_bio_size": self.la_peer_max_bio_size,
            "max_peers": self.max_peers,
        }
        if self.version == "v08":
            doc["bitmap_uuid"] = uuid_hex(self.peers[0].bitmap_uuid)
            doc["peer_flag_names"] = flag_names(self.peers[0].flags, S.MDF_PEER_NAMES)
        else:
            doc["node_id"] = self.node_id
            doc["members"] = f"{self.members:#x}"
            doc["peers"] = [p.to_json() for p in self.peers
                            if p.bitmap_index >= 0 or p.bitmap_uuid or p.flags]
        if self.problems:
            doc["problems"] = list(self.problems)
        return doc


def _strip_zeros(values):
    values = list(values)
    while values and not values[-1]:
        values.pop()
    return values


def uuid_hex(u):
    return f"0x{u:016X}"


def flag_names(value, names):
    return [n for bit, n in sorted(names.items()) if value & bit]


def decode_superblock(buf: bytes, location: MdLocation, md_offset: int) -> DrbdMeta:
    """Decode one 4 KiB superblock (no layout checks yet)."""
    if len(buf) < S.MD_SUPERBLOCK_SIZE:
        raise DrbdError(f"superblock at {md_offset:#x} is truncated ({len(buf)} bytes)")
    magic = int.from_bytes(buf[S.MAGIC_OFFSET:S.MAGIC_OFFSET + 4], "big")
    if magic in (S.DRBD_MD_MAGIC_08, S.DRBD_MD_MAGIC_84_UNCLEAN):
        d = parse(S.md_on_disk_08, buf, DrbdError, "v08 superblock", md_offset)
        al_stripes, al_4k = d.al_stripes, d.al_stripe_size_4k
        if al_stripes == 0 and al_4k == 0:  # pre-8.4: fixed 32 KiB activity log
            al_stripes, al_4k = 1, 8
        return DrbdMeta(
            version="v08", magic=magic, location=location, md_offset=md_offset,
            effective_size=d.effective_size, current_uuid=d.uuid[S.UI_CURRENT],
            history_uuids=list(d.uuid[S.UI_HISTORY_START:S.UI_HISTORY_END + 1]),
            device_uuid=d.device_uuid, flags=d.flags, md_size_sect=d.md_size_sect,
            al_offset_sect=d.al_offset, al_nr_extents=d.al_nr_extents,
            bm_offset_sect=d.bm_offset, bm_bytes_per_bit=d.bm_bytes_per_bit,
            la_peer_max_bio_size=d.la_peer_max_bio_size, max_peers=1, node_id=-1,
            al_stripes=al_stripes, al_stripe_size_4k=al_4k, members=0,
            peers=[PeerSlot(None, d.uuid[S.UI_BITMAP], 0, _v08_peer_flags(d.flags), 0)])
    if magic == S.DRBD_MD_MAGIC_09:
        d = parse(S.meta_data_on_disk_9, buf, DrbdError, "v09 superblock", md_offset)
        peers = [PeerSlot(i, p.bitmap_uuid, p.bitmap_dagtag, p.flags, p.bitmap_index)
                 for i, p in enumerate(d.peers)]
        return DrbdMeta(
            version="v09", magic=magic, location=location, md_offset=md_offset,
            effective_size=d.effective_size, current_uuid=d.current_uuid,
            history_uuids=list(d.history_uuids), device_uuid=d.device_uuid, flags=d.flags,
            md_size_sect=d.md_size_sect, al_offset_sect=d.al_offset,
            al_nr_extents=d.al_nr_extents, bm_offset_sect=d.bm_offset,
            bm_bytes_per_bit=d.bm_bytes_per_bit, la_peer_max_bio_size=d.la_peer_max_bio_size,
            max_peers=d.bm_max_peers, node_id=d.node_id, al_stripes=d.al_stripes,
            al_stripe_size_4k=d.al_stripe_size_4k, members=d.members, peers=peers)
    if magic == S.DRBD_MD_MAGIC_07:
        raise DrbdError("DRBD 0.7 meta data (v07) is not supported")
    raise DrbdError(f"no DRBD meta-data magic at {md_offset:#x} (found {magic:#010x})")


def _v08_peer_flags(flags):
    """The peer facts of a v08 flags word as v09 peer flags (``md_convert_08_to_09``)."""
    out = 0
    for v08, v09 in ((S.MDF_CONNECTED_IND, S.MDF_PEER_CONNECTED),
                     (S.MDF_FULL_SYNC, S.MDF_PEER_FULL_SYNC),
                     (S.MDF_PEER_OUT_DATED, S.MDF_PEER_OUTDATED)):
        if flags & v08:
            out |= v09
    return out


def bm_bytes(sectors: int, bm_bytes_per_bit: int, max_peers: int) -> int:
    """On-disk bitmap size for ``sectors`` of data (drbdmeta ``bm_bytes()``)."""
    spb = bm_bytes_per_bit >> 9
    bits = -(-sectors // spb)
    bits = -(-bits // 64) * 64
    return -(-(bits // 8 * max_peers) // 4096) * 4096


def check_layout(md: DrbdMeta, md_size: int, data_dev_size: int):
    """Bound every field against the devices; fill in absolute offsets and ``data_size``.

    Fatal only when nothing sensible can be exposed; anything else lands in
    ``md.problems`` (a damage entry each) and the part concerned is not used.
    """
    p = md.problems
    if not 1 <= md.max_peers <= S.DRBD_PEERS_MAX - 1:
        raise DrbdError(f"max-peers {md.max_peers} out of bounds (1..{S.DRBD_PEERS_MAX - 1})")
    if not -1 <= md.node_id <= S.DRBD_PEERS_MAX - 1:
        raise DrbdError(f"node-id {md.node_id} out of bounds")
    for slot in md.peers:
        if not -1 <= slot.bitmap_index <= S.DRBD_PEERS_MAX - 1:
            p.append(f"peer {slot.node_id}: bitmap-index {slot.bitmap_index} out of bounds; ignored")
            slot.bitmap_index = -1
        elif slot.bitmap_index >= md.max_peers:
            p.append(f"peer {slot.node_id}: bitmap-index {slot.bitmap_index} >= max-peers "
                     f"{md.max_peers}; ignored")
            slot.bitmap_index = -1
    bpb = md.bm_bytes_per_bit
    if bpb == 0:
        p.append("bm-bytes-per-bit is 0; assuming 4096")
        md.bm_bytes_per_bit = bpb = S.BM_BLOCK_SIZE_4k
    if bpb & (bpb - 1) or not S.BM_BLOCK_SIZE_4k <= bpb <= S.BM_BLOCK_SIZE_MAX:
        raise DrbdError(f"bm-bytes-per-bit {bpb} is not a power of two in 4 KiB..1 MiB")
    al_blocks = md.al_stripes * md.al_stripe_size_4k
    if md.al_stripes == 0 or md.al_stripe_size_4k == 0 or al_blocks > (1 << 22):
        p.append(f"activity log geometry {md.al_stripes} x {md.al_stripe_size_4k} x 4 KiB "
                 "is not plausible; activity log not read")
        al_blocks = 0
    al_sect = al_blocks * 8
    md.al_size = al_blocks * 4096
    sb = md.md_offset
    md.al_offset = sb + md.al_offset_sect * 512
    md.bm_offset = sb + md.bm_offset_sect * 512

    if md.location.kind == "internal":
        limit = sb
        if al_blocks and md.al_offset_sect != -al_sect:
            p.append(f"al_offset {md.al_offset_sect} sectors, expected {-al_sect}")
        expect_bm = None
        if md.bm_offset_sect < 0 and md.al_offset_sect < 0:
            # the bitmap may only sit below the AL, which sits below the superblock
            if md.bm_offset_sect > md.al_offset_sect or md.bm_offset < 0:
                md.bm_usable = False
        else:
            md.bm_usable = False
        if md.bm_usable:
            want = bm_bytes(data_dev_size >> 9, bpb, md.max_peers) >> 9
            want = -(-want // 8) * 8 + S.MD_AL_OFFSET_07 + al_sect
            expect_bm = -want + S.MD_AL_OFFSET_07
            if md.md_size_sect != want or md.bm_offset_sect != expect_bm:
                # the device was resized, or the image is not the whole device
                p.append(f"md_size_sect {md.md_size_sect} / bm_offset {md.bm_offset_sect} do not "
                         f"match a {data_dev_size}-byte device (expected {want} / {expect_bm})")
            limit = min(sb, md.al_offset, md.bm_offset)
        else:
            p.append(f"bm_offset {md.bm_offset_sect} sectors points outside the meta-data area; "
                     "bitmap not used")
            guess = sb - md.md_size_sect * 512 + S.MD_AL_OFFSET_07 * 512
            limit = guess if 0 < guess <= sb else sb
        md.max_usable = max(0, limit)
        bm_room = md.al_offset - md.bm_offset if md.bm_usable else 0
    else:
        if md.al_offset_sect != S.MD_AL_OFFSET_07:
            p.append(f"al_offset {md.al_offset_sect} sectors, expected {S.MD_AL_OFFSET_07}")
        md.bm_usable = md.bm_offset_sect >= S.MD_AL_OFFSET_07
        if md.bm_offset_sect != S.MD_AL_OFFSET_07 + al_sect:
            p.append(f"bm_offset {md.bm_offset_sect} sectors, expected {S.MD_AL_OFFSET_07 + al_sect}")
        end = sb + md.md_size_sect * 512
        if md.location.index is not None:
            end = min(end, sb + S.MD_RESERVED_SECT_07 * 512)
        bm_room = max(0, min(end, md_size) - md.bm_offset) if md.bm_usable else 0
        # external: limited by the bitmap room (drbdmeta cannot know the data device; a
        # shorter one is a truncated image, reported by the backend, not a smaller size)
        max_bits = bm_room * 8 // 32 // md.max_peers * 32
        md.max_usable = max_bits * bpb if md.bm_usable else data_dev_size
    if md.al_size and not (md.al_offset >= 0 and md.al_offset + md.al_size <= md_size):
        p.append("activity log lies outside the meta-data device; not read")
        md.al_size = 0
    if md.bm_usable and md.bm_offset + 4096 > md_size:
        p.append("bitmap lies beyond the end of the meta-data device; bitmap not used")
        md.bm_usable = False

    la = md.effective_size * 512
    if md.effective_size == 0:
        p.append("la-size-sect is 0 (the device never agreed on a size); exposing the usable area")
        la = min(md.max_usable, data_dev_size)
    elif la > md.max_usable:
        p.append(f"la-size-sect {md.effective_size} exceeds the usable {md.max_usable} bytes; "
                 "clipped (as drbdmeta does)")
        la = md.max_usable
    md.data_size = la
    if md.bm_usable and bm_bytes(la >> 9, bpb, md.max_peers) > bm_room + 4095:
        p.append("bitmap area is smaller than the data area needs; bitmap not used")
        md.bm_usable = False
    return md


def read_meta(md_source, location: MdLocation, data_dev_size: int | None = None) -> DrbdMeta:
    """Read and check the meta data of one node; ``data_dev_size`` for external meta data."""
    size = md_source.size
    if location.kind == "internal" and size < MIN_DEVICE:
        raise DrbdError(f"{size} bytes are too few to hold internal DRBD meta data")
    off = location.md_offset(size)
    if off < 0 or off + 4096 > size:
        raise DrbdError(f"meta data at {off:#x} lies beyond the end ({size} bytes)")
    key = (md_source.uid, "drbd-md", location, data_dev_size)
    cached = METADATA_CACHE.get(key)
    if cached is not None:
        return cached
    md = decode_superblock(md_source.read(off, 4096), location, off)
    check_layout(md, size, size if data_dev_size is None else data_dev_size)
    md.cache_cost = 4096
    return METADATA_CACHE.put(key, md)


# ---------------------------------------------------------------------------
# bitmap

@dataclass
class BitmapInfo:
    bitmap_index: int
    bits_set: int
    ranges: list  # [(offset, length)] in data-area bytes, merged
    truncated: bool  # more than MAX_BM_RANGES ranges: the list stops, the count does not
    bits_past_end: int  # set bits beyond the data area (should be 0)
    cache_cost: int = 0

    def to_json(self):
        return {"bitmap_index": self.bitmap_index, "bits_set": self.bits_set,
                "ranges": [[o, n] for o, n in self.ranges], "ranges_truncated": self.truncated,
                "bits_past_end": self.bits_past_end}


def read_bitmap(md_source, md: DrbdMeta, bitmap_index: int) -> BitmapInfo:
    """Decode bitmap ``bitmap_index`` into byte ranges of the data area, in bounded steps.

    The on-disk bitmap is an array of little-endian 32-bit words; with
    max-peers > 1 the bitmaps are interleaved word by word: 32-bit word ``w``
    of bitmap ``p`` is at ``w * max_peers + p`` (``interleaved_word32``).
    """
    if not md.bm_usable:
        raise DrbdError("the bitmap location is not usable")
    if not 0 <= bitmap_index < md.max_peers:
        raise DrbdError(f"bitmap index {bitmap_index} out of range")
    key = (md_source.uid, "drbd-bm", md.md_offset, bitmap_index)
    cached = METADATA_CACHE.get(key)
    if cached is not None:
        return cached
    peers = md.max_peers
    nbits = md.bm_bits
    total_words = bm_bytes(md.data_size >> 9, md.bm_bytes_per_bit, peers) // 4 // peers
    bpb = md.bm_bytes_per_bit
    runs = []  # [start_bit, nbits]
    bits_set = past_end = 0
    truncated = False
    step = max(1024, BM_CHUNK_WORDS // peers)  # about 1 MiB read per step whatever max-peers
    w = 0
    while w < total_words:
        n = min(step, total_words - w)
        raw = md_source.read(md.bm_offset + w * peers * 4, n * peers * 4)
        n = len(raw) // (4 * peers)
        if n == 0:
            break
        words = np.frombuffer(raw, dtype="<u4", count=n * peers).reshape(n, peers)[:, bitmap_index]
        if words.any():
            bits = np.unpackbits(np.ascontiguousarray(words, dtype="<u4").view(np.uint8),
                                 bitorder="little")
            first = w * 32
            if first + len(bits) > nbits:  # bits past the data area: count, then drop
                cut = max(0, nbits - first)
                past_end += int(np.count_nonzero(bits[cut:]))
                bits = bits[:cut]
            bits_set += int(np.count_nonzero(bits))
            if not truncated and len(bits):
                # runs of set bits: +1 where a run starts, -1 after it ends
                zero = np.zeros(1, dtype=np.int8)  # keep int8: 1 byte per bit, not 8
                edge = np.diff(np.concatenate((zero, bits.view(np.int8), zero)))
                starts = np.flatnonzero(edge == 1)
                ends = np.flatnonzero(edge == -1)
                for s, e in zip((starts + first).tolist(), (ends + first).tolist(), strict=False):
                    if runs and runs[-1][0] + runs[-1][1] == s:
                        runs[-1][1] += e - s
                    elif len(runs) >= MAX_BM_RANGES:
                        truncated = True
                        break
                    else:
                        runs.append([s, e - s])
        w += n
    ranges = []
    for s, c in runs:
        off = s * bpb
        ranges.append((off, min(c * bpb, md.data_size - off)))
    info = BitmapInfo(bitmap_index, bits_set, ranges, truncated, past_end,
                      cache_cost=64 * len(ranges) + 256)
    return METADATA_CACHE.put(key, info)


# ---------------------------------------------------------------------------
# activity log (8.4 / 9 transaction format)

def al_crc32c(data: bytes) -> int:
    """The kernel's ``crc32c(0, data)`` (raw register, seed 0) of an AL transaction."""
    return crc32c_raw(data, 0)


@dataclass
class ActivityLog:
    transactions: int  # slots in the ring buffer
    valid: int
    updates: int  # valid AL_TR_UPDATE transactions
    newest_tr: int | None
    hot_extents: list  # extent numbers (4 MiB each) in the active set
    note: str = ""

    def ranges(self, data_size):
        out = []
        for e in self.hot_extents:
            off = e << S.AL_EXTENT_SHIFT
            if off < data_size:
                out.append((off, min(1 << S.AL_EXTENT_SHIFT, data_size - off)))
        return out

    def to_json(self, data_size):
        return {"transactions": self.transactions, "valid": self.valid,
                "update_transactions": self.updates, "newest_tr_number": self.newest_tr,
                "hot_extents": self.hot_extents, "extent_bytes": 1 << S.AL_EXTENT_SHIFT,
                "hot_ranges": [[o, n] for o, n in self.ranges(data_size)], "note": self.note}


def al_slot(b, mx, stripes, stripe_size_4k):
    """On-disk 4 KiB block of transaction ``b`` (``al_tr_number_to_on_disk_slot``)."""
    t = b % mx
    return (t % stripes) * stripe_size_4k + t // stripes


def read_activity_log(md_source, md: DrbdMeta) -> ActivityLog:
    """Reconstruct the active extent set of the newest transaction (``replay_al_84``)."""
    mx = md.al_size // 4096
    if mx == 0:
        return ActivityLog(0, 0, 0, None, [], "no activity log")
    if mx > MAX_AL_TRANSACTIONS:
        return ActivityLog(mx, 0, 0, None, [], f"activity log of {mx} transactions is larger "
                           f"than the {MAX_AL_TRANSACTIONS} decoded; not read")
    raw = md_source.read(md.al_offset, md.al_size)
    if int.from_bytes(raw[:4], "big") == S.DRBD_AL_PMEM_MAGIC:
        return ActivityLog(mx, 0, 0, None, [], "persistent-memory activity log: not decoded")
    if (md.magic == S.DRBD_MD_MAGIC_08 and (md.al_stripes, md.al_stripe_size_4k) == (1, 8)
            and S.DRBD_AL_MAGIC not in (int.from_bytes(raw[0:4], "big"),
                                        int.from_bytes(raw[4096:4100], "big"))):
        return _read_activity_log_07(raw, md)  # as drbdmeta's meta_apply_al() decides
    trs = [None] * mx
    valid = updates = 0
    oldest = newest = None  # (b, tr_number)
    for b in range(mx):
        o = al_slot(b, mx, md.al_stripes, md.al_stripe_size_4k)
        blk = raw[o * 4096:(o + 1) * 4096]
        if len(blk) < 4096 or int.from_bytes(blk[:4], "big") != S.DRBD_AL_MAGIC:
            continue
        f = S.AL_TRANSACTION.unpack(blk)
        if al_crc32c(blk[:8] + b"\0\0\0\0" + blk[12:]) != f[2]:
            continue
        valid += 1
        trs[b] = f
        if f[3] == S.AL_TR_INITIALIZED:
            continue
        updates += 1
        tr = f[1]
        if oldest is None:
            oldest = newest = (b, tr)
            continue
        if _newer(oldest[1], tr):
            oldest = (b, tr)
        if _newer(tr, newest[1]):
            newest = (b, tr)
    if valid == 0:
        return ActivityLog(mx, 0, 0, None, [], "no valid activity-log transaction "
                           "(uninitialized, damaged, or a pre-8.4 log)")
    hot = {}
    if oldest is not None:
        first, last = oldest[0], newest[0]
        if last < first:
            last += mx
        nu, nc = S.AL_UPDATES_PER_TRANSACTION, S.AL_CONTEXT_PER_TRANSACTION
        for b in range(first, last + 1):
            f = trs[b % mx]
            if f is None or f[3] == S.AL_TR_INITIALIZED:
                continue
            n_updates, context_size, start = f[4], f[5], f[6]
            slots, extents, context = f[7:7 + nu], f[7 + nu:7 + 2 * nu], f[7 + 2 * nu:7 + 2 * nu + nc]
            for i, e in enumerate(context):
                slot = start + i
                if e == 0xFFFFFFFF and slot >= context_size:
                    continue
                if slot < S.AL_EXTENTS_MAX:
                    hot[slot] = e
            for i in range(nu):
                slot = slots[i]
                if i >= n_updates and slot == 0xFFFF:
                    continue
                if slot < S.AL_EXTENTS_MAX:
                    hot[slot] = extents[i]
    extents = sorted({e for e in hot.values() if e != 0xFFFFFFFF})
    return ActivityLog(mx, valid, updates, newest[1] if newest else None, extents, "")


def _newer(tr, than):
    """``tr`` is after ``than`` in 32-bit wrapping transaction numbers."""
    return ((tr - than + 2**31) % 2**32) - 2**31 > 0


def _read_activity_log_07(raw, md) -> ActivityLog:
    """The DRBD 0.7 - 8.3 activity log: 512-byte sectors (``replay_al_07``)."""
    mx = min(1 + -(-md.al_nr_extents // S.AL_EXTENTS_PT), S.MD_AL_MAX_SECT_07, len(raw) // 512)
    secs = [None] * mx
    oldest = newest = None
    for b in range(mx):
        f = S.AL_SECTOR_07.unpack_from(raw, b * 512)
        extents = f[3:3 + 2 * (S.AL_EXTENTS_PT + 1):2]
        xor = 0
        for e in extents:
            xor ^= e
        if f[0] != S.DRBD_MAGIC or f[-2] != xor:
            continue
        secs[b] = f
        if oldest is None:
            oldest = newest = (b, f[1])
            continue
        if _newer(oldest[1], f[1]):
            oldest = (b, f[1])
        if _newer(f[1], newest[1]):
            newest = (b, f[1])
    valid = sum(1 for f in secs if f is not None)
    if oldest is None:
        return ActivityLog(mx, 0, 0, None, [], "8.3-style activity log: no valid sector")
    first, last = oldest[0], newest[0]
    if last < first:
        last += mx
    hot = {}
    for b in range(first, last + 1):
        f = secs[b % mx]
        if f is None:
            continue
        for i in range(S.AL_EXTENTS_PT, -1, -1):
            pos, extent = f[2 + 2 * i], f[3 + 2 * i]
            if extent != 0xFFFFFFFF and pos < S.AL_EXTENTS_MAX:
                hot[pos] = extent
    extents = sorted({e for e in hot.values() if e != 0xFFFFFFFF})
    return ActivityLog(mx, valid, valid, newest[1], extents, "8.3-style activity log (512-byte sectors)")
