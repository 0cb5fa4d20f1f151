"""Ceph: BlueStore OSDs (block devices or OSD data directories) and the RBD images
in them, reassembled offline.

The OSDs of one cluster are one group (``member_key`` = the cluster fsid from
the BlueStore label).  ``open_group`` opens every member's key/value store
(part A: label, BlueFS, RocksDB), indexes its objects (osd.py), merges the
replicas (rbd.py) and shows:

- ``storage/ceph/<pool>/<image>`` and ``<image>@<snap>`` (role ``rbd``, their
  partitions in ``<image>.parts/``), and ``vms/<vmid>/disk-<n>.raw`` (+
  ``snapshots/<snap>/``) for Proxmox ``vm-<vmid>-disk-<n>`` images;
- ``storage/ceph/.osd/osd.<id>/<pool>/<object>[@<snap>]``: every object of
  every OSD, for experts.

Pools are named from the monitor store when ``--ceph-mon DIR`` is given (or a
monitor data directory is among the inputs), else from the newest OSDMap an
OSD keeps in its meta collection, else by id.

This module is the backend's light declaration (``pvfs.backend.BackendSpec``); the code
is imported only for a volume that starts with the BlueStore label magic, an OSD or
monitor data directory, or a tree directory that looks like a FileStore OSD (``type``
and ``current/``): ceph ``src/os/bluestore/bluestore_types.h`` (bluestore_bdev_label_t),
``src/os/filestore/FileStore.cc`` (the data directory).
"""

from __future__ import annotations

import os

from pvfs.backend import BackendSpec

AUX_KEY = "bluefs-db-wal-devices"
LABEL_MAGIC = b"bluestore block device\n"  # (as label.py; test_startup checks they agree)

CLI_OPTIONS = (
    ("--ceph-mon", {"metavar": "DIR", "action": "append",
                    "help": "Ceph monitor data directory (with store.db) for pool names"}),
)


def is_mon_dir(path):
    return (os.path.isdir(os.path.join(path, "store.db"))
            and os.path.isfile(os.path.join(path, "kv_backend"))
            and not os.path.exists(os.path.join(path, "block")))


def is_osd_dir(path):
    try:
        with open(os.path.join(path, "type")) as f:
            kind = f.read(64).strip()
    except OSError:
        return False
    return kind == "bluestore" and os.path.exists(os.path.join(path, "block"))


def sniff(volume, ctx) -> bool:
    src = volume.source
    return src.size >= 8192 and src.read(0, len(LABEL_MAGIC)) == LABEL_MAGIC


def sniff_dir(path, ctx) -> bool:
    return is_mon_dir(path) or is_osd_dir(path)


def sniff_node(node, path, ctx) -> bool:
    """filestore.is_filestore_dir's first step: a ``type`` file and ``current/``.  Looked
    up by name: listing a ZFS dataset's root would build a node for each of its entries
    (the start-up of every mount with ZFS offers each dataset root here)."""
    from pvfs.nodes import Dir

    return isinstance(node, Dir) and node.get("type") is not None \
        and node.get("current") is not None


SPECS = [BackendSpec(name="ceph", impl="backends.ceph.backend:CephBackend", grouped=True,
                     cli_options=CLI_OPTIONS,
                     hooks=frozenset({"probe_dir", "probe_node", "finish"}), sniff=sniff,
                     sniff_dir=sniff_dir, sniff_node=sniff_node)]
