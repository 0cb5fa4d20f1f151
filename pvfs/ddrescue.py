"""GNU ddrescue mapfiles: which bytes of an image were never read.

Format (GNU ddrescue manual, "Mapfile structure"): comment lines start with
``#``; the first data line is the current position and status
(``pos status [pass]``); every later line is a block ``pos size status``
with status ``+`` (finished), ``?`` (non-tried), ``*`` (non-trimmed),
``/`` (non-scraped) or ``-`` (bad sector).  Like nbdkit's ddrescue filter,
every block that is not ``+`` is treated as unreadable.
"""

from __future__ import annotations

import os

from .damage import merge_ranges
from .errors import FormatError, UnreadableError
from .source import BAD_ZERO, UNREADABLE, Source

STATUSES = set("?*/-+")
MAX_LINES = 10_000_000


class MapfileError(FormatError):
    pass


def parse_mapfile(text: str, name: str = "mapfile") -> list[tuple[int, int]]:
    """Return the list of bad ``(offset, length)`` ranges, merged and sorted."""
    bad = []
    seen_current = False
    for lineno, raw in enumerate(text.splitlines(), 1):
        if lineno > MAX_LINES:
            raise MapfileError(f"{name}: more than {MAX_LINES} lines")
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if not seen_current:
            if len(fields) not in (2, 3) or fields[1] not in STATUSES and fields[1] not in "FGS":
                if len(fields) == 3 and fields[2] in STATUSES:
                    # A file without the current-position line: accept it.
                    seen_current = True
                else:
                    raise MapfileError(f"{name}:{lineno}: not a ddrescue mapfile line: {raw.strip()!r}")
            else:
                seen_current = True
                continue
        if len(fields) != 3 or fields[2] not in STATUSES:
            raise MapfileError(f"{name}:{lineno}: bad block line: {raw.strip()!r}")
        try:
            pos, size = int(fields[0], 0), int(fields[1], 0)
        except ValueError:
            raise MapfileError(f"{name}:{lineno}: bad number in {raw.strip()!r}") from None
        if pos < 0 or size < 0:
            raise MapfileError(f"{name}:{lineno}: negative position or size")
        if fields[2] != "+":
            bad.append((pos, size))
    if not seen_current:
        raise MapfileError(f"{name}: empty mapfile")
    return merge_ranges(bad)


def load_mapfile(path: str) -> list[tuple[int, int]]:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return parse_mapfile(f.read(64 * 1024 * 1024 + 1), name=os.path.basename(path))
    except OSError as e:
        raise MapfileError(f"cannot read mapfile {path}: {e.strerror}") from None


class BadRangeSource(Source):
    """``parent`` with some ranges marked unreadable (from a mapfile).

    Reading a bad range raises EIO, or returns zeros with policy ``zero``;
    block status reports the ranges as ``unreadable`` either way.
    """

    def __init__(self, parent: Source, bad_ranges: list[tuple[int, int]], bad: str = "eio", label: str | None = None) -> None:
        super().__init__()
        self.parent = parent
        self.size = parent.size
        self.label = label or parent.label
        self.bad = bad
        self.ranges = [(o, n) for o, n in merge_ranges(bad_ranges) if o < self.size]
        self._starts = [o for o, _ in self.ranges]

    def _overlaps(self, offset: int, length: int) -> bool:
        import bisect

        end = offset + length
        i = max(0, bisect.bisect_right(self._starts, offset) - 1)
        out = []
        while i < len(self.ranges) and self.ranges[i][0] < end:
            o, n = self.ranges[i]
            lo, hi = max(o, offset), min(o + n, end)
            if lo < hi:
                out.append((lo, hi - lo))
            i += 1
        return out

    def _read(self, offset: int, length: int) -> bytes:
        hits = self._overlaps(offset, length)
        if not hits:
            return self.parent.read(offset, length)
        if self.bad != BAD_ZERO:
            o, n = hits[0]
            raise UnreadableError(
                f"{self.label}: bad sectors at {o:#x}+{n:#x} (ddrescue mapfile)", hits)
        buf = bytearray(length)
        pos = offset
        for o, n in hits + [(offset + length, 0)]:
            if o > pos:
                buf[pos - offset:o - offset] = self.parent.read(pos, o - pos)
            pos = o + n
        return bytes(buf)

    def _block_status(self, offset: int, length: int) -> list[tuple[int, int, str]]:
        out = []
        pos = offset
        for o, n in self._overlaps(offset, length) + [(offset + length, 0)]:
            if o > pos:
                out.extend(self.parent.block_status(pos, o - pos))
            if n:
                out.append((o, n, UNREADABLE))
            pos = o + n
        return out
