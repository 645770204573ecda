"""Live progress on a terminal: running actions, done/total, cache hits, elapsed time.

Off a terminal (CI logs) nothing is redrawn; failures and the summary are printed once.
"""

from __future__ import annotations

import sys
import threading
import time

from ciopt.exec.engine import ActionOutcome
from ciopt.graph.label import Label

MAX_RUNNING_LINES = 4


class Progress:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.total = 0
        self.done = 0
        self.cached = 0
        self.failed = 0
        self.running: dict[Label, float] = {}
        self.started = time.monotonic()
        self._lines = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, total: int) -> None:
        self.total = total
        if self.enabled:
            self._thread = threading.Thread(target=self._tick, daemon=True)
            self._thread.start()

    def event(self, kind: str, label: Label, outcome: ActionOutcome | None) -> None:
        with self._lock:
            if kind == "start":
                self.running[label] = time.monotonic()
                return
            self.running.pop(label, None)
            self.done += 1
            if outcome is not None and outcome.status.startswith("cached"):
                self.cached += 1
            if outcome is not None and outcome.status == "failed":
                self.failed += 1
                self._clear()
                sys.stderr.write(f"FAILED {label}: {outcome.message}\n")
                if outcome.log:
                    sys.stderr.write(f"  log: {outcome.log}\n")

    def _tick(self) -> None:
        while not self._stop.wait(0.2):
            with self._lock:
                self._draw()

    def _clear(self) -> None:
        if self.enabled and self._lines:
            sys.stderr.write("\x1b[1A\x1b[2K" * self._lines + "\r")
            self._lines = 0

    def _draw(self) -> None:
        self._clear()
        now = time.monotonic()
        lines = [f"[{self.done}/{self.total}] {len(self.running)} running, {self.cached} cached, "
                 f"{self.failed} failed, {now - self.started:.1f}s"]
        for label, since in sorted(self.running.items(), key=lambda kv: kv[1])[:MAX_RUNNING_LINES]:
            lines.append(f"    {label}  {now - since:.1f}s")
        if len(self.running) > MAX_RUNNING_LINES:
            lines.append(f"    ... and {len(self.running) - MAX_RUNNING_LINES} more")
        sys.stderr.write("".join(line[:160] + "\n" for line in lines))
        sys.stderr.flush()
        self._lines = len(lines)

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        with self._lock:
            self._clear()
