"""Rendered resources and thumbnails over HTTP on both backend pairs (PS3.18 10.4.1.1.3, 8.3.5)."""

from __future__ import annotations

import asyncio
import io

import httpx
import numpy as np
import pytest
from dicomfiles import ct_dataset, parse_multipart, to_part10, uid
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file
from test_wado import _store

from dicomweb_server.app import create_app
from dicomweb_server.codecs.rendering import RenderOptions
from dicomweb_server.domain.identifiers import DEFAULT_SITE, InstanceKey

BASE = "http://testserver/dicomweb"


def _image(response: httpx.Response) -> Image.Image:
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(response.content))


@pytest.fixture
async def stored(client: httpx.AsyncClient):  # type: ignore[no-untyped-def]
    """A series of three CT images (one with 3 frames) with a window and a rescale."""
    study, series = uid(), uid()
    datasets = []
    for number, frames in ((1, 1), (2, 3), (3, 1)):
        ds = ct_dataset(study, series, instance_number=number, seed=number, frames=frames)
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.WindowCenter, ds.WindowWidth = 1000, 2000
        datasets.append(ds)
    await _store(client, [to_part10(ds) for ds in datasets])
    return study, series, datasets


def _path(ds, suffix: str = "") -> str:  # type: ignore[no-untyped-def]
    return (
        f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}{suffix}"
    )


def _windowed(pixels: np.ndarray, center: float, width: float, intercept: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 LINEAR, what a viewer would show."""
    x = pixels.astype(np.float64) + intercept
    y = np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    return np.rint(y * 255).astype(np.uint8)


async def test_rendered_instance_pixels_follow_the_dataset_window(client, stored) -> None:  # type: ignore[no-untyped-def]
    _, _, datasets = stored
    ds = datasets[0]
    response = await client.get(_path(ds, "/rendered"), headers={"Accept": "image/png"})
    assert response.headers["content-type"] == "image/png"
    assert response.headers["etag"].startswith('"')
    assert "max-age" in response.headers["cache-control"]
    got = np.asarray(_image(response))
    assert got.tolist() == _windowed(ds.pixel_array, 1000, 2000, -1024).tolist()


async def test_accept_query_parameter_wins_over_the_accept_header(client, stored) -> None:  # type: ignore[no-untyped-def]
    ds = stored[2][0]
    response = await client.get(
        _path(ds, "/rendered"), params={"accept": "image/png"}, headers={"Accept": "image/jpeg"}
    )
    assert response.headers["content-type"] == "image/png"
    default = await client.get(_path(ds, "/rendered"))
    assert default.headers["content-type"] == "image/jpeg"
    assert _image(default).format == "JPEG"
    refused = await client.get(_path(ds, "/rendered"), headers={"Accept": "application/dicom"})
    assert refused.status_code == 406
    assert "image/jpeg" in refused.json()["reason"]


async def test_frames_rendered_with_window_viewport_and_quality(client, stored) -> None:  # type: ignore[no-untyped-def]
    ds = stored[2][1]
    response = await client.get(
        _path(ds, "/frames/2/rendered"),
        params={"window": "0,4000,linear-exact", "viewport": "8,4", "accept": "image/png"},
    )
    image = _image(response)
    assert image.size == (4, 4)  # 16×16 fitted into 8×4, aspect kept
    cropped = await client.get(
        _path(ds, "/frames/3/rendered"),
        params={"viewport": "16,16,4,4,8,8", "accept": "image/png", "window": "500,3000,linear"},
    )
    frame = ds.pixel_array[2][4:12, 4:12]
    expected = Image.fromarray(_windowed(frame, 500, 3000, -1024)).resize((16, 16), Image.BILINEAR)
    assert np.abs(np.asarray(_image(cropped), int) - np.asarray(expected, int)).max() <= 2
    small = await client.get(_path(ds, "/frames/1/rendered"), params={"quality": "10"})
    large = await client.get(_path(ds, "/frames/1/rendered"), params={"quality": "100"})
    assert len(small.content) < len(large.content)


async def test_multi_frame_renders_as_an_animated_gif_when_asked(client, stored) -> None:  # type: ignore[no-untyped-def]
    ds = stored[2][1]
    gif = _image(await client.get(_path(ds, "/rendered"), params={"accept": "image/gif"}))
    assert gif.format == "GIF" and gif.n_frames == 3
    two = _image(
        await client.get(_path(ds, "/frames/3,1/rendered"), headers={"Accept": "image/gif"})
    )
    assert two.n_frames == 2
    first_only = _image(await client.get(_path(ds, "/rendered")))
    assert first_only.format == "JPEG"
    several = await client.get(_path(ds, "/frames/1,2/rendered"), headers={"Accept": "image/jpeg"})
    assert several.status_code == 406


_BAD_QUERIES = [
    ("window=40", "window must be center,width,function"),
    ("window=40,0,linear", "window width"),
    ("window=40,400,gamma", "window function 'gamma'"),
    ("viewport=0,10", "viewport width"),
    ("viewport=10,10,1,2,3", "viewport must be"),
    ("viewport=10,10,100,100,5,5", "outside"),
    ("quality=101", "quality must be between 1 and 100"),
    ("annotation=everything", "annotation 'everything'"),
    ("iccprofile=srgb", "iccprofile"),
    ("quality=5&quality=6", "more than once"),
]


async def test_unsupported_values_are_400_with_a_reason(client, stored) -> None:  # type: ignore[no-untyped-def]
    ds = stored[2][0]
    for query, reason in _BAD_QUERIES:
        response = await client.get(_path(ds, "/rendered") + "?" + query)
        assert response.status_code == 400, query
        assert reason in response.json()["reason"], query


async def test_an_instance_without_pixel_data_renders_as_nothing_acceptable(client) -> None:  # type: ignore[no-untyped-def]
    """A structured report has nothing to render: 406 with the reason (PS3.18 8.3.5, as the
    README says), not a 404 that would say the instance is not there."""
    ds = ct_dataset()
    del ds.PixelData
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.Modality = "SR"
    await _store(client, [to_part10(ds)])
    for suffix in ("/rendered", "/thumbnail", "/frames/1/rendered"):
        response = await client.get(_path(ds, suffix))
        assert response.status_code == 406, (suffix, response.text)
        assert "no pixel data" in response.json()["reason"]
    assert (await client.get(_path(ds, "/metadata"))).status_code == 200


async def test_missing_frames_and_instances_are_404(client, stored) -> None:  # type: ignore[no-untyped-def]
    ds = stored[2][0]
    assert (await client.get(_path(ds, "/frames/2/rendered"))).status_code == 404
    assert (await client.get(_path(ds, "/frames/0/thumbnail"))).status_code == 400
    missing = f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{uid()}"
    assert (await client.get(missing + "/rendered")).status_code == 404
    assert (await client.get(f"/studies/{uid()}/thumbnail")).status_code == 404


async def test_annotations_are_burned_in(client, stored) -> None:  # type: ignore[no-untyped-def]
    ds = stored[2][0]
    plain = np.asarray(
        _image(await client.get(_path(ds, "/rendered"), params={"accept": "image/png"}))
    )
    marked = await client.get(
        _path(ds, "/rendered"), params={"accept": "image/png", "annotation": "patient,technique"}
    )
    assert np.asarray(_image(marked)).shape == plain.shape
    assert not np.array_equal(np.asarray(_image(marked)), plain)


async def test_study_and_series_rendered_are_multipart_one_image_per_instance(
    client, stored
) -> None:  # type: ignore[no-untyped-def]
    study, series, _ = stored
    response = await client.get(
        f"/studies/{study}/series/{series}/rendered", params={"accept": "image/png"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith('multipart/related; type="image/png"')
    parts = parse_multipart(response.content, response.headers["content-type"])
    assert len(parts) == 3
    assert all(Image.open(io.BytesIO(body)).format == "PNG" for _, body in parts)
    assert parts[0][0]["content-location"].endswith("/rendered")
    study_parts = await client.get(f"/studies/{study}/rendered")
    assert len(parse_multipart(study_parts.content, study_parts.headers["content-type"])) == 3


async def test_thumbnails_at_every_level_are_small_and_honour_the_viewport(client, stored) -> None:  # type: ignore[no-untyped-def]
    study, series, datasets = stored
    paths = [
        f"/studies/{study}/thumbnail",
        f"/studies/{study}/series/{series}/thumbnail",
        _path(datasets[0], "/thumbnail"),
        _path(datasets[1], "/frames/2/thumbnail"),
    ]
    for path in paths:
        response = await client.get(path, headers={"Accept": "image/jpeg"})
        image = _image(response)
        assert image.format == "JPEG" and max(image.size) <= 128, path
        assert response.headers["etag"]
    sized = await client.get(paths[1], params={"viewport": "8,8", "accept": "image/png"})
    assert _image(sized).size == (8, 8)
    # The series thumbnail is its middle image: instance 2 (of 1, 2, 3), its middle frame.
    middle = await client.get(
        _path(datasets[1], "/frames/2/thumbnail"), params={"viewport": "8,8", "accept": "image/png"}
    )
    assert sized.content == middle.content


async def test_a_series_thumbnail_follows_its_middle_image_as_the_series_grows(
    client, stored
) -> None:  # type: ignore[no-untyped-def]
    """The representative instance is remembered by the study's version, not for a while: a
    client revalidating after more instances arrive gets the new middle image, not a 304."""
    study, series, datasets = stored
    path = f"/studies/{study}/series/{series}/thumbnail"
    params = {"viewport": "8,8", "accept": "image/png"}
    before = await client.get(path, params=params)
    assert before.status_code == 200
    again = await client.get(path, params=params, headers={"If-None-Match": before.headers["etag"]})
    assert again.status_code == 304  # nothing changed: remembered
    more = [ct_dataset(study, series, instance_number=n, seed=n) for n in (4, 5, 6, 7)]
    for ds in more:
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    await _store(client, [to_part10(ds) for ds in more])
    after = await client.get(path, params=params, headers={"If-None-Match": before.headers["etag"]})
    assert after.status_code == 200, "the old middle image was revalidated"
    middle = await client.get(_path(more[0], "/thumbnail"), params=params)  # 4 of 1..7
    assert after.content == middle.content
    assert after.headers["etag"] == middle.headers["etag"]


async def test_thumbnail_is_cached_in_the_blob_store_and_revalidates(client, stored, app) -> None:  # type: ignore[no-untyped-def]
    ds = stored[2][0]
    first = await client.get(_path(ds, "/thumbnail"))
    service = app.state.dicomweb.render
    rendering = await service.plan_thumbnail(
        *_thumbnail_args(ds), options=service.thumbnail_options(_jpeg())
    )
    assert first.headers["etag"] == rendering.etag
    await service.thumbnail_cache.wait_for_writes()  # the cache write runs after the response
    stored_bytes = b"".join(
        [c async for c in app.state.backends.blobs.iter_get(rendering.cache_key)]
    )
    assert stored_bytes == first.content
    assert rendering.cache_key.startswith(f"{DEFAULT_SITE}/cache/")
    again = await client.get(
        _path(ds, "/thumbnail"), headers={"If-None-Match": first.headers["etag"]}
    )
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == first.headers["etag"]
    rendered = await client.get(_path(ds, "/rendered"))
    assert (
        await client.get(
            _path(ds, "/rendered"), headers={"If-None-Match": f'W/{rendered.headers["etag"]}, "x"'}
        )
    ).status_code == 304
    assert (
        await client.get(_path(ds, "/rendered"), headers={"If-None-Match": '"other"'})
    ).status_code == 200


def _thumbnail_args(ds):  # type: ignore[no-untyped-def]
    from dicomweb_server.domain.identifiers import StudyKey

    return StudyKey(DEFAULT_SITE, ds.StudyInstanceUID), ds.SeriesInstanceUID, ds.SOPInstanceUID


def _jpeg():  # type: ignore[no-untyped-def]
    from dicomweb_server.codecs.rendering import RenderOptions

    return RenderOptions()


_SOURCES = [
    "SC_rgb_jpeg_dcmtk.dcm",
    "image_dfl.dcm",
    "examples_palette.dcm",
    "MR_small_jp2klossless.dcm",
]


async def test_compressed_deflated_and_palette_sources_render(client) -> None:  # type: ignore[no-untyped-def]
    from pydicom.pixels import apply_color_lut

    for name in _SOURCES:
        with open(get_testdata_file(name), "rb") as handle:
            data = handle.read()
        await _store(client, [data])
        ds = dcmread(io.BytesIO(data))
        image = _image(await client.get(_path(ds, "/rendered"), params={"accept": "image/png"}))
        assert image.size == (ds.Columns, ds.Rows), name
        if ds.PhotometricInterpretation == "MONOCHROME2":
            assert np.asarray(image).std() > 10, name
            continue
        expected = ds.pixel_array
        if ds.PhotometricInterpretation == "PALETTE COLOR":
            expected = apply_color_lut(expected, ds) >> 8
        error = np.abs(np.asarray(image.convert("RGB"), int) - expected.astype(int)).max()
        assert error <= 3, name


async def test_renderings_in_flight_share_one_pixel_budget_then_get_503(settings) -> None:  # type: ignore[no-untyped-def]
    """Concurrent animated GIFs grew the process by 100 MB each: renderings in flight (until
    sent) share DICOMWEB_MAX_RENDER_PIXELS; past it they wait, then get 503 with Retry-After."""
    app = create_app(settings.replace(max_render_pixels=16 * 16 * 3))  # one 3-frame GIF
    study, series = uid(), uid()
    datasets = [
        ct_dataset(study, series, instance_number=n, seed=n, frames=frames)
        for n, frames in ((1, 1), (2, 3))
    ]
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            await _store(client, [to_part10(ds) for ds in datasets])
            render = app.state.dicomweb.render
            render.budget_wait_seconds = 0.2
            one = _path(datasets[0], "/rendered")
            for quality in range(10, 60, 10):  # more than fit at once: each gives its share back
                response = await client.get(one, params={"quality": str(quality)})
                assert response.status_code == 200
            gif = await render.plan_instance(
                InstanceKey(DEFAULT_SITE, study, series, datasets[1].SOPInstanceUID),
                RenderOptions(media_type="image/gif"),
            )
            held = await render.produce(gif)  # as if its answer were still being sent
            busy = await client.get(one)
            assert busy.status_code == 503
            assert busy.headers["retry-after"].isdigit()
            assert "DICOMWEB_MAX_RENDER_PIXELS" in busy.json()["reason"]
            parts = await client.get(f"/studies/{study}/series/{series}/rendered")
            assert parts.status_code == 503 and "retry-after" in parts.headers
            render.budget_wait_seconds = 10
            waiting = asyncio.ensure_future(client.get(one))
            await asyncio.sleep(0.2)
            assert not waiting.done()
            held.release()
            assert (await waiting).status_code == 200
            for _ in range(2):  # each part's share is given back once it is sent
                parts = await client.get(
                    f"/studies/{study}/series/{series}/rendered", params={"accept": "image/gif"}
                )
                assert parts.status_code == 200
                assert len(parse_multipart(parts.content, parts.headers["content-type"])) == 2


def _undecodable_j2k(study: str, series: str, number: int) -> bytes:
    """MR_small_jp2klossless.dcm with its code stream garbled after 100 bytes."""
    from pydicom.encaps import encapsulate, generate_frames

    ds = dcmread(get_testdata_file("MR_small_jp2klossless.dcm"))
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[:100] + b"\xff" * (len(frame) - 100)])
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = number
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


async def test_an_undecodable_instance_is_left_out_of_study_and_series_rendered(
    client, caplog
) -> None:  # type: ignore[no-untyped-def]
    """A study's rendered answer was a 200 cut short after its first part, with tracebacks:
    now an instance that cannot be rendered is left out with one warning, before or after
    the status; none renderable is the 406 the instance itself gets."""
    study, series, only_bad = uid(), uid(), uid()
    good = [ct_dataset(study, series, instance_number=n, seed=n) for n in (2, 4)]
    bad_first = _undecodable_j2k(study, series, 1)  # left out before the status line
    bad_later = _undecodable_j2k(study, series, 3)  # left out after it
    await _store(
        client,
        [
            bad_first,
            to_part10(good[0]),
            bad_later,
            to_part10(good[1]),
            _undecodable_j2k(study, only_bad, 1),
        ],
    )
    caplog.set_level("WARNING")
    response = await client.get(f"/studies/{study}/series/{series}/rendered")
    assert response.status_code == 200
    parts = parse_multipart(response.content, response.headers["content-type"])
    locations = [headers["content-location"] for headers, _ in parts]
    assert [location.split("/")[-2] for location in locations] == [ds.SOPInstanceUID for ds in good]
    assert all(Image.open(io.BytesIO(body)).format == "JPEG" for _, body in parts)
    left_out = [r for r in caplog.records if "left out" in r.getMessage()]
    assert len(left_out) == 2 and all(r.levelname == "WARNING" for r in left_out)
    assert dcmread(io.BytesIO(bad_later)).SOPInstanceUID in left_out[1].getMessage()
    assert not any(r.levelno >= 40 and r.name.startswith("dicomweb_server") for r in caplog.records)
    whole_study = await client.get(f"/studies/{study}/rendered")
    assert len(parse_multipart(whole_study.content, whole_study.headers["content-type"])) == 2
    none_renderable = await client.get(f"/studies/{study}/series/{only_bad}/rendered")
    assert none_renderable.status_code == 406
    assert "cannot be rendered" in none_renderable.json()["reason"]
