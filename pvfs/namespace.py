"""Where an image's neighbours are: on this machine, or inside the pvfs tree.

An image names other files: a qcow2 backing file (``../9000/base-9000-disk-0.qcow2``),
an external data file.  An input file finds them on this machine's file
system; an image found inside a ZFS dataset finds them in the same dataset,
in the node tree.  Both namespaces offer ``join(base, name)``, ``key(path)``
(for loop detection) and ``open(path) -> Source``.
"""

from __future__ import annotations

import os
import posixpath

from .errors import PvfsError
from .nodes import File, resolve


class OsFiles:
    """Files of the machine pvfs runs on, opened read-only by ``open_fn``."""

    def __init__(self, open_fn):
        self.open_fn = open_fn

    def open(self, path):
        return self.open_fn(path)

    def join(self, base, name):
        if os.path.isabs(name) or base is None:
            return name
        return os.path.join(os.path.dirname(os.path.abspath(base)), name)

    def key(self, path):
        return os.path.realpath(path)


class TreeFiles:
    """Files in the node tree; absolute names start at ``fs_root`` (a dataset's root)."""

    def __init__(self, root, fs_root=""):
        self.root = root
        self.fs_root = fs_root.strip("/")

    def open(self, path):
        node = resolve(self.root, path)
        if not isinstance(node, File):
            raise PvfsError(f"{path}: no such file in the recovered tree")
        return node.source

    def join(self, base, name):
        if name.startswith("/"):
            return posixpath.normpath(posixpath.join(self.fs_root, name.lstrip("/")))
        return posixpath.normpath(posixpath.join(posixpath.dirname(base), name))

    def key(self, path):
        return posixpath.normpath(path)
