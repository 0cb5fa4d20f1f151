"""Through a real FUSE mount: a GPT VM disk holding the mixed-tree ext4, read under
vms/<vmid>/disk-0.files/p1/ by the kernel's own lstat/readlink/listxattr/read, equals the
kernel's loop mount of the same filesystem (hard links share an inode number, non-UTF-8
names come back as the same bytes)."""

from __future__ import annotations

import os
import stat
import subprocess

from ext4_build import NON_UTF8, build, populate, tree_truth
from mountutil import needs_fuse, pvfs_mounted

FIELDS = ("mode", "uid", "gid", "mtime_ns", "ctime_ns", "nlink", "size", "blocks", "sha256",
          "target", "rdev", "xattrs")


def _gpt_disk(fs_image, path):
    size = os.path.getsize(fs_image)
    with open(path, "wb") as f:
        f.truncate(size + (2 << 20))
    subprocess.run(["sfdisk", "-q", str(path)], input=f"label: gpt\nstart=2048, size={size // 512}\n",
                   text=True, check=True, capture_output=True)
    with open(fs_image, "rb") as src, open(path, "r+b") as dst:
        dst.seek(1 << 20)
        while chunk := src.read(4 << 20):
            dst.write(chunk)


@needs_fuse
def test_guest_files_through_fuse(tmp_path):
    image, truth = build("default", ["mkfs.ext4", "-q", "-F", "-b", "4096"], 64, fill=populate)
    disk = tmp_path / "vm-120-disk-0.raw"
    _gpt_disk(image, disk)
    mnt = tmp_path / "mnt"
    with pvfs_mounted([disk], mnt):
        top = mnt / "vms" / "120" / "disk-0.files" / "p1"
        assert NON_UTF8 in os.listdir(os.fsencode(str(top / "dir")))
        seen = tree_truth(top)
    seen.pop(".lost+found", None)
    assert set(seen) == set(truth)
    # The mount shows every directory with nlink 2 and size 0, and symlinks with no
    # blocks (mountd's presentation, whatever the filesystem); everything else must agree.
    def fields(p):
        mode = truth[p]["mode"]
        if stat.S_ISDIR(mode):
            return [k for k in FIELDS if k not in ("nlink", "size", "blocks")]
        return [k for k in FIELDS if k != "blocks"] if stat.S_ISLNK(mode) else FIELDS
    bad = [(p, k, seen[p].get(k), truth[p].get(k)) for p in truth if p for k in fields(p)
           if seen[p].get(k) != truth[p].get(k)]
    assert bad == []
    assert len(truth) > 300
    # hard links: the same groups of paths share an inode number
    def groups(t):
        by = {}
        for p, r in t.items():
            by.setdefault(r["ino"], set()).add(p)
        return sorted(sorted(g) for g in by.values() if len(g) > 1)
    assert groups(seen) == groups(truth) != []
