"""FileStore journal entries: the ``ObjectStore::Transaction`` lists a FileStore OSD
journaled but had not applied to its filesystem (entries above ``commit_op_seq``).

Entry (``FileJournal::prepare_entry``): ``entry_header_t`` {u64 seq, u32 crc32c (of the
payload, ``bufferlist::crc32c(0)``), u32 len, u32 pre_pad, u32 post_pad, u64 magic1 (the
entry's offset), u64 magic2}, ``pre_pad`` zero bytes, the payload (the transactions, each
encoded), ``post_pad``, the header again.

Transaction (``Transaction::encode``, struct v9+): ``data_bl``, ``op_bl`` (bufferlists),
``coll_index`` (map<coll_t, u32>), ``object_index`` (map<ghobject_t, u32>), then
``TransactionData`` (u64 ops, u32 largest_data_len, u32 largest_data_off, u32
largest_data_off_in_data_bl, u32 fadvise_flags).  ``op_bl`` is an array of packed 72-byte
``Op`` {u32 op, cid, oid, u64 off, len, u32 dest_cid, dest_oid, u64 dest_off, u32 hint,
u64 expected_object_size, expected_write_size, u32 split_bits, split_rem}; the ops' other
arguments are read in order from ``data_bl`` (``Transaction::iterator``): a write's data
(bufferlist), setattrs' / omap_setkeys' maps, rmattr's name, omap_rmkeys' key set ...

References: ceph/src/os/Transaction.{h,cc}, ceph/src/os/filestore/FileJournal.{h,cc},
ceph/src/os/filestore/FileStore.cc (``_do_transaction``), ceph/src/common/hobject.cc
(``ghobject_t::encode``), ceph/src/osd/osd_types.cc (``coll_t::encode``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .checksum import ceph_crc32c
from .denc import Reader
from .errors import CephError
from .keys import NO_GEN, NO_SHARD, ObjectId


class JournalError(CephError):
    """A FileStore journal entry or transaction does not decode."""


OP_NOP, OP_TOUCH, OP_WRITE, OP_ZERO, OP_TRUNCATE, OP_REMOVE = 0, 9, 10, 11, 12, 13
OP_SETATTR, OP_SETATTRS, OP_RMATTR, OP_CLONE, OP_CLONERANGE, OP_CLONERANGE2 = 14, 15, 16, 17, 18, 30
OP_RMATTRS, OP_OMAP_CLEAR, OP_OMAP_SETKEYS, OP_OMAP_RMKEYS, OP_OMAP_SETHEADER = 28, 31, 32, 33, 34
OP_OMAP_RMKEYRANGE, OP_SETALLOCHINT, OP_COLL_HINT = 37, 39, 40
OP_NAMES = {0: "nop", 9: "touch", 10: "write", 11: "zero", 12: "truncate", 13: "remove",
            14: "setattr", 15: "setattrs", 16: "rmattr", 17: "clone", 18: "clonerange",
            19: "mkcoll", 20: "rmcoll", 21: "coll_add", 22: "coll_remove", 27: "startsync",
            28: "rmattrs", 29: "coll_rename", 30: "clonerange2", 31: "omap_clear",
            32: "omap_setkeys", 33: "omap_rmkeys", 34: "omap_setheader",
            35: "split_collection", 36: "split_collection2", 37: "omap_rmkeyrange",
            38: "coll_move_rename", 39: "setallochint", 40: "coll_hint", 41: "try_rename",
            42: "coll_set_bits", 43: "merge_collection"}
_OP = struct.Struct("<IIIQQIIQIQQII")  # 72 bytes, packed
MAX_OPS = 1 << 16


@dataclass
class Op:
    op: int
    oid: ObjectId | None = None
    off: int = 0
    len: int = 0
    dest: ObjectId | None = None
    dest_off: int = 0
    data: bytes = b""
    attrs: dict = field(default_factory=dict)  # setattrs / omap_setkeys
    keys: list = field(default_factory=list)  # rmattr / omap_rmkeys

    @property
    def name(self):
        return OP_NAMES.get(self.op, f"op {self.op}")


def _r(data):
    return Reader(data, error=JournalError)


def _ghobject(r: Reader) -> ObjectId:
    v, _c, end = r.start(what="ghobject_t")
    b = r.sub(end)
    key = b.bytes32()
    name = b.bytes32()
    snap = b.u64()
    h = b.u32()
    b.u8()  # max
    ns = b.bytes32() if v >= 2 else b""
    pool = b.s64() if v >= 2 else -1
    gen, shard = NO_GEN, NO_SHARD
    if v >= 3:
        gen = b.u64()
        s = b.u8()
        shard = NO_SHARD if s == 0xFF else s
    return ObjectId(pool, h, ns, name, key, snap, gen, shard)


def _coll(r: Reader):
    v = r.u8()
    if v == 3:
        return r.string()  # a temp collection by name
    if v != 2:
        raise JournalError(f"coll_t v{v}")
    r.u8()  # type
    _sv, _sc, end = r.start(what="spg_t")
    r.finish(end)
    r.u64()  # snap
    return None


def _map_bl(r: Reader, n_min=8):
    out = {}
    for _ in range(r.count(n_min)):
        k = r.bytes32()
        out[k] = r.bytes32()
    return out


def decode_transaction(r: Reader) -> list[Op]:
    v, _c, end = r.start(what="Transaction")
    b = r.sub(end)
    if v < 9:
        raise JournalError(f"Transaction v{v} (pre-Jewel tbl encoding) is not supported")
    data_bl = b.bytes32()
    op_bl = b.bytes32()
    colls = {}
    for _ in range(b.count(4)):
        c = _coll(b)
        colls[b.u32()] = c
    objs = {}
    for _ in range(b.count(4)):
        o = _ghobject(b)
        objs[b.u32()] = o
    nops = b.u64()
    if nops > MAX_OPS or nops * _OP.size > len(op_bl):
        raise JournalError(f"{nops} ops in {len(op_bl)} bytes")
    d = _r(data_bl)
    out = []
    for i in range(nops):
        (op, _cid, oid, off, ln, _dcid, doid, doff, _hint, _eos, _ews, _sb,
         _sr) = _OP.unpack_from(op_bl, i * _OP.size)
        o = Op(op, objs.get(oid), off, ln, objs.get(doid), doff)
        if op == OP_WRITE:
            o.data = d.bytes32()
            if len(o.data) != ln:
                raise JournalError(f"write of {ln} bytes carries {len(o.data)}")
        elif op in (OP_SETATTRS, OP_OMAP_SETKEYS):
            o.attrs = _map_bl(d)
        elif op == OP_SETATTR:
            k = d.bytes32()
            o.attrs = {k: d.bytes32()}
        elif op == OP_RMATTR:
            o.keys = [d.bytes32()]
        elif op == OP_OMAP_RMKEYS:
            o.keys = [d.bytes32() for _ in range(d.count(4))]
        elif op in (OP_OMAP_SETHEADER, OP_COLL_HINT):
            d.bytes32()
        elif op == OP_OMAP_RMKEYRANGE:
            o.keys = [d.bytes32(), d.bytes32()]
        elif op in (OP_TOUCH, OP_ZERO, OP_TRUNCATE, OP_REMOVE, OP_CLONE, OP_CLONERANGE2,
                    OP_RMATTRS, OP_OMAP_CLEAR, OP_SETALLOCHINT, OP_NOP, 27):
            pass
        else:
            o.data = None  # an op whose data_bl arguments are not known: stop here
            out.append(o)
            return out
        out.append(o)
    return out


@dataclass
class Entry:
    seq: int
    offset: int
    transactions: list  # [[Op]]


def read_entries(src, start, start_seq, after_seq, max_size, block_size, limit=1 << 17):
    """Yield the journal's valid entries from ``start`` (seq ``start_seq``) on; those with
    ``seq <= after_seq`` are skipped (already applied).  Stops at the first entry whose
    header, footer or crc does not match (the end of the journal)."""
    pos, seq = start, start_seq
    for _ in range(limit):
        if not block_size <= pos <= max_size - 40:
            return

        def read(off, n):
            """Ring read: bytes past ``max_size`` continue at ``block_size``."""
            out = bytearray()
            while n > 0:
                if off >= max_size:
                    off = block_size + (off - max_size)
                k = min(n, max_size - off)
                out += src.read(off, k)
                off += k
                n -= k
            return bytes(out), off

        head, p = read(pos, 40)
        e_seq, crc, ln, pre, post, magic1, magic2 = struct.unpack("<QIIIIQQ", head)
        if e_seq != seq or magic1 != pos or ln > max_size or pre > max_size or post > max_size:
            return
        _pad, p = read(p, pre)
        payload, p = read(p, ln)
        _pad, p = read(p, post)
        foot, p = read(p, 40)
        if foot != head or ceph_crc32c(0, payload) != crc:
            return
        if seq > after_seq:
            r = _r(payload)
            tls = []
            while r.remaining():
                tls.append(decode_transaction(r))
            yield Entry(seq, pos, tls)
        pos = p
        seq += 1
