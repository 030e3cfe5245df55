"""The data commands' progress: a bar redrawn in place on a terminal, plain lines in a log."""

from __future__ import annotations

import asyncio
import io

from dicomweb_server.cli.progress import Progress, Snapshot, format_bytes, format_duration


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_plain_lines_with_rate_and_eta() -> None:
    stream = io.StringIO()
    progress = Progress("import", lambda: Snapshot(30, 100, 3_000_000, 10_000_000), stream=stream)
    assert not progress.tty
    progress.draw()
    line = stream.getvalue()
    assert line.startswith("import: 30/100 files  3.0/10.0 MB  ") and line.endswith("\n")
    assert " MB/s  ETA " in line and "\r" not in line


def test_a_terminal_gets_a_bar_redrawn_in_place_and_cleared() -> None:
    stream = _Terminal()
    progress = Progress(
        "export", lambda: Snapshot(5, 10, 1_000_000, None, "instances"), stream=stream
    )
    progress.draw()
    progress.draw()
    text = stream.getvalue()
    assert text.count("\r\x1b[K") == 2 and "\n" not in text
    assert "[" in text and "#" in text and " 50% 5/10 instances" in text
    progress.clear()
    assert stream.getvalue().endswith("\r\x1b[K")


def test_unknown_totals_show_no_eta() -> None:
    stream = _Terminal()
    Progress("pull", lambda: Snapshot(7, None, 0, None, "studies"), stream=stream).draw()
    assert "  ?% 7 studies" in stream.getvalue() and "ETA" not in stream.getvalue()


def test_run_draws_every_interval_until_cancelled() -> None:
    stream = io.StringIO()
    progress = Progress("verify", lambda: Snapshot(1, 2, 0, None), stream=stream, every=0.01)

    async def run() -> None:
        task = asyncio.create_task(progress.run())
        await asyncio.sleep(0.05)
        task.cancel()

    asyncio.run(run())
    assert stream.getvalue().count("verify: ") >= 2


def test_issue19_progress_every_0_draws_no_lines() -> None:
    """`--progress-every 0` was a busy loop printing the same line thousands of times."""
    stream = io.StringIO()
    progress = Progress("pull", lambda: Snapshot(1, 2, 0, None), stream=stream, every=0)

    async def run() -> None:
        task = asyncio.create_task(progress.run())
        await asyncio.sleep(0.05)
        task.cancel()

    asyncio.run(run())
    assert stream.getvalue() == ""


def test_formats() -> None:
    assert format_bytes(157_600_000) == "157.6 MB"
    assert format_duration(59.6) == "1:00" and format_duration(3725) == "1:02:05"
