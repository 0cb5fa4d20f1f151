"""qcow2 images (versions 2 and 3): the virtual disk, its internal snapshots, its backing chain.

The backend's light declaration (``pvfs.backend.BackendSpec``); the code (backend.py,
image.py) is imported only for an input with the qcow2 magic or a ``.qcow2`` name
(qemu ``docs/interop/qcow2.txt``).
"""

from __future__ import annotations

from pvfs.backend import INPUT, BackendSpec

QCOW_MAGIC = b"QFI\xfb"  # (as structs.py; test_startup checks they agree)

CLI_OPTIONS = (
    ("--qcow2-cluster-bits", {"type": int, "default": None, "metavar": "N",
                              "help": "qcow2 recovery: cluster_bits to assume when the header "
                                      "is destroyed (default: try 16, then 9..21)"}),
)


def sniff(volume, ctx) -> bool:
    """The magic, or a ``.qcow2`` name (a header cluster that is gone is scanned for)."""
    if volume.name.endswith(".qcow2") and volume.source.size >= 3 * 512:
        return True
    return volume.source.read(0, 4) == QCOW_MAGIC


SPECS = [BackendSpec(name="qcow2", impl="backends.qcow2.backend:Qcow2Backend",
                     roles=frozenset({INPUT}), cli_options=CLI_OPTIONS, sniff=sniff)]
