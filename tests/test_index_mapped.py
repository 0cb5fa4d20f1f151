"""Index store entries read as mapped tables and written a piece at a time (issue 15 item 5:
daemon memory flat in the data), and the PBS chunk check that uses them."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pvfs.cache import METADATA_CACHE
from pvfs.discover import Options, discover
from pvfs.index import SUFFIX, IndexStore, MappedArrays
from pvfs.report import report_json, report_text
from pvfs.source import FileSource

from conftest import require_fixture


def _notes():
    got = []
    return got, lambda severity, code, msg: got.append((code, msg))


@pytest.fixture
def image(tmp_path):
    p = tmp_path / "input.img"
    p.write_bytes(os.urandom(1 << 16))
    return p


def _arrays():
    rng = np.random.default_rng(5)
    return {"rows": rng.integers(0, 256, (1 << 18, 32), dtype=np.uint8),  # 8 MiB
            "small": np.arange(7, dtype=np.int64), "none": np.zeros(0, np.uint32)}


def test_mapped_load_is_file_pages_and_damage_is_rebuilt(tmp_path, image):
    store = IndexStore(str(tmp_path / "store"))
    notes, notify = _notes()

    def entry():
        return store.entry("demo", "table", FileSource(str(image)), meta=b"M",
                           label="input.img", notify=notify)

    arrays = _arrays()
    assert entry().save({"n": 1}, arrays)
    [f] = sorted((tmp_path / "store").glob("*" + SUFFIX))
    tracemalloc.start()
    try:
        info, got = entry().load(mapped=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # checked a piece at a time and mapped: no copy of the 8 MiB payload in memory
    assert peak < (2 << 20), peak
    assert isinstance(got, MappedArrays) and info == {"n": 1}
    assert all(np.array_equal(got[k], arrays[k]) and got[k].dtype == arrays[k].dtype
               and got[k].shape == arrays[k].shape for k in arrays)
    assert not got["rows"].flags.writeable
    got.release()  # pages given back; the next touch reads them again
    assert np.array_equal(got["rows"][-5:], arrays["rows"][-5:])
    assert [e.state for e in store.log] == ["built", "reused"]

    good = f.read_bytes()
    damaged = {
        "bit-flipped payload": (good[:-1000] + bytes([good[-1000] ^ 1]) + good[-999:],
                                "index-corrupt", "checksum mismatch"),
        "bit-flipped header": (good[:60] + bytes([good[60] ^ 4]) + good[61:],
                               "index-corrupt", "checksum mismatch"),
        "truncated": (good[:-4096], "index-truncated",
                      f"{len(good) - 4096} bytes, its header says {len(good)}"),
        "shorter than its head": (good[:30], "index-truncated",
                                  "30 bytes, shorter than its header"),
        "longer than it says": (good + bytes(10), "index-corrupt",
                                f"{len(good) + 10} bytes, its header says {len(good)}"),
    }
    for what, (blob, code, why) in damaged.items():
        f.write_bytes(blob)
        notes.clear()
        e = entry()
        assert e.load(mapped=True) is None, what
        assert notes == [(code, f"demo index table of input.img ({f.name}): {why}; rebuilt")], what
        assert e.save({"n": 2}, arrays) and store.log[-1].state == "rebuilt", what
        info, got = entry().load(mapped=True)
        assert info == {"n": 2} and np.array_equal(got["rows"], arrays["rows"]), what
    # an array said to lie outside the payload (header rewritten, checksum made right)
    magic, fmt, hlen, plen, _d = struct.unpack_from("<8sIIQ32s", good)
    head = json.loads(good[56:56 + hlen])
    head["arrays"][0]["offset"] = plen - 16
    h2 = json.dumps(head, separators=(",", ":")).encode()
    body = h2 + good[56 + hlen:]
    f.write_bytes(struct.pack("<8sIIQ32s", magic, fmt, len(h2), plen,
                              hashlib.sha256(body).digest()) + body)
    notes.clear()
    assert entry().load(mapped=True) is None
    assert notes[0][0] == "index-corrupt" and "outside the payload" in notes[0][1]


def test_writer_streams_rows_and_reads_back(tmp_path, image):
    store = IndexStore(str(tmp_path / "store"))
    notes, notify = _notes()
    e = store.entry("demo", "streamed", FileSource(str(image)), notify=notify)
    rows = _arrays()["rows"]
    w = e.writer()
    tracemalloc.start()
    try:
        for i in range(0, len(rows), 1 << 15):  # 1 MiB pieces
            w.append("rows", rows[i:i + (1 << 15)])
        w.append("rows", rows[:0])
        assert w.save({"k": 1}, {"small": np.arange(3)})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < (3 << 20), peak  # the 8 MiB went through a temporary file
    for mapped in (False, True):
        info, got = store.entry("demo", "streamed", FileSource(str(image))).load(mapped=mapped)
        assert info == {"k": 1} and np.array_equal(got["rows"], rows)
        assert np.array_equal(got["small"], np.arange(3))
    leftovers = [p for p in (tmp_path / "store").iterdir() if not p.name.endswith(SUFFIX)]
    assert leftovers == []
    w = e.writer()
    with pytest.raises(TypeError):
        w.append("rows", np.zeros((2, 16), np.uint8))
        w.append("rows", np.zeros((2, 32), np.uint8))  # rows of another shape
    w.close()
    # no store: nothing to write
    assert IndexStore(None).entry("demo", "x", FileSource(str(image))).writer() is None
    # the store cannot be written: a note, the entry is not kept
    bad = IndexStore(str(image / "sub"))
    w = bad.entry("demo", "x", FileSource(str(image)), notify=notify).writer()
    notes.clear()
    w.append("rows", rows[:10])
    assert not w.save({}, {}) and notes[0][0] == "index-not-saved"


# -- PBS: index tables read on demand ----------------------------------------------------------
def _fidx(path, digests, chunk=4096):
    from backends.pbs.structs import FIXED_SIZED_CHUNK_INDEX_1_0

    table = b"".join(digests)
    size = len(digests) * chunk
    head = (FIXED_SIZED_CHUNK_INDEX_1_0 + bytes(16) + struct.pack("<q", 0)
            + hashlib.sha256(table).digest() + struct.pack("<QQ", size, chunk)).ljust(4096, b"\0")
    path.write_bytes(head + table)


def test_fixed_index_keeps_no_table(tmp_path):
    """A .fidx of 200,000 chunks (6.4 MB of digests) costs the process almost nothing once
    open: the digests are read from the file when a chunk is read."""
    from backends.pbs.index import open_index

    rng = np.random.default_rng(1)
    digs = [bytes(r) for r in rng.integers(0, 256, (200_000, 32), dtype=np.uint8)]
    p = tmp_path / "drive-scsi0.img.fidx"
    _fidx(p, digs)
    METADATA_CACHE.clear()
    tracemalloc.start()
    try:
        ix = open_index(str(p))
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert held < 64 << 10, held
    assert ix.problems == [] and ix.known == ix.count == 200_000
    for i in (0, 1, 2047, 2048, 123_456, 199_999):
        assert ix.digest(i) == digs[i]
    assert ix.digest(200_000) is None
    got = b"".join(r.tobytes() for _f, r in ix.digest_rows())
    assert got == b"".join(digs)
    # the table altered after the backup: the checksum (over the walked table) says so
    raw = bytearray(p.read_bytes())
    raw[4096 + 32 * 5000] ^= 1
    p.write_bytes(bytes(raw))
    assert open_index(str(p)).problems == ["index checksum mismatch (digest table altered)"]


def test_dynamic_index_blocks_and_fences(tmp_path, monkeypatch):
    """chunks_at / chunk_range / size of a .didx read a block at a time (blocks of 16
    entries here) equal those of the whole table, also for a table whose ends stop
    growing at entry 700 (the consistent prefix is kept)."""
    from backends.pbs import index as pidx
    from backends.pbs.structs import DYNAMIC_SIZED_CHUNK_INDEX_1_0

    monkeypatch.setattr(pidx, "TABLE_BLOCK", 16)
    monkeypatch.setattr(pidx, "WALK_BYTES", 40 * 48)
    rng = np.random.default_rng(2)
    for bad_at in (None, 700, 704, 0):
        ends = np.cumsum(rng.integers(1, 5000, 1000)).astype(np.uint64)
        if bad_at is not None:
            ends[bad_at] = ends[bad_at - 1] if bad_at else 0
        digs = rng.integers(0, 256, (1000, 32), dtype=np.uint8)
        arr = np.zeros(1000, dtype=[("end", "<u8"), ("digest", "V32")])
        arr["end"] = ends
        arr["digest"] = digs.view("V32").ravel()
        body = arr.tobytes()
        head = (DYNAMIC_SIZED_CHUNK_INDEX_1_0 + bytes(16) + struct.pack("<q", 0)
                + hashlib.sha256(body).digest()).ljust(4096, b"\0")
        p = tmp_path / "root.pxar.didx"
        p.write_bytes(head + body)
        ix = pidx.open_index(str(p))
        n = 1000 if bad_at is None else bad_at
        assert ix.count == n
        assert ix.problems == ([] if bad_at is None else
                               [f"entry {bad_at}: end offsets do not increase; later entries ignored"])
        e = ends[:n].astype(np.int64)
        assert ix.size == (int(e[-1]) if n else 0)
        for i in range(0, n, 7):
            assert ix.chunk_range(i) == ((int(e[i - 1]) if i else 0), int(e[i] - (e[i - 1] if i else 0)))
            assert ix.digest(i) == digs[i].tobytes()
        for off in rng.integers(0, max(1, ix.size), 300).tolist():
            ln = int(rng.integers(1, 20000))
            first = int(np.searchsorted(e, off, side="right"))
            last = int(np.searchsorted(e, off + ln - 1, side="right"))
            assert ix.chunks_at(off, ln) == range(first, min(last, n - 1) + 1)


# -- PBS: the chunk check a range of folders at a time, and its stored listing -------------------
def _scan(inputs, store):
    METADATA_CACHE.clear()
    ctx = discover([str(i) for i in inputs], Options(index_dir=store and str(store), jobs=1))
    return ctx, report_text(ctx), json.loads(report_json(ctx))


VARIANTS = ("datastore", "datastore-missing-chunk", "datastore-bad-crc", "datastore-truncated-fidx")


@pytest.mark.parametrize("variant", VARIANTS)
def test_chunk_check_in_many_folder_ranges_says_the_same(tmp_path, monkeypatch, variant):
    """The PBS fixtures' reports (missing, corrupt chunks, truncated indexes, orphans) are
    the same whether the check takes all folders at once or 2,048 ranges of 32 folders,
    with and without a stored listing (written, then read, a range at a time)."""
    from backends.pbs import datastore

    ds = require_fixture("pbs", "generated", variant)
    _c, text, js = _scan([ds], None)
    monkeypatch.setattr(datastore, "CHECK_BUDGET", 160)
    ranges = datastore._folder_ranges(10_000)  # 320,000 bytes of digests: 2,048 ranges
    assert len(ranges) == 2048 and ranges[0] == (0, 32) and ranges[-1][1] == 1 << 16
    assert datastore._folder_ranges(0) == [(0, 1 << 16)]
    monkeypatch.setattr(datastore, "_folder_ranges", lambda items: ranges)
    _c, text1, js1 = _scan([ds], None)
    _c, text2, js2 = _scan([ds], tmp_path / "store")
    ctx3, text3, js3 = _scan([ds], tmp_path / "store")
    assert [e.state for e in ctx3.indexes.log if e.backend == "pbs"] == ["reused"]
    assert text == text1 == text2 == text3 and js == js1 == js2 == js3


def test_stored_chunk_listing_damage_is_rebuilt(tmp_path):
    """The stored chunk listing (its digests read mapped) is never trusted when truncated,
    bit-flipped or of the wrong size: an info entry, a new listing, the same report as a
    scan without a store; and what it holds is every chunk file's digest, sorted."""
    ds = tmp_path / "datastore"
    shutil.copytree(require_fixture("pbs", "generated", "datastore"), ds, symlinks=True)
    store = tmp_path / "store"
    _c, text0, js0 = _scan([ds], None)
    ctx1, _text1, _ = _scan([ds], store)
    assert [e.state for e in ctx1.indexes.log if e.backend == "pbs"] == ["built"]
    [f] = sorted(store.glob("pbs-*" + SUFFIX))
    good = f.read_bytes()
    names = sorted(n for d in (ds / ".chunks").iterdir() for n in os.listdir(d) if len(n) == 64)
    hlen = struct.unpack_from("<I", good, 12)[0]
    head = json.loads(good[56:56 + hlen])
    dig = next(a for a in head["arrays"] if a["name"] == "digests")
    start = 56 + hlen + dig["offset"]
    stored = good[start:start + dig["nbytes"]]
    assert stored == b"".join(bytes.fromhex(n) for n in names) and head["info"]["chunks"] == len(names)
    cases = {"truncated": (good[:-64], "index-truncated"),
             "bit-flipped": (good[:start + 40] + bytes([good[start + 40] ^ 0x10]) + good[start + 41:],
                             "index-corrupt"),
             "wrong size": (good + b"\0" * 32, "index-corrupt")}
    for what, (blob, code) in cases.items():
        f.write_bytes(blob)
        ctx, text, js = _scan([ds], store)
        assert [(e.name, e.state) for e in ctx.indexes.log if e.backend == "pbs"] == \
            [("chunk-listing", "rebuilt")], what
        assert [e.code for e in ctx.report if e.code.startswith("index-")] == [code], what
        assert [d for d in js["damage"] if not d["code"].startswith("index-")] == \
            js0["damage"], what
        assert text.count("\n") == text0.count("\n") + 1, what  # the info entry's line
        again = f.read_bytes()
        assert again[56 + struct.unpack_from("<I", again, 12)[0]:] == good[56 + hlen:], what


def test_chunk_check_memory_is_flat(tmp_path, monkeypatch):
    """A datastore of 40,000 chunk files in 256 folders (names only: the existence check
    lists folders) and a .fidx referencing 30,000 of them plus 100 missing: with ranges of
    64 KiB of digests and tables read 32 KiB at a time the check's traced peak stays under half the 1.28 MB of digests (it
    held ~90 bytes a chunk, 3.6 MB), and it finds exactly the 100 missing and 10,000
    orphans."""
    from backends.pbs import datastore

    rng = np.random.default_rng(9)
    raw = rng.integers(0, 256, (40_100, 32), dtype=np.uint8)
    raw[:, 0] = np.arange(40_100) % 256  # 256 folders (0000, 0100 ... ff00): the memory
    raw[:, 1] = 0  # measured is the digests', not the 65,536 folders' own
    digs = [r.tobytes() for r in raw]
    assert len(set(digs)) == len(digs)
    files, missing = digs[:40_000], digs[40_000:]
    root = tmp_path / "ds"
    for d in files:
        h = d.hex()
        (root / ".chunks" / h[:4]).mkdir(parents=True, exist_ok=True)
        (root / ".chunks" / h[:4] / h).touch()
    snap = root / "vm" / "100" / "2024-01-01T00:00:00Z"
    snap.mkdir(parents=True)
    _fidx(snap / "drive-scsi0.img.fidx", files[:30_000] + missing)
    monkeypatch.setattr(datastore, "CHECK_BUDGET", 64 << 10)
    monkeypatch.setattr("backends.pbs.index.WALK_BYTES", 32 << 10)  # tables read in 32 KiB
    METADATA_CACHE.clear()
    peaks = []
    real = datastore.check_chunks

    def traced(*a, **k):
        tracemalloc.start()
        try:
            return real(*a, **k)
        finally:
            peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()

    monkeypatch.setattr(datastore, "check_chunks", traced)
    monkeypatch.setattr("backends.pbs.backend.check_chunks", traced)
    ctx = discover([str(root)], Options(index_dir=None, jobs=1))
    [peak] = peaks
    miss = [e for e in ctx.report if e.code == "missing-chunk"]
    assert miss and all("100 chunks are missing from every datastore" in e.message for e in miss)
    assert sum(n for e in miss[:1] for _s, n in e.ranges) == 100 * 4096
    [orph] = [e for e in ctx.report if e.code == "orphan-chunks"]
    assert orph.message.startswith("10000 chunk files are referenced by no index")
    assert peak < 40_100 * 32 / 2, peak


def test_unique_rows_equals_numpys():
    from backends.pbs.datastore import _unique_rows

    rng = np.random.default_rng(4)
    a = rng.integers(0, 256, (5000, 32), dtype=np.uint8)
    a[:50, :8] = a[50:100, :8]  # first-word collisions
    a[100:110, :31] = a[110:120, :31]  # differ in the last byte only
    a[200:230] = a[300:330]  # whole duplicates
    rows = np.concatenate([a, a[:900], a[4000:]])
    got = _unique_rows(rows.copy())
    want = np.unique(rows.view("V32").ravel())
    assert got.shape == (len(want), 32) and got.tobytes() == want.tobytes()
    assert _unique_rows(np.zeros((0, 32), np.uint8)).shape == (0, 32)


# -- Ceph: the OSD object index as mapped tables -------------------------------------------------
def _mapped(arr) -> bool:
    import mmap

    while arr is not None:
        if isinstance(arr, mmap.mmap):
            return True
        arr = arr.obj if isinstance(arr, memoryview) else getattr(arr, "base", None)
    return False


@pytest.mark.parametrize("with_store", [False, True])
def test_osd_object_tables_are_file_pages(tmp_path, monkeypatch, with_store):
    """After a build (with the index store: saved then mapped; without: an unnamed
    temporary file) and after a reuse, every per-object table of every OSD is a view of a
    mapped file, not the process's memory; every image still reads to its manifest sha256
    and the report is the same as with the index held in memory."""
    from backends.ceph.osd import OsdStore

    from conftest import FIXTURES, sha256_source, unpack
    from pvfs.nodes import resolve

    require_fixture("ceph", "ceph-fixture.tar.zst")
    root = unpack(FIXTURES / "ceph" / "ceph-fixture.tar.zst") / "ceph-fixture"
    m = json.loads((FIXTURES / "ceph" / "manifest.json").read_text())
    osds = [root / f"osd.{i}" / "block" for i in range(3)]
    made = []
    real = OsdStore.indexed.__func__

    def spy(cls, *a, **k):
        made.append(real(cls, *a, **k))
        return made[-1]

    monkeypatch.setattr(OsdStore, "indexed", classmethod(spy))
    store = tmp_path / "store" if with_store else None
    for _run in range(2 if with_store else 1):  # built, then reused
        made.clear()
        ctx, text, js = _scan(osds, store)
        assert len(made) == 3
        tables = [a for st in made for di in st.data.values() for a in (di.objnos, di.hashes)]
        assert tables and all(_mapped(a) for a in tables)
        assert sum(len(di.objnos) for st in made for di in st.data.values()) > 50
        for img in m["images"]:
            vmid = img["name"].split("-")[1]
            assert sha256_source(resolve(ctx.root, f"vms/{vmid}/disk-0.raw").source) == \
                img["sha256"], img["name"]
    # the same report as the index held in memory (as built)
    monkeypatch.setattr("pvfs.index.scratch_map", lambda arrays: arrays)
    _c, text0, js0 = _scan(osds, None)
    assert text0 == text and js0 == js


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 10_000), st.integers(0, 255), st.integers(0, 3000))
def test_fuzz_mapped_load(tmp_path_factory, pos, xor, cut):
    """Any byte changed or any tail cut off: load(mapped=True) gives None (and a note) or
    the very arrays saved, never an exception."""
    base = tmp_path_factory.getbasetemp() / "fuzz-mapped"
    base.mkdir(exist_ok=True)
    img = base / "input.img"
    if not img.exists():
        img.write_bytes(bytes(4096))
    store = IndexStore(str(base / "store"))
    arrays = {"rows": np.arange(256 * 32, dtype=np.uint8).reshape(256, 32),
              "n": np.arange(5, dtype=np.int64)}
    e = store.entry("demo", "fuzz", FileSource(str(img)), notify=lambda *a: None)
    assert e.save({"k": 1}, arrays)
    blob = bytearray(e.path and open(e.path, "rb").read())
    if pos < len(blob):
        blob[pos] ^= xor
    with open(e.path, "wb") as f:
        f.write(bytes(blob[:max(0, len(blob) - cut)]))
    got = store.entry("demo", "fuzz", FileSource(str(img)), notify=lambda *a: None).load(mapped=True)
    if got is not None:
        info, arr = got
        assert info == {"k": 1} and all(np.array_equal(arr[k], arrays[k]) for k in arrays)


def test_other_objects_from_arrays_answer_as_the_dict():
    """The objects outside the compact data arrays (headers, clones, meta objects), read
    from the stored arrays, answer every question as the dict they were built from: the
    versions of an object, iteration in the order found, pools, namespaces, sorted names
    and names by prefix; a table that does not add up is refused."""
    import random
    import types

    from backends.ceph.keys import CEPH_NOSNAP
    from backends.ceph.osd import OsdStore, _OtherIndex
    from pvfs.index import scratch_map
    from pvfs.source import BytesSource

    osd = types.SimpleNamespace(kv=None, source=BytesSource(b"", label="osd"))
    built = OsdStore(osd, "osd.0")
    rnd = random.Random(5)
    for i in range(3000):
        pool = rnd.choice([-1, 1, 2, 2, 3])
        ns = rnd.choice([b"", b"", b"", b"tenant", b"t2"])
        name = rnd.choice([b"rbd_header.", b"rbd_id.vm-", b"rbd_data.ab.", b"osdmap.", b"x"]) \
            + b"%d" % rnd.randrange(400)
        for snap in rnd.sample([CEPH_NOSNAP, 4, 9, 12], rnd.randint(1, 3)):
            built.other.setdefault((pool, ns, name), {})[snap] = b"K%d" % i + name
    info, arrays = built.index_payload()
    st = OsdStore(osd, "osd.0")
    assert st.load_index(info, scratch_map(arrays)) and isinstance(st.other, _OtherIndex)
    d = built.other
    assert len(st.other) == len(d) and list(st.other) == list(d)
    assert [(k, v) for k, v in st.other.items()] == list(d.items())
    for k in list(d)[::7] + [(2, b"", b"nothing"), (9, b"", b"x1"), (2, b"zz", b"x1")]:
        assert st.other.get(k) == d.get(k) and (k in st.other) == (k in d)
    assert st.pools() == built.pools() and all(
        st.namespaces(p) == built.namespaces(p) for p in (-1, 1, 2, 3, 7))
    for pool in (-1, 2, 3, 5):
        for ns in (b"", b"tenant", b"nope"):
            assert sorted(set(st.other_names(pool, ns))) == built.other_names(pool, ns)
            for prefix in (b"rbd_header.", b"rbd_id.vm-1", b"osdmap.3", b"", b"zzz"):
                assert st.names_with_prefix(pool, prefix, ns) == \
                    built.names_with_prefix(pool, prefix, ns)
    assert st.snaps_of(2, b"x5", b"") == built.snaps_of(2, b"x5", b"")
    # offsets that do not add up, an order out of range: refused (then rebuilt)
    for name, bad in (("other_name_off", lambda a: a[:-1]),
                      ("other_order", lambda a: a + len(a))):
        broken = dict(arrays, **{name: bad(arrays[name])})
        assert not OsdStore(osd, "osd.0").load_index(info, broken), name
