from __future__ import annotations

import orjson

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
