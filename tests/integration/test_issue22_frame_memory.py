"""Issue 22: stored frames read from S3 are kept in memory per process (a frame asked for again
skips the object store); a local folder relies on the page cache and keeps none."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest
from dicomfiles import ct_dataset, multipart_body, parse_multipart, to_part10
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

from dicomweb_server.web.state import AppState

_READS = "dicomweb_object_store_duration_seconds_count"


async def _range_reads(client: httpx.AsyncClient) -> float:
    text = (await client.get("http://testserver/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == _READS and sample.labels.get("operation") == "read_range":
                return float(sample.value)
    return 0.0


def _parts(response: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    return parse_multipart(response.content, response.headers["content-type"])


async def _frame(client: httpx.AsyncClient, path: str, number: int) -> httpx.Response:
    return await client.get(
        f"{path}/frames/{number}",
        headers={"Accept": "multipart/related; type=application/octet-stream"},
    )


async def test_issue22_a_frame_asked_for_again_is_not_read_from_the_store_again(
    app: Starlette, client: httpx.AsyncClient, backend: str
) -> None:
    ds = ct_dataset(rows=32, columns=32, frames=3)
    body, content_type = multipart_body([to_part10(ds)])
    stored = await client.post("/studies", content=body, headers={"Content-Type": content_type})
    assert stored.status_code == 200, stored.text
    path = (
        f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )
    state: AppState = app.state.dicomweb
    kept = state.retrieve._frames_kept
    assert kept is not None
    state.retrieve.frame_read_ahead_bytes = 0  # each frame alone (read-ahead: below)

    before = await _range_reads(client)
    first = await _frame(client, path, 2)
    after_first = await _range_reads(client)
    again = await _frame(client, path, 2)
    after_again = await _range_reads(client)
    other = await _frame(client, path, 3)
    after_other = await _range_reads(client)

    assert first.status_code == again.status_code == other.status_code == 200
    frame_two = _parts(first)[0][1]
    assert _parts(again)[0][1] == frame_two
    assert len(frame_two) == 32 * 32 * 2
    assert _parts(other)[0][1] != frame_two
    if backend == "embedded":  # the page cache keeps a local folder's frames
        assert not kept.entries
    else:
        assert len(kept.entries) == 2
        assert after_first - before == 1
        assert after_again == after_first  # from memory
        assert after_other - after_again == 1  # another frame is another read

    # Deleted data is never answered from memory: the index is asked first.
    assert (await client.delete(path)).status_code == 204
    assert (await _frame(client, path, 2)).status_code == 404


@pytest.mark.parametrize("backend", ["production"], indirect=True)
async def test_issue22_a_missing_frame_reads_the_next_ones_ahead_in_one_read(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """A viewer plays a multi-frame object in order: the first frame missing from memory
    starts one read of the frames after it, up to DICOMWEB_FRAME_READ_AHEAD_BYTES."""
    ds = ct_dataset(rows=32, columns=32, frames=12)
    frame_bytes = 32 * 32 * 2
    expected = np.asarray(ds.pixel_array, dtype="<u2").reshape(12, -1)
    body, content_type = multipart_body([to_part10(ds)])
    stored = await client.post("/studies", content=body, headers={"Content-Type": content_type})
    assert stored.status_code == 200, stored.text
    path = (
        f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )
    retrieve = (app.state.dicomweb).retrieve
    retrieve.frame_read_ahead_bytes = 5 * frame_bytes  # frames 2-6 after frame 1

    async def frames(numbers: range) -> float:
        """Ask for each frame in turn; the object store reads they took."""
        before = await _range_reads(client)
        for number in numbers:
            answer = await _frame(client, path, number)
            assert answer.status_code == 200
            assert _parts(answer)[0][1] == expected[number - 1].tobytes(), number
            await asyncio.gather(*retrieve._read_aheads)  # a read-ahead it started is done
        return await _range_reads(client) - before

    assert await frames(range(1, 2)) == 2  # its own read, and frames 2-6 in one
    assert await frames(range(2, 7)) == 0  # all from memory
    assert await frames(range(7, 8)) == 2  # the next miss reads 8-12 ahead
    assert await frames(range(8, 13)) == 0
    assert not retrieve._frames_coming

    # Off (0): every frame is one read of its own.
    retrieve.frame_read_ahead_bytes = 0
    retrieve._frames_kept.entries.clear()  # type: ignore[union-attr]
    retrieve._frames_kept.size = 0  # type: ignore[union-attr]
    assert await frames(range(1, 4)) == 3


async def test_issue22_frames_read_ahead_only_from_a_remote_store(
    app: Starlette, client: httpx.AsyncClient, backend: str
) -> None:
    """The last frame has nothing after it; a local folder reads nothing ahead (the kernel
    does); frames already kept are not read again."""
    ds = ct_dataset(rows=16, columns=16, frames=4)
    body, content_type = multipart_body([to_part10(ds)])
    assert (
        await client.post("/studies", content=body, headers={"Content-Type": content_type})
    ).status_code == 200
    path = (
        f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )
    retrieve = (app.state.dicomweb).retrieve
    assert retrieve.frame_read_ahead_bytes > 0  # on by default
    before = await _range_reads(client)
    assert (await _frame(client, path, 4)).status_code == 200  # the last: nothing after it
    assert not retrieve._read_aheads
    assert (await _frame(client, path, 2)).status_code == 200
    started = len(retrieve._read_aheads)
    await asyncio.gather(*retrieve._read_aheads)
    if backend == "embedded":
        assert started == 0
        return
    assert started == 1 and await _range_reads(client) - before == 3  # 4, 2, then 3-4
    assert (await _frame(client, path, 1)).status_code == 200
    assert not retrieve._read_aheads  # frame 2 is kept: nothing to read ahead
    assert (await _frame(client, path, 3)).status_code == 200
    assert await _range_reads(client) - before == 4  # only frame 1's own read
