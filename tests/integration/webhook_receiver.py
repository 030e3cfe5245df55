"""A webhook receiver for tests: a threaded HTTP/1.1 server on a loopback port that records
every delivery and answers as the test says (a status, or a delay past the client's timeout)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["Delivery", "Receiver", "receiving"]

# What to answer a delivery: an HTTP status, or ("sleep", seconds) before a 204.
Answer = int | tuple[str, float]


@dataclass
class Delivery:
    """One request the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


@dataclass
class Receiver:
    """Records deliveries; `answer(delivery, attempt)` decides each answer (default 204)."""

    answer: Callable[[Delivery, int], Answer] = lambda delivery, attempt: 204
    deliveries: list[Delivery] = field(default_factory=list)
    accepted: list[Delivery] = field(default_factory=list)  # answered 2xx
    port: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def ids(self) -> list[str]:
        """CloudEvents ids of the accepted deliveries, in arrival order."""
        with self.lock:
            return [d.event["id"] for d in self.accepted]

    def attempts_of(self, event_id: str) -> int:
        with self.lock:
            return sum(1 for d in self.deliveries if d.event.get("id") == event_id)


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real receivers do

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            delivery = Delivery(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            with receiver.lock:
                receiver.deliveries.append(delivery)
                attempt = sum(1 for d in receiver.deliveries if d.body == body)
            answer = receiver.answer(delivery, attempt) if self.path == "/hook" else 204
            status = 204
            if isinstance(answer, tuple):
                time.sleep(answer[1])
            else:
                status = answer
            if 200 <= status < 300:
                with receiver.lock:
                    receiver.accepted.append(delivery)
            try:
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "/redirected")
                self.send_header("Content-Length", "0")
                self.end_headers()
            except OSError:
                pass  # the client gave up (timeout)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a sender killed mid-request resets its connection: expected here


@contextmanager
def receiving(receiver: Receiver | None = None) -> Iterator[Receiver]:
    """Run `receiver` (a default one if None) until the block ends."""
    receiver = receiver or Receiver()
    server = _Server(("127.0.0.1", receiver.port), _handler(receiver))
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
