"""Pillow: JPEG and JPEG 2000 decoding through pydicom's plugin, JPEG baseline encoding."""

from __future__ import annotations

import io

import numpy as np

from dicomweb_server.codecs.pydicom_plugins import plugin_decoders
from dicomweb_server.codecs.registry import CodecError, Decoder, Encoded, Encoder, FrameInfo, Pixels

__all__ = ["decoders", "encoders"]

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
_QUALITY = 90
_DECODES = (
    JPEG_BASELINE,
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
)


def _jpeg_baseline(pixels: Pixels, info: FrameInfo) -> Encoded:
    from PIL import Image

    colour = pixels.photometric_interpretation == "RGB"
    if pixels.photometric_interpretation not in ("MONOCHROME1", "MONOCHROME2", "RGB"):
        raise CodecError(f"JPEG baseline cannot encode {pixels.photometric_interpretation}")
    if info.bits_stored > 8 or info.pixel_representation:
        raise CodecError("JPEG baseline holds unsigned 8-bit samples only")
    image = Image.fromarray(np.ascontiguousarray(pixels.array, dtype=np.uint8))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=_QUALITY, subsampling=0)
    return Encoded(out.getvalue(), "YBR_FULL" if colour else pixels.photometric_interpretation)


def decoders() -> dict[str, Decoder]:
    import PIL  # noqa: F401 - only to fail the import when Pillow is absent

    return plugin_decoders("pillow", _DECODES)


def encoders() -> dict[str, Encoder]:
    import PIL  # noqa: F401

    return {JPEG_BASELINE: _jpeg_baseline}
