"""index/threads.py: the SQLite index's threads hand results and errors back to the loop."""

from __future__ import annotations

import asyncio
import threading

import pytest

from dicomweb_server.index.threads import Workers


async def test_calls_run_on_the_named_threads_and_hand_back_results_and_errors() -> None:
    workers = Workers(2, "test-workers")
    try:
        names = await asyncio.gather(*(workers.run(lambda: threading.current_thread().name)
                                       for _ in range(20)))  # fmt: skip
        assert set(names) <= {"test-workers_0", "test-workers_1"}
        assert threading.current_thread().name not in names

        def fail() -> None:
            raise ValueError("from the worker")

        with pytest.raises(ValueError, match="from the worker"):
            await workers.run(fail)
        assert await workers.run(lambda: 42) == 42  # a failed call leaves the thread working
    finally:
        workers.shutdown()


async def test_a_cancelled_caller_leaves_the_pool_working() -> None:
    workers = Workers(1, "test-workers")
    release = threading.Event()
    try:
        waiting = asyncio.ensure_future(workers.run(lambda: release.wait(5)))
        await asyncio.sleep(0.01)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        release.set()  # the call finishes after its caller left: its result is dropped
        assert await workers.run(lambda: "next") == "next"
    finally:
        workers.shutdown()


async def test_shutdown_finishes_queued_calls_then_refuses_new_ones() -> None:
    workers = Workers(1, "test-workers")
    done: list[int] = []
    calls = [asyncio.ensure_future(workers.run(lambda n=n: done.append(n))) for n in range(5)]
    await asyncio.sleep(0)
    await asyncio.to_thread(workers.shutdown)
    await asyncio.gather(*calls)
    assert done == [0, 1, 2, 3, 4]
    assert not any(t.name.startswith("test-workers") for t in threading.enumerate())
    with pytest.raises(RuntimeError, match="shut down"):
        await workers.run(lambda: None)
