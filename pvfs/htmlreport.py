"""``report.html`` (in the mount root, and ``pvfs scan --html FILE``): the per-guest status
table of README.txt and, per disk, a damage map one can take in at a glance.

The map is a strip of the whole disk, drawn the way ddrescueview draws a ddrescue
mapfile: readable bytes green, lost bytes red, bytes rebuilt from redundancy blue,
bytes whose redundancy is gone yellow, and grey where the core could not map the
disk at all.  Each range links to the files that lie on it (looked up in the guest
filesystems pvfs opened), and a thin strip below shows the partitions.

One self-contained file: no script, no external style sheet, font or image; every
text from the inputs (file names, VM names, messages) is escaped, control characters
included.  Its size is bounded: at most :data:`MAX_DRAWN` ranges per disk (near ones
merged first), :data:`MAX_MAPS` maps, :data:`MAX_LINES` damage lines per guest, and the
file look-ups share a time budget.

References: ddrescueview's colour legend (finished green, bad-sector red, non-tried
grey); the HTML Standard's named character references for escaping; SVG 1.1 ``<a>``
and ``<title>`` (links and tooltips inside inline SVG).
"""

from __future__ import annotations

import html
import time
from typing import TYPE_CHECKING, Any

from . import __version__
from .damage import merge_ranges
from .proxmox.status import UNMAPPED_CODES, fmt_size, printable, row_word
from .source import SliceSource

if TYPE_CHECKING:
    from .discover import Context, Volume
    from .proxmox.status import Unit

WIDTH = 1000  # user units of the map's viewBox
MAX_DRAWN = 200  # ranges per disk map, after merging near ones
MAX_MAPS = 1000  # disk maps per page
MAX_LINES = 50  # damage lines per guest
MAX_NAMES = 50  # file names per range
MAX_LOOKUPS = 64  # files_in_ranges calls per page
LOOKUP_BUDGET_S = 20.0
MAX_PARTS = 128

#: class -> (colour, legend text).  Drawn in this order: the last is on top.
KINDS = {
    "readable": ("#3a3", "readable"),
    "unknown": ("#999", "unknown: a loss here or below names no ranges, so no byte is vouched "
                        "for"),
    "degraded": ("#e6b800", "degraded: readable, but a copy or parity is gone"),
    "repaired": ("#36c", "repaired: rebuilt from a mirror, parity or metadata"),
    "lost": ("#d22", "lost: no copy can be read (EIO, or zeros with --bad zero)"),
}

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#111;max-width:80em}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left;
vertical-align:top}th{background:#eee}.n{text-align:right}
.s-OK{background:#dfd}.s-REPAIRED{background:#dde8ff}.s-DEGRADED{background:#fff2bf}
.s-PARTIAL{background:#fdd}.s-LOST{background:#d22;color:#fff}
.s-LOST a{color:#fff}
svg.map{width:100%;height:auto;display:block;margin:.3em 0}
.readable{fill:#3a3}.unknown{fill:#999}.degraded{fill:#e6b800}.repaired{fill:#36c}.lost{fill:#d22}
.part{fill:#ccc;stroke:#fff}.part2{fill:#aaa;stroke:#fff}.pl{font-size:10px;fill:#000}
code,pre{font:12px/1.3 monospace}pre{white-space:pre-wrap;word-break:break-all}
td:nth-child(4){white-space:nowrap}li:target{background:#ff8}figure{margin:1em 0}figcaption{font-weight:bold}
.legend span{display:inline-block;width:1em;height:1em;vertical-align:middle;margin:0 .3em}
"""


def _e(text: Any) -> str:
    """Escaped for HTML text and attribute values, control characters made visible."""
    return html.escape(printable(str(text)), quote=True)


def _coarsen(ranges: list[tuple[int, int]], size: int, cap: int) -> list[tuple[int, int]]:
    """``ranges`` merged across gaps smaller than one pixel, then wider gaps, until at
    most ``cap`` are left (a disk with 100,000 bad sectors still draws ``cap`` rects)."""
    out = merge_ranges(ranges)
    gap = max(1, size // (WIDTH * 2))
    while len(out) > cap:
        merged: list[tuple[int, int]] = []
        for off, n in out:
            if merged and off - (merged[-1][0] + merged[-1][1]) <= gap:
                merged[-1] = (merged[-1][0], off + n - merged[-1][0])
            else:
                merged.append((off, n))
        out = merged
        gap *= 2
    return out


def _subtract(ranges: list[tuple[int, int]], minus: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of ``ranges`` outside ``minus`` (both merged first)."""
    cut = merge_ranges(minus)
    out = []
    for off, n in merge_ranges(ranges):
        end = off + n
        for c_off, c_n in cut:
            if c_off + c_n <= off or c_off >= end:
                continue
            if c_off > off:
                out.append((off, c_off - off))
            off = max(off, c_off + c_n)
            if off >= end:
                break
        if off < end:
            out.append((off, end - off))
    return out


def _offset_in(vol: Volume, top: Volume) -> int | None:
    """Where ``vol``'s bytes start in ``top`` when every layer between is a plain slice
    (partitions); ``None`` for anything else (an LV of a VG inside the disk)."""
    off = 0
    v = vol
    while v is not top:
        if v.parent is None or not isinstance(v.source, SliceSource) \
                or v.source.parent is not v.parent.source:
            return None
        off += v.source.offset
        v = v.parent
    return off


class _Lookups:
    """files_in_ranges calls for the page, bounded in number and time, cached per context
    (the mount renders report.html again when the report grows)."""

    def __init__(self, ctx: Context) -> None:
        cache = getattr(ctx, "html_file_lookups", None)
        if cache is None:
            cache = ctx.html_file_lookups = {}
        self.cache: dict = cache
        self.calls = 0
        self.deadline = time.monotonic() + LOOKUP_BUDGET_S

    def files(self, vol: Volume, rngs: tuple[tuple[int, int], ...]) -> tuple[list[str], int] | None:
        key = (id(vol), rngs)
        if key in self.cache:
            return self.cache[key]
        if self.calls >= MAX_LOOKUPS or time.monotonic() > self.deadline:
            return None
        self.calls += 1
        try:
            names, total = vol.guestfs.files_in_ranges(list(rngs), limit=MAX_NAMES)
        except Exception:
            return None
        self.cache[key] = (list(names), total)
        return self.cache[key]


class _Page:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.out: list[str] = []
        self.maps = 0
        self.maps_left_out = 0
        self.lookups = _Lookups(ctx)
        self._fs_of: tuple[Volume | None, list[Volume]] = (None, [])

    def w(self, text: str) -> None:
        self.out.append(text)

    # -- one disk -------------------------------------------------------------
    def disk(self, label: str, vol: Volume) -> None:
        if self.maps >= MAX_MAPS:
            self.maps_left_out += 1
            return
        idx = self.maps
        self.maps += 1
        size = vol.source.size
        paths = [vol.path, *vol.vm_paths]
        shown = next((p for p in vol.vm_paths if p.startswith(("vms/", "cts/"))), vol.path)
        by_kind: dict[str, list[tuple[int, int]]] = {"degraded": [], "repaired": [], "lost": []}
        unknown = False
        for p in paths:
            for e in self.ctx.report.for_path(p):
                if e.code in UNMAPPED_CODES or (e.outcome == "lost" and not e.ranges):
                    unknown = True  # not mapped, or a loss that names no ranges: no green
                elif e.outcome in by_kind:
                    by_kind[e.outcome].extend(e.ranges)
        # a range is drawn once, as its worst: lost over degraded over repaired
        lost = merge_ranges(by_kind["lost"])
        by_kind["degraded"] = _subtract(by_kind["degraded"], lost)
        by_kind["repaired"] = _subtract(by_kind["repaired"], lost + by_kind["degraded"])
        exact = {k: merge_ranges((o, min(n, size - o)) for o, n in r if o < size)
                 for k, r in by_kind.items()}
        drawn = {k: _coarsen(r, size, MAX_DRAWN) for k, r in exact.items()}
        lost_bytes = sum(n for _o, n in merge_ranges(by_kind["lost"]))
        self.w(f'<figure id="d{idx}"><figcaption>{_e(label)}: <code>{_e(shown)}</code>, '
               f'{_e(fmt_size(size))}; {_e(fmt_size(lost_bytes))} lost</figcaption>')
        h = 28
        parts = self._parts(vol)
        total_h = h + (14 if parts else 0)
        self.w(f'<svg class="map" viewBox="0 0 {WIDTH} {total_h}" role="img" '
               f'aria-label="damage map of {_e(shown)}">')
        self.w(f'<rect class="{"unknown" if unknown else "readable"}" x="0" y="0" '
               f'width="{WIDTH}" height="{h}"><title>{_e(shown)}: {size} bytes'
               f'{" (unreadable ranges not mapped)" if unknown else ""}</title></rect>')
        ranges: list[tuple[str, int, int]] = []
        for kind in ("degraded", "repaired", "lost"):
            for off, n in drawn[kind]:
                i = len(ranges)
                ranges.append((kind, off, n))
                x = off * WIDTH / size if size else 0
                wd = max(n * WIDTH / size if size else WIDTH, 2.0)
                x = min(x, WIDTH - wd)
                self.w(f'<a href="#r{idx}-{i}"><rect class="{kind}" x="{x:.2f}" y="0" '
                       f'width="{wd:.2f}" height="{h}"><title>{kind}: {off:#x} + {n:#x} '
                       f'({_e(fmt_size(n))})</title></rect></a>')
        for j, (name, off, n) in enumerate(parts):
            x = off * WIDTH / size if size else 0
            wd = max(n * WIDTH / size if size else 0, 1.0)
            self.w(f'<rect class="part{"2" if j % 2 else ""}" x="{x:.2f}" y="{h + 2}" '
                   f'width="{wd:.2f}" height="12"><title>{_e(name)}: {off:#x} + {n:#x}'
                   f'</title></rect>')
            if wd > 30:
                self.w(f'<text class="pl" x="{x + 3:.2f}" y="{h + 12}">{_e(name)}</text>')
        self.w("</svg>")
        if ranges:
            self.w('<ol class="ranges">')
            for i, (kind, off, n) in enumerate(ranges):
                inside = [r for r in exact[kind] if off <= r[0] < off + n]
                what = f"({_e(fmt_size(n))})"
                if len(inside) > 1:  # merged for drawing: say what is really in it
                    what = (f"({_e(fmt_size(sum(x for _o, x in inside)))} {kind} in "
                            f"{len(inside)} ranges between these offsets)")
                self.w(f'<li id="r{idx}-{i}"><b>{kind}</b> <code>{off:#x} + {n:#x}</code> '
                       f'{what}: {self._files_html(vol, kind, inside or [(off, n)])}</li>')
            self.w("</ol>")
        self.w("</figure>")

    def _parts(self, vol: Volume) -> list[tuple[str, int, int]]:
        out = []
        for name, child in vol.children[:MAX_PARTS]:
            if isinstance(child.source, SliceSource) and child.source.parent is vol.source:
                out.append((name, child.source.offset, child.source.size))
        return out

    def _filesystems(self, top: Volume) -> list[Volume]:
        """The guest filesystems on ``top`` (itself, its partitions ...), once per disk."""
        if self._fs_of[0] is not top:
            from .proxmox.status import descendants

            self._fs_of = (top, [v for v in descendants(self.ctx, top) if v.guestfs is not None])
        return self._fs_of[1]

    def _files_html(self, top: Volume, kind: str, ranges: list[tuple[int, int]]) -> str:
        if kind == "repaired":
            return "rebuilt from redundancy: it reads correctly"
        if kind != "lost":
            return "it reads, but a copy or its parity is gone"
        found: list[str] = []
        total = 0
        looked = False
        skipped = False
        indirect = False
        for v in self._filesystems(top):
            vo = _offset_in(v, top)
            if vo is None:
                indirect = True  # an LV of a VG inside the disk: offsets do not carry over
                continue
            local = tuple((lo - vo, hi - lo) for o, n in ranges
                          for lo, hi in [(max(o, vo), min(o + n, vo + v.source.size))]
                          if lo < hi)
            if not local:
                continue
            looked = True
            got = self.lookups.files(v, local)
            if got is None:
                skipped = True
                continue
            names, count = got
            base = next((p for p in v.files_paths if p.startswith(("vms/", "cts/"))),
                        (v.files_paths or [v.path])[0])
            found += [f"{base}/{x}" for x in names]
            total += count
        if not looked and indirect:
            return ("not mapped to files here (a guest LVM layer lies between the disk and "
                    "its filesystems); the guest's damaged files are listed above")
        if not looked:
            return ("no guest filesystem lies here (partition table, free space, or a "
                    "filesystem pvfs does not read)")
        items = "".join(f"<li><code>{_e(x)}</code></li>" for x in found)
        more = f"<li>and {total - len(found)} more</li>" if total > len(found) else ""
        note = " (some filesystems not looked up: time budget spent)" if skipped else ""
        if not total:
            return f"no file lies on these bytes{note}"
        return f"{total} file{'s' if total != 1 else ''}{note}:<ul>{items}{more}</ul>"


def _other_volumes(ctx: Context, p: _Page, units: list[Unit]) -> None:
    """Maps of damaged volumes no guest owns (a disk image not named like a Proxmox
    volume, a pool member, a datastore's disk): the same map, under their storage path."""
    from .proxmox.status import descendants

    covered = {id(v) for u in units for v in u.volumes}
    kinds = ("lost", "repaired", "degraded")
    shown = False
    for v in ctx.volumes:
        if id(v) in covered or v.role == "partition" or (v.role == "input" and v.children):
            continue
        if not any(e.outcome in kinds and e.ranges for e in ctx.report.for_path(v.path)):
            continue
        if not shown:
            p.w("<section id=\"other\"><h2>Other volumes with damage</h2>")
            shown = True
        covered.update(id(d) for d in descendants(ctx, v))
        p.disk(v.role, v)
    if shown:
        p.w("</section>")


def _top_volumes(u: Unit) -> list[Volume]:
    ids = {id(v) for v in u.volumes}
    return [v for v in u.volumes if v.parent is None or id(v.parent) not in ids]


def report_html(ctx: Context) -> str:
    from .proxmox.view import table_units

    rows = table_units(ctx)
    p = _Page(ctx)
    made = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ctx.started))
    p.w('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>pvfs report</title><style>{STYLE}</style></head><body>")
    p.w(f"<h1>pvfs report</h1><p>Made {_e(made)} by pvfs {_e(__version__)} from "
        f"{len(ctx.inputs)} input{'s' if len(ctx.inputs) != 1 else ''}; damage entries: "
        f"{_e(ctx.report.outcome_summary() or 'none')} (all in report.json).</p>")
    p.w('<h2>Status of each VM and container</h2>')
    if not rows:
        p.w("<p>No VM or container found.</p>")
    else:
        p.w('<table id="status"><thead><tr><th>VMID</th><th>type</th><th>name</th>'
            '<th>status</th><th>why</th></tr></thead><tbody>')
        for r, _units in rows:
            files = "" if r["files"] is None else str(r["files"])
            p.w(f'<tr class="s-{r["status"]}" data-id="{_e(r["id"])}" data-kind="{r["kind"]}" '
                f'data-status="{r["status"]}" data-files="{files}" data-bytes="{r["bytes"]}">'
                f'<td class="n">{_e(r["id"])}</td><td>{r["type"]}</td><td>{_e(r["name"])}</td>'
                f'<td><a href="#g-{r["kind"]}-{_e(r["id"])}">'
                f'{_e(row_word(r))}</a></td>'
                f'<td>{_e(r["why"])}</td></tr>')
        p.w("</tbody></table>")
    p.w('<p class="legend">Damage maps: each strip is one whole disk, start at the left. ')
    for colour, text in KINDS.values():
        p.w(f'<span style="background:{colour}"></span>{_e(text)}. ')
    p.w("Click a range for the files on it; the thin strip below shows the partitions.</p>")
    for r, units in rows:
        who = f"{r['type']} {r['id']}" + (f" ({r['name']})" if r["name"] else "")
        p.w(f'<section id="g-{r["kind"]}-{_e(r["id"])}"><h2>{_e(who)}: '
            f'{_e(row_word(r))}</h2>')
        if r["why"]:
            p.w(f"<p>{_e(r['why'])}</p>")
        if r["damage"]:
            lines = r["damage"][:MAX_LINES]
            more = r["damage_count"] - len(lines)
            p.w("<pre>" + "\n".join(_e(x) for x in lines)
                + (f"\n... and {more} more (report.json has all)" if more > 0 else "")
                + "</pre>")
        if r["damaged_files"]:
            p.w("<p>Damaged files:</p><ul>" + "".join(
                f"<li><code>{_e(x)}</code></li>" for x in r["damaged_files"][:MAX_NAMES]) +
                (f"<li>and {r['damaged_files_count'] - MAX_NAMES} more</li>"
                 if r["damaged_files_count"] > MAX_NAMES else "") + "</ul>")
        for u in units:
            if u.missing:
                p.w(f"<p><b>{_e(u.label)}</b>: LOST, no bytes to draw: {_e(u.missing)}</p>")
                continue
            for v in _top_volumes(u):
                p.disk(u.label if len(u.volumes) == 1 or u.kind != "backup"
                       else f"{u.label}: {v.name}", v)
        p.w("</section>")
    _other_volumes(ctx, p, [u for _r, units in rows for u in units])
    if p.maps_left_out:
        p.w(f"<p>{p.maps_left_out} more disks not drawn (at most {MAX_MAPS} maps).</p>")
    p.w("<h2>Inputs</h2><ul>")
    for i in ctx.inputs:
        extra = (f", mapfile <code>{_e(i['mapfile'])}</code> ({i['bad_bytes']} bad bytes)"
                 if i.get("mapfile") else "")
        p.w(f"<li><code>{_e(i['path'])}</code> ({_e(fmt_size(i['size']))}{extra})</li>")
    for sk in ctx.skipped:  # pvfs/unrecognised.py: report.json lists every one
        p.w(f"<li>{_e(sk.line())} (report.json lists them)</li>")
    p.w("</ul></body></html>\n")
    return "".join(p.out)
