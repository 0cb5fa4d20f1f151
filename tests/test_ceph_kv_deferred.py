"""Deferred writes (prefix L) of the SIGKILLed osd.2, laid over its block device."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.ceph.deferred import DeferredError, DeferredSource, decode_deferred
from backends.ceph.kv import open_osd
from pvfs.source import BytesSource, FileSource

from test_ceph_bluefs import Patched, root  # noqa: F401 (shared fixture)


def test_killed_osd_deferred_transactions(root):
    o = open_osd(FileSource(root / "osd.2" / "block"))
    txns = [(k, decode_deferred(v)) for k, v in o.kv.iterate("L")]
    assert len(txns) == 17
    assert all(int.from_bytes(k, "big") == t.seq for k, t in txns)
    writes = [w for _, t in txns for w in t.writes]
    assert len(writes) == 30 and all(off % 4096 == 0 and len(d) % 4096 == 0 for off, d in writes)
    # Ceph had already written these blocks when it was killed (it deletes the keys
    # afterwards): the newest deferred data for every block equals what is on disk
    newest = {}
    for off, data in writes:
        for i in range(0, len(data), 4096):
            newest[off + i] = data[i:i + 4096]
    assert len(newest) == 24
    for off, data in newest.items():
        assert o.device.read(off, 4096) == data
        assert o.source.read(off, 4096) == data
    assert ("info", "bluestore-deferred") in [(s, c) for s, c, _ in o.damage]


def test_deferred_writes_repair_a_lost_block(root):
    """Had the OSD died before the deferred write reached the disk, the block would
    hold old bytes: the overlay gives what BlueStore's replay would write."""
    base = FileSource(root / "osd.2" / "block")
    good = open_osd(base)
    off = 7831552  # a 28 KiB deferred write
    want = good.device.read(off, 28672)
    o = open_osd(Patched(base, {off: bytes(28672)}))
    assert o.device.read(off, 28672) == bytes(28672)
    assert o.source.read(off - 100, 28872) == good.device.read(off - 100, 28872)
    assert o.source.read(off, 28672) == want


def test_overlay_order_and_bounds():
    dev = BytesSource(b"." * 100)
    src = DeferredSource(dev, [(10, b"AAAAAAAAAA"), (15, b"BBBBBBBBBB"), (12, b"C"),
                               (95, b"DDDDDDDDDD")])
    assert src.read(0, 100) == b"." * 10 + b"AAC" + b"AA" + b"B" * 10 + b"." * 70 + b"DDDDD"
    assert src.read(13, 4) == b"AABB"
    assert src.read(50, 10) == b"." * 10
    assert src.block_status() == dev.block_status()


def _txn(data, seq=5):
    body = b"\x01" + b"\x01" + (0x2000 >> 11).to_bytes(4, "little") + b"\x07"  # lba, lowz 4096
    body += len(data).to_bytes(4, "little") + data
    op = b"\x01\x01" + len(body).to_bytes(4, "little") + body
    txn = seq.to_bytes(8, "little") + (1).to_bytes(4, "little") + op + (0).to_bytes(4, "little")
    return b"\x01\x01" + len(txn).to_bytes(4, "little") + txn


def test_decode_synthetic_and_errors():
    t = decode_deferred(_txn(b"x" * 4096))
    assert (t.seq, t.writes, t.released) == (5, [(0x2000, b"x" * 4096)], [])
    with pytest.raises(DeferredError, match="4 bytes over extents of 4096"):
        decode_deferred(_txn(b"data"))
    with pytest.raises(DeferredError):
        decode_deferred(_txn(b"x" * 4096)[:-10])
    with pytest.raises(DeferredError):
        decode_deferred(b"\x01\x01\x05\x00\x00\x00abc")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_decode_deferred_fuzz(data):
    try:
        t = decode_deferred(b"\x01\x01" + len(data).to_bytes(4, "little") + data)
    except DeferredError:
        return
    assert all(len(d) >= 0 for _, d in t.writes)
