"""Two nodes of one resource: who is newer, what diverged, and a merged view.

* :func:`uuid_compare` follows the order of DRBD's generation-UUID rules
  (``drbd_uuid_compare()`` in the kernel's ``drbd_receiver.c``, 8.4 and 9):
  equal current UUIDs, one node's current UUID equal to the other's bitmap
  UUID (bitmap-based resync), equal bitmap UUIDs with different current UUIDs
  (split brain), a current UUID found in the other's history (full resync),
  shared history only (split brain, older), nothing shared (unrelated data).
  Bit 0 of every UUID (``UUID_PRIMARY``) is ignored, as DRBD does.
* :func:`compare_sources` compares two data areas in large chunks (bounded
  memory), skipping ranges that are holes in both.
* :func:`merged_source` assembles ``merged.raw`` from a preference and a
  ranges file, as an ExtentSource over both nodes (nothing is copied).
"""

from __future__ import annotations

import heapq
import re

import numpy as np

from pvfs.damage import merge_ranges
from pvfs.errors import UsageError
from pvfs.source import UNMAPPED, ExtentSource

from . import structs as S
from .meta import uuid_hex

COMPARE_CHUNK = 4 << 20
MAX_DIFF_RANGES = 100_000
MAX_RANGES_FILE_LINES = 100_000


def _norm(u):
    return u & ~S.UUID_PRIMARY


def _useful(u):
    return _norm(u) not in (0, S.UUID_JUST_CREATED)


def peer_bitmap_uuid(md, other):
    """``md``'s bitmap UUID towards node ``other`` (v09: its peer slot; v08: the only one)."""
    slot = md.slot_for(other.node_id if other.version == "v09" else None)
    return slot.bitmap_uuid if slot is not None else 0


def peer_hints(a, b):
    """What each node's flags say about the other (outdated, full sync pending, primary)."""
    hints = []
    for me, other, x, y in ((a, b, "A", "B"), (b, a, "B", "A")):
        slot = me.slot_for(other.node_id if other.version == "v09" else None)
        pflags = slot.flags if slot is not None else 0
        if pflags & S.MDF_PEER_OUTDATED:
            hints.append(f"{x} marked {y} outdated: {x} kept the good data when they parted")
        if pflags & S.MDF_PEER_FULL_SYNC:
            hints.append(f"{x} had a full sync towards {y} pending")
        if me.flags & S.MDF_PRIMARY_IND:
            hints.append(f"{x} was primary when its meta data was last written")
        if me.flags & S.MDF_CRASHED_PRIMARY:
            hints.append(f"{x} is a crashed primary")
        if not me.flags & S.MDF_CONSISTENT:
            hints.append(f"{x}'s data is not consistent (an interrupted resync target)")
    return hints


def uuid_compare(a, b):
    """Compare two nodes' generation UUIDs; returns a dict with ``relation`` and ``rule``.

    ``relation``: ``in-sync`` | ``same-generation`` | ``A-newer`` | ``B-newer`` |
    ``split-brain`` | ``unrelated`` | ``both-new``.
    """
    sa, sb = _norm(a.current_uuid), _norm(b.current_uuid)
    ba, bb = _norm(peer_bitmap_uuid(a, b)), _norm(peer_bitmap_uuid(b, a))
    ha = [_norm(u) for u in a.history_uuids if _useful(u)]
    hb = [_norm(u) for u in b.history_uuids if _useful(u)]
    jc = S.UUID_JUST_CREATED

    def out(relation, resync, rule):
        return {"relation": relation, "resync": resync, "rule": rule, "hints": peer_hints(a, b),
                "A": {"current": uuid_hex(a.current_uuid), "bitmap": uuid_hex(peer_bitmap_uuid(a, b))},
                "B": {"current": uuid_hex(b.current_uuid), "bitmap": uuid_hex(peer_bitmap_uuid(b, a))}}

    if sa == jc and sb == jc:
        return out("both-new", None, "both current UUIDs are UUID_JUST_CREATED: no data written yet")
    if sa == jc or sa == 0:
        return out("B-newer", "full", "A was just created (current UUID 4): A would get a full sync from B")
    if sb == jc or sb == 0:
        return out("A-newer", "full", "B was just created (current UUID 4): B would get a full sync from A")
    if sa == sb:
        if ba == 0 and bb == 0:
            return out("in-sync", None, "equal current UUIDs and no bitmap UUIDs: same data generation")
        return out("same-generation", "bitmap", "equal current UUIDs; the bitmaps tell what is "
                   "still out of sync (e.g. after a crashed primary)")
    if sa == bb:
        return out("B-newer", "bitmap", "A's current UUID is B's bitmap UUID: B wrote since they "
                   "parted, A did not; B would be the sync source")
    if sb == ba:
        return out("A-newer", "bitmap", "B's current UUID is A's bitmap UUID: A wrote since they "
                   "parted, B did not; A would be the sync source")
    if ba and ba == bb:
        return out("split-brain", "bitmap", f"different current UUIDs, equal bitmap UUIDs "
                   f"({uuid_hex(ba)}, the last common generation): both nodes wrote after they "
                   "parted (split brain); the union of both bitmaps is what diverged")
    if sa in hb or (ba and ba in hb):
        return out("B-newer", "full", "A's current UUID is in B's history: B is newer, "
                   "a full sync would be needed")
    if sb in ha or (bb and bb in ha):
        return out("A-newer", "full", "B's current UUID is in A's history: A is newer, "
                   "a full sync would be needed")
    common = ({ba, *ha} - {0}) & ({bb, *hb} - {0})
    if common:
        return out("split-brain", "full", "the nodes share an older generation "
                   f"({', '.join(uuid_hex(u) for u in sorted(common))}) but went separate ways "
                   "since (split brain); bitmaps do not cover everything, compare the bytes")
    return out("unrelated", "full", "no generation UUID in common: unrelated data")


def related(a, b):
    """Whether two nodes' meta data share a generation UUID (same resource)."""
    ua = {_norm(u) for u in [a.current_uuid, *a.bitmap_uuids(), *a.history_uuids] if _useful(u)}
    ub = {_norm(u) for u in [b.current_uuid, *b.bitmap_uuids(), *b.history_uuids] if _useful(u)}
    return bool(ua & ub)


def same_resource(a, b):
    """Whether two nodes look like peers of one resource.

    They share a generation UUID, use the same meta-data format (a resource
    does not mix v08 and v09 nodes) and, for v09, have different node ids.
    """
    if a.version != b.version:
        return False
    if a.version == "v09" and a.node_id >= 0 and a.node_id == b.node_id:
        return False
    return related(a, b)


# ---------------------------------------------------------------------------
def _holes(src, size):
    try:
        return [(o, n) for o, n, s in src.block_status(0, size) if s == UNMAPPED]
    except Exception:
        return []


def _intersect(r1, r2):
    out, i, j = [], 0, 0
    while i < len(r1) and j < len(r2):
        s = max(r1[i][0], r2[j][0])
        e = min(r1[i][0] + r1[i][1], r2[j][0] + r2[j][1])
        if s < e:
            out.append((s, e - s))
        if r1[i][0] + r1[i][1] < r2[j][0] + r2[j][1]:
            i += 1
        else:
            j += 1
    return out


def compare_sources(a, b, size, block=S.BM_BLOCK_SIZE_4k, chunk=COMPARE_CHUNK, progress=None):
    """Byte-compare two sources over ``[0, size)`` in ``block`` units.

    Returns ``(ranges, blocks, truncated, unreadable)``: differing ranges
    (merged, at most MAX_DIFF_RANGES), the number of differing blocks,
    whether the list was cut, and ranges that could not be read.
    """
    chunk = max(block, chunk // block * block)
    skip = _intersect(_holes(a, size), _holes(b, size))
    ranges, nblocks, truncated, unreadable = [], 0, False, []
    si = 0
    pos = 0
    while pos < size:
        while si < len(skip) and skip[si][0] + skip[si][1] <= pos:
            si += 1
        if si < len(skip) and skip[si][0] <= pos:
            pos = skip[si][0] + skip[si][1]  # a hole in both: equal zeros
            continue
        n = min(chunk, size - pos)
        if si < len(skip):
            n = min(n, max(block, skip[si][0] - pos))
        try:
            da, db = a.read(pos, n), b.read(pos, n)
        except OSError:
            unreadable.append((pos, n))
            pos += n
            continue
        if da != db:
            pad = (-n) % block
            word = np.uint64 if block % 8 == 0 else np.uint8  # 8 bytes a step where possible
            xa = np.frombuffer(da + bytes(pad), dtype=word).reshape(-1, block // word().itemsize)
            xb = np.frombuffer(db + bytes(pad), dtype=word).reshape(xa.shape)
            diff = np.flatnonzero((xa != xb).any(axis=1))
            nblocks += len(diff)
            for i in diff.tolist():
                off = pos + i * block
                ln = min(block, size - off)
                if ranges and ranges[-1][0] + ranges[-1][1] == off:
                    ranges[-1] = (ranges[-1][0], ranges[-1][1] + ln)
                elif len(ranges) >= MAX_DIFF_RANGES:
                    truncated = True
                else:
                    ranges.append((off, ln))
        pos += n
        if progress is not None:
            progress(pos)
    return ranges, nblocks, truncated, merge_ranges(unreadable)


def subtract(r1, r2):
    """Parts of ranges ``r1`` not covered by ranges ``r2`` (both merged, sorted)."""
    out = []
    j = 0
    for off, ln in r1:
        pos, end = off, off + ln
        while j < len(r2) and r2[j][0] + r2[j][1] <= pos:
            j += 1
        k = j
        while pos < end and k < len(r2) and r2[k][0] < end:
            if r2[k][0] > pos:
                out.append((pos, r2[k][0] - pos))
            pos = max(pos, r2[k][0] + r2[k][1])
            k += 1
        if pos < end:
            out.append((pos, end - pos))
    return out


def blocks_of(ranges, block=S.BM_BLOCK_SIZE_4k, limit=100_000):
    out = []
    for off, ln in ranges:
        out.extend(range(off // block, -(-(off + ln) // block)))
        if len(out) >= limit:
            return out[:limit], True
    return out, False


# ---------------------------------------------------------------------------
_UNITS = {"": 1, "s": 512, "k": 1024, "K": 1024, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40,
          "b": S.BM_BLOCK_SIZE_4k}
_NUM = re.compile(r"^(0[xX][0-9a-fA-F]+|[0-9]+)([sKkMGTb]?)$")


def _number(text, what, lineno):
    m = _NUM.match(text)
    if not m:
        raise UsageError(f"ranges file line {lineno}: bad {what} {text!r}")
    digits = m.group(1)
    value = int(digits, 16) if digits[:2] in ("0x", "0X") else int(digits, 10)  # "010" is ten
    return value * _UNITS[m.group(2)]


def parse_ranges_file(text, nodes, size):
    """Parse ``OFFSET LENGTH NODE`` lines into ``[(offset, length, node)]``.

    Numbers are decimal or 0x-hex with an optional unit: ``s`` (512-byte
    sector), ``k``/``K``, ``M``, ``G``, ``T``, ``b`` (4 KiB DRBD block).
    NODE is a node letter (``A``, ``B``) or ``node-A``.  ``#`` starts a
    comment.  Later lines win where they overlap.
    """
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if lineno > MAX_RANGES_FILE_LINES:
            raise UsageError(f"ranges file has more than {MAX_RANGES_FILE_LINES} lines")
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 3:
            raise UsageError(f"ranges file line {lineno}: expected 'OFFSET LENGTH NODE', got {line!r}")
        off = _number(parts[0], "offset", lineno)
        ln = _number(parts[1], "length", lineno)
        node = parts[2].upper()
        if node.startswith("NODE-"):
            node = node[5:]
        if node not in nodes:
            raise UsageError(f"ranges file line {lineno}: node {parts[2]!r} is not one of "
                             f"{', '.join(nodes)}")
        if off >= size or ln <= 0:
            raise UsageError(f"ranges file line {lineno}: range {off:#x}+{ln:#x} is outside "
                             f"the {size}-byte data area")
        out.append((off, min(ln, size - off), node))
    return out


def merged_extents(size, default, overrides):
    """Resolve ``(offset, length, node)`` overrides over ``default``; later ones win.

    A sweep over the range boundaries with a heap of the active overrides
    (latest on top): O(n log n) for n overrides.
    """
    bounds = sorted({0, size, *(o for o, _, _ in overrides), *(o + n for o, n, _ in overrides)})
    starts = sorted((o, i) for i, (o, _, _) in enumerate(overrides))
    heap, si, out = [], 0, []
    for seg_start, seg_end in zip(bounds, bounds[1:], strict=False):
        while si < len(starts) and starts[si][0] <= seg_start:
            i = starts[si][1]
            heapq.heappush(heap, (-i, overrides[i][0] + overrides[i][1]))
            si += 1
        while heap and heap[0][1] <= seg_start:
            heapq.heappop(heap)
        node = overrides[-heap[0][0]][2] if heap else default
        if out and out[-1][2] == node and out[-1][0] + out[-1][1] == seg_start:
            out[-1] = (out[-1][0], out[-1][1] + seg_end - seg_start, node)
        else:
            out.append((seg_start, seg_end - seg_start, node))
    return out


def merged_source(size, sources: dict, default, overrides, label="merged.raw"):
    """``merged.raw``: each range read from the node the rule names (an ExtentSource)."""
    pieces = merged_extents(size, default, overrides)
    return ExtentSource(size, [(o, n, sources[node], o) for o, n, node in pieces],
                        label=label), pieces
