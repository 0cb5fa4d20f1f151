"""The scan document (``pvfs scan --json`` and ``report.json``), its text form and README.txt."""

from __future__ import annotations

import json
import time

from . import __version__
from .fsprobe import MOUNT_HINTS
from .nodes import GeneratedFile

SCHEMA = "pvfs-report/1"


def _root_input(vol):
    while vol.parent is not None:
        vol = vol.parent
    return vol


def propagate_unreadable(ctx):
    """Give every volume above a bad range its own damage entry (its own byte ranges)."""
    if not ctx.has_bad_ranges:
        return
    for vol in ctx.volumes:
        if vol.role == "input":
            continue
        try:
            bad = vol.source.unreadable_ranges()
        except Exception as e:
            ctx.report.add("warning", "core", vol.path, "status-failed",
                           f"could not map unreadable ranges: {type(e).__name__}: {e}")
            continue
        if not bad:
            continue
        vol.source.has_unreadable = True  # served with direct I/O: reads around bad bytes work
        total = sum(n for _, n in bad)
        for path in [vol.path] + vol.vm_paths:
            ctx.report.add("error", "ddrescue", path, "unreadable-range",
                           f"{total} bytes lie on unreadable sectors of "
                           f"{_root_input(vol).name}", bad)


def volume_doc(vol):
    doc = {
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
    if vol.info:
        doc["info"] = vol.info
    return doc


def report_doc(ctx):
    counts = {s: ctx.report.count(s) for s in ("error", "warning", "info")}
    vms = {}
    for name, node in sorted(ctx.vms_root.children().items()):
        vms[name] = sorted(node.children().keys())
    cts = {}
    for name, node in sorted(ctx.cts_root.children().items()):
        cts[name] = sorted(node.children().keys())
    return {
        "schema": SCHEMA,
        "pvfs_version": __version__,
        "inputs": ctx.inputs,
        "volumes": [volume_doc(v) for v in ctx.volumes],
        "vms": vms,
        "cts": cts,
        "damage": ctx.report.to_json(),
        "summary": {"volumes": len(ctx.volumes), "damage": counts},
    }


def report_json(ctx) -> str:
    return json.dumps(report_doc(ctx), indent=1, sort_keys=False, default=str) + "\n"


def _fmt_size(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def report_text(ctx) -> str:
    lines = ["Inputs:"]
    for i in ctx.inputs:
        extra = f", mapfile {i['mapfile']} ({i['bad_bytes']} bad bytes)" if i.get("mapfile") else ""
        lines.append(f"  {i['path']} ({_fmt_size(i['size'])}{extra})")
    lines.append("")
    lines.append("Layers:")
    children = {}
    for v in ctx.volumes:
        children.setdefault(id(v.parent) if v.parent is not None else None, []).append(v)

    def show(vol, indent):
        what = vol.claimed_by or vol.filesystem or ("raw data" if vol.role != "input" else "unknown")
        extra = ""
        if vol.vm_paths:
            extra = "  -> " + ", ".join(vol.vm_paths)
        lines.append(f"{'  ' * indent}{vol.path}  [{vol.role}, {_fmt_size(vol.source.size)}, {what}]{extra}")
        for c in children.get(id(vol), []):
            show(c, indent + 1)

    for v in children.get(None, []):
        show(v, 1)
    lines.append("")
    if ctx.vms_root.children():
        lines.append("VMs: " + ", ".join(sorted(ctx.vms_root.children(), key=_vmid_key)))
    if ctx.cts_root.children():
        lines.append("Containers: " + ", ".join(sorted(ctx.cts_root.children(), key=_vmid_key)))
    entries = list(ctx.report)
    if entries:
        lines.append("")
        lines.append(f"Damage report ({len(entries)} entries):")
        for e in entries:
            lines.append("  " + e.line())
    else:
        lines.append("")
        lines.append("Damage report: nothing found.")
    return "\n".join(lines) + "\n"


def _vmid_key(s):
    return (0, int(s)) if s.isdigit() else (1, s)


def readme_text(ctx) -> str:
    out = [
        "pvfs: read-only view of recovered Proxmox VE storage",
        f"Made {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(ctx.started))} by pvfs {__version__}.",
        "",
        "  storage/   every input as found, faithful to its own structure",
        "  vms/       VM disks by VMID (disk-<n>.raw, disk-<n>.parts/p<k>, snapshots/)",
        "  cts/       containers by VMID",
        "  report.json  inventory and damage report (same as `pvfs scan --json`)",
        "",
        "Copy a disk out:   cp --sparse=always vms/100/disk-0.raw /safe/place/",
        "                   qemu-img convert -O qcow2 vms/100/disk-0.raw /safe/vm-100-disk-0.qcow2",
        "Open a partition:  mount -o ro,loop vms/100/disk-0.parts/p1 /mnt/x",
        "  ext4: mount -o ro,noload,loop ...   XFS: mount -o ro,norecovery,loop ...",
        "",
    ]
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
    n = len(ctx.report)
    out.append(f"Damage entries: {n} (see report.json)" if n else "Damage entries: none.")
    return "\n".join(out) + "\n"


def attach_generated_files(ctx):
    ctx.root.add("README.txt", GeneratedFile(lambda: readme_text(ctx).encode()))
    ctx.root.add("report.json", GeneratedFile(lambda: report_json(ctx).encode()))
