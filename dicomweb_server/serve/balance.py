"""Spread connections over uvicorn's worker processes: the least busy worker accepts first.

uvicorn's workers share one listening socket, and each accepts every connection waiting on it
whenever it wakes. A burst of connections (a viewer opening six, an AI client opening eight)
therefore mostly lands on one worker, and because clients keep connections alive the others
stay idle for the rest of the session: on two cores a STOW of six concurrent requests ran one
worker at 1.0 s of CPU and the other at 0.2 s.

`install()` makes each worker accept one connection per wakeup, and only after a pause that
grows with the connections it already serves (`_PAUSE_PER_CONNECTION`, up to
`_MAX_PAUSE_CONNECTIONS` of them). The socket stays readable for every worker, so a worker
with fewer connections (or one not busy on the CPU) takes the next one first; nothing is
shared between the processes. With one worker, or under any other server, nothing changes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
from collections.abc import Callable
from typing import Any

__all__ = ["install"]

log = logging.getLogger("dicomweb_server.balance")

_PAUSE_PER_CONNECTION = 0.001  # seconds a worker waits per connection it already serves
_MAX_PAUSE_CONNECTIONS = 10  # so no connection waits more than 10 ms to be accepted
_ERROR_PAUSE = 0.1  # seconds before accepting again after a failed accept


class _Listener:
    """Accepts from one shared listening socket, one connection per wakeup, politely."""

    def __init__(
        self,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.Protocol],
        serving: Callable[[], int],
        ssl: Any,
    ) -> None:
        self._sock = sock
        self._factory = protocol_factory
        self._serving = serving
        self._ssl = ssl
        self._setting_up: set[asyncio.Task[None]] = set()  # connections in a TLS handshake
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _readable(self) -> None:
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        fd = self._sock.fileno()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(fd, wake)
        try:
            await ready
        finally:
            loop.remove_reader(fd)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._readable()
            busy = min(self._serving(), _MAX_PAUSE_CONNECTIONS)
            if busy:
                await asyncio.sleep(busy * _PAUSE_PER_CONNECTION)
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                continue  # another worker took it, or the client gave up
            except OSError as exc:  # out of descriptors or buffers, mostly: wait, do not spin
                log.warning("cannot accept a connection: %s", exc.strerror)
                await asyncio.sleep(_ERROR_PAUSE)
                continue
            conn.setblocking(False)
            # Set up apart from the accepts, so that a slow TLS handshake holds up nobody else.
            task = loop.create_task(self._set_up(conn))
            self._setting_up.add(task)
            task.add_done_callback(self._setting_up.discard)

    async def _set_up(self, conn: socket.socket) -> None:
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                self._factory, conn, ssl=self._ssl
            )
        except OSError as exc:  # a reset, a failed or timed-out TLS handshake
            log.debug("connection dropped while being set up: %s", exc)
            conn.close()
        except asyncio.CancelledError:
            conn.close()
            raise

    def close(self) -> None:
        self._task.cancel()
        for task in self._setting_up:
            task.cancel()

    async def wait_closed(self) -> None:
        await asyncio.gather(self._task, *self._setting_up, return_exceptions=True)


def install() -> bool:
    """Make uvicorn's multi-worker startup use balanced accepts (idempotent)."""
    try:
        from uvicorn.server import Server
    except ImportError:  # pragma: no cover - uvicorn is a dependency
        return False
    original = Server.startup
    if getattr(original, "_dicomweb_balanced", False):
        return True

    @functools.wraps(original)
    async def startup(self: Server, sockets: list[socket.socket] | None = None) -> None:
        if sockets is None or self.config.workers <= 1:
            await original(self, sockets)
            return
        await original(self, [])  # lifespan and the started flag; no asyncio server
        if self.should_exit:
            return
        config = self.config
        state = self.server_state
        app_state = self.lifespan.state

        def factory() -> asyncio.Protocol:  # as uvicorn's create_protocol
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=state, app_state=app_state
            )

        for sock in sockets:
            sock.setblocking(False)  # the same open file in every worker
            sock.listen(config.backlog)  # uvicorn binds; asyncio's server would listen
        listeners = [
            _Listener(sock, factory, lambda: len(state.connections), config.ssl) for sock in sockets
        ]
        self.servers = listeners  # type: ignore[assignment]  # uvicorn calls close, wait_closed

    startup._dicomweb_balanced = True  # type: ignore[attr-defined]
    Server.startup = startup  # type: ignore[method-assign]
    return True
