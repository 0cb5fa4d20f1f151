"""Proxmox Backup Server datastores: blobs, chunk indexes, pxar archives (work in progress)."""

BACKENDS = []
