"""MBR and GPT tables written by sfdisk (util-linux), read back through discovery."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from pvfs.discover import discover
from pvfs.nodes import resolve
from pvfs.source import FileSource
from backends.parttable.tables import PartitionTableError, read_gpt, read_mbr

sfdisk = shutil.which("sfdisk") or shutil.which("/usr/sbin/sfdisk") or "/sbin/sfdisk"
needs_sfdisk = pytest.mark.skipif(not shutil.which(sfdisk), reason="sfdisk (util-linux fdisk) not installed")


def _make(tmp_path, name, size_mib, script):
    p = tmp_path / name
    with open(p, "wb") as f:
        f.truncate(size_mib << 20)
    subprocess.run([sfdisk, "-q", str(p)], input=script, text=True, check=True,
                   capture_output=True)
    return p


def _mark_partitions(path, parts):
    """Write a tag at the start of each partition so reads can be checked."""
    with open(path, "r+b") as f:
        for n, start_lba in parts.items():
            f.seek(start_lba * 512)
            f.write(f"PART-{n}".encode())


@needs_sfdisk
def test_mbr_with_logical_partitions(tmp_path):
    img = _make(tmp_path, "mbr.img", 64, "label: dos\n"
                "start=2048, size=8192, type=83\n"
                "start=10240, size=8192, type=82\n"
                "start=18432, size=100000, type=5\n"
                "start=20480, size=8192, type=83\n"
                "start=30720, size=16384, type=8e\n")
    _mark_partitions(img, {1: 2048, 2: 10240, 5: 20480, 6: 30720})
    table = read_mbr(FileSource(img))
    got = {(p.number, p.offset // 512, p.size // 512, p.type) for p in table.partitions}
    assert got == {(1, 2048, 8192, "0x83"), (2, 10240, 8192, "0x82"),
                   (5, 20480, 8192, "0x83"), (6, 30720, 16384, "0x8e")}
    ctx = discover([str(img)])
    for n in (1, 2, 5, 6):
        node = resolve(ctx.root, f"storage/files/mbr.img/p{n}")
        assert node is not None, n
        assert node.source.read(0, 6) == f"PART-{n}".encode()


@needs_sfdisk
def test_gpt_and_backup_fallback(tmp_path):
    img = _make(tmp_path, "gpt.img", 32, "label: gpt\n"
                "start=2048, size=4096, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=\"esp\"\n"
                "start=6144, size=20480, type=E6D6D379-F507-44C2-A23C-238F2A3DF928, name=\"lvm\"\n")
    _mark_partitions(img, {1: 2048, 2: 6144})
    table = read_gpt(FileSource(img))
    assert [(p.number, p.offset // 512, p.size // 512, p.type, p.name) for p in table.partitions] == [
        (1, 2048, 4096, "EFI System", "esp"), (2, 6144, 20480, "Linux LVM", "lvm")]
    assert not table.problems
    # Destroy the primary header: the backup at the last LBA must be used and reported.
    with open(img, "r+b") as f:
        f.seek(512)
        f.write(b"\0" * 512)
    ctx = discover([str(img)])
    assert any(d.code == "gpt-primary-damaged" for d in ctx.report)
    node = resolve(ctx.root, "storage/files/gpt.img/p2")
    assert node.source.read(0, 6) == b"PART-2"


@needs_sfdisk
def test_gpt_entries_crc_mismatch_uses_backup(tmp_path):
    img = _make(tmp_path, "gpt.img", 8, "label: gpt\nstart=2048, size=4096\n")
    with open(img, "r+b") as f:  # flip a byte of the primary partition array (LBA 2)
        f.seek(1024 + 40)
        f.write(b"\x99")
    table = read_gpt(FileSource(img))
    assert table.partitions[0].offset == 2048 * 512
    assert any(p.code == "gpt-primary-damaged" for p in table.problems)


def test_not_partition_tables(tmp_path):
    p = tmp_path / "zero.img"
    p.write_bytes(bytes(1 << 20))
    with pytest.raises(PartitionTableError, match="no MBR signature"):
        read_mbr(FileSource(p))
    with pytest.raises(PartitionTableError, match="no valid GPT header"):
        read_gpt(FileSource(p))
    # A FAT boot sector has 55 AA but is no partition table.
    boot = bytearray(1 << 20)
    boot[0:3] = b"\xeb\x3c\x90"
    boot[446:510] = bytes(range(64))
    boot[510:512] = b"\x55\xaa"
    p.write_bytes(bytes(boot))
    with pytest.raises(PartitionTableError, match="boot sector"):
        read_mbr(FileSource(p))


def _mbr_entry(ptype, lba, n):
    return bytes([0, 0, 0, 0, ptype, 0, 0, 0]) + lba.to_bytes(4, "little") + n.to_bytes(4, "little")


def test_ebr_loop_is_bounded(tmp_path):
    """An EBR chain that links back to itself stops with a damage entry, no hang."""
    img = bytearray(4 << 20)
    img[446:462] = _mbr_entry(0x05, 2048, 4096)  # extended partition at LBA 2048
    img[510:512] = b"\x55\xaa"
    first, second = 2048 * 512, (2048 + 16) * 512
    img[first + 446:first + 462] = _mbr_entry(0x83, 64, 128)  # logical p5
    img[first + 462:first + 478] = _mbr_entry(0x05, 16, 64)  # next EBR at +16
    img[first + 510:first + 512] = b"\x55\xaa"
    img[second + 446:second + 462] = _mbr_entry(0x83, 8, 8)  # logical p6
    img[second + 462:second + 478] = _mbr_entry(0x05, 16, 64)  # links to itself
    img[second + 510:second + 512] = b"\x55\xaa"
    p = tmp_path / "loop.img"
    p.write_bytes(bytes(img))
    table = read_mbr(FileSource(p))
    assert [x.number for x in table.partitions] == [5, 6]
    assert [(x.offset // 512, x.size // 512) for x in table.partitions] == [(2112, 128), (2072, 8)]
    assert any(p.code == "ebr-loop" for p in table.problems)


@needs_sfdisk
def test_partial_image_of_sector_zero_lists_partitions_as_unreadable(tmp_path):
    """ddrescue stopped after sector 0: the MBR still describes the disk; its partitions
    are listed, their bytes unreadable (EIO) and reported, instead of "no format"."""
    from pvfs.errors import UnreadableError

    img = _make(tmp_path, "mbr.img", 16, "label: dos\n"
                "start=2048, size=8192, type=83\nstart=10240, size=8192, type=8e\n")
    part = tmp_path / "partial.img"
    part.write_bytes(img.read_bytes()[:512])
    ctx = discover([str(part)])
    p1 = resolve(ctx.root, "storage/files/partial.img/p1")
    p2 = resolve(ctx.root, "storage/files/partial.img/p2")
    assert p1.size == 8192 * 512 and p2.size == 8192 * 512
    with pytest.raises(UnreadableError):
        p1.source.read(0, 512)
    codes = {(e.severity, e.code, e.path) for e in ctx.report}
    assert ("error", "disk-truncated", "storage/files/partial.img/disk.raw") in codes
    beyond = sorted((e.path, e.ranges) for e in ctx.report if e.code == "partition-beyond-disk")
    assert beyond == [("storage/files/partial.img/disk.raw:p1", ((0, 8192 * 512),)),
                      ("storage/files/partial.img/disk.raw:p2", ((0, 8192 * 512),))]


@needs_sfdisk
def test_gpt_array_crc_wrong_and_backup_gone_shows_primary_entries(tmp_path):
    """As sgdisk does: the primary's entries, unverified, with a damage entry."""
    img = _make(tmp_path, "gpt.img", 8, "label: gpt\nstart=2048, size=4096, name=\"data\"\n")
    size = img.stat().st_size
    with open(img, "r+b") as f:
        f.seek(1024 + 0x38)  # a byte of entry 1's name (UTF-16): the array CRC fails
        f.write(b"X")
        f.seek(size - 512)  # the backup header is gone
        f.write(bytes(512))
    table = read_gpt(FileSource(img))
    assert [(p.number, p.offset // 512, p.size // 512) for p in table.partitions] == [(1, 2048, 4096)]
    assert [p.code for p in table.problems] == ["gpt-array-unverified"]
    ctx = discover([str(img)])
    assert any(e.code == "gpt-array-unverified" and (e.severity, e.outcome) == ("warning", "degraded") for e in ctx.report)
    assert resolve(ctx.root, "storage/files/gpt.img/p1") is not None
