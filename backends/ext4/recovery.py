"""The ext4 backend's recovery steps: backup superblocks and journal replay.

Two hooks the backend's ``open`` calls before the reader (see README.md, "The
seam"):

``load_superblock(volume, ctx) -> (Superblock, notes)``
    The primary superblock, or when its magic/checksum/geometry is bad the
    first good backup superblock (sparse_super groups 1, 3, 5, 7, 9, 25, 27
    ... at each block size 1k/2k/4k/64k), reported as "repaired from backup
    superblock in group N".
``journal_overlay(volume, sb, ctx) -> (meta, data, journal_text)``
    With ``needs_recovery`` (and ``--guest-journal replay``, the default) the
    journal is replayed in memory (:mod:`.jbd2`) and the sources the reader
    reads through are the replay overlay; otherwise the volume's own source.

References:
- Linux ``fs/ext4/super.c`` (``ext4_load_journal``, ``ext4_get_journal_inode``,
  ``ext4_get_dev_journal``: external journals), ``fs/ext4/balloc.c``
  (``ext4_bg_has_super``).
- e2fsprogs ``e2fsck/journal.c`` (``e2fsck_get_journal``: the journal inode,
  then its ``s_jnl_blocks`` backup), ``e2fsck/unix.c`` / ``lib/ext2fs/openfs.c``
  (``ext2fs_open2`` with ``superblock``/``block_size``: how e2fsck -b finds a
  backup, and that the group descriptors following it are used).
"""

from __future__ import annotations

import stat
import struct

from pvfs.errors import PvfsError, UnreadableError

from . import jbd2
from .structs import COMPAT_HAS_JOURNAL, SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE
from .superblock import Ext4Error, Superblock, read_superblock

LAYER = "ext4"

JOURNAL_REPLAY = "replay"
JOURNAL_IGNORE = "ignore"

EXT4_JOURNAL_INO = 8
_INODE_SIZE_HIGH = 0x6C
_INODE_FLAGS = 0x20
_INODE_BLOCK = 0x28


# -- backup superblocks ---------------------------------------------------------------------
#: Block sizes tried for a lost primary (1 KiB .. 64 KiB; mke2fs makes 1k, 4k; 64k on arm64).
GUESS_BLOCK_SIZES = (4096, 1024, 2048, 65536, 8192, 16384, 32768)
#: The groups that hold a backup with sparse_super (``ext4_bg_has_super``: 1 and powers of
#: 3, 5 and 7), in ascending order.
SPARSE_GROUPS = sorted({1} | {b ** k for b in (3, 5, 7) for k in range(1, 12) if b ** k < 1 << 20})


def backup_candidates(size: int, max_group: int | None = None, block_sizes=GUESS_BLOCK_SIZES):
    """``(group, block_size, offset)`` of the places a backup superblock would be for the
    default geometry (``8 * block_size`` blocks per group, first data block 1 for 1 KiB
    blocks): group 1 at every block size first, then group 3 ...  Only the places that
    lie inside ``size`` bytes."""
    for g in SPARSE_GROUPS:
        if max_group is not None and g > max_group:
            return
        for bs in block_sizes:
            off = (g * 8 * bs + (1 if bs == 1024 else 0)) * bs
            if off + SUPERBLOCK_SIZE <= size:
                yield g, bs, off


def check_backup(source, group: int, block_size: int, offset: int):
    """The backup superblock at ``offset`` if it is one: magic, geometry, checksum, its
    own group number and block size agree with where it was found.  None otherwise."""
    try:
        raw = source.read(offset, SUPERBLOCK_SIZE)
        if raw[0x38:0x3A] != b"\x53\xef":
            return None
        sb = Superblock(raw, offset)
    except (PvfsError, OSError):
        return None
    if (sb.block_size != block_size or sb.blocks_per_group != 8 * block_size
            or sb.sb.s_block_group_nr != group or sb.checksum_ok() is False
            or group >= sb.group_count or not sb.group_has_super(group)
            or sb.group_first_block(group) * block_size != offset or sb.journal_dev):
        return None
    return sb


def find_backup_superblock(source, max_reads: int = 64):
    """The first good backup superblock ``(group, Superblock)`` (lowest group), or None."""
    for n, (g, bs, off) in enumerate(backup_candidates(source.size)):
        if n >= max_reads:
            break
        sb = check_backup(source, g, bs, off)
        if sb is not None:
            return g, sb
    return None


def primary_problem(source) -> str | None:
    """Why the primary superblock cannot be used (None: it can)."""
    try:
        sb = read_superblock(source)
    except UnreadableError as e:
        return f"unreadable ({e})"
    except PvfsError as e:
        return str(e)
    if sb.journal_dev:
        return None  # an external journal device: not a filesystem, not damaged
    if sb.checksum_ok() is False:
        return "checksum mismatch"
    return None


PROBE_BLOCK_SIZES = (4096, 1024, 2048, 65536)


def probe_backup(source) -> float:
    """Probe score for a volume whose primary superblock is bad: 40 when the group-1
    backup checks out at a 4k/1k/2k/64k block size, else 0.  Every volume without an
    ext4 primary comes here, and a read may cost a chunk fetch (PBS, RBD): at most 5
    reads of 1 KiB.  Never raises."""
    try:
        if primary_problem(source) is None:
            return 0.0
        for g, bs, off in backup_candidates(source.size, max_group=1,
                                            block_sizes=PROBE_BLOCK_SIZES):
            if check_backup(source, g, bs, off) is not None:
                return 40.0
    except Exception:  # a probe never raises
        return 0.0
    return 0.0


def load_superblock(volume, ctx):
    """``(Superblock, notes)``: the primary, or the first good backup when the primary's
    magic, checksum or geometry is bad (reported, "repaired from backup superblock in
    group N").  Raises :class:`Ext4Error` when there is neither."""
    source = volume.source
    why = primary_problem(source)
    if why is None:
        return read_superblock(source), []
    found = find_backup_superblock(source)
    if found is None:
        raise Ext4Error(f"primary superblock unusable ({why}) and no backup superblock found")
    group, sb = found
    e = ctx.report.add(
        "info", LAYER, volume.path, "superblock-backup",
        f"primary superblock unusable ({why}); repaired from backup superblock in group "
        f"{group} (block {sb.group_first_block(group)}, {sb.block_size}-byte blocks) with "
        f"the group descriptors that follow it", [(SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE)],
        outcome="repaired")
    return sb, [e.message]


# -- finding the journal ------------------------------------------------------------------
def _inode_bytes(source, sb, ino: int) -> bytes:
    """The raw inode ``ino`` of a group whose descriptor is in the first descriptor block
    (the journal inode is in group 0): just enough to find the journal before the reader
    is built (the kernel reads it the same way, before recovery)."""
    group, index = divmod(ino - 1, sb.inodes_per_group)
    if group >= sb.descs_per_block or group >= sb.group_count:
        raise jbd2.Jbd2Error(f"inode {ino} is not in the first group descriptor block")
    bs = sb.block_size
    gdt = (sb.offset // bs + 1) * bs  # the block after the one holding the superblock
    desc = source.read(gdt + group * sb.desc_size, sb.desc_size)
    table = struct.unpack_from("<I", desc, 8)[0]
    if sb.desc_size >= 64:
        table |= struct.unpack_from("<I", desc, 0x28)[0] << 32
    if not table or table >= sb.blocks_count:
        raise jbd2.Jbd2Error(f"group {group}: inode table at block {table}")
    return source.read(table * bs + index * sb.inode_size, min(sb.inode_size, 256))


def journal_extents(source, sb):
    """The journal inode's ``(logical, physical, count)`` extents and its length in blocks,
    from the inode, else from the superblock's ``s_jnl_blocks`` backup (as e2fsck).

    Returns ``(extents, nblocks, notes)``; raises :class:`jbd2.Jbd2Error` when neither
    gives a usable map."""
    bs = sb.block_size
    read_block = (lambda n: source.read(n * bs, bs))  # noqa: E731
    max_blocks = sb.blocks_count
    notes = []
    ino = sb.sb.s_journal_inum or EXT4_JOURNAL_INO
    try:
        raw = _inode_bytes(source, sb, ino)
        mode = struct.unpack_from("<H", raw, 0)[0]
        size = struct.unpack_from("<I", raw, 4)[0] | (
            struct.unpack_from("<I", raw, _INODE_SIZE_HIGH)[0] << 32)
        flags = struct.unpack_from("<I", raw, _INODE_FLAGS)[0]
        if not stat.S_ISREG(mode) or not size or size // bs > max_blocks:
            raise jbd2.Jbd2Error(f"journal inode {ino}: mode {mode:#o}, size {size}")
        nblocks = size // bs
        ext = jbd2.iblock_extents(raw[_INODE_BLOCK:_INODE_BLOCK + 60], flags, nblocks,
                                  read_block, bs)
        if sum(e[2] for e in ext) < nblocks:
            raise jbd2.Jbd2Error(f"journal inode {ino} maps only "
                                 f"{sum(e[2] for e in ext)} of {nblocks} blocks")
        return ext, nblocks, notes
    except (jbd2.Jbd2Error, PvfsError) as e:
        backup = jbd2.jnl_blocks_backup(sb.raw)
        if backup is None:
            raise jbd2.Jbd2Error(f"journal inode: {e}; no backup in the superblock") from None
        notes.append(str(e))
    i_block, size = backup
    if not size or size // bs > max_blocks:
        raise jbd2.Jbd2Error(f"journal backup in the superblock: size {size}")
    nblocks = size // bs
    flags = jbd2.EXT4_EXTENTS_FL if i_block[:2] == b"\x0a\xf3" else 0
    ext = jbd2.iblock_extents(i_block, flags, nblocks, read_block, bs)
    return ext, nblocks, notes


def open_journal(source, sb) -> tuple[jbd2.Journal, list[str]]:
    """The internal journal of the filesystem ``sb`` describes, superblock loaded."""
    ext, nblocks, notes = journal_extents(source, sb)
    j = jbd2.Journal(source, sb.block_size, ext, nblocks, fs_blocks=sb.blocks_count,
                     label=f"{getattr(source, 'label', 'volume')} journal")
    j.load_superblock()
    return j, notes


def _errno_name(err: int) -> str:
    import errno as _errno

    n = -err if err < 0 else err
    return f"{_errno.errorcode.get(n, 'errno')} {err}"


# -- the hook --------------------------------------------------------------------------------
def journal_overlay(volume, sb, ctx, from_backup: bool = False):
    """``(meta, data, journal_text)``: the sources the reader reads through and what
    ``FilesystemInfo.journal`` says.

    Replays when the superblock says ``needs_recovery`` (``ext4_load_journal``), or when
    the superblock is a backup (backups are not updated on mount, so their flag says
    nothing) and the journal's ``s_start`` is not 0.  Every outcome is one damage entry
    (``info`` for a replay, ``warning`` for what was left out)."""
    base = volume.source
    path = volume.path
    report = ctx.report
    if not sb.compat & COMPAT_HAS_JOURNAL:
        return base, base, None
    mode = ctx.options.get("guest_journal") or JOURNAL_REPLAY
    needs = sb.needs_recovery
    if sb.sb.s_journal_inum == 0:  # ext4_get_dev_journal: s_journal_uuid / s_journal_dev
        text = "external journal device (not supported)"
        if needs:
            report.add("warning", LAYER, path, "journal-external",
                       "the filesystem needs recovery from an external journal device, "
                       "which pvfs does not read; showing the unreplayed state")
            text += ", not replayed"
        return base, base, text
    try:
        journal, notes = open_journal(base, sb)
    except UnreadableError as e:
        if needs or from_backup:
            report.add("error", LAYER, path, "journal-unreadable",
                       f"the journal lies on unreadable bytes ({e}); not replayed, showing "
                       f"the unreplayed state", e.ranges)
            return base, base, "unreadable, not replayed"
        return base, base, None
    except (jbd2.Jbd2Error, PvfsError) as e:
        if needs or from_backup:
            report.add("warning", LAYER, path, "journal-invalid",
                       f"the filesystem needs recovery but its journal cannot be used ({e}); "
                       f"showing the unreplayed state")
            return base, base, "invalid, not replayed"
        return base, base, None
    for note in notes:
        report.add("info", LAYER, path, "journal-inode",
                   f"journal inode unusable ({note}); used the superblock's copy of its block "
                   f"map (s_jnl_blocks)", outcome="repaired")
    jsb = journal.sb
    if jsb.errno:  # jbd2_journal_abort() recorded it; ext4 says so on the next mount
        report.add("warning", LAYER, path, "journal-aborted",
                   f"the journal was aborted by an error ({_errno_name(jsb.errno)}) while the "
                   f"filesystem was mounted; files changed just before may be inconsistent")
    if not jsb.start:
        return base, base, ("clean" if not needs else "empty")
    if not needs and not from_backup:
        # ext4_load_journal: jbd2_journal_wipe() drops the log without replaying it.
        report.add("info", LAYER, path, "journal-not-needed",
                   "the journal holds transactions but the superblock does not ask for "
                   "recovery; not replayed (as the kernel does)")
        return base, base, "not replayed (recovery flag clear)"
    try:
        rec = journal.recover()
    except Exception as e:  # a reader bug must not lose the whole filesystem: say so
        report.add("error", LAYER, path, "journal-replay-failed",
                   f"journal replay failed ({type(e).__name__}: {e}); showing the "
                   f"unreplayed state")
        return base, base, "replay failed, not replayed"
    for p in rec.problems:
        report.add(p.severity, LAYER, path, p.code, p.message, p.ranges)
    if any(p.code == "journal-unreadable" for p in rec.problems):
        return base, base, "unreadable, not replayed"
    if mode == JOURNAL_IGNORE:
        report.add("info", LAYER, path, "journal-ignored",
                   f"journal not replayed (--guest-journal ignore): {rec.transactions} "
                   f"committed transactions ({rec.blocks} blocks) left out; showing the "
                   f"unreplayed state")
        return base, base, (f"not replayed (--guest-journal ignore): {rec.transactions} "
                            f"transactions ({rec.blocks} blocks) pending")
    text = rec.summary()
    if journal.pending_fast_commit(rec.end_transaction):
        report.add("warning", LAYER, path, "journal-fast-commit",
                   f"fast commits after transaction {(rec.end_transaction - 1) & 0xFFFFFFFF} "
                   f"are not replayed (pvfs replays full jbd2 commits only): changes a "
                   f"program fsync()ed after it are missing")
        text += ", fast commits not replayed"
    if not rec.blocks:
        report.add("info", LAYER, path, "journal-replayed", f"journal: {text}")
        return base, base, text
    overlay = jbd2.JournalOverlay(base, sb.block_size, rec)
    report.add("info", LAYER, path, "journal-replayed",
               f"journal {rec.summary()} in memory (transactions {rec.start_transaction}.."
               f"{(rec.end_transaction - 1) & 0xFFFFFFFF}); nothing was written",
               outcome="repaired")
    return overlay, overlay, text
