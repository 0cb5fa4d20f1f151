"""Bounded fuzzing of the LVM label, metadata-area, config-text and dm-thin btree parsers:
hostile input gives the backend's own error (or a damage entry), never a traceback."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backends.lvm import structs as S
from backends.lvm.config import MAX_DEPTH, ConfigError, parse_config
from backends.lvm.errors import LvmError, ThinError
from backends.lvm.label import read_label, read_pv
from backends.lvm.thin import ThinPool, ThinSource, dm_checksum, parse_node
from conftest import FIXTURES, require_fixture, unpack
from pvfs.errors import UnreadableError
from pvfs.source import BytesSource, ZeroSource

FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def pv_head():
    """Label, mda header and VG texts of the synthetic fixture's PV (first 16 KiB)."""
    require_fixture("lvm-thin", "lvm-thin-fixtures.tar.xz")
    d = unpack(FIXTURES / "lvm-thin" / "lvm-thin-fixtures.tar.xz")
    m = json.loads((FIXTURES / "lvm-thin" / "manifest.json").read_text())
    with open(d / "pve-disk.img", "rb") as f:
        f.seek(m["gpt"]["pv_offset_bytes"])
        head = f.read(16384)
        f.seek(m["thin_pool"]["tmeta_disk_offset_bytes"])
        tmeta = f.read(20 * 4096)
    return head, tmeta


def _mutate(buf, edits):
    b = bytearray(buf)
    for pos, val in edits:
        b[pos % len(b)] = val
    return bytes(b)


edits = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=12)


def test_fuzz_label_and_mda(pv_head):
    head, _ = pv_head

    @FUZZ
    @given(edits)
    def run(e):
        # hit the label sector, mda header and the start of the texts hardest
        e = [(p % 8192 if i % 2 else p % 1024, v) for i, (p, v) in enumerate(e)]
        b = _mutate(head, e)
        src = BytesSource(b + bytes(1 << 20))
        try:
            info = read_pv(src)
        except LvmError:
            return
        if info is not None:
            assert all(isinstance(g.seqno, int) for g in info.generations)

    run()


@FUZZ
@given(st.binary(min_size=0, max_size=512), st.integers(0, 3))
def test_fuzz_label_random_sector_with_valid_crc(body, sector):
    sec = bytearray(512)
    sec[:len(body)] = body
    sec[0:8] = S.LABEL_ID
    sec[8:16] = struct.pack("<Q", sector)
    sec[24:32] = S.LVM2_LABEL
    if len(body) < 24:
        sec[20:24] = struct.pack("<I", 32)
    sec[16:20] = struct.pack("<I", S.calc_crc(bytes(sec[20:])))
    img = bytes(sector * 512) + bytes(sec) + bytes(2048)
    try:
        lab = read_label(BytesSource(img))
    except LvmError:
        return
    if lab is not None:
        assert lab.sector == sector and lab.crc_ok
        assert len(lab.pv_uuid) == 38


_atoms = st.sampled_from(["a", "b_1", "vm-100", "=", "{", "}", "[", "]", ",", '"s"',
                          '"e\\"x"', "12", "-3", "1.5", "# c\n", "\n", " ", "'q'", "\\",
                          '"', "\0", "\u00e9"])


@FUZZ
@given(st.lists(_atoms, max_size=60))
def test_fuzz_config_tokens(atoms):
    try:
        cfg = parse_config("".join(atoms))
    except ConfigError:
        return
    assert isinstance(cfg, dict)


@FUZZ
@given(st.binary(max_size=400))
def test_fuzz_config_bytes(raw):
    try:
        parse_config(raw)
    except ConfigError:
        pass


def test_config_nesting_is_bounded():
    with pytest.raises(ConfigError, match="nested deeper"):
        parse_config("a {" * (MAX_DEPTH + 5) + "}" * (MAX_DEPTH + 5))
    with pytest.raises(ConfigError, match="expected"):
        parse_config("a = [1, 2")
    with pytest.raises(ConfigError, match="line 2"):
        parse_config("a = 1\nb = }")
    assert parse_config('x { y = ["a", 1, 2.5] z = "\\"" }') == \
        {"x": {"y": ["a", 1, 2.5], "z": '"'}}


def _reseal(block, blocknr):
    """Recompute a node's checksum so the mutated node passes the csum gate."""
    b = bytearray(block)
    b[8:16] = struct.pack("<Q", blocknr)
    b[0:4] = struct.pack("<I", dm_checksum(bytes(b), S.BTREE_CSUM_XOR))
    return bytes(b)


def test_fuzz_btree_node(pv_head):
    _, tmeta = pv_head
    nodes = [b for b in range(1, 20)
             if tmeta[b * 4096 + 8:b * 4096 + 16] == struct.pack("<Q", b)]
    assert len(nodes) >= 6

    @FUZZ
    @given(st.sampled_from(nodes), st.lists(st.tuples(st.integers(0, 4095),
                                                      st.integers(0, 255)), max_size=8))
    def run(b, e):
        e = [(p % 64 if i % 2 == 0 else p, v) for i, (p, v) in enumerate(e)]  # the header
        block = _reseal(_mutate(tmeta[b * 4096:(b + 1) * 4096], e), b)
        try:
            n = parse_node(block, b)
        except ThinError:
            return
        assert len(n.keys) * n.value_size == len(n.values)

    run()


def test_fuzz_thin_pool(pv_head):
    """Mutated metadata blocks (resealed, so they pass checksums): the pool opens or
    fails with ThinError, mappings load, and reads give data, zeros or EIO."""
    _, tmeta = pv_head

    @FUZZ
    @given(st.lists(st.tuples(st.integers(0, 19), st.integers(0, 4095), st.integers(0, 255)),
                    min_size=1, max_size=6), st.booleans())
    def run(e, reseal):
        b = bytearray(tmeta)
        touched = set()
        for blk, pos, val in e:
            b[blk * 4096 + pos] = val
            touched.add(blk)
        if reseal:
            for blk in touched:
                if blk:
                    b[blk * 4096:(blk + 1) * 4096] = _reseal(b[blk * 4096:(blk + 1) * 4096], blk)
        try:
            pool = ThinPool(BytesSource(bytes(b)), ZeroSource(512 * 65536, status="zero"),
                            hints={"chunk_size": 128, "device_ids": [1, 2, 3]})
        except LvmError:
            return
        for sev, msg in pool.check_data_space_map():  # space maps: findings, never a crash
            assert sev in ("info", "warning", "error") and msg
        for dev in (1, 2, 3):
            src = ThinSource(pool, dev, 64 << 20, bad="eio")
            src.block_status()
            for off in (0, 100 * 65536, (64 << 20) - 65536):
                try:
                    src.read(off, 65536)
                except UnreadableError:
                    pass

    run()


_vals = st.one_of(st.integers(-5, 5), st.integers(0, 1 << 70), st.sampled_from(
    ['"pv0"', '"pv1"', '"x"', '"lv1"', '[]', '["pv0", 0]', '["pv0", "a"]', '["lv1", 0, "pv0"]',
     '[1, 2]', '"thin"', '"striped"', '"raid1"', '"mirror"', '"thin-pool"', '1.5']))
_keys = st.sampled_from(["start_extent", "extent_count", "type", "stripe_count",
                         "stripe_size", "stripes", "mirrors", "raids", "metadata", "pool",
                         "thin_pool", "device_id", "chunk_size", "external_origin"])


def test_fuzz_vg_metadata_values(tmp_path_factory):
    """Hostile values in LV segments: each LV fails on its own with a damage entry; the
    backend never ends with an internal error."""
    from pvfs.discover import Options, discover
    from test_lvm_synth import lv, pv_uuid, vg_text, write_pv
    d = tmp_path_factory.mktemp("vgfuzz")

    @settings(max_examples=100, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(st.lists(st.tuples(st.sampled_from(["striped", "mirror", "raid1", "raid0", "thin",
                                               "thin-pool", "zero", "error", "cache"]),
                              st.lists(st.tuples(_keys, _vals), max_size=6)),
                    min_size=1, max_size=3))
    def run(segs):
        lvs = "".join(lv(f"lv{i}", [f'start_extent = 0\nextent_count = 1\ntype = "{t}"\n'
                                    + "".join(f"{k} = {v}\n" for k, v in extra)])
                      for i, (t, extra) in enumerate(segs))
        text = vg_text("vgf", "FUZZvg-aaaa-bbbb-cccc-dddd-eeee-ffffff", 1,
                       [("pv0", pv_uuid(0), 2)], lvs)
        p = write_pv(d / "f.img", pv_uuid(0), 2, [(512, text)], 0)
        ctx = discover([str(p)], Options())
        bad = [e for e in ctx.report if e.code in ("internal-error", "probe-failed")]
        assert not bad, bad[0].line()
        for e in ctx.report:
            if e.layer == "lvm" and e.severity == "error":
                assert "\n" not in e.message

    run()


def test_dm_checksum_matches_the_pool(pv_head):
    """The superblock checksum written by thin_restore (manifest) is reproduced by
    dm_checksum (pvfs.checksum's raw-register CRC-32C, seed ~0)."""
    from backends.lvm import thin
    _, tmeta = pv_head
    m = json.loads((FIXTURES / "lvm-thin" / "manifest.json").read_text())
    want = m["thin_pool"]["superblock"]["csum_crc32c_xor"]
    assert thin.dm_checksum(tmeta[:4096], S.SUPERBLOCK_CSUM_XOR) == want

_PIECES = [b" {", b' { id = "', b' {\n\tid = "', b' {         id = "', b"vg0", b"x" * 130,
           b"\x00", b"\n", b'"', b"-", b"{", b" ", b"pve", b"id = "]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_PIECES) | st.binary(max_size=6), max_size=30),
       st.integers(0, 3))
def test_the_fast_text_scan_finds_what_the_expression_finds(pieces, pos):
    """label._text_starts (the ring scan of every PV) is _TEXT_START.finditer, faster:
    the same starts and names, also for names longer than 127 bytes, names right at
    ``pos``, anchors without a name and runs of anchors."""
    from backends.lvm.label import _TEXT_START, _text_starts

    chunk = b"".join(pieces)
    want = [(m.start(), m.group(1)) for m in _TEXT_START.finditer(chunk, pos)]
    assert list(_text_starts(chunk, pos)) == want
