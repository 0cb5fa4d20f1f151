"""The expert view ``storage/ceph/.osd/<osd>/<pool>/`` (issue 15 item 5): pool directories
take their entries from the OSD's object index (backends/ceph/osdview.py, an
InodeSpace) and keep no node per object.  Checked against what Ceph itself recorded in
the fixture (``ceph-objectstore-tool --op list`` of each stopped OSD, librados sizes and
sha256 of every head object), through the FUSE mount (names, inodes that survive the
kernel forgetting them, bytes), and for memory on a synthetic OSD of 20,000 objects.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import types
from array import array

import pytest
from mountutil import needs_fuse, pvfs_mounted

from backends.ceph.cluster_tree import _object_meta
from backends.ceph.keys import CEPH_NOSNAP, ObjectId, encode_onode_key
from backends.ceph.osd import OsdStore
from backends.ceph.osdview import OsdSpace
from conftest import FIXTURES, require_fixture, unpack
from pvfs.discover import Options, discover
from pvfs.index import scratch_map
from pvfs.nodes import Dir, File, GeneratedFile, Node, resolve
from pvfs.source import BytesSource

USER_POOLS = {2: "rbd", 3: "rbd-zstd", 4: "rbd-lz4", 5: "rbd-snappy"}
KEY_MASK = (1 << 48) - 1


@pytest.fixture(scope="module")
def ceph_dir():
    return unpack(require_fixture("ceph", "ceph-fixture.tar.zst")) / "ceph-fixture"


def _truth():
    """Per OSD: {(pool name, file name)} of the user pools' objects as
    ``ceph-objectstore-tool --op list`` listed them; and librados's head objects."""
    gt = FIXTURES / "ceph" / "ground-truth"
    listed = {}
    for i in range(3):
        names = set()
        for line in (gt / f"objectstore-list-osd.{i}.txt").read_text().splitlines():
            _pg, o = json.loads(line)
            assert o["namespace"] == ""
            snap = "" if o["snapid"] == -2 else f"@{o['snapid']}"
            names.add((USER_POOLS[o["pool"]], o["oid"] + snap))
        listed[i] = names
    rados = json.loads((gt / "objects.json").read_text())["live_rados"]["pools"]
    heads = {(p, n): o for p, info in rados.items() for n, o in info["objects"].items()
             if o["head"]}
    return listed, heads


def _pool_dirs(root, i):
    od = resolve(root, f"storage/ceph/.osd/osd.{i}")
    return {pn: pd for pn, pd in od.children().items() if pn in USER_POOLS.values()}


def test_objects_as_ceph_listed_them(ceph_dir):
    listed, heads = _truth()
    ctx = discover([str(ceph_dir / f"osd.{i}" / "block") for i in range(3)], Options())
    compared = 0
    for i in range(3):
        got = set()
        for pn, pd in _pool_dirs(ctx.root, i).items():
            assert pd.space is not None and not pd.kept()  # nothing kept per object
            listing = pd.space.entries(pd.key)
            names = list(listing.names)
            assert len(set(names)) == len(names)
            objs = [n for n in names if not n.endswith(".meta.json")]
            # in the order the kept nodes had: (namespace, name, snap), each object's
            # .meta.json after it
            assert names == [x for n in objs for x in (n, n + ".meta.json")]
            order = [(n.rsplit("@", 1)[0], int(n.rsplit("@", 1)[1]) if "@" in n else -1)
                     for n in objs if not n.startswith("(pgmeta")]
            assert [o[0].encode() for o in order] == sorted(o[0].encode() for o in order)
            got |= {(pn, n) for n in objs if not n.startswith("(pgmeta ")}
            for n in objs:
                node = pd.get(n)
                assert isinstance(node, File), n
                truth = heads.get((pn, n))
                if truth is not None:
                    data = node.source.read(0, node.size)
                    assert (node.size, hashlib.sha256(data).hexdigest()) == \
                        (truth["size"], truth["sha256"]), n
                    compared += 1
                meta = json.loads(pd.get(n + ".meta.json").content())
                assert meta["osd"] == f"osd.{i}" and meta["onode"]["size"] == node.size
        assert got == listed[i], (sorted(got ^ listed[i])[:5])
    assert compared > 100


@needs_fuse
def test_osd_view_through_the_mount(ceph_dir, tmp_path):
    """Names in listing order, stat and bytes; after the kernel forgets the inodes (their
    nodes dropped) the same inode numbers, sizes and bytes, built again from the keys."""
    listed, heads = _truth()
    blocks = [ceph_dir / f"osd.{i}" / "block" for i in range(3)]
    with pvfs_mounted(blocks, tmp_path / "m") as mnt:
        top = os.path.join(mnt, "storage/ceph/.osd/osd.0/rbd")
        names = os.listdir(top)
        objs = [n for n in names if not n.endswith(".meta.json")]
        assert names == [x for n in objs for x in (n, n + ".meta.json")]
        assert {("rbd", n) for n in objs if not n.startswith("(pgmeta ")} == \
            {x for x in listed[0] if x[0] == "rbd"}

        def look():
            out = {}
            for n in names:
                p = os.path.join(top, n)
                st = os.lstat(p)
                with open(p, "rb") as f:
                    out[n] = (st.st_ino, st.st_size, hashlib.sha256(f.read()).hexdigest())
            return out

        first = look()
        assert len({v[0] for v in first.values()}) == len(names)
        assert all(v[0] >> 48 for v in first.values())  # numbered from the space's keys
        n_heads = 0
        for n in objs:
            truth = heads.get(("rbd", n))
            if truth is not None:
                assert first[n][1:] == (truth["size"], truth["sha256"]), n
                n_heads += 1
        assert n_heads > 20
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("2\n")  # the kernel forgets the inodes: the mount drops their nodes
        assert look() == first


# -- memory: a synthetic OSD ------------------------------------------------------------
N_DATA = 20_000


class _FakeKV:
    """The two prefixes ``OsdStore.build_index`` reads; no onode values (a broken
    object: its data file is not shown, its .meta.json says why)."""

    def __init__(self, keys):
        self.keys = keys

    def iterate(self, prefix, *a, **kw):
        if prefix == "C":
            return iter([(b"2.0_head", b"")])
        return iter([(k, b"") for k in self.keys] if prefix == "O" else [])

    def get(self, prefix, key):
        return None


def _synthetic_store():
    keys = [encode_onode_key(ObjectId(2, i * 2654435761 % (1 << 32), b"",
                                      b"rbd_data.1234.%016x" % i, b"", CEPH_NOSNAP))
            for i in range(N_DATA)]
    keys += [encode_onode_key(ObjectId(2, 7, b"", b"rbd_header.1234", b"", CEPH_NOSNAP)),
             encode_onode_key(ObjectId(2, 9, b"", b"rbd_data.1234.%016x" % 5, b"", 4))]
    osd = types.SimpleNamespace(kv=_FakeKV(keys), source=BytesSource(b"", label="fake"))
    st = OsdStore(osd, "osd.0").build_index()
    mapped = OsdStore(osd, "osd.0")
    info, arrays = st.index_payload()
    assert mapped.load_index(info, scratch_map(arrays))
    return mapped


def _live_nodes():
    gc.collect()
    return sum(isinstance(o, (File, GeneratedFile)) for o in gc.get_objects()
               if isinstance(o, Node))


def test_listing_keeps_no_node_per_object():
    from pvfs.cache import METADATA_CACHE
    import tracemalloc

    st = _synthetic_store()
    space = OsdSpace(st, "storage/ceph/.osd/osd.0", str, _object_meta)
    pd = Dir()
    pd.use_space(space, space.dir_key(2))
    before = _live_nodes()
    METADATA_CACHE.clear()
    tracemalloc.start()
    listing = space.entries(pd.key)
    base = tracemalloc.get_traced_memory()[0]
    assert len(listing) == 2 * (N_DATA + 2)
    assert listing.names[:4] == ["rbd_data.1234.0000000000000000",
                                 "rbd_data.1234.0000000000000000.meta.json",
                                 "rbd_data.1234.0000000000000001",
                                 "rbd_data.1234.0000000000000001.meta.json"]
    assert list(listing.types) == [8] * len(listing)  # DT_REG: a listing builds no node
    assert max(listing.keys) < 1 << 48
    del listing
    METADATA_CACHE.clear()  # (the listing is the cache's, bounded; nothing else stays)
    left = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert _live_nodes() == before
    assert left < base / 20 and left < 512 << 10, (base, left)
    # lookups by name find the object's row; the data file of an object whose onode is
    # gone is not shown, its .meta.json is, and says so
    k = space.lookup(pd.key, "rbd_data.1234.0000000000000005@4.meta.json")
    assert k is not None and k & 1
    assert space.lookup(pd.key, "rbd_data.1234.0000000000000005@4") == k - 1
    assert space.lookup(pd.key, f"rbd_data.1234.{N_DATA:016x}") is None
    assert space.lookup(pd.key, "rbd_header.1234.meta.json") is not None
    assert space.child(pd.key, "x", k - 1) is None
    meta = space.node(k)
    assert json.loads(meta.content())["error"] == "onode key vanished"
    assert space.path(k) == "storage/ceph/.osd/osd.0/2/rbd_data.1234.0000000000000005@4.meta.json"
    assert space.node(k) is meta  # one node while it is held
    ino = k
    del meta
    assert _live_nodes() == before  # dropped when let go ...
    assert space.node(ino).content() == space.node(ino).content()  # ... and built again
    assert [space.lookup(pd.key, n) for n in ("rbd_data.1234.0000000000000007",
                                              "rbd_data.1234.0000000000000007.meta.json")] \
        == list(array("Q", space.entries(pd.key).keys)[16:18])  # (after 5, 5@4, 6)


# -- a pool whose names do not parse back: namespaces, clashes -------------------------
N_NS = 3_000


def _clash_oids():
    """Objects of pool 3 whose names ``Dir.add`` renames or ``sanitize_name`` changes:
    namespaced objects ("ns1/x" is shown as "ns1_x", which an object of no namespace
    also is), an object named like another's .meta.json, a clone next to an object
    named "<name>@<snap>", '/' in a name, and RBD data objects in a namespace (the
    compact data index)."""
    oids = [ObjectId(3, i * 2654435761 % (1 << 32), b"ns1", b"obj%05d" % i, b"", CEPH_NOSNAP)
            for i in range(N_NS)]
    oids += [ObjectId(3, 11, b"", b"ns1_obj00007", b"", CEPH_NOSNAP),
             ObjectId(3, 12, b"", b"a", b"", CEPH_NOSNAP),
             ObjectId(3, 13, b"", b"a.meta.json", b"", CEPH_NOSNAP),
             ObjectId(3, 14, b"", b"a~2.meta.json", b"", CEPH_NOSNAP),
             ObjectId(3, 15, b"", b"c@4", b"", CEPH_NOSNAP),
             ObjectId(3, 16, b"", b"c", b"", 4),
             ObjectId(3, 17, b"", b"d/e", b"", CEPH_NOSNAP),
             ObjectId(3, 18, b"", b"d_e", b"", CEPH_NOSNAP)]
    oids += [ObjectId(3, i * 40503 % (1 << 32), b"img", b"rbd_data.99.%016x" % i, b"",
                      CEPH_NOSNAP) for i in range(N_NS)]
    return oids


def test_pool_with_namespaces_and_clashes():
    """Names and order as the kept nodes had them (``ObjectId.display()`` sorted by
    (namespace, name, snap), each added with ``Dir.add``: the reference here), and every
    name looked up to its own entry by the listing's name hashes."""
    from pvfs.cache import METADATA_CACHE

    oids = _clash_oids()
    osd = types.SimpleNamespace(kv=_FakeKV([encode_onode_key(o) for o in oids]),
                                source=BytesSource(b"", label="fake"))
    st = OsdStore(osd, "osd.0").build_index()
    mapped = OsdStore(osd, "osd.0")
    info, arrays = st.index_payload()
    assert mapped.load_index(info, scratch_map(arrays))
    ref = Dir()
    for o in sorted(oids, key=lambda o: (o.nspace, o.name, o.snap)):
        ref.add(o.display(), File(BytesSource(b"")))
        ref.add(o.display() + ".meta.json", GeneratedFile(lambda: b""))
    want = list(ref.children())
    assert "ns1_obj00007~2" in want and "a~2.meta.json" in want and "a~2~2.meta.json" in want
    assert "c@4~2" in want and "d_e~2" in want  # (the reference renames: a real test)
    for store in (st, mapped):  # a dict of other objects (as FileStore), the mapped arrays
        space = OsdSpace(store, "storage/ceph/.osd/osd.0", str, _object_meta)
        key = space.dir_key(3)
        METADATA_CACHE.clear()
        listing = space.entries(key)
        assert list(listing.names) == want
        assert len(set(listing.keys)) == len(want)
        assert listing.names[-2:] == want[-2:]
        for j, name in enumerate(want):
            k = space.lookup(key, name)
            assert k == listing.keys[j], name
            assert listing.keys.index(k) == j
            if name.startswith("ns1_obj") and "~" not in name and \
                    not name.startswith("ns1_obj00007"):  # the object's own path
                assert space.path(k).endswith("/3/ns1/" + name[4:]), (name, space.path(k))
        for name in (f"ns1_obj{N_NS:05d}", "a~3.meta.json", "nope", "ns1_obj00007~3"):
            assert space.lookup(key, name) is None, name
        METADATA_CACHE.clear()  # evicted: a lookup builds the listing again
        assert space.lookup(key, "ns1_obj00007~2.meta.json") == listing.keys[want.index(
            "ns1_obj00007~2.meta.json")]
