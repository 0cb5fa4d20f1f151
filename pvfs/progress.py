"""Progress on stderr while discovery runs (rich), shown only when it takes a moment."""

from __future__ import annotations

from typing import Any

import sys
import threading
import time


class Progress:
    """A spinner line with the current step; appears after ``delay`` seconds.

    ``enabled`` None means: only when stderr is a terminal.  The display is
    transient: it disappears when discovery ends.
    """

    def __init__(self, enabled: bool | None = None, delay: float = 0.5) -> None:
        if enabled is None:
            enabled = sys.stderr.isatty()
        self.enabled = enabled
        self.delay = delay
        self.text = "starting"
        self.started = time.monotonic()
        self._live = None
        self._lock = threading.Lock()
        self._timer = None
        self.steps = 0
        self.completed = 0
        self.total = None

    def __enter__(self) -> Progress:
        if self.enabled:
            self._timer = threading.Timer(self.delay, self._start)
            self._timer.daemon = True
            self._timer.start()
        return self

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
        with self._lock:
            if self._live is not None:
                self._live.update(self._task, description=self.text, completed=self.completed,
                                  total=self.total)

    def __exit__(self, *exc: Any) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._live is not None:
                self._live.stop()
                self._live = None
        return False
