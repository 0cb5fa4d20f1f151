"""ZFS native encryption (backends/zfs/crypto.py).

Ground truth: the modern-rpool fixture (OpenZFS 2.1.11) has ``rpool/encrypted``
(aes-256-gcm, passphrase), its child and an encrypted zvol, and
``rpool/encrypted-hexkey`` (aes-128-ccm, hex key); the keys and every file's
sha256 are in its manifest.  The unit tests below build blocks with the
``cryptography`` package's own AES-GCM/CCM to pin the counter and key
derivation, and fuzz the key-object parser.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FIXTURES, require_path, unpack
from pvfs.discover import Options, discover
from pvfs.errors import FormatError, UnreadableError, UsageError
from pvfs.nodes import Dir, resolve

crypto = pytest.importorskip("backends.zfs.crypto")
pytest.importorskip("cryptography", reason="the 'cryptography' package is not installed")
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM  # noqa: E402
from cryptography.hazmat.primitives.kdf.hkdf import HKDF  # noqa: E402

ARCHIVE = FIXTURES / "zfs" / "images" / "modern-rpool.tar.xz"
MANIFEST = FIXTURES / "zfs" / "manifests" / "modern-rpool.json"
_CTX = {}


def _manifest():
    return json.loads(MANIFEST.read_text())


def _ctx(keys=()):
    require_path(ARCHIVE)
    keys = tuple(keys)
    if keys not in _CTX:
        root = unpack(ARCHIVE)
        imgs = sorted(str(p) for p in root.glob("*/*.img"))
        _CTX[keys] = discover(imgs, Options(backend_options={"zfs_key": list(keys)}))
    return _CTX[keys]


def _keys():
    m = _manifest()
    return [f"{k}={v['key']}" for k, v in m["keys"].items()]


def _sha(src):
    return hashlib.sha256(src.read(0, src.size)).hexdigest()


# --------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("dataset", ["rpool/encrypted", "rpool/encrypted/child",
                                     "rpool/encrypted-hexkey", "rpool/encrypted@snap1"])
def test_encrypted_files_read_back(dataset):
    m = _manifest()
    tree = (m["datasets"].get(dataset) or m["snapshots"][dataset])["tree"]
    ctx = _ctx(_keys())
    head, _, snap = dataset.partition("@")
    base = f"storage/zfs/{head}" + (f"/.zfs/snapshot/{snap}" if snap else "")
    files = {p: e for p, e in tree.items() if e["type"] == "file"}
    assert files
    for p, e in files.items():
        node = resolve(ctx.root, f"{base}/{p}")
        assert node is not None, p
        assert node.size == e["size"] and _sha(node.source) == e["sha256"], p


def test_encrypted_zvol_reads_back():
    z = _manifest()["zvols"]["rpool/encrypted/vol"]
    node = resolve(_ctx(_keys()).root, "storage/zfs/rpool/encrypted/vol")
    assert node is not None and node.size == z["size"]
    assert _sha(node.source) == z["sha256"]


def test_child_uses_the_encryption_root_key():
    """Only the root's passphrase is given; the child's own master key unwraps with it."""
    m = _manifest()
    ctx = _ctx(["rpool/encrypted=" + m["keys"]["rpool/encrypted"]["key"]])
    e = m["datasets"]["rpool/encrypted/child"]["tree"]["secret.txt"]
    node = resolve(ctx.root, "storage/zfs/rpool/encrypted/child/secret.txt")
    assert _sha(node.source) == e["sha256"]
    # the hex-key dataset got no key: listed, empty, reported as encrypted
    d = resolve(ctx.root, "storage/zfs/rpool/encrypted-hexkey")
    assert isinstance(d, Dir) and not [n for n in d.children() if n != ".zfs"]


def test_without_keys_encrypted_datasets_are_reported_not_shown():
    ctx = _ctx()
    for ds in ("rpool/encrypted", "rpool/encrypted-hexkey"):
        d = resolve(ctx.root, f"storage/zfs/{ds}")
        assert isinstance(d, Dir)
        assert not [n for n, c in d.children().items() if not isinstance(c, Dir)], ds
        assert any(e.code == "encrypted" and e.path.endswith(ds) for e in ctx.report), ds


def test_wrong_passphrase_is_reported():
    ctx = _ctx(["rpool/encrypted=not-the-passphrase"])
    d = resolve(ctx.root, "storage/zfs/rpool/encrypted")
    assert resolve(d, "secret.txt") is None
    msgs = [e.message for e in ctx.report if "rpool/encrypted" in e.path or
            "rpool/encrypted" in e.message]
    assert any("wrong key or passphrase" in msg for msg in msgs), msgs


def test_key_from_file(tmp_path):
    m = _manifest()
    kf = tmp_path / "hexkey"
    kf.write_text(m["keys"]["rpool/encrypted-hexkey"]["key"] + "\n")
    ctx = _ctx([f"rpool/encrypted-hexkey=file:{kf}"])
    e = m["datasets"]["rpool/encrypted-hexkey"]["tree"]["secret.txt"]
    node = resolve(ctx.root, "storage/zfs/rpool/encrypted-hexkey/secret.txt")
    assert _sha(node.source) == e["sha256"]


# --------------------------------------------------------------------------- units
def test_hkdf_matches_the_cryptography_package():
    for ikm, info, n in [(b"k" * 32, b"saltsalt", 32), (bytes(16), b"\1" * 8, 16),
                         (os.urandom(24), os.urandom(8), 24)]:
        ref = HKDF(algorithm=hashes.SHA512(), length=n, salt=None, info=info).derive(ikm)
        assert crypto.hkdf_sha512(ikm, info, n) == ref


def test_parse_key_options():
    assert crypto.parse_key_options(["pool/ds=a=b", "p2/=x"]) == {"pool/ds": "a=b", "p2": "x"}
    for bad in (["nokey"], ["=x"], ["ds="]):
        with pytest.raises(UsageError, match="expected DATASET=KEY"):
            crypto.parse_key_options(bad)


def test_wrapping_key_formats():
    assert crypto.wrapping_key(2, "00" * 32) == bytes(32)
    with pytest.raises(crypto.WrongKeyError, match="not 64 hex digits"):
        crypto.wrapping_key(2, "xyz")
    with pytest.raises(crypto.WrongKeyError, match="16 bytes, not 32"):
        crypto.wrapping_key(1, "00" * 16)
    with pytest.raises(crypto.CryptoError, match="pbkdf2iters 0 is impossible"):
        crypto.wrapping_key(3, "pw", 1, 0)
    ref = hashlib.pbkdf2_hmac("sha1", b"pw", struct.pack("<Q", 7), 1000, 32)
    assert crypto.wrapping_key(3, "pw", 7, 1000) == ref


def _key_entries(suite=8, version=1, wkey=b"w" * 32, master=None, hmac_key=b"h" * 64):
    keylen = crypto.SUITES[suite][2]
    master = master or b"m" * keylen
    iv = b"i" * 12
    guid = 0x1234
    aad = struct.pack("<QQQ", guid, suite, version) if version else struct.pack("<Q", guid)
    aead = AESGCM(wkey) if crypto.SUITES[suite][1] == "gcm" else AESCCM(wkey, tag_length=16)
    ct = aead.encrypt(iv, master + hmac_key, aad)
    return {"DSL_CRYPTO_SUITE": [suite], "DSL_CRYPTO_GUID": [guid],
            "DSL_CRYPTO_VERSION": [version], "keyformat": [2],
            "DSL_CRYPTO_MASTER_KEY_1": ct[:keylen], "DSL_CRYPTO_HMAC_KEY_1": ct[keylen:-16],
            "DSL_CRYPTO_IV": iv, "DSL_CRYPTO_MAC": ct[-16:]}


@pytest.mark.parametrize("suite", sorted(crypto.SUITES))
@pytest.mark.parametrize("version", [0, 1])
def test_unwrap_every_suite(suite, version):
    ko = crypto.CryptoKeyObject(_key_entries(suite, version))
    dc = ko.unwrap(b"w" * 32)
    assert dc.master == b"m" * crypto.SUITES[suite][2] and dc.hmac_key == b"h" * 64
    with pytest.raises(crypto.WrongKeyError, match="wrong key or passphrase"):
        ko.unwrap(b"x" * 32)


class _BP:
    """The fields decrypt_block reads from part A's BlkPtr."""

    def __init__(self, type_, salt, iv, mac, level=0, little=True):
        raw = bytearray(128)
        raw[32:40] = salt
        raw[40:48] = iv[:8]
        raw[92:96] = iv[8:]
        raw[112:128] = mac
        self.raw = bytes(raw)
        self.type, self.level, self.little, self.little_container = type_, level, little, little
        self.birth = 5


@pytest.mark.parametrize("suite", [5, 8])
def test_decrypt_data_block_and_mac_check(suite):
    dc = crypto.DatasetCrypt(suite, b"M" * crypto.SUITES[suite][2], b"H" * 64, 1)
    salt, iv, plain = b"s" * 8, b"v" * 12, os.urandom(4096)
    key = crypto.hkdf_sha512(dc.master, salt, dc.keylen)
    aead = AESGCM(key) if dc.mode == "gcm" else AESCCM(key, tag_length=16)
    ct = aead.encrypt(iv, plain, None)
    bp = _BP(19, salt, iv, ct[-16:])
    assert dc.decrypt_block(bp, ct[:-16]) == plain
    bad = bytearray(ct[:-16])
    bad[100] ^= 1
    with pytest.raises(UnreadableError, match="MAC mismatch"):
        dc.decrypt_block(bp, bytes(bad))
    # authenticated-only blocks pass through
    assert dc.decrypt_block(_BP(11, salt, iv, bytes(16)), b"objset") == b"objset"
    assert dc.decrypt_block(_BP(19, salt, iv, bytes(16), level=1), b"ind") == b"ind"


@pytest.mark.parametrize("suite", [3, 8])
def test_decrypt_dnode_block_bonus_stream(suite):
    """Bonus areas of SA dnodes are one keystream (counter after J0 / A_0); rest is plain."""
    dc = crypto.DatasetCrypt(suite, b"M" * crypto.SUITES[suite][2], b"H" * 64, 1)
    salt, iv = b"t" * 8, b"w" * 12
    key = crypto.hkdf_sha512(dc.master, salt, dc.keylen)
    block = bytearray(2048)
    # dnode 0: SA bonus (encrypted), 1 blkptr; dnode 1: free; dnode 2: 2 slots, bonus type
    # DSL dataset (16, not encrypted); dnode 3: SA, spill blkptr.
    plain_regions = []
    for slot, (dtype, btype, extra, flags) in {0: (19, 44, 0, 0), 2: (20, 16, 0, 0),
                                               3: (19, 44, 0, 4)}.items():
        off = slot * 512
        block[off], block[off + 3], block[off + 4], block[off + 7] = dtype, 1, btype, flags
        struct.pack_into("<H", block, off + 10, 100)
        block[off + 12] = extra
        start, end = off + 192, off + 512 - (128 if flags & 4 else 0)
        block[start:end] = os.urandom(end - start)
        if btype == 44:
            plain_regions.append((start, end))
    plain = bytes(block)
    stream = b"".join(plain[a:b] for a, b in plain_regions)
    aead = AESGCM(key) if dc.mode == "gcm" else AESCCM(key, tag_length=16)
    ct = aead.encrypt(iv, stream, b"any authenticated data")[:-16]
    cipher = bytearray(plain)
    pos = 0
    for a, b in plain_regions:
        cipher[a:b] = ct[pos:pos + b - a]
        pos += b - a
    assert dc.decrypt_block(_BP(10, salt, iv, bytes(16)), bytes(cipher)) == plain


@pytest.mark.parametrize("missing", ["DSL_CRYPTO_SUITE", "DSL_CRYPTO_IV", "DSL_CRYPTO_MAC",
                                     "DSL_CRYPTO_MASTER_KEY_1", "DSL_CRYPTO_HMAC_KEY_1"])
def test_broken_key_object(missing):
    ents = _key_entries()
    del ents[missing]
    with pytest.raises(crypto.CryptoError):
        crypto.CryptoKeyObject(ents)


def test_errors_are_format_errors():
    assert issubclass(crypto.CryptoError, FormatError)
    assert issubclass(crypto.WrongKeyError, crypto.CryptoError)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.dictionaries(st.sampled_from(list(_key_entries())),
                       st.one_of(st.binary(max_size=100),
                                 st.lists(st.integers(0, 2**64 - 1), max_size=4)),
                       max_size=8),
       st.binary(min_size=32, max_size=32))
def test_fuzz_key_object(ents, wkey):
    base = _key_entries()
    base.update(ents)
    try:
        crypto.CryptoKeyObject(base).unwrap(wkey)
    except crypto.CryptoError:
        pass


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(min_size=0, max_size=4096), st.sampled_from([10, 19, 20, 44]))
def test_fuzz_decrypt_block(data, type_):
    dc = crypto.DatasetCrypt(8, b"M" * 32, b"H" * 64, 1)
    try:
        out = dc.decrypt_block(_BP(type_, b"s" * 8, b"v" * 12, bytes(16)), data)
        assert len(out) == len(data)
    except UnreadableError:
        pass


# --------------------------------------------------------------------------- the CLI
def _cli(capsys, *args):
    from pvfs.cli import main

    require_path(ARCHIVE)
    imgs = sorted(str(p) for p in unpack(ARCHIVE).glob("*/*.img"))
    code = main(["scan", *args, *imgs])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("key, words", [
    ("rpool/encrypted=not-the-passphrase",
     ["--zfs-key rpool/encrypted=...", "dataset rpool/encrypted", "wrong key or passphrase"]),
    ("rpool/encrypted-hexkey=" + "00" * 32,
     ["--zfs-key rpool/encrypted-hexkey=...", "dataset rpool/encrypted-hexkey",
      "wrong key or passphrase"]),
    ("rpool/nosuch=x", ["--zfs-key rpool/nosuch=...", "no ZFS dataset rpool/nosuch"]),
])
def test_cli_wrong_key_or_unknown_dataset_is_a_usage_error(capsys, key, words):
    """A wrong passphrase (or hex key) and a dataset that is not in the pool: exit 2 with
    one line naming the dataset, nothing on stdout, the secret never echoed."""
    code, out, err = _cli(capsys, "--zfs-key", key)
    assert code == 2 and out == "", (code, err)
    assert err.count("\n") == 1 and err.startswith("pvfs: usage error: "), err
    assert all(w in err for w in words), err
    assert "not-the-passphrase" not in err and "00" * 32 not in err


def test_cli_right_key_with_a_wrong_one_for_another_root(capsys):
    """The right passphrase for one root and a wrong hex key for the other: the wrong
    one is named (it is still a usage error), the right one is not blamed."""
    pw = _manifest()["keys"]["rpool/encrypted"]["key"]
    code, _, err = _cli(capsys, "--zfs-key", f"rpool/encrypted={pw}",
                        "--zfs-key", "rpool/encrypted-hexkey=" + "11" * 32)
    assert code == 2 and "dataset rpool/encrypted-hexkey" in err, err
    code, out, err = _cli(capsys, "--zfs-key", f"rpool/encrypted={pw}")
    assert code in (0, 3) and err == "" and "Damage report" in out
