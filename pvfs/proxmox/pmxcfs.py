"""The Proxmox cluster file system's database: ``/var/lib/pve-cluster/config.db``.

pmxcfs keeps all of ``/etc/pve`` (VM and container configs, ``storage.cfg``,
``corosync.conf``, ``priv/``) in one SQLite table, written in WAL mode::

    CREATE TABLE tree (inode INTEGER PRIMARY KEY NOT NULL, parent INTEGER NOT NULL,
                       version INTEGER NOT NULL, writer INTEGER NOT NULL,
                       mtime INTEGER NOT NULL, type INTEGER NOT NULL,
                       name TEXT NOT NULL, data BLOB)

``type`` is a ``dirent`` type (``DT_DIR`` 4, ``DT_REG`` 8); ``parent`` 0 is the
root; the row with inode 0, ``__version__``, carries the version of the
whole tree (every write bumps it, so two nodes' databases compare by it).

The newest changes may live only in ``config.db-wal``.  Both files are
copied into a private temporary directory and read there with Python's
sqlite3 (which applies the WAL); the originals are never opened for
writing.  When that fails the reader falls back, in order, to the database
without its WAL, the newest ``backup/config-<time>.sql.gz`` dump (``pvecm add``
writes them), and finally a page-by-page read of the damaged file (the leaf
pages of the ``tree`` b-tree decoded here, following the SQLite file format).

References:
- proxmox/pve-cluster ``src/pmxcfs/database.c`` (schema, ``__version__``,
  ``bdb_backend_load_index``: what a loadable tree is), ``memdb.h`` (types).
- proxmox/pve-cluster ``src/PVE/Cluster/Setup.pm`` (``backup_cfs_database``:
  ``sqlite3 .dump`` gzipped into ``/var/lib/pve-cluster/backup/``).
- https://www.sqlite.org/fileformat2.html (header, b-tree pages, records,
  overflow pages; WAL header and frame checksums).
"""

from __future__ import annotations

import gzip
import os
import posixpath
import re
import sqlite3
import struct
import tempfile
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import PvfsError, UnreadableError

if TYPE_CHECKING:
    from ..nodes import Dir, Node

DB_DIR = "var/lib/pve-cluster"
DB_PATH = f"{DB_DIR}/config.db"
BACKUP_DIR = f"{DB_DIR}/backup"
DT_DIR = 4
DT_REG = 8
VERSION_NAME = "__version__"
MAX_DB_BYTES = 256 << 20  # pmxcfs refuses a tree over 128 MiB (memdb.h); twice that, at most
MAX_ROWS = 1_000_000
MAX_FILE_BYTES = 16 << 20  # one /etc/pve file: pmxcfs allows 1 MiB (memdb.h)
MAX_DEPTH = 64  # directory nesting in /etc/pve
SQL_SECONDS = 10.0  # a hostile schema (a view with a recursive CTE) must not hang discovery
_BACKUP_RE = re.compile(r"^config-(\d+)\.sql\.gz$")


class PmxcfsError(PvfsError):
    pass


@dataclass
class Entry:
    """One row of ``tree``."""

    inode: int
    parent: int
    version: int
    writer: int
    mtime: int
    type: int
    name: str
    data: bytes | None
    lost_from: int | None = None  # salvaged: bytes of data from here on are unknown


@dataclass
class ClusterDB:
    """The ``/etc/pve`` of one node as its database recorded it."""

    entries: dict[int, Entry]
    version: int  # of the whole tree (the ``__version__`` row; else the highest row)
    mtime: int
    origin: str  # "config.db + WAL", "config.db", "backup config-<t>.sql.gz", "salvaged pages"
    stale: bool = False  # not the newest state the node had (WAL lost, older dump)
    problems: list[tuple[str, str, str]] = field(default_factory=list)  # (severity, code, msg)
    where: str = ""  # tree path of the root it was found in
    _paths: dict | None = field(default=None, repr=False)

    def paths(self) -> dict[str, Entry]:
        """``{"nodes/pve/qemu-server/100.conf": entry, ...}`` for every reachable entry;
        entries whose parent chain is broken or loops are left out (see :meth:`orphans`)."""
        if self._paths is None:
            self._paths = self._walk()
        return self._paths

    def _walk(self) -> dict[str, Entry]:
        cache: dict[int, str | None] = {0: ""}
        out = {}
        for inode, e in self.entries.items():
            if inode == 0:
                continue
            chain = []
            cur = e
            path = None
            for _ in range(MAX_DEPTH):
                chain.append(cur)
                if cur.parent in cache:
                    path = cache[cur.parent]
                    break
                nxt = self.entries.get(cur.parent)
                if nxt is None or nxt.type != DT_DIR or nxt in chain:
                    break
                cur = nxt
            for c in reversed(chain):
                if path is None:
                    cache[c.inode] = None
                    continue
                path = f"{path}/{c.name}" if path else c.name
                cache[c.inode] = path
            p = cache.get(inode)
            if p is not None:
                out[p] = e
        return out

    def orphans(self) -> list[Entry]:
        reachable = {id(e) for e in self.paths().values()}
        return [e for i, e in self.entries.items() if i != 0 and id(e) not in reachable]

    def read(self, path: str) -> bytes | None:
        e = self.paths().get(path.strip("/"))
        if e is None or e.type != DT_REG:
            return None
        return e.data or b""


# ---------------------------------------------------------------------------
# Where the files are: a recovered root (node tree) or a directory on this machine.

class HostFiles:
    """Read-only access to one recovered root file system by relative path."""

    label = ""

    def read(self, rel: str, limit: int = MAX_DB_BYTES) -> bytes | None:
        """The whole file, or None when absent; raises :class:`PmxcfsError` when it
        is larger than ``limit`` and UnreadableError when its bytes cannot be read."""
        raise NotImplementedError

    def exists(self, rel: str) -> bool:
        raise NotImplementedError

    def listdir(self, rel: str) -> list[str]:
        raise NotImplementedError


class NodeFiles(HostFiles):
    """A directory node of the pvfs tree (a ZFS dataset, a guest filesystem, a pxar)."""

    def __init__(self, root: Dir, label: str = "") -> None:
        self.root = root
        self.label = label

    def _get(self, rel: str) -> Node | None:
        from ..nodes import Dir

        node: Node | None = self.root
        for part in [p for p in rel.split("/") if p]:
            if not isinstance(node, Dir):
                return None
            node = node.get(part)
            if node is None:
                return None
        return node

    def read(self, rel: str, limit: int = MAX_DB_BYTES) -> bytes | None:
        from ..nodes import File

        node = self._get(rel)
        if not isinstance(node, File):
            return None
        size = node.source.size
        if size > limit:
            raise PmxcfsError(f"{rel}: {size} bytes, more than the {limit} a cluster database holds")
        return node.source.read(0, size)

    def exists(self, rel: str) -> bool:
        return self._get(rel) is not None

    def listdir(self, rel: str) -> list[str]:
        from ..nodes import Dir

        node = self._get(rel)
        return sorted(node.children()) if isinstance(node, Dir) else []


class OsDirFiles(HostFiles):
    """A directory copy of a host root on this machine (opened read-only)."""

    def __init__(self, path: str, label: str = "") -> None:
        self.path = path
        self.label = label or path

    def _p(self, rel: str) -> str:
        return os.path.join(self.path, *[p for p in rel.split("/") if p not in ("", ".", "..")])

    def read(self, rel: str, limit: int = MAX_DB_BYTES) -> bytes | None:
        p = self._p(rel)
        if not os.path.isfile(p):
            return None
        size = os.path.getsize(p)
        if size > limit:
            raise PmxcfsError(f"{rel}: {size} bytes, more than the {limit} a cluster database holds")
        with open(p, "rb") as f:
            return f.read(limit + 1)

    def exists(self, rel: str) -> bool:
        return os.path.lexists(self._p(rel))

    def listdir(self, rel: str) -> list[str]:
        try:
            return sorted(os.listdir(self._p(rel)))
        except OSError:
            return []


# ---------------------------------------------------------------------------
# Reading with SQLite (a private copy).

def _bounded(con: sqlite3.Connection) -> None:
    """Limits for a connection to a database we did not write: no value above what a
    pmxcfs file can be, no schema code trusted, at most SQL_SECONDS of work."""
    con.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_FILE_BYTES)
    con.execute("PRAGMA trusted_schema=OFF")
    deadline = time.monotonic() + SQL_SECONDS
    con.set_progress_handler(lambda: 1 if time.monotonic() > deadline else 0, 10_000)


def _sql_rows(dbfile: str) -> list[Entry]:
    """All rows of ``tree`` in a database file of our own (a temporary copy)."""
    con = sqlite3.connect(dbfile, isolation_level=None)
    try:
        _bounded(con)
        cur = con.execute("SELECT inode, parent, version, writer, mtime, type, name, data FROM tree")
        return _entries(cur, MAX_ROWS)
    finally:
        con.close()


def _entries(rows: Iterable[Sequence], limit: int) -> list[Entry]:
    out = []
    total = 0
    for row in rows:
        if len(out) >= limit:
            raise PmxcfsError(f"more than {limit} rows in tree")
        total += len(row[7]) if isinstance(row[7], (bytes, str)) else 0
        if total > MAX_DB_BYTES:
            raise PmxcfsError(f"more than {MAX_DB_BYTES} bytes of file data in tree")
        inode, parent, version, writer, mtime, typ, name, data = row
        if not all(isinstance(v, int) for v in (inode, parent, version, writer, mtime, typ)):
            continue
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        if not isinstance(name, str) or not name:
            continue
        if isinstance(data, str):
            data = data.encode()
        out.append(Entry(inode, parent, version, writer & 0xFFFFFFFF, mtime & 0xFFFFFFFF,
                         typ & 0xFF, name, data if isinstance(data, bytes) else None))
    return out


def wal_check(wal: bytes, page_size: int | None = None) -> tuple[int, int, str | None]:
    """Check the frames of a WAL file as SQLite does on recovery.

    Returns ``(committed frames, frames after the last valid commit, problem)``:
    frames after a checksum or salt mismatch, or of a transaction that never
    committed, are ignored by SQLite (they are lost, not damage of the database).
    """
    if len(wal) < 32:
        return 0, 0, "the WAL file is shorter than its header" if wal else None
    magic, _ver, psize, _ckpt, salt1, salt2, c1, c2 = struct.unpack(">8I", wal[:32])
    if magic not in (0x377F0682, 0x377F0683):
        return 0, 0, "the WAL header has no WAL magic"
    big = magic & 1
    if psize < 512 or psize > 65536 or psize & (psize - 1):
        return 0, 0, f"the WAL header has a bad page size {psize}"

    def cksum(data: bytes, s0: int, s1: int) -> tuple[int, int]:
        n = len(data) // 4
        words = struct.unpack((">" if big else "<") + f"{n}I", data[: n * 4])
        for i in range(0, n, 2):
            s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
            s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
        return s0, s1

    s = cksum(wal[:24], 0, 0)
    if s != (c1, c2):
        return 0, 0, "the WAL header checksum does not match"
    frame = 24 + psize
    nframes = (len(wal) - 32) // frame
    committed = 0
    for i in range(nframes):
        off = 32 + i * frame
        pgno, commit, fs1, fs2, fc1, fc2 = struct.unpack(">6I", wal[off: off + 24])
        if (fs1, fs2) != (salt1, salt2) or pgno == 0:
            break
        s = cksum(wal[off: off + 8], *s)
        s = cksum(wal[off + 24: off + frame], *s)
        if s != (fc1, fc2):
            break
        if commit:
            committed = i + 1
    return committed, nframes - committed, None


def _read_with_sqlite(db: bytes, wal: bytes | None) -> list[Entry]:
    with tempfile.TemporaryDirectory(prefix="pvfs-pmxcfs-") as tmp:
        path = os.path.join(tmp, "config.db")
        with open(path, "wb") as f:
            f.write(db)
        if wal:
            with open(path + "-wal", "wb") as f:
                f.write(wal)
        return _sql_rows(path)


# ---------------------------------------------------------------------------
# The SQL dumps in backup/.

_DUMP_ACTIONS = {sqlite3.SQLITE_CREATE_TABLE, sqlite3.SQLITE_INSERT, sqlite3.SQLITE_TRANSACTION,
                 sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_READ, sqlite3.SQLITE_SELECT,
                 sqlite3.SQLITE_CREATE_INDEX, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE}


def _dump_authorizer(action: int, arg1: str | None, arg2: str | None, dbname: str | None,
                     source: str | None) -> int:
    """Only what ``sqlite3 .dump`` of a pmxcfs database does, in the in-memory database
    (a hostile dump must not ATTACH a file, load an extension or touch anything else)."""
    if action == sqlite3.SQLITE_PRAGMA:
        return sqlite3.SQLITE_OK if arg1 in ("foreign_keys", "writable_schema") else sqlite3.SQLITE_DENY
    if action not in _DUMP_ACTIONS:
        return sqlite3.SQLITE_DENY
    if dbname not in (None, "main"):
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def gunzip_bounded(data: bytes, limit: int = MAX_DB_BYTES) -> bytes:
    d = zlib.decompressobj(wbits=47)
    out = d.decompress(data, limit + 1)
    if len(out) > limit:
        raise PmxcfsError(f"decompresses to more than {limit} bytes")
    if not d.eof:
        raise PmxcfsError("truncated gzip stream")
    return out


def read_dump(gz: bytes) -> list[Entry]:
    """The rows of a gzipped ``sqlite3 .dump`` of config.db."""
    try:
        sql = gunzip_bounded(gz).decode("utf-8")
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, UnicodeDecodeError) as e:
        raise PmxcfsError(f"not a readable gzipped SQL dump: {e}") from None
    con = sqlite3.connect(":memory:", isolation_level=None)
    try:
        _bounded(con)
        con.execute(f"PRAGMA max_page_count={MAX_DB_BYTES // 4096}")  # 4 KiB pages in memory
        con.set_authorizer(_dump_authorizer)
        con.executescript(sql)
        cur = con.execute("SELECT inode, parent, version, writer, mtime, type, name, data FROM tree")
        return _entries(cur, MAX_ROWS)
    finally:
        con.close()


# ---------------------------------------------------------------------------
# Page by page: the b-tree of ``tree`` read directly from a damaged file.

def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    v = 0
    for i in range(8):
        if pos + i >= len(buf):
            raise ValueError("varint past the end")
        b = buf[pos + i]
        v = (v << 7) | (b & 0x7F)
        if not b & 0x80:
            return v, pos + i + 1
    if pos + 8 >= len(buf):
        raise ValueError("varint past the end")
    return (v << 8) | buf[pos + 8], pos + 9


def _record(payload: bytes) -> list:
    """Decode an SQLite record (header of serial types, then the values)."""
    hlen, pos = _varint(payload, 0)
    if hlen > len(payload) or hlen < 1:
        raise ValueError("bad record header size")
    types = []
    while pos < hlen:
        t, pos = _varint(payload, pos)
        types.append(t)
        if len(types) > 64:
            raise ValueError("too many columns")
    body = hlen
    out = []
    for t in types:
        if t == 0:
            out.append(None)
            continue
        if t in (8, 9):
            out.append(t - 8)
            continue
        if 1 <= t <= 6:
            n = (1, 2, 3, 4, 6, 8)[t - 1]
            if body + n > len(payload):
                raise ValueError("value past the record")
            out.append(int.from_bytes(payload[body: body + n], "big", signed=True))
            body += n
            continue
        if t == 7:
            if body + 8 > len(payload):
                raise ValueError("value past the record")
            out.append(struct.unpack(">d", payload[body: body + 8])[0])
            body += 8
            continue
        if t < 12:
            raise ValueError(f"reserved serial type {t}")
        n = (t - 12) // 2
        if body + n > len(payload):
            raise ValueError("value past the record")
        v = payload[body: body + n]
        out.append(v if t % 2 == 0 else v.decode("utf-8", "replace"))
        body += n
    return out


class PageReader:
    """The pages of a (possibly truncated or damaged) SQLite database file."""

    def __init__(self, data: bytes, wal: dict[int, bytes] | None = None) -> None:
        wal = wal or {}
        if wal.get(1, b"").startswith(b"SQLite format 3\0") and len(data) < 100:
            data = wal[1]  # the header lives in the WAL only
        if len(data) < 100 or not data.startswith(b"SQLite format 3\0"):
            raise PmxcfsError("no SQLite header")
        ps = struct.unpack(">H", data[16:18])[0]
        self.page_size = 65536 if ps == 1 else ps
        if self.page_size < 512 or self.page_size & (self.page_size - 1):
            raise PmxcfsError(f"bad page size {ps}")
        self.usable = self.page_size - data[20]
        if self.usable < 480:
            raise PmxcfsError("bad reserved space")
        self.data = data
        self.wal = {n: p for n, p in wal.items() if len(p) == self.page_size and n >= 1}
        self.file_pages = self.pages = len(data) // self.page_size
        self.header_pages = struct.unpack(">I", (self.page(1) or data)[28:32])[0]
        self.lost_ranges: list[tuple[int | None, int | None]] = []

    def numbers(self) -> list[int]:
        """Every page number that has bytes (the file's and the WAL's)."""
        return sorted(set(range(1, self.file_pages + 1)) | set(self.wal))

    def page(self, n: int) -> bytes | None:
        """Page ``n``: its newest committed image in the WAL, else the file's."""
        if n in self.wal:
            return self.wal[n]
        if n < 1 or n > self.file_pages:
            return None
        return self.data[(n - 1) * self.page_size: n * self.page_size]

    def cells(self, n: int) -> tuple[int, list[int], int | None, bytes]:
        """``(type, [cell offsets], right pointer, page bytes)`` of b-tree page ``n``."""
        p = self.page(n)
        if p is None:
            raise ValueError(f"page {n} is beyond the end of the file")
        h = 100 if n == 1 else 0
        ptype = p[h]
        if ptype not in (2, 5, 10, 13):
            raise ValueError(f"page {n} is not a b-tree page (type {ptype})")
        ncells = struct.unpack(">H", p[h + 3: h + 5])[0]
        right = struct.unpack(">I", p[h + 8: h + 12])[0] if ptype in (2, 5) else None
        start = h + (12 if ptype in (2, 5) else 8)
        if start + 2 * ncells > self.usable:
            raise ValueError(f"page {n}: {ncells} cells do not fit")
        offs = list(struct.unpack(f">{ncells}H", p[start: start + 2 * ncells]))
        return ptype, offs, right, p

    def leaf_payload(self, p: bytes, off: int, lost: list) -> tuple[int, bytes]:
        """``(rowid, payload)`` of a table-leaf cell, following overflow pages."""
        size, pos = _varint(p, off)
        rowid, pos = _varint(p, pos)
        if size > MAX_DB_BYTES:
            raise ValueError("payload larger than a database")
        u = self.usable
        x = u - 35
        if size <= x:
            local = size
        else:
            m = ((u - 12) * 32 // 255) - 23
            k = m + (size - m) % (u - 4)
            local = k if k <= x else m
        if pos + local > len(p):
            raise ValueError("cell past the page")
        out = bytearray(p[pos: pos + local])
        if local < size:
            if pos + local + 4 > len(p):
                raise ValueError("overflow pointer past the page")
            nxt = struct.unpack(">I", p[pos + local: pos + local + 4])[0]
            seen = set()
            while len(out) < size:
                op = self.page(nxt)
                if op is None or nxt in seen:
                    lost.append((rowid, len(out)))  # the bytes from here on are unknown
                    out.extend(b"\0" * (size - len(out)))
                    break
                seen.add(nxt)
                nxt = struct.unpack(">I", op[:4])[0]
                out.extend(op[4: 4 + min(u - 4, size - len(out))])
        return rowid, bytes(out)

    def table_root(self, name: str) -> int | None:
        """The root page of table ``name`` from ``sqlite_master`` (page 1's b-tree)."""
        for _rowid, rec in self.walk(1, [], [], set()):
            if len(rec) >= 5 and rec[0] == "table" and rec[1] == name and isinstance(rec[3], int):
                return rec[3]
        return None

    def walk(self, root: int, bad: list, lost: list,
             visited: set) -> Iterator[tuple[int, list]]:
        """Yield ``(rowid, record)`` of a table b-tree; unreadable pages go to ``bad``, and
        the rowid range each of them held (from the interior page's keys) to
        ``self.lost_ranges``."""
        stack = [(root, None, None)]
        while stack:
            n, lo, hi = stack.pop()
            if n in visited or len(visited) > self.pages + 100_000:  # missing pages count too
                continue
            visited.add(n)
            try:
                ptype, offs, right, p = self.cells(n)
            except ValueError as e:
                bad.append((n, str(e)))
                self.lost_ranges.append((lo, hi))
                continue
            if ptype == 5:
                kids = []
                prev = lo
                for off in offs:
                    if off + 4 <= len(p):
                        child = struct.unpack(">I", p[off: off + 4])[0]
                        try:
                            key = _varint(p, off + 4)[0]
                        except ValueError:
                            key = None
                        kids.append((child, prev, key))
                        prev = key
                kids.append((right, prev, hi))
                stack.extend(reversed(kids))
                continue
            if ptype != 13:
                bad.append((n, "an index page where a table page was expected"))
                self.lost_ranges.append((lo, hi))
                continue
            yield from self._leaf_rows(n, offs, p, bad, lost)

    def _leaf_rows(self, n: int, offs: list[int], p: bytes, bad: list,
                   lost: list) -> Iterator[tuple[int, list]]:
        for off in offs:
            try:
                rowid, payload = self.leaf_payload(p, off, lost)
                yield rowid, [*_record(payload), len(payload)]
            except ValueError as e:
                bad.append((n, f"cell at {off}: {e}"))

    def scan_leaves(self, skip: set, bad: list, lost: list) -> Iterator[tuple[int, list]]:
        """Yield rows of every table-leaf page not in ``skip`` (pages a broken interior
        page no longer points to)."""
        for n in self.numbers():
            if n in skip:
                continue
            p = self.page(n)
            if p is None or p[100 if n == 1 else 0] != 13:
                continue
            try:
                _t, offs, _r, p = self.cells(n)
            except ValueError:
                continue
            yield from self._leaf_rows(n, offs, p, [], lost)


def wal_pages(wal: bytes | None) -> dict[int, bytes]:
    """The newest image of every page in the WAL's committed frames (SQLite's view)."""
    if not wal:
        return {}
    committed, _dropped, why = wal_check(wal)
    if why or not committed:
        return {}
    psize = struct.unpack(">I", wal[8:12])[0]
    out = {}
    for i in range(committed):
        off = 32 + i * (24 + psize)
        out[struct.unpack(">I", wal[off: off + 4])[0]] = wal[off + 24: off + 24 + psize]
    return out


def salvage(db: bytes, wal: bytes | None = None) -> tuple[list[Entry], list[str]]:
    """Rows of ``tree`` read page by page from a damaged database (with the committed
    pages of its WAL on top); returns the rows and what was lost, in words."""
    pr = PageReader(db, wal_pages(wal))
    notes = []
    if pr.wal:
        notes.append(f"{len(pr.wal)} pages taken from config.db-wal")
    have = len([n for n in pr.numbers() if n <= pr.header_pages])
    if pr.header_pages and pr.header_pages > have:
        notes.append(f"the file is truncated: {have} of {pr.header_pages} pages present")
    bad: list = []
    lost: list = []
    visited: set = set()
    root = None
    try:
        root = pr.table_root("tree")
    except ValueError:
        pass
    rows: dict[int, list] = {}
    if root is not None:
        for rowid, rec in pr.walk(root, bad, lost, visited):
            rows[rowid] = rec
    if root is None or bad:
        # Interior pages lost: look at every leaf page the walk did not reach.
        for rowid, rec in pr.scan_leaves(visited, [], lost):
            if len(rec) == 9 and rec[0] is None and isinstance(rec[6], str):
                old = rows.get(rowid)
                if old is None or (isinstance(rec[2], int) and isinstance(old[2], int)
                                   and rec[2] > old[2]):
                    rows[rowid] = rec
        if root is None:
            notes.append("the schema page is unreadable; rows found by scanning every page")
    if bad:
        shown = "; ".join(f"page {n}: {m}" for n, m in bad[:5])
        notes.append(f"{len(bad)} unreadable b-tree pages or cells ({shown})")
    spans: list[list] = []
    for lo, hi in sorted(pr.lost_ranges, key=lambda r: -1 if r[0] is None else r[0]):
        # rowid = inode; the interior page's keys bound what a lost page held
        if any((lo is None or rid > lo) and (hi is None or rid <= hi) for rid in rows):
            continue
        if spans and spans[-1][1] is not None and lo == spans[-1][1]:
            spans[-1][1] = hi
        else:
            spans.append([lo, hi])
    gone = [f"{'' if lo is None else lo + 1}..{'' if hi is None else hi}" for lo, hi in spans]
    if gone:
        notes.append(f"the rows of inodes {', '.join(gone[:10])} are lost")
    out = []
    lost_at = dict(lost)
    for rowid, rec in rows.items():
        if len(rec) != 9:  # 8 columns and the record's length
            continue
        *rec, reclen = rec
        rec = [rowid if rec[0] is None else rec[0], *rec[1:]]
        for e in _entries([rec], MAX_ROWS):
            out.append(e)
            if e.inode not in lost_at or e.data is None:
                continue
            # data is the record's last column: the cut at byte k of the record is byte
            # k - (record length - data length) of the data
            e.lost_from = max(0, min(lost_at[e.inode] - (reclen - len(e.data)), len(e.data)))
            notes.append(f"the data of {e.name!r} (inode {e.inode}) is cut short at byte "
                         f"{e.lost_from}: overflow pages lost (the rest is unreadable)")
    return out, notes


# ---------------------------------------------------------------------------

def _version(entries: list[Entry]) -> tuple[int, int]:
    for e in entries:
        if e.inode == 0 and e.name == VERSION_NAME:
            return e.version, e.mtime
    return max((e.version for e in entries), default=0), max((e.mtime for e in entries), default=0)


def _make(entries: list[Entry], origin: str, stale: bool = False,
          problems: Iterable[tuple[str, str, str]] | None = None) -> ClusterDB:
    version, mtime = _version(entries)
    problems = list(problems or [])
    if entries:
        # a copy that could not be read is no loss when another one gave the tree (the
        # config-stale / config-salvaged entry says what that copy may lack): degraded
        problems = [("warning", code, msg) if sev == "error" and code in _FELL_BACK
                    else (sev, code, msg) for sev, code, msg in problems]
    return ClusterDB({e.inode: e for e in entries}, version, mtime, origin, stale, problems)


#: errors about one copy of the database that a later fallback (config.db without its
#: WAL, a backup dump, the page-by-page salvage) made good
_FELL_BACK = ("config-db-damaged", "config-db-unreadable")


def _read_file(files: HostFiles, rel: str, problems: list[tuple[str, str, str]],
               what: str) -> bytes | None:
    try:
        return files.read(rel)
    except UnreadableError as e:
        problems.append(("error", "config-db-unreadable", f"{what}: {e}"))
    except PmxcfsError as e:
        problems.append(("error", "config-db-unreadable", f"{what}: {e}"))
    return None


def find_backups(files: HostFiles) -> list[tuple[int, str]]:
    """``[(time, relative path)]`` of the SQL dumps in ``backup/``, newest first."""
    out = []
    for name in files.listdir(BACKUP_DIR):
        m = _BACKUP_RE.match(name)
        if m:
            out.append((int(m[1]), posixpath.join(BACKUP_DIR, name)))
    return sorted(out, reverse=True)


def load(files: HostFiles) -> ClusterDB | None:
    """The cluster database of the host root ``files``, or None when it has none.

    Tried in order: config.db with its WAL, config.db alone, the newest
    readable backup dump, the pages of the damaged config.db.  Anything other
    than the first is ``stale`` or partial, and says why in ``problems``.
    """
    problems: list[tuple[str, str, str]] = []
    db = _read_file(files, DB_PATH, problems, "config.db")
    wal = _read_file(files, DB_PATH + "-wal", problems, "config.db-wal") \
        if db is not None else None
    backups = find_backups(files)
    if db is None and not backups and not problems:
        return None
    wal_lost = None
    if db is not None:
        if wal:
            committed, dropped, why = wal_check(wal)
            if why:
                wal_lost = f"config.db-wal is unusable ({why}); its changes are lost"
            elif dropped:
                problems.append(("info", "wal-tail", f"config.db-wal: {dropped} frames after the "
                                 f"last commit are ignored (a write that never finished)"))
        elif files.exists(DB_PATH + "-shm"):
            wal_lost = ("config.db-shm exists but config.db-wal does not: pmxcfs was not "
                        "shut down cleanly and the WAL, with the newest changes, is lost")
        try:
            rows = _read_with_sqlite(db, wal if wal and not wal_lost else None)
            if not rows:
                raise PmxcfsError("no rows in tree")
            if wal_lost:
                problems.append(("warning", "config-stale", wal_lost))
            origin = "config.db + WAL" if wal and not wal_lost else "config.db"
            return _make(rows, origin, bool(wal_lost), problems)
        except (sqlite3.Error, PmxcfsError) as e:
            problems.append(("error", "config-db-damaged",
                             f"config.db{' with its WAL' if wal else ''} cannot be read: {e}"))
        if wal and not wal_lost:
            try:
                rows = _read_with_sqlite(db, None)
                if rows:
                    problems.append(("warning", "config-stale",
                                     "config.db read without its WAL: the newest changes are lost"))
                    return _make(rows, "config.db", True, problems)
            except (sqlite3.Error, PmxcfsError):
                pass
    for t, rel in backups:
        gz = _read_file(files, rel, problems, rel)
        if gz is None:
            continue
        try:
            rows = read_dump(gz)
        except (sqlite3.Error, PmxcfsError) as e:
            problems.append(("warning", "config-backup-damaged", f"{rel}: {e}"))
            continue
        if not rows:
            continue
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))
        why = "config.db is gone" if db is None else "config.db is unreadable"
        problems.append(("warning", "config-stale",
                         f"{why}: /etc/pve comes from the backup dump {posixpath.basename(rel)} "
                         f"of {when} UTC; later changes are lost"))
        return _make(rows, f"backup {posixpath.basename(rel)}", True, problems)
    if db is not None:
        try:
            rows, notes = salvage(db, wal if wal and not wal_lost else None)
        except (PmxcfsError, ValueError) as e:
            problems.append(("error", "config-db-lost", f"config.db: page-by-page read failed: {e}"))
            rows = []
        if rows:
            msg = "; ".join(notes) if notes else "no pages lost"
            problems.append(("warning", "config-salvaged",
                             f"config.db read page by page ({len(rows)} rows): {msg}"))
            return _make(rows, "salvaged pages", True, problems)
        problems.append(("error", "config-db-lost", "config.db: no rows of tree could be read"))
    if problems:
        return _make([], "nothing readable", True, problems)
    return None
