"""A least-recently-used cache bounded in bytes, shared by all backends.

Decoded metadata (L2 tables, btree nodes, dnodes, decompressed blocks) goes
here instead of into ``functools.lru_cache`` on methods, which would keep
every table alive for the life of the process.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any


class ByteLRU:
    """Least-recently-used entries up to ``max_bytes`` (as ``cost(value)`` counts them).

    The default cost knows bytes, numpy arrays and objects with a ``cache_cost``."""

    def __init__(self, max_bytes: int, cost: Callable[[Any], int] | None = None) -> None:
        self.max_bytes = max_bytes
        if cost is not None:
            self._cost = cost  # type: ignore[method-assign]
        self._items: OrderedDict = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def _cost(value: Any) -> int:
        if isinstance(value, (bytes, bytearray, memoryview)):
            return len(value) + 64
        nbytes = getattr(value, "nbytes", None)  # numpy arrays
        if nbytes is not None:
            return int(nbytes) + 128
        cost = getattr(value, "cache_cost", None)
        if cost is not None:
            return int(cost)
        return 256

    def get(self, key: Hashable, default: Any = None) -> Any:
        with self._lock:
            try:
                value = self._items.pop(key)
            except KeyError:
                self.misses += 1
                return default
            self._items[key] = value
            self.hits += 1
            return value

    def __contains__(self, key: Hashable) -> bool:
        """Whether ``key`` is cached (no hit counted, no recency change)."""
        return key in self._items

    def put(self, key: Hashable, value: Any) -> Any:
        cost = self._cost(value)
        if cost > self.max_bytes:
            return value
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= self._cost(old)
            self._items[key] = value
            self._bytes += cost
            while self._bytes > self.max_bytes and self._items:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= self._cost(evicted)
        return value

    def get_or_load(self, key: Hashable, loader: Callable[[], Any]) -> Any:
        """Return the cached value for ``key`` or call ``loader()`` and cache it."""
        value = self.get(key)
        if value is None:
            value = self.put(key, loader())
        return value

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


#: Process-wide cache for decoded metadata and blocks (64 MiB).
METADATA_CACHE = ByteLRU(64 * 1024 * 1024)
