"""Proxmox VE meaning: volume names, the cluster database (pmxcfs), the VM view.

- :mod:`.volname`: ``vm-100-disk-0`` and friends (``parse_volname``);
- :mod:`.pmxcfs`: the cluster file system's SQLite database (``/etc/pve``);
- :mod:`.cluster`: finding it in recovered roots and showing ``storage/pve/``;
- :mod:`.view`: ``vms/`` and ``cts/``, built once after discovery.
"""

from .volname import VolName, parse_volname

__all__ = ["VolName", "parse_volname"]
