"""ZPL layer on hand-built object sets: every kind of broken object is a damage entry.

These objects are built here (the real fixtures have no broken ZPL objects);
the layouts follow zfs_znode.h / sa_impl.h / zap_impl.h.  The real-pool
ground truth is in test_zfs_zpl.py.
"""

from __future__ import annotations

import os
import stat
import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backends.zfs import sa, zap, zpl
from backends.zfs.errors import ZfsError
from pvfs.discover import Context
from pvfs.errors import FormatError, UnreadableError
from pvfs.nodes import Dir, File, Special, Symlink, walk


# --------------------------------------------------------------------------- builders
class FakeDnode:
    def __init__(self, objset, objnum, bonustype=0, bonus=b"", data=b"", bs=512, spill=None,
                 unreadable=False):
        self.objset, self.objnum = objset, objnum
        self.type = 19
        self.bonustype, self.bonus, self.spill = bonustype, bonus, spill
        self.data = data
        self.datablksz = bs
        self.maxblkid = max(0, (len(data) + bs - 1) // bs - 1)
        self.size = (self.maxblkid + 1) * bs
        self.nlevels = 1
        self.extra_slots = 0
        self.unreadable = unreadable
        if bonustype == sa.DMU_OT_ZNODE and len(bonus) >= 80 and \
                stat.S_ISDIR(struct.unpack_from("<Q", bonus, 72)[0]):
            self.type = 20

    def read(self, offset, length, bad=None):
        if self.unreadable:
            raise UnreadableError("block unreadable", [(offset, length)])
        return self.data[offset:offset + length].ljust(min(length, max(0, self.size - offset)),
                                                        b"\0")

    def block_status(self, offset=0, length=None):
        length = self.size - offset if length is None else length
        return [(offset, length, "data")]


class FakeObjSet:
    name = "pool/fs"

    @property
    def nobjects(self):
        return max(self.objects, default=0) + 1

    def __init__(self):
        self.objects = {}
        self.pool = type("P", (), {"ctx": None})()

    def add(self, objnum, **kw):
        self.objects[objnum] = FakeDnode(self, objnum, **kw)

    def dnode(self, objnum):
        if objnum not in self.objects:
            raise ZfsError(f"{self.name}: object {objnum} is free")
        return self.objects[objnum]


def microzap(entries: dict, bs=512) -> bytes:
    blk = bytearray(bs)
    struct.pack_into("<QQQ", blk, 0, zap.ZBT_MICRO, 1, 0)
    for i, (k, v) in enumerate(entries.items()):
        off = 64 * (i + 1)
        struct.pack_into("<QIH", blk, off, v, 0, 0)
        blk[off + 14:off + 14 + len(k)] = k.encode()
    return bytes(blk)


def dirent(obj, mode):
    return obj | ((stat.S_IFMT(mode) >> 12) << 60)


def znode(mode, size=0, links=1, uid=1000, gid=100, mtime=1_600_000_000, rdev=0, xattr=0,
          extra=b""):
    b = bytearray(264)
    for i in range(4):
        struct.pack_into("<QQ", b, 16 * i, mtime + i, 500)
    struct.pack_into("<QQQQQQQQQQ", b, 64, 7, mode, size, 3, links, xattr, rdev, 0, uid, gid)
    return bytes(b) + extra


def build_fs(entries, root_extra=None):
    """Master node 1, root dir 3; ``entries``: name -> (objnum, znode kwargs, data)."""
    os_ = FakeObjSet()
    os_.add(1, data=microzap({"VERSION": 4, "ROOT": 3, "DELETE_QUEUE": 2}))
    names = {}
    for name, (obj, zkw, data) in entries.items():
        names[name] = dirent(obj, zkw["mode"])
        if obj not in os_.objects:
            os_.add(obj, bonustype=sa.DMU_OT_ZNODE, bonus=znode(**zkw), data=data,
                    bs=max(512, len(data) or 512))
    names.update(root_extra or {})
    os_.add(3, bonustype=sa.DMU_OT_ZNODE, bonus=znode(stat.S_IFDIR | 0o750, links=2),
            data=microzap(names, 1024), bs=1024)
    return os_


def run(os_):
    ctx = Context()
    d = Dir()
    zpl.build_tree(os_, d, ctx, "storage/zfs/pool/fs", snapshots=[])
    nodes = dict(walk(d))
    return d, nodes, ctx


# --------------------------------------------------------------------------- legacy znodes
def test_every_object_kind_from_legacy_znodes():
    target_long = b"x/" * 100
    os_ = build_fs({
        "file": (10, dict(mode=stat.S_IFREG | 0o640, size=5, links=2), b"hello"),
        "hard": (10, dict(mode=stat.S_IFREG | 0o640, size=5, links=2), b""),
        "short": (11, dict(mode=stat.S_IFLNK | 0o777, size=6, extra=b"target"), b""),
        "long": (12, dict(mode=stat.S_IFLNK | 0o777, size=len(target_long)), target_long),
        "fifo": (13, dict(mode=stat.S_IFIFO | 0o600), b""),
        "null": (14, dict(mode=stat.S_IFCHR | 0o666, rdev=(1 << 20) | 3), b""),  # Linux dev_t
        "sda": (15, dict(mode=stat.S_IFBLK | 0o660, rdev=(8 << 32) | 1), b""),  # Solaris
    })
    d, nodes, ctx = run(os_)
    assert (d.mode & 0o7777, d.nlink) == (0o750, 2)
    f = nodes["file"]
    assert isinstance(f, File) and f.source.read(0, 5) == b"hello" and f.size == 5
    assert nodes["hard"] is f and f.nlink == 2
    assert (f.mode & 0o7777, f.uid, f.gid, f.mtime) == (0o640, 1000, 100, 1_600_000_001.0000005)
    assert nodes["short"].target == b"target" and nodes["long"].target == target_long
    assert stat.S_ISFIFO(nodes["fifo"].mode)
    assert (os.major(nodes["null"].rdev), os.minor(nodes["null"].rdev)) == (1, 3)
    assert (os.major(nodes["sda"].rdev), os.minor(nodes["sda"].rdev)) == (8, 1)
    assert isinstance(nodes["sda"], Special) and stat.S_ISBLK(nodes["sda"].mode)
    assert not list(ctx.report)
    assert sorted(d.children()) == [".zfs", "fifo", "file", "hard", "long", "null", "sda", "short"]


def test_big_endian_znode():
    b = bytearray(264)
    struct.pack_into(">QQ", b, 16, 1234, 0)
    struct.pack_into(">QQQ", b, 72, stat.S_IFREG | 0o600, 42, 3)
    struct.pack_into(">QQ", b, 128, 7, 8)
    zn = sa.parse_znode_phys(bytes(b))
    assert (zn.order, zn.mode, zn.size, zn.uid, zn.gid, zn.mtime) == (
        ">", stat.S_IFREG | 0o600, 42, 7, 8, 1234.0)


def test_rdev_encodings():
    assert sa.rdev_split(0x700) == (7, 0)  # zfs-fuse (glibc dev_t), fxmirror special/loop0
    assert sa.rdev_split((1 << 20) | 3) == (1, 3)  # Linux kernel dev_t
    assert sa.rdev_split((136 << 32) | 5) == (136, 5)  # Solaris expldev


# --------------------------------------------------------------------------- damage
def test_broken_objects_are_damage_entries():
    os_ = build_fs({
        "good": (10, dict(mode=stat.S_IFREG | 0o644, size=2), b"ok"),
        "door": (11, dict(mode=0o150644), b""),  # S_IFDOOR: not a Linux type
        "sub": (12, dict(mode=stat.S_IFDIR | 0o755, links=2), b""),
    }, root_extra={"dangling": dirent(99, stat.S_IFREG), "loop": dirent(3, stat.S_IFDIR),
                   "badbonus": dirent(20, stat.S_IFREG), "nobonus": dirent(21, stat.S_IFREG),
                   "unread": dirent(22, stat.S_IFDIR)})
    os_.objects[12].data = b"not a zap".ljust(512, b"\0")  # directory with garbage contents
    os_.add(20, bonustype=sa.DMU_OT_ZNODE, bonus=b"short")
    os_.add(21, bonustype=99, bonus=b"\0" * 300)
    os_.add(22, bonustype=sa.DMU_OT_ZNODE, bonus=znode(stat.S_IFDIR | 0o755), data=bytes(512),
            unreadable=True)
    d, nodes, ctx = run(os_)
    assert set(d.children()) == {".zfs", "good", "sub", "unread"}
    codes = {(e.path.rsplit("/", 1)[-1], e.code) for e in ctx.report}
    assert ("dangling", "bad-object") in codes
    assert ("loop", "dir-loop") in codes
    assert ("door", "unknown-type") in codes
    assert ("badbonus", "bad-object") in codes
    assert ("nobonus", "bad-object") in codes
    assert ("sub", "bad-dir") in codes
    assert ("unread", "unreadable-dir") in codes
    assert all(e.layer == "zfs" and e.path.startswith("storage/zfs/pool/fs/") for e in ctx.report)
    msgs = " ".join(e.message for e in ctx.report)
    assert "object 99 is free" in msgs and "bonus type 99" in msgs


def test_broken_master_node_raises_one_error():
    os_ = FakeObjSet()
    os_.add(1, data=microzap({"VERSION": 4}))
    with pytest.raises(FormatError, match="no ROOT entry"):
        zpl.build_tree(os_, Dir(), Context(), "x")
    os_.add(1, data=microzap({"ROOT": 5}))
    os_.add(5, bonustype=sa.DMU_OT_ZNODE, bonus=znode(stat.S_IFREG | 0o644))
    with pytest.raises(FormatError, match="root object 5 is not a directory"):
        zpl.build_tree(os_, Dir(), Context(), "x")


def test_existing_names_are_kept_and_snapshots_are_lazy():
    os_ = build_fs({"child": (10, dict(mode=stat.S_IFDIR | 0o755, links=2), b"")})
    os_.objects[10].data = microzap({})
    d = Dir()
    marker = Dir()
    d.add("child", marker)  # a child dataset mounted here
    calls = []

    def loader():
        calls.append(1)
        return build_fs({"old": (10, dict(mode=stat.S_IFREG | 0o644, size=1), b"x")})

    ctx = Context()
    zpl.build_tree(os_, d, ctx, "p", snapshots=[("s1", loader), ("bad", lambda: 1 / 0)])
    assert d.get("child") is marker
    snapdir = d.get(".zfs").get("snapshot")
    assert not calls
    assert snapdir.get("s1").get("old").source.read(0, 1) == b"x" and calls == [1]
    with pytest.raises(ZeroDivisionError):
        snapdir.get("bad").children()  # not a FormatError: a bug, not damage


# --------------------------------------------------------------------------- system attributes
def _sa_registry_objects(os_, layouts):
    """SA master 30 -> registry 31 (micro ZAP), layouts 32 (fat ZAP of uint16 arrays)."""
    from test_zfs_zap import build_fat_zap

    reg = {}
    for num, (name, length) in enumerate(sa.LEGACY_ATTRS):
        reg[name] = num | (length << 24)
    reg["ZPL_SYMLINK"] = 17
    reg["ZPL_DXATTR"] = 20
    os_.add(30, data=microzap({"REGISTRY": 31, "LAYOUTS": 32}))
    os_.add(31, data=microzap(reg, 2048), bs=2048)
    lz = build_fat_zap({str(k): v for k, v in layouts.items()}, bs=4096, prefix_bits=0)
    os_.objects[32] = lz
    lz.objset, lz.objnum = os_, 32


def sa_bonus(layout, attrs, var_lengths=()):
    hdrsize = (6 + 2 * len(var_lengths) + 7) & ~7
    b = bytearray(struct.pack("<IH", sa.SA_MAGIC, layout | ((hdrsize >> 3) << 10)))
    for n in var_lengths:
        b += struct.pack("<H", n)
    b = b.ljust(hdrsize, b"\0")
    for a in attrs:
        b += a + bytes(-len(a) % 8)
    return bytes(b)


def xdr_nvlist(pairs: dict) -> bytes:
    """A packed nvlist as zfs_sa_set_xattr writes it (NV_ENCODE_XDR, byte arrays)."""
    def s(x):
        return struct.pack(">I", len(x)) + x + bytes(-len(x) % 4)
    out = b"\x01\x01\0\0" + struct.pack(">II", 0, 1)
    for k, v in pairs.items():
        body = s(k.encode()) + struct.pack(">II", 10, len(v)) + v + bytes(-len(v) % 4)
        out += struct.pack(">II", 8 + len(body), 8 + len(body) + 8) + body
    return out + struct.pack(">II", 0, 0)


def _u64(*v):
    return struct.pack(f"<{len(v)}Q", *v)


def test_system_attributes_bonus_spill_symlink_xattrs():
    os_ = FakeObjSet()
    os_.add(1, data=microzap({"VERSION": 5, "ROOT": 3, "SA_ATTRS": 30}))
    # layout 2: MODE SIZE UID GID MTIME LINKS SYMLINK(var); 3: + DXATTR(var); 4: DXATTR only
    _sa_registry_objects(os_, {2: [5, 6, 12, 13, 1, 8, 17], 3: [5, 6, 12, 13, 1, 8, 20],
                               4: [20]})
    nv = xdr_nvlist({"user.small": b"v", "trusted.t": b"t" * 10, "solaris": b"s"})

    def base(mode, size, links=1):
        return [_u64(mode), _u64(size), _u64(5), _u64(6), _u64(1_700_000_000, 7), _u64(links)]

    os_.add(3, bonustype=sa.DMU_OT_SA, bonus=sa_bonus(2, base(stat.S_IFDIR | 0o755, 3, 2) +
                                                        [b""], [0]),
            data=microzap({"lnk": dirent(10, stat.S_IFLNK), "f": dirent(11, stat.S_IFREG)}))
    os_.add(10, bonustype=sa.DMU_OT_SA,
            bonus=sa_bonus(2, base(stat.S_IFLNK | 0o777, 9) + [b"../target"], [9]))
    # f: DXATTR in the spill block (its own header and layout 4)
    os_.add(11, bonustype=sa.DMU_OT_SA, data=b"abc",
            bonus=sa_bonus(2, base(stat.S_IFREG | 0o600, 3) + [b""], [0]),
            spill=sa_bonus(4, [nv], [len(nv)]))
    d, nodes, ctx = run(os_)
    assert not list(ctx.report), [e.line() for e in ctx.report]
    assert nodes["lnk"].target == b"../target"
    f = nodes["f"]
    assert f.source.read(0, 3) == b"abc" and (f.uid, f.gid) == (5, 6)
    assert f.mtime == pytest.approx(1_700_000_000.000000007)
    assert f.xattrs == {b"user.small": b"v", b"trusted.t": b"t" * 10, b"user.solaris": b"s"}


@pytest.mark.parametrize("bonus,msg", [
    (b"\0" * 16, "bad sa_magic"),
    (struct.pack("<IH", sa.SA_MAGIC, 9 | (1 << 10)) + bytes(10), "unknown SA layout 9"),
    (struct.pack("<IH", sa.SA_MAGIC, 2 | (0 << 10)) + bytes(10), "SA header size 0"),
    (struct.pack("<IH", sa.SA_MAGIC, 2 | (1 << 10)) + bytes(60), "runs past"),
    (b"\x2f", "buffer of 1 bytes"),
])
def test_bad_sa_buffers(bonus, msg):
    reg = sa.SaRegistry(layouts={2: [5, 6, 12, 13, 0, 1, 2, 3]})
    with pytest.raises(sa.SaError, match=msg):
        reg.parse(bonus)


def test_sa_without_mode_is_an_error():
    reg = sa.SaRegistry(layouts={2: [6]})
    attrs, order = reg.parse(sa_bonus(2, [_u64(5)]))
    with pytest.raises(sa.SaError, match="without ZPL_MODE"):
        sa.znode_from_sa(attrs, order)


# --------------------------------------------------------------------------- fuzz
_REG = sa.SaRegistry({17: ("ZPL_SYMLINK", 0, 3), 20: ("ZPL_DXATTR", 0, 3)},
                     {2: [5, 6, 12, 13, 0, 1, 2, 3, 17, 20], 3: [20, 17]})


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=400), st.integers(0, 0xFFFF))
def test_fuzz_sa_parse(body, info):
    buf = struct.pack("<IH", sa.SA_MAGIC, info) + body
    try:
        attrs, order = _REG.parse(buf)
        sa.znode_from_sa(attrs, order)
    except sa.SaError:
        pass


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(min_size=0, max_size=400))
def test_fuzz_znode_phys(bonus):
    try:
        zn = sa.parse_znode_phys(bonus)
        assert zn.legacy
    except sa.SaError:
        pass


_FS = build_fs({
    "file": (10, dict(mode=stat.S_IFREG | 0o640, size=5), b"hello"),
    "sub": (12, dict(mode=stat.S_IFDIR | 0o755, links=2), b""),
    "lnk": (11, dict(mode=stat.S_IFLNK | 0o777, size=6, extra=b"target"), b""),
})
_FS.objects[12].data = microzap({"inner": dirent(10, stat.S_IFREG)})


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from([3, 10, 11, 12]), st.sampled_from(["bonus", "data"]),
       st.lists(st.tuples(st.integers(0, 1023), st.integers(0, 255)), max_size=20))
def test_fuzz_tree_mutations(obj, field, muts):
    os_ = build_fs({})
    os_.objects = {k: FakeDnode(os_, k, v.bonustype, v.bonus, v.data, v.datablksz)
                   for k, v in _FS.objects.items()}
    dn = os_.objects[obj]
    buf = bytearray(getattr(dn, field))
    for pos, val in muts:
        if buf:
            buf[pos % len(buf)] = val
    setattr(dn, field, bytes(buf))
    t = time.monotonic()
    try:
        d, nodes, ctx = run(os_)
    except (FormatError, UnreadableError):
        return  # only the master node or root can fail the whole file system
    for n in nodes.values():
        if isinstance(n, File):
            try:
                n.source.read(max(0, n.size - 4096), 8192)  # the tail of a hostile size
            except UnreadableError:
                pass
        elif isinstance(n, Symlink):
            assert isinstance(n.target, bytes)
    assert time.monotonic() - t < 2


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(min_size=264, max_size=264), st.sampled_from("<>"))
def test_znode_fast_path_agrees_with_the_construct_declaration(raw, order):
    from pvfs.structs import parse

    z = parse(sa.ZNODE_PHYS[order], raw)
    w = sa._ZNODE_FAST[order].unpack_from(raw)
    assert (z.zp_mode, z.zp_size, z.zp_uid, z.zp_gid, z.zp_links, z.zp_xattr, z.zp_rdev,
            list(z.zp_mtime)) == (w[9], w[10], w[16], w[17], w[12], w[13], w[14], list(w[2:4]))


def test_lost_and_found_shows_what_a_damaged_directory_hides():
    os_ = build_fs({
        "ok": (10, dict(mode=stat.S_IFREG | 0o644, size=2), b"ok"),
        "broken": (12, dict(mode=stat.S_IFDIR | 0o755, links=3), b""),
    })
    os_.objects[12].unreadable = True  # its ZAP block cannot be read
    # children of the broken directory: a file and a subdirectory with a file of its own
    os_.add(20, bonustype=sa.DMU_OT_ZNODE, bonus=znode(stat.S_IFREG | 0o600, size=4),
            data=b"lost")
    os_.add(21, bonustype=sa.DMU_OT_ZNODE, bonus=znode(stat.S_IFDIR | 0o700, links=2),
            data=microzap({"deeper": dirent(22, stat.S_IFREG)}))
    os_.add(22, bonustype=sa.DMU_OT_ZNODE, bonus=znode(stat.S_IFREG | 0o600, size=3),
            data=b"sub")
    # an xattr directory and its file are not orphans (ZFS_XATTR in zp_flags / parent)
    xb = bytearray(znode(stat.S_IFDIR | 0o755))
    struct.pack_into("<Q", xb, 120, 1)
    os_.add(23, bonustype=sa.DMU_OT_ZNODE, bonus=bytes(xb), data=microzap({}))
    fb = bytearray(znode(stat.S_IFREG | 0o644, size=1))
    struct.pack_into("<Q", fb, 88, 23)
    os_.add(24, bonustype=sa.DMU_OT_ZNODE, bonus=bytes(fb), data=b"x")
    ctx = Context()
    d = Dir()
    zpl.build_tree(os_, d, ctx, "storage/zfs/pool/fs", snapshots=[])
    lf = d.get(".zfs").get("lost+found")
    assert sorted(lf.children()) == ["20", "21"]
    assert lf.get("20").source.read(0, 4) == b"lost"
    assert lf.get("21").get("deeper").source.read(0, 3) == b"sub"
    assert any(e.code == "orphans" and e.path.endswith(".zfs/lost+found") for e in ctx.report)
    assert any(e.code == "unreadable-dir" for e in ctx.report) or d.get("broken") is not None


def test_lost_and_found_is_empty_on_an_intact_tree():
    os_ = build_fs({"a": (10, dict(mode=stat.S_IFREG | 0o644, size=1), b"a"),
                    "b": (11, dict(mode=stat.S_IFDIR | 0o755, links=2), b"")})
    os_.objects[11].data = microzap({"c": dirent(12, stat.S_IFREG)})
    os_.add(12, bonustype=sa.DMU_OT_ZNODE, bonus=znode(stat.S_IFREG | 0o644, size=1), data=b"c")
    d, nodes, ctx = run(os_)
    assert d.get(".zfs").get("lost+found").children() == {}
    assert not [e for e in ctx.report if e.code == "orphans"]


def test_apply_root_metadata_without_listing():
    os_ = build_fs({"a": (10, dict(mode=stat.S_IFREG | 0o644, size=1), b"a")})
    d = Dir(loader=lambda d: pytest.fail("must not list"))
    assert zpl.apply_root_metadata(os_, d)
    assert (d.mode, d.uid, d.gid, d.nlink) == (stat.S_IFDIR | 0o750, 1000, 100, 2)
    assert d.mtime == pytest.approx(1_600_000_001.0000005)
    broken = FakeObjSet()
    broken.add(1, data=b"garbage".ljust(512, b"\0"))
    d2 = Dir()
    assert not zpl.apply_root_metadata(broken, d2) and d2.mode == stat.S_IFDIR | 0o555


def test_directory_xattrs_load_on_first_use():
    os_ = build_fs({"f": (10, dict(mode=stat.S_IFREG | 0o644, size=1, xattr=30), b"f")})
    xd = bytearray(znode(stat.S_IFDIR | 0o755))
    struct.pack_into("<Q", xd, 120, 1)  # ZFS_XATTR
    os_.add(30, bonustype=sa.DMU_OT_ZNODE, bonus=bytes(xd),
            data=microzap({"user.a": dirent(31, stat.S_IFREG), "plain": dirent(32, stat.S_IFREG),
                           "user.gone": dirent(33, stat.S_IFREG)}))
    os_.add(31, bonustype=sa.DMU_OT_ZNODE, bonus=znode(stat.S_IFREG | 0o644, size=3), data=b"aaa")
    os_.add(32, bonustype=sa.DMU_OT_ZNODE, bonus=znode(stat.S_IFREG | 0o644, size=1), data=b"p")
    reads = []
    orig = os_.dnode

    def counting(n):
        reads.append(n)
        return orig(n)

    os_.dnode = counting
    ctx = Context()
    d = Dir()
    zpl.build_tree(os_, d, ctx, "p", snapshots=None)
    f = d.get("f")
    assert 30 not in reads and not list(ctx.report)
    assert "user.a" not in reads and f.xattrs[b"user.a"] == b"aaa"
    assert dict(f.xattrs) == {b"user.a": b"aaa", b"user.plain": b"p"}
    with pytest.raises(KeyError):
        f.xattrs[b"user.nope"]
    assert [e.code for e in ctx.report] == ["bad-xattr"]  # user.gone: object 33 is free
    assert reads.count(30) == 1


@pytest.mark.parametrize("master", ["garbage", "no-root", "unreadable"])
def test_lost_master_node_root_found_by_scanning(master):
    os_ = build_fs({"f": (10, dict(mode=stat.S_IFREG | 0o644, size=2), b"ok"),
                    "sub": (11, dict(mode=stat.S_IFDIR | 0o755, links=2), b"")})
    os_.objects[11].data = microzap({})
    root = bytearray(os_.objects[3].bonus)
    struct.pack_into("<Q", root, 88, 3)  # zp_parent of the root is itself
    os_.objects[3].bonus = bytes(root)
    if master == "garbage":
        os_.objects[1].data = b"\x01" * 512
    elif master == "no-root":
        os_.objects[1].data = microzap({"VERSION": 4})
    else:
        os_.objects[1].unreadable = True
    ctx = Context()
    d = Dir()
    zpl.build_tree(os_, d, ctx, "p", snapshots=None)
    assert d.get("f").source.read(0, 2) == b"ok" and isinstance(d.get("sub"), Dir)
    assert [e.code for e in ctx.report if e.severity == "error"] == ["master-node"]
    assert "object 3" in [e for e in ctx.report if e.code == "master-node"][0].message


def test_no_root_anywhere_is_one_error():
    os_ = FakeObjSet()
    os_.add(1, data=b"\x01" * 512)
    os_.add(5, bonustype=sa.DMU_OT_ZNODE, bonus=znode(stat.S_IFREG | 0o644))
    with pytest.raises(sa.SaError, match="no root directory found"):
        zpl.build_tree(os_, Dir(), Context(), "x")


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=400), st.integers(0, 0xFFFF), st.sampled_from(["bonus", "spill"]))
def test_fuzz_sa_layout_guessing(body, info, what):
    reg = sa.SaRegistry.standard("test")
    buf = struct.pack("<IH", sa.SA_MAGIC, info) + body
    t = time.monotonic()
    try:
        attrs, order = reg.parse(buf, what)
        sa.znode_from_sa(attrs, order)
    except sa.SaError:
        pass
    assert time.monotonic() - t < 1
