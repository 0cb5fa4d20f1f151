"""Open a vzdump archive: detect, index once (sidecar), build the tree and the Proxmox view.

The sidecar index (stream restart points + VMA cluster map or tar member list) is kept in
``vzdump/`` of the core index store (``--index-dir``, default ``~/.cache/pvfs/index/``),
never beside the input; ``--vzdump-index-dir DIR`` puts it elsewhere, ``none`` (or
``--index-dir none``) keeps it in memory only.  Its name is derived from the input's path, size and mtime, so a changed
archive is indexed again.

References: pve-manager ``PVE/VZDump.pm`` (archive names: ``vzdump-<qemu|lxc>-<vmid>-
<YYYY_MM_DD-HH_MM_SS>.<vma|tar>[.zst|.lzo|.gz]``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import tempfile
import time
import zlib

import numpy as np
import zstandard

from pvfs.nodes import Dir, File
from pvfs.proxmox.view import Locator
from pvfs.source import BAD_EIO, BytesSource

from . import NAME_RE, header_ok
from .streams import (DecodedStream, SeekCacheWriter, StreamIndex, _SliceIO, decode_lzo_block, detect_codec,
                      lzop_header, scan)
from .structs import VMA_MAGIC, VzdumpError
from .tarindex import MemberDB, TarTree, index_tar
from .vma import ClusterMap, VmaDevice, VmaHeaderInfo, index_vma

SIDECAR_VERSION = 3
LAYER = "vzdump"


def parse_name(name):
    """(kind, vmid, time) from a vzdump file name, or None."""
    m = NAME_RE.match(name)
    if not m:
        return None
    kind = "qemu" if m[1] == "qemu" else "lxc"
    return kind, int(m[2]), f"{m[3]}-{m[4]}-{m[5]}T{m[6]}:{m[7]}:{m[8]}"


def peek(src, codec, n=12288):
    """The first ``n`` decoded bytes (best effort, never raises)."""
    try:
        if codec == "raw":
            return src.read(0, n)
        if codec == "zstd":
            r = zstandard.ZstdDecompressor().stream_reader(_SliceIO(src, 0, min(src.size, 4 << 20)))
            return r.read(n)
        if codec == "gzip":
            return zlib.decompressobj(31).decompress(src.read(0, min(src.size, 1 << 20)), n)
        if codec == "lzop":
            flags, p = lzop_header(src)
            import struct

            dst, sl = struct.unpack(">II", src.read(p, 8))
            p += 8 + (4 if flags & 1 else 0) + (4 if flags & 0x100 else 0)
            if sl < dst:
                p += (4 if flags & 2 else 0) + (4 if flags & 0x200 else 0)
            if dst > (64 << 20) or sl > dst:
                return b""
            return decode_lzo_block(src.read(p, sl), dst, 4 if sl == dst else 3)[:n]
    except Exception:
        return b""
    return b""


def content_kind(head):
    if head[:4] == VMA_MAGIC:
        return "vma"
    if len(head) >= 512 and header_ok(head[:512]):
        return "tar"
    return None


# --- sidecar ------------------------------------------------------------------------------
def sidecar_dir(ctx):
    """``--vzdump-index-dir`` if given, else ``vzdump/`` in the core index store
    (``--index-dir``, pvfs/index.py); None (memory only) when the store is off."""
    opt = ctx.options.get("vzdump_index_dir")
    if opt is not None and str(opt).lower() in ("", "none", "off"):
        return None
    if opt:
        return opt
    root = ctx.indexes.root
    return os.path.join(root, "vzdump") if root else None


def sidecar_key(path):
    st = os.stat(path)
    ident = f"{os.path.realpath(path)}|{st.st_size}|{st.st_mtime_ns}|{SIDECAR_VERSION}"
    return hashlib.sha256(ident.encode()).hexdigest()[:32]


def load_sidecar(d, key):
    try:
        with open(os.path.join(d, key + ".json")) as f:
            meta = json.load(f)
        arrays = None
        if meta.get("arrays"):
            with np.load(os.path.join(d, key + ".npz")) as z:
                arrays = {k: z[k] for k in z.files}
        if meta.get("version") != SIDECAR_VERSION:
            return None
        return meta, arrays
    except (OSError, ValueError, KeyError, zlib.error):
        return None


def save_sidecar(d, key, meta, arrays=None):
    os.makedirs(d, exist_ok=True)
    meta = dict(meta, version=SIDECAR_VERSION, arrays=bool(arrays))
    if arrays:
        fd, tmp = tempfile.mkstemp(dir=d, suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, os.path.join(d, key + ".npz"))
    fd, tmp = tempfile.mkstemp(dir=d, suffix=".json.tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(meta, f)
    os.replace(tmp, os.path.join(d, key + ".json"))


# --- open ---------------------------------------------------------------------------------
class VzdumpArchive:
    def __init__(self, volume, ctx):
        self.vol = volume
        self.ctx = ctx
        self.src = volume.source
        self.name = volume.name
        self.codec = detect_codec(self.src.read(0, 16))
        self.kind = content_kind(peek(self.src, self.codec))
        self.bad = ctx.bad(BAD_EIO)
        self.dir = volume.homes[0].dir()
        self.path = volume.homes[0].path
        self.parsed_name = parse_name(self.name)

    def unreadable_why(self):
        """Why an archive named as a vzdump backup cannot be opened, in the user's terms."""
        m = NAME_RE.match(self.vol.file_name or self.name)
        ext = (m[10] or "") if m else ""
        want = {".zst": "zstd", ".gz": "gzip", ".lzo": "lzop", "": "raw"}.get(ext, "raw")
        head = self.src.read(0, 16)
        if want != self.codec:
            return (f"{self.name}: named as a{' ' + want if want != 'raw' else ''} vzdump "
                    f"archive, but its {want} header is destroyed (it starts with "
                    f"{head[:8].hex()}); nothing in it was recovered")
        return (f"{self.name}: neither a VMA nor a tar archive inside the {self.codec} stream "
                f"(the start of the archive is damaged); nothing in it was recovered")

    def report(self, severity, code, path, message, ranges=()):
        self.ctx.report.add(severity, LAYER, path, code, message, ranges)

    def backup_item(self, volname, **what):
        """Show ``volname`` in the guest's ``backups/<time>/`` of the Proxmox view."""
        kind, vmid, when = self.parsed_name
        return self.ctx.add_proxmox(Locator("vzdump", self.path, volname, vmid=vmid, guest=kind,
                                            backup=when), **what)

    def side_files(self):
        """vzdump writes ``<basename>.log`` and ``<basename>.notes`` beside the archive."""
        if not self.vol.input_path:
            return
        m = NAME_RE.match(self.name)
        stem = self.vol.input_path[: len(self.vol.input_path) - len(self.name)] + self.name[: m.start(9) - 1]
        for ext, name in ((".log", "vzdump.log"), (".notes", "notes")):
            path = stem + ext
            if os.path.isfile(path) and os.path.getsize(path) <= (16 << 20):
                try:
                    with open(path, "rb") as f:
                        data = f.read(16 << 20)
                except OSError:
                    continue
                self.backup_item(name, node=File(BytesSource(data, label=name),
                                                 mtime=os.path.getmtime(path)))

    def _progress(self, what):
        last = [0.0]

        def cb(pos, total=None):
            now = time.monotonic()
            if now - last[0] > 0.5:
                last[0] = now
                pct = f" {100 * pos // max(1, total or self.src.size)}%" if self.codec == "raw" or total else \
                    f" {pos >> 20} MiB decoded"
                self.ctx.note_progress(f"vzdump: indexing {self.name}:{pct}")
        return cb

    def open(self):
        if self.kind is None:
            raise VzdumpError(self.unreadable_why())
        side = sidecar_dir(self.ctx)
        key = sidecar_key(self.vol.input_path) if (side and self.vol.input_path) else None
        self._side = (side, key)
        self._memdb = None
        cached = load_sidecar(side, key) if key else None
        if cached and cached[0].get("kind") == "tar" and not os.path.exists(
                os.path.join(side, str(cached[0].get("members_db")))):
            cached = None  # the member database is gone: index again
        self.vol.info.update({"format": f"vzdump-{self.kind}", "compression": self.codec,
                              "index": "reused" if cached else "built"})
        if cached is None:
            shadow = None
            if key and self.codec in ("zstd", "gzip") and self.ctx.options.get("vzdump_seek_cache") != "off":
                try:
                    os.makedirs(side, exist_ok=True)
                    shadow = SeekCacheWriter(os.path.join(side, key + ".seek"))
                except OSError:
                    shadow = None
            try:
                meta, arrays = self.build_index(shadow)
            except BaseException:
                if shadow is not None:
                    shadow.abort()
                raise
            if key:
                try:
                    save_sidecar(side, key, meta, arrays)
                    self.vol.info["sidecar"] = os.path.join(side, key + ".json")
                except OSError as e:
                    self.report("info", "no-sidecar", self.path,
                                f"could not store the index in {side}: {e.strerror}; it is rebuilt next time")
        else:
            meta, arrays = cached
            self.vol.info["sidecar"] = os.path.join(side, key + ".json")
        try:
            sidx = StreamIndex.from_json(meta["stream"])
        except (KeyError, TypeError, ValueError) as e:
            raise VzdumpError(f"{self.name}: index {self.vol.info.get('sidecar')} is unusable ({e}); "
                              f"delete it to rebuild") from None
        stream = self.src if self.codec == "raw" else DecodedStream(self.src, sidx, bad=self.bad,
                                                                   label=f"{self.name} (decoded)",
                                                                   shadow_dir=side)
        if getattr(stream, "shadow", None) is not None:
            self.vol.info["seek_cache"] = os.path.join(side, sidx.shadow["file"])
        for out_off, lost, in_off, reason in sidx.damage:
            self.report("error", "corrupt-stream", self.path,
                        f"{self.name}: {reason}" + (f" ({lost} decoded bytes lost)" if lost else ""),
                        [(in_off, 1)] if not lost else [(out_off, lost)])
        for sev, code, _gap, msg in meta.get("problems", []):
            if code != "stream-gap":
                self.report(sev, code, self.path, f"{self.name}: {msg}")
        if self.kind == "vma":
            self.open_vma(meta, arrays, stream)
        else:
            self.open_tar(meta, stream)

    def build_index(self, shadow=None):
        pieces = scan(self.src, self.codec, progress=self._progress("scan"), shadow=shadow)
        if self.kind == "vma":
            hdr, cmap, problems = index_vma(pieces)
            meta = {"kind": "vma", "stream": pieces.index.to_json(),
                    "problems": [[s, c, None, m] for s, c, _g, m in problems]}
            return meta, cmap.to_arrays()
        side, key = self._side
        final = os.path.join(side, key + ".members.sqlite") if key else None
        tmp = final + ".tmp" if final else None
        if tmp:
            os.makedirs(side, exist_ok=True)
            if os.path.exists(tmp):
                os.unlink(tmp)
        db = MemberDB(tmp)
        seen = [0]

        def emit(m):
            seen[0] += 1
            db.add(m)

        try:
            _members, problems = index_tar(pieces, emit=emit)
            db.finish()
            count = seen[0]
        except BaseException:
            db.close()
            raise
        if final:
            db.close()
            os.replace(tmp, final)
        else:
            self._memdb = db  # no index folder: the rows stay in this in-memory database
        meta = {"kind": "tar", "stream": pieces.index.to_json(), "members_db": os.path.basename(final) if final else None,
                "members": count, "problems": [[s, c, None, m] for s, c, _g, m in problems]}
        return meta, None

    # -- VMA --------------------------------------------------------------------------------
    def open_vma(self, meta, arrays, stream):
        ctx = self.ctx
        head = stream.read(0, min(stream.size, 12288))
        hsize = int.from_bytes(head[56:60], "big") if len(head) >= 60 else 0
        hdr = VmaHeaderInfo(stream.read(0, min(stream.size, max(hsize, 12288), 16 << 20)))
        cmap = ClusterMap.from_arrays(hdr.devices, arrays or {})  # checks the sidecar first
        mtime = hdr.ctime
        for name, data in hdr.configs.items():
            self.dir.add(name, File(BytesSource(data, label=name), mtime=mtime), report=ctx.report,
                         path_hint=self.path)
        pm = self.parsed_name
        is_vm = bool(pm and pm[0] == "qemu")
        if is_vm:
            for name, data in hdr.configs.items():
                if name in ("qemu-server.conf", "qemu-server.fw"):
                    self.backup_item(name, node=File(BytesSource(data), mtime=mtime))
            self.side_files()
        for dev_id, (name, size) in sorted(hdr.devices.items()):
            dev = VmaDevice(stream, size, cmap.offsets[dev_id], cmap.masks[dev_id], bad=self.bad,
                            label=f"{self.name}:{name}", seen=cmap.seen(dev_id))
            v = ctx.add_volume(dev, self.dir, f"{name}.raw", self.path, "disk", parent=self.vol,
                               children_home="parts", mtime=mtime)
            v.info.update({"format": "vma-device", "archive": self.name, "dev_id": dev_id})
            paths = [v.path]
            if is_vm:
                short = name[len("drive-"):] if name.startswith("drive-") else name
                used = self.backup_item(f"disk-{short}.raw", volume=v, mtime=mtime)
                if used:
                    paths.append(used)
            missing = dev.missing_ranges()
            if missing:
                total = sum(n for _, n in missing)
                how = "read as zeros" if self.bad == "zero" else "read as EIO"
                for p in paths:
                    self.report("error", "missing-clusters", p,
                                f"{self.name}: {name}: {total} bytes in {len(missing)} ranges are not in "
                                f"the archive (truncated or corrupt; {how})", missing)

    # -- tar ---------------------------------------------------------------------------------
    def open_tar(self, meta, stream):
        ctx = self.ctx

        def report(path, message, ranges):
            self.report("error", "damaged-member", f"{self.path}{path}", f"{self.name}: {path}: {message}", ranges)

        if self._memdb is not None:
            db = self._memdb
        else:
            side, _key = self._side
            dbpath = os.path.join(side, meta["members_db"])
            try:
                db = MemberDB(f"file:{dbpath}?mode=ro", create=False, uri=True)
                db.count()
            except sqlite3.Error as e:
                raise VzdumpError(f"{self.name}: member index {dbpath} is unreadable ({e}); "
                                  f"delete it to rebuild") from None
        self.vol.info["members"] = meta["members"]
        root = TarTree(db, stream, self.bad, report, ctx.report).root()
        # Members whose data was lost in the stream, or lies in a corrupt (lzop) block.
        for path, size, lost in db.query("SELECT path, size, lost_from FROM members WHERE lost_from "
                                         "IS NOT NULL ORDER BY id LIMIT 10000"):
            report("/" + path, "data lies in a lost part of the stream", [(lost, size - lost)])
        bad_segs = [(s[0], s[1]) for s in StreamIndex.from_json(meta["stream"]).segs if s[4] == 5]
        for bo, bn in bad_segs:
            for path, data, stored in db.query(
                    "SELECT path, data, stored FROM members WHERE type='file' AND stored>0 AND data<? "
                    "AND data+stored>? ORDER BY id LIMIT 10000", (bo + bn, bo)):
                lo = max(0, bo - data)
                report("/" + path, "contents lie in a corrupt block", [(lo, min(stored, bo + bn - data) - lo)])
        for name, node in root.children().items():
            self.dir.add(name, node, report=ctx.report, path_hint=self.path)
        pm = self.parsed_name
        if pm and pm[0] == "lxc":
            self.backup_item("rootfs", tree=root)
            self.side_files()
            conf = root.get("etc")
            conf = conf.get("vzdump") if isinstance(conf, Dir) else None
            for fn in ("pct.conf", "pct.fw"):
                node = conf.get(fn) if isinstance(conf, Dir) else None
                if node is not None:
                    self.backup_item(fn, node=node)
