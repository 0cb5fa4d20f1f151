"""Walking btrfs B-trees: key ranges, "the last item at or before a key".

Keys are ``(objectid, type, offset)`` tuples, compared as tuples, exactly as
``btrfs_comp_keys``.  An internal node's key pointers say which child holds a
key; the child's first key must equal its pointer's key and its level must be
one less (checked by :meth:`Device.read_node`).  A child that no copy can give
costs only the keys between its pointer and the next one: the walk calls
``damage(lo_key, hi_key, error)`` (``hi_key`` None: up to the end of the tree)
and goes on with the next child.  Every walk keeps a set of the blocks it has
entered, so a hostile tree that points twice at one block cannot loop or blow up.

References: Linux ``fs/btrfs/ctree.c`` (``btrfs_search_slot``, ``btrfs_next_leaf``,
``btrfs_bin_search``), ``fs/btrfs/disk-io.c`` (``btrfs_verify_level_key``).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from .volume import BtrfsError, TreeBlockError

MAX_KEY = (1 << 64) - 1
MAX_BLOCKS_PER_WALK = 4_000_000


@dataclass(frozen=True)
class TreeRoot:
    """Where a tree starts: the root block, its level and generation."""

    tree_id: int
    bytenr: int
    level: int
    generation: int


def items(dev, root: TreeRoot, lo: tuple, hi: tuple, damage=None):
    """Yield ``(key, data)`` for every item with ``lo <= key <= hi``, in key order."""
    seen: set[int] = set()
    yield from _walk(dev, root.bytenr, root.generation, root.level, None, lo, hi, None,
                     damage, seen)


def _visit(dev, bytenr, gen, level, first_key, upper, damage, seen):
    """The checked node at ``bytenr``, or None when it is a second visit (a loop), the walk
    is too long, or the block is unreadable (each reported to ``damage``, or raised when
    there is no ``damage``)."""
    if bytenr in seen or len(seen) >= MAX_BLOCKS_PER_WALK:
        if damage is not None:
            damage(first_key, upper, TreeBlockError(
                f"tree block {bytenr:#x} is referenced twice (a loop) or the walk is too long",
                bytenr))
        return None
    seen.add(bytenr)
    try:
        node = dev.read_node(bytenr, gen, level, first_key)
    except BtrfsError as e:
        if damage is None:
            raise
        damage(first_key, upper, e)
        return None
    return node


def _walk(dev, bytenr, gen, level, first_key, lo, hi, upper, damage, seen):
    node = _visit(dev, bytenr, gen, level, first_key, upper, damage, seen)
    if node is None:
        return
    keys = node.keys
    n = len(keys)
    if node.level == 0:
        for j in range(bisect.bisect_left(keys, lo), n):
            k = keys[j]
            if k > hi:
                return
            yield k, node.item(j)
        return
    for j in range(max(0, bisect.bisect_right(keys, lo) - 1), n):
        k = keys[j]
        if k > hi:
            return
        nxt = keys[j + 1] if j + 1 < n else upper
        if nxt is not None and nxt <= lo:
            continue
        ptr, pgen = node.ptrs[j]
        yield from _walk(dev, ptr, pgen, node.level - 1, k, lo, hi, nxt, damage, seen)


def leaves(dev, root: TreeRoot, damage=None):
    """Yield every leaf of the tree (a checked :class:`Node`), in key order: for whole-tree
    scans that look at a few item types and should not pay for the rest."""
    seen: set[int] = set()
    yield from _leaves(dev, root.bytenr, root.generation, root.level, None, None, damage, seen)


def _leaves(dev, bytenr, gen, level, first_key, upper, damage, seen):
    node = _visit(dev, bytenr, gen, level, first_key, upper, damage, seen)
    if node is None:
        return
    if node.level == 0:
        yield node
        return
    keys = node.keys
    for j, (ptr, pgen) in enumerate(node.ptrs):
        nxt = keys[j + 1] if j + 1 < len(keys) else upper
        yield from _leaves(dev, ptr, pgen, node.level - 1, keys[j], nxt, damage, seen)


def items_of(dev, root: TreeRoot, oids, type_lo: int, type_hi: int, damage=None):
    """Yield ``(key, data)`` of the items of the objects ``oids`` (sorted, unique) whose
    type lies in ``[type_lo, type_hi]``, in key order, entering only the blocks whose
    key range can hold one of them: a directory's inodes in one walk instead of one
    descent each."""
    if not oids:
        return
    seen: set[int] = set()
    yield from _walk_of(dev, root.bytenr, root.generation, root.level, None, list(oids),
                        type_lo, type_hi, None, damage, seen)


def _walk_of(dev, bytenr, gen, level, first_key, oids, tlo, thi, upper, damage, seen):
    node = _visit(dev, bytenr, gen, level, first_key, upper, damage, seen)
    if node is None:
        return
    keys = node.keys
    n = len(keys)
    if node.level == 0:
        i = bisect.bisect_left(oids, keys[0][0]) if n else len(oids)
        for oid in oids[i:]:
            j = bisect.bisect_left(keys, (oid, tlo, 0))
            if j >= n:
                return
            hi = (oid, thi, MAX_KEY)
            while j < n and keys[j] <= hi:
                yield keys[j], node.item(j)
                j += 1
        return
    for j in range(n):
        lo_oid = keys[j][0]
        nxt = keys[j + 1] if j + 1 < n else upper
        i = bisect.bisect_left(oids, lo_oid)
        if i >= len(oids) or (nxt is not None and oids[i] > nxt[0]):
            continue
        # skip a child whose keys all lie before (oids[i], tlo, 0) or after the wanted types
        if nxt is not None and nxt <= (oids[i], tlo, 0):
            continue
        ptr, pgen = node.ptrs[j]
        yield from _walk_of(dev, ptr, pgen, node.level - 1, keys[j], oids, tlo, thi, nxt,
                            damage, seen)


def last_at_or_before(dev, root: TreeRoot, key: tuple):
    """``(key, data)`` of the item with the largest key ``<= key``, or None.

    Raises :class:`BtrfsError` if a block on the way cannot be read."""
    bytenr, gen, level, first = root.bytenr, root.generation, root.level, None
    for _depth in range(9):
        node = dev.read_node(bytenr, gen, level, first)
        j = bisect.bisect_right(node.keys, key) - 1
        if j < 0:
            return None
        if node.level == 0:
            return node.keys[j], node.item(j)
        bytenr, gen = node.ptrs[j]
        level, first = node.level - 1, node.keys[j]
    raise BtrfsError("tree deeper than 8 levels")


def lookup(dev, root: TreeRoot, key: tuple):
    """The data of the item with exactly ``key``, or None."""
    found = last_at_or_before(dev, root, key)
    if found is not None and found[0] == tuple(key):
        return found[1]
    return None
