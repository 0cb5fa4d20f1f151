"""ZFS intent log replay (backends/zfs/zil.py, zilreplay.py) against pools the real
OpenZFS 2.3.9 kernel module left with unsynced log records (tests/fixtures/zfs-zil: made
by its make.sh in the lab VM; README there).

Ground truth (manifest.json ``states``, all made by the real module in the lab VM):
``replayed`` = an ordinary import of the crashed images (claim + zil_replay at mount and
at zvol minor creation), ``noreplay`` = an import with zil_replay_disable=1 (the pools as
last synced), ``replayed_from_claimed`` = the import of the claimed-not-replayed copy.
Replayed objects carry the import's clock in ctime/mtime, so times are compared only for
entries the replay did not touch (same mtime in ``noreplay`` and ``replayed``).
"""

from __future__ import annotations

import functools
import glob
import hashlib
import itertools
import json
import lzma
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.zfs import zil, zilreplay
from backends.zfs.backend import ZfsBackend
from backends.zfs.structs import VDEV_LABEL_START_SIZE
from pvfs.discover import Context, Options, Volume, discover
from pvfs.errors import PvfsError
from pvfs.nodes import Dir, File, Special, Symlink, resolve, time_ns
from pvfs.source import FileSource, PatchedSource, SliceSource

from conftest import gpt_partition, project_fixture, sha256_source, unpack

ZZ = ("zfs-zil",)
CRASHED = "zil-crashed.tar.zst"
CLAIMED = "zil-claimed.tar.zst"
KINDS = {"dir": Dir, "file": File, "symlink": Symlink, "fifo": Special}


@functools.cache
def _manifest():
    return json.loads(project_fixture(*ZZ, "manifest.json").read_text())


@functools.cache
def _images(archive):
    d = unpack(project_fixture(*ZZ, "images", archive))
    return tuple(sorted(glob.glob(str(d / "*" / "*.img"))))


_CTX = {}


def _open(archive, zil_mode=None):
    key = (archive, zil_mode)
    if key not in _CTX:
        _CTX.clear()
        opts = {"zfs_zil": zil_mode} if zil_mode else {}
        _CTX[key] = discover(list(_images(archive)), Options(backend_options=opts))
    return _CTX[key]


def _compare(ctx, state, times_from=None):
    """Every dataset of a manifest state against the tree: type, mode, owner, size,
    link count, sha256, symlink target, xattrs; mtime where ``times_from`` (another
    state) agrees.  Returns (checked, failures)."""
    fails, checked = [], 0
    for name, d in sorted(state["datasets"].items()):
        where0 = f"storage/zfs/{name}"
        if "device" in d:
            node = resolve(ctx.root, where0)
            checked += 1
            if not isinstance(node, File):
                fails.append(f"{name}: no zvol")
            elif node.size != d["device"]["size"] or sha256_source(node.source) != \
                    d["device"]["sha256"]:
                fails.append(f"{name}: zvol sha256")
            continue
        root = resolve(ctx.root, where0)
        other = {}
        if times_from is not None:
            other = {e["path"]: e for e in times_from["datasets"].get(name, {}).get("files", [])}
        for e in d["files"]:
            p = e["path"]
            if p == "/" or e.get("other_filesystem"):
                continue
            where = f"{name}:{p}"
            node = resolve(root, p.strip("/"))
            if not isinstance(node, KINDS[e["type"]]):
                fails.append(f"{where}: {type(node).__name__} is not a {e['type']}")
                continue
            checked += 1
            if (node.mode & 0o7777) != int(e["mode"], 8):
                fails.append(f"{where}: mode {node.mode & 0o7777:o} != {e['mode']}")
            if (node.uid, node.gid) != (e["uid"], e["gid"]):
                fails.append(f"{where}: owner {node.uid}:{node.gid}")
            if node.nlink != e["nlink"]:
                fails.append(f"{where}: nlink {node.nlink} != {e['nlink']}")
            if e["type"] == "file":
                if node.size != e["size"]:
                    fails.append(f"{where}: size {node.size} != {e['size']}")
                else:
                    try:
                        if sha256_source(node.source) != e["sha256"]:
                            fails.append(f"{where}: sha256")
                    except PvfsError as ex:
                        fails.append(f"{where}: {ex}")
            if e["type"] == "symlink" and node.target != e["target"].encode():
                fails.append(f"{where}: target {node.target!r}")
            want_x = {k: v["sha256"] for k, v in (e.get("xattrs") or {}).items()}
            got_x = {k.decode(): hashlib.sha256(v).hexdigest() for k, v in node.xattrs.items()
                     if not k.startswith(b"system.posix_acl")}
            want_x = {k: v for k, v in want_x.items() if not k.startswith("system.posix_acl")}
            if got_x != want_x:
                fails.append(f"{where}: xattrs {sorted(got_x)} != {sorted(want_x)}")
            o = other.get(p)
            if (o is not None and o["mtime_ns"] == e["mtime_ns"]
                    and time_ns(node.mtime) != e["mtime_ns"]):
                fails.append(f"{where}: mtime {time_ns(node.mtime)} != {e['mtime_ns']}")
        # nothing more than the manifest lists
        want = {e["path"].strip("/") for e in d["files"] if e["path"] != "/"}
        for dirpath in [e["path"].strip("/") for e in d["files"]
                        if e["type"] == "dir" and not e.get("other_filesystem")]:
            node = root if not dirpath else resolve(root, dirpath)
            if not isinstance(node, Dir):
                continue
            for n in node.children():
                full = f"{dirpath}/{n}" if dirpath else n
                if f"{name}/{full}".split(".")[0] in state["datasets"]:
                    continue  # a zvol (or its .parts/.files) beside the file system
                if n != ".zfs" and full not in want:
                    fails.append(f"{name}: unexpected {full}")
    return checked, fails


@pytest.mark.parametrize("archive", [CRASHED, CLAIMED])
def test_replayed_tree_matches_the_real_import(archive):
    """The replayed files, directories, links, xattrs and zvols are what OpenZFS's own
    import (claim + zil_replay) produced: same sha256, size, mode, owner, link counts."""
    m = _manifest()
    want = m["states"]["replayed" if archive == CRASHED else "replayed_from_claimed"]
    ctx = _open(archive)
    checked, fails = _compare(ctx, want, times_from=m["states"]["noreplay"])
    assert checked >= 45
    assert fails == []
    assert not [e for e in ctx.report if e.code in ("zil-replay-stopped", "zil-damaged")]


@pytest.mark.parametrize("archive", [CRASHED, CLAIMED])
def test_zil_ignore_shows_the_pool_as_last_synced(archive):
    """``--zfs-zil ignore``: the datasets as the import with zil_replay_disable=1 showed
    them (mtimes included), and every dataset with records says they are not shown."""
    m = _manifest()
    ctx = _open(archive, "ignore")
    checked, fails = _compare(ctx, m["states"]["noreplay"], times_from=m["states"]["noreplay"])
    assert checked >= 28
    assert fails == []
    ignored = {e.path for e in ctx.report if e.code == "intent-log"
               and "--zfs-zil ignore" in e.message and e.severity == "warning"}
    assert {"storage/zfs/tank/fs", "storage/zfs/fast/fs", "storage/zfs/tank/vol16"} <= ignored
    assert not [e for e in ctx.report if e.code == "zil-replayed"]


def test_every_replayed_record_is_reported():
    """One ``zil-replayed`` note per record (dataset, type, object, txg), a summary per
    dataset, and the record types the job made all appear."""
    ctx = _open(CRASHED)
    notes = [e for e in ctx.report if e.code == "zil-replayed"]
    summaries = {e.path: e for e in ctx.report if e.code == "intent-log"}
    per_path = {}
    for e in notes:
        assert e.severity == "info" and e.outcome == "note"
        assert "txg " in e.message and "object " in e.message and "seq " in e.message
        per_path.setdefault(e.path, []).append(e)
    for path, es in per_path.items():
        n = len(es)
        assert f"{n} of {n} records applied" in summaries[path].message
    kinds = {e.message.split(": replayed ", 1)[1].split(" ", 1)[0] for e in notes}
    assert {"create", "mkdir", "write", "truncate", "setattr", "remove", "rmdir", "link",
            "rename", "rename_exchange", "symlink", "setsaxattr", "clone_range"} <= kinds
    fs = [e.message for e in per_path["storage/zfs/tank/fs"]]
    assert any("data in a block of its own" in x for x in fs)  # WR_INDIRECT
    assert any("data in the log" in x for x in fs)  # WR_COPIED
    assert "storage/zfs/fast/fs" in per_path  # records in the SLOG
    assert {"storage/zfs/tank/vol16", "storage/zfs/tank/vol64",
            "storage/zfs/fast/vol"} <= set(per_path)


def _zdb_totals():
    """Records per dataset as zdb -ivvv of the unreplayed images counts them."""
    out = {}
    for pool in ("tank", "fast"):
        text = lzma.decompress(project_fixture(*ZZ, "zdb", f"{pool}.ivvv.txt.xz")
                               .read_bytes()).decode("utf-8", "replace")
        ds = None
        for line in text.splitlines():
            if line.startswith("Dataset "):
                ds = line.split()[1]
            elif line.strip().startswith("Total") and ds:
                out[ds] = int(line.split()[1])
    return out


def test_record_counts_match_zdb():
    """Per dataset, the records replayed are the records zdb -ivvv lists in the
    unreplayed log (every one of them: the pools never synced any)."""
    totals = _zdb_totals()
    assert len(totals) == 7 and sum(totals.values()) > 100
    ctx = _open(CRASHED)
    for ds, n in totals.items():
        got = [e for e in ctx.report if e.code == "zil-replayed" and e.path == f"storage/zfs/{ds}"]
        assert len(got) == n, ds


# -- damage ------------------------------------------------------------------------------
def _members(archive, patches=None):
    out = []
    for i, img in enumerate(_images(archive)):
        start, size = gpt_partition(img, 1)
        src = SliceSource(FileSource(img), start, size)
        if patches and i in patches:
            src = PatchedSource(src, patches[i])
        out.append(src)
    return out


def _open_pool(sources, options=None):
    ctx = Context(Options(backend_options=options or {}))
    be = ZfsBackend()
    vols = [Volume(src, f"storage/files/m{i}", f"m{i}", "input") for i, src in enumerate(sources)]
    be.open_group(be.member_key(vols[0], ctx), vols, ctx)
    return ctx


def _chain(objset):
    """The log block pointers of a dataset's chain, in order."""
    pool = objset.pool
    bp = zil.header(objset).log
    out = []
    for _ in range(1000):
        got = pool.read_zil_block(bp)
        if got is None:
            break
        out.append(bp)
        from backends.zfs.checksum import algo_name

        bp = zil._chain_next(got[0], got[1], algo_name(bp.cksum_type))[0]
    return out


def test_damaged_log_block_stops_the_chain_with_a_report():
    """A log block of tank/fs whose bytes are damaged on both mirror sides: the chain
    ends there with a ``zil-damaged`` warning, the records before it are replayed, the
    ones in and after it are not, and no file is served with bytes of a guessed state."""
    images = _images(CRASHED)
    tank = [i for i, p in enumerate(images) if "/tank-d" in p]
    ctx = _open(CRASHED)
    node = resolve(ctx.root, "storage/zfs/tank/fs/keep/a.txt")
    objset = node.source.base.dnode.objset if hasattr(node.source, "base") else \
        node.source.dnode.objset
    chain = _chain(objset)
    assert len(chain) >= 3
    victim = chain[len(chain) // 2]
    dva = victim.dvas[0]
    patch = {VDEV_LABEL_START_SIZE + dva.offset + 300: b"\xa5" * 64}
    srcs = _members(CRASHED, {i: patch for i in tank})
    dctx = _open_pool([s for i, s in enumerate(srcs) if i in tank])
    dmg = [e for e in dctx.report if e.code == "zil-damaged"]
    assert len(dmg) == 1 and dmg[0].path == "storage/zfs/tank/fs"
    assert f"log block {victim.cksum[3]} fails its checksum" in dmg[0].message
    summary = next(e for e in dctx.report if e.code == "intent-log"
                   and e.path == "storage/zfs/tank/fs")
    full = next(e for e in ctx.report if e.code == "intent-log" and e.path == "storage/zfs/tank/fs")
    n_damaged = int(summary.message.split(" of ")[1].split()[0])
    n_full = int(full.message.split(" of ")[1].split()[0])
    assert 0 < n_damaged < n_full


# -- parser fuzz -------------------------------------------------------------------------
@settings(max_examples=400, deadline=None)
@given(st.integers(1, 30), st.binary(min_size=0, max_size=700), st.booleans(),
       st.integers(0, 1 << 20))
def test_fuzz_parse_record(txtype, body, little, extra):
    """Any bytes after a record header: a record or ZilRecordError, nothing else, and
    every length the parser accepts lies inside the record."""
    o = "<" if little else ">"
    raw = struct.pack(o + "4Q", txtype | (extra << 40 if extra & 1 else 0),
                      32 + len(body), 7, 9) + body
    try:
        rec = zil.parse_record(raw, little)
    except zil.ZilRecordError:
        return
    assert rec.txtype == txtype & ~(1 << 63) if extra & 1 else rec.txtype == txtype
    for n in rec.names:
        assert len(n) <= zil.MAX_NAME and n in raw
    assert len(rec.value) <= len(raw)
    assert len(rec.bps) * 128 <= len(raw)
    if rec.data_at >= 0:
        assert rec.data_at + rec.f["lr_length"] <= len(raw) + 32
    rec.what()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["data", "zero"]), st.integers(0, 300),
                          st.integers(0, 120)), max_size=40))
def test_extents_agree_with_a_flat_buffer(ops):
    """Extents (the replay's overlay of ranges) read back what a flat buffer with the
    same writes holds."""
    base = bytes(range(256)) * 2
    flat = bytearray(base) + bytearray(1000)
    ext = zilreplay.Extents(len(base))
    blocks = {}

    class Pool:
        uid = next(_UIDS)  # the block cache is keyed by pool and block pointer

        def read_bp(self, bp, objset=None):
            return blocks[bp.raw]

    class BP:
        def __init__(self, raw):
            self.raw = raw

    for n, (kind, off, ln) in enumerate(ops):
        if kind == "zero":
            ext.put(off, off + ln, "zero")
            flat[off:off + ln] = bytes(ln)
        else:
            data = bytes((n * 7 + i) % 251 for i in range(ln + 5))
            bp = BP(b"%d" % n)
            blocks[bp.raw] = data
            ext.put(off, off + ln, "blk", bp, 5)
            flat[off:off + ln] = data[5:5 + ln]
    src = zilreplay.ReplaySource(900, ext, _Bytes(base), Pool(), None, "t")
    assert src.read(0, 900) == bytes(flat[:900])
    for a in (0, 17, 300, 511):
        assert src.read(a, 123) == bytes(flat[a:a + 123])


_UIDS = itertools.count(1 << 40)


class _Bytes:
    def __init__(self, data):
        self.data = data
        self.size = len(data)

    def read(self, off, n):
        return self.data[off:off + n]

    def block_status(self, off, n):
        return [(off, n, "data")]
