"""What runs in each server process before it accepts a connection: settings, patches, GC.

uvicorn calls `create_worker_app` (a factory) in every worker. The app itself is the plain
ASGI app of `create_app`; this adds only what belongs to the process: the uvicorn patches
when compat.py finds them safe, the tracer provider when tracing is on, and the
garbage-collector tuning once the app has started.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomweb_server.app import create_app
from dicomweb_server.config import Settings
from dicomweb_server.serve import balance, compat, limits, zerocopy
from dicomweb_server.serve.gc_tuning import tune_garbage_collector
from dicomweb_server.serve.tracing import configure_tracing

__all__ = ["AfterStartup", "create_worker_app", "install_patches"]

log = logging.getLogger("dicomweb_server.serve")


def install_patches(settings: Settings) -> dict[str, bool]:
    """Install the uvicorn patches the settings ask for and this uvicorn allows; say which."""
    installed = {"zerocopy": False, "balance": False}
    problem = zerocopy.install_problem()
    if problem is None:
        installed["zerocopy"] = zerocopy.install(send_files=settings.wado_zero_copy)
    else:
        log.warning("serving on stock uvicorn request handling: %s", problem)
    if settings.accept_balance and settings.workers != 1:
        problem = compat.balance_problem()
        if problem is None:
            installed["balance"] = balance.install()
        else:
            log.warning("serving with uvicorn's own accepts: %s", problem)
    return installed


class AfterStartup:
    """An ASGI wrapper that runs `action` once the app's lifespan startup has completed."""

    def __init__(self, app: ASGIApp, action: Callable[[], None]) -> None:
        self.app = app
        self.action = action

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_after(message: Message) -> None:
            await send(message)
            if message["type"] == "lifespan.startup.complete":
                self.action()

        await self.app(scope, receive, send_after)


def create_worker_app() -> ASGIApp:
    """uvicorn's factory: the app from DICOMWEB_* settings, in a tuned process."""
    settings = Settings.from_env()
    install_patches(settings)
    # The protocol class reaches a spawned worker by name: set its bounds here too.
    limits.limit_headers(
        limits.HeaderLimits(
            settings.max_request_header_bytes,
            settings.max_request_headers,
            settings.header_timeout,
        )
    )
    configure_tracing(settings)  # before the app, whose lifespan wraps the backends for spans
    app = create_app(settings)
    return AfterStartup(app, lambda: tune_garbage_collector(settings.gc_young_threshold))
