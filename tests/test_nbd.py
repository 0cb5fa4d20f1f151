"""NBD inputs (pvfs/nbd.py) against real servers on this machine: qemu-nbd -r and nbdkit,
on 127.0.0.1 and on Unix sockets only.

Ground truth comes from the real tools: the examples' SHA256SUMS (qemu-img convert), the
qcow2 fixture's manifest and ``qemu-img map`` output, and a guest disk made here with
mke2fs -d and qemu-img convert whose files' sha256 are those of the source files.  A local
scan of the same image is the reference for the NBD scan.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FIXTURES, ROOT, cached_build, require_fixture, sha256_file, unpack
from mountutil import needs_fuse, pvfs_mounted
from pvfs.cli import main
from pvfs.errors import PvfsError, UnreadableError, UsageError

nbd = pytest.importorskip("nbd") if not os.environ.get("CI") else __import__("nbd")
from pvfs.nbd import NbdSource, is_nbd_uri, parse_uri  # noqa: E402

EXAMPLES = ROOT / "examples"
QEMU_NBD = shutil.which("qemu-nbd")
NBDKIT = shutil.which("nbdkit")
needs_servers = pytest.mark.skipif(not (QEMU_NBD and NBDKIT) and not os.environ.get("CI"),
                                   reason="needs qemu-nbd (qemu-utils) and nbdkit")
PY = [sys.executable, "-m", "pvfs"]


_SERVERS = itertools.count()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """An NBD server process on a Unix socket or a 127.0.0.1 port; killed on exit."""

    def __init__(self, tmp: Path, kind: str, image: Path, unix: bool = True, fmt: str = "raw",
                 extra: tuple = (), export: str = "disk", readonly: bool = True,
                 params: tuple = ()) -> None:
        self.tmp, self.kind, self.image, self.fmt = tmp, kind, image, fmt
        self.unix, self.extra, self.export = unix, extra, export
        self.readonly, self.params = readonly, params
        self.sock = tmp / f"{kind}-{export.replace('/', '_')}-{next(_SERVERS)}.sock"
        self.port = None if unix else _free_port()
        self.proc = None

    @property
    def uri(self) -> str:
        if self.unix:
            return f"nbd+unix:///{self.export}?socket={self.sock}"
        return f"nbd://127.0.0.1:{self.port}/{self.export}"

    def start(self, image: Path | None = None) -> Server:
        image = image or self.image
        if self.kind == "qemu-nbd":
            where = ["-k", str(self.sock)] if self.unix else ["-b", "127.0.0.1", "-p", str(self.port)]
            argv = [QEMU_NBD, "-r", "-t", "-e", "4", "-f", self.fmt, "-x", self.export, *where,
                    *self.extra, str(image)]
        else:
            where = ["-U", str(self.sock)] if self.unix else ["-i", "127.0.0.1", "-p", str(self.port)]
            argv = [NBDKIT, "-f", *(["-r"] if self.readonly else []), *where, *self.extra,
                    "file", f"file={image}", *self.params]
        with contextlib.suppress(FileNotFoundError):
            self.sock.unlink()
        self.log = open(self.tmp / f"{self.kind}.log", "ab")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=self.log,
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.tmp / f"{self.kind}.log").read_text()
            try:
                with socket.socket(socket.AF_UNIX if self.unix else socket.AF_INET) as s:
                    s.connect(str(self.sock) if self.unix else ("127.0.0.1", self.port))
                return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"{self.kind} did not start")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()


# -- URIs ------------------------------------------------------------------------------
def test_uris_are_parsed():
    u = parse_uri("nbd://holder-2:10810/images/100/vm-100-disk-0.qcow2")
    assert (u.scheme, u.host, u.port, u.export, u.name) == (
        "nbd", "holder-2", 10810, "images/100/vm-100-disk-0.qcow2", "vm-100-disk-0.qcow2")
    u = parse_uri("nbd://[::1]/sdb")
    assert (u.host, u.port, u.export) == ("::1", None, "sdb")
    u = parse_uri("nbd+unix:///osd-3?socket=/run/nbd/osd.sock")
    assert (u.socket, u.export, u.name) == ("/run/nbd/osd.sock", "osd-3", "osd-3")
    assert parse_uri("nbd+unix://?socket=/run/x.sock").name == "x.sock"
    assert parse_uri("nbd://127.0.0.1").name == "127.0.0.1_10809"
    assert is_nbd_uri("NBD://h/x") and is_nbd_uri("nbds://h/x") and not is_nbd_uri("a/nbd://x")


BAD_URIS = [
    ("nbd://", "no host"),
    ("nbd://h:99999/x", "bad NBD URI"),
    ("nbd://h:port/x", "bad NBD URI"),
    ("nbds://h/x", "not supported"),
    ("nbd+vsock://1/x", "not supported"),
    ("nbd+unix:///x", "socket=PATH"),
    ("nbd+unix:///x?socket=rel.sock", "absolute"),
    ("nbd+unix://h/x?socket=/a.sock", "takes no host"),
    ("nbd+unix:///x?socket=/a&socket=/b", "exactly one"),
    ("nbd://h/x?tls-psk-file=/etc/k", "unknown parameter"),
    ("nbd://user@h/x", "TLS"),
    ("nbd://h/x#frag", "fragment"),
]


@pytest.mark.parametrize("uri,why", BAD_URIS)
def test_bad_uris_are_one_line_usage_errors(uri, why, capsys, tmp_path):
    assert main(["scan", uri]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and why in err and uri in err, err
    assert main(["mount", uri, str(tmp_path)]) == 2
    assert why in capsys.readouterr().err


def test_unreachable_exports_are_one_line_usage_errors(capsys, tmp_path):
    port = _free_port()  # nothing listens there
    for uri in (f"nbd://127.0.0.1:{port}/x", f"nbd+unix:///x?socket={tmp_path}/none.sock"):
        t = time.monotonic()
        assert main(["scan", uri]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "cannot connect" in err and uri in err, err
        assert time.monotonic() - t < 10


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(st.one_of(st.text(max_size=80),
                 st.builds(lambda a, b: a + b,
                           st.sampled_from(["nbd://", "nbd+unix://", "nbd+unix:///",
                                            "nbd://h:", "nbd://[", "nbds://"]),
                           st.text(max_size=60))))
def test_uri_parser_fuzz(text):
    try:
        u = parse_uri(text)
    except UsageError as e:
        assert "\n" not in str(e)
        return
    assert u.scheme in ("nbd", "nbd+unix") and u.name and "\0" not in u.export


# -- reading -------------------------------------------------------------------------
def _example() -> Path:
    return require_fixture_path(EXAMPLES / "vm-100-disk-0.qcow2")


def require_fixture_path(p: Path) -> Path:
    assert p.exists(), p  # part of the repository
    return p


def _sums() -> dict:
    out = {}
    for line in (EXAMPLES / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(None, 1)
        out[name] = digest
    return out


def _scan_json(*inputs: str, env: dict | None = None) -> dict:
    r = subprocess.run([*PY, "scan", "--json", *inputs], capture_output=True, text=True,
                       timeout=300, env=env)
    assert r.returncode in (0, 3), r.stderr
    return json.loads(r.stdout)


def _without_input_path(doc: dict) -> dict:
    """The scan minus where the input came from (its path and what follows from it)."""
    doc = json.loads(json.dumps(doc))
    for i in doc["inputs"]:
        i.pop("path")
        i.pop("nbd", None)
    for v in doc["volumes"]:
        v.get("info", {}).get("proxmox", {}).pop("store", None)
    doc.pop("elapsed", None)
    doc.pop("generated", None)
    return doc


@needs_servers
@pytest.mark.parametrize("kind,unix", [("qemu-nbd", True), ("nbdkit", False)])
def test_qcow2_over_nbd_scans_like_the_local_file(tmp_path, kind, unix):
    """The qcow2 file itself is exported (qemu-nbd -f raw / nbdkit file): pvfs decodes it,
    snapshots and partitions included, exactly as from the local file."""
    img = _example()
    local = _scan_json(str(img))
    with Server(tmp_path, kind, img, unix=unix, export="vm-100-disk-0.qcow2") as srv:
        remote = _scan_json(srv.uri)
    assert remote["inputs"][0]["path"] == srv.uri
    ident = remote["inputs"][0]["nbd"]
    assert ident == {"uri": srv.uri, "size": img.stat().st_size,
                     "head_sha256": hashlib.sha256(img.read_bytes()[:1 << 20]).hexdigest()}
    assert _without_input_path(remote) == _without_input_path(local)
    assert any(v["path"].endswith("snapshots/before-upgrade/disk.raw") for v in remote["volumes"])


def _guest_disk() -> Path:
    """A VM disk made by the real tools: ext4 from mke2fs -d (a 24 MiB file of seeded
    random bytes and a small one), converted to qcow2 by qemu-img.  Ground truth: the
    sha256 of the source files and of the raw disk."""

    def build(tmp: Path) -> None:
        src = tmp / "src"
        (src / "data").mkdir(parents=True)
        (src / "etc").mkdir()
        big = random.Random(15).randbytes(24 << 20)
        (src / "data" / "big.bin").write_bytes(big)
        (src / "etc" / "hostname").write_text("nbd-guest\n")
        raw = tmp / "disk.raw"
        subprocess.run(["mke2fs", "-q", "-t", "ext4", "-d", str(src), str(raw), "40M"],
                       check=True)
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw),
                        str(tmp / "vm-100-disk-0.qcow2")], check=True)
        truth = {"disk": sha256_file(raw), "big.bin": hashlib.sha256(big).hexdigest(),
                 "hostname": hashlib.sha256(b"nbd-guest\n").hexdigest()}
        (tmp / "truth.json").write_text(json.dumps(truth))
        raw.unlink()
        shutil.rmtree(src)

    return cached_build("nbd-guest-disk-v1", build)


def _find(root: Path, name: str) -> Path:
    hits = sorted(root.rglob(name))
    assert hits, f"{name} not under {root}"
    return hits[0]


@needs_servers
@needs_fuse
def test_mount_over_nbd_serves_the_same_disk_and_files(tmp_path):
    """qemu-nbd decodes the qcow2 (-f qcow2) on TCP; nbdkit exports the qcow2 file on a
    Unix socket: both mounts give the disk that qemu-img convert made and the guest
    files that mke2fs -d was given."""
    d = _guest_disk()
    truth = json.loads((d / "truth.json").read_text())
    img = d / "vm-100-disk-0.qcow2"
    with contextlib.ExitStack() as stack:
        decoded = stack.enter_context(Server(tmp_path, "qemu-nbd", img, unix=False, fmt="qcow2",
                                             export="vm-100-disk-0.raw"))
        as_file = stack.enter_context(Server(tmp_path, "nbdkit", img, unix=True,
                                             export="vm-100-disk-0.qcow2"))
        for inputs, name in (([decoded.uri], "decoded"), ([as_file.uri], "qcow2")):
            with pvfs_mounted(inputs, tmp_path / f"mnt-{name}") as mnt:
                disk = mnt / "cts" / "100" / "rootfs.raw"  # a bare ext4 disk: a container
                assert sha256_file(disk) == truth["disk"], name
                assert sha256_file(_find(mnt / "cts", "big.bin")) == truth["big.bin"], name
                assert sha256_file(_find(mnt / "cts", "hostname")) == truth["hostname"], name
                report = json.loads((mnt / "report.json").read_text())
                assert not [e for e in report["damage"] if e["severity"] == "error"], name


@needs_servers
@needs_fuse
def test_server_killed_mid_read_gives_eio_and_a_report_entry(tmp_path):
    d = _guest_disk()
    truth = json.loads((d / "truth.json").read_text())
    img = d / "vm-100-disk-0.qcow2"
    srv = Server(tmp_path, "nbdkit", img, unix=True, export="vm-100-disk-0.qcow2").start()
    try:
        with pvfs_mounted([srv.uri], tmp_path / "mnt") as mnt:
            big = _find(mnt / "cts", "big.bin")
            with open(big, "rb", buffering=0) as f:
                head = f.read(1 << 20)
                expected = random.Random(15).randbytes(24 << 20)
                assert head == expected[:1 << 20]
                srv.kill()
                t = time.monotonic()
                f.seek(16 << 20)
                with pytest.raises(OSError) as e:
                    f.read(1 << 20)
                assert e.value.errno == errno.EIO
                assert time.monotonic() - t < 15
            report = json.loads((mnt / "report.json").read_text())
            hits = [e for e in report["damage"] if e["code"] == "read-eio"]
            assert hits and hits[0]["path"].endswith("big.bin"), report["damage"]
            assert "reconnect" in hits[0]["message"] or "lost" in hits[0]["message"]
            # the rest of the tree still answers (directories are in memory)
            assert (mnt / "cts" / "100").is_dir()
            assert truth["big.bin"]
    finally:
        srv.kill()


@needs_servers
def test_a_server_that_stops_answering_times_out(tmp_path):
    img = _example()
    with Server(tmp_path, "qemu-nbd", img, unix=True) as srv:
        src = NbdSource(srv.uri, timeout=1.5)
        assert src.read(0, 4) == b"QFI\xfb"
        srv.proc.send_signal(signal.SIGSTOP)
        try:
            t = time.monotonic()
            with pytest.raises(UnreadableError) as e:
                src.read(512 << 10, 64 << 10)
            assert 1.0 < time.monotonic() - t < 6
            assert "no answer within 1.5 s" in str(e.value)
            assert e.value.ranges == [(512 << 10, 64 << 10)]
        finally:
            srv.proc.send_signal(signal.SIGCONT)
        src.close()


@needs_servers
def test_reconnects_to_the_same_image_and_refuses_another(tmp_path, monkeypatch):
    monkeypatch.setattr("pvfs.nbd.RETRY_AFTER", 0.0)
    img = _example()
    data = img.read_bytes()
    with Server(tmp_path, "qemu-nbd", img, unix=True) as srv:
        src = NbdSource(srv.uri, timeout=10)
        assert src.read(0, 65536) == data[:65536]
        head = hashlib.sha256(data[:1 << 20]).hexdigest()
        assert src.index_identity() == (f"nbd:{srv.uri}", {f"nbd:{srv.uri}": {
            "size": len(data), "head_sha256": head}})
        srv.kill()
        with pytest.raises(UnreadableError) as e:
            src.read(65536, 4096)  # nobody listens: EIO at once
        assert "reconnect" in str(e.value)
        srv.start()  # the holder restarted its export
        assert src.read(65536, 65536) == data[65536:131072]
        assert src.reconnects >= 1 or src._count >= 1
        srv.kill()
        other = tmp_path / "other.img"
        other.write_bytes(bytes(reversed(data)))  # same size, other first MiB
        srv.start(other)
        with pytest.raises(UnreadableError) as e:
            src.read(0, 4096)
        assert "another image" in str(e.value)
        with pytest.raises(UnreadableError):  # and it stays refused
            src.read(0, 4096)
        src.close()


@needs_servers
def test_server_side_read_errors_are_eio_for_the_range(tmp_path):
    img = _example()
    trigger = tmp_path / "fail-now"
    params = ("error-pread=EIO", "error-pread-rate=100%", f"error-pread-file={trigger}")
    with Server(tmp_path, "nbdkit", img, unix=True, extra=("--filter=error",),
                params=params) as srv:
        src = NbdSource(srv.uri, timeout=10)
        trigger.touch()
        with pytest.raises(UnreadableError) as e:
            src.read(4096, 8192)
        assert e.value.ranges == [(4096, 8192)] and "server error" in str(e.value)
        trigger.unlink()
        assert src.read(4096, 8192) == img.read_bytes()[4096:12288]
        assert src.reconnects == 0  # the connection stayed up
        src.close()


@needs_servers
def test_only_reads_are_sent_and_a_writable_export_is_noted(tmp_path):
    """nbdkit's log filter records every command pvfs sent during a scan: reads and
    block-status queries only, never a write, trim, zero or flush."""
    img = _example()
    log = tmp_path / "commands.log"
    with Server(tmp_path, "nbdkit", img, unix=True, readonly=False,  # (deliberately)
                extra=("--filter=log",), params=(f"logfile={log}",)) as srv:
        doc = _scan_json(srv.uri)
    words = {w[3] for w in map(str.split, log.read_text().splitlines())
             if len(w) > 3 and w[2].startswith("connection=")}  # date time connection=N Cmd
    assert "Read" in words, words
    assert not words & {"Write", "Trim", "Zero", "Flush", "Cache"}, words
    assert [e["code"] for e in doc["damage"]] == ["nbd-writable"]


@needs_servers
def test_block_status_shows_holes_as_qemu_img_map(tmp_path):
    """qemu-nbd decodes base.qcow2; base:allocation says data exactly where ``qemu-img
    map`` (the fixture's truth) says data."""
    img = unpack(require_fixture("qcow2", "qcow2-fixtures.tar.xz")) / "img" / "base.qcow2"
    truth = json.loads((FIXTURES / "qcow2" / "truth" / "base.qcow2.map.json").read_text())
    manifest = json.loads((FIXTURES / "qcow2" / "manifest.json").read_text())
    with Server(tmp_path, "qemu-nbd", img, unix=True, fmt="qcow2") as srv:
        src = NbdSource(srv.uri, timeout=10)
        assert src.has_block_status
        got = src.block_status()
        h = hashlib.sha256()
        for off in range(0, src.size, 4 << 20):
            h.update(src.read(off, min(4 << 20, src.size - off)))
        src.close()
    assert h.hexdigest() == manifest["images"]["base.qcow2"]["raw_sha256"]
    assert sum(n for _, n, _ in got) == src.size
    data = {(o, o + n) for o, n, k in _merge(got, lambda s: s == "data") if k}
    want = {(o, o + n) for o, n, k in
            _merge([(e["start"], e["length"], e["data"]) for e in truth], bool) if k}
    assert data == want
    assert {s for _, _, s in got} == {"data", "unmapped"}


def _merge(extents, key):
    out = []
    for o, n, s in extents:
        k = key(s)
        if out and out[-1][2] == k and out[-1][0] + out[-1][1] == o:
            out[-1] = (out[-1][0], out[-1][1] + n, k)
        else:
            out.append((o, n, k))
    return out


@needs_servers
def test_many_threads_read_in_parallel_connections(tmp_path):
    """The mount's worker threads share a few connections (qemu-nbd -e 4 advertises
    multi-conn); every thread gets its own bytes right."""
    import concurrent.futures

    d = _guest_disk()
    img = d / "vm-100-disk-0.qcow2"
    data = img.read_bytes()
    with Server(tmp_path, "qemu-nbd", img, unix=False) as srv:
        src = NbdSource(srv.uri, timeout=20)
        rnd = random.Random(3)
        jobs = [(rnd.randrange(0, len(data) - 300000), rnd.randrange(1, 300000))
                for _ in range(200)]
        with concurrent.futures.ThreadPoolExecutor(8) as ex:
            got = list(ex.map(lambda j: src.read(*j), jobs))
        assert all(g == data[o:o + n] for g, (o, n) in zip(got, jobs, strict=True))
        assert 1 < src._count <= 4
        assert src.read(0, len(data)) == data  # one big read: split and pipelined
        src.close()


def test_missing_libnbd_is_one_clear_error(monkeypatch):
    import pvfs.nbd as m

    monkeypatch.setitem(sys.modules, "nbd", None)
    with pytest.raises(PvfsError) as e:
        m.NbdSource("nbd://127.0.0.1:1/x", timeout=1)
    assert "python3-libnbd" in str(e.value)


@needs_servers
def test_ceph_cluster_from_three_holders_is_assembled_like_local_osds(tmp_path):
    """The lab set-up of the README: each OSD's block device exported by its own server
    (one per holder machine), one discovery assembling the cluster.  The scan equals the
    scan of the local files, and every RBD image read over NBD has the manifest's sha256."""
    from conftest import sha256_source
    from pvfs.discover import Options, discover
    from pvfs.nodes import resolve

    ceph = unpack(require_fixture("ceph", "ceph-fixture.tar.zst")) / "ceph-fixture"
    manifest = json.loads((FIXTURES / "ceph" / "manifest.json").read_text())
    blocks = [ceph / f"osd.{i}" / "block" for i in range(3)]
    local = _scan_json(*map(str, blocks))
    with contextlib.ExitStack() as stack:
        srvs = [stack.enter_context(Server(tmp_path, "nbdkit" if i != 1 else "qemu-nbd", b,
                                           unix=i != 2, export="block"))
                for i, b in enumerate(blocks)]
        uris = [s.uri for s in srvs]
        assert _without_input_path(_scan_json(*uris)) == _without_input_path(local)
        ctx = discover(uris, Options(progress=False))
        n = 0
        for im in manifest["images"]:
            node = resolve(ctx.root, f"storage/ceph/{im['pool']}/{im['name']}")
            assert node is not None and sha256_source(node.source) == im["sha256"], im["name"]
            n += 1
        assert n >= 2
        for v in ctx.volumes:
            if v.role == "input":
                v.source.close()
        # pvfs index on the holders' exports (parallel workers): built once, then reused
        # by the next run, keyed by URI, export size and the first MiB
        store = tmp_path / "index"
        # (first run: each export indexed by a worker process, the discovery of all three
        # then reuses them; second run: the exports are known, no worker starts)
        for by_workers in (3, 0):
            r = subprocess.run([*PY, "index", "--index-dir", str(store), "--jobs", "2", *uris],
                               capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, r.stderr
            workers, _, main = r.stdout.partition("used by the discovery of all inputs:")
            built = [ln for ln in workers.splitlines() if "ceph objects" in ln]
            reused = [ln for ln in main.splitlines() if "ceph objects" in ln]
            assert len(built) == by_workers and all(ln.split()[0] == "built" for ln in built)
            assert len(reused) == 3 and all(ln.split()[0] == "reused" for ln in reused), \
                r.stdout
