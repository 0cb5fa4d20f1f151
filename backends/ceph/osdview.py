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
import itertools
import threading
import weakref
from array import array

import numpy as np

from pvfs.cache import METADATA_CACHE
from pvfs.errors import UnreadableError
from pvfs.nodes import File, GeneratedFile, InodeSpace, Listing, sanitize_name

from .errors import CephError
from .keys import CEPH_NOSNAP, CEPH_SNAPDIR, decode_onode_key
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
    n = name.decode("utf-8", "backslashreplace")
    if ns:
        n = ns.decode("utf-8", "backslashreplace") + "/" + n
    if snap == CEPH_NOSNAP:
        fname = n
    elif snap == CEPH_SNAPDIR:
        fname = n + "@snapdir"
    else:
        fname = f"{n}@{snap}"
    if not fname:
        fname = f"(pgmeta {decode_onode_key(key()).hash:x})"
    if snap != CEPH_NOSNAP and "@" not in fname:
        fname = f"{fname}@{snap}"
    return fname


def _clash_name(name: str, taken) -> str:
    """The name ``Dir.add`` gives a file whose name is taken (``stem~2.ext`` ...)."""
    chosen, n = name, 2
    while chosen in taken:
        stem, dot, ext = name.partition(".")
        chosen = f"{stem}~{n}{dot}{ext}"
        n += 1
    return chosen


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

    def _pool_rows(self, pool: int):
        """``(nspace, name, snap, row)`` of every object of ``pool`` (unsorted)."""
        if self._other_rows is not None:
            for r, (p, ns, n, snap, _k) in enumerate(self._other_rows):
                if p == pool:
                    yield ns, n, snap, r
        else:
            o = self.st.other
            for r in np.flatnonzero(np.asarray(o.pool) == pool).tolist():
                _p, ns, n = o._obj(r)
                yield ns, n, int(o.snap[r]), r
        for i, ((p, ns, prefix), di) in enumerate(self._groups):
            if p == pool:
                base = self._bases[i]
                for j, objno in enumerate(di.objnos.tolist()):
                    yield ns, prefix + b".%016x" % objno, CEPH_NOSNAP, base + j

    # -- the InodeSpace ----------------------------------------------------------------
    def entries(self, key: int) -> Listing:
        """The objects of the pool, sorted by (namespace, name, snap): each object's file
        (``row << 1``) and its ``.meta.json`` (``row << 1 | 1``)."""
        ck = ("ceph-osdview", self._cache_id, key)
        hit = METADATA_CACHE.get(ck)
        if hit is not None:
            return hit
        pool = self._pools.get(key)
        names: list[str] = []
        keys = array("Q")
        if pool is None:
            return Listing(names, keys)
        taken: set[str] = set()
        plain = True
        for ns, n, snap, r in sorted(self._pool_rows(pool)):
            row = self._row(r)
            fname = display_name(ns, n, snap, row[4])
            for name, k in ((fname, r << 1), (fname + _META, r << 1 | 1)):
                s = sanitize_name(name)
                if s != name or s in taken:
                    plain = False
                    s = _clash_name(s, taken)
                taken.add(s)
                names.append(s)
                keys.append(k)
        self._plain[pool] = plain
        out = Listing(names, keys, array("B", bytes([_DT_REG])) * len(names))
        return METADATA_CACHE.put(ck, out)

    def lookup(self, key: int, name: str) -> int | None:
        """By the name's parts (namespace, name, snap) in the index; a pool whose names
        do not parse back (a clash renamed, a '/' in a name) searches its listing."""
        pool = self._pools.get(key)
        if pool is None:
            return None
        if not self._plain.get(pool, False):
            listing = self.entries(key)
            if not self._plain.get(pool, False):
                try:
                    return listing.keys[listing.names.index(name)]
                except ValueError:
                    return None
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
        fname = oid.display() or f"(pgmeta {oid.hash:x})"
        if oid.snap != CEPH_NOSNAP and "@" not in fname:
            fname = f"{fname}@{oid.snap}"
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
