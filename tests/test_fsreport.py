"""pvfs scan's per-guest summary of guest filesystems (pvfs/fsreport.py)."""

from __future__ import annotations

from pathlib import Path

from pvfs.discover import discover
from pvfs.report import readme_text, report_text

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_scan_says_per_vm_whether_its_filesystems_are_intact():
    """The real ext4 of the examples: VM 100 intact in one line, VM 102 names the
    filesystem whose file lies on the ddrescue map's bad sectors."""
    from pvfs.fsreport import guest_fs_lines

    ctx = discover([str(EXAMPLES / "vm-100-disk-0.qcow2"),
                    str(EXAMPLES / "damaged" / "vm-102-disk-0.qcow2")])
    lines = guest_fs_lines(ctx)
    assert lines[0] == "  VM 100: 2 guest filesystems, all intact (ext4)"
    assert lines[1] == "  VM 102: 0 of 2 guest filesystems intact (ext4)"
    assert "    vms/102/disk-0.files/p2 (ext4): 1 damaged file" in lines
    hit = [e for e in ctx.report if e.code == "files-damaged" and e.path.startswith("vms/102/")]
    assert hit and "1 files or directories lie on unreadable bytes" in hit[0].message
    assert "Guest filesystems, per VM and container:" in report_text(ctx)
    assert "\n  VM 100: 2 guest filesystems, all intact (ext4)\n" in readme_text(ctx)
