"""Pin what we patch: the uvicorn versions our patches were tested on, checked at start-up.

serve/zerocopy.py gives uvicorn's httptools protocol a request cycle of ours, and
serve/balance.py replaces `Server.startup` for multi-worker accepts. Both rely on uvicorn's
private internals, so each is installed only when the running uvicorn is within the range
its tests ran on and every private name it uses is still there (read from uvicorn's own
source). Otherwise the worker logs one warning and runs on stock uvicorn: mapped views
instead of sendfile, uvicorn's own accepts. Nothing fails.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from importlib import metadata
from typing import Any

__all__ = [
    "PATCHED_UVICORN",
    "balance_problem",
    "uvicorn_version",
    "zerocopy_problem",
]

# [lowest, highest] uvicorn (major, minor) whose internals the patches were tested against.
PATCHED_UVICORN = ((0, 52), (0, 55))

# Instance attributes of httptools_impl.RequestResponseCycle the zero-copy cycle reads or sets.
_CYCLE_ATTRIBUTES = (
    "body",
    "transport",
    "flow",
    "scope",
    "disconnected",
    "keep_alive",
    "chunked_encoding",
    "expected_content_length",
    "response_started",
    "response_complete",
    "message_event",
    "on_response",
)


def uvicorn_version() -> tuple[int, ...]:
    """The installed uvicorn's version as numbers, (0,) when it cannot be read."""
    try:
        text = metadata.version("uvicorn")
    except metadata.PackageNotFoundError:
        return (0,)
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3]) or (0,)


def _outside_tested_range() -> str | None:
    version = uvicorn_version()
    low, high = PATCHED_UVICORN
    if low <= version[:2] <= high:
        return None
    shown = ".".join(map(str, version))
    return f"uvicorn {shown} is outside the tested range {_shown(low)} to {_shown(high)}.x"


def _shown(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


def _source(function: Callable[..., Any] | type) -> str:
    try:
        return inspect.getsource(function)
    except (OSError, TypeError):
        return ""


def _missing(source: str, needles: tuple[str, ...], where: str) -> str | None:
    for needle in needles:
        if needle not in source:
            return f"uvicorn's {where} no longer has {needle!r}"
    return None


def zerocopy_problem() -> str | None:
    """Why serve/zerocopy.py cannot be installed on this uvicorn, or None when it can."""
    if (problem := _outside_tested_range()) is not None:
        return problem
    try:
        from uvicorn.protocols.http import flow_control, httptools_impl
    except ImportError:
        return "uvicorn's httptools protocol is not installed"
    cycle = getattr(httptools_impl, "RequestResponseCycle", None)
    protocol = getattr(httptools_impl, "HttpToolsProtocol", None)
    if cycle is None or protocol is None:
        return "uvicorn's httptools protocol no longer has RequestResponseCycle"
    checks = (
        (_source(cycle.__init__), tuple(f"self.{name}" for name in _CYCLE_ATTRIBUTES), "cycle"),
        # The request body is kept as received chunks: uvicorn must append with `+=`, measure
        # it with len() and hand it to the app through bytes().
        (_source(cycle.receive), ("bytes(self.body)", "self.body = "), "cycle.receive"),
        (_source(protocol.on_body), ("self.cycle.body += ", "len(self.cycle.body)"), "on_body"),
        (_source(flow_control.FlowControl), ("self.write_paused",), "FlowControl"),
    )
    for source, needles, where in checks:
        if (problem := _missing(source, needles, where)) is not None:
            return problem
    return None


def balance_problem() -> str | None:
    """Why serve/balance.py cannot be installed on this uvicorn, or None when it can."""
    if (problem := _outside_tested_range()) is not None:
        return problem
    try:
        from uvicorn.config import Config
        from uvicorn.lifespan.on import LifespanOn
        from uvicorn.server import Server, ServerState
    except ImportError:  # pragma: no cover - uvicorn is a dependency
        return "uvicorn's server module cannot be imported"
    if "sockets" not in inspect.signature(Server.startup).parameters:
        return "uvicorn's Server.startup no longer takes sockets"
    checks = (
        (
            _source(Server.__init__),
            ("self.config", "self.server_state", "self.should_exit"),
            "Server",
        ),
        (_source(ServerState.__init__), ("self.connections",), "ServerState"),
        (_source(Server.startup), ("self.lifespan", "self.servers"), "Server.startup"),
        (_source(Server.shutdown), ("server.close()",), "Server.shutdown"),
        (_source(Config.load), ("self.http_protocol_class", "self.ssl"), "Config.load"),
        (_source(Config.__init__), ("self.backlog", "self.workers"), "Config"),
        (_source(LifespanOn.__init__), ("self.state",), "LifespanOn"),
    )
    for source, needles, where in checks:
        if (problem := _missing(source, needles, where)) is not None:
            return problem
    return None
