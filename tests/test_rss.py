"""Memory of the mount daemon (issue 13 item 6): while every regular file of the mount
is read to the end, its peak resident set (VmHWM) stays under 250 MB.

A representative subset of tests/scancases.py, one case per kind of per-file state:
the degraded Proxmox rpool (9,400 files, datasets, snapshots, zvols; the first MiB of each
file, so that zvols do not take the time), a PBS datastore with a deleted chunk, a Ceph
OSD alone (objects missing), the LVM-thin pool rebuilt without its superblock, a vzdump
archive and the examples with their ddrescue mapfile.  The pools with the most files
(zfs/fxmirror: 70,000 files, the case that grew past 400 MB) take minutes: they are in
``benchmarks/bench_rss.py``, which reads every case whole.
"""

from __future__ import annotations

import sys

import pytest

import scancases
from conftest import FIXTURES, ROOT
from mountutil import needs_fuse

sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_rss  # noqa: E402

LIMIT_MB = 250
SUBSET = {"zfs-modern/rpool-raidz1-degraded": 1 << 20, "pbs/datastore-missing-chunk": None,
          "ceph/osd.2-alone": None, "lvm-thin/damaged-tmeta-sb": None,
          "vzdump/vzdump-qemu-100.vma.zst": None, "examples/all": None}  # name: bytes per file
assert FIXTURES  # (a fixture-reading module: missing fixtures fail in CI)


@needs_fuse
@pytest.mark.slow
@pytest.mark.parametrize("name", list(SUBSET))
def test_daemon_peak_rss_while_reading_every_file(name):
    m = bench_rss.measure(scancases.CASES_BY_NAME[name], SUBSET[name])
    assert "error" not in m, m
    assert m["pid"] and m["files"] > 0 and m["bytes"] > 0, m
    peak_mb = m["peak_kb"] / 1024
    assert peak_mb < LIMIT_MB, (f"{name}: daemon peak RSS {peak_mb:.0f} MB after reading "
                                f"{m['files']} files ({m['bytes'] / 1e6:.0f} MB)")


@needs_fuse
@pytest.mark.slow
def test_daemon_rss_flat_in_the_files_of_an_input_folder(tmp_path, monkeypatch):
    """Issue 15 item 5: ``pvfs scan`` and the mount daemon of an input folder do not grow
    with the files in it that are no image (bench_inputs.py --curve at 1,000 and 8,000
    files: one VM disk image and the rest 4 KiB notes).  Each such file cost ~3.2 KB (a
    volume, source, tree node and report entry; 100,000: 423 MiB scan, 429 MiB daemon after
    find and report.json), 22 MiB between these sizes; now a name and a size."""
    monkeypatch.setenv("PVFS_BENCH_WARM", "1")  # never drop the shared machine's page cache
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_inputs

    rows = {}
    for n in (1000, 8000):
        bench_inputs.make_curve_folder(tmp_path / f"f{n}", n)
        rows[n] = bench_inputs.mount_row(tmp_path / f"f{n}", n)  # checks report.json lists all
    for col in ("scan rss peak MiB", "rss peak MiB"):
        grow = rows[8000][col] - rows[1000][col]
        assert grow < 6, f"{col}: {rows[1000][col]:.1f} -> {rows[8000][col]:.1f} MiB"
