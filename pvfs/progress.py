"""Progress on stderr while discovery runs (rich), shown only when it takes a moment."""

from __future__ import annotations

from typing import Any

import sys
import threading
import time


HEARTBEAT_SECONDS = 10.0  # plain mode: a line at least this often


class Progress:
    """A spinner line with the current step; appears after ``delay`` seconds.

    ``enabled`` None means: only when stderr is a terminal.  The display is
    transient: it disappears when discovery ends.
    """

    def __init__(self, enabled: bool | None = None, delay: float = 0.5,
                 interval: float = 1.0, what: str = "discovery") -> None:
        tty = sys.stderr.isatty()
        if enabled is None:
            enabled = tty
        self.enabled = enabled
        #: ``--progress`` with stderr not a terminal (a log file, a pipe): plain lines, at
        #: most one per ``interval`` seconds, instead of a redrawn bar.
        self.plain = enabled and not tty
        self.interval = interval
        self.what = what  # the last plain line: "<what> done after N steps"
        self._last_line = 0.0
        self.delay = delay
        self.text = "starting"
        self.started = time.monotonic()
        self._live = None
        self._lock = threading.Lock()
        self._timer = None
        self.steps = 0
        self.completed = 0
        self.total = None
        self._workers: dict[int, Any] = {}  # worker number -> rich task (or last line time)

    def __enter__(self) -> Progress:
        if self.enabled and not self.plain:
            self._timer = threading.Timer(self.delay, self._start)
            self._timer.daemon = True
            self._timer.start()
        elif self.plain:  # a long step prints no update: say every so often that it runs
            self._stop = threading.Event()
            self._beat = threading.Thread(target=self._heartbeat, daemon=True)
            self._beat.start()
        return self

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            if time.monotonic() - self._last_line >= HEARTBEAT_SECONDS:
                self._last_line = time.monotonic()
                self._line(f"still at: {self.text}")

    def _start(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.progress import Progress as RichProgress

        with self._lock:
            if self._live is not None or self._timer is None:
                return
            prog = RichProgress(SpinnerColumn(), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), TextColumn("{task.description}"),
                                console=Console(stderr=True), transient=True)
            prog.start()
            self._task = prog.add_task(self.text, total=self.total, completed=self.completed)
            self._live = prog

    def update(self, text: str, completed: int | None = None, total: int | None = None) -> None:
        """Show ``text``; ``completed``/``total`` (volumes probed / found) drive the bar."""
        self.text = text if len(text) < 80 else "..." + text[-77:]
        self.steps += 1
        if completed is not None:
            self.completed = completed
        if total is not None:
            self.total = total
        if self.plain:
            now = time.monotonic()
            if now - self._last_line >= self.interval:
                self._last_line = now
                self._line(self.text)
            return
        with self._lock:
            if self._live is not None:
                self._live.update(self._task, description=self.text, completed=self.completed,
                                  total=self.total)

    def worker(self, wid: int, text: str) -> None:
        """One line per worker process (pvfs/parallel.py): what it is doing now."""
        text = text if len(text) < 70 else "..." + text[-67:]
        if self.plain:
            now = time.monotonic()
            if now - self._workers.get(wid, 0.0) >= self.interval:
                self._workers[wid] = now
                self._last_line = now
                self._line(f"worker {wid}: {text}")
            return
        with self._lock:
            if self._live is None:
                return
            task = self._workers.get(wid)
            if task is None:
                self._workers[wid] = self._live.add_task(f"worker {wid}: {text}", total=None)
            else:
                self._live.update(task, description=f"worker {wid}: {text}")

    def workers_done(self) -> None:
        """The worker phase is over: their lines go."""
        with self._lock:
            if self._live is not None:
                for task in self._workers.values():
                    self._live.remove_task(task)
            self._workers = {}

    def _line(self, text: str) -> None:
        done = f"{self.completed}/{self.total} " if self.total else ""
        try:
            print(f"pvfs: [{time.monotonic() - self.started:6.1f}s] {done}{text}",
                  file=sys.stderr, flush=True)
        except (OSError, ValueError):
            self.plain = False
            self.enabled = False

    def __exit__(self, *exc: Any) -> None:
        if self.plain:
            self._stop.set()
            if exc[0] is None:
                self._line(f"{self.what} done after {self.steps} steps")
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._live is not None:
                self._live.stop()
                self._live = None
        return False
