"""The app on a real uvicorn in a thread, for tests that need a socket (shared by fixtures)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

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
