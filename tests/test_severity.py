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
    # the pool-level entries: two members named as missing, the vdev and pool lost
    assert len(entries(doc, "missing-member")) == 2
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
