"""The VMDK text descriptor: extents, CID chain, parent hint.

# References:
- VMware "Virtual Disk Format 5.0", "The Descriptor File" (header fields, extent lines
  ``access size type "file" [offset]``, the disk database).
- qemu/qemu block/vmdk.c (vmdk_parse_extents, vmdk_read_cid: tolerant of spacing,
  quoting and unknown keys; ``parentCID=ffffffff`` means no parent).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pvfs.errors import FormatError

from . import looks_like_descriptor  # noqa: F401 (shared with the light declaration)

MAX_DESCRIPTOR = 1 << 20  # bytes read of a descriptor file
MAX_EXTENTS = 4096
NO_PARENT = 0xFFFFFFFF
EXTENT_TYPES = ("SPARSE", "FLAT", "ZERO", "VMFS", "VMFSSPARSE", "VMFSRDM", "VMFSRAW",
                "SESPARSE")
_EXTENT_RE = re.compile(
    r'^(RW|RDONLY|NOACCESS)\s+(\d+)\s+([A-Za-z]+)(?:\s+"((?:[^"\\]|\\.)*)"(?:\s+(\d+))?)?\s*$')


class VmdkError(FormatError):
    """A VMDK descriptor, header or table is not what the specification says."""


@dataclass
class Extent:
    access: str
    sectors: int
    type: str
    filename: str | None
    offset: int = 0  # sectors into the file (FLAT)


@dataclass
class Descriptor:
    cid: int | None = None
    parent_cid: int | None = None
    create_type: str | None = None
    parent_hint: str | None = None
    extents: list[Extent] = field(default_factory=list)
    ddb: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # lines that were not understood

    @property
    def sectors(self) -> int:
        return sum(e.sectors for e in self.extents)


def _unquote(v: str) -> str:
    v = v.strip()
    if len(v) >= 2 and v[0] == v[-1] == '"':
        v = v[1:-1]
    return v


def _hex(v: str) -> int | None:
    try:
        return int(_unquote(v), 16)
    except ValueError:
        return None


def parse_descriptor(data: bytes) -> Descriptor:
    """Parse descriptor text; unknown lines are kept as problems, never fatal.

    Raises :class:`VmdkError` only when no extent line is found at all.
    """
    text = data.split(b"\0", 1)[0].decode("utf-8", "replace")
    d = Descriptor()
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _EXTENT_RE.match(line)
        if m:
            if len(d.extents) >= MAX_EXTENTS:
                raise VmdkError(f"more than {MAX_EXTENTS} extents")
            etype = m.group(3).upper()
            if etype not in EXTENT_TYPES:
                d.problems.append(f"unknown extent type in {line!r}")
            name = m.group(4)
            if name is not None:
                name = name.replace('\\"', '"')
            d.extents.append(Extent(m.group(1), int(m.group(2)), etype, name,
                                    int(m.group(5) or 0)))
            continue
        key, eq, value = line.partition("=")
        if not eq:
            d.problems.append(f"line not understood: {line[:80]!r}")
            continue
        key = key.strip()
        if key == "CID":
            d.cid = _hex(value)
        elif key == "parentCID":
            d.parent_cid = _hex(value)
        elif key == "createType":
            d.create_type = _unquote(value)
        elif key == "parentFileNameHint":
            d.parent_hint = _unquote(value) or None
        elif key.startswith("ddb."):
            d.ddb[key] = _unquote(value)
    if not d.extents:
        raise VmdkError("descriptor has no extent lines")
    return d
