"""The VMDK backend: the virtual disk of a sparse, stream-optimized, flat or split
image and its chain; extent files of a descriptor are its companions.  Declared in
``__init__.py`` (``SPECS``)."""

from __future__ import annotations

from pvfs.backend import Backend
from pvfs.errors import UnreadableError

from . import structs as S
from .descriptor import MAX_DESCRIPTOR, VmdkError, looks_like_descriptor, parse_descriptor


class VmdkBackend(Backend):
    name = "vmdk"
    roles = ("input",)

    def probe(self, volume, ctx):
        head = volume.source.read(0, 1024)
        if head[:4] == S.SPARSE_MAGIC:
            return 100.0
        if head[:4] in (S.COWD_MAGIC, S.SESPARSE_MAGIC) and \
                volume.name.lower().endswith(".vmdk"):
            return 50.0  # claimed so that it is reported, not shown as a raw disk
        if volume.source.size <= MAX_DESCRIPTOR and looks_like_descriptor(head):
            return 100.0
        return 0.0

    def open(self, volume, ctx):
        from .image import VmdkImage

        img = VmdkImage(volume.source, volume.file_path, volume.files, ctx.bad("eio"))
        for p in img.problems:
            ctx.report.add(p.severity, "vmdk", volume.path, p.code, p.message, outcome=p.outcome)
        volume.info.update(img.info())
        ctx.add_input_disk(volume, img.disk, info={"format": "vmdk"})

    def companions(self, files, folder, names, ctx):
        """Extent files named by a descriptor in the same folder are parts of it."""
        out: dict[str, str] = {}
        present = set(names)
        for name in names:
            if not name.lower().endswith(".vmdk"):
                continue
            path = files.path(folder, name)
            size = files.exists_size(path)
            if size is None or size > MAX_DESCRIPTOR:
                continue
            try:
                head = files.read_range(path, 0, 1024)
                if not looks_like_descriptor(head):
                    continue
                desc = parse_descriptor(files.read_range(path, 0, size))
            except (OSError, VmdkError, UnreadableError):
                continue
            for e in desc.extents:
                if e.filename and "/" not in e.filename and e.filename in present and \
                        e.filename != name:
                    out.setdefault(e.filename, name)
        return out
