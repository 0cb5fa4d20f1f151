#!/usr/bin/env python3
"""Write docs/DAMAGE.md: every damage code the code can emit, found in the source.

A damage entry is made by ``report.add(severity, layer, path, code, message, ...)``,
by ``Problem(severity, code, message)`` or by a backend's own wrapper
``report(severity, code, message)``; this walks the syntax tree of pvfs/, mountd/ and
backends/ for such calls with literal codes.  tests/test_damage_codes.py checks that
the committed catalogue is current.  Usage: scripts/damage_codes.py [--check]
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEVERITIES = ("info", "warning", "error")
#: pvfs/damage.py OUTCOMES: the outcome an entry has when none is given
OUTCOMES = {"error": ("lost",), "warning": ("degraded",), "info": ("note", "repaired")}
CODE_RE = re.compile(r"^[a-z0-9]+(?:[-_][a-z0-9]+)*$")
OUT = ROOT / "docs" / "DAMAGE.md"


def _const(node):
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _consts(node) -> list:
    """A literal, or both literals of ``a if cond else b``."""
    if isinstance(node, ast.IfExp):
        return [c for c in (_const(node.body), _const(node.orelse)) if c]
    c = _const(node)
    return [c] if c else []


def _codes_assigned(tree) -> dict:
    """``name = "a" if ... else "b"``: the literal codes a local name can hold."""
    out: dict[str, list] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 \
                and isinstance(node.targets[0], ast.Name):
            vals = [c for c in _consts(node.value) if CODE_RE.match(c)]
            if vals:
                out.setdefault(node.targets[0].id, []).extend(vals)
    return out


def _text(node):
    """A message argument as text: literal parts of an f-string, {...} for the rest."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{…}" for v in node.values)
    return None


def scan():
    codes: dict[str, dict] = {}
    for top in ("pvfs", "mountd", "backends"):
        for path in sorted((ROOT / top).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            rel = path.relative_to(ROOT).as_posix()
            assigned = _codes_assigned(tree)
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call) or not node.args:
                    continue
                f = node.func
                fname = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                args = node.args
                sevs = [s for s in _consts(args[0]) if s in SEVERITIES]  # "a if c else b" too
                sev = sevs[0] if sevs else None
                layer = code_node = msg = None
                if fname == "Problem" and len(args) >= 2:
                    code_node, msg = args[1], args[2] if len(args) > 2 else None
                elif sev in SEVERITIES and fname == "add" and len(args) >= 4:
                    layer, code_node = _const(args[1]), args[3]
                    msg = args[4] if len(args) > 4 else None
                elif sev in SEVERITIES and len(args) >= 3:
                    code_node, msg = args[1], args[2]
                    if len(args) >= 4 and not any(CODE_RE.match(c) for c in _consts(args[1])) \
                            and any(CODE_RE.match(c) for c in _consts(args[2])):
                        code_node, msg = args[2], args[3]  # report(severity, path, code, msg)
                if sev not in SEVERITIES or code_node is None:
                    continue
                found = _consts(code_node)
                if not found and isinstance(code_node, ast.Name):
                    found = assigned.get(code_node.id, [])
                given = []
                for kw in node.keywords:
                    if kw.arg == "outcome":
                        given = _consts(kw.value)
                if fname == "Problem" and len(args) > 3:
                    given = _consts(args[3])
                labels = set()
                for s in sevs:
                    fit = [o for o in given if o in OUTCOMES[s]]
                    labels.update(f"{s} ({o})" for o in (fit or [OUTCOMES[s][0]]))
                for code in found:
                    if not CODE_RE.match(code):
                        continue
                    e = codes.setdefault(code, {"severity": set(), "layer": set(),
                                                "where": set(), "example": None})
                    e["severity"].update(labels)
                    e["layer"].add(layer or rel.split("/")[1] if top == "backends"
                                   else layer or "core")
                    e["where"].add(rel)
                    t = _text(msg) if msg is not None else None
                    if t and (e["example"] is None or len(t) > len(e["example"])):
                        e["example"] = t
    return codes


def render(codes) -> str:
    out = ["# Damage codes", "",
           "Every `code` a damage entry (`pvfs scan`, report.json) can carry, generated from the",
           "source by `scripts/damage_codes.py` (tests/test_damage_codes.py keeps it current).",
           "Severity follows outcome: `error (lost)` = bytes or entries are gone (exit status 3),",
           "`warning (degraded)` = a member, OSD, PV or peer is missing or a structure is",
           "damaged, but every byte still reads; `info (repaired)` = damage rebuilt from parity,",
           "a mirror or metadata, nothing lost; `info (note)` = worth knowing.", "",
           "| code | severity (outcome) | layer | example message | where |",
           "|---|---|---|---|---|"]
    for code in sorted(codes):
        e = codes[code]
        ex = (e["example"] or "").replace("|", "\\|").replace("\n", " ")
        if len(ex) > 110:
            ex = ex[:107] + "…"
        out.append(f"| `{code}` | {', '.join(sorted(e['severity']))} | "
                   f"{', '.join(sorted(e['layer']))} | {ex} | "
                   f"{', '.join(sorted(e['where']))} |")
    return "\n".join(out) + "\n"


def main() -> int:
    text = render(scan())
    if "--check" in sys.argv:
        if not OUT.exists() or OUT.read_text() != text:
            print("docs/DAMAGE.md is out of date: run scripts/damage_codes.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)} ({text.count(chr(10)) - 8} codes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
