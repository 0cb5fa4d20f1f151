"""Severity follows outcome (issue 13 item 3), on the fixtures' damaged variants.

``repaired`` (info): rebuilt from parity, a mirror or metadata, nothing lost; ``degraded``
(warning): a member, OSD, PV or peer is missing but redundancy covers it, and the entry
names it; ``lost`` (error): bytes are gone.  ``pvfs scan`` exits 3 exactly when something
is lost, 0 otherwise.  Each test runs the real CLI entry point on a real fixture variant
and checks the entries' outcome and the exit status together.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import require_fixture, sha256_source, unpack

from pvfs.cli import main
from pvfs.discover import discover
from pvfs.nodes import File, resolve


def scan(capsys, *inputs, opts=()):
    """``pvfs scan --json``: (exit status, report document)."""
    capsys.readouterr()
    code = main(["scan", "--json", "--no-progress", *opts, *map(str, inputs)])
    doc = json.loads(capsys.readouterr().out)
    lost = [e for e in doc["damage"] if e["outcome"] == "lost"]
    # the exit status comes from lost entries only, and every error entry is a loss
    assert all((e["severity"] == "error") == (e["outcome"] == "lost") for e in doc["damage"])
    assert code == (3 if lost else 0), (code, lost[:3])
    return code, doc


def entries(doc, code=None, outcome=None):
    return [e for e in doc["damage"] if (code is None or e["code"] == code)
            and (outcome is None or e["outcome"] == outcome)]


# ---------------------------------------------------------------------------
# ZFS

def _zfs_modern(archive, sub):
    return unpack(require_fixture("zfs-modern", "images", archive)) / sub


def test_faulted_pool_keeps_its_vms_with_lost_txt(capsys):
    """rpool (raidz1 of 3) with only one member left is FAULTED: the zvols whose object
    sets cannot be read (VM 101, template 900, VM 901) used to vanish from vms/; they
    stay, each with a LOST.txt naming the volume and the reason, and a lost entry."""
    d1 = _zfs_modern("rpool-raidz1-degraded.tar.xz", "rpool-raidz1-degraded") / "rpool-d1.img"
    code, doc = scan(capsys, d1)
    assert code == 3
    for vmid, ds in ((101, "vm-101-disk-0"), (900, "base-900-disk-0"), (901, "vm-901-disk-0")):
        assert doc["vms"][str(vmid)] == ["LOST.txt"], vmid
        lost = [e for e in entries(doc, "volume-lost", "lost")
                if e["path"] == f"vms/{vmid}/LOST.txt"]
        assert lost and ds in lost[0]["message"], vmid
        row = next(r for r in doc["guests"] if r["vmid"] == vmid)
        assert [(d["found"], d["status"]) for d in row["disks"]] == [("lost", "LOST")], row
        assert row["status"] == "LOST" and "unreadable" in row["why"], row
    ctx = discover([str(d1)])
    text = resolve(ctx.root, "vms/101/LOST.txt")
    assert isinstance(text, File)
    body = text.source.read(0, text.size).decode()
    assert "disk-0.raw: vm-101-disk-0" in body and "object set unreadable" in body
    # the pool-level entries: two members named as missing -- beyond raidz1's parity, so
    # losses, not 'degraded' -- and the vdev and pool lost
    assert [e["outcome"] for e in entries(doc, "missing-member")] == ["lost", "lost"]
    assert entries(doc, "pool-state", "lost")


# ---------------------------------------------------------------------------
# LVM thin

def _thin_fixture():
    d = unpack(require_fixture("lvm-thin", "lvm-thin-fixtures.tar.xz"))
    m = json.loads(require_fixture("lvm-thin", "manifest.json").read_text())
    return d, m


def test_thin_superblock_rebuilt_completely_is_repaired(capsys):
    """A zeroed thin-pool superblock whose btree nodes are all intact: every thin LV
    comes back byte for byte (the manifest's sha256), so it is ``repaired`` (info) and
    the scan exits 0 -- it was an ERROR with exit 3."""
    d, m = _thin_fixture()
    name = "pve-disk-damaged-tmeta-sb.img"
    code, doc = scan(capsys, d / name)
    assert code == 0
    sb = entries(doc, "thin-superblock")
    assert [(e["severity"], e["outcome"]) for e in sb] == [("info", "repaired")]
    assert "all 3 thin devices found" in sb[0]["message"]
    ctx = discover([str(d / name)])
    want = m["variants"][name]["expect"]["recovered_thin_volumes_sha256"]
    for lv, sha in want.items():
        assert sha256_source(resolve(ctx.root, f"storage/lvm/pve/{lv}").source) == sha, lv


def test_thin_superblock_rebuilt_with_guesses_is_not_repaired(capsys, tmp_path):
    """The same superblock loss plus the top-level mapping tree (metadata block 7): the
    devices' trees are guessed by their entry counts, so the superblock entry must not
    claim a complete rebuild (a warning naming the guesses, never ``repaired``)."""
    d, m = _thin_fixture()
    img = tmp_path / "thin.img"
    shutil.copyfile(d / "pve-disk-damaged-tmeta-sb.img", img)
    off = m["variants"]["pve-disk-damaged-tmeta-sb.img"]["damage_disk_offset_bytes"]
    with open(img, "r+b") as f:
        f.seek(off + 7 * 4096)
        f.write(bytes(4096))
    code, doc = scan(capsys, img)
    sb = entries(doc, "thin-superblock")
    assert [(e["severity"], e["outcome"]) for e in sb] == [("warning", "degraded")]
    assert len(entries(doc, "thin-guessed-root")) == 3


def _read_all(ctx, top="storage/zfs"):
    """Read every file below ``top`` (not the older-txg views): the paths that failed."""
    from pvfs.errors import UnreadableError
    from pvfs.nodes import Dir

    failed = []

    def walk(d, path):
        for name, node in list(d.children().items()):
            p = f"{path}/{name}"
            if isinstance(node, Dir) and "/.zfs/txg" not in p:
                walk(node, p)
            elif isinstance(node, File):
                try:
                    for off in range(0, node.size, 1 << 20):
                        node.source.read(off, min(1 << 20, node.size - off))
                except UnreadableError:
                    failed.append(p)
    walk(resolve(ctx.root, top), top)
    return failed


def _legacy(archive, sub):
    return unpack(require_fixture("zfs", "images", archive)) / sub


def test_zfs_pool_healed_from_parity_is_repaired(capsys):
    """raidz1 with every 24th allocated 4 KiB of one member overwritten: every block is
    rebuilt from parity, so after reading every file the report has only ``repaired``
    entries about it (it printed errors, then warnings), and the scan exits 0."""
    d = _legacy("fxraidz1-degraded-bitrot.tar.xz", "fxraidz1-degraded-bitrot")
    code, doc = scan(capsys, d)
    assert code == 0
    ctx = discover([str(d)])
    assert _read_all(ctx) == []
    fixed = [e for e in ctx.report if e.code == "checksum-repaired"]
    assert len(fixed) > 10
    assert {(e.severity, e.outcome) for e in fixed} == {("info", "repaired")}
    assert {e.outcome for e in ctx.report} <= {"repaired", "note"}
    from pvfs.cli import _status, damage_summary
    assert _status(ctx) == 0
    # what `pvfs mount` prints: outcome words, never "N errors" for a healed pool
    assert damage_summary(ctx).startswith(f"{len(fixed)} repaired")
    assert "lost" not in damage_summary(ctx) and "error" not in damage_summary(ctx)


def test_zfs_degraded_pool_does_not_promise_what_it_cannot_rebuild(capsys):
    """The same bit-rotted raidz1 without its third member: DEGRADED (one member missing,
    within parity), but blocks whose rot sits on a member left cannot be rebuilt.  The
    pool-state entry named no member and promised 'every block can be rebuilt', then
    the reads failed; now it names the missing member and says which blocks fail, and
    each failed block is a ``lost`` entry at its file, with its range."""
    d = _legacy("fxraidz1-degraded-bitrot.tar.xz", "fxraidz1-degraded-bitrot")
    inputs = [d / "fxraidz1-d0.img", d / "fxraidz1-d1.img"]
    code, doc = scan(capsys, *inputs)
    state = entries(doc, "pool-state")
    assert [(e["severity"], e["outcome"]) for e in state] == [("warning", "degraded")]
    assert "fxraidz1-d2.img missing" in state[0]["message"]
    miss = entries(doc, "missing-member")
    assert [(e["severity"], e["outcome"]) for e in miss] == [("warning", "degraded")]
    assert "fxraidz1-d2.img" in miss[0]["message"]
    assert "every block can be rebuilt" not in state[0]["message"]
    ctx = discover([str(p) for p in inputs])
    failed = _read_all(ctx)
    assert failed
    lost = [e for e in ctx.report if e.outcome == "lost"]
    assert {e.path for e in lost if e.code == "unreadable-block"} >= set(failed)
    assert all(e.ranges for e in lost if e.code == "unreadable-block")
    from pvfs.cli import _status
    assert _status(ctx) == 3


# ---------------------------------------------------------------------------
# Ceph

def _ceph():
    return unpack(require_fixture("ceph", "ceph-fixture.tar.zst")) / "ceph-fixture"


def test_ceph_missing_osd_is_named_degraded(capsys):
    """osd.0 and osd.1 of three, pools of size 2: every placement group keeps a copy, so
    nothing is lost -- but the OSDMap lists osd.2 and the report never said it was
    missing.  Now one ``degraded`` entry names it (with its state from the monitor's
    OSDMap: the fixture killed it, so it is down), and the scan exits 0."""
    c = _ceph()
    code, doc = scan(capsys, c / "osd.0", c / "osd.1", opts=["--ceph-mon", str(c / "mon.a")])
    assert code == 0
    miss = entries(doc, "osd-missing")
    assert [(e["severity"], e["outcome"]) for e in miss] == [("warning", "degraded")]
    assert miss[0]["message"].startswith("osd.2 (down and in at osdmap epoch")
    assert "every placement group still has a copy" in miss[0]["message"]
    assert not entries(doc, "pgs-lost")


def test_ceph_osd_alone_names_the_missing_and_keeps_lost_images(capsys):
    """osd.2 alone: osd.0 and osd.1 are named as missing, the placement groups with no
    copy are one ``lost`` entry, and the two images whose header and data were all on
    the missing OSDs (vm-201, vm-202) stay in vms/ with a LOST.txt instead of vanishing."""
    c = _ceph()
    code, doc = scan(capsys, c / "osd.2")
    assert code == 3
    assert sorted(e["message"].split()[0] for e in entries(doc, "osd-missing", "degraded")) \
        == ["osd.0", "osd.1"]
    lost_pgs = entries(doc, "pgs-lost", "lost")
    assert len(lost_pgs) == 1 and "pool rbd: 2.2," in lost_pgs[0]["message"]
    for vmid, image in ((201, "rbd-lz4/vm-201-disk-0"), (202, "rbd-snappy/vm-202-disk-0")):
        assert doc["vms"][str(vmid)] == ["LOST.txt"]
        lost = [e for e in entries(doc, "volume-lost", "lost")
                if e["path"] == f"vms/{vmid}/LOST.txt"]
        assert lost and image in lost[0]["message"] and "no given OSD" in lost[0]["message"]


# ---------------------------------------------------------------------------
# PBS

def test_pbs_missing_chunk_is_lost_with_its_range(capsys):
    """A datastore with one chunk file deleted: the backup's disk is ``lost`` exactly in
    that chunk's 4 MiB (at the backup's storage path and in vms/100/backups/), exit 3."""
    ds = require_fixture("pbs", "generated", "datastore-missing-chunk")
    code, doc = scan(capsys, ds)
    assert code == 3
    lost = entries(doc, "missing-chunk")
    assert lost and {(e["severity"], e["outcome"]) for e in lost} == {("error", "lost")}
    assert {tuple(r) for e in lost for r in e["ranges"]} == {(8388608, 4194304)}
    assert any(e["path"].startswith("vms/100/backups/") for e in lost)


def test_thin_pool_without_metadata_keeps_its_vms(capsys, tmp_path):
    """The whole thin-pool metadata LV zeroed: no thin LV can be mapped.  The VMs stay in
    vms/ with disks that fail every read, each a ``lost`` entry over the whole disk, and
    the superblock entry is a loss (nothing was rebuilt), exit 3."""
    d, m = _thin_fixture()
    img = tmp_path / "thin.img"
    shutil.copyfile(d / "pve-disk.img", img)
    with open(img, "r+b") as f:
        f.seek(m["thin_pool"]["tmeta_disk_offset_bytes"])
        f.write(bytes(m["linear_volumes"]["data_tmeta"]["size_bytes"]))
    code, doc = scan(capsys, img)
    assert code == 3
    assert [(e["severity"], e["outcome"]) for e in entries(doc, "thin-superblock")] == [
        ("error", "lost")]
    for vmid, size in (("100", 64 << 20), ("101", 32 << 20)):
        assert "disk-0.raw" in doc["vms"][vmid]
        lost = [e for e in entries(doc, "thin-device-missing", "lost")
                if e["path"] == f"vms/{vmid}/disk-0.raw"]
        assert lost and lost[0]["ranges"] == [[0, size]]


# ---------------------------------------------------------------------------
# DRBD

def test_drbd_node_alone_names_its_missing_peer(capsys):
    """One node of a two-node DRBD resource: its data is all there (exit 0), but the
    peer -- DRBD's redundancy -- is missing, so one ``degraded`` entry names it by the
    node id this node's meta data keeps a bitmap for (it was an info note)."""
    d = unpack(require_fixture("drbd", "drbd-fixtures.tar.xz"))
    code, doc = scan(capsys, d / "drbd-v09-node-a.img")
    assert code == 0
    alone = entries(doc, "single-node")
    assert [(e["severity"], e["outcome"]) for e in alone] == [("warning", "degraded")]
    assert "(node-id 1 missing)" in alone[0]["message"]


def test_pbs_unreadable_manifest_is_not_a_loss(capsys, tmp_path):
    """A snapshot whose index.json.blob is garbage: its archives still read and every
    chunk is checked against its digest, so nothing is lost (exit 0); the manifest is a
    ``degraded`` entry (it was an error, exit 3)."""
    ds = tmp_path / "datastore"
    shutil.copytree(require_fixture("pbs", "generated", "datastore"), ds)
    blob = ds / "vm/100/2024-01-16T10:00:00Z/index.json.blob"
    blob.write_bytes(b"\0" * blob.stat().st_size)
    code, doc = scan(capsys, ds)
    assert code == 0
    bad = entries(doc, "bad-manifest")
    assert [(e["severity"], e["outcome"]) for e in bad] == [("warning", "degraded")]


# ---------------------------------------------------------------------------
# Every fixture and damaged variant at once

GOLDEN = Path(__file__).resolve().parent / "golden" / "scan"


def _json_runs(text):
    """``(exit status, report document)`` of each ``pvfs scan --json`` run in a transcript."""
    runs = []
    for block in text.split("\n$ pvfs ")[0:]:
        head, _, rest = block.partition("\n")
        if "scan --json" not in head or not rest.startswith("[exit "):
            continue
        code = int(rest[6:rest.index("]")])
        body = rest[rest.index("\n") + 1:]
        if not body.startswith("{"):
            continue
        end = body.index("\n}\n") + 2 if "\n}\n" in body else len(body)
        runs.append((code, json.loads(body[:end])))
    return runs


def test_every_golden_scan_exits_3_exactly_when_something_is_lost():
    """Over the committed transcript of every fixture and damaged variant (tests/golden,
    kept equal to the code by test_golden_scan): every error entry is a loss and every
    loss an error; exit 3 exactly when an entry is lost, 0 when none is (1: nothing
    recognised); a 'repaired' entry is always info, 'degraded' always a warning."""
    files = sorted(GOLDEN.rglob("*.out"))
    assert len(files) > 100
    seen = 0
    for f in files:
        for code, doc in _json_runs(f.read_text()):
            seen += 1
            pairs = {(e["severity"], e["outcome"]) for e in doc["damage"]}
            assert pairs <= {("error", "lost"), ("warning", "degraded"), ("info", "repaired"),
                             ("info", "note")}, (f.name, pairs)
            lost = any(e["outcome"] == "lost" for e in doc["damage"])
            assert code in ((3,) if lost else (0, 1)), (f.name, code, lost)
    assert seen > 100
