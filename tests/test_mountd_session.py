"""The daemon's wait for the next FUSE request (mountd.session.FastWait in place of
pyfuse3's): requests already queued are read without a pass through trio's scheduler,
the fd is still watched while a handler waits for a worker thread, and an unmount from
outside (``fusermount3 -u``) ends the daemon."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from mountutil import needs_fuse, unmount

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent("""
    import os, sys, time
    import pyfuse3
    from pvfs.nodes import Dir, File
    from pvfs.source import BytesSource, Source
    from mountd.daemon import serve

    release = sys.argv[2]

    class Held(Source):  # a read that waits until the test lets it go
        size = 4096
        label = "held"
        def _read(self, offset, length):
            print("READING", flush=True)
            while not os.path.exists(release):
                time.sleep(0.01)
            return bytes(range(256)) * 16

    root = Dir()
    root.add("held.bin", File(Held()))
    for i in range(50):
        root.add(f"f{i:02d}", File(BytesSource(b"x" * i)))
    serve(root, sys.argv[1], None, ready=lambda: print("READY", flush=True))
    wait = pyfuse3._wait_fuse_readable
    print("FAST", getattr(wait, "fast", -1), flush=True)
""")


@needs_fuse
def test_requests_are_read_without_waiting_and_the_fd_is_watched_during_a_held_read(
        tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    release = tmp_path / "release"
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(mnt), str(release)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    got = {}

    def reader():
        with open(mnt / "held.bin", "rb") as f:
            got["data"] = f.read()

    def stats(k):
        n = 0
        for _ in range(5):
            for i in range(50):
                assert os.stat(mnt / f"f{i:02d}").st_size == i
                with pytest.raises(OSError) as e:
                    os.getxattr(mnt / f"f{i:02d}", "security.selinux")
                assert e.value.errno == errno.ENODATA
                n += 1
        got[k] = n

    try:
        assert proc.stdout.readline().strip() == "READY"
        t = threading.Thread(target=reader, daemon=True)
        t.start()
        assert proc.stdout.readline().strip() == "READING"
        # the held read's task waits for its worker thread: other requests are served.
        # Four clients at once, so that requests are queued while one is answered (a
        # lone client's next request races the reply: on a quiet machine few are queued)
        clients = [threading.Thread(target=stats, args=(k,), daemon=True) for k in range(4)]
        for c in clients:
            c.start()
        for c in clients:
            c.join(timeout=60)
            assert not c.is_alive(), "requests were not served while a read was held"
        assert [got[k] for k in range(4)] == [250] * 4
        assert t.is_alive()  # still held
        release.write_text("go")
        t.join(timeout=20)
        assert got["data"] == bytes(range(256)) * 16
        # unmounted from outside while the daemon's tasks wait: it exits
        t0 = time.monotonic()
        unmount(mnt)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert time.monotonic() - t0 < 15
        fast = int(out.split("FAST")[1].split()[0])
        # 1,000+ requests from four clients at once: many were queued when the one before
        # was answered and read without a wait through trio; with pyfuse3's own wait this
        # is -1 (nothing replaced)
        assert fast > 200, out
    finally:
        if proc.poll() is None:
            proc.kill()
        unmount(mnt)


@pytest.mark.parametrize("version, known", [
    ("3.5.0", True), ("3.2.1", True), ("3.4", True),
    ("3.6.0", False), ("4.0.0", False), ("3.1.9", False), ("", False), ("dev", False),
])
def test_the_wait_is_replaced_only_in_pyfuse3_releases_it_was_checked_against(version, known):
    from mountd import session

    assert session._known_version(version) is known


def test_the_installed_pyfuse3_is_one_the_wait_was_checked_against():
    # CI installs pyfuse3 from PyPI: a newer release keeps its own (slower) wait; this
    # says so instead of letting the speed-up vanish unnoticed.
    import pyfuse3
    from mountd import session

    assert session._known_version(pyfuse3.__version__), pyfuse3.__version__
