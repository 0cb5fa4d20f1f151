"""DRBD against the drbdmeta fixtures: every manifest fact, through pvfs and the parser."""

from __future__ import annotations

import hashlib
import json
import os
import re

import pytest

from conftest import FIXTURES, ROOT, fixture_json, require_fixture, sha256_source, unpack
from pvfs.discover import Options, discover
from pvfs.nodes import File, GeneratedFile, resolve, walk
from pvfs.report import report_doc
from pvfs.source import FileSource
from backends.drbd import structs as S
from backends.drbd.meta import INTERNAL, read_activity_log, read_bitmap, read_meta

MANIFEST_PATH = FIXTURES / "drbd" / "manifest.json"
MANIFEST = fixture_json(MANIFEST_PATH, {"images": {}, "pairs": {}})
BLOCK = 4096


@pytest.fixture(scope="module")
def fx():
    return unpack(require_fixture("drbd", "drbd-fixtures.tar.xz"))


def _u(text):
    return int(text, 16)


def _blocks(ranges):
    out = []
    for off, ln in ranges:
        out.extend(range(off // BLOCK, -(-(off + ln) // BLOCK)))
    return out


def _data_sha(path, size):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(size))
    return h.hexdigest()


# ---------------------------------------------------------------------------
# the parser, image by image

@pytest.mark.parametrize("name", sorted(MANIFEST["images"]))
def test_superblock_matches_manifest(fx, name):
    e = MANIFEST["images"][name]
    src = FileSource(fx / name)
    md = read_meta(src, INTERNAL)
    lay, sb = e["layout"], e["superblock"]
    assert md.version == e["md_format"]
    assert md.magic == _u(sb["magic@60"])
    assert md.md_offset == lay["md_offset"] == sb["offset"]
    assert md.al_offset == lay["al_offset"]
    assert md.bm_offset == lay["bm_offset"]
    assert md.md_size_sect == lay["md_size_sect"] == sb["md_size_sect@64"]
    assert md.effective_size == lay["la_size_sect"] == sb["la_size_sect@0"]
    assert md.data_size == lay["data_area_bytes"]
    assert md.bm_offset == lay["md_area_start"] and md.md_size_sect * 512 == lay["md_size_bytes"]
    assert md.location.kind == e["meta_data"] == "internal"
    assert src.size == e["file_size"] and sha256_source(src) == e["file_sha256"]
    assert md.al_offset_sect == sb["al_offset_sect_rel@68"]
    assert md.bm_offset_sect == sb["bm_offset_sect_rel@76"]
    assert md.al_nr_extents == sb["al_nr_extents@72"]
    assert md.flags == _u(e["md_flags"]) == S.MDF_CONSISTENT | S.MDF_WAS_UP_TO_DATE | S.MDF_AL_CLEAN
    assert md.al_clean
    assert md.device_uuid == _u(e["device_uuid"])
    assert md.current_uuid == _u(sb["current_uuid@8"])
    assert md.problems == []
    if md.version == "v09":
        assert md.node_id == e["node_id"]
        assert md.max_peers == e["max_peers"]
        slot = md.peers[e["peer"]["node_id"]]
        assert slot.bitmap_index == e["peer"]["bitmap_index"]
        assert slot.bitmap_uuid == _u(e["peer"]["bitmap_uuid"])
        assert slot.flags == _u(e["peer"]["flags"]) == S.MDF_PEER_DEVICE_SEEN
        assert [u for u in md.history_uuids if u] == [_u(h) for h in e["history_uuids"]]
        assert [p.node_id for p in md.used_slots()] == [e["peer"]["node_id"]]
    else:
        uu = [_u(x) for x in sb["uuids@8"]]
        assert [md.current_uuid, md.peers[0].bitmap_uuid, *md.history_uuids] == uu
        assert md.peers[0].bitmap_uuid == _u(e["uuids"]["bitmap"])
        assert md.history_uuids == [_u(h) for h in e["uuids"]["history"]]
    # the bitmap: exactly the blocks this node changed
    slot = md.used_slots()[0]
    bm = read_bitmap(src, md, slot.bitmap_index)
    assert _blocks(bm.ranges) == e["bitmap_bits_set"] == e["changed_blocks_since_base"]
    assert bm.bits_set == len(e["bitmap_bits_set"])
    assert bm.bits_past_end == 0 and not bm.truncated


@pytest.mark.parametrize("name", sorted(MANIFEST["images"]))
def test_superblock_matches_drbdmeta_dump(fx, name):
    """The drbdmeta dump-md output (truth/) agrees with what the parser reads."""
    dump = (FIXTURES / "drbd" / "truth" / f"{name}.dump-md.txt").read_text()
    md = read_meta(FileSource(fx / name), INTERNAL)

    def num(key):
        return int(re.search(rf"\n{key} (-?\w+);", dump).group(1), 0)

    assert md.effective_size == num("la-size-sect")
    assert md.bm_bytes_per_bit == num("bm-byte-per-bit")
    assert md.device_uuid == num("device-uuid")
    assert md.la_peer_max_bio_size == num("la-peer-max-bio-size")
    assert md.al_stripes == num("al-stripes")
    assert md.al_stripe_size_4k == num("al-stripe-size-4k")
    assert md.al_nr_extents == int(re.search(r"# al-extents (\d+);", dump).group(1))
    for key in ("md_size_sect", "md_offset", "al_offset", "bm_offset"):
        want = int(re.search(rf"# {key} (\d+)", dump).group(1))
        assert getattr(md, key) == want, key
    bits = int(re.search(r"# bits-set (\d+);", dump).group(1))
    assert read_bitmap(FileSource(fx / name), md, md.used_slots()[0].bitmap_index).bits_set == bits
    if md.version == "v09":
        assert md.node_id == num("node-id")
        assert md.current_uuid == num("current-uuid")
        assert md.max_peers == num("max-peers")
    else:
        uu = re.search(r"uuid \{\s*(\S+); (\S+); (\S+); (\S+);", dump).groups()
        assert [md.current_uuid, md.peers[0].bitmap_uuid, *md.history_uuids] == [int(u, 16) for u in uu]
    gi = (FIXTURES / "drbd" / "truth" / f"{name}.get-gi.txt").read_text().strip().split(":")
    assert md.current_uuid == int(gi[0], 16)
    assert md.peers[0 if md.version == "v08" else 1 - md.node_id].bitmap_uuid == int(gi[1], 16)
    assert bool(md.flags & S.MDF_CONSISTENT) == (gi[4] == "1")
    assert bool(md.flags & S.MDF_WAS_UP_TO_DATE) == (gi[5] == "1")
    assert bool(md.flags & S.MDF_PRIMARY_IND) == (gi[6] == "1")


@pytest.mark.parametrize("name", sorted(MANIFEST["images"]))
def test_activity_log_as_drbdmeta_left_it(fx, name):
    """create-md initialized the AL: every transaction valid (magic + CRC-32C), none an update."""
    src = FileSource(fx / name)
    md = read_meta(src, INTERNAL)
    al = read_activity_log(src, md)
    assert al.transactions == md.al_stripes * md.al_stripe_size_4k == 8
    assert al.valid == 8 and al.updates == 0 and al.hot_extents == []


# ---------------------------------------------------------------------------
# end to end through discovery

def _pair_ctx(fx, fmt, order=("a", "b"), **opts):
    paths = [str(fx / f"drbd-{fmt}-node-{n}.img") for n in order]
    return discover(paths, Options(backend_options=opts))


def _errors(ctx):
    return [d.line() for d in ctx.report if d.severity == "error"]


@pytest.mark.parametrize("fmt", sorted(MANIFEST["pairs"]))
def test_pair_end_to_end(fx, fmt):
    pair = MANIFEST["pairs"][fmt]
    ctx = _pair_ctx(fx, fmt)
    assert _errors(ctx) == []
    base = f"storage/drbd/drbd-{fmt}"
    for letter, key in (("A", "node_a"), ("B", "node_b")):
        e = MANIFEST["images"][pair[key]]
        node = resolve(ctx.root, f"{base}/node-{letter}.raw")
        assert node is not None, sorted(ctx.storage("drbd").children())
        assert node.size == e["layout"]["data_area_bytes"]
        assert sha256_source(node.source) == e["data_area_sha256"]
    diff = json.loads(resolve(ctx.root, f"{base}/diff.json").render())
    assert diff["verdict"]["relation"] == "split-brain"
    assert pair["expected_verdict"].startswith("split-brain")
    assert diff["block_size"] == MANIFEST["block_size"]
    assert diff["in_sync"] is False
    common = _u(MANIFEST["uuids"]["common_base_bitmap_uuid"])
    assert _u(diff["verdict"]["A"]["bitmap"]) == _u(diff["verdict"]["B"]["bitmap"]) == common
    assert diff["bitmap_claims"]["blocks"] == pair["differing_blocks"]
    assert diff["compared"]["blocks"] == pair["differing_blocks"]
    assert diff["compared"]["blocks_differing"] == len(pair["differing_blocks"])
    assert _blocks(diff["bitmaps"]["A"]["ranges"]) == MANIFEST["images"][pair["node_a"]]["bitmap_bits_set"]
    assert _blocks(diff["bitmaps"]["B"]["ranges"]) == MANIFEST["images"][pair["node_b"]]["bitmap_bits_set"]
    assert diff["differ_but_not_in_bitmaps"] == [] and diff["in_bitmaps_but_equal"] == []
    assert diff["nodes"]["A"]["input"].endswith(pair["node_a"])
    assert diff["nodes"]["B"]["input"].endswith(pair["node_b"])
    codes = {d.code for d in ctx.report if d.layer == "drbd"}
    assert "drbd-split-brain" in codes
    # report.json carries the node identity
    vols = {v["path"]: v for v in report_doc(ctx)["volumes"]}
    assert vols[f"{base}/node-A.raw"]["info"]["drbd"]["input"].endswith(pair["node_a"])
    assert vols[f"{base}/node-A.raw"]["role"] == "drbd-data"


@pytest.mark.parametrize("fmt", sorted(MANIFEST["pairs"]))
def test_diverged_files_hold_each_version(fx, fmt):
    pair = MANIFEST["pairs"][fmt]
    ctx = _pair_ctx(fx, fmt)
    top = resolve(ctx.root, f"storage/drbd/drbd-{fmt}/diverged")
    seen = []
    changed = {"a": set(MANIFEST["images"][pair["node_a"]]["changed_blocks_since_base"]),
               "b": set(MANIFEST["images"][pair["node_b"]]["changed_blocks_since_base"])}
    names = sorted((n, k) for k in ("a-only", "b-only", "both", "unmarked")
                   for n in top.get(k).children())
    kinds = {}
    for name, kind in names:
        d = top.get(kind)
        off, ln = (int(x, 16) for x in name.split("+"))
        kinds.update((blk, kind) for blk in range(off // BLOCK, (off + ln) // BLOCK))
        sub = d.get(name)
        for letter, node in (("A", "a"), ("B", "b")):
            data = sub.get(f"node-{letter}.bin").source.read(0, ln)
            assert len(data) == ln
            for i in range(ln // BLOCK):
                blk = off // BLOCK + i
                tag = f"node-{node}" if blk in changed[node] else "base"
                # the fixture pattern: 63-byte ASCII header per 512-byte sector
                assert data[i * BLOCK:i * BLOCK + 63].decode().rstrip() == f"DRBDFIX {tag} blk={blk} sec=0"
        seen.extend(range(off // BLOCK, (off + ln) // BLOCK))
    assert seen == pair["differing_blocks"]
    assert set(pair["changed_on_both"]) <= set(seen)
    # issue 13 item 7c: each range sits under whose bitmap marks it (manifest ground truth)
    for blk in seen:
        a, b = blk in changed["a"], blk in changed["b"]
        assert kinds[blk] == ("both" if a and b else "a-only" if a else "b-only"), blk


@pytest.mark.parametrize("fmt", sorted(MANIFEST["pairs"]))
def test_merged_prefer_and_ranges(fx, fmt, tmp_path):
    pair = MANIFEST["pairs"][fmt]
    ea, eb = MANIFEST["images"][pair["node_a"]], MANIFEST["images"][pair["node_b"]]
    base = f"storage/drbd/drbd-{fmt}"
    ctx = _pair_ctx(fx, fmt)
    assert sha256_source(resolve(ctx.root, f"{base}/merged.raw").source) == ea["data_area_sha256"]
    ctx = _pair_ctx(fx, fmt, drbd_prefer=["B"])
    assert sha256_source(resolve(ctx.root, f"{base}/merged.raw").source) == eb["data_area_sha256"]
    # keep A, but take B's writes that A did not touch, and B's version of block 8000
    take_b = [b for b in eb["changed_blocks_since_base"] if b not in ea["changed_blocks_since_base"]] + [8000]
    rf = tmp_path / "ranges.txt"
    rf.write_text("# offset length node\n" + "".join(f"{b}b 1b B\n" for b in take_b)
                  + "0x0 0x1000 node-a  # no-op\n")
    ctx = _pair_ctx(fx, fmt, drbd_ranges=[f"drbd-{fmt}={rf}"])
    assert _errors(ctx) == []
    size = ea["layout"]["data_area_bytes"]
    with open(fx / pair["node_a"], "rb") as fa, open(fx / pair["node_b"], "rb") as fb:
        want = bytearray(fa.read(size))
        for b in take_b:
            fb.seek(b * BLOCK)
            want[b * BLOCK:(b + 1) * BLOCK] = fb.read(BLOCK)
    got = resolve(ctx.root, f"{base}/merged.raw").source
    assert sha256_source(got) == hashlib.sha256(want).hexdigest()
    diff = json.loads(resolve(ctx.root, f"{base}/diff.json").render())
    assert "ranges" in diff["merged"]["rule"]


def test_bad_ranges_file_is_reported(fx, tmp_path):
    rf = tmp_path / "bad.txt"
    rf.write_text("10 20\n")
    ctx = _pair_ctx(fx, "v09", drbd_ranges=[str(rf)])
    assert resolve(ctx.root, "storage/drbd/drbd-v09/merged.raw") is None
    assert [d.code for d in ctx.report if d.severity == "error"] == ["bad-merge-rule"]
    assert resolve(ctx.root, "storage/drbd/drbd-v09/node-A.raw") is not None
    ctx = _pair_ctx(fx, "v09", drbd_prefer=["C"])
    assert [d.code for d in ctx.report if d.severity == "error"] == ["bad-merge-rule"]


def _tree_digest(root, base):
    out = {}
    for path, node in walk(resolve(root, base), base):
        if isinstance(node, File):
            out[path] = sha256_source(node.source)
        elif isinstance(node, GeneratedFile):
            out[path] = hashlib.sha256(node.render()).hexdigest()
    return out


@pytest.mark.parametrize("fmt", sorted(MANIFEST["pairs"]))
def test_node_letters_come_from_meta_data_not_argument_order(fx, fmt):
    """Issue 13 item 7a: the same two inputs in either order give the identical tree.

    v09: A is node_id 0 (the manifest's node_a); v08 has no node id: split brain, so the
    lower device UUID (node_a's 0x1F2E...) is A.
    """
    pair = MANIFEST["pairs"][fmt]
    base = f"storage/drbd/drbd-{fmt}"
    trees, metas = [], []
    for order in (("a", "b"), ("b", "a")):
        ctx = _pair_ctx(fx, fmt, order=order)
        assert _errors(ctx) == []
        trees.append(_tree_digest(ctx.root, base))
        metas.append(json.loads(resolve(ctx.root, f"{base}/meta.json").render()))
    assert len(trees[0]) >= 6 and trees[0] == trees[1]
    for meta in metas:
        assert meta["nodes"]["A"]["input"].endswith(pair["node_a"])
        assert meta["nodes"]["B"]["input"].endswith(pair["node_b"])
        assert meta["letter_rule"].startswith(fmt)
    assert trees[0][f"{base}/node-A.raw"] == MANIFEST["images"][pair["node_a"]]["data_area_sha256"]
    assert trees[0][f"{base}/node-B.raw"] == MANIFEST["images"][pair["node_b"]]["data_area_sha256"]


def test_all_four_inputs_make_two_resources(fx):
    names = [f"drbd-{f}-node-{n}.img" for f in ("v09", "v08") for n in ("a", "b")]
    ctx = discover([str(fx / n) for n in names])
    assert sorted(ctx.storage("drbd").children()) == ["drbd-v08", "drbd-v09"]
    for n in names:  # the backing device points at its node
        link = resolve(ctx.root, f"storage/files/{n}/drbd-data.raw")
        assert link is not None and link.target.startswith(b"../../drbd/")


def test_single_node(fx):
    e = MANIFEST["images"]["drbd-v08-node-a.img"]
    ctx = discover([str(fx / "drbd-v08-node-a.img")])
    node = resolve(ctx.root, "storage/drbd/drbd-v08-node-a/node-A.raw")
    assert sha256_source(node.source) == e["data_area_sha256"]
    assert resolve(ctx.root, "storage/drbd/drbd-v08-node-a/diff.json") is None
    assert "single-node" in {d.code for d in ctx.report}
    own = [d for d in ctx.report if d.code == "bitmap-out-of-sync"]
    assert len(own) == 1 and f"marks {len(e['bitmap_bits_set'])} blocks" in own[0].message
    meta = json.loads(resolve(ctx.root, "storage/drbd/drbd-v08-node-a/meta.json").render())
    assert meta["nodes"]["A"]["bitmaps"][0]["bits_set"] == len(e["bitmap_bits_set"])
    assert meta["nodes"]["A"]["bitmaps"][0]["bitmap_uuid"] == e["uuids"]["bitmap"]


def test_compare_off_and_now(fx):
    pair = MANIFEST["pairs"]["v08"]
    ctx = _pair_ctx(fx, "v08", drbd_compare="off")
    diff = json.loads(resolve(ctx.root, "storage/drbd/drbd-v08/diff.json").render())
    assert diff["compared"] is None
    d = resolve(ctx.root, "storage/drbd/drbd-v08/diverged")
    assert sorted(n for n in d.children() if n != "README.txt") == ["a-only", "b-only", "both", "unmarked"]
    # bitmap ranges by side: A 10-11, 100, 4096; B 13, 2000-2001, 5000; both 12, 8000
    assert [len(d.get(k).children()) for k in ("a-only", "b-only", "both")] == [3, 3, 2]
    assert len(d.get("unmarked").children()) == 0
    ctx = _pair_ctx(fx, "v08", drbd_compare="now")
    diff = json.loads(resolve(ctx.root, "storage/drbd/drbd-v08/diff.json").render())
    assert diff["compared"]["blocks"] == pair["differing_blocks"]


def test_cli_scan_json_with_drbd_options(fx, tmp_path):
    """The options reach the backend through the CLI (``pvfs scan --json``)."""
    import subprocess
    import sys

    pair = MANIFEST["pairs"]["v09"]
    rf = tmp_path / "r.txt"
    rf.write_text("12b 1b B\n")
    out = subprocess.run([sys.executable, "-m", "pvfs", "scan", "--json", "--no-progress",
                          str(fx / pair["node_a"]), str(fx / pair["node_b"]),
                          "--drbd-prefer", "A", "--drbd-ranges", f"drbd-v09={rf}",
                          "--drbd-compare", "now"], capture_output=True, text=True, timeout=120,
                         cwd=str(ROOT))
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    vols = {v["path"]: v for v in doc["volumes"]}
    assert "ranges" in vols["storage/drbd/drbd-v09/merged.raw"]["info"]["drbd"]["merged"]
    compared = [d for d in doc["damage"] if d["code"] == "compared"]
    assert len(compared) == 1
    assert _blocks([tuple(r) for r in compared[0]["ranges"]]) == pair["differing_blocks"]


def test_through_a_fuse_mount(fx, tmp_path):
    """``pvfs mount nodeA.img nodeB.img MNT``: both timelines, diff.json and diverged/ as files."""
    from mountutil import FUSE_OK, pvfs_mounted

    if not FUSE_OK:
        pytest.skip("needs /dev/fuse and fusermount3")
    from conftest import sha256_file

    pair = MANIFEST["pairs"]["v08"]
    with pvfs_mounted([fx / pair["node_a"], fx / pair["node_b"]], tmp_path / "mnt") as mnt:
        base = mnt / "storage" / "drbd" / "drbd-v08"
        assert sorted(os.listdir(base)) == ["diff.json", "diverged", "merged.raw", "meta.json",
                                            "node-A.raw", "node-B.raw"]
        for letter, key in (("A", "node_a"), ("B", "node_b")):
            assert sha256_file(base / f"node-{letter}.raw") == \
                MANIFEST["images"][pair[key]]["data_area_sha256"]
        diff = json.loads((base / "diff.json").read_text())
        assert diff["compared"]["blocks"] == pair["differing_blocks"]
        dirs = sorted(d for d in os.listdir(base / "diverged") if d != "README.txt")
        assert dirs == ["a-only", "b-only", "both", "unmarked"]
        first = base / "diverged" / "a-only" / sorted(os.listdir(base / "diverged" / "a-only"))[0]
        assert (first / "node-A.bin").read_bytes()[:24] == b"DRBDFIX node-a blk=10 se"
        link = mnt / "storage" / "files" / pair["node_a"] / "drbd-data.raw"
        assert os.readlink(link) == "../../drbd/drbd-v08/node-A.raw" and link.exists()


@pytest.mark.parametrize("fmt", sorted(MANIFEST["pairs"]))
def test_diff_marks_blocks_changed_on_both_nodes(fx, fmt):
    """Issue 13 item 7b: diff.json splits the bitmap claims into A-only, B-only and both."""
    pair = MANIFEST["pairs"][fmt]
    a = set(MANIFEST["images"][pair["node_a"]]["changed_blocks_since_base"])
    b = set(MANIFEST["images"][pair["node_b"]]["changed_blocks_since_base"])
    ctx = _pair_ctx(fx, fmt)
    diff = json.loads(resolve(ctx.root, f"storage/drbd/drbd-{fmt}/diff.json").render())
    on = diff["changed_on"]
    assert on["both"]["blocks"] == sorted(a & b) and len(a & b) == 2
    assert on["A-only"]["blocks"] == sorted(a - b)
    assert on["B-only"]["blocks"] == sorted(b - a)
    assert on["both"]["bytes"] == 4096 * len(a & b)
