"""Proxmox Backup Server datastores: blobs, chunk indexes, pxar archives."""

from pvfs.backend import Backend

from .datastore import DatastoreWalker, State, check_chunks, looks_like_datastore
from pvfs.namespace import TreeFiles

from .stream import PxarStreamBackend


class PbsBackend(Backend):
    """A PBS datastore folder given as an input (``.chunks/`` + backup groups)."""

    name = "pbs"
    roles = ()  # works on directories only
    cli_options = [
        ("--pbs-keyfile", {"metavar": "FILE", "help": "PBS client key file (JSON) to decrypt encrypted backups; "
                                   "its password is read from PBS_ENCRYPTION_PASSWORD"}),
        ("--pbs-verify", {"choices": ["exists", "full"], "default": None,
                          "help": "check every referenced chunk at mount time: 'exists' (default) "
                                  "only looks for the files, 'full' also checks CRC and digest"}),
    ]

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


BACKENDS = [PbsBackend(), PxarStreamBackend()]
