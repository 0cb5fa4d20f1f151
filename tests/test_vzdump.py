"""vzdump archives: the fixture VMAs and container tars by sha256, the real VMA sample,
archives built here with GNU tar / zstd / gzip / lzop and a VMA writer following
vma_spec.txt, damaged streams (served up to the damage, resynchronised after it),
the persistent sidecar index, and bounded fuzzing of every parser."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import stat
import struct
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backends.vzdump import lzo
from backends.vzdump.streams import DecodedStream, Gap, detect_codec, scan
from backends.vzdump.structs import VzdumpError
from backends.vzdump.tarindex import build_tree, index_tar
from backends.vzdump.vma import VmaDevice, VmaHeaderInfo, index_vma
from pvfs.discover import Options, discover
from pvfs.errors import PvfsError, UnreadableError
from pvfs.nodes import resolve, walk
from pvfs.source import BytesSource, FileSource

from vma_writer import make_vma
from conftest import FIXTURES, sha256_source, skip_without

PBS = FIXTURES / "pbs"
VZ = PBS / "generated" / "vzdump"
GT_FILE = PBS / "generated" / "ground-truth.json"
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
needs_fixtures = skip_without(GT_FILE, "PBS/vzdump fixtures")
needs_tools = pytest.mark.skipif(not all(shutil.which(t) for t in ("tar", "zstd", "gzip", "lzop")),
                                 reason="tar, zstd, gzip and lzop are needed (deps-apt.txt)")
VMA_STEM = "vzdump-qemu-100-2024_01_15-10_00_00.vma"
TAR_STEM = "vzdump-lxc-101-2024_01_15-11_00_00.tar"


@pytest.fixture(scope="module")
def gt():
    return json.loads(GT_FILE.read_text())


def opts(tmp, **kw):
    return Options(backend_options={"vzdump_index_dir": str(tmp), **kw.pop("backend", {})}, **kw)


def vz_entries(ctx):
    return [e for e in ctx.report if e.layer == "vzdump"]


# --- fixture VMAs -----------------------------------------------------------------------
@needs_fixtures
@pytest.mark.parametrize("ext", ["", ".zst", ".gz", ".lzo"])
def test_fixture_vma_devices_and_configs(tmp_path, gt, ext):
    ctx = discover([str(VZ / (VMA_STEM + ext))], opts(tmp_path))
    base = f"storage/files/{VMA_STEM + ext}"
    for name, dev in gt["vma"]["devices"].items():
        node = resolve(ctx.root, f"{base}/{name}.raw")
        assert node.size == dev["size"]
        assert sha256_source(node.source) == dev["sha256"], name
        view = resolve(ctx.root, f"vms/100/backups/2024-01-15T10:00:00/disk-{name[6:]}.raw")
        assert view.source is node.source
    for c in gt["vma"]["configs"]:
        assert resolve(ctx.root, f"{base}/{c}") is not None
    conf = resolve(ctx.root, "vms/100/backups/2024-01-15T10:00:00/qemu-server.conf")
    assert b"#qmdump#map:" in conf.source.read(0, conf.size)
    assert vz_entries(ctx) == []
    if ext == "":
        assert hashlib.sha256((VZ / VMA_STEM).read_bytes()).hexdigest() == gt["vma"]["sha256"]


@needs_fixtures
def test_sidecar_index_reused_and_outside_input(tmp_path, gt):
    path = str(VZ / (VMA_STEM + ".zst"))
    ctx1 = discover([path], opts(tmp_path / "idx"))
    v1 = next(v for v in ctx1.volumes if v.role == "input")
    assert v1.info["index"] == "built"
    assert v1.info["sidecar"].startswith(str(tmp_path / "idx"))
    assert os.path.exists(v1.info["sidecar"])
    ctx2 = discover([path], opts(tmp_path / "idx"))
    v2 = next(v for v in ctx2.volumes if v.role == "input")
    assert v2.info["index"] == "reused"
    node = resolve(ctx2.root, f"storage/files/{VMA_STEM}.zst/drive-scsi0.raw")
    assert sha256_source(node.source) == gt["vma"]["devices"]["drive-scsi0"]["sha256"]
    ctx3 = discover([path], opts("none"))
    assert next(v for v in ctx3.volumes if v.role == "input").info["index"] == "built"


@needs_fixtures
def test_real_vma_sample_truncated():
    path = PBS / "external" / "dissect-hypervisor-test.vma.gz"
    src = FileSource(path)
    sc = scan(src, detect_codec(src.read(0, 16)))
    hdr, cmap, problems = index_vma(sc)
    assert hdr.md5_ok and hdr.uuid.hex() == "04fc12eb0fed43229aaaf4e412f68096"
    assert hdr.header_size == 12800 and hdr.devices == {1: ("drive-scsi0", 10737418240)}
    assert len(hdr.configs["qemu-server.conf"]) == 417
    dev = VmaDevice(DecodedStream(src, sc.index), 10737418240, cmap.offsets[1], cmap.masks[1], bad="zero")
    assert hashlib.sha256(dev.read(0, 65536)).hexdigest() == \
        "cf4adcf1933a8c9a0a3ff5588e1400e6beea8a32212b3a35ba08c7b08e4e6b1f"
    assert dev.read(65536, 15 * 65536) == bytes(15 * 65536)
    assert hashlib.sha256(dev.read(16 * 65536, 7 * 65536)).hexdigest() == \
        "8c989a3aa590795fa919ccb7d1f28651c85f8a0d9ba00ab22cdd9fb760fa7955"
    ctx = discover([str(path)], Options(backend_options={"vzdump_index_dir": "none"}))
    miss = [e for e in vz_entries(ctx) if e.code == "missing-clusters"]
    assert miss and miss[0].path == "storage/files/dissect-hypervisor-test.vma.gz/drive-scsi0.raw"
    node = resolve(ctx.root, miss[0].path)
    with pytest.raises(UnreadableError):
        node.source.read((10 << 30) - 65536, 4096)


# --- fixture container tars ---------------------------------------------------------------
@needs_fixtures
@pytest.mark.parametrize("ext", [".zst", ".gz", ".lzo"])
def test_fixture_container_tar(tmp_path, gt, ext):
    meta = json.loads((VZ / (TAR_STEM + ".json")).read_text())
    path = VZ / (TAR_STEM + ext)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == meta["compressed"][path.name]
    src = FileSource(path)
    sc = scan(src, detect_codec(src.read(0, 16)))
    members, problems = index_tar(sc)
    assert problems == []
    assert sha256_source(DecodedStream(src, sc.index)) == meta["tar_sha256"]
    assert len(members) == len(meta["listing"])

    ctx = discover([str(path)], opts(tmp_path))
    base = f"storage/files/{path.name}"
    tree = {t["path"]: t for t in gt["snapshots"][2]["archives"]["root.pxar.didx"]["tree"]}
    checked = 0
    for p, t in tree.items():
        node = resolve(ctx.root, base + p)
        assert node is not None, p
        if t["type"] == "file":
            assert sha256_source(node.source) == t["sha256"], p
            assert node.mode == int(t["mode"], 8) and node.uid == t["uid"]
            checked += 1
        elif t["type"] == "symlink":
            assert node.target == t["target"].encode()
        elif t["type"] == "hardlink":
            assert node is resolve(ctx.root, f"{base}/{t['target']}")
        elif t["type"] == "chardev":
            assert stat.S_ISCHR(node.mode) and os.major(node.rdev) == 1 and os.minor(node.rdev) == 3
        elif t["type"] == "fifo":
            assert stat.S_ISFIFO(node.mode)
    assert checked == 10
    notes = resolve(ctx.root, f"{base}/home/user/notes.txt")
    assert notes.xattrs[b"user.comment"] == b"fixture note"
    pct = resolve(ctx.root, "cts/101/backups/2024-01-15T11:00:00/pct.conf")
    assert sha256_source(pct.source) == gt["snapshots"][2]["archives"]["pct.conf.blob"]["plain_sha256"]
    assert resolve(ctx.root, "cts/101/backups/2024-01-15T11:00:00/rootfs/etc/hosts") is \
        resolve(ctx.root, f"{base}/etc/hosts")
    sparse = resolve(ctx.root, f"{base}/var/lib/sparse.img")
    assert sparse.size == 8 << 20
    assert [s for _, _, s in sparse.source.block_status()] == ["data", "unmapped", "data", "unmapped"]
    assert vz_entries(ctx) == []


@needs_fixtures
@needs_tools
def test_fixture_tar_matches_gnu_tar_extraction(tmp_path):
    """Every regular file, as GNU tar itself extracts it (sparse file included)."""
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["tar", "--sparse", "-xf", str(VZ / (TAR_STEM + ".zst")), "-C", str(out)], check=True)
    ctx = discover([str(VZ / (TAR_STEM + ".zst"))], opts(tmp_path / "idx"))
    n = 0
    for root, _dirs, files in os.walk(out):
        for f in files:
            full = os.path.join(root, f)
            if not os.path.isfile(full) or os.path.islink(full):
                continue
            rel = os.path.relpath(full, out)
            node = resolve(ctx.root, f"storage/files/{TAR_STEM}.zst/{rel}")
            with open(full, "rb") as fh:
                assert sha256_source(node.source) == hashlib.sha256(fh.read()).hexdigest(), rel
            n += 1
    assert n >= 14


# --- archives built here -------------------------------------------------------------------
def _disk(size, seed):
    r = random.Random(seed)
    b = bytearray(size)
    for _ in range(size // 20000 + 1):
        o = r.randrange(size)
        n = min(size - o, r.randrange(1, 9000))
        b[o:o + n] = r.randbytes(n) if r.random() < 0.5 else bytes([r.randrange(256)]) * n
    return bytes(b)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("vma")
    devs = {"drive-scsi0": _disk(3 << 20, 1), "drive-efidisk0": _disk(131072 + 4096, 2)}
    vma, extents = make_vma(devs, {"qemu-server.conf": b"memory: 1024\n"}, per_extent=5)
    (d / "vzdump-qemu-700-2024_02_02-02_02_02.vma").write_bytes(vma)
    return d, devs, vma, extents


@needs_tools
@pytest.mark.parametrize("comp", ["raw", "zstd", "zstd-multi", "gzip", "gzip-multi", "lzop"])
def test_built_vma_all_compressions(built, tmp_path, comp):
    d, devs, vma, _ = built
    name = "vzdump-qemu-700-2024_02_02-02_02_02.vma"
    src = d / name
    if comp == "raw":
        path = src
    else:
        ext = {"zstd": ".zst", "gzip": ".gz", "lzop": ".lzo"}[comp.split("-")[0]]
        path = tmp_path / (name + ext)
        if comp == "zstd":
            subprocess.run(["zstd", "-q", "--threads=2", str(src), "-o", str(path)], check=True)
        elif comp == "gzip":
            subprocess.run(f"gzip --rsyncable -c {src} > {path}", shell=True, check=True)
        elif comp == "lzop":
            subprocess.run(["lzop", "-q", "-o", str(path), str(src)], check=True)
        else:  # concatenated frames / members, as readers must accept
            tool = ["zstd", "-q", "-c"] if comp == "zstd-multi" else ["gzip", "-c"]
            third = len(vma) // 3
            with open(path, "wb") as f:
                for part in (vma[:third], vma[third:2 * third], vma[2 * third:]):
                    f.write(subprocess.run(tool, input=part, capture_output=True, check=True).stdout)
    ctx = discover([str(path)], opts(tmp_path / "idx"))
    for dname, data in devs.items():
        node = resolve(ctx.root, f"storage/files/{path.name}/{dname}.raw")
        assert sha256_source(node.source) == hashlib.sha256(data).hexdigest(), dname
        r = random.Random(5)
        for _ in range(20):  # random access, backwards too
            o = r.randrange(len(data))
            n = r.randrange(1, 200000)
            assert node.source.read(o, n) == data[o:o + n]
    assert resolve(ctx.root, "vms/700/backups/2024-02-02T02:02:02/disk-scsi0.raw") is not None
    assert vz_entries(ctx) == []


def _cluster_ok(node, data, dev_cluster):
    c = dev_cluster
    return node.source.read(c * 65536, 65536) == data[c * 65536:(c + 1) * 65536].ljust(65536, b"\0")[:min(65536, len(data) - c * 65536)]


@needs_tools
def test_truncated_vma_zst_serves_everything_before(built, tmp_path):
    d, devs, vma, extents = built
    path = tmp_path / "vzdump-qemu-700-2024_02_02-02_02_02.vma.zst"
    z = subprocess.run(["zstd", "-q", "-c", "--no-check"], input=vma, capture_output=True, check=True).stdout
    path.write_bytes(z[:len(z) * 6 // 10])
    ctx = discover([str(path)], opts(tmp_path / "idx", bad="eio"))
    assert any(e.code == "corrupt-stream" and "truncated" in e.message for e in vz_entries(ctx))
    miss = {e.path.rsplit("/", 1)[1]: e for e in vz_entries(ctx) if e.code == "missing-clusters"
            and e.path.startswith("storage/")}
    node = resolve(ctx.root, f"storage/files/{path.name}/drive-scsi0.raw")
    data = devs["drive-scsi0"]
    good = bad = 0
    for _off, group in extents:
        for dev_id, c, _ in group:
            if dev_id != 1:
                continue
            in_missing = any(o <= c * 65536 < o + n for o, n in miss["drive-scsi0.raw"].ranges)
            if in_missing:
                with pytest.raises(UnreadableError):
                    node.source.read(c * 65536, 65536)
                bad += 1
            else:
                assert node.source.read(c * 65536, 65536) == data[c * 65536:(c + 1) * 65536]
                good += 1
    assert good > 0 and bad > 0


def test_corrupt_extent_in_plain_vma_resynchronises(built, tmp_path):
    d, devs, vma, extents = built
    off1, group1 = extents[1]
    broken = bytearray(vma)
    broken[off1 + 100] ^= 0xFF  # blockinfo of extent 1: its md5 fails
    path = tmp_path / "vzdump-qemu-700-2024_02_02-02_02_02.vma"
    path.write_bytes(bytes(broken))
    ctx = discover([str(path)], opts(tmp_path / "idx", bad="eio"))
    assert any(e.code == "bad-extent" for e in vz_entries(ctx))
    node = resolve(ctx.root, f"storage/files/{path.name}/drive-scsi0.raw")
    data = devs["drive-scsi0"]
    lost = {c for dev_id, c, _ in group1 if dev_id == 1}
    later = [(dev_id, c) for _, g in extents[2:] for dev_id, c, _ in g if dev_id == 1]
    assert later
    for _dev_id, c in later:  # resynchronised: extents after the bad one are all there
        assert node.source.read(c * 65536, 65536) == data[c * 65536:(c + 1) * 65536]
    for c in lost:
        with pytest.raises(UnreadableError):
            node.source.read(c * 65536, 16)


@needs_tools
def test_corrupt_lzop_block_keeps_the_rest(built, tmp_path):
    d, devs, vma, extents = built
    path = tmp_path / "vzdump-qemu-700-2024_02_02-02_02_02.vma.lzo"
    subprocess.run(["lzop", "-q", "-o", str(path), str(d / path.name[:-4])], check=True)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x55  # inside a middle block
    path.write_bytes(bytes(raw))
    ctx = discover([str(path)], opts(tmp_path / "idx", bad="eio"))
    cs = [e for e in vz_entries(ctx) if e.code == "corrupt-stream"]
    assert len(cs) == 1 and "lzop block" in cs[0].message
    node = resolve(ctx.root, f"storage/files/{path.name}/drive-scsi0.raw")
    data = devs["drive-scsi0"]
    ok = failed = 0
    for c in range(len(data) // 65536):
        try:
            assert node.source.read(c * 65536, 65536) == data[c * 65536:(c + 1) * 65536]
            ok += 1
        except UnreadableError:
            failed += 1
    assert failed >= 1 and ok > failed  # one 256 KiB block lost, everything after it read


@needs_tools
def test_corrupt_middle_zstd_frame_resynchronises(built, tmp_path):
    d, devs, vma, extents = built
    cut = [0, extents[4][0], extents[8][0], len(vma)]
    frames = [subprocess.run(["zstd", "-q", "-c"], input=vma[a:b], capture_output=True, check=True).stdout
              for a, b in zip(cut, cut[1:], strict=False)]
    mid = bytearray(frames[1])
    mid[len(mid) // 2] ^= 0xFF
    path = tmp_path / "vzdump-qemu-700-2024_02_02-02_02_02.vma.zst"
    path.write_bytes(frames[0] + bytes(mid) + frames[2])
    ctx = discover([str(path)], opts(tmp_path / "idx", bad="eio"))
    assert any(e.code == "corrupt-stream" and "resumed" in e.message for e in vz_entries(ctx))
    node = resolve(ctx.root, f"storage/files/{path.name}/drive-scsi0.raw")
    data = devs["drive-scsi0"]
    for _, g in extents[8:]:  # the third frame decodes after the damaged second one
        for dev_id, c, _ in g:
            if dev_id == 1:
                assert node.source.read(c * 65536, 65536) == data[c * 65536:(c + 1) * 65536]
    for _, g in extents[:4]:
        for dev_id, c, _ in g:
            if dev_id == 1:
                assert node.source.read(c * 65536, 65536) == data[c * 65536:(c + 1) * 65536]


@pytest.fixture(scope="module")
def tree_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ct") / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/hostname").write_bytes(b"ct\n")
    (root / "data").mkdir()
    r = random.Random(3)
    for i in range(40):
        (root / "data" / f"f{i:02d}.bin").write_bytes(r.randbytes(r.randrange(0, 70000)))
    with open(root / "data/sparse", "wb") as f:
        f.write(b"head")
        f.seek(3 << 20)
        f.write(b"tail")
    os.link(root / "etc/hostname", root / "data/hostname-link")
    os.symlink("../etc/hostname", root / "data/sym")
    os.mkfifo(root / "data/fifo")
    os.setxattr(root / "etc/hostname", "user.note", b"hello")
    return root


def _make_tar(tree_dir, path, comp):
    flags = ["--sparse", "--numeric-owner", "--xattrs", "--xattrs-include=user.*", "-p", "--format=posix"]
    tar = subprocess.run(["tar", "cf", "-", *flags, "-C", str(tree_dir), "."], capture_output=True, check=True).stdout
    if comp:
        tar = subprocess.run(comp, input=tar, capture_output=True, check=True).stdout
    path.write_bytes(tar)
    return tar


def _expected_files(tree_dir):
    out = {}
    for root, _dirs, files in os.walk(tree_dir):
        for f in files:
            full = os.path.join(root, f)
            if os.path.islink(full) or not os.path.isfile(full):
                continue
            with open(full, "rb") as fh:
                out[os.path.relpath(full, tree_dir)] = hashlib.sha256(fh.read()).hexdigest()
    return out


@needs_tools
@pytest.mark.parametrize("comp,ext", [(None, ""), (["zstd", "-q", "-c", "--threads=2"], ".zst"),
                                      (["gzip", "-c", "--rsyncable"], ".gz"), (["lzop", "-c"], ".lzo")])
def test_built_container_tar(tree_dir, tmp_path, comp, ext):
    path = tmp_path / f"vzdump-lxc-800-2024_03_03-03_03_03.tar{ext}"
    _make_tar(tree_dir, path, comp)
    ctx = discover([str(path)], opts(tmp_path / "idx"))
    base = f"storage/files/{path.name}"
    want = _expected_files(tree_dir)
    for rel, h in want.items():
        assert sha256_source(resolve(ctx.root, f"{base}/{rel}").source) == h, rel
    assert len(want) == 43
    assert resolve(ctx.root, f"{base}/data/hostname-link") is resolve(ctx.root, f"{base}/etc/hostname")
    assert resolve(ctx.root, f"{base}/data/sym").target == b"../etc/hostname"
    assert resolve(ctx.root, f"{base}/etc/hostname").xattrs[b"user.note"] == b"hello"
    assert stat.S_ISFIFO(resolve(ctx.root, f"{base}/data/fifo").mode)
    assert resolve(ctx.root, "cts/800/backups/2024-03-03T03:03:03/rootfs/data/f00.bin") is not None
    assert vz_entries(ctx) == []


@needs_tools
def test_truncated_tar_gz_serves_members_before(tree_dir, tmp_path):
    path = tmp_path / "vzdump-lxc-800-2024_03_03-03_03_03.tar.gz"
    _make_tar(tree_dir, path, ["gzip", "-c"])
    raw = path.read_bytes()
    path.write_bytes(raw[:len(raw) // 2])
    ctx = discover([str(path)], opts(tmp_path / "idx", bad="eio"))
    assert any(e.code == "corrupt-stream" for e in vz_entries(ctx))
    want = _expected_files(tree_dir)
    served = 0
    for rel, h in want.items():
        node = resolve(ctx.root, f"storage/files/{path.name}/{rel}")
        if node is None:
            continue
        try:
            if sha256_source(node.source) == h:
                served += 1
        except UnreadableError:
            pass
    assert 5 <= served < len(want)


def test_corrupt_tar_header_resynchronises(tree_dir, tmp_path):
    path = tmp_path / "vzdump-lxc-800-2024_03_03-03_03_03.tar"
    tar = bytearray(_make_tar(tree_dir, path, None))
    members = index_tar([(0, bytes(tar))])[0]
    victim = next(m for m in members if m["path"].endswith("f05.bin"))
    hdr = victim["data"] - 512  # its ustar header (pax header before it)
    tar[hdr + 20] ^= 0xFF
    path.write_bytes(bytes(tar))
    ctx = discover([str(path)], opts(tmp_path / "idx"))
    assert any(e.code == "bad-header" for e in vz_entries(ctx))
    want = _expected_files(tree_dir)
    later = [m["path"][2:] for m in members if m["data"] > victim["data"] + 4096 and m["type"] == "file"]
    assert later
    for rel in later:
        assert sha256_source(resolve(ctx.root, f"storage/files/{path.name}/{rel}").source) == want[rel]


def test_not_a_vzdump_archive_is_left_alone(tmp_path):
    p = tmp_path / "vzdump-qemu-1-2024_01_01-00_00_00.vma.zst"
    import zstandard

    p.write_bytes(zstandard.ZstdCompressor().compress(b"just text, not a VMA" * 1000))
    ctx = discover([str(p)], opts(tmp_path / "idx"))
    assert next(v for v in ctx.volumes if v.role == "input").claimed_by != "vzdump"


# --- fuzz ---------------------------------------------------------------------------------
def _mutate(base, data):
    b = bytearray(base)
    for i in range(0, len(data) - 2, 3):
        b[int.from_bytes(data[i:i + 2], "little") * 7919 % len(b)] = data[i + 2]
    return bytes(b)


_VMA_SMALL, _ = make_vma({"drive-scsi0": _disk(300000, 7)}, {"qemu-server.conf": b"x: 1\n"}, per_extent=3)


@FUZZ
@given(st.binary(max_size=60), st.integers(0, 200000))
def test_fuzz_vma(data, cut):
    raw = _mutate(_VMA_SMALL, data)[:max(0, len(_VMA_SMALL) - cut)]
    try:
        VmaHeaderInfo(raw[:16384])
    except VzdumpError:
        pass
    try:
        hdr, cmap, problems = index_vma([(0, raw)])
        src = BytesSource(raw)
        for dev_id, (_name, size) in hdr.devices.items():
            dev = VmaDevice(src, size, cmap.offsets[dev_id], cmap.masks[dev_id], bad="zero")
            dev.read(0, min(size, 1 << 20))
            dev.block_status()
    except PvfsError:
        pass


@FUZZ
@given(st.binary(max_size=300), st.integers(1, 1 << 16))
def test_fuzz_lzo(data, dst_len):
    try:
        out = lzo.decompress(data, dst_len)
        assert len(out) == dst_len
    except lzo.LzoError:
        pass


_LZO_REF = None


@pytest.mark.skipif(not shutil.which("lzop"), reason="lzop is needed (deps-apt.txt)")
@FUZZ
@given(st.binary(max_size=60), st.sampled_from(["lzop", "zstd", "gzip"]), st.integers(0, 3000))
def test_fuzz_compressed_streams(data, codec, cut):
    global _LZO_REF
    if _LZO_REF is None:
        plain = _VMA_SMALL
        _LZO_REF = {c: subprocess.run(cmd, input=plain, capture_output=True, check=True).stdout
                    for c, cmd in (("lzop", ["lzop", "-c"]), ("zstd", ["zstd", "-q", "-c"]), ("gzip", ["gzip", "-c"]))}
    base = _LZO_REF[codec]
    raw = _mutate(base, data)[:max(20, len(base) - cut)]
    src = BytesSource(raw)
    try:
        sc = scan(src, detect_codec(raw[:16]))
        pieces = [p for p in sc]
        ds = DecodedStream(src, sc.index, bad="zero")
        if ds.size:
            ds.read(0, ds.size)
            ds.read(ds.size // 2, ds.size - ds.size // 2)
        assert all(isinstance(p, (tuple, Gap)) for p in pieces)
    except PvfsError:
        pass


@FUZZ
@given(st.binary(max_size=90), st.integers(0, 20000))
def test_fuzz_tar(data, cut):
    base = _TAR_SMALL
    raw = _mutate(base, data)[:max(0, len(base) - cut)]
    try:
        members, problems = index_tar([(0, raw)])
        root = build_tree(members, BytesSource(raw), "zero")
        for _p, node in walk(root):
            if node.kind == "file":
                node.source.read(0, min(node.size, 4096))
    except PvfsError:
        pass


def _small_tar():
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for i in range(6):
            data = bytes([i]) * (i * 700)
            ti = tarfile.TarInfo(f"./d{i % 2}/f{i}")
            ti.size = len(data)
            ti.pax_headers = {"SCHILY.xattr.user.x": "v"}
            tf.addfile(ti, io.BytesIO(data))
        ti = tarfile.TarInfo("./d0/link")
        ti.type = tarfile.LNKTYPE
        ti.linkname = "./d0/f0"
        tf.addfile(ti)
    return buf.getvalue()


_TAR_SMALL = _small_tar()


@needs_tools
def test_gzip_checkpoints_serve_backward_reads(tmp_path, monkeypatch):
    from backends.vzdump import streams
    from pvfs.cache import METADATA_CACHE

    monkeypatch.setattr(streams, "GZIP_CHECKPOINT_EVERY", 2 << 20)
    r = random.Random(9)
    data = b"".join(r.randbytes(100) + b"z" * r.randrange(900) for _ in range(16000))
    path = tmp_path / "x.gz"
    path.write_bytes(subprocess.run(["gzip", "-c"], input=data, capture_output=True, check=True).stdout)
    src = FileSource(path)
    sc = scan(src, "gzip")
    list(sc)
    ds = DecodedStream(src, sc.index)
    assert ds.read(0, ds.size) == data
    assert len(ds._gz_points[0]) >= 3  # one every 2 MiB of output
    METADATA_CACHE.clear()
    ds._cursors.clear()
    for o in sorted((r.randrange(len(data)) for _ in range(25)), reverse=True):
        n = r.randrange(1, 1 << 20)
        assert ds.read(o, n) == data[o:o + n]


@needs_fixtures
def test_tar_sidecar_reused(tmp_path):
    path = str(VZ / (TAR_STEM + ".lzo"))
    ctx1 = discover([path], opts(tmp_path))
    ctx2 = discover([path], opts(tmp_path))
    infos = [next(v for v in c.volumes if v.role == "input").info for c in (ctx1, ctx2)]
    assert [i["index"] for i in infos] == ["built", "reused"] and infos[1]["members"] == 33
    a = resolve(ctx1.root, f"storage/files/{TAR_STEM}.lzo/usr/share/doc/README")
    b = resolve(ctx2.root, f"storage/files/{TAR_STEM}.lzo/usr/share/doc/README")
    assert sha256_source(b.source) == sha256_source(a.source) == \
        "abc82f470e140d319a854eab1b8fbb94adae8cf4f8de3e683475abdc87b43730"


@needs_tools
def test_seek_cache_for_single_frame_zstd(built, tmp_path, monkeypatch):
    from backends.vzdump import streams

    monkeypatch.setattr(streams, "SEEK_CACHE_MIN", 0)
    d, devs, vma, _ = built
    path = tmp_path / "in" / "vzdump-qemu-700-2024_02_02-02_02_02.vma.zst"
    path.parent.mkdir()
    path.write_bytes(subprocess.run(["zstd", "-q", "-c", "-T2"], input=vma, capture_output=True, check=True).stdout)
    idx = tmp_path / "idx"
    for round_ in ("built", "reused"):
        ctx = discover([str(path)], opts(idx))
        info = next(v for v in ctx.volumes if v.role == "input").info
        assert info["index"] == round_
        assert info["seek_cache"].startswith(str(idx)) and os.path.exists(info["seek_cache"])
        node = resolve(ctx.root, f"storage/files/{path.name}/drive-scsi0.raw")
        assert node.source.stream.shadow is not None
        data = devs["drive-scsi0"]
        r = random.Random(2)
        for _ in range(30):
            o = r.randrange(len(data))
            n = r.randrange(1, 300000)
            assert node.source.read(o, n) == data[o:o + n]
    assert os.listdir(path.parent) == [path.name]  # nothing written beside the input
    ctx = discover([str(path)], opts(tmp_path / "idx2", backend={"vzdump_seek_cache": "off"}))
    assert "seek_cache" not in next(v for v in ctx.volumes if v.role == "input").info


def test_tar_acl_records_become_posix_acl_xattrs():
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("./home/user")
        ti.type = tarfile.DIRTYPE
        ti.mode = 0o750
        ti.pax_headers = {"SCHILY.acl.access": "user::rwx,user:1001:r-x\t#effective:r-x,group::r-x,mask::r-x,other::---",
                          "SCHILY.acl.default": "user::rwx,group::r-x,other::---,group:50:rw-"}
        tf.addfile(ti)
    members, problems = index_tar([(0, buf.getvalue())])
    root = build_tree(members, BytesSource(buf.getvalue()), "eio")
    node = resolve(root, "home/user")
    acc = set(struct.iter_unpack("<HHI", node.xattrs[b"system.posix_acl_access"][4:]))
    assert acc == {(1, 7, 0xFFFFFFFF), (2, 5, 1001), (4, 5, 0xFFFFFFFF), (0x10, 5, 0xFFFFFFFF), (0x20, 0, 0xFFFFFFFF)}
    dfl = set(struct.iter_unpack("<HHI", node.xattrs[b"system.posix_acl_default"][4:]))
    assert (8, 6, 50) in dfl and node.mode & 0o777 == 0o750


def test_hostile_vma_device_sizes_cost_no_memory(tmp_path):
    """255 devices of 16 TiB declared by a tiny archive: maps are calloc'd, missing ranges come
    from the clusters seen, the sidecar is sparse."""
    import resource

    from backends.vzdump.vma import ClusterMap

    vma, _ = make_vma({"drive-scsi0": b"x" * 65536}, {})

    def hostile(ndev, size):
        head = bytearray(vma[:12800])
        for dev_id in range(2, ndev + 1):
            struct.pack_into(">IIQ", head, 4096 + dev_id * 32, struct.unpack_from(">I", head, 4096 + 32)[0], 0, size)
        head[32:48] = bytes(16)
        head[32:48] = hashlib.md5(bytes(head)).digest()
        return bytes(head) + vma[12800:]

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    raw = hostile(255, (1 << 28) * 65536)
    hdr, cmap, problems = index_vma([(0, raw)])
    assert len(hdr.devices) == 255 and problems == []
    arrays = cmap.to_arrays()
    again = ClusterMap.from_arrays(hdr.devices, arrays)
    for dev_id in range(2, 256):
        dev = VmaDevice(BytesSource(raw), 1 << 44, again.offsets[dev_id], again.masks[dev_id],
                        seen=again.seen(dev_id))
        assert dev.missing_ranges() == [(0, 1 << 44)]
        assert dev.block_status(0, 1 << 34) == [(0, 1 << 34, "unreadable")]
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 300
    assert sum(a.nbytes for a in arrays.values()) < 4096

    path = tmp_path / "vzdump-qemu-9-2024_01_01-00_00_00.vma"
    path.write_bytes(hostile(3, 1 << 40))
    ctx = discover([str(path)], opts(tmp_path / "idx"))
    miss = [e for e in ctx.report if e.code == "missing-clusters" and e.path.startswith("storage/")]
    assert len(miss) == 2 and all(e.ranges == ((0, 1 << 40),) for e in miss)
    node = resolve(ctx.root, f"storage/files/{path.name}/drive-scsi0.raw")
    assert node.source.read(0, 65536) == b"x" * 65536


def test_garbage_between_extents_misaligned(built, tmp_path):
    """1000 foreign bytes after extent 3 shift every later extent off the 512-byte grid."""
    d, devs, vma, extents = built
    cut = extents[3][0]
    junk = random.Random(1).randbytes(1000) + b"VMAE" + bytes(600)  # a fake magic too
    path = tmp_path / "vzdump-qemu-700-2024_02_02-02_02_02.vma"
    path.write_bytes(vma[:cut + 512] + junk + vma[cut + 512:])  # inside extent 3's data
    ctx = discover([str(path)], opts(tmp_path / "idx", bad="eio"))
    assert any(e.code == "bad-extent" for e in vz_entries(ctx))
    node = resolve(ctx.root, f"storage/files/{path.name}/drive-scsi0.raw")
    data = devs["drive-scsi0"]
    for _, g in extents[:3] + extents[5:]:
        for dev_id, c, _ in g:
            if dev_id == 1:
                assert node.source.read(c * 65536, 65536) == data[c * 65536:(c + 1) * 65536]


def test_side_files_in_the_proxmox_view(built, tmp_path):
    d, devs, vma, _ = built
    folder = tmp_path / "dump"
    folder.mkdir()
    base = "vzdump-qemu-700-2024_02_02-02_02_02"
    (folder / f"{base}.vma").write_bytes(vma)
    (folder / f"{base}.log").write_text("INFO: starting new backup job\n")
    (folder / f"{base}.notes").write_text("before the upgrade\n")
    ctx = discover([str(folder / f"{base}.vma")], opts(tmp_path / "idx"))
    notes = resolve(ctx.root, "vms/700/backups/2024-02-02T02:02:02/notes")
    assert notes.source.read(0, 100) == b"before the upgrade\n"
    log = resolve(ctx.root, "vms/700/backups/2024-02-02T02:02:02/vzdump.log")
    assert log.source.read(0, 9) == b"INFO: sta"


def test_bad_sectors_under_a_plain_vma(built, tmp_path):
    """A ddrescue mapfile marks 4 KiB inside extent 2's data unreadable: only the cluster
    stored there is lost; the rest of that extent and every later extent read back."""
    d, devs, vma, extents = built
    off2, group2 = extents[2]
    bad_at = off2 + 512 + 4096  # second stored block of extent 2
    path = tmp_path / "vzdump-qemu-700-2024_02_02-02_02_02.vma"
    path.write_bytes(vma)
    size = len(vma)
    (tmp_path / (path.name + ".map")).write_text(
        "# Mapfile. Created by GNU ddrescue\n0x0 + 1\n"
        f"0x0 {bad_at:#x} +\n{bad_at:#x} 0x1000 -\n{bad_at + 4096:#x} {size - bad_at - 4096:#x} +\n")
    ctx = discover([str(path)], opts(tmp_path / "idx", bad="eio"))
    data = devs["drive-scsi0"]
    node = resolve(ctx.root, f"storage/files/{path.name}/drive-scsi0.raw")
    # which cluster of extent 2 holds the bad block (clusters stored in blockinfo order)
    pos, victim = off2 + 512, None
    for dev_id, c, cdata in group2:
        nblk = sum(1 for j in range(16) if any(cdata[j * 4096:(j + 1) * 4096]))
        if pos <= bad_at < pos + nblk * 4096:
            victim = (dev_id, c)
        pos += nblk * 4096
    assert victim is not None
    lost = ok = 0
    for _, g in extents:
        for dev_id, c, _ in g:
            if dev_id != 1:
                continue
            try:
                assert node.source.read(c * 65536, 65536) == data[c * 65536:(c + 1) * 65536]
                ok += 1
            except UnreadableError:
                lost += 1
                assert (dev_id, c) == victim
    assert lost == (1 if victim[0] == 1 else 0) and ok > 40


def test_damaged_compressed_archive_is_recognised_by_name(tmp_path):
    """A ``.vma.gz`` whose gzip header is destroyed: reported as a damaged vzdump archive,
    not turned into a raw disk of compressed bytes."""
    from conftest import require_fixture

    src = require_fixture("pbs", "generated", "vzdump", "vzdump-qemu-100-2024_01_15-10_00_00.vma.gz")
    data = bytearray(src.read_bytes())
    data[:10] = bytes(10)  # the gzip member header
    p = tmp_path / src.name
    p.write_bytes(bytes(data))
    ctx = discover([str(p)], opts(tmp_path / "idx"))
    errs = [e for e in ctx.report if e.layer == "vzdump" and e.severity == "error"]
    assert len(errs) == 1 and "gzip header is destroyed" in errs[0].message, \
        [e.line() for e in ctx.report]
    assert not [v for v in ctx.volumes if v.role == "disk"]  # no raw disk.raw of gzip bytes
    assert not ctx.vms_root.children()


def test_truncated_vma_default_policy_is_eio(tmp_path):
    """The loss policy for vzdump: a .vma.zst cut in half reports the lost ranges at scan;
    reading them fails with EIO by default and gives zeros only with --bad zero."""
    from conftest import require_fixture

    src = require_fixture("pbs", "generated", "vzdump", "vzdump-qemu-100-2024_01_15-10_00_00.vma.zst")
    data = src.read_bytes()
    p = tmp_path / src.name
    p.write_bytes(data[:len(data) // 2])
    path = "vms/100/backups/2024-01-15T10:00:00/disk-scsi0.raw"
    ctx = discover([str(p)], opts(tmp_path / "idx"))
    lost = [e.ranges for e in ctx.report if e.path == path and e.severity == "error"]
    assert len(lost) == 1 and "read as EIO" in [e.message for e in ctx.report if e.path == path][0]
    off, n = lost[0][0]
    node = resolve(ctx.root, path)
    with pytest.raises(UnreadableError):
        node.source.read(off, n)
    zctx = discover([str(p)], opts(tmp_path / "idx2", bad="zero"))
    assert resolve(zctx.root, path).source.read(off, n) == bytes(n)
