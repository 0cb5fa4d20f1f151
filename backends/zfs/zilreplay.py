"""Intent log replay in memory: a dataset as an import shows it after zil_replay.

The records ``zil.read_log`` returns are applied, in order, to a model of the objects
they touch; nothing is written.  The ZPL (``zpl.py``) asks the model for directory
listings, object attributes and file contents of the objects the log changed; zvols
read through :class:`ReplaySource`.

Semantics follow OpenZFS zfs-2.3.9:
  - module/zfs/zfs_replay.c: zfs_replay_create (the object number, mode, owner, rdev and
    creation time come from the record; FUID domains before the name), zfs_replay_remove,
    zfs_replay_link, do_zfs_replay_rename (RENAME_EXCHANGE / RENAME_WHITEOUT),
    zfs_replay_write (a WR_INDIRECT record writes its whole block, lr_blkptr, and sets
    the end of file to the record's end when the file was shorter: z_replay_eof),
    zfs_replay_write2 (only the end of file grows), zfs_replay_truncate (zfs_space
    F_FREESP), zfs_replay_setattr (mode bits, owner, size, atime, mtime),
    zfs_replay_setsaxattr (add, replace or remove one SA xattr), zfs_replay_clone_range
    -> zfs_clone_range_replay (module/zfs/zfs_vnops.c: lr_bps[] become the blocks at
    lr_offset, the size grows to lr_offset + lr_length).
  - module/os/linux/zfs/zfs_znode_os.c zfs_freesp / zfs_trunc / zfs_extend / zfs_free_range.
  - module/zfs/zfs_dir.c zfs_link_create / zfs_link_destroy (a directory's size counts
    its entries; a subdirectory adds a link to its parent).
  - module/zfs/zvol.c zvol_replay_write / zvol_replay_truncate / zvol_replay_clone_range.
  - module/zfs/zil.c zil_replay_log_record: TX_OOO records whose object is gone are
    skipped; the first record that fails stops the replay (zil_replay_error), the rest
    of the log is not applied.

What the model cannot know: the time of the import (a real replay stamps ctime, and
mtime of written files, with it): replayed objects keep the times the records carry
(creation time, setattr times), other changes leave times as they were synced.
"""

from __future__ import annotations

import bisect
import dataclasses
import stat
import threading

from pvfs.cache import METADATA_CACHE
from pvfs.errors import PvfsError, UnreadableError
from pvfs.source import BAD_ZERO, DATA, UNMAPPED, UNREADABLE, Source

from . import zil
from .errors import ZfsError
from .sa import Timestamp, Znode

INF = 1 << 64
DT_SHIFT = 60  # ZFS_DIRENT_MAKE: the DT_* type in the top 4 bits
MAX_RUNS = 2_000_000
ZFS_XATTR = 0x1  # zp_flags of an xattr directory (include/sys/zfs_znode.h)


class ReplayError(ZfsError):
    """A record that cannot be applied (the replay stops there, as zil_replay does)."""


def _ts(sec, nsec):
    if sec >= 1 << 63:
        sec -= 1 << 64
    return Timestamp(sec, nsec % 1_000_000_000)


# -- file and zvol contents ------------------------------------------------------------
class Extents:
    """The bytes of one object after replay: sorted runs ``[start, end, kind, a, b]``
    laid over the object's synced data (gaps read the synced data).  ``kind``:
    ``zero``; ``log`` (a = the log block's BlkPtr, b = offset of ``start`` in it);
    ``blk`` (a = a data block's BlkPtr, b = offset of ``start`` in its logical bytes)."""

    def __init__(self, base_size: int | None):
        self.runs = []
        self.starts = []
        if base_size is not None:
            self.put(base_size, INF, "zero")  # beyond the synced size: zeros, never stale bytes

    def put(self, start, end, kind, a=None, b=0):
        if end <= start:
            return
        runs, starts = self.runs, self.starts
        i = bisect.bisect_right(starts, start) - 1
        if i >= 0 and runs[i][1] > start:
            r = runs[i]
            if r[0] < start:  # keep the head of the run that begins before
                head = [r[0], start, r[2], r[3], r[4]]
                tail = [start, r[1], r[2], r[3], r[4] + (start - r[0]) if r[2] != "zero" else 0]
                runs[i:i + 1] = [head, tail]
                starts[i:i + 1] = [head[0], tail[0]]
                i += 1
        else:
            i += 1
        j = i
        while j < len(runs) and runs[j][0] < end:
            j += 1
        new = [[start, end, kind, a, b]]
        if j > i and runs[j - 1][1] > end:  # keep the tail of the last run
            r = runs[j - 1]
            new.append([end, r[1], r[2], r[3], r[4] + (end - r[0]) if r[2] != "zero" else 0])
        runs[i:j] = new
        starts[i:j] = [r[0] for r in new]
        if len(runs) > MAX_RUNS:
            raise ReplayError(f"more than {MAX_RUNS} changed ranges in one object")

    def pieces(self, offset, length):
        """``(start, end, run or None)`` covering [offset, offset+length)."""
        end = offset + length
        runs = self.runs
        i = max(0, bisect.bisect_right(self.starts, offset) - 1)
        pos = offset
        while pos < end:
            if i < len(runs) and runs[i][1] <= pos:
                i += 1
                continue
            if i < len(runs) and runs[i][0] <= pos:
                r = runs[i]
                stop = min(end, r[1])
                yield pos, stop, r
                pos = stop
                i += 1
            else:
                stop = min(end, runs[i][0]) if i < len(runs) else end
                yield pos, stop, None
                pos = stop


class ReplaySource(Source):
    """A file or zvol after replay: :class:`Extents` over the synced contents."""

    def __init__(self, size, extents, base, pool, objset, label, path=None, bad="eio",
                 ctx=None):
        super().__init__()
        self.size = size
        self.ext = extents
        self.base = base  # a Source of the synced object, or None (created by the log)
        self.pool = pool
        self.objset = objset
        self.label = label
        self.path = path
        self.bad = bad
        self.ctx = ctx

    def _base(self, off, n):
        b = self.base
        if b is None or off >= b.size:
            return bytes(n)
        data = b.read(off, min(n, b.size - off))
        return data + bytes(n - len(data))

    def _block(self, kind, bp):
        if kind != "log":  # a data block: read_bp verifies and caches it (DATA_CACHE)
            return self.pool.read_bp(bp, self.objset)
        key = ("zfs-zilrep", self.pool.uid, bp.raw)
        hit = METADATA_CACHE.get(key)
        if hit is None:
            got = self.pool.read_zil_block(bp)
            if got is None:
                raise UnreadableError("the log block no longer verifies", [])
            hit = METADATA_CACHE.put(key, _Bytes(got[0]))
        return hit.data if isinstance(hit, _Bytes) else hit

    def _read(self, offset, length):
        out = []
        for a, z, r in self.ext.pieces(offset, length):
            if r is None:
                out.append(self._base(a, z - a))
            elif r[2] == "zero":
                out.append(bytes(z - a))
            else:
                try:
                    blk = self._block(r[2], r[3])
                except (UnreadableError, ZfsError) as e:
                    ranges = [(a, z - a)]
                    if self.ctx is not None and self.path:
                        self.ctx.report.add("error", "zfs", self.path, "unreadable-block",
                                            f"data replayed from the intent log: {e}", ranges)
                    if self.bad == BAD_ZERO:
                        out.append(bytes(z - a))
                        continue
                    raise UnreadableError(f"{self.label}: {e}", ranges) from None
                lo = r[4] + (a - r[0])
                piece = blk[lo:lo + (z - a)]
                out.append(piece + bytes((z - a) - len(piece)))
        return b"".join(out)

    def _block_status(self, offset, length):
        res = []
        for a, z, r in self.ext.pieces(offset, length):
            if r is None:
                if self.base is None or a >= self.base.size:
                    res.append((a, z - a, UNMAPPED))
                else:
                    zz = min(z, self.base.size)
                    res.extend(self.base.block_status(a, zz - a))
                    if zz < z:
                        res.append((zz, z - zz, UNMAPPED))
            else:
                res.append((a, z - a, UNMAPPED if r[2] == "zero" else DATA))
        return res

    def allocated_bytes(self):
        return sum(n for _, n, s in self.block_status() if s != UNMAPPED)


class _Bytes:
    __slots__ = ("data", "cache_cost")

    def __init__(self, data):
        self.data = data
        self.cache_cost = len(data) + 64


# -- the model ---------------------------------------------------------------------------
@dataclasses.dataclass
class Obj:
    """One object the log touched."""

    objnum: int
    zn: Znode
    new: bool  # created by the log (no synced object behind it)
    size: int
    ext: Extents | None = None  # None: contents as synced
    symlink: bytes | None = None
    xattrs: dict = dataclasses.field(default_factory=dict)  # name -> bytes or None (removed)
    freed: bool = False
    base_size: int = 0  # the synced size (what the synced data covers)


@dataclasses.dataclass
class Applied:
    rec: zil.Rec
    note: str = ""


class Replay:
    """The intent log of one ZPL object set (``kind="zpl"``) or zvol (``"zvol"``),
    applied in memory.  ``base`` answers questions about the synced state:
    ``entries(dirobj) -> {name: [value]}``, ``znode(obj) -> Znode | None`` (None: no such
    object), ``source(obj, zn) -> Source`` (ZPL); for a zvol ``base`` is its data Source.
    """

    def __init__(self, objset, log: zil.ZilLog, kind: str, base):
        self.objset = objset
        self.log = log
        self.kind = kind
        self.base = base
        self.objs: dict[int, Obj] = {}
        self.dirs: dict[int, dict] = {}  # directory object -> full listing after replay
        self.applied: list[Applied] = []
        self.skipped: list[tuple[zil.Rec, str]] = []  # OOO records of objects that are gone
        self.failed: tuple[zil.Rec, str] | None = None
        self.not_applied = 0  # records after the failed one
        self.zvol_ext = None
        self.zvol_size = None
        self._lock = threading.RLock()

    # -- synced state ---------------------------------------------------------------
    def _obj(self, objnum, must=True) -> Obj | None:
        o = self.objs.get(objnum)
        if o is not None:
            if o.freed and must:
                raise ReplayError(f"object {objnum} was removed earlier in the log")
            return None if o.freed else o
        try:
            zn = self.base.znode(objnum)
        except (PvfsError, ValueError) as e:
            raise ReplayError(f"object {objnum} cannot be read: {e}") from None
        if zn is None:
            if must:
                raise ReplayError(f"object {objnum} does not exist")
            return None
        o = Obj(objnum, dataclasses.replace(zn), False, zn.size, base_size=zn.size)
        self.objs[objnum] = o
        return o

    def exists(self, objnum) -> bool:
        try:
            return self._obj(objnum, must=False) is not None
        except ReplayError:
            return False

    def _dir(self, objnum) -> dict:
        d = self.dirs.get(objnum)
        if d is None:
            o = self._obj(objnum)
            if not stat.S_ISDIR(o.zn.mode):
                raise ReplayError(f"object {objnum} is not a directory")
            try:
                ents = self.base.entries(objnum)
            except (PvfsError, ValueError) as e:
                raise ReplayError(f"directory {objnum} cannot be read: {e}") from None
            d = {}
            for name, v in ents.items():
                val = v[0] if isinstance(v, list) and v else v
                if isinstance(val, int):
                    d[name] = val
            self.dirs[objnum] = d
        return d

    # -- applying records -----------------------------------------------------------
    def run(self):
        recs = self.log.records
        for i, r in enumerate(recs):
            if r.notes and r.notes[0].startswith("does not parse"):
                self.failed = (r, r.notes[0])
                self.not_applied = len(recs) - i - 1
                break
            try:
                note = self.apply(r)
            except ReplayError as e:
                self.failed = (r, str(e))
                self.not_applied = len(recs) - i - 1
                break
            if note is not None and note.startswith("skipped"):
                self.skipped.append((r, note))
            else:
                self.applied.append(Applied(r, note or "; ".join(r.notes)))
        return self

    def apply(self, r: zil.Rec):
        if r.txtype in zil.TX_OOO:
            foid = zil.obj_of(r.f.get("lr_foid", 0))
            if self.kind == "zvol":
                if foid != 1:
                    return f"skipped: object {foid} is not the zvol's data"
            elif not self.exists(foid):
                return f"skipped: object {foid} no longer exists (logged out of order)"
        fn = getattr(self, f"_tx_{r.name}", None)
        if self.kind == "zvol" and r.txtype not in (zil.TX_WRITE, zil.TX_TRUNCATE,
                                                      zil.TX_CLONE_RANGE):
            raise ReplayError(f"{r.name} record in a zvol's log (zvol_replay_err)")
        if fn is None:
            if r.txtype in zil.CREATE_TYPES:
                fn = self._tx_create
            elif r.txtype in (zil.TX_ACL, zil.TX_ACL_V0):
                return "ACL not applied (NFSv4 ACLs are not shown)"
            else:
                raise ReplayError(f"records of type {r.name} cannot be applied")
        return fn(r)

    # namespace
    def _tx_create(self, r):
        f = r.f
        t = r.txtype
        doid, foid = f["lr_doid"], zil.obj_of(f["lr_foid"])
        if t == zil.TX_MKXATTR:
            return self._mkxattr(r, doid, foid)
        d = self._dir(doid)
        name = r.names[0].decode("utf-8", "surrogateescape")
        if name in d:
            raise ReplayError(f"'{name}' already exists in directory {doid}")
        if self.exists(foid):
            raise ReplayError(f"object {foid} is in use (dnode_try_claim)")
        mode = f["lr_mode"]
        isdir = t in zil.DIR_CREATES
        if isdir:
            mode = stat.S_IFDIR | (mode & 0o7777)
        elif stat.S_IFMT(mode) == 0:
            mode |= stat.S_IFLNK if t == zil.TX_SYMLINK else stat.S_IFREG
        crt = _ts(f["lr_crtime_sec"], f["lr_crtime_nsec"])
        zn = Znode(mode=mode, size=0, uid=f["lr_uid"], gid=f["lr_gid"], atime=crt, mtime=crt,
                   ctime=crt, crtime=crt, links=2 if isdir else 1, parent=doid,
                   rdev=f["lr_rdev"], gen=f["lr_gen"])
        o = Obj(foid, zn, True, 0, Extents(None))
        o.ext.put(0, INF, "zero")
        if t == zil.TX_SYMLINK:
            o.symlink = r.names[1] if len(r.names) > 1 else b""
            o.size = zn.size = len(o.symlink)
        self.objs[foid] = o
        if isdir:
            self.dirs[foid] = {}
        self._link(doid, name, foid, mode)

    def _mkxattr(self, r, doid, foid):
        """zfs_make_xattrdir: an xattr directory (xattr=dir) for object ``doid``; its
        entries (created by later records) are the object's xattrs."""
        f = r.f
        o = self._obj(doid)
        if o.zn.xattr and self.exists(o.zn.xattr):
            raise ReplayError(f"object {doid} already has an xattr directory")
        if self.exists(foid):
            raise ReplayError(f"object {foid} is in use (dnode_try_claim)")
        crt = _ts(f["lr_crtime_sec"], f["lr_crtime_nsec"])
        zn = Znode(mode=stat.S_IFDIR | (f["lr_mode"] & 0o7777), uid=f["lr_uid"],
                   gid=f["lr_gid"], atime=crt, mtime=crt, ctime=crt, crtime=crt, links=2,
                   parent=doid, flags=ZFS_XATTR, gen=f["lr_gen"])
        self.objs[foid] = Obj(foid, zn, True, 0)
        self.dirs[foid] = {}
        o.zn.xattr = foid
        return None

    def _link(self, doid, name, objnum, mode):
        d = self._dir(doid)
        d[name] = objnum | (((mode >> 12) & 0xF) << DT_SHIFT)
        parent = self._obj(doid)
        parent.zn.size += 1  # zfs_link_create: dzp->z_size++
        parent.size = parent.zn.size
        if stat.S_ISDIR(mode):
            parent.zn.links += 1

    def _unlink(self, doid, name, isdir_expected=None):
        d = self._dir(doid)
        if name not in d:
            raise ReplayError(f"'{name}' does not exist in directory {doid}")
        objnum = d[name] & ((1 << 48) - 1)
        o = self._obj(objnum)
        isdir = stat.S_ISDIR(o.zn.mode)
        if isdir_expected is not None and isdir != isdir_expected:
            raise ReplayError(f"'{name}' in directory {doid} is "
                              f"{'a directory' if isdir else 'not a directory'}")
        if isdir:
            if self._dir(objnum):
                raise ReplayError(f"directory '{name}' is not empty")
            o.zn.links = 0
            parent = self._obj(doid)
            parent.zn.links -= 1
        else:
            o.zn.links -= 1
        del d[name]
        parent = self._obj(doid)
        parent.zn.size = max(0, parent.zn.size - 1)
        parent.size = parent.zn.size
        if o.zn.links <= 0:
            o.freed = True
        return objnum

    def _tx_remove(self, r):
        self._unlink(r.f["lr_doid"], r.names[0].decode("utf-8", "surrogateescape"), False)

    def _tx_rmdir(self, r):
        self._unlink(r.f["lr_doid"], r.names[0].decode("utf-8", "surrogateescape"), True)

    def _tx_link(self, r):
        doid, objnum = r.f["lr_doid"], r.f["lr_link_obj"]
        name = r.names[0].decode("utf-8", "surrogateescape")
        o = self._obj(objnum)
        if stat.S_ISDIR(o.zn.mode):
            raise ReplayError("a hard link to a directory")
        if name in self._dir(doid):
            raise ReplayError(f"'{name}' already exists in directory {doid}")
        o.zn.links += 1
        self._link(doid, name, objnum, o.zn.mode)

    def _move(self, sdoid, sname, tdoid, tname):
        sd, td = self._dir(sdoid), self._dir(tdoid)
        val = sd[sname]
        objnum = val & ((1 << 48) - 1)
        o = self._obj(objnum)
        del sd[sname]
        src_parent = self._obj(sdoid)
        src_parent.zn.size = max(0, src_parent.zn.size - 1)
        src_parent.size = src_parent.zn.size
        if stat.S_ISDIR(o.zn.mode):
            src_parent.zn.links -= 1
            o.zn.parent = tdoid
        td[tname] = val
        dst_parent = self._obj(tdoid)
        dst_parent.zn.size += 1
        dst_parent.size = dst_parent.zn.size
        if stat.S_ISDIR(o.zn.mode):
            dst_parent.zn.links += 1
        if not stat.S_ISDIR(o.zn.mode):
            o.zn.parent = tdoid

    def _tx_rename(self, r):
        f = r.f
        sdoid, tdoid = f["lr_sdoid"], f["lr_tdoid"]
        sname, tname = (n.decode("utf-8", "surrogateescape") for n in r.names[:2])
        sd, td = self._dir(sdoid), self._dir(tdoid)
        if sname not in sd:
            raise ReplayError(f"'{sname}' does not exist in directory {sdoid}")
        if r.txtype == zil.TX_RENAME_EXCHANGE:
            if tname not in td:
                raise ReplayError(f"'{tname}' does not exist in directory {tdoid}")
            a, b = sd[sname], td[tname]
            oa, ob = self._obj(a & ((1 << 48) - 1)), self._obj(b & ((1 << 48) - 1))
            sd[sname], td[tname] = b, a
            if sdoid != tdoid:
                for o, new_parent, old_parent in ((oa, tdoid, sdoid), (ob, sdoid, tdoid)):
                    o.zn.parent = new_parent
                    if stat.S_ISDIR(o.zn.mode):
                        self._obj(old_parent).zn.links -= 1
                        self._obj(new_parent).zn.links += 1
            return None
        if tname in td:
            if (td[tname] & ((1 << 48) - 1)) == (sd[sname] & ((1 << 48) - 1)):
                return None  # zfs_rename: the same object, nothing to do
            sdir = stat.S_ISDIR(self._obj(sd[sname] & ((1 << 48) - 1)).zn.mode)
            self._unlink(tdoid, tname, sdir)
        self._move(sdoid, sname, tdoid, tname)
        if r.txtype == zil.TX_RENAME_WHITEOUT:
            wfoid = zil.obj_of(f["lr_wfoid"])
            if self.exists(wfoid):
                raise ReplayError(f"whiteout object {wfoid} is in use")
            crt = _ts(f["lr_wcrtime_sec"], f["lr_wcrtime_nsec"])
            mode = f["lr_wmode"] or (stat.S_IFCHR | 0)
            zn = Znode(mode=mode, uid=f["lr_wuid"], gid=f["lr_wgid"], atime=crt, mtime=crt,
                       ctime=crt, crtime=crt, links=1, parent=sdoid, rdev=f["lr_wrdev"],
                       gen=f["lr_wgen"])
            self.objs[wfoid] = Obj(wfoid, zn, True, 0)
            self._link(sdoid, sname, wfoid, mode)
        return None

    _tx_rename_exchange = _tx_rename
    _tx_rename_whiteout = _tx_rename

    # contents
    def _target(self, r):
        """(Obj or None for a zvol, Extents) of a content record."""
        if self.kind == "zvol":
            return None, self.zvol_ext
        o = self._obj(zil.obj_of(r.f["lr_foid"]))
        if not stat.S_ISREG(o.zn.mode):
            raise ReplayError(f"object {o.objnum} is not a regular file")
        if o.ext is None:
            o.ext = Extents(o.size)
        return o, o.ext

    def _tx_write(self, r):
        f = r.f
        o, ext = self._target(r)
        offset, length = f["lr_offset"], f["lr_length"]
        eod = offset + length
        if r.indirect:
            # zfs_replay_write / zvol_replay_write: the data is lr_blkptr's block (zeros
            # for a hole, zil_read_log_data); shorter than the block: the whole block
            bp = r.blkptr
            bsize = bp.lsize
            if length < bsize:
                offset -= offset % bsize
                length = bsize
            if bp.hole:
                ext.put(offset, offset + length, "zero")
            else:
                ext.put(offset, offset + length, "blk", bp, 0)
            if o is not None:
                # z_replay_eof: the end of file becomes eod when the file was shorter,
                # else zfs_write grows it to the end of what was written
                o.size = eod if o.size < eod else max(o.size, offset + length)
        else:
            if r.data_at < 0:
                raise ReplayError("write record without data")
            ext.put(offset, eod, "log", r.block, r.data_at)
            if o is not None:
                o.size = max(o.size, eod)
        if o is not None:
            o.zn.size = o.size

    def _tx_write2(self, r):
        o, _ = self._target(r)
        if o is not None:
            end = r.f["lr_offset"] + r.f["lr_length"]
            if end > o.size:
                o.size = o.zn.size = end

    def _freesp(self, o, ext, off, length):
        """zfs_freesp (Linux): beyond the end extends; length 0 truncates at off; else
        the range (within the file) reads zeros and the file grows to its end."""
        if o is None:  # zvol_replay_truncate: dmu_free_long_range
            ext.put(off, off + length, "zero")
            return
        if off > o.size:
            o.size = max(o.size, off + length)  # zfs_extend
        elif length == 0:
            if off < o.size:  # zfs_trunc
                ext.put(off, INF, "zero")
                o.size = off
        else:
            ext.put(off, min(off + length, o.size), "zero")  # zfs_free_range
            if off + length > o.size:
                o.size = off + length
        o.zn.size = o.size

    def _tx_truncate(self, r):
        o, ext = self._target(r)
        self._freesp(o, ext, r.f["lr_offset"], r.f["lr_length"])

    def _tx_setattr(self, r):
        f = r.f
        o = self._obj(zil.obj_of(f["lr_foid"]))
        m = f["lr_mask"]
        if m & zil.ATTR_MODE:
            o.zn.mode = stat.S_IFMT(o.zn.mode) | (f["lr_mode"] & 0o7777)
        if m & zil.ATTR_UID:
            o.zn.uid = f["lr_uid"]
        if m & zil.ATTR_GID:
            o.zn.gid = f["lr_gid"]
        if m & zil.ATTR_ATIME:
            o.zn.atime = _ts(f["lr_atime_sec"], f["lr_atime_nsec"])
        if m & zil.ATTR_MTIME:
            o.zn.mtime = _ts(f["lr_mtime_sec"], f["lr_mtime_nsec"])
        if m & zil.ATTR_SIZE:
            if not stat.S_ISREG(o.zn.mode):
                raise ReplayError(f"size change of object {o.objnum}, not a regular file")
            if o.ext is None:
                o.ext = Extents(o.size)
            self._freesp(o, o.ext, f["lr_size"], 0)

    def _tx_setsaxattr(self, r):
        o = self._obj(zil.obj_of(r.f["lr_foid"]))
        name = r.names[0]
        o.xattrs[name] = r.value if r.f["lr_size"] else None

    def _tx_clone_range(self, r):
        f = r.f
        o, ext = self._target(r)
        off, length, blksz = f["lr_offset"], f["lr_length"], f["lr_blksz"]
        if blksz == 0 or off % blksz:
            raise ReplayError(f"clone at {off} with block size {blksz} (EINVAL)")
        for i, bp in enumerate(r.bps):
            a = off + i * blksz
            if bp.hole:
                ext.put(a, a + blksz, "zero")
            else:
                ext.put(a, a + blksz, "blk", bp, 0)
        if o is not None and o.size < off + length:
            o.size = o.zn.size = off + length


def replay_zpl(objset, log, base) -> Replay:
    return Replay(objset, log, "zpl", base).run()


def replay_zvol(objset, log, data_source, volsize) -> Replay:
    r = Replay(objset, log, "zvol", None)
    r.zvol_ext = Extents(volsize)
    r.zvol_size = volsize
    r.zvol_base = data_source
    return r.run()


def zvol_source(rep: Replay, label, path, bad, ctx) -> ReplaySource:
    return ReplaySource(rep.zvol_size, rep.zvol_ext, rep.zvol_base, rep.objset.pool,
                        rep.objset, label, path, bad, ctx)


__all__ = ["Replay", "ReplaySource", "Extents", "replay_zpl", "replay_zvol", "zvol_source",
           "UNREADABLE"]
