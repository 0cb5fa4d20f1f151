"""The File Allocation Table: cluster chains, read from either FAT copy.

# References:
- Microsoft fatgen103 section 4 ("FAT Data Structure": entry values, end-of-chain and bad
  cluster marks, FAT12 packing) and section 3.3 (BPB_ExtFlags: active FAT, mirroring).
- Microsoft exFAT specification section 4.1 (FatEntry values) and 7.6 (NoFatChain).
- torvalds/linux fs/fat/fatent.c (FAT12/16/32 entry access), dosfstools src/fat.c (fsck.fat
  compares the FAT copies and uses the second when the first is unreadable).

The table is read in chunks of :data:`CHUNK_ENTRIES` entries, decoded with numpy and cached in
:data:`pvfs.cache.METADATA_CACHE`.  A chunk of the active FAT that cannot be read is taken
from the other copy; an entry of the active FAT that cannot be right inside a chain (free,
reserved, out of range, bad) is looked up in the other copy too.  Both are reported once.
A chain walk is bounded by the number of clusters its owner may have, so a loop or a
cross-link ends it with a message instead of an endless walk.
"""

from __future__ import annotations

import bisect
import threading

import numpy as np

from pvfs.cache import METADATA_CACHE
from pvfs.errors import UnreadableError

CHUNK_ENTRIES = 32 * 1024  # FAT entries per cached chunk (even: FAT12 packs two in 3 bytes)


class FatTable:
    """Entries of a FAT with ``n_entries`` slots (clusters 0 .. ClusterCount+1).

    ``copies`` are the byte offsets of the FAT copies in ``source``, the active one first.
    ``bits`` is 12, 16, 32 (FAT32: the high 4 bits are reserved) or ``"exfat"``.
    ``problem(severity, code, message)`` is called for every fallback to another copy.
    """

    def __init__(self, source, copies, length, bits, n_entries, problem):
        self.source = source
        self.copies = list(copies)
        self.length = length
        self.bits = bits
        self.n_entries = n_entries
        self.problem = problem
        #: bytes of one chunk: whole entries, so every chunk starts on an entry
        self.chunk_bytes = CHUNK_ENTRIES * {12: 3, 16: 4}.get(bits, 8) // 2
        if bits == 12:
            self.bad, self.eoc = 0xFF7, 0xFF8
        elif bits == 16:
            self.bad, self.eoc = 0xFFF7, 0xFFF8
        elif bits == 32:
            self.bad, self.eoc = 0x0FFFFFF7, 0x0FFFFFF8
        else:  # exFAT: 0xFFFFFFF8..0xFFFFFFFE are not valid in a chain; 0xFFFFFFFF ends it
            self.bad, self.eoc = 0xFFFFFFF7, 0xFFFFFFF8
        self.entries_per_chunk = CHUNK_ENTRIES
        self._reported: set = set()
        self._lock = threading.Lock()

    # -- raw chunks -------------------------------------------------------------
    def _decode(self, raw: bytes) -> np.ndarray:
        if self.bits == 12:
            b = np.frombuffer(raw[: len(raw) - len(raw) % 3], dtype=np.uint8).astype(np.uint32)
            b = b.reshape(-1, 3)
            out = np.empty(b.shape[0] * 2, dtype=np.uint32)
            out[0::2] = b[:, 0] | ((b[:, 1] & 0x0F) << 8)
            out[1::2] = (b[:, 1] >> 4) | (b[:, 2] << 4)
            return out
        if self.bits == 16:
            return np.frombuffer(raw[: len(raw) & ~1], dtype="<u2").astype(np.uint32)
        arr = np.frombuffer(raw[: len(raw) & ~3], dtype="<u4").astype(np.uint32)
        return arr & 0x0FFFFFFF if self.bits == 32 else arr

    def _read_chunk(self, copy: int, index: int) -> np.ndarray:
        key = ("fat", self.source.uid, self.copies[copy], index)

        def load():
            start = index * self.chunk_bytes
            n = max(0, min(self.chunk_bytes, self.length - start))
            return self._decode(self.source.read(self.copies[copy] + start, n))

        return METADATA_CACHE.get_or_load(key, load)

    def _first_time(self, key) -> bool:
        """Whether ``key`` (a chunk or an entry) is reported now: once each, 1000 at most."""
        with self._lock:
            if key in self._reported or len(self._reported) > 1000:
                return False
            self._reported.add(key)
            return True

    def chunk(self, index: int) -> np.ndarray:
        """Chunk ``index`` of the active FAT, or of another copy where it is unreadable."""
        errors = []
        for i in range(len(self.copies)):
            try:
                arr = self._read_chunk(i, index)
            except UnreadableError as e:
                errors.append(e)
                continue
            if i > 0 and self._first_time(("chunk", index)):
                self.problem("info", "fat-copy-used",
                             f"FAT #1 bytes {index * self.chunk_bytes:#x}+"
                             f"{self.chunk_bytes:#x} are unreadable "
                             f"({errors[0]}); FAT #{i + 1} used for them", outcome="repaired")
            return arr
        raise errors[0]

    def _other(self, cluster: int):
        """``cluster``'s entry in the other FAT copies (None where unreadable)."""
        index, pos = divmod(cluster, self.entries_per_chunk)
        for i in range(1, len(self.copies)):
            try:
                arr = self._read_chunk(i, index)
            except UnreadableError:
                continue
            if pos < len(arr):
                yield i, int(arr[pos])

    def valid_next(self, value: int) -> bool:
        return 2 <= value < self.n_entries or value >= self.eoc

    def entry(self, cluster: int) -> int:
        index, pos = divmod(cluster, self.entries_per_chunk)
        arr = self.chunk(index)
        if pos >= len(arr):
            raise UnreadableError(f"cluster {cluster} lies beyond the FAT", [])
        return int(arr[pos])

    def next_cluster(self, cluster: int) -> int:
        """The entry of ``cluster``, from another copy where the active one is impossible."""
        value = self.entry(cluster)
        if self.valid_next(value):
            return value
        for i, other in self._other(cluster):
            if self.valid_next(other):
                if self._first_time(("entry", cluster)):
                    self.problem("info", "fat-copy-used",
                                 f"FAT #1 entry of cluster {cluster} is {value:#x} (not a "
                                 f"valid next cluster); FAT #{i + 1} says {other:#x}, used",
                                 outcome="repaired")
                return other
        return value

    # -- chains ---------------------------------------------------------------------
    def runs(self, first: int, max_clusters: int):
        """Follow the chain from ``first`` for at most ``max_clusters`` clusters.

        Returns ``(runs, error)``: ``runs`` is a list of ``(cluster, count)`` of
        contiguous clusters, ``error`` a message when the chain breaks (a free,
        reserved, bad or out-of-range entry, a loop) before ``max_clusters`` clusters
        and before its end mark; a chain that ends early on its end mark has no error
        (the caller compares the count with the size it expected).
        """
        runs: list[list[int]] = []
        total = 0
        cluster = first
        if not 2 <= cluster < self.n_entries:
            return [], f"first cluster {cluster} is out of range (2..{self.n_entries - 1})"
        seen = _Intervals()
        while total < max_clusters:
            if seen.contains(cluster):
                return _tuples(runs), f"chain loops back to cluster {cluster}"
            # Take a contiguous stretch at numpy speed: entries equal to cluster+1, +2 ...
            start = cluster
            count = 1
            while total + count < max_clusters:
                index, pos = divmod(cluster, self.entries_per_chunk)
                arr = self.chunk(index)
                want = min(len(arr) - pos, max_clusters - total - count + 1)
                if want <= 0:
                    break
                seg = arr[pos:pos + want]
                expect = np.arange(cluster + 1, cluster + 1 + len(seg), dtype=np.uint32)
                diff = np.flatnonzero(seg != expect)
                step = int(diff[0]) if len(diff) else len(seg)
                # stop before a cluster already visited (a loop onto the run itself is caught
                # next round) or past the end of the table
                step = min(step, self.n_entries - 1 - cluster)
                count += step
                cluster += step
                if len(diff) or step == 0:
                    break
            if count > max_clusters - total:
                count = max_clusters - total
                cluster = start + count - 1
            overlap = seen.first_overlap(start, count)
            if overlap is not None:  # the stretch runs into clusters already visited
                if overlap > start:
                    runs.append([start, overlap - start])
                return _tuples(runs), f"chain loops back to cluster {overlap}"
            seen.add(start, count)
            runs.append([start, count])
            total += count
            if total >= max_clusters:
                break
            nxt = self.next_cluster(cluster)
            if nxt >= self.eoc:
                if self.bits == "exfat" and nxt != 0xFFFFFFFF:
                    return _tuples(runs), f"cluster {cluster} has an invalid FAT entry {nxt:#x}"
                return _tuples(runs), None
            if nxt == self.bad:
                return _tuples(runs), f"cluster {cluster} is followed by a bad-cluster mark"
            if nxt < 2 or nxt >= self.n_entries:
                what = "a free entry" if nxt == 0 else f"entry {nxt:#x}"
                return _tuples(runs), f"cluster {cluster} is followed by {what}"
            cluster = nxt
        return _tuples(runs), None

    def count_free(self) -> int:
        """Free entries among clusters 2 .. n_entries-1 (reads the whole active FAT)."""
        free = 0
        n_chunks = -(-self.n_entries // self.entries_per_chunk)
        for index in range(n_chunks):
            arr = self.chunk(index)
            lo = 2 if index == 0 else 0
            hi = min(len(arr), self.n_entries - index * self.entries_per_chunk)
            if hi > lo:
                free += int(np.count_nonzero(arr[lo:hi] == 0))
        return free


def _tuples(runs):
    return [(a, b) for a, b in runs]


class _Intervals:
    """Visited cluster ranges (one per fragment), sorted, for loop detection."""

    def __init__(self):
        self.starts: list[int] = []
        self.ends: list[int] = []

    def add(self, start, count):
        i = bisect.bisect_left(self.starts, start)
        self.starts.insert(i, start)
        self.ends.insert(i, start + count)

    def contains(self, cluster):
        return self.first_overlap(cluster, 1) is not None

    def first_overlap(self, start, count):
        """The first cluster of ``[start, start+count)`` already visited, or None."""
        i = bisect.bisect_right(self.starts, start) - 1
        if i >= 0 and self.ends[i] > start:
            return start
        if i + 1 < len(self.starts) and self.starts[i + 1] < start + count:
            return self.starts[i + 1]
        return None
