"""A dependency-free progress line for long loops (embedding, scoring many images)."""

import sys
import time

__all__ = [
    "Progress",
]


class Progress:
    """Prints ``label: done/total (rate/s, eta)`` on stderr.

    On a terminal the line is redrawn in place at most every 0.2 s; elsewhere (logs, CI) a line
    is printed at most every 10 s, and always at the end. ``enabled=False`` prints nothing.
    """

    def __init__(
        self,
        total: int,
        label: str,
        *,
        unit: str = "images",
        enabled: bool = True,
        done: int = 0,
    ):
        """``done``: units already done before this line started (a resumed run's steps);
        they count toward ``done/total`` but not toward the rate."""
        self.total, self.label, self.unit, self.enabled = total, label, unit, enabled
        self.done = self._initial = done
        self.status = ""
        self._start = self._last = time.perf_counter()
        self._tty = sys.stderr.isatty()
        self._width = 0  # of the line last drawn on a terminal

    def update(self, n: int, status: str | None = None) -> None:
        """Count ``n`` more units; ``status`` (e.g. the current loss) is shown after the rate."""
        self.done += n
        if status is not None:
            self.status = status
        now = time.perf_counter()
        if not self.enabled or now - self._last < (0.2 if self._tty else 10.0):
            return
        self._last = now
        self._write(end="\r" if self._tty else "\n")

    def close(self) -> None:
        if self.enabled:
            self._write(end="\n")

    def _write(self, end: str) -> None:
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        rate = (self.done - self._initial) / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        tail = f", {eta:.0f} s left" if self.done < self.total and eta != float("inf") else ""
        tail += f", {self.status}" if self.status else ""
        line = f"{self.label}: {self.done}/{self.total} {self.unit} ({rate:.1f}/s{tail})"
        if self._tty:  # drawn over the last line: blank what it held beyond this one
            line, self._width = line.ljust(self._width), len(line) if end == "\r" else 0
        sys.stderr.write(line + end)
        sys.stderr.flush()
