"""The ZFS backend: pools from their members, datasets as directories, zvols as volumes.

Tree: ``storage/zfs/<pool>/<dataset path>/`` (file systems; contents from ``zpl``),
zvols as files ``<name>`` and ``<name>@<snap>`` (probed again: partitions land in
``<name>.parts/``), ``vms/<vmid>/`` for vm-/base- zvols, ``cts/<vmid>/rootfs/`` for
subvol- datasets and ``storage/zfs/<pool>/.zfs/txg/<N>/`` for every older usable uberblock.
"""

from __future__ import annotations

import importlib

from pvfs.backend import Backend
from pvfs.errors import PvfsError
from pvfs.nodes import Dir, File
from pvfs.proxmox import parse_volname
from pvfs.proxmox.view import Locator

from . import CLI_OPTIONS, dsl, features, zap
from .assemble import assemble
from .errors import ZfsError
from .label import read_labels
from .objset import DnodeSource, ObjSet
from .pool import EncryptedError

MAX_TXG_VIEWS = 128
MAX_REPLAY_NOTES = 500  # zil-replayed entries per dataset (the rest are counted)

def _zpl():
    try:
        return importlib.import_module("backends.zfs.zpl")
    except ImportError:
        return None


def _crypto():
    try:
        return importlib.import_module("backends.zfs.crypto")
    except ImportError:
        return None


class ZfsBackend(Backend):
    name = "zfs"
    grouped = True
    roles = None
    cli_options = list(CLI_OPTIONS)

    def probe(self, volume, ctx):
        try:
            info = read_labels(volume.source)
        except Exception:
            return 0.0
        cfg = info.config
        if cfg is None or not isinstance(cfg.get("pool_guid"), int):
            return 0.0
        return 100.0

    def member_key(self, volume, ctx):
        cfg = read_labels(volume.source).config
        volume.info["zfs"] = {"pool": cfg.get("name"), "pool_guid": cfg.get("pool_guid"),
                              "vdev_guid": cfg.get("guid"), "txg": cfg.get("txg")}
        return cfg.get("pool_guid")

    def open_group(self, key, volumes, ctx):
        root = ctx.storage("zfs")
        probe_name = read_labels(volumes[0].source).config.get("name", "pool")
        a = assemble(volumes, ctx, path=f"storage/zfs/{probe_name}")
        pool = a.pool
        name = str(pool.name)
        path = f"storage/zfs/{name}"
        if name in root.children():
            path = f"storage/zfs/{name}~{pool.guid:x}"
        pool.path = path
        for sev, code, msg in a.notes:
            ctx.report.add(sev, "zfs", path, code, msg)
        self._features(pool, ctx, path)
        want = ctx.options.get("zfs_txg")
        ubs = a.uberblocks
        if want is not None:
            chosen = [u for u in ubs if u.txg == want]
            if not chosen:
                raise ZfsError(f"pool {name}: no valid uberblock with txg {want} (valid: "
                               f"{', '.join(str(u.txg) for u in ubs[:40])})")
            order = chosen
        else:
            order = ubs
        opened = None
        usable = []
        for ub in ubs:
            pool.quiet = opened is not None  # older txgs: overwritten blocks are expected
            pool.set_reflow(ub)
            try:
                mos = ObjSet(pool, ub.rootbp, f"{name} MOS @txg {ub.txg}")
                usable.append((ub, mos))
            except (PvfsError, ValueError) as e:
                if ub in order and opened is None:
                    ctx.report.add("warning", "zfs", path, "bad-uberblock",
                                   f"uberblock txg {ub.txg}: MOS unreadable ({e}); "
                                   f"trying an older one")
                continue
            if opened is None and ub in order:
                try:
                    notes = []
                    rootds = dsl.walk(mos, notes, name)
                    opened = (ub, mos, rootds, notes)
                except (PvfsError, ValueError) as e:
                    ctx.report.add("warning", "zfs", path, "bad-uberblock",
                                   f"uberblock txg {ub.txg}: datasets unreadable ({e})")
        pool.quiet = False
        if opened is None:
            raise ZfsError(f"pool {name}: no uberblock with a readable MOS")
        ub, mos, rootds, notes = opened
        pool.mos = mos
        pool.set_reflow(ub)
        self._active_features(pool, ctx, path)
        for sev, code, msg in notes:
            ctx.report.add(sev, "zfs", path, code, msg)
        ctx.report.add("info", "zfs", path, "uberblocks",
                       f"pool {name} (guid {pool.guid}) opened at txg {ub.txg}; older ones "
                       f"are in {path}/.zfs/txg/<txg>/ or --zfs-txg; usable txgs: "
                       f"{', '.join(str(u.txg) for u, _ in usable[:64])}"
                       f"{' ...' if len(usable) > 64 else ''}; vdevs: "
                       f"{'; '.join(pool.describe())}")
        builder = _TreeBuilder(pool, ctx, volumes[0], live=True, synced_txg=ub.txg)
        used = path.rsplit("/", 1)[1]
        placed = builder.dataset(rootds, used, root, "storage/zfs")
        # Older uberblocks as read-only views in .zfs/txg/<N>/ of the pool's root (a
        # dot directory, like .zfs/snapshot: tree scans skip it; it loads on demand).
        if placed is not None and len(usable) > 1:
            pool_dir, ppath = placed
            txgdir = pool_dir.subdir(".zfs", mode=0o555).subdir("txg", mode=0o555)
            for oub, _omos in usable[:MAX_TXG_VIEWS]:
                if oub.txg == ub.txg:
                    continue
                vpath = f"{ppath}/.zfs/txg/{oub.txg}"
                vpool = pool.view(vpath)
                txgdir.add(str(oub.txg), Dir(loader=_txg_loader(vpool, oub, vpool.ctx,
                                                                 volumes[0], vpath)))

    def _features(self, pool, ctx, path):
        version = pool.config.get("version")
        if not isinstance(version, int) or not (1 <= version <= 28 or version == 5000):
            ctx.report.add("warning", "zfs", path, "unknown-version",
                           f"pool version {version!r} is not a known ZFS version (1-28, 5000); "
                           f"reading it anyway")
        feats = pool.config.get("features_for_read")
        if not isinstance(feats, dict):
            return
        unsupported = sorted(f for f in feats if features.cannot_read(f))
        if unsupported:
            ctx.report.add("warning", "zfs", path, "unsupported-feature",
                           f"features for read not supported: "
                           f"{', '.join(f'{f} ({features.cannot_read(f)})' for f in unsupported)}"
                           f"; blocks that need them will be unreadable")

    def _active_features(self, pool, ctx, path):
        """The MOS's active features (the label lists only those the MOS needs): named in
        an info entry; pool-wide ones this reader cannot read as warnings (per-dataset
        ones are named at their datasets, _TreeBuilder.dataset)."""
        try:
            active = features.pool_features(pool.mos)
        except (PvfsError, ValueError) as e:
            ctx.report.add("warning", "zfs", path, "features",
                           f"the pool's feature lists cannot be read ({e})")
            return
        pool.active_features = active
        label = set(pool.config.get("features_for_read") or ())
        bad = sorted(f for f in active if features.cannot_read(f) and f not in label
                     and f not in features.PER_DATASET)
        if bad:
            ctx.report.add("warning", "zfs", path, "unsupported-feature",
                           f"active features not supported: "
                           f"{', '.join(f'{f} ({features.cannot_read(f)})' for f in bad)}; "
                           f"the pool is shown with what can be read")
        notes = [f"active features: {', '.join(sorted(active)) or 'none'}"]
        try:
            for vdev, used, saved in features.clone_summary(pool.mos):
                notes.append(f"block cloning: BRT of vdev {vdev}: {used} bytes of cloned "
                             f"blocks, {saved} bytes saved (clones share block pointers "
                             f"and are read as they are)")
            for name, fmt in features.dedup_tables(pool.mos):
                notes.append(f"dedup table {name} ({fmt}): not needed to read")
        except (PvfsError, ValueError) as e:
            notes.append(f"BRT/DDT not listed: {e}")
        ctx.report.add("info", "zfs", path, "features", "; ".join(notes))


def _txg_loader(pool, ub, ctx, parent_vol, path):
    def load(d):
        notes = []
        try:
            mos = ObjSet(pool, ub.rootbp, f"{pool.name} MOS @txg {ub.txg}")
            pool.mos = mos
            rootds = dsl.walk(mos, notes, pool.name)
        except (PvfsError, ValueError) as e:
            # an older txg's view: its blocks may have been freed and reused since
            ctx.report.add("info", "zfs", path, "bad-uberblock",
                           f"(older txg) datasets unreadable: {e}", outcome="note")
            return
        for sev, code, msg in notes:
            ctx.report.add(sev, "zfs", path, code, msg)
        scratch = Dir()
        parent, _, name = path.rpartition("/")
        _TreeBuilder(pool, ctx, parent_vol, live=False).dataset(rootds, name, scratch, parent)
        for node in scratch.children().values():
            if isinstance(node, Dir):
                for n, child in node.children().items():
                    d.add(n, child, report=ctx.report, path_hint=path)
            else:  # a pool whose root dataset is a zvol (never made by zpool create)
                d.add(name, node, report=ctx.report, path_hint=path)
    return load


class _TreeBuilder:
    """Places datasets, snapshots and zvols in the tree."""

    def __init__(self, pool, ctx, parent_vol, live=True, synced_txg=0):
        self.pool = pool
        self.synced_txg = synced_txg  # the uberblock's txg: log records up to it are synced
        self.ctx = ctx
        self.parent_vol = parent_vol
        self.live = live  # live tree: zvols are probed and shown under vms/ and cts/

    def report(self, severity, path, code, msg, outcome=""):
        self.ctx.report.add(severity, "zfs", path, code, msg, outcome=outcome)

    def objset(self, ds):
        if ds.bp is None:
            raise ZfsError(f"{ds.name}: no head dataset")
        os_ = ObjSet(self.pool, ds.bp, ds.name, crypt=self._crypt(ds))
        mos = self.pool.mos  # (a txg view's own MOS)
        os_.dsl_props = lambda: dsl.dataset_props(mos, ds)  # read when the ZPL mounts it
        return os_

    def _crypt(self, ds):
        if not ds.encrypted or ds.crypto_key_obj is None:
            return None
        crypto = _crypto()
        fn = getattr(crypto, "crypt_for", None) if crypto is not None else None
        if fn is None:
            return None
        path = f"{self.pool.path}/{ds.name.split('/', 1)[1]}" if "/" in ds.name else self.pool.path
        try:
            return fn(self.pool, ds, self.ctx.options.get("zfs_key"), self.ctx)
        except PvfsError as e:
            self.report("error", path, "bad-key", f"{ds.name}: {e}")
        except Exception as e:  # a bug in the key code must not hide the rest of the pool
            self.report("error", path, "internal-error", f"{ds.name}: {type(e).__name__}: {e}")
        return None

    def dataset(self, ds, name, parent_dir, parent_path):
        """Place dataset ``ds`` (and its children) as ``name`` in ``parent_dir``."""
        path = f"{parent_path}/{name}"
        self.dataset_features(ds, path)
        try:
            os_ = self.objset(ds)
        except EncryptedError:
            os_ = None
        except (PvfsError, ValueError) as e:
            why = f"{ds.name}: object set unreadable: {e}"
            self.report("error", path, "bad-dataset", why)
            self.lost(ds, None, why, path)
            os_ = None
        if ds.encrypted and (os_ is None or os_.crypt is None):
            kind = "zvol" if os_ is not None and os_.os_type == 3 else "dataset"
            self.report("info", path, "encrypted",
                        f"{ds.name} is encrypted ({kind}); give its key with --zfs-key "
                        f"{ds.name}=... to read it")
            if kind == "zvol":
                return None  # nothing to show without the key (no empty stand-in)
            os_ = None
        replay = None
        if os_ is not None and self.live:
            if os_.has_intent_log:
                replay = self.intent_log(ds, os_, path)
            else:
                self.first_log_block(ds, os_, path)
        if os_ is not None and os_.os_type == 3:
            self.zvol(ds, os_, parent_dir, parent_path, name, replay)
            return None
        child_names = set()
        loader = None
        if os_ is not None and os_.os_type == 2:
            loader = _zpl_loader(self, os_, ds, path, child_names, replay=replay)
        elif os_ is not None:
            self.report("warning", path, "unknown-objset",
                        f"{ds.name}: object set type {os_.os_type} is not a file system or zvol")
        d = Dir(loader=loader, mtime=ds.creation_time or None)
        d.filesystem_root = True  # pvfs/treestorage.py looks for /var/lib/vz and datastores here
        used = parent_dir.add(name, d, report=self.ctx.report, path_hint=parent_path)
        path = f"{parent_path}/{used}"
        for child in ds.children:
            child_names.add(child.short)
            try:
                self.dataset(child, child.short, d, path)
            except Exception as e:  # one broken dataset must not hide its siblings
                self.report("error", f"{path}/{child.short}", "internal-error",
                            f"{child.name}: {type(e).__name__}: {e}")
        if loader is not None:
            self.containers(ds, os_, path, replay)
        return d, path

    def intent_log(self, ds, os_, path):
        """The dataset's intent log (ZIL): records of synchronous writes the pool never
        synced.  Replayed in memory as an import would (zil.py claims them, zilreplay.py
        applies them) unless ``--zfs-zil ignore``; every replayed record is named.
        Returns the ``zilreplay.Replay`` or None (nothing to replay, or not replayed).
        (zil and zilreplay are imported here: most pools have no log to read, and they
        cost ~3 ms of every mount's start-up.)"""
        from . import zil, zilreplay

        try:
            log = zil.read_log(os_, self.synced_txg)
        except (PvfsError, ValueError) as e:
            self.report("warning", path, "intent-log",
                        f"{ds.name}: the intent log (ZIL) cannot be read ({e}); the last "
                        f"synchronous changes before the crash may be missing")
            return None
        if log.problem:
            self.report("warning", path, "zil-damaged",
                        f"{ds.name}: the intent log ends in damage: {log.problem}; records "
                        f"after it are lost (an import stops there too)")
        if not log.records:
            return None
        what = zil.summary(log.records)
        mode = self.ctx.options.get("zfs_zil") or "replay"
        if mode == "ignore" or ds.encrypted:
            why = ("--zfs-zil ignore" if mode == "ignore" else
                   "the log of an encrypted dataset is encrypted: not replayed here")
            self.report("warning", path, "intent-log",
                        f"{ds.name} has intent log (ZIL) records that are not replayed "
                        f"({why}), so the last synchronous changes before the crash are not "
                        f"shown: {what}")
            return None
        try:
            if os_.os_type == 3:
                size = zap.zap_int(os_.dnode(2), "size")
                if size is None:
                    raise ZfsError("zvol property object has no size")
                base = DnodeSource(os_.dnode(1), size, label=ds.name, path=path,
                                   bad=self.ctx.bad("eio"), ctx=self.ctx)
                rep = zilreplay.replay_zvol(os_, log, base, size)
            elif os_.os_type == 2:
                zpl = _zpl()
                rep = zilreplay.replay_zpl(os_, log, zpl.ReplayBase(os_, self.ctx, path))
            else:
                return None
        except (PvfsError, ValueError) as e:
            self.report("warning", path, "intent-log",
                        f"{ds.name}: intent log (ZIL) records cannot be replayed ({e}): {what}")
            return None
        for n, a in enumerate(rep.applied):
            if n == MAX_REPLAY_NOTES:
                self.report("info", path, "zil-replayed",
                            f"{ds.name}: ... and {len(rep.applied) - n} more replayed records")
                break
            r = a.rec
            self.report("info", path, "zil-replayed",
                        f"{ds.name}: replayed {r.name} (object {r.obj}, txg {r.txg}, seq "
                        f"{r.seq}): {r.what()}{f' ({a.note})' if a.note else ''}")
        skipped = (f"; {len(rep.skipped)} skipped (their object was removed later: "
                   f"zil_replay_log_record, TX_OOO)" if rep.skipped else "")
        # the whole log applied, as an import would: the crash lost nothing (repaired)
        whole = rep.failed is None and not log.problem
        self.report("info", path, "intent-log",
                    f"{ds.name}: intent log (ZIL) replayed in memory as an import would: "
                    f"{len(rep.applied)} of {len(log.records)} records applied{skipped} "
                    f"(--zfs-zil ignore shows the dataset as last synced): {what}",
                    outcome="repaired" if whole else "note")
        if rep.failed is not None:
            r, why = rep.failed
            self.report("warning", path, "zil-replay-stopped",
                        f"{ds.name}: intent log record seq {r.seq} (txg {r.txg}, {r.name}) "
                        f"cannot be applied: {why}; the replay stops there as an import's "
                        f"does: {rep.not_applied} later record(s) not applied")
        return rep

    def lost(self, ds, snap, why, path):
        """A Proxmox volume (``vm-100-disk-0``, ``subvol-102-disk-0``) whose object set
        cannot be read: its guest keeps its folder in ``vms/`` / ``cts/`` with a LOST.txt."""
        if not self.live or parse_volname(ds.short) is None:
            return
        store = ds.name.rsplit("/", 1)[0] if "/" in ds.name else ""
        self.ctx.add_proxmox(Locator("zfspool", store, ds.short, snap), lost=why, where=path)

    def first_log_block(self, ds, os_, path):
        """zh_log points at a block that does not verify: normally the next block of a
        log that is empty (preallocated, never written); damage when the block links to
        its successor in the chain, i.e. it was written (zil._looks_written)."""
        bp = os_.zil_log
        if bp.hole or bp.embedded or not bp.dvas:
            return
        from . import zil

        if zil._looks_written(self.pool, bp, bp.cksum[3]):
            self.report("warning", path, "zil-damaged",
                        f"{ds.name}: the first block of the intent log (seq {bp.cksum[3]}) "
                        f"fails its checksum although it links to the next one: the log's "
                        f"records (synchronous writes never synced) are lost")

    def dataset_features(self, ds, path):
        """Per-dataset features this reader cannot read, named at the dataset.  Dataset
        ZAPs are read only when the pool counts such a feature active (the MOS's
        reference counts include every dataset's), so mounting costs nothing more."""
        if not ds.dsobj or self.pool.mos is None:
            return
        if not any(features.cannot_read(f) for f in self.pool.active_features):
            return
        feats = features.dataset_features(self.pool.mos, ds.dsobj)
        bad = [f for f in feats if features.cannot_read(f)]
        if bad:
            self.report("warning", path, "unsupported-feature",
                        f"{ds.name} uses {', '.join(f'{f} ({features.cannot_read(f)})' for f in bad)}"
                        f"; it is shown with what can be read")

    def snapshots_of(self, ds):
        out = []
        for s in ds.snapshots:
            out.append((s.name.split("@", 1)[1], _snap_loader(self, s)))
        return out

    def containers(self, ds, os_, path, replay=None):
        """A container subvolume (``subvol-<vmid>-disk-<n>``) and its snapshots, for the
        Proxmox view (``cts/<vmid>/rootfs``); without ``.zfs`` inside."""
        if not self.live:
            return
        vn = parse_volname(ds.short)
        if vn is None or not vn.is_container:
            return
        store = ds.name.rsplit("/", 1)[0] if "/" in ds.name else ""
        d = Dir(loader=_zpl_loader(self, os_, ds, path, set(), snapshots=False,
                                   replay=replay),
                mtime=ds.creation_time or None)
        self.ctx.add_proxmox(Locator("zfspool", store, ds.short), tree=d, mtime=ds.creation_time,
                             where=path)
        for s in ds.snapshots:
            snap = s.name.split("@", 1)[1]
            try:
                sos = self.objset(s)
            except (PvfsError, ValueError) as e:
                self.report("error", path, "bad-snapshot", f"{s.name}: {e}")
                self.lost(ds, snap, f"{s.name}: object set unreadable: {e}",
                          f"{path}/.zfs/snapshot/{snap}")
                continue
            spath = f"{path}/.zfs/snapshot/{snap}"
            sd = Dir(loader=_zpl_loader(self, sos, s, spath, set(), snapshots=False),
                     mtime=s.creation_time or None)
            self.ctx.add_proxmox(Locator("zfspool", store, ds.short, snap), tree=sd,
                                 mtime=s.creation_time, where=spath)

    def zvol(self, ds, os_, parent_dir, parent_path, name, replay=None):
        vols = [(ds, os_, name)]
        for s in ds.snapshots:
            try:
                vols.append((s, self.objset(s), f"{name}@{s.name.split('@', 1)[1]}"))
            except (PvfsError, ValueError) as e:
                self.report("error", f"{parent_path}/{name}", "bad-snapshot",
                            f"{s.name}: {e}")
                self.lost(ds, s.name.split("@", 1)[1], f"{s.name}: object set unreadable: {e}",
                          f"{parent_path}/{name}@{s.name.split('@', 1)[1]}")
        for d, o, fname in vols:
            try:
                size = zap.zap_int(o.dnode(2), "size")
                if size is None:
                    raise ZfsError(f"{d.name}: zvol property object has no size")
                data = o.dnode(1)
            except (PvfsError, ValueError) as e:
                self.report("error", f"{parent_path}/{fname}", "bad-zvol", f"{d.name}: {e}")
                self.lost(ds, d.name.split("@", 1)[1] if "@" in d.name else None,
                          f"{d.name}: zvol unreadable: {e}", f"{parent_path}/{fname}")
                continue
            fpath = f"{parent_path}/{fname}"
            src = DnodeSource(data, size, label=d.name, path=fpath, bad=self.ctx.bad("eio"),
                              ctx=self.ctx)
            if replay is not None and o is os_:  # the head zvol: its log replayed
                from .zilreplay import zvol_source

                src = zvol_source(replay, d.name, fpath, self.ctx.bad("eio"), self.ctx)
            snap = d.name.split("@", 1)[1] if "@" in d.name else None
            if not self.live:
                parent_dir.add(fname, File(src, mtime=d.creation_time), report=self.ctx.report,
                               path_hint=parent_path)
                continue
            vol = self.ctx.add_volume(src, parent_dir, fname, parent_path, "zvol",
                                      parent=self.parent_vol, children_home="parts",
                                      mtime=d.creation_time)
            vol.info["zfs"] = {"dataset": d.name, "volsize": size}
            store = ds.name.rsplit("/", 1)[0] if "/" in ds.name else ""
            self.ctx.add_proxmox(Locator("zfspool", store, ds.short, snap), vol,
                                 mtime=d.creation_time)


def _snap_loader(builder, s):
    def load():
        return builder.objset(s)
    return load


def _zpl_loader(builder, os_, ds, path, child_names, snapshots=True, replay=None):
    def load(d):
        zpl = _zpl()
        if zpl is None or not hasattr(zpl, "build_tree"):
            builder.report("warning", path, "zpl-unavailable",
                           "the ZPL (file system) reader is not available")
            return
        # Child datasets are already in ``d``: build_tree keeps names that are present,
        # so a child dataset hides its empty mount-point directory, as a mount does.
        try:
            zpl.build_tree(os_, d, builder.ctx, path,
                           snapshots=builder.snapshots_of(ds) if snapshots else None,
                           replay=replay)
        except (PvfsError, ValueError) as e:
            builder.report("error", path, "bad-filesystem", f"{ds.name}: {e}")
        except Exception as e:
            builder.report("error", path, "internal-error",
                           f"{ds.name}: {type(e).__name__}: {e}")
    return load
