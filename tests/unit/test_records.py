from __future__ import annotations

import orjson
import pytest

from dicomweb_server.domain.records import (
    BulkSpan,
    FrameSpans,
    PixelLayout,
    bulk_to_json,
    pixel_from_json,
    pixel_to_json,
)


def test_pixel_layout_round_trip() -> None:
    layout = PixelLayout(
        True, 100, 0xFFFFFFFF, (FrameSpans(((116, 10), (134, 4))), FrameSpans(((146, 8),)))
    )
    assert pixel_from_json(pixel_to_json(layout)) == layout
    assert pixel_to_json(None) is None and pixel_from_json(None) is None


def test_bulk_spans_serialise_by_path() -> None:
    data = bulk_to_json((BulkSpan("54000100/0/54001010", 10, 20),))
    assert orjson.loads(data) == {"54000100/0/54001010": [10, 20]}


def test_issue23_frame_table_builds_frames_on_demand() -> None:
    from dicomweb_server.domain.records import FrameSpans, FrameTable

    regular = FrameTable.regular(100, 10, 100_000)
    assert len(regular) == 100_000 and regular.stride == (100, 10, 100_000)
    assert regular[0] == FrameSpans(((100, 10),))
    assert regular[-1] == FrameSpans(((100 + 99_999 * 10, 10),))
    assert regular[1:3] == (FrameSpans(((110, 10),)), FrameSpans(((120, 10),)))
    with pytest.raises(IndexError):
        regular[100_000]
    raw = FrameTable(raw=[[[1, 2], [5, 6]], [[9, 3]]])
    assert raw.stride is None and len(raw) == 2
    assert list(raw) == [FrameSpans(((1, 2), (5, 6))), FrameSpans(((9, 3),))]
    assert raw == (FrameSpans(((1, 2), (5, 6))), FrameSpans(((9, 3),)))
    assert raw != (FrameSpans(((9, 3),)),)
    assert raw.__eq__(3) is NotImplemented
    assert hash(raw) == hash(FrameTable(raw=[[[1, 2], [5, 6]], [[9, 3]]]))
    assert hash(FrameTable(raw=[])) == hash(FrameTable(raw=[]))
    assert repr(regular) == "FrameTable(100000 frames)"
    layout = PixelLayout(False, 100, 1_000_000, regular)
    encoded = pixel_to_json(layout)
    assert encoded is not None and len(encoded) < 100  # three numbers, not 100,000 spans
    assert pixel_from_json(encoded) == layout
