"""Errors of the Ceph backend (one base, one subclass a layer)."""

from pvfs.errors import FormatError


class CephError(FormatError):
    """Base of every Ceph/BlueStore format error."""


class DencError(CephError):
    """A Ceph ``denc``/``encoding.h`` value runs past its buffer or is malformed."""


class LabelError(CephError):
    """The BlueStore block device label is missing or damaged."""


class BlueFSError(CephError):
    """The BlueFS superblock or log cannot be used."""


class RocksDBError(CephError):
    """A RocksDB file (MANIFEST, SST, WAL) is malformed."""
