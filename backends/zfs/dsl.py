"""DSL: the dataset hierarchy in the MOS (directories, datasets, snapshots, clones).

References: OpenZFS include/sys/dsl_dir.h (dsl_dir_phys_t: dd_head_dataset_obj,
dd_child_dir_zapobj, dd_origin_obj), dsl_dataset.h (dsl_dataset_phys_t: ds_bp,
ds_snapnames_zapobj, ds_prev_snap_obj), module/zfs/dsl_dir.c (hidden "$MOS", "$FREE",
"$ORIGIN" children), dsl_crypt.c (DD_FIELD_CRYPTO_KEY_OBJ in the dsl_dir ZAP),
zvol.c (object 1 = data, object 2 = the "size" ZAP), "ZFS On-Disk Specification" ch. 5;
module/zfs/dsl_prop.c (dsl_prop_get_ds, dsl_prop_get_dd: a property's value, inherited from
the parent directories), module/zcommon/zfs_prop.c (defaults), include/sys/zfs_ioctl.h and
include/sys/fs/zfs.h (ZFS_ACLTYPE_*, ZFS_XATTR_*).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pvfs.errors import PvfsError

from . import zap
from .blkptr import BlkPtr
from .errors import ZfsError
from .structs import DMU_OT_DSL_DATASET, DMU_OT_DSL_DIR, parse

MAX_DATASETS = 100_000
MAX_DEPTH = 64
ZVOL_OBJ = 1
ZVOL_ZAP_OBJ = 2


@dataclass
class Dataset:
    name: str  # "rpool/data/vm-100-disk-0" or "...@snap"
    dsobj: int
    dirobj: int
    bp: BlkPtr
    creation_txg: int
    creation_time: int
    guid: int
    snapshots: list = field(default_factory=list)  # [Dataset] oldest first
    children: list = field(default_factory=list)  # child Datasets (heads)
    origin: str | None = None
    encrypted: bool = False
    crypto_key_obj: int | None = None
    props_obj: int = 0  # ds_props_obj: a snapshot's own property ZAP (0: none)

    @property
    def short(self):
        return self.name.rsplit("/", 1)[-1]


def _bonus(mos, obj, struct_name, bonustype):
    dn = mos.dnode(obj)
    if dn.bonustype != bonustype:
        raise ZfsError(f"MOS object {obj}: bonus type {dn.bonustype}, expected {bonustype}")
    return dn, parse(struct_name, dn.bonus.ljust(512, b"\0"), dn.little, f"MOS object {obj}")


def _dataset(mos, dsobj, name, notes):
    dn, ds = _bonus(mos, dsobj, "dsl_dataset_phys", DMU_OT_DSL_DATASET)
    bp = BlkPtr(ds.ds_bp, dn.little)
    return Dataset(name, dsobj, ds.ds_dir_obj, bp, ds.ds_creation_txg, ds.ds_creation_time,
                   ds.ds_guid, props_obj=ds.ds_props_obj), ds


def walk(mos, notes: list, pool_name: str = "pool") -> Dataset:
    """The root dataset with its children and snapshots (bounded, loop-safe)."""
    objdir = mos.dnode(1)
    root_dir = zap.zap_int(objdir, "root_dataset")
    if root_dir is None:
        raise ZfsError("MOS object directory has no root_dataset")
    seen = set()
    count = [0]

    def visit(dirobj, name, depth):
        if dirobj in seen or depth > MAX_DEPTH:
            notes.append(("error", "dsl-loop", f"{name}: DSL directory {dirobj} loops"))
            return None
        seen.add(dirobj)
        count[0] += 1
        if count[0] > MAX_DATASETS:
            raise ZfsError("more than 100000 datasets: refusing to go on")
        ddn, dd = _bonus(mos, dirobj, "dsl_dir_phys", DMU_OT_DSL_DIR)
        ds = None
        if dd.dd_head_dataset_obj:
            try:
                ds, dsp = _dataset(mos, dd.dd_head_dataset_obj, name, notes)
            except (ZfsError, PvfsError) as e:
                notes.append(("error", "bad-dataset", f"{name}: {e}"))
        if ds is None:
            ds = Dataset(name, 0, dirobj, None, 0, 0, 0)
            dsp = None
        # encryption: "com.datto:crypto_key_obj" (DD_FIELD_CRYPTO_KEY_OBJ) in the
        # dsl_dir's own ZAP (crypto.key_object_of)
        if ddn.maxblkid >= 0 and not ddn.blkptrs[0].hole:
            try:
                k = _key_object_of(mos, dirobj)
                if k:
                    ds.encrypted, ds.crypto_key_obj = True, k
            except (ZfsError, PvfsError):
                pass
        if ds.bp is not None and ds.bp.encrypted:
            ds.encrypted = True
        if dd.dd_origin_obj:
            try:
                _, odsp = _bonus(mos, dd.dd_origin_obj, "dsl_dataset_phys", DMU_OT_DSL_DATASET)
                ds.origin = f"dsobj {dd.dd_origin_obj}"
            except (ZfsError, PvfsError):
                pass
        if dsp is not None and dsp.ds_snapnames_zapobj:
            try:
                snaps = zap.zap_entries(mos.dnode(dsp.ds_snapnames_zapobj))
            except (ZfsError, PvfsError) as e:
                notes.append(("error", "bad-snapshots", f"{name}: snapshot list: {e}"))
                snaps = {}
            for sname, val in list(snaps.items())[:MAX_DATASETS]:
                if not isinstance(val, list) or not val:
                    continue
                try:
                    sds, _ = _dataset(mos, val[0], f"{name}@{sname}", notes)
                    sds.encrypted = ds.encrypted
                    sds.crypto_key_obj = ds.crypto_key_obj
                    ds.snapshots.append(sds)
                except (ZfsError, PvfsError) as e:
                    notes.append(("error", "bad-snapshot", f"{name}@{sname}: {e}"))
            ds.snapshots.sort(key=lambda s: (s.creation_txg, s.name))
        if dd.dd_child_dir_zapobj:
            try:
                kids = zap.zap_entries(mos.dnode(dd.dd_child_dir_zapobj))
            except (ZfsError, PvfsError) as e:
                notes.append(("error", "bad-children", f"{name}: child datasets: {e}"))
                kids = {}
            for cname in sorted(kids):
                val = kids[cname]
                if cname.startswith("$") or not isinstance(val, list) or not val:
                    continue
                try:
                    child = visit(val[0], f"{name}/{cname}", depth + 1)
                except (ZfsError, PvfsError) as e:
                    notes.append(("error", "bad-dataset", f"{name}/{cname}: {e}"))
                    continue
                if child is not None:
                    ds.children.append(child)
        return ds

    return visit(root_dir, pool_name, 0)


def _key_object_of(mos, dirobj):
    try:
        from . import crypto
    except ImportError:
        return None
    return crypto.key_object_of(mos, dirobj)


def iter_datasets(ds):
    yield ds
    for c in ds.children:
        yield from iter_datasets(c)


# -- properties ------------------------------------------------------------------------
#: The properties the ZPL reads at mount (zfsvfs_init, zfs_register_callbacks) that change
#: what a mount answers, with their Linux defaults (zfs_prop.c: acltype off on Linux,
#: xattr sa) and their known index values (dsl_prop_known_index, for "$iuv" entries).
ZFS_ACLTYPE_OFF, ZFS_ACLTYPE_POSIX, ZFS_ACLTYPE_NFSV4 = 0, 1, 2
ZFS_XATTR_OFF, ZFS_XATTR_DIR, ZFS_XATTR_SA = 0, 1, 2
ZPL_PROPS = {"acltype": (ZFS_ACLTYPE_OFF, {0, 1, 2}), "xattr": (ZFS_XATTR_SA, {0, 1, 2})}


def dataset_props(mos, ds: Dataset, names=tuple(ZPL_PROPS)) -> dict[str, int]:
    """The values of the inheritable index properties ``names`` for dataset or snapshot
    ``ds``, as ``dsl_prop_get_ds`` finds them: a snapshot's own ZAP (local, then
    ``$recvd`` unless ``$inherit``), then each DSL directory from the dataset's up to the
    root: ``$iuv`` (a known value), the local value, ``$recvd`` unless ``$inherit``; the
    default when none is set.  Raises on an unreadable directory or ZAP."""
    snapshot = "@" in ds.name
    out: dict[str, int] = {}
    todo = [n for n in names if n in ZPL_PROPS]
    if snapshot and ds.props_obj:
        props = zap.zap_entries(mos.dnode(ds.props_obj))
        for n in list(todo):
            v = _set_value(props, n)
            if v is not None:
                out[n] = v
                todo.remove(n)
    dirobj, seen = ds.dirobj, set()
    while todo and dirobj and dirobj not in seen and len(seen) <= MAX_DEPTH:
        seen.add(dirobj)
        _, dd = _bonus(mos, dirobj, "dsl_dir_phys", DMU_OT_DSL_DIR)
        props = zap.zap_entries(mos.dnode(dd.dd_props_zapobj)) if dd.dd_props_zapobj else {}
        for n in list(todo):
            v = _first_int(props.get(f"{n}$iuv"))
            if v is not None and v not in ZPL_PROPS[n][1]:
                v = None
            if v is None:
                v = _set_value(props, n)
            if v is not None:
                out[n] = v
                todo.remove(n)
        dirobj = dd.dd_parent_obj
    for n in todo:
        out[n] = ZPL_PROPS[n][0]
    return out


def _first_int(value):
    if isinstance(value, list) and value and isinstance(value[0], int):
        return value[0]
    return None


def _set_value(props: dict, name: str):
    """A property's value set in one properties ZAP: the local value, else the received
    one (``$recvd``) unless ``zfs inherit -S`` was asked (``$inherit``); None when
    neither is there (dsl_prop_get_dd)."""
    v = _first_int(props.get(name))
    if v is None and f"{name}$inherit" not in props:
        v = _first_int(props.get(f"{name}$recvd"))
    return v
