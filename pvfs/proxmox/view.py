"""The Proxmox view: ``vms/`` and ``cts/``, built once after discovery.

Backends do not build ``vms/`` or ``cts/`` themselves.  They register what
they found with :meth:`pvfs.discover.Context.add_proxmox` and a
:class:`Locator`: where Proxmox would say the volume lives (storage kind,
pool / volume group / directory, volume name, snapshot).  Backups
(vzdump, PBS) name their guest and time and are placed at once
(``<vms|cts>/<vmid>/backups/<time>/``); disks are placed here, after
discovery, when every source of meaning is known:

- the cluster configuration (:mod:`.cluster`: the newest ``config.db``):
  which guest is a VM and which a container, names, OS types, and which
  volume each ``scsi0`` / ``rootfs`` / ``mp0`` ... is, resolved through
  ``storage.cfg``;
- the configs inside backups, when the cluster has none for a guest;
- the volume names, and for a guest without any config, the content (a
  volume that is one bare filesystem is a container's).

Layout::

    vms/<vmid>/disk-<n>.raw, disk-<n>.parts/p<k>, disk-<n>.files/   the disks
    vms/<vmid>/disk-<n>@<storage>.raw       the same disk found in a second storage
    vms/<vmid>/qemu-server.conf             the current config (snapshot sections included)
    vms/<vmid>/by-config/<key>              -> ../disk-<n>.raw (scsi0, efidisk0, unused0 ...)
    vms/<vmid>/snapshots/<snap>/...         the disks at a snapshot, and its by-config/
    vms/by-name/<name>                      -> ../<vmid>
    cts/<vmid>/rootfs/ (or rootfs.raw + rootfs/), pct.conf, by-config/rootfs, mp0 ...
    cts/by-name/<hostname>                  -> ../<vmid>

References: pve-storage ``PVE/Storage/Plugin.pm`` (``parse_volname``,
``parse_config``: ``<type>: <id>`` sections of indented ``key value``),
``PVE/Storage/{ZFSPool,LvmThin,LVM,RBD,Dir}Plugin.pm`` (where each type keeps
an image); qemu-server ``PVE/QemuServer/Drive.pm`` (disk keys: ide0-3,
sata0-5, scsi0-30, virtio0-15, efidisk0, tpmstate0, unusedN); pve-container
``PVE/LXC/Config.pm`` (rootfs, mpN, unusedN); pve-guest-common
``PVE/AbstractConfig.pm`` (``[snapshot]`` sections, ``[PENDING]``).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..nodes import Dir, File, Node, Symlink, sanitize_name
from ..source import BytesSource
from .volname import VolName, parse_volname

if TYPE_CHECKING:
    from ..discover import Context, Volume
    from .cluster import LoadedDB

BACKUP_KINDS = ("vzdump", "pbs")
#: Storage types whose images pvfs can find, and the locator kinds that hold them.
DIR_TYPES = ("dir", "nfs", "cifs", "glusterfs", "cephfs", "btrfs")
_QEMU_DISK = re.compile(r"^(?:(?:ide|sata|scsi|virtio|unused)\d+|efidisk0|tpmstate0)$")
_LXC_DISK = re.compile(r"^(?:rootfs|mp\d+|unused\d+)$")
_CONF = re.compile(r"^nodes/([^/]+)/(qemu-server|lxc)/(\d+)\.conf$")
_STOREID = re.compile(r"^[A-Za-z][A-Za-z0-9\-_.]*$")
#: Proxmox's defaults when no storage.cfg is known (the installer's storages).
DEFAULT_STORAGES = {
    "local": {"type": "dir", "path": "/var/lib/vz"},
    "local-lvm": {"type": "lvmthin", "vgname": "pve", "thinpool": "data"},
    "local-zfs": {"type": "zfspool", "pool": "rpool/data"},
}


@dataclass(frozen=True)
class Locator:
    """Where Proxmox would say a volume lives.

    ``kind``: ``zfspool`` (store = parent dataset, ``rpool/data``), ``lvmthin`` /
    ``lvm`` (store = VG), ``dir`` (store = the storage's path inside its host root,
    ``/var/lib/vz``; volname ``100/vm-100-disk-0.qcow2``), ``file`` (an image
    given by the user; store = its directory), ``rbd`` (store = Ceph pool),
    ``drbd`` (a LINSTOR resource), ``vzdump`` / ``pbs`` (backups: ``vmid``,
    ``guest`` ``qemu``/``lxc``, ``backup`` = the time folder, ``volname`` = the
    file name to show: ``disk-scsi0.raw``, ``qemu-server.conf``, ``rootfs``).
    """

    kind: str
    store: str = ""
    volname: str = ""
    snapshot: str | None = None
    vmid: int | None = None
    guest: str | None = None
    backup: str | None = None


@dataclass
class Item:
    loc: Locator
    volume: object = None  # pvfs.discover.Volume
    tree: Dir | None = None
    node: Node | None = None
    mtime: float | None = None
    vmid: int = 0
    disk: int | None = None
    volkind: str = ""  # vm | base | subvol | basevol
    placed: list = field(default_factory=list)  # tree paths the view gave it
    storage_id: str | None = None
    referenced: bool = False
    where: str | None = None  # tree path of a subvolume's own view (storage/zfs/...)
    lost: str | None = None  # the volume is known by name but nothing of it can be read: why


@dataclass
class DiskRef:
    key: str
    volid: str
    section: str | None  # None: the current config; else the snapshot
    item: Item | None = None
    note: str | None = None  # why it was not resolved


@dataclass
class Guest:
    vmid: int
    guest: str  # qemu | lxc
    name: str = ""
    node: str = ""
    ostype: str = ""
    config_source: str = ""  # "cluster" | "backup <time>" | ""
    config: dict = field(default_factory=dict)
    raw: bytes | None = None
    mtime: float | None = None
    refs: list[DiskRef] = field(default_factory=list)
    disks: list[Item] = field(default_factory=list)
    backups: set = field(default_factory=set)


class ViewState:
    def __init__(self) -> None:
        self.items: list[Item] = []
        self.undo: list = []  # what build() added, removed again if it runs twice
        self.guests: dict[int, Guest] = {}
        self.built = False
        self.have_cluster = False  # a cluster database was read: configs are authoritative


def state(ctx: Context) -> ViewState:
    st = getattr(ctx, "proxmox_view", None)
    if st is None:
        st = ctx.proxmox_view = ViewState()
    return st


def _volname_of(loc: Locator) -> VolName | None:
    base = loc.volname.rsplit("/", 1)[-1]
    if base.endswith(".img"):
        base = base[:-4]
    return parse_volname(base)


# ---------------------------------------------------------------------------
def register(ctx: Context, loc: Locator, volume: Volume | None = None, tree: Dir | None = None,
             node: Node | None = None, mtime: float | None = None,
             where: str | None = None, lost: str | None = None) -> str | None:
    """See :meth:`pvfs.discover.Context.add_proxmox`."""
    st = state(ctx)
    if loc.backup is not None:
        if loc.vmid is None or loc.guest not in ("qemu", "lxc") or not loc.volname:
            return None
        item = Item(loc, volume, tree, node, mtime, vmid=int(loc.vmid))
        base = "vms" if loc.guest == "qemu" else "cts"
        root = ctx.vms_root if loc.guest == "qemu" else ctx.cts_root
        d = root.subdir(str(item.vmid)).subdir("backups").subdir(loc.backup)
        dpath = f"{base}/{item.vmid}/backups/{loc.backup}"
        obj = File(volume.source, mtime=mtime) if volume is not None else (tree or node)
        used = d.add(loc.volname, obj, report=ctx.report, path_hint=dpath)
        path = f"{dpath}/{used}"
        item.placed.append(path)
        if volume is not None:
            from ..discover import Home

            volume.vm_paths.append(path)
            stem = used[:-4] if used.endswith(".raw") else used
            ctx.add_home(volume, Home(d, f"{stem}.parts", f"{dpath}/{stem}.parts"))
            if volume.guestfs_root is not None:
                ctx.show_files_at(volume, path)
        st.items.append(item)
        return path
    vn = _volname_of(loc)
    if vn is None:
        return None
    item = Item(loc, volume, tree, node, mtime, vmid=vn.vmid, disk=vn.disk, volkind=vn.kind,
                where=where, lost=lost)
    st.items.append(item)
    if volume is not None:
        volume.info.setdefault("proxmox", {"vmid": vn.vmid, "disk": vn.disk, "kind": vn.kind,
                                           "snapshot": loc.snapshot, "storage_kind": loc.kind,
                                           "store": loc.store})
    return ""


# ---------------------------------------------------------------------------
# storage.cfg and guest configs

def parse_storage_cfg(data: bytes | None) -> dict[str, dict]:
    """``{storage id: {"type": ..., key: value}}`` (PVE::SectionConfig format)."""
    out: dict[str, dict] = {}
    cur = None
    for raw in (data or b"").decode("utf-8", "replace").splitlines()[:100_000]:
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        if raw[0] not in " \t":
            m = re.match(r"^([a-z][a-z0-9]*):\s*(\S+)\s*$", raw)
            cur = out.setdefault(m[2], {"type": m[1]}) if m else None
        elif cur is not None:
            k, _, v = raw.strip().partition(" ")
            cur[k] = v.strip() if v.strip() else "1"
    return out


def parse_config(data: bytes | None) -> dict[str | None, dict[str, str]]:
    """``{None: current, "<snapshot>": ..., "PENDING": ...}`` of ``key: value`` lines."""
    sections: dict[str | None, dict[str, str]] = {None: {}}
    cur = None
    for line in (data or b"").decode("utf-8", "replace").splitlines()[:100_000]:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^\[([^\]]+)\]$", line)
        if m:
            cur = m[1]
            sections.setdefault(cur, {})
            continue
        k, sep, v = line.partition(":")
        if sep and k.strip():
            sections[cur][k.strip()] = v.strip()
    return sections


def disk_volumes(guest: str, section: dict[str, str]) -> list[tuple[str, str, str | None]]:
    """``[(key, volid, note)]`` of the disks a config section names (CD-ROMs left out)."""
    out = []
    pat = _QEMU_DISK if guest == "qemu" else _LXC_DISK
    for key, value in section.items():
        if not pat.match(key):
            continue
        parts = value.split(",")
        vol = parts[0]
        opts = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
        if "=" in vol:  # file=... / volume=...
            k, _, vol = vol.partition("=")
        if vol in ("none", "cdrom", "") or opts.get("media") == "cdrom":
            continue
        if vol.startswith("/"):
            out.append((key, vol, "a device or path passed through, not a storage volume"))
            continue
        out.append((key, vol, None))
    return out


def expected(storages: dict, volid: str) -> tuple[tuple[str, ...] | None, str | None,
                                                  str | None, str | None, str | None]:
    """``(kinds, store, volname, storage id, note)`` that a volume id names."""
    storeid, sep, volname = volid.partition(":")
    if not sep or not _STOREID.match(storeid) or not volname:
        return None, None, None, None, f"{volid!r} is not a volume id"
    st = storages.get(storeid)
    if st is None:
        return None, None, volname, storeid, f"storage {storeid!r} is not in storage.cfg"
    t = st.get("type")
    if t == "zfspool":
        return ("zfspool",), st.get("pool", ""), volname.rsplit("/", 1)[-1], storeid, None
    if t in ("lvmthin", "lvm"):
        return ("lvmthin", "lvm"), st.get("vgname", ""), volname, storeid, None
    if t in DIR_TYPES:
        path = st.get("path") or f"/mnt/pve/{storeid}"
        return ("dir", "file"), path, volname, storeid, None
    if t == "rbd":
        pool = st.get("pool", "rbd") + (f"/{st['namespace']}" if st.get("namespace") else "")
        return ("rbd",), pool, volname.rsplit("/", 1)[-1], storeid, None
    if t in ("drbd", "linstor"):
        return ("drbd",), "", volname, storeid, None
    return None, None, volname, storeid, (f"storage {storeid!r} has type {t!r}, which pvfs "
                                          f"does not read; not guessed")


def _same_store(a: str, b: str) -> bool:
    return a.strip("/") == b.strip("/")


def _base(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def _plain(name: str) -> str:
    """The volume's name without directory or image extension (``vm-100-disk-0``)."""
    base = _base(name)
    for ext in (".raw", ".qcow2", ".vmdk", ".img"):
        if base.endswith(ext):
            return base[: -len(ext)]
    return base


def _storage_of(storages: dict, loc: Locator) -> str | None:
    for sid, st in storages.items():
        t = st.get("type")
        if loc.kind == "zfspool" and t == "zfspool" and _same_store(st.get("pool", ""), loc.store):
            return sid
        if loc.kind in ("lvmthin", "lvm") and t in ("lvmthin", "lvm") \
                and st.get("vgname") == loc.store and (t == loc.kind or not any(
                    s.get("type") == loc.kind and s.get("vgname") == loc.store
                    for s in storages.values())):
            return sid
        if loc.kind == "dir" and t in DIR_TYPES and loc.store and _same_store(
                st.get("path") or f"/mnt/pve/{sid}", loc.store):
            return sid
        if loc.kind == "rbd" and t == "rbd" and st.get("pool", "rbd") + (
                f"/{st['namespace']}" if st.get("namespace") else "") == loc.store:
            return sid
        if loc.kind == "drbd" and t in ("drbd", "linstor"):
            return sid
    return None


def _label(item: Item) -> str:
    if item.storage_id:
        return item.storage_id
    store = item.loc.store.strip("/")
    if store:
        return sanitize_name(store.rsplit("/", 1)[-1] if item.loc.kind in ("file", "dir")
                             else store.replace("/", "-"))
    return item.loc.kind


# ---------------------------------------------------------------------------
def _match(items: list[Item], kinds: Sequence[str], store: str | None, volname: str,
           snapshot: str | None) -> Item | None:
    base = _base(volname)
    cands = [i for i in items if i.loc.kind in kinds and _base(i.loc.volname) == base
             and i.loc.snapshot == snapshot and i.loc.backup is None]
    if store is not None:
        exact = [i for i in cands if i.loc.store and _same_store(i.loc.store, store)]
        if exact:
            return exact[0]
    loose = [i for i in cands if not i.loc.store or i.loc.kind == "file"]
    if loose:
        return loose[0]
    if not store:
        return cands[0] if cands else None
    return None


#: Filesystems no Proxmox container volume holds (pct formats ext4; a restored or
#: hand-made one may be another Linux filesystem): a bare NTFS or FAT disk is a VM's.
NOT_CT_FILESYSTEMS = (None, "swap", "ntfs", "vfat", "fat", "fat12", "fat16", "fat32", "exfat",
                      "iso9660")


def _is_bare_fs(vol: Volume | None) -> bool:
    """A volume that is one (Linux) filesystem, no partition table: a container's."""
    if vol is None or vol.filesystem in NOT_CT_FILESYSTEMS:
        return False
    return not (vol.claimed_by is not None and vol.guestfs is None)


def _configs(ctx: Context, loaded: list[LoadedDB], st: ViewState) -> dict[int, Guest]:
    guests: dict[int, Guest] = {}
    if loaded:
        newest = loaded[0]
        for p, e in sorted(newest.db.paths().items()):
            m = _CONF.match(p)
            if not m or e.type != 8:
                continue
            vmid = int(m[3])
            g = Guest(vmid, "qemu" if m[2] == "qemu-server" else "lxc", node=m[1],
                      config_source="cluster", raw=e.data or b"", mtime=e.mtime)
            if vmid in guests:
                ctx.report.add("warning", "pve", f"{newest.tree_path}/etc-pve/{p}",
                               "config-duplicate", f"VMID {vmid} has a config on node "
                               f"{guests[vmid].node} and on {m[1]}; the first is used")
                continue
            guests[vmid] = g
    # Guests without a cluster config: the newest config found in a backup.
    for it in sorted((i for i in st.items if i.loc.backup is not None),
                     key=lambda i: i.loc.backup or "", reverse=True):
        if it.loc.volname not in ("qemu-server.conf", "pct.conf") or it.vmid in guests:
            continue
        node = it.node
        if not isinstance(node, File) or node.size > (1 << 20):
            continue
        try:
            data = node.source.read(0, node.size)
        except Exception:
            continue
        guests[it.vmid] = Guest(it.vmid, it.loc.guest, config_source=f"backup {it.loc.backup}",
                                raw=data, mtime=node.mtime)
    for g in guests.values():
        g.config = parse_config(g.raw)
        cur = g.config[None]
        g.name = cur.get("name" if g.guest == "qemu" else "hostname", "")
        g.ostype = cur.get("ostype", "")
    return guests


def build(ctx: Context) -> None:
    """Read the cluster databases, then place every registered disk (once; a second
    call first removes what the first placed, so late filesystems are seen)."""
    from . import cluster

    st = state(ctx)
    if st.built:
        _undo(ctx, st)
    else:
        cluster.build(ctx)
    st.built = True
    loaded = getattr(ctx, "pve_databases", [])
    storages = {}
    if loaded:
        storages = parse_storage_cfg(loaded[0].db.read("storage.cfg"))
    known_storages = dict(storages or DEFAULT_STORAGES)
    guests = _configs(ctx, loaded, st)
    disks = [i for i in st.items if i.loc.backup is None]
    for it in disks:
        it.storage_id = _storage_of(storages, it.loc)  # names from a real storage.cfg only
        it.referenced = False
    # Resolve every configured volume.
    for g in guests.values():
        for section, values in g.config.items():
            if section == "PENDING" or (section or "").startswith("special:"):
                continue
            for key, volid, note in disk_volumes(g.guest, values):
                ref = DiskRef(key, volid, section, note=note)
                g.refs.append(ref)
                if note:
                    continue
                kinds, store, volname, _sid, why = expected(known_storages, volid)
                if kinds is None and volname:  # unknown storage: by name only, if unique
                    ref.note = why
                    continue
                if kinds is None:
                    ref.note = why
                    continue
                ref.item = _match(disks, kinds, store, volname, section)
                if ref.item is not None:
                    ref.item.referenced = True
    # Which guests are containers.
    byid: dict[int, list[Item]] = {}
    for it in disks:
        byid.setdefault(it.vmid, []).append(it)
    backups: dict[int, set] = {}
    for it in st.items:
        if it.loc.backup is not None:
            backups.setdefault((it.vmid, it.loc.guest), set()).add((it.loc.kind, it.loc.backup))
    for vmid, items in byid.items():
        if vmid in guests:
            continue
        kinds = {b[1] for b in backups if b[0] == vmid}
        live = [i for i in items if i.loc.snapshot is None]
        subvols = any(i.volkind in ("subvol", "basevol") or i.tree is not None for i in items)
        bare = bool(live) and all(_is_bare_fs(i.volume) for i in live if i.tree is None)
        if len(kinds) == 1:
            guest = kinds.pop()
        else:
            guest = "lxc" if subvols or bare else "qemu"
        guests[vmid] = Guest(vmid, guest)
    for (vmid, guest), bs in backups.items():
        g = guests.get(vmid)
        if g is None:
            g = guests[vmid] = Guest(vmid, guest)
        if g.guest == guest:
            g.backups |= bs
    st.guests = guests
    st.have_cluster = bool(loaded)
    for g in guests.values():
        g.disks = byid.get(g.vmid, [])
        _place_guest(ctx, st, g)
    _by_name(ctx, st, guests)
    _report(ctx, guests, bool(loaded))


def _add(ctx: Context, st: ViewState, d: Dir, name: str, node: Node, dpath: str) -> str:
    used = d.add(name, node, report=ctx.report, path_hint=dpath)
    st.undo.append(("entry", d, used))
    return used


def _mirror_damage(ctx: Context, src_path: str, new_path: str) -> None:
    """The entries a backend made for a volume at ``src_path`` also name ``new_path``,
    where the view shows the same bytes (a backend reports before the view exists)."""
    for e in [e for e in ctx.report.for_path(src_path) if e.severity != "info"]:
        ctx.report.add(e.severity, e.layer, new_path, e.code, e.message, e.ranges, e.outcome)


def _append(st: ViewState, lst: list, value: Any) -> None:
    lst.append(value)
    st.undo.append(("list", lst, value))


def _undo(ctx: Context, st: ViewState) -> None:
    for what, a, b in reversed(st.undo):
        if what == "entry":
            a.children().pop(b, None)
        elif what == "list" and b in a:
            a.remove(b)
        elif what == "home" and b in a.homes:
            a.homes.remove(b)
    st.undo.clear()
    for it in st.items:
        if it.loc.backup is None:
            it.placed.clear()
    for root in (ctx.vms_root, ctx.cts_root):
        _prune(root)
    from ..nodes import resolve

    for vol in ctx.volumes:  # paths that the first build (or a filesystem laid on it) used
        vol.vm_paths[:] = [p for p in vol.vm_paths if resolve(ctx.root, p) is not None]
        vol.files_paths[:] = [p for p in vol.files_paths if resolve(ctx.root, p) is not None]


def _prune(root: Dir) -> None:
    """Remove the directories the view made that are empty again (never a backup's)."""
    for name, vd in list(root.children().items()):
        if not isinstance(vd, Dir) or not (name.isdigit() or name == "by-name"):
            continue
        _prune_guest_dir(vd)
        snaps = vd.children().get("snapshots")
        if isinstance(snaps, Dir):
            for sname, sd in list(snaps.children().items()):
                if isinstance(sd, Dir):
                    _prune_guest_dir(sd)
                    if not sd.children():
                        snaps.children().pop(sname, None)
            if not snaps.children():
                vd.children().pop("snapshots", None)
        if not vd.children():
            root.children().pop(name, None)


def _prune_guest_dir(d: Dir) -> None:
    for name, child in list(d.children().items()):
        view_dir = name == "by-config" or name.endswith((".parts", ".files"))
        if view_dir and type(child) is Dir and child.loaded and not child.children():
            d.children().pop(name, None)


def _place_guest(ctx: Context, st: ViewState, g: Guest) -> None:
    base = "vms" if g.guest == "qemu" else "cts"
    root = (ctx.vms_root if g.guest == "qemu" else ctx.cts_root).subdir(str(g.vmid))
    gpath = f"{base}/{g.vmid}"
    if g.config_source == "cluster":
        conf = "qemu-server.conf" if g.guest == "qemu" else "pct.conf"
        _add(ctx, st, root, conf, File(BytesSource(g.raw or b"", label=conf), mtime=g.mtime),
             gpath)
    # The container's rootfs disk: the one its config names, else the lowest number.
    rootfs_disk = None
    if g.guest == "lxc":
        for ref in g.refs:
            if ref.key == "rootfs" and ref.section is None and ref.item is not None:
                rootfs_disk = ref.item.disk
        if rootfs_disk is None:
            nums = sorted(i.disk for i in g.disks if i.loc.snapshot is None)
            rootfs_disk = nums[0] if nums else None
    _place_lost(ctx, st, g, root, gpath, rootfs_disk)
    groups: dict[tuple, list[Item]] = {}
    for it in g.disks:
        if it.lost is not None:
            continue
        groups.setdefault((it.loc.snapshot, it.disk), []).append(it)
    for (snap, n), items in sorted(groups.items(), key=lambda kv: (kv[0][0] or "", kv[0][1])):
        d, dpath = root, gpath
        if snap is not None:
            d = root.subdir("snapshots").subdir(snap)
            dpath = f"{gpath}/snapshots/{snap}"
        items = sorted(items, key=lambda i: not i.referenced)  # the configured one first
        for k, it in enumerate(items):
            suffix = "" if k == 0 else f"@{_label(it)}"
            if g.guest == "qemu":
                _place_vm_disk(ctx, st, it, d, dpath, f"disk-{n}{suffix}")
            else:
                stem = "rootfs" if n == rootfs_disk else f"disk-{n}"
                _place_ct_disk(ctx, st, it, d, dpath, stem + suffix)
            if k and it.placed:
                first = items[0].placed[0] if items[0].placed else "?"
                ctx.report.add("info", "pve", it.placed[0], "name-clash",
                               f"{_base(it.loc.volname)} is also in {_label(items[0])} "
                               f"({first}); this copy, from {_label(it)}, is shown as "
                               f"{it.placed[0].rsplit('/', 1)[1]!r}")
    # by-config links
    for ref in g.refs:
        if ref.item is None or not ref.item.placed:
            continue
        d, dpath = root, gpath
        if ref.section is not None:
            d = root.subdir("snapshots").subdir(ref.section)
            dpath = f"{gpath}/snapshots/{ref.section}"
        bc = d.subdir("by-config")
        target = posixpath.relpath(ref.item.placed[0], f"{dpath}/by-config")
        _add(ctx, st, bc, ref.key, Symlink(target), f"{dpath}/by-config")


def _place_lost(ctx: Context, st: ViewState, g: Guest, root: Dir, gpath: str,
                rootfs_disk: int | None) -> None:
    """``LOST.txt`` in the guest's folder: the volumes it had that no input can give
    back (a FAULTED pool's zvol, an RBD image whose objects are all gone, an LV on a
    missing PV), each with its name, where it would be and why; one ``lost`` entry
    each, so the guest is listed as lost instead of vanishing."""
    lost = sorted((i for i in g.disks if i.lost is not None),
                  key=lambda i: (i.loc.snapshot or "", i.disk or 0))
    if not lost:
        return
    what = f"{'VM' if g.guest == 'qemu' else 'CT'} {g.vmid}"
    lines = [f"{what}: volumes that are known by name but cannot be read (pvfs).",
             "Their bytes are not in this tree; the reasons are below and in report.json.", ""]
    for it in lost:
        if g.guest == "qemu":
            stem = f"disk-{it.disk}.raw"
        else:
            stem = "rootfs" if it.disk == rootfs_disk else f"disk-{it.disk}"
        at = f"snapshots/{it.loc.snapshot}/{stem}" if it.loc.snapshot else stem
        name = _base(it.loc.volname) + (f"@{it.loc.snapshot}" if it.loc.snapshot else "")
        lines += [f"{at}: {name} on {_label(it)}: LOST", f"    {it.lost}"]
        if it.where:
            lines.append(f"    its storage path: {it.where}")
        lines.append("")
        ctx.report.add("error", "pve", f"{gpath}/LOST.txt", "volume-lost",
                       f"{at} ({name} on {_label(it)}) is lost: {it.lost}")
    text = "\n".join(lines)
    _add(ctx, st, root, "LOST.txt", File(BytesSource(text.encode(), label="LOST.txt")), gpath)


def _place_vm_disk(ctx: Context, st: ViewState, it: Item, d: Dir, dpath: str,
                   stem: str) -> None:
    from ..discover import Home

    if it.volume is None:
        node = it.tree or it.node
        if node is not None:
            used = _add(ctx, st, d, f"{stem}.files", node, dpath)
            it.placed.append(f"{dpath}/{used}")
        return
    vol = it.volume
    used = _add(ctx, st, d, f"{stem}.raw", File(vol.source, mtime=it.mtime if it.mtime is not None
                                                else vol.mtime), dpath)
    path = f"{dpath}/{used}"
    it.placed.append(path)
    _append(st, vol.vm_paths, path)
    _mirror_damage(ctx, vol.path, path)
    ustem = used[:-4] if used.endswith(".raw") else used
    home = Home(d, f"{ustem}.parts", f"{dpath}/{ustem}.parts")
    before = {id(c): len(c.vm_paths) for _n, c in vol.children}
    ctx.add_home(vol, home)
    st.undo.append(("home", vol, home))
    for _n, child in vol.children:
        lvs = [v for v in ctx.volumes if v.parent is child and v.role == "lv"
               and v.guestfs_root is not None]  # a VG inside the VM disk: its LVs' files
        for p in child.vm_paths[before.get(id(child), 0):]:
            st.undo.append(("list", child.vm_paths, p))
            _mirror_damage(ctx, child.path, p)
            if child.guestfs_root is not None:
                fp = ctx.show_files_at(child, p)
                if fp:
                    _append(st, child.files_paths, fp)
            for lv in lvs:
                fp = ctx.guest_lv_place(lv, lv.guestfs_root, p)
                if fp:
                    _append(st, lv.files_paths, fp)
    st.undo.append(("entry", d, f"{ustem}.parts"))
    st.undo.append(("entry", d, f"{ustem}.files"))
    if vol.guestfs_root is not None:
        fp = ctx.show_files_at(vol, path)
        if fp:
            _append(st, vol.files_paths, fp)


def _place_ct_disk(ctx: Context, st: ViewState, it: Item, d: Dir, dpath: str,
                   stem: str) -> None:
    if it.volume is None:
        node = it.tree or it.node
        if node is not None:
            name = stem if stem.startswith("rootfs") else f"{stem}.files"
            used = _add(ctx, st, d, name, node, dpath)
            it.placed.append(f"{dpath}/{used}")
        return
    vol = it.volume
    used = _add(ctx, st, d, f"{stem}.raw", File(vol.source, mtime=it.mtime if it.mtime is not None
                                                else vol.mtime), dpath)
    path = f"{dpath}/{used}"
    it.placed.append(path)
    _append(st, vol.vm_paths, path)
    _mirror_damage(ctx, vol.path, path)
    if vol.guestfs_root is not None:
        name = stem if stem.startswith("rootfs") else f"{stem}.files"
        fused = _add(ctx, st, d, name, vol.guestfs_root, dpath)
        _append(st, vol.files_paths, f"{dpath}/{fused}")


def _by_name(ctx: Context, st: ViewState, guests: dict[int, Guest]) -> None:
    for g in sorted(guests.values(), key=lambda g: g.vmid):
        if not g.name:
            continue
        root = ctx.vms_root if g.guest == "qemu" else ctx.cts_root
        base = "vms" if g.guest == "qemu" else "cts"
        if str(g.vmid) not in root.children():
            continue
        _add(ctx, st, root.subdir("by-name"), g.name, Symlink(f"../{g.vmid}"), f"{base}/by-name")


def _report(ctx: Context, guests: dict[int, Guest], have_cluster: bool) -> None:
    for g in guests.values():
        base = "vms" if g.guest == "qemu" else "cts"
        conf = f"{base}/{g.vmid}/" + ("qemu-server.conf" if g.guest == "qemu" else "pct.conf")
        what = f"{'VM' if g.guest == 'qemu' else 'CT'} {g.vmid}" + (f" ({g.name})" if g.name else "")
        if g.config_source != "cluster":
            continue  # a backup's config names the disks the backup itself holds
        for ref in g.refs:
            at = f" at snapshot {ref.section}" if ref.section else ""
            if ref.item is not None:
                continue
            if ref.note and "passed through" in ref.note:
                ctx.report.add("info", "pve", conf, "config-passthrough",
                               f"{what} {ref.key}{at}: {ref.volid}: {ref.note}")
            elif ref.note:
                ctx.report.add("warning", "pve", conf, "config-disk-unresolved",
                               f"{what} {ref.key}{at}: {ref.volid}: {ref.note}")
            else:
                base = _plain(ref.volid.partition(":")[2])
                alike = [p for it in g.disks if _plain(it.loc.volname) == base
                         and it.loc.snapshot == ref.section for p in it.placed[:1]]
                hint = (f" in that storage (a volume of that name is at {', '.join(alike)})"
                        if alike else "")
                ctx.report.add("warning", "pve", conf, "config-disk-missing",
                               f"{what} {ref.key}{at}: {ref.volid} is in the config but no "
                               f"input holds it{hint}")
    if not have_cluster:
        return
    for g in guests.values():
        live_refd = {(it.loc.kind, it.loc.store, it.loc.volname) for it in g.disks
                     if it.referenced and it.loc.snapshot is None}
        for it in g.disks:
            if it.referenced or not it.placed:
                continue
            name = _base(it.loc.volname) + (f"@{it.loc.snapshot}" if it.loc.snapshot else "")
            if it.loc.snapshot is not None:
                if (it.loc.kind, it.loc.store, it.loc.volname) in live_refd:
                    ctx.report.add("info", "pve", it.placed[0], "snapshot-not-in-config",
                                   f"{name} on {_label(it)}: the config has no snapshot "
                                   f"section {it.loc.snapshot!r} (taken outside Proxmox?)")
                continue  # the live volume's entry says it for an unreferenced one
            if g.config_source == "cluster":
                why = (f"no config of {'VM' if g.guest == 'qemu' else 'CT'} {g.vmid} references "
                       f"it (a leftover, or a disk detached without unused<N>)")
            else:
                why = (f"the cluster has no config for VMID {g.vmid} (a deleted guest: this may "
                       f"be the only copy)")
            ctx.report.add("info", "pve", it.placed[0], "disk-not-in-config",
                           f"{name} on {_label(it)}: {why}")


# ---------------------------------------------------------------------------
# The table (README.txt, pvfs scan, report.json)

def table(ctx: Context) -> list[dict]:
    """One row per guest: who it is, its status (:mod:`.status`: OK / REPAIRED / DEGRADED /
    PARTIAL / LOST, why, files and bytes lost), its disks, snapshots and backups."""
    return [row for row, _units in table_units(ctx)]


def table_units(ctx: Context) -> list[tuple[dict, list]]:
    """:func:`table`'s rows, each with the :class:`.status.Unit` objects it was judged
    from (report.html draws their volumes)."""
    from .status import guest_summary, judge, unit_doc, units_of

    st = getattr(ctx, "proxmox_view", None)
    if st is None:
        return []
    backups: dict[tuple[int, str], list[Item]] = {}
    for it in st.items:
        if it.loc.backup is not None and it.placed:
            backups.setdefault((it.vmid, it.loc.guest or ""), []).append(it)
    guests = sorted(st.guests.values(), key=lambda g: (g.guest != "qemu", g.vmid))
    per_guest = [(g, *units_of(ctx, g, backups.get((g.vmid, g.guest), []))) for g in guests]
    judge(ctx, [u for _g, units, _k in per_guest for u in units])
    rows = []
    for g, units, by_key in per_guest:
        disks = []
        seen = set()
        for ref in g.refs:
            if ref.section is not None:
                continue
            u = by_key.get(id(ref))
            if ref.item is not None:
                seen.add(id(ref.item))
                found = "lost" if ref.item.lost is not None else "found"
            else:
                found = ("passthrough" if ref.note and "passed through" in ref.note
                         else "unresolved" if ref.note
                         else "missing" if g.config_source == "cluster"
                         else "in backups only")  # a backup's config names its own disks
            d = {"key": ref.key, "volid": ref.volid, "found": found, "in_config": True,
                 "path": ref.item.placed[0] if ref.item is not None and ref.item.placed
                 else None}
            d.update(unit_doc(u) if u is not None else {"status": None})
            disks.append(d)
        snapshots = []
        for it in g.disks:
            if id(it) in seen or id(it) not in by_key:
                continue
            u = by_key[id(it)]
            path = it.placed[0] if it.placed else None
            if it.loc.snapshot is not None:
                snapshots.append({"snapshot": it.loc.snapshot, "path": path, **unit_doc(u)})
                continue
            vid = _base(it.loc.volname)
            disks.append({"key": None, "volid": f"{it.storage_id}:{vid}" if it.storage_id
                          else vid, "found": "lost" if it.lost is not None else "found",
                          "in_config": False if g.config_source or st.have_cluster else None,
                          "path": path, **unit_doc(u)})
        bstat = [{"backup": u.label.split(" ", 1)[1], "path": u.path, **unit_doc(u)}
                 for u in units if u.kind == "backup"]
        rows.append(({"vmid": g.vmid, "id": str(g.vmid),
                     "kind": "vm" if g.guest == "qemu" else "ct",
                     "type": "VM" if g.guest == "qemu" else "CT",
                     "name": g.name, "node": g.node, "ostype": g.ostype,
                     "config": g.config_source or None, **guest_summary(units),
                     "disks": disks, "snapshots": snapshots,
                     "backups": len(g.backups), "backup_status": bstat}, units))
    return rows


def origins(ctx: Context) -> list[tuple[str, str]]:
    """``(view path, source path)`` of the container subvolumes the view placed (volumes
    name their source in ``Volume.vm_paths``)."""
    st = getattr(ctx, "proxmox_view", None)
    if st is None:
        return []
    return [(p, it.where) for it in st.items if it.volume is None and it.where
            for p in it.placed]


def guest_ids(root: Dir) -> list[str]:
    """The VMIDs under ``vms/`` or ``cts/`` (not ``by-name``)."""
    return sorted((n for n in root.children() if n.isdigit()), key=int)


def _disk_word(d: dict) -> str:
    if d["found"] != "found":
        return d["found"]
    word = d["status"] or "-"
    return word + (", not in config" if d["in_config"] is False else "")


def table_text(ctx: Context, rows: list[dict] | None = None) -> list[str]:
    """The per-guest table: status first (with why under a guest that is not OK)."""
    from .status import printable, row_word

    rows = table(ctx) if rows is None else rows
    if not rows:
        return []
    out = [f"  {'VMID':>6}  {'type':4}  {'name':16}  {'status':28}  {'node':8}  {'OS':6}  "
           f"{'backups':>7}  disks"]
    for r in rows:
        disks = printable(", ".join(f"{d['key'] or d['volid']} {_disk_word(d)}"
                                    for d in r["disks"])) or "-"
        word = row_word(r)
        out.append(f"  {r['vmid']:>6}  {r['type']:4}  {printable(r['name']) or '-':16.16}  {word:28}  "
                   f"{r['node'] or '-':8.8}  {r['ostype'] or '-':6.6}  {r['backups']:>7}  "
                   f"{disks}")
        if r["why"]:
            out.append(f"  {'':6}  why: {printable(r['why'])}")
    return out


def details_text(rows: list[dict]) -> list[str]:
    """Per guest that is not OK: its first damage lines and damaged files (bounded)."""
    from .status import MAX_FILES, MAX_LINES, printable, row_word

    out = []
    for r in rows:
        if r["status"] == "OK":
            continue
        name = f" ({printable(r['name'])})" if r["name"] else ""
        out.append(f"  {r['type']} {r['vmid']}{name}: "
                   f"{row_word(r)}")
        for line in r["damage"][:MAX_LINES]:
            out.append(f"    {printable(line)}")
        if r["damage_count"] > MAX_LINES:
            out.append(f"    ... and {r['damage_count'] - MAX_LINES} more (report.json has all)")
        names = r["damaged_files"]
        if names:
            out.append("    damaged files:")
            out += [f"      {printable(n)}" for n in names[:MAX_FILES]]
            more = r["damaged_files_count"] - min(len(names), MAX_FILES)
            if more > 0:
                out.append(f"      ... and {more} more")
    return out
