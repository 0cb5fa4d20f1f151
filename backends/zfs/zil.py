"""The ZFS intent log (ZIL): the chain of log blocks and the records in it.

References: OpenZFS zfs-2.3.9
  - include/sys/zil.h: zil_header_t (zh_claim_txg, zh_replay_seq, zh_log,
    zh_claim_blk_seq, zh_flags ZIL_REPLAY_NEEDED / ZIL_CLAIM_LR_SEQ_VALID,
    zh_claim_lr_seq), zil_chain_t, lr_t and the record layouts (_lr_create_t,
    lr_acl_create_t, lr_remove_t, lr_link_t, _lr_rename_t, lr_rename_whiteout_t,
    lr_write_t, lr_truncate_t, lr_setattr_t, lr_setsaxattr_t, lr_acl_t, lr_acl_v0_t,
    lr_clone_range_t), the TX_* types, TX_CI, TX_OOO, LR_FOID_GET_OBJ, ZIL_XVAT_SIZE,
    ZIL_ACE_LENGTH.
  - module/zfs/zil.c: zil_parse (the chain from zh_log; a claimed log stops past
    zh_claim_blk_seq / zh_claim_lr_seq), zil_read_log_block (ZILOG2 keeps the zil_chain_t
    at the start and counts it in zc_nused, the old ZILOG a trailer at the end; the next
    block's verifier is this one's + 1; a block that does not verify ends the log),
    zil_claim / zil_claim_log_record / zil_claim_write / zil_claim_clone_range (what an
    import claims: an indirect write whose block cannot be read, or a clone of a block
    from the future, ends the log), zil_replay_log_record (records at or below
    zh_replay_seq were replayed, records of a txg before the claim txg are committed).
  - module/zfs/zfs_replay.c: where each record keeps its names (zfs_replay_create,
    zfs_replay_fuid_domain, zfs_replay_fuids, zfs_replay_create_acl).

``read_log`` walks a dataset's log as an import would claim it and returns the records
a replay applies (``zilreplay.py`` applies them in memory).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from pvfs.errors import PvfsError

from .blkptr import BlkPtr
from .errors import ZfsError
from .structs import BLKPTR_SIZE

TX_NAMES = {1: "create", 2: "mkdir", 3: "mkxattr", 4: "symlink", 5: "remove", 6: "rmdir",
            7: "link", 8: "rename", 9: "write", 10: "truncate", 11: "setattr", 12: "acl_v0",
            13: "acl", 14: "create_acl", 15: "create_attr", 16: "create_acl_attr",
            17: "mkdir_acl", 18: "mkdir_attr", 19: "mkdir_acl_attr", 20: "write2",
            21: "setsaxattr", 22: "rename_exchange", 23: "rename_whiteout",
            24: "clone_range"}
(TX_CREATE, TX_MKDIR, TX_MKXATTR, TX_SYMLINK, TX_REMOVE, TX_RMDIR, TX_LINK, TX_RENAME,
 TX_WRITE, TX_TRUNCATE, TX_SETATTR, TX_ACL_V0, TX_ACL, TX_CREATE_ACL, TX_CREATE_ATTR,
 TX_CREATE_ACL_ATTR, TX_MKDIR_ACL, TX_MKDIR_ATTR, TX_MKDIR_ACL_ATTR, TX_WRITE2,
 TX_SETSAXATTR, TX_RENAME_EXCHANGE, TX_RENAME_WHITEOUT, TX_CLONE_RANGE) = range(1, 25)
TX_MAX_TYPE = 25
TX_CI = 1 << 63
#: TX_OOO: records that may be logged out of order (their object may be gone)
TX_OOO = {TX_WRITE, TX_TRUNCATE, TX_SETATTR, TX_ACL_V0, TX_ACL, TX_WRITE2, TX_SETSAXATTR,
          TX_CLONE_RANGE}
CREATE_TYPES = {TX_CREATE, TX_MKDIR, TX_MKXATTR, TX_SYMLINK, TX_CREATE_ATTR, TX_MKDIR_ATTR,
                TX_CREATE_ACL, TX_CREATE_ACL_ATTR, TX_MKDIR_ACL, TX_MKDIR_ACL_ATTR}
ACL_CREATES = {TX_CREATE_ACL, TX_CREATE_ACL_ATTR, TX_MKDIR_ACL, TX_MKDIR_ACL_ATTR}
ATTR_CREATES = {TX_CREATE_ATTR, TX_MKDIR_ATTR, TX_CREATE_ACL_ATTR, TX_MKDIR_ACL_ATTR}
DIR_CREATES = {TX_MKDIR, TX_MKDIR_ATTR, TX_MKDIR_ACL, TX_MKDIR_ACL_ATTR}

ZIL_REPLAY_NEEDED = 0x1
ZIL_CLAIM_LR_SEQ_VALID = 0x2
LR_SIZE = 32  # lr_t: lrc_txtype, lrc_reclen, lrc_txg, lrc_seq
ZIL_CHAIN_SIZE = 8 + BLKPTR_SIZE + 8 + 40  # zc_pad, zc_next_blk, zc_nused, zc_eck
LR_WRITE_SIZE = LR_SIZE + 32 + BLKPTR_SIZE  # sizeof (lr_write_t): 192
LR_CREATE_SIZE = LR_SIZE + 72  # sizeof (_lr_create_t): 104
LR_ACL_CREATE_SIZE = LR_CREATE_SIZE + 40  # sizeof (lr_acl_create_t): 144
LR_ATTR_END_SIZE = 8 + 16 + 32  # lr_attr_end_t
MAX_BLOCKS = 100_000  # a chain longer than this is damaged or hostile
MAX_KEPT = 64 << 20  # record bytes kept for replay (write data stays in the log blocks)
MAX_NAME = 4096
_CREATES = (1, 2, 3, 4, 15, 17, 18, 19)  # kept for describe(): name after _lr_create_t


class ZilRecordError(ZfsError):
    """A log record whose fields do not fit its length."""


# -- record layouts (include/sys/zil.h), after the 32-byte lr_t ---------------------------
_FIELDS = {
    "create": ("lr_doid", "lr_foid", "lr_mode", "lr_uid", "lr_gid", "lr_gen",
               "lr_crtime_sec", "lr_crtime_nsec", "lr_rdev"),
    "acl_create": ("lr_aclcnt", "lr_domcnt", "lr_fuidcnt", "lr_acl_bytes", "lr_acl_flags"),
    "remove": ("lr_doid",),
    "link": ("lr_doid", "lr_link_obj"),
    "rename": ("lr_sdoid", "lr_tdoid"),
    "whiteout": ("lr_wfoid", "lr_wmode", "lr_wuid", "lr_wgid", "lr_wgen", "lr_wcrtime_sec",
                 "lr_wcrtime_nsec", "lr_wrdev"),
    "write": ("lr_foid", "lr_offset", "lr_length", "lr_blkoff"),
    "truncate": ("lr_foid", "lr_offset", "lr_length"),
    "setattr": ("lr_foid", "lr_mask", "lr_mode", "lr_uid", "lr_gid", "lr_size",
                "lr_atime_sec", "lr_atime_nsec", "lr_mtime_sec", "lr_mtime_nsec"),
    "setsaxattr": ("lr_foid", "lr_size"),
    "acl": ("lr_foid", "lr_aclcnt", "lr_domcnt", "lr_fuidcnt", "lr_acl_bytes",
            "lr_acl_flags"),
    "acl_v0": ("lr_foid", "lr_aclcnt"),
    "clone_range": ("lr_foid", "lr_offset", "lr_length", "lr_blksz", "lr_nbps"),
}
_LAYOUT = {TX_REMOVE: "remove", TX_RMDIR: "remove", TX_LINK: "link", TX_RENAME: "rename",
           TX_RENAME_EXCHANGE: "rename", TX_RENAME_WHITEOUT: "rename", TX_WRITE: "write",
           TX_WRITE2: "write", TX_TRUNCATE: "truncate", TX_SETATTR: "setattr",
           TX_SETSAXATTR: "setsaxattr", TX_ACL: "acl", TX_ACL_V0: "acl_v0",
           TX_CLONE_RANGE: "clone_range"}
for _t in CREATE_TYPES:
    _LAYOUT[_t] = "create"


def obj_of(foid: int) -> int:
    """LR_FOID_GET_OBJ: the object number (the top 8 bits count extra dnode slots)."""
    return foid & ((1 << 48) - 1)


@dataclass
class Rec:
    """One log record: its lr_t, its fixed fields (by their zil.h names) and what follows.

    For a TX_WRITE the data is not kept: ``data_at`` is its offset in the log block
    ``block`` (a WR_COPIED record) and ``blkptr`` the block of a WR_INDIRECT one.
    """

    txtype: int
    reclen: int
    txg: int
    seq: int
    ci: bool
    f: dict = field(default_factory=dict)
    names: tuple = ()  # names/strings after the fixed part (create/remove/link/rename/...)
    value: bytes = b""  # setsaxattr value
    blkptr: BlkPtr | None = None  # TX_WRITE: lr_blkptr (indirect writes)
    bps: tuple = ()  # TX_CLONE_RANGE: lr_bps[]
    data_at: int = -1  # TX_WRITE with data in the log: offset of the data in ``block``
    block: BlkPtr | None = None  # the log block that holds the record
    notes: tuple = ()  # parts of the record a replay here does not apply

    @property
    def name(self) -> str:
        return TX_NAMES.get(self.txtype, f"type {self.txtype}")

    @property
    def indirect(self) -> bool:
        return self.txtype == TX_WRITE and self.reclen == LR_WRITE_SIZE

    @property
    def obj(self) -> int:
        f = self.f
        for k in ("lr_foid", "lr_link_obj", "lr_doid", "lr_sdoid"):
            if k in f:
                return obj_of(f[k])
        return 0

    def what(self) -> str:
        return describe_rec(self)


def _cstrings(raw: bytes, off: int, count: int) -> tuple[list[bytes], int]:
    out = []
    for _ in range(count):
        end = raw.find(b"\0", off)
        if end < 0:
            raise ZilRecordError("a name runs past the end of its record")
        if end - off > MAX_NAME:
            raise ZilRecordError(f"a name of {end - off} bytes")
        out.append(raw[off:end])
        off = end + 1
    return out, off


def _fuid_index(v: int) -> int:
    return (v >> 32) & 0xFFFFFFFF  # FUID_INDEX


def parse_record(raw: bytes, little: bool) -> Rec:
    """A log record from its bytes (``raw`` = lrc_reclen bytes, the log block's byte
    order).  Raises :class:`ZilRecordError` when its fields do not fit."""
    o = "<" if little else ">"
    if len(raw) < LR_SIZE:
        raise ZilRecordError(f"record of {len(raw)} bytes")
    txtype, reclen, txg, seq = struct.unpack_from(o + "4Q", raw, 0)
    t = txtype & ~TX_CI
    rec = Rec(t, reclen, txg, seq, bool(txtype & TX_CI))
    layout = _LAYOUT.get(t)
    if layout is None:
        raise ZilRecordError(f"unknown record type {t}")
    names = _FIELDS[layout]
    pos = LR_SIZE + 8 * len(names)
    if pos > len(raw):
        raise ZilRecordError(f"{rec.name} record of {len(raw)} bytes (needs {pos})")
    rec.f = dict(zip(names, struct.unpack_from(o + f"{len(names)}Q", raw, LR_SIZE),
                     strict=True))
    f = rec.f
    notes = []
    if layout == "create":
        if t in ACL_CREATES:
            if pos + 40 > len(raw):
                raise ZilRecordError("create record too short for its ACL header")
            f.update(zip(_FIELDS["acl_create"], struct.unpack_from(o + "5Q", raw, pos),
                         strict=True))
            pos += 40
        if t in ATTR_CREATES:
            if pos + 4 > len(raw):
                raise ZilRecordError("create record too short for its lr_attr_t")
            (masksize,) = struct.unpack_from(o + "I", raw, pos)
            if masksize < 1 or masksize > 64:
                raise ZilRecordError(f"lr_attr_masksize {masksize}")
            pos += 8 + 4 * (masksize - 1) + LR_ATTR_END_SIZE  # ZIL_XVAT_SIZE
            notes.append("system attributes (xvattr: immutable, append-only ...) not applied")
        if t in ACL_CREATES:
            acl_bytes = f["lr_acl_bytes"]
            if acl_bytes > len(raw):
                raise ZilRecordError(f"lr_acl_bytes {acl_bytes}")
            pos += -(-acl_bytes // 8) * 8  # ZIL_ACE_LENGTH
            if f["lr_fuidcnt"] > len(raw) // 8 or f["lr_domcnt"] > 256:
                raise ZilRecordError("bad FUID counts")
            pos += 8 * f["lr_fuidcnt"]
            if f["lr_domcnt"]:
                _, pos = _cstrings(raw, pos, f["lr_domcnt"])
            if f["lr_aclcnt"]:
                notes.append(f"NFSv4 ACL of {f['lr_aclcnt']} entries not applied")
        elif t != TX_SYMLINK:  # zfs_replay_fuid_domain
            u, g = _fuid_index(f["lr_uid"]), _fuid_index(f["lr_gid"])
            dom = (1 if u else 0) + (1 if g and g != u else 0)
            if dom:
                _, pos = _cstrings(raw, pos, dom)
                notes.append("owner/group are Windows SIDs (FUIDs): shown as stored")
        if t == TX_MKXATTR:
            rec.names = ()
        else:
            strs, pos = _cstrings(raw, pos, 2 if t == TX_SYMLINK else 1)
            if t == TX_SYMLINK:
                # the target follows the name; it may fill the record without a NUL
                rec.names = tuple(strs)
            else:
                rec.names = tuple(strs)
    elif layout in ("remove", "link"):
        rec.names = tuple(_cstrings(raw, pos, 1)[0])
    elif layout == "rename":
        if t == TX_RENAME_WHITEOUT:
            w = _FIELDS["whiteout"]
            if pos + 8 * len(w) > len(raw):
                raise ZilRecordError("rename_whiteout record too short")
            f.update(zip(w, struct.unpack_from(o + f"{len(w)}Q", raw, pos), strict=True))
            pos += 8 * len(w)
        rec.names = tuple(_cstrings(raw, pos, 2)[0])
    elif layout == "write":
        if pos + BLKPTR_SIZE > len(raw):
            raise ZilRecordError("write record without its block pointer")
        rec.blkptr = BlkPtr(bytes(raw[pos:pos + BLKPTR_SIZE]), little)
        pos += BLKPTR_SIZE
        if t == TX_WRITE and reclen > LR_WRITE_SIZE:
            if f["lr_length"] > reclen - LR_WRITE_SIZE:
                raise ZilRecordError(f"write of {f['lr_length']} bytes in a record of "
                                     f"{reclen}")
            rec.data_at = LR_WRITE_SIZE
    elif layout == "setattr":
        if f["lr_mask"] & ATTR_XVATTR:
            notes.append("system attributes (xvattr) not applied")
    elif layout == "setsaxattr":
        strs, pos = _cstrings(raw, pos, 1)
        rec.names = tuple(strs)
        size = f["lr_size"]
        if size and pos + size > len(raw):
            raise ZilRecordError(f"xattr value of {size} bytes past the record")
        rec.value = bytes(raw[pos:pos + size]) if size else b""
    elif layout == "clone_range":
        n = f["lr_nbps"]
        if n > (len(raw) - pos) // BLKPTR_SIZE:
            raise ZilRecordError(f"lr_nbps {n} past the record")
        rec.bps = tuple(BlkPtr(bytes(raw[pos + i * BLKPTR_SIZE:pos + (i + 1) * BLKPTR_SIZE]),
                               little) for i in range(n))
    elif layout in ("acl", "acl_v0"):
        notes.append("ACL records are not applied (the ACL itself is not shown)")
    rec.notes = tuple(notes)
    return rec


ATTR_MODE, ATTR_UID, ATTR_GID, ATTR_SIZE, ATTR_ATIME, ATTR_MTIME = 1, 2, 4, 8, 16, 32
ATTR_XVATTR = 1 << 31  # include/os/linux/spl/sys/vnode.h


def _s(b: bytes) -> str:
    return b[:300].decode("utf-8", "backslashreplace")


def describe_rec(r: Rec) -> str:
    f = r.f
    t = r.txtype
    if t in CREATE_TYPES:
        nm = f"'{_s(r.names[0])}' " if r.names else ""
        tail = f" -> '{_s(r.names[1])}'" if t == TX_SYMLINK and len(r.names) > 1 else ""
        return (f"{r.name} {nm}in directory {f['lr_doid']} as object {obj_of(f['lr_foid'])} "
                f"mode {f['lr_mode']:o}{tail}")
    if t in (TX_REMOVE, TX_RMDIR):
        return f"{r.name} '{_s(r.names[0])}' from directory {f['lr_doid']}"
    if t == TX_LINK:
        return f"link object {f['lr_link_obj']} as '{_s(r.names[0])}' in directory {f['lr_doid']}"
    if t in (TX_RENAME, TX_RENAME_EXCHANGE, TX_RENAME_WHITEOUT):
        return (f"{r.name} '{_s(r.names[0])}' (directory {f['lr_sdoid']}) to "
                f"'{_s(r.names[1])}' (directory {f['lr_tdoid']})")
    if t in (TX_WRITE, TX_WRITE2):
        how = ("data in a block of its own" if r.indirect else "data in the log")
        return (f"{r.name} object {obj_of(f['lr_foid'])} bytes {f['lr_offset']}+"
                f"{f['lr_length']} ({how})")
    if t == TX_TRUNCATE:
        return f"truncate object {obj_of(f['lr_foid'])} at {f['lr_offset']} length {f['lr_length']}"
    if t == TX_SETATTR:
        return f"setattr object {obj_of(f['lr_foid'])} mask {f['lr_mask']:#x}"
    if t == TX_SETSAXATTR:
        return (f"setsaxattr object {obj_of(f['lr_foid'])} '{_s(r.names[0])}' "
                f"({f['lr_size']} bytes)")
    if t == TX_CLONE_RANGE:
        return (f"clone into object {obj_of(f['lr_foid'])} bytes {f['lr_offset']}+"
                f"{f['lr_length']} ({f['lr_nbps']} blocks)")
    return f"{r.name} object {r.obj}"


def describe(txtype: int, rec: bytes, fmt: str) -> str:
    """A record in words (falls back to the type when its fields do not fit)."""
    try:
        return describe_rec(parse_record(rec, fmt == "<"))
    except (ZfsError, ValueError, struct.error, KeyError, IndexError):
        return f"{TX_NAMES.get(txtype, f'type {txtype}')} (record does not parse)"


# -- the chain ----------------------------------------------------------------------------
@dataclass
class ZilHeader:
    claim_txg: int
    replay_seq: int
    log: BlkPtr
    claim_blk_seq: int
    flags: int
    claim_lr_seq: int


def header(objset) -> ZilHeader:
    """zil_header_t, after the meta-dnode in objset_phys_t."""
    raw = objset.raw
    o = "<" if objset.little else ">"
    base = 512
    claim_txg, replay_seq = struct.unpack_from(o + "QQ", raw, base)
    log = BlkPtr(bytes(raw[base + 16:base + 16 + BLKPTR_SIZE]), objset.little)
    blk_seq, flags, lr_seq = struct.unpack_from(o + "QQQ", raw, base + 16 + BLKPTR_SIZE)
    return ZilHeader(claim_txg, replay_seq, log, blk_seq, flags, lr_seq)


@dataclass
class ZilLog:
    """A dataset's log as an import sees it (see :func:`read_log`)."""

    header: ZilHeader
    claimed: bool
    replay_txg: int  # records of a txg before this one were synced (zh_claim_txg)
    records: list  # the records a replay applies, in order
    skipped: int = 0  # valid records already synced or replayed
    blocks: int = 0  # log blocks read
    replay_needed: bool = False
    end: str = ""  # why the walk ended (a normal end: the first unwritten block)
    problem: str | None = None  # damage: records after it are lost
    block_little: bool = True


@dataclass
class Record:  # kept for log_records() (the lister's interface)
    txtype: int
    txg: int
    seq: int
    what: str


def _chain_next(data: bytes, little: bool, algo: str):
    """(next block pointer, first record offset, end of records) of a log block."""
    o = "<" if little else ">"
    if algo == "zilog2":
        nxt = BlkPtr(bytes(data[8:8 + BLKPTR_SIZE]), little)
        (nused,) = struct.unpack_from(o + "Q", data, 8 + BLKPTR_SIZE)
        if nused < ZIL_CHAIN_SIZE or nused > len(data):
            raise ZilRecordError(f"bad zc_nused {nused}")
        return nxt, ZIL_CHAIN_SIZE, nused
    tail = len(data) - ZIL_CHAIN_SIZE
    if tail < 0:
        raise ZilRecordError(f"log block of {len(data)} bytes")
    nxt = BlkPtr(bytes(data[tail + 8:tail + 8 + BLKPTR_SIZE]), little)
    (nused,) = struct.unpack_from(o + "Q", data, tail + 8 + BLKPTR_SIZE)
    if nused > tail:
        raise ZilRecordError(f"bad zc_nused {nused}")
    return nxt, 0, nused


def _looks_written(pool, bp, seq):
    """A block that fails its checksum but whose zil_chain_t links to block seq+1 of the
    same chain (the chain's random GUID words): it was written, so it is damage, not
    the log's end."""
    try:
        for dva in bp.dvas:
            for cand in pool._candidates(dva, bp.psize, bp):
                for little in (True, False):
                    o = "<" if little else ">"
                    nxt = struct.unpack_from(o + "16Q", cand, 8)
                    if tuple(nxt[12:15]) == tuple(bp.cksum[:3]) and nxt[15] == seq + 1:
                        return True
                    tail = len(cand) - ZIL_CHAIN_SIZE + 8
                    if tail > 0:
                        nxt = struct.unpack_from(o + "16Q", cand, tail)
                        if tuple(nxt[12:15]) == tuple(bp.cksum[:3]) and nxt[15] == seq + 1:
                            return True
    except (PvfsError, ValueError, struct.error, AttributeError, TypeError):
        return False
    return False


def read_log(objset, synced_txg: int, limit: int = 1_000_000) -> ZilLog:
    """The records of ``objset``'s intent log that an import would replay.

    zil_claim + zil_replay (zil.c) in one walk: an unclaimed log (zh_claim_txg 0) is
    claimed as of ``synced_txg + 1`` (spa_first_txg): the chain ends at the first block
    that does not verify, at an indirect write whose block cannot be read
    (zil_claim_write) or at a clone of a block born after the last synced txg
    (zil_claim_clone_range); a claimed log ends at zh_claim_blk_seq / zh_claim_lr_seq.
    Records at or below zh_replay_seq or of a txg before the claim txg are skipped.
    """
    hdr = header(objset)
    claimed = hdr.claim_txg != 0
    inf = 1 << 64
    claim_blk_seq = hdr.claim_blk_seq if claimed else inf
    claim_lr_seq = hdr.claim_lr_seq if claimed else inf
    if not hdr.flags & ZIL_CLAIM_LR_SEQ_VALID:
        claim_lr_seq = inf
    first_txg = synced_txg + 1
    replay_txg = hdr.claim_txg if claimed else first_txg
    log = ZilLog(hdr, claimed, replay_txg, [])
    pool = objset.pool
    bp = hdr.log
    max_blk_seq = max_lr_seq = 0
    lr_count = 0
    kept = 0
    from .checksum import algo_name

    for _ in range(MAX_BLOCKS):
        if bp.hole or bp.embedded or not bp.dvas:
            log.end = "the chain ends (no next block)"
            break
        blk_seq = bp.cksum[3]
        if blk_seq > claim_blk_seq:
            log.end = f"block {blk_seq} is past the claimed blocks"
            break
        if blk_seq <= max_blk_seq:
            log.problem = f"log block sequence goes back ({blk_seq} after {max_blk_seq})"
            break
        max_blk_seq = blk_seq
        log.blocks += 1
        if max_lr_seq == claim_lr_seq and max_blk_seq == claim_blk_seq:
            log.end = "the last claimed record was reached"
            break
        got = pool.read_zil_block(bp)
        if got is None:
            if claimed and blk_seq <= claim_blk_seq != inf:
                log.problem = (f"log block {blk_seq} was claimed by an import but no longer "
                               f"verifies")
            elif _looks_written(pool, bp, blk_seq):
                log.problem = (f"log block {blk_seq} fails its checksum although it links "
                               f"to block {blk_seq + 1}: damaged")
            log.end = f"block {blk_seq} does not verify (the first block never written)"
            break
        data, little = got
        log.block_little = little
        try:
            nxt, off, end = _chain_next(data, little, algo_name(bp.cksum_type))
        except (ZfsError, struct.error) as e:
            log.problem = f"log block {blk_seq}: {e}"
            break
        if tuple(nxt.cksum[:3]) != tuple(bp.cksum[:3]) or nxt.cksum[3] != blk_seq + 1:
            log.problem = f"log block {blk_seq}: its next block pointer leaves the chain"
            break
        o = "<" if little else ">"
        while off < end:
            if off + LR_SIZE > end:
                log.problem = f"log block {blk_seq}: lr_t overrun at {off}"
                return _done(log, lr_count, claimed)
            txtype, reclen, txg, seq = struct.unpack_from(o + "4Q", data, off)
            if reclen < LR_SIZE or reclen > end - off:
                log.problem = f"log block {blk_seq}: record at {off} has a bad length {reclen}"
                return _done(log, lr_count, claimed)
            if seq > claim_lr_seq:
                log.end = "the last claimed record was reached"
                return _done(log, lr_count, claimed)
            if seq <= max_lr_seq:
                log.problem = f"log block {blk_seq}: record sequence goes back ({seq})"
                return _done(log, lr_count, claimed)
            t = txtype & ~TX_CI
            wanted = seq > hdr.replay_seq and txg >= replay_txg
            rec = None
            if wanted or not claimed:
                raw = data[off:off + (LR_WRITE_SIZE if t == TX_WRITE and
                                      reclen > LR_WRITE_SIZE else reclen)]
                try:
                    rec = parse_record(raw, little)
                except (ZfsError, struct.error, ValueError) as e:
                    rec = Rec(t, reclen, txg, seq, bool(txtype & TX_CI),
                              notes=(f"does not parse: {e}",))
                rec.reclen = reclen
                if rec.data_at >= 0:
                    rec.data_at += off
                rec.block = bp
            if not claimed and rec is not None and not _unparsed(rec):
                stop = _claim_check(pool, objset, rec, first_txg)
                if stop:
                    log.end = stop
                    return _done(log, lr_count, claimed)
            max_lr_seq = seq
            lr_count += 1
            if wanted:
                kept += len(raw) if rec is not None else 0
                if kept > MAX_KEPT or len(log.records) >= limit:
                    log.problem = (f"the log holds more than {len(log.records)} records / "
                                   f"{MAX_KEPT >> 20} MiB: the rest is not replayed")
                    return _done(log, lr_count, claimed)
                log.records.append(rec)
            else:
                log.skipped += 1
            off += reclen
        bp = nxt
    else:
        log.problem = f"the chain is longer than {MAX_BLOCKS} blocks"
    return _done(log, lr_count, claimed)


def _unparsed(rec) -> bool:
    return bool(rec.notes) and rec.notes[0].startswith("does not parse")


def _claim_check(pool, objset, rec, first_txg):
    """zil_claim_log_record: why the claim of an unclaimed log would end here (or None)."""
    if rec.txtype == TX_WRITE and rec.indirect and rec.blkptr is not None:
        bp = rec.blkptr
        if bp.hole or bp.birth < first_txg:
            return None
        try:
            pool.read_bp(bp, objset, cache=False)
        except (PvfsError, ValueError, AttributeError) as e:
            return (f"record {rec.seq}: the block of its indirect write cannot be read ({e}): "
                    f"the log ends here (zil_claim_write)")
    if rec.txtype == TX_CLONE_RANGE:
        for bp in rec.bps:
            if not bp.hole and not bp.embedded and (bp.phys_birth or bp.birth) >= first_txg:
                return (f"record {rec.seq}: clones a block born after the last synced txg: "
                        f"the log ends here (zil_claim_clone_range)")
    return None


def _done(log, lr_count, claimed):
    if claimed:
        log.replay_needed = bool(log.header.flags & ZIL_REPLAY_NEEDED)
    else:  # zil_claim: ZIL_REPLAY_NEEDED when there are records or several blocks
        log.replay_needed = bool(lr_count or log.blocks > 1)
    if not log.replay_needed:
        log.records = []
    return log


def log_records(objset, synced_txg: int, limit: int = 100_000):
    """``(records, problem)``: the records an import would replay, as :class:`Record`."""
    log = read_log(objset, synced_txg, limit)
    return [Record(r.txtype, r.txg, r.seq, r.what()) for r in log.records], log.problem


def summary(records, shown: int = 12) -> str:
    counts = {}
    for r in records:
        counts[TX_NAMES.get(r.txtype, str(r.txtype))] = counts.get(
            TX_NAMES.get(r.txtype, str(r.txtype)), 0) + 1
    head = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    what = [r.what if isinstance(r.what, str) else r.what() for r in records[:shown]]
    lines = "; ".join(f"seq {r.seq} txg {r.txg}: {w}"
                      for r, w in zip(records[:shown], what, strict=True))
    more = f"; ... {len(records) - shown} more" if len(records) > shown else ""
    return f"{len(records)} records ({head}): {lines}{more}"
