import os

import pytest

from pvfs.ddrescue import BadRangeSource, MapfileError, parse_mapfile
from pvfs.errors import UnreadableError
from pvfs.source import (BAD_ZERO, DATA, UNMAPPED, UNREADABLE, BytesSource, ExtentSource,
                         FileSource, SliceSource, Source, WouldBlock, ZeroSource, concat)


def test_file_source_reads_and_holes(tmp_path):
    p = tmp_path / "img"
    with open(p, "wb") as f:
        f.write(b"A" * 4096)
        f.seek(1 << 20)
        f.write(b"B" * 4096)
    src = FileSource(p)
    assert src.size == (1 << 20) + 4096
    assert src.read(0, 4) == b"AAAA"
    assert src.read((1 << 20) - 2, 4) == b"\0\0BB"
    assert src.read(src.size - 2, 100) == b"BB"
    assert src.read(src.size, 10) == b""
    st = src.block_status()
    assert st[0] == (0, 4096, DATA)
    assert st[-1][2] == DATA and st[-1][0] + st[-1][1] == src.size
    assert any(s == UNMAPPED for _, _, s in st)


def test_slice_and_concat():
    a = BytesSource(b"0123456789")
    s = SliceSource(a, 2, 5)
    assert s.read(0, 100) == b"23456"
    c = concat([a, s])
    assert c.size == 15
    assert c.read(8, 5) == b"89234"
    e = ExtentSource(20, [(5, 3, a, 0)])
    assert e.read(0, 10) == b"\0" * 5 + b"012" + b"\0\0"
    assert e.block_status() == [(0, 5, UNMAPPED), (5, 3, DATA), (8, 12, UNMAPPED)]


def test_slice_past_parent_end_is_unreadable():
    s = SliceSource(BytesSource(b"x" * 10), 5, 10)
    with pytest.raises(UnreadableError):
        s.read(0, 10)
    assert s.block_status() == [(0, 5, DATA), (5, 5, UNREADABLE)]


class _PlainBytes(Source):
    """A layer without its own ``_readinto`` (the default: from ``_read``, never inline)."""

    def __init__(self, data):
        super().__init__()
        self.data, self.size = data, len(data)

    def _read(self, offset, length):
        return self.data[offset:offset + length]


def _readinto_everywhere(src):
    """``readinto`` at every offset/length pair of a grid (buffers with a guard byte after
    them) against ``read``; returns how many bytes-bearing pieces ``nowait`` served."""
    inline = 0
    step = max(1, src.size // 13)
    for off in list(range(0, src.size + 3, step)) + [src.size - 1, src.size]:
        for ln in (0, 1, 7, step, src.size + 5):
            buf = bytearray(ln + 1)
            buf[-1] = 0xA5
            view = memoryview(buf)[:ln]
            try:
                n = src.readinto(off, view, nowait=True)
                inline += n > 0
            except WouldBlock:
                n = src.readinto(off, view)
            want = src.read(max(0, off), ln)
            assert n == len(want) and bytes(buf[:n]) == want, (off, ln)
            assert buf[-1] == 0xA5
    return inline


def test_readinto_agrees_with_read_in_every_layer(tmp_path):
    """``readinto`` (the mount's path) against ``read`` for files, slices (past the
    parent's end: EIO, or zeros with --bad zero), extents with gaps over layers with and
    without their own readinto, zeros and bytes."""
    p = tmp_path / "img"
    blob = os.urandom(300_000)
    p.write_bytes(blob)
    f = FileSource(p)
    assert _readinto_everywhere(f) > 0  # just written: in the page cache, served inline
    plain = _PlainBytes(blob[:5000])
    assert _readinto_everywhere(plain) == 0  # no own readinto: never inline
    ext = ExtentSource(400_000, [(10, 100_000, f, 7), (150_000, 5000, plain, 0),
                                 (200_000, 4, BytesSource(b"abcd"), 0),
                                 (300_000, 5000, ZeroSource(5000), 0)])
    _readinto_everywhere(ext)
    _readinto_everywhere(SliceSource(f, 1234, 200_000))
    _readinto_everywhere(concat([f, SliceSource(ext, 5, 1000)]))
    short = SliceSource(f, 299_000, 2000)
    buf = bytearray(2000)
    with pytest.raises(UnreadableError) as ei:
        short.readinto(0, buf)
    assert ei.value.ranges == [(1000, 1000)]
    zeroed = SliceSource(f, 299_000, 2000, bad=BAD_ZERO)
    assert zeroed.readinto(0, buf) == 2000 and bytes(buf) == blob[299_000:] + bytes(1000)


def test_file_readinto_nowait_waits_for_nothing(tmp_path):
    """``nowait`` reads only what the page cache holds (RWF_NOWAIT): a file whose pages
    were dropped gives WouldBlock, the blocking read fills it, then nowait succeeds."""
    p = tmp_path / "img"
    blob = os.urandom(1 << 20)
    p.write_bytes(blob)
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        probe = bytearray(4096)
        try:
            os.preadv(fd, [probe], 0, os.RWF_NOWAIT)
            pytest.skip("this file system keeps the file in memory (tmpfs)")
        except BlockingIOError:
            pass
    finally:
        os.close(fd)
    f = FileSource(p)
    buf = bytearray(1 << 20)
    with pytest.raises(WouldBlock):
        f.readinto(4096, buf, nowait=True)
    assert f.readinto(0, buf) == 1 << 20 and bytes(buf) == blob
    buf[:] = bytes(len(buf))
    assert f.readinto(0, buf, nowait=True) == 1 << 20 and bytes(buf) == blob


MAP = """# Mapfile. Created by GNU ddrescue version 1.27
# current_pos  current_status  current_pass
0x00001000     +               1
#      pos        size  status
0x00000000  0x00001000  +
0x00001000  0x00000200  -
0x00001200  0x00000E00  +
0x00002000  0x00001000  ?
"""


def test_mapfile_parse():
    assert parse_mapfile(MAP) == [(0x1000, 0x200), (0x2000, 0x1000)]
    for bad in ["", "garbage here now\n", "0x0 +\n0x0 0x10 X\n", "0x0 +\n-5 10 -\n"]:
        with pytest.raises(MapfileError):
            parse_mapfile(bad)


def test_bad_range_source_eio_and_zero():
    base = BytesSource(b"\xff" * 0x4000)
    eio = BadRangeSource(base, parse_mapfile(MAP), bad="eio")
    assert eio.read(0, 0x1000) == b"\xff" * 0x1000
    with pytest.raises(UnreadableError) as ei:
        eio.read(0xF00, 0x200)
    assert ei.value.ranges == [(0x1000, 0x100)]
    zero = BadRangeSource(base, parse_mapfile(MAP), bad="zero")
    data = zero.read(0xF00, 0x400)
    assert data == b"\xff" * 0x100 + b"\0" * 0x200 + b"\xff" * 0x100
    assert zero.unreadable_ranges() == [(0x1000, 0x200), (0x2000, 0x1000)]


def test_lazy_dir_is_never_seen_half_filled():
    import threading
    import time

    from pvfs.nodes import Dir, File

    def slow_loader(d):
        for i in range(50):
            d.add(f"f{i}", File(BytesSource(b"x")))
            time.sleep(0.001)
        assert d.get("f0") is not None  # a loader may look at its own directory

    d = Dir(loader=slow_loader)
    seen = []
    threads = [threading.Thread(target=lambda: seen.append(len(d.children()))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == [50] * 8


def test_timestamp_keeps_nanoseconds_a_float_loses():
    from pvfs.nodes import Timestamp, time_ns

    ns = 1717243278123456789
    t = Timestamp.from_ns(ns)
    assert time_ns(t) == ns and t.ns == ns
    assert abs(t - 1717243278.123456789) < 1e-6  # still usable as seconds
    assert time_ns(float(t)) != ns  # what a plain float gives
    assert Timestamp(1717243278, 123456789).ns == ns
