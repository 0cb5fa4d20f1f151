"""dRAID vdevs (OpenZFS 2.x, ``zpool create ... draid``; the Proxmox installer offers them).

External checks: every permutation map regenerated here matches the checksum OpenZFS
stores for it in ``draid_maps[]`` (vdev_draid.c, zfs-2.3.9); the group/row arithmetic
reproduces the layout drawn in vdev_draid.c's comment (14 children, 8+1, 2 spares).
Ground truth for reading: tests/fixtures/zfs-draid/ and zfs-draid-spare/ manifest.json,
pools written by the real OpenZFS 2.3.9 kernel module (intact, with a distributed spare in
use), read with members left out (each set the real module imported and re-checked: the
manifest's ``sets``) or damaged in memory.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import importlib.util
import json
import math
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.zfs import draid
from backends.zfs import vdev as vdevmod
from backends.zfs.assemble import health
from backends.zfs.backend import ZfsBackend
from backends.zfs.checksum import fletcher4
from backends.zfs.errors import ZfsError
from pvfs.discover import Context, Options, Volume, discover
from pvfs.errors import PvfsError
from pvfs.nodes import Dir, File, Symlink, resolve, time_ns
from pvfs.source import FileSource, PatchedSource, SliceSource

from conftest import gpt_partition, project_fixture, require_fixture, sha256_source, unpack

R = draid.ROWHEIGHT
DR = ("zfs-draid",)
ARCHIVE = "dpool-draid.tar.zst"
INTACT, DEGRADED = "intact", "degraded"  # sets of ARCHIVE's members (manifest ``sets``)
KINDS = {"dir": Dir, "file": File, "symlink": Symlink}


# -- the permutation maps -----------------------------------------------------------
def test_every_permutation_map_matches_its_openzfs_checksum():
    """vdev_draid_generate_perms for all 254 child counts (2-255): each row is a
    permutation and word 0 of fletcher_4 over the map equals draid_maps[].dm_checksum,
    which OpenZFS computed from its own generator."""
    perms = draid.generate_perms(list(draid.MAPS))
    assert sorted(perms) == list(range(2, 256))
    bad = [c for c, p in perms.items() if not draid.verify_perms(c, p)]
    assert not bad, bad
    assert perms[5].shape == (256, 5) and perms[32].shape == (512, 32)
    # the map of one child count alone is the same as in the batch (independent lanes)
    assert (draid.perms_for(14) == perms[14]).all()
    assert (draid.perms_for(255) == perms[255]).all()


def test_a_wrong_map_fails_the_checksum():
    """The check can fail: a swapped pair, another seed, a map of the wrong height."""
    good = draid.perms_for(11).copy()
    swapped = good.copy()
    swapped[100, [2, 7]] = swapped[100, [7, 2]]
    assert not draid.verify_perms(11, swapped)
    assert not draid.verify_perms(11, good[:-1])
    not_perm = good.copy()
    not_perm[3, 0] = not_perm[3, 1]
    assert not draid.verify_perms(11, not_perm)
    saved = draid.MAPS[11]
    try:
        draid.MAPS[11] = (saved[0], saved[1] ^ 1, saved[2])
        other = draid.generate_perms([11])[11]
    finally:
        draid.MAPS[11] = saved
    assert (other != good).any() and not draid.verify_perms(11, other)
    assert fletcher4(good.tobytes())[0] == saved[2]


def test_no_map_for_unsupported_child_counts():
    for c in (0, 1, 256):
        with pytest.raises(ZfsError):
            draid.generate_perms([c])


# -- groups, rows, slices ---------------------------------------------------------------
def test_layout_of_the_vdev_draid_c_diagram():
    """vdev_draid.c's comment: 14 children, 8 data + 1 parity, 2 spares -> 4 groups in 3
    rows per slice; group 1 starts at column 9 of row 0 and wraps to row 1 after 3
    columns, group 2 starts at column 6 of row 1, group 3 at column 3 of row 2; slice 1
    (group 4) starts at row 3 with the next permutation; the 2 spare columns are unused."""
    g = draid.Geometry(8, 1, 2, 14, 4, 12).check()
    assert (g.groupwidth, g.ndisks, g.groupsz, g.devslicesz) == (9, 12, 9 * R, 3 * R)
    base, it = g.perm(0)
    assert it == 0

    def cols(group):
        return [(c.dev, c.offset // R) for c in g.map_block(group * g.groupsz, 8 << 12)[0]
                .columns]

    def expect(start, row, perm_base, rot=0):
        out = []
        for i in range(9):
            c = (start + i) % 12
            r = row + (1 if start + i >= 12 else 0)
            out.append(((int(perm_base[c]) + rot) % 14, r))
        return out

    assert cols(0) == expect(0, 0, base)
    assert cols(1) == expect(9, 0, base)
    assert [r for _, r in cols(1)] == [0, 0, 0, 1, 1, 1, 1, 1, 1]
    assert cols(2) == expect(6, 1, base)
    assert cols(3) == expect(3, 2, base)
    assert cols(4) == expect(0, 3, base, rot=1)  # permutation 1: row 0 rotated by 1
    used = {d for grp in range(4) for d, _ in cols(grp)}
    spares = {int(base[13]), int(base[12])}
    assert used.isdisjoint(spares) and len(used) == 12
    assert (g.spare_child(0, 0), g.spare_child(1, 0)) == (int(base[13]), int(base[12]))
    assert g.spare_child(0, 3 * R) == (int(base[13]) + 1) % 14  # slice 1
    # 3 * 14 = 42 slices later the map moves to its next row
    b2, it2 = g.perm(14)
    assert it2 == 0 and (b2 == draid.perms_for(14)[1]).all()


def test_block_sizes_columns_and_skip_sectors():
    """vdev_draid_map_alloc_row: q/r/bc as in RAIDZ but every column present (fixed
    width): 5 sectors on 4 data + 2 parity -> big columns 0-2 of 2 sectors, the rest 1
    (with a skip sector), parity 2 sectors; 1 sector -> 1 data + parity, 3 empty."""
    g = draid.Geometry(4, 2, 1, 9, 4, 12).check()
    (row,) = g.map_block(0, 5 << 12)
    assert [c.size >> 12 for c in row.columns] == [2, 2, 2, 1, 1, 1]
    assert row.parity_size == 2 << 12 and row.size == 5 << 12
    (row,) = g.map_block(6 << 12, 1)  # rounded up to one sector
    assert [c.size >> 12 for c in row.columns] == [1, 1, 1, 0, 0, 0]
    assert g.asize(1) == 6 << 12 and g.asize(5 << 12) == 12 << 12
    # a block over the end of group 0: the rest starts group 1
    rows = g.map_block(g.groupsz - (6 << 12), 8 << 12)
    assert [r.size >> 12 for r in rows] == [4, 4]
    _, _, start1 = g.logical_to_physical(g.groupsz)
    assert start1 == 6 and rows[1].columns[0].offset % R == 0


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3), st.integers(1, 12), st.integers(0, 4), st.integers(0, 6),
       st.integers(0, 40))
def test_a_slice_uses_every_disk_row_once_and_never_the_spare_columns(
        nparity, ndata, nspares, extra, slice_no):
    """Over one slice, the groups' columns (one sector of each group chunk) cover each
    of the ndisks permuted columns of every row exactly once; the spare columns (the
    last nspares of the permutation) are left to the distributed spares."""
    gw = ndata + nparity
    children = gw + nspares + extra
    ndisks = children - nspares
    ngroups = ndisks // math.gcd(gw, ndisks)  # zpool create: LCM(gw, ndisks) / gw
    try:
        g = draid.Geometry(ndata, nparity, nspares, children, ngroups, 9).check()
    except ZfsError:
        assert children > 255
        return
    rows = g.devslicesz // R
    seen = {}
    for grp in range(slice_no * ngroups, (slice_no + 1) * ngroups):
        (row,) = g.map_block(grp * g.groupsz, ndata << 9)  # the first stripe of the group
        for c in row.columns:
            key = (c.dev, c.offset // R)
            assert key not in seen, (grp, key)
            seen[key] = grp
    assert len(seen) == rows * ndisks
    base, it = g.perm(slice_no)
    spare_devs = {(int(base[children - 1 - s]) + it) % children for s in range(nspares)}
    assert spare_devs.isdisjoint(d for d, _ in seen)
    for s in range(nspares):
        assert g.spare_child(s, slice_no * g.devslicesz + 4096) in spare_devs


# -- configs ----------------------------------------------------------------------------
def _cfg(ndata=2, nparity=1, nspares=1, children=5, ngroups=None, **kw):
    if ngroups is None:
        gw, nd = ndata + nparity, children - nspares
        ngroups = nd // math.gcd(gw, nd)
    kids = [{"type": "disk", "guid": 100 + i, "path": f"/dev/d{i}"} for i in range(children)]
    cfg = {"type": "draid", "guid": 7, "nparity": nparity, "draid_ndata": ndata,
           "draid_nspares": nspares, "draid_ngroups": ngroups, "ashift": 12,
           "children": kids}
    cfg.update(kw)
    return cfg


def test_bad_configs_are_named_not_read():
    """vdev_draid_init's checks: each bad value is a note and a Missing vdev."""
    for bad in (dict(nparity=0), dict(nparity=4), dict(nspares=3), dict(ngroups=0),
                dict(ngroups=3), dict(draid_ndata=None), dict(children=[])):
        notes = []
        v = vdevmod.build(_cfg(**bad) if "children" not in bad and "draid_ndata" not in bad
                          else {**_cfg(), **bad}, {}, notes=notes)
        assert isinstance(v, vdevmod.Missing), bad
        assert notes and "draid" in notes[0], (bad, notes)
    notes = []
    v = vdevmod.build(_cfg(), {}, notes=notes)
    assert isinstance(v, vdevmod.Draid) and not notes
    assert v.describe().startswith("draid1:2d:5c:1s[")


def test_a_distributed_spare_counts_as_present():
    """A child replaced by ``draid1-0-0`` (a spare vdev: the old disk and the dspare) is
    missing but not lost: the pool is DEGRADED, not FAULTED; two such children of a
    draid1 without spares are FAULTED."""
    cfg = _cfg(nspares=1)
    cfg["children"][3] = {"type": "spare", "guid": 55, "children": [
        cfg["children"][3], {"type": "dspare", "guid": 66, "path": "draid1-0-0",
                             "spareid": 0, "top_guid": 7}]}
    notes = []
    v = vdevmod.build(cfg, {}, notes=notes)
    assert not notes and v.spares and v.spares[0].draid is v
    assert [c.kind for c in v.children[3].children] == ["leaf", "dspare"]
    # the replaced child flagged offline (zpool offline) is read after the spare
    cfg["children"][3]["children"][0]["offline"] = 1
    v = vdevmod.build(cfg, {})
    assert [c.kind for c in v.children[3].children] == ["dspare", "leaf"]
    del cfg["children"][3]["children"][0]["offline"]
    leaves = {100 + i: [(object(), None)] for i in range(5) if i != 3}
    v = vdevmod.build(cfg, leaves)
    assert v.lost_members() == 0 and len(v.missing_leaves()) == 1
    states = [n for n in health([v]) if n[1] == "pool-state"]
    assert states and "DEGRADED" in states[0][2]
    del leaves[100]
    v = vdevmod.build(cfg, leaves)
    assert v.lost_members() == 1
    v = vdevmod.build(_cfg(nspares=0), {100 + i: [(object(), None)] for i in range(2, 5)})
    assert any(n[1] == "vdev-faulted" for n in health([v]))
    # a dspare of another dRAID vdev is not read
    cfg["children"][3]["children"][1]["top_guid"] = 8
    notes = []
    v = vdevmod.build(cfg, {})
    notes = []
    vdevmod.build(cfg, {}, notes=notes)
    assert any("another vdev" in n for n in notes)


def test_a_block_across_two_groups_without_members_ends():
    """Both rows of a block that crosses the end of its group must be read; with no
    member present the read yields nothing (and ends)."""
    v = vdevmod.build(_cfg(), {})
    off = v.geom.groupsz - (3 << 12)
    assert len(v.geom.map_block(off, 4 << 12)) == 2
    assert list(v.candidates(off, 4 << 12)) == []


_CFG_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2, 300), st.text(max_size=3))


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(["nparity", "draid_ndata", "draid_nspares",
                                        "draid_ngroups", "ashift"]), _CFG_VALUES),
       st.integers(0, 12), st.integers(0, 1 << 40), st.integers(-5, 1 << 20))
def test_fuzz_configs_and_block_maps(over, nkids, offset, size):
    """Hostile configs never raise out of build(); hostile offsets and sizes never
    raise out of a read (no member present: nothing is yielded)."""
    cfg = _cfg()
    cfg["children"] = cfg["children"][:nkids]
    cfg.update(over)
    v = vdevmod.build(cfg, {})
    assert isinstance(v, (vdevmod.Draid, vdevmod.Missing))
    assert list(v.candidates(offset, size)) == []
    if isinstance(v, vdevmod.Draid) and size > 0 and offset % (1 << v.ashift) == 0:
        rows = v.geom.map_block(offset, size)
        assert 1 <= len(rows) <= 2
        assert sum(r.size for r in rows) >= size


# -- the lab fixture: a draid1:2d:5c:1s pool written by OpenZFS 2.3.9 --------------------
@functools.cache
def _manifest(fx=DR):
    return json.loads(project_fixture(*fx, "manifest.json").read_text())


def _pool(fx=DR):
    (name,) = _manifest(fx)["pools"]
    return name, _manifest(fx)["pools"][name]


@functools.cache
def _images(which, fx=DR):
    """The member images of set ``which`` (intact, degraded, ...): the fixture's one
    archive unpacked, without the members the manifest says that set lacks."""
    (archive, meta), = _manifest(fx)["archives"].items()
    missing = set(meta["sets"][which]["missing_members"])
    d = unpack(project_fixture(*fx, archive))
    imgs = sorted(glob.glob(str(d / "*" / "*.img")))
    assert missing <= {p.rsplit("/", 1)[-1] for p in imgs}
    return tuple(p for p in imgs if p.rsplit("/", 1)[-1] not in missing)


def _tree_root(name):
    return "storage/zfs/" + name.replace("@", "/.zfs/snapshot/")


def _get(root, path):
    """resolve(), with a directory that cannot be listed counted as absent."""
    try:
        return resolve(root, path)
    except PvfsError:
        return None


def _check(ctx, fx=DR):
    """(items compared, failures): sha256 and size of every zvol, zvol snapshot and file
    of every dataset and snapshot; type, mode, owner, mtime (ns), link count, symlink
    target, xattrs and hard links of every entry."""
    _, pool = _pool(fx)
    fails, n = [], 0
    for name, ds in pool["datasets"].items():
        dev = ds.get("device")
        if dev:
            n += 1
            node = _get(ctx.root, f"storage/zfs/{name}")
            try:
                if not isinstance(node, File) or node.size != dev["size"] \
                        or sha256_source(node.source) != dev["sha256"]:
                    fails.append(f"zvol {name}")
            except PvfsError:
                fails.append(f"zvol {name}")
        head = name.split("@")[0]
        children = {k[len(head):] for k in pool["datasets"] if k.startswith(head + "/")
                    and "@" not in k}
        root = _get(ctx.root, _tree_root(name))
        for e in ds.get("files") or []:
            p = e["path"]
            if p == "/" or p in children:
                continue
            n += 1
            where = f"{name}:{p}"
            node = _get(root, p.strip("/"))
            if not isinstance(node, KINDS[e["type"]]):
                fails.append(f"{where}: {type(node).__name__}")
                continue
            if e["type"] == "file":
                try:
                    if node.size != e["size"] or sha256_source(node.source) != e["sha256"]:
                        fails.append(f"{where}: content")
                except PvfsError as err:
                    fails.append(f"{where}: {err}")
            if (node.mode & 0o7777) != int(e["mode"], 8) or stat.S_IFMT(node.mode) == 0:
                fails.append(f"{where}: mode {node.mode:o}")
            if (node.uid, node.gid) != (e["uid"], e["gid"]) or node.nlink != e["nlink"] \
                    or time_ns(node.mtime) != e["mtime_ns"]:
                fails.append(f"{where}: owner/nlink/mtime")
            if e["type"] == "symlink" and node.target != e["target"].encode():
                fails.append(f"{where}: target")
            want_x = {k: v["sha256"] for k, v in (e.get("xattrs") or {}).items()}
            got_x = {k.decode(): hashlib.sha256(v).hexdigest() for k, v in node.xattrs.items()}
            if want_x != got_x:
                fails.append(f"{where}: xattrs {sorted(got_x)}")
            if e.get("hardlink_of") and _get(root, e["hardlink_of"].strip("/")) is not node:
                fails.append(f"{where}: hard link")
    return n, fails


@pytest.mark.parametrize("archive", [INTACT, DEGRADED])
def test_draid_pool_matches_its_manifest(archive):
    """Every file, zvol and snapshot of the dRAID pool, with all children and without
    member 2 (each block then rebuilt from parity when a column was on it)."""
    imgs = _images(archive)
    names = [p.rsplit("/", 1)[-1] for p in imgs]
    assert len(imgs) == (5 if archive == INTACT else 4)
    assert archive == INTACT or "draid-d2.img" not in names
    ctx = discover(list(imgs), Options())
    n, fails = _check(ctx)
    assert n > 20
    assert not fails, f"{len(fails)} of {n}: {fails[:10]}"
    errors = [e.line() for e in ctx.report if e.severity == "error"]
    assert not errors, errors
    assert not [e.line() for e in ctx.report if e.code == "unsupported-feature"]
    info = next(e for e in ctx.report if e.code == "uberblocks")
    assert "draid1:2d:5c:1s[" in info.message
    states = [e.message for e in ctx.report if e.code == "pool-state"]
    if archive == DEGRADED:
        missing = [e for e in ctx.report if e.code == "missing-member"]
        assert len(missing) == 1 and "draid-d2" in missing[0].message
        assert states and "DEGRADED" in states[0]
    else:
        assert not states


def _open_members(archive, patches=None, drop=(), fx=DR):
    srcs = []
    for i, img in enumerate(_images(archive, fx)):
        if i in drop:
            continue
        start, size = gpt_partition(img, 1)
        src = SliceSource(FileSource(img), start, size)
        if patches and i in patches:
            src = PatchedSource(src, patches[i])
        srcs.append(src)
    ctx = Context(Options())
    be = ZfsBackend()
    vols = [Volume(s, f"storage/files/m{i}", f"m{i}", "input") for i, s in enumerate(srcs)]
    be.open_group(be.member_key(vols[0], ctx), vols, ctx)
    return ctx


BIG_DS, BIG_REL = "dpool/data/subvol-200-disk-0", "usr/bin/tool"  # 3 records of 128 KiB, random
BIG = f"{BIG_DS}/{BIG_REL}"


def _data_columns(ctx, path, nblocks, which=0):
    """(member image index, byte offset in partition 1, size) of data column ``which`` of
    each of the first ``nblocks`` blocks of ``path``, and the dRAID vdev."""
    from backends.zfs.structs import VDEV_LABEL_START_SIZE

    node = resolve(ctx.root, f"storage/zfs/{path}")
    top = node.source.dnode.objset.pool.tops[0]
    names = [p.rsplit("/", 1)[-1] for p in _images(INTACT)]
    out = []
    for b in range(nblocks):
        bp = node.source.dnode.block_bp(b)
        (row,) = top.geom.map_block(bp.dvas[0].offset, bp.psize)
        col = row.columns[top.nparity + which]
        leaf = top.children[col.dev].path  # /dev/disk/by-id/virtio-draid-dN-part1
        member = names.index(leaf.rsplit("virtio-", 1)[1].split("-part")[0] + ".img")
        out.append((member, VDEV_LABEL_START_SIZE + col.offset, col.size, col.dev))
    return out, top


def _labtool():
    spec = importlib.util.spec_from_file_location(
        "labtool", require_fixture("lab-trixie", "labtool.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _want(ds, rel):
    _, pool = _pool()
    files = {e["path"]: e for e in pool["datasets"][ds]["files"]}
    return files["/" + rel]["sha256"]


def test_draid_silently_corrupt_data_columns_are_repaired():
    """Garbage over the first data column of each 128 KiB block of a random file (no
    decompressor notices): each block fails its checksum, is rebuilt from the parity of
    its row with the suspect column found by trying, the file matches and the repairs
    are reported."""
    cols, top = _data_columns(discover(list(_images(INTACT)), Options()), BIG, 3)
    assert [c[2] for c in cols] == [64 << 10] * 3  # 2 data columns of 64 KiB
    patches = {}
    for member, off, size, _ in cols:
        patches.setdefault(member, {})[off] = bytes([0xA5]) * size
    ctx = _open_members(INTACT, patches)
    assert sha256_source(resolve(ctx.root, f"storage/zfs/{BIG}").source) == _want(BIG_DS, BIG_REL)
    assert sum(e.code == "checksum-repaired" for e in ctx.report) >= 3
    assert not [e.line() for e in ctx.report if e.severity == "error"]
    n, fails = _check(ctx)
    assert not fails, fails[:10]


def test_draid_more_damage_than_parity_reads_eio_never_wrong_bytes():
    """Member 2 missing and, on another member, garbage over a data column of the first
    block of the random file: a draid1 row cannot lose two columns.  That range reads
    EIO (never the damaged bytes) and is reported at the file; the other blocks read."""
    names = [p.rsplit("/", 1)[-1] for p in _images(INTACT)]
    ictx = discover(list(_images(INTACT)), Options())
    # a data column of the first block that is not on member 2 (the first, else the second)
    cols = [_data_columns(ictx, BIG, 1, which)[0][0] for which in (0, 1)]
    member, off, size, dev = next(c for c in cols if names[c[0]] != "draid-d2.img")
    ctx = _open_members(INTACT, {member: {off: bytes([0x5A]) * size}},
                        drop=(names.index("draid-d2.img"),))
    src = resolve(ctx.root, f"storage/zfs/{BIG}").source
    with pytest.raises(PvfsError):
        src.read(0, 4096)
    # the other two blocks: compared with the file's bytes regenerated by the lab's
    # labtool.py (whose output is checked against the manifest's sha256 first)
    truth = _labtool().content(_manifest()["made_by"]["params"]["JOB_SEED"],
                               BIG_REL, 3 << 17, "random")
    assert hashlib.sha256(truth).hexdigest() == _want(BIG_DS, BIG_REL)
    assert src.read(1 << 17, 2 << 17) == truth[1 << 17:]
    lost = [e for e in ctx.report if e.code == "unreadable-block"]
    assert lost and lost[0].path == f"storage/zfs/{BIG}" and lost[0].severity == "error"



# -- zfs-draid-spare: draid2:3d:9c:2s, data past slice 0, a distributed spare in use ------
SP = ("zfs-draid-spare",)
SP_FULL, SP_DEGRADED = "intact", "degraded"  # sets of the one archive (manifest ``sets``)


def _spare_read(archive, drop=()):
    """Open a set of the spare fixture without the members ``drop``: (items, failures,
    report, rows rebuilt from parity, sectors read through the distributed spare, the
    layout reached: groups, wrapped groups, slices, two-row blocks, spare slices)."""
    from backends.zfs import raidz

    names = [p.rsplit("/", 1)[-1] for p in _images(archive, SP)]
    seen = {"rebuilt": 0, "dspare": 0, "groups": set(), "wrapped": 0, "slices": set(),
            "two_rows": 0, "spare_slices": set()}
    real_rec, real_map = raidz.reconstruct, draid.Geometry.map_block
    real_spare = vdevmod.DraidSpare.candidates

    def rec(*a, **k):
        seen["rebuilt"] += 1
        return real_rec(*a, **k)

    def map_block(self, offset, size):
        rows = real_map(self, offset, size)
        seen["two_rows"] += len(rows) == 2
        for k, r in enumerate(rows):
            group = offset // self.groupsz + k
            seen["groups"].add(group)
            seen["slices"].add(group // self.ngroups)
            seen["wrapped"] += len({c.offset // R for c in r.columns}) > 1
        return rows

    def spare(self, offset, size, birth=0):
        seen["dspare"] += 1
        seen["spare_slices"].add(offset // self.draid.geom.devslicesz)
        return real_spare(self, offset, size, birth)

    raidz.reconstruct, draid.Geometry.map_block = rec, map_block
    vdevmod.DraidSpare.candidates = spare
    try:
        ctx = _open_members(archive, drop=tuple(i for i, n in enumerate(names) if n in drop),
                            fx=SP)
        n, fails = _check(ctx, SP)
    finally:
        raidz.reconstruct, draid.Geometry.map_block = real_rec, real_map
        vdevmod.DraidSpare.candidates = real_spare
    return n, fails, ctx.report, seen


def test_draid_spare_pool_matches_its_manifest():
    """Member 4 was offlined and replaced by the distributed spare draid2-0-0 (rebuilt),
    then more data was written.  Every file, zvol and snapshot matches with every image
    (the offline member is read after the spare), without member 4, and without members
    4, 7 and 1: three of nine children of a draid2, readable only because member 4's
    columns come from the spare's share of the other children (slices 0 and 1)."""
    n, fails, report, full = _spare_read(SP_FULL)
    assert n > 40 and not fails, f"{len(fails)} of {n}: {fails[:10]}"
    assert not [e.line() for e in report if e.severity == "error"]
    info = next(e for e in report if e.code == "uberblocks")
    assert "draid2:3d:9c:2s[" in info.message
    assert "mirror[dspare draid2-0-0, leaf /dev/disk/by-id/virtio-draid-d4-part1" in info.message
    assert full["dspare"] > 0  # offline: the spare is read first
    assert [e.severity for e in report if e.code == "member-out-of-service"
            and "virtio-draid-d4-part1" in e.message and "offline" in e.message] == ["info"]

    n, fails, report, no4 = _spare_read(SP_FULL, ("draid-d4.img",))
    assert not fails, f"{len(fails)} of {n}: {fails[:10]}"
    assert not [e.line() for e in report if e.severity == "error"]

    three = ("draid-d4.img", "draid-d7.img", "draid-d1.img")
    # the real module imported exactly this set (DEGRADED) and re-checked every sha256
    (meta,) = _manifest(SP)["archives"].values()
    verified = meta["sets"]["degraded2"]
    assert sorted(verified["missing_members"]) == sorted(three)
    assert verified["verified"]["mismatches"] == [] and verified["verified"]["checked"] > 5
    n, fails, report, no3 = _spare_read(SP_FULL, three)
    assert not fails, f"{len(fails)} of {n}: {fails[:10]}"
    assert not [e.line() for e in report if e.severity == "error"]
    assert no3["spare_slices"] == {0, 1} and no3["rebuilt"] > no4["rebuilt"]
    states = [e.message for e in report if e.code == "pool-state"]
    assert states and "DEGRADED" in states[0]
    # the layout this pool reaches (measured; the fixture's README says the same)
    assert len(no4["groups"]) >= 5 and no4["wrapped"] > 0 and max(no4["slices"]) >= 1
    assert no4["two_rows"] >= 1


def test_draid_spare_is_what_makes_three_missing_readable(monkeypatch):
    """The control: with the distributed spare unreadable, the same three missing
    members are more than draid2 can rebuild, and the reads fail (EIO, never wrong
    bytes) instead of matching."""
    monkeypatch.setattr(vdevmod.DraidSpare, "candidates", lambda self, o, s, b=0: iter(()))
    n, fails, report, _ = _spare_read(SP_FULL, ("draid-d4.img", "draid-d7.img",
                                                "draid-d1.img"))
    assert fails
    assert not [f for f in fails if f.endswith(": content")], fails[:10]


def test_draid_spare_degraded_archive():
    """The archive made without member 4 (imported DEGRADED by OpenZFS) matches too."""
    n, fails, report, seen = _spare_read(SP_DEGRADED)
    assert not fails, f"{len(fails)} of {n}: {fails[:10]}"
    assert any(e.code == "missing-member" and "draid-d4" in e.message for e in report)
    assert seen["dspare"] > 0
