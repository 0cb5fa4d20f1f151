"""FileStore OSDs (Ceph 14.2 Nautilus, backends/ceph/filestore.py): the OSD XFS images of
ceph-14-filestore, read through pvfs' XFS reader (node tree) -> objects, xattrs, omap
(LevelDB on osd.0, RocksDB on osd.1/osd.2) -> RBD images, compared with the manifest
(``rbd export`` sha256) and the librados / ceph-objectstore-tool ground truth."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.ceph.filestore import (FileStoreError, FileStoreOsd, ghobject_key,
                                     is_filestore_dir, parse_object_name)
from backends.ceph.keys import CEPH_NOSNAP, CEPH_SNAPDIR, NO_GEN, NO_SHARD, ObjectId
from backends.ceph.rbd import Cluster
from pvfs.discover import Options, discover
from pvfs.nodes import resolve

from conftest import FIXTURES, require_fixture, sha256_source, unpack

FX = FIXTURES / "ceph-14-filestore"


@pytest.fixture(scope="module")
def fdir():
    return unpack(require_fixture("ceph-14-filestore", "ceph-fixture.tar.zst")) / "ceph-fixture"


@pytest.fixture(scope="module")
def manifest():
    return json.loads((FX / "manifest.json").read_text())


def _images(fdir, ids, **kw):
    return discover([str(fdir / f"osd.{i}.xfs") for i in ids], Options(**kw))


def _views(manifest):
    for im in manifest["images"]:
        yield f"storage/ceph/{im['pool']}/{im['name']}", im["sha256"], im["size"]
        for s in im["snapshots"]:
            yield f"storage/ceph/{im['pool']}/{im['name']}@{s['name']}", s["sha256"], s["size"]


@pytest.fixture(scope="module")
def ctx_all(fdir):
    return _images(fdir, (0, 1, 2))


def test_all_osds(ctx_all, manifest):
    """All three OSDs, incl. the SIGKILLed osd.2 whose files are older: every image and
    snapshot equals rbd export; osd.2's unapplied journal is reported."""
    n = 0
    for path, sha, size in _views(manifest):
        node = resolve(ctx_all.root, path)
        assert node is not None and node.size == size, path
        assert sha256_source(node.source) == sha, path
        n += 1
    assert n == 8
    errors = [e for e in ctx_all.report if e.severity == "error"]
    assert errors == []
    info = [e for e in ctx_all.report if e.code == "filestore-journal-replayed"]
    assert len(info) == 1 and "osd.2" in info[0].message and "183..196" in info[0].message
    assert "commit_op_seq 182" in info[0].message
    # the Proxmox view
    assert resolve(ctx_all.root, "vms/103/disk-0.raw").source is \
        resolve(ctx_all.root, "storage/ceph/rbd-flat/vm-103-disk-0").source


@pytest.mark.parametrize("ids", [(0, 1), (1, 2), (0, 2)])
def test_one_osd_missing(fdir, manifest, ids):
    """Each pair: every PG keeps a copy; with osd.0 + osd.2, vm-103's newest writes exist
    only in osd.2's unapplied journal (replayed in memory)."""
    ctx = _images(fdir, ids)
    for path, sha, _size in _views(manifest):
        assert sha256_source(resolve(ctx.root, path).source) == sha, path
    assert [e for e in ctx.report if e.severity == "error"] == []


def test_journal_replay_equals_ceph_objectstore_tool(fdir, manifest):
    """Every osd.2 object file the journal changes: raw bytes as on disk, and after our
    in-memory replay the bytes ceph-objectstore-tool's replay produced (incl. object 0xa,
    which only the journal creates)."""
    ctx = _images(fdir, [2])
    root = next(v.guestfs_root for v in ctx.volumes if is_filestore_dir(v.guestfs_root))
    st_ = FileStoreOsd(root, "osd.2", "x").build_index()
    raw = {}
    for f in manifest["crash"]["raw_files_that_journal_replay_changes"]:
        oid = parse_object_name(f["path"].rsplit("/", 1)[1])
        hit = st_.lookup(oid.pool, oid.name, oid.nspace, oid.snap)
        raw[f["path"]] = hit
        if f["raw"] is None:
            assert hit is None
        else:
            assert hashlib.sha256(st_.read_small(hit[0])).hexdigest() == f["raw"]["sha256"]
    assert st_.replay_journal() == ((183, 196), None)
    n = 0
    for f in manifest["crash"]["raw_files_that_journal_replay_changes"]:
        oid = parse_object_name(f["path"].rsplit("/", 1)[1])
        key, _ = st_.lookup(oid.pool, oid.name, oid.nspace, oid.snap)
        data = st_.read_small(key)
        assert len(data) == f["after_journal_replay"]["size"]
        assert hashlib.sha256(data).hexdigest() == f["after_journal_replay"]["sha256"], f["path"]
        n += 1
    assert n == 8


def test_unreplayed_journal_stale_bytes_are_reported(fdir, manifest, ctx_all, monkeypatch):
    """osd.0 + osd.2 with the replay failing (as for an op it does not know): every byte
    that differs from the true image is inside a range reported possibly-stale."""
    monkeypatch.setattr(FileStoreOsd, "replay_journal",
                        lambda self: (None, "entry 183: op split_collection is not replayed"))
    ctx = _images(fdir, (0, 2))
    assert any(e.code == "filestore-journal-unapplied" for e in ctx.report)
    path = "storage/ceph/rbd-flat/vm-103-disk-0"
    got = resolve(ctx.root, path).source
    truth = resolve(ctx_all.root, path).source
    diffs = []
    step = 64 << 10
    for off in range(0, truth.size, step):
        n = min(step, truth.size - off)
        if got.read(off, n) != truth.read(off, n):
            diffs.append((off, n))
    # (objects are resolved, and reported, when first read)
    ranges = [r for e in ctx.report if e.code == "possibly-stale" and e.path == path
              for r in e.ranges]
    assert diffs and ranges  # the fixture really has stale copies there
    for off, n in diffs:
        assert any(o <= off and off + n <= o + ln for o, ln in ranges), off


def test_objects_equal_the_objectstore_listing(fdir):
    """Object files (hash dirs at every depth, escaped and _long names) decode to exactly
    the objects ceph-objectstore-tool lists for the cleanly stopped OSDs."""
    for i in (0, 1):
        ctx = _images(fdir, [i])
        root = next(v.guestfs_root for v in ctx.volumes if is_filestore_dir(v.guestfs_root))
        st_ = FileStoreOsd(root, f"osd.{i}", "x").build_index()
        mine = set()
        for (pool, ns, name), snaps in st_.other.items():
            for snap in snaps if pool >= 0 and name else ():  # (no meta/, no pgmeta)
                mine.add((pool, ns.decode(), name.decode(), snap))
        want = set()
        for line in (FX / "ground-truth" / f"objectstore-list-osd.{i}.txt").read_text().splitlines():
            if not line.startswith("["):
                continue
            _pg, o = json.loads(line)
            snap = {-2: CEPH_NOSNAP, -1: CEPH_SNAPDIR}.get(o["snapid"], o["snapid"])
            want.add((o["pool"], o["namespace"], o["oid"], snap))
        assert mine == want, (i, sorted(mine ^ want)[:5])
        assert len(want) > 30


def test_xattrs_omap_and_data_equal_librados(fdir):
    """Every non-snapshot object of the librados dump: data sha256, user xattrs (chained,
    and spilled to the omap: fixture-many-xattrs, fixture-big-xattr) and omap values."""
    ctx = _images(fdir, (0, 1))
    stores = []
    for i, v in enumerate(v for v in ctx.volumes if is_filestore_dir(v.guestfs_root)):
        stores.append(FileStoreOsd(v.guestfs_root, f"osd.{i}", v.files_paths[0]).build_index())
    cl = Cluster(stores, lambda *a, **k: None)
    cl.load_osdmap_from_osds()
    pools = json.loads((FX / "ground-truth" / "objects.json").read_text())["live_rados"]["pools"]
    n_data = n_x = n_omap = 0
    for pv in pools.values():
        pid = pv["id"]
        for name, o in pv["objects"].items():
            if not o["head"]:
                continue
            cands = cl.find(pid, name.encode())
            assert cands, name
            c = cands[0]
            data = c.store.read_small(c.key)
            assert hashlib.sha256(data).hexdigest() == o["sha256"], name
            n_data += 1
            attrs = c.store.onode(c.key).attrs
            for k, hx in (o.get("user_xattrs_hex") or {}).items():
                assert attrs.get("_" + k) == bytes.fromhex(hx), (name, k)
                n_x += 1
            if "omap" in o:
                om = c.store.omap(c.key, c.oid)
                want = {k.encode(): bytes.fromhex(v["hex"] if isinstance(v, dict) else v)
                        for k, v in o["omap"].items()}
                assert len(om) == len(want), name
                for k, v in want.items():  # (binary keys, e.g. rbd_children's, are mangled
                    if k.isascii() and k.decode().isprintable():  # in the JSON dump)
                        assert om[k] == v, (name, k)
                        n_omap += 1
    assert n_data > 40 and n_x >= 13 + 4 and n_omap > 30


def test_guest_ext4_in_filestore_image(ctx_all, manifest):
    m = manifest["ext4"]
    vol = next(v for v in ctx_all.volumes if v.guestfs_root is not None
               and v.files_paths and v.files_paths[0].startswith(f"storage/ceph/{m['image']}"))
    n = 0
    for f in m["files"]:
        if f["type"] != "file":
            continue
        node = resolve(vol.guestfs_root, f["path"])
        assert node is not None and sha256_source(node.source) == f["sha256"], f["path"]
        n += 1
    assert n >= 5


# -- names -----------------------------------------------------------------------------------
def _escape(b: bytes) -> str:
    s = ""
    i = 0
    if b.startswith(b"DIR_"):
        s, i = "\\d", 4
    elif b.startswith(b"."):
        s, i = "\\.", 1
    for c in b[i:]:
        s += {0x5C: "\\\\", 0x2F: "\\s", 0x5F: "\\u", 0: "\\n"}.get(c, chr(c))
    return s


_name = st.binary(max_size=40).filter(lambda b: all(c < 0x80 for c in b))


@settings(max_examples=300, deadline=None)
@given(_name, _name, _name, st.sampled_from([CEPH_NOSNAP, CEPH_SNAPDIR, 1, 0x1f, 1 << 40]),
       st.integers(0, (1 << 32) - 1), st.integers(-1, 1 << 20),
       st.one_of(st.none(), st.tuples(st.integers(0, 1 << 40), st.integers(0, 15))))
def test_object_name_roundtrip(name, key, ns, snap, h, pool, genshard):
    """File names built by LFNIndex's rules decode back (incl. DIR_ and '.' prefixes)."""
    sn = {CEPH_NOSNAP: "head", CEPH_SNAPDIR: "snapdir"}.get(snap, f"{snap:x}")
    pl = "none" if pool == -1 else f"{pool:x}"
    fname = f"{_escape(name)}_{_escape(key)}_{sn}_{h:08X}_{_escape(ns)}_{pl}"
    gen, shard = NO_GEN, NO_SHARD
    if genshard is not None:
        gen, shard = genshard
        fname += f"_{gen:x}_{shard:x}"
    oid = parse_object_name(fname)
    assert oid == ObjectId(pool, h, ns, name, key, snap, gen, shard)
    ghobject_key(oid)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_fuzz_object_names(s):
    try:
        parse_object_name(s)
    except FileStoreError:
        pass


def test_ghobject_key_matches_the_omap_listing():
    keys = [ln.split("\t", 1)[1] for ln in
            (FX / "ground-truth" / "omap-kv-keys-osd.1.txt").read_text().splitlines()
            if ln.startswith("_HOBJTOSEQ_\t")]
    oid = ObjectId(1, 0xC19F9E6F, b"", b"rbd_header.1039436070cc", b"", CEPH_NOSNAP)
    # ceph-kvstore-tool prints '%' as '%25'
    assert ghobject_key(oid).decode().replace("%", "%25") in keys
    meta = ObjectId(-1, 0xA468EC03, b"", b"snapmapper", b"", 0)
    assert ghobject_key(meta).decode() in keys


def test_leveldb_mon_store_names_the_pools(fdir, manifest):
    """The Ceph 14 monitor's LevelDB store (nearly all of it in its .log) as --ceph-mon."""
    ctx = _images(fdir, (0, 1), backend_options={"ceph_mon": [str(fdir / "mon.a")]})
    text = resolve(ctx.root, "storage/ceph/cluster.txt").render().decode()
    assert "from the monitor store" in text
    for p in manifest["cluster"]["pools"]:
        assert f"  {p['id']}: {p['name']} replicated size={p['size']} pg_num={p['pg_num']}" in text
    assert not [e for e in ctx.report if e.code.startswith("mon-store") or "rocksdb" in e.code]


def _synthetic_osd(journal: bytes, commit=b"182\n"):
    from pvfs.nodes import Dir, File
    from pvfs.source import BytesSource

    root, cur = Dir(), Dir()
    cur.add("commit_op_seq", File(BytesSource(commit)))
    root.add("current", cur)
    root.add("type", File(BytesSource(b"filestore\n")))
    root.add("journal", File(BytesSource(journal)))
    return FileStoreOsd(root, "osd.9", "x")


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_fuzz_journal_header_and_entries(fdir, data):
    """osd.2's real journal head (header + first entries), mutated: never more than an
    answer or None."""
    if "j" not in _JOURNAL:
        ctx = _images(fdir, [2])
        root = next(v.guestfs_root for v in ctx.volumes if is_filestore_dir(v.guestfs_root))
        st_ = FileStoreOsd(root, "osd.2", "x")
        assert st_.journal_state() == (182, [183, 196])
        j = root.children()["journal"].source
        start = 42467328
        _JOURNAL["j"] = (j.read(0, 4096), j.read(start, 1 << 16))
    head, entries = _JOURNAL["j"]
    blob = bytearray(head + entries)
    for pos, v in data.draw(st.lists(st.tuples(st.integers(0, len(blob) - 1),
                                               st.integers(0, 255)), max_size=6)):
        blob[pos] = v
    # lay the entries back at their offset in a sparse-ish journal of 64 MiB
    from pvfs.source import Source

    class _J(Source):
        size = 64 << 20

        def _read(self, off, n):
            out = bytearray(n)
            for base, chunk in ((0, blob[:4096]), (42467328, blob[4096:])):
                lo, hi = max(off, base), min(off + n, base + len(chunk))
                if lo < hi:
                    out[lo - off:hi - off] = chunk[lo - base:hi - base]
            return bytes(out)

    st_ = _synthetic_osd(b"")
    from pvfs.nodes import File
    st_.root._children["journal"] = File(_J())
    r = st_.journal_state()
    assert r is None or (r[0] == 182 and (r[1] is None or r[1][0] <= r[1][1]))


_JOURNAL = {}


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_fuzz_transactions(fdir, data):
    """Real journal payloads (osd.2's entries 183-186: omap_setkeys, setattrs, write),
    mutated and cut: decode to ops or raise JournalError, nothing else."""
    import struct as _s

    from backends.ceph.errors import CephError
    from backends.ceph.fsjournal import decode_transaction
    from backends.ceph.denc import Reader

    if "p" not in _JOURNAL:
        ctx = _images(fdir, [2])
        root = next(v.guestfs_root for v in ctx.volumes if is_filestore_dir(v.guestfs_root))
        j = root.children()["journal"].source
        pos, payloads = 42467328, []
        for _ in range(4):
            seq, _crc, ln, pre, post, _m1, _m2 = _s.unpack("<QIIIIQQ", j.read(pos, 40))
            payloads.append(j.read(pos + 40 + pre, min(ln, 1 << 16)))
            pos += 80 + pre + ln + post
        _JOURNAL["p"] = payloads
    base = data.draw(st.sampled_from(_JOURNAL["p"]))
    b = bytearray(base)
    for pos, v in data.draw(st.lists(st.tuples(st.integers(0, len(b) - 1), st.integers(0, 255)),
                                     max_size=6)):
        b[pos] = v
    b = b[:data.draw(st.integers(0, len(b)))]
    r = Reader(bytes(b))
    try:
        while r.remaining():
            decode_transaction(r)
    except CephError:
        pass
