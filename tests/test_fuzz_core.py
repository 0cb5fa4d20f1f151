"""Bounded fuzzing of the foundation's parsers: qcow2, MBR/GPT, ddrescue mapfiles.

Whatever the bytes, the result is a parsed structure, the format's own error,
or an UnreadableError on read: never another exception, a hang or a huge
allocation.
"""

from __future__ import annotations


from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FIXTURES, unpack
from pvfs.ddrescue import MapfileError, parse_mapfile
from pvfs.discover import discover
from pvfs.errors import UnreadableError
from pvfs.source import BytesSource
from backends.parttable.tables import PartitionTableError, read_gpt, read_mbr
from backends.qcow2.image import Qcow2Error, Qcow2Image

FUZZ = settings(max_examples=200, deadline=None, derandomize=True,
                suppress_health_check=list(HealthCheck))


def _base_head():
    archive = FIXTURES / "qcow2" / "qcow2-fixtures.tar.xz"
    if archive.exists():
        return (unpack(archive) / "img" / "base.qcow2").read_bytes()[:0x60000]
    # a minimal valid v3 header if the fixture is absent
    h = bytearray(0x60000)
    h[0:4] = b"QFI\xfb"
    h[4:8] = (3).to_bytes(4, "big")
    h[20:24] = (16).to_bytes(4, "big")
    h[24:32] = (1 << 26).to_bytes(8, "big")
    h[36:40] = (1).to_bytes(4, "big")
    h[40:48] = (0x20000).to_bytes(8, "big")
    h[100:104] = (104).to_bytes(4, "big")
    return bytes(h)


BASE = _base_head()


def _exercise_qcow2(data):
    src = BytesSource(data, label="fuzz.qcow2")
    try:
        img = Qcow2Image(src, None, lambda p: (_ for _ in ()).throw(OSError("no files")))
    except Qcow2Error:
        return
    disk = img.disk()
    for off in (0, 1 << 20, max(0, disk.size - 4096)):
        try:
            disk.read(off, 65536)
        except UnreadableError:
            pass
    try:
        disk.block_status(0, min(disk.size, 1 << 24))
    except UnreadableError:
        pass


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 0x5FFFF), st.integers(0, 255)), max_size=24))
def test_qcow2_mutated_header_and_tables(mutations):
    data = bytearray(BASE)
    for pos, val in mutations:
        data[pos] = val
    _exercise_qcow2(bytes(data))


@FUZZ
@given(st.binary(min_size=0, max_size=4096))
def test_qcow2_random_bytes(blob):
    _exercise_qcow2(b"QFI\xfb" + blob)


@FUZZ
@given(st.binary(min_size=512, max_size=8192), st.integers(512, 1 << 30))
def test_partition_tables_random(blob, size):
    data = bytearray(blob)
    data[510:512] = b"\x55\xaa"
    if len(data) > 520:
        data[512:520] = b"EFI PART"
    src = BytesSource(bytes(data))
    for reader in (read_mbr, read_gpt):
        try:
            reader(src)
        except (PartitionTableError, UnreadableError):
            pass


@FUZZ
@given(st.text(max_size=400))
def test_mapfile_random_text(text):
    try:
        parse_mapfile(text)
    except MapfileError:
        pass


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(st.binary(min_size=0, max_size=70000))
def test_discovery_never_raises_on_random_files(tmp_path_factory, blob):
    d = tmp_path_factory.mktemp("fuzz")
    p = d / "vm-100-disk-0.qcow2"
    p.write_bytes(blob)
    ctx = discover([str(p)])
    assert not [e for e in ctx.report if e.code in ("internal-error", "probe-failed")], \
        [e.line() for e in ctx.report]
