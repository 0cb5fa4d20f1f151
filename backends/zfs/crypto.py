"""ZFS native encryption: unwrap a dataset's master key, decrypt its blocks.

Each encrypted dataset has a DSL crypto key object in the MOS (a ZAP named by
``DSL_CRYPTO_KEY_OBJ`` in its DSL directory's ZAP) that holds the master key
and HMAC key, wrapped (AES-GCM/CCM, 96-bit IV, 128-bit MAC) with the user's
wrapping key.  The wrapping key is the raw 32-byte key, 64 hex digits, or
PBKDF2-HMAC-SHA1 of the passphrase with ``pbkdf2salt`` (the uint64 as 8
little-endian bytes) and ``pbkdf2iters``.  Each block is encrypted with a key
derived by HKDF-SHA512 from the master key and the block's 64-bit salt; the
salt, IV and MAC live in the block pointer (``DVA[2]``, the top of
``blk_fill``, ``blk_cksum[2..3]``).

Only level-0 blocks of encrypted object types are encrypted; indirect blocks
and objset blocks are only authenticated (passed through here).  Dnode blocks
are encrypted partially: the bonus areas of dnodes whose bonus type is
encrypted form one stream, the rest is authenticated data.  Their MAC covers
AAD that we do not rebuild, so they are decrypted in counter mode without
checking it (the key itself was checked when it was unwrapped); every other
block's MAC is verified.

References:
  - OpenZFS ``module/os/linux/zfs/zio_crypt.c`` (``zio_crypt_key_unwrap``: AAD =
    guid, crypt, version as LE uint64; ``zio_do_crypt_data``; ``hkdf_sha512`` with an
    empty salt and the block salt as info; ``zio_crypt_decode_params_bp``,
    ``zio_crypt_decode_mac_bp``; ``zio_crypt_init_uios_dnode``), ``module/zfs/dsl_crypt.c``
    (``DSL_CRYPTO_*`` names, encryption roots), ``lib/libzfs/libzfs_crypto.c``
    (``pbkdf2`` with the salt's bytes), ``include/sys/dnode.h`` (``DN_BONUS``,
    ``DN_MAX_BONUS_LEN``), ``module/zfs/dmu.c`` (``dmu_ot[].ot_encrypt``).
  - mminkus/zfs-ondiskformat ``docs/10-encryption.md``.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from pvfs.cache import METADATA_CACHE
from pvfs.errors import FormatError, UnreadableError, UsageError

from . import zap

#: ``zio_crypt_table``: suite -> (name, mode, key length)
SUITES = {
    3: ("aes-128-ccm", "ccm", 16), 4: ("aes-192-ccm", "ccm", 24), 5: ("aes-256-ccm", "ccm", 32),
    6: ("aes-128-gcm", "gcm", 16), 7: ("aes-192-gcm", "gcm", 24), 8: ("aes-256-gcm", "gcm", 32),
}
KEYFORMATS = {1: "raw", 2: "hex", 3: "passphrase"}
WRAPPING_KEY_LEN = 32
SHA512_HMAC_KEYLEN = 64
MAC_LEN = 16
DNODE_SHIFT = 9
BLKPTR_SIZE = 128
DMU_OT_DNODE = 10
DMU_OT_OBJSET = 11
DMU_OT_INTENT_LOG = 9
DNODE_FLAG_SPILL_BLKPTR = 1 << 2
DMU_OT_NEWTYPE = 0x80
DMU_OT_ENCRYPTED = 0x20
MAX_PBKDF2_ITERS = 100_000_000

#: ``dmu_ot[].ot_encrypt`` for the legacy (numbered) object types.
#: (objset blocks are only authenticated; legacy znodes are never encrypted)
_ENCRYPTED_TYPES = {9, 10, 18, 19, 20, 22, 23, 25, 26, 33, 34, 35, 39, 40, 44, 45, 46, 47, 49}


class CryptoError(FormatError):
    """A DSL crypto key object or an encrypted block that cannot be used."""


class WrongKeyError(CryptoError):
    """The given key does not unwrap the dataset's master key."""


def type_is_encrypted(ot: int) -> bool:
    """``DMU_OT_IS_ENCRYPTED``."""
    if ot & DMU_OT_NEWTYPE:
        return bool(ot & DMU_OT_ENCRYPTED)
    return ot in _ENCRYPTED_TYPES


def _aead():
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM
    except ImportError:  # pragma: no cover - depends on the machine
        raise CryptoError("decrypting ZFS datasets needs the Python package 'cryptography'"
                          ) from None
    return AESGCM, AESCCM


def _ctr(key: bytes, counter_block: bytes, data: bytes) -> bytes:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    dec = Cipher(algorithms.AES(key), modes.CTR(counter_block)).decryptor()
    return dec.update(data) + dec.finalize()


def hkdf_sha512(ikm: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 HKDF with SHA-512 and an empty salt (``hkdf_sha512(..., NULL, 0, ...)``)."""
    prk = hmac.new(b"\0" * 64, ikm, hashlib.sha512).digest()
    out, t, i = b"", b"", 1
    while len(out) < length:
        t = hmac.new(prk, t + info + bytes([i]), hashlib.sha512).digest()
        out += t
        i += 1
    return out[:length]


# --------------------------------------------------------------------------- keys
def parse_key_options(values) -> dict[str, str]:
    """``["pool/ds=secret", ...]`` -> ``{"pool/ds": "secret"}`` (raises UsageError)."""
    out = {}
    for v in values or []:
        name, eq, key = str(v).partition("=")
        name = name.strip().strip("/")
        if not eq or not name or not key:
            raise UsageError(f"--zfs-key {v!r}: expected DATASET=KEY")
        out[name] = key
    return out


def wrapping_key(keyformat: int, value: str, salt: int = 0, iters: int = 0) -> bytes:
    """The 32-byte wrapping key from what the user typed."""
    if value.startswith("file:"):
        try:
            with open(value[5:], "rb") as f:
                raw = f.read(4096)
        except OSError as e:
            raise UsageError(f"--zfs-key: cannot read {value[5:]}: {e.strerror}") from None
        if keyformat == 1:
            if len(raw) < WRAPPING_KEY_LEN:
                raise WrongKeyError(f"raw key file holds {len(raw)} bytes, not 32")
            return raw[:WRAPPING_KEY_LEN]
        value = raw.decode("utf-8", "replace").rstrip("\n")
    if keyformat in (1, 2):  # raw keys given on the command line are written in hex too
        try:
            raw = bytes.fromhex(value.strip())
        except ValueError:
            raise WrongKeyError("the key is not 64 hex digits") from None
        if len(raw) != WRAPPING_KEY_LEN:
            raise WrongKeyError(f"the key has {len(raw)} bytes, not 32")
        return raw
    if keyformat == 3:
        if not 0 < iters <= MAX_PBKDF2_ITERS:
            raise CryptoError(f"pbkdf2iters {iters} is impossible")
        ck = ("zfs-pbkdf2", hashlib.sha256(value.encode()).hexdigest(), salt, iters)
        hit = METADATA_CACHE.get(ck)
        if hit is None:
            hit = METADATA_CACHE.put(ck, hashlib.pbkdf2_hmac(
                "sha1", value.encode("utf-8"), struct.pack("<Q", salt), iters,
                WRAPPING_KEY_LEN))
        return hit
    raise CryptoError(f"unknown keyformat {keyformat}")


class CryptoKeyObject:
    """The decoded ZAP of a DSL crypto key object (``dsl_crypto_key_t`` on disk)."""

    def __init__(self, entries: dict):
        def num(name, default=None):
            v = entries.get(name)
            return v[0] if isinstance(v, list) and v else default

        def raw(name, n):
            v = entries.get(name)
            if isinstance(v, list):  # some writers store byte arrays as uint8 lists
                v = bytes(x & 0xFF for x in v)
            if not isinstance(v, (bytes, bytearray)) or len(v) < n:
                raise CryptoError(f"DSL crypto key: {name} missing or short")
            return bytes(v[:n])

        self.suite = num("DSL_CRYPTO_SUITE")
        if self.suite not in SUITES:
            raise CryptoError(f"DSL crypto key: unknown encryption suite {self.suite}")
        self.suite_name, self.mode, self.keylen = SUITES[self.suite]
        self.guid = num("DSL_CRYPTO_GUID", 0)
        self.version = num("DSL_CRYPTO_VERSION", 0)
        self.root_ddobj = num("DSL_CRYPTO_ROOT_DDOBJ")
        self.keyformat = num("keyformat", 0)
        self.salt = num("pbkdf2salt", 0)
        self.iters = num("pbkdf2iters", 0)
        self.wrapped_master = raw("DSL_CRYPTO_MASTER_KEY_1", self.keylen)
        self.wrapped_hmac = raw("DSL_CRYPTO_HMAC_KEY_1", SHA512_HMAC_KEYLEN)
        self.iv = raw("DSL_CRYPTO_IV", 12)
        self.mac = raw("DSL_CRYPTO_MAC", MAC_LEN)

    def unwrap(self, wkey: bytes) -> DatasetCrypt:
        """``zio_crypt_key_unwrap``: check the MAC and return the dataset's keys."""
        AESGCM, AESCCM = _aead()
        if self.version == 0:
            aad = struct.pack("<Q", self.guid)
        else:
            aad = struct.pack("<QQQ", self.guid, self.suite, self.version)
        ct = self.wrapped_master + self.wrapped_hmac + self.mac
        try:
            if self.mode == "gcm":
                plain = AESGCM(wkey).decrypt(self.iv, ct, aad)
            else:
                plain = AESCCM(wkey, tag_length=MAC_LEN).decrypt(self.iv, ct, aad)
        except Exception as e:  # cryptography's InvalidTag
            if type(e).__name__ == "InvalidTag":
                raise WrongKeyError("wrong key or passphrase (the wrapped master key's MAC "
                                    "does not match)") from None
            raise CryptoError(f"unwrapping the master key: {type(e).__name__}: {e}") from None
        return DatasetCrypt(self.suite, plain[:self.keylen], plain[self.keylen:], self.version)


#: ``DD_FIELD_CRYPTO_KEY_OBJ`` (dsl_dir.h): the name in a DSL directory's ZAP.
DD_FIELD_CRYPTO_KEY_OBJ = "com.datto:crypto_key_obj"


def key_object_of(mos, dirobj: int) -> int | None:
    """The DSL crypto key object of DSL directory ``dirobj`` (None: not encrypted)."""
    dn = mos.dnode(dirobj)
    if getattr(dn, "maxblkid", 0) < 0 or not getattr(dn, "datablksz", 0):
        return None
    try:
        return zap.zap_int(dn, DD_FIELD_CRYPTO_KEY_OBJ)
    except zap.ZapError:
        return None  # a DSL directory without its extensible ZAP


def load_key_object(mos, key_obj: int) -> CryptoKeyObject:
    entries = zap.zap_entries(mos.dnode(key_obj))
    return CryptoKeyObject(entries)


def _candidates(keys: dict, dataset: str):
    """User keys for ``dataset`` or one of its ancestors, most specific first."""
    name = dataset.split("@", 1)[0].split("#", 1)[0]
    parts = name.split("/")
    for i in range(len(parts), 0, -1):
        prefix = "/".join(parts[:i])
        if prefix in keys:
            yield prefix, keys[prefix]


def _key_dict(keys) -> dict[str, str]:
    if isinstance(keys, dict):
        return {str(k).strip("/"): str(v) for k, v in keys.items()}
    return parse_key_options(keys)


def dataset_crypt(mos, dataset: str, key_obj: int, keys) -> DatasetCrypt | None:
    """The decryptor of ``dataset`` or None when the user gave no key for it.

    ``keys``: ``{"pool/ds": "secret"}`` or the raw ``--zfs-key`` list.  Raises
    :class:`WrongKeyError` when keys were given and none unwraps, and
    :class:`CryptoError` when the key object is broken.
    """
    cands = list(_candidates(_key_dict(keys), dataset))
    if not cands:
        return None
    if not key_obj:
        raise CryptoError(f"{dataset}: encrypted, but its DSL directory names no crypto key")
    ko = load_key_object(mos, key_obj)
    errors = []
    for name, value in cands:
        ck = ("zfs-crypt", getattr(mos, "key", id(mos)), key_obj,
              hashlib.sha256(value.encode()).hexdigest())
        hit = METADATA_CACHE.get(ck)
        if hit is not None:
            return hit
        try:
            dc = ko.unwrap(wrapping_key(ko.keyformat, value, ko.salt, ko.iters))
        except WrongKeyError as e:
            errors.append(f"key for {name}: {e}")
            continue
        return METADATA_CACHE.put(ck, dc)
    raise WrongKeyError("; ".join(errors))


def crypt_for(pool, ds, keys, ctx=None) -> DatasetCrypt | None:
    """Part A's call: the decryptor of DSL dataset ``ds`` (``ds.name``, ``ds.dirobj``,
    ``ds.crypto_key_obj``) in ``pool`` (``pool.mos``), or None without a key."""
    mos = pool.mos
    key_obj = getattr(ds, "crypto_key_obj", None)
    if not key_obj:
        key_obj = key_object_of(mos, ds.dirobj)
    return dataset_crypt(mos, ds.name, key_obj, keys)


# --------------------------------------------------------------------------- blocks
class DatasetCrypt:
    """The unwrapped keys of one dataset; ``decrypt_block`` is part A's hook."""

    cache_cost = 4096

    def __init__(self, suite: int, master: bytes, hmac_key: bytes, version: int):
        self.suite = suite
        self.suite_name, self.mode, self.keylen = SUITES[suite]
        self.master = master
        self.hmac_key = hmac_key
        self.version = version
        self._keys: dict[bytes, bytes] = {}

    def block_key(self, salt: bytes) -> bytes:
        k = self._keys.get(salt)
        if k is None:
            if len(self._keys) > 4096:
                self._keys.clear()
            k = self._keys[salt] = hkdf_sha512(self.master, salt, self.keylen)
        return k

    @staticmethod
    def params(bp) -> tuple[bytes, bytes, bytes]:
        """``(salt, iv, mac)`` of an encrypted block pointer, as the writer's bytes."""
        raw = bp.raw
        salt = raw[32:40]
        iv2 = raw[92:96] if bp.little_container else raw[88:92]
        return salt, raw[40:48] + iv2, raw[112:128]

    def decrypt_block(self, bp, data: bytes) -> bytes:
        """Plain (still compressed) bytes of a block whose blkptr has the crypt bit."""
        if bp.level > 0 or not type_is_encrypted(bp.type) or bp.type == DMU_OT_OBJSET:
            return data  # only authenticated
        salt, iv, mac = self.params(bp)
        key = self.block_key(salt)
        if bp.type == DMU_OT_DNODE:
            return self._decrypt_dnodes(key, iv, data, bp.little)
        if bp.type == DMU_OT_INTENT_LOG:
            raise CryptoError("encrypted intent log blocks are not decrypted")
        AESGCM, AESCCM = _aead()
        try:
            if self.mode == "gcm":
                return AESGCM(key).decrypt(iv, bytes(data) + mac, None)
            return AESCCM(key, tag_length=MAC_LEN).decrypt(iv, bytes(data) + mac, None)
        except Exception as e:
            if type(e).__name__ == "InvalidTag":
                raise UnreadableError(f"encrypted block (birth {bp.birth}): MAC mismatch "
                                      f"(damaged block)", [(0, len(data))]) from None
            raise

    def _counter0(self, iv: bytes) -> bytes:
        """The first keystream counter block of the payload (GCM: J0 + 1; CCM: A_1)."""
        if self.mode == "gcm":
            return iv + b"\0\0\0\x02"
        return bytes([15 - len(iv) - 1]) + iv + (1).to_bytes(15 - len(iv), "big")

    def _decrypt_dnodes(self, key, iv, data: bytes, little: bool) -> bytes:
        """``zio_crypt_init_uios_dnode`` in reverse: decrypt the encrypted bonus areas."""
        out = bytearray(data)
        regions = []
        n = len(data) >> DNODE_SHIFT
        i = 0
        fmt = "<H" if little else ">H"
        while i < n:
            off = i << DNODE_SHIFT
            dn_type, nblkptr, bonustype, flags = data[off], data[off + 3], data[off + 4], \
                data[off + 7]
            bonuslen, = struct.unpack_from(fmt, data, off + 10)
            extra = data[off + 12]
            end = off + ((extra + 1) << DNODE_SHIFT)
            if end > len(data):
                break
            bonus_off = off + 64 + max(nblkptr, 1) * BLKPTR_SIZE
            bonus_end = end - (BLKPTR_SIZE if flags & DNODE_FLAG_SPILL_BLKPTR else 0)
            if (dn_type != 0 and type_is_encrypted(bonustype) and bonuslen != 0
                    and bonus_off < bonus_end):
                regions.append((bonus_off, bonus_end))
            i += extra + 1
        if not regions:
            return bytes(out)
        stream = b"".join(data[a:b] for a, b in regions)
        plain = _ctr(key, self._counter0(iv), stream)
        pos = 0
        for a, b in regions:
            out[a:b] = plain[pos:pos + (b - a)]
            pos += b - a
        return bytes(out)


def describe(ko: CryptoKeyObject) -> str:
    return f"{ko.suite_name}, keyformat {KEYFORMATS.get(ko.keyformat, ko.keyformat)}"

