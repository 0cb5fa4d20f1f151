"""ext2/3/4 reader against the kernel's view of images made by mkfs.ext4/mke2fs.

Each image is filled through a kernel loop mount (or ``mke2fs -d``) with the mixed tree
of tests/ext4_build.py; every entry's name, type, size, sha256, mode, uid, gid, ns
times, nlink, symlink target, xattrs (ACLs in Linux's xattr format), device number,
st_blocks and hard-link identity must equal what the kernel shows.
"""

from __future__ import annotations

import gc
import os

import pytest
from ext4_build import NON_UTF8, build, compare_tree, populate, populate_inline

from backends.ext4.fs import Ext4Filesystem
from backends.ext4.volume import Ext4Volume
from pvfs.discover import discover
from pvfs.nodes import File, resolve
from pvfs.source import FileSource

VARIANTS = {
    # Debian 12 defaults: 64bit, metadata_csum, extents, flex_bg, huge_file, 256-byte inodes
    "default": (["mkfs.ext4", "-q", "-F", "-b", "4096"], populate, "mount"),
    "inline": (["mkfs.ext4", "-q", "-F", "-b", "4096", "-O", "inline_data"], populate_inline,
               "mount"),
    "ext2-1k": (["mkfs.ext2", "-q", "-F", "-b", "1024"], populate, "mount"),
    "ext3-128": (["mkfs.ext3", "-q", "-F", "-I", "128"], populate, "mount"),
    "ext4-d": (["mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096"], populate, "d"),
    "ext4-1k": (["mkfs.ext4", "-q", "-F", "-b", "1024", "-O", "ea_inode"], populate, "mount"),
    "ext4-nocsum": (["mkfs.ext4", "-q", "-F", "-b", "4096", "-O", "^metadata_csum,uninit_bg"],
                    populate, "mount"),
    "bigalloc": (["mkfs.ext4", "-q", "-F", "-b", "4096", "-O", "bigalloc", "-C", "16384"],
                 populate, "mount"),
    "meta_bg": (["mkfs.ext4", "-q", "-F", "-b", "1024", "-O", "meta_bg,^resize_inode,64bit"],
                populate, "mount"),
    "ext2-nofiletype": (["mkfs.ext2", "-q", "-F", "-b", "2048", "-O", "^filetype"], populate,
                        "mount"),
}

#: meta_bg needs more groups than one descriptor block holds (16 of 64 bytes at 1 KiB)
SIZES = {"meta_bg": 200}


class Report:
    def __init__(self):
        self.entries = []

    def add(self, severity, layer, path, code, message, ranges=()):
        self.entries.append((severity, layer, path, code, message, list(ranges)))


def open_fs(image, report=None):
    return Ext4Filesystem(Ext4Volume(FileSource(image)), report=report)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_tree_equals_kernel(variant):
    mkfs, fill, via = VARIANTS[variant]
    image, truth = build(variant, mkfs, SIZES.get(variant, 64), fill=fill, via=via)
    report = Report()
    fs = open_fs(image, report)
    n, bad = compare_tree(fs.root(), truth)
    assert bad == []
    assert n == len(truth) > 300
    assert report.entries == []
    assert gc.isenabled()  # paused only while a directory loads


def test_structures_the_variants_exercise():
    """The images hold what the tests claim to cover (so a variant cannot silently
    lose its point): extent depth > 0, htree, inline files and directories, block maps,
    ea_inode, 128-byte inodes."""
    from backends.ext4.structs import EXT4_INDEX_FL, EXTENT_HEADER

    def scan(variant):
        mkfs, fill, via = VARIANTS[variant]
        vol = Ext4Volume(FileSource(build(variant, mkfs, SIZES.get(variant, 64), fill=fill,
                                               via=via)[0]))
        seen = set()
        for ino in range(1, vol.sb.inodes_count + 1):
            try:
                i = vol.read_inode(ino)
            except Exception:
                continue
            if i.has_extents and EXTENT_HEADER.unpack_from(i.i_block)[3] > 0:
                seen.add("extent-depth")
            if i.flags & EXT4_INDEX_FL:
                seen.add("htree")
            if i.has_inline_data:
                seen.add("inline-dir" if i.ftype == 0o040000 else "inline-file")
            if not i.has_extents and i.ftype == 0o100000 and i.size > 12 * vol.block_size:
                seen.add("indirect")
            if i.flags & 0x00200000:
                seen.add("ea_inode")
        return seen, vol

    seen, vol = scan("default")
    assert {"extent-depth", "htree"} <= seen and vol.sb.metadata_csum and vol.sb.is_64bit
    seen, _ = scan("inline")
    assert {"inline-dir", "inline-file"} <= seen
    seen, vol = scan("ext3-128")
    assert "indirect" in seen and vol.sb.inode_size == 128
    seen, _ = scan("ext4-1k")
    assert "ea_inode" in seen
    for variant, check in (("bigalloc", lambda sb: sb.ro_compat & 0x200),
                           ("meta_bg", lambda sb: sb.incompat & 0x10
                            and sb.group_count > sb.descs_per_block > sb.sb.s_first_meta_bg),
                           ("ext2-nofiletype", lambda sb: not sb.incompat & 0x2)):
        mkfs, fill, via = VARIANTS[variant]
        img = build(variant, mkfs, SIZES.get(variant, 64), fill=fill)[0]
        assert check(Ext4Volume(FileSource(img)).sb), variant


def test_discover_raw_disk_non_utf8_name_and_acl(tmp_path):
    """Through discover(): a bare ext4 disk image shows its files under disk.files and,
    as a Proxmox volume name without a config, under cts/<vmid>/rootfs (one bare filesystem:
    a container's volume, never also under vms/); a non-UTF-8 name comes back
    as the same bytes through os.fsencode (what the mount does)."""
    image, truth = build("default", VARIANTS["default"][0], 64, fill=populate)
    link = tmp_path / "vm-131-disk-0.raw"
    os.symlink(image, link)
    ctx = discover([str(link)])
    base = "storage/files/vm-131-disk-0.raw/disk.files"
    root = resolve(ctx.root, base)
    assert root is not None
    node = resolve(root, "dir/" + NON_UTF8.decode("utf-8", "surrogateescape"))
    assert isinstance(node, File) and node.source.read(0, 100) == b"latin-1 name\n"
    names = [os.fsencode(n) for n in resolve(root, "dir").children()]
    assert NON_UTF8 in names
    assert resolve(ctx.root, "cts/131/rootfs/dir/hello.txt") is resolve(root, "dir/hello.txt")
    assert resolve(ctx.root, "vms/131") is None
    acl = resolve(root, "dir/acl").xattrs[b"system.posix_acl_access"]
    assert acl.hex() == truth["dir/acl"]["xattrs"]["system.posix_acl_access"]
    vol = next(v for v in ctx.volumes if v.guestfs is not None)
    info = vol.guestfs.info
    assert (info.fstype, info.clean, info.size) == ("ext4", True, 64 << 20)
    assert 0 < info.used < info.size
