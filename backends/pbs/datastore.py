"""Walk a PBS datastore directory and build the tree, the Proxmox view and the damage report.

References: proxmox-backup ``pbs-api-types/src/lib.rs`` and ``datastore.rs`` (backup type,
id and RFC 3339 time regexes, ``ns/<name>`` namespaces up to depth 7),
``pbs-datastore/src/datastore.rs`` and ``backup_info.rs`` (group and snapshot folders),
``pbs-datastore/src/manifest.rs`` (``index.json.blob``: files with size and csum; for
indexes csum = index_csum, for blobs sha256 of the blob file), ``chunk_store.rs``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re

import numpy as np

from pvfs.nodes import Dir, File, GeneratedFile
from pvfs.proxmox.view import Locator
from pvfs.source import BAD_EIO, BAD_ZERO, BytesSource

from .blob import EncryptedBlobError, decode_blob, load_keyfile
from .catalog import catalog_text
from pvfs.namespace import OsFiles
from .index import ChunkError, ChunkPool, ChunkStore, FixedIndex, IndexSource, open_index, zero_digest
from .pxar import LISTING, PxarArchive
from .structs import PbsError

BACKUP_TYPES = ("vm", "ct", "host")
ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._\-]*$")
TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
NS_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._\-]*$")
HEX4_RE = re.compile(r"^[0-9a-f]{4}$")
DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_NS_DEPTH = 7
MAX_BLOB_FILE = 16 * 1024 * 1024  # config/log/manifest blobs decoded at discovery
LAYER = "pbs"
MAX_NAMED_FILES = 50  # files named in one damage entry


def looks_like_datastore(path, fs=None) -> float:
    """100: ``.chunks/`` with 4-hex folders; 60: ``.chunks/`` and a backup group folder."""
    fs = fs or OsFiles(root=path)
    chunks = fs.path(path, ".chunks")
    if not fs.isdir(chunks):
        return 0.0
    if isinstance(fs, OsFiles):
        try:
            with os.scandir(chunks) as it:  # a real store has 65536 folders: look at a few
                for i, e in enumerate(it):
                    if HEX4_RE.match(e.name) and e.is_dir(follow_symlinks=False):
                        return 100.0
                    if i > 64:
                        break
        except OSError:
            pass
    elif any(HEX4_RE.match(n) for n in fs.listdir(chunks)[:64]):
        return 100.0
    for t in BACKUP_TYPES + ("ns",):
        if fs.isdir(fs.path(path, t)):
            return 60.0
    return 30.0


class Archive:
    """One index of a snapshot and where it is shown (for damage entries)."""

    def __init__(self, snap, filename, index, source, paths, pxar=None, role="stream"):
        self.snap = snap
        self.filename = filename
        self.index = index
        self.source = source
        self.paths = paths  # tree paths of the node(s) showing it
        self.pxar = pxar  # PxarArchive reading this stream (metadata or payload)
        self.role = role


class State:
    """Per-discovery PBS state: the shared chunk pool and every archive opened."""

    def __init__(self, ctx):
        self.crypt = None
        keyfile = ctx.options.get("pbs_keyfile")
        self.key_error = None
        if keyfile:
            try:
                self.crypt = load_keyfile(keyfile)
            except PbsError as e:
                self.key_error = str(e)
                ctx.report.add("error", LAYER, keyfile, "bad-keyfile", str(e))
        self.pool = ChunkPool(self.crypt)
        self.datastores = []  # (name, root path, tree path, fs)
        self.archives: list[Archive] = []
        self.reported: set = set()  # (id(index), digest) already in a check_chunks entry
        self.checked = False  # check_chunks has run
        self.checked_archives = 0  # archives[:n] and datastores[:m] are checked (a datastore
        self.checked_stores = 0  # opened later, e.g. from a node tree, is checked on its own)
        self.early: list = []  # read failures before it (probes of other backends): deferred


# ---------------------------------------------------------------------------
class DatastoreWalker:
    """One datastore: ``root`` in ``fs`` (a real folder, or a directory node)."""

    def __init__(self, root, ctx, backend, fs=None, name=None):
        self.fs = fs or OsFiles(root=root)
        self.root = self.fs.root if fs is None else root
        self.base_name = name
        self.ctx = ctx
        self.backend = backend
        self.state: State = ctx.state(backend)
        self.bad = ctx.bad(BAD_EIO)  # a lost chunk is lost: EIO unless --bad zero

    def open(self):
        ctx = self.ctx
        base = self.base_name or self.fs.name(self.root) or "datastore"
        pbs = ctx.storage("pbs")
        name = pbs.add(base, Dir(), report=ctx.report, path_hint="storage/pbs")
        self.name = name
        self.tree_path = f"storage/pbs/{name}"
        store = ChunkStore(self.root, name, self.fs)
        self.state.pool.add(store)
        self.state.datastores.append((name, self.root, self.tree_path, self.fs))
        self.walk_ns(self.root, pbs.get(name), self.tree_path, "", 0)
        # Chunks are checked once every store is known (the backend's finish hook), so
        # that a chunk missing here can still be found in another datastore.

    def walk_ns(self, at, tree, tpath, ns, depth):
        fs = self.fs
        for btype in BACKUP_TYPES:
            tdir = fs.path(at, btype)
            if not fs.isdir(tdir):
                continue
            for bid in fs.listdir(tdir):
                gdir = fs.path(tdir, bid)
                if not ID_RE.match(bid) or not fs.isdir(gdir):
                    continue
                for btime in fs.listdir(gdir):
                    sdir = fs.path(gdir, btime)
                    if not TIME_RE.match(btime) or not fs.isdir(sdir):
                        continue
                    snap_tree = tree.subdir(btype).subdir(bid).subdir(btime)
                    snap = Snapshot(self, sdir, snap_tree, f"{tpath}/{btype}/{bid}/{btime}",
                                    btype, bid, btime, ns)
                    try:
                        snap.open()
                    except (PbsError, OSError) as e:
                        self.ctx.report.add("error", LAYER, snap.tree_path, "bad-snapshot", str(e))
        nsdir = fs.path(at, "ns")
        if fs.isdir(nsdir):
            if depth >= MAX_NS_DEPTH:
                self.ctx.report.add("warning", LAYER, f"{tpath}/ns", "too-deep",
                                    f"namespaces nested deeper than {MAX_NS_DEPTH}; not followed")
                return
            for n in fs.listdir(nsdir):
                sub = fs.path(nsdir, n)
                if NS_RE.match(n) and fs.isdir(sub):
                    sub_tree = tree.subdir("ns").subdir(n)
                    self.walk_ns(sub, sub_tree, f"{tpath}/ns/{n}", f"{ns}/{n}" if ns else n, depth + 1)


class Snapshot:
    def __init__(self, ds: DatastoreWalker, at, tree: Dir, tree_path, btype, bid, btime, ns):
        self.ds = ds
        self.ctx = ds.ctx
        self.fsa = ds.fs
        self.fs = at
        self.tree = tree
        self.tree_path = tree_path
        self.btype, self.bid, self.btime, self.ns = btype, bid, btime, ns
        self.label = f"{ns + ':' if ns else ''}{btype}/{bid}/{btime}"
        self.manifest = None
        self.indexes: dict = {}  # file name -> FixedIndex / DynamicIndex

    def report(self, severity, code, path, message, ranges=()):
        self.ctx.report.add(severity, LAYER, path, code, message, ranges)

    def open(self):
        files = self.fsa.listdir(self.fs)
        self.read_manifest("index.json.blob" in files)
        self.vm_dir = self.ct_dir = None
        handled = set()
        for fn in files:
            if fn.endswith(".mpxar.didx"):
                pfn = fn[: -len(".mpxar.didx")] + ".ppxar.didx"
                handled.update((fn, pfn))
                self.open_split(fn, pfn if pfn in files else None)
        for fn in files:
            if fn in handled:
                continue
            full = self.fsa.path(self.fs, fn)
            try:
                if fn.endswith(".blob"):
                    self.open_blob(fn, full)
                elif fn.endswith(".tmp_fidx") or fn.endswith(".tmp_didx"):
                    self.open_unfinished(fn, full, files)
                elif fn.endswith(".fidx"):
                    self.open_fidx(fn, full)
                elif fn.endswith(".ppxar.didx"):
                    self.report("error", "orphan-payload", f"{self.tree_path}/{fn}",
                                f"{self.label}: payload stream {fn} without its metadata stream")
                elif fn.endswith(".didx"):
                    self.open_didx(fn, full)
            except (PbsError, OSError) as e:
                self.report("error", "bad-archive", f"{self.tree_path}/{fn}", f"{self.label}: {fn}: {e}")
        self.check_manifest(files)

    # -- manifest ------------------------------------------------------------------
    def read_manifest(self, present):
        path = self.fsa.path(self.fs, "index.json.blob")
        if not present:
            self.report("warning", "no-manifest", self.tree_path,
                        f"{self.label}: index.json.blob is missing; archives shown without it")
            return
        try:
            raw = self.fsa.read(path, MAX_BLOB_FILE)
            doc = json.loads(decode_blob(raw, self.ds.state.crypt, limit=MAX_BLOB_FILE))
            if not isinstance(doc, dict) or not isinstance(doc.get("files", []), list):
                raise PbsError("manifest is not a JSON object with a files list")
            self.manifest = doc
        except (PbsError, OSError, ValueError) as e:
            # the archives stand on their own (every chunk is checked against its digest):
            # without the manifest only their cross-check is gone, as with no-manifest
            self.report("warning", "bad-manifest", f"{self.tree_path}/index.json",
                        f"{self.label}: manifest unreadable ({e}); archives shown without it")

    def check_manifest(self, files):
        if self.manifest is None:
            return
        for ent in self.manifest.get("files", []):
            if not isinstance(ent, dict):
                continue
            fn = str(ent.get("filename", ""))
            if fn not in files:
                self.report("error", "missing-archive", f"{self.tree_path}/{fn}",
                            f"{self.label}: {fn} is listed in the manifest but missing")
                continue
            full = self.fsa.path(self.fs, fn)
            try:
                if fn.endswith(".blob"):
                    data = self.fsa.read(full, MAX_BLOB_FILE)
                    if ent.get("csum") and hashlib.sha256(data).hexdigest() != ent.get("csum"):
                        self.report("error", "manifest-mismatch", f"{self.tree_path}/{fn}",
                                    f"{self.label}: {fn} differs from the manifest checksum")
                elif fn.endswith("idx"):
                    ix = self.indexes.get(fn)
                    if ix is None:
                        continue
                    if ent.get("csum") and ix.index_csum.hex() != ent.get("csum"):
                        self.report("error", "manifest-mismatch", f"{self.tree_path}/{fn}",
                                    f"{self.label}: {fn} index checksum differs from the manifest")
                    if ent.get("size") is not None and ent.get("size") != ix.size:
                        self.report("error", "manifest-mismatch", f"{self.tree_path}/{fn}",
                                    f"{self.label}: {fn} describes {ix.size} bytes, manifest says {ent.get('size')}")
            except OSError as e:
                self.report("error", "bad-archive", f"{self.tree_path}/{fn}", f"{self.label}: {fn}: {e}")

    # -- archives --------------------------------------------------------------------
    def open_unfinished(self, fn, full, files):
        """An index an interrupted backup left behind (``drive-scsi0.img.tmp_fidx``):
        shown under its final name (``.unfinished`` added if the finished one exists)."""
        final = fn.replace(".tmp_fidx", ".fidx").replace(".tmp_didx", ".didx")
        suffix = ".unfinished" if final in files else ""
        if fn.endswith(".tmp_fidx"):
            self.open_fidx(fn, full, name=final[: -len(".fidx")] + suffix, unfinished=True)
        else:  # a pxar stream without its end cannot be listed: the stream itself is shown
            ix = self._index(fn, full, unfinished=True)
            name = final[: -len(".didx")] + suffix
            paths: list = []
            src = self._source(fn, ix, paths)
            self.tree.add(name, File(src, mtime=ix.ctime), report=self.ctx.report, path_hint=self.tree_path)
            paths.append(f"{self.tree_path}/{name}")
            self.ds.state.archives.append(Archive(self, fn, ix, src, paths))

    def _index(self, fn, full, unfinished=False):
        ix = open_index(full, self.fsa, unfinished)
        self.indexes[fn] = ix
        for p in ix.problems:
            if unfinished:
                self.report("warning", "unfinished-backup", f"{self.tree_path}/{fn}", f"{self.label}: {fn}: {p}")
                continue
            code = "truncated-index" if "file size" in p else "bad-index"
            self.report("error", code, f"{self.tree_path}/{fn}", f"{self.label}: {fn}: {p}")
        return ix

    def _source(self, fn, ix, paths_holder, pxar_holder=None):
        """The index's source; a chunk that fails on read becomes a damage entry (for
        pxar streams naming the files in it, unless a directory is being listed)."""
        state = self.ds.state
        snap = self
        mapped = set()

        def on_bad(start, length, err: ChunkError):
            if not state.checked:  # the mount-time check will report it (with its neighbours)
                state.early.append((on_bad, start, length, err))
                return
            if (id(ix), err.digest) in state.reported:
                return  # already one entry of the mount-time check, with this range in it
            pxar = pxar_holder[0] if pxar_holder else None
            if pxar is not None and (getattr(LISTING, "depth", 0) or start in mapped):
                pxar = None
            mapped.add(start)
            for p, msg in damage_lines(snap.label, fn, err, [(start, length)], src, pxar, snap.ds.bad,
                                       paths_holder):
                snap.report("error", err_code(err), p, msg, [(start, length)])

        src = IndexSource(ix, state.pool, bad=self.ds.bad, label=f"{self.label}/{fn}", on_bad=on_bad)
        return src

    def backup_item(self, volname, **what):
        """Show ``volname`` in the guest's ``backups/<time>/`` of the Proxmox view
        (VM and container backups with a numeric id; host backups are not guests)."""
        if self.btype not in ("vm", "ct") or not self.bid.isdigit():
            return None
        return self.ctx.add_proxmox(Locator("pbs", self.ds.tree_path, volname, vmid=int(self.bid),
                                            guest="qemu" if self.btype == "vm" else "lxc",
                                            backup=self.btime), **what)

    def open_fidx(self, fn, full, name=None, unfinished=False):
        ix = self._index(fn, full, unfinished)
        name = name or fn[: -len(".fidx")]
        paths: list = []
        src = self._source(fn, ix, paths)
        vol = self.ctx.add_volume(src, self.tree, name, self.tree_path, "disk", children_home="parts",
                                  mtime=ix.ctime)
        vol.info.update({"format": "pbs-fidx", "snapshot": self.label, "archive": fn})
        paths.append(vol.path)
        lost = (ix.known * ix.chunk_size, ix.size - ix.known * ix.chunk_size) if ix.known < ix.count else None
        if self.btype == "vm" and self.bid.isdigit():
            base, extra = (name[: -len(".unfinished")], "-unfinished") if name.endswith(".unfinished") else (name, "")
            stem = base[: -len(".img")] if base.endswith(".img") else base
            dev = (stem[len("drive-"):] if stem.startswith("drive-") else stem) + extra
            used = self.backup_item(f"disk-{dev}.raw", volume=vol, mtime=ix.ctime)
            if used:
                paths.append(used)
        self.ds.state.archives.append(Archive(self, fn, ix, src, paths, role="disk"))
        if unfinished:
            never = []
            for i in range(ix.known):
                if ix.digest(i) is None:
                    start, length = ix.chunk_range(i)
                    if never and never[-1][0] + never[-1][1] == start:
                        never[-1] = (never[-1][0], never[-1][1] + length)
                    else:
                        never.append((start, length))
            if never:
                how = "zero-filled" if self.ds.bad == BAD_ZERO else "read as EIO"
                for p in paths:
                    self.report("warning", "unfinished-backup", p,
                                f"{self.label}: {fn}: the backup was interrupted; "
                                f"{sum(n for _, n in never)} bytes were never uploaded ({how})", never)
        if lost:
            how = "zero-filled" if self.ds.bad == BAD_ZERO else "read as EIO"
            for p in paths:
                self.report("error", "truncated-index", p,
                            f"{self.label}: {fn} is truncated: the digests of chunks {ix.known}.."
                            f"{ix.count - 1} are lost ({lost[1]} bytes {how})", [lost])

    def open_didx(self, fn, full):
        ix = self._index(fn, full)
        name = fn[: -len(".didx")]
        paths: list = []
        holder: list = []
        src = self._source(fn, ix, paths, holder)
        if name.endswith(".pxar"):
            pxar = self._pxar(name, src, None, paths)
            holder.append(pxar)
            self.ds.state.archives.append(Archive(self, fn, ix, src, paths, pxar=pxar, role="pxar"))
        else:
            self.tree.add(name, File(src, mtime=ix.ctime), report=self.ctx.report, path_hint=self.tree_path)
            paths.append(f"{self.tree_path}/{name}")
            self.ds.state.archives.append(Archive(self, fn, ix, src, paths))
            if name.endswith(".pcat1"):
                self.tree.add(name[: -len(".pcat1")] + ".txt", GeneratedFile(_once(lambda: catalog_text(src)),
                              mtime=ix.ctime), report=self.ctx.report, path_hint=self.tree_path)

    def open_split(self, mfn, pfn):
        mix = self._index(mfn, self.fsa.path(self.fs, mfn))
        name = mfn[: -len(".mpxar.didx")] + ".pxar"
        paths: list = []
        holder: list = []
        msrc = self._source(mfn, mix, paths, holder)
        psrc = pix = None
        if pfn is None:
            self.report("error", "missing-payload", f"{self.tree_path}/{name}",
                        f"{self.label}: {mfn} has no payload stream; file contents are unreadable")
        else:
            try:
                pix = self._index(pfn, self.fsa.path(self.fs, pfn))
                psrc = self._source(pfn, pix, paths, holder)
            except PbsError as e:
                self.report("error", "bad-archive", f"{self.tree_path}/{pfn}", f"{self.label}: {e}")
        pxar = self._pxar(name, msrc, psrc, paths)
        holder.append(pxar)
        self.ds.state.archives.append(Archive(self, mfn, mix, msrc, paths, pxar=pxar, role="pxar"))
        if pix is not None:
            self.ds.state.archives.append(Archive(self, pfn, pix, psrc, paths, pxar=pxar, role="pxar"))

    def _pxar(self, name, meta, payload, paths):
        tpath = f"{self.tree_path}/{name}"
        snap = self

        def report(severity, code, relpath, message, ranges=()):
            snap.report(severity, code, f"{tpath}{relpath if relpath != '/' else ''}",
                        f"{snap.label}: {name}: {message}")

        pxar = PxarArchive(meta, payload, label=f"{self.label}/{name}", report=report, bad=self.ds.bad)
        root = pxar.root()
        self.tree.add(name, root, report=self.ctx.report, path_hint=self.tree_path)
        paths.append(tpath)
        if self.btype == "ct" and self.bid.isdigit() and name == "root.pxar":
            self.backup_item("rootfs", tree=root)
        if self.btype == "host":  # a node's root: may hold the cluster database
            self.ctx.add_host_root(root, tpath, "PBS host backup")
        return pxar

    def open_blob(self, fn, full):
        name = fn[: -len(".blob")]
        if self.fsa.size(full) > MAX_BLOB_FILE:
            self.report("warning", "large-blob", f"{self.tree_path}/{fn}",
                        f"{self.label}: {fn} is larger than {MAX_BLOB_FILE} bytes; not decoded")
            return
        raw = self.fsa.read(full, MAX_BLOB_FILE)
        mtime = self.fsa.mtime(full)
        try:
            data = decode_blob(raw, self.ds.state.crypt, limit=MAX_BLOB_FILE)
        except EncryptedBlobError:
            self.report("warning", "encrypted", f"{self.tree_path}/{fn}",
                        f"{self.label}: {fn} is encrypted; pass --pbs-keyfile to decode it")
            return
        except PbsError as e:
            # a guest config or log blob is a lost file; the manifest's own loss is only
            # its cross-check (bad-manifest says so)
            self.report("warning" if fn == "index.json.blob" else "error", "bad-blob",
                        f"{self.tree_path}/{fn}", f"{self.label}: {fn}: {e}")
            return
        node = File(BytesSource(data, label=f"{self.label}/{name}"), mtime=mtime)
        self.tree.add(name, node, report=self.ctx.report, path_hint=self.tree_path)
        if (self.btype == "vm" and name in ("qemu-server.conf", "fw.conf")) or \
                (self.btype == "ct" and name in ("pct.conf", "fw.conf")):
            self.backup_item(name, node=node)


# ---------------------------------------------------------------------------
#: Bump when what :class:`ChunkListing` stores changes.
LISTING_VERSION = 1
FOLDERS = 1 << 16  # ``.chunks/0000`` .. ``.chunks/ffff``
#: Bytes of digests (32 a chunk) the chunk check holds at once: it takes the digests of
#: every index and of the chunk files a range of folders at a time (more ranges for a
#: bigger datastore), so a datastore of millions of chunks is checked in a few times this
#: much memory, not in ~90 bytes a chunk.
CHECK_BUDGET = 8 << 20


class FolderLister:
    """The chunk files of one datastore's ``.chunks/`` a range of ``<4hex>`` folders at a
    time (in ascending, adjoining ranges): their sorted digests and the ``*.bad`` files."""

    def __init__(self, store):
        self.store = store
        fs = store.fs
        try:
            names = sorted(n for n in fs.listdir(store.chunks) if HEX4_RE.match(n))
        except (OSError, PbsError):
            names = []
        self.dirs = [int(n, 16) for n in names]
        self.pos = 0
        self.bad = 0
        self.ok = True

    def estimate(self):
        """About how many chunk files there are (a few folders counted)."""
        if not self.dirs:
            return 0
        pick = self.dirs[:: max(1, len(self.dirs) // 8)][:8]
        n = sum(len(self._names(d)) for d in pick)
        return n * len(self.dirs) // len(pick)

    def _names(self, d):
        fs = self.store.fs
        try:
            return fs.listdir(fs.path(self.store.chunks, f"{d:04x}"))
        except (OSError, PbsError):
            return []

    def _folder(self, d):
        return _folder_names(self._names(d))

    def rows(self, lo, hi):
        """``(n, 32)`` uint8: the sorted digests of the chunk files of folders lo..hi-1."""
        buf = bytearray()
        while self.pos < len(self.dirs) and self.dirs[self.pos] < hi:
            d = self.dirs[self.pos]
            self.pos += 1
            if d < lo:
                continue
            got = self._take(d)
            buf += got
        return np.frombuffer(buf, np.uint8).reshape(-1, 32)

    def _take(self, d):
        digs, bad = self._folder(d)
        self.bad += bad
        return b"".join(digs)

    def finish(self):
        pass


class ChunkListing(FolderLister):
    """:class:`FolderLister` of a folder of this machine, kept in the index store: a folder
    whose mtime is unchanged holds the same names (adding, removing or renaming a chunk
    file changes it), so only changed folders are listed again.  A datastore of 5 million
    chunks is then checked with 65,536 ``stat`` calls instead of 65,536 listings.  The
    stored digests are read from the mapped entry a range at a time (file pages, given
    back after each range); a new listing is written a range at a time
    (:class:`pvfs.index.IndexWriter`).  ``ok`` is False for other stores."""

    def __init__(self, ctx, backend, store):
        self.store, self.ctx = store, ctx
        self.pos = self.bad = 0
        self.ok = False
        self.old = self.writer = None
        self.counts, self.bads = [], []
        self.kept = {}
        if not isinstance(store.fs, OsFiles):
            return
        try:
            st = os.stat(store.chunks)
            with os.scandir(store.chunks) as it:
                now = {int(e.name, 16): e.stat(follow_symlinks=False).st_mtime_ns for e in it
                       if HEX4_RE.match(e.name) and e.is_dir(follow_symlinks=False)}
        except OSError:
            return
        self.ok = True
        self.dirs = sorted(now)
        self.mtimes = [now[d] for d in self.dirs]
        where = f"pbs-chunks:{st.st_dev}:{st.st_ino}"
        self.ix = ctx.index(backend, "chunk-listing", None, version=LISTING_VERSION,
                            path=store.chunks, ident=(where, {}))
        got = self.ix.load(mapped=True)
        if got is not None:
            _info, a = got
            counts = a["counts"].tolist()
            odirs, omt, obad = a["dirs"].tolist(), a["mtimes"].tolist(), a["bad"].tolist()
            if a["digests"].shape[1:] == (32,) and sum(counts) == len(a["digests"]) \
                    and len(counts) == len(odirs) == len(omt) == len(obad):
                self.old = a
                pos = 0
                for d, mt, n, bad in zip(odirs, omt, counts, obad, strict=True):
                    if now.get(d) == mt:  # the stored rows of every folder still as it was
                        self.kept[d] = (pos, pos + n, bad)
                    pos += n
        reuse = self.old is not None and len(self.kept) == len(now) == len(self.old["dirs"])
        if not reuse:
            self.writer = self.ix.writer()

    def estimate(self):
        if self.old is not None:
            return len(self.old["digests"])
        return super().estimate()

    def _names(self, d):
        try:
            return os.listdir(os.path.join(self.store.chunks, f"{d:04x}"))
        except OSError:
            return []

    def _take(self, d):
        k = self.pos - 1
        if k % 4096 == 0:
            self.ctx.note_progress(f"pbs: listing chunks of {self.store.name}: {k}/{len(self.dirs)} "
                                   f"folders")
        kept = self.kept.get(d)
        if kept is not None:
            lo, hi, bad = kept
            raw = self.old["digests"][lo:hi].tobytes()
        else:
            digs, bad = _list_dir(os.path.join(self.store.chunks, f"{d:04x}"))
            raw = b"".join(digs)
        self.bad += bad
        self.counts.append(len(raw) // 32)
        self.bads.append(bad)
        return raw

    def rows(self, lo, hi):
        out = super().rows(lo, hi)
        if self.writer is not None:
            self.writer.append("digests", out)
        if self.old is not None:
            self.old.release()  # the pages of this range: read, copied, given back
        return out

    def finish(self):
        """Keep the listing when it changed (every folder was taken)."""
        if self.writer is not None:
            n = sum(self.counts)
            if not n:
                self.writer.append("digests", np.zeros((0, 32), np.uint8))
            self.writer.save({"chunks": n},
                             {"dirs": np.array(self.dirs, np.int64),
                              "mtimes": np.array(self.mtimes, np.int64),
                              "bad": np.array(self.bads, np.int64),
                              "counts": np.array(self.counts, np.int64)})
            self.writer = None
        self.old = None
        self.kept = {}


def _words(digests) -> np.ndarray:
    """32-byte digests as rows of four 64-bit words in native order, read big-endian: their
    order is the bytes' order, and numpy sorts and compares them fast (its ``np.unique``
    of a million V32 digests took 12 s here, of a million uint64 6 s: it hashes)."""
    raw = np.ascontiguousarray(digests).view(">u8")  # a view, not a copy (32 bytes a chunk)
    return raw.astype(np.uint64).reshape(-1, 4)


def first_words(digests) -> np.ndarray:
    """The first 8 bytes of each digest (rows of 32 bytes or V32) as native uint64:
    8 bytes a chunk where the whole words take 32."""
    words = np.ascontiguousarray(digests).view(">u8").reshape(-1, 4)  # a view
    return words[:, 0].astype(np.uint64)  # the one copy


#: Digests looked up at once in :func:`digests_in` (~140 bytes each while it runs)
LOOKUP_BATCH = 1 << 15


def digests_in(query, table, t0=None) -> np.ndarray:
    """For each digest of ``query`` whether ``table`` (rows of 32 bytes) holds it: a binary
    search on the first word, then the whole digest compared, a batch at a time: the
    table's first words (``t0``, from :func:`first_words`, computed when not given) are
    the only copy of it made (a datastore of 2 million chunks: 16 MB, not 64 MB twice)."""
    q = np.ascontiguousarray(query).view(np.uint8).reshape(-1, 32)
    table = np.ascontiguousarray(table).view(np.uint8).reshape(-1, 32)
    found = np.zeros(len(q), dtype=bool)
    if not len(q) or not len(table):
        return found
    if t0 is None:
        t0 = first_words(table)
    order = None
    if len(t0) > 1 and not np.all(t0[1:] >= t0[:-1]):
        order = np.argsort(t0, kind="stable")
        t0 = t0[order]
    for s in range(0, len(q), LOOKUP_BATCH):
        qw = _words(q[s:s + LOOKUP_BATCH])
        lo = np.searchsorted(t0, qw[:, 0], "left")
        hi = np.searchsorted(t0, qw[:, 0], "right")
        n = hi - lo
        one = np.flatnonzero(n == 1)
        rows = lo[one] if order is None else order[lo[one]]
        found[s + one] = np.all(_words(table[rows]) == qw[one], axis=1)
        for i in np.flatnonzero(n > 1):  # several digests share the first 8 bytes
            span = np.arange(lo[i], hi[i])
            rows = span if order is None else order[span]
            found[s + i] = bool(np.any(np.all(_words(table[rows]) == qw[i], axis=1)))
    return found


def _folder_names(names):
    """(sorted digest bytes, count of ``*.bad``) of the names in a ``.chunks/<4hex>``
    folder."""
    digs = sorted(bytes.fromhex(e) for e in names if DIGEST_RE.match(e))
    return digs, sum(1 for e in names if e.endswith(".bad"))


def _list_dir(path):
    """:func:`_folder_names` of one ``.chunks/<4hex>`` folder of this machine."""
    try:
        return _folder_names(os.listdir(path))
    except OSError:
        return [], 0


def _folder_ranges(items):
    """Adjoining ranges of ``<4hex>`` folders, each holding about ``CHECK_BUDGET`` bytes of
    digests when ``items`` digests are spread over all of them (SHA-256: evenly)."""
    parts = 1
    while parts < FOLDERS and items * 32 > parts * CHECK_BUDGET:
        parts *= 2
    step = FOLDERS // parts
    return [(lo, lo + step) for lo in range(0, FOLDERS, step)]


class _Buckets:
    """The digests of some archives sorted into folder ranges in one walk over their
    tables: kept in memory for one range, else appended to an unnamed temporary file per
    range (32 bytes a reference: the index tables of a datastore are read once, not once
    per range)."""

    def __init__(self, ranges):
        self.flush = max(4096, CHECK_BUDGET // len(ranges))  # bytes kept per range
        self.starts = np.array([lo for lo, _hi in ranges], np.uint64)
        self.bufs = [bytearray() for _ in ranges]
        self.files = [None] * len(ranges)

    def add(self, rows):
        if len(self.bufs) == 1:
            self.bufs[0] += memoryview(np.ascontiguousarray(rows)).cast("B")
            return
        part = np.searchsorted(self.starts, first_words(rows) >> np.uint64(48), "right") - 1
        order = np.argsort(part, kind="stable")
        rows, part = rows[order], part[order]
        bounds = np.searchsorted(part, np.arange(len(self.bufs) + 1))
        for i in np.flatnonzero(bounds[1:] > bounds[:-1]).tolist():
            buf = self.bufs[i]
            buf += memoryview(rows[bounds[i]:bounds[i + 1]]).cast("B")
            if len(buf) >= self.flush:
                self._flush(i)

    def _flush(self, i):
        import tempfile

        if self.files[i] is None:
            self.files[i] = tempfile.TemporaryFile(prefix="pvfs-pbs-")
        self.files[i].write(self.bufs[i])
        self.bufs[i] = bytearray()

    def take(self, i):
        """The digests of range ``i``, each once, sorted, as ``(n, 32)`` uint8 rows."""
        f = self.files[i]
        if f is not None:
            self._flush(i)
            f.seek(0)
            raw = f.read()
            f.close()
            self.files[i] = None
        else:
            raw, self.bufs[i] = self.bufs[i], bytearray()
        return _unique_rows(np.frombuffer(raw, np.uint8).reshape(-1, 32))

    def close(self):
        for f in self.files:
            if f is not None:
                f.close()


def _unique_rows(rows):
    """``rows`` ((n, 32) uint8 digests) sorted, each once, in about 48 bytes a row on top
    of them (one sorted copy, its first words, the order; the lexsort it replaced made
    four 32-byte copies).  Repeated digests are found with numpy; only digests that share
    their first 8 bytes yet differ (rare with SHA-256) are sorted in Python."""
    if not len(rows):
        return np.zeros((0, 32), np.uint8)
    t0 = first_words(rows)
    order = np.argsort(t0, kind="stable")
    t0 = t0[order]
    rows = rows[order]
    del order
    keep = np.ones(len(rows), dtype=bool)
    tie = np.flatnonzero(t0[1:] == t0[:-1])  # rows sharing their first 8 bytes: mostly the
    if not len(tie):  # same digest again (backups of the same disk share their chunks)
        return rows
    words = rows.view(np.uint64)  # (n, 4): whole rows compared a batch at a time
    same = np.empty(len(tie), dtype=bool)
    for s in range(0, len(tie), 1 << 16):
        j = tie[s:s + (1 << 16)]
        same[s:s + len(j)] = np.all(words[j + 1] == words[j], axis=1)
    keep[tie[same] + 1] = False
    starts = set()
    for p in tie[~same].tolist():  # other digests with the same first 8 bytes: rare
        a = p
        while a > 0 and t0[a - 1] == t0[p]:
            a -= 1
        starts.add(a)
    for a in sorted(starts):  # such a run sorted by its whole digests, each kept once
        b = a + 1
        while b < len(rows) and t0[b] == t0[a]:
            b += 1
        run = sorted(rows[a:b].tobytes()[i:i + 32] for i in range(0, (b - a) * 32, 32))
        rows[a:b] = np.frombuffer(b"".join(run), np.uint8).reshape(-1, 32)
        for i in range(a + 1, b):
            keep[i] = run[i - a] != run[i - a - 1]
    return rows if keep.all() else rows[keep]


def _check_range(ctx, pool, part, lo, hi, new_b, all_b, listers, orphans, use_listing, zero,
                 verify, failures, k):
    """One folder range of :func:`check_chunks`: the referenced digests looked up in the
    chunk files (``found``), the chunk files no digest references counted (orphans), the
    rest checked one by one; returns the count of digests checked so far."""
    new_u = new_b.take(part)
    all_u = (new_u if all_b is new_b else all_b.take(part)) if all_b is not None else new_u
    all_t0 = first_words(all_u) if orphans and len(all_u) else None
    found = np.zeros(len(new_u), dtype=bool)
    for st in pool.stores:
        lister = listers.get(id(st))
        if lister is None:
            continue
        have = lister.rows(lo, hi)
        if use_listing and len(new_u) and len(have):
            found |= digests_in(new_u, have)  # there when any datastore has its file
        if id(st) in orphans and len(have):
            used = digests_in(have, all_u, all_t0) if all_t0 is not None else 0
            orphans[id(st)] += int(len(have) - np.count_nonzero(used))
        del have
    todo = new_u[~found] if use_listing else new_u
    del new_u, all_u, all_t0, found
    for v in todo:
        digest = v.tobytes()
        if digest in zero:
            continue
        if k % 4096 == 0:
            ctx.note_progress(f"pbs: checking chunks ({verify}): {k}")
        k += 1
        err = _check_one(pool, digest, None, verify)
        if err is not None:
            failures[digest] = err
    return k


def check_chunks(ctx, state: State, verify="exists", backend=None):
    """After every datastore is known: missing (and, with ``verify=full``, corrupt)
    chunks become damage entries with their byte ranges, and for pxar the files in
    them; chunk files no index references are counted.

    Memory stays flat for stores of millions of chunks: the referenced digests and the
    chunk files are joined a range of ``<4hex>`` folders at a time (about
    :data:`CHECK_BUDGET` bytes of digests each: the index tables are walked once, their
    digests sorted into the ranges (:class:`_Buckets`), never held), only failures are
    kept in a dict."""
    pool = state.pool
    new_archives = state.archives[state.checked_archives:]
    new_stores = state.datastores[state.checked_stores:]
    state.checked_archives, state.checked_stores = len(state.archives), len(state.datastores)
    archives = [a for a in new_archives if a.index.known]
    # Orphans of a datastore opened now count the references of every archive so far.
    everything = [a for a in state.archives if a.index.known] if new_stores else archives
    if len(everything) == len(archives):  # (archives is part of it)
        everything = archives
    # The zero chunk of any chunk size in use has known content: nothing to check.
    sizes = {a.index.chunk_size for a in new_archives if isinstance(a.index, FixedIndex)}
    zero = {zero_digest(cs) for cs in sizes} - {None}
    failures: dict = {}
    new_roots = {root for _n, root, _t, _fs in new_stores}
    listers: dict = {}
    use_listing = verify == "exists" and backend is not None
    if use_listing:
        listers = {id(st): ChunkListing(ctx, backend, st) for st in pool.stores}
        use_listing = all(v.ok for v in listers.values())
    if not use_listing:  # the chunks are checked one by one: the folders only for orphans
        listers = {id(st): FolderLister(st) for st in pool.stores if st.root in new_roots}
    orphans = {id(st): 0 for st in pool.stores if id(st) in listers and st.root in new_roots}
    refs = sum(a.index.known for a in everything)
    chunks = max((v.estimate() for v in listers.values()), default=0)
    ranges = _folder_ranges(max(refs, chunks))
    new_b = _Buckets(ranges)
    all_b = new_b if everything is archives else _Buckets(ranges) if orphans else None
    fresh = {id(a) for a in archives}
    try:
        for a in everything if all_b is not None else archives:  # each table walked once
            for _first, rows in a.index.digest_rows():
                if len(rows):
                    if id(a) in fresh:
                        new_b.add(rows)
                    if all_b is not None and all_b is not new_b:
                        all_b.add(rows)
        k = 0
        for part, (lo, hi) in enumerate(ranges):
            k = _check_range(ctx, pool, part, lo, hi, new_b, all_b, listers, orphans,
                             use_listing, zero, verify, failures, k)
    finally:
        new_b.close()
        if all_b is not None:
            all_b.close()
    for lister in listers.values():
        lister.finish()
    del archives, everything
    if failures:
        fail_rows = np.frombuffer(b"".join(sorted(failures)), np.uint8).reshape(-1, 32)
        fail_t0 = first_words(fail_rows)
        for arc in new_archives:
            ix = arc.index
            skip_none = ix.kind == "fidx" and ix.unfinished  # digest(i) None: never written
            bad_ranges: dict = {}  # kind -> [(start, length, digest)]
            for first, rows in ix.digest_rows():
                for j in np.flatnonzero(digests_in(rows, fail_rows, fail_t0)).tolist():
                    digest = rows[j].tobytes()
                    if skip_none and digest == bytes(32):
                        continue
                    err = failures[digest]
                    start, length = ix.chunk_range(first + j)
                    kind = err if isinstance(err, str) else err.kind
                    bad_ranges.setdefault(kind, []).append((start, length, digest))
                    state.reported.add((id(ix), digest))
            _report_bad(ctx, arc, bad_ranges, failures, pool)
    state.checked = True
    early, state.early = state.early, []
    for cb, start, length, err in early:  # corrupt chunks the check did not look at (no verify)
        cb(start, length, err)
    by_root = {st.root: listers.get(id(st)) for st in pool.stores}
    ids = {st.root: id(st) for st in pool.stores}
    for _name, root, tpath, _fs in new_stores:
        lister = by_root.get(root)
        _report_store(ctx, tpath, orphans.get(ids.get(root), 0),
                      lister.bad if lister is not None else 0)


def _report_store(ctx, tpath, orphans, bad_files):
    if orphans:
        ctx.report.add("info", LAYER, tpath, "orphan-chunks",
                       f"{orphans} chunk files are referenced by no index found "
                       f"(pruned backups or lost indexes; raw material for carving)")
    if bad_files:
        ctx.report.add("warning", LAYER, tpath, "bad-chunk-files",
                       f"{bad_files} chunk files were renamed *.bad by a PBS verify job")


def _report_bad(ctx, arc, bad_ranges, failures, pool):
    for kind, items in bad_ranges.items():
        ranges = [(s_, n_) for s_, n_, _d in items]
        ndigests = len({d for _s, _n, d in items})
        first = pool.error(items[0][2], failures[items[0][2]])
        if ndigests > 1:  # many chunks: one entry per archive and kind, every range in it
            what = "missing from every datastore" if kind == "missing" else "corrupt"
            first = ChunkError(kind, f"{ndigests} chunks are {what} (first: {first})", first.digest)
        for p, msg in damage_lines(arc.snap.label, arc.filename, first, ranges, arc.source, arc.pxar,
                                   arc.source.bad, arc.paths):
            ctx.report.add("error", LAYER, p, err_code(first), msg, ranges)


def _once(fn):
    """Memoise a GeneratedFile's render (it is asked for the size, then for the bytes)."""
    cache = []

    def render():
        if not cache:
            cache.append(fn())
        return cache[0]
    return render


def err_code(err):
    return "missing-chunk" if err.kind == "missing" else "bad-chunk"


def damage_lines(label, filename, err, ranges, source, pxar, bad, paths):
    """(path, message) for each tree path of an archive hit by a bad chunk; for pxar
    streams the message names the files whose contents lie in the ranges."""
    how = "zero-filled" if bad == BAD_ZERO else "read as EIO"
    total = sum(n for _, n in ranges)
    files = ""
    if pxar is not None:
        try:
            names = sorted(set(pxar.files_in(source, ranges)))
        except Exception as e:  # the walk itself may run into the damage
            names = [f"(listing failed: {type(e).__name__}: {e})"]
        shown = ", ".join(names[:MAX_NAMED_FILES])
        if len(names) > MAX_NAMED_FILES:
            shown += f" and {len(names) - MAX_NAMED_FILES} more"
        files = "; files: " + (shown if names else "none (metadata only)")
    msg = f"{label}: {filename}: {err} ({total} bytes {how}){files}"
    return [(p, msg) for p in paths]


def _check_one(pool, digest, length, verify):
    if verify == "full":
        try:
            pool.get(digest, length)
            return None
        except ChunkError as e:
            return e
    if pool.exists(digest):
        return None
    pool.bad[digest] = pool.MISSING
    return pool.MISSING
