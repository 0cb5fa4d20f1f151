"""Per VM and container: is it whole?  OK / REPAIRED / DEGRADED / PARTIAL / LOST.

A stressed admin wants one word per guest before any offset.  The word is
built from the damage report alone (each entry's ``outcome``, see
:mod:`pvfs.damage`), mapped onto the guest's units: its disks, its
snapshots' disks and its backups.  An entry concerns a unit when it is

- about the unit itself: its tree paths (``vms/<id>/disk-0.raw``, the
  volume's ``storage/...`` path), its partitions, LVs and guest filesystems
  (``files-damaged``), or anything below a tree it shows (``cts/<id>/rootfs/...``);
- about a layer below it (the parent chain of its volume: partition table,
  pool, PV, OSD, input, and any path prefix of those: ``storage/zfs/rpool`` is
  the pool of ``storage/zfs/rpool/data/vm-100-disk-0``).  Below-layer entries
  say DEGRADED or REPAIRED; a below-layer *loss* counts only when the unit's own
  unreadable ranges could not be mapped (``status-*`` entries): otherwise the core
  has already given the unit its own ``unreadable-range`` entry where the loss
  reaches it (:func:`pvfs.report.propagate_unreadable`), and a loss elsewhere in the
  pool or PV leaves this guest whole.

Unit status: LOST when the unit is in a config but no input holds it, or every
byte of it is unreadable; PARTIAL when some bytes are lost (``bytes`` = the
largest merged lost range total over the unit's own paths, ``files`` = the guest
filesystems' damaged files and lost entries below a file tree); else DEGRADED,
REPAIRED or OK by the worst outcome that concerns it.  Guest status: LOST when
every unit is LOST, else the worst unit (a LOST unit among whole ones makes the
guest PARTIAL).  The guest's ``files`` and ``bytes`` count its current disks when
they lost something, else its snapshots', else its backups' (a snapshot shares
most bytes with its disk: adding both would count one bad sector twice).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..damage import Damage, merge_ranges

if TYPE_CHECKING:
    from ..discover import Context, Volume
    from .view import Guest, Item

STATUSES = ("OK", "REPAIRED", "DEGRADED", "PARTIAL", "LOST")
_RANK = {s: i for i, s in enumerate(STATUSES)}
#: The core's entries saying a volume's unreadable ranges were not (fully) mapped.
UNMAPPED_CODES = ("status-skipped", "status-partial", "status-failed")
MAX_LINES = 8  # damage lines per guest in the text forms
MAX_FILES = 20  # damaged file names per guest in the text forms
MAX_FILE_NAMES = 200  # per unit in report.json
MAX_JSON_LINES = 100  # damage lines per guest in report.json (the entries are all there too)


@dataclass
class Unit:
    """One disk, snapshot disk or backup of a guest, and what the report says about it."""

    kind: str  # disk | snapshot | backup
    label: str  # "scsi0", "disk-0", "disk-0@before", "backup 2024-01-15T10:00:00Z"
    path: str | None = None  # the first tree path that shows it
    size: int | None = None
    missing: str = ""  # why it is LOST without bytes to look at (not in any input)
    volumes: list = field(default_factory=list)  # the Volumes that are this unit
    own: set = field(default_factory=set)  # tree paths whose entries are about the unit
    under: list = field(default_factory=list)  # tree prefixes: entries below are too
    chain: set = field(default_factory=set)  # paths of the layers below
    entries: list = field(default_factory=list)  # (Damage, "own" | "chain")
    status: str = "OK"
    bytes: int = 0
    files: int = 0
    file_names: list = field(default_factory=list)
    lost_ranges: list = field(default_factory=list)  # on ``path`` (its own offsets)
    repaired_ranges: list = field(default_factory=list)
    degraded_ranges: list = field(default_factory=list)
    unmapped: bool = False
    files_known: bool = False  # a guest filesystem or file tree was there to name files
    bytes_exact: bool = True  # False: some lost entry names no ranges (``bytes`` is a floor)


def _kids(ctx: Context) -> dict[int, list[Volume]]:
    """``{id(volume): the volumes whose parent it is}``, once per table (a walk of every
    volume per disk would be quadratic on a folder of 10,000 images)."""
    cache = getattr(ctx, "_status_kids", None)
    if cache is not None and cache[0] == len(ctx.volumes):
        return cache[1]
    kids: dict[int, list[Volume]] = {}
    for v in ctx.volumes:
        if v.parent is not None:
            kids.setdefault(id(v.parent), []).append(v)
    ctx._status_kids = (len(ctx.volumes), kids)
    return kids


def descendants(ctx: Context, vol: Volume) -> list[Volume]:
    """``vol`` and every volume stacked on it (partitions, LVs of a VG inside ...)."""
    kids = _kids(ctx)
    out = [vol]
    seen = {id(vol)}
    i = 0
    while i < len(out):
        for c in kids.get(id(out[i]), ()):
            if id(c) not in seen:
                seen.add(id(c))
                out.append(c)
        i += 1
    return out


def _unit_for_item(ctx: Context, it: Item, kind: str, label: str) -> Unit:
    if it.lost is not None:  # known by name, nothing of it readable (LOST.txt)
        return Unit(kind, label, missing=it.lost)
    u = Unit(kind, label, path=it.placed[0] if it.placed else None)
    u.own.update(it.placed)
    vol = it.volume
    if vol is not None:
        u.size = vol.source.size
        u.volumes = descendants(ctx, vol)
        for v in u.volumes:
            u.own.add(v.path)
            u.own.update(v.vm_paths)
            u.own.update(v.files_paths)  # files-damaged entries name the filesystem's root
            u.under.extend(v.files_paths)
        p: Volume | None = vol
        while p is not None:
            u.chain.update(p.layers)  # a thin LV's pool, which is not its parent
            if p is not vol:
                u.chain.add(p.path)
            p = p.parent
    else:
        u.under.extend(it.placed)
        if it.where:
            u.own.add(it.where)
            u.under.append(it.where)
    return u


def _prefixes(path: str, least: int = 1) -> list[str]:
    parts = path.split("/")
    out = ["/".join(parts[:i]) for i in range(least, len(parts))]
    return [p for p in out if p not in NOT_LAYERS] if least > 1 else out


#: A layer below is at least ``storage/<area>`` (``storage/ceph``: the cluster, whose
#: missing OSDs concern every image) or ``storage/<area>/<name>`` (a pool, VG, Ceph pool);
#: ``storage/files`` is only the folder of the inputs, which says nothing of one disk.
LAYER_DEPTH = 2
NOT_LAYERS = ("storage/files",)


def _assign(ctx: Context, units: list[Unit]) -> None:
    """Give every unit the entries that concern it: one pass over the report."""
    own: dict[str, list[Unit]] = {}
    under: dict[str, list[Unit]] = {}
    chain: dict[str, list[Unit]] = {}
    for u in units:
        for p in u.own:
            own.setdefault(p, []).append(u)
            for q in _prefixes(p, LAYER_DEPTH):  # the pool / VG / Ceph pool holding it
                chain.setdefault(q, []).append(u)
        for p in u.under:
            under.setdefault(p, []).append(u)
        for p in u.chain:
            chain.setdefault(p, []).append(u)
            for q in _prefixes(p, LAYER_DEPTH):
                chain.setdefault(q, []).append(u)
    for e in ctx.report:
        if e.outcome == "note" or e.layer == "pve":
            continue  # the view's own entries are about configs (a missing disk is a unit)
        seen: set[int] = set()
        for u in own.get(e.path, ()):
            if id(u) not in seen:
                seen.add(id(u))
                u.entries.append((e, "own"))
        for q in _prefixes(e.path):
            for u in under.get(q, ()):
                if id(u) not in seen:
                    seen.add(id(u))
                    u.entries.append((e, "own"))
        for u in chain.get(e.path, ()):
            if id(u) not in seen:
                seen.add(id(u))
                u.entries.append((e, "chain"))


def _judge(ctx: Context, u: Unit) -> None:
    if u.missing:
        u.status = "LOST"
        return
    own = [e for e, how in u.entries if how == "own"]
    chain = [e for e, how in u.entries if how == "chain"]
    u.unmapped = any(e.code in UNMAPPED_CODES for e in own)
    # bytes: the largest lost total over the unit's own paths (a disk's entry covers the
    # same bytes as its partitions' entries, at other offsets)
    per_path: dict[str, list] = {}
    for e in own:
        if e.outcome == "lost" and e.ranges:
            per_path.setdefault(e.path, []).extend(e.ranges)
    if per_path:
        best = max(per_path.values(), key=lambda r: sum(n for _o, n in merge_ranges(r)))
        u.bytes = sum(n for _o, n in merge_ranges(best))
    if u.path is not None:
        mine = {u.path} | ({u.volumes[0].path} if u.volumes else set())
        u.lost_ranges = merge_ranges(r for e in own if e.path in mine and e.outcome == "lost"
                                     for r in e.ranges)
        u.repaired_ranges = merge_ranges(r for e in own + chain if e.path in mine
                                         and e.outcome == "repaired" for r in e.ranges)
        u.degraded_ranges = merge_ranges(r for e in own if e.path in mine
                                         and e.outcome == "degraded" for r in e.ranges)
        if u.bytes < sum(n for _o, n in u.lost_ranges):
            u.bytes = sum(n for _o, n in u.lost_ranges)
    # files: guest filesystems' damaged files, and lost entries on paths below a file tree
    names: list[str] = []
    # a loss on the unit's own paths that names no ranges (a block that failed when read,
    # an image whose size was guessed): ``bytes`` counts only what is known
    u.bytes_exact = not any(e.outcome == "lost" and not e.ranges for e in own)
    u.files_known = any(v.guestfs is not None for v in u.volumes) or (
        not u.volumes and bool(u.under))
    for v in u.volumes:
        fs = v.guestfs
        if fs is not None and fs.info.damaged_files:
            u.files += fs.info.damaged_files
            base = next((p for p in v.files_paths if p.startswith(("vms/", "cts/"))),
                        (v.files_paths or [v.path])[0])
            names += [f"{base}/{n}" for n in fs.info.damaged_names]
    below = sorted({e.path for e in own if e.outcome == "lost" and any(
        e.path.startswith(p + "/") for p in u.under)})
    u.files += len(below)
    names += below
    u.file_names = names[:MAX_FILE_NAMES]
    lost = [e for e in own if e.outcome == "lost"]
    if u.unmapped and any(e.outcome == "lost" for e in chain):
        lost += [e for e in chain if e.outcome == "lost"]
    if lost:
        whole = u.size is not None and u.size > 0 and u.bytes >= u.size
        u.status = "LOST" if whole else "PARTIAL"
        return
    outcomes = {e.outcome for e in own + chain}
    u.status = "DEGRADED" if "degraded" in outcomes else "REPAIRED" if "repaired" in outcomes \
        else "OK"


def _shown(u: Unit) -> list[Damage]:
    """The entries that explain the unit's status (a loss elsewhere in its pool is left out)."""
    out = []
    for e, how in u.entries:
        if how == "chain" and e.outcome == "lost" and not u.unmapped:
            continue
        out.append(e)
    return out


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def fmt_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def status_word(status: str, files: int | None, nbytes: int, missing: int = 0,
                exact: bool = True) -> str:
    """``PARTIAL (1 file, 4.0 KiB)`` (``PARTIAL (4.0 KiB)`` when no guest filesystem could
    say which files: raw data, or a disk whose partition table is lost; ``at least 4.0 KiB``
    when some loss names no ranges); the other statuses as they are."""
    if status != "PARTIAL":
        return status
    if missing and not nbytes and not files:
        return f"PARTIAL ({_plural(missing, 'disk')} missing)"
    if not nbytes and not files:
        return "PARTIAL (extent unknown)"  # a lost entry that names no ranges and no files
    size = fmt_size(nbytes) if exact else f"at least {fmt_size(nbytes)}"
    if files is None:
        return f"PARTIAL ({size})"
    return f"PARTIAL ({_plural(files, 'file')}, {size})"


def row_word(r: dict) -> str:
    """:func:`status_word` of a :func:`pvfs.proxmox.view.table` row."""
    return status_word(r["status"], r["files"], r["bytes"], r["missing"], r["bytes_exact"])


def _why_body(u: Unit) -> str:
    if u.missing:
        return _short(u.missing, 120)
    shown = _shown(u)
    if u.status == "LOST":
        return f"every byte unreadable ({fmt_size(u.bytes)})"
    if u.status == "PARTIAL":
        lost = [e for e in shown if e.outcome == "lost"]
        # the cause: a backend's own words before the core's "damage in a layer below" and
        # the file list (those say where, not why)
        causes = [e for e in lost if e.layer != "core" and e.code != "files-damaged"]
        first = next((e for e in causes if e.ranges), causes[0] if causes else
                     lost[0] if lost else None)
        cause = f" ({first.layer}: {_short(first.message)})" if first else ""
        lost = (f"{'' if u.bytes_exact else 'at least '}{fmt_size(u.bytes)} unreadable"
                if u.bytes else "bytes lost (where unknown)")
        files = (f", {_plural(u.files, 'damaged file')}" if u.files_known and (u.files or u.bytes)
                 else "" if u.files_known else ", no guest filesystem to name the files")
        return f"{lost}{cause}{files}"
    want = {"DEGRADED": "degraded", "REPAIRED": "repaired"}.get(u.status)
    first = next((e for e in shown if e.outcome == want), None)
    if first is None:
        return ""
    return f"{first.layer}: {_short(first.message)}"


def _why_unit(u: Unit) -> str:
    body = _why_body(u)
    return f"{u.label}: {body}" if body else ""


def why_text(units: list[Unit]) -> str:
    """Units with the same reason share it: ``disk-0, disk-0@before: 1.0 KiB unreadable``."""
    groups: dict[str, list[str]] = {}
    for u in units:
        if u.status != "OK":
            body = _why_body(u)
            if body:
                groups.setdefault(body, []).append(u.label)
    return "; ".join(f"{', '.join(labels)}: {body}" for body, labels in groups.items())


def _short(msg: str, n: int = 90) -> str:
    return msg if len(msg) <= n else msg[:n - 3] + "..."


def _worst(statuses: list[str]) -> str:
    return max(statuses, key=_RANK.__getitem__) if statuses else "OK"


def units_of(ctx: Context, g: Guest, backups: list[Item]) -> tuple[list[Unit], dict]:
    """The guest's units, and ``{id(DiskRef or Item): Unit}`` for the table's disk rows."""
    units: list[Unit] = []
    by_key: dict[int, Unit] = {}
    seen: set[int] = set()
    for ref in g.refs:
        if ref.section is not None:
            continue
        if ref.item is not None:
            seen.add(id(ref.item))
            u = _unit_for_item(ctx, ref.item, "disk", ref.key)
        elif ref.note or g.config_source != "cluster":
            continue  # passed through, on a storage pvfs does not read, or named by a
            # backup's config (which names the disks the backup itself holds)
        else:
            u = Unit("disk", ref.key, missing=f"{ref.volid} is in the config but no input "
                                               f"holds it")
        units.append(u)
        by_key[id(ref)] = u
    for it in g.disks:
        if id(it) in seen or not (it.placed or it.lost is not None):
            continue
        if it.placed:
            stem = it.placed[0].rsplit("/", 1)[-1]
            stem = stem[:-4] if stem.endswith(".raw") else stem
        else:
            stem = f"disk-{it.disk}"
        if it.loc.snapshot is None:
            u = _unit_for_item(ctx, it, "disk", stem)
        else:
            u = _unit_for_item(ctx, it, "snapshot", f"{stem}@{it.loc.snapshot}")
        units.append(u)
        by_key[id(it)] = u
    per_backup: dict[str, Unit] = {}
    for it in backups:
        label = f"backup {it.loc.backup}"
        u = _unit_for_item(ctx, it, "backup", label)
        if label in per_backup:  # one unit per backup: its disks and files together
            b = per_backup[label]
            b.own |= u.own
            b.under += u.under
            b.chain |= u.chain
            b.volumes += u.volumes
            b.size = None if b.size is None or u.size is None else b.size + u.size
            continue
        u.path = "/".join(it.placed[0].split("/")[:4]) if it.placed else None
        per_backup[label] = u
        units.append(u)
    return units, by_key


def judge(ctx: Context, units: list[Unit]) -> None:
    _assign(ctx, units)
    for u in units:
        _judge(ctx, u)


def guest_summary(units: list[Unit]) -> dict[str, Any]:
    """``status``, ``why``, ``files``, ``bytes`` and the bounded damage lines of a guest."""
    if units and all(u.status == "LOST" for u in units):
        status = "LOST"
    else:
        status = _worst(["PARTIAL" if u.status == "LOST" else u.status for u in units])
    counted: list[Unit] = []
    for kind in ("disk", "snapshot", "backup"):
        counted = [u for u in units if u.kind == kind and u.status in ("PARTIAL", "LOST")]
        if counted:
            break
    why = why_text(units)
    # One line per fact: the core and the view repeat an entry at every path that shows
    # the same bytes (storage/... and vms/...); the guest's own path is the one to show.
    facts: dict[tuple, Damage] = {}
    for u in units:
        for e in _shown(u):
            key = (e.layer, e.code, e.message, e.ranges)
            if key not in facts or (e.path.startswith(("vms/", "cts/"))
                                    and not facts[key].path.startswith(("vms/", "cts/"))):
                facts[key] = e
    lines = [e.line() for e in facts.values()]
    names = [n for u in units for n in u.file_names]
    return {"status": status, "why": why,
            "files": sum(u.files for u in counted) if any(u.files_known for u in counted)
            else None, "bytes": sum(u.bytes for u in counted),
            "bytes_exact": all(u.bytes_exact for u in counted),
            "missing": sum(1 for u in units if u.missing),
            "damage": lines[:MAX_JSON_LINES], "damage_count": len(lines),
            "damaged_files": names,
            "damaged_files_count": max(len(names), sum(u.files for u in units))}


def printable(text: str) -> str:
    """``text`` with control characters as ``\\xNN`` (file names are hostile input: a
    newline in one must not forge a line of README.txt)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256
                   else f"\\u{ord(c):04x}" for c in text)


def unit_doc(u: Unit) -> dict[str, Any]:
    return {"status": u.status, "bytes": u.bytes, "bytes_exact": u.bytes_exact,
            "files": u.files if u.files_known else None,
            "size": u.size,
            "why": _why_unit(u) if u.status != "OK" else "",
            "lost_ranges": [list(r) for r in u.lost_ranges],
            "repaired_ranges": [list(r) for r in u.repaired_ranges],
            "degraded_ranges": [list(r) for r in u.degraded_ranges],
            "damaged_files": list(u.file_names)}
