"""NBD inputs: images read over the network from the machines that hold them.

An input ``nbd://host[:port]/export`` or ``nbd+unix:///export?socket=PATH`` is read with
libnbd (Debian's ``python3-libnbd``), never with a protocol implementation of our own.
:class:`NbdSource` is a :class:`pvfs.source.Source` like a file: ``read`` is a pread
(``NBD_CMD_READ``), ``block_status`` asks the server's ``base:allocation`` context, so a
sparse export shows its holes.  Only reads and block-status queries are ever sent: the
handle lives inside this module and no write, trim or zero call exists in it.

Every command is issued asynchronously and waited for with a deadline (``PVFS_NBD_TIMEOUT``
seconds, 30 by default), so a server that stops answering fails the read with EIO
(:class:`pvfs.errors.UnreadableError`; the mount adds a damage entry) instead of hanging the
mount.  A connection that breaks is reconnected once per read; the export must still have
the same size and the same first MiB, or its reads fail (it is another image now).  While a
server stays unreachable, reads fail at once for a short back-off instead of each waiting
for a connect timeout.  A few connections are opened on demand so that the mount's worker
threads read in parallel; a server that accepts only one (``qemu-nbd`` without ``-e``) is
used through the one it accepted.

References:
  NBD protocol, https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md
  (NBD_CMD_READ, NBD_CMD_BLOCK_STATUS, base:allocation: NBD_STATE_HOLE = 1, NBD_STATE_ZERO = 2)
  NBD URI format, https://github.com/NetworkBlockDevice/nbd/blob/master/doc/uri.md
  libnbd(3), nbd_aio_connect_uri(3), nbd_aio_pread(3), nbd_aio_block_status(3), nbd_poll(3),
  nbd_get_block_size(3) (libnbd 1.14, Debian 12)
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import PvfsError, UnreadableError, UsageError
from .source import DATA, UNMAPPED, ZERO, Source

if TYPE_CHECKING:
    from .discover import Context
    from .nodes import Dir

log = logging.getLogger("pvfs.nbd")
T = TypeVar("T")

#: Seconds one NBD command (or a connection) may take before it fails with EIO.
DEFAULT_TIMEOUT = 30.0
#: After a failed reconnect, reads fail at once for this long (a dead server costs one
#: connect attempt per interval, not one per 128 KiB read).
RETRY_AFTER = 2.0
#: Connections per export (the mount reads with up to 8 threads).
MAX_CONNECTIONS = 4
#: Bytes hashed from the start of the export: part of its identity.
HEAD_BYTES = 1 << 20
#: Largest single request: the protocol allows 32 MiB at most in practice (qemu-nbd's limit);
#: bigger reads are split and pipelined.
MAX_REQUEST = 4 << 20
#: Largest block-status request (the count field is 32-bit).
MAX_STATUS = 1 << 30
#: base:allocation flags (proto.md).
STATE_HOLE = 1
STATE_ZERO = 2

_URI_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def is_nbd_uri(text: str) -> bool:
    """Whether an input names an NBD export (any ``nbd*://`` scheme, to be checked)."""
    m = _URI_RE.match(text)
    return bool(m) and m.group(1).lower().startswith("nbd")


@dataclass(frozen=True)
class NbdUri:
    """A checked NBD URI: what libnbd is given and what the tree shows."""

    uri: str  # the URI as given (the input's identity and its path in the report)
    scheme: str  # nbd | nbd+unix
    host: str | None
    port: int | None
    socket: str | None
    export: str

    @property
    def name(self) -> str:
        """A file name for the tree: the export's last path part, else host or socket."""
        base = self.export.rstrip("/").rsplit("/", 1)[-1]
        if base:
            return base
        if self.socket:
            return os.path.basename(self.socket) or "nbd"
        return f"{self.host}_{self.port or 10809}"


def parse_uri(text: str) -> NbdUri:
    """Check an NBD URI; :class:`UsageError` (exit 2, one line) says what is wrong.

    Accepted: ``nbd://host[:port]/export`` (TCP, port 10809 by default) and
    ``nbd+unix:///export?socket=/path`` (a Unix socket).  TLS (``nbds``), vsock and any
    query parameter other than ``socket`` are refused: pvfs reads exports from the local
    network or the same machine, and loads no key files named in a URI.
    """
    shown = text if text.isprintable() else repr(text)
    m = _URI_RE.match(text)
    if not m:
        raise UsageError(f"{shown}: not an NBD URI (nbd://HOST[:PORT]/EXPORT or "
                         "nbd+unix:///EXPORT?socket=PATH)")
    scheme = m.group(1).lower()
    if scheme not in ("nbd", "nbd+unix"):
        raise UsageError(f"{shown}: scheme {scheme}:// is not supported; use nbd://HOST[:PORT]/"
                         "EXPORT or nbd+unix:///EXPORT?socket=PATH")
    try:
        u = urllib.parse.urlsplit(text)
        port = u.port
    except ValueError as e:
        raise UsageError(f"{shown}: bad NBD URI: {e}") from None
    if u.fragment:
        raise UsageError(f"{shown}: an NBD URI has no #fragment")
    if u.username or u.password:
        raise UsageError(f"{shown}: user names in NBD URIs are for TLS, which pvfs does not use")
    try:
        query = urllib.parse.parse_qs(u.query, keep_blank_values=True, strict_parsing=bool(u.query))
    except ValueError:
        raise UsageError(f"{shown}: bad query string {u.query!r}") from None
    export = urllib.parse.unquote(u.path[1:] if u.path.startswith("/") else u.path)
    if "\0" in export or len(export.encode()) > 4096:
        raise UsageError(f"{shown}: bad export name")
    if scheme == "nbd":
        if query:
            raise UsageError(f"{shown}: unknown parameter {sorted(query)[0]!r} (nbd:// takes "
                             "none)")
        if not u.hostname:
            raise UsageError(f"{shown}: no host (nbd://HOST[:PORT]/EXPORT)")
        return NbdUri(text, scheme, u.hostname, port, None, export)
    if u.netloc:
        raise UsageError(f"{shown}: nbd+unix:// takes no host: nbd+unix:///EXPORT?socket=PATH")
    unknown = sorted(set(query) - {"socket"})
    if unknown:
        raise UsageError(f"{shown}: unknown parameter {unknown[0]!r} (only socket=PATH)")
    sockets = query.get("socket", [])
    if len(sockets) != 1 or not sockets[0]:
        raise UsageError(f"{shown}: needs exactly one socket=PATH")
    sock = sockets[0]
    if not os.path.isabs(sock):
        raise UsageError(f"{shown}: socket={sock}: must be an absolute path")
    return NbdUri(text, scheme, None, None, sock, export)


def _libnbd() -> Any:
    try:
        import nbd
    except ImportError:
        raise PvfsError("NBD inputs need libnbd's Python bindings (Debian: apt-get install "
                        "python3-libnbd; scripts/setup.sh links them into the venv)") from None
    return nbd


def timeout_from_env() -> float:
    text = os.environ.get("PVFS_NBD_TIMEOUT", "")
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"PVFS_NBD_TIMEOUT={text}: expected seconds") from None
    if not 0 < value <= 3600:
        raise UsageError(f"PVFS_NBD_TIMEOUT={text}: must be more than 0 and at most 3600")
    return value


class _Timeout(Exception):
    pass


class _Conn:
    """One libnbd handle, used by one thread at a time."""

    def __init__(self, uri: NbdUri, timeout: float) -> None:
        nbd = _libnbd()
        self.nbd = nbd
        self.timeout = timeout
        h = nbd.NBD()
        h.set_handle_name("pvfs")
        h.set_uri_allow_transports(nbd.ALLOW_TRANSPORT_TCP | nbd.ALLOW_TRANSPORT_UNIX)
        h.set_uri_allow_tls(nbd.TLS_DISABLE)
        h.set_uri_allow_local_file(False)
        h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
        self.h = h
        deadline = time.monotonic() + timeout
        h.aio_connect_uri(_libnbd_uri(uri))
        while not h.aio_is_ready():
            if h.aio_is_dead() or h.aio_is_closed():
                raise nbd.Error("connection closed during the handshake", 0)
            self._poll(deadline, "connecting")
        self.size = h.get_size()
        self.has_status = bool(h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION))
        try:
            maximum = h.get_block_size(nbd.SIZE_MAXIMUM)
        except nbd.Error:
            maximum = 0
        self.max_request = min(MAX_REQUEST, maximum) if maximum >= 4096 else MAX_REQUEST
        self.writable = not h.is_read_only()
        self.multi_conn = bool(h.can_multi_conn())

    def _poll(self, deadline: float, what: str) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise _Timeout(f"no answer within {self.timeout:g} s ({what})")
        self.h.poll(max(1, min(int(left * 1000), 1000)))

    def alive(self) -> bool:
        return self.h.aio_is_ready() or self.h.aio_is_processing()

    def pread(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset``: requests of at most ``max_request`` in flight at once."""
        nbd = self.nbd
        buf = bytearray(length)
        view = memoryview(buf)
        cookies = []
        pos = 0
        while pos < length:
            n = min(self.max_request, length - pos)
            piece = nbd.Buffer.from_buffer(view[pos:pos + n])
            cookies.append((self.h.aio_pread(piece, offset + pos), piece))
            pos += n
        deadline = time.monotonic() + self.timeout
        for cookie, _piece in cookies:
            while not self.h.aio_command_completed(cookie):
                self._poll(deadline, f"read at {offset:#x}")
        return bytes(buf)

    def block_status(self, offset: int, length: int) -> list[tuple[int, int, str]]:
        """``base:allocation`` extents from ``offset``; may cover less than asked (the
        server answers as far as it likes), never more than ``length``."""
        out: list[tuple[int, int, str]] = []
        ctxname = self.nbd.CONTEXT_BASE_ALLOCATION

        def extent(metacontext: str, off: int, entries: list[int], err: int) -> int:
            if metacontext != ctxname:
                return 0
            pos = off
            for i in range(0, len(entries) - 1, 2):
                n, flags = entries[i], entries[i + 1]
                if flags & STATE_HOLE:
                    st = UNMAPPED
                elif flags & STATE_ZERO:
                    st = ZERO
                else:
                    st = DATA
                out.append((pos, n, st))
                pos += n
            return 0

        cookie = self.h.aio_block_status(min(length, MAX_STATUS), offset, extent)
        deadline = time.monotonic() + self.timeout
        while not self.h.aio_command_completed(cookie):
            self._poll(deadline, f"block status at {offset:#x}")
        clipped = []
        end = offset + length
        for o, n, st in out:
            if o >= end:
                break
            clipped.append((o, min(n, end - o), st))
        return clipped

    def drop(self) -> None:
        """Close the handle (libnbd closes the socket; in the mount daemon, a child of a
        fork, the parent's copy of the socket is closed by the parent alone)."""
        self.h = None


def _libnbd_uri(uri: NbdUri) -> str:
    """The URI for libnbd, rebuilt from the checked parts (nothing else passes)."""
    export = urllib.parse.quote(uri.export, safe="/:@")
    if uri.scheme == "nbd":
        host = f"[{uri.host}]" if ":" in (uri.host or "") else uri.host
        port = f":{uri.port}" if uri.port else ""
        return f"nbd://{host}{port}/{export}"
    return f"nbd+unix:///{export}?socket={urllib.parse.quote(uri.socket or '', safe='/')}"


class NbdSource(Source):
    """An NBD export, read-only, with timeouts and reconnects (see the module docstring)."""

    def __init__(self, uri: str | NbdUri, timeout: float | None = None,
                 connections: int = MAX_CONNECTIONS, label: str | None = None) -> None:
        super().__init__()
        self.uri = uri if isinstance(uri, NbdUri) else parse_uri(uri)
        self.timeout = timeout_from_env() if timeout is None else timeout
        self.label = label or self.uri.name
        self.max_connections = max(1, connections)
        self._lock = threading.Lock()
        self._idle: list[_Conn] = []
        self._count = 0
        self._cond = threading.Condition(self._lock)
        self._dead_until = 0.0
        self._replaced: str | None = None
        try:
            conn = _Conn(self.uri, self.timeout)
        except (_Timeout, Exception) as e:  # nbd.Error, OSError: cannot reach the export
            raise PvfsError(f"{self.uri.uri}: cannot connect: {_why(e)}") from None
        self.size = conn.size
        self.writable = conn.writable
        if not conn.multi_conn:  # qemu-nbd -e 1: one client at a time; stay with one
            self.max_connections = 1
        self.has_block_status = conn.has_status
        self._count = 1
        try:
            self.head_sha256 = self._head_hash(conn)
        except (_Timeout, Exception) as e:
            conn.drop()
            raise PvfsError(f"{self.uri.uri}: cannot read the start of the export: "
                            f"{_why(e)}") from None
        self._idle.append(conn)
        self.reconnects = 0

    @property
    def identity(self) -> dict:
        """What names this input for persistent indexes: URI, export size, sha256 of the
        first MiB (an export replaced by another image has another identity)."""
        return {"uri": self.uri.uri, "size": self.size, "head_sha256": self.head_sha256}

    def index_identity(self) -> tuple[str, dict]:
        """``(where, check)`` for persistent indexes (pvfs/index.py ``source_identity``):
        the URI picks the entry; size and the first MiB's sha256 must still match."""
        where = f"nbd:{self.uri.uri}"
        return where, {where: {"size": self.size, "head_sha256": self.head_sha256}}

    def _head_hash(self, conn: _Conn) -> str:
        n = min(HEAD_BYTES, conn.size)
        return hashlib.sha256(conn.pread(0, n) if n else b"").hexdigest()

    # -- connections ------------------------------------------------------------
    def _take(self) -> _Conn | None:
        """An idle connection, or None when the caller may open a new one."""
        with self._cond:
            while True:
                if self._idle:
                    return self._idle.pop()
                if self._count < self.max_connections:  # (0: every one was lost)
                    self._count += 1
                    return None
                self._cond.wait(self.timeout)

    def _give(self, conn: _Conn | None) -> None:
        with self._cond:
            if conn is None:
                self._count -= 1
            else:
                self._idle.append(conn)
            self._cond.notify()

    def _connect(self) -> _Conn:
        """A new connection to the same export (checked to be the same image)."""
        if self._replaced:
            raise UnreadableError(f"{self.label}: {self._replaced}")
        now = time.monotonic()
        if now < self._dead_until:
            raise UnreadableError(f"{self.label}: {self.uri.uri} is unreachable (retrying "
                                  f"every {RETRY_AFTER:g} s)")
        try:
            conn = _Conn(self.uri, self.timeout)
            if conn.size != self.size:
                self._replaced = (f"the export now has {conn.size} bytes instead of "
                                  f"{self.size}: another image; not read")
            elif self._head_hash(conn) != self.head_sha256:
                self._replaced = "the first MiB of the export changed: another image; not read"
        except (_Timeout, Exception) as e:
            self._dead_until = time.monotonic() + RETRY_AFTER
            raise UnreadableError(f"{self.label}: cannot reconnect to {self.uri.uri}: "
                                  f"{_why(e)}") from None
        if self._replaced:
            conn.drop()
            raise UnreadableError(f"{self.label}: {self._replaced}")
        return conn

    def _with_conn(self, what: str, ranges: list[tuple[int, int]],
                   fn: Callable[[_Conn], T]) -> T:
        """Run ``fn(conn)``; a broken connection is replaced once, a server error or a
        timeout is EIO for ``ranges``."""
        nbd = _libnbd()
        conn = self._take()
        try:
            for attempt in (0, 1):
                if conn is None:
                    try:
                        conn = self._connect()
                    except UnreadableError as e:
                        raise UnreadableError(str(e), ranges) from None
                try:
                    return fn(conn)
                except _Timeout as e:
                    conn.drop()
                    conn = None
                    self._dead_until = time.monotonic() + RETRY_AFTER
                    raise UnreadableError(f"{self.label}: {what}: {e}", ranges) from None
                except nbd.Error as e:
                    if conn.alive():  # the server answered with an error: the bytes are bad
                        raise UnreadableError(f"{self.label}: {what}: server error: {_why(e)}",
                                              ranges) from None
                    log.info("%s: connection lost (%s); reconnecting", self.uri.uri, _why(e))
                    conn.drop()
                    conn = None
                    if attempt:
                        raise UnreadableError(f"{self.label}: {what}: connection lost: "
                                              f"{_why(e)}", ranges) from None
                    self.reconnects += 1
            raise AssertionError("unreachable")
        finally:
            self._give(conn)

    # -- Source -------------------------------------------------------------------
    def _read(self, offset: int, length: int) -> bytes:
        return self._with_conn(f"read at {offset:#x}", [(offset, length)],
                               lambda c: c.pread(offset, length))

    def _block_status(self, offset: int, length: int) -> list[tuple[int, int, str]]:
        if not self.has_block_status:
            return [(offset, length, DATA)]
        out = []
        pos, end = offset, offset + length
        for _ in range(1 << 20):  # bounded: each answer covers at least one byte
            if pos >= end:
                break
            try:
                got = self._with_conn(f"block status at {pos:#x}", [(pos, end - pos)],
                                      lambda c, p=pos: c.block_status(p, end - p))
            except UnreadableError:
                out.append((pos, end - pos, DATA))  # unknown allocation reads as data
                break
            if not got:
                out.append((pos, end - pos, DATA))
                break
            for o, n, st in got:
                if o != pos or n <= 0:
                    break
                out.append((o, n, st))
                pos += n
            else:
                continue
            out.append((pos, end - pos, DATA))  # a reply that does not follow on
            break
        return out

    def close(self) -> None:
        """Close the idle connections (a later read opens one again)."""
        with self._cond:
            conns, self._idle = self._idle, []
            self._count -= len(conns)
        for c in conns:
            c.drop()


def _why(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return text.replace("\n", " ")[:300]


class NbdFiles:
    """The namespace of an NBD input: it has none.  A qcow2 exported raw (``qemu-nbd -f
    raw``) that names a backing file cannot reach it, and must never be given a file of
    this machine that happens to have the same name; export such an image decoded
    (``qemu-nbd -r`` opens the chain on its holder) or export every file of the chain and
    give pvfs the decoded one."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    path = staticmethod(lambda *parts: "/".join(parts))

    @staticmethod
    def name(path: str) -> str:
        return path.rstrip("/").rsplit("/", 1)[-1]

    def join(self, base: str | None, name: str) -> str:
        return name

    def key(self, path: str) -> str:
        return f"{self.uri}#{path}"

    def isdir(self, path: str) -> bool:
        return False

    def listdir(self, path: str) -> list[str]:
        return []

    def exists_size(self, path: str) -> int | None:
        return None

    def _missing(self, path: str) -> FileNotFoundError:
        return FileNotFoundError(f"{path}: files named by an image read over NBD are not "
                                 f"reachable from {self.uri}")

    def size(self, path: str) -> int:
        raise self._missing(path)

    def mtime(self, path: str) -> float:
        raise self._missing(path)

    def open(self, path: str) -> Source:
        raise self._missing(path)

    def read(self, path: str, limit: int) -> bytes:
        raise self._missing(path)

    def read_range(self, path: str, offset: int, length: int) -> bytes:
        raise self._missing(path)


def add_nbd_input(ctx: Context, uri_text: str, directory: Dir, dir_path: str) -> None:
    """An NBD export named on the command line becomes an input like an image file, shown
    under ``storage/files/<export name>/``.  A bad URI or an export that cannot be reached
    is a usage error (exit 2), as a missing input file is."""
    from .discover import Home, Volume
    from .nodes import Dir

    uri = parse_uri(uri_text)
    key = ("nbd", uri.uri)
    if key in ctx.seen_inputs:
        ctx.report.add("info", "core", uri.uri, "same-file",
                       f"the same export as {ctx.seen_inputs[key]}; taken once")
        return
    ctx.seen_inputs[key] = uri.uri
    try:
        src = NbdSource(uri)
    except PvfsError as e:
        raise UsageError(str(e)) from None
    ctx.inputs.append({"path": uri.uri, "size": src.size, "mapfile": None, "bad_bytes": 0,
                       "nbd": src.identity})
    if src.writable:
        ctx.report.add("info", "core", uri.uri, "nbd-writable",
                       "the export is writable; pvfs only reads it, but export images "
                       "read-only (qemu-nbd -r, nbdkit -r) so that nothing else writes either")
    d = Dir()
    name = directory.add(uri.name, d, report=ctx.report, path_hint=dir_path)
    dpath = f"{dir_path}/{name}"
    vol = Volume(src, dpath, name, "input", input_path=uri.uri)
    vol.file_name = uri.name
    vol.files = NbdFiles(uri.uri)
    vol.file_path = "/" + uri.export if uri.export else uri.name
    vol.homes.append(Home(d, None, dpath))
    ctx._register(vol, True)
