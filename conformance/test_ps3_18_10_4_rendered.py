"""PS3.18 10.4.1.1.3 Rendered Resources, 8.3.5 rendering parameters, and thumbnails."""

from __future__ import annotations

import io

import httpx
import numpy as np
from dicomdata import StoredStudy, split_multipart
from PIL import Image


def _image(response: httpx.Response) -> Image.Image:
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(response.content))


def test_10_4_rendered_instance_is_jpeg_by_default(http: httpx.Client, study: StoredStudy) -> None:
    """10.4.1.1.3 and 8.7.4: image/jpeg is the default rendered media type."""
    response = http.get(study.instance_path(0) + "/rendered", headers={"Accept": "image/*"})
    assert response.headers["content-type"].startswith("image/jpeg")
    assert _image(response).size == (8, 8)


def test_8_3_3_1_accept_query_parameter_overrides_the_header(
    http: httpx.Client, study: StoredStudy
) -> None:
    """8.3.3.1: the accept query parameter is used instead of the Accept header."""
    response = http.get(
        study.instance_path(0) + "/rendered",
        params={"accept": "image/png"},
        headers={"Accept": "image/jpeg"},
    )
    assert response.headers["content-type"].startswith("image/png")
    assert _image(response).format == "PNG"


def test_10_4_rendered_frames(http: httpx.Client, study: StoredStudy) -> None:
    """10.4.1.1.3: a frame of a multi-frame instance renders as an image."""
    response = http.get(
        study.instance_path(1) + "/frames/2/rendered", params={"accept": "image/png"}
    )
    assert _image(response).size == (8, 8)


def test_8_3_5_1_3_viewport_scales_the_image(http: httpx.Client, study: StoredStudy) -> None:
    """8.3.5.1.3: viewport=vw,vh scales the rendered image to fit the viewport."""
    response = http.get(
        study.instance_path(0) + "/rendered", params={"viewport": "32,16", "accept": "image/png"}
    )
    assert _image(response).size == (16, 16)


def test_8_3_5_1_4_window_changes_the_pixels(http: httpx.Client, study: StoredStudy) -> None:
    """8.3.5.1.4: window=center,width,function selects the VOI."""
    path = study.instance_path(0) + "/rendered"
    narrow = http.get(path, params={"window": "0,1,linear", "accept": "image/png"})
    wide = http.get(path, params={"window": "2048,4096,linear", "accept": "image/png"})
    assert set(np.asarray(_image(narrow)).ravel().tolist()) == {255}
    assert len(np.unique(np.asarray(_image(wide)))) > 8


def test_8_3_5_unsupported_parameter_value_is_400(http: httpx.Client, study: StoredStudy) -> None:
    """8.3.5 and 8.5: a parameter value the origin server cannot honour is a 400."""
    response = http.get(study.instance_path(0) + "/rendered", params={"window": "1,2,cubic"})
    assert response.status_code == 400


def test_10_4_rendered_series_is_multipart(http: httpx.Client, study: StoredStudy) -> None:
    """10.4.1.1.3: a rendered series holds each instance rendered."""
    response = http.get(
        f"studies/{study.study}/series/{study.series[0]}/rendered", headers={"Accept": "image/jpeg"}
    )
    assert response.status_code == 200
    parts = split_multipart(response.content, response.headers["content-type"])
    assert len(parts) == 2
    assert all(headers["content-type"].startswith("image/jpeg") for headers, _ in parts)


def test_10_4_thumbnails_at_each_level(http: httpx.Client, study: StoredStudy) -> None:
    """10.4.1.1.3 (thumbnail resources): study, series, instance and frame thumbnails."""
    for path in (
        f"studies/{study.study}/thumbnail",
        f"studies/{study.study}/series/{study.series[1]}/thumbnail",
        study.instance_path(0) + "/thumbnail",
        study.instance_path(1) + "/frames/1/thumbnail",
    ):
        response = http.get(path, headers={"Accept": "image/jpeg"})
        assert _image(response).format == "JPEG", path


def test_10_4_unacceptable_rendered_media_type_is_406(
    http: httpx.Client, study: StoredStudy
) -> None:
    """8.7.4: a media type the server cannot render to is a 406."""
    response = http.get(study.instance_path(0) + "/rendered", headers={"Accept": "video/mp4"})
    assert response.status_code == 406


def test_rfc_9110_conditional_rendered_request_is_304(
    http: httpx.Client, study: StoredStudy
) -> None:
    """RFC 9110 13.1.2: If-None-Match with the current ETag is answered 304."""
    path = study.instance_path(0) + "/thumbnail"
    first = http.get(path)
    etag = first.headers.get("etag")
    assert etag
    assert http.get(path, headers={"If-None-Match": etag}).status_code == 304
