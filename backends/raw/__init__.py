"""Raw disk images: an input file that no other backend claims is itself the disk."""

from pvfs.backend import Backend


class RawBackend(Backend):
    """The last resort for input files (score 1, as in qemu's raw driver)."""

    name = "raw"
    roles = ("input",)

    def probe(self, volume, ctx):
        return 1.0

    def open(self, volume, ctx):
        ctx.add_input_disk(volume, volume.source, info={"format": "raw"})


BACKENDS = [RawBackend()]
