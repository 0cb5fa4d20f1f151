"""BlueFS: the tiny file system inside a BlueStore device that holds RocksDB.

Layout (single-device OSD, as Proxmox creates them by default):

* byte 0: the BlueStore label (:mod:`.label`);
* byte 4096: ``bluefs_super_t`` + ``u32 crc`` (``ceph_crc32c(-1, ...)``), on the
  BlueFS "DB" device (the main device when there is no ``block.db``);
* the BlueFS log: a file (ino 1) whose first extents are in the super's
  ``log_fnode``.  It is a sequence of ``bluefs_transaction_t`` records, each
  starting at a ``block_size`` boundary and zero-padded to one.  Replaying
  them rebuilds the directory table (``db/``, ``db.wal/``, ``db.slow/``,
  ``sharding/``) and each file's extents.

Replay follows ``BlueFS::_replay``: a record whose uuid is not the super's or
whose seq is not the next one ends the log (a normal stop: it is stale data
of an older log generation); a record that does not decode or fails its crc
ends it too (a torn write after a crash: reported as damage when it is not a
multi-block record, as Ceph then refuses to mount); ``op_jump`` moves to a
new offset (log compaction); ``op_file_update`` of ino 1 extends the log
itself.  Everything is bounded by the log's allocated size.

Extent device ids: 0 = WAL (``block.wal``), 1 = DB (``block.db``, or the main
device when there is none), 2 = SLOW (the main device when a ``block.db``
exists); ``memorized_layout`` (super v2) says which.

References: ceph/src/os/bluestore/BlueFS.cc (_open_super, _replay,
_read), BlueFS.h (BDEV_*), bluefs_types.h/.cc (bluefs_super_t,
bluefs_fnode_t, bluefs_fnode_delta_t, bluefs_extent_t, bluefs_layout_t,
bluefs_transaction_t op codes).
"""

from __future__ import annotations

import uuid as _uuid
from dataclasses import dataclass, field

from pvfs.errors import UnreadableError
from pvfs.source import ExtentSource, MissingSource
from pvfs.structs import parse

from .bluefs_structs import BLUEFS_SUPER_OFFSET, bluefs_super_head, bluefs_transaction_head
from .checksum import ceph_crc32c
from .denc import Reader
from .errors import BlueFSError, DencError

BDEV_WAL, BDEV_DB, BDEV_SLOW = 0, 1, 2
BDEV_NAMES = {BDEV_WAL: "wal", BDEV_DB: "db", BDEV_SLOW: "slow", 3: "newwal", 4: "newdb"}

(OP_NONE, OP_INIT, OP_ALLOC_ADD, OP_ALLOC_RM, OP_DIR_LINK, OP_DIR_UNLINK, OP_DIR_CREATE,
 OP_DIR_REMOVE, OP_FILE_UPDATE, OP_FILE_REMOVE, OP_JUMP, OP_JUMP_SEQ,
 OP_FILE_UPDATE_INC) = range(13)

#: Hard bounds against hostile logs.
MAX_EXTENTS = 1 << 20
#: How far past a damaged log record to look for the next one (blocks).
RESYNC_BLOCKS = 256
#: Where a transaction head holds the log's uuid (after struct_v, struct_compat and
#: struct_len), and the head's size: a block whose bytes there are not the uuid is
#: stale data without parsing it (_record_at; the 256 blocks of a resync are mostly so).
_UUID_AT = sum(sc.sizeof() for sc in bluefs_transaction_head.subcons[:3])
_HEAD_SIZE = bluefs_transaction_head.sizeof()
MAX_NAME = 4096


#: ``bluefs_node_encoding``: how a file's bytes are laid out (Ceph 20 envelope mode).
PLAIN, ENVELOPE, ENVELOPE_FIN = 0, 1, 2


@dataclass
class FNode:
    """``bluefs_fnode_t``: extents are ``(bdev, offset, length)`` tuples.

    ``encoding``/``content_size`` exist from struct_v 2 (envelope mode, Ceph 20).
    """

    ino: int
    size: int
    mtime: tuple
    extents: list = field(default_factory=list)
    encoding: int = PLAIN
    content_size: int = 0

    @property
    def allocated(self) -> int:
        return sum(e[2] for e in self.extents)

    def copy(self) -> FNode:
        return FNode(self.ino, self.size, self.mtime, list(self.extents), self.encoding,
                     self.content_size)


@dataclass
class Super:
    uuid: _uuid.UUID
    osd_uuid: _uuid.UUID
    version: int
    block_size: int
    log_fnode: FNode
    layout: dict | None
    crc_ok: bool
    struct_v: int


def _extents(r: Reader) -> list:
    """``vector<bluefs_extent_t>``: each a DENC(1,1) of lba offset, lowz length, u8 bdev."""
    out = []
    for _ in range(r.count(7)):
        _, _, end = r.start(1, "bluefs_extent_t")
        off = r.lba()
        length = r.varint_lowz()
        bdev = r.u8()
        r.finish(end)
        out.append((bdev, off, length))
    if len(out) > MAX_EXTENTS:
        raise BlueFSError(f"{len(out)} extents in one file")
    return out


def decode_fnode(r: Reader) -> FNode:
    """``bluefs_fnode_t``: DENC(1,1) varint ino, varint size, utime mtime, u8 unused, extents;
    DENC(2,2) (envelope mode) adds varint encoding, varint content_size."""
    v, _, end = r.start(2, "bluefs_fnode_t")
    ino = r.varint()
    size = r.varint()
    mtime = r.utime()
    r.u8()  # __unused__ (was prefer_bdev)
    extents = _extents(r)
    encoding = content_size = 0
    if v >= 2:
        encoding = r.varint()
        content_size = r.varint()
    r.finish(end)
    return FNode(ino, size, mtime, extents, encoding, content_size)


def decode_fnode_delta(r: Reader):
    """``bluefs_fnode_delta_t`` (Quincy+): varint ino, varint size, mtime, u64 offset, extents;
    v2 adds varint encoding, varint content_size ->
    ``(ino, size, mtime, offset, extents, encoding or None, content_size)``."""
    v, _, end = r.start(2, "bluefs_fnode_delta_t")
    ino = r.varint()
    size = r.varint()
    mtime = r.utime()
    offset = r.u64()
    extents = _extents(r)
    encoding, content_size = None, 0
    if v >= 2:
        encoding = r.varint()
        content_size = r.varint()
    r.finish(end)
    return ino, size, mtime, offset, extents, encoding, content_size


def decode_super(block: bytes, verify_crc=True) -> Super:
    """Decode ``bluefs_super_t`` + crc from the 4 KiB block at offset 4096."""
    block = bytes(block)
    head = parse(bluefs_super_head, block, BlueFSError, "bluefs_super_t")
    if head.struct_compat > 3:
        raise BlueFSError(f"bluefs_super_t compat {head.struct_compat} is newer than known (3)")
    if head.block_size < 512 or head.block_size > (1 << 20) or head.block_size & (head.block_size - 1):
        raise BlueFSError(f"bluefs_super_t: implausible block_size {head.block_size}")
    r = Reader(block, bluefs_super_head.sizeof(), error=BlueFSError)
    body_end = 6 + head.struct_len
    if body_end + 4 > len(block):
        raise BlueFSError(f"bluefs_super_t: length {head.struct_len} runs past the block")
    r.end = body_end
    try:
        log_fnode = decode_fnode(r)
        layout = None
        if head.struct_v >= 2 and r.remaining() and r.u8():
            _, _, lend = r.start(1, "bluefs_layout_t")
            layout = {"shared_bdev": r.u32(), "dedicated_db": bool(r.u8()),
                      "dedicated_wal": bool(r.u8())}
            r.finish(lend)
    except DencError as e:
        raise BlueFSError(f"bluefs_super_t: {e}") from None
    stored = int.from_bytes(block[body_end:body_end + 4], "little")
    crc_ok = ceph_crc32c(0xFFFFFFFF, block[:body_end]) == stored
    if verify_crc and not crc_ok:
        raise BlueFSError("bluefs_super_t: crc mismatch")
    return Super(_uuid.UUID(bytes=head.uuid), _uuid.UUID(bytes=head.osd_uuid), head.version,
                 head.block_size, log_fnode, layout, crc_ok, head.struct_v)


def file_source(fnode: FNode, devices: dict, label="bluefs-file", size=None) -> ExtentSource:
    """The bytes of a BlueFS file as a Source over the device Sources ``{bdev: Source}``.

    Bytes past the allocated extents read as unreadable (the file table says
    they exist, no extent holds them).
    """
    size = fnode.size if size is None else size
    extents, pos = [], 0
    for bdev, off, length in fnode.extents:
        if pos >= size:
            break
        n = min(length, size - pos)
        dev = devices.get(bdev)
        if dev is None:
            dev = MissingSource(off + n, f"BlueFS device {BDEV_NAMES.get(bdev, bdev)} not given",
                                label=f"bluefs-{BDEV_NAMES.get(bdev, bdev)}")
        extents.append((pos, n, dev, off))
        pos += n
    if pos < size:
        extents.append((pos, size - pos,
                        MissingSource(size - pos, "beyond the file's allocated extents",
                                      label=label), 0))
    return ExtentSource(size, extents, label=label)


MAX_ENVELOPES = 1 << 22


def envelope_source(fnode: FNode, devices: dict, label="bluefs-file"):
    """The payload of an envelope-mode file (Ceph 20 WAL files) -> ``(Source, note)``.

    The raw file is a run of envelopes ``le64 length, payload, 8-byte stamp``; the
    stamp is the same for every envelope of a file.  ``ENVELOPE_FIN`` files end at
    ``size``; ``ENVELOPE`` files (still open when the OSD stopped) may go on past the
    journaled ``size`` inside their allocation, as long as lengths fit and stamps match.
    Implemented from the format description (BlueFS envelope_t), not yet checked
    against a Ceph 20 OSD.
    """
    raw = file_source(fnode, devices, label=label, size=fnode.allocated)
    limit = raw.size if fnode.encoding == ENVELOPE else min(fnode.size, raw.size)
    pieces, pos, logical, stamp, note = [], 0, 0, None, ""
    while pos + 16 <= limit and len(pieces) < MAX_ENVELOPES:
        try:
            length = int.from_bytes(raw.read(pos, 8), "little")
            if length == 0 or pos + 16 + length > limit:
                break
            st = raw.read(pos + 8 + length, 8)
        except UnreadableError as e:
            note = f"unreadable envelope at {pos:#x}: {e}"
            break
        if stamp is None:
            stamp = st
        elif st != stamp:
            break
        pieces.append((logical, length, raw, pos + 8))
        logical += length
        pos += 16 + length
    if fnode.encoding == ENVELOPE_FIN and pos != fnode.size and not note:
        note = f"envelopes end at {pos:#x}, the file says {fnode.size:#x}"
    elif fnode.encoding == ENVELOPE and pos < fnode.size and not note:
        note = f"envelopes end at {pos:#x}, before the journaled size {fnode.size:#x}"
    return ExtentSource(logical, pieces, label=label), note


class BlueFS:
    """A replayed BlueFS: ``files`` maps ``"dir/name"`` to :class:`FNode`."""

    #: ``fn(code, message)`` for damage met after the replay (reading a file)
    listener = None

    def __init__(self, devices: dict, super_: Super, *, strict=False):
        self.devices = devices
        self.super = super_
        self.dirs: dict = {}  # dirname -> {filename: ino}
        self.inodes: dict = {}  # ino -> FNode
        self.damage: list = []  # (code, message)
        self.log_records = 0
        self.log_seq = 0
        self.log_end = 0
        self.stop_reason = ""
        self.strict = strict
        self._replay()

    # -- public ------------------------------------------------------------------
    @property
    def files(self) -> dict:
        out = {}
        for d in sorted(self.dirs):
            for name, ino in sorted(self.dirs[d].items()):
                f = self.inodes.get(ino)
                if f is not None:
                    out[f"{d}/{name}"] = f
        return out

    def listdir(self, dirname) -> list:
        return sorted(self.dirs.get(dirname, {}))

    def open(self, path) -> ExtentSource:
        f = self.files.get(path)
        if f is None:
            raise BlueFSError(f"BlueFS has no file {path}")
        if f.encoding in (ENVELOPE, ENVELOPE_FIN):
            src, note = envelope_source(f, self.devices, label=f"bluefs:{path}")
            if note and ("bluefs-envelope", f"{path}: {note}") not in self.damage:
                self.damage.append(("bluefs-envelope", f"{path}: {note}"))
                if self.listener is not None:  # found after opening: pass it on
                    self.listener("bluefs-envelope", f"{path}: {note}")
            return src
        return file_source(f, self.devices, label=f"bluefs:{path}")

    def read_file(self, path, limit=64 << 20) -> bytes:
        src = self.open(path)
        if src.size > limit:
            raise BlueFSError(f"BlueFS file {path} is {src.size} bytes, more than {limit}")
        return src.read(0, src.size)

    # -- replay --------------------------------------------------------------------
    def _note(self, code, msg):
        self.damage.append((code, msg))
        if self.strict:
            raise BlueFSError(msg)

    def _replay(self):
        bs = self.super.block_size
        log = self.super.log_fnode.copy()
        log.ino = 1
        self.inodes = {1: log}
        seq = 0
        pos = 0
        seen = False
        # every record advances pos by >= one block inside the allocated log
        for _ in range(1 << 30):
            if pos + bs > log.allocated:
                self.stop_reason = f"end of allocated log at {pos:#x}"
                break
            src = file_source(log, self.devices, label="bluefs-log", size=log.allocated)
            rec = self._record_at(src, pos, log.allocated)
            kind = rec[0]
            if kind == "ok" and rec[1].seq != seq + 1:
                kind, why = "end", f"seq {rec[1].seq} != expected {seq + 1} at {pos:#x}"
            elif kind != "ok":
                why = rec[1]
            if kind != "ok":
                # a lost or damaged record in the middle of the log: Ceph stops there
                # (mount fails or history is cut); we look for the record after it
                nxt = None if self.strict else self._resync(src, pos, seq, log.allocated)
                if nxt is not None:
                    self._note("bluefs-log-skipped",
                               f"BlueFS log record seq {seq + 1} at {pos:#x} is damaged ({why});"
                               f" replay goes on at seq {seq + 2} at {nxt:#x}")
                    seq += 1
                    pos = nxt
                    continue
                if kind == "end":
                    self.stop_reason = why
                elif kind == "torn":
                    self._torn(seen, rec[2], pos, why)
                else:
                    self._note("bluefs-log-unreadable", f"BlueFS log unreadable at {pos:#x}: {why}")
                break
            _, head, more, op_bl = rec
            read_pos = pos + bs + more
            seen = True
            try:
                seq, jump = self._apply(op_bl, seq, pos, read_pos)
            except (DencError, BlueFSError) as e:
                self._note("bluefs-log-bad-op", f"BlueFS log record seq {head.seq} at {pos:#x}: {e}")
                break
            log = self.inodes.get(1, log)
            seq += 1
            self.log_seq = seq
            self.log_records += 1
            pos = read_pos if jump is None else jump
            self.log_end = pos
        for d, entries in self.dirs.items():
            for name, ino in entries.items():
                if ino not in self.inodes:
                    self._note("bluefs-dangling", f"BlueFS {d}/{name} names missing ino {ino}")

    def _record_at(self, src, pos, allocated):
        """The transaction at ``pos``: ``("ok", head, more, op_bl)``, ``("end", why)`` (foreign
        uuid: stale data), ``("torn", why, more)`` (does not decode or fails its crc) or
        ``("unreadable", why)``."""
        bs = self.super.block_size
        try:
            bl = src.read(pos, bs)
        except UnreadableError as e:
            return ("unreadable", str(e))
        if len(bl) >= _HEAD_SIZE and bl[_UUID_AT:_UUID_AT + 16] != self.super.uuid.bytes:
            return ("end", f"uuid differs at {pos:#x}")  # (what the parse below would say)
        head = bluefs_transaction_head.parse(bl)
        if head.uuid != self.super.uuid.bytes:
            return ("end", f"uuid differs at {pos:#x}")
        total = head.struct_len + 6
        more = 0
        if total > bs:
            more = -(-(total - bs) // bs) * bs
            if pos + bs + more > allocated:
                return ("torn", "record runs past the allocated log", more)
            try:
                bl += src.read(pos + bs, more)
            except UnreadableError as e:
                return ("unreadable", str(e))
        try:
            op_bl = self._decode_transaction(bl)
        except (DencError, BlueFSError) as e:
            return ("torn", str(e), more)
        return ("ok", head, more, op_bl)

    def _resync(self, src, pos, seq, allocated):
        """Offset of the record of seq ``seq + 2`` within RESYNC_BLOCKS after ``pos``."""
        bs = self.super.block_size
        for i in range(1, RESYNC_BLOCKS + 1):
            p = pos + i * bs
            if p + bs > allocated:
                return None
            rec = self._record_at(src, p, allocated)
            if rec[0] == "ok" and rec[1].seq == seq + 2:
                return p
        return None

    def _torn(self, seen, more, pos, why):
        if seen and more:  # a multi-block record cut short by a crash: a normal end
            self.stop_reason = f"torn multi-block record at {pos:#x}: {why}"
        else:
            self.stop_reason = f"bad record at {pos:#x}: {why}"
            self._note("bluefs-log-bad-record", f"BlueFS log ends with a bad record at {pos:#x}: {why}")

    @staticmethod
    def _decode_transaction(bl: bytes) -> bytes:
        r = Reader(bl, error=BlueFSError)
        _, _, end = r.start(1, "bluefs_transaction_t")
        r.skip(16 + 8)  # uuid, seq (checked by the caller)
        op_bl = r.bytes32()
        crc = r.u32()
        r.finish(end)
        actual = ceph_crc32c(0xFFFFFFFF, op_bl)
        if actual != crc:
            raise BlueFSError(f"bad crc {actual:#010x}, expected {crc:#010x}")
        return op_bl

    def _apply(self, op_bl: bytes, seq: int, pos: int, read_pos: int):
        """Apply one transaction's ops; returns (log seq, jump offset or None)."""
        r = Reader(op_bl, error=BlueFSError)
        jump = None
        dirs, inodes = self.dirs, self.inodes
        while r.remaining():
            op = r.u8()
            if op in (OP_INIT, OP_NONE):
                pass
            elif op in (OP_ALLOC_ADD, OP_ALLOC_RM):
                r.skip(1 + 8 + 8)  # legacy: u8 id, u64 offset, u64 length
            elif op == OP_DIR_LINK:
                d, name, ino = self._name(r), self._name(r), r.u64()
                if d not in dirs:
                    self._note("bluefs-log-inconsistent", f"op_dir_link into missing dir {d}")
                    dirs[d] = {}
                dirs[d][name] = ino
            elif op == OP_DIR_UNLINK:
                d, name = self._name(r), self._name(r)
                if dirs.get(d, {}).pop(name, None) is None:
                    self._note("bluefs-log-inconsistent", f"op_dir_unlink of missing {d}/{name}")
            elif op == OP_DIR_CREATE:
                dirs.setdefault(self._name(r), {})
            elif op == OP_DIR_REMOVE:
                d = self._name(r)
                if dirs.pop(d, None):
                    self._note("bluefs-log-inconsistent", f"op_dir_remove of non-empty dir {d}")
            elif op == OP_FILE_UPDATE:
                f = decode_fnode(r)
                inodes[f.ino] = f
            elif op == OP_FILE_UPDATE_INC:
                ino, size, mtime, offset, extents, encoding, csize = decode_fnode_delta(r)
                f = inodes.setdefault(ino, FNode(ino, 0, mtime, []))
                if offset != f.allocated:
                    self._note("bluefs-log-inconsistent",
                               f"op_file_update_inc of ino {ino} at {offset:#x}, "
                               f"file has {f.allocated:#x} allocated")
                    # keep the extents that precede the delta's offset
                    keep, acc = [], 0
                    for e in f.extents:
                        if acc >= offset:
                            break
                        keep.append(e if acc + e[2] <= offset else (e[0], e[1], offset - acc))
                        acc += keep[-1][2]
                    f.extents = keep
                f.size, f.mtime = size, mtime
                f.extents = f.extents + extents
                if encoding is not None:
                    f.encoding, f.content_size = encoding, csize
                if len(f.extents) > MAX_EXTENTS:
                    raise BlueFSError(f"ino {ino} has more than {MAX_EXTENTS} extents")
            elif op == OP_FILE_REMOVE:
                ino = r.u64()
                if inodes.pop(ino, None) is None:
                    self._note("bluefs-log-inconsistent", f"op_file_remove of missing ino {ino}")
            elif op == OP_JUMP:
                next_seq, offset = r.u64(), r.u64()
                if next_seq <= seq or offset < read_pos:
                    raise BlueFSError(f"op_jump to seq {next_seq} offset {offset:#x} goes back")
                seq = next_seq - 1
                jump = offset
            elif op == OP_JUMP_SEQ:
                next_seq = r.u64()
                if next_seq <= seq:
                    raise BlueFSError(f"op_jump_seq to {next_seq} goes back from {seq}")
                seq = next_seq - 1
            else:
                raise BlueFSError(f"unknown op {op} at op_bl offset {r.pos - 1}")
        return seq, jump

    @staticmethod
    def _name(r: Reader) -> str:
        n = r.u32()
        if n > MAX_NAME:
            raise BlueFSError(f"name of {n} bytes")
        r.pos -= 4
        return r.string()


def device_map(main, db=None, wal=None, layout=None) -> dict:
    """``{bdev id: Source}`` for the devices the user gave."""
    devices = {}
    if layout is not None:
        shared = layout.get("shared_bdev", BDEV_DB)
        devices[shared] = main
        if layout.get("dedicated_db"):
            if db is not None:
                devices[BDEV_DB] = db
        elif shared != BDEV_DB:
            devices[BDEV_DB] = main
        if layout.get("dedicated_wal") and wal is not None:
            devices[BDEV_WAL] = wal
    else:
        if db is not None:
            devices[BDEV_DB] = db
            devices[BDEV_SLOW] = main
        else:
            devices[BDEV_DB] = main
        if wal is not None:
            devices[BDEV_WAL] = wal
    return devices


def open_bluefs(main, db=None, wal=None, *, strict=False, recover=False,
                osd_uuid=None, scan_limit=4 << 30) -> BlueFS:
    """Read the super (from ``db`` if given, else ``main``) and replay the log.

    ``recover``: when the super is unreadable or damaged, look for the log by
    scanning the device (:func:`find_log_starts`) and replay the best candidate;
    the result then has a ``bluefs-super-recovered`` damage entry.
    """
    super_dev = db if db is not None else main
    if super_dev.size < BLUEFS_SUPER_OFFSET + 4096:
        raise BlueFSError(f"device of {super_dev.size} bytes is too small for BlueFS")
    try:
        try:
            block = super_dev.read(BLUEFS_SUPER_OFFSET, 4096)
        except UnreadableError as e:
            raise BlueFSError(f"BlueFS superblock unreadable: {e}") from None
        sup = decode_super(block)
    except BlueFSError as e:
        if not recover:
            raise
        return recover_bluefs(main, db, wal, reason=str(e), osd_uuid=osd_uuid,
                              scan_limit=scan_limit)
    layout = sup.layout
    if layout and layout.get("dedicated_db") and db is None:
        raise BlueFSError("this OSD keeps BlueFS on a separate block.db device: give it too")
    return BlueFS(device_map(main, db, wal, layout), sup, strict=strict)


_CHUNK_SCAN = 1 << 20
MAX_CANDIDATES = 32


def find_log_starts(dev, limit, block_size=4096):
    """Offsets of blocks that look like the first record of a BlueFS log.

    A log (re)written by ``_compact_log_sync`` / mkfs starts with a transaction of
    ``seq`` 1 whose first op is ``op_init``: ENCODE_START(1, 1), uuid, seq = 1,
    u32 op_bl length, op 1.  Holes are skipped (block_status); the crc is
    checked by the caller.
    """
    import numpy as np

    found = []
    end = min(dev.size, limit)
    for off, ln, st in dev.block_status(0, end):
        if st != "data":
            continue
        pos = off - off % block_size
        while pos < off + ln and len(found) < MAX_CANDIDATES:
            n = min(_CHUNK_SCAN, off + ln - pos)
            try:
                buf = dev.read(pos, n)
            except UnreadableError:
                pos += n
                continue
            nb = len(buf) // block_size
            if nb:
                a = np.frombuffer(buf, np.uint8, nb * block_size).reshape(nb, block_size)
                m = (a[:, 0] == 1) & (a[:, 1] == 1) & (a[:, 22] == 1) & (a[:, 34] == OP_INIT)
                for j in range(23, 30):
                    m &= a[:, j] == 0
                found.extend(pos + int(i) * block_size for i in np.nonzero(m)[0])
            pos += n
    return found[:MAX_CANDIDATES]


def recover_bluefs(main, db=None, wal=None, *, reason="", osd_uuid=None,
                   scan_limit=4 << 30) -> BlueFS:
    """Rebuild BlueFS without its superblock: find log starts, replay each, keep the best.

    The log is assumed to lie on the super's device (DB, or main without block.db) and
    to run on contiguously from its start until a replayed ``op_file_update`` of ino 1
    gives its real extents.  The best replay reaches the highest log seq (the newest
    log generation), then has the most files.
    """
    dev = db if db is not None else main
    devices = device_map(main, db, wal, None)
    best = None
    for off in find_log_starts(dev, scan_limit):
        head = bluefs_transaction_head.parse(dev.read(off, bluefs_transaction_head.sizeof()))
        log = FNode(1, 0, (0, 0), [(BDEV_DB, off, dev.size - off)])
        sup = Super(_uuid.UUID(bytes=head.uuid), osd_uuid or _uuid.UUID(int=0), 0, 4096, log,
                    None, False, 0)
        try:
            fs = BlueFS(devices, sup)
        except (BlueFSError, DencError, UnreadableError):
            continue
        if not fs.log_records:
            continue
        rank = (fs.log_seq, len(fs.files))
        if best is None or rank > best[0]:
            best = (rank, off, fs)
    if best is None:
        raise BlueFSError(f"{reason}; no BlueFS log found in the first {scan_limit >> 20} MiB")
    _, off, fs = best
    fs.damage.insert(0, ("bluefs-super-recovered",
                         f"{reason}; BlueFS rebuilt from the log found at {off:#x}"))
    return fs
