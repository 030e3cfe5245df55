"""pyjpegls (CharLS): JPEG-LS lossless and near-lossless (PS3.5 A.4.3)."""

from __future__ import annotations

from dicomweb_server.codecs.pydicom_plugins import plugin_decoders, plugin_encoders
from dicomweb_server.codecs.registry import Decoder, Encoder

__all__ = ["NEAR_LOSSLESS_ERROR", "decoders", "encoders"]

# Near-lossless JPEG-LS: every sample within this many units of the original (the NEAR value).
NEAR_LOSSLESS_ERROR = 2
_SYNTAXES = ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81")


def decoders() -> dict[str, Decoder]:
    import jpeg_ls  # noqa: F401 - only to fail the import when pyjpegls is absent

    return plugin_decoders("pyjpegls", _SYNTAXES)


def encoders() -> dict[str, Encoder]:
    import jpeg_ls  # noqa: F401

    return plugin_encoders(
        "pyjpegls", _SYNTAXES, {"1.2.840.10008.1.2.4.81": {"jls_error": NEAR_LOSSLESS_ERROR}}
    )
