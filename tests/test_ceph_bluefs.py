"""BlueStore label and BlueFS replay against the Ceph 16.2 fixture's ground truth."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backends.ceph.bluefs import (BlueFS, FNode, decode_fnode, decode_super, device_map,
                                  file_source, open_bluefs)
from backends.ceph.checksum import ceph_crc32c
from backends.ceph.denc import Reader
from backends.ceph.errors import BlueFSError, CephError, DencError, LabelError
from backends.ceph.label import decode_label, probe_label, read_label
from pvfs.source import PatchedSource, BytesSource, FileSource

from conftest import FIXTURES

GT = FIXTURES / "ceph" / "ground-truth"
OSDS = ["osd.0", "osd.1", "osd.2"]
ALL = OSDS + ["variants/osd.0-compacted"]


def tsv_for(osd):
    name = "osd.0-compacted" if "compacted" in osd else osd
    rows = (GT / f"bluefs-files-{name}.tsv").read_text().splitlines()
    return {p: int(n) for p, n in (r.split("\t") for r in rows if r.strip())}




# -- label ------------------------------------------------------------------------------
@pytest.mark.parametrize("osd", OSDS)
def test_label_matches_manifest(ceph_root, ceph_manifest, osd):
    want = next(o for o in ceph_manifest["cluster"]["osds"] if o["dir"].endswith(osd))
    lab = read_label(FileSource(ceph_root / osd / "block"))
    assert lab.crc_ok and lab.description == "main"
    assert str(lab.osd_uuid) == want["label"]["osd_uuid"] == (ceph_root / osd / "fsid").read_text().strip()
    assert lab.size == want["label"]["size"]
    assert lab.ceph_fsid == ceph_manifest["cluster"]["fsid"]
    assert lab.whoami == want["id"]
    for k, v in want["label"].items():
        if k not in ("osd_uuid", "size", "btime", "description"):
            assert lab.meta[k] == v, k


def test_label_damage(ceph_root):
    block = (ceph_root / "osd.0" / "block").open("rb").read(4096)
    bad = bytearray(block)
    bad[0x100] ^= 1  # inside the meta map
    with pytest.raises(LabelError, match="crc mismatch"):
        decode_label(bytes(bad))
    assert probe_label(bytes(bad)).crc_ok is False
    with pytest.raises(LabelError, match="magic"):
        decode_label(bytes(4096))
    with pytest.raises(LabelError, match="truncated|runs past"):
        decode_label(block[:200])
    with pytest.raises(LabelError, match="too small"):
        read_label(BytesSource(block[:40]))
    assert probe_label(bytes(4096)) is None
    # the human-readable uuid text is redundant: damage there still probes (crc says so)
    text = bytearray(block)
    text[30] ^= 0x20
    with pytest.raises(LabelError):
        decode_label(bytes(text))
    assert probe_label(bytes(text)).crc_ok is False


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=700), st.integers(0, 700))
def test_label_fuzz(data, cut):
    blob = b"bluestore block device\n" + b"9e7439a1-6a8b-4209-b244-0d0e1ca27394\n" + data[:cut]
    try:
        decode_label(blob)
    except LabelError:
        pass


# -- denc --------------------------------------------------------------------------------
def test_denc_lba_and_lowz_known_values():
    # values from the osd.0 BlueFS superblock's log extent: lba 0x2000, lowz 0x400000
    r = Reader(bytes.fromhex("04000000") + bytes.fromhex("8320"))
    assert r.lba() == 0x2000 and r.varint_lowz() == 0x400000
    # *111 form keeps all bits; a continuation byte adds bits 28..
    word = (0x5 << 3) | 7 | 0x80000000
    r = Reader(struct.pack("<I", word) + b"\x01")
    assert r.lba() == 0x5 | (1 << 28)
    with pytest.raises(DencError):
        Reader(b"\xff" * 11).varint()
    with pytest.raises(DencError, match="exceeds"):
        Reader(b"\xff\xff\xff\x7f").count()


# -- BlueFS ------------------------------------------------------------------------------
@pytest.mark.parametrize("osd", ALL)
def test_bluefs_file_table(ceph_root, osd):
    fs = open_bluefs(FileSource(ceph_root / osd / "block"))
    assert {p: f.size for p, f in fs.files.items()} == tsv_for(osd)
    assert fs.damage == []
    assert fs.log_records > 100
    assert fs.super.osd_uuid == read_label(FileSource(ceph_root / osd / "block")).osd_uuid


def test_bluefs_file_contents(ceph_root, ceph_manifest):
    fs = open_bluefs(FileSource(ceph_root / "osd.0" / "block"))
    assert fs.read_file("sharding/def").decode() == \
        ceph_manifest["cluster"]["osds"][0]["rocksdb_sharding"]
    assert fs.read_file("db/CURRENT") == b"MANIFEST-000034\n"
    assert fs.listdir("db.wal") == ["000035.log"]
    with pytest.raises(BlueFSError, match="no file"):
        fs.open("db/nothere")


def _super_block(ceph_root, osd="osd.0"):
    with (ceph_root / osd / "block").open("rb") as f:
        f.seek(4096)
        return f.read(4096)


def test_bluefs_super_damage(ceph_root):
    block = bytearray(_super_block(ceph_root))
    sup = decode_super(bytes(block))
    assert sup.block_size == 4096 and sup.layout["shared_bdev"] == 1
    good = bytes(block)
    block[30] ^= 0x40  # inside osd_uuid: only the crc notices
    with pytest.raises(BlueFSError, match="crc mismatch"):
        decode_super(bytes(block))
    assert decode_super(bytes(block), verify_crc=False).crc_ok is False
    broken = bytearray(good)
    broken[50] = 0x41  # log_fnode struct_v 65: its fields run past the body
    with pytest.raises(BlueFSError, match="past the end"):
        decode_super(bytes(broken))
    with pytest.raises(BlueFSError):
        decode_super(bytes(4096))
    src = PatchedSource(FileSource(ceph_root / "osd.0" / "block"), {4096: bytes(4096)})
    with pytest.raises(CephError):
        open_bluefs(src)
    with pytest.raises(BlueFSError, match="too small"):
        open_bluefs(BytesSource(b"x" * 5000))


def _log_positions(ceph_root, osd="osd.0"):
    """(device offset of the log, [record offsets]) of the osd's BlueFS log."""
    sup = decode_super(_super_block(ceph_root, osd))
    (bdev, off, length), = sup.log_fnode.extents[:1]
    return off


def test_bluefs_torn_log_tail(ceph_root):
    """A record with a broken crc ends the replay there; what came before stays."""
    base = FileSource(ceph_root / "osd.0" / "block")
    good = open_bluefs(base)
    log_off = _log_positions(ceph_root)
    # break the op_bl of the last record: the replay stops before it and says so
    last = good.log_end - 4096
    src = PatchedSource(base, {log_off + last + 40: b"\xde\xad\xbe\xef"})
    fs = open_bluefs(src)
    assert fs.log_records == good.log_records - 1
    assert [c for c, _ in fs.damage] == ["bluefs-log-bad-record"]
    with pytest.raises(BlueFSError, match="bad record"):
        open_bluefs(src, strict=True)
    # a record lost in the middle (zeroed, or failing its crc): Ceph would stop there;
    # the replay skips it, says so, and still ends with the right file table
    for patch in (bytes(4096), None):
        if patch is None:
            block = base.read(log_off + 4096 * 50, 4096)
            patch = block[:40] + bytes([block[40] ^ 0xFF]) + block[41:]
        fs = open_bluefs(PatchedSource(base, {log_off + 4096 * 50: patch}))
        assert fs.log_records == good.log_records - 1
        assert [c for c, _ in fs.damage] == ["bluefs-log-skipped"]
        assert {p: f.size for p, f in fs.files.items()} == tsv_for("osd.0")
    # strict: the replay ends at the damaged record, as Ceph's does
    fs = open_bluefs(PatchedSource(base, {log_off + 4096 * 50: bytes(4096)}), strict=True)
    assert fs.log_records == 50 and "uuid differs" in fs.stop_reason


def test_bluefs_missing_device_reads_unreadable():
    f = FNode(5, 10000, (0, 0), [(0, 0, 8192)])
    src = file_source(f, {})
    assert src.size == 10000
    assert src.unreadable_ranges() == [(0, 10000)]
    f = FNode(5, 10000, (0, 0), [(1, 0, 8192)])
    src = file_source(f, {1: BytesSource(bytes(range(256)) * 32)})
    assert src.read(0, 4) == b"\x00\x01\x02\x03"
    assert src.unreadable_ranges() == [(8192, 10000 - 8192)]


def test_device_map_layouts():
    m, d, w = object(), object(), object()
    assert device_map(m) == {1: m}
    assert device_map(m, d, w) == {1: d, 2: m, 0: w}
    assert device_map(m, d, w, {"shared_bdev": 2, "dedicated_db": True,
                                "dedicated_wal": True}) == {2: m, 1: d, 0: w}


# -- fuzz: BlueFS log records on a synthetic device ------------------------------------
def _synthetic_device(log_bytes, uuid=b"U" * 16):
    """A tiny device: a valid super at 4096 whose log (8 KiB at 8192) holds log_bytes."""
    fnode = (b"\x01\x01" + struct.pack("<I", 0) + b"\x01" + b"\x80\x40" + bytes(8) + b"\x00"
             + struct.pack("<I", 1) + b"\x01\x01" + struct.pack("<I", 6)
             + struct.pack("<I", 0x2000 >> 11) + b"\x0b" + b"\x01")
    fnode = fnode[:2] + struct.pack("<I", len(fnode) - 6) + fnode[6:]
    body = uuid + b"O" * 16 + struct.pack("<QI", 1, 4096) + fnode
    sup = b"\x01\x01" + struct.pack("<I", len(body)) + body
    sup += struct.pack("<I", ceph_crc32c(0xFFFFFFFF, sup))
    dev = bytearray(8192 + 8192)
    dev[4096:4096 + len(sup)] = sup
    log_bytes = log_bytes[:8192]
    dev[8192:8192 + len(log_bytes)] = log_bytes
    return BytesSource(bytes(dev))


def _record(seq, op_bl, uuid=b"U" * 16):
    body = uuid + struct.pack("<Q", seq) + struct.pack("<I", len(op_bl)) + op_bl
    body += struct.pack("<I", ceph_crc32c(0xFFFFFFFF, op_bl))
    rec = b"\x01\x01" + struct.pack("<I", len(body)) + body
    return rec + bytes(-len(rec) % 4096)


def test_synthetic_log_ops():
    s = lambda t: struct.pack("<I", len(t)) + t  # noqa: E731
    fn = (b"\x01\x01" + struct.pack("<I", 27) + b"\x07" + b"\x64" + bytes(8) + b"\x00"
          + struct.pack("<I", 1) + b"\x01\x01" + struct.pack("<I", 6)
          + struct.pack("<I", 0) + b"\x04" + b"\x01")
    ops = (b"\x01" + b"\x06" + s(b"db") + b"\x08" + fn + b"\x04" + s(b"db") + s(b"f")
           + struct.pack("<Q", 7))
    fs = open_bluefs(_synthetic_device(_record(1, ops)))
    assert {p: (f.size, f.extents) for p, f in fs.files.items()} == {"db/f": (100, [(1, 0, 1)])}
    assert fs.damage == [] and fs.log_records == 1


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.booleans())
def test_bluefs_log_fuzz(op_bl, valid_envelope):
    log = _record(1, op_bl) if valid_envelope else op_bl
    try:
        fs = open_bluefs(_synthetic_device(log))
    except CephError:
        return
    assert isinstance(fs, BlueFS)
    assert fs.log_records <= 2


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_fnode_and_super_fuzz(data):
    for fn in (lambda: decode_fnode(Reader(data)), lambda: decode_super(data)):
        try:
            fn()
        except (DencError, BlueFSError):
            pass


# -- a synthetic BlueFS exercising every op (Quincy's op_file_update_inc, op_jump, log growth)
def _lba(v):
    assert v % 4096 == 0 and v >> 12 < 1 << 30
    return struct.pack("<I", (v >> 12) << 1)


def _lowz(v):
    nib = 0
    while nib < 3 and v and v % 16 == 0:
        v //= 16
        nib += 1
    i = (v << 2) | nib
    out = bytearray()
    while i >= 0x80:
        out.append((i & 0x7F) | 0x80)
        i >>= 7
    return bytes(out + bytes([i]))


def _denc(body):
    return b"\x01\x01" + struct.pack("<I", len(body)) + body


def _varint(v):
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    return bytes(out + bytes([v]))


def _extents(exts):
    return struct.pack("<I", len(exts)) + b"".join(
        _denc(_lba(off) + _lowz(ln) + bytes([bdev])) for bdev, off, ln in exts)


def _fnode(ino, size, exts):
    return _denc(_varint(ino) + _varint(size) + bytes(8) + b"\x00" + _extents(exts))


def _str(s):
    return struct.pack("<I", len(s)) + s


def _rec(seq, ops, uuid=b"S" * 16):
    return _record(seq, ops, uuid)


def test_synthetic_bluefs_every_op():
    uuid = b"S" * 16
    dev = bytearray(0x10000)
    log0 = [(1, 0x2000, 0x2000)]
    body = uuid + b"O" * 16 + struct.pack("<QI", 1, 4096) + _fnode(1, 0x2000, log0)
    sup = _denc(body)
    dev[4096:4096 + len(sup) + 4] = sup + struct.pack("<I", ceph_crc32c(0xFFFFFFFF, sup))
    ops1 = (b"\x01" + b"\x06" + _str(b"db") + b"\x08" + _fnode(2, 10, [(1, 0xC000, 0x1000)])
            + b"\x04" + _str(b"db") + _str(b"a") + struct.pack("<Q", 2)
            + b"\x08" + _fnode(1, 0x4000, log0 + [(1, 0x8000, 0x2000)]))
    delta = _denc(_varint(2) + _varint(5000) + bytes(8) + struct.pack("<Q", 0x1000)
                  + _extents([(1, 0xD000, 0x1000)]))
    ops2 = (b"\x0c" + delta + b"\x06" + _str(b"tmp") + b"\x04" + _str(b"tmp") + _str(b"x")
            + struct.pack("<Q", 2) + b"\x05" + _str(b"tmp") + _str(b"x") + b"\x07" + _str(b"tmp")
            + b"\x02\x01" + struct.pack("<QQ", 0, 0x1000)  # legacy op_alloc_add
            + b"\x0a" + struct.pack("<QQ", 10, 0x2000))  # op_jump(10, 0x2000): next is seq 11
    ops3 = (b"\x08" + _fnode(3, 1, [(1, 0xE000, 0x1000)]) + b"\x04" + _str(b"db") + _str(b"b")
            + struct.pack("<Q", 3) + b"\x05" + _str(b"db") + _str(b"b") + b"\x09"
            + struct.pack("<Q", 3) + b"\x0b" + struct.pack("<Q", 20))  # op_jump_seq 20: next 21
    dev[0x2000:0x3000] = _rec(1, ops1, uuid)
    dev[0x3000:0x4000] = _rec(2, ops2, uuid)
    dev[0x8000:0x9000] = _rec(11, ops3, uuid)
    dev[0x9000:0xA000] = _rec(5, b"\x01", uuid)  # stale: seq goes back
    data = bytes(range(256)) * 32
    dev[0xC000:0xE000] = data
    fs = open_bluefs(BytesSource(bytes(dev)))
    assert fs.damage == [] and fs.log_records == 3 and "seq 5 != expected 21" in fs.stop_reason
    assert {p: (f.size, f.extents) for p, f in fs.files.items()} == {
        "db/a": (5000, [(1, 0xC000, 0x1000), (1, 0xD000, 0x1000)])}
    assert fs.read_file("db/a") == data[:5000]
    assert sorted(fs.dirs) == ["db"]


def test_synthetic_separate_db_device():
    """BlueFS on a block.db device (super v2, memorized_layout dedicated_db), with one
    file spilled over to the main (slow) device."""
    uuid = b"D" * 16
    db = bytearray(0x8000)
    main = bytearray(0x8000)
    layout = b"\x01" + _denc(struct.pack("<I", 2) + b"\x01\x00")
    body = uuid + b"O" * 16 + struct.pack("<QI", 1, 4096) + \
        _fnode(1, 0x1000, [(1, 0x2000, 0x1000)]) + layout
    sup = b"\x02\x01" + struct.pack("<I", len(body)) + body
    db[4096:4096 + len(sup) + 4] = sup + struct.pack("<I", ceph_crc32c(0xFFFFFFFF, sup))
    ops = (b"\x01" + b"\x06" + _str(b"db.slow") + b"\x08"
           + _fnode(2, 8192, [(1, 0x4000, 0x1000), (2, 0x6000, 0x1000)])
           + b"\x04" + _str(b"db.slow") + _str(b"000009.sst") + struct.pack("<Q", 2))
    db[0x2000:0x3000] = _rec(1, ops, uuid)
    db[0x4000:0x5000] = b"A" * 4096
    main[0x6000:0x7000] = b"B" * 4096
    fs = open_bluefs(BytesSource(bytes(main)), BytesSource(bytes(db)))
    assert fs.super.layout == {"shared_bdev": 2, "dedicated_db": True, "dedicated_wal": False}
    assert fs.read_file("db.slow/000009.sst") == b"A" * 4096 + b"B" * 4096
    with pytest.raises(BlueFSError, match="block.db"):
        open_bluefs(BytesSource(bytes(db)))  # the super alone, no db device given


def test_synthetic_envelope_mode_wal():
    """Ceph 20 envelope mode: super v3/compat 3, fnode v2 with encoding and
    content_size, and a WAL file made of (le64 length, payload, stamp) envelopes that
    runs past its journaled size."""
    uuid = b"E" * 16
    dev = bytearray(0x10000)
    body = uuid + b"O" * 16 + struct.pack("<QI", 1, 4096) + _fnode(1, 0x1000, [(1, 0x2000, 0x1000)])
    sup = b"\x03\x03" + struct.pack("<I", len(body)) + body
    dev[4096:4096 + len(sup) + 4] = sup + struct.pack("<I", ceph_crc32c(0xFFFFFFFF, sup))
    env_fnode = lambda size, csize: b"\x02\x02" + struct.pack("<I", 0) + (  # noqa: E731
        _varint(2) + _varint(size) + bytes(8) + b"\x00" + _extents([(1, 0x4000, 0x2000)])
        + _varint(1) + _varint(csize))
    fn = env_fnode(8 + 5 + 8, 5)
    fn = fn[:2] + struct.pack("<I", len(fn) - 6) + fn[6:]
    ops = (b"\x01" + b"\x06" + _str(b"db.wal") + b"\x08" + fn + b"\x04" + _str(b"db.wal")
           + _str(b"000007.log") + struct.pack("<Q", 2))
    dev[0x2000:0x3000] = _rec(1, ops, uuid)
    stamp = b"STAMP123"
    wal = b""
    for payload in (b"hello", b" world", b"!!"):
        wal += struct.pack("<Q", len(payload)) + payload + stamp
    wal += struct.pack("<Q", 3) + b"old" + b"OTHERFIL"  # stale envelope of another file
    dev[0x4000:0x4000 + len(wal)] = wal
    fs = open_bluefs(BytesSource(bytes(dev)))
    assert fs.super.struct_v == 3 and fs.damage == []
    f = fs.files["db.wal/000007.log"]
    assert (f.encoding, f.content_size, f.size) == (1, 5, 21)
    assert fs.read_file("db.wal/000007.log") == b"hello world!!"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=0, max_size=40), st.booleans(), st.integers(0, 2))
def test_a_record_whose_uuid_differs_is_stale_without_parsing_it(data, ours, block):
    """BlueFS._record_at says "end" for a block whose bytes at the head's uuid are not
    the log's before parsing the head (the blocks a resync skips over): the same answer
    as parsing it, for any block, ours or not, short or long."""
    import types

    import backends.ceph.bluefs as bf

    uid = bytes(range(16))
    bs = 64
    blk = bytearray(data.ljust(bs, b"\0")[:bs])
    if ours:
        blk[6:22] = uid
    src = BytesSource(bytes(bs * block) + bytes(blk) + bytes(bs))
    fs = object.__new__(BlueFS)
    fs.super = types.SimpleNamespace(block_size=bs, uuid=types.SimpleNamespace(bytes=uid))
    fast = fs._record_at(src, bs * block, bs * (block + 2))
    saved = bf._HEAD_SIZE
    bf._HEAD_SIZE = 1 << 30  # no shortcut: every block parsed
    try:
        slow = fs._record_at(src, bs * block, bs * (block + 2))
    finally:
        bf._HEAD_SIZE = saved
    assert fast[0] == slow[0] and fast[1:2] == slow[1:2] if fast[0] != "ok" else fast == slow
    assert (fast[0] == "end") == (not ours)
