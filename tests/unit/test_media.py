"""Issue 15: choosing a single body's media type (services/media.py) and byte ranges
(web/media.py, RFC 9110 14.1.2)."""

from __future__ import annotations

import pytest

from dicomweb_server.services.media import choose_media
from dicomweb_server.web.media import byte_range, if_none_match

VIDEO = ["video/mp4", "video/H265"]


@pytest.mark.parametrize(
    ("wanted", "chosen"),
    [
        (["*/*"], "video/mp4"),
        (["video/*"], "video/mp4"),
        (["video/h265"], "video/H265"),
        (["image/jpeg", "video/H265", "video/mp4"], "video/H265"),
        (["image/*", "application/pdf"], None),
        ([], None),
    ],
)
def test_issue15_first_acceptable_offer(wanted: list[str], chosen: str | None) -> None:
    assert choose_media(VIDEO, wanted) == chosen


@pytest.mark.parametrize(
    ("header", "selected"),
    [
        ("bytes=0-", (0, 1000)),
        ("bytes=0-0", (0, 1)),
        ("bytes=100-199", (100, 100)),
        ("bytes=900-5000", (900, 100)),
        ("bytes=-50", (950, 50)),
        ("bytes=-5000", (0, 1000)),
        ("bytes=1000-", None),
        ("bytes=200-100", None),
        ("bytes=-0", None),
        ("bytes=0-1,5-9", None),
        ("items=0-1", None),
    ],
)
def test_issue15_byte_ranges(header: str, selected: tuple[int, int] | None) -> None:
    assert byte_range(header, 1000) == selected


def test_issue15_suffix_range_of_an_empty_body_is_unsatisfiable() -> None:
    assert byte_range("bytes=-10", 0) is None
    assert byte_range("bytes=0-", 0) is None


def test_if_none_match_compares_weakly() -> None:
    assert if_none_match('W/"a", "b"', '"b"')
    assert if_none_match("*", '"b"')
    assert not if_none_match('"a"', '"b"')
    assert not if_none_match(None, '"b"')
