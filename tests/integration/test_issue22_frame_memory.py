"""Issue 22: stored frames read from S3 are kept in memory per process (a frame asked for again
skips the object store); a local folder relies on the page cache and keeps none."""

from __future__ import annotations

import httpx
from dicomfiles import ct_dataset, multipart_body, parse_multipart, to_part10
from prometheus_client.parser import text_string_to_metric_families
from pydicom.dataset import Dataset
from starlette.applications import Starlette

from dicomweb_server.web.state import AppState

_READS = "dicomweb_object_store_duration_seconds_count"


async def _sample(client: httpx.AsyncClient, name: str, **labels: str) -> float:
    text = (await client.get("http://testserver/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


async def _range_reads(client: httpx.AsyncClient, operation: str = "read_range") -> float:
    return await _sample(client, _READS, operation=operation)


async def _frame_sources(client: httpx.AsyncClient) -> dict[str, float]:
    """dicomweb_frame_memory_reads_total by result, and frames read ahead."""
    sources = {
        result: await _sample(client, "dicomweb_frame_memory_reads_total", result=result)
        for result in ("memory", "waited", "store")
    }
    sources["ahead"] = await _sample(client, "dicomweb_frames_read_ahead_total")
    return sources


def _parts(response: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    return parse_multipart(response.content, response.headers["content-type"])


async def _frame(client: httpx.AsyncClient, path: str, number: int) -> httpx.Response:
    return await client.get(
        f"{path}/frames/{number}",
        headers={"Accept": "multipart/related; type=application/octet-stream"},
    )


async def _store(client: httpx.AsyncClient, ds: Dataset) -> str:
    """Store `ds`; its instance's path."""
    body, content_type = multipart_body([to_part10(ds)])
    stored = await client.post("/studies", content=body, headers={"Content-Type": content_type})
    assert stored.status_code == 200, stored.text
    return (
        f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )


async def test_issue22_a_frame_asked_for_again_is_not_read_from_the_store_again(
    app: Starlette, client: httpx.AsyncClient, backend: str
) -> None:
    ds = ct_dataset(rows=32, columns=32, frames=3)
    path = await _store(client, ds)
    state: AppState = app.state.dicomweb
    kept = state.retrieve._frames_kept
    assert kept is not None

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
        assert not len(kept)
    else:
        assert len(kept) == 2
        assert after_first - before == 1
        assert after_again == after_first  # from memory
        assert after_other - after_again == 1  # another frame is another read

    # Deleted data is never answered from memory: the index is asked first.
    assert (await client.delete(path)).status_code == 204
    assert (await _frame(client, path, 2)).status_code == 404


async def test_issue22_a_viewer_paging_through_a_multi_frame_object_is_answered_from_memory(
    app: Starlette, client: httpx.AsyncClient, backend: str
) -> None:
    """The frames after the one asked for are streamed in behind it by one read; rendered
    frames read only their own."""
    ds = ct_dataset(rows=32, columns=32, frames=40)
    path = await _store(client, ds)
    kept = app.state.dicomweb.retrieve._frames_kept
    assert kept is not None
    frame_bytes = 32 * 32 * 2
    pixels = bytes(ds.PixelData)

    rendered = await client.get(f"{path}/frames/20/rendered", headers={"Accept": "image/png"})
    assert rendered.status_code == 200
    assert not kept._fetches and kept.fetched_ahead == 0  # it reads that frame alone

    before = await _range_reads(client), await _range_reads(client, "get")
    sources_before = await _frame_sources(client)
    for number in range(1, 41):
        answer = await _frame(client, path, number)
        assert answer.status_code == 200
        expected = pixels[(number - 1) * frame_bytes : number * frame_bytes]
        assert _parts(answer)[0][1] == expected, number
    after = await _range_reads(client), await _range_reads(client, "get")
    sources = {k: v - sources_before[k] for k, v in (await _frame_sources(client)).items()}

    if backend == "embedded":  # a local folder: the page cache, nothing kept
        assert not len(kept)
    else:
        # Frame 1 read on its own, frames 2-40 (78 KB) streamed in by one read behind it
        # (frame 20, read for the rendered image, is kept already and is not read again).
        assert after[0] - before[0] == 1
        assert 1 <= after[1] - before[1] <= 2
        assert kept.fetched_ahead >= 38
        # /metrics tells an operator where the frames came from
        assert sources["store"] == 1
        assert sources["memory"] + sources["waited"] == 39
        assert sources["ahead"] == kept.fetched_ahead
