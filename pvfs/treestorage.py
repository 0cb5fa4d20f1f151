"""Proxmox directory storages inside recovered file systems.

A Proxmox host on ZFS keeps its ``local`` storage, ``/var/lib/vz``, in the root
dataset (``rpool/ROOT/pve-1``): qcow2 and raw disk images under
``images/<vmid>/`` and vzdump archives under ``dump/``.  Once the backends
have built the tree, this step looks for such storages near the top of every
``storage/<area>/`` tree (not in a full walk: a root file system has millions
of files) and feeds their images back into discovery as inputs, so they are
opened like files given on the command line.  Paths an image names (a qcow2
backing file) are looked up in the same tree (:class:`pvfs.namespace.TreeFiles`).
The same directories are offered to backends with ``probe_node`` (a Proxmox
Backup Server datastore on its own dataset, or under ``mnt/datastore/``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from .nodes import Dir, File, resolve

if TYPE_CHECKING:
    from .discover import Context

#: Where a storage can sit relative to a file system root.
CANDIDATES = ("var/lib/vz", "")
MAX_DEPTH = 16  # nesting of file system roots (datasets in datasets) looked at
#: Areas that hold recovered file systems.  Others are not listed: their directories
#: can be expensive to fill (DRBD's diverged/ compares both nodes when first listed).
FILESYSTEM_AREAS = ("zfs",)
MAX_LISTINGS = 2000  # file system roots listed per scan, at most


def _top_dirs(ctx: Context) -> Iterator[tuple[Dir, str, int]]:
    """Yield ``(dir, tree_path, depth)`` for every file system root a backend marked
    (``dir.filesystem_root = True``: a ZFS dataset) and every guest filesystem's root,
    plus ``mnt/datastore/*`` below each.

    Only file system roots are listed, never the ordinary directories inside them:
    listing is what costs (a dataset with 10,000 files in its top directory).
    """
    listings = 0
    queue = [(d, f"storage/{name}", 1) for name, d in ctx.storage_root.children().items()
             if name in FILESYSTEM_AREAS and isinstance(d, Dir)]
    # Guest filesystems (an ext4 root LV of a Proxmox host): each root is a candidate.
    queue += [(v.guestfs_root, v.files_paths[0], MAX_DEPTH) for v in ctx.filesystems
              if v.guestfs_root is not None and v.files_paths]
    while queue:
        node, path, depth = queue.pop(0)
        yield node, path, depth
        ds = resolve(node, "mnt/datastore")
        if isinstance(ds, Dir):
            for name, child in ds.children().items():
                if isinstance(child, Dir):
                    yield child, f"{path}/mnt/datastore/{name}", depth + 3
        if depth >= MAX_DEPTH or listings >= MAX_LISTINGS:
            continue
        listings += 1
        # file system roots are kept entries (child datasets): a directory's own entries
        # (InodeSpace, not kept) are not built for this
        for name, child in node.kept().items():
            if isinstance(child, Dir) and child.filesystem_root and not name.startswith("."):
                queue.append((child, f"{path}/{name}", depth + 1))


def _open_datastores(ctx: Context, dirs: Iterable[tuple[Dir, str, int]]) -> None:
    """Offer each directory node to the backends that read directory formats (PBS)."""
    from .backend import load_backends, pick_best
    from .discover import _probe_error, _run_backend

    seen = ctx.probed_node_dirs
    backends = [b for b in load_backends() if b.implements("probe_node")]
    for node, path, _ in dirs:
        if id(node) in seen:
            continue
        seen.add(id(node))
        found = pick_best(backends, lambda b, node=node, path=path: b.probe_node(node, path, ctx),
                          _probe_error(ctx, path))
        if found:
            best = found[1]
            _run_backend(ctx, best, None, path, best.open_node, node, path, ctx)


def _storage_dirs(ctx: Context,
                  dirs: Iterable[tuple[Dir, str, int]]) -> Iterator[tuple[Dir, str, str]]:
    """Yield ``(dir, tree_path, fs_root_path)`` of candidate Proxmox directory storages."""
    seen = ctx.scanned_storage_dirs
    for node, path, _depth in dirs:
        rels = list(CANDIDATES)
        pve = resolve(node, "var/lib/pve")  # btrfs storages: /var/lib/pve/<storage id>
        if isinstance(pve, Dir):
            rels += [f"var/lib/pve/{n}" for n, d in pve.children().items() if isinstance(d, Dir)]
        for rel in rels:
            cand = resolve(node, rel) if rel else node
            cpath = f"{path}/{rel}" if rel else path
            # by name, not by listing: a dataset's root may hold thousands of entries, and
            # listing builds a node for each (every mount with ZFS passes here)
            if isinstance(cand, Dir) and id(cand) not in seen and (
                    isinstance(cand.get("images"), Dir) or isinstance(cand.get("dump"), Dir)):
                seen.add(id(cand))
                yield cand, cpath, path


_BTRFS_DISK = re.compile(r"^(?:vm|base)-\d+-disk-\d+$")
_BTRFS_SUBVOL = re.compile(r"^subvol-\d+-disk-\d+$")


def _btrfs_storage_volumes(ctx: Context, vdir: Dir, vpath: str, fs_root: str) -> int:
    """Proxmox btrfs storage keeps each VM disk as a subvolume holding ``disk.raw``
    (``images/<vmid>/vm-<vmid>-disk-<n>/disk.raw``) and each container volume as a
    subvolume (``images/<vmid>/subvol-<vmid>-disk-<n>/``); see PVE/Storage/BTRFSPlugin.pm."""
    from .discover import add_tree_input
    from .proxmox.view import Locator

    added = 0
    for name, sub in vdir.children().items():
        if not isinstance(sub, Dir):
            continue
        if _BTRFS_DISK.match(name) and isinstance(sub.get("disk.raw"), File):
            vol = add_tree_input(ctx, sub.get("disk.raw"), f"{vpath}/{name}/disk.raw", fs_root)
            vol.file_name = f"{name}.raw"  # the volume's Proxmox name, not "disk.raw"
            added += 1
        elif _BTRFS_SUBVOL.match(name):
            vmid = vpath.rsplit("/", 1)[-1]
            ctx.add_proxmox(Locator("dir", fs_root or "/", f"{vmid}/{name}"), tree=sub,
                            where=f"{vpath}/{name}")
    return added


def _is_vzdump(name: str) -> bool:
    return name.startswith("vzdump-") and not name.endswith((".log", ".notes"))


def scan_tree_storages(ctx: Context) -> int:
    """Add the images and backups of storages found in the tree as inputs; return how many."""
    from .discover import add_tree_input, companion_files
    from .namespace import TreeFiles
    from .proxmox.cluster import note_tree_roots

    dirs = list(_top_dirs(ctx))
    _open_datastores(ctx, dirs)
    note_tree_roots(ctx, dirs)  # roots holding /var/lib/pve-cluster (the cluster database)
    added = 0
    for sdir, spath, fs_root in list(_storage_dirs(ctx, dirs)):
        kids = sdir.children()
        images = kids.get("images")
        if isinstance(images, Dir):
            for vmid, vdir in images.children().items():
                if not (vmid.isdigit() and isinstance(vdir, Dir)):
                    continue
                files = {n: f for n, f in vdir.children().items() if isinstance(f, File)}
                owners = companion_files(ctx, TreeFiles(ctx.root), f"{spath}/images/{vmid}",
                                         list(files))
                for fname, f in files.items():
                    if fname in owners:  # a VMDK extent: read through its descriptor
                        continue
                    add_tree_input(ctx, f, f"{spath}/images/{vmid}/{fname}", fs_root)
                    added += 1
                added += _btrfs_storage_volumes(ctx, vdir, f"{spath}/images/{vmid}", fs_root)
        dump = kids.get("dump")
        if isinstance(dump, Dir):
            for fname, f in dump.children().items():
                if isinstance(f, File) and _is_vzdump(fname):
                    add_tree_input(ctx, f, f"{spath}/dump/{fname}", fs_root)
                    added += 1
        ctx.report.add("info", "core", spath, "tree-storage",
                       "Proxmox directory storage found inside a recovered file system; "
                       "its images and backups are opened as inputs")
    return added
