"""Proxmox Backup Server datastores: blobs, chunk indexes, pxar archives.

The backends' light declarations (``pvfs.backend.BackendSpec``); the code is imported
only for a folder or tree directory holding ``.chunks/`` (a datastore, proxmox-backup
``pbs-datastore/src/chunk_store.rs``) and for an input file that starts with a pxar
item type or the catalog magic (proxmox/pxar ``src/format/mod.rs``, proxmox-backup
``pbs-datastore/src/catalog.rs``).
"""

from __future__ import annotations

import os
import struct

from pvfs.backend import INPUT, BackendSpec

# (the same values as structs.py; test_startup checks they agree)
PROXMOX_CATALOG_FILE_MAGIC_1_0 = bytes([145, 253, 96, 249, 196, 103, 88, 213])
#: PXAR_ENTRY, PXAR_ENTRY_V1, PXAR_FORMAT_VERSION, PXAR_PAYLOAD_START_MARKER: the item
#: types a stream may start with
STREAM_START_TYPES = (0xD5956474E588ACEF, 0x11DA850A1C1CCEFF, 0x730F6C75DF16A40D,
                      0x834C68C2194A4ED2)

CLI_OPTIONS = (
    ("--pbs-keyfile", {"metavar": "FILE", "help": "PBS client key file (JSON) to decrypt encrypted backups; "
                               "its password is read from PBS_ENCRYPTION_PASSWORD"}),
    ("--pbs-verify", {"choices": ["exists", "full"], "default": None,
                      "help": "check every referenced chunk at mount time: 'exists' (default) "
                              "only looks for the files, 'full' also checks CRC and digest"}),
)


def sniff_dir(path, ctx) -> bool:
    return os.path.isdir(os.path.join(path, ".chunks"))


def sniff_node(node, path, ctx) -> bool:
    from pvfs.nodes import Dir

    # by name, not by listing: see backends/ceph's sniff_node
    return isinstance(node, Dir) and node.get(".chunks") is not None


def sniff_stream(volume, ctx) -> bool:
    head = volume.source.read(0, 8)
    return len(head) == 8 and (head == PROXMOX_CATALOG_FILE_MAGIC_1_0
                               or struct.unpack("<Q", head)[0] in STREAM_START_TYPES)


def sniff_payloads(files, folder, names, ctx) -> bool:
    return any(n.endswith(".mpxar") for n in names)


SPECS = [
    BackendSpec(name="pbs", impl="backends.pbs.backend:PbsBackend", roles=frozenset(),
                cli_options=CLI_OPTIONS, hooks=frozenset({"probe_dir", "probe_node", "finish"}),
                sniff_dir=sniff_dir, sniff_node=sniff_node),
    BackendSpec(name="pbs-stream", impl="backends.pbs.stream:PxarStreamBackend",
                roles=frozenset({INPUT}), hooks=frozenset({"companions"}), sniff=sniff_stream,
                sniff_companions=sniff_payloads),
]
