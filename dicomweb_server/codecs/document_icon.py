"""A generic page icon for thumbnails of encapsulated documents (PDF, CDA, STL, OBJ, MTL).

A viewer's study list wants an image for every series; a document has no pixels, and
rasterising PDF would need a renderer we do not ship. So a document's thumbnail is a page
with a folded corner and the document's kind written on it, drawn with Pillow.
"""

from __future__ import annotations

import io
from typing import Any

from dicomweb_server.codecs.rendering import DEFAULT_QUALITY, RenderOptions, Viewport

__all__ = ["render_document_icon"]

_SIZE = 256  # the icon is drawn at this size, then fitted to the viewport


def render_document_icon(label: str, options: RenderOptions) -> bytes:
    """The icon, labelled `label` (a few capitals), as options.media_type, at most the viewport
    in size (never enlarged past the drawing)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (_SIZE, _SIZE), (32, 36, 44))
    draw = ImageDraw.Draw(image)
    left, top, right, bottom, fold = 56, 24, 200, 232, 40
    page = [(left, top), (right - fold, top), (right, top + fold), (right, bottom), (left, bottom)]
    draw.polygon(page, fill=(240, 240, 236))
    draw.polygon(
        [(right - fold, top), (right - fold, top + fold), (right, top + fold)], fill=(190, 190, 184)
    )
    for n in range(6):  # lines of text
        y = top + fold + 18 + n * 16
        draw.rectangle((left + 16, y, right - 16 - (n % 3) * 18, y + 5), fill=(176, 178, 184))
    draw.rectangle((left - 14, 156, right - 10, 204), fill=(196, 48, 43))
    font = _font(30)
    text = label[:5].upper()
    width = draw.textlength(text, font=font)
    draw.text(((left - 14 + right - 10 - width) / 2, 162), text, fill=(255, 255, 255), font=font)
    viewport = options.viewport or Viewport(_SIZE, _SIZE)
    scale = min(viewport.width / _SIZE, viewport.height / _SIZE, 1.0)
    if scale < 1.0:
        size = (max(1, round(_SIZE * scale)), max(1, round(_SIZE * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if options.media_type == "image/png":
        image.save(out, format="PNG")
    elif options.media_type == "image/gif":
        image.quantize(64).save(out, format="GIF")
    else:
        image.save(out, format="JPEG", quality=options.quality or DEFAULT_QUALITY)
    return out.getvalue()


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (OSError, TypeError, ValueError):  # Pillow built without FreeType
        return ImageFont.load_default()
