"""A read-only RocksDB database: MANIFEST + live SSTs + WAL replay, merged.

Opening follows ``DBImpl::Recover``: ``CURRENT`` names the MANIFEST; its
edits give the column families, their live SST files and log numbers; then
every WAL ``NNNNNN.log`` whose number is at least the oldest column family
log number is replayed into an in-memory table (per column family, records
of a family from a log older than that family's log number are skipped:
they were flushed already).  Replay stops per log at the first bad record
(``kPointInTimeRecovery``) or when the sequence numbers go backwards (stale
records of a recycled log file).

Reads merge, per column family, the memtable and every SST by internal key
order (user key ascending, sequence descending) and resolve each user key:
the newest Put wins, a Delete/SingleDelete or a covering range deletion
hides it, Merge operands are combined oldest first by the caller's merge
operator over the newest older Put (or nothing).

References: rocksdb db/db_impl/db_impl_open.cc (Recover, RecoverLogFiles),
db/version_set.cc, db/dbformat.h (internal key order), db/merge_helper.cc,
db/range_del_aggregator.cc.
"""

from __future__ import annotations

import bisect
import heapq
import os
import re

from pvfs.errors import UnreadableError
from pvfs.source import FileSource

from ..errors import RocksDBError
from .log import LogReader
from .manifest import ColumnFamily, FileMeta, Manifest
from .table import Table
from .writebatch import (BLOB_INDEX, DELETE, ENTITY, MERGE, PUT, RANGE_DELETE, SINGLE_DELETE,
                         decode_write_batch, kTypeDeletionWithTimestamp)

_LOG_RE = re.compile(r"^(\d+)\.log$")
_SST_RE = re.compile(r"^(\d+)\.(sst|ldb)$")
_MANIFEST_RE = re.compile(r"^MANIFEST-(\d+)$")

_DELETES = (DELETE, SINGLE_DELETE, kTypeDeletionWithTimestamp)


def _order(e):
    """Internal key order: user key ascending, sequence descending."""
    return e[0], -e[1]


class DamageList(list):
    """The damage entries ``(severity, code, message)``; entries added after opening (a
    bad block met during a read) are also passed to ``listener(severity, code, msg)``."""

    listener = None

    def append(self, entry):
        super().append(entry)
        if self.listener is not None:
            self.listener(*entry)


class HostDirFiles:
    """Files of a RocksDB directory on the host file system (the mon ``store.db``)."""

    def __init__(self, path):
        self.path = os.fspath(path)

    def listdir(self, dirname):
        d = os.path.join(self.path, dirname) if dirname else self.path
        try:
            return sorted(os.listdir(d))
        except OSError:
            return []

    def size(self, path):
        try:
            return os.path.getsize(os.path.join(self.path, path))
        except OSError:
            return None

    def open(self, path):
        return FileSource(os.path.join(self.path, path))


class ColumnFamilyData:
    def __init__(self, cf):
        self.id = cf.id
        self.name = cf.name
        self.log_number = cf.log_number
        self.tables = []  # Table, newest file number first
        self.mem = {}  # user key -> [(seq, type, value)]
        self.mem_keys = []  # sorted after replay
        self.tombstones = []  # (begin, seq, end)


class DB:
    """A RocksDB database read through ``files`` (``listdir``, ``open``).

    ``db_dir``: where CURRENT, MANIFEST and (most) SSTs are; ``wal_dirs`` and
    ``sst_dirs``: where else to look for logs / tables (BlueFS: ``db.wal``,
    ``db.slow``).  ``merge``: ``fn(cf_name, user_key, base or None,
    [operands oldest first]) -> bytes or None``.
    """

    def __init__(self, files, db_dir="", wal_dirs=None, sst_dirs=None, merge=None,
                 verify=True, name="rocksdb", resync=True):
        self.files = files
        #: go on after a damaged WAL spot (RocksDB's kSkipAnyCorruptedRecords) rather
        #: than stop there (kPointInTimeRecovery, what Ceph configures)
        self.resync = resync
        self.name = name
        self.verify = verify
        self.merge = merge
        self.damage = DamageList()  # (severity, code, message)
        self.db_dir = db_dir
        self.wal_dirs = list(wal_dirs) if wal_dirs is not None else [db_dir]
        self.sst_dirs = list(sst_dirs) if sst_dirs is not None else [db_dir]
        self.manifest = self._open_manifest()
        self.cfs = {}
        for cf in self.manifest.live_column_families():
            self.cfs[cf.id] = ColumnFamilyData(cf)
        self._open_tables()
        self.cf_by_name = {c.name: c for c in self.cfs.values()}
        self.wal_records = 0
        self.last_sequence = self.manifest.last_sequence
        self._replay_wals()
        for c in self.cfs.values():
            c.mem_keys = sorted(c.mem)

    # -- helpers ---------------------------------------------------------------------
    def _path(self, d, n):
        return f"{d}/{n}" if d else n

    def _note(self, severity, code, msg):
        entry = (severity, code, msg)
        if entry not in self.damage[-16:]:  # the same fact met again on a later read
            self.damage.append(entry)

    def _open_manifest(self):
        names = self.files.listdir(self.db_dir)
        current = None
        if "CURRENT" in names:
            try:
                src = self.files.open(self._path(self.db_dir, "CURRENT"))
                current = src.read(0, min(src.size, 4096)).decode("latin-1").strip()
            except (UnreadableError, RocksDBError) as e:
                self._note("warning", "rocksdb-current", f"CURRENT unreadable: {e}")
        candidates = sorted((int(m.group(1)), n) for n in names
                            if (m := _MANIFEST_RE.match(n)))
        order = []
        if current and current in names:
            order.append(current)
        elif current:
            self._note("warning", "rocksdb-current", f"CURRENT names missing {current}")
        else:
            self._note("warning", "rocksdb-current", "no CURRENT file; trying the newest MANIFEST")
        order += [n for _, n in reversed(candidates) if n not in order]
        last_err = "none found"
        for n in order:
            try:
                m = Manifest(self.files.open(self._path(self.db_dir, n)),
                             int(n.split("-")[1]) if "-" in n else None)
            except (RocksDBError, UnreadableError) as e:
                last_err = e
                self._note("error", "rocksdb-manifest", f"{n}: {e}")
                continue
            for code, msg in m.damage:
                self._note("warning", code, f"{n}: {msg}")
            self.manifest_name = n
            return m
        return self._salvage_manifest(f"no usable MANIFEST ({last_err})")

    def _options_cf_names(self):
        """Column family names in creation order, from the newest OPTIONS file (ids are
        given in that order)."""
        options = sorted((int(mm.group(1)), n) for n in self._listing(self.db_dir)
                         if (mm := re.match(r"^OPTIONS-(\d+)$", n)))
        if not options:
            return []
        try:
            src = self.files.open(self._path(self.db_dir, options[-1][1]))
            text = src.read(0, min(src.size, 8 << 20)).decode("latin-1")
        except (UnreadableError, RocksDBError) as e:
            self._note("warning", "rocksdb-options", f"{options[-1][1]}: {e}")
            return []
        return re.findall(r'^\[CFOptions "(.*)"\]', text, re.M)

    def _salvage_manifest(self, why):
        """Without a MANIFEST: every table in the directories, families by table properties
        (and the newest OPTIONS file's order for families without a table), every log."""
        m = Manifest.empty()
        self.manifest_name = None
        for i, name in enumerate(self._options_cf_names()):
            m.column_families[i] = ColumnFamily(i, name)
        self.manifest = m
        tables = self._adopt_tables(create_families=True)
        self._note("warning", "rocksdb-salvage",
                   f"{why}: read {len(tables)} tables found in the directory and every log; "
                   "keys deleted by an unfinished compaction may reappear")
        return m

    def _find(self, dirs, number, exts):
        for d in dirs:
            for ext in exts:
                n = f"{number:06d}.{ext}"
                if n in self._listing(d):
                    return self._path(d, n)
        return None

    def _listing(self, d):
        cache = self.__dict__.setdefault("_listings", {})
        if d not in cache:
            cache[d] = set(self.files.listdir(d))
        return cache[d]

    def _adopt_tables(self, create_families=False):
        """Add every table of the directories that the MANIFEST does not name (family from
        the table's properties); returns their names.

        A MANIFEST cut short (a damaged edit) misses the tables created after the cut.
        RocksDB deletes obsolete tables right away, so an unnamed table is nearly always
        live; one that is not only repeats older versions of keys, which the
        newest-sequence rule hides (a key whose deletion was compacted away may reappear).
        """
        m = self.manifest
        cfs = m.column_families
        known = {n for cf in cfs.values() for n in cf.files}
        adopted = []
        salvaged = self.__dict__.setdefault("_salvaged", {})
        for d in self.sst_dirs:
            for n in sorted(self._listing(d)):
                mm = _SST_RE.match(n)
                if not mm or int(mm.group(1)) in known:
                    continue
                path = self._path(d, n)
                try:
                    t = Table(self.files.open(path), path, self.verify)
                except (RocksDBError, UnreadableError) as e:
                    self._note("error", "rocksdb-bad-sst", f"{path}: {e}")
                    continue
                cf_id = t.column_family_id if isinstance(t.column_family_id, int) else 0
                name = t.column_family_name
                cf = cfs.get(cf_id)
                if cf is None or (name and cf.name != name):
                    cf = next((c for c in cfs.values() if name and c.name == name), None)
                if cf is None and create_families:
                    cf = cfs[cf_id] = ColumnFamily(cf_id, name or f"cf-{cf_id}")
                if cf is None:
                    self._note("warning", "rocksdb-salvage",
                               f"{path}: column family {name!r} is unknown")
                    continue
                number = int(mm.group(1))
                cf.files[number] = FileMeta(0, number, t.source.size)
                salvaged[number] = t
                adopted.append(n)
        return adopted

    def _open_tables(self):
        m = self.manifest
        missing = [n for cf in m.live_column_families() for n in cf.files
                   if self._find(self.sst_dirs, n, ("sst", "ldb")) is None]
        cut = any(c == "rocksdb-manifest-tail" for _, c, _ in self.damage)
        known = {n for cf in m.column_families.values() for n in cf.files}
        orphans = [n for d in self.sst_dirs for n in self._listing(d)
                   if (mm := _SST_RE.match(n)) and int(mm.group(1)) not in known]
        names = {c.name for c in m.column_families.values()}
        unseen = [(i, n) for i, n in enumerate(self._options_cf_names())
                  if n not in names and i not in m.column_families]
        if (missing or cut or orphans or unseen) and getattr(self, "manifest_name", None):
            # the MANIFEST lags behind the files (cut short, or an older one): families it
            # has not seen come from the OPTIONS file, tables it does not name from the
            # directories
            for i, name in unseen:
                m.column_families[i] = ColumnFamily(i, name)
            if unseen:
                self._note("warning", "rocksdb-salvage",
                           f"column families {[n for _, n in unseen]} come from the OPTIONS "
                           "file: the MANIFEST does not know them")
            adopted = self._adopt_tables()
            if adopted:
                self._note("warning", "rocksdb-salvage",
                           f"the MANIFEST lags behind the files; tables it does not name are "
                           f"read too: {', '.join(adopted)}")
        for cf in self.manifest.live_column_families():
            c = self.cfs.setdefault(cf.id, ColumnFamilyData(cf))
            for number in sorted(cf.files, reverse=True):
                path = self._find(self.sst_dirs, number, ("sst", "ldb"))
                if path is None:
                    # after a cut MANIFEST, compaction may have removed it legitimately
                    self._note("warning" if cut else "error", "rocksdb-missing-sst",
                               f"SST {number:06d} of column family {cf.name} is missing")
                    continue
                try:
                    t = self.__dict__.get("_salvaged", {}).get(number) or \
                        Table(self.files.open(path), path, self.verify)
                    t.on_damage = lambda msg: self._note("error", "rocksdb-bad-block", msg)
                    meta = cf.files[number]
                    # user-key range from the MANIFEST: lets point reads skip the table
                    if len(meta.smallest) >= 8 and len(meta.largest) >= 8:
                        t.key_range = (meta.smallest[:-8], meta.largest[:-8])
                    c.tombstones.extend(t.range_tombstones())
                except (RocksDBError, UnreadableError) as e:
                    self._note("error", "rocksdb-bad-sst", f"{path}: {e}")
                    continue
                c.tables.append(t)

    def wal_files(self):
        """``[(number, path)]`` of the logs replay reads, oldest first."""
        lo = self.manifest.min_log_number()
        if self.manifest.prev_log_number:
            lo = min(lo, self.manifest.prev_log_number)
        found = {}
        for d in self.wal_dirs:
            for n in self._listing(d):
                m = _LOG_RE.match(n)
                if m and int(m.group(1)) >= lo:
                    found.setdefault(int(m.group(1)), self._path(d, n))
        return sorted(found.items())

    def _replay_wals(self):
        logs = self.wal_files()
        if not logs:
            # RocksDB always has a live log at least as new as every family's log number
            self._note("warning", "rocksdb-wal-missing",
                       f"no WAL numbered {self.manifest.min_log_number()} or later: writes not "
                       "yet flushed to SSTs are lost")
        unknown_cf = set()
        for i, (number, path) in enumerate(logs):
            try:
                src = self.files.open(path)
            except (RocksDBError, UnreadableError) as e:
                self._note("error", "rocksdb-wal", f"{path}: {e}")
                continue
            reader = LogReader(src, number, verify=self.verify, resync=self.resync)
            expected = None
            stale = False
            for off, rec in reader:
                try:
                    seq, count, ops = decode_write_batch(rec)
                except RocksDBError as e:
                    self._note("warning", "rocksdb-wal-bad-batch",
                               f"{path} at {off:#x}: {e}; its writes are lost")
                    if not self.resync:
                        break
                    continue
                if expected is not None and seq < expected:
                    stale = True
                    self._note("info", "rocksdb-wal-stale",
                               f"{path} at {off:#x}: sequence {seq} < {expected}: "
                               "stale records of a recycled log, replay stops")
                    break
                if expected is not None and seq > expected:
                    self._note("warning", "rocksdb-wal-gap",
                               f"{path} at {off:#x}: writes of sequence numbers {expected} to "
                               f"{seq - 1} are lost")
                expected = seq + count
                self.wal_records += 1
                self.last_sequence = max(self.last_sequence, expected - 1)
                for s, cf_id, kind, key, value in ops:
                    c = self.cfs.get(cf_id)
                    if c is None:
                        if cf_id not in unknown_cf:
                            unknown_cf.add(cf_id)
                            self._note("warning", "rocksdb-wal-unknown-cf",
                                       f"{path}: records for unknown column family {cf_id}")
                        continue
                    if number < c.log_number:
                        continue  # flushed already
                    if kind == RANGE_DELETE:
                        c.tombstones.append((key, s, value))
                    elif kind == MERGE:
                        self._mem_merge(c, key, s, value)
                    else:
                        # a newer Put/Delete shadows every older version of the key (SST
                        # data is older than any WAL record), so only the newest is kept
                        c.mem[key] = [(s, kind, value)]
            for off, why in reader.skipped:
                self._note("warning", "rocksdb-wal-skipped",
                           f"{path}: damaged records at {off:#x} ({why}) skipped, replay went on")
            if reader.stop is not None and not stale:
                off, why = reader.stop
                last = i == len(logs) - 1
                self._note("info" if last else "warning", "rocksdb-wal-tail",
                           f"{path}: replay stopped at {off:#x} of {src.size:#x}: {why}"
                           + (" (the unsynced tail of the live log)" if last else ""))

    def _mem_merge(self, c, key, seq, operand):
        """Add a merge operand; fold it at once when the WAL holds the key's base."""
        versions = c.mem.get(key)
        if versions is None:
            c.mem[key] = [(seq, MERGE, operand)]
            return
        top_seq, top_kind, top_value = versions[-1]
        if len(versions) == 1 and top_kind in (PUT,) + _DELETES and self.merge is not None:
            base = top_value if top_kind == PUT else None
            if not (c.tombstones and any(b <= key < e and top_seq < s <= seq
                                         for b, s, e in c.tombstones)):
                merged = self.merge(c.name, key, base, [operand])
                if merged is not None:
                    versions[0] = (seq, PUT, merged)
                    return
        versions.append((seq, MERGE, operand))

    # -- reading ---------------------------------------------------------------------
    def column_family_names(self):
        return [c.name for _, c in sorted(self.cfs.items())]

    def _mem_iter(self, c, start, end):
        keys = c.mem_keys
        i = bisect.bisect_left(keys, start) if start else 0
        j = bisect.bisect_left(keys, end) if end is not None else len(keys)
        for idx in range(i, j):
            k = keys[idx]
            for seq, kind, value in reversed(c.mem[k]):  # appended oldest first
                yield k, seq, kind, value

    def raw_iterate(self, cf_name, start=b"", end=None, fill_cache=True):
        """Every version ``(user_key, seq, type, value)`` in internal key order
        (``fill_cache``: see ``Table.iterate``)."""
        c = self.cf_by_name.get(cf_name)
        if c is None:
            return iter(())
        sources = [t.iterate(start, end, fill_cache) for t in c.tables
                   if t.overlaps(start, end)]
        if c.mem_keys:
            sources.append(self._mem_iter(c, start, end))
        if len(sources) == 1:
            return sources[0]
        return heapq.merge(*sources, key=_order)

    def iterate(self, cf_name, start=b"", end=None, fill_cache=True):
        """``(user_key, value)`` of the live keys of a column family, in order;
        ``fill_cache=False`` for a one-pass scan of many blocks."""
        c = self.cf_by_name.get(cf_name)
        if c is None:
            return
        tomb = c.tombstones
        cur = None
        done = True
        operands = []
        for key, seq, kind, value in self.raw_iterate(cf_name, start, end, fill_cache):
            if key != cur:
                if not done and operands:  # a merge chain without a base value
                    out = self._merged(c, cur, None, operands)
                    if out is not None:
                        yield cur, out
                cur, done, operands = key, False, []
            elif done:
                continue  # an older version of a key already resolved
            if tomb and any(b <= key < e and s > seq for b, s, e in tomb):
                kind, value = DELETE, None  # hidden by a newer range deletion
            if kind == PUT:
                done = True
                if operands:
                    value = self._merged(c, key, value, operands)
                if value is not None:
                    yield key, value
            elif kind == MERGE:
                operands.append(value)
            elif kind in _DELETES:
                done = True
                if operands:
                    out = self._merged(c, key, None, operands)
                    if out is not None:
                        yield key, out
            elif kind in (BLOB_INDEX, ENTITY):
                done = True
                self._note("warning", "rocksdb-unsupported-value",
                           f"{c.name}: key {key[:40]!r} holds a blob index / wide-column entity")
            # other types inside data blocks (range deletion markers): ignore that version
        if not done and operands:
            out = self._merged(c, cur, None, operands)
            if out is not None:
                yield cur, out

    def get(self, cf_name, key):
        for k, v in self.iterate(cf_name, key, key + b"\x00"):
            if k == key:
                return v
        return None

    def _merged(self, c, key, base, operands):
        """Merge operands (collected newest first) over ``base``."""
        operands = operands[::-1]
        if self.merge is None:
            self._note("warning", "rocksdb-merge", f"{c.name}: merge operands without an operator")
            return operands[-1]
        return self.merge(c.name, key, base, operands)
