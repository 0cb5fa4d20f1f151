"""XFS guest filesystems (v4 and v5), read by pvfs's own reader.

``probe`` checks the primary superblock (magic, sanity, CRC on v5); ``open``
falls back to a secondary superblock when the primary is gone, then shows the
tree lazily.  Why not libfsxfs: README.md.

References: see ondisk.py and fs.py.

This module is the backend's light declaration (``pvfs.backend.BackendSpec``); the code
(backend.py) is imported only for a volume that starts with the superblock magic
``XFSB`` (the probe claims nothing else; a secondary superblock is looked for by
``open`` only).
"""

from __future__ import annotations

from pvfs.backend import BackendSpec
from pvfs.guestfs import FS_ROLES

XFS_SB_MAGIC = b"XFSB"


def sniff(volume, ctx) -> bool:
    return volume.source.read(0, 4) == XFS_SB_MAGIC


SPECS = [BackendSpec(name="xfs", impl="backends.xfs.backend:XfsBackend", roles=FS_ROLES,
                     sniff=sniff)]
