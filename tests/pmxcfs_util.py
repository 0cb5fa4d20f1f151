"""Build real pmxcfs databases with SQLite (WAL mode, newest change left in the WAL).

The schema is pmxcfs's (proxmox/pve-cluster src/pmxcfs/database.c); rows are written
the way ``bdb_backend_write`` does: the entry, then ``__version__`` (inode 0) with the
same version, in one transaction.
"""

from __future__ import annotations

import gzip
import shutil
import sqlite3
import subprocess
from pathlib import Path

SCHEMA = ("CREATE TABLE IF NOT EXISTS tree (  inode INTEGER PRIMARY KEY NOT NULL,"
          "  parent INTEGER NOT NULL CHECK(typeof(parent)=='integer'),"
          "  version INTEGER NOT NULL CHECK(typeof(version)=='integer'),"
          "  writer INTEGER NOT NULL CHECK(typeof(writer)=='integer'),"
          "  mtime INTEGER NOT NULL CHECK(typeof(mtime)=='integer'),"
          "  type INTEGER NOT NULL CHECK(typeof(type)=='integer'),"
          "  name TEXT NOT NULL,  data BLOB);")
T0 = 1_760_000_000


class PmxDB:
    """A pmxcfs tree being written: ``mkdir``/``write`` allocate inodes like memdb
    (inode = version of its creation)."""

    def __init__(self, path: Path, writer=1):
        self.path = Path(path)
        self.con = sqlite3.connect(self.path, isolation_level=None)
        self.con.execute("PRAGMA journal_mode=WAL")
        self.con.execute("PRAGMA synchronous=NORMAL")
        self.con.execute("PRAGMA wal_autocheckpoint=0")  # pmxcfs checkpoints itself; we keep the WAL
        self.con.execute(SCHEMA)
        self.version = 0
        self.writer = writer
        self.inodes = {"": 0}

    def _put(self, inode, parent, typ, name, data, mtime):
        self.version += 1
        v = self.version
        c = self.con
        c.execute("BEGIN")
        c.execute("REPLACE INTO tree VALUES (?,?,?,?,?,?,?,?)",
                  (inode if inode is not None else v, parent, v, self.writer, mtime, typ, name, data))
        c.execute("REPLACE INTO tree VALUES (0,0,?,?,?,8,'__version__',NULL)", (v, self.writer, mtime))
        c.execute("COMMIT")
        return inode if inode is not None else v

    def mkdir(self, path, mtime=T0):
        parent, _, name = path.rpartition("/")
        if parent and parent not in self.inodes:
            self.mkdir(parent, mtime)
        if path not in self.inodes:
            self.inodes[path] = self._put(None, self.inodes[parent], 4, name, None, mtime)
        return self.inodes[path]

    def write(self, path, data: bytes, mtime=T0):
        parent, _, name = path.rpartition("/")
        if parent and parent not in self.inodes:
            self.mkdir(parent, mtime)
        self.inodes[path] = self._put(self.inodes.get(path), self.inodes[parent], 8, name, data, mtime)

    def checkpoint(self):
        self.con.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def copy_to(self, root: Path, wal=True, shm=True, db=True) -> Path:
        """Copy config.db (+ -wal, -shm) into ``root``/var/lib/pve-cluster while the
        connection is open (closing would checkpoint the WAL into the database)."""
        d = Path(root) / "var/lib/pve-cluster"
        d.mkdir(parents=True, exist_ok=True)
        for suffix, want in (("", db), ("-wal", wal), ("-shm", shm)):
            src = Path(str(self.path) + suffix)
            if want and src.exists():
                shutil.copyfile(src, d / ("config.db" + suffix))
        return d

    def dump_to(self, root: Path, when: int) -> Path:
        """``sqlite3 config.db .dump | gzip`` into backup/config-<when>.sql.gz, as
        PVE::Cluster::Setup::backup_cfs_database does."""
        d = Path(root) / "var/lib/pve-cluster/backup"
        d.mkdir(parents=True, exist_ok=True)
        sql = subprocess.run(["sqlite3", f"file:{self.path}?mode=ro", ".dump"], check=True,
                             capture_output=True).stdout
        out = d / f"config-{when}.sql.gz"
        out.write_bytes(gzip.compress(sql))
        return out

    def close(self):
        self.con.close()


def standard_cluster(db: PmxDB, node="pve", storage_cfg=None):
    """A node with a VM, a container and storage.cfg; returns the expected files."""
    files = {
        "storage.cfg": storage_cfg or (
            b"dir: local\n\tpath /var/lib/vz\n\tcontent iso,vztmpl,backup\n\n"
            b"zfspool: local-zfs\n\tpool rpool/data\n\tsparse\n\tcontent images,rootdir\n"),
        f"nodes/{node}/qemu-server/100.conf": (
            b"boot: order=scsi0\nmemory: 2048\nname: web\nostype: l26\n"
            b"scsi0: local-zfs:vm-100-disk-0,size=32M\n"),
        f"nodes/{node}/lxc/102.conf": (
            b"arch: amd64\nhostname: db\nostype: debian\nrootfs: local-zfs:subvol-102-disk-0,size=8G\n"),
        "priv/authkey.key": b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        "corosync.conf": b"totem {\n  cluster_name: lab\n}\n",
    }
    for i, (p, data) in enumerate(files.items()):
        db.write(p, data, mtime=T0 + i)
    return files
