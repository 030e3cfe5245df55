"""One pool of threads for synchronous codec work (decoding, encoding, rendering), per process.

Retrieve and render share it, so `codec_workers` bounds all codec work of a process, never
the event loop. A cancelled caller still waits for its task: the buffers and spool files it
handed over must outlive the native code reading them.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from dicomweb_server import telemetry
from dicomweb_server.codecs.decode_guards import MAX_DECODED_FRAME_BYTES
from dicomweb_server.codecs.registry import CodecError
from dicomweb_server.codecs.rendering import MAX_RENDER_PIXELS

__all__ = ["CodecPool"]

_T = TypeVar("_T")


class CodecPool:
    """Runs codec functions in `workers` threads (0: one per core), started on first use, and
    carries the bounds every decode and rendering is checked against before it starts."""

    def __init__(
        self,
        workers: int = 1,
        *,
        max_decoded_bytes: int = MAX_DECODED_FRAME_BYTES,
        max_render_pixels: int = MAX_RENDER_PIXELS,
    ) -> None:
        self._workers = workers or os.cpu_count() or 1
        self._executor: ThreadPoolExecutor | None = None
        self.max_decoded_bytes = max_decoded_bytes  # one decoded frame, in bytes
        self.max_render_pixels = max_render_pixels  # frames × pixels of one rendering

    async def run(self, function: Callable[..., _T], *args: Any, kind: str = "codec") -> _T:
        """`function(*args)` in a codec thread; `kind` (transcode, render, attributes) labels
        its time in /metrics and its span."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._workers, thread_name_prefix="codec")
        with telemetry.codec_run(kind):
            future = asyncio.get_running_loop().run_in_executor(self._executor, function, *args)
            try:
                return await asyncio.shield(future)
            except asyncio.CancelledError:
                await asyncio.wait({future})
                raise
            except (Exception, KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:
                # A native codec's panic (pyo3's PanicException derives from BaseException):
                # broken pixel data, not a reason to take the request or the worker down.
                raise CodecError(f"the codec failed on this data: {str(exc)[:160]}") from exc

    def close(self) -> None:
        """Stop the threads: queued work is dropped, running work finishes first."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
