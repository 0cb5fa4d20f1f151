"""ZFS pool layer: nvlist, labels, uberblocks, block pointers, checksums, compression,
RAIDZ math, and bounded fuzzing of every parser (part A of the ZFS backend)."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from backends.zfs import checksum, compress, raidz
from backends.zfs.blkptr import BlkPtr
from backends.zfs.errors import ZfsError
from backends.zfs.label import label_offset, parse_uberblock, read_labels, verify_eck
from backends.zfs.nvlist import NvlistError, unpack_nvlist
from backends.zfs.objset import Dnode
from pvfs.source import BytesSource, FileSource

import conftest
from conftest import FIXTURES, require_fixture, unpack

FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- nvlist ---------------------------------------------------------------------------
def _xdr_str(s: bytes) -> bytes:
    return struct.pack(">I", len(s)) + s + bytes((-len(s)) % 4)


def _pair(name: str, typ: int, nelem: int, value: bytes) -> bytes:
    body = _xdr_str(name.encode()) + struct.pack(">ii", typ, nelem) + value
    return struct.pack(">ii", len(body) + 8, len(body) + 8) + body


def _nvlist(pairs: bytes) -> bytes:
    return struct.pack(">ii", 0, 1) + pairs + bytes(8)


def test_nvlist_hand_made():
    inner = _nvlist(_pair("type", 9, 1, _xdr_str(b"disk")) + _pair("guid", 8, 1, struct.pack(">Q", 7)))
    data = bytes([1, 1, 0, 0]) + _nvlist(
        _pair("name", 9, 1, _xdr_str(b"tank"))
        + _pair("version", 8, 1, struct.pack(">Q", 5000))
        + _pair("flag", 1, 0, b"")
        + _pair("vdev_tree", 19, 1, inner)
        + _pair("kids", 20, 2, inner + inner)
        + _pair("arr", 16, 3, struct.pack(">I3Q", 3, 1, 2, 3))  # xdr_array: count first
        + _pair("blob", 10, 5, b"\x01\x02\x03\x04\x05" + bytes(3)))  # xdr_opaque: no length
    nv = unpack_nvlist(data)
    assert nv["name"] == "tank" and nv["version"] == 5000 and nv["flag"] is True
    assert nv["vdev_tree"] == {"type": "disk", "guid": 7}
    assert nv["kids"] == [{"type": "disk", "guid": 7}] * 2
    assert nv["arr"] == [1, 2, 3] and nv["blob"] == b"\x01\x02\x03\x04\x05"


def test_nvlist_rejects_native_and_truncation():
    with pytest.raises(NvlistError, match="not XDR"):
        unpack_nvlist(bytes([0, 1, 0, 0]) + bytes(16))
    good = bytes([1, 1, 0, 0]) + _nvlist(_pair("name", 9, 1, _xdr_str(b"tank")))
    with pytest.raises(NvlistError, match="truncated|bad pair size"):
        unpack_nvlist(good[:-12])


@FUZZ
@given(st.binary(max_size=600))
def test_fuzz_nvlist_random(data):
    try:
        unpack_nvlist(bytes([1, 1, 0, 0]) + data)
    except NvlistError:
        pass


def _label_phys():
    d = unpack(require_fixture("zfs", "images", "fxmirror.tar.xz"))
    src = FileSource(sorted(d.rglob("*-d0.img"))[0])
    return src, src.read(16 * 1024, 112 * 1024)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 2047), st.integers(0, 255)), min_size=1, max_size=8))
def test_fuzz_nvlist_mutated_label(muts):
    _, phys = _label_phys_cached()
    buf = bytearray(phys[:2048 + 64])
    for off, val in muts:
        buf[off] = val
    try:
        unpack_nvlist(bytes(buf))
    except NvlistError:
        pass


_CACHE = {}


def _label_phys_cached():
    if "phys" not in _CACHE:
        _CACHE["phys"] = _label_phys()
    return _CACHE["phys"]


# -- labels and uberblocks ------------------------------------------------------------------
def test_labels_of_fxmirror_member():
    import json

    m = json.loads((FIXTURES / "zfs" / "manifests" / "fxmirror.json").read_text())
    src, phys = _label_phys_cached()
    info = read_labels(src)
    assert [l for l, _ in info.configs] == [0, 1, 2, 3] and not info.bad_labels
    lab = m["pool"]["members"][0]["label"]
    cfg = info.config
    assert cfg["pool_guid"] == lab["pool_guid"] and cfg["guid"] == lab["guid"]
    assert cfg["txg"] == lab["txg"] and cfg["vdev_tree"]["ashift"] == lab["ashift"]
    assert info.uberblocks and max(u.txg for u in info.uberblocks) >= lab["txg"]
    # ashift 12: the ring has 32 slots of 4 KiB
    assert all(u.slot < 32 for u in info.uberblocks)


def test_label_offsets():
    size = 128 * 1024 * 1024 + 12345
    assert label_offset(size, 0) == 0 and label_offset(size, 1) == 256 * 1024
    assert label_offset(size, 3) == 128 * 1024 * 1024 - 256 * 1024


def test_label_checksum_uses_offset_as_verifier():
    src, phys = _label_phys_cached()
    assert verify_eck(phys, 16 * 1024)[0]
    assert not verify_eck(phys, 16 * 1024 + 512)[0]  # the same bytes elsewhere are no label
    bad = bytearray(phys)
    bad[100] ^= 1
    assert not verify_eck(bytes(bad), 16 * 1024)[0]


def test_labels_of_random_and_tiny_devices():
    assert read_labels(BytesSource(os.urandom(300_000))).config is None
    info = read_labels(BytesSource(bytes(1024)))
    assert info.config is None and info.bad_labels


@FUZZ
@given(st.binary(min_size=1024, max_size=1024), st.booleans())
def test_fuzz_uberblock(data, magic):
    buf = bytearray(data)
    if magic:
        buf[0:8] = struct.pack("<Q", 0x00BAB10C)
    assert parse_uberblock(bytes(buf), 128 * 1024, 0, 0) is None or True


def test_uberblock_other_endian():
    """A big-endian uberblock (SPARC / PowerPC writers) with a valid embedded checksum."""
    ub = bytearray(1024)
    struct.pack_into(">5Q", ub, 0, 0x00BAB10C, 5000, 77, 1, 2)
    off = 128 * 1024 + 3 * 1024
    ub[-40:-32] = struct.pack(">Q", 0x0210DA7AB10C7A11)
    ub[-32:] = struct.pack(">4Q", off, 0, 0, 0)
    ub[-32:] = struct.pack(">4Q", *checksum.sha256_words(bytes(ub)))
    u = parse_uberblock(bytes(ub), off, 0, 3)
    assert u is not None and u.txg == 77 and u.little is False and u.version == 5000


@FUZZ
@given(st.binary(min_size=216, max_size=216), st.booleans())
def test_uberblock_struct_matches_the_construct_declaration(data, little):
    """label.UB_STRUCT (the fast path of the uberblock ring) reads every field as the
    construct declaration in structs.py does, in both byte orders."""
    from backends.zfs import label
    from backends.zfs.structs import parse

    ub = parse("uberblock", data, little)
    fast = label.UB_STRUCT[little].unpack_from(data, 0)
    assert tuple(getattr(ub, f) for f in label.UB_FIELDS) == fast


def test_uberblocks_of_a_real_label_ring():
    """Every uberblock of fxmirror's labels: the newest txg and the ring as zdb prints it."""
    d = unpack(require_fixture("zfs", "images", "fxmirror.tar.xz"))
    img = sorted(d.rglob("*.img"))[0]
    info = read_labels(FileSource(str(img)))
    assert len(info.uberblocks) > 10
    best = max(info.uberblocks, key=lambda u: (u.txg, u.timestamp))
    assert best.txg >= info.config["txg"]  # labels are rewritten less often
    assert all(u.rootbp.dvas and u.version == info.uberblocks[0].version
               for u in info.uberblocks)


# -- block pointers -----------------------------------------------------------------------
def test_blkptr_fields():
    w = [0] * 16
    w[0] = (1 << 32) | 8  # vdev 1, asize 8 sectors
    w[1] = (1 << 63) | 0x1000  # gang, offset 0x1000 sectors
    w[6] = (1 << 63) | (3 << 56) | (19 << 48) | (7 << 40) | (15 << 32) | (3 << 16) | 255
    w[10] = 1234
    bp = BlkPtr(struct.pack("<16Q", *w), True)
    d = bp.dvas[0]
    assert (d.vdev, d.asize, d.offset, d.gang) == (1, 4096, 0x1000 * 512, True)
    assert (bp.level, bp.type, bp.cksum_type, bp.comp, bp.lsize, bp.psize) == (3, 19, 7, 15, 256 * 512, 4 * 512)
    assert bp.little and bp.birth == 1234 and not bp.hole and not bp.embedded
    assert BlkPtr(bytes(128), True).hole


def test_blkptr_embedded_payload():
    payload = bytes(range(1, 113))
    words = list(struct.unpack("<14Q", payload))
    w = words[0:6] + [0] + words[6:9] + [99] + words[9:14]
    w[6] = (1 << 63) | (1 << 39) | (0 << 40) | (2 << 32) | ((112 - 1) << 25) | (112 - 1)
    for little in (True, False):
        raw = struct.pack("<16Q" if little else ">16Q", *w)
        bp = BlkPtr(raw, little)
        assert bp.embedded and bp.psize == 112 and bp.lsize == 112
        assert bp.embedded_payload() == payload


@FUZZ
@given(st.binary(min_size=128, max_size=128), st.booleans())
def test_fuzz_blkptr(raw, little):
    bp = BlkPtr(raw, little)
    assert bp.psize <= 1 << 25 and bp.lsize <= 1 << 25
    repr(bp)


@FUZZ
@given(st.binary(min_size=512, max_size=1024), st.booleans())
def test_fuzz_dnode(raw, little):
    class _OS:
        key = ("fuzz",)
    try:
        d = Dnode(_OS(), 5, raw, little)
    except ZfsError:
        return
    assert len(d.bonus) <= len(raw) and d.size >= 0


# -- checksums ------------------------------------------------------------------------------
def _fletcher4_ref(data, little):
    a = b = c = d = 0
    m = (1 << 64) - 1
    for (w,) in struct.iter_unpack("<I" if little else ">I", data):
        a = (a + w) & m
        b = (b + a) & m
        c = (c + b) & m
        d = (d + c) & m
    return (a, b, c, d)


def _fletcher2_ref(data, little):
    a0 = a1 = b0 = b1 = 0
    m = (1 << 64) - 1
    for w0, w1 in struct.iter_unpack("<QQ" if little else ">QQ", data):
        a0 = (a0 + w0) & m
        a1 = (a1 + w1) & m
        b0 = (b0 + a0) & m
        b1 = (b1 + a1) & m
    return (a0, a1, b0, b1)


@FUZZ
@given(st.binary(max_size=2048).map(lambda b: b[:len(b) // 16 * 16]), st.booleans())
def test_fletcher_matches_reference(data, little):
    assert checksum.compute("fletcher4", data, little) == _fletcher4_ref(data, little)
    assert checksum.compute("fletcher2", data, little) == _fletcher2_ref(data, little)


def test_fletcher_large_blocks_use_prefix_sums():
    data = os.urandom((1 << 20) + 16)  # past the coefficient cache: the cumsum path
    assert checksum.fletcher4(data) == _fletcher4_ref(data, True)
    assert checksum.fletcher2(data, False) == _fletcher2_ref(data, False)


def test_fletcher4_wraps_modulo_2_64():
    big = b"\xff\xff\xff\xff" * 70000
    assert checksum.compute("fletcher4", big) == _fletcher4_ref(big, True)


def test_unverifiable_checksums_raise():
    """Salted checksums without the salt, unknown algorithms: never "verified"."""
    for algo in ("skein", "edonr", "blake3"):
        with pytest.raises(checksum.Unverifiable):
            checksum.compute(algo, b"x" * 512)
    with pytest.raises(checksum.Unverifiable):
        checksum.compute("checksum-77", b"x" * 512)


def test_edonr_compiled_and_python_loops_agree():
    """The numba-compiled Edon-R block loop and its numpy-scalar fallback (the same
    code) give the same pipe; the full hash is checked against ZFS's own checksums of
    the cksum-edonr dataset in test_zfs_fixtures."""
    import numpy as np

    from backends.zfs import edonr

    data = np.frombuffer(os.urandom(256), dtype="<u8").astype(np.uint64)
    a, b = edonr._INIT.copy(), edonr._INIT.copy()
    edonr._kernel()(data, a)
    edonr._python_q512(data, b)
    assert (a == b).all()
    assert len(edonr.zfs_edonr(b"y" * 4096, b"s" * 32)) == 64


# -- compression ------------------------------------------------------------------------
def test_lz4_with_zfs_header():
    import lz4.block

    data = (b"hello zfs " * 500)[:4096]
    comp = lz4.block.compress(data, store_size=False)
    blob = struct.pack(">I", len(comp)) + comp + bytes(7)
    assert compress.decompress(15, blob, 4096) == data
    with pytest.raises(ZfsError):
        compress.decompress(15, struct.pack(">I", 10_000) + comp, 4096)


def test_zstd_magicless_with_zfs_header():
    import zstandard

    data = os.urandom(1000) + bytes(3096)
    frame = zstandard.ZstdCompressor(level=3).compress(data)
    assert frame[:4] == b"\x28\xb5\x2f\xfd"
    blob = struct.pack(">II", len(frame) - 4, 3) + frame[4:]
    assert compress.decompress(16, blob, 4096) == data
    with pytest.raises(ZfsError):
        compress.decompress(16, struct.pack(">II", 50, 3) + os.urandom(50), 4096)


def test_gzip_zle_lzjb_and_unknown():
    data = b"abc" * 300 + bytes(600)
    assert compress.decompress(10, zlib.compress(data, 6), len(data)) == data
    # zle: 3 literals (length byte 2), then 100 zeros (length byte 1 + 163 - 64 = 100)
    assert compress.zle_decompress(bytes([2]) + b"xyz" + bytes([163]), 103) == b"xyz" + bytes(100)
    # lzjb: a copy map byte 0b10 -> literal "a", then a match of length 3+1 at offset 1
    assert compress.lzjb_decompress(bytes([0b10]) + b"a" + bytes([1 << 2, 1]), 5) == b"aaaaa"
    with pytest.raises(ZfsError):
        compress.lzjb_decompress(bytes([1, 0, 5]), 10)
    with pytest.raises(ZfsError, match="unsupported"):
        compress.decompress(99, b"x", 1)


def _real_lzjb_blocks():
    """``(physical bytes, lsize)`` of every lzjb block of fxmirror/comp-lzjb/text-1m5.txt
    (written by zfs-fuse)."""
    from pvfs.discover import discover
    from pvfs.nodes import resolve

    d = unpack(require_fixture("zfs", "images", "fxmirror.tar.xz"))
    ctx = discover(sorted(str(p) for p in d.rglob("*.img")))
    dn = resolve(ctx.root, "storage/zfs/fxmirror/comp-lzjb/text-1m5.txt").source.dnode
    for blkid in range(dn.maxblkid + 1):
        bp = dn.block_bp(blkid)
        if bp is not None and not bp.hole and bp.comp == 3:
            yield dn.objset.pool.read_physical(bp), bp.lsize


def test_lzjb_compiled_and_python_agree_on_real_blocks():
    """The lzjb blocks of fxmirror/comp-lzjb through both decoders (numba when installed)."""
    compress.lzjb_jit_ready()  # numba (when installed) compiles in the background
    n = 0
    for raw, lsize in _real_lzjb_blocks():
        assert compress.lzjb_decompress(raw, lsize) == compress._lzjb_python(raw, lsize)
        n += 1
    assert n > 3
    for bad in (bytes([0xFF, 0x04, 0x05]), bytes([1])):
        for fn in (compress.lzjb_decompress, compress._lzjb_python):
            with pytest.raises(ZfsError):
                fn(bad, 64)


@FUZZ
@given(st.binary(max_size=400), st.sampled_from([3, 14, 15, 16, 10]))
def test_fuzz_decompress(data, comp):
    try:
        out = compress.decompress(comp, data, 2048)
        assert len(out) == 2048
    except ZfsError:
        pass


# -- RAIDZ ----------------------------------------------------------------------------------
@pytest.mark.parametrize("nparity", [1, 2, 3])
def test_raidz_reconstruct_every_erasure(nparity):
    import itertools

    d = [os.urandom(1024), os.urandom(1024), os.urandom(512), os.urandom(512), os.urandom(512)]
    sizes = [len(x) for x in d]
    par = raidz.parity_of(d, nparity, 1024)
    for k in range(1, nparity + 1):
        for er in itertools.combinations(range(len(d)), k):
            dd = [None if j in er else d[j] for j in range(len(d))]
            assert raidz.reconstruct(par, dd, sizes, list(er)) == d
    # more erasures than parity: refused
    assert raidz.reconstruct(par, [None] * len(d), sizes, list(range(len(d)))) is None


@FUZZ
@given(st.integers(0, 1 << 30), st.integers(1, 256), st.integers(2, 12), st.integers(1, 3),
       st.sampled_from([9, 12]))
def test_raidz_map_covers_block(sector, nsect, dcols, nparity, ashift):
    if dcols <= nparity:
        return
    cols = raidz.map_columns(sector << ashift, nsect << ashift, dcols, nparity, ashift)
    data = sum(c[2] for c in cols[nparity:])
    assert data == nsect << ashift
    devs = [c[0] for c in cols]
    assert len(set(devs)) == len(devs) and all(0 <= x < dcols for x in devs)
    assert cols[0][2] >= max(c[2] for c in cols)  # parity columns are the longest


def test_raidz_bad_config():
    with pytest.raises(ZfsError):
        raidz.map_columns(0, 4096, 2, 2, 9)


def test_lzjb_jit_compiled_in_the_parent_works_in_a_forked_child(monkeypatch):
    """Without the ahead-of-time build, numba compiles just in time.  The mount daemon is
    forked after discovery: what was compiled before the fork (in the calling thread,
    never half-done) must work in the child, and a child that had nothing compiled
    compiles on its own in the background."""
    import threading
    import time

    from backends.zfs import kernels

    monkeypatch.setattr(kernels._State, "aot", False)
    monkeypatch.setattr(kernels._State, "jit", None)
    monkeypatch.setattr(kernels._State, "py_lzjb_bytes", 0)
    data = bytes([0]) + b"abcdefgh" + bytes([0b10]) + b"a" + bytes([1 << 2, 1])
    for compile_first in (False, True):
        if compile_first:
            compress.lzjb_jit_ready()
        assert compress.lzjb_decompress(data, 13, bulk=False) == b"abcdefghaaaaa"
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: compiling in the background already (lzjb was seen)
            ok = compress.lzjb_decompress(data, 13, bulk=False) == b"abcdefghaaaaa"
            for _ in range(600):
                if kernels._State.jit or kernels._State.jit is False and not any(
                        t.name == "zfs-kernels-jit" for t in threading.enumerate()):
                    break
                time.sleep(0.05)
            os.write(w, b"%d%d" % (ok, bool(kernels._State.jit) or compress.lzjb_jit_ready()))
            os._exit(0)
        os.close(w)
        out = os.read(r, 2)
        os.waitpid(pid, 0)
        try:
            import numba  # noqa: F401
            expect = b"11"
        except ImportError:
            expect = b"10"
        assert out == expect


def _kernels_build():
    """The ahead-of-time kernels, built once per test session into the fixture cache."""
    from backends.zfs import kernels

    out = conftest.cached_build(f"zfs-kernels-{kernels.source_hash():x}",
                                lambda d: kernels.build(str(d)))
    return kernels._load_from(next(str(p) for p in Path(out).glob(kernels.MODULE + "*")))


def _python_runs_during(call, seconds=0.4):
    """How often the calling thread ran Python while another thread was inside ``call()``
    (the middle 80% of each call, calls repeated for ``seconds``).  A kernel that holds the
    GIL gives 0: no bytecode runs anywhere while it does."""
    import threading
    import time

    spans, stamps = [], []

    def run():
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            call()
            spans.append((t0, time.perf_counter()))

    th = threading.Thread(target=run)
    th.start()
    while th.is_alive():
        stamps.append(time.perf_counter())
    th.join()
    inside = 0
    for t0, t1 in spans:
        m = (t1 - t0) * 0.1
        inside += sum(t0 + m < s < t1 - m for s in stamps)
    return inside


def test_aot_kernels_release_the_gil():
    """The ahead-of-time fletcher4, lzjb and Edon-R loops run beside Python (the mount's
    FUSE loop, other reads): each call releases the GIL like ``njit(nogil=True)``."""
    mod = _kernels_build()
    words = np.frombuffer(os.urandom(16 << 20), dtype=np.uint32)
    lit = np.frombuffer((b"\0" + b"abcdefgh") * (1 << 20), dtype=np.uint8)  # 8 MiB literals
    dst = np.empty(8 << 20, dtype=np.uint8)
    assert mod.lzjb(lit, dst) == len(dst) and dst[:8].tobytes() == b"abcdefgh"
    q = np.frombuffer(os.urandom(4 << 20), dtype=np.uint64)
    pipe = np.zeros(16, dtype=np.uint64)
    for name, call in (("fletcher4", lambda: mod.fletcher4(words)),
                       ("lzjb", lambda: mod.lzjb(lit, dst)),
                       ("edonr_q512", lambda: mod.edonr_q512(q, pipe))):
        assert _python_runs_during(call) > 0, f"{name} holds the GIL"


def test_aot_kernels_agree_with_numpy_and_python():
    """The numba.pycc build (what scripts/setup.sh makes) against the numpy fletcher4 and
    the pure Python lzjb: random data in both byte orders and every size class, and the
    real lzjb blocks of fxmirror/comp-lzjb plus corrupt inputs."""
    import random

    from backends.zfs import kernels

    mod = _kernels_build()
    assert mod.source_hash() == kernels.source_hash()
    rnd = random.Random(7)
    for n in (0, 4, 512, 4096, 131072, 1 << 20, (1 << 20) + 4096):
        data = rnd.randbytes(n)
        for little in (True, False):
            w = np.frombuffer(data, dtype="<u4" if little else ">u4").astype(np.uint32)
            got = tuple(int(x) for x in mod.fletcher4(w))
            with np.errstate(over="ignore"):
                monkey = kernels._State.aot, kernels._State.jit
                kernels._State.aot, kernels._State.jit = False, False
                try:
                    want = checksum.fletcher4(data, little)
                finally:
                    kernels._State.aot, kernels._State.jit = monkey
            assert got == want, (n, little)
    n = 0
    for raw, lsize in _real_lzjb_blocks():
        dst = np.empty(lsize, dtype=np.uint8)
        assert mod.lzjb(np.frombuffer(raw, dtype=np.uint8), dst) == lsize
        assert dst.tobytes() == compress._lzjb_python(raw, lsize)
        n += 1
    assert n > 3
    dst = np.empty(64, dtype=np.uint8)
    assert mod.lzjb(np.frombuffer(bytes([0xFF, 0x04, 0x05]), dtype=np.uint8), dst) == -2
    assert mod.lzjb(np.frombuffer(bytes([1]), dtype=np.uint8), dst) == -1


def test_the_kernels_source_read_for_the_build_hash_is_inspects():
    """kernels._source (the lines the code covers, read at every ZFS start-up) gives
    exactly inspect.getsource for each kernel: the build's hash stays the one set-up made."""
    import inspect

    from backends.zfs import kernels

    for name, (fn, _sig) in kernels.KERNELS.items():
        assert kernels._source(fn) == inspect.getsource(fn), name
    assert kernels._source(_nested_example) == inspect.getsource(_nested_example)


def _nested_example(x):  # the last line is in a nested function's code
    def inner(y):
        return (y +
                1)
    return inner(
        x)
