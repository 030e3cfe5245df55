"""Transfer syntax → the libraries that decode and encode its frames, imported lazily.

Each library module (`native`, `pylibjpeg`, `pyjpegls`, `imagecodecs`, `pillow`) exposes
`decoders()` and `encoders()`: dicts from transfer syntax UID to a function. A module whose
library is missing returns empty dicts, so a missing codec disables its syntaxes only.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

__all__ = [
    "DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN",
    "EXPLICIT_VR_BIG_ENDIAN",
    "EXPLICIT_VR_LITTLE_ENDIAN",
    "IMPLICIT_VR_LITTLE_ENDIAN",
    "LOSSY_SYNTAXES",
    "NATIVE_SYNTAXES",
    "CodecError",
    "Decoder",
    "Encoded",
    "Encoder",
    "FrameInfo",
    "Pixels",
    "can_decode",
    "can_encode",
    "decoder_for",
    "encoder_for",
    "is_available",
    "lossy_method",
]

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"  # retired (PS3.5 A.3), still stored and served
# Syntaxes whose Pixel Data is native little-endian (PS3.5 A.1, A.2, A.5).
NATIVE_SYNTAXES = frozenset(
    {IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN, DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN}
)
# Syntaxes that are (or may be) lossy, with the PS3.3 C.7.6.1.1.5 Lossy Image Compression
# Method each one implies. JPEG 2000 (.91) and HTJ2K (.203) may hold lossless data too, but
# the syntax does not say so: we treat them as lossy.
_LOSSY_METHODS = {
    "1.2.840.10008.1.2.4.50": "ISO_10918_1",
    "1.2.840.10008.1.2.4.51": "ISO_10918_1",
    "1.2.840.10008.1.2.4.81": "ISO_14495_1",
    "1.2.840.10008.1.2.4.91": "ISO_15444_1",
    "1.2.840.10008.1.2.4.203": "ISO_15444_15",
}
# Video (PS3.5 8.2.5-8.2.11) is always lossy: served as stored unless asked otherwise.
_LOSSY_METHODS.update(
    {f"1.2.840.10008.1.2.4.{n}{suffix}": "ISO_13818_2" for n in (100, 101) for suffix in ("", ".1")}
)
_LOSSY_METHODS.update(
    {
        f"1.2.840.10008.1.2.4.{n}{suffix}": "ISO_14496_10"
        for n in range(102, 107)
        for suffix in ("", ".1")
    }
)
_LOSSY_METHODS.update(
    {"1.2.840.10008.1.2.4.107": "ISO_23008_2", "1.2.840.10008.1.2.4.108": "ISO_23008_2"}
)
LOSSY_SYNTAXES = frozenset(_LOSSY_METHODS)

# Library modules in order of preference; the first one offering a syntax wins. Decoding
# prefers imagecodecs (libjpeg-turbo) for 8-bit JPEG, which is much faster; it falls back
# to pylibjpeg itself for the frames it does not take.
_MODULES = ("native", "pylibjpeg", "pyjpegls", "imagecodecs", "pillow")
_DECODER_MODULES = ("native", "imagecodecs", "pylibjpeg", "pyjpegls", "pillow")


class CodecError(Exception):
    """A frame cannot be decoded or encoded (missing codec, unsupported bit depth, bad data)."""


@dataclass(frozen=True, slots=True)
class FrameInfo:
    """The Image Pixel module attributes (PS3.3 C.7.6.3) a coder needs for one frame."""

    rows: int
    columns: int
    samples_per_pixel: int = 1
    bits_allocated: int = 8
    bits_stored: int = 8
    pixel_representation: int = 0
    photometric_interpretation: str = "MONOCHROME2"
    planar_configuration: int = 0

    @property
    def frame_length(self) -> int:
        """Bytes of one native frame."""
        return self.rows * self.columns * self.samples_per_pixel * self.bits_allocated // 8

    @property
    def dtype(self) -> np.dtype[Any]:
        """The little-endian numpy type of one native sample."""
        if self.bits_allocated not in (8, 16, 32):
            raise CodecError(f"BitsAllocated {self.bits_allocated} cannot be transcoded")
        kind = "i" if self.pixel_representation else "u"
        return np.dtype(f"<{kind}{self.bits_allocated // 8}")

    def with_photometric(self, photometric: str) -> FrameInfo:
        return replace(self, photometric_interpretation=photometric, planar_configuration=0)

    @classmethod
    def from_json(cls, model: dict[str, Any]) -> FrameInfo | None:
        """From a DICOM JSON object; None when the instance has no image attributes."""

        def value(tag: str, default: Any = None) -> Any:
            element = model.get(tag) or {}
            values = element.get("Value") or [default]
            return values[0]

        rows, columns = value("00280010"), value("00280011")
        if not rows or not columns:
            return None
        return cls(
            rows=int(rows),
            columns=int(columns),
            samples_per_pixel=int(value("00280002", 1)),
            bits_allocated=int(value("00280100", 8)),
            bits_stored=int(value("00280101", value("00280100", 8))),
            pixel_representation=int(value("00280103", 0)),
            photometric_interpretation=str(value("00280004", "MONOCHROME2")).strip(),
            planar_configuration=int(value("00280006", 0)),
        )


@dataclass(frozen=True, slots=True)
class Pixels:
    """One decoded frame: (rows, columns) or (rows, columns, samples), and its colour space."""

    array: np.ndarray[Any, Any]
    photometric_interpretation: str


@dataclass(frozen=True, slots=True)
class Encoded:
    """One encoded frame and the Photometric Interpretation its bytes carry."""

    data: bytes
    photometric_interpretation: str


Decoder = Callable[[bytes, FrameInfo], Pixels]
Encoder = Callable[[Pixels, FrameInfo], Encoded]

_lock = threading.Lock()
_tables: dict[str, tuple[dict[str, Decoder], dict[str, Encoder]]] = {}


def _table(module: str) -> tuple[dict[str, Decoder], dict[str, Encoder]]:
    """A library module's coders, imported once; a failing import offers nothing."""
    with _lock:
        found = _tables.get(module)
        if found is None:
            try:
                loaded = importlib.import_module(f"dicomweb_server.codecs.{module}")
                found = (dict(loaded.decoders()), dict(loaded.encoders()))
            except ImportError:
                found = ({}, {})
            _tables[module] = found
        return found


def decoder_for(uid: str) -> Decoder | None:
    """The preferred decoder of `uid`, or None when no installed library decodes it."""
    for module in _DECODER_MODULES:
        decoder = _table(module)[0].get(uid)
        if decoder is not None:
            return decoder
    return None


def encoder_for(uid: str) -> Encoder | None:
    """The encoders of `uid` in order of preference, each tried when the one before it
    refuses the frame (a bit depth or image size it cannot take); None when there is none."""
    chain = [e for module in _MODULES if (e := _table(module)[1].get(uid)) is not None]
    if not chain:
        return None
    if len(chain) == 1:
        return chain[0]

    def encode(pixels: Pixels, info: FrameInfo) -> Encoded:
        reasons = []
        for encoder in chain:
            try:
                return encoder(pixels, info)
            except CodecError as exc:
                reasons.append(str(exc))
        raise CodecError("; ".join(reasons))

    return encode


def can_decode(uid: str) -> bool:
    return decoder_for(uid) is not None


def can_encode(uid: str) -> bool:
    return encoder_for(uid) is not None


def is_available(uid: str) -> bool:
    """True when frames of `uid` can be both decoded and encoded here."""
    return can_decode(uid) and can_encode(uid)


def lossy_method(uid: str) -> str | None:
    """The Lossy Image Compression Method a syntax implies, or None for lossless ones."""
    return _LOSSY_METHODS.get(uid)
