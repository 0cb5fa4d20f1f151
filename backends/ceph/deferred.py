"""BlueStore deferred writes (prefix ``L``) laid over the block device.

Small overwrites on HDD OSDs (below ``bluestore_prefer_deferred_size``) are first
committed to RocksDB as a ``bluestore_deferred_transaction_t`` under key ``L`` +
BE u64 seq, and written to their place on the device afterwards; the key is
deleted once that write is done.  After a crash the device may still hold the old
bytes: BlueStore's ``_deferred_replay`` rewrites every pending transaction at
mount, in key order.  :class:`DeferredSource` gives that view without writing:
the device with every pending write applied, later ones over earlier ones.

Encodings (denc):
``bluestore_deferred_transaction_t``: DENC(1,1) ``u64 seq``, ``list<op>`` (u32 count),
``interval_set<u64> released`` (u32 count + u64 offset/length pairs).
``bluestore_deferred_op_t``: DENC(1,1) ``u8 op`` (1 = OP_WRITE), ``PExtentVector
extents`` (varint count of ``lba offset, varint_lowz length``), ``bufferlist data``.

References: ceph/src/os/bluestore/bluestore_types.h (bluestore_deferred_op_t,
bluestore_deferred_transaction_t, bluestore_pextent_t, denc_traits<PExtentVector>),
BlueStore.cc (_deferred_replay, _deferred_queue, _do_write_small deferred path).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from pvfs.source import Source

from .denc import Reader
from .errors import CephError, DencError

OP_WRITE = 1
#: Bounds against hostile transactions.
MAX_OPS = 1 << 16
MAX_EXTENTS = 1 << 16


class DeferredError(CephError):
    """A deferred transaction (prefix L) cannot be decoded."""


@dataclass
class DeferredTxn:
    seq: int
    writes: list  # [(device offset, bytes)] in the order BlueStore writes them
    released: list  # [(offset, length)]


def decode_deferred(value: bytes) -> DeferredTxn:
    r = Reader(value, error=DeferredError)
    try:
        _, _, end = r.start(1, "bluestore_deferred_transaction_t")
        seq = r.u64()
        writes = []
        nops = r.count(7)
        if nops > MAX_OPS:
            raise DeferredError(f"{nops} ops in one deferred transaction")
        for _ in range(nops):
            _, _, oend = r.start(1, "bluestore_deferred_op_t")
            op = r.u8()
            n = r.varint()
            if n > MAX_EXTENTS or n > r.remaining():
                raise DeferredError(f"{n} extents in a deferred op")
            extents = [(r.lba(), r.varint_lowz()) for _ in range(n)]
            data = r.bytes32()
            r.finish(oend)
            if op != OP_WRITE:
                raise DeferredError(f"unknown deferred op {op}")
            if sum(ln for _, ln in extents) != len(data):
                raise DeferredError(f"deferred write of {len(data)} bytes over extents of "
                                    f"{sum(ln for _, ln in extents)}")
            pos = 0
            for off, ln in extents:
                writes.append((off, data[pos:pos + ln]))
                pos += ln
        released = [(r.u64(), r.u64()) for _ in range(r.count(16))]
        r.finish(end)
    except DencError as e:  # pragma: no cover - Reader raises DeferredError itself
        raise DeferredError(str(e)) from None
    return DeferredTxn(seq, writes, released)


class DeferredSource(Source):
    """``device`` with deferred writes applied (``writes`` oldest first)."""

    def __init__(self, device, writes, label=None):
        super().__init__()
        self.device = device
        self.size = device.size
        self.label = label or f"{device.label}+deferred"
        pieces = []  # sorted, non-overlapping (start, end, data, data_offset)
        for off, data in writes:
            end = min(off + len(data), self.size)
            if end <= off:
                continue
            kept = []
            for s, e, d, do in pieces:
                if e <= off or s >= end:
                    kept.append((s, e, d, do))
                    continue
                if s < off:
                    kept.append((s, off, d, do))
                if e > end:
                    kept.append((end, e, d, do + (end - s)))
            kept.append((off, end, data, 0))
            pieces = sorted(kept)
        self.pieces = pieces
        self._starts = [p[0] for p in pieces]
        self.bytes = sum(e - s for s, e, _, _ in pieces)

    def _read(self, offset, length):
        end = offset + length
        i = bisect.bisect_right(self._starts, offset) - 1
        if i < 0:
            i = 0
        if not self.pieces or self.pieces[i][1] <= offset and \
                (i + 1 >= len(self.pieces) or self.pieces[i + 1][0] >= end):
            return self.device.read(offset, length)
        buf = bytearray(self.device.read(offset, length))
        for s, e, d, do in self.pieces[i:]:
            if s >= end:
                break
            lo, hi = max(s, offset), min(e, end)
            if lo < hi:
                buf[lo - offset:hi - offset] = d[do + lo - s:do + hi - s]
        return bytes(buf)

    def _block_status(self, offset, length):
        return self.device.block_status(offset, length)


def pending_writes(kv):
    """``(writes oldest first, damage list)`` from every ``L`` key of a :class:`KV`."""
    writes, damage = [], []
    for key, value in kv.iterate("L"):
        try:
            txn = decode_deferred(value)
        except DeferredError as e:
            damage.append(("warning", "bluestore-deferred-bad",
                           f"deferred transaction {key.hex()}: {e}"))
            continue
        writes.extend(txn.writes)
    return writes, damage
