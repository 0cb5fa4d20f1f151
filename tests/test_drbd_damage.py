"""DRBD: external meta data, damaged and hostile meta data, bounded fuzzing of the parsers.

Damaged inputs are copies of the drbdmeta fixtures with a few bytes changed;
the expected results come from the fixture manifest (data sha256, changed
blocks), never from what the reader produced.
"""

from __future__ import annotations

import json
import shutil
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FIXTURES, fixture_json, require_fixture, sha256_source, unpack
from pvfs.checksum import crc32c_raw
from pvfs.discover import Options, discover
from pvfs.errors import PvfsError, UsageError
from pvfs.nodes import resolve
from pvfs.source import BytesSource, ZeroSource, concat
from backends.drbd import pair as P
from backends.drbd import structs as S
from backends.drbd.meta import (FLEX_EXTERNAL, INTERNAL, DrbdError, MdLocation, read_activity_log,
                                read_bitmap, read_meta)

MANIFEST_PATH = FIXTURES / "drbd" / "manifest.json"
MANIFEST = fixture_json(MANIFEST_PATH, {"images": {}, "pairs": {}})
BLOCK = 4096
FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def fx():
    return unpack(require_fixture("drbd", "drbd-fixtures.tar.xz"))


def _img(name):
    return MANIFEST["images"][name]


def _copy(fx, name, tmp_path, patches=(), new_name=None):
    """Copy a fixture image and apply ``(offset, bytes)`` patches (negative: from the end)."""
    dst = tmp_path / (new_name or name)
    shutil.copyfile(fx / name, dst)
    size = dst.stat().st_size
    with open(dst, "r+b") as f:
        for off, data in patches:
            f.seek(off if off >= 0 else size + off)
            f.write(data)
    return dst


def _sb(name, field):
    """Byte offset of a superblock field of ``name`` in the image."""
    return _img(name)["layout"]["md_offset"] + field


def _warnings(ctx, code):
    return [d for d in ctx.report if d.code == code]


def _blocks(ranges):
    out = []
    for off, ln in ranges:
        out.extend(range(off // BLOCK, -(-(off + ln) // BLOCK)))
    return out


# ---------------------------------------------------------------------------
# external meta data (made from the fixtures: superblock moved to the front of
# its own image, activity log and bitmap after it, as drbdmeta lays out
# flexible external meta data)

def _split_external(fx, name, tmp_path, index=None):
    e = _img(name)
    lay = e["layout"]
    with open(fx / name, "rb") as f:
        data = f.read(lay["data_area_bytes"])
        f.seek(lay["md_offset"])
        sb = bytearray(f.read(4096))
        f.seek(lay["al_offset"])
        al = f.read(lay["md_offset"] - lay["al_offset"])
        f.seek(lay["bm_offset"])
        bm = f.read(lay["al_offset"] - lay["bm_offset"])
    al_sect = len(al) // 512
    struct.pack_into(">I", sb, 64, 8 + al_sect + len(bm) // 512)  # md_size_sect
    struct.pack_into(">i", sb, 68, 8)  # al_offset: right after the superblock
    struct.pack_into(">i", sb, 76, 8 + al_sect)  # bm_offset: after the AL
    dev = tmp_path / name.replace(".img", "-data.img")
    dev.write_bytes(data)
    md = tmp_path / name.replace(".img", "-md.img")
    base = 0 if index is None else index * (128 << 20)
    with open(md, "wb") as f:
        f.seek(base)
        f.write(bytes(sb) + al + bm)
    return dev, md


@pytest.mark.parametrize("fmt", sorted(MANIFEST["pairs"]))
def test_external_meta_data(fx, tmp_path, fmt):
    pair = MANIFEST["pairs"][fmt]
    devs, specs = [], []
    for key in ("node_a", "node_b"):
        dev, md = _split_external(fx, pair[key], tmp_path)
        devs.append(str(dev))
        specs.append(f"{dev}={md}")
    # the meta-data image of A is given as an input too: it is recognised, not shown as a disk
    ctx = discover(devs + [specs[0].split("=")[1]], Options(backend_options={"drbd_md": specs}))
    assert [d.line() for d in ctx.report if d.severity == "error"] == []
    res = sorted(ctx.storage("drbd").children())
    assert len(res) == 1
    base = f"storage/drbd/{res[0]}"
    for letter, key in (("A", "node_a"), ("B", "node_b")):
        node = resolve(ctx.root, f"{base}/node-{letter}.raw")
        assert sha256_source(node.source) == _img(pair[key])["data_area_sha256"]
    diff = json.loads(resolve(ctx.root, f"{base}/diff.json").render())
    assert diff["verdict"]["relation"] == "split-brain"
    assert diff["bitmap_claims"]["blocks"] == pair["differing_blocks"]
    assert diff["compared"]["blocks"] == pair["differing_blocks"]
    meta = json.loads(resolve(ctx.root, f"{base}/meta.json").render())
    assert meta["nodes"]["A"]["meta_data"] == "external"
    md_name = specs[0].split("=")[1].rsplit("/", 1)[1]
    assert resolve(ctx.root, f"storage/files/{md_name}/disk.raw") is None
    assert resolve(ctx.root, f"storage/files/{md_name}/drbd-meta.json") is not None
    assert _warnings(ctx, "external-meta-data")


def test_external_meta_data_indexed(fx, tmp_path):
    name = "drbd-v08-node-a.img"
    dev, md = _split_external(fx, name, tmp_path, index=1)
    ctx = discover([str(dev)], Options(backend_options={"drbd_md": [f"{dev}={md}@1"]}))
    node = resolve(ctx.root, f"storage/drbd/{dev.stem}/node-A.raw")
    assert sha256_source(node.source) == _img(name)["data_area_sha256"]
    meta = json.loads(resolve(ctx.root, f"storage/drbd/{dev.stem}/meta.json").render())
    assert meta["nodes"]["A"]["meta_data"] == "external[1]"
    assert meta["nodes"]["A"]["md_offset"] == 128 << 20


def test_external_without_option_is_a_plain_disk(fx, tmp_path):
    dev, _ = _split_external(fx, "drbd-v09-node-a.img", tmp_path)
    ctx = discover([str(dev)])
    assert resolve(ctx.root, f"storage/files/{dev.name}/disk.raw") is not None
    assert not ctx.storage("drbd").children()


def test_external_spec_pointing_at_garbage(fx, tmp_path):
    dev, _ = _split_external(fx, "drbd-v09-node-a.img", tmp_path)
    junk = tmp_path / "junk.md"
    junk.write_bytes(b"\x55" * 65536)
    ctx = discover([str(dev)], Options(backend_options={"drbd_md": [f"{dev}={junk}", "nonsense"]}))
    codes = [d.code for d in ctx.report if d.severity == "error"]
    assert sorted(codes) == ["bad-meta-data", "bad-option"]
    assert resolve(ctx.root, f"storage/files/{dev.name}/disk.raw") is not None


# ---------------------------------------------------------------------------
# damaged internal meta data

def test_truncated_image_is_a_plain_disk(fx, tmp_path):
    src = fx / "drbd-v09-node-a.img"
    dst = tmp_path / "cut.img"
    with open(src, "rb") as f, open(dst, "wb") as g:
        g.write(f.read(src.stat().st_size - 8192))
    ctx = discover([str(dst)])
    assert resolve(ctx.root, "storage/files/cut.img/disk.raw") is not None
    assert not ctx.storage("drbd").children()


def test_zeroed_superblock_is_a_plain_disk(fx, tmp_path):
    dst = _copy(fx, "drbd-v08-node-b.img", tmp_path, [(-4096, bytes(4096))])
    ctx = discover([str(dst)])
    assert resolve(ctx.root, f"storage/files/{dst.name}/disk.raw") is not None


def test_hostile_max_peers_falls_back(fx, tmp_path):
    name = "drbd-v09-node-a.img"
    dst = _copy(fx, name, tmp_path, [(_sb(name, 88), struct.pack(">I", 1000))])
    ctx = discover([str(dst)])
    errs = [d for d in ctx.report if d.severity == "error"]
    assert [d.code for d in errs] == ["bad-meta-data"] and "max-peers 1000" in errs[0].message
    assert resolve(ctx.root, f"storage/files/{name}/disk.raw") is not None


def test_huge_la_size_is_clipped(fx, tmp_path):
    name = "drbd-v08-node-a.img"
    dst = _copy(fx, name, tmp_path, [(_sb(name, 0), struct.pack(">Q", 1 << 60))])
    ctx = discover([str(dst)])
    node = resolve(ctx.root, "storage/drbd/drbd-v08-node-a/node-A.raw")
    assert sha256_source(node.source) == _img(name)["data_area_sha256"]
    assert any("clipped" in d.message for d in _warnings(ctx, "meta-data"))


def test_bad_bitmap_offset(fx, tmp_path):
    pair = MANIFEST["pairs"]["v09"]
    a = _copy(fx, pair["node_a"], tmp_path, [(_sb(pair["node_a"], 76), struct.pack(">i", 100))])
    ctx = discover([str(a), str(fx / pair["node_b"])])
    base = "storage/drbd/drbd-v09"
    assert sha256_source(resolve(ctx.root, f"{base}/node-A.raw").source) == \
        _img(pair["node_a"])["data_area_sha256"]
    assert any("bitmap not used" in d.message for d in _warnings(ctx, "meta-data"))
    diff = json.loads(resolve(ctx.root, f"{base}/diff.json").render())
    assert "error" in diff["bitmaps"]["A"]
    assert diff["compared"]["blocks"] == pair["differing_blocks"]
    # what B's bitmap does not know, the byte comparison still finds
    missed = _blocks(diff["differ_but_not_in_bitmaps"])
    assert missed == sorted(set(pair["differing_blocks"]) - set(_img(pair["node_b"])["bitmap_bits_set"]))


def test_lying_bitmap_is_visible(fx, tmp_path):
    """Node B's bitmap wiped: the byte comparison shows what no bitmap claims."""
    pair = MANIFEST["pairs"]["v08"]
    b = pair["node_b"]
    bm_len = _img(b)["layout"]["al_offset"] - _img(b)["layout"]["bm_offset"]
    bpath = _copy(fx, b, tmp_path, [(_img(b)["layout"]["bm_offset"], bytes(bm_len))])
    ctx = discover([str(fx / pair["node_a"]), str(bpath)])
    diff = json.loads(resolve(ctx.root, "storage/drbd/drbd-v08/diff.json").render())
    assert diff["bitmaps"]["B"]["bits_set"] == 0
    want = sorted(set(pair["differing_blocks"]) - set(_img(pair["node_a"])["bitmap_bits_set"]))
    assert _blocks(diff["differ_but_not_in_bitmaps"]) == want == [13, 2000, 2001, 5000]
    assert _warnings(ctx, "bitmap-missed")


def test_bits_past_the_end(fx, tmp_path):
    name = "drbd-v09-node-b.img"
    lay = _img(name)["layout"]
    nbits = lay["data_area_bytes"] // BLOCK
    word = (nbits + 40) // 32
    bit = (nbits + 40) % 32
    dst = _copy(fx, name, tmp_path, [(lay["bm_offset"] + word * 4, struct.pack("<I", 1 << bit))])
    md = read_meta(concat([BytesSource(dst.read_bytes())]), INTERNAL)
    bm = read_bitmap(concat([BytesSource(dst.read_bytes())]), md, 0)
    assert bm.bits_past_end == 1
    assert _blocks(bm.ranges) == _img(name)["bitmap_bits_set"]
    ctx = discover([str(fx / "drbd-v09-node-a.img"), str(dst)])
    assert _warnings(ctx, "bitmap-past-end")


def _al_update(tr_number, extents, context_size=257):
    """A valid 8.4-style AL update transaction naming ``extents`` in slots 0..n-1."""
    nu, nc = S.AL_UPDATES_PER_TRANSACTION, S.AL_CONTEXT_PER_TRANSACTION
    slots = list(range(len(extents))) + [0xFFFF] * (nu - len(extents))
    ext = list(extents) + [0xFFFFFFFF] * (nu - len(extents))
    blk = bytearray(S.AL_TRANSACTION.pack(S.DRBD_AL_MAGIC, tr_number, 0, S.AL_TR_UPDATE,
                                          len(extents), context_size, 0, *slots, *ext,
                                          *([0xFFFFFFFF] * nc)))
    struct.pack_into(">I", blk, 8, crc32c_raw(bytes(blk), 0))
    return bytes(blk)


def test_dirty_activity_log(fx, tmp_path):
    name = "drbd-v09-node-a.img"
    lay = _img(name)["layout"]
    flags = S.MDF_CONSISTENT | S.MDF_PRIMARY_IND | S.MDF_WAS_UP_TO_DATE  # no AL_CLEAN
    dst = _copy(fx, name, tmp_path, [(_sb(name, 56), struct.pack(">I", flags)),
                                     (lay["al_offset"] + 2 * 4096, _al_update(7, [3, 5]))])
    src = concat([BytesSource(dst.read_bytes())])
    md = read_meta(src, INTERNAL)
    assert not md.al_clean
    al = read_activity_log(src, md)
    assert al.hot_extents == [3, 5] and al.updates == 1 and al.newest_tr == 7
    ctx = discover([str(dst)])
    w = _warnings(ctx, "activity-log-dirty")
    assert len(w) == 1 and w[0].ranges == ((3 << 22, 1 << 22), (5 << 22, 1 << 22))
    assert "2 hot" in w[0].message


def test_unreadable_sectors_in_the_comparison(fx, tmp_path):
    pair = MANIFEST["pairs"]["v09"]
    a = _copy(fx, pair["node_a"], tmp_path)
    size = a.stat().st_size
    (tmp_path / (a.name + ".map")).write_text(
        "# Mapfile\n0x0 +\n0x0 0x64000 +\n0x64000 0x1000 -\n"
        f"0x65000 {size - 0x65000:#x} +\n")
    ctx = discover([str(a), str(fx / pair["node_b"])])
    diff = json.loads(resolve(ctx.root, "storage/drbd/drbd-v09/diff.json").render())
    assert diff["compared"]["unreadable"] and diff["compared"]["unreadable"][0][0] <= 0x64000
    assert _warnings(ctx, "compare-unreadable")


# ---------------------------------------------------------------------------
# bounded fuzzing

_REGIONS = {}


@pytest.fixture(scope="module")
def md_region(fx):
    """The meta-data areas (bitmap, AL, superblock) of a v09 and a v08 fixture, by format.

    Returned through a small wrapper so that hypothesis does not print 80 KiB
    of bytes in a falsifying example.
    """
    for name in ("drbd-v09-node-a.img", "drbd-v08-node-a.img"):
        lay = _img(name)["layout"]
        with open(fx / name, "rb") as f:
            f.seek(lay["bm_offset"])
            _REGIONS[name[5:8]] = f.read(_img(name)["file_size"] - lay["bm_offset"])
    return _Regions()


class _Regions:
    def __getitem__(self, fmt):
        return _REGIONS[fmt]

    def __repr__(self):
        return "<md regions>"


def _exercise(src, location=INTERNAL, dev_size=None):
    try:
        md = read_meta(src, location, dev_size)
    except DrbdError:
        return None
    assert 0 <= md.data_size <= max(src.size, dev_size or 0)
    for slot in md.used_slots():
        try:
            bm = read_bitmap(src, md, slot.bitmap_index)
            assert all(o >= 0 and o + n <= md.data_size for o, n in bm.ranges)
        except DrbdError:
            pass
    if md.al_size:
        read_activity_log(src, md)
    json.dumps(md.to_json())
    return md


@FUZZ
@given(fmt=st.sampled_from(["v09", "v08"]),
       edits=st.lists(st.tuples(st.integers(0, 1391), st.binary(min_size=1, max_size=8)), max_size=8))
def test_fuzz_superblock_fields(md_region, fmt, edits):
    region = bytearray(md_region[fmt])
    sb = len(region) - 4096
    for off, data in edits:
        region[sb + off:sb + off + len(data)] = data
    head = 1 << 20  # a 1 MiB data area in front keeps every case small
    _exercise(concat([ZeroSource(head), BytesSource(bytes(region))]))


@FUZZ
@given(magic=st.sampled_from([S.DRBD_MD_MAGIC_08, S.DRBD_MD_MAGIC_09, S.DRBD_MD_MAGIC_84_UNCLEAN]),
       body=st.binary(max_size=1400), external=st.booleans(),
       head=st.integers(0, 1 << 20))
def test_fuzz_random_superblock(magic, body, external, head):
    sb = bytearray(body.ljust(4096, b"\0"))  # every field lies in the first 1392 bytes
    struct.pack_into(">I", sb, S.MAGIC_OFFSET, magic)
    if external:
        _exercise(concat([BytesSource(bytes(sb)), ZeroSource(head + 8192)]), FLEX_EXTERNAL, 1 << 30)
    else:
        _exercise(concat([ZeroSource(head + 69632), BytesSource(bytes(sb))]))


@FUZZ
@given(blocks=st.lists(st.tuples(st.integers(0, 7), st.binary(min_size=0, max_size=4096),
                                 st.booleans()), max_size=8))
def test_fuzz_activity_log(md_region, blocks):
    region = bytearray(md_region["v09"])
    al = 4096  # the AL follows the 4 KiB bitmap in this layout
    for slot, data, magic in blocks:
        blk = bytearray(data.ljust(4096, b"\xff"))
        if magic:
            struct.pack_into(">I", blk, 0, S.DRBD_AL_MAGIC)
        region[al + slot * 4096:al + (slot + 1) * 4096] = blk
    flags_off = len(region) - 4096 + 56
    region[flags_off:flags_off + 4] = struct.pack(">I", 0x11)
    src = concat([ZeroSource(1 << 20), BytesSource(bytes(region))])
    md = read_meta(src, INTERNAL)
    al_info = read_activity_log(src, md)
    assert all(0 <= e < 2**32 - 1 for e in al_info.hot_extents)
    assert al_info.valid <= al_info.transactions == 8


@FUZZ
@given(sectors=st.lists(st.tuples(st.integers(0, 63), st.binary(min_size=0, max_size=512),
                                  st.booleans()), max_size=10),
       nr_extents=st.integers(0, 1 << 32 - 1))
def test_fuzz_activity_log_83(md_region, sectors, nr_extents):
    """v08 superblock over an 8.3-style log of random sectors (some with the right magic)."""
    region = bytearray(md_region["v08"])
    al = 4096
    region[al:al + 8192] = bytes(8192)  # no 8.4 transaction magic: the 8.3 decoder runs
    for sec, data, magic in sectors:
        blk = bytearray(data.ljust(512, b"\xff"))
        if magic:
            struct.pack_into(">I", blk, 0, S.DRBD_MAGIC)
        region[al + sec * 512:al + (sec + 1) * 512] = blk
    sb = len(region) - 4096
    region[sb + 56:sb + 60] = struct.pack(">I", 0x13)
    region[sb + 72:sb + 76] = struct.pack(">I", nr_extents)
    src = concat([ZeroSource(1 << 20), BytesSource(bytes(region))])
    md = read_meta(src, INTERNAL)
    al_info = read_activity_log(src, md)
    assert al_info.transactions <= S.MD_AL_MAX_SECT_07 and al_info.valid <= al_info.transactions
    assert all(0 <= e < 2**32 - 1 for e in al_info.hot_extents)


@FUZZ
@given(text=st.text(alphabet="0123456789abxKMGsb ABC#\n-node", max_size=300))
def test_fuzz_ranges_file(text):
    try:
        out = P.parse_ranges_file(text, ["A", "B"], 1 << 20)
    except UsageError:
        return
    for off, ln, node in out:
        assert 0 <= off < 1 << 20 and ln > 0 and off + ln <= 1 << 20 and node in "AB"


@FUZZ
@given(size=st.integers(1, 200),
       overrides=st.lists(st.tuples(st.integers(0, 199), st.integers(1, 60), st.sampled_from("AB")),
                          max_size=12))
def test_fuzz_merged_extents_match_brute_force(size, overrides):
    overrides = [(o, min(n, size - o), node) for o, n, node in overrides if o < size]
    pieces = P.merged_extents(size, "A", overrides)
    want = ["A"] * size
    for o, n, node in overrides:
        want[o:o + n] = [node] * n
    got = []
    pos = 0
    for o, n, node in pieces:
        assert o == pos and n > 0
        got.extend([node] * n)
        pos += n
    assert got == want


@FUZZ
@given(a=st.binary(min_size=0, max_size=3 * 4096),
       flips=st.sets(st.integers(0, 3 * 4096 - 1), max_size=6),
       chunk=st.sampled_from([4096, 8192, 1 << 20]))
def test_fuzz_compare_matches_brute_force(a, flips, chunk):
    b = bytearray(a)
    for f in flips:
        if f < len(b):
            b[f] ^= 0x5A
    ranges, nblocks, truncated, bad = P.compare_sources(BytesSource(a), BytesSource(bytes(b)), len(a),
                                                        chunk=chunk)
    want = sorted({f // BLOCK for f in flips if f < len(a)})
    assert _blocks(ranges) == want and nblocks == len(want) and not truncated and not bad


@FUZZ
@given(r1=st.lists(st.tuples(st.integers(0, 100), st.integers(1, 20)), max_size=6),
       r2=st.lists(st.tuples(st.integers(0, 100), st.integers(1, 20)), max_size=6))
def test_fuzz_subtract(r1, r2):
    from pvfs.damage import merge_ranges
    m1, m2 = merge_ranges(r1), merge_ranges(r2)
    got = set()
    for o, n in P.subtract(m1, m2):
        got |= set(range(o, o + n))
    s1 = {x for o, n in m1 for x in range(o, o + n)}
    s2 = {x for o, n in m2 for x in range(o, o + n)}
    assert got == s1 - s2


def test_location_offsets():
    assert INTERNAL.md_offset(33554432) == 33550336
    assert INTERNAL.md_offset(33554432 + 1000) == 33550336  # last 4 KiB-aligned block
    assert FLEX_EXTERNAL.md_offset(1 << 30) == 0
    assert MdLocation("external", 2).md_offset(1 << 30) == 2 * (128 << 20)
    with pytest.raises(DrbdError):
        read_meta(BytesSource(bytes(4096)), INTERNAL)
    with pytest.raises(PvfsError):
        read_meta(BytesSource(bytes(1 << 17)), INTERNAL)


def test_unclean_84_magic_means_a_dirty_log(fx, tmp_path):
    name = "drbd-v08-node-b.img"
    dst = _copy(fx, name, tmp_path, [(_sb(name, 60), struct.pack(">I", S.DRBD_MD_MAGIC_84_UNCLEAN))])
    md = read_meta(concat([BytesSource(dst.read_bytes())]), INTERNAL)
    assert md.version == "v08" and not md.al_clean and md.flags & S.MDF_AL_CLEAN
    ctx = discover([str(dst)])
    w = _warnings(ctx, "activity-log-dirty")
    assert len(w) == 1 and "8/8 valid" in w[0].message and "0 hot" in w[0].message
    node = resolve(ctx.root, "storage/drbd/drbd-v08-node-b/node-A.raw")
    assert sha256_source(node.source) == _img(name)["data_area_sha256"]


def test_nodes_of_different_sizes(tmp_path):
    from backends.drbd import craft

    big, small = tmp_path / "big.bin", tmp_path / "small.bin"
    big.write_bytes(bytes(range(256)) * (3 << 12))
    small.write_bytes(big.read_bytes()[: 2 << 20])
    u = dict(bitmap_uuid=0x6000000000000010, history=[0x5000000000000010])
    craft.write_device(tmp_path / "r9-a.img", big, current_uuid=0x7000000000000010, node_id=0, **u)
    craft.write_device(tmp_path / "r9-b.img", small, current_uuid=0x7100000000000010, node_id=1,
                       peer_node_id=0, **u)
    ctx = discover([str(tmp_path / "r9-a.img"), str(tmp_path / "r9-b.img")])
    assert _warnings(ctx, "size-mismatch")
    merged = resolve(ctx.root, "storage/drbd/r9/merged.raw")
    assert merged.size == 2 << 20
    diff = json.loads(resolve(ctx.root, "storage/drbd/r9/diff.json").render())
    assert diff["size"] == 2 << 20 and diff["compared"]["blocks"] == []
    assert resolve(ctx.root, "storage/drbd/r9/node-A.raw").size == 3 << 20


def test_ranges_file_numbers():
    got = P.parse_ranges_file("010 0x10 A\n1b 2s b\n1K 1M node-B # c\n", ["A", "B"], 1 << 30)
    assert got == [(10, 16, "A"), (4096, 1024, "B"), (1024, 1 << 20, "B")]
    for bad in ("1 2", "x 1 A", "0 1 C", "0 0 A", "2G 1 A", "1 1 A B"):
        with pytest.raises(UsageError):
            P.parse_ranges_file(bad, ["A", "B"], 1 << 30)


def _al07(tr, updates):
    """An 8.3-style AL sector naming ``updates`` = [(slot, extent)]."""
    pairs = list(updates) + [(0xFFFFFFFF, 0xFFFFFFFF)] * (S.AL_EXTENTS_PT + 1 - len(updates))
    xor = 0
    flat = []
    for pos, ext in pairs:
        flat += [pos, ext]
        xor ^= ext
    return S.AL_SECTOR_07.pack(S.DRBD_MAGIC, tr, *flat, xor, 0)


def test_dirty_83_activity_log(fx, tmp_path):
    """A v08 superblock over an 8.3-style log (no 8.4 transaction magic): sectors replayed."""
    name = "drbd-v08-node-a.img"
    lay = _img(name)["layout"]
    flags = S.MDF_CONSISTENT | S.MDF_PRIMARY_IND  # crashed primary, AL not clean
    log = _al07(5, [(0, 2)]) + _al07(6, [(1, 4), (0, 3)]) + _al07(4, [(2, 7)])
    log += b"\0" * (4096 * 2 - len(log))  # wipe the 8.4 INITIALIZED transactions drbdmeta wrote
    dst = _copy(fx, name, tmp_path, [(_sb(name, 56), struct.pack(">I", flags)), (lay["al_offset"], log)])
    src = concat([BytesSource(dst.read_bytes())])
    md = read_meta(src, INTERNAL)
    al = read_activity_log(src, md)
    # oldest tr 4 (slot 2 -> 7), then 5 (slot 0 -> 2), then 6 (slot 1 -> 4, slot 0 -> 3)
    assert al.hot_extents == [3, 4, 7] and al.newest_tr == 6 and "8.3" in al.note
    ctx = discover([str(dst)])
    w = _warnings(ctx, "activity-log-dirty")
    end = lay["data_area_bytes"]  # extent 7 is cut at the end of the data area
    assert w and w[0].ranges == ((3 << 22, 2 << 22), (7 << 22, end - (7 << 22)))


def test_unreadable_bitmap_sectors(fx, tmp_path):
    """Bad sectors over node A's bitmap: the bitmap is reported unreadable, the bytes still compared."""
    pair = MANIFEST["pairs"]["v09"]
    a = _copy(fx, pair["node_a"], tmp_path)
    lay = _img(pair["node_a"])["layout"]
    size = a.stat().st_size
    bm = lay["bm_offset"]
    (tmp_path / (a.name + ".map")).write_text(
        f"# Mapfile\n0x0 +\n0x0 {bm:#x} +\n{bm:#x} 0x200 -\n{bm + 0x200:#x} {size - bm - 0x200:#x} +\n")
    ctx = discover([str(a), str(fx / pair["node_b"])])
    base = "storage/drbd/drbd-v09"
    resolve(ctx.root, f"{base}/diff.json").render()  # the byte comparison is lazy: run it
    codes = [d.code for d in ctx.report if d.layer == "drbd" and d.severity != "info"]
    assert sorted(codes) == ["bitmap-missed", "bitmap-unreadable", "drbd-split-brain"]
    assert sha256_source(resolve(ctx.root, f"{base}/node-A.raw").source) == \
        _img(pair["node_a"])["data_area_sha256"]  # the bad sector lies outside the data area
    diff = json.loads(resolve(ctx.root, f"{base}/diff.json").render())
    assert "error" in diff["bitmaps"]["A"]
    assert diff["compared"]["blocks"] == pair["differing_blocks"]


def test_range_lists_are_capped(monkeypatch):
    """Hostile bitmaps and diffs: the range lists stop at their cap, the counts stay exact."""
    from backends.drbd import craft, meta

    monkeypatch.setattr(meta, "MAX_BM_RANGES", 3)
    monkeypatch.setattr(P, "MAX_DIFF_RANGES", 2)
    dev = 1 << 20
    buf = bytearray(dev)
    for off, blob in craft.internal_md(dev, current_uuid=0x10, bits=range(0, 200, 2)):
        buf[off:off + len(blob)] = blob
    src = BytesSource(bytes(buf))
    md = read_meta(src, INTERNAL)
    bm = meta.read_bitmap(src, md, 0)
    assert bm.bits_set == 100 and bm.truncated and bm.ranges == [(0, 4096), (8192, 4096), (16384, 4096)]
    other = bytearray(buf[:md.data_size])
    for blk in range(0, 10, 2):
        other[blk * 4096] ^= 1
    ranges, nblocks, truncated, _ = P.compare_sources(BytesSource(bytes(buf[:md.data_size])),
                                                      BytesSource(bytes(other)), md.data_size)
    assert nblocks == 5 and truncated and ranges == [(0, 4096), (8192, 4096)]


_SMALL = {}


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(version=st.sampled_from(["v09", "v08"]),
       edits=st.lists(st.tuples(st.integers(0, 1391), st.binary(min_size=1, max_size=4)), max_size=6))
def test_fuzz_discovery_never_breaks(tmp_path, version, edits):
    """Whole discovery over a device with a mutated superblock: no internal errors, ever."""
    from backends.drbd import craft

    dev = 1 << 20
    if version not in _SMALL:
        buf = bytearray(dev)
        for off, blob in craft.internal_md(dev, version, current_uuid=0x10, bits=[1, 2, 3]):
            buf[off:off + len(blob)] = blob
        _SMALL[version] = bytes(buf)
    buf = bytearray(_SMALL[version])
    sb = dev - 4096
    for off, data in edits:
        buf[sb + off:sb + off + len(data)] = data
    path = tmp_path / f"fz-{version}.img"
    path.write_bytes(bytes(buf))
    ctx = discover([str(path), str(path)])  # the same image twice: a pair of itself
    bad = [d.line() for d in ctx.report if d.code in ("internal-error", "probe-failed")]
    assert bad == []
    for _name, node in ctx.storage("drbd").children().items():
        diff = node.get("diff.json")
        if diff is not None:
            json.loads(diff.render())


def test_external_meta_data_over_a_truncated_device(fx, tmp_path):
    name = "drbd-v09-node-b.img"
    dev, md = _split_external(fx, name, tmp_path)
    full = dev.read_bytes()
    dev.write_bytes(full[:len(full) - 65536])
    ctx = discover([str(dev)], Options(backend_options={"drbd_md": [f"{dev}={md}"]}))
    w = [d for d in ctx.report if d.code == "truncated"]
    assert len(w) == 1 and w[0].ranges == ((len(full) - 65536, 65536),)
    node = resolve(ctx.root, f"storage/drbd/{dev.stem}/node-A.raw")
    assert node.size == _img(name)["layout"]["data_area_bytes"]
    assert node.source.read(0, 4096) == full[:4096]
    with pytest.raises(OSError):
        node.source.read(len(full) - 4096, 4096)
