"""The qcow2 backend: the virtual disk, its internal snapshots, a destroyed header
recovered by scanning.  Declared in ``__init__.py`` (``SPECS``)."""

from __future__ import annotations

import time

from pvfs.backend import Backend
from pvfs.errors import UnreadableError
from pvfs.source import BAD_ZERO

from . import CLI_OPTIONS
from .image import Qcow2Error, Qcow2Image, parse_header, scan_for_l1
from .structs import QCOW_MAGIC


class Qcow2Backend(Backend):
    name = "qcow2"
    roles = ("input",)
    cli_options = list(CLI_OPTIONS)

    def probe(self, volume, ctx):
        head = volume.source.read(0, 4)
        if head == QCOW_MAGIC:
            return 100.0
        # A .qcow2 file whose header cluster is gone: try to recover it by scanning.
        if volume.name.endswith(".qcow2") and volume.source.size >= 3 * 512:
            return 5.0
        return 0.0

    def open(self, volume, ctx):
        bad = ctx.bad("eio")
        files, path = volume.files, volume.file_path
        try:
            img = Qcow2Image(volume.source, path, files, bad)
        except (Qcow2Error, UnreadableError) as e:
            if volume.source.read(0, 4) == QCOW_MAGIC and not _header_destroyed(volume.source):
                raise Qcow2Error(str(e)) from None
            img = self._recover(volume, ctx, str(e), files, bad)
            if img is None:
                raise Qcow2Error(f"{e}; no L1 table found by scanning either") from None
        for sev, code, msg in img.problems:
            ctx.report.add(sev, "qcow2", volume.path, code, msg)
        info = {"format": "qcow2", **img.hdr.info()}
        volume.info.update(info)
        deadline = time.monotonic() + EOF_CHECK_SECONDS
        disk = img.disk()
        vol = ctx.add_input_disk(volume, disk, info={"format": "qcow2"})
        _report_beyond_eof(ctx, vol, disk, deadline)
        for snap in img.snapshots:
            name = snap.name or f"id-{snap.id}"
            sinfo = {"snapshot": snap.name, "id": snap.id, "date": snap.date_sec,
                     "vm_state_size": snap.vm_state_size, "disk_size": snap.disk_size}
            sdisk = img.disk(snap)
            svol = ctx.add_input_disk(volume, sdisk, snapshot=name, info=sinfo,
                                      mtime=snap.date_sec or None)
            _report_beyond_eof(ctx, svol, sdisk, deadline)

    def _recover(self, volume, ctx, why, files, bad):
        """Header destroyed: find the L1 table and map what it maps (qcow2.txt "Cluster mapping")."""
        forced = ctx.options.get("qcow2_cluster_bits")
        tries = [forced] if forced else [16] + [b for b in range(9, 22) if b != 16]
        for bits in tries:
            found = scan_for_l1(volume.source, bits)
            if found is None:
                continue
            l1_offset, l1_size = found
            from .image import Header

            l2_entries = (1 << bits) // 8
            size = l1_size * l2_entries * (1 << bits)
            hdr = Header(version=3, cluster_bits=bits, size=size, crypt_method=0, l1_size=l1_size,
                         l1_table_offset=l1_offset, refcount_table_offset=1,
                         refcount_table_clusters=1, nb_snapshots=0, snapshots_offset=0)
            img = Qcow2Image(volume.source, volume.file_path, files, bad, header=hdr)
            ctx.report.add("error", "qcow2", volume.path, "header-destroyed",
                           f"qcow2 header unusable ({why}); found an L1 table at {l1_offset:#x} "
                           f"with cluster size {1 << bits} by scanning: the virtual size "
                           f"({size} bytes) is an upper bound, backing file, snapshots and "
                           "compression type are unknown")
            return img
        return None


EOF_CHECK_SECONDS = 5.0  # per image, all its snapshots: a truncated file is found at scan


def _report_beyond_eof(ctx, vol, disk, deadline):
    """A truncated image: the clusters its tables place past the end of the file are
    lost; say so at scan time (one entry per place the disk is shown), not at first read."""
    ranges, complete = disk.beyond_eof(deadline)
    if not complete:
        ctx.report.add("warning", "qcow2", vol.path, "eof-check-partial",
                       "time budget spent before every L2 table was checked for clusters "
                       "past the end of the file")
    if not ranges:
        return
    total = sum(n for _, n in ranges)
    how = "read as zeros (--bad zero)" if disk.img.bad == BAD_ZERO else "read as EIO"
    what = "data file" if disk.external_data else "image file"
    msg = (f"the {what} ends at {disk.data.size:#x} but its tables map {total} bytes of the "
           f"virtual disk past that end (a truncated copy?); they are lost and {how}")
    for p in [vol.path, *vol.vm_paths]:
        ctx.report.add("error", "qcow2", p, "beyond-eof", msg, ranges)


def _header_destroyed(source):
    try:
        parse_header(source)
        return False
    except (Qcow2Error, UnreadableError):
        return True
