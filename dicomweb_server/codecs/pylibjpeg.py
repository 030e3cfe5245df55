"""pylibjpeg and its plugins: JPEG (libjpeg), JPEG 2000 and HTJ2K (openjpeg), RLE (rle)."""

from __future__ import annotations

from dicomweb_server.codecs.pydicom_plugins import plugin_decoders, plugin_encoders
from dicomweb_server.codecs.registry import (
    CodecError,
    Decoder,
    Encoded,
    Encoder,
    FrameInfo,
    Pixels,
)

__all__ = ["J2K_LOSSY_RATIO", "decoders", "encoders"]

# Lossy JPEG 2000 compression ratio: about 45 dB PSNR on CT-like images.
J2K_LOSSY_RATIO = 10.0

_DECODES = (
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51",  # JPEG Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless (Process 14)
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
    "1.2.840.10008.1.2.5",  # RLE Lossless
)
_J2K = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91")
_MIN_J2K_SIZE = 32
_ENCODES = ("1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91")


def decoders() -> dict[str, Decoder]:
    import pylibjpeg  # noqa: F401 - only to fail the import when pylibjpeg is absent

    return plugin_decoders("pylibjpeg", _DECODES)


def _sized(encoder: Encoder) -> Encoder:
    """openjpeg (as pylibjpeg drives it) always asks for 6 resolutions, which an image under
    32 pixels a side cannot have; its failure path is not safe to take in worker threads,
    so such frames are refused here and left to the next encoder."""

    def encode(pixels: Pixels, info: FrameInfo) -> Encoded:
        if min(info.rows, info.columns) < _MIN_J2K_SIZE:
            raise CodecError(f"openjpeg needs {_MIN_J2K_SIZE} pixels a side or more")
        return encoder(pixels, info)

    return encode


def encoders() -> dict[str, Encoder]:
    import pylibjpeg  # noqa: F401

    found = plugin_encoders(
        "pylibjpeg", _ENCODES, {"1.2.840.10008.1.2.4.91": {"j2k_cr": [J2K_LOSSY_RATIO]}}
    )
    return {uid: _sized(e) if uid in _J2K else e for uid, e in found.items()}
