"""A VMDK image: its descriptor, its extents and its parent chain, as one virtual disk.

# References:
- VMware "Virtual Disk Format 5.0": createType values (monolithicSparse, monolithicFlat,
  twoGbMaxExtentSparse, twoGbMaxExtentFlat, streamOptimized, vmfs ...), extent lines,
  CID/parentCID and parentFileNameHint ("Delta Links").
- qemu/qemu block/vmdk.c: vmdk_open_desc_file / vmdk_parse_extents (extents in order
  make the disk; a FLAT extent's offset is in sectors), vmdk_open_sparse (an embedded
  descriptor in a monolithic sparse file), vmdk_is_cid_valid (a parent whose CID is not
  the child's parentCID is a changed parent: qemu refuses to read; pvfs reports it and
  reads).
"""

from __future__ import annotations

import os

from pvfs.damage import Problem
from pvfs.errors import PvfsError, UnreadableError
from pvfs.source import BAD_EIO, ExtentSource, MissingSource, SliceSource, ZeroSource, ZERO

from . import structs as S
from .descriptor import (MAX_DESCRIPTOR, NO_PARENT, Descriptor, VmdkError,
                         looks_like_descriptor, parse_descriptor)
from .sparse import SparseExtent, read_header

MAX_CHAIN = 32  # parents followed at most


class VmdkImage:
    """An opened VMDK (descriptor file or sparse file with an embedded descriptor).

    ``files`` is a :mod:`pvfs.namespace` object used to find extent and parent files
    (relative to ``path``); ``problems`` collects ``(severity, code, message)``.
    """

    def __init__(self, source, path, files, bad=BAD_EIO, depth=0, chain=()):
        self.source = source
        self.path = path
        self.files = files
        self.bad = bad
        self.problems: list[tuple[str, str, str]] = []
        self.chain = tuple(chain) + ((files.key(path),) if path else ())
        self.label = os.path.basename(path or "vmdk")
        self.embedded = False
        self.header = None
        head = source.read(0, S.SECTOR)
        if head[:4] == S.SPARSE_MAGIC:
            self.header, _ = read_header(source)
            self.descriptor = self._embedded_descriptor()
            self.embedded = True
        elif head[:4] == S.COWD_MAGIC:
            raise VmdkError("vmfsSparse (COWD) extents are not supported")
        elif head[:4] == S.SESPARSE_MAGIC:
            raise VmdkError("seSparse extents are not supported")
        elif looks_like_descriptor(head):
            if source.size > MAX_DESCRIPTOR:
                raise VmdkError(f"a descriptor of {source.size} bytes is not plausible")
            self.descriptor = parse_descriptor(source.read(0, source.size))
        else:
            raise VmdkError("neither a sparse extent (KDMV) nor a text descriptor")
        for msg in self.descriptor.problems:
            self.problems.append(Problem("warning", "descriptor-line", f"{self.label}: {msg}"))
        self.sparse: list[SparseExtent] = []
        self.disk = self._assemble()
        self.parent = None
        d = self.descriptor
        if d.parent_hint or (d.parent_cid is not None and d.parent_cid != NO_PARENT):
            self.parent = self._open_parent(depth)
            self._attach_parent()

    # -- descriptor -------------------------------------------------------------------
    def _embedded_descriptor(self) -> Descriptor:
        off, n = self.header.descriptor
        if off and n:
            if (off + n) * S.SECTOR > self.source.size or n * S.SECTOR > MAX_DESCRIPTOR:
                self.problems.append(Problem("warning", "descriptor-unreadable",
                                      f"{self.label}: embedded descriptor lies outside the "
                                      "file; read as a lone extent"))
            else:
                try:
                    return parse_descriptor(self.source.read(off * S.SECTOR, n * S.SECTOR))
                except (VmdkError, UnreadableError) as e:
                    self.problems.append(Problem("warning", "descriptor-unreadable",
                                          f"{self.label}: embedded descriptor unusable ({e}); "
                                          "read as a lone extent"))
        # An extent of a split image opened on its own, or a damaged descriptor.
        d = Descriptor(create_type="sparse extent")
        from .descriptor import Extent

        d.extents.append(Extent("RW", self.header.capacity, "SPARSE", None))
        return d

    # -- extents ------------------------------------------------------------------------
    def _open_file(self, name):
        path = self.files.join(self.path, name)
        if self.path and self.files.key(path) == self.files.key(self.path):
            return self.source
        if self.files.exists_size(path) is None:
            raise FileNotFoundError(f"{name}: no such file beside the descriptor")
        return self.files.open(path)

    def _assemble(self):
        parts = []
        pos = 0
        d = self.descriptor
        sparse_self = self.embedded and sum(e.type == "SPARSE" for e in d.extents) == 1
        for i, e in enumerate(d.extents):
            n = e.sectors * S.SECTOR
            what = f"extent {i + 1} ({e.type} {e.filename!r})"
            src = None
            try:
                if e.type == "ZERO":
                    src = ZeroSource(n, ZERO, label=what)
                elif e.type in ("FLAT", "VMFS"):
                    f = self._open_file(e.filename)
                    src = SliceSource(f, e.offset * S.SECTOR, n, label=what, bad=self.bad)
                    if e.offset * S.SECTOR + n > f.size:
                        self.problems.append(Problem("error", "extent-truncated",
                                              f"{self.label}: {what} needs "
                                              f"{e.offset * S.SECTOR + n} bytes, the file has "
                                              f"{f.size}: the rest is unreadable"))
                elif e.type == "SPARSE":
                    if sparse_self or e.filename is None:
                        f, hdr = self.source, self.header
                    else:
                        f = self._open_file(e.filename)
                        hdr, _ = read_header(f)
                    if hdr.capacity * S.SECTOR != n:
                        self.problems.append(Problem("warning", "extent-size",
                                              f"{self.label}: {what} is {n} bytes in the "
                                              f"descriptor, {hdr.capacity * S.SECTOR} in its "
                                              "header; the descriptor's size is used"))
                    src = SparseExtent(f, hdr, self.bad, self._problem, label=e.filename or
                                       self.label, size=n)
                    src.parent_base = pos
                    self.sparse.append(src)
                    if hdr.unclean:
                        self.problems.append(Problem("warning", "unclean-shutdown",
                                              f"{self.label}: {what} was not closed cleanly"))
                else:
                    self.problems.append(Problem("error", "extent-unsupported",
                                          f"{self.label}: {what}: {e.type} extents are not "
                                          "supported; their bytes are unreadable"))
            except FileNotFoundError as err:
                self.problems.append(Problem("error", "extent-missing",
                                      f"{self.label}: {what} is missing ({err}); its bytes "
                                      "read as " + ("zeros" if self.bad == "zero" else "EIO")))
            except (OSError, PvfsError) as err:
                self.problems.append(Problem("error", "extent-bad",
                                      f"{self.label}: {what} cannot be used ({err}); its bytes "
                                      "read as " + ("zeros" if self.bad == "zero" else "EIO")))
            if src is None:
                src = MissingSource(n, f"{what} unavailable", self.bad, label=what)
            parts.append((pos, n, src, 0))
            pos += n
        self.size = pos
        return ExtentSource(pos, parts, label=self.label)

    def _problem(self, sev, code, msg, outcome=""):
        self.problems.append(Problem(sev, code, msg, outcome))

    # -- parent -------------------------------------------------------------------------
    def _open_parent(self, depth):
        d = self.descriptor
        hint = d.parent_hint
        if not hint:
            self.problems.append(Problem("error", "parent-missing",
                                  f"{self.label}: parentCID {d.parent_cid:08x} but no "
                                  "parentFileNameHint; unallocated grains read as "
                                  + ("zeros" if self.bad == "zero" else "EIO")))
            return MissingSource(self.size, "parent unknown", self.bad, "parent")
        path = self.files.join(self.path, hint)
        if self.files.exists_size(path) is None:
            # VMware writes absolute hints of the host that made the child ("C:\\VMs\\base.vmdk",
            # "/vmfs/volumes/ds1/base.vmdk"); a copied chain has the parent beside the child.
            beside = self.files.join(self.path, hint.replace("\\", "/").rsplit("/", 1)[-1])
            if beside != path and self.files.exists_size(beside) is not None:
                self.problems.append(Problem("info", "parent-beside",
                                             f"{self.label}: parent {hint!r} not found there; "
                                             f"the file of that name beside the image is used"))
                path = beside
        if depth + 1 > MAX_CHAIN:
            self.problems.append(Problem("error", "parent-too-deep",
                                  f"{self.label}: parent chain deeper than {MAX_CHAIN}"))
            return MissingSource(self.size, "parent chain too deep", self.bad, hint)
        if self.files.key(path) in self.chain:
            self.problems.append(Problem("error", "parent-loop",
                                  f"{self.label}: parent chain loops back to {hint!r}"))
            return MissingSource(self.size, "parent chain loops", self.bad, hint)
        try:
            src = self.files.open(path)
            parent = VmdkImage(src, path, self.files, self.bad, depth + 1, self.chain)
        except (OSError, PvfsError) as e:
            self.problems.append(Problem("error", "parent-missing",
                                  f"{self.label}: parent {hint!r} cannot be used ({e}); "
                                  "unallocated grains read as "
                                  + ("zeros" if self.bad == "zero" else "EIO")))
            return MissingSource(self.size, f"parent {hint} missing", self.bad, hint)
        for p in parent.problems:
            self.problems.append(p._replace(message=f"in parent {hint!r}: {p.message}"))
        if parent.descriptor.cid != d.parent_cid:
            self.problems.append(Problem("warning", "cid-mismatch",
                                  f"{self.label}: parentCID is {_cid(d.parent_cid)} but the "
                                  f"parent {hint!r} has CID {_cid(parent.descriptor.cid)}: the "
                                  "parent changed after this child was made (qemu refuses "
                                  "it); read anyway"))
        self.parent_image = parent
        return parent.disk

    def _attach_parent(self):
        parent = self.parent
        if parent.size < self.size:  # bytes past a smaller parent read as zeros
            parent = ExtentSource(self.size, [(0, parent.size, parent, 0)], label="parent")
        for sp in self.sparse:
            sp.parent = parent

    def info(self) -> dict:
        d = self.descriptor
        out = {"format": "vmdk", "create_type": d.create_type, "cid": _cid(d.cid),
               "extents": len(d.extents)}
        if d.parent_hint:
            out["parent"] = d.parent_hint
            out["parent_cid"] = _cid(d.parent_cid)
        return out


def _cid(v):
    return None if v is None else f"{v:08x}"
