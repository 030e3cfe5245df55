"""Connections spread over uvicorn workers (serve/balance.py): in-process listeners, then real
worker processes taking bursts of keep-alive connections."""

from __future__ import annotations

import asyncio
import os
import socket
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from test_production import server_env, serving

from dicomweb_server.serve.balance import _Listener


class _Recorder(asyncio.Protocol):
    def __init__(self, name: str, accepted: Counter[str], all_in: asyncio.Event, want: int):
        self._name = name
        self._accepted = accepted
        self._all_in = all_in
        self._want = want

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._accepted[self._name] += 1
        if self._accepted.total() == self._want:
            self._all_in.set()


async def _accept_with(
    serving: dict[str, Callable[[], int]], connections: int, accepted: Counter[str]
) -> None:
    """Listeners named as in `serving`, each on its own descriptor of one listening socket (as
    workers have), take `connections` client connections, counted in `accepted`."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.setblocking(False)
    port = sock.getsockname()[1]
    all_in = asyncio.Event()
    shared = [sock] + [sock.dup() for _ in range(len(serving) - 1)]
    listeners = [
        _Listener(
            fd_sock,
            lambda name=name: _Recorder(name, accepted, all_in, connections),  # type: ignore[misc]
            count,
            None,
        )
        for (name, count), fd_sock in zip(serving.items(), shared, strict=True)
    ]
    writers = []
    try:
        for _ in range(connections):
            writers.append((await asyncio.open_connection("127.0.0.1", port))[1])
        async with asyncio.timeout(10):
            await all_in.wait()
    finally:
        for writer in writers:
            writer.close()
        for listener in listeners:
            listener.close()
            await listener.wait_closed()
        for fd_sock in shared:
            fd_sock.close()


async def test_the_listener_serving_fewer_connections_accepts_first() -> None:
    accepted: Counter[str] = Counter()
    await _accept_with({"busy": lambda: 5, "idle": lambda: 0}, 6, accepted)
    assert accepted == {"idle": 6}


async def test_listeners_counting_their_own_connections_share_a_burst() -> None:
    accepted: Counter[str] = Counter()
    await _accept_with({"a": lambda: accepted["a"], "b": lambda: accepted["b"]}, 8, accepted)
    assert accepted == {"a": 4, "b": 4}


def _established_by_pid(pids: list[int], port: int) -> Counter[int]:
    """Established server-side TCP connections on `port`, per process (from /proc)."""
    inodes: set[str] = set()
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01":  # 01: ESTABLISHED
                inodes.add(fields[9])
    owned: Counter[int] = Counter()
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue  # closed meanwhile
            if target.startswith("socket:[") and target[8:-1] in inodes:
                owned[pid] += 1
    return owned


def _burst(port: int, connections: int) -> list[socket.socket]:
    """Open `connections` keep-alive connections at once, then one request on each."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(connections)]
    request = b"GET /dicomweb/studies?limit=1 HTTP/1.1\r\nHost: test\r\n\r\n"
    for sock in socks:
        sock.sendall(request)
    for sock in socks:
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    return socks


def test_two_workers_share_each_burst_of_keep_alive_connections(tmp_path: Path) -> None:
    """A burst of connections used to land mostly on whichever worker woke first, and with
    keep-alive the other worker then stayed idle for the whole session."""
    env = server_env(tmp_path / "data")
    with serving(env, log_dir=tmp_path, workers=2) as (server,):
        pids = server.worker_pids()
        assert len(pids) == 2, server.log()
        port = int(server.url.split(":")[2].split("/")[0])
        for _ in range(3):
            socks = _burst(port, 8)
            try:
                owned = _established_by_pid(pids, port)
                assert sum(owned.values()) == 8, owned
                assert min(owned[pid] for pid in pids) >= 2, owned
            finally:
                for sock in socks:
                    sock.close()
