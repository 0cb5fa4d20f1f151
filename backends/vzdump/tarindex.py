"""Container backups (vzdump-lxc-*.tar[.zst|.gz|.lzo]) browsable like ratarmount does it.

One pass over the decoded stream lists the members with Python's ``tarfile`` in stream
mode (POSIX pax headers, GNU sparse 1.0 maps, long names, hardlinks); the member list is
kept in the sidecar index, and files are slices of the decoded stream, so any file can be
read at any offset without unpacking.  After a lost region (a gap in a compressed stream
or a corrupt header) the next valid header is searched for (``ustar`` magic at offset 257
and a correct header checksum) and listing resumes there.

References: POSIX.1-2001 pax / ustar header layout; GNU tar manual "Sparse Formats"
(1.0: map at the start of the data); pve-container ``src/PVE/VZDump/LXC.pm`` (flags, the
``./etc/vzdump/pct.conf`` member first); ratarmount (member index + random access).
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import stat
import tarfile
import threading
import weakref

from pvfs.nodes import Dir, File, Special, Symlink
from pvfs.posixacl import ACL_UNDEFINED_ID, posix_acl_xattr
from pvfs.source import ExtentSource, MissingSource, SliceSource, concat

from . import header_ok  # (shared with the light declaration)
from .streams import GapError, SequentialReader

MAX_MEMBERS = 10_000_000
TYPES = {tarfile.REGTYPE: "file", tarfile.AREGTYPE: "file", tarfile.CONTTYPE: "file",
         tarfile.GNUTYPE_SPARSE: "file", tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink",
         tarfile.LNKTYPE: "hardlink", tarfile.CHRTYPE: "chr", tarfile.BLKTYPE: "blk",
         tarfile.FIFOTYPE: "fifo"}
IFMT = {"chr": stat.S_IFCHR, "blk": stat.S_IFBLK, "fifo": stat.S_IFIFO}


class _PushbackFile:
    """File object for tarfile over a SequentialReader, with bytes pushed back in front."""

    def __init__(self, reader: SequentialReader, front=b""):
        self.r = reader
        self.front = front

    def read(self, n=-1):
        if n is None or n < 0:
            n = 1 << 30
        if self.front:
            b, self.front = self.front[:n], self.front[n:]
            if len(b) < n:
                b += self.r.read(n - len(b))
            return b
        return self.r.read(n)


def _find_header(r: SequentialReader, limit=1 << 40):
    """Search forward for a valid header; returns (offset, bytes from there) or None."""
    buf = b""
    buf_off = r.pos
    scanned = 0
    while scanned < limit:
        try:
            more = r.read(1 << 20)
        except GapError:
            buf, buf_off = b"", r.pos
            continue
        if not more:
            return None
        if not buf:
            buf_off = r.pos - len(more)
        buf += more
        scanned += len(more)
        i = buf.find(b"ustar", 257)
        while i >= 0:
            start = i - 257
            if start + 512 <= len(buf) and header_ok(buf[start:start + 512]):
                return buf_off + start, buf[start:]
            i = buf.find(b"ustar", i + 1)
        keep = max(0, len(buf) - 1024)
        buf_off += keep
        buf = buf[keep:]
    return None


def index_tar(pieces, progress=None, emit=None):
    """List members.  With ``emit``, each member dict is passed to it (in archive order)
    and the list returned is empty; returns (members, problems)."""
    r = SequentialReader(pieces)
    members = []
    problems = []
    base = 0
    front = b""
    count = 0
    pending = None  # held back one member: a gap may still mark its data as lost

    def push(m):
        nonlocal pending
        if pending is not None:
            (emit or members.append)(pending)
        pending = m

    try:
        while True:
            try:
                tf = tarfile.open(fileobj=_PushbackFile(r, front), mode="r|", ignore_zeros=False)
                for m in tf:
                    push(_member(m, base))
                    count += 1
                    if count >= MAX_MEMBERS:
                        problems.append(("error", "too-many-members", None, f"more than {MAX_MEMBERS} members"))
                        return members, problems
                    if progress is not None:
                        progress(r.pos)
                r.drain()
                return members, problems
            except GapError as e:
                gap = e.gap
                last = pending
                if last is not None and last["type"] == "file" and last["data"] + last["stored"] > gap.offset:
                    last["lost_from"] = max(0, gap.offset - last["data"])
                problems.append(("error", "stream-gap", gap, f"{e}; member list resumes at the next header"))
            except (tarfile.TarError, EOFError) as e:
                problems.append(("error", "bad-header", None,
                                 f"tar listing stopped near decoded offset {r.pos:#x}: {e}; "
                                 f"searching for the next header"))
            found = _find_header(r)
            if found is None:
                return members, problems
            base, front = found
    finally:
        push(None)


def _member(m, base):
    kind = TYPES.get(m.type, "other")
    if m.issparse():
        kind = "file"
    xattrs = {k[len("SCHILY.xattr."):]: base64.b64encode(v.encode("utf-8", "surrogateescape")).decode()
              for k, v in m.pax_headers.items() if k.startswith("SCHILY.xattr.")}
    for rec, name in (("SCHILY.acl.access", "system.posix_acl_access"),
                      ("SCHILY.acl.default", "system.posix_acl_default")):
        if rec in m.pax_headers:
            value = acl_text_to_xattr(m.pax_headers[rec])
            if value is not None:
                xattrs[name] = base64.b64encode(value).decode()
    stored = m.size if not m.issparse() else sum(n for _, n in m.sparse)
    return {
        "path": m.name, "type": kind, "mode": m.mode, "uid": m.uid, "gid": m.gid,
        "mtime": m.mtime, "size": m.size, "data": base + m.offset_data, "stored": stored,
        "link": m.linkname, "major": m.devmajor, "minor": m.devminor,
        "sparse": [list(x) for x in m.sparse] if m.sparse else None, "xattrs": xattrs,
    }


ACL_TAGS = {"user": (1, 2), "u": (1, 2), "group": (4, 8), "g": (4, 8), "mask": (0x10, 0x10),
            "m": (0x10, 0x10), "other": (0x20, 0x20), "o": (0x20, 0x20)}


def acl_text_to_xattr(text):
    """A GNU tar/star ACL text (``user::rw-,user:1000:r--,group::r-x,mask::r-x,other::---``,
    comma or newline separated, ``#`` comments) as a ``system.posix_acl_*`` value; None if
    it has no usable entry."""
    entries = []
    for item in text.replace("\n", ",").split(","):
        item = item.split("#", 1)[0].split("\t", 1)[0].strip()
        parts = item.split(":")
        if len(parts) < 3 or parts[0] not in ACL_TAGS:
            continue
        tag_obj, tag_named = ACL_TAGS[parts[0]]
        perm = sum(bit for ch, bit in zip(parts[2][:3].ljust(3, "-"), (4, 2, 1), strict=False) if ch != "-")
        if parts[1]:
            ident = parts[3] if len(parts) > 3 and parts[3].isdigit() else parts[1]
            if not ident.isdigit():
                continue  # a user name without a numeric id: cannot be mapped offline
            entries.append((tag_named, int(ident), perm))
        else:
            entries.append((tag_obj, ACL_UNDEFINED_ID, perm))
    return posix_acl_xattr(entries) if entries else None


def _norm(path):
    return "/".join(p for p in path.split("/") if p not in ("", "."))


class MemberDB:
    """The member index in SQLite (a sidecar file, or memory): one row per member, looked up
    by parent folder, so directories are listed lazily and nothing is held in Python."""

    COLS = ("path", "parent", "name", "type", "mode", "uid", "gid", "mtime", "size", "data", "stored",
            "link", "major", "minor", "sparse", "xattrs", "lost_from")

    def __init__(self, path=None, create=True, uri=False):
        self.path = path
        self.conn = sqlite3.connect(path or ":memory:", check_same_thread=False, uri=uri)
        self.lock = threading.Lock()
        self._dirs: dict = {}
        if create:
            self.conn.execute("CREATE TABLE members (id INTEGER PRIMARY KEY, path TEXT, parent TEXT, "
                              "name TEXT, type TEXT, mode INTEGER, uid INTEGER, gid INTEGER, mtime REAL, "
                              "size INTEGER, data INTEGER, stored INTEGER, link TEXT, major INTEGER, "
                              "minor INTEGER, sparse TEXT, xattrs TEXT, lost_from INTEGER, "
                              "nlink INTEGER DEFAULT 1)")

    @classmethod
    def from_members(cls, members):
        db = cls()
        for m in members:
            db.add(m)
        db.finish()
        return db

    def _insert(self, row):
        cur = self.conn.execute(f"INSERT INTO members ({','.join(self.COLS)}) VALUES "
                                f"({','.join('?' * len(self.COLS))})", row)
        return cur.lastrowid

    def _ensure_dir(self, path):
        """Folders a tar names only implicitly (``a/b/c`` without ``a/``) get a row too."""
        missing = []
        while path not in self._dirs:
            missing.append(path)
            if not path:
                break
            path = path.rpartition("/")[0]
        for p in reversed(missing):  # parents first (no recursion: paths may be very deep)
            parent, _, name = p.rpartition("/")
            self._dirs[p] = self._insert((p, parent if p else None, name, "dir", 0o755, 0, 0, 0.0,
                                          0, 0, 0, "", 0, 0, None, "{}", None))

    def add(self, m):
        path = _norm(m["path"])
        parent, _, name = path.rpartition("/")
        if path:
            self._ensure_dir(parent)
        row = (path, parent if path else None, name, m["type"], m["mode"], m["uid"], m["gid"], m["mtime"],
               m["size"], m["data"], m["stored"], m["link"], m["major"], m["minor"],
               json.dumps(m["sparse"]) if m["sparse"] else None, json.dumps(m["xattrs"]), m.get("lost_from"))
        if m["type"] == "dir" and path in self._dirs:
            self.conn.execute(f"UPDATE members SET {','.join(c + '=?' for c in self.COLS)} WHERE id=?",
                              row + (self._dirs[path],))
            return
        rid = self._insert(row)
        if m["type"] == "dir":
            self._dirs[path] = rid

    def finish(self):
        if "" not in self._dirs:
            self._ensure_dir("")
        c = self.conn
        c.execute("CREATE INDEX IF NOT EXISTS by_parent ON members(parent)")
        c.execute("CREATE INDEX IF NOT EXISTS by_path ON members(path)")
        c.execute("CREATE INDEX IF NOT EXISTS by_data ON members(data)")
        links = c.execute("SELECT link, count(*) FROM members WHERE type='hardlink' GROUP BY link").fetchall()
        for link, n in links:
            c.execute("UPDATE members SET nlink=? WHERE id=(SELECT min(id) FROM members WHERE path=? "
                      "AND type!='hardlink')", (1 + n, _norm(link)))
        c.commit()
        self._dirs = {}

    def query(self, sql, args=()):
        with self.lock:
            return self.conn.execute(sql, args).fetchall()

    def children(self, parent):
        return self.query("SELECT * FROM members WHERE parent=? ORDER BY id", (parent,))

    def get(self, path, before=None):
        if before is None:
            rows = self.query("SELECT * FROM members WHERE path=? ORDER BY id LIMIT 1", (path,))
        else:
            rows = self.query("SELECT * FROM members WHERE path=? AND id<? ORDER BY id DESC LIMIT 1",
                              (path, before))
        return rows[0] if rows else None

    def count(self):
        return self.query("SELECT count(*) FROM members")[0][0]

    def close(self):
        self.conn.close()


# row positions (SELECT *)
R_ID, R_PATH, R_PARENT, R_NAME, R_TYPE, R_MODE, R_UID, R_GID, R_MTIME, R_SIZE, R_DATA, R_STORED, \
    R_LINK, R_MAJOR, R_MINOR, R_SPARSE, R_XATTRS, R_LOST, R_NLINK = range(19)


class TarTree:
    """Nodes for the members, made when their folder is first listed.  A file and its
    hardlinks are one node (kept by row id while anything holds it)."""

    def __init__(self, db: MemberDB, stream, bad, report=None, damage=None):
        self.db = db
        self.stream = stream
        self.bad = bad
        self.report = report  # report(path, message, ranges)
        self.damage = damage  # DamageReport for name clashes
        self._by_id = weakref.WeakValueDictionary()
        self._lock = threading.RLock()

    def root(self):
        row = self.db.get("")
        d = Dir(mode=0o755, loader=lambda d: self._load(d, ""))
        if row is not None:
            self._meta(d, row)
        return d

    @staticmethod
    def _meta(node, row):
        if row[R_TYPE] == "dir":
            node.mode = stat.S_IFDIR | (row[R_MODE] & 0o7777)
        node.mtime = node.atime = node.ctime = row[R_MTIME]
        node.uid, node.gid = row[R_UID], row[R_GID]
        for k, v in json.loads(row[R_XATTRS] or "{}").items():
            node.xattrs[k.encode("utf-8", "surrogateescape")] = base64.b64decode(v)

    def _load(self, d, path):
        for row in self.db.children(path):
            try:
                node = self._node(row)
            except (ValueError, TypeError, OSError) as e:
                if self.report:
                    self.report("/" + row[R_PATH], f"member cannot be shown: {e}", ())
                continue
            if node is not None:
                d.add(row[R_NAME], node, report=self.damage, layer="vzdump",
                      path_hint=path)

    def _node(self, row):
        kind = row[R_TYPE]
        if kind == "dir":
            d = Dir(mode=0o755, loader=lambda d, p=row[R_PATH]: self._load(d, p))
            self._meta(d, row)
            return d
        if kind == "hardlink":
            target = self.db.get(_norm(row[R_LINK]), before=row[R_ID])
            if target is None or target[R_TYPE] in ("dir", "hardlink"):
                if self.report:
                    self.report("/" + row[R_PATH], f"hardlink to {row[R_LINK]!r}, which is not in the archive before it", ())
                return None
            return self._node(target)
        with self._lock:
            node = self._by_id.get(row[R_ID])
            if node is not None:
                return node
            kw = dict(mtime=row[R_MTIME], uid=row[R_UID], gid=row[R_GID])
            if kind == "file":
                node = File(self._file_source(row), mode=row[R_MODE], **kw)
            elif kind == "symlink":
                node = Symlink(row[R_LINK].encode("utf-8", "surrogateescape"), **kw)
            elif kind in IFMT:
                major, minor = row[R_MAJOR] or 0, row[R_MINOR] or 0
                rdev = os.makedev(major, minor) if kind != "fifo" and major < (1 << 31) and minor < (1 << 31) else 0
                node = Special(IFMT[kind] | (row[R_MODE] & 0o7777), rdev=rdev, **kw)
            else:
                return None
            node.nlink = row[R_NLINK] or 1
            self._meta(node, row)
            self._by_id[row[R_ID]] = node
            return node

    def _file_source(self, row):
        label, size, data = row[R_PATH], row[R_SIZE], row[R_DATA]
        sparse = json.loads(row[R_SPARSE]) if row[R_SPARSE] else None
        if sparse:
            ext, pos = [], data
            for off, n in sparse:
                if n:
                    ext.append((off, n, self.stream, pos))
                    pos += n
            return ExtentSource(size, ext, label=label)
        lost = row[R_LOST]
        if lost is not None:
            good = SliceSource(self.stream, data, max(0, lost), label=label, bad=self.bad)
            return concat([good, MissingSource(size - max(0, lost), "lost in the compressed stream",
                                               bad=self.bad, label=label)], label=label)
        return SliceSource(self.stream, data, size, label=label, bad=self.bad)


def build_tree(members, stream, bad, report=None):
    """The root Dir for a member list or a :class:`MemberDB` (tests, small archives)."""
    db = members if isinstance(members, MemberDB) else MemberDB.from_members(members)
    return TarTree(db, stream, bad, report).root()
