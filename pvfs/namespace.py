"""File access in one of two namespaces: this machine's file system, or the pvfs tree.

Formats that live in folders (a PBS datastore, Proxmox directory storage) and
images that name other files (a qcow2 backing file ``../9000/base-9000-disk-0.qcow2``,
VMDK extents) work the same whether their files are on this machine (an input
given on the command line) or inside something pvfs itself recovered (a ZFS
dataset, a guest filesystem).  Both namespaces offer the same calls:

- ``path(*parts)``, ``name(path)``: build and split paths of the namespace;
- ``join(base, name)``: the file ``name`` as an image at ``base`` names it
  (relative to ``base``'s folder; absolute names start at the namespace's root);
- ``key(path)``: identity for loop detection;
- ``isdir``, ``listdir`` (sorted, empty when not a folder), ``size``, ``mtime``,
  ``exists_size`` (None when missing);
- ``open(path) -> Source``; ``read(path, limit)`` (whole small files, refusing
  more than ``limit`` bytes) and ``read_range(path, offset, length)``.

Missing files raise ``FileNotFoundError``; other problems ``OSError`` or
:class:`pvfs.errors.PvfsError`.  Host files are only ever opened read-only.
"""

from __future__ import annotations

import errno
import os
import posixpath
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import FormatError, PvfsError
from .nodes import Dir, File, Node, resolve

if TYPE_CHECKING:
    from .source import Source


class FileTooLargeError(FormatError):
    """A file that must be small (an index, a manifest) is larger than its limit."""


class OsFiles:
    """Files of the machine pvfs runs on; ``open_fn`` opens one read-only as a Source."""

    def __init__(self, open_fn: Callable[[str], Source] | None = None, root: str = "/") -> None:
        self.open_fn = open_fn
        self.root = os.path.abspath(root)

    # -- paths -----------------------------------------------------------------
    path = staticmethod(os.path.join)

    @staticmethod
    def name(path: str) -> str:
        return os.path.basename(os.path.normpath(path))

    def join(self, base: str | None, name: str) -> str:
        if os.path.isabs(name) or base is None:
            return name
        return os.path.join(os.path.dirname(os.path.abspath(base)), name)

    def key(self, path: str) -> str:
        return os.path.realpath(path)

    # -- metadata ----------------------------------------------------------------
    def isdir(self, path: str) -> bool:
        return os.path.isdir(path)

    def listdir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(path))
        except OSError:
            return []

    def size(self, path: str) -> int:
        return os.path.getsize(path)

    def mtime(self, path: str) -> float:
        return os.path.getmtime(path)

    def exists_size(self, path: str) -> int | None:
        try:
            return os.stat(path).st_size
        except OSError:
            return None

    # -- data ----------------------------------------------------------------------
    def open(self, path: str) -> Source:
        if self.open_fn is None:
            from .source import FileSource

            return FileSource(path)
        return self.open_fn(path)

    def read(self, path: str, limit: int) -> bytes:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise FileTooLargeError(f"{os.path.basename(path)} is larger than {limit} bytes")
        return data

    def read_range(self, path: str, offset: int, length: int) -> bytes:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(length)


class TreeFiles:
    """Files in the node tree below ``root`` (``/``-separated paths relative to it).

    Absolute names an image gives (``/var/lib/vz/...``) start at ``fs_root``, the
    root of the recovered file system they were found in.
    """

    def __init__(self, root: Dir, fs_root: str = "", label: str = "tree") -> None:
        self.root_node = root
        self.root = ""
        self.fs_root = fs_root.strip("/")
        self.label = label

    # -- paths -----------------------------------------------------------------
    @staticmethod
    def path(*parts: str) -> str:
        return posixpath.join(*[p for p in parts if p]) if any(parts) else ""

    @staticmethod
    def name(path: str) -> str:
        return posixpath.basename(path)

    def join(self, base: str | None, name: str) -> str:
        if name.startswith("/") or base is None:
            return posixpath.normpath(posixpath.join(self.fs_root, name.lstrip("/")))
        return posixpath.normpath(posixpath.join(posixpath.dirname(base), name))

    def key(self, path: str) -> str:
        return posixpath.normpath(path)

    # -- metadata ----------------------------------------------------------------
    def _node(self, path: str) -> Node:
        node = resolve(self.root_node, path) if path else self.root_node
        if node is None:
            raise FileNotFoundError(errno.ENOENT, f"{self.label}/{path}: no such file")
        return node

    def _file(self, path: str) -> File:
        node = self._node(path)
        if not isinstance(node, File):
            raise PvfsError(f"{self.label}/{path}: not a regular file")
        return node

    def isdir(self, path: str) -> bool:
        try:
            return isinstance(self._node(path), Dir)
        except OSError:
            return False

    def listdir(self, path: str) -> list[str]:
        try:
            node = self._node(path)
        except OSError:
            return []
        return sorted(node.children()) if isinstance(node, Dir) else []

    def size(self, path: str) -> int:
        return self._file(path).size

    def mtime(self, path: str) -> float:
        return self._node(path).mtime

    def exists_size(self, path: str) -> int | None:
        try:
            return self._file(path).size
        except (OSError, PvfsError):
            return None

    # -- data ----------------------------------------------------------------------
    def open(self, path: str) -> Source:
        try:
            return self._file(path).source
        except FileNotFoundError:
            raise PvfsError(f"{path}: no such file in the recovered tree") from None

    def read(self, path: str, limit: int) -> bytes:
        src = self._file(path).source
        if src.size > limit:
            raise FileTooLargeError(f"{posixpath.basename(path)} is larger than {limit} bytes")
        return src.read(0, src.size)

    def read_range(self, path: str, offset: int, length: int) -> bytes:
        return self._file(path).source.read(offset, length)
