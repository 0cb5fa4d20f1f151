"""The persistent index store (pvfs/index.py) and the parallel worker phase (pvfs/parallel.py).

Against the fixtures: a thin pool's mappings and the object index of each Ceph OSD are
stored on the first discovery and loaded on the second (the builders are not called
again, the scan output is identical, the thin LVs and RBD images still hash to the
manifests' sha256); a modified, truncated or corrupt index file and a changed input are
detected and rebuilt with exact info entries; ``--index-dir none`` writes nothing; the
inputs' bytes never change; the store stays under its byte budget; a parallel scan equals
a serial one and a worker that raises or dies is a warning entry, not a traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURES, require_fixture, sha256_source, unpack
from pvfs import cli
from pvfs.cache import METADATA_CACHE
from pvfs.discover import Options, discover
from pvfs.index import SUFFIX, IndexStore, check_dir, resolve_dir
from pvfs.nodes import resolve
from pvfs.report import report_json, report_text
from pvfs.source import FileSource, SliceSource

ROOT = Path(__file__).resolve().parent.parent


def _untouched(path: Path) -> tuple:
    """What any write (or chmod) to an input would change: size, mtime and ctime."""
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _scan(inputs, store, jobs=1):
    METADATA_CACHE.clear()  # nothing carried over from the run before but the store
    ctx = discover([str(i) for i in inputs], Options(index_dir=store and str(store), jobs=jobs))
    return ctx, report_text(ctx), json.loads(report_json(ctx))


def _pvx(store: Path) -> list[Path]:
    return sorted(store.glob("*" + SUFFIX))


def _index_entries(ctx):
    return [(e.severity, e.code, e.path) for e in ctx.report if e.code.startswith("index-")]


# -- the store on its own ---------------------------------------------------------------
@pytest.fixture
def image(tmp_path):
    p = tmp_path / "input.img"
    p.write_bytes(os.urandom(1 << 16))
    return p


def _notes():
    got = []
    return got, lambda severity, code, msg: got.append((code, msg))


def test_round_trip_and_each_kind_of_damage(tmp_path, image):
    store = IndexStore(str(tmp_path / "store"))
    src = FileSource(str(image))
    arrays = {"a": np.arange(1000, dtype=np.uint64), "b": np.array([[1, 2], [3, 4]], np.int32)}
    notes, notify = _notes()

    def entry(meta=b"M", version=1, source=src):
        return store.entry("demo", "things", source, meta=meta, version=version,
                           label="input.img", notify=notify)

    assert entry().load() is None and notes == []  # nothing yet: no note
    assert entry().save({"n": 5}, arrays)
    [f] = _pvx(tmp_path / "store")
    info, got = entry().load()
    assert info == {"n": 5} and got.keys() == arrays.keys()
    assert all(np.array_equal(got[k], arrays[k]) and got[k].dtype == arrays[k].dtype
               for k in arrays)
    assert [e.state for e in store.log] == ["built", "reused"]

    # metadata hash, backend version: stale, rebuilt without an entry (a cache going out
    # of date is no damage); 'pvfs index' lists why
    e1, e2 = entry(meta=b"other"), entry(version=2)
    assert e1.load() is None and e2.load() is None and notes == []
    assert e1.why == "the metadata it was built from changed"
    assert e2.why == "built by another version of the backend"
    assert e2.save({"n": 5}, arrays) and store.log[-1].state == "rebuilt"
    assert entry(version=2).load() is not None and entry().load() is None
    assert entry().save({"n": 5}, arrays)
    # a slice of the same file is another place: another entry
    assert entry(source=SliceSource(src, 512, 4096)).load() is None and notes == []

    blob = bytearray(f.read_bytes())
    blob[-3] ^= 0x40  # one bit of the payload
    f.write_bytes(bytes(blob))
    notes.clear()
    assert entry().load() is None
    assert notes == [("index-corrupt", f"demo index things of input.img ({f.name}): "
                                       "checksum mismatch; rebuilt")]
    f.write_bytes(bytes(blob[:-100]))
    notes.clear()
    assert entry().load() is None
    assert notes == [("index-truncated", f"demo index things of input.img ({f.name}): "
                                         f"{len(blob) - 100} bytes, its header says "
                                         f"{len(blob)}; rebuilt")]
    f.write_bytes(b"PVFSIDX\0" + bytes(20))
    notes.clear()
    assert entry().load() is None and notes[0][0] == "index-truncated"
    f.write_bytes(b"not an index at all, but long enough for a header" * 2)
    notes.clear()
    assert entry().load() is None and notes[0][0] == "index-corrupt"
    again = entry()
    assert again.load() is None and again.save({"n": 6}, arrays)
    assert store.log[-1].state == "rebuilt" and entry().load()[0] == {"n": 6}

    # the input changes (a new mtime): stale
    os.utime(image, ns=(1, 1))
    notes.clear()
    e3 = store.entry("demo", "things", FileSource(str(image)), meta=b"M", label="input.img",
                     notify=notify)
    assert e3.load() is None and notes == [] and e3.why == "the input changed (size or mtime)"
    assert not [p for p in (tmp_path / "store").iterdir() if not p.name.endswith(SUFFIX)]


def test_store_is_bounded(tmp_path, image):
    store = IndexStore(str(tmp_path / "store"), max_bytes=200_000)
    src = FileSource(str(image))
    notes, notify = _notes()
    for i in range(8):  # 8 entries of ~40 KB in a 200 KB store: the oldest go
        e = store.entry("demo", f"n{i}", src, notify=notify)
        assert e.save({}, {"x": np.zeros(5000, np.uint64)})
        assert store.total_bytes() <= 200_000
    names = {json.loads(p.read_bytes()[56:56 + 2000].split(b',"label"')[0] + b"}")["name"]
             for p in _pvx(tmp_path / "store")}
    assert names == {"n4", "n5", "n6", "n7"}
    dead = tmp_path / "store" / ".tmp-dead.pvx~"  # a writer that died long ago
    dead.write_bytes(b"x")
    os.utime(dead, (1, 1))
    store.trim()
    assert not dead.exists()
    big = store.entry("demo", "big", src, notify=notify)
    assert not big.save({}, {"x": np.zeros(20_000, np.uint64)})  # over half the budget
    assert notes[-1][0] == "index-too-large" and store.log[-1].state == "not-saved"


def test_disabled_store_and_sources_without_identity(tmp_path, image):
    from pvfs.source import BytesSource

    off = IndexStore(None)
    e = off.entry("demo", "x", FileSource(str(image)))
    assert not e.usable and e.load() is None and not e.save({}, {})
    on = IndexStore(str(tmp_path / "s"))
    e = on.entry("demo", "x", BytesSource(b"abc"))  # no identity: nothing is kept
    assert not e.usable and not e.save({}, {}) and not (tmp_path / "s").exists()


def test_index_dir_values(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_dir(None) == str(tmp_path / "xdg" / "pvfs" / "index")
    assert resolve_dir("none") is None and resolve_dir("NONE") is None
    f = tmp_path / "file"
    f.write_text("x")
    assert check_dir(str(f)) == f"--index-dir {f}: not a directory"
    assert check_dir(str(tmp_path / "new" / "deeper")) is None  # made when first needed
    assert "cannot be created" in check_dir(str(f / "sub"))


# -- LVM thin pool mappings -------------------------------------------------------------------
@pytest.fixture(scope="module")
def thin():
    require_fixture("lvm-thin", "lvm-thin-fixtures.tar.xz")
    d = unpack(FIXTURES / "lvm-thin" / "lvm-thin-fixtures.tar.xz")
    return d / "pve-disk.img", json.loads((FIXTURES / "lvm-thin" / "manifest.json").read_text())


def test_thin_mappings_kept_and_reused(tmp_path, thin, monkeypatch):
    from backends.lvm.thin import ThinPool

    img, m = thin
    before = _untouched(img)
    store = tmp_path / "store"
    ctx0, text0, json0 = _scan([img], None)
    ctx1, text1, json1 = _scan([img], store)
    assert sorted((e.backend, e.state) for e in ctx1.indexes.log) == \
        [("core", "built"), ("lvm", "built")]
    assert len(_pvx(store)) == 2  # the pool's mappings, the probe results

    def boom(self, dev):
        raise AssertionError("the mapping tree was walked although the index is current")

    def probed(self, volume, ctx):
        raise AssertionError("a losing probe was asked although the probe cache is current")

    monkeypatch.setattr(ThinPool, "_load_mapping", boom)
    from backends.xfs.backend import XfsBackend

    monkeypatch.setattr(XfsBackend, "probe", probed)  # XFS wins nothing on this disk
    ctx2, text2, json2 = _scan([img], store)
    assert sorted((e.backend, e.state) for e in ctx2.indexes.log) == \
        [("core", "reused"), ("lvm", "reused")]
    assert ctx2.probes.missed == 0
    assert text0 == text1 == text2 and json0 == json1 == json2
    for name, tv in m["thin_volumes"].items():
        assert sha256_source(resolve(ctx2.root, f"storage/lvm/pve/{name}").source) == \
            tv["sha256"], name
    monkeypatch.undo()

    # A corrupt index file: an info entry at the pool, rebuilt, the rest unchanged.
    [f] = [p for p in _pvx(store) if p.name.startswith("lvm-")]
    blob = bytearray(f.read_bytes())
    blob[len(blob) // 2] ^= 1
    f.write_bytes(bytes(blob))
    ctx3, text3, _ = _scan([img], store)
    assert _index_entries(ctx3) == [("info", "index-corrupt", "storage/lvm/pve/.pool/data")]
    assert sorted(e.state for e in ctx3.indexes.log) == ["rebuilt", "reused"]
    assert [ln for ln in text3.splitlines() if "index-corrupt" not in ln and
            "checksum mismatch" not in ln and "Damage report" not in ln] == \
        [ln for ln in text0.splitlines() if "Damage report" not in ln]
    ctx4, text4, _ = _scan([img], store)
    assert text4 == text0 and [e.state for e in ctx4.indexes.log] == ["reused", "reused"]
    assert _untouched(img) == before  # the input was only read


# -- Ceph OSD object indexes, parallel workers ---------------------------------------------------
@pytest.fixture(scope="module")
def ceph():
    require_fixture("ceph", "ceph-fixture.tar.zst")
    root = unpack(FIXTURES / "ceph" / "ceph-fixture.tar.zst") / "ceph-fixture"
    return root, json.loads((FIXTURES / "ceph" / "manifest.json").read_text())


def _osds(root):
    return [root / f"osd.{i}" / "block" for i in range(3)]


def test_osd_object_index_kept_and_reused(tmp_path, ceph, monkeypatch):
    from backends.ceph.osd import OsdStore

    root, m = ceph
    before = {p: _untouched(p) for p in _osds(root)}
    store = tmp_path / "store"
    _c0, text0, json0 = _scan(_osds(root), None)
    ctx1, text1, json1 = _scan(_osds(root), store)
    assert sorted((e.backend, e.name, e.state) for e in ctx1.indexes.log
                  if e.backend == "ceph") == [("ceph", "objects", "built")] * 3

    def boom(self):
        raise AssertionError("the onode keys were iterated although the index is current")

    monkeypatch.setattr(OsdStore, "build_index", boom)
    ctx2, text2, json2 = _scan(_osds(root), store)
    assert [e.state for e in ctx2.indexes.log] == ["reused"] * 4  # 3 OSDs, the probes
    assert text0 == text1 == text2 and json0 == json1 == json2
    for img in m["images"]:  # every image, read through the stored object index
        vmid = img["name"].split("-")[1]
        assert sha256_source(resolve(ctx2.root, f"vms/{vmid}/disk-0.raw").source) == \
            img["sha256"], img["name"]
    monkeypatch.undo()

    # The index file is cut short: rebuilt, with one entry for that OSD.
    victim = max(_pvx(store), key=lambda p: p.stat().st_mtime_ns)
    victim.write_bytes(victim.read_bytes()[:-10])
    ctx3, _t, _j = _scan(_osds(root), store)
    entries = _index_entries(ctx3)
    assert len(entries) == 1 and entries[0][:2] == ("info", "index-truncated")
    assert sorted(e.state for e in ctx3.indexes.log if e.backend == "ceph") == \
        ["rebuilt", "reused", "reused"]
    assert {p: _untouched(p) for p in _osds(root)} == before


def test_parallel_scan_equals_serial(tmp_path, ceph, monkeypatch):
    import pvfs.parallel

    root, _m = ceph
    monkeypatch.setattr(pvfs.parallel, "WORKER_MIN_BYTES", 0)  # the fixture's OSDs are small
    _c, serial, serial_json = _scan([root], None)
    ctx, par, par_json = _scan([root], tmp_path / "store", jobs=2)
    assert len(ctx.workers_log) >= 4 and par == serial and par_json == serial_json
    built = sorted(e[3] for r in ctx.workers_log for e in r["entries"])
    assert built == ["built"] * 4  # osd.0-2 and variants/osd.0-compacted, one worker each
    assert [e.state for e in ctx.indexes.log if e.backend == "ceph"] == ["reused"] * 4
    # second run: every unit is warm, no worker starts
    ctx2, par2, _ = _scan([root], tmp_path / "store", jobs=2)
    assert ctx2.workers_log == [] and par2 == serial
    # small inputs are not worth a worker process: none starts
    monkeypatch.setattr(pvfs.parallel, "WORKER_MIN_BYTES", 1 << 30)
    ctx3, par3, _ = _scan([root], tmp_path / "store2", jobs=2)
    assert ctx3.workers_log == [] and par3 == serial


@pytest.mark.parametrize("how", ["raise", "exit"])
def test_worker_failure_is_an_entry(tmp_path, ceph, monkeypatch, how):
    import pvfs.parallel

    root, _m = ceph
    monkeypatch.setattr(pvfs.parallel, "WORKER_MIN_BYTES", 0)  # the fixture's OSDs are small
    monkeypatch.setenv("PVFS_WORKER_FAULT", f"{how}:osd.1")
    _c, serial, _ = _scan(_osds(root), None)
    ctx, text, _ = _scan(_osds(root), tmp_path / "store", jobs=2)
    failed = [e for e in ctx.report if e.code == "index-worker-failed"]
    assert failed and all(e.severity == "warning" for e in failed)
    assert any(e.path.endswith("osd.1/block") for e in failed)
    word = "RuntimeError: injected fault" if how == "raise" else "BrokenProcessPool"
    assert any(word in e.message for e in failed)
    # everything else is what a serial scan shows; the OSD was indexed in this process
    rest = [ln for ln in text.splitlines() if "index-worker-failed" not in ln
            and "worker process" not in ln and "Damage report" not in ln]
    assert rest == [ln for ln in serial.splitlines() if "Damage report" not in ln]


# -- the command line --------------------------------------------------------------------------
def test_cli_index_none_writes_nothing(tmp_path, thin, monkeypatch, capsys):
    img, _m = thin
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cli.main(["scan", "--index-dir", "none", "--jobs", "2", str(img)]) == 0
    assert not (tmp_path / "xdg").exists() and not (tmp_path / "home").exists()
    assert cli.main(["index", "--index-dir", "none", str(img)]) == 2
    assert "'pvfs index' needs an index store" in capsys.readouterr().err
    assert cli.main(["scan", "--index-dir", str(img), str(img)]) == 2
    assert f"--index-dir {img}: not a directory" in capsys.readouterr().err
    # the default store, then 'pvfs index' says what it holds
    assert cli.main(["scan", str(img)]) == 0
    assert len(_pvx(tmp_path / "xdg" / "pvfs" / "index")) == 2  # mappings, probes
    capsys.readouterr()
    assert cli.main(["index", "--jobs", "1", str(img)]) == 0
    out = capsys.readouterr().out
    assert "reused    lvm thin-pool" in out and "the store holds 2 indexes" in out


# -- PBS chunk listing --------------------------------------------------------------------------
def test_pbs_chunk_listing_follows_the_folders(tmp_path):
    import shutil

    from backends.pbs import datastore

    src = require_fixture("pbs", "generated", "datastore")
    ds = tmp_path / "datastore"
    shutil.copytree(src, ds, symlinks=True)
    store = tmp_path / "store"
    _c, text0, json0 = _scan([ds], None)
    ctx1, text1, json1 = _scan([ds], store)
    ctx2, text2, json2 = _scan([ds], store)
    assert [(e.name, e.state) for e in ctx1.indexes.log if e.backend == "pbs"] == \
        [("chunk-listing", "built")]
    assert [(e.name, e.state) for e in ctx2.indexes.log if e.backend == "pbs"] == \
        [("chunk-listing", "reused")]
    assert text0 == text1 == text2 and json0 == json1 == json2
    assert not [e for e in ctx2.report if e.code == "missing-chunk"]
    # A chunk file goes: its folder's mtime changes, that folder is listed again and the
    # chunk is missing, as without the index.
    gt = json.loads(require_fixture("pbs", "generated", "ground-truth.json").read_text())
    gone = gt["damaged_variants"]["datastore-missing-chunk"]["missing_chunk"]
    victim = ds / ".chunks" / gone[:4] / gone
    victim.unlink()
    calls = []
    real = datastore._list_dir
    datastore_list = lambda p: (calls.append(p), real(p))[1]  # noqa: E731
    datastore._list_dir = datastore_list
    try:
        ctx3, text3, _ = _scan([ds], store)
    finally:
        datastore._list_dir = real
    assert calls == [str(victim.parent)]  # only the changed folder
    _c, text_none, _ = _scan([ds], None)
    assert text3 == text_none
    miss = [e for e in ctx3.report if e.code == "missing-chunk"]
    assert {e.path for e in miss} == {  # the ground truth's affected archive and range
        "storage/pbs/datastore/vm/100/2024-01-16T10:00:00Z/drive-scsi0.img",
        "vms/100/backups/2024-01-16T10:00:00Z/disk-scsi0.raw"}
    assert all(gone in e.message and e.ranges == ((8388608, 4194304),) for e in miss)


def test_probe_cache_follows_files_an_image_names(tmp_path):
    """The probe results of an overlay are not used once its backing file changed (the
    backing file is no input, but what the overlay's disk holds comes from it)."""
    import shutil
    import subprocess

    if shutil.which("qemu-img") is None:
        pytest.fail("qemu-img is needed (Debian: qemu-utils)")
    base = tmp_path / "base.img"
    base.write_bytes(bytes(4 << 20))
    ov = tmp_path / "overlay.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw",
                    str(ov)], check=True)
    store = tmp_path / "store"
    ctx1, text1, _ = _scan([ov], store)
    ctx2, text2, _ = _scan([ov], store)
    assert ctx1.probes.missed > 0 and ctx2.probes.missed == 0 and text1 == text2
    os.utime(base, ns=(10**18, 10**18))
    ctx3, text3, _ = _scan([ov], store)
    assert ctx3.probes.missed == ctx1.probes.missed and text3 == text1
    # a folder given as the input: its files may change without the folder's identity
    ctx4, _t, _ = _scan([tmp_path], store)
    assert ctx4.probes.entry is None


def test_digest_set_operations_equal_numpys():
    """_unique_rows / digests_in (a sort on first words and binary search on 64-bit
    words) give what np.unique / np.isin give on the digests, also when digests share
    their first 8 bytes."""
    from backends.pbs.datastore import _unique_rows, digests_in

    rng = np.random.default_rng(7)
    a = rng.integers(0, 256, (4000, 32), dtype=np.uint8)
    a[:40, :8] = a[40:80, :8]  # first-word collisions
    a[80:90, :31] = a[90:100, :31]  # differ in the last byte only
    rows = np.concatenate([a, a[:700], a[3000:]])
    v = rows.copy().view("V32").ravel()
    u = _unique_rows(rows.copy()).view("V32").ravel()
    assert len(u) == 4000 and (u == np.unique(v)).all()
    for table in (a[::3], a[1::2][::-1], a[:0]):  # sorted or not, or empty
        t = np.ascontiguousarray(table)
        want = np.isin(u.view("S32"), t.view("S32").ravel())
        assert (digests_in(u, t) == want).all()


def test_digest_lookup_copies_nothing_of_the_table():
    """The PBS chunk check looks a datastore's digests up in its chunk listing without a
    copy of the listing (it made two 32-byte-per-chunk copies of the listing and of the
    queried digests: a datastore of 2 million chunks peaked at ~4 times its 64 MB): with
    the first words given, tracemalloc's peak stays under a quarter of the table."""
    import tracemalloc

    from backends.pbs.datastore import digests_in, first_words

    rng = np.random.default_rng(3)
    n = 1 << 20
    table = rng.integers(0, 256, (n, 32), dtype=np.uint8)
    table[:, :8] = np.sort(rng.integers(0, 1 << 63, n, dtype=np.uint64)).astype(">u8") \
        .view(np.uint8).reshape(n, 8)  # rows in byte order, as a listing is
    query = np.concatenate([table[::7], rng.integers(0, 256, (1000, 32), dtype=np.uint8)])
    t0 = first_words(table)
    tracemalloc.start()
    try:
        found = digests_in(query.view("V32").ravel(), table, t0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert found[:len(table[::7])].all() and not found[len(table[::7]):].any()
    assert peak < table.nbytes / 4, f"peak {peak} bytes for a table of {table.nbytes}"


def test_nbd_exports_are_units_and_remembered(tmp_path):
    """An NBD export is an independent input for the workers; once indexed it is warm
    (the main discovery still checks each entry against the export)."""
    from pvfs import parallel
    from pvfs.discover import Context

    ctx = Context(Options(index_dir=str(tmp_path)))
    uri = "nbd://127.0.0.1:1/osd0"
    f = tmp_path / "disk.img"
    f.write_bytes(bytes(4096))
    assert parallel.units(ctx, [uri, str(f), uri]) == [uri, str(f)]
    assert parallel._worth_a_worker(uri) and not parallel._worth_a_worker(str(f))
    assert not parallel.is_warm(str(tmp_path), uri, ctx.options)
    parallel.mark_warm(str(tmp_path), uri, ctx.options)
    assert parallel.is_warm(str(tmp_path), uri, ctx.options)
    assert not parallel.is_warm(str(tmp_path), "nbd://127.0.0.1:1/osd1", ctx.options)


def _scan_in_daemon(args):
    root, store, q = args
    import pvfs.parallel

    pvfs.parallel.WORKER_MIN_BYTES = 0
    ctx, text, _ = _scan([root], store, jobs=2)
    q.put((len(ctx.workers_log), [e.code for e in ctx.report if e.code.startswith("index")],
           text))


def test_no_workers_from_a_daemonic_process(tmp_path, ceph):
    """A scan run inside a daemonic process (a multiprocessing.Pool worker) cannot start
    workers: it indexes in its own process and says nothing about it."""
    import multiprocessing

    root, _m = ceph
    _c, serial, _ = _scan([root], None)
    mp = multiprocessing.get_context("fork")
    q = mp.Queue()
    p = mp.Process(target=_scan_in_daemon, args=((root, tmp_path / "s", q),), daemon=True)
    p.start()
    n, codes, text = q.get(timeout=120)  # (a crashed daemon sends nothing)
    p.join(60)
    assert n == 0 and codes == [] and text == serial


def test_resource_tracker_keeps_no_caller_pipe_open():
    """The worker pool's resource tracker outlives discovery (it lives as long as the
    mount daemon).  Started with the caller's stdout/stderr, it kept them open, so
    ``subprocess.run(["pvfs", "mount", ...], capture_output=True)`` hung until unmount."""
    code = ("import os, sys\n"
            "from multiprocessing import resource_tracker\n"
            "from pvfs.parallel import _quiet_resource_tracker\n"
            "_quiet_resource_tracker()\n"
            "pid = resource_tracker._resource_tracker._pid\n"
            "print(pid, *[os.readlink(f'/proc/{pid}/fd/{n}') for n in (0, 1, 2)])\n"
            "print('still mine', os.readlink('/proc/self/fd/1').startswith('pipe:'))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    first, second = r.stdout.splitlines()
    pid, *targets = first.split()
    assert int(pid) > 0 and targets == ["/dev/null"] * 3
    assert second == "still mine True"
