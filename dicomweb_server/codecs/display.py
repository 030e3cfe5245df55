"""Decoded pixels → 8-bit display values, for rendered resources and thumbnails.

The grayscale pipeline is PS3.4 N.2.1: stored values (masked to Bits Stored, sign-extended)
→ Modality LUT (rescale or LUT Sequence) → VOI LUT (a window: LINEAR, LINEAR_EXACT or
SIGMOID, PS3.3 C.11.2.1.2; or a VOI LUT Sequence) → MONOCHROME1 inversion → 8 bits. Colour
frames are converted to RGB (YBR_FULL, YBR_FULL_422, PALETTE COLOR through its LUTs).

Integer frames of up to 16 bits go through one lookup table built per frame, which keeps a
512×512 CT under a few milliseconds. Pixel work runs in row blocks, so its temporaries stay
a few megabytes whatever the frame size: the uint8 output is the only whole-frame array.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from dicomweb_server.codecs.presentation import ImageAttributes, Lut, Window
from dicomweb_server.codecs.registry import CodecError, FrameInfo

__all__ = ["grey_8bit", "palette_8bit", "rgb_8bit"]

_MAX_LUT_DOMAIN = 1 << 16  # integer frames up to 16 bits map through one table
_BLOCK_PIXELS = 1 << 18  # pixels per row block: each temporary stays a few megabytes


# -- grayscale ---------------------------------------------------------------------------------


def _stored_values(array: np.ndarray[Any, Any], info: FrameInfo) -> np.ndarray[Any, Any]:
    """Native data may carry bits above Bits Stored (overlays): mask, then sign-extend."""
    bits = info.bits_stored
    if array.dtype.kind not in "iu" or bits >= array.dtype.itemsize * 8 or bits <= 0:
        return array
    if info.pixel_representation:
        shift = array.dtype.itemsize * 8 - bits
        signed = array.astype(np.dtype(f"i{array.dtype.itemsize}"), copy=False)
        extended: np.ndarray[Any, Any] = (signed << shift) >> shift
        return extended
    masked: np.ndarray[Any, Any] = array & np.array((1 << bits) - 1, dtype=array.dtype)
    return masked


def _row_blocks(rows: int, columns: int) -> list[slice]:
    """Row slices of about _BLOCK_PIXELS pixels each, covering the frame."""
    step = max(1, _BLOCK_PIXELS // max(columns, 1))
    return [slice(top, min(top + step, rows)) for top in range(0, rows, step)]


def grey_8bit(
    array: np.ndarray[Any, Any],
    attrs: ImageAttributes,
    requested: Window | None,
    invert: bool,
) -> tuple[np.ndarray[Any, Any], Window | None]:
    """Monochrome pixels → 8-bit display values, and the window applied (if any)."""
    info = attrs.info
    blocks = _row_blocks(array.shape[0], array.shape[1])
    out = np.empty(array.shape, dtype=np.uint8)
    if array.dtype.kind in "iu" and array.dtype.itemsize <= 2:
        ranges = np.array([_min_max(_stored_values(array[rows], info)) for rows in blocks])
        low, high = int(ranges[:, 0].min()), int(ranges[:, 1].max())
        if high - low < _MAX_LUT_DOMAIN:
            # One table over the values present: the pipeline runs on at most 65536 numbers,
            # then each block is one lookup (whole-frame int64 indices cost 8 bytes a pixel).
            domain = np.arange(low, high + 1, dtype=np.int64)
            modality = _modality(domain, attrs)
            window = _window(attrs, requested, lambda: _min_max(modality))
            table = _to_8bit(modality, attrs, window, invert)
            for rows in blocks:
                index = _stored_values(array[rows], info).astype(np.intp)
                index -= low
                out[rows] = table[index]
            return out, window

    def modality_range() -> tuple[float, float]:
        ranges = np.array(
            [_min_max(_modality(_stored_values(array[rows], info), attrs)) for rows in blocks],
            dtype=np.float64,
        )
        return float(ranges[:, 0].min()), float(ranges[:, 1].max())  # NaN spreads as before

    window = _window(attrs, requested, modality_range)
    for rows in blocks:
        modality = _modality(_stored_values(array[rows], info), attrs)
        out[rows] = _to_8bit(modality, attrs, window, invert)
    return out, window


def _min_max(values: np.ndarray[Any, Any]) -> tuple[Any, Any]:
    return values.min(), values.max()


def _modality(values: np.ndarray[Any, Any], attrs: ImageAttributes) -> np.ndarray[Any, Any]:
    """Stored values → float64 modality values (Modality LUT, or rescale slope and intercept)."""
    if attrs.modality_lut is not None:
        return attrs.modality_lut.apply(values).astype(np.float64)
    scaled: np.ndarray[Any, Any] = (
        values.astype(np.float64) * attrs.rescale_slope + attrs.rescale_intercept
    )
    return scaled


def _window(
    attrs: ImageAttributes,
    requested: Window | None,
    modality_range: Callable[[], tuple[float, float]],
) -> Window | None:
    """The window to apply: asked, the data set's first, or (with no VOI LUT either) the
    frame's modality range; None when the VOI LUT Sequence applies instead."""
    window = requested
    if window is None and attrs.voi_lut is None and attrs.windows:
        window = attrs.windows[0]
    if window is None and attrs.voi_lut is None:
        low, high = (float(v) for v in modality_range())
        window = Window((low + high) / 2, max(high - low, 1.0), "LINEAR_EXACT")
    return window


def _to_8bit(
    modality: np.ndarray[Any, Any], attrs: ImageAttributes, window: Window | None, invert: bool
) -> np.ndarray[Any, Any]:
    """Modality values → uint8 through the window (or VOI LUT) and the polarity."""
    if window is not None:
        unit = _voi(modality, window)
    else:
        lut = attrs.voi_lut
        assert lut is not None  # _window gives None only when there is a VOI LUT
        unit = lut.apply(modality).astype(np.float64) / float((1 << lut.bits) - 1)
    if invert:
        unit = 1.0 - unit
    return np.clip(np.rint(unit * 255.0), 0, 255).astype(np.uint8)


def _voi(x: np.ndarray[Any, Any], window: Window) -> np.ndarray[Any, Any]:
    """PS3.3 C.11.2.1.2 (LINEAR), C.11.2.1.3.1 (SIGMOID), C.11.2.1.3.2 (LINEAR_EXACT) → [0, 1].

    A far or narrow window (`window=1e308,...`, a width of 1.0000001) overflows to ±inf,
    which saturates to 0 or 1 as the function does at its limits: not a warning for the log.
    """
    c, w = window.center, window.width
    with np.errstate(over="ignore"):
        if window.function == "SIGMOID":
            return 1.0 / (1.0 + np.exp(-4.0 * (x - c) / w))
        if window.function == "LINEAR_EXACT":
            return np.clip((x - c) / w + 0.5, 0.0, 1.0)
        if w <= 1:
            return (x > c - 0.5).astype(np.float64)
        return np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0.0, 1.0)


# -- colour ------------------------------------------------------------------------------------


def rgb_8bit(
    array: np.ndarray[Any, Any], photometric: str, info: FrameInfo
) -> np.ndarray[Any, Any]:
    """Three samples per pixel → 8-bit RGB, a block of rows at a time."""
    if photometric not in ("RGB", "", "YBR_FULL", "YBR_FULL_422"):
        raise CodecError(f"cannot render {photometric} colour pixels")
    if array.dtype == np.uint8 and info.bits_stored <= 8 and photometric in ("RGB", ""):
        return np.ascontiguousarray(array)
    out = np.empty((array.shape[0], array.shape[1], 3), dtype=np.uint8)
    for rows in _row_blocks(array.shape[0], array.shape[1]):
        out[rows] = _rgb_block(array[rows], photometric, info)
    return out


def _rgb_block(
    array: np.ndarray[Any, Any], photometric: str, info: FrameInfo
) -> np.ndarray[Any, Any]:
    """Three samples per pixel → 8-bit RGB (YBR_FULL converted as in PS3.3 C.7.6.3.1.2)."""
    if array.dtype != np.uint8 or info.bits_stored > 8:
        maximum = float((1 << max(info.bits_stored, 1)) - 1)
        array = np.clip(np.rint(array.astype(np.float64) * (255.0 / maximum)), 0, 255)
        array = array.astype(np.uint8)
    if photometric in ("YBR_FULL", "YBR_FULL_422"):
        y, cb, cr = (array[:, :, i].astype(np.float32) for i in range(3))
        cb -= 128.0
        cr -= 128.0
        rgb = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1)
        converted: np.ndarray[Any, Any] = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
        return converted
    return array


def palette_8bit(
    array: np.ndarray[Any, Any], info: FrameInfo, palette: tuple[Lut, Lut, Lut]
) -> np.ndarray[Any, Any]:
    """PALETTE COLOR indices → 8-bit RGB through the red, green and blue LUTs."""
    out = np.empty((array.shape[0], array.shape[1], 3), dtype=np.uint8)
    for rows in _row_blocks(array.shape[0], array.shape[1]):
        values = _stored_values(array[rows], info)
        for channel, lut in enumerate(palette):
            out[rows, :, channel] = _lut_to_8bit(lut, lut.apply(values))
    return out


def _lut_to_8bit(lut: Lut, values: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    if lut.bits > 8:
        return (values.astype(np.uint32) >> (lut.bits - 8)).astype(np.uint8)
    return values.astype(np.uint8)
