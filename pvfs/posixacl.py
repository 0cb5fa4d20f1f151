"""POSIX ACLs in the Linux xattr encoding (``system.posix_acl_access`` / ``_default``).

Every format stores ACLs its own way (pxar items, GNU tar's ``SCHILY.acl``
records, ext4's compact on-disk form, XFS's big-endian one); the mount shows
them as Linux does: ``posix_acl_xattr_header`` (version 2) followed by
``posix_acl_xattr_entry`` records ``(u16 tag, u16 perm, u32 id)``, little
endian, sorted by tag then id.

References: linux/include/uapi/linux/posix_acl_xattr.h, linux/include/uapi/linux/posix_acl.h.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_GROUP, ACL_MASK, ACL_OTHER = 1, 2, 4, 8, 0x10, 0x20
ACL_UNDEFINED_ID = 0xFFFFFFFF
POSIX_ACL_XATTR_VERSION = 2


def posix_acl_xattr(entries: Iterable[tuple[int, int, int]]) -> bytes:
    """The xattr value for ``(tag, id, perm)`` entries."""
    body = b"".join(struct.pack("<HHI", tag, perm & 7, ident)
                    for tag, ident, perm in sorted(entries, key=lambda e: (e[0], e[1])))
    return struct.pack("<I", POSIX_ACL_XATTR_VERSION) + body
