"""A tiny terminal progress bar for the command line (stderr, no dependencies).

On a terminal it redraws one line in place (``\\r``); when stderr is a file or
a pipe (CI logs) it prints a plain line per stage and every 10 % instead, so
logs stay readable.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO


def format_eta(seconds: float | None) -> str:
    """``"ETA 1:05"``-style text; ``""`` when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return ""
    s = int(round(seconds))
    if s >= 3600:
        return f"ETA {s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"ETA {s // 60}:{s % 60:02d}"


class ProgressBar:
    """Draw ``stage [#####.....]  42%  ETA 0:31`` on ``stream``.

    Parameters
    ----------
    stream : file, optional
        Default ``sys.stderr``.
    enabled : bool
        False draws nothing (``--quiet`` style use, tests).
    min_interval_s : float
        Least time between two redraws on a terminal.
    """

    def __init__(self, stream: TextIO | None = None, enabled: bool = True, min_interval_s: float = 0.1):
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.min_interval_s = min_interval_s
        isatty = getattr(self.stream, "isatty", None)
        self.interactive = bool(isatty and isatty())
        self._last_draw = 0.0
        self._last_stage = ""
        self._last_decile = -1
        self._width = 0
        self._open = False

    def update(self, stage: str, fraction: float, eta_s: float | None = None, message: str = "") -> None:
        """Show overall ``fraction`` (0..1) of the work, now in ``stage``."""
        if not self.enabled:
            return
        fraction = min(1.0, max(0.0, float(fraction)))
        pct = int(fraction * 100)
        if self.interactive:
            now = time.monotonic()
            if stage == self._last_stage and now - self._last_draw < self.min_interval_s and pct < 100:
                return
            self._last_draw = now
            self._last_stage = stage
            self._draw_line(stage, fraction, eta_s, message)
            return
        decile = pct // 10
        if stage != self._last_stage or decile != self._last_decile:
            self._last_stage, self._last_decile = stage, decile
            eta = format_eta(eta_s)
            self.stream.write(f"{stage}: {pct:3d}%{'  ' + eta if eta else ''}\n")
            self.stream.flush()

    def _draw_line(self, stage: str, fraction: float, eta_s: float | None, message: str) -> None:
        cols = shutil.get_terminal_size((80, 20)).columns
        eta = format_eta(eta_s)
        head = f"{stage[:18]:<18} "
        tail = f" {int(fraction * 100):3d}%{'  ' + eta if eta else ''}"
        bar_w = max(10, min(40, cols - len(head) - len(tail) - 4))
        filled = int(round(bar_w * fraction))
        line = f"{head}[{'#' * filled}{'.' * (bar_w - filled)}]{tail}"
        if message and len(line) + len(message) + 2 < cols:
            line += "  " + message
        line = line[: cols - 1]
        pad = " " * max(0, self._width - len(line))
        self.stream.write("\r" + line + pad)
        self.stream.flush()
        self._width = len(line)
        self._open = True

    def close(self) -> None:
        """End the bar's line (call once, also after an error, so the next message starts clean)."""
        if self.enabled and self.interactive and self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
