"""`create_app(settings)`: the only place that picks concrete backends (by URL scheme)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomweb_server.backends import Backends, open_backends, open_index
from dicomweb_server.config import Settings
from dicomweb_server.domain.part10 import ParseLimits
from dicomweb_server.errors import RequestTimeoutError
from dicomweb_server.services.audit import AuditService
from dicomweb_server.services.authn import Authenticator
from dicomweb_server.services.codec_pool import CodecPool
from dicomweb_server.services.delete import DeleteService
from dicomweb_server.services.derived_cache import DerivedCache
from dicomweb_server.services.events import ChangeFeedService, EventWorker
from dicomweb_server.services.instrumented import instrumented_blobs, instrumented_index
from dicomweb_server.services.render import RenderService
from dicomweb_server.services.retention import Maintenance
from dicomweb_server.services.retrieve import ReadAhead, RetrieveService
from dicomweb_server.services.search import SearchService
from dicomweb_server.services.sites import SiteService
from dicomweb_server.services.status import StatusService
from dicomweb_server.services.store import StoreService
from dicomweb_server.web.audit import AuditMiddleware
from dicomweb_server.web.auth import AuthMiddleware
from dicomweb_server.web.browser import add_browser_middleware
from dicomweb_server.web.errors import EXCEPTION_HANDLERS, error_response
from dicomweb_server.web.landing import LANDING_ROUTES
from dicomweb_server.web.observe import RequestContextMiddleware
from dicomweb_server.web.ops import OPS_ROUTES
from dicomweb_server.web.routes import ROUTES
from dicomweb_server.web.sites import TrailingSlashMiddleware, dicomweb_mounts
from dicomweb_server.web.state import AppState
from dicomweb_server.web.viewer import VIEWER_ROUTES

__all__ = ["Backends", "RequestLimitsMiddleware", "create_app", "open_backends", "open_index"]


class RequestLimitsMiddleware:
    """Bounds each request in time and the STOW requests in flight, so slow or many clients
    cannot starve the others: a body that stalls gets 408, a request over its time budget is
    cut off, and STOW requests beyond the limit get 429 with Retry-After at once.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        body_timeout: float,
        request_timeout: float,
        max_stores: int,
        min_upload_rate: int = 0,
    ) -> None:
        self.app = app
        self.body_timeout = body_timeout
        self.request_timeout = request_timeout
        self.max_stores = max_stores
        self.min_upload_rate = min_upload_rate
        self.stores = 0  # one event loop per app: a plain counter is enough

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        is_store = scope.get("method") == "POST"
        if is_store and self.stores >= self.max_stores:
            response = error_response(
                429,
                f"too many STOW requests in progress (limit {self.max_stores}); retry shortly",
                {"Retry-After": "1"},
            )
            await response(scope, receive, send)
            return
        body_done = False
        started = False
        loop = asyncio.get_running_loop()
        began = loop.time()
        received = 0
        # STOW bodies must keep an average rate once the grace period is over: a deadline for
        # the whole body, so dripping one byte a minute cannot hold a STOW slot for an hour.
        min_rate = self.min_upload_rate if is_store else 0

        async def timed_receive() -> Message:
            nonlocal body_done, received
            if body_done:  # later receives wait for a disconnect while streaming a response
                return await receive()
            timeout = self.body_timeout
            if min_rate:
                # The time by which what has arrived, plus one more chunk's worth, is on rate.
                due = began + self.body_timeout + received / min_rate
                timeout = min(timeout, max(due - loop.time(), 0.0) + 1.0)
            try:
                # A deadline on this task, not wait_for's extra task per chunk of body.
                async with asyncio.timeout(timeout):
                    message = await receive()
            except TimeoutError:
                raise RequestTimeoutError(self._too_slow(loop.time() - began, received)) from None
            received += len(message.get("body", b""))
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            elif min_rate and loop.time() - began > self.body_timeout + received / min_rate:
                raise RequestTimeoutError(self._too_slow(loop.time() - began, received))
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        if is_store:
            self.stores += 1
        try:
            async with asyncio.timeout(self.request_timeout):
                await self.app(scope, timed_receive, tracked_send)
        except TimeoutError:
            if started:
                raise  # the status is sent: the server aborts the connection
            status = 503 if body_done else 408
            response = error_response(
                status, f"request took longer than {self.request_timeout:g} seconds"
            )
            await response(scope, receive, send)
        finally:
            if is_store:
                self.stores -= 1

    def _too_slow(self, elapsed: float, received: int) -> str:
        if self.min_upload_rate and elapsed > self.body_timeout:
            return (
                f"the request body arrived too slowly: {received} bytes in {elapsed:.0f} s;"
                f" STOW bodies must average {self.min_upload_rate} bytes/s after"
                f" {self.body_timeout:g} s (DICOMWEB_MIN_UPLOAD_RATE)"
            )
        return f"no request body bytes arrived for {self.body_timeout:g} seconds"


def create_app(settings: Settings) -> Starlette:
    """The ASGI app: the DICOMweb root mounted at /dicomweb. A plain ASGI app: nothing in it
    or its lifespan changes the process (serve/ owns the server, patches and GC tuning)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        backends = await open_backends(settings)
        # Timed, counted and traced as the services use them (/metrics, OTEL traces)
        index, blobs = instrumented_index(backends.index), instrumented_blobs(backends.blobs)
        limits = ParseLimits(
            bulk_data_threshold=settings.bulk_data_threshold,
            max_sequence_depth=settings.max_sequence_depth,
            max_frames=settings.max_frames,
            max_pixel_bytes=settings.max_pixel_bytes,
            max_header_bytes=settings.max_header_bytes,
        )
        codecs = CodecPool(
            settings.codec_workers,
            max_decoded_bytes=settings.max_decoded_frame_bytes,
            max_render_pixels=settings.max_render_pixels,
        )
        cache = DerivedCache(
            blobs,
            index,
            max_bytes=settings.cache_max_bytes,
            memory_bytes=settings.derived_memory_cache_bytes,
        )
        retrieve = RetrieveService(
            index,
            blobs,
            codecs,
            frame_cache=cache if settings.frame_cache and cache.enabled else None,
            frame_memory_bytes=settings.frame_memory_bytes(),
            frame_read_ahead_bytes=settings.frame_read_ahead_bytes,
            metadata_memory_bytes=settings.metadata_memory_cache_bytes,
            read_ahead=ReadAhead(
                objects=settings.wado_read_ahead_objects,
                bytes=settings.wado_read_ahead_bytes,
                sized_max_instances=settings.wado_sized_max_instances,
            ),
        )
        render = RenderService(
            retrieve,
            codecs,
            thumbnail_cache=cache if settings.thumbnail_cache and cache.enabled else None,
            thumbnail_size=settings.thumbnail_size,
            memory_cache_bytes=settings.render_memory_cache_bytes,
        )
        audit = AuditService.from_settings(index, settings)  # issue 17: writes in the background
        await audit.start()
        deleter = DeleteService(
            index, index, index, blobs, grace_days=settings.delete_grace_days, audit=audit
        )  # a stored rejection note's rejections are audited
        maintenance = Maintenance(
            index,
            index,
            deleter,
            interval=settings.maintenance_interval,
            batch=settings.retention_batch,
            audit=audit,  # retention's deletions are audited
        )  # purge past the grace period and site retention, one process at a time
        app.state.backends = backends  # for tools and tests; the web layer uses services only
        authenticator = Authenticator.from_settings(settings, api_key_store=index)
        app.state.dicomweb = AppState(
            settings=settings,
            authenticator=authenticator,
            sites=SiteService(index, settings.default_site),
            store=StoreService(
                index,
                blobs,
                limits,
                lifecycle=deleter,
                held_memory=settings.store_held_memory_bytes,
            ),
            search=SearchService(index, answers_memory_bytes=settings.qido_memory_cache_bytes),
            retrieve=retrieve,
            render=render,
            delete=deleter,
            audit=audit,
            changefeed=ChangeFeedService(index, settings.root_url),
            status=StatusService(index, blobs, ready_timeout=settings.ready_timeout),
        )
        maintenance.start()
        events = EventWorker.start_from_settings(index, settings)  # study.stable, webhooks
        try:
            yield
        finally:
            await events.stop()
            await maintenance.stop()
            await authenticator.aclose()
            await audit.stop()  # queued events and open roll-ups are written first
            await retrieve.aclose()
            await cache.close()
            codecs.close()
            await backends.close()

    app = Starlette(
        routes=[
            *dicomweb_mounts(ROUTES),
            *OPS_ROUTES,  # /healthz, /readyz, /metrics (web/ops.py)
            *LANDING_ROUTES,  # /, /api, /capabilities
            *VIEWER_ROUTES,  # /viewer/ (once `dicomweb-server viewer install` ran)
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.router.redirect_slashes = False  # redirects would take their host from the request
    app.add_middleware(
        RequestLimitsMiddleware,
        body_timeout=settings.body_timeout,
        request_timeout=settings.request_timeout,
        max_stores=settings.max_concurrent_stores,
        min_upload_rate=settings.min_upload_rate,
    )
    # Inside CORS: a 401 or 403 carries CORS headers, so a browser viewer can read it.
    app.add_middleware(AuthMiddleware)
    add_browser_middleware(app, settings)  # CORS, entity tags, JSON compression
    app.add_middleware(TrailingSlashMiddleware)
    app.add_middleware(AuditMiddleware)  # sees every answer, refusals too (web/audit.py)
    app.add_middleware(RequestContextMiddleware, default_site=settings.default_site)
    return app
