"""The expert view's pool directories (``storage/ceph/.osd/<osd>/<pool>/``) as an
:class:`pvfs.nodes.InodeSpace`: their entries come from the OSD's object index, not
from kept nodes, so listing a pool of millions of objects keeps nothing per object
(issue 15 item 5).

Keys: an object's *row* in the store's index (:meth:`OsdStore.iter_objects`'s rows: the
``other`` table's rows in the order found, then the compact RBD data index's objects,
group by group), twice: ``row << 1`` the object's data, ``row << 1 | 1`` its
``.meta.json``; the same for the life of the index, so a dropped node is built again
with the same inode.  Pool directories are kept :class:`Dir` nodes keyed above the rows
(:data:`DIR_BASE`).  Names, sizes and bytes are those of the kept nodes this replaced:
``ObjectId.display()`` (``(pgmeta <hash>)`` for a PG's meta object), ``@<snap>`` for a
clone, sorted by (namespace, name, snap), and a clash renamed as ``Dir.add`` does.

References: pvfs/nodes.py (the InodeSpace contract), ceph/src/common/hobject.h
(hobject_t's namespace / name / snap).
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import threading
import weakref
from array import array
from collections.abc import Sequence

import numpy as np

from pvfs.cache import METADATA_CACHE
from pvfs.errors import UnreadableError
from pvfs.nodes import File, GeneratedFile, InodeSpace, Listing, sanitize_name

from .errors import CephError
from .keys import CEPH_NOSNAP, CEPH_SNAPDIR, decode_onode_key, display
from .osd import _OtherIndex

#: Keys of the pool directories (above every object's key: rows stay below 2**46).
DIR_BASE = 1 << 47
_DT_REG = 8
_META = ".meta.json"
_ids = itertools.count()


def display_name(ns: bytes, name: bytes, snap: int, key) -> str:
    """The file name of an object as the expert view shows it (before ``sanitize_name``):
    ``ObjectId.display()``; ``key()`` gives the onode key, only needed for a PG's meta
    object (no name: shown by its hash)."""
    fname = display(ns, name, snap)
    if not fname:
        fname = f"(pgmeta {decode_onode_key(key()).hash:x})"
    if snap != CEPH_NOSNAP and "@" not in fname:
        fname = f"{fname}@{snap}"
    return fname


class OsdSpace(InodeSpace):
    """The objects of one OSD (:class:`OsdStore` or :class:`FileStoreOsd`) by row."""

    def __init__(self, st, path: str, pool_name, meta):
        self.st = st
        self.prefix = path  # storage/ceph/.osd/<osd>
        self.pool_name = pool_name  # pool id -> directory name
        self.meta = meta  # meta(st, key, oid) -> bytes of <object>.meta.json
        self._cache_id = next(_ids)
        self._lock = threading.Lock()
        self._live: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self._pools: dict[int, int] = {}  # directory key -> pool id
        self._plain: dict[int, bool] = {}  # pool -> names parse back (no clash, no '/')
        other = st.other
        if isinstance(other, _OtherIndex):
            self._other_rows = None
            n_other = other.rows
        else:  # a dict (FileStore; a build that could not be mapped): rows in its order
            self._other_rows = [(p, ns, n, snap, key) for (p, ns, n), snaps in other.items()
                                for snap, key in snaps.items()]
            self._other_row_of = {(p, ns, n, snap): r for r, (p, ns, n, snap, _k)
                                  in enumerate(self._other_rows)}
            n_other = len(self._other_rows)
        self._groups = list(st.data.items())  # ((pool, ns, prefix), _DataIndex)
        self._group_of = {g: i for i, (g, _di) in enumerate(self._groups)}
        self._bases = []
        base = n_other
        for _g, di in self._groups:
            self._bases.append(base)
            base += len(di.objnos)
        self._n_other, self._end = n_other, base
        # each data group's names as a format: sanitize_name(display_name()) of
        # "<prefix>.<16 hex>" is that of the prefix, then ".<16 hex>"
        self._gname = [sanitize_name(display_name(ns, prefix + b".", CEPH_NOSNAP, None))
                       .replace("%", "%%") + "%016x" for (_p, ns, prefix), _di in self._groups]
        if base >= DIR_BASE >> 1:
            raise CephError(f"{st.name}: {base} objects: too many for the OSD view's keys")

    # -- pool directories --------------------------------------------------------------
    def dir_key(self, pool: int) -> int:
        key = DIR_BASE + len(self._pools)
        self._pools[key] = pool
        return key

    # -- rows ------------------------------------------------------------------------------
    def _row(self, r: int):
        """``(pool, nspace, name, snap, key())`` of row ``r`` (None: no such row)."""
        st = self.st
        if 0 <= r < self._n_other:
            if self._other_rows is not None:
                p, ns, n, snap, key = self._other_rows[r]
                return p, ns, n, snap, lambda: key
            o = st.other
            p, ns, n = o._obj(r)
            return p, ns, n, int(o.snap[r]), lambda: o._key(r)
        if self._n_other <= r < self._end:
            i = bisect.bisect_right(self._bases, r) - 1
            (p, ns, prefix), di = self._groups[i]
            name = prefix + b".%016x" % int(di.objnos[r - self._bases[i]])
            return p, ns, name, CEPH_NOSNAP, lambda: st.lookup(p, name, ns)[0]
        return None

    def _row_of(self, pool: int, ns: bytes, name: bytes, snap: int):
        """The row of an object (None: not on this OSD)."""
        if self._other_rows is not None:
            r = self._other_row_of.get((pool, ns, name, snap))
        else:
            r = self.st.other.row((pool, ns, name), snap)
        if r is not None:
            return r
        if snap != CEPH_NOSNAP:
            return None
        prefix, dot, hexno = name.rpartition(b".")
        i = self._group_of.get((pool, ns, prefix))
        if not dot or i is None or len(hexno) != 16:
            return None
        try:
            objno = int(hexno, 16)
        except ValueError:
            return None
        objnos = self._groups[i][1].objnos
        j = int(np.searchsorted(objnos, np.uint64(objno)))
        if j < len(objnos) and int(objnos[j]) == objno:
            return self._bases[i] + j
        return None

    def _pool_sorted(self, pool: int):
        """``(nspace, name, snap, row)`` of every object of ``pool`` sorted by (nspace,
        name, snap), one at a time: the index's sorted runs merged, nothing kept per
        object (the ``other`` table's ``order`` sorts it by object; each object's
        versions by snap here; each data group's objnos are sorted)."""
        runs = []
        if self._other_rows is not None:
            runs.append(sorted((ns, n, snap, r) for r, (p, ns, n, snap, _k)
                               in enumerate(self._other_rows) if p == pool))
        else:
            runs.append(self._other_sorted(pool))
        for i, ((p, ns, prefix), di) in enumerate(self._groups):
            if p == pool:
                runs.append(self._group_sorted(ns, prefix, di.objnos, self._bases[i]))
        return heapq.merge(*runs)

    def _other_sorted(self, pool: int):
        o = self.st.other
        order = np.asarray(o.order)
        sel = order[np.asarray(o.pool)[order] == pool].tolist()
        snaps = np.asarray(o.snap)
        cur, run = None, []
        for r in sel:
            obj = o._obj(r)
            if obj != cur:
                if run:
                    yield from sorted(run)
                cur, run = obj, []
            run.append((obj[1], obj[2], int(snaps[r]), r))
        if run:
            yield from sorted(run)

    @staticmethod
    def _group_sorted(ns: bytes, prefix: bytes, objnos, base: int):
        fmt = prefix + b".%016x"
        for j, objno in enumerate(objnos.tolist()):
            yield ns, fmt % objno, CEPH_NOSNAP, base + j

    def _fname(self, r: int) -> str:
        """The display name of row ``r`` (after ``sanitize_name``, before a clash's
        renaming)."""
        if self._n_other <= r < self._end:  # (the common case: a data group's object)
            i = bisect.bisect_right(self._bases, r) - 1
            return self._gname[i] % int(self._groups[i][1].objnos[r - self._bases[i]])
        _p, ns, n, snap, key = self._row(r)
        return sanitize_name(display_name(ns, n, snap, key))

    # -- the InodeSpace ----------------------------------------------------------------
    def entries(self, key: int) -> Listing:
        """The objects of the pool, sorted by (namespace, name, snap): each object's file
        (``row << 1``) and its ``.meta.json`` (``row << 1 | 1``), as a
        :class:`PoolListing` (rows, not names: ~4 bytes an object, 12 more when names
        do not parse back)."""
        ck = ("ceph-osdview", self._cache_id, key)
        hit = METADATA_CACHE.get(ck)
        if hit is not None:
            return hit
        pool = self._pools.get(key)
        if pool is None:
            return Listing([], array("Q"))
        rows = array("Q")
        hashes = array("q")  # hash() of each entry's name: clashes, lookups
        plain = True
        for ns, n, snap, r in self._pool_sorted(pool):
            rows.append(r)
            name = display_name(ns, n, snap, (lambda r=r: self._row(r)[4]()))
            s = sanitize_name(name)
            if s != name:
                plain = False
            hashes.append(hash(s))
            hashes.append(hash(s + _META))
        rows_np = np.frombuffer(rows, dtype=np.uint64) if rows else np.zeros(0, np.uint64)
        if self._end < 1 << 32:
            rows_np = rows_np.astype(np.uint32)
        else:
            rows_np = rows_np.copy()
        del rows
        h = np.frombuffer(hashes, dtype=np.int64) if hashes else np.zeros(0, np.int64)
        out = PoolListing(self, rows_np)
        renamed = self._clashes(out, h)
        if renamed:
            plain = False
            out.names.renamed = renamed
            out.names.renamed_at = {v: k for k, v in renamed.items()}
        if not plain:  # lookups by name: the objects' name hashes, sorted
            base = h[0::2]
            out.by_hash = np.argsort(base, kind="stable").astype(np.uint32 if len(base) < 1 << 32
                                                                else np.uint64)
            out.hashes = base[out.by_hash]
        del hashes, h
        self._plain[pool] = plain
        return METADATA_CACHE.put(ck, out)

    def _clashes(self, listing: PoolListing, h) -> dict[int, str]:
        """``{entry: name}`` of the entries ``Dir.add`` would have renamed: a name taken
        by an earlier entry.  Only names whose hash is not unique (and names a renaming
        makes) are compared; the renaming goes in listing order, as ``Dir.add`` did."""
        if len(h) < 2:
            return {}
        hs = np.sort(h)
        if not np.any(hs[1:] == hs[:-1]):  # (the common case: no argsort)
            return {}
        order = np.argsort(h, kind="stable")
        hs = h[order]
        dup = np.flatnonzero(hs[1:] == hs[:-1])
        todo = sorted(set(order[dup].tolist()) | set(order[dup + 1].tolist()))
        heapq.heapify(todo)
        renamed: dict[int, str] = {}
        made: dict[str, int] = {}

        orig = listing.names.raw

        def taken(name, before):
            if made.get(name, before) < before:
                return True
            hv = np.int64(hash(name))
            lo, hi = np.searchsorted(hs, hv), np.searchsorted(hs, hv, "right")
            return any(p < before and p not in renamed and orig(p) == name
                       for p in order[lo:hi].tolist())

        seen = set()
        while todo:
            e = heapq.heappop(todo)
            if e in seen:
                continue
            seen.add(e)
            name = orig(e)
            if not taken(name, e):
                continue
            chosen, n = name, 2
            while taken(chosen, e):
                stem, dot, ext = name.partition(".")
                chosen = f"{stem}~{n}{dot}{ext}"
                n += 1
            renamed[e] = chosen
            made[chosen] = e
            hv = np.int64(hash(chosen))  # a later entry of that name is renamed too
            lo, hi = np.searchsorted(hs, hv), np.searchsorted(hs, hv, "right")
            for p in order[lo:hi].tolist():
                if p > e:
                    heapq.heappush(todo, p)
        return renamed

    def lookup(self, key: int, name: str) -> int | None:
        """By the name's parts (namespace, name, snap) in the index; a pool whose names
        do not parse back (a clash renamed, a '/' in a name) by the hash of the name in
        its listing."""
        pool = self._pools.get(key)
        if pool is None:
            return None
        if not self._plain.get(pool, False):
            listing = self.entries(key)
            if not self._plain.get(pool, False):
                return listing.find(name)
        meta = name.endswith(_META)
        for want, flag in ((name, 0), (name[:-len(_META)], 1) if meta else (None, 0)):
            if want is None:
                continue
            r = self._parse(pool, want)
            if r is not None:
                return r << 1 | flag
        return None

    def _parse(self, pool: int, fname: str):
        """The row whose display name is ``fname`` (names of a plain pool: no '/')."""
        try:
            raw = fname.encode("utf-8")
        except UnicodeEncodeError:
            return None
        cands = [(raw, CEPH_NOSNAP)]
        base, at, snap = raw.rpartition(b"@")
        if at:
            if snap == b"snapdir":
                cands.append((base, CEPH_SNAPDIR))
            elif snap.isdigit():
                cands.append((base, int(snap)))
        if raw.startswith(b"(pgmeta "):
            cands += [(b"", s) for _n, s in cands]
        for n, snap in cands:
            r = self._row_of(pool, b"", n, snap)
            if r is not None:
                row = self._row(r)
                if display_name(row[1], row[2], row[3], row[4]) == fname:
                    return r
        return None

    def child(self, key: int, name: str, child: int):
        return self.node(child)

    def node(self, key: int, nowait: bool = False):
        node = self._live.get(key)
        if node is not None:
            return node
        row = self._row(key >> 1)
        if row is None:
            return None
        with self._lock:
            node = self._live.get(key)
            if node is None:
                node = self._build(key & 1, row)
                if node is not None:
                    self._live[key] = node
        return node

    def _build(self, is_meta: int, row):
        st = self.st
        try:
            okey = row[4]()
        except (TypeError, CephError):
            return None
        oid = decode_onode_key(okey)
        if is_meta:
            return GeneratedFile(lambda: self.meta(st, okey, oid))
        fname = display_name(oid.nspace, oid.name, oid.snap, lambda: okey)
        try:
            return File(st.object_source(okey, label=f"{st.name}:{fname}"))
        except (CephError, UnreadableError):
            return None

    def path(self, key: int) -> str:
        row = self._row(key >> 1)
        if row is None:
            return f"{self.prefix}/?"
        p, ns, n, snap, okey = row
        pname = "meta" if p == -1 else self.pool_name(p)
        return f"{self.prefix}/{pname}/{display_name(ns, n, snap, okey)}" + \
            (_META if key & 1 else "")


class PoolListing(Listing):
    """A pool's listing as the sorted rows of its objects (entry ``2*i`` the data of
    object ``i``, ``2*i + 1`` its ``.meta.json``): names are made from the index on
    use, keys from the rows, so a pool of 2 million objects costs 8 MB (24 MB more
    when its names do not parse back: sorted name hashes for :meth:`find`), not the
    ~400 MB of a list of str that did not fit the metadata cache."""

    __slots__ = ("rows", "by_hash", "hashes")

    def __init__(self, space: OsdSpace, rows) -> None:
        self.rows = rows
        self.by_hash = self.hashes = None
        super().__init__(_Names(space, rows), _Keys(rows), _Types(2 * len(rows)))

    def __len__(self) -> int:
        return 2 * len(self.rows)

    def find(self, name: str) -> int | None:
        """The key of entry ``name`` (None: not here), by its hash."""
        names = self.names
        e = names.renamed_at.get(name)
        if e is not None:
            return self.keys[e]
        if self.hashes is None:
            return None
        cands = [(name, 0)]
        if name.endswith(_META):
            cands.append((name[:-len(_META)], 1))
        for base, flag in cands:
            hv = np.int64(hash(base))
            lo = int(np.searchsorted(self.hashes, hv))
            hi = int(np.searchsorted(self.hashes, hv, "right"))
            for i in self.by_hash[lo:hi].tolist():
                e = 2 * i + flag
                if names[e] == name:
                    return self.keys[e]
        return None

    @property
    def cache_cost(self) -> int:
        extra = 0 if self.hashes is None else self.hashes.nbytes + self.by_hash.nbytes
        return 256 + self.rows.nbytes + extra + 200 * len(self.names.renamed)


class _Names(Sequence):
    """A pool's entry names, made from its rows on use."""

    __slots__ = ("_space", "_rows", "renamed", "renamed_at")

    def __init__(self, space: OsdSpace, rows) -> None:
        # (weakly: a cached listing must not keep a dropped tree alive; its cache key
        # is the space's, never asked for again)
        self._space, self._rows = weakref.ref(space), rows
        self.renamed: dict[int, str] = {}  # entry -> its name after a clash
        self.renamed_at: dict[str, int] = {}

    def raw(self, e: int) -> str:
        """Entry ``e``'s name before a clash's renaming."""
        name = self._space()._fname(int(self._rows[e >> 1]))
        return name + _META if e & 1 else name

    def __len__(self) -> int:
        return 2 * len(self._rows)

    def __getitem__(self, i):
        n = 2 * len(self._rows)
        if isinstance(i, slice):
            return [self[e] for e in range(*i.indices(n))]
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(i)
        got = self.renamed.get(i) if self.renamed else None
        return got if got is not None else self.raw(i)

    def __iter__(self):
        return (self[e] for e in range(len(self)))


class _Keys(Sequence):
    __slots__ = ("_rows",)

    def __init__(self, rows) -> None:
        self._rows = rows

    def __len__(self) -> int:
        return 2 * len(self._rows)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[e] for e in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return int(self._rows[i >> 1]) << 1 | (i & 1)

    def __iter__(self):
        for r in self._rows.tolist():
            yield r << 1
            yield r << 1 | 1

    def index(self, key, start=0, stop=None):
        """The entry of ``key`` (the mount's ``_index``): by numpy, not by iteration."""
        row = key >> 1
        if start == 0 and stop is None and 0 <= row < np.iinfo(self._rows.dtype).max:
            hit = np.flatnonzero(self._rows == row)
            if hit.size:
                return 2 * int(hit[0]) + (key & 1)
            raise ValueError(key)
        return super().index(key, start, stop)


class _Types(Sequence):
    """Every entry a regular file (``DT_REG``): the mount answers a listing without
    building the entries' nodes."""

    __slots__ = ("_n",)

    def __init__(self, n: int) -> None:
        self._n = n

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [_DT_REG] * len(range(*i.indices(self._n)))
        if not -self._n <= i < self._n:
            raise IndexError(i)
        return _DT_REG
