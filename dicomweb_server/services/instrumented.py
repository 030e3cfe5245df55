"""The index and the blob store as the services see them: timed, counted and traced.

Both are proxies that forward every attribute to the real object, wrapping each public
coroutine and async generator method on first use. Nothing is re-declared by hand, so the
Protocols stay as they are, capabilities found by `isinstance` (LocalFiles,
BatchInstanceIndex) are still found, and a method someone adds tomorrow is instrumented too.

- Blob store: every request is timed into `dicomweb_object_store_duration_seconds` (a get until
  its first bytes arrive: afterwards the pace is the client's), failures counted, and spanned
  when tracing is on.
- Index: spanned when tracing is on; and the connection gauges are sampled, at most once a
  second, as calls pass. Without tracing or a connection pool the index is not wrapped at all.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar, cast

from dicomweb_server import telemetry
from dicomweb_server.errors import NotFoundError
from dicomweb_server.index.base import ConnectionPool
from dicomweb_server.telemetry import INDEX_CONNECTIONS, OBJECT_STORE_ERRORS, OBJECT_STORE_SECONDS

__all__ = ["instrumented_blobs", "instrumented_index"]

T = TypeVar("T")

_OPERATIONS = {"iter_get": "get", "iter_objects": "list"}  # metric labels for generators
_UNTOUCHED = frozenset({"close", "local_path"})
_SAMPLE_INTERVAL = 1.0  # seconds between connection gauge samples, at most


class _Forward:
    """A method of the real object, found on the proxy's class (so `isinstance` checks that look
    attributes up statically, as Python 3.12's runtime protocols do, find it too); on first
    use it is wrapped and kept on the instance."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, proxy: _Proxy | None, owner: type) -> Any:
        if proxy is None:
            return self
        return proxy._method(self.name)


class _Proxy:
    """Forwards attributes to `inner`; public async methods are wrapped once and kept."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def _method(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if name in _UNTOUCHED:
            wrapped: Any = value
        elif inspect.iscoroutinefunction(value):
            wrapped = self._wrap_call(name, value)
        elif inspect.isasyncgenfunction(value):
            wrapped = self._wrap_iter(name, value)
        else:
            wrapped = value
        self.__dict__[name] = wrapped  # found before the class's _Forward from now on
        return wrapped

    def __getattr__(self, name: str) -> Any:
        if name == "_inner":  # not set yet: never recurse
            raise AttributeError(name)
        return getattr(self._inner, name)  # anything else: data attributes

    def _wrap_call(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        raise NotImplementedError

    def _wrap_iter(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._inner!r})"


_classes: dict[tuple[type, type], type] = {}


def _proxy(base: type[_Proxy], inner: Any) -> Any:
    """A `base` proxy whose class has each public method of `inner`'s class."""
    key = (base, type(inner))
    cls = _classes.get(key)
    if cls is None:
        names = [
            name
            for name in dir(type(inner))
            if not name.startswith("_") and callable(getattr(type(inner), name, None))
        ]
        cls = type(base.__name__, (base,), {name: _Forward(name) for name in names})
        _classes[key] = cls
    return cls(inner)


def _failed(exc: BaseException) -> bool:
    return isinstance(exc, Exception) and not isinstance(exc, NotFoundError)


class _Blobs(_Proxy):
    def _wrap_call(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        operation = _OPERATIONS.get(name, name)
        seconds = OBJECT_STORE_SECONDS.labels(operation)
        errors = OBJECT_STORE_ERRORS.labels(operation)
        span_name = f"object_store.{operation}"

        async def call(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                tracer = telemetry.tracer()
                if tracer is None:
                    return await method(*args, **kwargs)
                with tracer.start_as_current_span(span_name):
                    return await method(*args, **kwargs)
            except BaseException as exc:
                if _failed(exc):
                    errors.inc()
                raise
            finally:
                seconds.observe(time.perf_counter() - started)

        return call

    def _wrap_iter(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        operation = _OPERATIONS.get(name, name)
        seconds = OBJECT_STORE_SECONDS.labels(operation)
        errors = OBJECT_STORE_ERRORS.labels(operation)
        span_name = f"object_store.{operation}"

        async def iterate(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            started = time.perf_counter()
            tracer = telemetry.tracer()
            # Not the current span: the consumer runs between our yields.
            span = None if tracer is None else tracer.start_span(span_name)
            first = True
            try:
                async for item in method(*args, **kwargs):
                    if first:
                        first = False
                        seconds.observe(time.perf_counter() - started)
                        if span is not None:
                            span.end()
                            span = None
                    yield item
            except BaseException as exc:
                if _failed(exc) and first:
                    errors.inc()
                raise
            finally:
                if first:
                    seconds.observe(time.perf_counter() - started)
                if span is not None:
                    span.end()

        return iterate


class _Index(_Proxy):
    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self._next_sample = 0.0

    def _sample(self) -> None:
        now = time.monotonic()
        if now < self._next_sample:
            return
        self._next_sample = now + _SAMPLE_INTERVAL
        if isinstance(self._inner, ConnectionPool):
            connections = self._inner.connections()
            INDEX_CONNECTIONS.labels("open").set(connections.open)
            INDEX_CONNECTIONS.labels("max").set(connections.limit)
            if connections.in_use is not None:
                INDEX_CONNECTIONS.labels("in_use").set(connections.in_use)

    def _wrap_call(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        span_name = f"index.{name}"

        async def call(*args: Any, **kwargs: Any) -> Any:
            try:
                tracer = telemetry.tracer()
                if tracer is None:
                    return await method(*args, **kwargs)
                with tracer.start_as_current_span(span_name):
                    return await method(*args, **kwargs)
            finally:
                self._sample()

        return call

    def _wrap_iter(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        span_name = f"index.{name}"

        async def iterate(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            tracer = telemetry.tracer()
            span = None if tracer is None else tracer.start_span(span_name)
            try:
                async for item in method(*args, **kwargs):
                    yield item
            finally:
                if span is not None:
                    span.end()
                self._sample()

        return iterate


def instrumented_blobs(blobs: T) -> T:
    """`blobs` with its requests timed, counted and traced."""
    return cast(T, _proxy(_Blobs, blobs))


def instrumented_index(index: T) -> T:
    """`index` with its calls traced and its connections sampled (itself when there is
    nothing to do: no tracing and no connections to report)."""
    if telemetry.tracer() is None and not isinstance(index, ConnectionPool):
        return index
    return cast(T, _proxy(_Index, index))
