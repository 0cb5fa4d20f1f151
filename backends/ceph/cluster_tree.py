"""Opening a group of OSDs: stores, pools, RBD images and the tree nodes.

See the package docstring (``backends/ceph/__init__.py``) for the tree
layout; rbd.py for how objects, replicas, snapshots and missing objects are
resolved.
"""

from __future__ import annotations

import os
import types

from pvfs.errors import UnreadableError
from pvfs.nodes import Dir, GeneratedFile
from pvfs.proxmox.view import Locator
from pvfs.source import BAD_EIO

from .errors import CephError
from .keys import CEPH_NOSNAP
from .label import probe_label
from .osd import OsdStore
from .rbd import Cluster, RbdError

LAYER = "ceph"


def _mon_dirs(backend, ctx):
    opt = ctx.options.get("ceph_mon") or []
    dirs = [opt] if isinstance(opt, (str, bytes, os.PathLike)) else list(opt)
    dirs += ctx.state(backend).mon_dirs
    return dirs


def _aux_volumes(backend, ctx):
    """block.db / block.wal volumes, wherever their group is (see ``AUX_KEY``)."""
    from . import AUX_KEY

    out = []
    for gkey, (_b, members) in list(ctx.groups.items()):  # (name, key[, timeline])
        if gkey[0] == backend.name and gkey[1] == AUX_KEY:
            out.extend(members)
    return out


def open_aux(backend, volumes, ctx):
    """The db/wal group: report the devices whose OSD's main device was not given (the
    clusters, opened before or after this group, pair the others by osd uuid)."""
    from . import AUX_KEY

    mains = set()
    for gkey, (_b, members) in list(ctx.groups.items()):  # (name, key[, timeline])
        if gkey[0] != backend.name or gkey[1] == AUX_KEY:
            continue
        for m in members:
            try:
                lab = probe_label(m.source.read(0, 4096))
            except UnreadableError:
                lab = None
            if lab is not None:
                mains.add(lab.osd_uuid)
    for v in volumes:
        lab = probe_label(v.source.read(0, 4096))
        if lab is None or lab.osd_uuid not in mains:
            ctx.report.add("warning", LAYER, v.path, "unused-bluefs-device",
                           f"BlueFS {lab.description if lab else 'db/wal'} device of OSD "
                           f"{lab.osd_uuid if lab else '?'}: its main block device was not given")


def _open_stores(volumes, ctx, backend=None):
    from .kv import open_osd

    mains, aux = [], {}
    if backend is not None:
        volumes = list(volumes) + _aux_volumes(backend, ctx)
    for v in volumes:
        try:
            lab = probe_label(v.source.read(0, 4096))
        except UnreadableError:
            lab = None
        if lab is None:
            # an OSD that cannot be used is like a missing one: the replicas decide
            ctx.report.add("warning", LAYER, v.path, "bad-label",
                           "BlueStore label unreadable; its objects are read from the other OSDs' copies (what only it held is reported lost)")
            continue
        desc = (lab.description or "").lower()
        if "db" in desc or "wal" in desc:
            aux.setdefault(lab.osd_uuid, {})["wal" if "wal" in desc else "db"] = v
        else:
            mains.append((v, lab))
    stores = []
    names = set()
    for v, lab in mains:
        extra = aux.get(lab.osd_uuid, {})
        try:
            osd = open_osd(v.source,
                           db_source=extra["db"].source if "db" in extra else None,
                           wal_source=extra["wal"].source if "wal" in extra else None)
        except (CephError, UnreadableError) as e:
            ctx.report.add("warning", LAYER, v.path, "osd-open-failed",
                           f"cannot open the OSD: {e}; its objects are read from the other OSDs' copies (what only it held is reported lost)")
            continue
        for entry in osd.damage:
            if len(entry) == 3:
                sev, code, msg = entry
            else:
                sev, (code, msg) = "warning", entry[-2:]
            ctx.report.add(sev if sev in ("info", "warning", "error") else "warning",
                           LAYER, v.path, code, msg)
        whoami = lab.whoami
        name = f"osd.{whoami}" if whoami is not None else f"osd-{lab.osd_uuid}"
        base, n = name, 2
        while name in names:
            name = f"{base}~{n}"
            n += 1
        names.add(name)

        def rep(sev, code, msg, ranges=(), outcome="", _p=v.path):
            ctx.report.add(sev, LAYER, _p, code, msg, ranges, outcome)

        # The object index is kept between runs (pvfs/index.py), keyed by this device
        # and by what it was built from: the label, BlueFS's files and RocksDB's state.
        ix = ctx.index(LAYER, "objects", v.source, meta=_osd_fingerprint(osd),
                       version=OsdStore.INDEX_VERSION, path=v.path)
        try:
            st = OsdStore.indexed(osd, name, ix, report=rep, progress=ctx.note_progress)
        except (CephError, UnreadableError) as e:
            ctx.report.add("warning", LAYER, v.path, "index-failed",
                           f"object index: {e}; its objects are read from the other "
                           f"OSDs' copies (what only it held is reported lost)")
            continue
        st.volume = v
        stores.append(st)
    return stores


def _osd_fingerprint(osd) -> bytes:
    """What an OSD's object index is derived from: its label, BlueFS's file table and
    RocksDB's manifest, sequence and tables (``Osd.info``), and the damage met opening it."""
    import json

    try:
        summary = json.dumps(osd.info(), sort_keys=True, default=str).encode()
    except (TypeError, ValueError, AttributeError) as e:
        summary = repr(e).encode()
    return osd.source.read(0, 4096) + summary


def _load_pools(backend, cluster, ctx):
    """Pools (and the OSDs' states) from the monitor store, else from the OSDs' own
    copies of the OSDMap; returns the map (:class:`OsdMapInfo`) or None."""
    for d in _mon_dirs(backend, ctx):
        from .kv import open_kv_dir

        db = os.path.join(d, "store.db") if os.path.isdir(os.path.join(d, "store.db")) else d
        kv = None
        try:
            kv = open_kv_dir(db)
            m = cluster.load_osdmap_from_mon(kv)
            _report_kv_damage(ctx, d, kv)
            return m
        except (CephError, UnreadableError, OSError) as e:
            # the cause first (an SST that cannot be read), then its consequence
            causes = _report_kv_damage(ctx, d, kv)
            why = f" ({'; '.join(causes[:3])})" if causes else ""
            ctx.report.add("warning", LAYER, d, "mon-store-unreadable",
                           f"monitor store not usable for pool names: {e}{why}")
    m = cluster.load_osdmap_from_osds()
    if m is None:
        ctx.report.add("warning", LAYER, "storage/ceph", "no-osdmap",
                       "no OSDMap found: pools are named by id, and objects of placement "
                       "groups no given OSD holds cannot be told from unwritten ones")
    return m


def _report_missing_osds(cluster, osdmap, report):
    """The OSDs the OSDMap lists that are not among the inputs, each named: ``degraded``
    while every placement group of every pool still has a copy on a given OSD (size >= 2
    keeps the others), and one ``lost`` entry naming the placement groups that have none
    (their objects are gone with the missing OSDs; the images say which of their bytes)."""
    if osdmap is None or not osdmap.osds:
        return
    given = set()
    for st in cluster.stores:
        name = str(getattr(st, "name", ""))
        if name.startswith("osd.") and name[4:].isdigit():
            given.add(int(name[4:]))
    missing = sorted(set(osdmap.osds) - given)
    if not missing:
        return
    where = f"osdmap epoch {osdmap.epoch}"
    orphan = {}  # pool -> PG seeds no given OSD holds
    for pid, info in sorted(cluster.pools.items()):
        if not info.pg_num or info.pg_num > (1 << 20):
            continue
        held = cluster.held_pgs(pid)
        gone = [s for s in range(info.pg_num) if s not in held]
        if gone:
            orphan[pid] = gone
    for osd in missing:
        exists, up, is_in = osdmap.osds[osd]
        state = f"{'up' if up else 'down'} and {'in' if is_in else 'out'}"
        cover = ("every placement group still has a copy on a given OSD" if not orphan
                 else "placement groups with no copy on a given OSD are reported as lost")
        report("warning", "storage/ceph", "osd-missing",
               f"osd.{osd} ({state} at {where}) is not among the inputs; {cover}")
    if orphan:
        n = sum(len(v) for v in orphan.values())
        shown = "; ".join(
            f"pool {cluster.pool_name(p)}: "
            + ", ".join(f"{p}.{s:x}" for s in seeds[:16])
            + (f" (+{len(seeds) - 16} more)" if len(seeds) > 16 else "")
            for p, seeds in orphan.items())
        report("error", "storage/ceph", "pgs-lost",
               f"{n} placement groups have no copy on the given OSDs (the missing ones: "
               f"{', '.join(f'osd.{o}' for o in missing)}): any objects they held are lost; "
               f"{shown}")


def _report_kv_damage(ctx, path, kv):
    """The damage a monitor store's RocksDB met (``KV.damage``), each as its own entry;
    returns the messages of the errors among them."""
    causes = []
    for entry in getattr(kv, "damage", None) or ():
        sev, code, msg = entry if len(entry) == 3 else ("warning", *entry[-2:])
        sev = sev if sev in ("info", "warning", "error") else "warning"
        ctx.report.add(sev, LAYER, path, code, f"monitor store: {msg}")
        if sev == "error":
            causes.append(msg)
    return causes


def open_cluster(backend, key, volumes, ctx):
    stores = _open_stores(volumes, ctx, backend)
    if not stores:
        raise CephError(f"cluster {key}: no OSD could be opened")
    show_cluster(backend, key, stores, volumes[0], ctx)


def open_filestore_cluster(backend, key, members, ctx):
    """FileStore OSDs (``[(data dir node, tree path, volume)]``, one cluster fsid)."""
    from .filestore import FileStoreOsd

    stores, names = [], set()
    for node, path, _vol in members:
        def rep(sev, code, msg, ranges=(), outcome="", _p=path):
            ctx.report.add(sev, LAYER, _p, code, msg, ranges, outcome)

        st = FileStoreOsd(node, "osd", path, report=rep)
        name = f"osd.{st.whoami}" if st.whoami is not None else f"osd-{st.osd.label.osd_uuid}"
        base, n = name, 2
        while name in names:
            name = f"{base}~{n}"
            n += 1
        names.add(name)
        st.name = name
        try:
            st.build_index()
        except (CephError, UnreadableError) as e:
            rep("warning", "index-failed", f"FileStore object index: {e}; its objects are read from the other OSDs' copies (what only it held is reported lost)")
            continue
        js = st.journal_state()
        if js is not None and js[1] is not None:
            done, why = st.replay_journal()
            if why is None:
                rep("info", "filestore-journal-replayed",
                    f"{name}: journal entries {done[0]}..{done[1]} (above commit_op_seq "
                    f"{js[0]}) were not applied to the filesystem; replayed in memory",
                    outcome="repaired")
            else:
                st.journal_pending = js[1]
                rep("warning", "filestore-journal-unapplied",
                    f"{name}: its FileStore journal holds transactions not applied to the "
                    f"filesystem (commit_op_seq {js[0]}, journal entries {js[1][0]}..{js[1][1]}); "
                    f"replay stopped ({why}; entries {done[0] if done else '-'}.."
                    f"{done[1] if done else '-'} applied in memory): objects they changed may "
                    "be older here than on other OSDs (the newest object_info version among "
                    "the given OSDs wins)")
        st.volume = types.SimpleNamespace(path=path)
        stores.append(st)
    if not stores:
        raise CephError(f"cluster {key}: no FileStore OSD could be opened")
    show_cluster(backend, key, stores, members[0][2], ctx)


def show_cluster(backend, key, stores, parent, ctx):
    """Pools, RBD images and the expert view of one cluster's opened stores."""
    def report(sev, path, code, msg, ranges=(), outcome=""):
        ctx.report.add(sev, LAYER, path, code, msg, ranges, outcome)

    cluster = Cluster(stores, report, bad=ctx.bad(BAD_EIO))
    osdmap = _load_pools(backend, cluster, ctx)
    _report_missing_osds(cluster, osdmap, report)
    root = ctx.storage("ceph")

    ec = {p for p, info in cluster.pools.items() if info.erasure}
    for st in stores:
        ec |= st.ec_pools
    for p in sorted(ec):
        lay = cluster.ec_layout(p)
        if lay is None:
            lay_problem = "its erasure code profile is unknown (no OSDMap)"
        else:
            lay_problem = lay.problem
        if lay_problem:
            report("warning", f"storage/ceph/{cluster.pool_name(p)}", "erasure-coded-pool",
                   f"pool {cluster.pool_name(p)} is erasure-coded and not decoded: "
                   f"{lay_problem} (its shards are only listed under .osd/)")
        else:
            report("info", f"storage/ceph/{cluster.pool_name(p)}", "erasure-coded-pool",
                   f"pool {cluster.pool_name(p)} is erasure-coded ({lay.plugin} {lay.technique} "
                   f"k={lay.k} m={lay.m}, stripe unit {lay.stripe_unit}): objects are "
                   "read from their shards" + ("" if lay.can_rebuild else
                                                 "; a lost data shard cannot be rebuilt"))

    shown = []
    for pool in cluster.pool_ids():
        for ns in cluster.namespaces(pool):
            _add_pool_images(cluster, ctx, root, pool, ns, parent, ec, shown)

    _add_osd_view(cluster, root)
    root.add("cluster.txt",
             GeneratedFile(lambda: _cluster_text(key, cluster, shown)), report=ctx.report,
             path_hint="storage/ceph")


def _object_meta(st, key, oid):
    """``<object>.meta.json`` of the expert view: onode, object_info, SnapSet, attrs, omap."""
    import json

    out = {"osd": st.name, "pool": oid.pool, "namespace": oid.nspace.decode("utf-8", "replace"),
           "name": oid.name.decode("utf-8", "replace"), "hash": oid.hash,
           "snap": "head" if oid.snap == CEPH_NOSNAP else oid.snap}
    try:
        on = st.onode(key)
        out["onode"] = {"nid": on.nid, "size": on.size, "flags": on.flags,
                        "extent_map_shards": [list(x) for x in on.shards]}
        out["attrs"] = {k: v.hex() for k, v in sorted(on.attrs.items())}
        oi = st.object_info(key)
        if oi is not None:
            out["object_info"] = {"version": oi.version_str(), "user_version": oi.user_version,
                                  "size": oi.size, "flags": oi.flags, "whiteout": oi.whiteout,
                                  "mtime": list(oi.mtime)}
        ss = st.snapset(key)
        if ss is not None:
            out["snapset"] = {"seq": ss.seq, "clones": ss.clones,
                              "clone_size": {str(k): v for k, v in ss.clone_size.items()},
                              "clone_overlap": {str(k): v for k, v in ss.clone_overlap.items()},
                              "clone_snaps": {str(k): v for k, v in ss.clone_snaps.items()}}
        om = st.omap(key, oid)
        if om:
            out["omap"] = {k.decode("utf-8", "backslashreplace"): v.hex() for k, v in sorted(om.items())}
    except (CephError, UnreadableError) as e:
        out["error"] = str(e)
    return (json.dumps(out, indent=1) + "\n").encode()


def _cluster_text(key, cluster, shown):
    lines = [f"Ceph cluster {key}", ""]
    lines.append("OSDs:")
    for st in cluster.stores:
        lab = st.osd.label
        lines.append(f"  {st.name}: uuid {lab.osd_uuid}, {st.count} objects, "
                     f"device {getattr(st, 'volume', None) and st.volume.path}")
    lines.append("")
    src = cluster.pool_source or "no OSDMap (pools named by id)"
    lines.append(f"pools from {src}:" if cluster.pool_source else f"pools: {src}")
    for pid in cluster.pool_ids():
        info = cluster.pools.get(pid)
        if info is None:
            lines.append(f"  {pid}: (not in the OSDMap)")
            continue
        kind = "erasure" if info.erasure else "replicated"
        if info.erasure and info.ec_profile:
            pr = info.ec_profile
            kind += (f" profile {info.erasure_code_profile} ({pr.get('plugin', '?')} "
                     f"{pr.get('technique', '?')} k={pr.get('k', '?')} m={pr.get('m', '?')}) "
                     f"stripe_width={info.stripe_width}")
        lines.append(f"  {pid}: {info.name} {kind} size={info.size} pg_num={info.pg_num}")
    lines.append("")
    lines.append("RBD images:")
    for img in shown:
        snaps = ", ".join(f"{s.name} (id {s.id})" for s in img.snaps) or "-"
        ns = img.nspace.decode("utf-8", "replace") + "/" if img.nspace else ""
        lines.append(f"  {cluster.pool_name(img.pool)}/{ns}{img.name}: id {img.id or '-'} "
                     f"format {img.format} size {img.size} object size {img.object_size} "
                     f"prefix {img.object_prefix} features {','.join(img.feature_names()) or '-'} "
                     f"snapshots {snaps}")
    return ("\n".join(lines) + "\n").encode()


def _add_pool_images(cluster, ctx, root, pool, ns, parent, ec, shown):
    """The images of one pool (and RBD namespace): ``storage/ceph/<pool>[/<ns>]/``."""
    pname = cluster.pool_name(pool)
    ppath = f"storage/ceph/{pname}"
    nsname = ns.decode("utf-8", "replace")
    if ns:
        ppath = f"{ppath}/{nsname}"
    try:
        images, v1 = cluster.list_images(pool, ns)
    except (CephError, UnreadableError) as e:
        cluster.report("error", ppath, "rbd-directory", str(e))
        return
    if not images and not v1 and not cluster.list_trash(pool, ns):
        return
    pdir = root.subdir(pname)
    if ns:
        pdir = pdir.subdir(nsname)
    opened = []
    store = pname + (f"/{nsname}" if ns else "")  # the Proxmox rbd storage's pool
    for name, iid in sorted(images.items()):
        try:
            opened.append(cluster.open_image_v2(pool, name, iid, ns))
        except (CephError, UnreadableError) as e:
            cluster.report("error", f"{ppath}/{name}", "rbd-header", f"image {name}: {e}")
            ctx.add_proxmox(Locator("rbd", store, name), lost=f"RBD image {store}/{name}: {e}")
    if not ns:
        for name in v1:
            try:
                opened.append(cluster.open_image_v1(pool, name))
            except (CephError, UnreadableError) as e:
                cluster.report("error", f"{ppath}/{name}", "rbd-header", f"image {name}: {e}")
                ctx.add_proxmox(Locator("rbd", store, name),
                                lost=f"RBD image {store}/{name}: {e}")
    for img in opened:
        if _add_image(cluster, ctx, img, pdir, ppath, parent, ec):
            shown.append(img)
    # images in the RBD trash (deleted, not yet purged): recoverable, not in the VM view
    for name, iid in sorted(cluster.list_trash(pool, ns).items()):
        try:
            img = cluster.open_image_v2(pool, name, iid, ns)
        except (CephError, UnreadableError) as e:
            cluster.report("error", f"{ppath}/.trash/{name}", "rbd-header", f"trashed image {name}: {e}")
            continue
        if _add_image(cluster, ctx, img, pdir.subdir(".trash"), f"{ppath}/.trash", parent, ec,
                      proxmox=False):
            shown.append(img)


def _add_image(cluster, ctx, img, pdir, ppath, parent, ec, proxmox=True):
    data_pool = img.data_pool if img.data_pool is not None else img.pool
    lay = cluster.ec_layout(data_pool) if data_pool in ec else None
    if data_pool in ec and (lay is None or lay.problem):
        why = lay.problem if lay is not None else "its erasure code profile is unknown (no OSDMap)"
        msg = (f"image {img.name} keeps its data in erasure-coded pool "
               f"{cluster.pool_name(data_pool)}, which is not decoded: {why}")
        cluster.report("error", f"{ppath}/{img.name}", "erasure-coded-data", msg)
        if proxmox:
            pool = cluster.pool_name(img.pool)
            if img.nspace:
                pool = f"{pool}/{img.nspace.decode('utf-8', 'replace')}"
            ctx.add_proxmox(Locator("rbd", pool, img.name), lost=msg)
        return False
    info = {"ceph": {"pool": cluster.pool_name(img.pool), "pool_id": img.pool, "image": img.name,
                     "namespace": img.nspace.decode("utf-8", "replace"),
                     "id": img.id, "format": img.format, "size": img.size,
                     "object_size": img.object_size, "object_prefix": img.object_prefix,
                     "features": img.feature_names(), "stripe_unit": img.stripe_unit,
                     "stripe_count": img.stripe_count,
                     "snapshots": [{"id": s.id, "name": s.name, "size": s.size} for s in img.snaps]}}
    src = cluster.image_source(img, None, f"{ppath}/{img.name}")
    vol = ctx.add_volume(src, pdir, img.name, ppath, role="rbd", parent=parent,
                         children_home="parts")
    vol.info.update(info)
    pool = cluster.pool_name(img.pool)  # the Proxmox rbd storage's pool (/namespace)
    if img.nspace:
        pool = f"{pool}/{img.nspace.decode('utf-8', 'replace')}"
    if proxmox:
        ctx.add_proxmox(Locator("rbd", pool, img.name), vol)
    for snap in img.snaps:
        fname = f"{img.name}@{snap.name}"
        ssrc = cluster.image_source(img, snap, f"{ppath}/{fname}")
        svol = ctx.add_volume(ssrc, pdir, fname, ppath, role="rbd", parent=parent,
                              children_home="parts")
        svol.info.update(info)
        svol.info["ceph"] = dict(info["ceph"], snapshot=snap.name, snap_id=snap.id)
        if proxmox:
            ctx.add_proxmox(Locator("rbd", pool, img.name, snap.name), svol)
    return True


def _add_osd_view(cluster, root):
    """``storage/ceph/.osd/<osd>/<pool>/<object>[@snap]``: each pool directory takes its
    entries from the OSD's object index (:class:`osdview.OsdSpace`), keeping no node per
    object."""
    from .osdview import OsdSpace

    top = root.subdir(".osd")
    for st in cluster.stores:
        def load_osd(d, st=st):
            space = OsdSpace(st, f"storage/ceph/.osd/{st.name}", cluster.pool_name,
                             _object_meta)
            for pool in sorted(st.pools()):
                pname = "meta" if pool == -1 else cluster.pool_name(pool)
                pd = Dir()
                pd.use_space(space, space.dir_key(pool))
                d.add(pname, pd)

        top.add(st.name, Dir(loader=load_osd))


__all__ = ["open_cluster", "RbdError"]
