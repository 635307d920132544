"""A small terminal progress bar for compiles (no dependency).

    with Progress("compiling resnet50") as bar:
        bar.stage("quantizing")                    # a step without a count
        compile_graph(graph, cfg, progress=bar)    # bar(done, total, layer name)

It draws on ``stream`` (stderr by default) only when that is a terminal and
only once the work has taken longer than ``delay`` seconds, so quick
compiles, pipes, logs and tests stay quiet. A background thread redraws a few
times a second so the elapsed time moves during long steps. VFPGA_PROGRESS=0
turns it off, VFPGA_PROGRESS=1 forces it on.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time


def _wanted(stream) -> bool:
    env = os.environ.get("VFPGA_PROGRESS", "").strip().lower()
    if env in ("0", "false", "no", "off"):
        return False
    if env in ("1", "true", "yes", "on"):
        return True
    try:
        return bool(stream.isatty()) and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False


class Progress:
    """Callable as ``progress(done, total, item)``; total 0 means a step
    without a count, named by ``item``."""

    def __init__(self, label: str, stream=None, delay: float = 0.5, enabled: bool | None = None,
                 interval: float = 0.1):
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.delay = delay
        self.enabled = _wanted(self.stream) if enabled is None else enabled
        self.interval = interval
        self.start = time.monotonic()
        self.done = 0
        self.total = 0
        self.item = ""
        self.drawn = False
        self._width = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None

    # -- updates

    def stage(self, name: str) -> None:
        self(0, 0, name)

    def __call__(self, done: int, total: int, item: str = "") -> None:
        with self._lock:
            self.done, self.total, self.item = done, total, item
        if not self.enabled:
            return
        if self._thread is None and self.delay > 0:
            self._thread = threading.Thread(target=self._tick, name="vfpga-progress", daemon=True)
            self._thread.start()
        self._draw()

    # -- drawing

    def render(self, columns: int = 80) -> str:
        """The bar as one line of at most ``columns`` characters."""
        with self._lock:
            done, total, item = self.done, self.total, self.item
        elapsed = f"{time.monotonic() - self.start:5.1f}s"
        if total > 0:
            bar_w = 24
            fill = int(bar_w * min(done, total) / total)
            head = f"{self.label} [{'#' * fill}{'-' * (bar_w - fill)}] {done}/{total}"
        else:
            head = f"{self.label}:"
        line = f"{head} {elapsed} {item}".rstrip()
        return line if len(line) < columns else line[:columns - 2] + "…"

    def _draw(self, force: bool = False) -> None:
        if not self.enabled or self._stop.is_set():
            return
        if not force and time.monotonic() - self.start < self.delay:
            return
        columns = shutil.get_terminal_size((80, 24)).columns
        line = self.render(columns)
        with self._lock:
            pad = max(0, self._width - len(line))
            try:
                self.stream.write("\r" + line + " " * pad)
                self.stream.flush()
            except (OSError, ValueError):
                self.enabled = False
                return
            self._width = len(line)
            self.drawn = True

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            self._draw()

    def close(self) -> None:
        """Stop drawing and clear the line the bar used."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.drawn:
            try:
                self.stream.write("\r" + " " * self._width + "\r")
                self.stream.flush()
            except (OSError, ValueError):
                pass

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
