"""VMDK images (VMware, and qemu's vmdk driver): sparse, stream-optimized, flat, split, chains.

The backend's light declaration (``pvfs.backend.BackendSpec``); the code (backend.py,
image.py) is imported only for an input with a VMDK magic or a text descriptor, and for
a folder holding ``.vmdk`` files (VMware "Virtual Disk Format 1.1").
"""

from __future__ import annotations

from pvfs.backend import INPUT, BackendSpec

# (the same values as structs.py / descriptor.py; test_startup checks they agree)
SPARSE_MAGIC = b"KDMV"
OTHER_MAGICS = (b"COWD", b"\xbe\xba\xfe\xca")  # vmfsSparse, seSparse: reported, not read
MAX_DESCRIPTOR = 1 << 20


def looks_like_descriptor(head: bytes) -> bool:
    """A text descriptor: its comment line or a createType key in the first KiB."""
    text = head[:1024]
    return text.lstrip().startswith(b"# Disk DescriptorFile") or b"createType" in text


def sniff(volume, ctx) -> bool:
    head = volume.source.read(0, 1024)
    if head[:4] == SPARSE_MAGIC:
        return True
    if head[:4] in OTHER_MAGICS and volume.name.lower().endswith(".vmdk"):
        return True
    return volume.source.size <= MAX_DESCRIPTOR and looks_like_descriptor(head)


def sniff_companions(files, folder, names, ctx) -> bool:
    return any(n.lower().endswith(".vmdk") for n in names)


SPECS = [BackendSpec(name="vmdk", impl="backends.vmdk.backend:VmdkBackend",
                     roles=frozenset({INPUT}), hooks=frozenset({"companions"}), sniff=sniff,
                     sniff_companions=sniff_companions)]
