"""Prefetch ahead of a sequential reader of the mount (mountd.fs PvfsOperations._follow):
the file ranges the layers map (``Source.plain_ranges``, checked against thin_dump and
qemu-img map in test_lvm/test_qcow2) are asked of the kernel ahead of a reader that reads
on, never for a random reader, and never turn a lost range into an error of a request
that did not ask for it."""

from __future__ import annotations

import errno
import hashlib
import os

import pyfuse3
import pytest
import trio

from conftest import require_fixture, unpack
from mountd import fs as mountfs
from mountd.fs import PvfsOperations
from pvfs.damage import DamageReport
from pvfs.discover import discover
from pvfs.errors import UnreadableError
from pvfs.nodes import Dir, File, resolve
from pvfs.source import PREFETCH_GAP, FileSource, SliceSource
from backends.lvm.thin import ThinSource
from test_lvm import _pool, syn  # noqa: F401 - the fixture, used by name

MIB = 1 << 20


@pytest.fixture
def advised(monkeypatch):
    """Every ``posix_fadvise(WILLNEED)`` asked through FileSource: (path, offset, length)."""
    calls = []
    real = FileSource.willneed

    def willneed(self, offset, length):
        calls.append((self.path, offset, length))
        return real(self, offset, length)

    monkeypatch.setattr(FileSource, "willneed", willneed)
    return calls


def _mounted(src, report=None):
    root = Dir()
    root.add("disk", File(src))
    return PvfsOperations(root, report=report, threads=1)  # one thread: jobs in order


async def _open(ops):
    ino = (await ops.lookup(pyfuse3.ROOT_INODE, b"disk", None)).st_ino
    return (await ops.open(ino, os.O_RDONLY, None)).fh


async def _settled(ops):
    """Wait until the worker thread has run every job handed to it so far."""
    await ops.workers.run(lambda: None)


def _bytes_of(calls, block):
    """The file blocks a list of (path, offset, length) covers."""
    return {(p, o) for p, off, n in calls for o in range(off, off + n, block)}


def test_sequential_reader_prefetches_where_the_mapping_jumps(syn, advised):  # noqa: F811
    """A thin LV (runs scattered over the pool's data LV) read in 1 MiB requests from the
    start: from the third request on, the disk ranges ahead where the mapping jumps (a
    run that does not continue the one before it in the file, which the file's own
    read-ahead follows) are advised: every one of them past the reader's first run, once,
    and nothing that is not mapped there; the bytes are the manifest's."""
    d, m = syn
    tv = m["thin_volumes"]["vm-100-disk-0"]
    cb = m["thin_pool"]["chunk_size_bytes"]
    src = ThinSource(_pool(d / "pve-disk.img", m), 1, tv["size_bytes"])
    ops = _mounted(src)

    async def go():
        fh = await _open(ops)
        h = hashlib.sha256()
        for off in range(0, src.size, MIB):
            h.update(await ops.read(fh, off, MIB))
            if off == 1 * MIB:
                await _settled(ops)
                assert advised == [] and ops.prefetches == 0  # two requests: not yet
        await _settled(ops)
        await ops.release(fh)
        return h.hexdigest()

    assert trio.run(go) == tv["sha256"]
    chunks = [(pos + k, f.path, foff + k) for pos, f, foff, n in src.plain_ranges(0, src.size)
              for k in range(0, n, cb)]
    jumps = {(p, o) for (_, pp, po), (v, p, o) in zip(chunks, chunks[1:], strict=False)
             if v > 4 * MIB and not (p == pp and 0 <= o - (po + cb) <= PREFETCH_GAP)}
    got = _bytes_of(advised, cb)
    assert len(jumps) > 5 and jumps <= got  # every jump ahead of the reader
    assert got <= {(p, o) for v, p, o in chunks if v >= 3 * MIB}  # and only what is mapped
    assert len(got) == sum(n for *_, n in advised) // cb  # each once
    assert 2 <= ops.prefetches <= src.size // (mountfs.PREFETCH_BYTES // 2) + 1
    assert ops.workers.submitted == ops.prefetches and not ops._streams  # released


def test_sequential_reader_of_a_linear_lv_leaves_read_ahead_alone(syn, advised):  # noqa: F811
    """A linear LV is one run of the disk image: the file's own read-ahead follows the
    reader, so nothing is advised (measured: advising it made reads slower)."""
    d, m = syn
    f = FileSource(d / "pve-disk.img")
    lv = m["linear_volumes"]["root"]
    assert len(lv["segments"]) == 1 and lv["size_bytes"] >= 4 * MIB
    seg = lv["segments"][0]
    src = SliceSource(f, seg["disk_offset"], lv["size_bytes"])
    ops = _mounted(src)

    async def go():
        fh = await _open(ops)
        for off in range(0, src.size, MIB):
            assert bytes(await ops.read(fh, off, MIB)) == f.read(seg["disk_offset"] + off, MIB)
        await _settled(ops)

    trio.run(go)
    assert ops.prefetches >= 1 and advised == []


def test_random_reader_prefetches_nothing(syn, advised):  # noqa: F811
    """Requests that do not follow each other (each more than SEQUENTIAL_SLACK away from
    the end of the previous one) ask for no prefetch at all."""
    d, m = syn
    tv = m["thin_volumes"]["vm-100-disk-0"]
    src = ThinSource(_pool(d / "pve-disk.img", m), 1, tv["size_bytes"])
    ops = _mounted(src)
    offsets = [40, 8, 56, 20, 0, 32, 48, 12, 60, 26]

    async def go():
        fh = await _open(ops)
        for off in offsets:
            assert bytes(await ops.read(fh, off * MIB, MIB)) == src.read(off * MIB, MIB)
        await _settled(ops)

    trio.run(go)
    assert advised == [] and ops.prefetches == 0 and ops.workers.submitted == 0


def test_prefetch_past_lost_ranges_fails_no_other_request(syn, advised):  # noqa: F811
    """A thin LV whose mapping root is damaged: only the recovered chunks are known, every
    gap is lost (EIO).  Read on through the mount with prefetch running ahead over the
    lost ranges: exactly the requests that overlap a lost range fail (as a direct read of
    the LV does), each once in the damage report, and the others give the LV's bytes."""
    d, m = syn
    tv = m["thin_volumes"]["vm-100-disk-0"]
    root = _pool(d / "pve-disk.img", m).dev_roots[1]
    off = m["thin_pool"]["tmeta_disk_offset_bytes"] + root * 4096 + 16
    pool = _pool(d / "pve-disk.img", m, {off: b"\xff\xfe"})
    src = ThinSource(pool, 1, tv["size_bytes"])
    good = ThinSource(_pool(d / "pve-disk.img", m), 1, tv["size_bytes"])
    report = DamageReport()
    ops = _mounted(src, report)
    step = 256 << 10  # requests smaller than a run of lost chunks: some of them succeed

    def lost(o):
        try:
            src.read(o, step)
            return False
        except UnreadableError:
            return True

    want_failed = [o for o in range(0, src.size, step) if lost(o)]
    assert want_failed and len(want_failed) < src.size // step  # some fail, some do not

    async def go():
        fh = await _open(ops)
        failed = []
        for o in range(0, src.size, step):
            try:
                assert bytes(await ops.read(fh, o, step)) == good.read(o, step)
            except pyfuse3.FUSEError as e:
                assert e.errno == errno.EIO
                failed.append(o)
        await _settled(ops)
        return failed

    assert trio.run(go) == want_failed
    assert ops.prefetches > 0 and advised  # prefetch ran ahead over the lost ranges
    eio = [e for e in report if e.code == "read-eio"]
    assert len(eio) == len(want_failed) and len(list(report)) == len(eio)


def test_truncated_qcow2_reads_up_to_the_lost_cluster(tmp_path, advised):
    """A qcow2 copy cut in half: read sequentially through the mount, every request before
    the first lost cluster succeeds (the prefetch ran past the end of the file), and the
    request holding it fails with EIO."""
    img = unpack(require_fixture("qcow2", "qcow2-fixtures.tar.xz")) / "img" / "base.qcow2"
    data = img.read_bytes()
    (tmp_path / "base.qcow2").write_bytes(data[:len(data) // 2])
    full = resolve(discover([str(img)]).root, "storage/files/base.qcow2/disk.raw").source
    src = resolve(discover([str(tmp_path / "base.qcow2")]).root,
                  "storage/files/base.qcow2/disk.raw").source
    first_lost = src.unreadable_ranges()[0][0]
    step = 64 << 10
    ops = _mounted(src)

    async def go():
        fh = await _open(ops)
        o = 0
        while o + step <= first_lost:
            assert bytes(await ops.read(fh, o, step)) == full.read(o, step)
            o += step
        await _settled(ops)
        assert ops.prefetches > 0
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.read(fh, first_lost - first_lost % step, step)
        assert e.value.errno == errno.EIO

    assert first_lost > 4 * step
    trio.run(go)
    size = len(data) // 2
    assert advised and all(off + n <= size for p, off, n in advised)  # never past the end
