"""The BlueStore block device label (``bluestore_bdev_label_t``).

The first 4 KiB of every BlueStore device (main ``block``, ``block.db``,
``block.wal``) hold:

* the ASCII text ``"bluestore block device\\n"`` + the OSD uuid + ``"\\n"``
  (60 bytes, for humans looking at the device);
* ``ENCODE_START(2, 1)``: ``uuid_d osd_uuid``, ``u64 size``, ``utime_t btime``,
  ``string description`` ("main", "bluefs db", "bluefs wal"), and since
  v2 ``map<string,string> meta`` (``ceph_fsid``, ``whoami``, ``osd_key``,
  ``bluefs``, ``kv_backend``, ``bfm_*`` ...);
* ``u32 crc`` = ``ceph_crc32c(-1, bytes[0 : end of the encoding])``.

Newer Ceph (Squid+) may write more label copies further into the device and
a v3+ body; extra fields are skipped via the ENCODE_START length.

References: ceph/src/os/bluestore/bluestore_types.cc
(bluestore_bdev_label_t::encode/decode), BlueStore.cc (_read_bdev_label,
BDEV_LABEL_BLOCK_SIZE = 4096).
"""

from __future__ import annotations

import uuid as _uuid
from dataclasses import dataclass, field

from .checksum import ceph_crc32c
from .denc import Reader
from .errors import DencError, LabelError

#: The 60-byte human-readable preamble: the magic text and "<uuid>\n".
LABEL_MAGIC = b"bluestore block device\n"
LABEL_PREAMBLE = len(LABEL_MAGIC) + 36 + 1
#: BDEV_LABEL_BLOCK_SIZE: the label never spans more than this.
LABEL_BLOCK_SIZE = 4096


@dataclass
class Label:
    osd_uuid: _uuid.UUID
    size: int
    btime: tuple
    description: str
    meta: dict = field(default_factory=dict)
    struct_v: int = 0
    crc_ok: bool = True
    offset: int = 0

    @property
    def ceph_fsid(self) -> str | None:
        return self.meta.get("ceph_fsid")

    @property
    def whoami(self) -> int | None:
        try:
            return int(self.meta["whoami"])
        except (KeyError, ValueError):
            return None

    @property
    def is_main(self) -> bool:
        return self.description == "main"


def decode_label(block: bytes, *, offset=0, verify_crc=True) -> Label:
    """Decode the label from the first bytes of a device; raise :class:`LabelError`."""
    block = bytes(block[:LABEL_BLOCK_SIZE])
    if not block.startswith(LABEL_MAGIC):
        raise LabelError("no BlueStore label: magic 'bluestore block device' not found")
    r = Reader(block, LABEL_PREAMBLE, error=LabelError)
    try:
        v, compat, body_end = r.start(what="bluestore_bdev_label_t")
        osd_uuid = r.uuid()
        size = r.u64()
        btime = r.utime()
        description = r.string()
        meta = r.str_map() if v >= 2 else {}
        r.finish(body_end)
        stored = r.u32()
    except DencError as e:  # pragma: no cover - Reader raises LabelError directly
        raise LabelError(str(e)) from None
    text_uuid = block[len(LABEL_MAGIC):len(LABEL_MAGIC) + 36]
    if text_uuid != str(osd_uuid).encode() and verify_crc:
        raise LabelError(f"label text uuid {text_uuid!r} differs from the encoded {osd_uuid}")
    crc = ceph_crc32c(0xFFFFFFFF, block[:body_end])
    label = Label(osd_uuid, size, btime, description, meta, v, crc == stored, offset)
    if verify_crc and not label.crc_ok:
        raise LabelError(f"label crc mismatch: stored {stored:#010x}, computed {crc:#010x}")
    return label


def read_label(source, offset=0, verify_crc=True) -> Label:
    """Read and check the label of a device ``source`` at ``offset``."""
    if source.size < offset + LABEL_PREAMBLE + 6:
        raise LabelError(f"device of {source.size} bytes is too small for a BlueStore label")
    return decode_label(source.read(offset, LABEL_BLOCK_SIZE), offset=offset,
                        verify_crc=verify_crc)


#: Where Ceph 19 (Squid) keeps copies of the main device's label (BDEV_LABEL_POSITIONS);
#: older releases have only the one at 0.
LABEL_COPY_OFFSETS = (0, 1 << 30, 10 << 30, 100 << 30, 1000 << 30)


def find_label(source) -> Label:
    """The label at 0, or the first good copy when it is damaged (``offset`` says which).

    Raises the error of the label at 0 when no copy is good either.
    """
    try:
        return read_label(source)
    except LabelError as first:
        err = first
    for off in LABEL_COPY_OFFSETS[1:]:
        if off + LABEL_BLOCK_SIZE > source.size:
            break
        try:
            label = read_label(source, off)
        except (LabelError, OSError):
            continue
        if label.is_main:
            return label
    raise err


def probe_label(block: bytes) -> Label | None:
    """A label when ``block`` starts with a decodable one (crc may be bad), else None."""
    try:
        return decode_label(block, verify_crc=False)
    except LabelError:
        return None
