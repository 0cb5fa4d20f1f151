"""The scan document (``pvfs scan --json`` and ``report.json``), its text form and README.txt."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Collection, Iterator
from typing import TYPE_CHECKING, Any

from . import __version__
from .damage import merge_ranges
from .fsprobe import MOUNT_HINTS
from .nodes import GeneratedFile
from .proxmox.status import printable

if TYPE_CHECKING:
    from .discover import Context, Volume
    from .source import Source

SCHEMA = "pvfs-report/1"


def _root_input(vol: Volume) -> Volume:
    while vol.parent is not None:
        vol = vol.parent
    return vol


STATUS_BUDGET_SECONDS = 20.0  # for all volumes of one discovery
VOLUME_BUDGET_SECONDS = 3.0  # for one volume
STATUS_WINDOW = 1 << 34  # block status is asked in 16 GiB windows
MAX_BAD_RANGES = 4096
#: codes of entries made when one read failed: their ranges are that read's, not a map
READ_TIME_CODES = frozenset({"unreadable-block"})


def _bounded_unreadable(source: Source,
                        deadline: float) -> tuple[list[tuple[int, int]], bool]:
    """Unreadable ranges of ``source``, asked window by window so that a huge or
    hostile volume costs bounded time and memory.  Returns ``(ranges, complete)``."""
    out: list[tuple[int, int]] = []
    for off in range(0, source.size, STATUS_WINDOW):
        if time.monotonic() > deadline or len(out) > MAX_BAD_RANGES:
            return out[:MAX_BAD_RANGES], False
        out.extend(source.unreadable_ranges(off, min(STATUS_WINDOW, source.size - off)))
    return merge_ranges(out), True


def _near_damage(vol: Volume, error_paths: Collection[str]) -> bool:
    """Whether ``vol`` or a layer below it has an error entry (its path or a prefix of it)."""
    v: Volume | None = vol
    while v is not None:
        if any(v.path == p or v.path.startswith(p + "/") for p in error_paths):
            return True
        v = v.parent
    return False


def propagate_unreadable(ctx: Context) -> None:
    """Give every volume above damage its own entry, with its own byte ranges.

    Bad sectors (ddrescue), a missing pool member or backing file make bytes
    unreadable several layers up: the virtual disk, its partitions, the
    ``vms/`` view.  Block status maps them; only volumes above a ddrescue
    mapfile or below an error entry are asked, so clean inputs cost nothing.
    """
    error_paths = {e.path for e in ctx.report if e.severity == "error"}
    # A volume whose backend already reported its unreadable ranges needs no second walk;
    # an entry made when a read failed (ZFS "unreadable-block", e.g. a probe reading the
    # backup GPT) names only that read's block, not a map: such volumes are still walked.
    mapped = {e.path for e in ctx.report if e.severity == "error" and e.ranges
              and e.code not in READ_TIME_CODES}
    deadline = time.monotonic() + STATUS_BUDGET_SECONDS
    for vol in ctx.volumes:
        if vol.role == "input" or (vol.path in mapped and not ctx.has_bad_ranges):
            continue
        if not (ctx.has_bad_ranges or _near_damage(vol, error_paths)):
            continue
        if time.monotonic() > deadline:
            ctx.report.add("warning", "core", vol.path, "status-skipped",
                           "unreadable ranges of this volume were not mapped (time budget "
                           "spent); reads still fail or zero-fill where data is missing")
            continue
        try:
            bad, complete = _bounded_unreadable(
                vol.source, min(deadline, time.monotonic() + VOLUME_BUDGET_SECONDS))
        except Exception as e:
            ctx.report.add("warning", "core", vol.path, "status-failed",
                           f"could not map unreadable ranges: {type(e).__name__}: {e}")
            continue
        if not complete:
            ctx.report.add("warning", "core", vol.path, "status-partial",
                           "unreadable ranges mapped only in part (too many or time budget spent)")
        if not bad:
            continue
        vol.source.has_unreadable = True  # served with direct I/O: reads around bad bytes work
        total = sum(n for _, n in bad)
        root = _root_input(vol)
        if ctx.has_bad_ranges and root.input_path and any(
                i["path"] == root.input_path and i.get("bad_bytes") for i in ctx.inputs):
            layer, msg = "ddrescue", f"{total} bytes lie on unreadable sectors of {root.name}"
        else:
            layer, msg = "core", f"{total} bytes cannot be read (damage in a layer below)"
        for path in [vol.path] + vol.vm_paths:
            ctx.report.add("error", layer, path, "unreadable-range", msg, bad)


def volume_doc(vol: Volume) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "path": vol.path,
        "role": vol.role,
        "size": vol.source.size,
        "format": vol.claimed_by,
        "parent": vol.parent.path if vol.parent is not None else None,
    }
    if vol.filesystem:
        doc["filesystem"] = vol.filesystem
    if vol.vm_paths:
        doc["also_at"] = list(vol.vm_paths)
    if vol.guestfs is not None:
        doc["guest_filesystem"] = vol.guestfs.info.to_json()
        doc["files_at"] = list(vol.files_paths)
    if vol.info:
        doc["info"] = vol.info
    return doc


def report_doc(ctx: Context) -> dict[str, Any]:
    """The scan document as one object (for callers that want it whole; report.json and
    ``--json`` are written piece by piece by :func:`report_json_chunks`)."""
    return json.loads(report_json(ctx))


def _report_fields(ctx: Context) -> list[tuple[str, Any]]:
    """The document's keys in order; a value that is an iterator is a list made item by
    item (the volumes and damage entries of a folder of 10,000 images)."""
    counts = {s: ctx.report.count(s) for s in ("error", "warning", "info")}
    from .proxmox.view import guest_ids, table

    vms = {n: sorted(ctx.vms_root.children()[n].children()) for n in guest_ids(ctx.vms_root)}
    cts = {n: sorted(ctx.cts_root.children()[n].children()) for n in guest_ids(ctx.cts_root)}
    # "unrecognised": the files of input folders that no backend recognised, per folder
    # (only when there are some)
    skipped = [("unrecognised", _Raw(ctx.skipped))] if ctx.skipped else []
    return [
        ("schema", SCHEMA),
        ("pvfs_version", __version__),
        ("inputs", ctx.inputs),
        *skipped,
        ("volumes", (volume_doc(v) for v in ctx.volumes)),
        ("vms", vms),
        ("cts", cts),
        ("guests", table(ctx)),
        ("damage", (e.to_json() for e in ctx.report)),
        ("summary", {"volumes": len(ctx.volumes), "damage": counts}),
    ]


class _Raw(list):
    """A list whose items write themselves (pvfs.unrecognised.SkippedFiles.json_chunks)."""


_ENCODER = json.JSONEncoder(indent=1, default=str)


def _encoded(value: Any, indent: str) -> str:
    # the encoder indents from level 0; JSON text has no raw newline but between items
    return _ENCODER.encode(value).replace("\n", "\n" + indent)


def report_json_chunks(ctx: Context) -> Iterator[str]:
    """report.json in pieces, the same text as ``json.dump(doc, indent=1)`` would write
    (files not recognised one per line), never the whole document in memory: a folder of
    100,000 files kept a dict per file and the text several times while rendering."""
    yield "{"
    for i, (key, value) in enumerate(_report_fields(ctx)):
        yield ("," if i else "") + f"\n {json.dumps(key)}: "
        if isinstance(value, _Raw):
            for j, item in enumerate(value):
                yield ",\n  " if j else "[\n  "
                yield from item.json_chunks("  ")
            yield "\n ]" if value else "[]"
        elif isinstance(value, Iterator):
            empty = True
            for item in value:
                yield ("[" if empty else ",") + "\n  " + _encoded(item, "  ")
                empty = False
            yield "[]" if empty else "\n ]"
        else:
            yield _encoded(value, " ")
    yield "\n}\n"


def write_report_json(ctx: Context, write: Callable[[str], object]) -> None:
    """Write report.json with ``write`` a few KB at a time."""
    buf: list[str] = []
    size = 0
    for chunk in report_json_chunks(ctx):
        buf.append(chunk)
        size += len(chunk)
        if size >= 1 << 16:
            write("".join(buf))
            buf.clear()
            size = 0
    write("".join(buf))


def report_json(ctx: Context) -> str:
    buf = io.StringIO()
    write_report_json(ctx, buf.write)
    return buf.getvalue()


def report_json_bytes(ctx: Context) -> bytes:
    """report.json as the mount serves it (ASCII: the encoder escapes the rest)."""
    buf = io.BytesIO()
    write_report_json(ctx, lambda text: buf.write(text.encode("ascii")))
    return buf.getvalue()


def _fmt_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def status_lines(ctx: Context, rows: list[dict]) -> list[str]:
    """The per-VM and per-container table that README.txt and ``pvfs scan`` start with."""
    from .proxmox.view import table_text

    if not rows:
        return ["No VM or container found.", ""]
    return ["Status of each VM and container (OK, REPAIRED, DEGRADED, PARTIAL, LOST):",
            *table_text(ctx, rows), ""]


def report_text(ctx: Context) -> str:
    from .proxmox.view import details_text, table

    rows = table(ctx)
    lines = status_lines(ctx, rows)
    lines.append("Inputs:")
    for i in ctx.inputs:
        extra = f", mapfile {i['mapfile']} ({i['bad_bytes']} bad bytes)" if i.get("mapfile") else ""
        lines.append(f"  {i['path']} ({_fmt_size(i['size'])}{extra})")
    for sk in ctx.skipped:
        lines.append(f"  {sk.line()}")
    lines.append("")
    lines.append("Layers:")
    children: dict[int | None, list[Volume]] = {}
    for v in ctx.volumes:
        children.setdefault(id(v.parent) if v.parent is not None else None, []).append(v)

    def show(vol: Volume, indent: int) -> None:
        what = vol.claimed_by or vol.filesystem or ("raw data" if vol.role != "input" else "unknown")
        extra = ""
        if vol.vm_paths:
            extra = "  -> " + ", ".join(vol.vm_paths)
        lines.append(f"{'  ' * indent}{vol.path}  [{vol.role}, {_fmt_size(vol.source.size)}, {what}]{extra}")
        if vol.guestfs is not None:
            lines.append(f"{'  ' * (indent + 1)}files: {_fs_line(vol)}")
        for c in children.get(id(vol), []):
            show(c, indent + 1)

    for v in children.get(None, []):
        show(v, 1)
    lines.append("")
    from .fsreport import guest_fs_lines
    from .proxmox.view import guest_ids

    if guest_ids(ctx.vms_root):
        lines.append("VMs: " + ", ".join(guest_ids(ctx.vms_root)))
    if guest_ids(ctx.cts_root):
        lines.append("Containers: " + ", ".join(guest_ids(ctx.cts_root)))
    fs_lines = guest_fs_lines(ctx)
    if fs_lines:
        lines.append("")
        lines.append("Guest filesystems, per VM and container:")
        lines.extend(fs_lines)
    details = details_text(rows)
    if details:
        lines.append("")
        lines.append("Damage per VM and container:")
        lines.extend(details)
    entries = list(ctx.report)
    if entries:
        lines.append("")
        lines.append(f"Damage report ({len(entries)} entries):")
        for e in entries:
            lines.append("  " + printable(e.line()))
    else:
        lines.append("")
        lines.append("Damage report: nothing found.")
    return "\n".join(lines) + "\n"


def _fs_line(vol: Volume) -> str:
    """One line about a guest filesystem: type, label, UUID, size/used, state, damage."""
    i = vol.guestfs.info
    parts = [i.fstype]
    if i.label:
        parts.append(f"label {i.label!r}")
    if i.uuid:
        parts.append(f"UUID {i.uuid}")
    size = _fmt_size(i.size)
    parts.append(f"{_fmt_size(i.used)} of {size} used" if i.used is not None else size)
    if i.clean is not None:
        parts.append("clean" if i.clean else "dirty")
    if i.journal and i.journal not in ("clean", "dirty"):
        parts.append(i.journal)
    parts.append(f"{i.damaged_files} damaged files" if i.damaged_files else "no damaged files")
    shown = [p for p in vol.files_paths if p.startswith(("vms/", "cts/"))] + vol.files_paths
    where = shown[0] if shown else "(not shown)"
    return f"{where}  [" + ", ".join(parts) + "]"


def _vmid_key(s: str) -> tuple[int, int | str]:
    return (0, int(s)) if s.isdigit() else (1, s)


def readme_text(ctx: Context) -> str:
    from .proxmox.view import details_text, table

    rows = table(ctx)
    out = [
        "pvfs: read-only view of recovered Proxmox VE storage",
        f"Made {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(ctx.started))} by pvfs {__version__}.",
        "",
        *status_lines(ctx, rows),
        "  storage/   every input as found, faithful to its own structure",
        "  vms/       VM disks by VMID (disk-<n>.raw, disk-<n>.parts/p<k>, snapshots/, backups/)",
        "             and the files in them: disk-<n>.files/p<k>/ (the filesystem on partition",
        "             k), disk-<n>.files/ (a whole-disk filesystem), disk-<n>.files/<vg>-<lv>/;",
        "             qemu-server.conf, by-config/<scsi0 ...> and by-name/<name> links",
        "  cts/       containers by VMID: rootfs/ (the files), rootfs.raw (the volume),",
        "             pct.conf, by-config/<rootfs, mp0 ...> and by-name/<hostname> links",
        "  report.json  inventory and damage report (same as `pvfs scan --json`)",
        "  report.html  the status table and a damage map of every disk, for a browser",
        "               (same as `pvfs scan --html FILE`)",
        "",
    ]
    disk, part = _examples(ctx)
    out += [
        f"Copy a disk out:   cp --sparse=always {disk} /safe/place/",
        f"                   qemu-img convert -f raw -O qcow2 {disk} /safe/disk.qcow2",
        f"Open a partition:  mount -o ro,loop {part} /mnt/x",
        "  ext4: mount -o ro,noload,loop ...   XFS: mount -o ro,norecovery,loop ...",
        "Files inside guest filesystems (ext4, XFS, btrfs, NTFS, FAT/exFAT) need no mount:",
        "  they are read by pvfs itself under *.files/ and rootfs/ (cp -a works, as any user).",
        "  A file that lies on unreadable bytes reads EIO there (zeros with --bad zero) and",
        "  is named in report.json (code files-damaged); every other file reads normally.",
        "",
    ]
    from .fsreport import guest_fs_lines

    per_guest = guest_fs_lines(ctx)
    if per_guest:
        out.append("Guest filesystems, per VM and container:")
        out.extend(per_guest)
        out.append("")
    fs_rows = [f"  {_fs_line(v)}" for v in ctx.volumes if v.guestfs is not None and v.files_paths]
    if fs_rows:
        out.append("Guest filesystems:")
        out.extend(fs_rows)
        out.append("")
    origin = []
    for v in ctx.volumes:
        if v.role == "partition":
            continue
        for p in v.vm_paths:
            if p.startswith(("vms/", "cts/")):
                origin.append(f"  {p:40s} <- {v.path}")
    from .proxmox.view import origins

    origin += [f"  {p:40s} <- {src}" for p, src in origins(ctx)]
    if origin:
        out.append("Where each VM and container disk comes from:")
        out.extend(sorted(origin, key=lambda line: _vmid_key(line.split("/")[1]) + (line,)))
        out.append("")
    fs_lines = []
    for v in ctx.volumes:
        hint = MOUNT_HINTS.get(v.filesystem or "")
        if hint:
            for p in [v.path] + v.vm_paths:
                fs_lines.append(f"  {hint} {p} /mnt/x     ({v.filesystem})")
    if fs_lines:
        out.append("Filesystems found:")
        out.extend(fs_lines)
        out.append("")
    out.extend(ctx.extra_readme)
    details = details_text(rows)
    if details:
        out.append("Damage per VM and container (the first entries of each; report.json has all):")
        out.extend(details)
        out.append("")
    n = len(ctx.report)
    counts = ctx.report.outcome_summary()
    out.append(f"Damage entries: {n} ({counts}; all in report.json)" if n
               else "Damage entries: none.")
    return "\n".join(out) + "\n"


def _examples(ctx: Context) -> tuple[str, str]:
    """A real disk and partition of this tree for the usage lines (VM view first)."""
    disk: str | None = None
    part: str | None = None
    for v in ctx.volumes:
        paths = [p for p in v.vm_paths if p.startswith("vms/")] or [v.path]
        if disk is None and v.role not in ("input", "partition") and v.vm_paths:
            disk = paths[0]
        if part is None and v.role == "partition" and v.filesystem:
            part = paths[0]
    return disk or "vms/<vmid>/disk-<n>.raw", part or "vms/<vmid>/disk-<n>.parts/p<k>"


def attach_generated_files(ctx: Context) -> None:
    version = ctx.report.version  # re-rendered only when an entry was added (reads add some)
    ctx.root.add("README.txt", GeneratedFile(lambda: readme_text(ctx).encode(), version=version))
    ctx.root.add("report.json", GeneratedFile(lambda: report_json_bytes(ctx), version=version))
    ctx.root.add("report.html", GeneratedFile(lambda: _html(ctx), version=version))


def _html(ctx: Context) -> bytes:
    from .htmlreport import report_html  # when report.html is read, not at every mount

    return report_html(ctx).encode()
