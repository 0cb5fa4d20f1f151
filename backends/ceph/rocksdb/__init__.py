"""A read-only RocksDB reader in pure Python: what BlueStore and the Ceph monitor need.

Modules: ``log`` (WAL / MANIFEST log format), ``writebatch`` (WAL payloads),
``manifest`` (VersionEdits: column families, live files, log numbers),
``block`` / ``table`` (block-based SST tables), ``db`` (the merged,
read-only view over SSTs and WALs of a database).
"""
