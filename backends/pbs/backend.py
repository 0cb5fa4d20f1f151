"""The PBS datastore backend: a datastore folder given as an input, or a directory of a
recovered file system (``probe_node``).  Declared in ``__init__.py`` (``SPECS``)."""

from pvfs.backend import Backend
from pvfs.namespace import TreeFiles

from . import CLI_OPTIONS
from .datastore import DatastoreWalker, State, check_chunks, looks_like_datastore


class PbsBackend(Backend):
    """A PBS datastore folder given as an input (``.chunks/`` + backup groups)."""

    name = "pbs"
    roles = ()  # works on directories only
    cli_options = list(CLI_OPTIONS)

    def probe_dir(self, path, ctx):
        return looks_like_datastore(path)

    def open_dir(self, path, ctx):
        DatastoreWalker(path, ctx, self).open()

    # A datastore inside a filesystem pvfs opened (a ZFS dataset): the node twins of
    # probe_dir/open_dir.  The core does not call them yet (see README: needs a hook that
    # offers filesystem roots); they are tested directly.
    def probe_node(self, node, path, ctx):
        return looks_like_datastore("", TreeFiles(node, label=path))

    def open_node(self, node, path, ctx):
        DatastoreWalker("", ctx, self, fs=TreeFiles(node, label=path), name=path.rstrip("/").rsplit("/", 1)[-1]).open()

    def new_state(self, ctx):
        return State(ctx)

    def finish(self, ctx):
        """Check every referenced chunk once all datastores (inputs and those found
        inside recovered file systems) are open; incremental if called again."""
        check_chunks(ctx, ctx.state(self), ctx.options.get("pbs_verify") or "exists", self)
