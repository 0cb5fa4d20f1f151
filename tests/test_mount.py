"""Through a real FUSE mount: disks by sha256, cp, qemu-img, loop mounts, EIO, read-only."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from conftest import FIXTURES, ROOT, fixture_json, require_fixture, sha256_file, unpack
from mountutil import needs_fuse, pvfs_mounted, unmount

pytestmark = needs_fuse

MANIFEST = fixture_json(FIXTURES / "qcow2" / "manifest.json", {"images": {}})
EXAMPLES = ROOT / "examples"


def _snapshot_inputs(folder):
    out = {}
    for p in sorted(Path(folder).rglob("*")):
        if p.is_file():
            st = p.stat()
            out[str(p)] = (sha256_file(p), st.st_mtime_ns, st.st_size)
    return out


@pytest.fixture(scope="module")
def qcow2_mount(tmp_path_factory):
    imgdir = unpack(require_fixture("qcow2", "qcow2-fixtures.tar.xz")) / "img"
    before = _snapshot_inputs(imgdir)
    mnt = tmp_path_factory.mktemp("mnt")
    with pvfs_mounted([imgdir], mnt):
        yield imgdir, mnt
    assert _snapshot_inputs(imgdir) == before, "input files changed (bytes or mtime)"


def test_every_disk_through_the_mount(qcow2_mount):
    imgdir, mnt = qcow2_mount
    for name, entry in MANIFEST["images"].items():
        disk = mnt / "storage" / "files" / "img" / name / "disk.raw"
        assert disk.stat().st_size == entry["virtual_size"], name
        assert sha256_file(disk) == (entry.get("expected_raw_sha256") or entry["raw_sha256"]), name
        for snap, sentry in (entry.get("snapshots") or {}).items():
            sdisk = mnt / "storage" / "files" / "img" / name / "snapshots" / snap / "disk.raw"
            assert sha256_file(sdisk) == sentry["raw_sha256_applied"], (name, snap)


def test_cp_dd_and_qemu_img_convert(qcow2_mount, tmp_path):
    imgdir, mnt = qcow2_mount
    disk = mnt / "storage" / "files" / "img" / "compressed-zstd.qcow2" / "disk.raw"
    want = MANIFEST["images"]["compressed-zstd.qcow2"]["raw_sha256"]
    subprocess.run(["cp", "--sparse=always", str(disk), str(tmp_path / "cp.raw")], check=True)
    assert sha256_file(tmp_path / "cp.raw") == want
    subprocess.run(["dd", f"if={disk}", f"of={tmp_path / 'dd.raw'}", "bs=1M", "status=none"],
                   check=True)
    assert sha256_file(tmp_path / "dd.raw") == want
    if shutil.which("qemu-img"):
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", str(disk),
                        str(tmp_path / "qi.raw")], check=True)
        assert sha256_file(tmp_path / "qi.raw") == want


def _drop_cache(path):
    """Drop ``path``'s clean pages from the page cache (works for FUSE files too)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def test_reads_into_reply_buffers_match_qemu_img_and_eio_stays_exact(tmp_path):
    """The mount's read path for plain image ranges (preadv into reused reply buffers,
    inline from the page cache, else a worker thread): a 40 MiB qcow2 made by qemu-img is
    read whole cold, again warm, and by 4 threads at once at interleaved offsets, and
    equals qemu-img's own raw conversion; in a truncated copy the first lost cluster gives
    EIO at its exact offset and the bytes before it read fine."""
    if not shutil.which("qemu-img"):
        pytest.skip("needs qemu-img")
    src = tmp_path / "src.raw"
    with open(src, "wb") as f:
        for i in range(40):
            f.write(os.urandom(1 << 20) if i % 5 != 3 else bytes(1 << 20))
    imgdir = tmp_path / "img"
    imgdir.mkdir()
    qcow = imgdir / "d.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(src), str(qcow)],
                   check=True)
    truth = tmp_path / "truth.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(qcow), str(truth)],
                   check=True)
    want = sha256_file(truth)
    maps = json.loads(subprocess.run(["qemu-img", "map", "--output=json", str(qcow)],
                                     capture_output=True, text=True, check=True).stdout)
    last = max((m for m in maps if m["data"] and "offset" in m), key=lambda m: m["offset"])
    cut = last["offset"] + (last["length"] // 2 & ~0xFFFF)
    bad = last["start"] + cut - last["offset"]  # virtual offset of the first lost cluster
    cutdir = tmp_path / "cut"
    cutdir.mkdir()
    (cutdir / "d.qcow2").write_bytes(qcow.read_bytes()[:cut])
    truth_bytes = truth.read_bytes()
    mnt = tmp_path / "mnt"
    with pvfs_mounted([imgdir], mnt):
        disk = mnt / "storage" / "files" / "img" / "d.qcow2" / "disk.raw"
        _drop_cache(qcow)
        assert sha256_file(disk) == want  # cold: the image's pages come in as it goes
        _drop_cache(disk)
        assert sha256_file(disk) == want  # warm image: served inline
        _drop_cache(disk)
        _drop_cache(qcow)  # cold again: reads wait in worker threads, several at once
        errors = []

        def piece(k):
            try:
                with open(disk, "rb", buffering=0) as f:
                    for off in range(k * (3 << 20), len(truth_bytes), 4 * (3 << 20)):
                        got = os.pread(f.fileno(), 3 << 20, off)
                        if got != truth_bytes[off:off + (3 << 20)]:
                            errors.append(off)
            except OSError as e:
                errors.append(e)

        threads = [threading.Thread(target=piece, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
    with pvfs_mounted([cutdir], mnt):
        disk = mnt / "storage" / "files" / "cut" / "d.qcow2" / "disk.raw"
        with open(disk, "rb", buffering=0) as f:
            assert os.pread(f.fileno(), 4096, bad - 4096) == truth_bytes[bad - 4096:bad]
            # a read into the bad range stops exactly at it (the kernel's short read)
            assert os.pread(f.fileno(), 8192, bad - 4096) == truth_bytes[bad - 4096:bad]
            for off, n in ((bad, 4096), (bad + 512, 512), (bad + (1 << 16), 1 << 20)):
                with pytest.raises(OSError) as ei:
                    os.pread(f.fileno(), n, off)
                assert ei.value.errno == errno.EIO, (off, n)


def test_sparse_allocation_is_visible(qcow2_mount):
    imgdir, mnt = qcow2_mount
    st = os.stat(mnt / "storage" / "files" / "img" / "base.qcow2" / "disk.raw")
    assert st.st_size == 64 << 20
    # base has well under 2 MiB of data: du must not claim 64 MiB
    assert 0 < st.st_blocks * 512 < (2 << 20)


def test_tree_is_read_only(qcow2_mount):
    imgdir, mnt = qcow2_mount
    disk = mnt / "storage" / "files" / "img" / "base.qcow2" / "disk.raw"
    with pytest.raises(OSError) as ei:
        open(disk, "r+b")
    assert ei.value.errno in (errno.EROFS, errno.EACCES)
    with pytest.raises(OSError):
        (mnt / "newfile").write_text("x")


def test_report_json_matches_scan(qcow2_mount):
    imgdir, mnt = qcow2_mount
    doc = json.loads((mnt / "report.json").read_text())
    r = subprocess.run([sys.executable, "-m", "pvfs", "scan", "--json", str(imgdir)],
                       capture_output=True, text=True)
    scan = json.loads(r.stdout)
    assert doc["schema"] == scan["schema"] == "pvfs-report/1"
    assert [v["path"] for v in doc["volumes"]] == [v["path"] for v in scan["volumes"]]
    assert "README.txt" in os.listdir(mnt)


def test_examples_loop_mount_ext4(tmp_path):
    mnt = tmp_path / "mnt"
    with pvfs_mounted([EXAMPLES], mnt):
        part = mnt / "vms" / "100" / "disk-0.parts" / "p2"
        assert part.exists()
        target = tmp_path / "guest"
        target.mkdir()
        r = subprocess.run(["mount", "-o", "ro,noload,loop", str(part), str(target)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"loop mounting is not possible here: {r.stderr.strip()}")
        try:
            assert (target / "home" / "demo" / "hello.txt").read_text() == \
                "Hello from VM 100, recovered by pvfs.\n"
            assert (target / "etc" / "hostname").read_text() == "pve-demo-vm\n"
        finally:
            subprocess.run(["umount", str(target)], check=True)


def test_mapfile_bad_ranges_eio_zero_and_report(tmp_path):
    damaged = EXAMPLES / "damaged" / "vm-102-disk-0.qcow2"
    mnt = tmp_path / "mnt"
    bad_virtual = 0x271800  # host 0x91800 in the mapfile is virtual 0x271800 (see make-examples.sh)
    with pvfs_mounted([damaged], mnt):
        disk = mnt / "vms" / "102" / "disk-0.raw"
        with open(disk, "rb") as f:
            # Right before and right after the bad sectors: readable (direct I/O, so
            # kernel read-ahead does not drag the bad range into these reads).
            assert len(os.pread(f.fileno(), 4096, bad_virtual - 4096)) == 4096
            assert len(os.pread(f.fileno(), 4096, bad_virtual + 1024)) == 4096
            with pytest.raises(OSError) as ei:
                os.pread(f.fileno(), 1024, bad_virtual)
            assert ei.value.errno == errno.EIO
        doc = json.loads((mnt / "report.json").read_text())
        entries = {(d["path"], d["code"]): d for d in doc["damage"]}
        assert entries[("vms/102/disk-0.raw", "unreadable-range")]["ranges"] == [[bad_virtual, 1024]]
        assert entries[("vms/102/disk-0.parts/p2", "unreadable-range")]["ranges"] == \
            [[bad_virtual - (1 << 20), 1024]]
        # the read's entry names the disk's own offsets (not the qcow2 file's 0x91800)
        assert [d["ranges"] for d in doc["damage"] if d["code"] == "read-eio"] == \
            [[[bad_virtual, 1024]]]
        # README.txt starts with the status table; report.html has it too, and the map's
        # range links to the file on the bad sectors
        readme = (mnt / "README.txt").read_text().splitlines()
        assert readme[3].startswith("Status of each VM and container")
        assert any(ln.split()[:4] == ["102", "VM", "-", "PARTIAL"] for ln in readme)
        page = (mnt / "report.html").read_text()
        assert page.startswith("<!DOCTYPE html>") and 'data-status="PARTIAL"' in page
        assert '<li id="r0-0"><b>lost</b> <code>0x271800 + 0x400</code>' in page
        assert "vms/102/disk-0.files/p2/home/demo/hello.txt" in page
    with pvfs_mounted([damaged], mnt, "--bad", "zero"), \
            open(mnt / "vms" / "102" / "disk-0.raw", "rb") as f:
        assert os.pread(f.fileno(), 1024, bad_virtual) == bytes(1024)


SERVE_SCRIPT = textwrap.dedent("""
    import sys
    from pvfs.damage import DamageReport
    from pvfs.nodes import Dir, File
    from pvfs.report import attach_generated_files
    from pvfs.source import BytesSource, Source
    from mountd.daemon import serve

    class Exploding(Source):
        size = 4096
        label = "exploding"
        def _read(self, offset, length):
            raise RuntimeError("a backend bug")

    class Ctx:  # the minimum report.json needs
        pass

    root = Dir()
    root.add("bad.bin", File(Exploding()))
    root.add("good.bin", File(BytesSource(b"good" * 1024)))
    big = root.subdir("big")
    for i in range(3000):
        big.add(f"f{i:05d}", File(BytesSource(str(i).encode())))
    report = DamageReport()
    import json
    from pvfs.nodes import GeneratedFile
    root.add("report.json", GeneratedFile(lambda: json.dumps(report.to_json()).encode()))
    serve(root, sys.argv[1], report, ready=lambda: print("READY", flush=True))
""")


def test_handler_exception_is_eio_and_mount_survives_then_sigterm(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", SERVE_SCRIPT, str(mnt)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "READY"
        with pytest.raises(OSError) as ei:
            (mnt / "bad.bin").read_bytes()
        assert ei.value.errno == errno.EIO
        assert (mnt / "good.bin").read_bytes() == b"good" * 1024
        names = os.listdir(mnt / "big")  # 3000 entries: readdir offsets must resume correctly
        assert sorted(names) == [f"f{i:05d}" for i in range(3000)]
        assert (mnt / "big" / "f02999").read_bytes() == b"2999"
        report = json.loads((mnt / "report.json").read_text())
        assert any(d["code"] == "handler-error" and d["path"] == "bad.bin" for d in report)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        assert proc.returncode == 0, proc.stderr.read()
        assert not os.path.ismount(mnt)
    finally:
        if proc.poll() is None:
            proc.kill()
        unmount(mnt)


HANG_SCRIPT = textwrap.dedent("""
    import sys, threading
    from pvfs.nodes import Dir, File
    from pvfs.source import Source
    from mountd.daemon import serve

    class Hanging(Source):  # a read that never returns (a stuck device, a hung NFS file)
        size = 1 << 20
        label = "hanging"
        def _read(self, offset, length):
            print("READING", flush=True)
            threading.Event().wait()

    root = Dir()
    root.add("hang.bin", File(Hanging()))
    serve(root, sys.argv[1], None, threads=int(sys.argv[2]),
          ready=lambda: print("READY", flush=True))
""")


@needs_fuse
def test_sigterm_ends_the_daemon_with_reads_in_flight(tmp_path):
    """A read stuck in a backend must not make the daemon unkillable: SIGTERM unmounts
    and exits, and the stuck reader gets an error instead of hanging in D state."""
    import threading

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", HANG_SCRIPT, str(mnt), "1"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    result = {}

    def reader():
        try:
            with open(mnt / "hang.bin", "rb") as f:
                result["data"] = os.pread(f.fileno(), 4096, 0)
        except OSError as e:
            result["errno"] = e.errno

    try:
        assert proc.stdout.readline().strip() == "READY"
        t = threading.Thread(target=reader, daemon=True)
        t.start()
        assert proc.stdout.readline().strip() == "READING"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        t.join(timeout=20)
        assert not t.is_alive(), "the reader is still stuck after the daemon exited"
        assert "errno" in result, result
        assert not os.path.ismount(mnt)
    finally:
        if proc.poll() is None:
            proc.kill()
        unmount(mnt)


PREFETCH_SCRIPT = textwrap.dedent("""
    import sys, threading
    from pvfs.damage import DamageReport
    from pvfs.nodes import Dir, File
    from pvfs.source import BytesSource
    from mountd.daemon import serve

    def loader(name):
        def load(d):
            print("LOADED", name, threading.current_thread().name, flush=True)
            if name == "d07":
                raise RuntimeError("broken directory")
            d.add("x", File(BytesSource(name.encode())))
        return load

    root = Dir()
    top = root.subdir("top")
    for i in range(12):
        top.add(f"d{i:02d}", Dir(loader=loader(f"d{i:02d}")))
    report = DamageReport()
    import json
    from pvfs.nodes import GeneratedFile
    root.add("report.json", GeneratedFile(lambda: json.dumps(report.to_json()).encode()))
    serve(root, sys.argv[1], report, ready=lambda: print("READY", flush=True))
""")


@needs_fuse
def test_a_walk_prefetches_sibling_directories(tmp_path):
    """Listing top/ and then top/d00 is a walk: the other subdirectories of top/ are
    loaded by the prefetch thread meanwhile, their contents are the same, and a loader
    that fails there is reported (handler-error) as an opendir would report it."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", PREFETCH_SCRIPT, str(mnt)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "READY"
        assert sorted(os.listdir(mnt / "top")) == [f"d{i:02d}" for i in range(12)]
        assert os.listdir(mnt / "top" / "d00") == ["x"]
        loaded = {}

        def read_loaded():
            for line in proc.stdout:
                _, name, thread = line.strip().split(maxsplit=2)
                loaded[name] = thread

        threading.Thread(target=read_loaded, daemon=True).start()
        deadline = time.monotonic() + 30
        while len(loaded) < 12 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(loaded) == 12, loaded  # without prefetch only d00 is ever loaded
        assert loaded["d00"] != "pvfs-prefetch"
        assert all(loaded[f"d{i:02d}"] == "pvfs-prefetch" for i in range(1, 12))
        for i in range(12):
            if i != 7:
                assert (mnt / "top" / f"d{i:02d}" / "x").read_text() == f"d{i:02d}"
        report = json.loads((mnt / "report.json").read_text())
        assert any(d["code"] == "handler-error" and d["path"] == "top/d07"
                   and "broken directory" in d["message"] for d in report)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
            unmount(mnt)
