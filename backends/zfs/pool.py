"""A pool: its members, vdev tree, uberblocks and the block read path.

References: OpenZFS module/zfs/zio.c (zio_read: ditto DVAs, gang blocks
zio_gang_tree_*, zio_checksum_verify, zio_decompress_data, embedded data:
decode_embedded_bp_compressed), spa.c / vdev_label.c (uberblock selection:
vdev_uberblock_compare, newest txg then timestamp), spa_misc.c (spa_config),
"ZFS On-Disk Specification" chapters 1-2.
"""

from __future__ import annotations

import copy
import itertools
import struct

import numpy as np

from pvfs.cache import METADATA_CACHE, ByteLRU
from pvfs.errors import UnreadableError

from . import checksum, compress
from .blkptr import BlkPtr
from .errors import ZfsError
from .structs import (BLKPTR_SIZE, DMU_OT_OBJSET, SPA_GANGBLOCKSIZE, SPA_MAXBLOCKSIZE,
                      ZEC_MAGIC)

_POOL_UIDS = itertools.count(1)
#: Decompressed file and zvol data blocks: their own LRU, so a sequential read of a big
#: file does not push the pools' metadata out of METADATA_CACHE.  It still lets the
#: small reads FUSE makes hit one decompressed record many times.
DATA_CACHE = ByteLRU(32 * 1024 * 1024)
_DATA_TYPES = (19, 23)  # DMU_OT_PLAIN_FILE_CONTENTS, DMU_OT_ZVOL
MAX_GANG_DEPTH = 8
ZIL_MIN_BLKSZ = 4096  # SPA_GANGBLOCKSIZE trees are at most a few levels deep


class BlockError(UnreadableError):
    """A block could not be read from any copy (ranges are filled in by the caller)."""


class Pool:
    """An assembled pool: ``read_bp`` turns block pointers into bytes."""

    def __init__(self, name, guid, config, root_vdevs, ctx=None, path=""):
        self.name = name
        self.guid = guid
        self.config = config
        self.tops = root_vdevs  # list indexed by top-level vdev id
        self.ctx = ctx
        self.path = path
        self.uid = next(_POOL_UIDS)  # never id(): a freed pool's id is reused, its cache not
        self.unverified = set()  # checksum algorithms that could not be verified
        self._salt = None  # the checksum salt from the MOS object directory, once read
        self.repairs = 0  # blocks whose first copy was bad and another one was good
        self.mos = None
        self.active_features = {}  # guid -> refcount from the MOS (backend._active_features)
        self.quiet = False  # while probing older uberblocks: their blocks may be reused
        self._lossy = None  # _lossy_tops(), once

    def _lossy_tops(self):
        """Indexes of the top-level vdevs with more members missing than their redundancy
        covers (a RAIDZ/dRAID with more than ``nparity``, a mirror with every child, a
        missing leaf or top): some of their blocks cannot be rebuilt.  Computed once."""
        if self._lossy is None:
            lossy = set()
            for i, top in enumerate(self.tops):
                if top is None or top.kind == "missing":
                    lossy.add(i)
                    continue
                gone = len(top.missing_leaves())
                if not gone:
                    continue
                kids = getattr(top, "children", None)
                if kids is None or gone > getattr(top, "nparity", len(kids) - 1):
                    lossy.add(i)
            self._lossy = frozenset(lossy)
        return self._lossy

    def may_be_lost(self, bp) -> bool:
        """Whether every copy of ``bp`` lies on a top-level vdev beyond its redundancy,
        so that only a read tells whether it can be rebuilt (block status asks this
        before marking a data block readable)."""
        lossy = self._lossy_tops()
        if not lossy or bp.embedded or bp.hole:
            return False
        return all(d.vdev in lossy or d.vdev >= len(self.tops) for d in bp.dvas)

    def set_reflow(self, ub):
        """The progress of a RAIDZ expansion as of uberblock ``ub`` (rows past the synced
        reflow offset are still in the old layout)."""
        for t in self.tops:
            if hasattr(t, "set_reflow"):
                t.set_reflow(getattr(ub, "raidz_reflow_info", 0))

    # -- damage ---------------------------------------------------------------------
    def report(self, severity, code, message, path=None, ranges=(), outcome=""):
        if self.ctx is not None and not self.quiet:
            self.ctx.report.add(severity, "zfs", path or self.path, code, message, ranges,
                                outcome)

    # -- block reads -----------------------------------------------------------------
    def _candidates(self, dva, size, bp):
        """Copies of the block at ``dva``; RAIDZ picks its layout by BP_GET_BIRTH (the
        physical birth when set: a cloned or dedup'd block keeps where it was written)."""
        if dva.vdev >= len(self.tops):
            return iter(())
        return self.tops[dva.vdev].candidates(dva.offset, size, bp.phys_birth or bp.birth)

    def _top_ashift(self, dva):
        if dva.vdev < len(self.tops):
            return self.tops[dva.vdev].ashift
        return 9

    @property
    def checksum_salt(self):
        """DMU_POOL_CHECKSUM_SALT: 32 bytes that key skein, edonr and blake3 (None when
        the MOS is not open yet or the entry cannot be read)."""
        if self._salt is None and self.mos is not None:
            from . import zap  # zap reads through this pool: imported when first needed

            try:
                v = zap.zap_lookup(self.mos.dnode(1), "org.illumos:checksum_salt")
            except (UnreadableError, ZfsError, ValueError):
                v = None
            self._salt = bytes(v) if isinstance(v, (bytes, bytearray)) else b""
        return self._salt or None

    def _verify(self, bp, data):
        """True/False; raises checksum.Unverifiable when the checksum cannot be computed."""
        algo = checksum.algo_name(bp.cksum_type)
        if algo in ("off", "noparity"):
            # checksum=off: ZFS itself reads these unchecked (zio_checksum_verify); served,
            # but said in the report
            if algo not in self.unverified:
                self.unverified.add(algo)
                self.report("info", "checksum-off",
                            f"blocks written with checksum={algo} have no checksum: they "
                            f"are read unverified, as ZFS reads them")
            return True
        salt = self.checksum_salt if algo in checksum.SALTED else None
        actual = checksum.compute(algo, data, bp.little, salt)
        return checksum.verify_words(actual, bp.cksum, crypt=bp.encrypted)

    def _unverifiable(self, bp, why):
        algo = checksum.algo_name(bp.cksum_type)
        if algo not in self.unverified:
            self.unverified.add(algo)
            self.report("error", "checksum-unverifiable",
                        f"blocks with checksum {algo} cannot be verified ({why}): they are "
                        f"not served (EIO; the datasets and files they hold are named in their "
                        f"own entries)")
        where = ", ".join(repr(d) for d in bp.dvas) or "no DVA"
        return BlockError(f"zfs: block {where} (birth {bp.birth}) not verified: "
                          f"checksum {algo} cannot be computed ({why})")

    def _read_gang(self, bp, dva, depth):
        """A gang block: a 512-byte header of three block pointers whose data, joined,
        is the block's physical data."""
        if depth > MAX_GANG_DEPTH:
            raise ZfsError("gang block tree too deep")
        header = None
        for cand in self._candidates(dva, SPA_GANGBLOCKSIZE, bp):
            # zio_checksum_gang_verifier: (vdev, offset, birth, 0) in the eck.
            ok, little = _verify_gang_header(cand, dva, bp.birth)
            if ok:
                header = (cand, little)
                break
        if header is None:
            return None
        raw, little = header
        parts = []
        total = 0
        for i in range(3):
            child = BlkPtr(raw[i * BLKPTR_SIZE:(i + 1) * BLKPTR_SIZE], little)
            if child.hole:
                continue
            data = self.read_physical(child, depth + 1)
            parts.append(data[:child.psize])
            total += child.psize
            if total >= bp.psize:
                break
        data = b"".join(parts)
        if len(data) < bp.psize:
            return None
        return data[:bp.psize]

    def zil_block_valid(self, bp) -> bool:
        """Whether the intent log block ``bp`` was written (see ObjSet.has_intent_log)."""
        return self.read_zil_block(bp) is not None

    def read_zil_block(self, bp):
        """The intent log block ``bp`` as ``(bytes, little)`` when it was written (its
        embedded checksum matches with the block pointer's verifier), else None."""
        algo = checksum.algo_name(bp.cksum_type)
        if algo not in ("zilog", "zilog2") or bp.psize > SPA_MAXBLOCKSIZE:
            return None
        for dva in bp.dvas:
            for cand in self._candidates(dva, bp.psize, bp):
                eck_off = 8 + BLKPTR_SIZE + 8 if algo == "zilog2" else len(cand) - 40
                if eck_off < 0 or eck_off + 40 > len(cand):
                    continue
                (magic,) = struct.unpack_from("<Q", cand, eck_off)
                little = magic == ZEC_MAGIC
                if not little and magic != int.from_bytes(ZEC_MAGIC.to_bytes(8, "little"), "big"):
                    continue
                fmt = "<4Q" if little else ">4Q"
                stored = struct.unpack_from(fmt, cand, eck_off + 8)
                buf = bytearray(cand)
                struct.pack_into(fmt, buf, eck_off + 8, *bp.cksum)
                f = checksum.fletcher4 if algo == "zilog2" else checksum.fletcher2
                sizes = [len(cand)]
                if algo == "zilog2":
                    # zio_checksum_error_impl: a ZILOG2 block is written and checksummed
                    # only up to zc_nused rounded up to ZIL_MIN_BLKSZ (zio_shrink of the
                    # lwb write); the block pointer keeps the allocated size
                    (nused,) = struct.unpack_from("<Q" if little else ">Q", cand,
                                                  8 + BLKPTR_SIZE)
                    nused = -(-nused // ZIL_MIN_BLKSZ) * ZIL_MIN_BLKSZ
                    if nused > len(cand):
                        continue
                    sizes = [nused] + ([len(cand)] if nused < len(cand) else [])
                with np.errstate(over="ignore"):
                    for size in sizes:
                        if f(bytes(buf[:size]), little) == stored:
                            return cand, little
        return None

    def _repaired(self, bp, dva, failed):
        self.repairs += 1
        self.report("info", "checksum-repaired",
                    f"block {dva!r} (birth {bp.birth}): {failed} bad "
                    f"cop{'y' if failed == 1 else 'ies'}/reconstruction(s) failed the checksum; "
                    f"repaired from redundancy", outcome="repaired")

    def read_physical(self, bp: BlkPtr, depth=0) -> bytes:
        """The block's physical bytes (``psize``), checked against its checksum."""
        if bp.psize > SPA_MAXBLOCKSIZE or bp.lsize > SPA_MAXBLOCKSIZE:
            raise ZfsError(f"block pointer with a hostile size {bp.psize}/{bp.lsize}")
        tried = 0
        for dva in bp.dvas:
            if dva.gang:
                try:
                    data = self._read_gang(bp, dva, depth)
                except UnreadableError:
                    data = None
                try:
                    ok = data is not None and self._verify(bp, data)
                except checksum.Unverifiable as e:
                    raise self._unverifiable(bp, e) from None
                if ok:
                    if tried:
                        self._repaired(bp, dva, tried)
                    return data
                tried += 1
                continue
            for _n, cand in enumerate(self._candidates(dva, bp.psize, bp)):
                tried += 1
                try:
                    ok = len(cand) == bp.psize and self._verify(bp, cand)
                except checksum.Unverifiable as e:
                    raise self._unverifiable(bp, e) from None
                if ok:
                    if tried > 1:
                        self._repaired(bp, dva, tried - 1)
                    return cand
                if tried > 10000:
                    break
        where = ", ".join(repr(d) for d in bp.dvas) or "no DVA"
        raise BlockError(f"zfs: block {where} (birth {bp.birth}) unreadable: "
                         f"{'checksum mismatch on every copy' if tried else 'no copy can be read'}")

    def read_bp(self, bp: BlkPtr, objset=None, cache=True) -> bytes:
        """The block's logical bytes (``lsize``): verified, decrypted, decompressed."""
        if bp.embedded:
            if bp.etype != 0:
                raise ZfsError(f"embedded block pointer of unknown type {bp.etype}")
            return compress.decompress(bp.comp, bp.embedded_payload(), bp.lsize)
        if bp.hole:
            return bytes(bp.lsize)
        key = None
        lru = DATA_CACHE if bp.level == 0 and bp.type in _DATA_TYPES else METADATA_CACHE
        if cache and bp.dvas:
            d0 = bp.dvas[0]
            key = ("zfs-blk", self.uid, d0.vdev, d0.offset, bp.birth, bp.cksum)
            hit = lru.get(key)
            if hit is not None:
                return hit
        data = self.read_physical(bp)
        if bp.encrypted:
            crypt = getattr(objset, "crypt", None) if objset is not None else None
            if crypt is not None:
                data = crypt.decrypt_block(bp, data)
            elif bp.level == 0 and bp.type != DMU_OT_OBJSET:
                # objset and indirect blocks are only authenticated (MAC), not encrypted
                raise EncryptedError("zfs: block is encrypted and no key is loaded")
        if bp.comp not in (0, 2) or len(data) != bp.lsize:
            data = compress.decompress(bp.comp, data, bp.lsize, bulk=lru is DATA_CACHE)
        if key is not None:
            lru.put(key, data)
        return data

    def describe(self):
        return [t.describe() for t in self.tops]

    def view(self, path):
        """The same pool seen at another txg: own tree path and MOS; damage found there
        is expected history (blocks freed and reused since), reported as warnings."""
        v = copy.copy(self)
        v.path = path
        v.mos = None
        if self.ctx is not None:
            v.ctx = HistoryContext(self.ctx)
        return v


class HistoryContext:
    """A discovery context for views of older txgs: what cannot be read there is history
    (blocks freed and reused since), not a loss of the pool as it is: errors become notes."""

    def __init__(self, ctx):
        self._ctx = ctx
        self.report = _HistoryReport(ctx.report)

    def __getattr__(self, name):
        return getattr(self._ctx, name)


class _HistoryReport:
    def __init__(self, report):
        self._report = report

    def add(self, severity, layer, path, code, message, ranges=(), outcome=""):
        if severity == "error":
            severity, outcome = "info", "note"
            message = f"(older txg) {message}"
        return self._report.add(severity, layer, path, code, message, ranges, outcome)

    def __getattr__(self, name):
        return getattr(self._report, name)


class EncryptedError(ZfsError):
    """Data of an encrypted dataset without its key."""


def _verify_gang_header(buf, dva, birth):
    if len(buf) < SPA_GANGBLOCKSIZE:
        return False, None
    tail = buf[-40:]
    (m,) = struct.unpack("<Q", tail[:8])
    little = m == ZEC_MAGIC
    fmt = "<4Q" if little else ">4Q"
    stored = struct.unpack(fmt, tail[8:40])
    ver = struct.pack(fmt, dva.vdev, dva.offset, birth, 0)
    return checksum.sha256_words(buf[:-32] + ver) == stored, little

