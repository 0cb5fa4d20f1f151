"""Assembling a pool from its members: configs, vdev tree, uberblock choice.

References: OpenZFS module/zfs/spa.c (spa_load: the newest label config, top-level
vdevs by "id", vdev_children), vdev_label.c (vdev_uberblock_load: the best uberblock
over all labels of all devices), uberblock.c, "ZFS On-Disk Specification" 1.3.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import vdev as vdevmod
from .errors import ZfsError
from .label import read_labels
from .pool import Pool

MAX_TOP_VDEVS = 4096


@dataclass
class Member:
    volume: object
    source: object
    config: dict
    labels: object


@dataclass
class Assembly:
    pool: Pool
    uberblocks: list  # every valid uberblock, newest first, one per txg
    notes: list = field(default_factory=list)  # (severity, code, message)
    members: list = field(default_factory=list)


def _redundancy(v) -> int:
    if isinstance(v, (vdevmod.Raidz, vdevmod.Draid)):
        return v.nparity
    if isinstance(v, vdevmod.Mirror):
        return max(0, len(v.children) - 1)
    return 0


def health(tops):
    """Like ``zpool status``: DEGRADED when members are missing but within the vdev's
    redundancy, FAULTED when a top-level vdev lost more than it can rebuild."""
    notes = []
    state = "ONLINE"
    missing = []
    for i, t in enumerate(tops):
        if isinstance(t, vdevmod.Missing):
            state = "FAULTED"
            continue
        # a dRAID child replaced by a distributed spare is missing but not lost
        # (the pool is still DEGRADED, as zpool status says while a spare is in use)
        gone = t.missing_leaves()
        missing += [leaf.path or f"guid {leaf.guid}" for leaf in gone]
        lost = t.lost_members() if isinstance(t, vdevmod.Draid) else len(gone)
        if not gone:
            continue
        if lost > _redundancy(t):
            state = "FAULTED"
            notes.append(("error", "vdev-faulted",
                          f"top-level vdev {i} ({t.kind}) lost {lost} members, more than its "
                          f"redundancy ({_redundancy(t)}): its blocks are unreadable unless a "
                          f"ditto copy lives on another vdev or a column is on a member left"))
        elif state == "ONLINE":
            state = "DEGRADED"
    if state == "DEGRADED":
        # Only the layout is known here: a block is rebuilt from the members left unless
        # one of them is damaged there too, which shows only when the block is read.
        notes.append(("warning", "pool-state",
                      f"pool state DEGRADED: {', '.join(missing)} missing, within "
                      f"redundancy; a block also damaged on a member left cannot be rebuilt "
                      f"(reported lost at its file or zvol when read)"))
    elif state != "ONLINE":
        notes.append(("error", "pool-state", f"pool state {state}"))
    return notes


def assemble(volumes, ctx=None, path="") -> Assembly:
    notes = []
    members = []
    for vol in volumes:
        info = read_labels(vol.source)
        cfg = info.config
        if cfg is None:
            notes.append(("warning", "no-label", f"{vol.path}: no valid label"))
            continue
        for l, why in info.bad_labels:
            notes.append(("warning", "bad-label", f"{vol.path}: label {l}: {why}"))
        members.append(Member(vol, vol.source, cfg, info))
    if not members:
        raise ZfsError("no member has a valid label")
    newest = max(members, key=lambda m: m.config.get("txg", 0) or 0).config
    name = newest.get("name", "pool")
    guid = newest.get("pool_guid", 0)
    nchildren = newest.get("vdev_children", 1)
    if not isinstance(nchildren, int) or not 0 < nchildren <= MAX_TOP_VDEVS:
        nchildren = 1
    leaves = {}
    for m in members:
        lg = m.config.get("guid")
        if lg in leaves:
            # Two images of one disk (two ddrescue runs, a copy and the original): each
            # read tries them in turn and the block checksum decides, like a mirror.
            notes.append(("info", "duplicate-member",
                          f"{m.volume.path}: another image of vdev {lg} (also "
                          f"{leaves[lg][0][1].path}); both are used, the checksum decides"))
            leaves[lg].append((m.source, m.volume))
            continue
        leaves[lg] = [(m.source, m.volume)]
    # Each label holds the config of its own top-level vdev: take the newest per id.
    tops_cfg = {}
    for m in members:
        tree = m.config.get("vdev_tree")
        if not isinstance(tree, dict):
            continue
        tid = tree.get("id", 0)
        if not isinstance(tid, int) or tid < 0 or tid >= MAX_TOP_VDEVS:
            continue
        txg = m.config.get("txg", 0) or 0
        if tid not in tops_cfg or txg > tops_cfg[tid][0]:
            tops_cfg[tid] = (txg, tree)
    nchildren = max(nchildren, max(tops_cfg, default=-1) + 1)
    tops = []
    bnotes = []
    for tid in range(nchildren):
        if tid not in tops_cfg:
            tops.append(vdevmod.Missing(why="no member of this top-level vdev was found"))
            notes.append(("error", "missing-vdev", f"top-level vdev {tid} is missing: no "
                                                   f"label of any of its members was found"))
            continue
        tops.append(vdevmod.build(tops_cfg[tid][1], leaves, notes=bnotes))
    for n in bnotes:
        notes.append(("error", "unsupported-vdev", n))
    for t in tops:
        gone = t.missing_leaves()
        # within the vdev's redundancy a missing member is degraded; beyond it, a loss
        n = t.lost_members() if isinstance(t, vdevmod.Draid) else len(gone)
        beyond = n > _redundancy(t)
        for leaf in gone:
            notes.append(("error" if beyond else "warning", "missing-member",
                          f"member {leaf.path} (guid {leaf.guid}) of {t.kind} vdev is missing"
                          + (f" ({n} of its members are, more than its redundancy of "
                             f"{_redundancy(t)})" if beyond else "")))
        for leaf in vdevmod.leaves_of(t):
            if leaf.state and leaf.source is not None:
                # zpool offline / a faulted or removed disk: OpenZFS stopped writing to
                # it, so what it holds may be older than the pool (the checksum decides)
                notes.append(("info", "member-out-of-service",
                              f"member {leaf.path} (guid {leaf.guid}) is {leaf.state} in the "
                              f"pool config: it may miss later writes (a spare that took "
                              f"its place is read first; its own bytes count only where "
                              f"the checksum matches)"))
    notes.extend(health(tops))
    pool = Pool(name, guid, newest, tops, ctx=ctx, path=path)
    ubs = {}
    for m in members:
        for ub in m.labels.uberblocks:
            cur = ubs.get(ub.txg)
            if cur is None or ub.timestamp > cur.timestamp:
                ubs[ub.txg] = ub
    ordered = sorted(ubs.values(), key=lambda u: (u.txg, u.timestamp), reverse=True)
    if not ordered:
        raise ZfsError(f"pool {name}: no valid uberblock on any member")
    return Assembly(pool, ordered, notes, members)
