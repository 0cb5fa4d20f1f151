"""The btrfs backend: probe the superblock, open the trees, hand the files to the core.

``open`` reads the superblock copies, the chunk tree, the root tree's root
node and the few root items it needs (top-level subvolume, csum tree,
default subvolume); directories are read when listed.

References: Linux ``fs/btrfs/disk-io.c`` (``open_ctree``: superblock, chunk tree,
root tree, backup roots for ``rescue=usebackuproot``), ``fs/btrfs/super.c``
(default subvolume: the ``default`` dir item of the root tree directory).
"""

from __future__ import annotations

from pvfs.backend import Backend
from pvfs.guestfs import FS_ROLES, FilesystemInfo

from . import structs as S
from .fs import BtrfsFilesystem, parse_dir_items
from .tree import TreeRoot, items
from .volume import (
    BtrfsError, Device, check_superblock, parse_sys_chunk_array, pick_superblock,
    read_superblocks,
)

LAYER = "btrfs"
MAX = S.MAX_KEY


class BtrfsBackend(Backend):
    name = "btrfs"
    roles = FS_ROLES

    def probe(self, volume, ctx) -> float:
        src = volume.source
        try:
            if src.size < S.SUPER_INFO_OFFSET + S.SUPER_INFO_SIZE:
                return 0.0
            raw = src.read(S.SUPER_INFO_OFFSET, S.SUPER_INFO_SIZE)
            if raw[0x40:0x48] == S.BTRFS_MAGIC:
                sb, _why = check_superblock(raw, 0)
                return 100.0 if sb is not None else 50.0
            # primary gone: a good mirror still names the filesystem (a weaker claim, so
            # a newer filesystem written over an old btrfs wins)
            off = S.sb_offset(1)
            if src.size >= off + S.SUPER_INFO_SIZE:
                sb, _why = check_superblock(src.read(off, S.SUPER_INFO_SIZE), 1)
                if sb is not None:
                    return 40.0
        except Exception:
            return 0.0
        return 0.0

    def open(self, volume, ctx):
        fs = open_filesystem(volume, ctx)
        ctx.add_filesystem(volume, fs)


def open_filesystem(volume, ctx) -> BtrfsFilesystem:
    src = volume.source

    reported = set()

    def report(severity, code, message, ranges=(), key=None, outcome=""):
        key = key if key is not None else (code, message)
        if key not in reported:
            reported.add(key)
            ctx.report.add(severity, LAYER, volume.path, code, message, ranges, outcome)

    copies = read_superblocks(src)
    sb = pick_superblock(copies)
    if sb is None:
        why = "; ".join(f"copy {m} at {S.sb_offset(m):#x}: {w}" for m, _s, w in copies)
        raise BtrfsError(f"no valid btrfs superblock ({why})")
    notes = []
    for m, other, why in copies:
        if other is None and m == 0:
            # the copies are rewritten at every commit: one of the newest generation
            # gives everything back (pick_superblock takes the newest valid one)
            report("info", "superblock",
                   f"primary superblock unusable ({why}); using the copy at "
                   f"{sb.offset:#x} (generation {sb.generation})", [(S.sb_offset(0), 4096)],
                   outcome="repaired")
            notes.append(f"superblock copy {sb.mirror} used (primary: {why})")
        elif other is not None and other.fsid != sb.fsid and other.mirror != sb.mirror:
            notes.append(f"superblock copy {m} belongs to another filesystem (stale)")
    unknown = sb.incompat_flags & ~S.INCOMPAT_SUPPORTED
    if unknown:
        names = [S.INCOMPAT_NAMES.get(1 << b, f"bit {b}") for b in range(64) if unknown >> b & 1]
        raise BtrfsError(f"unsupported incompat features: {', '.join(names)}")
    info = FilesystemInfo("btrfs", label=sb.label_text or None, uuid=sb.fsid_uuid,
                          size=sb.total_bytes, used=sb.bytes_used, clean=None, notes=notes)
    dev = Device(src, sb, report=report)
    for ch in parse_sys_chunk_array(sb):
        dev.chunks.add(ch)
    if sb.num_devices > 1:
        info.notes.append(f"member {sb.dev_item.devid} of {sb.num_devices} devices; "
                          f"the others are not read")

    def chunk_damage(lo, hi, err):
        report("error", "chunk-tree", f"chunk tree: {err}; chunks in it are unknown "
               f"(their data reads as EIO)", getattr(err, "ranges", ()))

    chunk_root = TreeRoot(S.CHUNK_TREE_OBJECTID, sb.chunk_root, sb.chunk_root_level,
                          sb.chunk_root_generation)
    dev.load_chunks(items(dev, chunk_root, (0, 0, 0), (MAX, 255, MAX), chunk_damage))
    if sb.num_devices > 1:
        # the missing members named by the device ids the chunk tree's stripes use
        others = sorted({d for ch in dev.chunks.chunks for d, _o in ch.stripes}
                        - {sb.dev_item.devid})
        named = f" (devid {', '.join(map(str, others))})" if others else ""
        report("warning", "multi-device",
               f"device {sb.dev_item.devid} of {sb.num_devices}: the other "
               f"{sb.num_devices - 1} member(s){named} are missing or not supported "
               f"(multi-device btrfs); what lies on this device is shown, the rest reads as EIO")

    striped = [ch for ch in dev.chunks.chunks if ch.copies(dev.devid) is None]
    if striped:
        kinds = ", ".join(sorted({f"{_kind(ch.type)} {ch.profile}" for ch in striped}))
        report("error", "unsupported-profile",  # bytes that cannot be read: lost here
               f"{len(striped)} chunk(s) are striped over several devices ({kinds}), which "
               f"this reader does not assemble: their data reads as EIO, tree blocks in them "
               f"are lost")
    elsewhere = [ch for ch in dev.chunks.chunks if ch.copies(dev.devid) == []]
    if elsewhere:
        gib = sum(ch.length for ch in elsewhere) / (1 << 30)
        report("error", "chunks-on-other-devices",  # no copy among the inputs: lost
               f"{len(elsewhere)} of {len(dev.chunks.chunks)} chunks ({gib:.1f} GiB) lie only on "
               f"other devices: what they hold reads as EIO")
    root_tree = _root_tree(dev, sb, report, info)
    csum_root = None
    fs = BtrfsFilesystem(dev, ctx, volume, root_tree, None, info)
    try:
        cs = fs.subvol(S.CSUM_TREE_OBJECTID)
        csum_root = cs.root
    except BtrfsError as e:
        report("warning", "csum-tree", f"checksum tree unusable ({e}): file data is not "
               f"checked")
    fs.logical.csum_root = csum_root
    try:
        fs.subvol(S.FS_TREE_OBJECTID)
    except BtrfsError as e:
        raise BtrfsError(f"top-level subvolume: {e}") from None
    default = _default_subvol(dev, root_tree)
    if default not in (None, S.FS_TREE_OBJECTID):
        info.notes.append(f"default subvolume is {default}; shown is the top level (id 5) "
                          f"with every subvolume at its place")
    if sb.log_root:
        info.journal = "log tree present, not replayed"
        report("warning", "log-tree-not-replayed",
               f"a log tree (generation {sb.generation + 1}) holds fsync()ed changes made "
               f"after the last commit; it is not replayed, so those files show their state "
               f"at the last commit")
    profiles = sorted({f"{_kind(ch.type)} {ch.profile}" for ch in dev.chunks.chunks})
    info.notes.append(f"checksums {dev.csum.name}; " + ", ".join(profiles))
    return fs


def _kind(t: int) -> str:
    parts = [n for bit, n in ((S.BLOCK_GROUP_DATA, "data"), (S.BLOCK_GROUP_METADATA, "metadata"),
                              (S.BLOCK_GROUP_SYSTEM, "system")) if t & bit]
    return "+".join(parts) or "unknown"


def _root_tree(dev, sb, report, info) -> TreeRoot:
    """The root tree from the superblock, or the newest backup root that reads
    (``rescue=usebackuproot``)."""
    main = TreeRoot(S.ROOT_TREE_OBJECTID, sb.root, sb.root_level, sb.generation)
    try:
        dev.read_node(main.bytenr, main.generation, main.level)
        return main
    except BtrfsError as e:
        first = e
    backups = sorted((b for b in sb.super_roots if b.tree_root and
                      b.tree_root_gen < sb.generation and b.tree_root_level < S.MAX_LEVEL),
                     key=lambda b: -b.tree_root_gen)
    for b in backups:
        cand = TreeRoot(S.ROOT_TREE_OBJECTID, b.tree_root, b.tree_root_level, b.tree_root_gen)
        try:
            dev.read_node(cand.bytenr, cand.generation, cand.level)
        except BtrfsError:
            continue
        report("error", "root-tree-backup",
               f"root tree unreadable ({first}); using the backup root of generation "
               f"{b.tree_root_gen}: changes of the last {sb.generation - b.tree_root_gen} "
               f"commit(s) are not shown", getattr(first, "ranges", ()))
        info.notes.append(f"backup root of generation {b.tree_root_gen} used")
        return cand
    raise BtrfsError(f"root tree unreadable and no backup root reads: {first}")


def _default_subvol(dev, root_tree):
    try:
        for _k, data in items(dev, root_tree, (S.ROOT_TREE_DIR_OBJECTID, S.DIR_ITEM_KEY, 0),
                              (S.ROOT_TREE_DIR_OBJECTID, S.DIR_ITEM_KEY, MAX)):
            for e in parse_dir_items(data):
                if e.name == b"default":
                    return e.loc[0]
    except BtrfsError:
        return None
    return None
