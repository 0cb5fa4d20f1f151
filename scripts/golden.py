#!/usr/bin/env python3
"""Golden ``pvfs scan`` transcripts: check or regenerate tests/golden/scan/.

    PVFS_SHARED=/path/to/shared python scripts/golden.py            # check, print diffs
    python scripts/golden.py --update                                # rewrite every file
    python scripts/golden.py --update -k zfs/ -k qcow2/base          # only matching cases
    python scripts/golden.py --list

The cases (every fixture and damaged variant, with the options a user would pass) are in
tests/scancases.py; tests/test_golden_scan.py runs the same check per case.  After an
update, read ``git diff tests/golden/scan`` before committing: every changed line is a
change users see.
"""

from __future__ import annotations

import argparse
import difflib
import sys
import tempfile
import time
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

import scancases  # noqa: E402


def _one(name: str) -> tuple[str, str | None, float]:
    """The case's transcript, or None and the reason when the case cannot run (a missing
    fixture raises pytest's skip/fail outcome, which cannot be sent back to the parent)."""
    t = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="pvfs-golden-") as tmp:
            text = scancases.run_case(scancases.CASES_BY_NAME[name], Path(tmp))
    except BaseException as e:  # noqa: BLE001 - pytest's outcomes are BaseException
        return name, None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return name, text, time.monotonic() - t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--update", action="store_true", help="rewrite the golden files")
    p.add_argument("--list", action="store_true", help="list the cases")
    p.add_argument("-k", action="append", default=[], metavar="TEXT",
                   help="only cases whose name contains TEXT (repeatable)")
    p.add_argument("-j", type=int, default=2, metavar="N", help="cases run at once (2)")
    args = p.parse_args(argv)
    cases = [c for c in scancases.CASES if not args.k or any(k in c.name for k in args.k)]
    if args.list:
        print("\n".join(c.name for c in cases))
        return 0
    bad = cannot = 0
    start = time.monotonic()
    # (not multiprocessing.Pool: its workers are daemonic, and pvfs's parallel phase may
    # start processes of its own from the scan)
    with ProcessPoolExecutor(args.j, mp_context=multiprocessing.get_context("fork")) as pool:
        for name, text, secs in pool.map(_one, [c.name for c in cases]):
            case = scancases.CASES_BY_NAME[name]
            if text is None:
                cannot += 1
                print(f"CANNOT RUN        {case.name}: {secs}")
                continue
            path = scancases.golden_path(case)
            old = path.read_text() if path.exists() else ""
            if text == old:
                print(f"ok       {secs:6.1f}s  {case.name}")
                continue
            if args.update:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
                print(f"updated  {secs:6.1f}s  {case.name}")
                continue
            bad += 1
            print(f"DIFFERS  {secs:6.1f}s  {case.name}")
            sys.stdout.writelines(difflib.unified_diff(
                old.splitlines(True), text.splitlines(True), str(path), "actual"))
    if args.update and not args.k:  # drop files of cases that no longer exist
        known = {scancases.golden_path(c) for c in scancases.CASES}
        for f in scancases.GOLDEN_DIR.rglob("*.out"):
            if f not in known:
                f.unlink()
                print(f"removed  {f.relative_to(ROOT)}")
    print(f"{len(cases)} cases in {time.monotonic() - start:.0f} s"
          + (f", {bad} differ (--update rewrites them)" if bad else "")
          + (f", {cannot} cannot run" if cannot else ""))
    return 1 if bad or cannot else 0


if __name__ == "__main__":
    sys.exit(main())
