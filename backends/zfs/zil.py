"""The ZFS intent log: the records a pool never synced, listed (not yet replayed).

References: OpenZFS include/sys/zil.h (zfs-2.3.9: zil_header_t, zil_chain_t, lr_t and
the record layouts lr_create_t, lr_remove_t, lr_link_t, lr_rename_t, lr_write_t,
lr_truncate_t, lr_setattr_t, lr_clone_range_t, the TX_* types, TX_CI, LR_FOID_GET_OBJ),
module/zfs/zil.c (zil_parse: the chain from zh_log, stopped at the first block that does
not verify or past zh_claim_blk_seq / zh_claim_lr_seq when the log was claimed;
zil_read_log_block: ZILOG2 keeps the zil_chain_t at the start and counts it in
zc_nused, the old ZILOG at the end; the next block's verifier is this one's + 1;
zil_replay_log_record: records at or below zh_replay_seq were replayed, records of a
txg before the claim txg (unclaimed log: up to the synced uberblock) are committed).

Replaying the records into the file systems is not implemented: the reader lists what
the pool holds beyond its last synced state, so a recovery knows what is missing.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .blkptr import BlkPtr
from .errors import ZfsError
from .structs import BLKPTR_SIZE

TX_NAMES = {1: "create", 2: "mkdir", 3: "mkxattr", 4: "symlink", 5: "remove", 6: "rmdir",
            7: "link", 8: "rename", 9: "write", 10: "truncate", 11: "setattr", 12: "acl_v0",
            13: "acl", 14: "create_acl", 15: "create_attr", 16: "create_acl_attr",
            17: "mkdir_acl", 18: "mkdir_attr", 19: "mkdir_acl_attr", 20: "write2",
            21: "setsaxattr", 22: "rename_exchange", 23: "rename_whiteout",
            24: "clone_range"}
TX_CI = 1 << 63
LR_SIZE = 32  # lr_t
ZIL_CHAIN_SIZE = 8 + BLKPTR_SIZE + 8 + 40  # zc_pad, zc_next_blk, zc_nused, zc_eck
MAX_BLOCKS = 100_000  # a chain longer than this is damaged or hostile
ZIL_CLAIM_LR_SEQ_VALID = 2
_CREATES = (1, 2, 3, 4, 15, 17, 18, 19)  # name after _lr_create_t (ACL/attr: after more)


@dataclass
class Record:
    txtype: int
    txg: int
    seq: int
    what: str  # one-line description


def _obj(v):
    return v & ((1 << 48) - 1)  # LR_FOID_GET_OBJ (DN_MAX_OBJECT_SHIFT 48)


def _cstr(b: bytes, off: int, end: int) -> str:
    raw = b[off:end].split(b"\0", 1)[0]
    return raw[:300].decode("utf-8", "backslashreplace")


def describe(txtype: int, rec: bytes, fmt: str) -> str:
    """A record in words (only fields every version writes at these offsets)."""
    name = TX_NAMES.get(txtype, f"type {txtype}")
    q = struct.Struct(fmt + "Q")

    def u(i):
        off = LR_SIZE + 8 * i
        return q.unpack_from(rec, off)[0] if off + 8 <= len(rec) else 0

    if txtype in (1, 2, 3, 4):
        return (f"{name} '{_cstr(rec, LR_SIZE + 72, len(rec))}' in directory {u(0)} as "
                f"object {_obj(u(1))} mode {u(2):o}")
    if txtype in _CREATES or txtype in (14, 16):
        return f"{name} in directory {u(0)} as object {_obj(u(1))} mode {u(2):o}"
    if txtype in (5, 6):
        return f"{name} '{_cstr(rec, LR_SIZE + 8, len(rec))}' from directory {u(0)}"
    if txtype == 7:
        return f"link object {u(1)} as '{_cstr(rec, LR_SIZE + 16, len(rec))}' in directory {u(0)}"
    if txtype in (8, 22, 23):
        names = rec[LR_SIZE + (80 if txtype == 23 else 16):].split(b"\0")
        src = names[0][:300].decode("utf-8", "backslashreplace") if names else ""
        dst = names[1][:300].decode("utf-8", "backslashreplace") if len(names) > 1 else ""
        return f"{name} '{src}' (directory {u(0)}) to '{dst}' (directory {u(1)})"
    if txtype in (9, 20):
        inline = len(rec) > LR_SIZE + 32 + BLKPTR_SIZE
        return (f"{name} object {_obj(u(0))} bytes {u(1)}+{u(2)} "
                f"({'data in the log' if inline else 'data in a block of its own'})")
    if txtype == 10:
        return f"truncate object {_obj(u(0))} at {u(1)} length {u(2)}"
    if txtype == 24:
        return f"clone into object {_obj(u(0))} bytes {u(1)}+{u(2)}"
    return f"{name} object {_obj(u(0))}"


def log_records(objset, synced_txg: int, limit: int = 100_000):
    """The records of ``objset``'s intent log that a pool import would replay:
    ``(records, problem)``; ``problem`` names a chain that ended in damage (None when
    it ended at the first unwritten block, as every log does)."""
    raw = objset.raw
    fmt = "<" if objset.little else ">"
    base = 512  # zil_header_t follows the meta-dnode in objset_phys_t
    claim_txg, replay_seq = struct.unpack_from(fmt + "QQ", raw, base)
    claim_blk_seq, flags, claim_lr_seq = struct.unpack_from(
        fmt + "QQQ", raw, base + 16 + BLKPTR_SIZE)
    if not claim_txg:
        claim_blk_seq = claim_lr_seq = 1 << 64
    elif not flags & ZIL_CLAIM_LR_SEQ_VALID:
        claim_lr_seq = 1 << 64
    committed_below = claim_txg if claim_txg else synced_txg + 1
    pool = objset.pool
    bp = objset.zil_log
    out = []
    problem = None
    seen = set()
    for _ in range(MAX_BLOCKS):
        if bp.hole or bp.embedded or not bp.dvas:
            break
        blk_seq = bp.cksum[3]
        if blk_seq > claim_blk_seq or blk_seq in seen:
            break
        seen.add(blk_seq)
        got = pool.read_zil_block(bp)
        if got is None:
            break  # the first block never written: the normal end of a log
        data, little = got
        bfmt = "<" if little else ">"
        try:
            if pool_algo(bp) == "zilog2":
                nxt = BlkPtr(data[8:8 + BLKPTR_SIZE], little)
                (nused,) = struct.unpack_from(bfmt + "Q", data, 8 + BLKPTR_SIZE)
                start, end = ZIL_CHAIN_SIZE, nused
                if nused < ZIL_CHAIN_SIZE or nused > len(data):
                    problem = f"log block {blk_seq}: bad zc_nused {nused}"
                    break
            else:
                tail = len(data) - ZIL_CHAIN_SIZE
                nxt = BlkPtr(data[tail + 8:tail + 8 + BLKPTR_SIZE], little)
                (nused,) = struct.unpack_from(bfmt + "Q", data, tail + 8 + BLKPTR_SIZE)
                start, end = 0, nused
                if nused > tail:
                    problem = f"log block {blk_seq}: bad zc_nused {nused}"
                    break
        except (ZfsError, struct.error) as e:
            problem = f"log block {blk_seq}: {e}"
            break
        if tuple(nxt.cksum[:3]) != tuple(bp.cksum[:3]) or nxt.cksum[3] != blk_seq + 1:
            problem = f"log block {blk_seq}: next block pointer does not continue the chain"
            break
        off = start
        while off + LR_SIZE <= end:
            txtype, reclen, txg, seq = struct.unpack_from(bfmt + "4Q", data, off)
            if reclen < LR_SIZE or off + reclen > end:
                problem = f"log block {blk_seq}: record at {off} has a bad length {reclen}"
                return out, problem
            if seq > claim_lr_seq:
                return out, problem
            t = txtype & ~TX_CI
            if seq > replay_seq and txg >= committed_below:
                out.append(Record(t, txg, seq, describe(t, data[off:off + reclen], bfmt)))
                if len(out) >= limit:
                    return out, problem
            off += reclen
        bp = nxt
    return out, problem


def pool_algo(bp) -> str:
    from .checksum import algo_name

    return algo_name(bp.cksum_type)


def summary(records, shown: int = 12) -> str:
    counts = {}
    for r in records:
        counts[TX_NAMES.get(r.txtype, str(r.txtype))] = counts.get(
            TX_NAMES.get(r.txtype, str(r.txtype)), 0) + 1
    head = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    lines = "; ".join(f"seq {r.seq} txg {r.txg}: {r.what}" for r in records[:shown])
    more = f"; ... {len(records) - shown} more" if len(records) > shown else ""
    return f"{len(records)} records ({head}): {lines}{more}"
