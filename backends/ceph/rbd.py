"""RADOS over several OSDs, and RBD images reassembled from their objects.

Objects: every given OSD is indexed (osd.py); the same object on several
OSDs (replicas) is resolved by ``object_info_t.version`` (the newest wins,
disagreements are reported); copies of the newest version are tried in turn
when one fails its checksums.

Placement: an object that no given OSD holds is either unwritten (sparse:
RBD never creates objects for zeros) or lost with its OSDs.  The pool's
``pg_num`` (from the newest OSDMap: an ``osdmap.<epoch>`` object of an OSD's
meta collection, or the monitor store) gives the object's placement group
(``ceph_str_hash_rjenkins`` + ``ceph_stable_mod``); when some given OSD holds
that PG (a ``C`` collection ``<pool>.<pg>_head``) the object does not exist,
otherwise it is *missing*: zero-filled (or EIO with ``--bad eio``) and
reported with the image byte ranges it covers.

RBD format 2 (cls_rbd): ``rbd_directory`` omap ``name_<name>`` -> id,
``rbd_id.<name>`` data, ``rbd_header.<id>`` omap ``size``, ``order``,
``object_prefix``, ``features``, ``stripe_unit``/``stripe_count``
(STRIPINGV2), ``data_pool_id``, ``snap_seq``, ``snapshot_<16 hex id>``
(cls_rbd_snap); data objects ``<object_prefix>.<objno as 16 hex>``.
Format 1: ``<name>.rbd`` header object (``rbd_obj_header_ondisk``), data
objects ``<block_name>.<objno as 12 hex>``.

Snapshots (``PrimaryLogPG::find_object_context``): reading snapshot ``S`` of
an object uses the head when ``S > snapset.seq``, else the oldest clone with
id ``>= S`` whose ``clone_snaps`` reach down to ``S``; no such clone means the
object did not exist at ``S``.  A whiteout head (a discard after a snapshot)
does not exist for the head view.

References: ceph/src/cls/rbd/cls_rbd.cc, librbd/Utils.cc, include/rbd_types.h,
osdc/Striper.cc (``file_to_extents``), osd/PrimaryLogPG.cc,
osd/osd_types.h (object_info_t flags).
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass, field

from pvfs.cache import ByteLRU
from pvfs.errors import UnreadableError
from pvfs.source import BAD_EIO, BAD_ZERO, DATA, UNMAPPED, ExtentSource, MissingSource, Source

from .ec import EcObjectSource, ec_layout
from .errors import CephError
from .keys import CEPH_NOSNAP, CEPH_SNAPDIR
from .osdtypes import (OBJECT_NONEXISTENT, OsdTypeError, decode_cls_rbd_parent,
                       decode_cls_rbd_snap, decode_le_string, decode_object_map, decode_osdmap,
                       decode_trash_image_spec, pg_of, str_hash_rjenkins)


class RbdError(CephError):
    """An RBD header or directory cannot be used."""


RBD_HEADER_TEXT = b"<<< Rados Block Device Image >>>\n"
FEATURE_OBJECT_MAP = 8
RBD_FLAG_OBJECT_MAP_INVALID = 1
FEATURE_NAMES = {1: "layering", 2: "striping", 4: "exclusive-lock", 8: "object-map",
                 16: "fast-diff", 32: "deep-flatten", 64: "journaling", 128: "data-pool",
                 256: "operations", 512: "migrating", 1024: "non-primary"}
MAX_ORDER = 32  # objects of up to 4 GiB
MAX_IMAGE_SIZE = 1 << 60


@dataclass
class Candidate:
    store: object
    key: bytes
    oid: object
    info: object  # ObjectInfo or None

    @property
    def version(self):
        return self.info.version if self.info is not None else (-1, -1)


@dataclass
class RbdSnapshot:
    id: int
    name: str
    size: int
    parent_overlap: int | None = None


@dataclass
class RbdImage:
    pool: int
    name: str
    id: str
    size: int
    order: int
    object_prefix: str
    features: int = 0
    stripe_unit: int = 0
    stripe_count: int = 1
    data_pool: int | None = None
    format: int = 2
    snaps: list = field(default_factory=list)
    guessed: bool = False
    flags: int = 0  # RBD_FLAG_* of the head
    parent: object = None  # RbdParent of a clone (layering)
    nspace: bytes = b""  # RADOS namespace of an image in an RBD namespace

    @property
    def object_size(self):
        return 1 << self.order

    def object_name(self, objno):
        if self.format == 1:
            return f"{self.object_prefix}.{objno:012x}".encode()
        return f"{self.object_prefix}.{objno:016x}".encode()

    def feature_names(self):
        return [n for b, n in FEATURE_NAMES.items() if self.features & b]


class Layout:
    """``Striper::file_to_extents`` for one image (stripe unit / count)."""

    def __init__(self, size, object_size, stripe_unit=0, stripe_count=1):
        self.size = size
        self.object_size = object_size
        su = stripe_unit or object_size
        sc = stripe_count or 1
        if su > object_size or object_size % su:
            su = object_size
        self.su = su
        self.sc = sc
        self.simple = su == object_size and sc == 1
        self.stripes_per_object = object_size // su

    def num_objects(self):
        if self.size == 0:
            return 0
        if self.simple:
            return -(-self.size // self.object_size)
        period = self.object_size * self.sc
        nsets = -(-self.size // period)
        last = self.size - (nsets - 1) * period  # bytes in the last object set
        blocks = -(-last // self.su)
        return (nsets - 1) * self.sc + min(self.sc, blocks)

    def map(self, offset, length):
        """Yield ``(objno, object offset, image offset, length)`` for an image range."""
        end = offset + length
        pos = offset
        if self.simple:
            osz = self.object_size
            while pos < end:
                objno, o_off = divmod(pos, osz)
                n = min(osz - o_off, end - pos)
                yield objno, o_off, pos, n
                pos += n
            return
        su, sc, spo = self.su, self.sc, self.stripes_per_object
        while pos < end:
            blockno, b_off = divmod(pos, su)
            stripeno, stripepos = divmod(blockno, sc)
            objectsetno = stripeno // spo
            objno = objectsetno * sc + stripepos
            o_off = (stripeno % spo) * su + b_off
            n = min(su - b_off, end - pos)
            yield objno, o_off, pos, n
            pos += n

    def object_ranges(self, objno):
        """Image ranges ``[(offset, length)]`` stored in object ``objno``."""
        if self.simple:
            start = objno * self.object_size
            return [(start, max(0, min(self.object_size, self.size - start)))]
        su, sc, spo = self.su, self.sc, self.stripes_per_object
        objectsetno, stripepos = divmod(objno, sc)
        out = []
        for i in range(spo):
            stripeno = objectsetno * spo + i
            blockno = stripeno * sc + stripepos
            start = blockno * su
            if start >= self.size:
                break
            out.append((start, min(su, self.size - start)))
        return out


def _object_cost(src) -> int:
    """Memory an object source holds: its extent map dominates."""
    return 512 + 64 * len(getattr(src, "extents", ()) or ())


#: Object sources kept per image (each holds its extent map).
OBJECT_CACHE_BYTES = 1 << 20


class ReplicaSource(Source):
    """One object read from the first of its copies that reads without error.

    When every copy fails for a range, ``bad`` decides: ``eio`` raises, ``zero``
    reads that range again 4 KiB at a time and zero-fills only the chunks that
    no copy can give.
    """

    CHUNK = 4096

    def __init__(self, sources, label, on_damage=None, bad=BAD_EIO):
        super().__init__()
        self.sources = sources
        self.size = sources[0].size
        self.label = label
        self.on_damage = on_damage
        self.bad = bad

    def _try(self, offset, length):
        err = None
        for i, s in enumerate(self.sources):
            try:
                return s.read(offset, length)
            except UnreadableError as e:
                err = e
                if i + 1 < len(self.sources) and self.on_damage:
                    self.on_damage("replica-failed", f"{e}; reading another replica", e.ranges)
        raise err

    def _read(self, offset, length):
        try:
            return self._try(offset, length)
        except UnreadableError:
            if self.bad != BAD_ZERO:
                raise
        parts = []
        pos, end = offset, offset + length
        while pos < end:
            n = min(self.CHUNK - pos % self.CHUNK, end - pos)
            try:
                parts.append(self._try(pos, n))
            except UnreadableError:
                parts.append(bytes(n))
            pos += n
        return b"".join(parts)

    def _block_status(self, offset, length):
        return self.sources[0].block_status(offset, length)


class RbdImageSource(Source):
    """An RBD image: objects resolved lazily through ``resolve(objno)``."""

    def __init__(self, layout: Layout, resolve, label="rbd"):
        super().__init__()
        self.layout = layout
        self.size = layout.size
        self.resolve = resolve  # objno -> Source of object_size bytes, or None (zeros)
        self.label = label
        self._cache = ByteLRU(OBJECT_CACHE_BYTES, cost=_object_cost)

    def _object(self, objno):
        return self._cache.get_or_load(objno, lambda: self.resolve(objno) or _NONE)

    def _read(self, offset, length):
        parts = []
        for objno, o_off, _pos, n in self.layout.map(offset, length):
            src = self._object(objno)
            if src is _NONE:
                parts.append(bytes(n))
            else:
                parts.append(src.read(o_off, n))
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _block_status(self, offset, length):
        out = []
        for objno, o_off, pos, n in self.layout.map(offset, length):
            src = self._object(objno)
            if src is _NONE:
                out.append((pos, n, UNMAPPED))
            else:
                out.extend((o - o_off + pos, ln, st) for o, ln, st in src.block_status(o_off, n))
        return out


_NONE = object()


class _PaddedSource(Source):
    """An object padded with zeros (unmapped) to its slot size."""

    def __init__(self, inner, size, label):
        super().__init__()
        self.inner = inner
        self.size = size
        self.label = label

    def _read(self, offset, length):
        avail = max(0, min(length, self.inner.size - offset))
        data = self.inner.read(offset, avail) if avail else b""
        return data + bytes(length - avail) if avail < length else data

    def _block_status(self, offset, length):
        avail = max(0, min(length, self.inner.size - offset))
        out = list(self.inner.block_status(offset, avail)) if avail else []
        if avail < length:
            out.append((offset + avail, length - avail, UNMAPPED))
        return out


class Cluster:
    """The objects of all given OSDs of one Ceph cluster."""

    #: above this many ranges, an ``ec-shards-missing`` report names whole objects
    MAX_EC_RANGES = 1 << 16

    def __init__(self, stores, report, bad=BAD_EIO):
        self.stores = stores
        self.report = report  # report(severity, path, code, message, ranges=())
        self.bad = bad
        self.pools = {}  # id -> PoolInfo
        self.pool_source = None
        self._mismatch_seen = set()
        self._held = {}  # pool -> PG seeds held by the given OSDs

    def ec_layout(self, pool):
        """The :class:`ec.EcLayout` of an erasure-coded pool (None: replicated or unknown)."""
        return ec_layout(self.pools.get(pool))


    # -- objects -----------------------------------------------------------------
    def find(self, pool, name: bytes, snap=CEPH_NOSNAP, path="storage/ceph", ns=b""):
        """Copies of an object, newest version first (all copies of that version first)."""
        cands = []
        for st in self.stores:
            hit = st.lookup(pool, name, ns, snap=snap)
            if hit is None:
                continue
            key, oid = hit
            try:
                info = st.object_info(key)
            except CephError:
                info = None
            cands.append(Candidate(st, key, oid, info))
        if len(cands) > 1:
            cands.sort(key=lambda c: c.version, reverse=True)
            versions = {c.version for c in cands}
            if len(versions) > 1:
                mk = (pool, name, snap)
                if mk not in self._mismatch_seen:
                    self._mismatch_seen.add(mk)
                    desc = ", ".join(f"{c.store.name}: {c.version[0]}'{c.version[1]}" for c in cands)
                    self.report("warning", path, "replica-mismatch",
                                f"object {name.decode('utf-8', 'replace')} differs between "
                                f"replicas ({desc}); the newest is used")
        return cands

    def held_pgs(self, pool):
        """PG seeds of ``pool`` that some given OSD holds."""
        held = self._held.get(pool)
        if held is None:
            held = self._held[pool] = {seed for st in self.stores
                                       for (p, seed) in st.collections if p == pool}
        return held

    def pool_complete(self, pool):
        """Every PG of the pool is on some given OSD (so nothing can be missing)."""
        info = self.pools.get(pool)
        return bool(info and info.pg_num) and len(self.held_pgs(pool)) >= info.pg_num \
            and all(s in self.held_pgs(pool) for s in range(info.pg_num))

    def holds_pg(self, pool, name: bytes, ns=b""):
        """True: some given OSD holds the object's PG; False: none does; None: unknown."""
        info = self.pools.get(pool)
        if info is None or not info.pg_num:
            return None
        if self.pool_complete(pool):
            return True
        return pg_of(object_hash(name, ns), info.pg_num) in self.held_pgs(pool)

    def read_object(self, pool, name: bytes, limit=64 << 20, ns=b""):
        cands = self.find(pool, name, ns=ns)
        err = None
        for c in cands:
            try:
                return c.store.read_small(c.key, limit)
            except CephError as e:
                err = e
            except UnreadableError as e:
                err = e
        if err is not None:
            raise RbdError(f"{name.decode('utf-8', 'replace')}: {err}")
        return None

    def omap(self, pool, name: bytes, ns=b""):
        for c in self.find(pool, name, ns=ns):
            try:
                return c.store.omap(c.key, c.oid)
            except CephError:
                continue
        return None

    def names_with_prefix(self, pool, prefix: bytes, nspace=b""):
        """Sorted names of the objects of a pool that start with ``prefix`` (any OSD).

        Meant for metadata prefixes (``rbd_id.``, ``rbd_header.``, one image's data
        prefix): names of the compact data index are generated when they match."""
        found = set()
        for st in self.stores:
            found.update(st.names_with_prefix(pool, prefix, nspace))
        return sorted(found)

    def _other_with_prefix(self, pool, prefix: bytes, nspace=b""):
        found = set()
        for st in self.stores:
            names = st.other_names(pool, nspace)
            i = bisect.bisect_left(names, prefix)
            while i < len(names) and names[i].startswith(prefix):
                found.add(names[i])
                i += 1
        return sorted(found)

    def data_objnos(self, pool, nspace, prefix: bytes, width=16):
        """Object numbers of ``<prefix>.<objno>`` objects on any OSD (any snap)."""
        out = set()
        for st in self.stores:
            out.update(st.data_objnos(pool, nspace, prefix).tolist())
        dot = prefix + b"."
        for name in self._other_with_prefix(pool, dot, nspace):
            tail = name[len(dot):]
            if len(tail) == width:
                try:
                    out.add(int(tail, 16))
                except ValueError:
                    pass
        return out

    def data_prefixes(self, pool, nspace=b""):
        """``rbd_data.<...>`` prefixes that have data objects on any OSD."""
        out = set()
        for st in self.stores:
            out.update(st.data_prefixes(pool, nspace))
        for name in self._other_with_prefix(pool, b"rbd_data.", nspace):
            head, _dot, tail = name.rpartition(b".")
            if len(tail) == 16:
                out.add(head)
        return sorted(out)

    def pool_ids(self):
        ids = set(self.pools)
        for st in self.stores:
            ids.update(p for p in st.pools() if p >= 0)
        return sorted(ids)

    # -- pools ---------------------------------------------------------------------
    def load_osdmap_from_osds(self):
        """Pool names and pg_num from the newest ``osdmap.<epoch>`` object on any OSD."""
        best = []
        for st in self.stores:
            for (p, _ns, name), snaps in st.other.items():
                if p != -1 or not name.startswith(b"osdmap."):
                    continue
                try:
                    epoch = int(name[7:])
                except ValueError:
                    continue
                for _snap, key in snaps.items():
                    best.append((epoch, st, key))
        best.sort(key=lambda t: -t[0])
        for _epoch, st, key in best[:8]:
            try:
                m = decode_osdmap(st.read_small(key))
            except (CephError, UnreadableError):
                continue
            self.pools = m.pools
            self.pool_source = f"osdmap epoch {m.epoch} from {st.name}"
            return m
        return None

    def load_osdmap_from_mon(self, kv):
        last = kv.get("osdmap", b"last_committed")
        if last is None or len(last) < 8:
            raise RbdError("mon store: no osdmap last_committed")
        epoch = struct.unpack_from("<Q", last)[0]
        for e in range(epoch, max(0, epoch - 50), -1):
            v = kv.get("osdmap", b"full_%d" % e)
            if v is None:
                continue
            try:
                m = decode_osdmap(v)
            except OsdTypeError:
                continue
            self.pools = m.pools
            self.pool_source = f"osdmap epoch {m.epoch} from the monitor store"
            return m
        raise RbdError(f"mon store: no decodable full osdmap at or below epoch {epoch}")

    def pool_name(self, pool):
        info = self.pools.get(pool)
        if info is not None and info.name:
            return info.name
        return str(pool)

    # -- RBD ---------------------------------------------------------------------------
    def namespaces(self, pool):
        """RBD namespaces of a pool: "" and every namespace holding RBD metadata."""
        found = {b""}
        for st in self.stores:
            for (p, ns, name) in st.other:
                if p == pool and ns and (name == b"rbd_directory" or name.startswith(b"rbd_header.")):
                    found.add(ns)
        return sorted(found)

    def list_images(self, pool, ns=b""):
        """{name: id} of format-2 images, and [name] of format-1 images."""
        names = {}
        omap = self.omap(pool, b"rbd_directory", ns)
        if omap:
            for k, v in omap.items():
                if k.startswith(b"name_"):
                    try:
                        names[k[5:].decode("utf-8", "replace")] = decode_le_string(v)
                    except OsdTypeError:
                        continue
        for obj in self.names_with_prefix(pool, b"rbd_id.", ns):
            n = obj[7:].decode("utf-8", "replace")
            if n in names:
                continue
            try:
                data = self.read_object(pool, obj, 4096, ns)
                if data:
                    names[n] = decode_le_string(data)
            except (CephError, UnreadableError):
                continue
        known = set(names.values()) | set(self.list_trash(pool, ns).values())
        for obj in self.names_with_prefix(pool, b"rbd_header.", ns):
            iid = obj[11:].decode("utf-8", "replace")
            if iid not in known:
                names[f"image-{iid}"] = iid
                known.add(iid)
        # data objects whose header and name are both lost
        for dp in self.data_prefixes(pool, ns):
            parts = dp.split(b".")
            if len(parts) == 2:
                iid = parts[1].decode("utf-8", "replace")
                if iid not in known:
                    names[f"image-{iid}"] = iid
                    known.add(iid)
        v1 = [obj[:-4].decode("utf-8", "replace") for obj in self._other_with_prefix(pool, b"", ns)
              if obj.endswith(b".rbd")]
        return names, v1

    def list_trash(self, pool, ns=b""):
        """{name: id} of images moved to the trash (``rbd trash mv``; data kept until purge)."""
        out = {}
        for k, v in (self.omap(pool, b"rbd_trash", ns) or {}).items():
            if not k.startswith(b"id_"):
                continue
            iid = k[3:].decode("utf-8", "replace")
            try:
                name = decode_trash_image_spec(v)
            except OsdTypeError:
                name = f"image-{iid}"
            while name in out:
                name += "~"
            out[name] = iid
        return out

    def open_image_v2(self, pool, name, iid, ns=b"") -> RbdImage:
        omap = self.omap(pool, f"rbd_header.{iid}".encode(), ns)
        if omap is None:
            return self._guess_image(pool, name, iid, ns)

        def u64(k, default=None):
            v = omap.get(k)
            if v is None or len(v) < 8:
                if default is None:
                    raise RbdError(f"rbd_header.{iid}: no {k.decode()}")
                return default
            return struct.unpack_from("<Q", v)[0]

        order_v = omap.get(b"order")
        if not order_v:
            raise RbdError(f"rbd_header.{iid}: no order")
        order = order_v[0]
        size = u64(b"size")
        if not 12 <= order <= MAX_ORDER or size > MAX_IMAGE_SIZE:
            raise RbdError(f"rbd_header.{iid}: order {order} / size {size} out of range")
        try:
            prefix = decode_le_string(omap.get(b"object_prefix", b""))
        except OsdTypeError:
            prefix = f"rbd_data.{iid}"
        img = RbdImage(pool, name, iid, size, order, prefix, features=u64(b"features", 0))
        img.nspace = ns
        img.flags = u64(b"flags", 0)
        pv = omap.get(b"parent")
        if pv:
            try:
                par = decode_cls_rbd_parent(pv)
                if par.pool_id >= 0 and par.image_id and par.snap_id != CEPH_NOSNAP:
                    img.parent = par
            except OsdTypeError as e:
                self.report("warning", f"storage/ceph/{self.pool_name(pool)}/{name}",
                            "bad-rbd-parent", f"parent of {name}: {e}")
        img.stripe_unit = u64(b"stripe_unit", 0)
        img.stripe_count = u64(b"stripe_count", 1)
        dp = omap.get(b"data_pool_id")
        if dp and len(dp) >= 8:
            v = struct.unpack_from("<q", dp)[0]
            if v >= 0:
                img.data_pool = v
        for k, v in sorted(omap.items()):
            if k.startswith(b"snapshot_"):
                try:
                    s = decode_cls_rbd_snap(v)
                    img.snaps.append(RbdSnapshot(s.id, s.name, s.image_size, s.parent_overlap))
                except OsdTypeError as e:
                    self.report("warning", f"storage/ceph/{self.pool_name(pool)}/{name}",
                                "bad-rbd-snapshot", f"{k.decode()}: {e}")
        return img

    def _guess_image(self, pool, name, iid, ns=b"") -> RbdImage:
        """The header is lost: rebuild the geometry from the data objects found."""
        prefix = f"rbd_data.{iid}."
        objnos = sorted(self.data_objnos(pool, ns, prefix[:-1].encode()))
        biggest = 0
        # sizes of up to 256 objects (the last ones first) are enough to see a full one
        for objno in (objnos[::-1][:128] + objnos[:128]):
            for c in self.find(pool, f"{prefix}{objno:016x}".encode(), ns=ns)[:1]:
                try:
                    biggest = max(biggest, c.store.onode(c.key).size)
                except CephError:
                    pass
        if not objnos:
            raise RbdError(f"rbd_header.{iid} is on no given OSD and no data object was found")
        # A full object has exactly the object size (a power of two); without one, the
        # RBD default (4 MiB) or the next power of two above the biggest object.
        if biggest and biggest & (biggest - 1) == 0 and biggest >= 4096:
            order = biggest.bit_length() - 1
        else:
            order = max(22, biggest.bit_length())
        order = min(order, MAX_ORDER)
        size = (max(objnos) + 1) << order
        img = RbdImage(pool, name, iid, size, order, prefix[:-1])
        img.guessed = True
        img.nspace = ns
        self.report("error", f"storage/ceph/{self.pool_name(pool)}/{name}", "rbd-header-lost",
                    f"rbd_header.{iid} is on no given OSD: object size {1 << order} and image "
                    f"size {size} are guessed from the {len(objnos)} data objects found (the "
                    "real image may be larger; snapshots unknown)")
        return img

    def open_image_v1(self, pool, name) -> RbdImage:
        data = self.read_object(pool, f"{name}.rbd".encode(), 1 << 20)
        if not data or not data.startswith(RBD_HEADER_TEXT[:20]):
            raise RbdError(f"{name}.rbd: not an RBD format 1 header")
        if len(data) < 112:
            raise RbdError(f"{name}.rbd: header truncated")
        # rbd_obj_header_ondisk: text[40], block_name[24], signature[4], version[8],
        # options {u8 order, crypt_type, comp_type, unused}, le64 image_size, le64 snap_seq,
        # le32 snap_count, le32 reserved, le64 snap_names_len, then {le64 id, le64 size}[]
        block_name = data[40:64].split(b"\0", 1)[0].decode("utf-8", "replace")
        order = data[76]
        size, _seq, count, _res, names_len = struct.unpack_from("<QQIIQ", data, 80)
        if not 12 <= order <= MAX_ORDER:
            raise RbdError(f"{name}.rbd: order {order} out of range")
        img = RbdImage(pool, name, "", size, order, block_name, format=1)
        pos = 112
        snaps = []
        for _ in range(min(count, (len(data) - pos) // 16)):
            sid, ssize = struct.unpack_from("<QQ", data, pos)
            snaps.append((sid, ssize))
            pos += 16
        names = data[pos:pos + names_len].split(b"\0")
        for (sid, ssize), sname in zip(snaps, names, strict=False):
            img.snaps.append(RbdSnapshot(sid, sname.decode("utf-8", "replace"), ssize))
        return img

    def object_view(self, pool, name: bytes, snap, path, ns=b""):
        """How to read ``name`` at ``snap`` (None = head).

        Returns ("data", [Candidate, ...]) | ("none", None) | ("missing", reason).
        """
        heads = self.find(pool, name, CEPH_NOSNAP, path, ns)
        if snap is None:
            if heads:
                if heads[0].info is not None and heads[0].info.whiteout:
                    return "none", None
                return "data", heads
            return self._absent(pool, name, ns)
        ssrc = heads or self.find(pool, name, CEPH_SNAPDIR, path, ns)
        ss = None
        for c in ssrc:
            try:
                ss = c.store.snapset(c.key)
            except CephError:
                ss = None
            if ss is not None:
                break
        if ss is None:
            if ssrc:  # a head without a snapset: never snapshotted
                return ("data", heads) if heads and not (heads[0].info and heads[0].info.whiteout) \
                    else ("none", None)
            # no head anywhere: clones left on the given OSDs?
            clone_ids = sorted({s for st in self.stores for s in st.snaps_of(pool, name, ns)
                                if s not in (CEPH_NOSNAP, CEPH_SNAPDIR)})
            usable = [c for c in clone_ids if c >= snap]
            if usable:
                return "data", self.find(pool, name, usable[0], path, ns)
            return self._absent(pool, name, ns)
        which = ss.clone_for(snap)
        if which is None:
            return "none", None
        if which == "head":
            if not heads or (heads[0].info is not None and heads[0].info.whiteout):
                return "none", None
            return "data", heads
        clones = self.find(pool, name, which, path, ns)
        if clones:
            return "data", clones
        return "missing", f"clone {which} of {name.decode('utf-8', 'replace')} is on no given OSD"

    def object_map(self, img, snap):
        """The object states of the image's object map, or None when unusable."""
        if not img.features & FEATURE_OBJECT_MAP or img.format != 2 or img.guessed:
            return None
        if snap is None and img.flags & RBD_FLAG_OBJECT_MAP_INVALID:
            return None
        name = f"rbd_object_map.{img.id}"
        if snap is not None:
            name += f".{snap.id:016x}"
        try:
            data = self.read_object(img.pool, name.encode(), 64 << 20, img.nspace)
            if not data:
                return None
            return decode_object_map(data)
        except (CephError, UnreadableError):
            return None

    def _absent(self, pool, name, ns=b""):
        held = self.holds_pg(pool, name, ns)
        if held is False:
            info = self.pools.get(pool)
            seed = pg_of(object_hash(name, ns), info.pg_num)
            return "missing", (f"{name.decode('utf-8', 'replace')}: its placement group "
                               f"{pool}.{seed:x} is on no given OSD")
        if held and any(getattr(st, "journal_pending", None) for st in self.stores):
            info = self.pools.get(pool)
            seed = pg_of(object_hash(name, ns), info.pg_num)
            holders = [st for st in self.stores if (pool, seed) in st.collections]
            if holders and all(getattr(st, "journal_pending", None) for st in holders):
                return "none", (f"{name.decode('utf-8', 'replace')}: its placement group "
                                f"{pool}.{seed:x} is only on {', '.join(st.name for st in holders)}, "
                                "whose FileStore journal holds unapplied transactions: the "
                                "object may have been created there")
        return "none", None

    def parent_source(self, img: RbdImage, snap: RbdSnapshot | None, path: str, depth=0):
        """(parent image snapshot Source, overlap) of a clone, or (None, 0)."""
        par = img.parent
        if par is None:
            return None, 0
        overlap = par.overlap
        if snap is not None and snap.parent_overlap is not None:
            overlap = snap.parent_overlap
        size = snap.size if snap is not None else img.size
        overlap = min(size, overlap if overlap is not None else size)
        if overlap <= 0:
            return None, 0
        where = f"parent {self.pool_name(par.pool_id)}/{par.image_id}@{par.snap_id}"
        lost_note = "ranges the clone never wrote are lost: they read EIO (zeros with --bad zero)"
        if depth >= 8:
            self.report("error", path, "rbd-parent",
                        f"{where}: more than 8 levels of clones; {lost_note}", [(0, overlap)])
            return MissingSource(overlap, f"{where}: more than 8 levels of clones",
                                 bad=self.bad, label=path), overlap
        try:
            pns = par.namespace.encode()
            names, _v1 = self.list_images(par.pool_id, pns)
            pname = next((n for n, i in names.items() if i == par.image_id), f"image-{par.image_id}")
            pimg = self.open_image_v2(par.pool_id, pname, par.image_id, pns)
            psnap = next((s for s in pimg.snaps if s.id == par.snap_id), None)
            if psnap is None:
                raise RbdError(f"snapshot {par.snap_id} of the parent is not in its header")
            src = self.image_source(pimg, psnap, f"{path} ({where})", depth + 1)
        except (CephError, UnreadableError) as e:
            self.report("error", path, "rbd-parent", f"{where}: unreadable ({e}); {lost_note}",
                        [(0, overlap)])
            return MissingSource(overlap, f"{where}: unreadable ({e})", bad=self.bad,
                                 label=path), overlap
        return src, overlap

    def image_source(self, img: RbdImage, snap: RbdSnapshot | None, path: str, depth=0):
        """The image (or snapshot) as a Source; missing objects are reported."""
        size = snap.size if snap is not None else img.size
        layout = Layout(size, img.object_size, img.stripe_unit, img.stripe_count)
        data_pool = img.data_pool if img.data_pool is not None else img.pool
        snapid = snap.id if snap is not None else None
        label = path
        report = self.report
        bad = self.bad
        parent_src, overlap = self.parent_source(img, snap, path, depth)
        prescanned = set()  # objects already reported as missing when the image was opened
        ec = self.ec_layout(data_pool)
        striped_parent = parent_src is not None and not layout.simple
        if striped_parent:
            # The parent's bytes in the ranges a striped clone never wrote are not merged
            # (the object-to-image map differs per object set): never shown as zeros.
            report("error", path, "rbd-parent-striped",
                   "a striped clone's parent data is not merged; the objects the clone never "
                   "wrote are lost: they read EIO (zeros with --bad zero)", [(0, overlap)])

        def from_parent(objno):
            """An object the clone never wrote: the parent's bytes below the overlap."""
            start = objno * img.object_size
            if striped_parent:  # conservative: the whole object, wherever its stripes land
                return MissingSource(img.object_size, "a striped clone's parent data is not "
                                     "merged", bad=bad, label=f"{label}: object {objno:#x}")
            n = min(img.object_size, overlap - start)
            if parent_src is None or n <= 0:
                return None
            return ExtentSource(img.object_size, [(0, n, parent_src, start)],
                                label=f"{label}: parent object {objno:#x}")

        def on_damage_for(objno):
            def cb(code, msg, ranges):
                out = []
                for o, n in ranges:
                    for _io, _o_off, ipos, ln in _object_to_image(layout, objno, o, n):
                        out.append((ipos, ln))
                report("error", path, code, msg, out)
            return cb

        def resolve(objno):
            name = img.object_name(objno)
            kind, val = self.object_view(data_pool, name, snapid, path, img.nspace)
            slot = img.object_size
            if kind == "none":
                if val and objno not in prescanned:
                    report("error", path, "possibly-stale", f"object {objno:#x}: {val}",
                           layout.object_ranges(objno))
                return from_parent(objno)
            if kind == "missing":
                if objno not in prescanned:  # (those are in the image's missing-objects entry)
                    report("error", path, "missing-object", f"object {objno:#x}: {val}",
                           layout.object_ranges(objno))
                return MissingSource(slot, val, bad=bad, label=f"{label}: object {objno:#x}")
            cb = on_damage_for(objno)
            if ec is not None:
                return self._ec_object(ec, val, slot, name, path, label, objno, cb, layout)
            srcs = []
            for c in val:
                if c.version != val[0].version:
                    break
                try:
                    srcs.append(c.store.object_source(c.key, label=f"{c.store.name}:{name.decode()}",
                                                      on_damage=cb))
                except CephError as e:
                    report("error", path, "bad-onode",
                           f"{c.store.name}: onode of {name.decode()}: {e}",
                           layout.object_ranges(objno))
            if not srcs:
                return MissingSource(slot, "no readable onode", bad=bad,
                                     label=f"{label}: object {objno:#x}")
            stale = [c.store.name for c in val if c.version == val[0].version
                     and getattr(c.store, "journal_pending", None)]
            if stale and len(stale) == len(srcs):
                report("error", path, "possibly-stale",
                       f"object {objno:#x} ({name.decode()}) is only on {', '.join(stale)}, whose "
                       "FileStore journal holds unapplied transactions: its bytes may be older "
                       "than the cluster's", layout.object_ranges(objno))
            inner = ReplicaSource(srcs, name.decode(), cb, bad)
            return _PaddedSource(inner, slot, name.decode())

        omap_states = self.object_map(img, snap)
        if omap_states is not None:
            inner_resolve = resolve

            def resolve(objno):  # noqa: F811 - the object map knows unwritten objects
                if objno < len(omap_states) and omap_states[objno] == OBJECT_NONEXISTENT:
                    name = img.object_name(objno)
                    kind, _val = self.object_view(data_pool, name, snapid, path, img.nspace)
                    if kind == "missing":
                        return from_parent(objno)
                return inner_resolve(objno)

        src = RbdImageSource(layout, resolve, label=label)
        # Report objects of lost placement groups now, from the index alone (no onode
        # is decoded: cheap for images of millions of objects).  A missing *clone* of a
        # present head is found, and reported, when its object is first read.
        width = 12 if img.format == 1 else 16
        prefix = img.object_name(0)[:-(width + 1)]
        present = self.data_objnos(data_pool, img.nspace, prefix, width)
        missing, stale_absent = [], []
        for objno in range(0 if self.pool_complete(data_pool) else layout.num_objects()):
            if objno in present:
                continue
            if omap_states is not None and objno < len(omap_states) \
                    and omap_states[objno] == OBJECT_NONEXISTENT:
                continue  # the object map says it was never written
            kind, val = self._absent(data_pool, img.object_name(objno), img.nspace)
            if kind == "missing":
                missing.append((objno, val))
                prescanned.add(objno)
            elif val:  # absent from OSDs that may not have applied its creation
                stale_absent.append((objno, val))
                prescanned.add(objno)
        if ec is not None and snapid is None:
            self._ec_prescan(ec, data_pool, img, layout, present, path)
        if stale_absent:
            report("error", path, "possibly-stale",
                   f"{len(stale_absent)} objects absent from OSDs with unapplied FileStore "
                   f"journals may exist in the cluster (read as "
                   f"{'the parent / zeros' if img.parent else 'zeros'}); first: "
                   f"{stale_absent[0][1]}",
                   [r for objno, _ in stale_absent for r in layout.object_ranges(objno)])
        if missing:
            ranges = [r for objno, _ in missing for r in layout.object_ranges(objno)]
            what = "zero-filled" if bad == BAD_ZERO else "unreadable (EIO)"
            report("error", path, "missing-objects",
                   f"{len(missing)} of {layout.num_objects()} objects are on no given OSD "
                   f"({what}); first: {missing[0][1]}", ranges)
        return src

    # -- erasure-coded data pools (ec.py) -----------------------------------------------
    def _ec_object(self, ec, val, slot, name, path, label, objno, cb, layout):
        """An object of an EC data pool from its shards (the newest version's)."""
        newest = [c for c in val if c.version == val[0].version]
        shards = {}
        sizes = []
        oname = name.decode("utf-8", "replace")

        def shard_cb(shard):
            def f(code, msg, ranges):
                out = [r for o, n in ranges for r in ec.object_ranges_of_shard(shard, o, n)]
                cb(code, f"shard {shard}: {msg}", out)
            return f

        for c in newest:
            if not 0 <= c.oid.shard < ec.k + ec.m:
                continue
            try:
                src = c.store.object_source(c.key, label=f"{c.store.name}:{oname}(s{c.oid.shard})",
                                            on_damage=shard_cb(c.oid.shard))
            except CephError as e:
                self.report("error", path, "bad-onode",
                            f"{c.store.name}: onode of {oname} shard {c.oid.shard}: {e}",
                            layout.object_ranges(objno))
                continue
            shards.setdefault(c.oid.shard, []).append(src)
            sizes.append(src.size)
        if not shards:
            return MissingSource(slot, "no readable shard onode", bad=self.bad,
                                 label=f"{label}: object {objno:#x}")
        info = newest[0].info
        size = info.size if info is not None else max(sizes) * ec.k
        if info is None:
            self.report("warning", path, "ec-size-guessed",
                        f"{oname}: no object_info on its shards; size taken from the shards")

        def on_rebuild(shard):
            self.report("info", path, "ec-rebuilt",
                        f"{oname}: data shard {shard} is on no given OSD (or unreadable); "
                        f"rebuilt from the other shards ({ec.plugin} {ec.technique} "
                        f"k={ec.k} m={ec.m})", layout.object_ranges(objno), outcome="repaired")

        src = EcObjectSource(ec, shards, min(size, slot), label=f"{label}: {oname}",
                             on_rebuild=on_rebuild)
        inner = ReplicaSource([src], oname, cb, self.bad)
        return _PaddedSource(inner, slot, oname)

    def _ec_prescan(self, ec, pool, img, layout, present, path):
        """Objects whose shards on the given OSDs are too few to read: one report naming
        the image ranges of the data chunks that cannot be had (the stripe units of the
        data shards that are there still read)."""
        lost, ranges = [], []
        for objno in sorted(present):
            cands = self.find(pool, img.object_name(objno), ns=img.nspace)
            if not cands:
                continue
            have = {c.oid.shard for c in cands if c.version == cands[0].version}
            gone = [i for i in range(ec.k) if i not in have]
            if not gone or (len(gone) == 1 and ec.can_rebuild and ec.k in have):
                continue
            info = cands[0].info
            size = min(info.size if info is not None else img.object_size, img.object_size)
            lost.append((objno, sorted(have)))
            if len(ranges) > self.MAX_EC_RANGES:
                continue
            shard_len = -(-size // ec.stripe_width) * ec.stripe_unit
            for i in gone:
                for o, n in ec.object_ranges_of_shard(i, 0, shard_len):
                    n = min(n, size - o)
                    if n > 0:
                        ranges.extend((p, ln) for _x, _y, p, ln in _object_to_image(layout, objno, o, n))
        if lost:
            if len(ranges) > self.MAX_EC_RANGES:  # bounded report: whole objects
                ranges = [r for objno, _ in lost for r in layout.object_ranges(objno)]
            what = "zero-filled" if self.bad == BAD_ZERO else "unreadable (EIO)"
            self.report("error", path, "ec-shards-missing",
                        f"{len(lost)} objects have too few shards on the given OSDs to be decoded "
                        f"({ec.plugin} {ec.technique} k={ec.k} m={ec.m}): the stripe units of "
                        f"their lost data shards are {what}; first: object {lost[0][0]:#x} "
                        f"has shards {lost[0][1]}", ranges)


def object_hash(name: bytes, ns: bytes = b"") -> int:
    """``pg_pool_t::hash_key``: the rjenkins hash of the name, or of ns + 0x1f + name."""
    return str_hash_rjenkins(ns + b"\x1f" + name if ns else name)


def _object_to_image(layout, objno, o_off, length):
    """Image pieces of an object range (inverse of Layout.map)."""
    if layout.simple:
        yield objno, o_off, objno * layout.object_size + o_off, length
        return
    su, sc, spo = layout.su, layout.sc, layout.stripes_per_object
    objectsetno, stripepos = divmod(objno, sc)
    pos, end = o_off, o_off + length
    while pos < end:
        i, b_off = divmod(pos, su)
        n = min(su - b_off, end - pos)
        stripeno = objectsetno * spo + i
        blockno = stripeno * sc + stripepos
        yield objno, pos, blockno * su + b_off, n
        pos += n


__all__ = ["Cluster", "RbdImage", "RbdSnapshot", "Layout", "RbdImageSource", "RbdError",
           "BAD_EIO", "BAD_ZERO", "DATA"]
