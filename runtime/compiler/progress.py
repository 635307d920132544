"""Progress of long compiles and benchmarks, drawn by tqdm.

    with Progress("compiling resnet50") as bar:
        bar.stage("quantizing")                    # a step without a count
        compile_graph(graph, cfg, progress=bar)    # bar(done, total, layer name)

It draws on ``stream`` (stderr by default) only when that is a terminal and
only once the work has taken longer than ``delay`` seconds, so quick
compiles, pipes, logs and tests stay quiet. VFPGA_PROGRESS=0 turns it off,
VFPGA_PROGRESS=1 forces it on.
"""

from __future__ import annotations

import os
import sys
import time

from tqdm import tqdm


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

    def __init__(self, label: str, stream=None, delay: float = 0.5, enabled: bool | None = None):
        stream = stream if stream is not None else sys.stderr
        self.enabled = _wanted(stream) if enabled is None else enabled
        self.delay = delay
        self._start = time.monotonic()
        self._bar = tqdm(desc=label, total=None, file=stream, disable=not self.enabled, leave=False, ascii=True,
                         dynamic_ncols=True, delay=delay, mininterval=0.1)

    def stage(self, name: str) -> None:
        self(0, 0, name)

    def __call__(self, done: int, total: int, item: str = "") -> None:
        bar = self._bar
        if bar.disable:
            return
        bar.total = total or None
        bar.n = done
        bar.set_postfix_str(item, refresh=False)
        # tqdm's own delay holds back update() only; a stage change refreshes directly.
        if time.monotonic() - self._start >= self.delay:
            bar.refresh()

    def close(self) -> None:
        """Stop drawing and clear the line the bar used."""
        self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
