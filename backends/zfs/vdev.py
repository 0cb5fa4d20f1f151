"""The vdev tree: leaves (disks, files), mirrors, RAIDZ, missing devices.

References: OpenZFS module/zfs/vdev_mirror.c (every child holds the block),
vdev_raidz.c (column layout, see raidz.py), vdev_label.c / vdev_impl.h (leaf I/O
starts after the 4 MiB of labels 0/1 and the boot block: VDEV_LABEL_START_SIZE),
"ZFS On-Disk Specification" section 1.2 (vdev tree config).

A block read asks the top-level vdev for *candidates*: byte strings that may be
the block.  The caller checks each against the block pointer's checksum and stops
at the first good one, so mirrors try every child and RAIDZ tries the plain data
columns first, then every reconstruction the parity allows (combinatorial
reconstruction of a silently corrupt column).

A RAIDZ vdev widened by ``zpool attach`` (OpenZFS 2.3 raidz_expansion) keeps the blocks
written before the expansion in their old logical width: the layout is chosen by the
block's physical birth txg (``birth``, passed down from the block pointer), see raidz.py.

A dRAID vdev (vdev_draid.c, see draid.py) is RAIDZ parity over groups whose columns are
placed on the children by a permutation per slice; a distributed spare (``dspare``, e.g.
``draid1-0-0``) that replaced a child reads each sector from the child the permutation
gives its spare column (vdev_draid_spare_io_start).
"""

from __future__ import annotations

import itertools
import threading
from typing import TYPE_CHECKING

import numpy as np

from pvfs.errors import UnreadableError

from . import raidz
from .errors import ZfsError
from .structs import VDEV_LABEL_START_SIZE

if TYPE_CHECKING:  # draid.py is imported for a dRAID vdev only (~1.5 ms of a start-up)
    from . import draid


class Vdev:
    kind = "vdev"
    guid = 0
    ashift = 9

    def candidates(self, offset: int, size: int, birth: int = 0):
        """Yield byte strings of ``size`` bytes that may hold the block born (physical
        birth txg) at ``birth``."""
        return iter(())

    def first(self, offset: int, size: int):
        for data in self.candidates(offset, size):
            return data
        return None

    def describe(self) -> str:
        return self.kind

    def missing_leaves(self):
        return []


class Leaf(Vdev):
    kind = "leaf"
    #: "offline", "faulted" or "removed" when the pool config says so (ZPOOL_CONFIG_*)
    state = ""

    def __init__(self, guid, path, source=None, ashift=9, volume=None):
        self.guid = guid
        self.path = path
        self.source = source
        self.ashift = ashift
        self.volume = volume
        self.errors = 0

    def candidates(self, offset, size, birth=0):
        data = self.read_at(offset, size)
        if data is not None:
            yield data

    def read_at(self, offset, size):
        """The bytes at ``offset`` of the allocatable area, or None."""
        if self.source is None:
            return None
        start = VDEV_LABEL_START_SIZE + offset  # >= 512 KiB for the reflow scratch copy
        if start < 0 or size < 0 or start + size > self.source.size:
            self.errors += 1
            return None
        try:
            return self.source.read(start, size)
        except UnreadableError:
            self.errors += 1
            return None

    def describe(self):
        return f"leaf {self.path} ({'present' if self.source is not None else 'MISSING'})"

    def missing_leaves(self):
        return [] if self.source is not None else [self]


class Missing(Vdev):
    """A top-level vdev whose config or members are absent (or not supported)."""

    kind = "missing"

    def __init__(self, guid=0, why="missing"):
        self.guid = guid
        self.why = why

    def describe(self):
        return f"missing ({self.why})"


class Mirror(Vdev):
    kind = "mirror"

    def __init__(self, guid, children, ashift=9):
        self.guid = guid
        self.children = children
        self.ashift = ashift

    def candidates(self, offset, size, birth=0):
        for ch in self.children:
            yield from ch.candidates(offset, size, birth)

    def describe(self):
        return f"mirror[{', '.join(c.describe() for c in self.children)}]"

    def missing_leaves(self):
        out = []
        for c in self.children:
            out.extend(c.missing_leaves())
        return out


class Raidz(Vdev):
    kind = "raidz"

    #: combinatorial reconstruction tries at most this many erasure sets per block
    MAX_TRIES = 4096

    def __init__(self, guid, children, nparity, ashift=9, expand_txgs=(), expanding=False):
        self.guid = guid
        self.children = children
        self.nparity = nparity
        self.ashift = ashift
        self.expand_txgs = tuple(sorted(expand_txgs))
        self.expanding = expanding
        # An expansion in progress: (synced reflow offset, scratch copy valid), set from
        # the uberblock the pool is opened at (set_reflow); rows past it are still in
        # the old physical layout.
        self.reflow = (0, False) if expanding else None

    def set_reflow(self, info_word: int):
        if not self.expanding:
            return
        state, synced = raidz.reflow_info(info_word)
        self.reflow = (synced, state == raidz.RRSS_SCRATCH_VALID)

    def width_at(self, birth: int) -> int:
        if not self.expand_txgs and not self.expanding:
            return len(self.children)
        return raidz.logical_width(len(self.children), self.expand_txgs, self.expanding,
                                   birth or 0)

    def candidates(self, offset, size, birth=0):
        width = self.width_at(birth)
        if width == len(self.children) and self.reflow is None:
            yield from self._classic(offset, size)
        elif self.nparity < width <= len(self.children):
            yield from self._expanded(offset, size, width)

    def _classic(self, offset, size):
        cols = raidz.map_columns(offset, size, len(self.children), self.nparity, self.ashift)
        np_ = self.nparity

        def read(col):
            devidx, coff, csize = col
            return self.children[devidx].first(coff, csize) if csize else b""

        # Data columns first: parity is read only when a column is missing or the
        # checksum of the plain data fails (the caller asks for the next candidate).
        data = [read(c) for c in cols[np_:]]
        sizes = [c[2] for c in cols[np_:]]
        missing = [j for j, d in enumerate(data) if d is None]
        if not missing:
            yield b"".join(data)[:size] if len(data) != 1 else data[0][:size]
        parity = [read(c) for c in cols[:np_]]
        parity += [None] * (np_ - len(parity))
        navail = sum(1 for p in parity if p is not None)
        # Known-missing columns first, then every suspect set the parity can repair.
        for erased in raidz.erasure_sets(len(data), missing, navail):
            rebuilt = raidz.reconstruct(parity, [None if j in erased else d for j, d in
                                                 enumerate(data)], sizes, erased)
            if rebuilt is not None:
                yield b"".join(rebuilt)[:size]

    # -- blocks in an older (narrower) logical width, or not yet reflowed ------------
    def _read_sectors(self, dev, off, want, sectors, got):
        """Read the sectors ``want`` (mask over the map) into ``sectors``, one read per
        run of neighbouring sectors on each child; ``got`` marks what was read."""
        unit = 1 << self.ashift
        for d in np.unique(dev[want]).tolist():
            ri, ci = np.nonzero(want & (dev == d))
            offs = off[ri, ci]
            order = np.argsort(offs, kind="stable")
            ri, ci, offs = ri[order], ci[order], offs[order]
            cuts = np.nonzero(np.diff(offs) > 8 * unit)[0] + 1
            for lo_i, hi_i in zip(np.r_[0, cuts], np.r_[cuts, len(offs)], strict=True):
                lo, hi = int(offs[lo_i]), int(offs[hi_i - 1]) + unit
                buf = self.children[d].first(lo, hi - lo)
                if buf is None or len(buf) < hi - lo:
                    continue
                arr = np.frombuffer(buf, dtype=np.uint8).reshape(-1, unit)
                idx = (offs[lo_i:hi_i] - lo) >> self.ashift
                sectors[ri[lo_i:hi_i], ci[lo_i:hi_i]] = arr[idx]
                got[ri[lo_i:hi_i], ci[lo_i:hi_i]] = True

    def _pattern(self, offset, size, width):
        """Where the data of a block in an older logical width lies, relative to its
        first child row: the same for every block with the same size and start modulo
        the number of children (cached).  Returns ``(spans, pieces)``: the child rows
        ``{child: (first, end)}`` to read, and the block's bytes in order as
        ``[(child, start, end)]`` byte ranges of what was read from each child."""
        nchild = len(self.children)
        b0 = offset >> self.ashift
        swap = self.nparity == 1 and bool(offset & (1 << 20))
        key = (b0 % nchild, size, width, nchild, self.nparity, self.ashift, swap)
        pat = _PATTERNS.get(key)
        if pat is None:
            ashift = self.ashift
            dev, off, valid = raidz.map_expanded(offset, size, nchild, width, self.nparity,
                                                 ashift)
            dmask = valid[:, self.nparity:].T
            ddev = dev[:, self.nparity:].T[dmask].tolist()
            drow = ((off[:, self.nparity:].T[dmask] >> ashift) - b0 // nchild).tolist()
            spans = {}
            for d, r in zip(ddev, drow, strict=True):
                lo, hi = spans.get(d, (r, r + 1))
                spans[d] = (min(lo, r), max(hi, r + 1))
            unit = 1 << ashift
            pieces = []
            left = size
            for d, r in zip(ddev, drow, strict=True):
                a = (r - spans[d][0]) << ashift
                n = min(unit, left)
                left -= n
                if pieces and pieces[-1][0] == d and pieces[-1][2] == a:
                    pieces[-1] = (d, pieces[-1][1], a + n)
                else:
                    pieces.append((d, a, a + n))
                if left <= 0:
                    break
            pat = (spans, pieces)
            global _PATTERN_PIECES
            _PATTERN_PIECES += len(pieces)
            if len(_PATTERNS) > 4096 or _PATTERN_PIECES > 1 << 20:  # bounded memory
                _PATTERNS.clear()
                _PATTERN_PIECES = len(pieces)
            _PATTERNS[key] = pat
        return pat

    def _expanded_plain(self, offset, size, width):
        """The block's data with one read per child, joined from the ranges of the
        pattern (None when a child cannot be read: then the general path reconstructs)."""
        spans, pieces = self._pattern(offset, size, width)
        ashift = self.ashift
        r0 = (offset >> ashift) // len(self.children)
        bufs = {}
        for d, (lo, hi) in spans.items():
            child = self.children[d]
            n = (hi - lo) << ashift
            if isinstance(child, Leaf):
                buf = child.read_at((r0 + lo) << ashift, n)
            else:
                buf = child.first((r0 + lo) << ashift, n)
            if buf is None or len(buf) != n:
                return None
            bufs[d] = memoryview(buf)
        return b"".join([bufs[d][a:b] for d, a, b in pieces])

    def _expanded(self, offset, size, width):
        np_ = self.nparity
        plain = None
        if self.reflow is None:
            plain = self._expanded_plain(offset, size, width)
            if plain is not None:
                yield plain
        synced, scratch = self.reflow if self.reflow is not None else (None, False)
        dev, off, valid = raidz.map_expanded(offset, size, len(self.children), width, np_,
                                             self.ashift, synced, scratch)
        rows, cols = dev.shape
        unit = 1 << self.ashift
        sectors = np.zeros((rows, cols, unit), dtype=np.uint8)
        got = np.zeros((rows, cols), dtype=bool)
        want = valid.copy()
        want[:, :np_] = False  # data first; parity only when needed
        self._read_sectors(dev, off, want, sectors, got)
        dvalid = valid[:, np_:]

        def data_of(s):
            return s[:, np_:].transpose(1, 0, 2)[dvalid.T].tobytes()[:size]

        if plain is None and (got | ~valid)[:, np_:].all():
            yield data_of(sectors)
        want = valid.copy()
        want[:, np_:] = False
        self._read_sectors(dev, off, want, sectors, got)
        lost = valid & ~got
        # Erasure sets over children: the sectors that could not be read, plus every
        # set of suspect children (silent corruption) the parity of a row can repair.
        per_row = int(lost.sum(axis=1).max()) if rows else 0
        if per_row > np_:
            return
        suspects = sorted(set(np.unique(dev[valid & got]).tolist()))
        tries = 0
        for extra in range(0, np_ - per_row + 1):
            for combo in itertools.combinations(suspects, extra):
                erased = lost | (valid & np.isin(dev, combo)) if combo else lost
                if not erased[:, np_:].any():
                    continue  # nothing of the data is in question: same as the plain read
                if int(erased.sum(axis=1).max()) > np_:
                    continue
                rebuilt = self._rebuild(sectors, erased, np_)
                if rebuilt is not None:
                    yield data_of(rebuilt)
                tries += 1
                if tries >= self.MAX_TRIES:
                    return

    @staticmethod
    def _rebuild(sectors, erased, np_):
        """Every row is its own parity stripe: rows with the same erased columns are
        rebuilt together by raidz.reconstruct (short last rows count as zeros)."""
        out = sectors.copy()
        rows, cols, unit = sectors.shape
        ndc = cols - np_
        pats, inverse = np.unique(erased, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        for k, pat in enumerate(pats):
            edata = [j for j in range(ndc) if pat[np_ + j]]
            if not edata:
                continue
            sel = np.nonzero(inverse == k)[0]
            n = len(sel) * unit
            parity = [None if pat[i] else out[sel, i].tobytes() for i in range(np_)]
            data = [None if j in edata else out[sel, np_ + j].tobytes() for j in range(ndc)]
            res = raidz.reconstruct(parity, data, [n] * ndc, edata)
            if res is None:
                return None
            for j in edata:
                out[sel, np_ + j] = np.frombuffer(res[j], dtype=np.uint8).reshape(-1, unit)
        return out

    def describe(self):
        exp = ""
        if self.expand_txgs or self.expanding:
            exp = (f" expanded at txg {', '.join(map(str, self.expand_txgs)) or '-'}"
                   f"{' (expansion in progress)' if self.expanding else ''}")
        return f"raidz{self.nparity}[{', '.join(c.describe() for c in self.children)}]{exp}"

    def missing_leaves(self):
        out = []
        for c in self.children:
            out.extend(c.missing_leaves())
        return out


#: data-sector patterns of expanded-layout blocks (Raidz._pattern), at most 4096 shapes
#: and 2**20 byte ranges in all
_PATTERNS: dict = {}
_PATTERN_PIECES = 0

class Draid(Vdev):
    """A dRAID top-level vdev (vdev_draid.c): every block is one or two rows of RAIDZ
    parity + data columns (draid.Geometry.map_block); reads take the data columns and,
    when a child is missing or the checksum fails, every reconstruction the parity of
    each row allows (the caller's checksum decides, as for RAIDZ)."""

    kind = "draid"
    #: erasure sets tried per row (combinatorial reconstruction)
    MAX_TRIES = 4096
    #: reconstructed candidates kept per row of a block that spans two groups
    MAX_ROW_BYTES = 64 << 20

    def __init__(self, guid, children, geometry: draid.Geometry):
        self.guid = guid
        self.children = children
        self.geom = geometry
        self.nparity = geometry.nparity
        self.ashift = geometry.ashift
        self.spares = []
        for sp in _dspares(children):
            if sp.top_guid in (None, guid):
                sp.draid = self
                self.spares.append(sp)

    def candidates(self, offset, size, birth=0):
        try:
            rows = self.geom.map_block(offset, size)
        except ZfsError:
            return
        if len(rows) == 1:
            for data in self._row_candidates(rows[0]):
                yield data[:size]
            return
        # A block across the end of its group: both rows must be right at once; every
        # pair of row candidates is offered, first ones first (bounded in bytes).
        gens = [self._row_candidates(r) for r in rows]
        seen = [[], []]
        limit = [max(2, self.MAX_ROW_BYTES // max(r.size, 1)) for r in rows]
        done = [False, False]

        def get(k, i):
            while len(seen[k]) <= i and not done[k]:
                nxt = next(gens[k], None)
                if nxt is None or len(seen[k]) >= limit[k]:
                    done[k] = True
                else:
                    seen[k].append(nxt)
            return seen[k][i] if i < len(seen[k]) else None

        pairs = 0
        for total in itertools.count():
            for i in range(total + 1):
                a = get(0, i)
                b = get(1, total - i) if a is not None else None
                if b is not None:
                    yield (a + b)[:size]
                    pairs += 1
                    if pairs >= self.MAX_TRIES:
                        return
            if any(done[k] and not seen[k] for k in (0, 1)) or \
                    (done[0] and done[1] and total >= len(seen[0]) + len(seen[1])):
                return  # a row with no candidate at all, or every pair offered

    def _read(self, dev, off, size):
        if dev >= len(self.children):
            return None
        return self.children[dev].first(off, size)

    def _row_candidates(self, row):
        """The row's data: plain first, then each reconstruction (missing columns first,
        then every set of suspect columns the parity can repair)."""
        np_ = self.nparity
        dcols = row.columns[np_:]
        sizes = [c.size for c in dcols]
        data = [self._read(c.dev, c.offset, c.size) if c.size else b"" for c in dcols]
        missing = [j for j, d in enumerate(data) if d is None]
        if not missing:
            yield b"".join(data)
            # a column on a spare or replacing vdev: its other copies (a stale child
            # that was not flagged out of service) before any parity
            yield from self._other_copies(dcols, data)
        parity = [self._read(c.dev, c.offset, row.parity_size) for c in row.columns[:np_]]
        navail = sum(1 for p in parity if p is not None)
        empty = {j for j, s in enumerate(sizes) if s == 0}
        tries = 0
        for erased in raidz.erasure_sets(len(dcols), missing, navail, self.MAX_TRIES):
            if empty.intersection(erased):
                continue  # a skip sector alone: nothing of the block to rebuild
            rebuilt = raidz.reconstruct(parity, [None if j in erased else d
                                                 for j, d in enumerate(data)], sizes, erased)
            if rebuilt is not None:
                yield b"".join(rebuilt)
            tries += 1
            if tries >= self.MAX_TRIES:
                return

    def _other_copies(self, dcols, data, limit=16):
        alts = []
        for j, c in enumerate(dcols):
            child = self.children[c.dev] if c.dev < len(self.children) else None
            if c.size and isinstance(child, Mirror):
                copies = itertools.islice(child.candidates(c.offset, c.size), 1, 4)
                others = [x for x in copies if x != data[j]]
                if others:
                    alts.append((j, others))
        if not alts:
            return
        choices = [[data[j]] + others for j, others in alts[:4]]
        for n, combo in enumerate(itertools.product(*choices)):
            if n == 0:
                continue  # the plain read
            if n > limit:
                return
            out = list(data)
            for (j, _), piece in zip(alts, combo, strict=False):
                out[j] = piece
            yield b"".join(out)

    def lost_members(self) -> int:
        """Children that cannot be read at all (a child replaced by a distributed spare
        or a hot spare is not lost)."""
        return sum(1 for c in self.children if _lost(c))

    def describe(self):
        g = self.geom
        return (f"draid{g.nparity}:{g.ndata}d:{g.children}c:{g.nspares}s"
                f"[{', '.join(c.describe() for c in self.children)}]")

    def missing_leaves(self):
        out = []
        for c in self.children:
            out.extend(c.missing_leaves())
        return out


class DraidSpare(Vdev):
    """A distributed spare (vdev type ``dspare``, path ``draid<p>-<top>-<id>``): a
    virtual leaf whose bytes at child offset ``o`` live on the child that permutation
    column ``children - 1 - spare_id`` of ``o``'s slice names
    (vdev_draid_spare_get_child), at the same offset."""

    kind = "dspare"
    _depth = threading.local()

    def __init__(self, guid, path, spare_id, top_guid, ashift=9):
        self.guid = guid
        self.path = path
        self.spare_id = spare_id
        self.top_guid = top_guid
        self.ashift = ashift
        self.draid = None  # the Draid vdev that holds it

    def candidates(self, offset, size, birth=0):
        d = self.draid
        depth = getattr(self._depth, "n", 0)
        if d is None or depth > MAX_TREE_DEPTH or offset < 0 or size <= 0:
            return
        self._depth.n = depth + 1
        try:
            slice_ = d.geom.devslicesz
            pieces = []
            pos = offset
            while pos < offset + size:  # a read never crosses a slice in practice
                end = min(offset + size, (pos // slice_ + 1) * slice_)
                try:
                    cid = d.geom.spare_child(self.spare_id, pos)
                except ZfsError:
                    return
                pieces.append((d.children[cid], pos, end - pos))
                pos = end
            if len(pieces) == 1:
                child, pos, n = pieces[0]
                cands = list(itertools.islice(child.candidates(pos, n, birth), 4))
            else:
                parts = [child.first(pos, n) for child, pos, n in pieces]
                cands = [] if any(p is None for p in parts) else [b"".join(parts)]
        finally:
            self._depth.n = depth
        yield from cands

    def describe(self):
        return f"dspare {self.path}{'' if self.draid else ' (no dRAID vdev)'}"


def leaves_of(v, depth=0):
    """Every Leaf under ``v``."""
    if isinstance(v, Leaf):
        yield v
    elif depth < MAX_TREE_DEPTH:
        for c in getattr(v, "children", ()):
            yield from leaves_of(c, depth + 1)


def _out_of_service(cfg) -> bool:
    """ZPOOL_CONFIG_OFFLINE / _FAULTED / _REMOVED set on a child's config."""
    return isinstance(cfg, dict) and any(cfg.get(k) for k in ("offline", "faulted", "removed"))


def _dspares(children, depth=0):
    for c in children:
        if isinstance(c, DraidSpare):
            yield c
        elif isinstance(c, Mirror) and depth < MAX_TREE_DEPTH:
            yield from _dspares(c.children, depth + 1)


def _lost(v) -> bool:
    if isinstance(v, Leaf):
        return v.source is None
    if isinstance(v, Mirror):
        return all(_lost(c) for c in v.children)
    if isinstance(v, DraidSpare):
        return v.draid is None
    return isinstance(v, Missing)


MAX_TREE_DEPTH = 8


def build(cfg: dict, leaves: dict, depth: int = 0, notes=None) -> Vdev:
    """Build a vdev from its label config (``vdev_tree`` or a child of it).

    ``leaves`` maps leaf GUIDs to a list of ``(source, volume)``: more than one image of
    the same disk is read like a mirror of them.  Unknown types become :class:`Missing`
    with a note.
    """
    notes = notes if notes is not None else []
    if depth > MAX_TREE_DEPTH or not isinstance(cfg, dict):
        return Missing(why="vdev tree too deep or malformed")
    typ = cfg.get("type")
    guid = cfg.get("guid", 0)
    ashift = cfg.get("ashift", 9)
    if not isinstance(ashift, int) or not 9 <= ashift <= 16:
        ashift = 9
    children = cfg.get("children") or []
    if not isinstance(children, list):
        children = []
    if typ in ("disk", "file"):
        copies = leaves.get(guid) or [(None, None)]
        state = next((k for k in ("offline", "faulted", "removed") if cfg.get(k)), "")
        made = [Leaf(guid, cfg.get("path", "?"), src, ashift, vol) for src, vol in copies[:16]]
        for leaf in made:
            leaf.state = state
        if len(made) == 1:
            return made[0]
        # several images of the same disk: read like a mirror of them
        return Mirror(guid, made, ashift)
    if typ == "dspare":
        sid, top = cfg.get("spareid"), cfg.get("top_guid")
        if not isinstance(sid, int) or isinstance(sid, bool):
            notes.append(f"distributed spare {cfg.get('path', '?')} has no spare id")
            return Missing(guid, "bad dspare config")
        return DraidSpare(guid, cfg.get("path", "?"), sid,
                          top if isinstance(top, int) else None, ashift)
    kids = [build(ch, leaves, depth + 1, notes) for ch in children[:255]]
    for k in kids:
        if k.ashift == 9 and ashift != 9:
            k.ashift = ashift
    if typ == "spare":
        # A hot spare or distributed spare in use: the child it replaced is read last
        # when the config says it is offline, faulted or removed (OpenZFS does not read
        # it at all: its columns written since are only on the spare).
        order = sorted(range(len(kids)), key=lambda i: _out_of_service(children[i]))
        return Mirror(guid, [kids[i] for i in order], ashift)
    if typ in ("mirror", "replacing"):
        return Mirror(guid, kids, ashift)
    if typ == "raidz":
        nparity = cfg.get("nparity", 1)
        if not isinstance(nparity, int) or not 1 <= nparity <= 3 or len(kids) <= nparity:
            notes.append(f"raidz vdev {guid} has a bad nparity {nparity!r}")
            return Missing(guid, "bad raidz config")
        txgs = cfg.get("raidz_expand_txgs") or []
        if isinstance(txgs, int):
            txgs = [txgs]
        if not isinstance(txgs, list) or not all(isinstance(t, int) for t in txgs) \
                or len(txgs) >= len(kids) - nparity:
            notes.append(f"raidz vdev {guid} has a bad raidz_expand_txgs {txgs!r}")
            txgs = []
        return Raidz(guid, kids, nparity, ashift, expand_txgs=txgs,
                     expanding="raidz_expanding" in cfg)
    if typ == "draid":
        from . import draid

        geom = draid.Geometry(cfg.get("draid_ndata"), cfg.get("nparity"),
                              cfg.get("draid_nspares"), len(children),
                              cfg.get("draid_ngroups"), ashift)
        try:
            geom.check()
        except ZfsError as e:
            notes.append(f"draid vdev {guid}: {e}")
            return Missing(guid, "bad draid config")
        top = Draid(guid, kids, geom)
        for sp in _dspares(kids):
            if sp.draid is not top:
                notes.append(f"distributed spare {sp.path} belongs to another vdev "
                             f"(top_guid {sp.top_guid}): not read")
        return top
    if typ in ("hole", "missing"):
        return Missing(guid, typ)
    notes.append(f"vdev type {typ!r} is not supported (guid {guid})")
    return Missing(guid, f"unsupported vdev type {typ!r}")
