"""vzdump archives (VMA and container tar), plain or zstd/gzip/lzop compressed (work in progress)."""

BACKENDS = []
