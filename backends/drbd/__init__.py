"""DRBD backing devices (8.4 ``v08`` and 9.x ``v09`` meta data), both nodes side by side.

See README.md.  The backend is grouped: every DRBD backing device found is a
member; :meth:`DrbdBackend.open_group` pairs the members that share a
generation UUID (the same resource) and builds
``storage/drbd/<resource>/{node-A.raw,node-B.raw,merged.raw,diff.json,diverged/,meta.json}``.
"""

from backends.drbd.backend import DRBD, DrbdBackend

BACKENDS = [DRBD]
__all__ = ["BACKENDS", "DRBD", "DrbdBackend"]
