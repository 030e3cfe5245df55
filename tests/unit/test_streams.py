"""services/streams.py: what the retrieve and render services hand on."""

from __future__ import annotations

from collections.abc import AsyncIterator

from dicomweb_server.services.streams import chain


async def test_closing_a_chain_closes_what_it_chains() -> None:
    """A client leaving a study retrieve or render early closes the answer's stream: the
    index listing behind it must let go of its cursor then, not when it is collected."""
    closed: list[bool] = []

    async def listing() -> AsyncIterator[int]:
        try:
            for n in range(1, 100):
                yield n
        finally:
            closed.append(True)

    rest = listing()
    chained = chain(0, rest)
    assert [await anext(chained), await anext(chained)] == [0, 1]
    await chained.aclose()  # type: ignore[attr-defined]
    assert closed == [True]
    assert [n async for n in chain("a", listing())] == ["a", *range(1, 100)]
