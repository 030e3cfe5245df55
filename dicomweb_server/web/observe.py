"""The outermost middleware: a request id, the access log line, request metrics and the span.

One wrapper for all four, so a request pays for one extra layer: it counts the body bytes in
and out, times the request to its last byte, labels it by the PS3.18 transaction its route
implements (never by a UID), and sets the request context log lines read (telemetry.py).
The query string is never logged nor traced: QIDO values are patient data. A client that
goes away mid-request ends the request here with one INFO line, not as a server error.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomweb_server import telemetry
from dicomweb_server.domain.identifiers import DEFAULT_SITE
from dicomweb_server.telemetry import REQUEST_BYTES, REQUEST_SECONDS, RESPONSE_BYTES
from dicomweb_server.web.browser import label_vary_accept
from dicomweb_server.web.responses import REGIONS, ZEROCOPY

__all__ = ["TRANSACTIONS", "RequestContextMiddleware", "transaction_of"]

access_log = logging.getLogger("dicomweb_server.access")
log = logging.getLogger("dicomweb_server.web")

# The `transaction` label's values: one per PS3.18 transaction, and `other` for the rest.
TRANSACTIONS = (
    "store",
    "search",
    "retrieve",
    "metadata",
    "frames",
    "bulkdata",
    "rendered",
    "thumbnail",
    "capabilities",
    "delete",
    "reject",
    "changefeed",
    "audit",
    "other",
)
_EXACT = {
    "store_instances": "store",
    "retrieve_study": "retrieve",
    "retrieve_series": "retrieve",
    "retrieve_instance": "retrieve",
    "retrieve_instance_frames": "frames",
    "retrieve_bulkdata": "bulkdata",
    "read_change_feed": "changefeed",
    "read_latest_change_feed": "changefeed",
    "search_audit_events": "audit",
}
_PREFIXES = (
    ("search_for_", "search"),
    ("retrieve_rendered_", "rendered"),
    ("retrieve_thumbnail_", "thumbnail"),
    ("delete_", "delete"),
    ("reject_", "reject"),
)
_known: dict[Any, str] = {}  # endpoint → transaction: handlers are few and live for the process


def transaction_of(endpoint: Any) -> str:
    """The transaction label of a route's endpoint (handler function or ASGI app)."""
    if endpoint is None:
        return "other"
    try:
        found = _known.get(endpoint)
    except TypeError:  # unhashable: a mounted Router none of whose routes matched
        return "other"
    if found is not None:
        return found
    name = getattr(endpoint, "__name__", "")
    if getattr(endpoint, "_capabilities", False):
        found = "capabilities"
    elif name in _EXACT:
        found = _EXACT[name]
    elif name.startswith("retrieve_") and name.endswith("_metadata"):
        found = "metadata"
    else:
        found = next((label for prefix, label in _PREFIXES if name.startswith(prefix)), "other")
    _known[endpoint] = found
    return found


_STATUS_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}


class _Children:
    """prometheus-client children by label values: `labels()` takes a lock and builds a key."""

    def __init__(self) -> None:
        self._seconds: dict[tuple[str, str, str], Any] = {}
        self._bytes: dict[tuple[str, str], tuple[Any, Any]] = {}

    def record(
        self, transaction: str, status: str, site: str, seconds: float, received: int, sent: int
    ) -> None:
        key = (transaction, status, site)
        histogram = self._seconds.get(key)
        if histogram is None:
            histogram = self._seconds[key] = REQUEST_SECONDS.labels(*key)
        histogram.observe(seconds)
        counters = self._bytes.get(key[::2])
        if counters is None:
            counters = self._bytes[key[::2]] = (
                REQUEST_BYTES.labels(transaction, site),
                RESPONSE_BYTES.labels(transaction, site),
            )
        if received:
            counters[0].inc(received)
        if sent:
            counters[1].inc(sent)


_children = _Children()


class _RequestIds:
    """Request ids unique across processes without uuid4's cost on every request: a random
    per-process prefix and a counter, 16 hex digits (a forked child draws a new prefix)."""

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self.prefix = os.urandom(4).hex()
        self.counter = itertools.count(int.from_bytes(os.urandom(2), "big"))

    def next(self) -> str:
        return f"{self.prefix}{next(self.counter) & 0xFFFFFFFF:08x}"


_next_request_id = _RequestIds().next


UNKNOWN_SITE = "-"  # the site label of a request naming a site that does not exist


def _known_site(scope: Scope) -> str | None:
    """The site the path names, when it is one: a made-up name (any caller, even one not
    signed in, can send one) is labelled UNKNOWN_SITE, so /metrics does not grow with them."""
    site: str | None = scope.get("path_params", {}).get("site")
    if site is None:
        return None
    state = getattr(scope.get("app"), "state", None)
    services = getattr(state, "dicomweb", None)
    if services is None or services.sites.known(site):
        return site
    return UNKNOWN_SITE


class RequestContextMiddleware:
    """Gives each request an id (X-Request-ID), logs method, path and status, counts and times
    it by transaction, and traces it when tracing is on."""

    def __init__(self, app: ASGIApp, *, default_site: str = DEFAULT_SITE) -> None:
        self.app = app
        self.default_site = default_site

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _next_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        method = scope.get("method", "-")
        path = scope.get("path", "").encode("unicode_escape").decode("ascii")
        fields = telemetry.RequestFields(request_id, method, path)
        token = telemetry.request_fields.set(fields)
        started = time.perf_counter()
        status = 0
        received = 0
        sent = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            body = message.get("body")
            if body:
                received += len(body)
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status, sent
            kind = message["type"]
            if kind == "http.response.body":
                sent += len(message.get("body", b""))
            elif kind == "http.response.start":
                status = message["status"]
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
                label_vary_accept(scope, message)
            elif kind == ZEROCOPY:
                sent += int(message.get("count", 0))
            elif kind == REGIONS:
                sent += sum(len(item) for item in message["items"])
            await send(message)

        tracer = telemetry.tracer()
        span = None if tracer is None else _start_span(tracer, scope, request_id)
        failed = False
        try:
            if span is None:
                await self.app(scope, counting_receive, send_with_id)
            else:
                from opentelemetry.trace import use_span

                with use_span(span, end_on_exit=False, record_exception=True):
                    await self.app(scope, counting_receive, send_with_id)
        except ClientDisconnect:
            # A flaky network or a cancelled upload, not a server fault: there is no one left
            # to answer, and the handler has undone what was in flight (a STOW's parts).
            log.info(
                "request %s: the client went away after sending %d bytes of its body",
                request_id,
                received,
            )
        except BaseException:
            failed = True
            raise
        finally:
            seconds = time.perf_counter() - started
            transaction = transaction_of(scope.get("endpoint"))
            site = fields.site or _known_site(scope) or self.default_site
            fields.site = site  # the access line's JSON names it
            status_class = "5xx" if failed and not status else _STATUS_CLASSES.get(status // 100)
            _children.record(transaction, status_class or "5xx", site, seconds, received, sent)
            access_log.info(
                "%s %s %s %d %.1fms",
                request_id,
                method,
                path,
                status,
                seconds * 1000,
                extra={"status": status, "duration_ms": round(seconds * 1000, 1)},
            )
            if span is not None:
                _end_span(span, scope, transaction, site, status, failed)
            telemetry.request_fields.reset(token)


def _start_span(tracer: Any, scope: Scope, request_id: str) -> Any:
    """The request's server span, continuing a trace the client's `traceparent` started."""
    from opentelemetry.propagate import extract
    from opentelemetry.trace import SpanKind

    carrier = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
    return tracer.start_span(
        scope.get("method", "HTTP"),
        context=extract(carrier),
        kind=SpanKind.SERVER,
        attributes={
            "http.request.method": scope.get("method", ""),
            "url.scheme": scope.get("scheme", "http"),
            "dicomweb.request_id": request_id,
        },
    )


def _end_span(
    span: Any, scope: Scope, transaction: str, site: str, status: int, failed: bool
) -> None:
    from opentelemetry.trace import Status, StatusCode

    route = scope.get("route")
    template = getattr(route, "path", None)
    if template is not None:
        # The route's template, never the path itself: UIDs are not span names.
        template = scope.get("root_path", "") + template
        span.update_name(f"{scope.get('method', 'HTTP')} {template}")
        span.set_attribute("http.route", template)
    span.set_attribute("dicomweb.transaction", transaction)
    span.set_attribute("dicomweb.site", site)
    if status:
        span.set_attribute("http.response.status_code", status)
    if failed or status >= 500:
        span.set_status(Status(StatusCode.ERROR))
    span.end()
