"""Ceph part B: the RBD/RADOS logic on synthetic object stores (no BlueStore): striping,
RBD namespaces, format 1 images, snapshots through SnapSets, clone lookups, replicas of
different versions, and placement-group based loss detection.  The fixture has none of
striping, namespaces or format 1, so these are built here from the documented encodings
(cls_rbd, rbd_types.h, osd_types.cc)."""

from __future__ import annotations

import random
import struct

import numpy as np
import pytest

from backends.ceph.keys import CEPH_NOSNAP, ObjectId
from backends.ceph.osdtypes import ObjectInfo, PoolInfo, SnapSet, pg_of
from backends.ceph.rbd import Cluster, object_hash
from pvfs.errors import UnreadableError
from pvfs.source import BytesSource


class _Onode:
    def __init__(self, size):
        self.size = size
        self.attrs = {}


class FakeStore:
    """Duck-typed OsdStore holding objects in memory (all in its ``other`` index)."""

    def __init__(self, name):
        self.name = name
        self.other = {}
        self.oids = {}
        self.collections = set()
        self.ec_pools = set()
        self.data, self.omaps, self.infos, self.snapsets = {}, {}, {}, {}

    def put(self, pool, name, data=b"", ns=b"", snap=CEPH_NOSNAP, omap=None, version=(1, 1),
            snapset=None, whiteout=False):
        key = (pool, ns, name, snap)
        self.oids[key] = ObjectId(pool, object_hash(name, ns), ns, name, b"", snap)
        self.other.setdefault((pool, ns, name), {})[snap] = key
        self.data[key] = data
        self.omaps[key] = omap or {}
        self.infos[key] = ObjectInfo(name=name, snap=snap, version=version, size=len(data),
                                     flags=2 if whiteout else 0)
        self.snapsets[key] = snapset

    def lookup(self, pool, name, nspace=b"", snap=CEPH_NOSNAP):
        key = self.other.get((pool, nspace, name), {}).get(snap)
        return None if key is None else (key, self.oids[key])

    def snaps_of(self, pool, name, nspace=b""):
        return self.other.get((pool, nspace, name), {})

    def pools(self):
        return {p for p, _ns, _n in self.other}

    def other_names(self, pool, nspace=b""):
        return sorted(n for p, ns, n in self.other if p == pool and ns == nspace)

    def names_with_prefix(self, pool, prefix, nspace=b""):
        return [n for n in self.other_names(pool, nspace) if n.startswith(prefix)]

    def data_prefixes(self, pool, nspace=b""):
        return []

    def data_objnos(self, pool, nspace, prefix):
        return np.zeros(0, dtype=np.uint64)

    def object_info(self, key):
        return self.infos[key]

    def snapset(self, key):
        return self.snapsets[key]

    def omap(self, key, oid):
        return self.omaps[key]

    def onode(self, key):
        return _Onode(len(self.data[key]))

    def read_small(self, key, limit=1 << 30):
        return self.data[key]

    def object_source(self, key, size=None, label=None, on_damage=None):
        return BytesSource(self.data[key], label=label or "obj")


def _le_str(s: bytes):
    return struct.pack("<I", len(s)) + s


def _header_omap(size, order, prefix, features=1, stripe=None, snaps=()):
    om = {b"size": struct.pack("<Q", size), b"order": bytes([order]),
          b"object_prefix": _le_str(prefix), b"features": struct.pack("<Q", features)}
    if stripe:
        om[b"stripe_unit"] = struct.pack("<Q", stripe[0])
        om[b"stripe_count"] = struct.pack("<Q", stripe[1])
    for sid, name, ssize in snaps:
        body = struct.pack("<Q", sid) + _le_str(name) + struct.pack("<Q", ssize)
        om[b"snapshot_%016x" % sid] = struct.pack("<BBI", 1, 1, len(body)) + body
    return om


def _add_image(st, pool, name, iid, size, order, data, ns=b"", stripe=None, snaps=()):
    prefix = b"rbd_data." + iid
    dir_omap = {b"name_" + name: _le_str(iid), b"id_" + iid: _le_str(name)}
    st.put(pool, b"rbd_directory", ns=ns, omap=dir_omap)
    st.put(pool, b"rbd_id." + name, _le_str(iid), ns=ns)
    st.put(pool, b"rbd_header." + iid, ns=ns,
           omap=_header_omap(size, order, prefix, 3 if stripe else 1, stripe, snaps))
    osz = 1 << order
    su, sc = stripe or (osz, 1)
    spo = osz // su
    objs = {}
    # the documented striping: stripe unit i goes to object (i // sc // spo) * sc + i % sc
    for i in range(-(-size // su)):
        unit = data[i * su:(i + 1) * su]
        objno = (i // sc // spo) * sc + i % sc
        off = ((i // sc) % spo) * su
        buf = objs.setdefault(objno, bytearray(osz))
        buf[off:off + len(unit)] = unit
    for objno, buf in objs.items():
        if any(buf):
            st.put(pool, prefix + b".%016x" % objno, bytes(buf).rstrip(b"\0"), ns=ns)
    return prefix


def _cluster(*stores, pg_num=8, bad="zero"):
    """A cluster that zero-fills lost bytes (the user's --bad zero), so tests can see
    which bytes are lost; the default (EIO) is checked where it matters."""
    c = Cluster(list(stores), report=lambda *a: reports.append(a), bad=bad)
    c.pools = {3: PoolInfo(3, "p", 1, 2, pg_num, pg_num)}
    for st in stores:
        st.collections |= {(3, s) for s in range(pg_num)}
    return c


reports = []


@pytest.mark.parametrize("stripe", [None, (65536, 4), (65536, 1), (131072, 3)])
@pytest.mark.parametrize("ns", [b"", b"tenant-a"])
def test_striped_and_namespaced_images(stripe, ns):
    rng = random.Random(7)
    size = 3 * 1024 * 1024 + 12345
    data = bytearray(rng.randbytes(size))
    data[1 << 20:(1 << 20) + 300000] = bytes(300000)  # a hole
    st = FakeStore("osd.0")
    _add_image(st, 3, b"vm-300-disk-0", b"abc123", size, 18, bytes(data), ns=ns, stripe=stripe)
    c = _cluster(st)
    assert ns in c.namespaces(3)
    names, v1 = c.list_images(3, ns)
    assert names == {"vm-300-disk-0": "abc123"} and v1 == []
    img = c.open_image_v2(3, "vm-300-disk-0", "abc123", ns)
    src = c.image_source(img, None, "x")
    assert src.size == size
    assert src.read(0, size) == bytes(data)
    for _ in range(50):
        off = rng.randrange(size)
        n = rng.randrange(1, 200000)
        assert src.read(off, n) == bytes(data[off:off + n])


def test_format1_image_with_snapshot():
    st = FakeStore("osd.0")
    order, size = 16, 200000
    block = b"rb.0.1234.5678"
    hdr = bytearray(112)
    hdr[0:33] = b"<<< Rados Block Device Image >>>\n"
    hdr[40:40 + len(block)] = block
    hdr[64:67] = b"RBD"
    hdr[68:75] = b"001.005"
    hdr[76] = order
    struct.pack_into("<QQIIQ", hdr, 80, size, 9, 1, 0, 6)
    hdr += struct.pack("<QQ", 9, 100000) + b"snap1\0"
    st.put(3, b"old.rbd", bytes(hdr))
    head = [bytes([i + 1]) * 65536 for i in range(4)]
    for i, d in enumerate(head):
        n = min(65536, size - i * 65536)
        # object 1 was overwritten after snap 9 (seq 9, clone 9); the others were last
        # written before it (seq 0)
        ss = SnapSet(seq=9, clones=[9], clone_snaps={9: [9]}) if i == 1 else SnapSet(seq=0)
        st.put(3, block + b".%012x" % i, d[:n], snapset=ss, version=(2, i))
    st.put(3, block + b".%012x" % 1, b"\xee" * 65536, snap=9)  # object 1 as of snap 9
    c = _cluster(st)
    names, v1 = c.list_images(3)
    assert v1 == ["old"]
    img = c.open_image_v1(3, "old")
    assert (img.size, img.order, img.object_prefix, img.format) == (size, order, "rb.0.1234.5678", 1)
    assert [(s.id, s.name, s.size) for s in img.snaps] == [(9, "snap1", 100000)]
    src = c.image_source(img, None, "old")
    assert src.read(0, size) == b"".join(head)[:size]
    snap = c.image_source(img, img.snaps[0], "old@snap1")
    want = head[0] + b"\xee" * (100000 - 65536)
    assert snap.read(0, 100000) == want


def test_snapshot_rules_whiteout_new_object_and_lost_clone():
    """find_object_context: head when snap > seq; the oldest clone >= snap whose
    clone_snaps reach it; an object created after the snapshot did not exist then; a
    whiteout head is absent now; a clone on no given OSD is reported when read."""
    st = FakeStore("osd.0")
    osz = 1 << 16
    om = _header_omap(4 * osz, 16, b"rbd_data.x", snaps=[(5, b"s5", 4 * osz), (8, b"s8", 4 * osz)])
    st.put(3, b"rbd_header.x", omap=om)
    st.put(3, b"rbd_directory", omap={b"name_img": _le_str(b"x")})
    n = b"rbd_data.x.%016x"
    # obj 0: written before s5, overwritten after s8: clone 8 covers snaps 5 and 8
    st.put(3, n % 0, b"A" * osz, snapset=SnapSet(seq=8, clones=[8], clone_snaps={8: [8, 5]}))
    st.put(3, n % 0, b"a" * osz, snap=8)
    # obj 1: created after s5, before s8: clone 8 covers only snap 8
    st.put(3, n % 1, b"B" * osz, snapset=SnapSet(seq=8, clones=[8], clone_snaps={8: [8]}))
    st.put(3, n % 1, b"b" * osz, snap=8)
    # obj 2: discarded after s8 (whiteout head), clone 8 covers 5 and 8
    st.put(3, n % 2, b"", whiteout=True, snapset=SnapSet(seq=8, clones=[8], clone_snaps={8: [8, 5]}))
    st.put(3, n % 2, b"c" * osz, snap=8)
    # obj 3: overwritten between s5 and s8 (seq 5, clone 5), clone 5 is lost
    st.put(3, n % 3, b"D" * osz, snapset=SnapSet(seq=5, clones=[5], clone_snaps={5: [5]}))
    c = _cluster(st)
    img = c.open_image_v2(3, "img", "x")
    head = c.image_source(img, None, "img")
    s5 = c.image_source(img, img.snaps[0], "img@s5")
    s8 = c.image_source(img, img.snaps[1], "img@s8")
    assert head.read(0, 4 * osz) == b"A" * osz + b"B" * osz + bytes(osz) + b"D" * osz
    assert s8.read(0, 3 * osz) == b"a" * osz + b"b" * osz + b"c" * osz
    assert s8.read(3 * osz, osz) == b"D" * osz  # snap 8 > seq 5: the head
    assert s5.read(0, 3 * osz) == b"a" * osz + bytes(osz) + b"c" * osz
    reports.clear()
    assert s5.read(3 * osz, osz) == bytes(osz)  # --bad zero
    assert any(r[2] == "missing-object" and r[4] == [(3 * osz, osz)] for r in reports)


def test_newest_replica_wins_and_lost_pg_detected():
    a, b = FakeStore("osd.0"), FakeStore("osd.1")
    osz = 1 << 16
    for st in (a, b):
        st.put(3, b"rbd_header.y", omap=_header_omap(8 * osz, 16, b"rbd_data.y"))
        st.put(3, b"rbd_directory", omap={b"name_img": _le_str(b"y")})
    a.put(3, b"rbd_data.y.%016x" % 0, b"old" * 100, version=(5, 10))
    b.put(3, b"rbd_data.y.%016x" % 0, b"new" * 100, version=(5, 11))
    c = _cluster(a, b, pg_num=8)
    # osd.1 never held the PG of object 5: only osd.0 did, and osd.0 is "lost" below
    name5 = b"rbd_data.y.%016x" % 5
    pg5 = pg_of(object_hash(name5), 8)
    a.collections.discard((3, pg5))
    b.collections.discard((3, pg5))
    reports.clear()
    img = c.open_image_v2(3, "img", "y")
    src = c.image_source(img, None, "img")
    assert src.read(0, 300) == b"new" * 100
    assert any(r[2] == "replica-mismatch" for r in reports)
    lost = [r for r in reports if r[2] == "missing-objects"]
    assert lost and (5 * osz, osz) in lost[0][4]
    assert src.read(5 * osz, 10) == bytes(10)
    c.bad = "eio"
    src = c.image_source(img, None, "img")
    with pytest.raises(UnreadableError):
        src.read(5 * osz, 10)


def test_erasure_coded_pools_reported_and_tree(monkeypatch):
    """open_cluster with synthetic stores: an image whose data pool is erasure-coded is
    reported and not shown; a replicated one lands in storage/ceph/<pool>/ and vms/."""
    from backends.ceph import cluster_tree
    from backends.ceph.backend import CephBackend
    from pvfs.discover import Context, Options, Volume
    from pvfs.nodes import resolve

    st = FakeStore("osd.0")
    st.count = 0
    osz = 1 << 16
    _add_image(st, 3, b"vm-400-disk-0", b"r1", 2 * osz, 16, b"R" * (2 * osz))
    om = _header_omap(osz, 16, b"rbd_data.7.e1")
    om[b"data_pool_id"] = struct.pack("<q", 7)
    st.put(3, b"rbd_header.e1", omap=om)
    st.put(3, b"rbd_id.vm-401-disk-0", _le_str(b"e1"))

    def load_pools(backend, cluster, ctx):
        cluster.pools = {3: PoolInfo(3, "rbd", 1, 2, 8, 8), 7: PoolInfo(7, "ecdata", 3, 3, 8, 8)}
        st.collections |= {(3, s) for s in range(8)}

    monkeypatch.setattr(cluster_tree, "_open_stores", lambda volumes, ctx, backend=None: [st])
    monkeypatch.setattr(cluster_tree, "_load_pools", load_pools)
    ctx = Context(Options())
    vol = Volume(BytesSource(b"\0" * 8192), "storage/files/x", "x", "input")
    CephBackend().open_group("fsid", [vol], ctx)
    codes = {(e.code, e.path) for e in ctx.report}
    assert ("erasure-coded-pool", "storage/ceph/ecdata") in codes
    assert ("erasure-coded-data", "storage/ceph/rbd/vm-401-disk-0") in codes
    node = resolve(ctx.root, "storage/ceph/rbd/vm-400-disk-0")
    assert node.source.read(0, 2 * osz) == b"R" * (2 * osz)
    from pvfs.discover import finish

    finish(ctx)  # the Proxmox view is built after discovery
    assert resolve(ctx.root, "vms/400/disk-0.raw") is not None
    assert resolve(ctx.root, "storage/ceph/rbd/vm-401-disk-0") is None


def _label_block(description: bytes, meta: dict) -> bytes:
    """A bluestore_bdev_label_t as BlueStore writes it (label.py's layout)."""
    import uuid as _uuid

    from backends.ceph.checksum import ceph_crc32c

    u = _uuid.UUID("12345678-1234-5678-1234-567812345678")
    body = u.bytes + struct.pack("<Q", 1 << 30) + struct.pack("<II", 1, 2) + _le_str(description)
    body += struct.pack("<I", len(meta)) + b"".join(_le_str(k) + _le_str(v) for k, v in meta.items())
    enc = b"bluestore block device\n" + str(u).encode() + b"\n" + \
        struct.pack("<BBI", 2, 1, len(body)) + body
    return enc + struct.pack("<I", ceph_crc32c(0xFFFFFFFF, enc))


def test_db_device_without_its_osd_is_reported(tmp_path):
    from pvfs.discover import Options, discover

    p = tmp_path / "block.db"
    p.write_bytes(_label_block(b"bluefs db", {}).ljust(1 << 16, b"\0"))
    ctx = discover([str(p)], Options())
    assert [e.code for e in ctx.report if e.layer == "ceph"] == ["unused-bluefs-device"]


def test_trashed_image_is_recoverable(monkeypatch):
    """``rbd trash mv`` keeps header and data: the image shows under <pool>/.trash/ by name,
    outside the Proxmox view."""
    from backends.ceph import cluster_tree
    from backends.ceph.backend import CephBackend
    from pvfs.discover import Context, Options, Volume
    from pvfs.nodes import resolve

    st = FakeStore("osd.0")
    st.count = 0
    osz = 1 << 16
    _add_image(st, 3, b"vm-500-disk-0", b"t1", 2 * osz, 16, b"T" * (2 * osz))
    # moved to the trash: out of rbd_directory and rbd_id, into rbd_trash
    del st.other[(3, b"", b"rbd_directory")]
    del st.other[(3, b"", b"rbd_id.vm-500-disk-0")]
    spec = b"\x00" + _le_str(b"vm-500-disk-0") + struct.pack("<IIII", 1, 0, 1, 0)
    st.put(3, b"rbd_trash", omap={b"id_t1": struct.pack("<BBI", 1, 1, len(spec)) + spec})

    def load_pools(backend, cluster, ctx):
        cluster.pools = {3: PoolInfo(3, "rbd", 1, 2, 8, 8)}
        st.collections |= {(3, s) for s in range(8)}

    monkeypatch.setattr(cluster_tree, "_open_stores", lambda volumes, ctx, backend=None: [st])
    monkeypatch.setattr(cluster_tree, "_load_pools", load_pools)
    ctx = Context(Options())
    vol = Volume(BytesSource(b"\0" * 8192), "storage/files/x", "x", "input")
    CephBackend().open_group("fsid", [vol], ctx)
    node = resolve(ctx.root, "storage/ceph/rbd/.trash/vm-500-disk-0")
    assert node.source.read(0, 2 * osz) == b"T" * (2 * osz)
    assert resolve(ctx.root, "storage/ceph/rbd/image-t1") is None
    assert resolve(ctx.root, "vms/500") is None


def _parent_v1(pool, image_id, snap_id, overlap):
    body = struct.pack("<q", pool) + _le_str(image_id) + struct.pack("<QQ", snap_id, overlap)
    return struct.pack("<BBI", 1, 1, len(body)) + body


@pytest.mark.parametrize("bad", ["eio", "zero"])
@pytest.mark.parametrize("stripe", [None, (65536, 4)])
def test_clone_without_its_parent_never_reads_zeros_by_default(stripe, bad):
    """A clone whose parent image is gone (or a striped clone, whose parent data pvfs does
    not merge): the ranges the clone never wrote are lost, EIO by default; they read as
    zeros only with --bad zero.  Before, they read as zeros silently under both policies."""
    rng = random.Random(11)
    size, order = 1 << 20, 18  # 4 objects of 256 KiB
    # the clone wrote object 1 only: its first stripe unit when striped
    at, n = (1 << 16, 1 << 16) if stripe else (1 << 18, 1 << 18)
    written = rng.randbytes(n)
    data = bytes(at) + written + bytes(size - at - n)
    st = FakeStore("osd.0")
    prefix = _add_image(st, 3, b"vm-301-disk-0", b"c10e", size, order, data, stripe=stripe)
    hdr = next(k for k in st.omaps if k[2] == b"rbd_header.c10e")
    st.omaps[hdr][b"parent"] = _parent_v1(3, b"beef", 4, size)  # image beef is not there
    assert any(k[2].startswith(prefix) for k in st.omaps)
    reports.clear()
    c = _cluster(st, bad=bad)
    img = c.open_image_v2(3, "vm-301-disk-0", "c10e")
    src = c.image_source(img, None, "vms/301/disk-0.raw")
    assert any(r[0] == "error" and r[2] in ("rbd-parent", "rbd-parent-striped")
               and "zeros with --bad zero" in r[3] for r in reports), reports
    assert src.read(at, n) == written  # what the clone wrote still reads
    if bad == "eio":
        with pytest.raises(UnreadableError):
            src.read(0, 4096)
    else:
        assert src.read(0, 4096) == bytes(4096)
