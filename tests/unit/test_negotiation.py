"""Accept → representations (PS3.18 8.7.3.4, 8.7.3.5)."""

from __future__ import annotations

import pytest

from dicomweb_server.errors import BadRequestError, NotAcceptableError
from dicomweb_server.services.frame_formats import WantedFrames
from dicomweb_server.web.negotiation import (
    WantedMedia,
    accept_frames,
    accept_instances,
    accept_json,
    accept_media,
    accept_zip,
)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, [None]),
        ("*/*", [None]),
        ('multipart/related; type="application/dicom"', [None]),
        ("multipart/related; type=application/dicom; transfer-syntax=*", ["*"]),
        (
            'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.90;q=0.5,'
            ' multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.5',
            ["1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90"],
        ),
        (
            "image/png, application/dicom; transfer-syntax=1.2.840.10008.1.2.1",
            ["1.2.840.10008.1.2.1"],
        ),
    ],
)
def test_accept_instances_ps3_18_8_7_3_4(header, expected) -> None:  # type: ignore[no-untyped-def]
    assert accept_instances(header) == expected


@pytest.mark.parametrize(
    "header", ["image/png", 'multipart/related; type="image/jpeg"', "application/dicom+json"]
)
def test_accept_instances_refuses_other_types_with_a_reason(header) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(NotAcceptableError) as raised:
        accept_instances(header)
    assert "application/dicom" in raised.value.reason


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, [WantedFrames("*/*", None)]),
        (
            'multipart/related; type="application/octet-stream"',
            [WantedFrames("application/octet-stream", None)],
        ),
        ('multipart/related; type="image/x-jls"', [WantedFrames("image/jls", None)]),
        (
            'multipart/related; type="image/jphc"; transfer-syntax=1.2.840.10008.1.2.4.201, image/jpeg;q=0.2',
            [
                WantedFrames("image/jphc", "1.2.840.10008.1.2.4.201"),
                WantedFrames("image/jpeg", None),
            ],
        ),
        (
            'multipart/related; type="image/dicom-rle"; transfer-syntax=*',
            [WantedFrames("image/dicom-rle", "*")],
        ),
    ],
)
def test_accept_frames_ps3_18_8_7_3_5(header, expected) -> None:  # type: ignore[no-untyped-def]
    assert accept_frames(header) == expected


def test_accept_frames_refuses_unknown_media_types() -> None:
    with pytest.raises(NotAcceptableError) as raised:
        accept_frames('multipart/related; type="image/gif", text/html')
    assert "image/gif" in raised.value.reason


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, [WantedMedia("*/*", False, None)]),
        ("video/mp4", [WantedMedia("video/mp4", False, None)]),
        ("video/H265", [WantedMedia("video/h265", False, None)]),
        (
            "multipart/related; type=video/mp4; transfer-syntax=*, */*;q=0.1",
            [WantedMedia("video/mp4", True, "*"), WantedMedia("*/*", False, None)],
        ),
        ("multipart/related", [WantedMedia("application/octet-stream", True, None)]),
        ("application/pdf, application/pdf", [WantedMedia("application/pdf", False, None)]),
    ],
)
def test_issue15_accept_media_single_or_one_part(header, expected) -> None:  # type: ignore[no-untyped-def]
    assert accept_media(header, "application/octet-stream") == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, False),
        ("*/*", False),
        ("application/*", False),
        ("application/zip", True),
        ("application/zip; transfer-syntax=*", True),
        ("application/zip; transfer-syntax=1.2.840.10008.1.2.1", False),  # stored files only
        ('application/zip; q=0.4, multipart/related; type="application/dicom"', False),
        ('multipart/related; type="application/dicom"; q=0.4, application/zip', True),
        ("image/png, application/zip", True),
        ("application/zip; q=0", False),
    ],
)
def test_issue19_zip_accept_zip(header: str | None, expected: bool) -> None:
    assert accept_zip(header) is expected


def test_issue19_zip_refusal_names_the_zip() -> None:
    with pytest.raises(NotAcceptableError, match="application/zip"):
        accept_instances("image/png")


def test_issue22_a_parsed_accept_header_is_kept_bounded_and_errors_are_not() -> None:
    from dicomweb_server.web import negotiation

    header = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
    first = negotiation.parse_accept(header)
    assert negotiation.parse_accept(header) is first  # parsed once, shared read-only
    assert isinstance(first, tuple)
    for n in range(2 * negotiation._PARSED_KEPT):
        negotiation.parse_accept(f"image/jpeg; q=0.{n % 9 + 1}, application/x-{n}")
    assert len(negotiation._parsed) <= negotiation._PARSED_KEPT
    too_long = "a/b," * (negotiation.MAX_ACCEPT_RANGES + 1)
    for _ in range(2):
        with pytest.raises(BadRequestError):
            negotiation.parse_accept(too_long)
    assert too_long not in negotiation._parsed


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, "application/dicom+json"),
        ("*/*", "application/dicom+json"),
        ("application/*", "application/dicom+json"),
        ("application/json", "application/json"),
        ("application/json, application/dicom+json;q=0.5", "application/json"),
        ("application/json;q=0.5, application/dicom+json", "application/dicom+json"),
        ("image/png, application/json;q=0.1", "application/json"),
    ],
)
def test_ps3_18_8_7_json_answers_the_type_the_client_accepted(
    header: str | None, expected: str
) -> None:
    assert accept_json(header) == expected


def test_ps3_18_8_7_json_refusal_names_both_types() -> None:
    with pytest.raises(NotAcceptableError, match="application/dicom\\+json or application/json"):
        accept_json("image/png")
