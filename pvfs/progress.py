"""Progress on stderr while discovery runs (rich), shown only when it takes a moment."""

from __future__ import annotations

import sys
import threading
import time


class Progress:
    """A spinner line with the current step; appears after ``delay`` seconds.

    ``enabled`` None means: only when stderr is a terminal.  The display is
    transient: it disappears when discovery ends.
    """

    def __init__(self, enabled=None, delay=0.5):
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

    def __enter__(self):
        if self.enabled:
            self._timer = threading.Timer(self.delay, self._start)
            self._timer.daemon = True
            self._timer.start()
        return self

    def _start(self):
        from rich.console import Console
        from rich.progress import Progress as RichProgress
        from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn

        with self._lock:
            if self._live is not None or self._timer is None:
                return
            prog = RichProgress(SpinnerColumn(), TextColumn("{task.description}"),
                                TimeElapsedColumn(), console=Console(stderr=True),
                                transient=True)
            prog.start()
            self._task = prog.add_task(self.text, total=None)
            self._live = prog

    def update(self, text):
        self.text = text if len(text) < 100 else "..." + text[-97:]
        self.steps += 1
        with self._lock:
            if self._live is not None:
                self._live.update(self._task, description=self.text)

    def __exit__(self, *exc):
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._live is not None:
                self._live.stop()
                self._live = None
        return False
