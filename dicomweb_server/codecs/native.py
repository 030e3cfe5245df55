"""Native (uncompressed little-endian) frames: bytes ↔ arrays (PS3.5 8.1.1)."""

from __future__ import annotations

import numpy as np

from dicomweb_server.codecs.registry import (
    NATIVE_SYNTAXES,
    CodecError,
    Decoder,
    Encoded,
    Encoder,
    FrameInfo,
    Pixels,
)

__all__ = ["decode", "decoders", "encode", "encoders"]


def decode(data: bytes, info: FrameInfo) -> Pixels:
    """A native frame as an array, colour-by-pixel whatever the stored planar configuration."""
    if info.photometric_interpretation in ("YBR_FULL_422", "YBR_PARTIAL_422"):
        raise CodecError("native subsampled YBR frames cannot be transcoded")
    samples = info.samples_per_pixel
    count = info.rows * info.columns * samples
    if len(data) < count * info.dtype.itemsize:
        raise CodecError("native frame is shorter than Rows × Columns × Samples")
    array = np.frombuffer(data, dtype=info.dtype, count=count)
    if samples == 1:
        array = array.reshape(info.rows, info.columns)
    elif info.planar_configuration == 1:
        array = array.reshape(samples, info.rows, info.columns).transpose(1, 2, 0)
    else:
        array = array.reshape(info.rows, info.columns, samples)
    return Pixels(array, info.photometric_interpretation)


def encode(pixels: Pixels, info: FrameInfo) -> Encoded:
    """Little-endian, colour-by-pixel bytes (Planar Configuration 0)."""
    array = np.ascontiguousarray(pixels.array, dtype=info.dtype)
    return Encoded(array.tobytes(), pixels.photometric_interpretation)


def decoders() -> dict[str, Decoder]:
    return dict.fromkeys(NATIVE_SYNTAXES, decode)


def encoders() -> dict[str, Encoder]:
    return dict.fromkeys(NATIVE_SYNTAXES, encode)
