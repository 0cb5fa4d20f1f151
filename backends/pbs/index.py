"""Fixed and dynamic chunk indexes, the chunk store, and the sources built on them.

References: proxmox-backup ``pbs-datastore/src/fixed_index.rs`` (header, file size =
4096 + 32 * ceil(size / chunk_size), csum = sha256 of the digest table),
``dynamic_index.rs`` (entries {end u64, digest}, csum = sha256 of the entry table),
``chunk_store.rs`` (``.chunks/<4 hex>/<64 hex>``, ``*.bad`` copies),
proxmox-backup-qemu ``src/commands.rs`` (all-zero chunks share the zero-chunk digest).
"""

from __future__ import annotations

import hashlib
import itertools
import os

import numpy as np

from pvfs.cache import METADATA_CACHE
from pvfs.errors import UnreadableError
from pvfs.source import BAD_EIO, BAD_ZERO, DATA, UNREADABLE, ZERO, Source

from .blob import MAX_BLOB_SIZE, CryptConfig, decode_blob
from pvfs.namespace import FileTooLargeError, OsFiles
from .structs import (DYNAMIC_ENTRY_SIZE, DYNAMIC_SIZED_CHUNK_INDEX_1_0, FIXED_ENTRY_SIZE,
                      FIXED_SIZED_CHUNK_INDEX_1_0, INDEX_HEADER_SIZE, DynamicIndexHeader,
                      FixedIndexHeader, PbsError, parse)

#: An index file larger than this is refused (64 Ki digests per GiB... 4 PiB of disk).
MAX_INDEX_FILE = 1 << 30


class ChunkError(PbsError):
    """A chunk is missing from every store, or every copy of it is corrupt."""

    def __init__(self, kind, message, digest=None):
        super().__init__(message)
        self.kind = kind  # "missing" | "corrupt"
        self.digest = digest


# ---------------------------------------------------------------------------
#: Entries of an index table read (and cached) at a time when a chunk is looked up.
TABLE_BLOCK = 2048
#: Bytes of an index table read at a time when all of it is walked (checksum, chunk check).
WALK_BYTES = 1 << 20
_index_ids = itertools.count(1)


class _Table:
    """The table of an index file, read from the file when needed rather than held: a
    datastore of millions of chunks has tables of 32 bytes a chunk per backup (tens of MB
    each), which stayed in the daemon for its life.  Blocks of :data:`TABLE_BLOCK` entries
    are cached in the byte-bounded ``METADATA_CACHE``."""

    entry = FIXED_ENTRY_SIZE

    def _init_table(self, fs, path, count):
        self.fs = fs
        self.path = path
        self.uid = next(_index_ids)
        self.known = count

    def _raw(self, first, n):
        """The bytes of entries ``first .. first+n-1`` (fewer if the file got shorter)."""
        want = n * self.entry
        if want <= 0:
            return b""
        try:
            data = self.fs.read_range(self.path, INDEX_HEADER_SIZE + first * self.entry, want)
        except OSError:
            return b""
        return data[: len(data) // self.entry * self.entry]

    def _block(self, b):
        key = ("pbs-index", self.uid, b)
        got = METADATA_CACHE.get(key)
        if got is None:
            first = b * TABLE_BLOCK
            got = METADATA_CACHE.put(key, self._decode(self._raw(first, min(TABLE_BLOCK, self.known - first))))
        return got

    def walk(self, step=None):
        """``(first entry, raw bytes)`` of the table a piece at a time (not cached)."""
        step = step or max(1, WALK_BYTES // self.entry)
        for first in range(0, self.known, step):
            yield first, self._raw(first, min(step, self.known - first))

    def digest_rows(self, step=None):
        """``(first entry, (n, 32) uint8 digests)`` a piece at a time."""
        for first, raw in self.walk(step):
            yield first, self._rows(raw)


class FixedIndex(_Table):
    """A ``.fidx``: image size, chunk size and one digest per chunk.

    A truncated table keeps the digests that are there; the missing tail is reported
    through ``problems`` and reads as unreadable (``digest(i)`` is None).  The digests
    are read from the file when asked for (see :class:`_Table`); the checksum is checked
    on a walk over the table at open.
    """

    kind = "fidx"

    def __init__(self, path, fs=None, unfinished=False):
        """``unfinished``: a ``*.tmp_fidx`` of an interrupted backup (fixed_index.rs writes
        the table in place; digests never written are zero, the checksum is not set)."""
        fs = fs or OsFiles(root=os.path.dirname(path) or ".")
        self.problems: list[str] = []
        self.unfinished = unfinished
        name = fs.name(path)
        try:
            fsize = fs.size(path)
            head = fs.read_range(path, 0, INDEX_HEADER_SIZE)
            h = parse(FixedIndexHeader, head, f"{name} header")
            if h.magic != FIXED_SIZED_CHUNK_INDEX_1_0:
                raise PbsError(f"{name}: not a fixed index (bad magic)")
            if h.chunk_size <= 0 or h.chunk_size > MAX_BLOB_SIZE:
                raise PbsError(f"{name}: chunk size {h.chunk_size} out of range")
            self.size = h.size
            self.chunk_size = h.chunk_size
            self.count = -(-h.size // h.chunk_size)
            expect = INDEX_HEADER_SIZE + FIXED_ENTRY_SIZE * self.count
            if expect > MAX_INDEX_FILE:
                raise PbsError(f"{name}: image size {h.size} is implausible")
            want = max(0, min(fsize, expect) - INDEX_HEADER_SIZE)
            self._init_table(fs, path, want // FIXED_ENTRY_SIZE)
            csum, written, got = hashlib.sha256(), 0, 0
            for _first, raw in self.walk():
                csum.update(raw)
                got += len(raw)
                if unfinished:
                    rows = self._rows(raw)
                    written += int(np.count_nonzero(rows.any(axis=1)))
            if got != self.known * FIXED_ENTRY_SIZE:
                raise OSError(5, "the index file got shorter while read")
        except OSError as e:
            raise PbsError(f"cannot read {path}: {e.strerror or e}") from None
        self.uuid, self.ctime, self.index_csum = h.uuid, h.ctime, h.index_csum
        if fsize != expect:
            self.problems.append(
                f"file size {fsize} != 4096 + 32*ceil(size/chunk_size) = {expect}"
                + (f"; digests of chunks {self.known}..{self.count - 1} are lost"
                   if self.known < self.count else ""))
        elif not unfinished and csum.digest() != self.index_csum:
            self.problems.append("index checksum mismatch (digest table altered)")
        if unfinished:
            self.problems.append(f"unfinished backup (interrupted upload): {written} of {self.count} "
                                 f"chunks were written; the others read as unreadable")

    @staticmethod
    def _rows(raw):
        return np.frombuffer(raw, np.uint8).reshape(-1, 32)

    @staticmethod
    def _decode(raw):
        return raw

    def digest(self, i):
        if not 0 <= i < self.known:
            return None
        blk = self._block(i // TABLE_BLOCK)
        j = (i % TABLE_BLOCK) * 32
        d = blk[j:j + 32]
        if len(d) < 32:
            return None  # the file got shorter since it was opened
        return None if (self.unfinished and d == _NO_DIGEST) else d

    def chunk_range(self, i):
        start = i * self.chunk_size
        return start, min(self.chunk_size, self.size - start)

    def chunks_at(self, offset, length):
        first = offset // self.chunk_size
        last = (offset + length - 1) // self.chunk_size
        return range(first, last + 1)

    def digests(self):
        return (self.digest(i) for i in range(self.known))


_NO_DIGEST = bytes(32)
_DYN = np.dtype([("end", "<u8"), ("digest", "V32")])


class DynamicIndex(_Table):
    """A ``.didx``: a stream cut into chunks; entry i ends at ``ends[i]``.

    The entries are read from the file when asked for (see :class:`_Table`); only the
    end of every :data:`TABLE_BLOCK`-th entry is kept, to find the block of an offset."""

    kind = "didx"
    entry = DYNAMIC_ENTRY_SIZE

    def __init__(self, path, fs=None, unfinished=False):
        """``unfinished``: a ``*.tmp_didx`` of an interrupted backup (entries are appended
        as chunks arrive; the checksum is not set): its entries are a prefix of the stream."""
        fs = fs or OsFiles(root=os.path.dirname(path) or ".")
        self.problems: list[str] = []
        self.unfinished = unfinished
        name = fs.name(path)
        try:
            fsize = fs.size(path)
            if fsize > MAX_INDEX_FILE:
                raise PbsError(f"{name}: index file of {fsize} bytes is implausible")
            head = fs.read_range(path, 0, INDEX_HEADER_SIZE)
            h = parse(DynamicIndexHeader, head, f"{name} header")
            if h.magic != DYNAMIC_SIZED_CHUNK_INDEX_1_0:
                raise PbsError(f"{name}: not a dynamic index (bad magic)")
            body = max(0, fsize - INDEX_HEADER_SIZE)
            n = body // DYNAMIC_ENTRY_SIZE
            self._init_table(fs, path, n)
            # one walk: the checksum, the ends growing strictly (the consistent prefix of
            # a damaged table is kept), the last end of every block
            csum, got, prev, bad = hashlib.sha256(), 0, 0, None
            fences = []
            step = TABLE_BLOCK * max(1, WALK_BYTES // (TABLE_BLOCK * DYNAMIC_ENTRY_SIZE))
            for first, raw in self.walk(step):
                csum.update(raw)
                got += len(raw)
                if bad is not None:
                    continue
                ends = np.frombuffer(raw, _DYN)["end"].astype(np.int64)
                if len(ends):
                    steps = np.diff(ends, prepend=prev)
                    if not np.all(steps > 0):  # (the first end must be > 0 too)
                        bad = first + int(np.argmax(steps <= 0))
                        ends = ends[: bad - first]
                    fences.append(ends[TABLE_BLOCK - 1::TABLE_BLOCK])
                    prev = int(ends[-1]) if len(ends) else prev
            if got != n * DYNAMIC_ENTRY_SIZE:
                raise OSError(5, "the index file got shorter while read")
        except FileTooLargeError as e:
            raise PbsError(str(e)) from None
        except OSError as e:
            raise PbsError(f"cannot read {path}: {e.strerror or e}") from None
        self.uuid, self.ctime, self.index_csum = h.uuid, h.ctime, h.index_csum
        if body % DYNAMIC_ENTRY_SIZE and not unfinished:
            self.problems.append(f"file size {fsize} != 4096 + 40*N; the last partial entry is dropped")
        if unfinished:
            self.problems.append(f"unfinished backup (interrupted upload): the first {n} chunks of the "
                                 f"stream were written; it ends there")
        elif not self.problems and csum.digest() != self.index_csum:
            self.problems.append("index checksum mismatch (entry table altered)")
        if bad is not None:
            self.problems.append(f"entry {bad}: end offsets do not increase; later entries ignored")
            n = bad
        self.count = self.known = n
        # the end of entry k*TABLE_BLOCK-1 for each block k (the last block's own end apart)
        self.fences = np.concatenate(fences) if fences else np.zeros(0, np.int64)
        self.fences = np.ascontiguousarray(self.fences[: n // TABLE_BLOCK])
        self.size = self.end(n - 1) if n else 0

    @staticmethod
    def _rows(raw):
        a = np.frombuffer(raw, _DYN)["digest"]
        return np.ascontiguousarray(a).view(np.uint8).reshape(-1, 32)

    @staticmethod
    def _decode(raw):
        a = np.frombuffer(raw, _DYN)
        return a["end"].astype(np.int64), a["digest"].tobytes()  # "V32": raw bytes kept

    def end(self, i):
        ends = self._block(i // TABLE_BLOCK)[0]
        j = i % TABLE_BLOCK
        if j >= len(ends):
            raise PbsError(f"{os.path.basename(self.path)}: entry {i} can no longer be read")
        return int(ends[j])

    def digest(self, i):
        if not 0 <= i < self.count:
            return None
        table = self._block(i // TABLE_BLOCK)[1]
        j = (i % TABLE_BLOCK) * 32
        d = table[j:j + 32]
        return d if len(d) == 32 else None

    def chunk_range(self, i):
        start = self.end(i - 1) if i else 0
        return start, self.end(i) - start

    def _find(self, offset):
        """The first entry whose end is after ``offset`` (``count`` if none)."""
        b = int(np.searchsorted(self.fences, offset, side="right"))
        if b * TABLE_BLOCK >= self.count:
            return self.count
        ends = self._block(b)[0]
        return b * TABLE_BLOCK + int(np.searchsorted(ends, offset, side="right"))

    def chunks_at(self, offset, length):
        first = self._find(offset)
        last = self._find(offset + length - 1)
        return range(first, min(last, self.count - 1) + 1)

    def digests(self):
        return (self.digest(i) for i in range(self.count))


def open_index(path, fs=None, unfinished=False):
    fs = fs or OsFiles(root=os.path.dirname(path) or ".")
    magic = fs.read_range(path, 0, 8)
    if magic == FIXED_SIZED_CHUNK_INDEX_1_0:
        return FixedIndex(path, fs, unfinished)
    if magic == DYNAMIC_SIZED_CHUNK_INDEX_1_0:
        return DynamicIndex(path, fs, unfinished)
    raise PbsError(f"{fs.name(path)}: no index magic")


# ---------------------------------------------------------------------------
class ChunkStore:
    """``<datastore>/.chunks``: chunk files named by digest."""

    def __init__(self, root, name, fs=None):
        self.fs = fs or OsFiles(root=root)
        self.root = root
        self.name = name
        self.chunks = self.fs.path(root, ".chunks")

    def path(self, hexdigest):
        return self.fs.path(self.chunks, hexdigest[:4], hexdigest)

    def read_raw(self, hexdigest):
        try:
            return self.fs.read(self.path(hexdigest), MAX_BLOB_SIZE + 64)
        except FileNotFoundError:
            return None
        except FileTooLargeError as e:
            raise PbsError(str(e)) from None

    def exists(self, hexdigest):
        return self.fs.exists_size(self.path(hexdigest))


_ZERO_DIGESTS: dict = {}
_pool_ids = itertools.count(1)


def zero_digest(size):
    """sha256 of ``size`` zero bytes (the digest PBS gives an all-zero chunk)."""
    d = _ZERO_DIGESTS.get(size)
    if d is None:
        if not 0 < size <= MAX_BLOB_SIZE:
            return None
        h = hashlib.sha256()
        piece = bytes(min(size, 1 << 20))
        for off in range(0, size, len(piece)):
            h.update(piece[:min(len(piece), size - off)])
        d = h.digest()
        if len(_ZERO_DIGESTS) < 64:
            _ZERO_DIGESTS[size] = d
    return d


class ChunkPool:
    """All chunk stores given at once; each is a fallback for the others' chunks."""

    def __init__(self, crypt: CryptConfig | None = None):
        self.stores: list[ChunkStore] = []
        self.crypt = crypt
        self.bad: dict[bytes, ChunkError] = {}  # known-broken digests fail fast
        self.uid = next(_pool_ids)  # cache key: another discovery has other stores

    def add(self, store):
        self.stores.append(store)
        self.bad.clear()  # a new store may hold a good copy

    MISSING = "missing"  # pool.bad value for a missing chunk (no exception object per chunk)

    @staticmethod
    def error(digest, err):
        """The ChunkError for a ``bad`` entry (an error, or the MISSING marker)."""
        if isinstance(err, str):
            return ChunkError("missing", f"chunk {digest.hex()} is missing from every datastore", digest)
        return err

    def is_zero(self, digest, size):
        return self.crypt is None and digest == zero_digest(size)

    def exists(self, digest):
        h = digest.hex()
        return any(s.exists(h) is not None for s in self.stores)

    def get(self, digest: bytes, size: int | None) -> bytes:
        key = ("pbs-chunk", self.uid, digest)
        data = METADATA_CACHE.get(key)
        if data is not None:
            return data
        if size is not None and self.is_zero(digest, size):
            return bytes(size)
        err = self.bad.get(digest)
        if err is not None:
            raise self.error(digest, err)
        data = self._load(digest, size)
        return METADATA_CACHE.put(key, data)

    def _load(self, digest, size):
        h = digest.hex()
        problems = []
        for store in self.stores:
            try:
                raw = store.read_raw(h)
            except (OSError, PbsError) as e:
                problems.append(f"{store.name}: {getattr(e, 'strerror', None) or e}")
                continue
            if raw is None:
                continue
            try:
                plain = decode_blob(raw, self.crypt, limit=size if size is not None else MAX_BLOB_SIZE)
            except PbsError as e:
                problems.append(f"{store.name}: {e}")
                continue
            if size is not None and len(plain) != size:
                problems.append(f"{store.name}: decodes to {len(plain)} bytes, index says {size}")
                continue
            actual = self.crypt.compute_digest(plain) if self.crypt else hashlib.sha256(plain).digest()
            if actual != digest:
                problems.append(f"{store.name}: content digest is {actual.hex()[:16]}…")
                continue
            return plain
        if problems:
            err = ChunkError("corrupt", f"chunk {h} is corrupt ({'; '.join(problems)})", digest)
        else:
            self.bad[digest] = self.MISSING
            return self._raise(self.error(digest, self.MISSING))
        self.bad[digest] = err
        return self._raise(err)

    @staticmethod
    def _raise(err):
        raise err


class IndexSource(Source):
    """The data an index describes (a VM disk image or a pxar/catalog stream).

    A missing or corrupt chunk raises EIO (policy ``eio``, the default) or reads as
    zeros (policy ``zero``); either way ``on_bad(start, length, error)`` is called so the
    damage is reported with its byte range.
    """

    def __init__(self, index, pool: ChunkPool, bad=BAD_EIO, label="index", on_bad=None):
        super().__init__()
        self.index = index
        self.pool = pool
        self.bad = bad
        self.label = label
        self.on_bad = on_bad
        self.size = index.size

    def chunk(self, i):
        start, length = self.index.chunk_range(i)
        digest = self.index.digest(i)
        if digest is None:
            raise ChunkError("missing", f"chunk {i} has no digest (truncated index, or never "
                                        f"uploaded by an interrupted backup)")
        if length > MAX_BLOB_SIZE:
            raise ChunkError("corrupt", f"chunk {i} would be {length} bytes long (index is corrupt)")
        return self.pool.get(digest, length)

    def _read(self, offset, length):
        parts = []
        end = offset + length
        for i in self.index.chunks_at(offset, length):
            cstart, clen = self.index.chunk_range(i)
            lo = max(offset, cstart) - cstart
            hi = min(end, cstart + clen) - cstart
            digest = self.index.digest(i)
            if digest is not None and self.pool.is_zero(digest, clen):
                parts.append(bytes(hi - lo))  # the zero chunk: known content, nothing to read
                continue
            try:
                data = self.chunk(i)
            except ChunkError as e:
                if self.on_bad is not None:
                    self.on_bad(cstart, clen, e)
                if self.bad != BAD_ZERO:
                    raise UnreadableError(f"{self.label}: {e}", [(cstart + lo, hi - lo)]) from None
                parts.append(bytes(hi - lo))
                continue
            parts.append(data[lo:hi] if (lo or hi != len(data)) else data)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _block_status(self, offset, length):
        out = []
        end = offset + length
        for i in self.index.chunks_at(offset, length):
            cstart, clen = self.index.chunk_range(i)
            lo, hi = max(offset, cstart), min(end, cstart + clen)
            digest = self.index.digest(i)
            if digest is None or digest in self.pool.bad:
                st = UNREADABLE
            elif self.pool.is_zero(digest, clen):
                st = ZERO
            else:
                st = DATA
            out.append((lo, hi - lo, st))
        return out
