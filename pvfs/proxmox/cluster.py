"""Finding the cluster database in recovered host roots and showing ``/etc/pve``.

A Proxmox node's root file system holds ``/var/lib/pve-cluster/config.db``.
pvfs recovers root file systems in several ways: a ZFS dataset
(``rpool/ROOT/pve-1``), a guest filesystem (the ext4/XFS ``pve/root`` LV or a
partition), a PBS host backup (``root.pxar``), or a directory copy given on
the command line.  Each is a *host root*; the databases found in them are
read (:mod:`.pmxcfs`) and shown as ``storage/pve/<node>/etc-pve/``.  Several
nodes' databases (a cluster: every node keeps a full copy) are ordered by
their tree version; the newest one is the cluster's configuration that the
VM view uses.

References: proxmox/pve-cluster ``src/pmxcfs/cfs-plug-link.c`` (``local``,
``qemu-server``, ``lxc``, ``openvz`` are links to ``nodes/<this node>/``),
``src/pmxcfs/cfs-plug-memdb.c`` (files under ``priv/`` are 0600; here the
others are 0444 and directories 0555, as the tree is read-only).
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import UnreadableError
from ..nodes import Dir, File, Symlink
from ..source import BAD_EIO, BytesSource, MissingSource, concat
from . import pmxcfs
from .pmxcfs import DT_DIR, DT_REG, ClusterDB, HostFiles, NodeFiles, OsDirFiles

if TYPE_CHECKING:
    from ..damage import DamageReport
    from ..discover import Context, Volume

_NODE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,62}$")
MAX_HOST_ROOTS = 1000
LOCAL_LINKS = ("qemu-server", "lxc", "openvz")


@dataclass
class HostRoot:
    files: HostFiles
    path: str  # tree path (or input path) of the root, for messages
    what: str  # "ZFS dataset", "guest filesystem", "PBS host backup", "directory"
    nested: bool = False  # inside a guest's disk (a Proxmox VE running in a VM)


def note_root(ctx: Context, files: HostFiles, path: str, what: str, key: Hashable | None = None,
              nested: bool = False) -> None:
    """Remember a recovered root file system that may hold ``/var/lib/pve-cluster``.

    Cheap: only asks whether the directory exists (three small listings)."""
    key = key if key is not None else id(files)
    seen = ctx.host_roots_seen
    if key in seen or len(seen) >= MAX_HOST_ROOTS:
        return
    seen.add(key)
    try:
        if not files.exists(pmxcfs.DB_DIR):
            return
    except UnreadableError:
        return
    except Exception as e:  # a broken lazy directory: say so, go on
        ctx.report.add("warning", "pve", path, "host-root-unreadable",
                       f"could not look for /{pmxcfs.DB_DIR}: {type(e).__name__}: {e}")
        return
    ctx.host_roots.append(HostRoot(files, path, what, nested))


def note_tree_roots(ctx: Context, dirs: Iterable[tuple[Dir, str, int]]) -> None:
    """The hook of :func:`pvfs.treestorage.scan_tree_storages`: every file system root
    it found (ZFS datasets, ``mnt/datastore/*``) and every guest filesystem opened so far."""
    for vol in ctx.filesystems:  # first: a guest filesystem's root may also be among dirs
        root = vol.guestfs_root
        if root is not None:
            where = vol.files_paths[0] if vol.files_paths else vol.path
            note_root(ctx, NodeFiles(root, where), where, "guest filesystem", key=id(root),
                      nested=_in_guest_disk(vol))
    for node, path, _depth in dirs:
        note_root(ctx, NodeFiles(node, path), path, "file system root", key=id(node))


def _in_guest_disk(vol: Volume) -> bool:
    """Whether ``vol`` lies inside a Proxmox guest's disk (itself or a layer below it is a
    volume named like ``vm-100-disk-0``, or a backup's disk): a nested Proxmox VE's root."""
    v: Volume | None = vol
    while v is not None:
        if "proxmox" in v.info or v.info.get("format") in ("vma-device", "pbs-fidx"):
            return True
        v = v.parent
    return False


def note_input_dir(ctx: Context, path: str) -> None:
    """A directory given on the command line that is a copy of a host root."""
    note_root(ctx, OsDirFiles(path), path, "directory", key=("dir", path))


def _node_name(files: HostFiles, db: ClusterDB) -> str | None:
    """The node this root belongs to: ``/etc/hostname`` if the database has it under
    ``nodes/``, else the only node the database knows."""
    nodes = sorted(p.split("/")[1] for p, e in db.paths().items()
                   if e.type == DT_DIR and p.count("/") == 1 and p.startswith("nodes/"))
    try:
        hn = files.read("etc/hostname", limit=256)
    except Exception:
        hn = None
    if hn:
        name = hn.decode("utf-8", "replace").strip().split(".")[0]
        if _NODE_RE.match(name):
            return name
    if len(nodes) == 1:
        return nodes[0]
    return None


@dataclass
class LoadedDB:
    db: ClusterDB
    node: str
    root: HostRoot
    tree_path: str = ""  # storage/pve/<node>


def load_all(ctx: Context) -> list[LoadedDB]:
    """Read the database of every host root noted; report what each fallback cost."""
    out: list[LoadedDB] = []
    for i, hr in enumerate(ctx.host_roots):
        try:
            db = pmxcfs.load(hr.files)
        except Exception as e:  # never a traceback for a hostile database
            ctx.report.add("error", "pve", hr.path, "config-db-failed",
                           f"cluster database: {type(e).__name__}: {e}")
            continue
        if db is None:
            continue
        where = f"{hr.path}/{pmxcfs.DB_PATH}"
        db.where = where
        for sev, code, msg in db.problems:
            ctx.report.add(sev, "pve", where, code, msg)
        if not db.entries:
            continue
        node = _node_name(hr.files, db) or f"unknown-{i + 1}"
        out.append(LoadedDB(db, node, hr))
    # The host's own databases first (a Proxmox VE inside a VM keeps a cluster of its own),
    # then the newest.
    out.sort(key=lambda x: (x.root.nested, -x.db.version))
    return out


def etc_pve_tree(db: ClusterDB, node: str | None, report: DamageReport | None = None,
                 where: str = "",
                 bad: str = BAD_EIO) -> Dir:
    """``/etc/pve`` as recorded: files with the database's mtimes, ``priv/`` 0600."""
    root = Dir(mode=0o555, mtime=db.mtime)
    dirs = {"": root}
    paths = db.paths()
    for p in sorted(paths, key=lambda s: (s.count("/"), s)):
        e = paths[p]
        parent, _, name = p.rpartition("/")
        pd = dirs.get(parent)
        if pd is None:
            continue
        private = "priv" in p.split("/")[:-1]  # priv/ and nodes/<node>/priv/
        if e.type == DT_DIR:
            d = Dir(mode=0o555, mtime=e.mtime)
            pd.add(name, d)
            dirs[p] = d
        elif e.type == DT_REG:
            src = BytesSource(e.data or b"", label=f"etc-pve/{p}")
            if e.lost_from is not None:  # salvaged: the rest of the file is unknown, never zeros
                src = concat([BytesSource((e.data or b"")[: e.lost_from]),
                              MissingSource(len(e.data or b"") - e.lost_from,
                                            "in a lost page of config.db", bad=bad,
                                            label=f"etc-pve/{p}")], label=f"etc-pve/{p}")
            f = File(src, mode=0o600 if private else 0o444, mtime=e.mtime)
            pd.add(name, f)
    if node and f"nodes/{node}" in dirs:
        for link in ("local", *LOCAL_LINKS):
            target = f"nodes/{node}" if link == "local" else f"nodes/{node}/{link}"
            if link not in root.children() and (link == "local" or target in dirs):
                root.add(link, Symlink(target, mtime=db.mtime))
    orphans = db.orphans()
    if orphans:
        lf = root.subdir("lost+found")
        for e in orphans[:10000]:
            if e.type == DT_REG:
                lf.add(f"{e.inode}-{e.name}", File(BytesSource(e.data or b""), mode=0o600,
                                                   mtime=e.mtime))
        if report is not None:
            report.add("warning", "pve", where, "config-orphans",
                       f"{len(orphans)} entries of the database have no path to the root "
                       f"(a lost directory); their files are in etc-pve/lost+found/")
    return root


def show(ctx: Context, loaded: list[LoadedDB]) -> None:
    """``storage/pve/<node>/etc-pve/`` for every database read."""
    if not loaded:
        return
    area = ctx.storage("pve")
    for ld in loaded:
        ndir = Dir(mode=0o555)
        used = area.add(ld.node, ndir, report=ctx.report, path_hint="storage/pve")
        ld.tree_path = f"storage/pve/{used}"
        ndir.add("etc-pve", etc_pve_tree(ld.db, ld.node, ctx.report, ld.db.where, ctx.bad()))
        info = (f"{ld.db.origin}, version {ld.db.version}"
                f"{', STALE' if ld.db.stale else ''}; from {ld.db.where}\n")
        ndir.add("SOURCE.txt", File(BytesSource(info.encode(), label="SOURCE.txt")))
    if len(loaded) > 1:
        newest = loaded[0]
        for ld in loaded[1:]:
            if ld.root.nested and not newest.root.nested:
                ctx.report.add("info", "pve", ld.tree_path, "config-nested",
                               f"node {ld.node}'s database lies inside a guest's disk (a "
                               f"Proxmox VE in a VM): shown, not used for the VM view")
            elif ld.db.version < newest.db.version:
                ctx.report.add("info", "pve", ld.tree_path, "config-older",
                               f"node {ld.node}'s database (version {ld.db.version}) is older "
                               f"than {newest.node}'s (version {newest.db.version}); the VM "
                               f"view uses the newest")


def build(ctx: Context) -> list[LoadedDB]:
    """After discovery: read every cluster database found and show it."""
    note_tree_roots(ctx, [])  # guest filesystems opened after the last tree scan
    loaded = load_all(ctx)
    show(ctx, loaded)
    ctx.pve_databases = loaded
    return loaded
