"""Data blobs (``*.blob`` files and every chunk file) and client encryption keys.

References: proxmox-backup ``pbs-datastore/src/data_blob.rs`` (decode: magic, CRC32 of
the stored payload, zstd, AES-256-GCM), ``pbs-tools/src/crypt_config.rs`` (``id_key`` =
PBKDF2-HMAC-SHA256(key, "_id_key", 10); encrypted digest = sha256(plain || id_key);
fingerprint), ``pbs-key-config/src/lib.rs`` (key file JSON: ``kdf`` Scrypt/PBKDF2,
``data`` = IV(16) || tag(16) || encrypted key).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import zlib

import zstandard

from .structs import (BLOB_MAGICS, COMPRESSED_BLOB_MAGIC_1_0, ENCR_COMPR_BLOB_MAGIC_1_0,
                      ENCRYPTED_BLOB_MAGIC_1_0, UNCOMPRESSED_BLOB_MAGIC_1_0, PbsError)

#: The writer's limit (data_blob.rs MAX_BLOB_SIZE); nothing larger is decoded.
MAX_BLOB_SIZE = 128 * 1024 * 1024

# sha256(b"Proxmox Backup Encryption Key Fingerprint") (crypt_config.rs FINGERPRINT_INPUT)
FINGERPRINT_INPUT = hashlib.sha256(b"Proxmox Backup Encryption Key Fingerprint").digest()


class EncryptedBlobError(PbsError):
    """The blob is encrypted and no (matching) key was given."""


class CryptConfig:
    """An unlocked encryption key: AES-256-GCM key and the digest name-space key."""

    def __init__(self, enc_key: bytes):
        if len(enc_key) != 32:
            raise PbsError(f"encryption key has {len(enc_key)} bytes, need 32")
        self.enc_key = bytes(enc_key)
        self.id_key = hashlib.pbkdf2_hmac("sha256", self.enc_key, b"_id_key", 10, 32)

    def compute_digest(self, data) -> bytes:
        h = hashlib.sha256(data)
        h.update(self.id_key)
        return h.digest()

    def fingerprint(self) -> str:
        fp = self.compute_digest(FINGERPRINT_INPUT)
        return ":".join(f"{b:02x}" for b in fp[:8])

    def decrypt(self, iv, tag, ciphertext) -> bytes:
        try:
            from cryptography.exceptions import InvalidTag
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError:  # pragma: no cover - dependency is declared
            raise PbsError("decrypting needs the 'cryptography' package") from None
        try:
            return AESGCM(self.enc_key).decrypt(bytes(iv), bytes(ciphertext) + bytes(tag), b"")
        except InvalidTag:
            raise PbsError("AES-GCM tag mismatch (wrong key or corrupt data)") from None


def load_keyfile(path, password: bytes | None = None) -> CryptConfig:
    """Read a PBS key file (``KeyConfig`` JSON) and unlock it.

    ``kdf`` null: ``data`` is the raw key.  Scrypt/PBKDF2: ``data`` is IV || tag ||
    AES-256-GCM(derived key, raw key).  The password comes from ``password`` or the
    ``PBS_ENCRYPTION_PASSWORD`` environment variable (as proxmox-backup-client reads it).
    """
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read(1 << 20))
        data = base64.b64decode(doc["data"])
        kdf = doc.get("kdf")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PbsError(f"cannot read key file {path}: {e}") from None
    if not kdf:
        cfg = CryptConfig(data)
    else:
        if password is None:
            pw = os.environ.get("PBS_ENCRYPTION_PASSWORD")
            if pw is None:
                raise PbsError(f"key file {path} is password protected: set PBS_ENCRYPTION_PASSWORD")
            password = pw.encode()
        try:
            if "Scrypt" in kdf:
                k = kdf["Scrypt"]
                n, r, p = int(k["n"]), int(k["r"]), int(k["p"])
                derived = hashlib.scrypt(password, salt=base64.b64decode(k["salt"]), n=n, r=r, p=p,
                                         maxmem=1025 * 1024 * 1024, dklen=32)
            elif "PBKDF2" in kdf:
                k = kdf["PBKDF2"]
                derived = hashlib.pbkdf2_hmac("sha256", password, base64.b64decode(k["salt"]),
                                              int(k["iter"]), 32)
            else:
                raise PbsError(f"key file {path}: unknown kdf {list(kdf)}")
        except (KeyError, TypeError, ValueError) as e:
            raise PbsError(f"key file {path}: bad kdf parameters: {e}") from None
        if len(data) < 32:
            raise PbsError(f"key file {path}: key data too short")
        cfg = CryptConfig(CryptConfig(derived).decrypt(data[:16], data[16:32], data[32:]))
    fp = doc.get("fingerprint")
    if fp and fp.lower() != cfg.fingerprint():
        raise PbsError(f"key file {path}: fingerprint {fp} does not match the key ({cfg.fingerprint()})")
    return cfg


def blob_kind(raw: bytes) -> str | None:
    """``uncompressed | zstd | encrypted | encrypted+zstd`` or None for no blob magic."""
    return BLOB_MAGICS.get(bytes(raw[:8]))


def _zstd(payload, limit):
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(payload, read_across_frames=True)
        out = reader.read(limit + 1)
    except zstandard.ZstdError as e:
        raise PbsError(f"zstd: {e}") from None
    if len(out) > limit:
        raise PbsError(f"zstd payload expands beyond {limit} bytes")
    return out


def decode_blob(raw, crypt: CryptConfig | None = None, limit=MAX_BLOB_SIZE) -> bytes:
    """Check magic and CRC32, then decompress/decrypt.  Raises :class:`PbsError`."""
    raw = memoryview(raw)
    magic = bytes(raw[:8])
    if magic in (UNCOMPRESSED_BLOB_MAGIC_1_0, COMPRESSED_BLOB_MAGIC_1_0):
        hlen = 12
    elif magic in (ENCRYPTED_BLOB_MAGIC_1_0, ENCR_COMPR_BLOB_MAGIC_1_0):
        hlen = 44
    else:
        raise PbsError("no blob magic")
    if len(raw) < hlen:
        raise PbsError(f"blob of {len(raw)} bytes is shorter than its {hlen}-byte header")
    crc = int.from_bytes(raw[8:12], "little")
    payload = raw[hlen:]
    actual = zlib.crc32(payload)
    if actual != crc:
        raise PbsError(f"CRC32 mismatch (stored {crc:08x}, computed {actual:08x})")
    if magic == UNCOMPRESSED_BLOB_MAGIC_1_0:
        if len(payload) > limit:
            raise PbsError(f"blob payload of {len(payload)} bytes exceeds {limit}")
        return bytes(payload)
    if magic == COMPRESSED_BLOB_MAGIC_1_0:
        return _zstd(payload, limit)
    if crypt is None:
        raise EncryptedBlobError("encrypted blob; pass --pbs-keyfile to decode it")
    plain = crypt.decrypt(raw[12:28], raw[28:44], payload)
    if magic == ENCR_COMPR_BLOB_MAGIC_1_0:
        return _zstd(plain, limit)
    return plain


def encode_blob(data: bytes, compress=True, crypt: CryptConfig | None = None, iv=None) -> bytes:
    """Write a blob the way data_blob.rs does (for tests and the benchmark only)."""
    body, compressed = data, False
    if compress:
        z = zstandard.ZstdCompressor(level=1).compress(data)
        if len(z) < len(data):
            body, compressed = z, True
    if crypt is None:
        magic = COMPRESSED_BLOB_MAGIC_1_0 if compressed else UNCOMPRESSED_BLOB_MAGIC_1_0
        return magic + zlib.crc32(body).to_bytes(4, "little") + body
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    iv = iv or os.urandom(16)
    ct = AESGCM(crypt.enc_key).encrypt(iv, body, b"")
    ct, tag = ct[:-16], ct[-16:]
    magic = ENCR_COMPR_BLOB_MAGIC_1_0 if compressed else ENCRYPTED_BLOB_MAGIC_1_0
    return magic + zlib.crc32(ct).to_bytes(4, "little") + iv + tag + ct
