"""The damage report: what could not be read, where, and why.

An entry names the layer (backend) that found it, the node path in the
mounted tree it concerns, the byte ranges inside that node, a stable code and
a one-line message.  Entries are de-duplicated, so reporting the same fact
twice (during discovery and again on a read) is harmless.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

SEVERITIES = ("info", "warning", "error")
#: What an entry means for the user's data (issue 13 item 3): ``lost`` bytes are gone
#: (always an error), ``degraded`` redundancy or a member is missing but every byte still
#: reads (a warning), ``repaired`` damage was rebuilt from parity, a mirror or metadata
#: and nothing is lost (info), ``note`` anything else worth knowing (info).
OUTCOMES = {"error": ("lost",), "warning": ("degraded",), "info": ("note", "repaired")}


class Problem(NamedTuple):
    """A finding a format reader keeps until it knows the tree path to report it under
    (``table.problems``, ``vg.problems``); the backend turns each into a :class:`Damage`."""

    severity: str
    code: str
    message: str
    outcome: str = ""  # see OUTCOMES; "" = from the severity ("repaired" for a rebuilt info)


@dataclass(frozen=True)
class Damage:
    severity: str  # info | warning | error
    layer: str  # backend name: "qcow2", "ddrescue", "gpt", "core" ...
    path: str  # node path in the tree ("storage/files/x.qcow2/disk.raw") or input path
    code: str  # stable machine-readable code, e.g. "bad-sectors"
    message: str  # one line for humans
    ranges: tuple = ()  # ((offset, length), ...) inside ``path``
    outcome: str = ""  # lost | degraded | repaired | note (see OUTCOMES); "" = from severity

    def __post_init__(self) -> None:
        if not self.outcome:
            object.__setattr__(self, "outcome", OUTCOMES[self.severity][0])

    def to_json(self) -> dict:
        return {
            "severity": self.severity,
            "outcome": self.outcome,
            "layer": self.layer,
            "path": self.path,
            "code": self.code,
            "message": self.message,
            "ranges": [[o, n] for o, n in self.ranges],
        }

    def line(self) -> str:
        rng = ""
        if self.ranges:
            shown = ", ".join(f"{o:#x}+{n:#x}" for o, n in self.ranges[:8])
            more = f" (+{len(self.ranges) - 8} more)" if len(self.ranges) > 8 else ""
            rng = f" [{shown}{more}]"
        return f"{self.severity.upper():7} {self.layer}: {self.path}: {self.message}{rng}"


def merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sort ``(offset, length)`` pairs and join the ones that touch."""
    out = []
    for off, ln in sorted(r for r in ranges if r[1] > 0):
        if out and off <= out[-1][0] + out[-1][1]:
            last_off, last_len = out[-1]
            out[-1] = (last_off, max(last_len, off + ln - last_off))
        else:
            out.append((off, ln))
    return out


@dataclass
class DamageReport:
    """Thread-safe, de-duplicating collection of :class:`Damage` entries."""

    entries: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self._seen = set()
        self._lock = threading.Lock()
        self._by_path: dict[str, list[Damage]] = {}

    def add(self, severity: str, layer: str, path: str, code: str, message: str,
            ranges: Iterable[tuple[int, int]] = (), outcome: str = "") -> Damage:
        """Record one entry.  ``outcome`` defaults from the severity; an info entry about
        damage that was rebuilt and lost nothing passes ``outcome="repaired"``."""
        assert severity in SEVERITIES, severity
        assert not outcome or outcome in OUTCOMES[severity], (severity, outcome)
        entry = Damage(severity, layer, str(path), code, message,
                       tuple(tuple(r) for r in merge_ranges(ranges)), outcome)
        with self._lock:
            self._append(entry)
        return entry

    def _append(self, entry: Damage) -> None:
        if entry not in self._seen:
            self._seen.add(entry)
            self.entries.append(entry)
            self._by_path.setdefault(entry.path, []).append(entry)

    def take_since(self, first: int) -> list[Damage]:
        """Remove and return the entries added after the first ``first`` (discovery
        probes a folder's files as the walk finds them, and gives a recognised file's probe
        entries back with :meth:`put_back` where they were made before: when it is opened)."""
        with self._lock:
            taken = self.entries[first:]
            del self.entries[first:]
            for e in taken:
                self._seen.discard(e)
                same = self._by_path[e.path]
                same.remove(e)
                if not same:
                    del self._by_path[e.path]
        return taken

    def put_back(self, entries: Iterable[Damage]) -> None:
        """Add entries taken with :meth:`take_since` again, in their order."""
        with self._lock:
            for e in entries:
                self._append(e)

    def for_path(self, path: str) -> list[Damage]:
        """The entries about ``path``, without a walk over all of them (a folder of
        10,000 damaged images would make such walks quadratic)."""
        with self._lock:
            return list(self._by_path.get(path, ()))

    def __iter__(self) -> Iterator[Damage]:
        with self._lock:
            return iter(list(self.entries))

    def __len__(self) -> int:
        return len(self.entries)

    def version(self) -> int:
        """Changes whenever an entry is added (entries are never removed)."""
        return len(self.entries)

    def count(self, severity: str) -> int:
        return sum(1 for e in self if e.severity == severity)

    def outcome_summary(self) -> str:
        """The entries counted in the words a user acts on: ``2 lost, 1 degraded, 3 repaired,
        4 notes`` (severity words said "3 errors" of a pool healed from parity)."""
        n = dict.fromkeys(("lost", "degraded", "repaired", "note"), 0)
        for e in self:
            n[e.outcome] = n.get(e.outcome, 0) + 1
        parts = [f"{n[o]} {o}" for o in ("lost", "degraded", "repaired") if n[o]]
        if n["note"]:
            parts.append(f"{n['note']} note{'s' if n['note'] != 1 else ''}")
        return ", ".join(parts)

    def to_json(self) -> dict:
        return [e.to_json() for e in self]
