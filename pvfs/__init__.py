"""pvfs: read-only recovery of Proxmox VE storage stacks from drive images."""

__version__ = "0.1.0"
