"""Frames → presentation images for rendered and thumbnail resources (PS3.18 8.3.5, 9.4).

Decoded frames become 8-bit display values (`display`: the PS3.4 N.2.1 grayscale pipeline,
colour to RGB), then are cropped and scaled to the viewport, annotated and encoded as
JPEG, PNG or GIF.

Synchronous and CPU-bound: callers run `render` in the codec pool. A budget on decoded and
output pixels (`check_render_budget`) refuses a rendering before any frame is decoded, and
each frame is presented as soon as it is decoded.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dicomweb_server.codecs.decode_guards import MAX_DECODED_FRAME_BYTES
from dicomweb_server.codecs.display import grey_8bit, palette_8bit, rgb_8bit
from dicomweb_server.codecs.presentation import (
    WINDOW_FUNCTIONS,
    ImageAttributes,
    Lut,
    Window,
    bulk_paths,
)
from dicomweb_server.codecs.registry import (
    NATIVE_SYNTAXES,
    CodecError,
    FrameInfo,
    Pixels,
)

__all__ = [
    "ANNOTATIONS",
    "MAX_RENDER_PIXELS",
    "RENDERED_MEDIA_TYPES",
    "WINDOW_FUNCTIONS",
    "ImageAttributes",
    "Lut",
    "RenderBudgetError",
    "RenderOptions",
    "RenderParameterError",
    "Viewport",
    "Window",
    "bulk_paths",
    "check_render_budget",
    "decode_for_rendering",
    "encode_images",
    "present",
    "render",
    "render_pixel_count",
    "render_pixels",
]

RENDERED_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif")
ANNOTATIONS = ("patient", "technique")
DEFAULT_QUALITY = 90  # JPEG quality when none is asked (PS3.18 8.3.5.1.2 leaves it to us)
_PNG_COMPRESS_LEVEL = 3  # zlib level: level 6 doubles the time for a few percent in size
_GIF_FRAME_MS = 100  # animated GIF frame duration when the instance has no Frame Time
# Default pixels one rendering may decode (frames × Rows × Columns) and, separately, output
# (frames × the fitted viewport); Settings: DICOMWEB_MAX_RENDER_PIXELS. One 16384x16384
# frame fits; 256 GIF frames at 4096x4096 (12.8 GB and two minutes, measured) do not.
MAX_RENDER_PIXELS = 1 << 28


class RenderParameterError(CodecError):
    """A request parameter does not fit this image (say, a viewport region outside it)."""


class RenderBudgetError(CodecError):
    """A rendering would decode or output more pixels than the configured budget."""


@dataclass(frozen=True, slots=True)
class Viewport:
    """PS3.18 8.3.5.1.3: the output box, and optionally the source region to show in it.

    `region` is (sx, sy, sw, sh) in source pixels; a negative sw or sh flips that axis.
    """

    width: int
    height: int
    region: tuple[int, int, int | None, int | None] | None = None


@dataclass(frozen=True, slots=True)
class RenderOptions:
    """What a rendered or thumbnail request asks for (PS3.18 8.3.5.1)."""

    media_type: str = "image/jpeg"
    window: Window | None = None
    viewport: Viewport | None = None
    quality: int | None = None
    annotations: tuple[str, ...] = ()
    upscale: bool = True  # thumbnails only ever shrink

    @property
    def token(self) -> str:
        """A stable text form, for cache keys and entity tags."""
        window = self.window
        viewport = self.viewport
        return "|".join(
            [
                self.media_type,
                f"{window.center:g},{window.width:g},{window.function}" if window else "",
                f"{viewport.width},{viewport.height},{viewport.region}" if viewport else "",
                str(self.quality or ""),
                ",".join(self.annotations),
                "up" if self.upscale else "down",
            ]
        )


# -- the pipeline ------------------------------------------------------------------------------


def render(
    frames: Sequence[bytes],
    syntax: str,
    attrs: ImageAttributes,
    options: RenderOptions,
    max_decoded_bytes: int = MAX_DECODED_FRAME_BYTES,
    max_render_pixels: int = MAX_RENDER_PIXELS,
) -> bytes:
    """Stored frames (native bytes or a frame's fragments joined) → one encoded image.

    Several frames make an animated GIF; the caller asks for one frame otherwise. Each frame
    is presented as soon as it is decoded, so one decoded frame is held at a time.
    """
    check_render_budget(len(frames), attrs.info, options, max_render_pixels)
    images = [
        present(decode_for_rendering(data, syntax, attrs.info, max_decoded_bytes), attrs, options)
        for data in frames
    ]
    return encode_images(images, attrs, options)


def check_render_budget(
    frame_count: int,
    info: FrameInfo,
    options: RenderOptions,
    max_render_pixels: int = MAX_RENDER_PIXELS,
) -> None:
    """Refuse, before any frame is read or decoded, a rendering whose decoded pixels (frames
    × Rows × Columns) or output pixels (frames × the fitted viewport) exceed the budget."""
    decoded, output, (width, height) = _pixel_counts(frame_count, info, options)
    if decoded > max_render_pixels:
        raise RenderBudgetError(
            f"rendering {frame_count} frame(s) of {info.columns}x{info.rows} decodes"
            f" {decoded} pixels, over the {max_render_pixels}-pixel limit: ask for fewer frames"
        )
    if output > max_render_pixels:
        raise RenderBudgetError(
            f"rendering {frame_count} frame(s) at {width}x{height} outputs {output} pixels,"
            f" over the {max_render_pixels}-pixel limit: ask for a smaller viewport or fewer"
            " frames"
        )


def render_pixel_count(frame_count: int, info: FrameInfo, options: RenderOptions) -> int:
    """The pixels a rendering holds at its peak: the larger of those it decodes and outputs
    (what the budget of renderings in flight is counted in)."""
    decoded, output, _ = _pixel_counts(frame_count, info, options)
    return max(decoded, output)


def _pixel_counts(
    frame_count: int, info: FrameInfo, options: RenderOptions
) -> tuple[int, int, tuple[int, int]]:
    """Decoded pixels, output pixels and the output size of one frame."""
    width, height = info.columns, info.rows
    if options.viewport is not None:
        _, (width, height), _ = _placement(width, height, options.viewport, options.upscale)
    return frame_count * info.rows * info.columns, frame_count * width * height, (width, height)


def render_pixels(
    pixels: Sequence[Pixels], attrs: ImageAttributes, options: RenderOptions
) -> bytes:
    """Decoded frames → one encoded image (several: an animated GIF)."""
    return encode_images([present(p, attrs, options) for p in pixels], attrs, options)


def decode_for_rendering(
    data: bytes, syntax: str, info: FrameInfo, max_decoded_bytes: int = MAX_DECODED_FRAME_BYTES
) -> Pixels:
    """One stored frame → pixels, through the codec registry (native YBR_FULL_422 here)."""
    if syntax in NATIVE_SYNTAXES and info.photometric_interpretation == "YBR_FULL_422":
        return _native_ybr_422(data, info)
    from dicomweb_server.codecs.transcode import decode_frame

    return decode_frame(data, syntax, info, max_decoded_bytes)


def present(pixels: Pixels, attrs: ImageAttributes, options: RenderOptions) -> Any:
    """Pixels → an 8-bit PIL image (L or RGB), windowed, cropped, scaled and annotated."""
    from PIL import Image

    array = pixels.array
    photometric = pixels.photometric_interpretation or attrs.info.photometric_interpretation
    window_used: Window | None = None
    if photometric == "PALETTE COLOR" and attrs.palette is not None:
        image = Image.fromarray(palette_8bit(array, attrs.info, attrs.palette), "RGB")
    elif array.ndim == 3 and array.shape[2] >= 3:
        image = Image.fromarray(rgb_8bit(array[:, :, :3], photometric, attrs.info), "RGB")
    elif array.ndim == 2:
        grey, window_used = grey_8bit(array, attrs, options.window, photometric == "MONOCHROME1")
        image = Image.fromarray(grey, "L")
    else:
        raise CodecError(f"cannot render {photometric} pixels of shape {array.shape}")
    image = _fit(image, options.viewport, options.upscale)
    if options.annotations:
        image = _annotate(image, attrs, options.annotations, window_used)
    return image


def encode_images(images: Sequence[Any], attrs: ImageAttributes, options: RenderOptions) -> bytes:
    """PIL images → the bytes of one JPEG, PNG or (possibly animated) GIF."""
    out = io.BytesIO()
    media_type = options.media_type
    first = images[0]
    if media_type == "image/jpeg":
        first.save(out, format="JPEG", quality=options.quality or DEFAULT_QUALITY)
    elif media_type == "image/png":
        first.save(out, format="PNG", compress_level=_PNG_COMPRESS_LEVEL)
    elif media_type == "image/gif":
        frames = [_gif_ready(image) for image in images]
        if len(frames) == 1:
            frames[0].save(out, format="GIF")
        else:
            duration = round(attrs.frame_time_ms or _GIF_FRAME_MS)
            frames[0].save(
                out,
                format="GIF",
                save_all=True,
                append_images=frames[1:],
                duration=duration,
                loop=0,
            )
    else:
        raise CodecError(f"{media_type} is not a rendered media type")
    return out.getvalue()


# -- decoding ----------------------------------------------------------------------------------


def _native_ybr_422(data: bytes, info: FrameInfo) -> Pixels:
    """Native YBR_FULL_422 (PS3.3 C.7.6.3.1.2): Y Y Cb Cr per pair of pixels → full YCbCr."""
    if info.bits_allocated != 8 or info.columns % 2:
        raise CodecError("native YBR_FULL_422 is rendered for 8 bits and even columns only")
    count = info.rows * info.columns * 2
    if len(data) < count:
        raise CodecError("native frame is shorter than its Image Pixel attributes say")
    pairs = np.frombuffer(data, dtype=np.uint8, count=count).reshape(
        info.rows, info.columns // 2, 4
    )
    out = np.empty((info.rows, info.columns, 3), dtype=np.uint8)
    out[:, 0::2, 0] = pairs[:, :, 0]
    out[:, 1::2, 0] = pairs[:, :, 1]
    for channel, index in ((1, 2), (2, 3)):
        out[:, 0::2, channel] = pairs[:, :, index]
        out[:, 1::2, channel] = pairs[:, :, index]
    return Pixels(out, "YBR_FULL_422")


# -- geometry and annotation -------------------------------------------------------------------


def _placement(
    width: int, height: int, viewport: Viewport, upscale: bool
) -> tuple[tuple[int, int, int, int] | None, tuple[int, int], tuple[bool, bool]]:
    """Where a width×height image lands in a viewport: the crop box of its source region (or
    None), the output size with the aspect ratio kept, and the flips (PS3.18 8.3.5.1.3)."""
    box = None
    flip_x = flip_y = False
    if viewport.region is not None:
        sx, sy, sw, sh = viewport.region
        sw = width - sx if sw is None else sw
        sh = height - sy if sh is None else sh
        flip_x, flip_y = sw < 0, sh < 0
        left, right = sorted((sx, sx + sw))
        top, bottom = sorted((sy, sy + sh))
        box = (max(left, 0), max(top, 0), min(right, width), min(bottom, height))
        if box[2] <= box[0] or box[3] <= box[1]:
            raise RenderParameterError(
                f"the viewport region ({sx},{sy},{sw},{sh}) lies outside the {width}x{height} image"
            )
        width, height = box[2] - box[0], box[3] - box[1]
    scale = min(viewport.width / width, viewport.height / height)
    if not upscale:
        scale = min(scale, 1.0)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return box, size, (flip_x, flip_y)


def _fit(image: Any, viewport: Viewport | None, upscale: bool) -> Any:
    """Crop to the viewport's source region (flipping on negative sizes), then scale to fit
    its box with the aspect ratio kept (PS3.18 8.3.5.1.3)."""
    from PIL import Image

    if viewport is None:
        return image
    box, size, (flip_x, flip_y) = _placement(image.width, image.height, viewport, upscale)
    if box is not None:
        image = image.crop(box)
    if size != image.size:
        image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    if flip_x:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if flip_y:
        image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    return image


def _annotate(
    image: Any, attrs: ImageAttributes, which: tuple[str, ...], window: Window | None
) -> Any:
    """Burn in patient lines (top left) and technique lines (bottom left), outlined."""
    from PIL import ImageDraw, ImageFont

    size = max(10, min(image.height, image.width) // 24)
    try:
        font: Any = ImageFont.load_default(size=size)
    except (OSError, TypeError, ValueError):  # Pillow built without FreeType
        font = ImageFont.load_default()
    draw = ImageDraw.Draw(image)
    white = 255 if image.mode == "L" else (255, 255, 255)
    black = 0 if image.mode == "L" else (0, 0, 0)
    margin, step = max(2, size // 3), size + max(2, size // 4)
    if "patient" in which:
        for n, line in enumerate(attrs.patient):
            draw.text(
                (margin, margin + n * step),
                line,
                fill=white,
                font=font,
                stroke_width=1,
                stroke_fill=black,
            )
    if "technique" in which:
        lines = list(attrs.technique)
        if window is not None:
            lines.append(f"W {window.width:g} L {window.center:g}")
        for n, line in enumerate(reversed(lines)):
            draw.text(
                (margin, image.height - margin - (n + 1) * step),
                line,
                fill=white,
                font=font,
                stroke_width=1,
                stroke_fill=black,
            )
    return image


def _gif_ready(image: Any) -> Any:
    """GIF holds 256 colours: greyscale maps exactly, colour is quantised."""
    if image.mode == "L":
        return image
    return image.quantize(256)
