"""DRBD with layers inside (GPT + LVM thin, ext4, stacked DRBD) and the generation-UUID rules.

Devices here get meta data from ``backends.drbd.craft``, which writes the same
bytes as drbdmeta (checked against the drbdmeta fixtures in the first test);
expected contents come from the other formats' fixture manifests.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess

import pytest

from conftest import FIXTURES, require_fixture, sha256_source, unpack
from pvfs.discover import discover
from pvfs.nodes import resolve
from pvfs.report import report_doc
from pvfs.source import BytesSource
from backends.drbd import craft
from backends.drbd import pair as P
from backends.drbd.meta import INTERNAL, read_meta

DRBD_MANIFEST = FIXTURES / "drbd" / "manifest.json"
LVM_MANIFEST = FIXTURES / "lvm-thin" / "manifest.json"


def test_craft_writes_what_drbdmeta_writes():
    """The meta data craft builds is byte-identical to the drbdmeta fixtures'."""
    fx = unpack(require_fixture("drbd", "drbd-fixtures.tar.xz"))
    man = json.loads(DRBD_MANIFEST.read_text())
    for fmt in ("v09", "v08"):
        name = f"drbd-{fmt}-node-a.img"
        e = man["images"][name]
        raw = (fx / name).read_bytes()
        patches = craft.internal_md(len(raw), fmt, current_uuid=int(e["superblock"]["current_uuid@8"], 16),
                                    bitmap_uuid=int(man["uuids"]["common_base_bitmap_uuid"], 16),
                                    history=[int(man["uuids"]["initial_history"], 16)],
                                    node_id=0, peer_node_id=1, flags=int(e["md_flags"], 16),
                                    bits=e["bitmap_bits_set"], device_uuid=int(e["device_uuid"], 16))
        for off, blob in patches:
            assert raw[off:off + len(blob)] == blob, (fmt, off)


# ---------------------------------------------------------------------------
# a whole Proxmox disk (GPT, LVM, thin pool) inside DRBD

@pytest.fixture(scope="module")
def pve_disk():
    d = unpack(require_fixture("lvm-thin", "lvm-thin-fixtures.tar.xz"))
    for root, _, files in os.walk(d):
        if "pve-disk.img" in files:
            return os.path.join(root, "pve-disk.img")
    pytest.skip("pve-disk.img not in the lvm-thin fixture")


def _lvm_manifest():
    return json.loads(LVM_MANIFEST.read_text())


def test_lvm_thin_inside_one_node(pve_disk, tmp_path):
    dev = tmp_path / "r0-node.img"
    size = craft.write_device(dev, pve_disk, current_uuid=0xC0FFEE0000000010)
    ctx = discover([str(dev)])
    base = "storage/drbd/r0-node"
    node = resolve(ctx.root, f"{base}/node-A.raw")
    h = hashlib.sha256(open(pve_disk, "rb").read()).hexdigest()
    assert size == os.path.getsize(pve_disk) and sha256_source(node.source) == h
    assert resolve(ctx.root, f"{base}/node-A.raw.parts/p3") is not None
    man = _lvm_manifest()
    for lv, e in man["thin_volumes"].items():
        n = resolve(ctx.root, f"storage/lvm/{man['vg']['name']}/{lv}")
        assert n is not None and sha256_source(n.source) == e["sha256"], lv
    assert sha256_source(resolve(ctx.root, "vms/101/disk-0.raw").source) == \
        man["thin_volumes"]["vm-101-disk-0"]["sha256"]
    vols = {v["path"]: v for v in report_doc(ctx)["volumes"]}
    assert vols[f"{base}/node-A.raw.parts/p3"]["parent"] == f"{base}/node-A.raw"


def test_lvm_thin_inside_an_in_sync_pair(pve_disk, tmp_path):
    a, b = tmp_path / "r1-a.img", tmp_path / "r1-b.img"
    craft.write_device(a, pve_disk, current_uuid=0xC0FFEE0000000020, node_id=0, peer_node_id=1)
    craft.write_device(b, pve_disk, current_uuid=0xC0FFEE0000000020, node_id=1, peer_node_id=0)
    ctx = discover([str(a), str(b)])
    base = "storage/drbd/r1"
    diff = json.loads(resolve(ctx.root, f"{base}/diff.json").render())
    assert diff["verdict"]["relation"] == "in-sync" and diff["in_sync"] is True
    assert diff["compared"]["blocks"] == [] and diff["bitmap_claims"]["blocks"] == []
    for letter in "AB":  # both nodes' partitions are found again
        assert resolve(ctx.root, f"{base}/node-{letter}.raw.parts/p3") is not None
    man = _lvm_manifest()
    vg = man['vg']['name']
    # Each node is its own timeline: the VG is assembled from node A and, again, from node B.
    for name in (vg, f"{vg}~2"):
        lv = resolve(ctx.root, f"storage/lvm/{name}/vm-100-disk-0")
        assert sha256_source(lv.source) == man["thin_volumes"]["vm-100-disk-0"]["sha256"]
    assert not [d for d in ctx.report if d.code == "duplicate-pv"]
    assert {d.message.split("this one is ")[1].split(" ")[0]
            for d in ctx.report if d.code == "timeline"} == {"drbd:r1:A", "drbd:r1:B"}


def test_ext4_inside(tmp_path):
    if shutil.which("mkfs.ext4") is None:
        pytest.skip("mkfs.ext4 (e2fsprogs) is not installed")
    fs = tmp_path / "fs.img"
    with open(fs, "wb") as f:
        f.truncate(8 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "root_owner=0:0", str(fs)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    dev = tmp_path / "web.img"
    craft.write_device(dev, fs, version="v08", current_uuid=0x1111222233334444)
    ctx = discover([str(dev)])
    vols = {v["path"]: v for v in report_doc(ctx)["volumes"]}
    assert vols["storage/drbd/web/node-A.raw"].get("filesystem") == "ext4"
    assert sha256_source(resolve(ctx.root, "storage/drbd/web/node-A.raw").source) == \
        hashlib.sha256(fs.read_bytes()).hexdigest()


def test_stacked_drbd(tmp_path):
    """DRBD on DRBD (8.4 stacked resources): the inner device is found in the outer data area."""
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(1 << 20))
    paths = []
    for n, node_id in (("a", 0), ("b", 1)):
        inner = tmp_path / f"inner-{n}.bin"
        craft.write_device(inner, payload, current_uuid=0x5555000000000010, node_id=node_id,
                           peer_node_id=1 - node_id)
        outer = tmp_path / f"outer-{n}.img"
        craft.write_device(outer, inner, current_uuid=0x7777000000000010, node_id=node_id,
                           peer_node_id=1 - node_id)
        paths.append(str(outer))
    ctx = discover(paths)
    drbd = ctx.storage("drbd").children()
    assert sorted(drbd) == ["outer", "outer-stacked"], sorted(drbd)
    inner_dir = "storage/drbd/outer-stacked"
    want = hashlib.sha256(payload.read_bytes()).hexdigest()
    for letter in "AB":
        assert sha256_source(resolve(ctx.root, f"{inner_dir}/node-{letter}.raw").source) == want
    diff = json.loads(resolve(ctx.root, f"{inner_dir}/diff.json").render())
    assert diff["verdict"]["relation"] == "in-sync"
    assert not [d for d in ctx.report if d.code == "late-member"]


def test_three_nodes(tmp_path):
    payload = tmp_path / "p.bin"
    payload.write_bytes(bytes(range(256)) * 4096)
    paths = []
    for node_id in range(3):
        dev = tmp_path / f"vm-disk-n{node_id}.img"
        craft.write_device(dev, payload, current_uuid=0x9999000000000010, node_id=node_id,
                           peer_node_id=(node_id + 1) % 3)
        paths.append(str(dev))
    ctx = discover(paths)
    base = "storage/drbd/vm-disk-n"
    for letter in "ABC":
        assert resolve(ctx.root, f"{base}/node-{letter}.raw") is not None
    assert "more-nodes" in {d.code for d in ctx.report}


# ---------------------------------------------------------------------------
# generation-UUID rules (drbd_uuid_compare order)

def _md(version="v09", node_id=0, peer=1, **kw):
    dev = 1 << 20
    buf = bytearray(dev)
    for off, blob in craft.internal_md(dev, version, node_id=node_id, peer_node_id=peer, **kw):
        buf[off:off + len(blob)] = blob
    return read_meta(BytesSource(bytes(buf)), INTERNAL)


JC = 4


@pytest.mark.parametrize("version", ["v09", "v08"])
@pytest.mark.parametrize("a,b,relation,resync", [
    # (current, bitmap, history) of A and B
    ((0x10, 0, []), (0x10, 0, []), "in-sync", None),
    ((0x11, 0, []), (0x10, 0, []), "in-sync", None),  # bit 0 (primary) is ignored
    ((0x10, 0x30, []), (0x10, 0, []), "same-generation", "bitmap"),
    ((0x20, 0x10, [0x8]), (0x10, 0, [0x8]), "A-newer", "bitmap"),
    ((0x10, 0, [0x8]), (0x20, 0x10, [0x8]), "B-newer", "bitmap"),
    ((0x20, 0x10, [0x8]), (0x30, 0x10, [0x8]), "split-brain", "bitmap"),
    ((0x40, 0, [0x20, 0x10]), (0x20, 0, [0x10]), "A-newer", "full"),
    ((0x20, 0, [0x10]), (0x40, 0, [0x20, 0x10]), "B-newer", "full"),
    ((0x40, 0x30, [0x10]), (0x50, 0x60, [0x10]), "split-brain", "full"),
    ((0x40, 0, [0x10]), (0x50, 0, [0x70]), "unrelated", "full"),
    ((JC, 0, []), (0x50, 0, []), "B-newer", "full"),
    ((JC, 0, []), (JC, 0, []), "both-new", None),
])
def test_uuid_compare(version, a, b, relation, resync):
    ma = _md(version, 0, 1, current_uuid=a[0], bitmap_uuid=a[1], history=a[2])
    mb = _md(version, 1, 0, current_uuid=b[0], bitmap_uuid=b[1], history=b[2])
    v = P.uuid_compare(ma, mb)
    assert (v["relation"], v["resync"]) == (relation, resync), v["rule"]
    # a just-created node shares no UUID yet: offline, nothing ties it to its peer
    assert P.same_resource(ma, mb) == (relation not in ("unrelated", "both-new") and a[0] != JC)


def test_v09_same_node_id_is_not_a_pair():
    ma = _md("v09", 0, 1, current_uuid=0x10)
    mb = _md("v09", 0, 1, current_uuid=0x10)
    assert P.related(ma, mb) and not P.same_resource(ma, mb)
    assert not P.same_resource(_md("v09", 0, 1, current_uuid=0x10), _md("v08", current_uuid=0x10))


# ---------------------------------------------------------------------------
# max-peers > 1 (interleaved bitmaps) and coarser bitmap granularity

def test_interleaved_bitmaps_pick_the_peer_slot(tmp_path):
    payload = tmp_path / "p.bin"
    payload.write_bytes(bytes(4 << 20))
    u = 0x4242000000000010
    a, b = tmp_path / "r3-a.img", tmp_path / "r3-b.img"
    # node 0: bitmap 1 tracks node 1, bitmap 0 tracks node 2; node 1: bitmap 2 tracks node 0
    craft.write_device(a, payload, current_uuid=0xA0, node_id=0, max_peers=3,
                       peers={1: (1, u), 2: (0, u)},
                       bits={0: [1, 2, 3], 1: [5, 31, 32, 33, 100], 2: [900]})
    craft.write_device(b, payload, current_uuid=0xB0, node_id=1, max_peers=3,
                       peers={0: (2, u), 2: (0, 0)},
                       bits={0: [7], 1: [8], 2: [64, 65, 1000]})
    ma = read_meta(BytesSource(a.read_bytes()), INTERNAL)
    assert ma.max_peers == 3 and ma.problems == []
    ctx = discover([str(a), str(b)])
    diff = json.loads(resolve(ctx.root, "storage/drbd/r3/diff.json").render())
    blocks = lambda rs: [o // 4096 + i for o, n in rs for i in range(n // 4096)]  # noqa: E731
    assert blocks(diff["bitmaps"]["A"]["ranges"]) == [5, 31, 32, 33, 100]
    assert diff["bitmaps"]["A"]["bitmap_index"] == 1
    assert blocks(diff["bitmaps"]["B"]["ranges"]) == [64, 65, 1000]
    assert diff["verdict"]["relation"] == "split-brain"
    assert diff["compared"]["blocks"] == []  # the data is equal: every claim is "in bitmaps but equal"
    assert blocks(diff["in_bitmaps_but_equal"]) == [5, 31, 32, 33, 64, 65, 100, 1000]


def test_64k_bitmap_granularity(tmp_path):
    payload = tmp_path / "p.bin"
    payload.write_bytes(bytes(4 << 20))
    dev = tmp_path / "coarse.img"
    craft.write_device(dev, payload, current_uuid=0xC0, bm_bytes_per_bit=65536, bits=[0, 3, 63])
    src = BytesSource(dev.read_bytes())
    md = read_meta(src, INTERNAL)
    assert md.bm_bytes_per_bit == 65536 and md.problems == [] and md.bm_bits == 64
    from backends.drbd.meta import read_bitmap
    bm = read_bitmap(src, md, 0)
    assert bm.ranges == [(0, 65536), (3 * 65536, 65536), (63 * 65536, 65536)]
    assert bm.bits_set == 3


def test_drbd_on_an_lvm_lv_pairs_with_a_plain_image(pve_disk, tmp_path):
    """LINSTOR layout: node A's backing device is an LV inside a disk image, node B's an image.

    A's DRBD member appears only after the LVM group is assembled; the DRBD group waits
    for it, so the two are still paired (A = first input).
    """
    man = _lvm_manifest()
    seg = man["linear_volumes"]["root"]["segments"]
    assert len(seg) == 1
    lv_off, lv_size = seg[0]["disk_offset"], man["linear_volumes"]["root"]["size_bytes"]
    disk = tmp_path / "node1-disk.img"
    shutil.copyfile(pve_disk, disk)
    u = dict(bitmap_uuid=0x6000000000000010, history=[0x5000000000000010])
    with open(disk, "r+b") as f:
        for off, blob in craft.internal_md(lv_size, current_uuid=0x7000000000000011, node_id=0,
                                           peer_node_id=1, bits=[3], **u):
            f.seek(lv_off + off)
            f.write(blob)
        f.seek(lv_off)
        lv = f.read(lv_size)
    b = tmp_path / "root.img"
    b.write_bytes(lv)
    with open(b, "r+b") as f:
        f.seek(3 * 4096)
        f.write(b"written on node B only".ljust(4096, b"\0"))
        for off, blob in craft.internal_md(lv_size, current_uuid=0x7100000000000011, node_id=1,
                                           peer_node_id=0, bits=[3], **u):
            f.seek(off)
            f.write(blob)
    ctx = discover([str(disk), str(b)])
    assert sorted(ctx.storage("drbd").children()) == ["root"]
    base = "storage/drbd/root"
    meta = json.loads(resolve(ctx.root, f"{base}/meta.json").render())
    assert meta["nodes"]["A"]["volume"] == "storage/lvm/pve/root"
    assert meta["nodes"]["B"]["input"] == str(b)
    diff = json.loads(resolve(ctx.root, f"{base}/diff.json").render())
    assert diff["verdict"]["relation"] == "split-brain"
    assert diff["compared"]["blocks"] == [3] == diff["bitmap_claims"]["blocks"]
    want_a = hashlib.sha256(lv[:resolve(ctx.root, f"{base}/node-A.raw").size]).hexdigest()
    assert sha256_source(resolve(ctx.root, f"{base}/node-A.raw").source) == want_a
    assert not [d for d in ctx.report if d.code == "late-member"]


def test_linstor_named_resource_is_a_proxmox_disk(tmp_path):
    """LINSTOR names backing LVs <resource>_00000; a resource vm-100-disk-1 is VM 100's disk-1."""
    payload = tmp_path / "p.bin"
    payload.write_bytes(os.urandom(2 << 20))
    u = dict(bitmap_uuid=0x6000000000000010, history=[0x5000000000000010])
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    craft.write_device(a / "vm-100-disk-1_00000", payload, current_uuid=0x7000000000000010,
                       node_id=0, peer_node_id=1, **u)
    craft.write_device(b / "vm-100-disk-1_00000", payload, current_uuid=0x6000000000000010,
                       node_id=1, peer_node_id=0, history=u["history"])
    ctx = discover([str(a / "vm-100-disk-1_00000"), str(b / "vm-100-disk-1_00000")])
    base = "storage/drbd/vm-100-disk-1"
    diff = json.loads(resolve(ctx.root, f"{base}/diff.json").render())
    assert diff["verdict"]["relation"] == "A-newer"
    vm = resolve(ctx.root, "vms/100/disk-1.raw")
    assert vm is not None and vm.source is resolve(ctx.root, f"{base}/merged.raw").source
    assert sha256_source(vm.source) == hashlib.sha256(payload.read_bytes()).hexdigest()
    assert "proxmox-disk" in {d.code for d in ctx.report}
    # one node alone: its data is the VM disk
    ctx = discover([str(b / "vm-100-disk-1_00000")])
    assert resolve(ctx.root, "vms/100/disk-1.raw").source is \
        resolve(ctx.root, f"{base}/node-A.raw").source


@pytest.mark.parametrize("version", ["v09", "v08"])
def test_peer_flags_give_hints(version):
    from backends.drbd import structs as S

    # v08 keeps the peer facts in its own flags word (8.4 MDF_PEER_OUT_DATED = 1 << 5)
    a_flags = S.MDF_CONSISTENT | S.MDF_WAS_UP_TO_DATE | S.MDF_PRIMARY_IND
    peers = None
    if version == "v08":
        a_flags |= S.MDF_PEER_OUT_DATED
    else:
        peers = {1: (0, 0x30)}
    ma = _md(version, 0, 1, current_uuid=0x40, bitmap_uuid=0x30, history=[0x10], flags=a_flags,
             peers=peers)
    if version == "v09":  # mark the peer slot outdated
        ma.peers[1].flags |= S.MDF_PEER_OUTDATED
    mb = _md(version, 1, 0, current_uuid=0x30, history=[0x10], flags=S.MDF_WAS_UP_TO_DATE)
    v = P.uuid_compare(ma, mb)
    assert v["relation"] == "A-newer"
    assert "A marked B outdated: A kept the good data when they parted" in v["hints"]
    assert "A was primary when its meta data was last written" in v["hints"]
    assert any("B's data is not consistent" in h for h in v["hints"])
    if version == "v08":
        assert "PEER_OUT_DATED" in ma.to_json()["flag_names"]
        assert ma.to_json()["peer_flag_names"] == ["PEER_OUTDATED"]


def test_drbd_pair_option_forces_a_pair(tmp_path):
    payload = tmp_path / "p.bin"
    payload.write_bytes(bytes(1 << 20))
    a, b = tmp_path / "left.img", tmp_path / "right.img"
    craft.write_device(a, payload, current_uuid=0x1000000000000010, history=[0x2000000000000010])
    craft.write_device(b, payload, current_uuid=0x3000000000000010, history=[0x4000000000000010],
                       node_id=1, peer_node_id=0)
    ctx = discover([str(a), str(b)])
    assert len(ctx.storage("drbd").children()) == 2  # nothing shared: two lone nodes
    from pvfs.discover import Options
    ctx = discover([str(a), str(b)], Options(backend_options={"drbd_pair": [f"{a}=right.img"]}))
    (name,) = ctx.storage("drbd").children()
    diff = json.loads(resolve(ctx.root, f"storage/drbd/{name}/diff.json").render())
    assert diff["verdict"]["relation"] == "unrelated" and diff["compared"]["blocks"] == []
    ctx = discover([str(a), str(b)], Options(backend_options={"drbd_pair": ["nothing=right.img"]}))
    assert [d.code for d in ctx.report if d.severity == "error"] == ["bad-option"]
