"""The persistent index store: what discovery computes at cost, kept between runs.

A backend that spends time on something derived only from an input's bytes (the
object list of a Ceph OSD, the block mappings of a thin pool) asks the context for an
entry, ``ctx.index(backend, name, source, meta=..., version=...)``, and either loads it
or builds and saves it::

    ix = ctx.index(self, "objects", volume.source, meta=label + manifest, version=1)
    got = ix.load()                      # None: missing, stale, truncated or corrupt
    if got is None:
        info, arrays = build()           # a JSON-able dict and named numpy arrays
        ix.save(info, arrays)
    else:
        info, arrays = got

An entry is keyed by the input's identity (:func:`source_identity`: device and inode,
size and mtime of the files below ``source``; pluggable per Source through an
``index_identity()`` method, e.g. an NBD export's size), by the backend's own
``version`` and the pvfs version, and by a hash of the metadata it was built from
(``meta``: the label, superblock, manifest the backend read anyway).  Nothing in an
entry is trusted before it is checked: a file of another format version, whose
identity or metadata hash differs (stale), that is shorter than its header says
(truncated) or whose SHA-256 does not match (corrupt) is reported as an info entry and
rebuilt (a stale one silently: that is how a cache entry goes out of date; the others
with an info entry ``index-corrupt``, ``index-truncated``, ``index-unreadable``).  Files are written atomically (temporary file + rename) into the store, never
beside an input, and the store is kept under a byte budget (least recently used entries
go first).

File format (all integers little-endian)::

    b"PVFSIDX\\0"  u32 format version  u32 header length  u64 payload length
    32 bytes SHA-256 of header + payload
    header: JSON {backend, name, where, check, meta, version, pvfs, label, info, arrays}
    payload: the arrays' bytes, one after another (``arrays`` gives dtype, shape, offset)

The default store is ``$XDG_CACHE_HOME/pvfs/index`` (``~/.cache/pvfs/index``);
``--index-dir DIR`` moves it, ``--index-dir none`` turns it off (nothing is written).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import __version__

if TYPE_CHECKING:  # numpy is imported where arrays are read or written, not at start-up
    import numpy as np

MAGIC = b"PVFSIDX\0"
FORMAT_VERSION = 1
_HEAD = struct.Struct("<8sIIQ32s")
SUFFIX = ".pvx"
#: Default byte budget of a store (``PVFS_INDEX_MAX_MB`` overrides it).
DEFAULT_MAX_BYTES = 4 << 30
MAX_HEADER = 64 << 20  # a header (JSON) larger than this is corrupt
MAX_EXTENTS = 4096  # an ExtentSource with more pieces has no identity (too costly to key)
NONE_WORDS = ("none", "off", "")


def default_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "pvfs", "index")


def resolve_dir(opt: str | None) -> str | None:
    """The store folder for an ``--index-dir`` value (None: the default; 'none': off)."""
    if opt is None:
        return default_dir()
    if str(opt).strip().lower() in NONE_WORDS:
        return None
    return os.path.abspath(os.path.expanduser(str(opt)))


def check_dir(opt: str | None) -> str | None:
    """Why an ``--index-dir`` value cannot be used (one line), or None when it can."""
    d = resolve_dir(opt)
    if d is None:
        return None
    if os.path.lexists(d):
        if not os.path.isdir(d):
            return f"--index-dir {opt}: not a directory"
        if not os.access(d, os.W_OK | os.X_OK):
            return f"--index-dir {opt}: not writable"
        return None
    up = os.path.dirname(d.rstrip("/")) or "/"
    while not os.path.exists(up):
        nxt = os.path.dirname(up)
        if nxt == up:
            break
        up = nxt
    if not os.path.isdir(up) or not os.access(up, os.W_OK | os.X_OK):
        return f"--index-dir {opt}: cannot be created ({up} is not a writable directory)"
    return None


# -- identity --------------------------------------------------------------------------
Identity = tuple[str, dict]  # (where, check): a location key and what must still match


def code_fingerprint() -> str:
    """Size and mtime of every module of pvfs and the backends: a probe result or index
    made by other code is not used (developers change code without a version bump)."""
    import backends

    h = hashlib.sha256(__version__.encode())
    for top in (os.path.dirname(__file__), *backends.__path__):
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for fn in sorted(filenames):
                if fn.endswith(".py"):
                    try:
                        st = os.stat(os.path.join(dirpath, fn))
                    except OSError:
                        continue
                    h.update(f"{dirpath}/{fn}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def source_identity(source: Any) -> Identity | None:
    """``(where, check)`` for a source whose bytes are those of files that can be told
    apart later, or None (then nothing is kept for it).

    ``where`` names the place (device and inode of a file, a slice of it ...) and picks
    the entry; ``check`` holds what must be unchanged for the entry to be used (size,
    mtime in ns).  A Source class with its own notion of identity (an NBD export)
    defines ``index_identity() -> (where, check) | None``.
    """
    from .source import ExtentSource, FileSource, SliceSource

    own = getattr(source, "index_identity", None)
    if callable(own):
        return own()
    if isinstance(source, FileSource):
        st = getattr(source, "stat", None)
        if st is None:
            return None
        if stat.S_ISBLK(st.st_mode):  # a device's mtime says nothing about its bytes
            where = f"blk:{st.st_rdev}"
            return where, {where: {"size": source.size}}
        where = f"file:{st.st_dev}:{st.st_ino}"
        return where, {where: {"size": st.st_size, "mtime_ns": st.st_mtime_ns}}
    if isinstance(source, SliceSource):
        inner = source_identity(source.parent)
        if inner is None:
            return None
        return f"{inner[0]}[{source.offset}+{source.size}]", inner[1]
    if isinstance(source, ExtentSource):
        if len(source.extents) > MAX_EXTENTS:
            return None
        parts, check = [], {}
        for off, ln, target, toff in source.extents:
            if target is None:
                parts.append(f"{off}+{ln}:-")
                continue
            inner = source_identity(target)
            if inner is None:
                return None
            parts.append(f"{off}+{ln}:{inner[0]}@{toff}")
            check.update(inner[1])
        where = hashlib.sha256(f"{source.size}|{'|'.join(parts)}".encode()).hexdigest()
        return f"ext:{where}", check
    return None


# -- the store ---------------------------------------------------------------------------
@dataclass
class LogEntry:
    """One entry used during a run (``pvfs index`` prints them)."""

    backend: str
    name: str
    label: str
    state: str  # reused | built | rebuilt | not-saved
    path: str
    nbytes: int = 0
    seconds: float = 0.0
    why: str = ""  # why it was rebuilt


Notify = Callable[[str, str, str], None]  # (severity, code, message)


@dataclass
class IndexStore:
    """A folder of index files under a byte budget; ``root`` None: nothing is kept."""

    root: str | None
    max_bytes: int = field(default_factory=lambda: int(
        os.environ.get("PVFS_INDEX_MAX_MB", DEFAULT_MAX_BYTES >> 20)) << 20)
    log: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.root is not None

    def entry(self, backend: str, name: str, source: Any, meta: bytes = b"", version: int = 1,
              label: str = "", notify: Notify | None = None,
              ident: Identity | None = None) -> IndexEntry:
        """The entry of ``backend``'s index ``name`` for ``source`` (or for an explicit
        identity ``ident``, e.g. one made of several inputs)."""
        if ident is None and source is not None and self.enabled:
            ident = source_identity(source)
        return IndexEntry(self, backend, name, ident if self.enabled else None, meta, version,
                          label or getattr(source, "label", "?"), notify)

    def files(self) -> list[os.DirEntry]:
        if self.root is None:
            return []
        try:
            with os.scandir(self.root) as it:
                return [e for e in it if e.name.endswith(SUFFIX) and e.is_file()]
        except OSError:
            return []

    def total_bytes(self) -> int:
        return sum(e.stat().st_size for e in self.files())

    def trim(self, keep: str | None = None) -> int:
        """Delete least recently used entries until the store fits its budget; returns
        the bytes freed (``keep``: a file never deleted, the one just written)."""
        self._drop_leftovers()
        entries = []
        for e in self.files():
            try:
                st = e.stat()
            except OSError:
                continue
            entries.append((st.st_mtime_ns, st.st_size, e.path))
        total = sum(s for _, s, _ in entries)
        freed = 0
        for _mt, size, path in sorted(entries):
            if total <= self.max_bytes:
                break
            if path == keep:
                continue
            try:
                os.unlink(path)
            except OSError:
                continue
            total -= size
            freed += size
        return freed

    def _drop_leftovers(self, age: float = 3600.0) -> None:
        """Temporary files of writers that died (older than ``age`` seconds)."""
        if self.root is None:
            return
        now = time.time()
        try:
            with os.scandir(self.root) as it:
                old = [e.path for e in it if e.name.startswith(".tmp-")
                       and now - e.stat().st_mtime > age]
        except OSError:
            return
        for p in old:
            try:
                os.unlink(p)
            except OSError:
                pass

    def record(self, item: LogEntry) -> None:
        with self._lock:
            self.log.append(item)


class IndexEntry:
    """One index of one backend for one source (see the module docstring)."""

    def __init__(self, store: IndexStore, backend: str, name: str, ident: Identity | None,
                 meta: bytes, version: int, label: str, notify: Notify | None) -> None:
        self.store = store
        self.backend = backend
        self.name = name
        self.ident = ident
        self.meta = hashlib.sha256(meta).hexdigest()
        self.version = version
        self.label = label
        self.notify = notify
        self.path = None
        self.why = ""  # why a stored entry was not used
        self._stale = False
        self._t0 = time.monotonic()
        if store.root is not None and ident is not None:
            key = hashlib.sha256(f"{backend}\0{name}\0{ident[0]}".encode()).hexdigest()[:40]
            self.path = os.path.join(store.root, f"{backend}-{key}{SUFFIX}")

    @property
    def usable(self) -> bool:
        """Whether anything can be kept for this source (a store, and an identity)."""
        return self.path is not None

    def _expect(self) -> dict:
        return {"backend": self.backend, "name": self.name, "where": self.ident[0],
                "check": self.ident[1], "meta": self.meta, "version": self.version,
                "pvfs": __version__}

    def _out_of_date(self, why: str) -> None:
        """The input or the code changed: the normal way a cache entry goes out of date,
        not worth a report entry (``pvfs index`` lists why)."""
        self._stale = True
        self.why = why

    def _bad(self, severity: str, code: str, why: str) -> None:
        """The stored file itself is damaged: an info entry, and it is rebuilt."""
        self._stale = True
        self.why = why
        if self.notify is not None:
            self.notify(severity, code, f"{self.backend} index {self.name} of {self.label} "
                                        f"({os.path.basename(self.path)}): {why}; rebuilt")

    def load(self, mapped: bool = False, _log: bool = True) -> tuple[dict, dict[str, np.ndarray]] | None:
        """``(info, arrays)`` when the stored entry is complete, intact and current.

        ``mapped``: the arrays are read-only views of the file mapped into memory (a
        :class:`MappedArrays`): their pages are file pages, read when touched, counted as
        ``RssFile`` and given back by the kernel under pressure (``release()`` drops them
        at once), instead of a copy in the process's own memory; the file is checked
        (SHA-256 of all of it) a piece at a time before it is mapped.  pvfs never changes a
        stored file in place (a new one is renamed over it, trimming unlinks it: a mapping
        keeps the old file), so the mapping stays valid; a file cut short by hand while it
        is mapped would end the process (SIGBUS)."""
        self._t0 = time.monotonic()
        if self.path is None:
            return None
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        except OSError as e:
            self._bad("info", "index-unreadable", f"cannot be read ({e.strerror})")
            return None
        try:
            got = self._load_fd(fd, mapped)
        except OSError as e:
            self._bad("info", "index-unreadable", f"cannot be read ({e.strerror})")
            got = None
        finally:
            os.close(fd)  # a mapping stays valid without its descriptor
        if got is None:
            return None
        info, arrays, size = got
        if not _log:
            return info, arrays
        try:
            os.utime(self.path)  # least recently *used* goes first when trimming
        except OSError:
            pass
        self.store.record(LogEntry(self.backend, self.name, self.label, "reused", self.path,
                                   size, time.monotonic() - self._t0))
        return info, arrays

    def load_saved(self) -> tuple[dict, dict[str, np.ndarray]] | None:
        """The entry just saved, read back mapped (``load(mapped=True)``, not logged as a
        reuse): what was built then costs the process file pages, not its own memory."""
        return self.load(mapped=True, _log=False)

    def _load_fd(self, fd: int, mapped: bool) -> tuple[dict, dict, int] | None:
        size = os.fstat(fd).st_size
        fixed = os.pread(fd, _HEAD.size, 0)
        if len(fixed) < _HEAD.size:
            self._bad("info", "index-truncated", f"{size} bytes, shorter than its header")
            return None
        magic, fmt, hlen, plen, digest = _HEAD.unpack_from(fixed)
        if magic != MAGIC:
            self._bad("info", "index-corrupt", "not a pvfs index file (bad magic)")
            return None
        if fmt != FORMAT_VERSION:
            self._out_of_date(f"format version {fmt}, this pvfs writes {FORMAT_VERSION}")
            return None
        want = _HEAD.size + hlen + plen
        if hlen > MAX_HEADER or size != want:
            if size < want:
                self._bad("info", "index-truncated", f"{size} bytes, its header says {want}")
            else:
                self._bad("info", "index-corrupt", f"{size} bytes, its header says {want}")
            return None
        if mapped:  # checked a piece at a time: no copy of the payload in memory
            h = hashlib.sha256()
            pos = _HEAD.size
            buf = bytearray(min(READ_PIECE, size))
            while pos < size:
                n = os.preadv(fd, [memoryview(buf)[:min(len(buf), size - pos)]], pos)
                if not n:
                    self._bad("info", "index-truncated", f"ends at {pos} bytes while read")
                    return None
                h.update(memoryview(buf)[:n])
                pos += n
            del buf
            body = memoryview(os.pread(fd, hlen, _HEAD.size))
        else:
            blob = os.pread(fd, size - _HEAD.size, _HEAD.size)
            body = memoryview(blob)
            h = hashlib.sha256(body) if len(blob) == size - _HEAD.size else None
        if h is None or h.digest() != digest:
            self._bad("info", "index-corrupt", "checksum mismatch")
            return None
        try:
            head = json.loads(bytes(body[:hlen]))
            expect = self._expect()
            diff = [k for k, v in expect.items() if head.get(k) != v]
            if diff:
                what = {"check": "the input changed (size or mtime)",
                        "meta": "the metadata it was built from changed",
                        "version": "built by another version of the backend",
                        "pvfs": "built by another pvfs version",
                        "where": "built for another input"}.get(diff[0], f"{diff[0]} differs")
                self._out_of_date(what)
                return None
            mm = None
            if mapped:
                import mmap

                arrays: dict = MappedArrays()
                if plen:
                    mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
                    arrays.mm = mm
                payload = mm
                base = _HEAD.size + hlen
            else:
                arrays = {}
                payload = body[hlen:]
                base = 0
            if head["arrays"]:
                import numpy as np
            for a in head["arrays"]:
                off, n = int(a["offset"]), int(a["nbytes"])
                if off < 0 or n < 0 or off + n > plen:
                    raise ValueError(f"array {a['name']} outside the payload")
                dt = np.dtype(a["dtype"])
                if dt.hasobject or (dt.itemsize and n % dt.itemsize):
                    raise ValueError(f"array {a['name']}: {n} bytes of {dt}")
                if n == 0:
                    arr = np.zeros(0, dtype=dt)
                else:
                    arr = np.frombuffer(payload, dtype=dt, count=n // dt.itemsize,
                                        offset=base + off)
                arrays[a["name"]] = arr.reshape(a["shape"])
            info = head["info"]
        except (ValueError, KeyError, TypeError) as e:  # checksummed, yet not ours: corrupt
            self._bad("info", "index-corrupt", f"unusable header ({e})")
            return None
        return info, arrays, size

    def save(self, info: dict, arrays: dict[str, np.ndarray] | None = None) -> bool:
        """Store ``info`` (JSON-able) and ``arrays`` atomically; False when not kept."""
        return self._save(info, arrays or {}, {})

    def writer(self) -> IndexWriter | None:
        """An :class:`IndexWriter` for an entry whose big arrays are made a piece at a
        time (None when nothing can be kept: no store, or no identity)."""
        return IndexWriter(self) if self.path is not None else None

    def _save(self, info: dict, arrays: dict, streamed: dict) -> bool:
        if self.path is None:
            return False
        import numpy as np

        built = time.monotonic() - self._t0
        table, chunks, pos = [], [], 0
        for name, arr in arrays.items():
            a = np.ascontiguousarray(arr)
            if a.dtype.hasobject:
                raise TypeError(f"index array {name}: object arrays cannot be stored")
            table.append({"name": name, "dtype": a.dtype.str, "shape": list(a.shape),
                          "offset": pos, "nbytes": a.nbytes})
            chunks.append(memoryview(a).cast("B") if a.nbytes else b"")  # no copy: a PBS
            # chunk listing of 2 million digests is 64 MB
            pos += a.nbytes
        for name, part in streamed.items():  # rows kept in a temporary file: copied
            table.append({"name": name, "dtype": part.dtype.str,
                          "shape": [part.rows, *part.rowshape], "offset": pos,
                          "nbytes": part.nbytes})
            chunks.append(part)
            pos += part.nbytes
        head = json.dumps(dict(self._expect(), label=self.label, info=info, arrays=table,
                               created=time.time()), separators=(",", ":")).encode()
        total = _HEAD.size + len(head) + pos
        state = "rebuilt" if self._stale else "built"
        why = self.why
        if total > self.store.max_bytes // 2:
            self.store.record(LogEntry(self.backend, self.name, self.label, "not-saved",
                                       self.path, total, built))
            if self.notify is not None:
                self.notify("info", "index-too-large",
                            f"{self.backend} index {self.name} of {self.label}: {total} bytes, "
                            f"more than half the store's budget of {self.store.max_bytes}; "
                            f"not kept (built again next time)")
            return False
        try:
            os.makedirs(self.store.root, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.store.root, prefix=".tmp-", suffix=SUFFIX + "~")
            try:
                with os.fdopen(fd, "wb") as f:
                    # the head (with the SHA-256 of what follows) is written last, over a
                    # placeholder: one pass over the payload
                    f.write(bytes(_HEAD.size))
                    h = hashlib.sha256(head)
                    f.write(head)
                    for c in chunks:
                        for piece in (c.pieces() if isinstance(c, _Spill) else (c,)):
                            h.update(piece)
                            f.write(piece)
                    f.seek(0)
                    f.write(_HEAD.pack(MAGIC, FORMAT_VERSION, len(head), pos, h.digest()))
                os.replace(tmp, self.path)
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
        except OSError as e:
            if self.notify is not None:
                self.notify("info", "index-not-saved",
                            f"{self.backend} index {self.name} of {self.label}: cannot be "
                            f"written to {self.store.root} ({e.strerror}); built again next time")
            return False
        self.store.trim(keep=self.path)
        self.store.record(LogEntry(self.backend, self.name, self.label, state, self.path,
                                   total, built, why))
        return True


#: Bytes read at a time when a mapped entry is checked or a spilled array copied.
READ_PIECE = 1 << 20


class MappedArrays(dict):
    """The arrays of an entry loaded with ``load(mapped=True)``: read-only views of the
    mapped file.  ``release()`` gives the pages touched so far back (they stay in the page
    cache; the next touch reads them again from there): a table walked once, a range at a
    time, then costs the process no more than the range it is at."""

    mm = None

    def release(self) -> None:
        if self.mm is not None:
            import mmap

            self.mm.madvise(mmap.MADV_DONTNEED)


def scratch_map(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``arrays`` copied into an unnamed temporary file (``$TMPDIR``) and mapped, as
    ``load(mapped=True)`` gives them: for tables built without a store (``--index-dir
    none``) that should cost file pages, not the process's own memory.  The arrays
    themselves when the file cannot be written."""
    import mmap

    import numpy as np

    try:
        with tempfile.TemporaryFile(prefix="pvfs-scratch-") as f:
            table, pos = [], 0
            for name, arr in arrays.items():
                a = np.ascontiguousarray(arr)
                if a.nbytes:
                    f.write(memoryview(a).cast("B"))
                table.append((name, a.dtype, a.shape, pos, a.nbytes))
                pos += a.nbytes
            f.flush()
            out = MappedArrays()
            if pos:
                out.mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            for name, dt, shape, off, n in table:
                out[name] = (np.frombuffer(out.mm, dtype=dt, count=n // dt.itemsize, offset=off)
                             if n else np.zeros(0, dtype=dt)).reshape(shape)
            return out
    except OSError:
        return arrays


class _Spill:
    """Rows of one array appended to an unnamed temporary file of the store."""

    def __init__(self, root: str, dtype: np.dtype, rowshape: tuple) -> None:
        self.file = tempfile.TemporaryFile(dir=root, prefix=".tmp-")
        self.dtype, self.rowshape = dtype, rowshape
        self.rows = self.nbytes = 0

    def pieces(self) -> Iterator[bytes]:
        self.file.flush()
        pos = 0
        while pos < self.nbytes:
            piece = os.pread(self.file.fileno(), min(READ_PIECE, self.nbytes - pos), pos)
            if not piece:
                raise OSError(5, "temporary index file ended early")
            yield piece
            pos += len(piece)


class IndexWriter:
    """An entry whose big arrays are made a piece at a time: ``append(name, rows)`` adds
    rows to array ``name`` (kept in a temporary file of the store, not in memory), and
    ``save(info, arrays)`` writes the entry with the small ``arrays`` given at the end.
    The entry is read back like any other (``load``)."""

    def __init__(self, entry: IndexEntry) -> None:
        self.entry = entry
        self.parts: dict[str, _Spill] = {}
        self.failed: OSError | None = None

    def append(self, name: str, rows: np.ndarray) -> None:
        import numpy as np

        if self.failed is not None:
            return
        a = np.ascontiguousarray(rows)
        try:
            part = self.parts.get(name)
            if part is None:
                os.makedirs(self.entry.store.root, exist_ok=True)
                part = self.parts[name] = _Spill(self.entry.store.root, a.dtype, a.shape[1:])
            if a.dtype != part.dtype or a.shape[1:] != part.rowshape:
                raise TypeError(f"index array {name}: rows of {a.dtype}{a.shape[1:]}, "
                                f"not {part.dtype}{part.rowshape}")
            if a.nbytes:
                part.file.write(memoryview(a).cast("B"))
            part.rows += len(a)
            part.nbytes += a.nbytes
        except OSError as e:
            self.failed = e
            self.close()

    def save(self, info: dict, arrays: dict | None = None) -> bool:
        try:
            if self.failed is not None:
                e = self.failed
                if self.entry.notify is not None:
                    self.entry.notify("info", "index-not-saved",
                                      f"{self.entry.backend} index {self.entry.name} of "
                                      f"{self.entry.label}: cannot be written to "
                                      f"{self.entry.store.root} ({e.strerror}); built again "
                                      f"next time")
                return False
            return self.entry._save(info, arrays or {}, self.parts)
        finally:
            self.close()

    def close(self) -> None:
        for part in self.parts.values():
            part.file.close()
        self.parts = {}
