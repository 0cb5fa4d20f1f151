"""Files of an input folder that no backend recognised, kept as names and sizes only.

A folder given to pvfs (a copied /var/lib/vz, a backup disk's root, a home directory) is
mostly clutter: logs, checksums, notes, ISO images.  Every file in it is probed as soon as
the walk finds it (pvfs/discover.py); one that no backend recognises is not shown in the
tree and keeps no source, descriptor, volume or damage entry of its own, only its name and
size here (the name's bytes and 8 bytes of size), so that a folder of 100,000 such files
costs a few MB instead of the ~3 KB per file a volume with its report entry cost (issue 15
item 5).  The report says per folder how many there are with a few examples; report.json
lists every one.
"""

from __future__ import annotations

import json
import os
from array import array
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .damage import DamageReport

EXAMPLES = 3  # names given in the one-line summary


class SkippedFiles:
    """The unrecognised files of one input folder (not of its sub-folders)."""

    __slots__ = ("folder", "path", "count", "bytes", "_names", "_sizes")

    def __init__(self, folder: str, path: str) -> None:
        self.folder = folder  # the folder on this machine (absolute)
        self.path = path  # its directory in the tree (storage/files/...)
        self.count = 0
        self.bytes = 0
        self._names = bytearray()  # each name's bytes followed by a NUL (never in a name)
        self._sizes = array("Q")

    def add(self, name: str, size: int) -> None:
        self._names += os.fsencode(name)
        self._names.append(0)
        self._sizes.append(size)
        self.count += 1
        self.bytes += size

    def __iter__(self) -> Iterator[tuple[str, int]]:
        """``(name, size)`` in the order the walk found them (sorted by name's bytes)."""
        names, pos = self._names, 0
        for size in self._sizes:
            end = names.index(0, pos)
            yield os.fsdecode(bytes(names[pos:end])), size
            pos = end + 1

    def examples(self, n: int = EXAMPLES) -> list[str]:
        out = []
        for name, _size in self:
            if len(out) == n:
                break
            out.append(name)
        return out

    def line(self) -> str:
        """How many, how much: the line under Inputs in ``pvfs scan`` and report.html."""
        from .report import _fmt_size

        return (f"{self.folder}/: {self.count:,} file{'s' if self.count != 1 else ''} not "
                f"recognised ({_fmt_size(self.bytes)})")

    def report(self, report: DamageReport) -> None:
        """One entry for the folder: how many, how much, which."""
        from .report import _fmt_size

        names = ", ".join(self.examples())
        if self.count == 1:
            report.add("info", "core", self.path, "files-not-recognised",
                       f"1 file in {self.folder} was not recognised and is not shown: {names}")
            return
        more = (f" and {self.count - EXAMPLES:,} more (report.json lists every one)"
                if self.count > EXAMPLES else "")
        report.add("info", "core", self.path, "files-not-recognised",
                   f"{self.count:,} files ({_fmt_size(self.bytes)}) in {self.folder} were not "
                   f"recognised and are not shown: {names}{more}")

    def json_chunks(self, indent: str) -> Iterator[str]:
        """This folder as a JSON object at ``indent``, its files one per line (the rest
        of report.json is indented by one space per level)."""
        inner = indent + " "
        yield (f"{{\n{inner}\"folder\": {json.dumps(self.folder)},\n"
               f"{inner}\"path\": {json.dumps(self.path)},\n"
               f"{inner}\"count\": {self.count},\n{inner}\"bytes\": {self.bytes},\n"
               f"{inner}\"files\": [")
        sep = "\n"
        batch: list[str] = []
        for name, size in self:
            batch.append(f"{sep}{inner} {{\"name\": {json.dumps(name)}, \"size\": {size}}}")
            sep = ",\n"
            if len(batch) >= 1000:
                yield "".join(batch)
                batch.clear()
        yield "".join(batch)
        yield (f"\n{inner}]\n{indent}}}" if self.count else "]\n" + indent + "}")
