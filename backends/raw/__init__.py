"""Raw disk images: an input file that no other backend claims is itself the disk.

Files found while walking a directory input are taken as raw disks only when
their name says so (``.raw``, ``.img`` ...) or they are at least 1 MiB of whole
sectors; the rest (notes, checksums, scripts) are listed as skipped.
"""

from pvfs.backend import INPUT, Backend, BackendSpec


class RawBackend(Backend):
    """The last resort for input files (score 1, as in qemu's raw driver)."""

    name = "raw"
    roles = ("input",)

    #: In a directory walk, only files that look like disk images are taken as raw disks.
    IMAGE_SUFFIXES = (".raw", ".img", ".dd", ".bin", ".iso", ".dsk", ".disk")

    def probe(self, volume, ctx):
        if volume.from_dir:
            name = volume.name.lower()
            big_sectors = volume.source.size >= (1 << 20) and volume.source.size % 512 == 0
            if not (name.endswith(self.IMAGE_SUFFIXES) or big_sectors):
                return 0.0
        return 1.0

    def open(self, volume, ctx):
        ctx.add_input_disk(volume, volume.source, info={"format": "raw"})


#: No sniff: the class is this light module, and it takes every input file as a fallback.
SPECS = [BackendSpec(name="raw", impl="backends.raw:RawBackend", roles=frozenset({INPUT}))]
