"""The app on a real uvicorn in a thread, for tests that need a socket (shared by fixtures)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import uvicorn

from dicomweb_server.app import create_app
from dicomweb_server.config import Settings
from dicomweb_server.serve import uvicorn_config


@contextmanager
def serving(settings: Settings, **options: Any) -> Iterator[None]:
    """The app on a real uvicorn in a thread, at `settings.port`, until the block ends."""
    values = {"log_config": None, "log_level": "warning", "host": "127.0.0.1", **options}
    config = uvicorn_config(settings, create_app(settings), **values)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def reach_every_worker(url: str, workers: int = 2, timeout: float = 30) -> int:
    """GET `url` on fresh connections until each of `workers` processes has answered one.

    `/readyz` answers once the first worker is up; on a busy machine the others start later,
    and kept-alive connections opened before then all stay with the first. A request id
    starts with its process's prefix. Returns how many requests it made."""
    prefixes: set[str] = set()
    made = 0
    deadline = time.monotonic() + timeout
    while len(prefixes) < workers and time.monotonic() < deadline:
        with httpx.Client() as probe:
            prefixes.add(probe.get(url).headers["x-request-id"][:8])
        made += 1
    return made
