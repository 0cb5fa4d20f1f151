"""The typed backend contract (pvfs/backend.py) and core pieces the backends share."""

from __future__ import annotations

import logging

import pytest

from pvfs.backend import (BLOCK_ROLES, ROLES, Backend, BackendDeclarationError, check_backends,
                          load_backends, pick_best)
from pvfs.damage import DamageReport
from pvfs.discover import Context, Volume, discover, finish_backends, run_queue
from pvfs.errors import UnreadableError
from pvfs.nodes import GeneratedFile
from pvfs.source import BytesSource, PatchedSource


class _B(Backend):
    def __init__(self, name, roles=None, options=()):
        self.name = name
        self.roles = roles
        self.cli_options = list(options)


def test_declarations_are_checked_at_load():
    check_backends([_B("a", roles=("disk",)), _B("b", options=[("--b-x", {})])])
    with pytest.raises(BackendDeclarationError, match="two backends are named 'a'"):
        check_backends([_B("a"), _B("a")])
    with pytest.raises(BackendDeclarationError, match="unknown role 'input-disk'"):
        check_backends([_B("a", roles=("input-disk",))])
    with pytest.raises(BackendDeclarationError, match="--x is declared by both a and b"):
        check_backends([_B("a", options=[("--x", {})]), _B("b", options=[("--x", {})])])
    check_backends(load_backends())  # the real ones pass


def test_roles_registry():
    assert {"disk", "partition", "lv", "zvol", "rbd", "drbd-data"} == BLOCK_ROLES
    assert not ROLES["input"].is_block
    used = {r for b in load_backends() for r in (b.roles or ())}
    assert used <= set(ROLES)


def test_pick_best_reports_raising_probes_and_keeps_the_first_of_equal_scores():
    seen = []

    def score(b):
        if b.name == "boom":
            raise UnreadableError("cannot read", [(0, 1)])
        return {"x": 50, "y": 50, "z": 10}[b.name]

    best = pick_best([_B("boom"), _B("x"), _B("y"), _B("z")], score,
                     lambda b, e: seen.append((b.name, type(e).__name__)))
    assert best[0] == 50 and best[1].name == "x"
    assert seen == [("boom", "UnreadableError")]
    assert pick_best([_B("z")], lambda b: 0, lambda b, e: None) is None


class _Grouped(Backend):
    """Records the order groups open in; phase-1 groups must see every phase-0 group first."""

    grouped = True

    def __init__(self, name, phase, log):
        self.name, self.phase, self.log = name, phase, log

    def new_state(self, ctx):
        return {"opened": 0}

    def open_group(self, key, volumes, ctx):
        ctx.state(self)["opened"] += 1
        self.log.append((self.name, key))
        if self.name == "early" and key == "k1":  # exposes a volume that joins a later group
            vol = Volume(BytesSource(b"x"), "storage/x", "x", "disk")
            ctx.add_member(LATE, "k3", vol)

    def finish(self, ctx):
        self.log.append((self.name, "finish", ctx.state(self)["opened"]))


LOG: list = []
EARLY = _Grouped("early", 0, LOG)
LATE = _Grouped("late", 1, LOG)


def test_phases_state_and_finish_hook(monkeypatch):
    import pvfs.discover as D

    LOG.clear()
    monkeypatch.setattr(D, "load_backends", lambda: [EARLY, LATE])
    ctx = Context()
    v = Volume(BytesSource(b"v"), "storage/v", "v", "disk")
    ctx.add_member(LATE, "k2", v)
    ctx.add_member(EARLY, "k1", v)
    run_queue(ctx)
    finish_backends(ctx)
    # the late group k2 waits for the phase-0 group; k3, found by it, joins before late opens
    assert LOG[0] == ("early", "k1")
    assert sorted(LOG[1:3]) == [("late", "k2"), ("late", "k3")]
    assert LOG[3:] == [("early", "finish", 1), ("late", "finish", 2)]
    assert ctx.state(LATE) is ctx.state(LATE)


def test_generated_file_renders_once_per_change():
    report = DamageReport()
    calls = []

    def render():
        calls.append(1)
        return f"{len(report)} entries".encode()

    g = GeneratedFile(render, version=report.version)
    assert g.stale and g.size == len(b"0 entries") and g.size == g.allocated_bytes()
    assert not g.stale and len(calls) == 1
    report.add("error", "core", "x", "test", "msg")
    assert g.stale and g.content() == b"1 entries" and len(calls) == 2
    report.add("error", "core", "x", "test", "msg")  # a duplicate: no new version
    assert not g.stale and g.size == 9 and len(calls) == 2


def test_patched_source_overlays_and_extends():
    base = BytesSource(b"abcdef")
    p = PatchedSource(base, {2: b"XY", 5: b"ZZZ"}, size=8)
    assert p.read(0, 8) == b"abXYeZZZ"


def test_debug_log_says_why_a_volume_got_its_format(caplog):
    from pathlib import Path

    ex = Path(__file__).resolve().parent.parent / "examples" / "vm-100-disk-0.qcow2"
    with caplog.at_level(logging.DEBUG, logger="pvfs"):
        discover([str(ex)])
    text = caplog.text
    assert "storage/files/vm-100-disk-0.qcow2 (input): qcow2 wins with 100" in text
    assert "storage/files/vm-100-disk-0.qcow2/disk.raw (disk): gpt wins with 90" in text
