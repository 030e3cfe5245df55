"""Issue 15: a document's thumbnail is a page icon, fitted to the viewport."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from dicomweb_server.codecs.document_icon import render_document_icon
from dicomweb_server.codecs.rendering import RenderOptions, Viewport


@pytest.mark.parametrize(
    ("media_type", "viewport", "size", "fmt"),
    [
        ("image/jpeg", None, (256, 256), "JPEG"),
        ("image/png", Viewport(64, 32), (32, 32), "PNG"),
        ("image/gif", Viewport(1000, 1000), (256, 256), "GIF"),
    ],
)
def test_issue15_icon_in_every_rendered_type(
    media_type: str, viewport: Viewport | None, size: tuple[int, int], fmt: str
) -> None:
    data = render_document_icon("PDF", RenderOptions(media_type=media_type, viewport=viewport))
    image = Image.open(io.BytesIO(data))
    assert (image.format, image.size) == (fmt, size)
    assert np.asarray(image.convert("L")).std() > 10  # not blank: viewers test for that
