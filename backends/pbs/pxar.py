"""pxar archives as lazy directory trees, read at random offsets.

References: proxmox/pxar ``src/format/mod.rs`` (items, ``Stat``, goodbye items),
``src/accessor/mod.rs`` (random access: the last 24 bytes of a directory are its goodbye
tail, whose ``size`` locates the goodbye table; goodbye ``offset`` is a backwards
distance to the child's FILENAME; hardlink offset = own FILENAME - target FILENAME),
``src/encoder/mod.rs`` (order of metadata items; v2 FORMAT_VERSION/PRELUDE; PAYLOAD_REF
into the ``.ppxar`` stream pointing at a PAYLOAD header), ``src/format/acl.rs`` and
proxmox-backup ``pbs-client/src/pxar/metadata.rs`` (how ACL items become POSIX ACLs).

Nothing is decoded up front: the root entry is parsed when the archive is opened and a
directory's goodbye table when it is first listed.  File contents are slices of the
stream (v1: the PAYLOAD inside the archive; v2: the PAYLOAD in the payload stream).
"""

from __future__ import annotations

import os
import stat
import struct
import threading
import weakref

from pvfs.posixacl import (ACL_GROUP, ACL_GROUP_OBJ, ACL_MASK, ACL_OTHER, ACL_UNDEFINED_ID,
                            ACL_USER, ACL_USER_OBJ, posix_acl_xattr)
from pvfs.errors import PvfsError, UnreadableError
from pvfs.nodes import Dir, File, Special, Symlink, Timestamp, walk
from pvfs.source import BAD_EIO, MissingSource, SliceSource, Source

from .structs import (GOODBYE_ITEM_SIZE, HEADER_SIZE, PXAR_ACL_DEFAULT, PXAR_ACL_DEFAULT_GROUP,
                      PXAR_ACL_DEFAULT_USER, PXAR_ACL_GROUP, PXAR_ACL_GROUP_OBJ, PXAR_ACL_USER,
                      PXAR_DEVICE, PXAR_ENTRY, PXAR_ENTRY_V1, PXAR_FCAPS, PXAR_FILENAME,
                      PXAR_FORMAT_VERSION, PXAR_GOODBYE, PXAR_GOODBYE_TAIL_MARKER, PXAR_HARDLINK,
                      PXAR_METADATA_ITEMS, PXAR_PAYLOAD, PXAR_PAYLOAD_REF, PXAR_PRELUDE,
                      PXAR_QUOTA_PROJID, PXAR_SYMLINK, PXAR_XATTR, PbsError, Stat, StatV1, parse)

MAX_ITEM = 16 * 1024 * 1024  # metadata items (xattrs, names, goodbye tables) larger are refused
MAX_GOODBYE = 256 * 1024 * 1024

ACL_NO_MASK = (1 << 64) - 1


class PxarError(PbsError):
    """A pxar item is not what the format says."""


#: Set while this thread lists a pxar directory (its Dir lock is held): a damage
#: callback must not walk the tree then.
LISTING = threading.local()


class PxarArchive:
    """One pxar archive: ``meta`` is the archive (or the ``.mpxar`` stream of a split
    archive), ``payload`` the ``.ppxar`` stream or None.

    ``report(severity, code, relpath, message)`` receives every problem found while
    listing (a bad item, an entry that lies in a missing chunk).
    """

    def __init__(self, meta: Source, payload: Source | None = None, label="pxar", report=None,
                 bad=BAD_EIO):
        self.meta = meta
        self.payload = payload
        self.label = label
        self.report = report or (lambda *a: None)
        self.bad = bad
        self.version = 1
        self._by_offset = weakref.WeakValueDictionary()  # FILENAME offset -> non-dir node
        self._lock = threading.RLock()
        self._root = None

    # -- item access ---------------------------------------------------------------
    def _header(self, off, end=None):
        end = self.meta.size if end is None else end
        b = self.meta.read(off, HEADER_SIZE)
        if len(b) < HEADER_SIZE or off + HEADER_SIZE > end:
            raise PxarError(f"item header at {off:#x} lies beyond its range (ends {end:#x})")
        htype, size = struct.unpack("<QQ", b)
        if size < HEADER_SIZE or off + size > end:
            raise PxarError(f"item {htype:#018x} at {off:#x} has size {size} beyond its range")
        return htype, size

    def _content(self, off, size, limit=MAX_ITEM):
        if size - HEADER_SIZE > limit:
            raise PxarError(f"item at {off:#x} of {size} bytes is larger than {limit}")
        return self.meta.read(off + HEADER_SIZE, size - HEADER_SIZE)

    # -- the tree ------------------------------------------------------------------
    def root(self) -> Dir:
        """Parse the root entry (FORMAT_VERSION and PRELUDE skipped) and return its Dir."""
        if self._root is not None:
            return self._root
        off = 0
        htype, size = self._header(0)
        if htype == PXAR_FORMAT_VERSION:
            content = self._content(0, size)
            self.version = struct.unpack_from("<Q", content)[0] if len(content) >= 8 else 0
            if self.version != 2:
                raise PxarError(f"unsupported pxar format version {self.version}")
            off = size
            htype, size = self._header(off)
            if htype == PXAR_PRELUDE:
                off += size
                htype, size = self._header(off)
        if htype not in (PXAR_ENTRY, PXAR_ENTRY_V1):
            raise PxarError(f"archive does not start with an ENTRY (found {htype:#018x})")
        if self.payload is None and self.version == 2:
            self.report("warning", "no-payload", "/", "split archive without its payload stream")
        node = self._parse_entry(off, self.meta.size, "")
        if not isinstance(node, Dir):
            raise PxarError("the archive root is not a directory")
        self._root = node
        return node

    def _parse_entry(self, off, end, path):
        """Parse ENTRY + metadata + the type's item at ``off``; ``end`` bounds the entry
        (for a directory: the end of its goodbye table; None when not known)."""
        limit = end if end is not None else self.meta.size
        htype, size = self._header(off, limit)
        content = self._content(off, size)
        if htype == PXAR_ENTRY:
            st = parse(Stat, content, "ENTRY", off)
            mtime = Timestamp(st.mtime.secs, st.mtime.nanos)
        elif htype == PXAR_ENTRY_V1:
            st = parse(StatV1, content, "ENTRY_V1", off)
            mtime = Timestamp.from_ns(st.mtime)
        else:
            raise PxarError(f"expected ENTRY at {off:#x}, found {htype:#018x}")
        mode = st.mode
        if mode > 0o177777:
            raise PxarError(f"{path or '/'}: impossible mode {mode:#x}")
        pos = off + size
        xattrs, acl_user, acl_group, acl_group_obj, acl_default = {}, [], [], None, None
        dfl_user, dfl_group = [], []
        htype = None
        for _ in range(1 << 20):  # bounded: each item advances pos
            if pos >= limit:
                htype = None
                break
            htype, size = self._header(pos, limit)
            if htype not in PXAR_METADATA_ITEMS:
                break
            c = self._content(pos, size)
            if htype == PXAR_XATTR:
                name, _, value = c.partition(b"\0")
                xattrs[name] = value
            elif htype == PXAR_FCAPS:
                xattrs[b"security.capability"] = c
            elif htype in (PXAR_ACL_USER, PXAR_ACL_GROUP, PXAR_ACL_DEFAULT_USER, PXAR_ACL_DEFAULT_GROUP):
                ident, perm = struct.unpack_from("<QQ", c) if len(c) >= 16 else (0, 0)
                {PXAR_ACL_USER: acl_user, PXAR_ACL_GROUP: acl_group, PXAR_ACL_DEFAULT_USER: dfl_user,
                 PXAR_ACL_DEFAULT_GROUP: dfl_group}[htype].append((ident & 0xFFFFFFFF, perm))
            elif htype == PXAR_ACL_GROUP_OBJ and len(c) >= 8:
                acl_group_obj = struct.unpack_from("<Q", c)[0]
            elif htype == PXAR_ACL_DEFAULT and len(c) >= 32:
                acl_default = struct.unpack_from("<QQQQ", c)
            elif htype == PXAR_QUOTA_PROJID:
                pass
            pos += size
        if acl_user or acl_group or acl_group_obj is not None:
            ent = [(ACL_USER_OBJ, ACL_UNDEFINED_ID, mode >> 6),
                   (ACL_GROUP_OBJ, ACL_UNDEFINED_ID, acl_group_obj if acl_group_obj is not None else mode >> 3),
                   (ACL_MASK, ACL_UNDEFINED_ID, mode >> 3), (ACL_OTHER, ACL_UNDEFINED_ID, mode)]
            ent += [(ACL_USER, u, p) for u, p in acl_user] + [(ACL_GROUP, g, p) for g, p in acl_group]
            xattrs[b"system.posix_acl_access"] = posix_acl_xattr(ent)
        if acl_default is not None or dfl_user or dfl_group:
            uo, go, ot, mk = acl_default or (mode >> 6, mode >> 3, mode, ACL_NO_MASK)
            ent = [(ACL_USER_OBJ, ACL_UNDEFINED_ID, uo), (ACL_GROUP_OBJ, ACL_UNDEFINED_ID, go),
                   (ACL_OTHER, ACL_UNDEFINED_ID, ot)]
            if mk != ACL_NO_MASK:
                ent.append((ACL_MASK, ACL_UNDEFINED_ID, mk))
            ent += [(ACL_USER, u, p) for u, p in dfl_user] + [(ACL_GROUP, g, p) for g, p in dfl_group]
            xattrs[b"system.posix_acl_default"] = posix_acl_xattr(ent)

        kw = dict(mtime=mtime, uid=st.uid, gid=st.gid)
        fmt = stat.S_IFMT(mode)
        if fmt == stat.S_IFDIR:
            if end is None:
                raise PxarError(f"{path or '/'}: a hardlink points at a directory")
            try:
                gb_start = self._goodbye_start(end, pos)
            except PxarError as e:
                gb_start = None  # listed by a sequential walk, reported when first listed
                bad_tail = str(e)
            if gb_start is None:
                node = Dir(mode=mode, loader=lambda d, a=pos, e=end, p=path, why=bad_tail:
                           self._walk_dir(d, a, e, p, why), **kw)
            else:
                node = Dir(mode=mode, loader=lambda d, a=pos, g=gb_start, e=end, p=path:
                           self._load_dir(d, a, g, e, p), **kw)
        elif fmt == stat.S_IFREG:
            node = File(self._payload_source(pos, htype, limit, path), mode=mode, **kw)
        elif fmt == stat.S_IFLNK:
            if htype != PXAR_SYMLINK:
                raise PxarError(f"{path}: symlink without SYMLINK item")
            node = Symlink(self._content(pos, size).rstrip(b"\0"), **kw)
        elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
            rdev = 0
            if htype == PXAR_DEVICE:
                c = self._content(pos, size)
                if len(c) >= 16:
                    major, minor = struct.unpack_from("<QQ", c)
                    if major < (1 << 31) and minor < (1 << 31):
                        rdev = os.makedev(major, minor)
            node = Special(mode, rdev=rdev, **kw)
        elif fmt in (stat.S_IFIFO, stat.S_IFSOCK):
            node = Special(mode, **kw)
        else:
            raise PxarError(f"{path}: unknown file type in mode {mode:o}")
        node.xattrs.update(xattrs)
        return node

    def _payload_source(self, pos, htype, limit, path):
        if htype == PXAR_PAYLOAD:
            _, size = self._header(pos, limit)
            return SliceSource(self.meta, pos + HEADER_SIZE, size - HEADER_SIZE,
                               label=f"{self.label}:{path}")
        if htype == PXAR_PAYLOAD_REF:
            _, size = self._header(pos, limit)
            c = self._content(pos, size)
            if len(c) < 16:
                raise PxarError(f"{path}: short PAYLOAD_REF")
            poff, psize = struct.unpack_from("<QQ", c)
            if self.payload is None:
                return MissingSource(psize, "payload stream (.ppxar) is missing", bad=self.bad,
                                     label=f"{self.label}:{path}")
            if poff + HEADER_SIZE + psize > self.payload.size:
                raise PxarError(f"{path}: PAYLOAD_REF {poff:#x}+{psize} beyond the payload stream")
            return PayloadRefSource(self.payload, poff, psize, f"{self.label}:{path}")
        raise PxarError(f"{path}: regular file without PAYLOAD")

    def _goodbye_start(self, end, first_child):
        tail = self.meta.read(end - GOODBYE_ITEM_SIZE, GOODBYE_ITEM_SIZE) if end >= GOODBYE_ITEM_SIZE else b""
        if len(tail) < GOODBYE_ITEM_SIZE:
            raise PxarError(f"no goodbye tail before {end:#x}")
        h, _off, size = struct.unpack("<QQQ", tail)
        if h != PXAR_GOODBYE_TAIL_MARKER:
            raise PxarError(f"goodbye tail marker missing before {end:#x}")
        start = end - size
        if size < HEADER_SIZE + GOODBYE_ITEM_SIZE or start < first_child:
            raise PxarError(f"goodbye table size {size} before {end:#x} is impossible")
        return start

    def _load_dir(self, d: Dir, first_child, gb_start, end, path):
        depth = getattr(LISTING, "depth", 0)
        LISTING.depth = depth + 1
        try:
            self._fill_dir(d, first_child, gb_start, end, path)
        finally:
            LISTING.depth = depth

    def _fill_dir(self, d: Dir, first_child, gb_start, end, path):
        try:
            htype, size = self._header(gb_start, end)
            if htype != PXAR_GOODBYE or gb_start + size != end:
                raise PxarError(f"expected GOODBYE at {gb_start:#x}")
            if size > MAX_GOODBYE:
                raise PxarError(f"goodbye table of {size} bytes is too large")
            n = (size - HEADER_SIZE) // GOODBYE_ITEM_SIZE - 1
            table = self.meta.read(gb_start + HEADER_SIZE, n * GOODBYE_ITEM_SIZE)
            children = sorted((gb_start - off, sz) for _h, off, sz in
                              struct.iter_unpack("<QQQ", table))
            for fn_off, sz in children:
                if fn_off < first_child or fn_off >= gb_start or sz <= 0:
                    raise PxarError(f"goodbye item points outside the directory ({fn_off:#x}+{sz})")
                if self._header(fn_off, gb_start)[0] != PXAR_FILENAME:
                    raise PxarError(f"goodbye item points at {fn_off:#x}, not at a FILENAME")
            if len({off for off, _sz in children}) != len(children):
                raise PxarError("two goodbye items point at the same entry")
        except (PvfsError, OSError) as e:
            self._walk_dir(d, first_child, end, path, str(e))
            return
        for fn_off, sz in children:
            if fn_off < first_child or fn_off >= gb_start or sz <= 0:
                self.report("error", "bad-goodbye", path or "/",
                            f"goodbye item points outside the directory ({fn_off:#x}+{sz})", ())
                continue
            # In split (v2) archives a file's goodbye size counts its payload too, which
            # lives in the other stream: bound the entry by the goodbye table instead.
            child_end = min(fn_off + sz, gb_start)
            try:
                name, node = self._child(fn_off, child_end, path)
            except (PvfsError, OSError) as e:
                self.report("error", "bad-entry", path or "/",
                            f"entry at {fn_off:#x} cannot be read: {e}", [(fn_off, sz)])
                continue
            d.add(name, node)

    def _walk_dir(self, d: Dir, first_child, end, path, why):
        """List a directory whose goodbye table is unusable by walking its items in order
        (pxar ``src/decoder``: FILENAME, ENTRY, metadata, PAYLOAD/SYMLINK/DEVICE or, for a
        directory, its children and then its GOODBYE) up to this directory's GOODBYE."""
        self.report("error", "bad-goodbye", path or "/",
                    f"goodbye table unusable ({why}); entries listed in archive order", ())
        starts, pos, depth = [], first_child, 0
        for _ in range(1 << 24):  # bounded: each item advances pos
            if pos >= end:
                break
            try:
                htype, size = self._header(pos, end)
                if htype == PXAR_ENTRY:
                    mode = struct.unpack_from("<Q", self._content(pos, size))[0]
                    if stat.S_IFMT(mode & 0o177777) == stat.S_IFDIR:
                        depth += 1
                elif htype == PXAR_GOODBYE:
                    if depth == 0:
                        break
                    depth -= 1
                elif htype == PXAR_FILENAME and depth == 0:
                    starts.append(pos)
            except (PvfsError, OSError, struct.error) as e:
                self.report("error", "bad-directory", path or "/",
                            f"sequential walk stopped at {pos:#x}: {e}", [(pos, end - pos)])
                break
            pos += size
        for fn_off, child_end in zip(starts, [*starts[1:], pos], strict=False):
            try:
                name, node = self._child(fn_off, child_end, path)
            except (PvfsError, OSError) as e:
                self.report("error", "bad-entry", path or "/",
                            f"entry at {fn_off:#x} cannot be read: {e}", [(fn_off, child_end - fn_off)])
                continue
            d.add(name, node)

    def _child(self, fn_off, end, parent, is_target=False):
        with self._lock:
            cached = self._by_offset.get(fn_off)
        htype, size = self._header(fn_off, end)
        if htype != PXAR_FILENAME:
            raise PxarError(f"expected FILENAME at {fn_off:#x}")
        raw = self._content(fn_off, size, 65536).rstrip(b"\0")
        name = raw.decode("utf-8", "surrogateescape")
        if not raw or b"/" in raw or raw in (b".", b".."):
            raise PxarError(f"invalid file name {raw!r}")
        path = f"{parent}/{name}"
        if cached is not None:
            return name, cached
        pos = fn_off + size
        htype, size = self._header(pos, end)
        if htype == PXAR_HARDLINK:
            if is_target:
                raise PxarError(f"hardlink at {fn_off:#x} points at another hardlink")
            c = self._content(pos, size)
            back = struct.unpack_from("<Q", c)[0] if len(c) >= 8 else 0
            target = fn_off - back
            if back == 0 or target < 0:
                raise PxarError(f"{path}: hardlink offset {back} is impossible")
            with self._lock:
                node = self._by_offset.get(target)
            if node is None:
                _tname, node = self._child(target, None, "<hardlink target>", is_target=True)
            node.nlink += 1
            return name, node
        node = self._parse_entry(pos, end, path)
        if not isinstance(node, Dir):
            with self._lock:
                node = self._by_offset.setdefault(fn_off, node)
        return name, node

    # -- damage mapping ------------------------------------------------------------
    def files_in(self, stream: Source, ranges):
        """Paths of the regular files whose contents lie in any ``(start, length)`` of
        ``stream`` (one walk of the tree for all ranges)."""
        import bisect

        ranges = sorted(ranges)
        starts = [s for s, _ in ranges]
        out = []
        for path, node in walk(self.root()):
            src = getattr(node, "source", None)
            if src is None or node.kind != "file":
                continue
            base = getattr(src, "parent", None)
            off = getattr(src, "offset", None)
            if isinstance(src, PayloadRefSource):
                base, off = src.stream, src.data_offset
            if base is not stream or off is None:
                continue
            end = off + max(src.size, 1)
            i = bisect.bisect_right(starts, end - 1) - 1  # last range starting before the file ends
            if i >= 0 and ranges[i][0] + ranges[i][1] > off:
                out.append("/" + path)
        return out


class PayloadRefSource(Source):
    """A v2 file's data: the PAYLOAD item at ``offset`` of the payload stream.

    The PAYLOAD header is checked on first read (type and size), as the pxar accessor does.
    """

    def __init__(self, stream: Source, offset, size, label):
        super().__init__()
        self.stream = stream
        self.offset = offset
        self.data_offset = offset + HEADER_SIZE
        self.size = size
        self.label = label
        self._checked = False

    def _check(self):
        h = self.stream.read(self.offset, HEADER_SIZE)
        htype, full = struct.unpack("<QQ", h)
        if htype != PXAR_PAYLOAD or full != self.size + HEADER_SIZE:
            raise UnreadableError(f"{self.label}: no PAYLOAD of {self.size} bytes at {self.offset:#x} "
                                  f"of the payload stream", [(0, self.size)])
        self._checked = True

    def _read(self, offset, length):
        if not self._checked:
            self._check()
        return self.stream.read(self.data_offset + offset, length)

    def _block_status(self, offset, length):
        return [(o - self.data_offset, n, s) for o, n, s in
                self.stream.block_status(self.data_offset + offset, length)]
