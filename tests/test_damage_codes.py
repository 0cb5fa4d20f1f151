"""docs/DAMAGE.md lists every damage code the code emits (scripts/damage_codes.py)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from pvfs.discover import discover

ROOT = Path(__file__).resolve().parent.parent


def test_catalogue_is_current():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "damage_codes.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_codes_seen_at_run_time_are_catalogued():
    """Codes computed at run time (not literals) must be in the catalogue too."""
    listed = set(re.findall(r"^\| `([^`]+)` \|", (ROOT / "docs" / "DAMAGE.md").read_text(), re.M))
    ex = ROOT / "examples"
    seen_any = set()
    for inputs in ([ex / "damaged" / "vm-102-disk-0.qcow2"], [ex / "pve-dir"],
                   [ex / "vm-100-disk-0.qcow2", ex / "vm-100-disk-0.qcow2"]):
        ctx = discover([str(p) for p in inputs])
        seen = {e.code for e in ctx.report}
        assert seen <= listed, seen - listed
        seen_any |= seen
    assert {"bad-sectors", "files-damaged", "same-file"} <= seen_any, seen_any
