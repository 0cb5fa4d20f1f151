"""RADOS/OSD structures kept in object attributes and maps.

References:
- ceph/src/osd/osd_types.cc: ``object_info_t::encode`` (v17: hobject_t soid,
  object_locator_t, u32 category, eversion_t version / prior_version (le64
  version + le32 epoch), osd_reqid_t last_reqid, u64 size, utime_t mtime,
  osd_reqid_t wrlock_by (head) or vector<snapid_t> legacy_snaps (clone), u64
  truncate_seq, u64 truncate_size, u8 is_lost, map old_watchers, eversion_t
  user_eversion, u8 uses_tmap, map watchers, u32 flags, utime_t local_mtime,
  u32 data_digest, u32 omap_digest, ...), ``SnapSet::encode`` (v3: seq,
  head_exists, snaps, clones, clone_overlap, clone_size, clone_snaps),
  ``pg_pool_t::encode`` (type, size, crush_rule, object_hash, pg_num,
  pgp_num ...).
- ceph/src/common/hobject.cc: ``hobject_t::encode`` (v4: key, oid, snap, hash,
  max, nspace, pool).
- ceph/src/osd/OSDMap.cc: ``OSDMap::encode`` (an outer ENCODE_START(8, 7)
  around the client-usable part: fsid, epoch, created, modified, pools,
  pool_name, pool_max ...).
- ceph/src/cls/rbd/cls_rbd.h: ``cls_rbd_snap::encode`` (id, name, image_size,
  features, parent, protection_status, flags, ...).
- ceph/src/common/ceph_hash.cc: ``ceph_str_hash_rjenkins``;
  ceph/src/include/rados.h: ``ceph_stable_mod``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .denc import Reader
from .errors import CephError


class OsdTypeError(CephError):
    """An object_info_t, SnapSet, OSDMap or RBD structure does not decode."""


def _r(data):
    return Reader(data, error=OsdTypeError)


# object_info_t flags (osd_types.h)
OI_FLAG_LOST = 1 << 0
OI_FLAG_WHITEOUT = 1 << 1
OI_FLAG_DIRTY = 1 << 2
OI_FLAG_OMAP = 1 << 3
OI_FLAG_DATA_DIGEST = 1 << 4
OI_FLAG_OMAP_DIGEST = 1 << 5
OI_FLAG_CACHE_PIN = 1 << 6
OI_FLAG_MANIFEST = 1 << 7

CEPH_NOSNAP = 0xFFFFFFFFFFFFFFFE


def _skip_struct(r: Reader, what):
    _v, _c, end = r.start(what=what)
    r.finish(end)


def _eversion(r: Reader):
    version = r.u64()
    epoch = r.u32()
    return epoch, version


def _entity_name(r: Reader):
    return r.u8(), r.s64()


@dataclass
class ObjectInfo:
    name: bytes = b""
    nspace: bytes = b""
    snap: int = CEPH_NOSNAP
    hash: int = 0
    pool: int = -1
    version: tuple = (0, 0)  # (epoch, version)
    prior_version: tuple = (0, 0)
    size: int = 0
    mtime: tuple = (0, 0)
    user_version: int = 0
    flags: int = 0
    data_digest: int | None = None

    @property
    def whiteout(self):
        return bool(self.flags & OI_FLAG_WHITEOUT)

    @property
    def lost(self):
        return bool(self.flags & OI_FLAG_LOST)

    def version_str(self):
        return f"{self.version[0]}'{self.version[1]}"


def decode_hobject(r: Reader):
    v, _c, end = r.start(what="hobject_t")
    body = r.sub(end)
    key = body.bytes32()
    name = body.bytes32()
    snap = body.u64()
    hash_ = body.u32()
    body.u8()  # max
    nspace = body.bytes32() if v >= 2 else b""
    pool = body.s64() if v >= 3 else -1
    return key, name, snap, hash_, nspace, pool


def decode_object_info(data) -> ObjectInfo:
    """The ``_`` attribute (``OI_ATTR``) of an object."""
    r = _r(data)
    v, _c, end = r.start(what="object_info_t")
    b = r.sub(end)
    oi = ObjectInfo()
    if v < 8:
        raise OsdTypeError(f"object_info_t v{v} is too old for this reader")
    _key, oi.name, oi.snap, oi.hash, oi.nspace, oi.pool = decode_hobject(b)
    _skip_struct(b, "object_locator_t")
    b.u32()  # category
    oi.version = _eversion(b)
    oi.prior_version = _eversion(b)
    _skip_struct(b, "osd_reqid_t")
    oi.size = b.u64()
    oi.mtime = b.utime()
    if oi.snap == CEPH_NOSNAP:
        _skip_struct(b, "osd_reqid_t")  # wrlock_by
    else:
        n = b.count(8)  # legacy_snaps
        b.skip(8 * n)
    b.u64()  # truncate_seq
    b.u64()  # truncate_size
    lo = b.u8()  # is_lost (v>=3), the low byte of the flags before v13
    n = b.count(9)  # old_watchers: entity_name_t -> watch_info_t
    for _ in range(n):
        _entity_name(b)
        _skip_struct(b, "watch_info_t")
    oi.user_version = _eversion(b)[1]
    flags = lo
    if v >= 9:
        b.u8()  # uses_tmap
    if v >= 10:
        n = b.count(17)  # watchers: (cookie, entity_name_t) -> watch_info_t
        for _ in range(n):
            b.u64()
            _entity_name(b)
            _skip_struct(b, "watch_info_t")
    if v >= 13:
        flags = b.u32()
    if v >= 11:
        pass  # local_mtime etc. follow
    if v >= 14 and b.remaining() >= 8 + 8:
        b.utime()  # local_mtime
        dd = b.u32()
        b.u32()  # omap_digest
        if flags & OI_FLAG_DATA_DIGEST:
            oi.data_digest = dd
    oi.flags = flags
    return oi


@dataclass
class SnapSet:
    seq: int = 0
    clones: list = field(default_factory=list)  # ascending snap ids
    clone_overlap: dict = field(default_factory=dict)  # clone -> [(off, len)]
    clone_size: dict = field(default_factory=dict)
    clone_snaps: dict = field(default_factory=dict)  # clone -> [snaps, descending]

    def clone_for(self, snap: int):
        """``PrimaryLogPG::find_object_context``: which object serves ``snap``.

        Returns ``"head"``, a clone snap id, or None (the object did not exist
        at that snapshot).
        """
        if snap > self.seq:
            return "head"
        for c in self.clones:
            if c >= snap:
                snaps = self.clone_snaps.get(c)
                if snaps:
                    first = min(snaps)
                    if first > snap:
                        return None
                return c
        return None


def decode_snapset(data) -> SnapSet:
    """The ``snapset`` attribute of a head object."""
    r = _r(data)
    v, _c, end = r.start(what="SnapSet")
    b = r.sub(end)
    ss = SnapSet()
    ss.seq = b.u64()
    b.u8()  # head_exists
    n = b.count(8)
    b.skip(8 * n)  # snaps (legacy)
    n = b.count(8)
    ss.clones = [b.u64() for _ in range(n)]
    n = b.count(12)
    for _ in range(n):
        c = b.u64()
        m = b.count(16)
        ss.clone_overlap[c] = [(b.u64(), b.u64()) for _ in range(m)]
    n = b.count(16)
    for _ in range(n):
        c = b.u64()
        ss.clone_size[c] = b.u64()
    if v >= 3:
        n = b.count(12)
        for _ in range(n):
            c = b.u64()
            m = b.count(8)
            ss.clone_snaps[c] = [b.u64() for _ in range(m)]
    ss.clones.sort()
    return ss


# -- RBD -------------------------------------------------------------------------
@dataclass
class RbdSnap:
    id: int
    name: str
    image_size: int
    parent_overlap: int | None = None


def _optional_u64(b: Reader):
    return b.u64() if b.u8() else None


def decode_cls_rbd_snap(data) -> RbdSnap:
    """An ``snapshot_<id>`` omap value of ``rbd_header.<id>`` (v8 as Nautilus+ write it:
    id, name, image_size, le64, u8 protection_status, snapshot_namespace (versioned),
    utime timestamp, u32 child_count, optional<u64> parent_overlap)."""
    r = _r(data)
    v, _c, end = r.start(what="cls_rbd_snap")
    b = r.sub(end)
    sid = b.u64()
    name = b.string()
    size = b.u64()
    snap = RbdSnap(sid, name, size)
    if v >= 8:
        try:
            b.u64()
            b.u8()
            _skip_struct(b, "snapshot_namespace")
            b.utime()
            b.u32()
            snap.parent_overlap = _optional_u64(b)
        except OsdTypeError:
            pass
    return snap


@dataclass
class RbdParent:
    pool_id: int
    namespace: str
    image_id: str
    snap_id: int
    overlap: int | None


def decode_cls_rbd_parent(data) -> RbdParent:
    """The ``parent`` omap value of a cloned image's header (cls_rbd_parent v1/v2)."""
    r = _r(data)
    v, _c, end = r.start(what="cls_rbd_parent")
    b = r.sub(end)
    pool_id = b.s64()
    ns = b.string() if v >= 2 else ""
    image_id = b.string()
    snap_id = b.u64()
    overlap = b.u64() if v == 1 else _optional_u64(b)
    return RbdParent(pool_id, ns, image_id, snap_id, overlap)


def decode_trash_image_spec(data) -> str:
    """The name in an ``rbd_trash`` omap value (cls::rbd::TrashImageSpec: u8 source,
    name, deletion_time, deferment_end_time, [state])."""
    r = _r(data)
    _v, _c, end = r.start(what="TrashImageSpec")
    b = r.sub(end)
    b.u8()
    return b.string()


def decode_le_string(data) -> str:
    """A le32-length-prefixed string (``rbd_id.<name>`` data, ``rbd_directory`` values)."""
    return _r(data).string()


OBJECT_NONEXISTENT = 0
OBJECT_EXISTS = 1
OBJECT_PENDING = 2
OBJECT_EXISTS_CLEAN = 3


def decode_object_map(data) -> bytes:
    """``rbd_object_map.<id>[.<snapid>]``: a ``ceph::BitVector<2>`` (common/bit_vector.hpp):
    bufferlist header (ENCODE_START(1,1): u64 element count), the packed data (4 elements a
    byte, the first in the high bits), bufferlist footer (crcs).  Returns one state a byte."""
    r = _r(data)
    hdr = r.bytes32()
    h = _r(hdr)
    _v, _c, end = h.start(max_compat=1, what="BitVector header")
    count = h.sub(end).u64()
    nbytes = (count + 3) // 4
    if nbytes > r.remaining():
        raise OsdTypeError(f"object map: {count} elements but {r.remaining()} bytes of data")
    packed = r.take(nbytes)
    out = bytearray(count)
    for i in range(count):
        out[i] = (packed[i >> 2] >> ((3 - (i & 3)) * 2)) & 3
    return bytes(out)


# -- OSDMap pools ------------------------------------------------------------------
POOL_TYPE_REPLICATED = 1
POOL_TYPE_ERASURE = 3


@dataclass
class PoolInfo:
    id: int
    name: str | None = None
    type: int = POOL_TYPE_REPLICATED
    size: int = 0
    pg_num: int = 0
    pgp_num: int = 0
    flags: int = 0
    stripe_width: int = 0  # EC: k * stripe_unit
    erasure_code_profile: str = ""
    ec_profile: dict | None = None  # the profile's key/values (``k``, ``m``, ``plugin`` ...)

    @property
    def erasure(self):
        return self.type == POOL_TYPE_ERASURE


def _skip_string_map(b: Reader):
    for _ in range(b.count(8)):
        b.skip(b.count(1))
        b.skip(b.count(1))


def decode_pg_pool(r: Reader, pid: int) -> PoolInfo:
    """``pg_pool_t::decode`` up to ``erasure_code_profile`` (struct_v >= 14): type,
    size, crush_rule, object_hash, pg_num, pgp_num, lpg_num, lpgp_num, last_change,
    snap_seq, snap_epoch, snaps (map of versioned pool_snap_info_t), removed_snaps
    (interval_set<snapid_t>), auid, flags (u64), crash_replay_interval, min_size,
    quota_max_bytes/objects, tiers, tier_of, cache_mode, read_tier, write_tier,
    properties, hit_set_params (versioned), hit_set_period, hit_set_count,
    stripe_width, target_max_bytes/objects, 4 x u32 cache ratios/ages,
    erasure_code_profile.  A body that stops decoding after pg_num keeps what was read."""
    v, _c, end = r.start(what="pg_pool_t")
    b = r.sub(end)
    p = PoolInfo(pid)
    p.type = b.u8()
    p.size = b.u8()
    b.u8()  # crush_rule
    b.u8()  # object_hash
    p.pg_num = b.u32()
    p.pgp_num = b.u32()
    if v < 14:
        return p
    try:
        b.skip(4 + 4 + 4 + 8 + 4)  # lpg_num, lpgp_num, last_change, snap_seq, snap_epoch
        for _ in range(b.count(9)):  # snaps: snapid -> pool_snap_info_t
            b.u64()
            _skip_struct(b, "pool_snap_info_t")
        b.skip(16 * b.count(16))  # removed_snaps
        b.u64()  # auid
        p.flags = b.u64()
        b.skip(4 + 1 + 8 + 8)  # crash_replay_interval, min_size, quota_max_bytes/objects
        b.skip(8 * b.count(8))  # tiers
        b.skip(8 + 1 + 8 + 8)  # tier_of, cache_mode, read_tier, write_tier
        _skip_string_map(b)  # properties
        _skip_struct(b, "HitSet::Params")
        b.skip(4 + 4)  # hit_set_period, hit_set_count
        p.stripe_width = b.u32()
        b.skip(8 + 8 + 4 * 4)
        p.erasure_code_profile = b.string()
    except OsdTypeError:
        pass
    return p


@dataclass
class OsdMapInfo:
    fsid: str
    epoch: int
    pools: dict  # id -> PoolInfo
    ec_profiles: dict = field(default_factory=dict)  # name -> {key: value}
    ec_profiles_error: str | None = None
    #: osd id -> (exists, up, in): ``osd_state`` (CEPH_OSD_EXISTS 1, CEPH_OSD_UP 2) and
    #: ``osd_weight`` (CEPH_OSD_IN 0x10000, 0 = out) of include/rados.h; None: not decoded
    osds: dict | None = None


def _skip_entity_addrvec(c: Reader):
    """``entity_addrvec_t::encode`` (MSG_ADDR2): u8 2, vector<entity_addr_t>, each
    ``u8 1`` + a versioned body."""
    marker = c.u8()
    if marker != 2:
        raise OsdTypeError(f"entity_addrvec_t marker {marker} (legacy address encoding)")
    for _ in range(c.count(7)):
        if c.u8() != 1:
            raise OsdTypeError("entity_addr_t marker is not 1")
        _skip_struct(c, "entity_addr_t")


def _pg_t(c: Reader):
    if c.u8() != 1:
        raise OsdTypeError("pg_t version is not 1")
    c.skip(8 + 4 + 4)  # pool, seed, preferred


CEPH_OSD_EXISTS, CEPH_OSD_UP, CEPH_OSD_IN = 1, 2, 0x10000


def _decode_ec_profiles(c: Reader, cv: int, m: OsdMapInfo | None = None) -> dict:
    """The client-data fields between ``pool_max`` and ``erasure_code_profiles``
    (``OSDMap::encode``, client data v >= 5/8): flags, max_osd, osd_state, osd_weight,
    client_addrs, pg_temp, primary_temp, osd_primary_affinity, crush (a bufferlist).
    The OSDs' states go to ``m.osds``."""
    if cv < 8:
        raise OsdTypeError(f"OSDMap client data v{cv}: addresses in the legacy encoding")
    c.s32()  # pool_max
    c.u32()  # flags
    c.s32()  # max_osd
    state = [c.u32() for _ in range(c.count(4))]  # osd_state (v >= 5: uint32 each)
    weight = [c.u32() for _ in range(c.count(4))]  # osd_weight
    if m is not None:
        m.osds = {i: (bool(s & CEPH_OSD_EXISTS), bool(s & CEPH_OSD_UP),
                      i < len(weight) and weight[i] >= CEPH_OSD_IN)
                  for i, s in enumerate(state) if s & CEPH_OSD_EXISTS}
    for _ in range(c.count(5)):
        _skip_entity_addrvec(c)
    for _ in range(c.count(21)):  # pg_temp: pg_t -> vector<int32>
        _pg_t(c)
        c.skip(4 * c.count(4))
    for _ in range(c.count(21)):  # primary_temp: pg_t -> int32
        _pg_t(c)
        c.s32()
    c.skip(4 * c.count(4))  # osd_primary_affinity
    c.skip(c.count(1))  # crush
    out = {}
    for _ in range(c.count(8)):
        name = c.string()
        out[name] = c.str_map()
    return out


def decode_osdmap(data) -> OsdMapInfo:
    """The pools and pool names of a full OSDMap (``osdmap.<epoch>`` object
    in an OSD's meta collection, or ``osdmap``/``full_<epoch>`` in the mon store)."""
    import uuid

    r = _r(data)
    v, _c, end = r.start(what="OSDMap")
    b = r.sub(end)
    if v < 7:
        raise OsdTypeError(f"OSDMap v{v} (pre-Luminous) is not supported")
    _cv, _cc, cend = b.start(what="OSDMap client data")
    c = b.sub(cend)
    fsid = str(uuid.UUID(bytes=c.take(16)))
    epoch = c.u32()
    c.utime()
    c.utime()
    pools = {}
    for _ in range(c.count(14)):
        pid = c.s64()
        pools[pid] = decode_pg_pool(c, pid)
    for _ in range(c.count(12)):
        pid = c.s64()
        name = c.string()
        pools.setdefault(pid, PoolInfo(pid)).name = name
    m = OsdMapInfo(fsid, epoch, pools)
    try:
        m.ec_profiles = _decode_ec_profiles(c, _cv, m)
    except OsdTypeError as e:
        m.ec_profiles_error = str(e)
    for p in pools.values():
        if p.erasure:
            p.ec_profile = m.ec_profiles.get(p.erasure_code_profile)
    return m


# -- placement ----------------------------------------------------------------------
def _mix(a, b, c):
    M = 0xFFFFFFFF
    a = (a - b - c) & M; a ^= c >> 13
    b = (b - c - a) & M; b ^= (a << 8) & M
    c = (c - a - b) & M; c ^= b >> 13
    a = (a - b - c) & M; a ^= c >> 12
    b = (b - c - a) & M; b ^= (a << 16) & M
    c = (c - a - b) & M; c ^= b >> 5
    a = (a - b - c) & M; a ^= c >> 3
    b = (b - c - a) & M; b ^= (a << 10) & M
    c = (c - a - b) & M; c ^= b >> 15
    return a, b, c


def str_hash_rjenkins(s: bytes) -> int:
    """``ceph_str_hash_rjenkins`` (Bob Jenkins' lookup2), the object name hash."""
    M = 0xFFFFFFFF
    length = len(s)
    a = b = 0x9E3779B9
    c = 0
    i = 0
    n = length
    while n >= 12:
        a = (a + (s[i] | s[i + 1] << 8 | s[i + 2] << 16 | s[i + 3] << 24)) & M
        b = (b + (s[i + 4] | s[i + 5] << 8 | s[i + 6] << 16 | s[i + 7] << 24)) & M
        c = (c + (s[i + 8] | s[i + 9] << 8 | s[i + 10] << 16 | s[i + 11] << 24)) & M
        a, b, c = _mix(a, b, c)
        i += 12
        n -= 12
    c = (c + length) & M
    t = s[i:]
    # the switch's fall-through cases; c's lowest byte is the length
    if n >= 11: c = (c + (t[10] << 24)) & M
    if n >= 10: c = (c + (t[9] << 16)) & M
    if n >= 9: c = (c + (t[8] << 8)) & M
    if n >= 8: b = (b + (t[7] << 24)) & M
    if n >= 7: b = (b + (t[6] << 16)) & M
    if n >= 6: b = (b + (t[5] << 8)) & M
    if n >= 5: b = (b + t[4]) & M
    if n >= 4: a = (a + (t[3] << 24)) & M
    if n >= 3: a = (a + (t[2] << 16)) & M
    if n >= 2: a = (a + (t[1] << 8)) & M
    if n >= 1: a = (a + t[0]) & M
    a, b, c = _mix(a, b, c)
    return c


def stable_mod(x: int, b: int, bmask: int) -> int:
    """``ceph_stable_mod``."""
    if (x & bmask) < b:
        return x & bmask
    return x & (bmask >> 1)


def pg_of(hash_: int, pg_num: int) -> int:
    """The placement group seed of an object hash in a pool of ``pg_num`` PGs."""
    if pg_num <= 0:
        return 0
    mask = (1 << (pg_num - 1).bit_length()) - 1
    return stable_mod(hash_, pg_num, mask)
