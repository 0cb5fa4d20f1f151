"""The Ceph backend: OSDs grouped by cluster fsid, opened together (cluster_tree.py);
OSD and monitor data directories; FileStore OSDs inside recovered filesystems.
Declared in ``__init__.py`` (``SPECS``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from pvfs.backend import Backend
from pvfs.errors import UnreadableError

from . import AUX_KEY, CLI_OPTIONS, is_mon_dir, is_osd_dir
from .errors import CephError
from .label import probe_label


@dataclass
class CephState:
    """Per-discovery state: monitor data directories found among the inputs."""

    mon_dirs: list[str] = field(default_factory=list)
    #: FileStore OSD data directories found in the tree, by cluster fsid:
    #: ``[(node, tree path, volume)]``, opened together by ``finish``
    filestores: dict = field(default_factory=dict)


class CephBackend(Backend):
    name = "ceph"
    grouped = True
    roles = None  # an OSD may be a whole disk, a partition or an LV
    cli_options = list(CLI_OPTIONS)

    def new_state(self, ctx):
        return CephState()

    # -- probing -------------------------------------------------------------------
    def probe(self, volume, ctx):
        try:
            if volume.source.size < 8192:
                return 0.0
            label = probe_label(volume.source.read(0, 4096))
        except Exception:
            return 0.0
        if label is None:
            return 0.0
        return 100.0 if getattr(label, "crc_ok", False) else 50.0

    def member_key(self, volume, ctx):
        label = probe_label(volume.source.read(0, 4096))
        if not label.is_main:
            # block.db / block.wal labels carry no cluster fsid: they join their OSD (by
            # osd uuid) when its cluster opens
            return AUX_KEY
        fsid = label.meta.get("ceph_fsid") if label.meta else None
        return fsid or f"osd-{label.osd_uuid}"

    def probe_dir(self, path, ctx):
        if is_mon_dir(path):
            return 60.0
        if is_osd_dir(path):
            return 60.0
        return 0.0

    def open_dir(self, path, ctx):
        from pvfs.discover import add_input

        if is_mon_dir(path):
            ctx.state(self).mon_dirs.append(path)
            return
        # An OSD data dir: its block (and block.db / block.wal) devices are the inputs.
        name = os.path.basename(os.path.normpath(path))
        d = ctx.storage("files").subdir(name)
        for dev in ("block", "block.db", "block.wal"):
            p = os.path.join(path, dev)
            if os.path.exists(p):
                add_input(ctx, p, d, f"storage/files/{name}")

    # -- FileStore OSDs inside filesystems (an OSD's XFS/ext4 image) ------------------
    def probe_node(self, node, path, ctx):
        from .filestore import is_filestore_dir

        return 70.0 if is_filestore_dir(node) else 0.0

    def open_node(self, node, path, ctx):
        from .filestore import small_file

        fsid = small_file(node, "ceph_fsid") or f"filestore-{path}"
        vol = next((v for v in ctx.filesystems if v.guestfs_root is node), None)
        ctx.state(self).filestores.setdefault(fsid, []).append((node, path, vol))

    def finish(self, ctx):
        from .cluster_tree import open_filestore_cluster

        state = ctx.state(self)
        for fsid, members in sorted(state.filestores.items()):
            try:
                open_filestore_cluster(self, fsid, members, ctx)
            except (CephError, UnreadableError) as e:
                ctx.report.add("error", "ceph", members[0][1], "filestore-cluster",
                               f"FileStore cluster {fsid}: {e}")
        state.filestores = {}

    # -- the group --------------------------------------------------------------------
    def open_group(self, key, volumes, ctx):
        from .cluster_tree import open_aux, open_cluster

        if key == AUX_KEY:
            open_aux(self, volumes, ctx)
        else:
            open_cluster(self, key, volumes, ctx)
