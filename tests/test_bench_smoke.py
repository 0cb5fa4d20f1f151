"""Smoke runs of the scale benchmarks (benchmarks/bench_scale_*.py, bench_inputs.py
--curve) at tiny sizes, so that they do not rot: each must run to its printed curve, with
its own checks (file counts, sha256 of what is read through the mount, lookups) passing.
The real runs (up to 1-2 million files, objects or chunks) stay out of the suite."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT
from mountutil import needs_fuse

ENV = {**os.environ, "PVFS_BENCH_WARM": "1"}  # never drop the shared machine's page cache


def run(tmp_path, script, *args, timeout=120):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=timeout, env=ENV)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "under the 300 MiB limit" in r.stdout, r.stdout
    return r.stdout


@pytest.mark.skipif(not shutil.which("ldb") and not os.environ.get("CI"),
                    reason="needs ldb (rocksdb-tools, backends/ceph/deps-apt.txt)")
def test_ceph_index_curve(tmp_path):
    out = run(tmp_path, "bench_scale_ceph.py", "--sizes", "2000,5000", "--osds", "2",
              "--workdir", str(tmp_path))
    assert "Ceph OSD index" in out and "5000" in out


@needs_fuse
def test_pbs_datastore_curve(tmp_path):
    out = run(tmp_path, "bench_scale_pbs.py", "--sizes", "200,400", "--workdir", str(tmp_path),
              "--used-dirs-only")
    assert "PBS datastore" in out


@needs_fuse
def test_input_folder_curve(tmp_path):
    out = run(tmp_path, "bench_inputs.py", "--curve", "100,300", "--dir", str(tmp_path))
    assert "small files" in out


@needs_fuse
@pytest.mark.skipif(not shutil.which("zfs-fuse"),
                    reason="zfs-fuse is a benchmark-only package (scripts/setup.sh --bench)")
def test_zfs_pool_curve(tmp_path):
    out = run(tmp_path, "bench_scale_zfs.py", "--sizes", "300", "--workdir", str(tmp_path),
              timeout=300)
    assert "zfs-fuse on the same pools" in out


@needs_fuse
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("pvcreate") or not shutil.which("qemu-img")
                    or not shutil.which("qemu-io"),
                    reason="needs root (loop device), lvm2 and qemu-img")
def test_read_path_against_cat(tmp_path):
    """benchmarks/bench_read.py at 32 MiB: the raw image, linear LV, thin LV and qcow2 it
    builds (and a qcow2 written in shuffled order) are read whole through the mount (every
    read's length checked, every reader's bytes by sha256) beside cat, buffered and
    O_DIRECT (``--direct``: each read one FUSE request into the reader's buffer)."""
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_read.py"),
                        "--size-mib", "32", "--slice-mib", "16", "--rounds", "1", "--direct",
                        "--workdir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env=ENV)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "readers gave the expected bytes (sha256)" in r.stdout, r.stdout
    for reader in ("pvfs raw", "pvfs lvm", "pvfs thin", "pvfs qcow2", "pvfs qcow2-frag"):
        for how in ("", " O_DIRECT"):
            assert f"  {reader}{how} " in r.stdout.split("ratio to cat")[1], r.stdout


@needs_fuse
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the FUSE mount's read-ahead)")
def test_fuse_floor_against_cat(tmp_path):
    """benchmarks/bench_fuse_floor.py at 16 MiB: the minimal pyfuse3 file system answers
    by pread, by mmap (MADV_POPULATE_READ, dropped behind) and with direct_io; every
    reader's bytes are checked against the file by sha256."""
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_fuse_floor.py"),
                        "--size-mib", "16", "--slice-mib", "8", "--rounds", "1",
                        "--workdir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env=ENV)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "content: all 4 readers gave the file's bytes (sha256)" in r.stdout, r.stdout
    for mode in ("pread", "mmap", "direct"):
        assert f"  {mode} " in r.stdout.split("median of")[1], r.stdout


@needs_fuse
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("pvcreate") or not shutil.which("qemu-img")
                    or not shutil.which("qemu-io"),
                    reason="needs root (loop device), lvm2 and qemu-img")
def test_copy_out_against_cp(tmp_path):
    """benchmarks/bench_copy.py at 32 MiB: every input copied out by pvfs copy and by cat
    through the mount, beside cp of the raw file; every output checked by sha256."""
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_copy.py"),
                        "--size-mib", "32", "--rounds", "1", "--inputs", str(tmp_path / "in"),
                        "--workdir", str(tmp_path / "out")], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, env=ENV)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "content: every output of round 1 had the expected sha256" in r.stdout, r.stdout
    ratios = r.stdout.split("ratio to cp")[1]
    for name in ("raw", "lvm", "thin", "qcow2", "qcow2-frag"):
        assert f"  pvfs copy {name} (copy alone) " in ratios, r.stdout
        assert f"  cat mount {name} > file " in ratios, r.stdout
