"""Guest filesystems inside backups: an ext4 made by mke2fs -d in a GPT disk (sfdisk), stored
in a vzdump VMA (plain and zstd) and in a PBS datastore (.fidx + chunks), is browsable at
vms/<vmid>/backups/<time>/...files/p1/ with every file equal to the tree mke2fs was given.

The VMA and the datastore are written by the tests' own writers (their readers are checked
against the real fixtures elsewhere); what this checks is that the guest-filesystem layer
works on top of them, with the filesystem made by the real tool.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import struct
import subprocess

import pytest
import zstandard

from backends.pbs.blob import encode_blob
from backends.pbs.structs import FIXED_SIZED_CHUNK_INDEX_1_0
from pvfs.discover import discover
from pvfs.nodes import Dir, File, Symlink, walk
from vma_writer import make_vma

SFDISK = shutil.which("sfdisk") or "/sbin/sfdisk"
MKE2FS = shutil.which("mke2fs") or "/sbin/mke2fs"
pytestmark = pytest.mark.skipif(not (os.path.exists(SFDISK) and os.path.exists(MKE2FS)),
                                reason="sfdisk and mke2fs are needed")
PART_START = 1 << 20
DISK = 12 << 20


def _tree(root):
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hostname").write_text("backup-guest\n")
    (root / "home" / "u").mkdir(parents=True)
    (root / "home" / "u" / "big.bin").write_bytes(os.urandom(3 << 20))
    (root / "home" / "u" / "ünïcode name.txt").write_text("x" * 5000)
    (root / "home" / "u" / "link").symlink_to("../../etc/hostname")
    (root / "var" / "empty").mkdir(parents=True)


def _expected(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p).encode())
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", None)
            else:
                out[rel] = ("file", hashlib.sha256(open(p, "rb").read()).hexdigest())
    return out


@pytest.fixture(scope="module")
def disk(tmp_path_factory):
    d = tmp_path_factory.mktemp("gbk")
    src = d / "src"
    _tree(src)
    part = d / "part.img"
    with open(part, "wb") as f:
        f.truncate(DISK - 2 * PART_START)
    subprocess.run([MKE2FS, "-q", "-t", "ext4", "-L", "bkroot", "-d", str(src), str(part)],
                   check=True, capture_output=True)
    img = d / "disk.img"
    with open(img, "wb") as f:
        f.truncate(DISK)
    subprocess.run([SFDISK, "-q", str(img)], check=True, capture_output=True, text=True,
                   input=f"label: gpt\nstart={PART_START // 512}, "
                         f"size={(DISK - 2 * PART_START) // 512}\n")
    data = bytearray(img.read_bytes())
    data[PART_START:PART_START + part.stat().st_size] = part.read_bytes()
    return d, bytes(data), _expected(src)


def _check(ctx, want, prefix):
    fss = [v for v in ctx.filesystems if any(p.startswith(prefix) for p in v.files_paths)]
    assert len(fss) == 1, [v.files_paths for v in ctx.filesystems]
    vol = fss[0]
    assert vol.guestfs.info.fstype == "ext4" and vol.guestfs.info.label == "bkroot"
    got = {}
    for path, node in walk(vol.guestfs_root):
        if not path or path.startswith(("lost+found", ".lost+found")):
            continue
        if isinstance(node, Symlink):
            got[path] = ("link", node.target)
        elif isinstance(node, Dir):
            got[path] = ("dir", None)
        elif isinstance(node, File):
            got[path] = ("file", hashlib.sha256(node.source.read(0, node.size)).hexdigest())
    assert got == want
    return vol


@pytest.mark.parametrize("comp", ["raw", "zstd"])
def test_ext4_in_a_vzdump_vma(disk, comp):
    d, data, want = disk
    vma, _ = make_vma({"drive-scsi0": data}, {"qemu-server.conf": b"scsi0: local:vm-701-disk-0\n"})
    name = "vzdump-qemu-701-2024_02_02-02_02_02.vma"
    path = d / comp / (name + (".zst" if comp == "zstd" else ""))
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(zstandard.ZstdCompressor().compress(vma) if comp == "zstd" else vma)
    ctx = discover([str(path)])
    vol = _check(ctx, want, "vms/701/backups/")
    assert any(p.endswith(".files/p1") for p in vol.files_paths)


def test_ext4_in_a_pbs_fixed_index(disk):
    d, data, want = disk
    root = d / "datastore"
    snap = root / "vm" / "702" / "2024-05-05T05:05:05Z"
    snap.mkdir(parents=True)
    (root / ".chunks").mkdir()
    cs = 4 << 20
    digests = []
    for off in range(0, len(data), cs):
        chunk = data[off:off + cs]
        dg = hashlib.sha256(chunk).digest()
        digests.append(dg)
        p = root / ".chunks" / dg.hex()[:4]
        p.mkdir(exist_ok=True)
        (p / dg.hex()).write_bytes(encode_blob(chunk))
    table = b"".join(digests)
    head = (FIXED_SIZED_CHUNK_INDEX_1_0 + bytes(16) + struct.pack("<q", 0)
            + hashlib.sha256(table).digest() + struct.pack("<QQ", len(data), cs)).ljust(4096, b"\0")
    (snap / "drive-scsi0.img.fidx").write_bytes(head + table)
    ctx = discover([str(root)])
    _check(ctx, want, "vms/702/backups/")
