"""PBS datastores: every archive and file of the fixture manifest by sha256, the damaged
variants' exact damage entries, fallback datastores, encryption, and bounded fuzzing."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import stat
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backends.pbs.blob import CryptConfig, EncryptedBlobError, blob_kind, decode_blob, encode_blob, load_keyfile
from backends.pbs.index import ChunkPool, ChunkStore, IndexSource, open_index
from backends.pbs.pxar import PxarArchive
from backends.pbs.structs import FIXED_SIZED_CHUNK_INDEX_1_0, PbsError
from pvfs.discover import Options, discover
from pvfs.errors import PvfsError, UnreadableError
from pvfs.nodes import resolve, walk
from pvfs.source import BytesSource, FileSource, PatchedSource

from conftest import FIXTURES, fixture_bytes, sha256_source, skip_without

GEN = FIXTURES / "pbs" / "generated"
DS = GEN / "datastore"
pytestmark = skip_without(GEN / "ground-truth.json", "PBS fixtures")
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def gt():
    return json.loads((GEN / "ground-truth.json").read_text())


@pytest.fixture(scope="module")
def ctx():
    return discover([str(DS)], Options())


def pbs_entries(ctx, severities=("error", "warning")):
    return [e for e in ctx.report if e.layer == "pbs" and e.severity in severities]


def copy_store(src, dst):
    shutil.copytree(src, dst)
    for root, _dirs, files in os.walk(dst):
        os.chmod(root, 0o755)
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)
    return dst


# --- readers directly --------------------------------------------------------------
def test_every_index_reassembles_to_manifest_sha256(gt):
    pool = ChunkPool()
    pool.add(ChunkStore(str(DS), "datastore"))
    n = 0
    for snap in gt["snapshots"]:
        for fn, a in snap["archives"].items():
            if a["kind"] not in ("fidx", "didx"):
                continue
            ix = open_index(str(DS / snap["path"] / fn))
            assert ix.problems == []
            assert ix.size == a["size"]
            assert ix.index_csum.hex() == a["index_csum"]
            assert sha256_source(IndexSource(ix, pool)) == a["sha256"], fn
            n += 1
    assert n == 9


def test_every_blob_decodes_to_manifest_sha256(gt):
    n = 0
    for snap in gt["snapshots"]:
        for fn, a in snap["archives"].items():
            if a["kind"] != "blob":
                continue
            raw = (DS / snap["path"] / fn).read_bytes()
            if "magic" in a:
                assert blob_kind(raw) == {"compressed": "zstd", "uncompressed": "uncompressed"}[a["magic"]]
            plain = decode_blob(raw)
            assert len(plain) == a["plain_size"]
            assert hashlib.sha256(plain).hexdigest() == a["plain_sha256"]
            n += 1
    assert n == 14


def test_streams_fixture_pxar_v1_and_split_v2(gt):
    streams = GEN / "streams"
    for name, want in gt["streams"].items():
        assert hashlib.sha256((streams / name).read_bytes()).hexdigest() == want
    tree = {t["path"]: t for t in gt["snapshots"][2]["archives"]["root.pxar.didx"]["tree"]}
    v1 = PxarArchive(FileSource(streams / "root.pxar"))
    v2 = PxarArchive(FileSource(streams / "root.mpxar"), FileSource(streams / "root.ppxar"))
    for arc in (v1, v2):
        found = {("/" + p) if p else "/": node for p, node in walk(arc.root())}
        assert set(found) == set(tree)
        check_tree(found, tree)
    assert v2.version == 2


def check_tree(found, tree):
    """Compare nodes with the ground-truth listing: type, mode, owner, time, data, links."""
    kinds = {"dir": "dir", "file": "file", "symlink": "symlink", "chardev": "special", "fifo": "special"}
    files = 0
    for path, t in tree.items():
        node = found[path]
        if t["type"] == "hardlink":
            assert node is found["/" + t["target"]], path
            continue
        assert node.kind == kinds[t["type"]], path
        assert node.mode == int(t["mode"], 8), path
        assert (node.uid, node.gid) == (t["uid"], t["gid"]), path
        assert node.mtime == pytest.approx(t["mtime"][0] + t["mtime"][1] / 1e9, abs=1e-6), path
        if t["type"] == "file":
            assert node.size == t["size"]
            assert hashlib.sha256(node.source.read(0, node.size)).hexdigest() == t["sha256"], path
            files += 1
        if t["type"] == "symlink":
            assert node.target == t["target"].encode()
        if t["type"] == "chardev":
            assert (os.major(node.rdev), os.minor(node.rdev)) == tuple(t["rdev"])
        for k, v in t.get("xattrs", {}).items():
            assert node.xattrs[k.encode()] == v.encode()
    assert files == 10
    # ACL (user 1001 r-x, group_obj r-x) and file capabilities, as POSIX xattrs.
    acl = found["/home/user"].xattrs[b"system.posix_acl_access"]
    ents = set(struct.iter_unpack("<HHI", acl[4:]))
    assert struct.unpack("<I", acl[:4]) == (2,)
    assert (2, 5, 1001) in ents and (4, 5, 0xFFFFFFFF) in ents
    assert found["/usr/bin/tool"].xattrs[b"security.capability"][:4] == struct.pack("<I", 0x02000001)
    assert found["/usr/bin/tool"].nlink == 2


# --- end to end through discovery ---------------------------------------------------
def test_tree_paths_and_contents(ctx, gt):
    n = 0
    for snap in gt["snapshots"]:
        base = f"storage/pbs/datastore/{snap['path']}"
        for fn, a in snap["archives"].items():
            if a["kind"] == "blob":
                node = resolve(ctx.root, f"{base}/{fn[:-5]}")
                assert sha256_source(node.source) == a["plain_sha256"], fn
            elif a["kind"] == "fidx":
                node = resolve(ctx.root, f"{base}/{fn[:-5]}")
                assert sha256_source(node.source) == a["sha256"], fn
            elif fn.endswith(".pxar.didx") or fn.endswith(".mpxar.didx"):
                name = fn.split(".")[0] + ".pxar"
                root = resolve(ctx.root, f"{base}/{name}")
                found = {("/" + p) if p else "/": nd for p, nd in walk(root)}
                check_tree(found, {t["path"]: t for t in a["tree"]})
            elif fn == "catalog.pcat1.didx":
                node = resolve(ctx.root, f"{base}/catalog.pcat1")
                assert sha256_source(node.source) == a["sha256"]
            else:
                continue
            n += 1
    assert n == 22
    assert pbs_entries(ctx) == []


def test_proxmox_view(ctx, gt):
    s0 = gt["snapshots"][0]
    d = "vms/100/backups/2024-01-15T10:00:00Z"
    assert sha256_source(resolve(ctx.root, f"{d}/disk-scsi0.raw").source) == \
        s0["archives"]["drive-scsi0.img.fidx"]["sha256"]
    assert sha256_source(resolve(ctx.root, f"{d}/disk-efidisk0.raw").source) == \
        s0["archives"]["drive-efidisk0.img.fidx"]["sha256"]
    assert sha256_source(resolve(ctx.root, f"{d}/qemu-server.conf").source) == \
        s0["archives"]["qemu-server.conf.blob"]["plain_sha256"]
    assert resolve(ctx.root, "vms/200/backups/2024-01-17T09:30:00Z/disk-virtio0.raw").size == 4259840
    ct = resolve(ctx.root, "cts/101/backups/2024-01-15T11:00:00Z/rootfs")
    assert ct is resolve(ctx.root, "storage/pbs/datastore/ct/101/2024-01-15T11:00:00Z/root.pxar")
    hosts = resolve(ctx.root, "cts/101/backups/2024-01-15T11:00:00Z/rootfs/etc/hosts")
    assert hashlib.sha256(hosts.source.read(0, hosts.size)).hexdigest() == \
        "82cd71042a904a505542073a55daed7ff4f8e68c80d170614c39cbf300ae5d17"
    assert resolve(ctx.root, "storage/pbs/datastore/ns/testns/ns/empty-child") is None  # no snapshots: nothing shown
    vol = next(v for v in ctx.volumes if v.path.endswith("2024-01-16T10:00:00Z/drive-scsi0.img"))
    assert vol.role == "disk" and vol.vm_paths == ["vms/100/backups/2024-01-16T10:00:00Z/disk-scsi0.raw"]


def test_holes_are_zero_in_block_status(ctx):
    node = resolve(ctx.root, "storage/pbs/datastore/vm/100/2024-01-15T10:00:00Z/drive-scsi0.img")
    st_ = node.source.block_status()
    zero = [(o, n) for o, n, s in st_ if s == "zero"]
    assert zero == [(4 << 20, 4 << 20), (16 << 20, 8 << 20)]  # chunks 1, 4 and 5


# --- damaged variants ------------------------------------------------------------------
def _damage_by_code(ctx, code):
    return sorted((e.path, e.ranges) for e in ctx.report if e.layer == "pbs" and e.code == code)


@pytest.mark.parametrize("verify", ["exists", "full"])
def test_bad_crc_variant(gt, verify):
    dv = gt["damaged_variants"]["datastore-bad-crc"]
    ctx = discover([str(GEN / "datastore-bad-crc")], Options(backend_options={"pbs_verify": verify}))
    lo, hi = dv["affected_byte_range"]
    # Reading every affected image reports the chunk (with "exists" only reading finds it).
    for a in dv["affected"]:
        node = resolve(ctx.root, f"storage/pbs/datastore-bad-crc/{a[:-5]}")
        with pytest.raises(UnreadableError):  # EIO by default: a lost chunk is never zeros
            node.source.read(lo, hi - lo)
    want = []
    for a in dv["affected"]:
        snap = a.rsplit("/", 1)[0]
        want.append((f"storage/pbs/datastore-bad-crc/{a[:-5]}", ((lo, hi - lo),)))
        want.append((f"vms/100/backups/{snap.split('/')[-1]}/disk-scsi0.raw", ((lo, hi - lo),)))
    assert _damage_by_code(ctx, "bad-chunk") == sorted(want)
    msgs = {e.message for e in ctx.report if e.code == "bad-chunk"}
    assert all(dv["bad_crc_chunk"] in m and "CRC32 mismatch" in m for m in msgs)
    assert {e.code for e in pbs_entries(ctx)} == {"bad-chunk"}


def test_missing_chunk_variant(gt):
    dv = gt["damaged_variants"]["datastore-missing-chunk"]
    ctx = discover([str(GEN / "datastore-missing-chunk")], Options())
    lo, hi = dv["affected_byte_range"]
    want = []
    for a in dv["affected"]:
        want.append((f"storage/pbs/datastore-missing-chunk/{a[:-5]}", ((lo, hi - lo),)))
        want.append((f"vms/100/backups/{a.split('/')[2]}/disk-scsi0.raw", ((lo, hi - lo),)))
    assert _damage_by_code(ctx, "missing-chunk") == sorted(want)
    assert {e.code for e in pbs_entries(ctx)} == {"missing-chunk"}
    assert all(dv["missing_chunk"] in e.message for e in pbs_entries(ctx))
    node = resolve(ctx.root, f"storage/pbs/datastore-missing-chunk/{dv['affected'][0][:-5]}")
    with pytest.raises(UnreadableError):  # the default policy: EIO, not a silent hole
        node.source.read(lo, 4096)
    assert ("unreadable" in {s for _, _, s in node.source.block_status(lo, hi - lo)})
    assert all("read as EIO" in e.message for e in pbs_entries(ctx))


def test_missing_chunk_zero_policy(gt):
    """``--bad zero``: the lost chunk reads as zeros, and the report says so."""
    dv = gt["damaged_variants"]["datastore-missing-chunk"]
    ctx = discover([str(GEN / "datastore-missing-chunk")], Options(bad="zero"))
    lo, hi = dv["affected_byte_range"]
    node = resolve(ctx.root, f"storage/pbs/datastore-missing-chunk/{dv['affected'][0][:-5]}")
    assert node.source.read(lo, hi - lo) == bytes(hi - lo)
    assert all("zero-filled" in e.message for e in pbs_entries(ctx))


def test_missing_chunk_eio_policy(gt):
    dv = gt["damaged_variants"]["datastore-missing-chunk"]
    ctx = discover([str(GEN / "datastore-missing-chunk")], Options(bad="eio"))
    lo, hi = dv["affected_byte_range"]
    node = resolve(ctx.root, f"storage/pbs/datastore-missing-chunk/{dv['affected'][0][:-5]}")
    with pytest.raises(UnreadableError) as ei:
        node.source.read(lo - 4096, 8192)
    assert ei.value.ranges == [(lo, 4096)]
    assert len(node.source.read(0, lo)) == lo  # everything before it still reads


def test_second_datastore_is_a_fallback(gt):
    dv = gt["damaged_variants"]["datastore-missing-chunk"]
    ctx = discover([str(GEN / "datastore-missing-chunk"), str(DS)], Options())
    assert _damage_by_code(ctx, "missing-chunk") == []
    a = dv["affected"][0]
    node = resolve(ctx.root, f"storage/pbs/datastore-missing-chunk/{a[:-5]}")
    assert sha256_source(node.source) == gt["snapshots"][1]["archives"]["drive-scsi0.img.fidx"]["sha256"]


def test_truncated_fidx_variant(gt):
    dv = gt["damaged_variants"]["datastore-truncated-fidx"]
    ctx = discover([str(GEN / "datastore-truncated-fidx")], Options())
    path = f"storage/pbs/datastore-truncated-fidx/{dv['truncated_index']}"
    msgs = [e for e in ctx.report if e.code == "truncated-index" and e.path == path]
    assert len(msgs) == 1 and dv["expected_error"].split(" != ")[0] in msgs[0].message
    assert f"{dv['new_length']} != 4096 + 32*ceil(size/chunk_size) = {dv['original_length']}" in msgs[0].message
    # 4263 bytes hold 5 whole digests: chunks 0..4 are still served, 5..7 are unreadable.
    img = resolve(ctx.root, path[:-5])
    lost = [e for e in ctx.report if e.code == "truncated-index" and e.path == path[:-5]]
    assert lost[0].ranges == ((5 << 22, 3 << 22),)
    ref = resolve(ctx.root, "storage/pbs/datastore-truncated-fidx/vm/100/2024-01-16T10:00:00Z/drive-scsi0.img")
    assert img.source.read(0, 1 << 20) == ref.source.read(0, 1 << 20)  # chunk 0 shared, intact


# --- damage crafted here: pxar chunk lost, manifest lost, orphans -------------------
def test_lost_pxar_chunk_names_the_files(tmp_path, gt):
    ds = copy_store(DS, tmp_path / "ds")
    chunks = gt["snapshots"][2]["archives"]["root.pxar.didx"]["chunks"]
    end1, digest = chunks[1]
    os.unlink(ds / ".chunks" / digest[:4] / digest)
    ctx = discover([str(ds)], Options())
    ent = [e for e in ctx.report if e.code == "missing-chunk" and e.path.endswith("root.pxar")]
    assert len(ent) == 1
    assert ent[0].ranges == ((chunks[0][0], end1 - chunks[0][0]),)
    assert "/home/user/big.bin" in ent[0].message and "ct/101/2024-01-15T11:00:00Z" in ent[0].message
    # Files outside the lost range still read correctly.
    tree = {t["path"]: t for t in gt["snapshots"][2]["archives"]["root.pxar.didx"]["tree"]}
    node = resolve(ctx.root, "storage/pbs/ds/ct/101/2024-01-15T11:00:00Z/root.pxar/usr/share/doc/README")
    assert hashlib.sha256(node.source.read(0, node.size)).hexdigest() == tree["/usr/share/doc/README"]["sha256"]


def test_lost_payload_chunk_of_split_archive(tmp_path, gt):
    ds = copy_store(DS, tmp_path / "ds")
    a = gt["snapshots"][3]["archives"]["root.ppxar.didx"]
    end0, digest = a["chunks"][0]
    os.unlink(ds / ".chunks" / digest[:4] / digest)
    ctx = discover([str(ds)], Options())
    ent = [e for e in ctx.report if e.code == "missing-chunk"]
    assert len(ent) == 1 and ent[0].ranges == ((0, end0),)
    assert "root.ppxar.didx" in ent[0].message and "/etc/hostname" in ent[0].message


def test_manifest_lost_still_shows_indexes(tmp_path, gt):
    ds = copy_store(DS, tmp_path / "ds")
    snap = gt["snapshots"][0]
    os.unlink(ds / snap["path"] / "index.json.blob")
    ctx = discover([str(ds)], Options())
    node = resolve(ctx.root, f"storage/pbs/ds/{snap['path']}/drive-scsi0.img")
    assert sha256_source(node.source) == snap["archives"]["drive-scsi0.img.fidx"]["sha256"]
    assert [e.code for e in pbs_entries(ctx)] == ["no-manifest"]


def test_manifest_mismatch_and_orphans(tmp_path, gt):
    ds = copy_store(DS, tmp_path / "ds")
    snap = gt["snapshots"][0]
    os.unlink(ds / snap["path"] / "fw.conf.blob")
    orphan = encode_blob(b"orphan data" * 100)
    d = hashlib.sha256(b"orphan data" * 100).hexdigest()
    (ds / ".chunks" / d[:4]).mkdir()
    (ds / ".chunks" / d[:4] / d).write_bytes(orphan)
    ctx = discover([str(ds)], Options())
    codes = sorted((e.code, e.path) for e in ctx.report if e.layer == "pbs")
    assert ("missing-archive", f"storage/pbs/ds/{snap['path']}/fw.conf.blob") in codes
    orph = [e for e in ctx.report if e.code == "orphan-chunks"]
    assert len(orph) == 1 and orph[0].message.startswith("1 chunk files")


def test_probe_dir_only_datastores(tmp_path):
    from backends.pbs.backend import PbsBackend

    b = PbsBackend()
    assert b.probe_dir(str(DS), None) == 100
    assert b.probe_dir(str(tmp_path), None) == 0
    (tmp_path / ".chunks").mkdir()
    (tmp_path / "vm").mkdir()
    assert 0 < b.probe_dir(str(tmp_path), None) < 100


# --- encryption ---------------------------------------------------------------------
KEY = bytes(range(32))


def _keyfile(path, kdf=None, password=b"secret-pass"):
    cfg = CryptConfig(KEY)
    doc = {"created": "2024-01-01T00:00:00Z", "modified": "2024-01-01T00:00:00Z",
           "fingerprint": cfg.fingerprint()}
    if kdf is None:
        doc["kdf"], doc["data"] = None, base64.b64encode(KEY).decode()
    else:
        salt = b"s" * 32
        if kdf == "pbkdf2":
            doc["kdf"] = {"PBKDF2": {"iter": 1000, "salt": base64.b64encode(salt).decode()}}
            dk = hashlib.pbkdf2_hmac("sha256", password, salt, 1000, 32)
        else:
            doc["kdf"] = {"Scrypt": {"n": 1024, "r": 8, "p": 1, "salt": base64.b64encode(salt).decode()}}
            dk = hashlib.scrypt(password, salt=salt, n=1024, r=8, p=1, dklen=32)
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        iv = b"i" * 16
        ct = AESGCM(dk).encrypt(iv, KEY, b"")
        doc["data"] = base64.b64encode(iv + ct[-16:] + ct[:-16]).decode()
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize("kdf", [None, "pbkdf2", "scrypt"])
def test_keyfile_kdfs(tmp_path, monkeypatch, kdf):
    monkeypatch.setenv("PBS_ENCRYPTION_PASSWORD", "secret-pass")
    cfg = load_keyfile(_keyfile(tmp_path / "k.json", kdf))
    assert cfg.enc_key == KEY
    if kdf:
        monkeypatch.setenv("PBS_ENCRYPTION_PASSWORD", "wrong-pass")
        with pytest.raises(PbsError, match="tag mismatch"):
            load_keyfile(tmp_path / "k.json")


def test_encrypted_datastore(tmp_path, monkeypatch):
    """An encrypted VM backup built here: chunks named sha256(plain || id_key)."""
    cfg = CryptConfig(KEY)
    ds = tmp_path / "encds"
    snap = ds / "vm" / "300" / "2024-02-01T00:00:00Z"
    snap.mkdir(parents=True)
    disk = os.urandom(3 << 20) + bytes(1 << 20) + b"tail" * 1000
    cs = 1 << 20
    digests = []
    for i in range(0, len(disk), cs):
        piece = disk[i:i + cs]
        dg = cfg.compute_digest(piece)
        digests.append(dg)
        p = ds / ".chunks" / dg.hex()[:4]
        p.mkdir(parents=True, exist_ok=True)
        (p / dg.hex()).write_bytes(encode_blob(piece, compress=True, crypt=cfg))
    table = b"".join(digests)
    head = (FIXED_SIZED_CHUNK_INDEX_1_0 + bytes(16) + struct.pack("<q", 0) + hashlib.sha256(table).digest()
            + struct.pack("<QQ", len(disk), cs)).ljust(4096, b"\0")
    (snap / "drive-scsi0.img.fidx").write_bytes(head + table)
    (snap / "qemu-server.conf.blob").write_bytes(encode_blob(b"memory: 512\n", crypt=cfg))
    want = hashlib.sha256(disk).hexdigest()

    ctx = discover([str(ds)], Options())
    assert [e.code for e in ctx.report if e.layer == "pbs" and e.code == "encrypted"] == ["encrypted"]
    node = resolve(ctx.root, "storage/pbs/encds/vm/300/2024-02-01T00:00:00Z/drive-scsi0.img")
    with pytest.raises(UnreadableError):  # no key: the chunk cannot be decoded, EIO
        node.source.read(0, 16)
    assert any(e.code == "bad-chunk" and "pass --pbs-keyfile" in e.message for e in ctx.report)

    kf = _keyfile(tmp_path / "k.json")
    ctx = discover([str(ds)], Options(backend_options={"pbs_keyfile": str(kf), "pbs_verify": "full"}))
    node = resolve(ctx.root, "storage/pbs/encds/vm/300/2024-02-01T00:00:00Z/drive-scsi0.img")
    assert sha256_source(node.source) == want
    conf = resolve(ctx.root, "vms/300/backups/2024-02-01T00:00:00Z/qemu-server.conf")
    assert conf.source.read(0, 100) == b"memory: 512\n"
    assert [e.code for e in pbs_entries(ctx)] == ["no-manifest"]  # none was written here


def test_blob_errors():
    good = encode_blob(b"hello world" * 50)
    assert decode_blob(good) == b"hello world" * 50
    with pytest.raises(PbsError, match="no blob magic"):
        decode_blob(b"\0" * 40)
    with pytest.raises(PbsError, match="CRC32 mismatch"):
        decode_blob(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(PbsError, match="shorter than"):
        decode_blob(good[:10])
    with pytest.raises(EncryptedBlobError):
        decode_blob(encode_blob(b"x" * 100, crypt=CryptConfig(KEY)))
    with pytest.raises(PbsError, match="expands beyond"):
        decode_blob(encode_blob(bytes(1 << 20)), limit=4096)


# --- fuzz ---------------------------------------------------------------------------
_BLOB = fixture_bytes(DS / "vm/100/2024-01-15T10:00:00Z/qemu-server.conf.blob")
_FIDX = fixture_bytes(DS / "vm/100/2024-01-15T10:00:00Z/drive-scsi0.img.fidx")
_DIDX = fixture_bytes(DS / "ct/101/2024-01-15T11:00:00Z/root.pxar.didx")
_PXAR = fixture_bytes(GEN / "streams/root.pxar")
_MPXAR = fixture_bytes(GEN / "streams/root.mpxar")


def _mutate(base, data):
    b = bytearray(base)
    for i in range(0, len(data) - 2, 3):
        pos = int.from_bytes(data[i:i + 2], "little") * 7919 % max(1, len(b))
        b[pos] = data[i + 2]
    return bytes(b)


@FUZZ
@given(st.binary(max_size=60), st.integers(0, 400))
def test_fuzz_blob(data, cut):
    for raw in (_mutate(_BLOB, data)[:len(_BLOB) - cut], data):
        try:
            decode_blob(raw, limit=1 << 20)
        except PbsError:
            pass


@FUZZ
@given(st.binary(max_size=60), st.integers(0, 300), st.booleans())
def test_fuzz_index(tmp_path_factory, data, cut, fixed):
    base = _FIDX if fixed else _DIDX
    path = tmp_path_factory.getbasetemp() / "fuzz.idx"
    path.write_bytes(_mutate(base, data)[:len(base) - cut])
    pool = ChunkPool()
    pool.add(ChunkStore(str(DS), "ds"))
    try:
        ix = open_index(str(path))
        src = IndexSource(ix, pool)
        src.read(0, min(src.size, 1 << 16))
        src.block_status()
    except PvfsError:
        pass


@FUZZ
@given(st.binary(max_size=90), st.integers(0, 2000), st.booleans())
def test_fuzz_pxar(data, cut, v2):
    base = _MPXAR if v2 else _PXAR
    payload = BytesSource((GEN / "streams/root.ppxar").read_bytes()) if v2 else None
    arc = PxarArchive(BytesSource(_mutate(base, data)[:len(base) - cut]), payload)
    try:
        for _p, node in walk(arc.root()):
            if node.kind == "file":
                try:
                    node.source.read(0, min(node.size, 4096))
                except PvfsError:
                    pass
    except PvfsError:
        pass


def test_corrupt_pxar_chunk_found_on_read_names_the_files(tmp_path, gt):
    """Without --pbs-verify a corrupt chunk is found by the read; the entry still names files."""
    ds = copy_store(DS, tmp_path / "ds")
    chunks = gt["snapshots"][2]["archives"]["root.pxar.didx"]["chunks"]
    digest = chunks[1][1]
    f = ds / ".chunks" / digest[:4] / digest
    raw = bytearray(f.read_bytes())
    raw[-1] ^= 0xFF
    f.write_bytes(bytes(raw))
    ctx = discover([str(ds)], Options(bad="eio"))
    assert [e for e in ctx.report if e.code == "bad-chunk"] == []  # nothing read it yet
    node = resolve(ctx.root, "storage/pbs/ds/ct/101/2024-01-15T11:00:00Z/root.pxar/home/user/big.bin")
    with pytest.raises(UnreadableError):
        node.source.read(0, node.size)
    ent = [e for e in ctx.report if e.code == "bad-chunk" and e.path.endswith("root.pxar")]
    assert len(ent) == 1 and "CRC32 mismatch" in ent[0].message
    assert ent[0].ranges == ((chunks[0][0], chunks[1][0] - chunks[0][0]),)
    assert "/home/user/big.bin" in ent[0].message
    # the same entry also lands on the container view's path
    assert any(e.code == "bad-chunk" and e.path.startswith("storage/pbs/ds/ct/") for e in ctx.report)


def _node_tree(path):
    """The fixture datastore as pvfs nodes (what a ZFS dataset pvfs opened looks like)."""
    from pvfs.nodes import Dir, File

    d = Dir(mtime=os.path.getmtime(path))
    for e in sorted(os.scandir(path), key=lambda e: e.name):
        if e.is_dir():
            d.add(e.name, _node_tree(e.path))
        else:
            d.add(e.name, File(FileSource(e.path), mtime=e.stat().st_mtime))
    return d


def test_datastore_inside_a_directory_node(gt):
    from backends.pbs.backend import PbsBackend
    from pvfs.discover import Context, run_queue

    ctx = Context(Options())
    node = _node_tree(GEN / "datastore-missing-chunk")
    b = PbsBackend()
    assert b.probe_node(node, "storage/zfs/tank/pbs", ctx) == 100
    assert b.probe_node(_node_tree(GEN / "streams"), "x", ctx) == 0
    b.open_node(node, "storage/zfs/tank/pbs", ctx)
    run_queue(ctx)
    b.finish(ctx)  # the chunk check runs once every datastore is known
    for snap in gt["snapshots"]:
        for fn, a in snap["archives"].items():
            if a["kind"] == "fidx" and not (snap["path"].endswith("16T10:00:00Z") and fn == "drive-scsi0.img.fidx"):
                img = resolve(ctx.root, f"storage/pbs/pbs/{snap['path']}/{fn[:-5]}")
                assert sha256_source(img.source) == a["sha256"], fn
    dv = gt["damaged_variants"]["datastore-missing-chunk"]
    lo, hi = dv["affected_byte_range"]
    assert sorted((e.path, e.ranges) for e in ctx.report if e.code == "missing-chunk") == sorted([
        ("storage/pbs/pbs/vm/100/2024-01-16T10:00:00Z/drive-scsi0.img", ((lo, hi - lo),)),
        ("vms/100/backups/2024-01-16T10:00:00Z/disk-scsi0.raw", ((lo, hi - lo),))])
    tree = {t["path"]: t for t in gt["snapshots"][3]["archives"]["root.mpxar.didx"]["tree"]}
    root = resolve(ctx.root, "storage/pbs/pbs/host/fixturehost/2024-01-15T12:00:00Z/root.pxar")
    check_tree({("/" + p) if p else "/": n for p, n in walk(root)}, tree)


def test_split_archive_without_payload_stream(tmp_path, gt):
    ds = copy_store(DS, tmp_path / "ds")
    snap = gt["snapshots"][3]["path"]
    os.unlink(ds / snap / "root.ppxar.didx")
    ctx = discover([str(ds)], Options(bad="eio"))
    assert "missing-payload" in {e.code for e in pbs_entries(ctx)}
    assert "missing-archive" in {e.code for e in pbs_entries(ctx)}  # the manifest lists it
    base = f"storage/pbs/ds/{snap}/root.pxar"
    tree = {t["path"]: t for t in gt["snapshots"][3]["archives"]["root.mpxar.didx"]["tree"]}
    found = {("/" + p) if p else "/": n for p, n in walk(resolve(ctx.root, base))}
    assert set(found) == set(tree)  # the metadata stream still lists everything
    with pytest.raises(UnreadableError):
        found["/etc/hosts"].source.read(0, 10)


def test_nested_namespace(tmp_path, gt):
    ds = copy_store(DS, tmp_path / "ds")
    deep = ds / "ns" / "testns" / "ns" / "empty-child" / "ns" / "deeper"
    deep.mkdir(parents=True)
    shutil.move(str(ds / "ns/testns/vm"), str(deep / "vm"))
    ctx = discover([str(ds)], Options())
    a = gt["snapshots"][4]["archives"]["drive-virtio0.img.fidx"]
    img = resolve(ctx.root, "storage/pbs/ds/ns/testns/ns/empty-child/ns/deeper/vm/200/"
                            "2024-01-17T09:30:00Z/drive-virtio0.img")
    assert sha256_source(img.source) == a["sha256"]
    assert "testns/empty-child/deeper" in next(v for v in ctx.volumes if v.source is img.source).info["snapshot"]


# --- pxar paths the fixture does not cover, from a minimal encoder written from the spec -------
def _item(htype, content=b""):
    return struct.pack("<QQ", htype, 16 + len(content)) + content


def _encode(tree, v2=False, entry_v1=False, prelude=b""):
    """tree = (stat_items, children[(name, tree_or_leaf)]) ; leaf = bytes of items after FILENAME."""
    from backends.pbs import structs as S

    out = bytearray()
    if v2:
        out += _item(S.PXAR_FORMAT_VERSION, struct.pack("<Q", 2))
        if prelude:
            out += _item(S.PXAR_PRELUDE, prelude)

    def write_dir(node):
        entry_off = len(out)
        out.extend(node[0])
        gb = []
        for name, child in node[1]:
            fn = len(out)
            out.extend(_item(S.PXAR_FILENAME, name + b"\0"))
            if isinstance(child, tuple):
                write_dir(child)
            else:
                out.extend(child)
            gb.append((fn, len(out) - fn))
        start = len(out)
        body = b"".join(struct.pack("<QQQ", i, start - fn, sz) for i, (fn, sz) in enumerate(gb))
        size = 16 + len(body) + 24
        body += struct.pack("<QQQ", S.PXAR_GOODBYE_TAIL_MARKER, start - entry_off, size)
        out.extend(_item(S.PXAR_GOODBYE, body))

    write_dir(tree)
    return bytes(out)


def _stat(mode, v1=False, uid=0, gid=0, mtime=1700000000):
    from backends.pbs import structs as S

    if v1:
        return _item(S.PXAR_ENTRY_V1, struct.pack("<QQIIQ", mode, 0, uid, gid, mtime * 10**9))
    return _item(S.PXAR_ENTRY, struct.pack("<QQIIqII", mode, 0, uid, gid, mtime, 5, 0))


@pytest.mark.parametrize("v1", [False, True])
def test_pxar_sockets_blockdevs_default_acls(v1):
    from backends.pbs import structs as S

    acl_default = _item(S.PXAR_ACL_DEFAULT, struct.pack("<QQQQ", 7, 5, 0, 7)) + \
        _item(S.PXAR_ACL_DEFAULT_USER, struct.pack("<QQ", 1001, 6))
    sub = (_stat(0o40750, v1) + acl_default, [
        (b"blk", _stat(0o60640, v1) + _item(S.PXAR_DEVICE, struct.pack("<QQ", 8, 17))),
        (b"sock", _stat(0o140755, v1, uid=33)),
    ])
    tree = (_stat(0o40755, v1), [
        (b"a.txt", _stat(0o100644, v1) + _item(S.PXAR_XATTR, b"user.k\0v") + _item(S.PXAR_PAYLOAD, b"hello")),
        (b"d", sub),
    ])
    raw = _encode(tree, v2=False)
    arc = PxarArchive(BytesSource(raw))
    nodes = {p: n for p, n in walk(arc.root())}
    assert set(nodes) == {"", "a.txt", "d", "d/blk", "d/sock"}
    assert nodes["a.txt"].source.read(0, 5) == b"hello" and nodes["a.txt"].xattrs == {b"user.k": b"v"}
    assert stat.S_ISBLK(nodes["d/blk"].mode) and (os.major(nodes["d/blk"].rdev), os.minor(nodes["d/blk"].rdev)) == (8, 17)
    assert stat.S_ISSOCK(nodes["d/sock"].mode) and nodes["d/sock"].uid == 33
    assert nodes["a.txt"].mtime == pytest.approx(1700000000 + (0 if v1 else 5e-9))
    dfl = nodes["d"].xattrs[b"system.posix_acl_default"]
    ents = set(struct.iter_unpack("<HHI", dfl[4:]))
    assert {(1, 7, 0xFFFFFFFF), (4, 5, 0xFFFFFFFF), (0x20, 0, 0xFFFFFFFF), (0x10, 7, 0xFFFFFFFF), (2, 6, 1001)} == ents


def test_pxar_v2_prelude_is_skipped():
    from backends.pbs import structs as S

    meta = _encode((_stat(0o40755), [(b"f", _stat(0o100600) + _item(S.PXAR_PAYLOAD_REF, struct.pack("<QQ", 16, 3)))]),
                   v2=True, prelude=b"client prelude")
    payload = _item(S.PXAR_PAYLOAD_START_MARKER) + _item(S.PXAR_PAYLOAD, b"abc") + _item(S.PXAR_PAYLOAD_TAIL_MARKER)
    arc = PxarArchive(BytesSource(meta), BytesSource(payload))
    f = arc.root().get("f")
    assert arc.version == 2 and f.source.read(0, 3) == b"abc"
    bad = PxarArchive(BytesSource(meta), BytesSource(_item(S.PXAR_PAYLOAD_START_MARKER) + _item(S.PXAR_SYMLINK, b"abc")))
    with pytest.raises(UnreadableError, match="no PAYLOAD"):
        bad.root().get("f").source.read(0, 3)


def test_pxar_hostile_structures():
    from backends.pbs import structs as S

    reports = []
    # a goodbye item pointing at the goodbye table itself, and a hardlink to itself
    raw = bytearray(_encode((_stat(0o40755), [(b"x", _item(S.PXAR_HARDLINK, struct.pack("<Q", 0) + b"x\0"))])))
    arc = PxarArchive(BytesSource(bytes(raw)), report=lambda *a: reports.append(a))
    assert arc.root().children() == {}
    assert [r[1] for r in reports] == ["bad-entry"] and "hardlink offset 0" in reports[0][3]
    with pytest.raises(PbsError):
        PxarArchive(BytesSource(b"\0" * 64)).root()
    with pytest.raises(PbsError, match="version"):
        PxarArchive(BytesSource(_item(S.PXAR_FORMAT_VERSION, struct.pack("<Q", 9)) + b"\0" * 64)).root()


def test_many_lost_chunks_make_one_entry_per_archive(tmp_path, gt):
    ds = copy_store(DS, tmp_path / "ds")
    a = gt["snapshots"][0]["archives"]["drive-scsi0.img.fidx"]
    zero = gt["zero_chunk_4MiB_sha256"]
    lost = [d for d in dict.fromkeys(a["chunks"]) if d != zero]
    for d in lost:
        os.unlink(ds / ".chunks" / d[:4] / d)
    ctx = discover([str(ds)], Options())
    path = "storage/pbs/ds/vm/100/2024-01-15T10:00:00Z/drive-scsi0.img"
    node = resolve(ctx.root, path)
    for off in range(0, node.size, 4 << 20):  # reads add no second entry for the same chunks
        try:
            node.source.read(off, 4 << 20)
        except UnreadableError:
            pass
    ent = [e for e in ctx.report if e.code == "missing-chunk" and e.path == path]
    assert len(ent) == 1 and ent[0].message.count(f"{len(lost)} chunks are missing") == 1
    want = sorted(i for i, d in enumerate(a["chunks"]) if d in lost)
    assert sum(n for _, n in ent[0].ranges) == len(want) * (4 << 20)


def test_interrupted_backup_tmp_indexes(tmp_path, gt):
    """An interrupted backup leaves drive-X.img.tmp_fidx (table written in place, unwritten
    digests zero, no checksum) and root.pxar.tmp_didx (a prefix of the entries)."""
    ds = copy_store(DS, tmp_path / "ds")
    snap = ds / gt["snapshots"][1]["path"]
    fidx = (snap / "drive-scsi0.img.fidx").read_bytes()
    head, table = bytearray(fidx[:4096]), bytearray(fidx[4096:])
    head[32:64] = bytes(32)
    table[5 * 32:] = bytes(len(table) - 5 * 32)  # chunks 5..7 never uploaded
    (snap / "drive-scsi0.img.fidx").unlink()
    (snap / "drive-scsi0.img.tmp_fidx").write_bytes(bytes(head + table))
    csnap = ds / gt["snapshots"][2]["path"]
    didx = (csnap / "root.pxar.didx").read_bytes()
    (csnap / "root.pxar.tmp_didx").write_bytes(didx[:4096 + 40 * 2 + 17])
    ctx = discover([str(ds)], Options(bad="eio"))
    a = gt["snapshots"][1]["archives"]["drive-scsi0.img.fidx"]
    img = resolve(ctx.root, f"storage/pbs/ds/{gt['snapshots'][1]['path']}/drive-scsi0.img")
    assert img.source.read(0, 4096) == resolve(ctx.root, f"storage/pbs/ds/{gt['snapshots'][0]['path']}/drive-scsi0.img").source.read(0, 4096)
    with pytest.raises(UnreadableError):
        img.source.read(5 << 22, 16)
    ent = [e for e in ctx.report if e.code == "unfinished-backup" and e.path == img_path(gt)]
    assert len(ent) == 1 and ent[0].ranges == ((5 << 22, 3 << 22),)
    assert resolve(ctx.root, "vms/100/backups/2024-01-16T10:00:00Z/disk-scsi0.raw") is not None
    partial = resolve(ctx.root, f"storage/pbs/ds/{gt['snapshots'][2]['path']}/root.pxar.unfinished")
    ends = [c[0] for c in gt["snapshots"][2]["archives"]["root.pxar.didx"]["chunks"]]
    assert partial.size == ends[1]
    stream = (GEN / "streams" / "root.pxar").read_bytes()
    assert partial.source.read(0, partial.size) == stream[:ends[1]]
    assert a["size"] == img.size


def img_path(gt):
    return f"storage/pbs/ds/{gt['snapshots'][1]['path']}/drive-scsi0.img"


def test_cli_scan_json_with_pbs_options(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    out = subprocess.run([sys.executable, "-m", "pvfs", "scan", "--json", "--pbs-verify", "full",
                          "--vzdump-index-dir", "none", str(GEN / "datastore-bad-crc")],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    doc = json.loads(out.stdout)
    codes = [(d["code"], d["path"]) for d in doc["damage"] if d["layer"] == "pbs"]
    assert ("bad-chunk", "storage/pbs/datastore-bad-crc/vm/100/2024-01-15T10:00:00Z/drive-scsi0.img") in codes
    vols = {v["path"] for v in doc["volumes"]}
    assert "storage/pbs/datastore-bad-crc/ns/testns/vm/200/2024-01-17T09:30:00Z/drive-virtio0.img" in vols


def test_catalog_listing_matches_the_archive(ctx, gt):
    from backends.pbs.catalog import CatalogError, read_catalog

    snap = gt["snapshots"][2]
    tree = {t["path"]: t for t in snap["archives"]["root.pxar.didx"]["tree"]}
    node = resolve(ctx.root, f"storage/pbs/datastore/{snap['path']}/catalog.txt")
    lines = node.render().decode().splitlines()
    assert len(lines) == len(tree)  # every entry but "/" itself, plus the archive folder
    kinds = {"dir": "dir", "file": "file", "symlink": "symlink", "hardlink": "hardlink",
             "chardev": "chardev", "fifo": "fifo"}
    entries = {p: (k, sz, mt) for p, k, sz, mt in read_catalog(FileSource(GEN / "streams" / "catalog.pcat1"))}
    for path, t in tree.items():
        if path == "/":
            continue
        kind, size, mtime = entries["/root.pxar.didx" + path]
        assert kind == kinds[t["type"]], path
        if kind == "file":
            assert (size, mtime) == (t["size"], t["mtime"][0])
    with pytest.raises(CatalogError):
        list(read_catalog(BytesSource(b"\0" * 64)))


@FUZZ
@given(st.binary(max_size=60), st.integers(0, 300))
def test_fuzz_catalog(data, cut):
    from backends.pbs.catalog import catalog_text

    base = (GEN / "streams/catalog.pcat1").read_bytes()
    raw = _mutate(base, data)[:max(0, len(base) - cut)]
    text = catalog_text(BytesSource(raw))
    assert isinstance(text, bytes)


def test_datastore_opened_after_the_check(gt):
    """A datastore found late (e.g. from a filesystem pvfs opened) is checked on its own."""
    from backends.pbs.backend import PbsBackend
    from pvfs.discover import Context, run_queue

    ctx = Context(Options())
    b = PbsBackend()
    b.open_node(_node_tree(DS), "storage/zfs/a/ds1", ctx)
    run_queue(ctx)
    assert not [e for e in ctx.report if e.code == "missing-chunk"]
    b.open_node(_node_tree(GEN / "datastore-missing-chunk"), "storage/zfs/b/ds2", ctx)
    run_queue(ctx)
    # the first store is a fallback: the chunk missing from ds2 is found in ds1
    assert not [e for e in ctx.report if e.code in ("missing-chunk", "late-member")]
    a = gt["snapshots"][1]["archives"]["drive-scsi0.img.fidx"]
    img = resolve(ctx.root, "storage/pbs/ds2/vm/100/2024-01-16T10:00:00Z/drive-scsi0.img")
    assert sha256_source(img.source) == a["sha256"]


def test_through_a_fuse_mount(tmp_path, gt):
    """``pvfs mount datastore-missing-chunk vzdump.vma.zst MNT --bad eio``: what a user sees."""
    import errno

    from mountutil import FUSE_OK, pvfs_mounted

    if not FUSE_OK:
        pytest.skip("needs /dev/fuse and fusermount3")
    from conftest import sha256_file

    vz = GEN / "vzdump" / "vzdump-qemu-100-2024_01_15-10_00_00.vma.zst"
    with pvfs_mounted([GEN / "datastore-missing-chunk", vz], tmp_path / "mnt", "--bad", "eio",
                      "--vzdump-index-dir", str(tmp_path / "idx")) as mnt:
        s0 = gt["snapshots"][0]
        assert sha256_file(mnt / "vms/100/backups/2024-01-15T10:00:00Z/disk-scsi0.raw") == \
            s0["archives"]["drive-scsi0.img.fidx"]["sha256"]
        assert sha256_file(mnt / f"storage/files/{vz.name}/drive-scsi0.raw") == \
            gt["vma"]["devices"]["drive-scsi0"]["sha256"]
        root = mnt / "cts/101/backups/2024-01-15T11:00:00Z/rootfs"
        tree = {t["path"]: t for t in gt["snapshots"][2]["archives"]["root.pxar.didx"]["tree"]}
        assert sha256_file(root / "home/user/big.bin") == tree["/home/user/big.bin"]["sha256"]
        assert os.stat(root / "usr/bin/tool").st_ino == os.stat(root / "usr/bin/tool-hardlink").st_ino
        assert os.readlink(root / "bin") == "usr/bin"
        st_ = os.stat(root / "dev/null", follow_symlinks=False)
        assert stat.S_ISCHR(st_.st_mode) and (os.major(st_.st_rdev), os.minor(st_.st_rdev)) == (1, 3)
        assert stat.S_ISFIFO(os.stat(root / "tmp/fifo").st_mode)
        assert os.getxattr(root / "home/user/notes.txt", "user.comment") == b"fixture note"
        # Node.mtime is a float in the core: exact to ~0.25 us, not to the nanosecond
        assert abs(os.stat(root / "etc/hosts").st_mtime_ns - (1705300360 * 10**9 + 740742)) < 1000
        dv = gt["damaged_variants"]["datastore-missing-chunk"]
        lo, hi = dv["affected_byte_range"]
        img = mnt / "storage/pbs/datastore-missing-chunk" / dv["affected"][0][:-5]
        with open(img, "rb") as f:
            f.seek(lo - 4096)
            assert len(f.read(4096)) == 4096
            with pytest.raises(OSError) as ei:
                f.seek(lo)
                f.read(4096)
            assert ei.value.errno == errno.EIO


def test_corrupt_copy_falls_back_to_a_good_one(gt):
    ctx = discover([str(GEN / "datastore-bad-crc"), str(DS)], Options(backend_options={"pbs_verify": "full"}))
    for a in gt["damaged_variants"]["datastore-bad-crc"]["affected"]:
        snap = next(s for s in gt["snapshots"] if a.startswith(s["path"]))
        img = resolve(ctx.root, f"storage/pbs/datastore-bad-crc/{a[:-5]}")
        assert sha256_source(img.source) == snap["archives"]["drive-scsi0.img.fidx"]["sha256"]
    assert [e for e in ctx.report if e.code == "bad-chunk"] == []


# --- goodbye tables damaged (issue 13 item 10) ----------------------------------------
@pytest.mark.parametrize("split,how", [(False, "tail"), (True, "tail"), (False, "offset"),
                                             (False, "misaimed")])
def test_bad_goodbye_tables_fall_back_to_archive_order(gt, split, how):
    """Tail markers of the root's and a subdirectory's goodbye table are broken in a copy
    (PatchedSource): both directories are listed by walking their items in order, each is
    reported once as bad-goodbye, and every file still has the real encoder's sha256."""
    from backends.pbs.structs import PXAR_GOODBYE_TAIL_MARKER
    streams = GEN / "streams"
    meta = FileSource(streams / ("root.mpxar" if split else "root.pxar"))
    raw = meta.read(0, meta.size)
    marker = struct.pack("<Q", PXAR_GOODBYE_TAIL_MARKER)
    tails = [i for i in range(len(raw) - 7) if raw[i:i + 8] == marker]
    assert tails[-1] == len(raw) - 24 and len(tails) > 2
    broken = {tails[-1]: b"\xff" * 8, tails[0]: b"\xee" * 8}
    if how == "offset":  # tails intact; the root's first goodbye item points past the start
        size = struct.unpack_from("<Q", raw, len(raw) - 8)[0]
        broken = {len(raw) - size + 16 + 8: struct.pack("<Q", len(raw)), tails[0]: b"\xee" * 8}
    if how == "misaimed":  # in range, but at the middle of an entry instead of its FILENAME
        size = struct.unpack_from("<Q", raw, len(raw) - 8)[0]
        first = struct.unpack_from("<Q", raw, len(raw) - size + 16 + 8)[0]
        broken = {len(raw) - size + 16 + 8: struct.pack("<Q", first - 3), tails[0]: b"\xee" * 8}
    found_report = []
    arc = PxarArchive(PatchedSource(meta, broken),
                      FileSource(streams / "root.ppxar") if split else None,
                      report=lambda *a: found_report.append(a))
    found = {("/" + p) if p else "/": node for p, node in walk(arc.root())}
    tree = {t["path"]: t for t in gt["snapshots"][2]["archives"]["root.pxar.didx"]["tree"]}
    assert set(found) == set(tree)
    check_tree(found, tree)
    codes = [(sev, code) for sev, code, *_ in found_report]
    assert codes == [("error", "bad-goodbye")] * 2, found_report


# --- standalone pxar streams and catalogs given as inputs (backends/pbs/stream.py) -----------
STREAMS = GEN / "streams"


@pytest.fixture(scope="module")
def streams_ctx():
    return discover([str(STREAMS)], Options(bad="eio"))


def _home_tree(ctx, path):
    return {"/" + p: n for p, n in walk(resolve(ctx.root, path)) if p}


def test_standalone_streams_v1_and_split_v2(streams_ctx, gt):
    """Every file of root.pxar (v1) and root.mpxar + root.ppxar (v2, the payload claimed as
    a companion) equals the ground truth; the catalog reads as text."""
    ctx = streams_ctx
    tree = {t["path"]: t for t in gt["snapshots"][2]["archives"]["root.pxar.didx"]["tree"]}
    del tree["/"]  # the archive's root is the input's own folder
    for name in ("root.pxar", "root.mpxar"):
        found = _home_tree(ctx, f"storage/files/streams/{name}")
        assert set(found) == set(tree), name
        check_tree(found, tree)  # sha256 of the 10 files, modes, owners, links, xattrs
    assert resolve(ctx.root, "storage/files/streams/root.ppxar") is None
    assert [e.code for e in ctx.report if e.severity != "info"] == []
    assert {(e.path.rsplit("/", 1)[-1], e.code) for e in ctx.report} == {("root.ppxar", "companion-file")}
    text = resolve(ctx.root, "storage/files/streams/catalog.pcat1/catalog.txt").content().decode()
    files = [t for t in tree.values() if t["type"] == "file"]
    for t in files:
        assert f" {t['size']:>12} " in text and t["path"] in text, t["path"]


def test_standalone_mpxar_without_payload(tmp_path, gt):
    shutil.copy(STREAMS / "root.mpxar", tmp_path / "root.mpxar")
    ctx = discover([str(tmp_path / "root.mpxar")], Options(bad="eio"))
    lost = [e for e in ctx.report if e.code == "missing-payload"]
    assert [(e.severity, e.outcome, e.path) for e in lost] == [("error", "lost", "storage/files/root.mpxar")]
    tree = {t["path"]: t for t in gt["snapshots"][3]["archives"]["root.mpxar.didx"]["tree"]}
    found = _home_tree(ctx, "storage/files/root.mpxar")
    assert set(found) == set(tree) - {"/"}  # the metadata stream still lists everything
    with pytest.raises(UnreadableError):
        found["/etc/hosts"].source.read(0, 10)


def test_standalone_pxar_truncated(tmp_path, gt):
    """A cut archive: a damage entry naming it, the files before the cut still equal."""
    data = (STREAMS / "root.pxar").read_bytes()
    tree = {t["path"]: t for t in gt["snapshots"][2]["archives"]["root.pxar.didx"]["tree"]}
    for cut in (len(data) - 100, len(data) // 2, 200, 30):
        p = tmp_path / f"cut{cut}.pxar"
        p.write_bytes(data[:cut])
        ctx = discover([str(p)], Options(bad="eio"))
        bad = [e for e in ctx.report if e.severity == "error" and e.layer == "pbs-stream"]
        assert bad and all(e.path.startswith(f"storage/files/{p.name}") for e in bad), cut
        for path, node in _home_tree(ctx, f"storage/files/{p.name}").items():
            if node.kind == "file" and tree.get(path, {}).get("type") == "file":
                try:
                    got = hashlib.sha256(node.source.read(0, node.size)).hexdigest()
                except UnreadableError:
                    continue
                assert got == tree[path]["sha256"], (cut, path)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.integers(0, 4085), st.integers(1, 255), st.booleans())
def test_fuzz_standalone_mpxar(tmp_path_factory, off, xor, cut):
    data = bytearray((STREAMS / "root.mpxar").read_bytes())
    if cut:
        data = data[:off]
    else:
        data[off] ^= xor
    d = tmp_path_factory.mktemp("fz")
    (d / "root.mpxar").write_bytes(bytes(data))
    shutil.copy(STREAMS / "root.ppxar", d / "root.ppxar")
    ctx = discover([str(d)], Options(bad="eio"))
    home = resolve(ctx.root, f"storage/files/{d.name}/root.mpxar")
    if home is not None:
        for _p, node in walk(home):
            if node.kind == "file":
                try:
                    node.source.read(0, min(node.size, 1 << 20))
                except PvfsError:
                    pass
