"""The pmxcfs database reader on real SQLite files (WAL mode) and their damaged forms."""

from __future__ import annotations

import os
import shutil
import sqlite3

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pmxcfs_util import T0, PmxDB, standard_cluster

from pvfs.proxmox import pmxcfs
from pvfs.proxmox.pmxcfs import OsDirFiles, load

NEW_CONF = b"boot: order=scsi0\nmemory: 4096\nname: web\nostype: l26\n" \
           b"scsi0: local-zfs:vm-100-disk-0,size=32M\nscsi1: local-zfs:vm-100-disk-1,size=8M\n"


def _cluster(tmp_path):
    """A database whose newest change (100.conf with memory 4096) is only in the WAL."""
    (tmp_path / "live").mkdir()
    db = PmxDB(tmp_path / "live" / "config.db")
    files = standard_cluster(db)
    db.checkpoint()  # everything so far is in config.db ...
    db.write("nodes/pve/qemu-server/100.conf", NEW_CONF, mtime=T0 + 100)  # ... this only in the WAL
    return db, files


def test_wal_applied(tmp_path):
    db, files = _cluster(tmp_path)
    root = tmp_path / "host"
    d = db.copy_to(root)
    # The newest change really is only in the WAL: SQLite on config.db alone does not see it.
    alone = tmp_path / "alone.db"
    shutil.copyfile(d / "config.db", alone)
    old = sqlite3.connect(alone).execute(
        "SELECT data FROM tree WHERE name='100.conf'").fetchone()[0]
    assert old == files["nodes/pve/qemu-server/100.conf"]
    assert os.path.getsize(d / "config.db-wal") > 32
    before = {p: os.stat(p).st_mtime_ns for p in d.iterdir()}

    c = load(OsDirFiles(str(root)))
    db.close()
    assert c.origin == "config.db + WAL" and not c.stale
    assert [p for p in c.problems if p[0] != "info"] == []
    assert c.read("nodes/pve/qemu-server/100.conf") == NEW_CONF
    for p, data in files.items():
        if p != "nodes/pve/qemu-server/100.conf":
            assert c.read(p) == data
    assert c.paths()["nodes/pve/qemu-server/100.conf"].mtime == T0 + 100
    assert c.version == db.version == c.entries[0].version
    assert {p: os.stat(p).st_mtime_ns for p in d.iterdir()} == before  # originals untouched


def test_wal_missing_is_stale(tmp_path):
    db, files = _cluster(tmp_path)
    root = tmp_path / "host"
    db.copy_to(root, wal=False)  # -shm left behind: the WAL of a running pmxcfs is lost
    db.close()
    c = load(OsDirFiles(str(root)))
    assert c.origin == "config.db" and c.stale
    assert any(code == "config-stale" for _s, code, _m in c.problems)
    assert c.read("nodes/pve/qemu-server/100.conf") == files["nodes/pve/qemu-server/100.conf"]


def test_wal_corrupt_is_stale(tmp_path):
    db, files = _cluster(tmp_path)
    root = tmp_path / "host"
    d = db.copy_to(root)
    db.close()
    w = bytearray((d / "config.db-wal").read_bytes())
    w[8] ^= 0xFF  # page size field: the header checksum no longer matches
    (d / "config.db-wal").write_bytes(bytes(w))
    c = load(OsDirFiles(str(root)))
    assert c.stale and any(code == "config-stale" and "unusable" in m for _s, code, m in c.problems)
    assert c.read("nodes/pve/qemu-server/100.conf") == files["nodes/pve/qemu-server/100.conf"]


def test_wal_torn_tail(tmp_path):
    db, files = _cluster(tmp_path)
    root = tmp_path / "host"
    d = db.copy_to(root)
    db.close()
    wal = (d / "config.db-wal").read_bytes()
    committed, dropped, why = pmxcfs.wal_check(wal)
    assert why is None and committed > 0 and dropped == 0
    # A torn last frame: SQLite ignores the transaction, and so does the reader.
    (d / "config.db-wal").write_bytes(wal[:-10] + b"\xff" * 10)
    committed2, dropped2, _ = pmxcfs.wal_check((d / "config.db-wal").read_bytes())
    assert committed2 < committed and dropped2 > 0
    c = load(OsDirFiles(str(root)))
    assert c.read("nodes/pve/qemu-server/100.conf") == files["nodes/pve/qemu-server/100.conf"]
    assert any(code == "wal-tail" for _s, code, _m in c.problems)


def test_backup_dump_when_db_gone(tmp_path):
    db, files = _cluster(tmp_path)
    root = tmp_path / "host"
    db.dump_to(root, T0 - 86400)  # an older dump ...
    db.write("storage.cfg", b"dir: local\n\tpath /var/lib/vz\n", mtime=T0 + 200)
    db.dump_to(root, T0 + 300)  # ... and the newest one
    db.close()
    c = load(OsDirFiles(str(root)))
    assert c.origin == f"backup config-{T0 + 300}.sql.gz" and c.stale
    assert c.read("storage.cfg") == b"dir: local\n\tpath /var/lib/vz\n"
    assert c.read("nodes/pve/qemu-server/100.conf") == NEW_CONF
    assert c.read("priv/authkey.key") == files["priv/authkey.key"]
    assert any(code == "config-stale" and "config.db is gone" in m for _s, code, m in c.problems)


def test_hostile_dump_cannot_attach(tmp_path):
    root = tmp_path / "host"
    d = root / "var/lib/pve-cluster/backup"
    d.mkdir(parents=True)
    victim = tmp_path / "victim.db"
    import gzip

    (d / "config-1.sql.gz").write_bytes(gzip.compress(
        f"ATTACH DATABASE '{victim}' AS x; CREATE TABLE x.t(a);".encode()))
    c = load(OsDirFiles(str(root)))
    assert not victim.exists()
    assert c is not None and not c.entries
    assert any(code == "config-backup-damaged" for _s, code, _m in c.problems)


def test_hostile_dump_and_database_are_bounded(tmp_path):
    import gzip
    import time

    root = tmp_path / "host"
    d = root / "var/lib/pve-cluster/backup"
    d.mkdir(parents=True)
    schema = ("CREATE TABLE tree (inode INTEGER PRIMARY KEY, parent INTEGER, version INTEGER, "
              "writer INTEGER, mtime INTEGER, type INTEGER, name TEXT, data BLOB);")
    (d / "config-1.sql.gz").write_bytes(gzip.compress((
        schema + "INSERT INTO tree WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) "
        "SELECT x,0,1,0,0,8,'n'||x,zeroblob(1000000) FROM c;").encode()))
    t = time.monotonic()
    c = load(OsDirFiles(str(root)))
    assert time.monotonic() - t < 5 and not c.entries
    # a database whose "tree" is a view that makes endless huge rows
    db = root / "var/lib/pve-cluster/config.db"
    con = sqlite3.connect(db)
    con.execute("CREATE VIEW tree AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 "
                "FROM c) SELECT x AS inode,0 AS parent,1 AS version,0 AS writer,0 AS mtime,"
                "8 AS type,'n'||x AS name,zeroblob(100000000) AS data FROM c")
    con.commit()
    con.close()
    t = time.monotonic()
    c = load(OsDirFiles(str(root)))
    assert time.monotonic() - t < 15 and not c.entries
    assert any(code == "config-db-damaged" for _s, code, _m in c.problems)


def _big_cluster(tmp_path, n=300):
    db = PmxDB(tmp_path / "big.db")
    want = {}
    for i in range(n):
        p = f"nodes/pve/qemu-server/{1000 + i}.conf"
        want[p] = (f"name: vm{i}\nmemory: 512\n" + "description: " + "x" * (i * 7 % 900) + "\n").encode()
        db.write(p, want[p], mtime=T0 + i)
    big = bytes(range(256)) * 64  # 16 KiB: spills into overflow pages
    db.write("priv/big.bin", big)
    want["priv/big.bin"] = big
    db.checkpoint()
    return db, want


def _check_cut(c, want, msg):
    """Rows whose overflow pages are lost: reported, the known part exact, the rest EIO."""
    from pvfs.errors import UnreadableError
    from pvfs.nodes import resolve
    from pvfs.proxmox.cluster import etc_pve_tree

    got = c.paths()
    cut = [p for p in want if p in got and got[p].data != want[p]]
    for p in cut:
        e = got[p]
        assert f"{p.rsplit('/', 1)[1]!r}" in msg and "cut short" in msg
        assert 0 < e.lost_from < len(want[p]) and e.data[: e.lost_from] == want[p][: e.lost_from]
        node = resolve(etc_pve_tree(c, "pve"), p)
        assert node.source.read(0, e.lost_from) == want[p][: e.lost_from]
        with pytest.raises(UnreadableError):
            node.source.read(e.lost_from, 1)
    return cut


def test_truncated_db_read_page_by_page(tmp_path):
    db, want = _big_cluster(tmp_path)
    root = tmp_path / "host"
    d = db.copy_to(root, wal=False, shm=False)
    db.close()
    db_rows = load(OsDirFiles(str(root))).paths()  # the intact file, read by SQLite
    data = (d / "config.db").read_bytes()
    pages = len(data) // 4096
    (d / "config.db").write_bytes(data[: (pages * 2 // 3) * 4096])
    c = load(OsDirFiles(str(root)))
    assert c.origin == "salvaged pages" and c.stale
    msg = " ".join(m for _s, code, m in c.problems if code == "config-salvaged")
    assert f"of {pages} pages present" in msg
    got = c.paths()
    ok = [p for p in want if p in got and got[p].data == want[p]]
    assert len(ok) > len(want) // 3  # the rows in the pages that survived, byte for byte
    # what was lost is said: the inode range of the lost leaf pages covers every lost row
    lost_from = int(msg.split("the rows of inodes ")[1].split("..")[0])
    lost = {e.inode for p, e in db_rows.items()} - {e.inode for e in c.entries.values()}
    assert lost and min(lost) >= lost_from
    _check_cut(c, want, msg)


def test_damaged_interior_page(tmp_path):
    db, want = _big_cluster(tmp_path)
    root = tmp_path / "host"
    d = db.copy_to(root, wal=False, shm=False)
    db.close()
    data = bytearray((d / "config.db").read_bytes())
    root_page = sqlite3.connect(d / "config.db").execute(
        "SELECT rootpage FROM sqlite_master WHERE name='tree'").fetchone()[0]
    off = (root_page - 1) * 4096
    assert data[off] == 5  # an interior table page
    data[off: off + 4096] = b"\xee" * 4096
    (d / "config.db").write_bytes(bytes(data))
    c = load(OsDirFiles(str(root)))
    assert c.origin == "salvaged pages"
    got = {p: e.data for p, e in c.paths().items()}
    # Every leaf survived: all rows come back by scanning the leaf pages.
    for p, data in want.items():
        assert got.get(p) == data, p


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=0, max_size=6000), st.integers(0, 5999), st.binary(max_size=64))
def test_fuzz_salvage_and_wal(tmp_path_factory, base, at, patch):
    page = bytearray(b"SQLite format 3\0" + b"\x04\x00\x01\x01\x00\x40\x20\x20" + base)
    page[at: at + len(patch)] = patch
    try:
        pmxcfs.salvage(bytes(page))
    except (pmxcfs.PmxcfsError, ValueError):
        pass
    pmxcfs.wal_check(bytes(page))
    try:
        pmxcfs._record(bytes(patch))
    except ValueError:
        pass


def test_damaged_db_with_intact_wal_salvaged_with_the_wal_pages(tmp_path):
    """config.db cut to two thirds, its WAL intact: SQLite refuses the file; the page-by-page
    read takes the WAL's committed page images, so the newest change survives even where
    the file's page is gone."""
    db, want = _big_cluster(tmp_path)
    last = "nodes/pve/qemu-server/1299.conf"  # the highest inode: its leaf is at the end
    db.write(last, b"name: changed-in-wal\n", mtime=T0 + 999)
    root = tmp_path / "host"
    d = db.copy_to(root)
    db.close()
    data = (d / "config.db").read_bytes()
    pages = len(data) // 4096
    (d / "config.db").write_bytes(data[: (pages * 2 // 3) * 4096])
    c = load(OsDirFiles(str(root)))
    assert c.origin == "salvaged pages"
    msg = " ".join(m for _s, code, m in c.problems if code == "config-salvaged")
    assert "pages taken from config.db-wal" in msg
    assert c.read(last) == b"name: changed-in-wal\n"
    assert c.read("nodes/pve/qemu-server/1000.conf") == want["nodes/pve/qemu-server/1000.conf"]
    want[last] = b"name: changed-in-wal\n"
    assert _check_cut(c, want, msg) == ["priv/big.bin"]  # its overflow chain runs into the cut


def test_damaged_db_with_a_good_backup_is_not_a_loss(tmp_path):
    """config.db destroyed, a backup dump beside it: the tree comes from the dump (stale,
    said by config-stale), so the unreadable config.db is degraded, not lost (it was an
    error, and the scan exited 3 though every config came back)."""
    db, files = _cluster(tmp_path)
    root = tmp_path / "host"
    d = db.copy_to(root)
    db.dump_to(root, T0 + 300)
    db.close()
    for extra in ("config.db-wal", "config.db-shm"):
        (d / extra).unlink(missing_ok=True)
    (d / "config.db").write_bytes(b"not a database" * 100)
    c = load(OsDirFiles(str(root)))
    assert c.origin == f"backup config-{T0 + 300}.sql.gz"
    assert c.read("priv/authkey.key") == files["priv/authkey.key"]
    sev = {code: s for s, code, _m in c.problems}
    assert sev["config-db-damaged"] == "warning" and sev["config-stale"] == "warning"
    assert not [p for p in c.problems if p[0] == "error"]
