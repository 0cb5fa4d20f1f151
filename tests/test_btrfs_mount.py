"""A btrfs partition of a VM disk through a real FUSE mount of pvfs.

The disk is a GPT image (sfdisk) whose partition 1 holds the kernel-made
btrfs image; one data sector of random.bin is flipped in this copy so the
mount must answer EIO exactly there.  Everything read is compared with the
kernel's view of the clean filesystem.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import stat
import subprocess

import pytest
from btrfs_image import cached_image, have_tools
from mountutil import needs_fuse, pvfs_mounted

pytestmark = [needs_fuse,
              pytest.mark.skipif(have_tools() is not None, reason=str(have_tools()))]

PART_START = 1 << 20


def _sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def _random_bin_sector(img, view):
    """Device offset (inside the filesystem) of the second sector of random.bin's data."""
    ino = view["random.bin"]["inode"].split(":")[1]
    dump = subprocess.run(["btrfs", "inspect-internal", "dump-tree", "-t", "5", str(img)],
                          check=True, capture_output=True, text=True, errors="replace").stdout
    m = re.search(rf"key \({ino} EXTENT_DATA (\d+)\).*?\n.*?type 1 \(regular\)\n"
                  rf"\s+extent data disk byte (\d+) nr \d+\n\s+extent data offset (\d+)", dump)
    foff, disk, off = map(int, m.groups())
    out = subprocess.run(["btrfs-map-logical", "-l", str(disk + off + 4096), "-b", "4096",
                          str(img)], check=True, capture_output=True, text=True).stdout
    return foff + 4096, int(re.search(r"physical (\d+)", out).group(1))


def test_files_by_path_through_fuse(tmp_path):
    img, view = cached_image("main")
    file_off, phys = _random_bin_sector(img, view)
    disk = tmp_path / "vm-100-disk-0.raw"
    with open(disk, "wb") as f:
        f.truncate(PART_START + os.path.getsize(img) + (1 << 20))
    subprocess.run(["sfdisk", "-q", str(disk)], check=True, text=True,
                   input=f"label: gpt\nstart={PART_START // 512}, "
                         f"size={os.path.getsize(img) // 512}, type=linux\n")
    subprocess.run(["dd", f"if={img}", f"of={disk}", "bs=1M", f"seek={PART_START >> 20}",
                    "conv=sparse,notrunc", "status=none"], check=True)
    with open(disk, "r+b") as f:  # our own copy: flip one byte of random.bin's data
        f.seek(PART_START + phys + 10)
        b = f.read(1)
        f.seek(PART_START + phys + 10)
        f.write(bytes([b[0] ^ 0xFF]))
    mnt = tmp_path / "mnt"
    with pvfs_mounted([disk], mnt):
        root = mnt / "vms" / "100" / "disk-0.files" / "p1"
        for rel in ("sub1/in-sub1.txt", "text-lzo.txt", "text-zstd.txt",
                    "snaps/sub1-ro/dir/will-go.txt", "bigdir/file-1999.txt"):
            assert _sha(root / rel) == view[rel]["sha256"], rel
            st = os.lstat(root / rel)
            assert (st.st_size, st.st_mtime_ns, st.st_mode) == (
                view[rel]["size"], view[rel]["mtime_ns"], view[rel]["mode"]), rel
        assert os.readlink(root / "sl-long").encode().hex() == view["sl-long"]["target"]
        assert os.stat(root / "hl-c").st_ino == os.stat(root / "d1" / "d2" / "hl-b").st_ino
        assert os.lstat(root / "bigdev").st_rdev == view["bigdev"]["rdev"]
        assert os.getxattr(root / "acl.txt", "system.posix_acl_access").hex() == \
            view["acl.txt"]["xattrs"]["system.posix_acl_access"]
        assert b"latin1-\xe9\xff.bin" in os.listdir(os.fsencode(root))
        assert len(os.listdir(root / "bigdir")) == 2000
        with open(root / "random.bin", "rb", buffering=0) as f:
            assert len(f.read(file_off)) == file_off
            with pytest.raises(OSError) as e:
                os.pread(f.fileno(), 4096, file_off)
            assert e.value.errno == errno.EIO
            assert len(os.pread(f.fileno(), 1 << 20, file_off + 4096)) == 1 << 20
        report = (mnt / "report.json").read_text()
        assert "data-unreadable" in report and "random.bin" in report
    assert not os.path.ismount(mnt)
    shutil.rmtree(mnt, ignore_errors=True)
    assert stat.S_ISREG(os.stat(disk).st_mode)
