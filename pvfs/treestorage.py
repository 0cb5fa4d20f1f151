"""Proxmox directory storages inside recovered file systems.

A Proxmox host on ZFS keeps its ``local`` storage, ``/var/lib/vz``, in the root
dataset (``rpool/ROOT/pve-1``): qcow2 and raw disk images under
``images/<vmid>/`` and vzdump archives under ``dump/``.  Once the backends
have built the tree, this step looks for such storages near the top of every
``storage/<area>/`` tree (not in a full walk: a root file system has millions
of files) and feeds their images back into discovery as inputs, so they are
opened like files given on the command line.  Paths an image names (a qcow2
backing file) are looked up in the same tree (:class:`pvfs.namespace.TreeFiles`).
"""

from __future__ import annotations

from .nodes import Dir, File, resolve

#: Where a storage can sit relative to a file system root.
CANDIDATES = ("var/lib/vz", "")
MAX_DEPTH = 4  # storage/<area>/<pool>/<dataset>/... levels looked at
MAX_LISTINGS = 5000  # directories listed per scan, at most


def _storage_dirs(ctx):
    """Yield ``(dir, tree_path, fs_root_path)`` of candidate storage directories."""
    listings = 0
    seen = ctx.__dict__.setdefault("_scanned_storage_dirs", set())
    queue = [(d, f"storage/{name}", 1) for name, d in ctx.storage_root.children().items()
             if name != "files" and isinstance(d, Dir)]
    while queue:
        node, path, depth = queue.pop(0)
        for rel in CANDIDATES:
            cand = resolve(node, rel) if rel else node
            cpath = f"{path}/{rel}" if rel else path
            if isinstance(cand, Dir) and id(cand) not in seen:
                kids = cand.children()
                if isinstance(kids.get("images"), Dir) or isinstance(kids.get("dump"), Dir):
                    seen.add(id(cand))
                    yield cand, cpath, path
        if depth >= MAX_DEPTH or listings >= MAX_LISTINGS:
            continue
        listings += 1
        for name, child in node.children().items():
            if isinstance(child, Dir) and not name.startswith("."):
                queue.append((child, f"{path}/{name}", depth + 1))


def _is_vzdump(name):
    return name.startswith("vzdump-") and not name.endswith((".log", ".notes"))


def scan_tree_storages(ctx) -> int:
    """Add the images and backups of storages found in the tree as inputs; return how many."""
    from .discover import add_tree_input

    added = 0
    for sdir, spath, fs_root in list(_storage_dirs(ctx)):
        kids = sdir.children()
        images = kids.get("images")
        if isinstance(images, Dir):
            for vmid, vdir in images.children().items():
                if not (vmid.isdigit() and isinstance(vdir, Dir)):
                    continue
                for fname, f in vdir.children().items():
                    if isinstance(f, File):
                        add_tree_input(ctx, f, f"{spath}/images/{vmid}/{fname}", fs_root)
                        added += 1
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
