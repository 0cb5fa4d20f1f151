"""The vzdump backend: VMA and tar archives, plain or compressed, as inputs.
Declared in ``__init__.py`` (``SPECS``)."""

from pvfs.backend import Backend

from . import CLI_OPTIONS
from .archive import VzdumpArchive, content_kind, parse_name, peek
from .streams import detect_codec


class VzdumpBackend(Backend):
    """``vzdump-qemu-*.vma[.zst|.lzo|.gz]`` and ``vzdump-lxc-*.tar[...]`` input files."""

    name = "vzdump"
    roles = ("input",)
    cli_options = list(CLI_OPTIONS)

    def probe(self, volume, ctx):
        src = volume.source
        if src.size < 512:
            return 0.0
        codec = detect_codec(src.read(0, 16))
        named = parse_name(volume.file_name or volume.name) is not None
        if codec == "raw" and not named:
            head = src.read(0, 12288)
            kind = content_kind(head)
            # A bare VMA is unmistakable; a bare tar is ours only if nothing else wants it.
            return 90.0 if kind == "vma" else (5.0 if kind == "tar" else 0.0)
        kind = content_kind(peek(src, codec))
        if kind is None:
            # Named as a vzdump archive but unreadable as one (a destroyed gzip header):
            # still ours, so that open() reports it instead of it becoming a raw disk.
            return 10.0 if named else 0.0
        return 95.0 if named else 70.0

    def open(self, volume, ctx):
        VzdumpArchive(volume, ctx).open()
