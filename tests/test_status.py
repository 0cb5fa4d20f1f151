"""The per-VM and per-container status table (issue 13 item 4): OK / REPAIRED / DEGRADED /
PARTIAL (n files, n bytes) / LOST, built from the damage report, on real fixtures and
their damaged variants.  Byte counts are checked against what the real tools placed
(Ceph's object placement in the fixture manifest, the PBS generator's ground truth,
debugfs's block map), never against pvfs's own reading."""

from __future__ import annotations

import json
import subprocess

from pvfs.discover import discover
from pvfs.nodes import resolve
from pvfs.proxmox.status import row_word
from pvfs.proxmox.view import table
from pvfs.report import readme_text, report_doc, report_text

from conftest import (ROOT, ext4_disk_with_one_damaged_file, gpt_disk_with_bad_block,
                      require_fixture, sha256_source, unpack)

EXAMPLES = ROOT / "examples"


def _rows(ctx):
    return {r["vmid"]: r for r in table(ctx)}


def test_ddrescue_example_is_partial_with_its_file():
    """examples/damaged: a qcow2 with a GNU ddrescue mapfile marking 1 KiB bad under
    home/demo/hello.txt (the example's README says so): one file, 1024 bytes."""
    ctx = discover([str(EXAMPLES / "damaged" / "vm-102-disk-0.qcow2")])
    r = _rows(ctx)[102]
    assert (r["id"], r["kind"], r["status"], r["files"], r["bytes"]) == \
        ("102", "vm", "PARTIAL", 1, 1024)
    assert r["damaged_files"][0] == "vms/102/disk-0.files/p2/home/demo/hello.txt"
    disk = r["disks"][0]
    assert disk["status"] == "PARTIAL" and disk["lost_ranges"] == [[0x271800, 0x400]]
    assert [s["snapshot"] for s in r["snapshots"]] == ["before-upgrade"]
    # README.txt and pvfs scan start with the table; README lists the damage lines
    text = readme_text(ctx).splitlines()
    assert text[3].startswith("Status of each VM and container")
    row = next(ln for ln in text if ln.split()[:2] == ["102", "VM"])
    assert "PARTIAL (1 file, 1.0 KiB)" in row
    assert "      vms/102/disk-0.files/p2/home/demo/hello.txt" in text
    assert not any(ln.startswith("Damage entries: ") and "see report.json" in ln for ln in text)
    scan = report_text(ctx).splitlines()
    assert scan[0].startswith("Status of each VM and container") and row in scan
    doc = json.loads(json.dumps(report_doc(ctx), default=str))
    assert doc["guests"][0]["status"] == "PARTIAL" and doc["guests"][0]["bytes"] == 1024


def _ext4_with_big_file(tmp_path):
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "hello.txt").write_bytes(b"hello\n")
    (src / "big.bin").write_bytes(bytes(range(256)) * 4096 * 4)  # 4 MiB
    img = tmp_path / "fs.img"
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-d", str(src),
                    "-L", "guest", str(img), "16M"], check=True)
    out = subprocess.run(["debugfs", "-R", "bmap /big.bin 100", str(img)], check=True,
                         capture_output=True, text=True).stdout
    return img, int(out.split()[-1])


def test_guest_filesystem_with_one_file_on_bad_sectors(tmp_path):
    """One 4 KiB bad block (a ddrescue mapfile) inside big.bin, which debugfs places: the
    VM is PARTIAL (1 file, 4.0 KiB), the damaged file is named, the other file is fine."""
    img, block = _ext4_with_big_file(tmp_path)
    disk = tmp_path / "vm-100-disk-0.raw"
    gpt_disk_with_bad_block(img, disk, "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
                            (1 << 20) + block * 4096)
    ctx = discover([str(disk)])
    r = _rows(ctx)[100]
    assert (r["status"], r["files"], r["bytes"]) == ("PARTIAL", 1, 4096)
    assert r["damaged_files"] == ["vms/100/disk-0.files/p1/big.bin"]
    assert r["disks"][0]["lost_ranges"] == [[(1 << 20) + block * 4096, 4096]]
    assert resolve(ctx.root, "vms/100/disk-0.files/p1/etc/hello.txt").source.read(0, 6) == \
        b"hello\n"
    assert "PARTIAL (1 file, 4.0 KiB)" in readme_text(ctx)


def test_hostile_file_name_cannot_forge_a_readme_line(tmp_path):
    """A damaged file whose name holds a newline is listed escaped, on one line."""
    evil = "x\nVM 999 OK"
    _img, disk = ext4_disk_with_one_damaged_file(tmp_path, evil)
    ctx = discover([str(disk)])
    assert _rows(ctx)[100]["damaged_files"] == [f"vms/100/disk-0.files/p1/{evil}"]
    for text in (readme_text(ctx), report_text(ctx)):
        assert "x\\x0aVM 999 OK" in text
        assert not any(ln.startswith("VM 999") for ln in text.splitlines())


def test_zfs_raidz1_missing_member_is_degraded_and_whole_pool_ok():
    """zfs-modern: rpool raidz1 with one of three members gone (made by zpool with the
    device removed): every guest DEGRADED, none lost; the complete pool: every guest OK."""
    d = unpack(require_fixture("zfs-modern", "images", "rpool-raidz1-degraded.tar.xz"))
    rows = _rows(discover(sorted(str(p) for p in d.rglob("*.img"))))
    assert len(rows) == 8 and {r["status"] for r in rows.values()} == {"DEGRADED"}
    assert all("zfs: member" in r["why"] for r in rows.values())
    d = unpack(require_fixture("zfs-modern", "images", "rpool-raidz1.tar.xz"))
    rows = _rows(discover(sorted(str(p) for p in d.rglob("*.img"))))
    assert len(rows) == 8 and {r["status"] for r in rows.values()} == {"OK"}
    assert all(r["why"] == "" and r["damage"] == [] for r in rows.values())


def test_ceph_one_osd_of_three_partial_by_the_manifests_placement(ceph_root):
    """Only osd.2's block: every object Ceph placed on osd.0/osd.1 only (the manifest's
    acting sets) is inside the VM's lost ranges, no object osd.2 holds is, and the bytes
    are those ranges.  (Objects never written are counted too when their placement group
    is on no given OSD: without the other OSDs nothing says they were never written.)"""
    manifest = json.loads(require_fixture("ceph", "manifest.json").read_text())
    ctx = discover([str(ceph_root / "osd.2" / "block")])
    rows = _rows(ctx)
    for im in manifest["images"]:
        vmid = int(im["name"].split("-")[1])
        r = rows[vmid]
        if r["status"] == "LOST":  # header and every data object on the other OSDs
            assert not [o for o in im["objects"] if 2 in o["osds_head"]], im["name"]
            assert r["disks"][0]["found"] == "lost", im["name"]
            continue
        ranges = r["disks"][0]["lost_ranges"]
        osz = im["object_size"]
        in_lost = {o for off, n in ranges for o in range(off // osz, (off + n) // osz)}
        assert {o["objno"] for o in im["objects"] if 2 not in o["osds_head"]} <= in_lost
        assert not {o["objno"] for o in im["objects"] if 2 in o["osds_head"]} & in_lost
        assert r["bytes"] == sum(n for _o, n in ranges)
        # nothing lost: still DEGRADED, its replicas on osd.0/osd.1 are not among the inputs
        assert r["status"] == ("PARTIAL" if ranges else "DEGRADED"), im["name"]
    assert {v: r["status"] for v, r in rows.items()} == {
        100: "PARTIAL", 101: "PARTIAL", 102: "PARTIAL", 103: "PARTIAL", 200: "DEGRADED",
        201: "LOST", 202: "LOST"}
    assert rows[102]["files"] == 3 and rows[100]["files"] is None  # 100: GPT unreadable
    # 100's header is on no given OSD: its size is guessed, so its loss is a floor
    assert rows[100]["bytes_exact"] is False and rows[102]["bytes_exact"] is True
    assert row_word(rows[100]).startswith("PARTIAL (at least ")


def test_pbs_missing_chunk_marks_one_backup():
    """PBS datastore with one chunk deleted (the generator's ground truth names it): VM 100
    is PARTIAL by exactly that chunk's bytes in the backups using it, the others are OK."""
    gen = require_fixture("pbs", "generated")
    gt = json.loads((gen / "ground-truth.json").read_text())
    dv = gt["damaged_variants"]["datastore-missing-chunk"]
    lo, hi = dv["affected_byte_range"]
    ctx = discover([str(gen / "datastore-missing-chunk")])
    rows = _rows(ctx)
    hit = {a.split("/")[2] for a in dv["affected"]}
    r = rows[100]
    assert r["status"] == "PARTIAL" and r["bytes"] == (hi - lo) * len(hit)
    assert {b["backup"]: b["status"] for b in r["backup_status"]} == {
        b["backup"]: "PARTIAL" if b["backup"] in hit else "OK" for b in r["backup_status"]}
    assert {v: x["status"] for v, x in rows.items() if v != 100} == {200: "OK", 101: "OK"}
    ok = discover([str(gen / "datastore")])
    assert {x["status"] for x in table(ok)} == {"OK"}


def test_thin_pool_rebuilt_is_repaired_and_every_byte_right():
    """lvm-thin: the thin-pool superblock zeroed (generate.sh) and rebuilt from the btree
    nodes: the VMs on thin LVs are REPAIRED, not OK and not lost, and REPAIRED is true:
    every disk and snapshot equals the manifest's sha256 (made from the real dm-thin)."""
    d = unpack(require_fixture("lvm-thin", "lvm-thin-fixtures.tar.xz"))
    m = json.loads(require_fixture("lvm-thin", "manifest.json").read_text())
    ctx = discover([str(d / "pve-disk-damaged-tmeta-sb.img")])
    rows = _rows(ctx)
    assert {v: r["status"] for v, r in rows.items()} == {100: "REPAIRED", 101: "REPAIRED"}
    assert "thin superblock" in rows[100]["why"] and rows[100]["bytes"] == 0
    tv = m["thin_volumes"]
    for path, lv in (("vms/100/disk-0.raw", "vm-100-disk-0"), ("vms/101/disk-0.raw", "vm-101-disk-0"),
                     ("vms/100/snapshots/before/disk-0.raw", "snap_vm-100-disk-0_before")):
        assert sha256_source(resolve(ctx.root, path).source) == tv[lv]["sha256"], path
    rows = _rows(discover([str(d / "pve-disk.img")]))
    assert {v: r["status"] for v, r in rows.items()} == {100: "OK", 101: "OK"}


def test_ceph_missing_osd_covered_by_replicas_is_degraded(ceph_root):
    """osd.0 and osd.1 of three (size-2 pools): the osdmap's osd.2 is missing, every
    placement group keeps a copy: every VM DEGRADED, not OK and not PARTIAL, and DEGRADED
    is true: every image equals `rbd export`'s sha256 in the manifest."""
    manifest = json.loads(require_fixture("ceph", "manifest.json").read_text())
    ctx = discover([str(ceph_root / "osd.0"), str(ceph_root / "osd.1")])
    rows = _rows(ctx)
    assert len(rows) == 7 and {r["status"] for r in rows.values()} == {"DEGRADED"}
    assert all("osd.2" in r["why"] for r in rows.values())
    for im in manifest["images"]:
        node = resolve(ctx.root, f"vms/{im['name'].split('-')[1]}/disk-0.raw")
        assert sha256_source(node.source) == im["sha256"], im["name"]


def _one_vm():
    from pvfs.discover import Context, finish
    from pvfs.proxmox.view import Locator
    from pvfs.source import BytesSource

    ctx = Context()
    d = ctx.storage("zfs").subdir("rpool").subdir("data")
    vol = ctx.add_volume(BytesSource(bytes(1 << 20)), d, "vm-100-disk-0",
                         "storage/zfs/rpool/data", "zvol", probe=False)
    ctx.add_proxmox(Locator("zfspool", "rpool/data", "vm-100-disk-0"), vol)
    finish(ctx)
    return ctx


def test_outcome_rules_below_and_on_the_disk():
    """The pool's entries reach its guests (repaired < degraded); a loss elsewhere in the
    pool does not (the core maps losses up to each volume they reach); a loss on the disk
    makes it PARTIAL, and every byte lost makes it LOST."""
    ctx = _one_vm()
    assert _rows(ctx)[100]["status"] == "OK"
    ctx.report.add("info", "zfs", "storage/zfs/rpool", "checksum-repaired", "healed",
                   outcome="repaired")
    assert _rows(ctx)[100]["status"] == "REPAIRED"
    ctx.report.add("error", "zfs", "storage/zfs/rpool", "unreadable-block", "elsewhere")
    assert _rows(ctx)[100]["status"] == "REPAIRED"
    ctx.report.add("warning", "zfs", "storage/zfs/rpool", "missing-member", "d2 missing")
    r = _rows(ctx)[100]
    assert r["status"] == "DEGRADED" and r["why"] == "disk-0: zfs: d2 missing"
    ctx.report.add("error", "zfs", "vms/100/disk-0.raw", "unreadable-block", "gone",
                   [(4096, 8192), (8192, 8192)])
    r = _rows(ctx)[100]
    assert (r["status"], r["bytes"], r["files"]) == ("PARTIAL", 12288, None)
    assert r["disks"][0]["lost_ranges"] == [[4096, 12288]]
    ctx.report.add("error", "zfs", "vms/100/disk-0.raw", "unreadable-block", "all gone",
                   [(0, 1 << 20)])
    assert _rows(ctx)[100]["status"] == "LOST"


def test_damage_lines_bounded_per_guest():
    """README.txt lists the first MAX_LINES damage lines of a guest, then how many more."""
    from pvfs.proxmox.status import MAX_LINES

    ctx = _one_vm()
    for i in range(MAX_LINES + 12):
        ctx.report.add("error", "zfs", "vms/100/disk-0.raw", "unreadable-block",
                       f"block {i} gone", [(i * 4096, 512)])
    text = readme_text(ctx).splitlines()
    shown = [ln for ln in text if ln.startswith("    ERROR   zfs: vms/100/disk-0.raw: block ")]
    assert len(shown) == MAX_LINES
    assert "    ... and 12 more (report.json has all)" in text
    r = _rows(ctx)[100]
    assert len(r["damage"]) == r["damage_count"] == MAX_LINES + 12  # report.json: up to 100
