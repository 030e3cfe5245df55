"""Frame coders through pydicom's pixel decoders and encoders, restricted to one plugin.

pydicom (3.x) knows each syntax's colour and sign conventions; the plugin name picks the
library doing the work (`pylibjpeg`, `pyjpegls`, `pillow`). Shared by those modules.
"""

from __future__ import annotations

from typing import Any

from dicomweb_server.codecs.registry import CodecError, Decoder, Encoded, Encoder, FrameInfo, Pixels

__all__ = ["plugin_decoders", "plugin_encoders"]


def _options(info: FrameInfo) -> dict[str, Any]:
    return {
        "rows": info.rows,
        "columns": info.columns,
        "samples_per_pixel": info.samples_per_pixel,
        "bits_allocated": info.bits_allocated,
        "bits_stored": info.bits_stored,
        "pixel_representation": info.pixel_representation,
        "photometric_interpretation": info.photometric_interpretation,
        "planar_configuration": info.planar_configuration,
        "number_of_frames": 1,
    }


def plugin_decoders(plugin: str, uids: tuple[str, ...]) -> dict[str, Decoder]:
    """Decoders of `uids` that pydicom's `plugin` offers here."""
    from pydicom.encaps import encapsulate
    from pydicom.pixels.decoders.base import get_decoder

    found: dict[str, Decoder] = {}
    for uid in uids:
        try:
            decoder = get_decoder(uid)
        except NotImplementedError:
            continue
        if plugin not in decoder.available_plugins:
            continue

        def decode(data: bytes, info: FrameInfo, decoder: Any = decoder) -> Pixels:
            try:
                array, meta = decoder.as_array(
                    encapsulate([data]), index=0, decoding_plugin=plugin, **_options(info)
                )
            except Exception as exc:  # plugins raise anything on corrupt data
                raise CodecError(f"cannot decode the frame: {str(exc)[:160]}") from exc
            return Pixels(array, str(meta.get("photometric_interpretation", "")))

        found[uid] = decode
    return found


def plugin_encoders(
    plugin: str, uids: tuple[str, ...], extra: dict[str, dict[str, Any]] | None = None
) -> dict[str, Encoder]:
    """Encoders of `uids` that pydicom's `plugin` offers here; `extra` adds options by UID."""
    from pydicom.pixels.encoders.base import get_encoder

    found: dict[str, Encoder] = {}
    for uid in uids:
        try:
            encoder = get_encoder(uid)
        except NotImplementedError:
            continue
        if encoder is None or plugin not in encoder.available_plugins:
            continue
        options = (extra or {}).get(uid, {})

        def encode(
            pixels: Pixels, info: FrameInfo, encoder: Any = encoder, options: Any = options
        ) -> Encoded:
            target = info.with_photometric(pixels.photometric_interpretation)
            try:
                data = encoder.encode(
                    pixels.array, encoding_plugin=plugin, **_options(target), **options
                )
            except Exception as exc:  # validation errors are ValueError, plugins vary
                raise CodecError(f"cannot encode the frame: {str(exc)[:160]}") from exc
            return Encoded(bytes(data), pixels.photometric_interpretation)

        found[uid] = encode
    return found
