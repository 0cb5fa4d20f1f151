"""File access for a datastore: a real folder (``OsFS``) or a pvfs directory node
(``NodeFS``: a datastore on a ZFS dataset, an ext4 volume ... that pvfs itself opened).

Only what the datastore code needs: list, is-dir, size, mtime, bounded reads.
Missing files raise ``FileNotFoundError``; other problems ``OSError``/``PvfsError``.
"""

from __future__ import annotations

import errno
import os
import posixpath

from pvfs.nodes import Dir, resolve

from .structs import PbsError


class OsFS:
    """Paths are real paths."""

    def __init__(self, root):
        self.root = os.path.abspath(root)

    join = staticmethod(os.path.join)

    @staticmethod
    def name(path):
        return os.path.basename(os.path.normpath(path))

    def isdir(self, path):
        return os.path.isdir(path)

    def listdir(self, path):
        try:
            return sorted(os.listdir(path))
        except OSError:
            return []

    def size(self, path):
        return os.path.getsize(path)

    def mtime(self, path):
        return os.path.getmtime(path)

    def exists_size(self, path):
        try:
            return os.stat(path).st_size
        except OSError:
            return None

    def read(self, path, limit):
        with open(path, "rb") as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise PbsError(f"{os.path.basename(path)} is larger than {limit} bytes")
        return data

    def read_range(self, path, offset, length):
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(length)


class NodeFS:
    """Paths are ``/``-separated, relative to ``root`` (a :class:`pvfs.nodes.Dir`)."""

    def __init__(self, root: Dir, label="node"):
        self.root_node = root
        self.root = ""
        self.label = label

    @staticmethod
    def join(*parts):
        return posixpath.join(*[p for p in parts if p])

    @staticmethod
    def name(path):
        return posixpath.basename(path)

    def _node(self, path):
        node = resolve(self.root_node, path) if path else self.root_node
        if node is None:
            raise FileNotFoundError(errno.ENOENT, f"{self.label}/{path}: no such file")
        return node

    def isdir(self, path):
        try:
            return isinstance(self._node(path), Dir)
        except OSError:
            return False

    def listdir(self, path):
        try:
            node = self._node(path)
        except OSError:
            return []
        return sorted(node.children()) if isinstance(node, Dir) else []

    def _file(self, path):
        node = self._node(path)
        src = getattr(node, "source", None)
        if src is None:
            raise PbsError(f"{self.label}/{path}: not a regular file")
        return src

    def size(self, path):
        return self._file(path).size

    def mtime(self, path):
        return self._node(path).mtime

    def exists_size(self, path):
        try:
            return self._file(path).size
        except (OSError, PbsError):
            return None

    def read(self, path, limit):
        src = self._file(path)
        if src.size > limit:
            raise PbsError(f"{posixpath.basename(path)} is larger than {limit} bytes")
        return src.read(0, src.size)

    def read_range(self, path, offset, length):
        return self._file(path).read(offset, length)
