"""Progress on stderr: a bar redrawn in place on a terminal, else a plain line now and then.

Commands hand a function that snapshots their counters; `Progress.run` draws it until
cancelled. On a terminal the bar shows count, megabytes, MB/s and an ETA (when totals are
known); in a log (stderr not a terminal) the same figures come as one line every `every`
seconds (none when `every` is 0), so a long run in CI or under systemd still says where it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TextIO

__all__ = ["Progress", "Snapshot", "format_bytes", "format_duration"]

_TTY_INTERVAL = 0.2  # seconds between redraws of the bar


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What a command has done so far; totals are None while unknown."""

    done: int
    total: int | None
    bytes_done: int
    bytes_total: int | None
    unit: str = "files"


def format_bytes(count: float) -> str:
    """Megabytes with one decimal (decimal MB, as MB/s figures are)."""
    return f"{count / 1e6:,.1f} MB"


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds + 0.5))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class Progress:
    """Draws snapshots of one command's progress on `stream`."""

    def __init__(
        self,
        label: str,
        snapshot: Callable[[], Snapshot],
        *,
        stream: TextIO | None = None,
        every: float = 10.0,
    ) -> None:
        self._label = label
        self._snapshot = snapshot
        self._stream = stream or sys.stderr
        self.tty = self._stream.isatty()
        self._interval = _TTY_INTERVAL if self.tty else every
        self._started = time.monotonic()
        self._drawn = False

    def line(self) -> str:
        """The current figures as text (the bar on a terminal)."""
        snap = self._snapshot()
        elapsed = max(time.monotonic() - self._started, 1e-6)
        rate = snap.bytes_done / elapsed
        count = f"{snap.done:,}" + (f"/{snap.total:,}" if snap.total is not None else "")
        size = format_bytes(snap.bytes_done)
        if snap.bytes_total:
            size = f"{snap.bytes_done / 1e6:,.1f}/{format_bytes(snap.bytes_total)}"
        figures = f"{count} {snap.unit}  {size}  {rate / 1e6:,.1f} MB/s"
        fraction = _fraction(snap)
        if fraction is not None and 0 < fraction < 1 and rate > 0 and snap.bytes_total:
            figures += f"  ETA {format_duration((snap.bytes_total - snap.bytes_done) / rate)}"
        elif fraction is not None and 0 < fraction < 1 and snap.total:
            figures += f"  ETA {format_duration(elapsed * (1 - fraction) / fraction)}"
        if not self.tty:
            return f"{self._label}: {figures}"
        width = shutil.get_terminal_size((100, 20)).columns
        bar_width = max(10, min(40, width - len(figures) - len(self._label) - 12))
        if fraction is None:
            bar = "-" * bar_width
            percent = "  ?%"
        else:
            filled = int(bar_width * fraction)
            bar = "#" * filled + "-" * (bar_width - filled)
            percent = f"{fraction * 100:3.0f}%"
        return f"{self._label} [{bar}] {percent} {figures}"[: width - 1]

    def draw(self) -> None:
        text = self.line()
        if self.tty:
            self._stream.write("\r\x1b[K" + text)
            self._drawn = True
        else:
            self._stream.write(text + "\n")
        self._stream.flush()

    def clear(self) -> None:
        """Remove the bar (before a summary is printed)."""
        if self.tty and self._drawn:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._drawn = False

    @contextlib.asynccontextmanager
    async def shown(self) -> AsyncIterator[None]:
        """Redraw while the block runs (`run` in a task); cleared once it ends, however."""
        drawing = asyncio.create_task(self.run())
        try:
            yield
        finally:
            drawing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drawing

    async def run(self) -> None:
        """Redraw every interval until cancelled; the bar is cleared when done. An interval
        of 0 or less (`--progress-every 0`) draws nothing: it was a busy loop of lines."""
        try:
            if self._interval <= 0:
                await asyncio.Event().wait()  # until cancelled
            while True:
                await asyncio.sleep(self._interval)
                self.draw()
        finally:
            self.clear()


def _fraction(snap: Snapshot) -> float | None:
    if snap.bytes_total:
        return min(1.0, snap.bytes_done / snap.bytes_total)
    if snap.total:
        return min(1.0, snap.done / snap.total)
    return None
