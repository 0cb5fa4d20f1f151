"""Standalone pxar archives and catalogs given as input files (outside a datastore).

References: proxmox/pxar ``src/format/mod.rs`` (a v1 archive starts with an ENTRY item,
``PXAR_ENTRY`` or the older ``PXAR_ENTRY_V1``; a v2 split archive's metadata stream
``.mpxar`` starts with ``FORMAT_VERSION`` = 2, its payload stream ``.ppxar`` with
``PAYLOAD_START_MARKER``), proxmox-backup ``pbs-client/src/pxar/create.rs`` and
``proxmox-backup-client`` (``<name>.mpxar`` + ``<name>.ppxar`` are the two halves of one
archive, named alike), ``pbs-datastore/src/catalog.rs`` (``PROXMOX_CATALOG_FILE_MAGIC_1_0``).

These files are what ``proxmox-backup-client restore ... root.pxar -`` writes out, or
what a datastore's ``.didx`` streams hold once reassembled.  The tree of an archive is
shown in the input's own folder (``storage/files/<name>/``), as vzdump shows a
container tar; listing stays lazy below the root directory.
"""

from __future__ import annotations

import struct

from pvfs.backend import INPUT, Backend
from pvfs.errors import PvfsError
from pvfs.nodes import GeneratedFile
from pvfs.source import BAD_EIO

from .catalog import catalog_text
from .pxar import PxarArchive
from .structs import (HEADER_SIZE, PROXMOX_CATALOG_FILE_MAGIC_1_0, PXAR_ENTRY, PXAR_ENTRY_V1,
                      PXAR_FORMAT_VERSION, PXAR_PAYLOAD_START_MARKER, Stat, StatV1)

LAYER = "pbs-stream"

#: An ENTRY item holds exactly one ``Stat`` (``StatV1`` for ``PXAR_ENTRY_V1``).
_ENTRY_SIZES = {PXAR_ENTRY: HEADER_SIZE + Stat.sizeof(), PXAR_ENTRY_V1: HEADER_SIZE + StatV1.sizeof()}


def stream_kind(head: bytes) -> str | None:
    """``"pxar"`` (v1), ``"mpxar"`` (v2 metadata), ``"ppxar"`` (v2 payload), ``"catalog"``
    or None, from the first 24 bytes: the item type and its size must both be right."""
    if len(head) >= 8 and head[:8] == PROXMOX_CATALOG_FILE_MAGIC_1_0:
        return "catalog"
    if len(head) < HEADER_SIZE:
        return None
    htype, size = struct.unpack_from("<QQ", head)
    if _ENTRY_SIZES.get(htype) == size:
        return "pxar"
    if htype == PXAR_FORMAT_VERSION and size == HEADER_SIZE + 8 and len(head) >= 24 \
            and struct.unpack_from("<Q", head, 16)[0] == 2:
        return "mpxar"
    if htype == PXAR_PAYLOAD_START_MARKER and size == HEADER_SIZE:
        return "ppxar"
    return None


def payload_name(name: str) -> str | None:
    """``root.mpxar`` -> ``root.ppxar`` (the client names the two halves alike)."""
    return name[: -len(".mpxar")] + ".ppxar" if name.endswith(".mpxar") else None


class PxarStreamBackend(Backend):
    """A ``.pxar``, ``.mpxar`` (+ ``.ppxar``) or ``.pcat1`` file given as an input."""

    name = "pbs-stream"
    roles = (INPUT,)

    def probe(self, volume, ctx):
        try:
            kind = stream_kind(volume.source.read(0, 24))
        except (PvfsError, OSError):
            return 0.0
        return 50.0 if kind else 0.0  # a magic and a size, no checksum

    def open(self, volume, ctx):
        kind = stream_kind(volume.source.read(0, 24))
        home = volume.homes[0]
        d, dpath = home.dir(), home.path
        volume.info["format"] = {"pxar": "pxar v1", "mpxar": "pxar v2 metadata",
                                 "ppxar": "pxar v2 payload", "catalog": "pbs catalog"}[kind]
        if kind == "catalog":
            src = volume.source
            cache: list[bytes] = []

            def render():
                if not cache:
                    cache.append(catalog_text(src))
                return cache[0]

            d.add("catalog.txt", GeneratedFile(render, mtime=volume.mtime), report=ctx.report,
                  path_hint=dpath)
            return
        if kind == "ppxar":
            ctx.report.add("info", LAYER, volume.path, "payload-stream",
                           "the payload half of a split pxar archive: its files are listed "
                           "through the .mpxar of the same name")
            return
        payload = None
        if kind == "mpxar":
            payload = self._payload(volume, ctx)

        def report(severity, code, relpath, message, ranges=()):
            ctx.report.add(severity, LAYER, f"{dpath}{relpath if relpath != '/' else ''}", code,
                           f"{volume.name}: {message}", ranges)

        arc = PxarArchive(volume.source, payload, label=volume.name, report=report,
                          bad=ctx.bad(BAD_EIO))
        root = arc.root()
        for name, node in root.children().items():
            d.add(name, node, report=ctx.report, path_hint=dpath)

    def _payload(self, volume, ctx):
        """The ``.ppxar`` beside a ``.mpxar``; None (and a ``missing-payload`` entry) if
        it is not there or is not a payload stream."""
        pname = payload_name(volume.file_name or volume.name)
        files, fpath = volume.files, volume.file_path
        why = "it has no .mpxar name, so its payload stream cannot be found"
        if pname and files is not None and fpath:
            ppath = files.join(fpath, pname)
            if files.exists_size(ppath) is not None:
                try:
                    src = files.open(ppath)
                    if stream_kind(src.read(0, 24)) == "ppxar":
                        return src
                    why = f"{pname} does not start with a payload marker"
                except (PvfsError, OSError) as e:
                    why = f"{pname} cannot be opened: {e}"
            else:
                why = f"{pname} is not beside it"
        ctx.report.add("error", LAYER, volume.homes[0].path, "missing-payload",
                       f"{volume.name}: split pxar archive without its payload stream ({why}); "
                       "the files are listed but their contents are unreadable")
        return None

    def companions(self, files, folder, names, ctx):
        """The ``.ppxar`` beside a ``.mpxar`` of the same name is read through it."""
        present = set(names)
        return {p: n for n in names if (p := payload_name(n)) and p in present}
