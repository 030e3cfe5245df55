"""An image's presentation attributes from DICOM JSON: LUTs, windows, palettes, annotations.

What rendering needs besides the Image Pixel module (PS3.3 C.11.1 Modality LUT, C.11.2 VOI
LUT, C.7.6.3.1.5 palettes, C.7.6.16 shared functional groups), read from the metadata stored
at ingest; LUT data held behind BulkDataURIs is passed in by the caller.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dicomweb_server.codecs.registry import CodecError, FrameInfo

__all__ = ["WINDOW_FUNCTIONS", "ImageAttributes", "Lut", "Window", "bulk_paths"]

WINDOW_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")

# DICOM JSON tags (PS3.6) read here.
_ROWS, _COLUMNS = "00280010", "00280011"
_NUMBER_OF_FRAMES = "00280008"
_RESCALE_INTERCEPT, _RESCALE_SLOPE = "00281052", "00281053"
_WINDOW_CENTER, _WINDOW_WIDTH, _VOI_FUNCTION = "00281050", "00281051", "00281056"
_MODALITY_LUT_SEQUENCE, _VOI_LUT_SEQUENCE = "00283000", "00283010"
_LUT_DESCRIPTOR, _LUT_DATA = "00283002", "00283006"
_PALETTE_DESCRIPTORS = ("00281101", "00281102", "00281103")
_PALETTE_DATA = ("00281201", "00281202", "00281203")
_SEGMENTED_PALETTE = ("00281221", "00281222", "00281223")
_SHARED_GROUPS = "52009229"
_PIXEL_VALUE_TRANSFORMATION = "00289145"
_FRAME_VOI_LUT = "00289132"
_FRAME_TIME = "00181063"


@dataclass(frozen=True, slots=True)
class Window:
    """A VOI window (PS3.3 C.11.2.1.2): center, width and the function applying it."""

    center: float
    width: float
    function: str = "LINEAR"


@dataclass(frozen=True, slots=True)
class Lut:
    """A lookup table (PS3.3 C.11.1.1.1): first stored value mapped, output bits, entries."""

    first_mapped: int
    bits: int
    data: np.ndarray[Any, Any]

    def apply(self, values: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """Entries for `values`; values outside the table clamp to its ends."""
        index = np.clip(values.astype(np.int64) - self.first_mapped, 0, len(self.data) - 1)
        entries: np.ndarray[Any, Any] = self.data[index]
        return entries


@dataclass(frozen=True, slots=True)
class ImageAttributes:
    """The attributes rendering needs besides the Image Pixel module, from DICOM JSON."""

    info: FrameInfo
    number_of_frames: int = 1
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0
    modality_lut: Lut | None = None
    windows: tuple[Window, ...] = ()
    voi_lut: Lut | None = None
    palette: tuple[Lut, Lut, Lut] | None = None
    frame_time_ms: float | None = None
    patient: tuple[str, ...] = ()  # annotation lines (annotation=patient)
    technique: tuple[str, ...] = ()  # annotation lines (annotation=technique)
    notes: tuple[str, ...] = field(default=())  # why an attribute was ignored

    @classmethod
    def from_json(
        cls, model: Mapping[str, Any], bulk: Mapping[str, bytes] | None = None
    ) -> ImageAttributes:
        """From an instance's DICOM JSON; `bulk` holds values behind BulkDataURIs by path."""
        info = FrameInfo.from_json(dict(model))
        if info is None:
            raise CodecError("the instance has no Image Pixel attributes (Rows, Columns)")
        values = bulk or {}
        shared = _first_item(model, _SHARED_GROUPS) or {}
        transformation = _first_item(shared, _PIXEL_VALUE_TRANSFORMATION) or {}
        frame_voi = _first_item(shared, _FRAME_VOI_LUT) or {}
        slope = _number(model, _RESCALE_SLOPE, _number(transformation, _RESCALE_SLOPE, 1.0))
        intercept = _number(
            model, _RESCALE_INTERCEPT, _number(transformation, _RESCALE_INTERCEPT, 0.0)
        )
        modality_item = _first_item(model, _MODALITY_LUT_SEQUENCE)
        voi_item = _first_item(model, _VOI_LUT_SEQUENCE)
        windows = _windows(model) or _windows(frame_voi)
        frame_time = _number(model, _FRAME_TIME, 0.0)
        palette = None
        if info.photometric_interpretation == "PALETTE COLOR":
            if any(tag in model for tag in _SEGMENTED_PALETTE):
                raise CodecError("segmented palette colour lookup tables are not rendered")
            luts = [
                lut
                for descriptor, data in zip(_PALETTE_DESCRIPTORS, _PALETTE_DATA, strict=True)
                if (lut := _lut(model, descriptor, data, values, data)) is not None
            ]
            if len(luts) != 3:
                raise CodecError("PALETTE COLOR without its lookup tables")
            palette = (luts[0], luts[1], luts[2])
        return cls(
            info=info,
            number_of_frames=max(1, int(_number(model, _NUMBER_OF_FRAMES, 1))),
            rescale_slope=slope or 1.0,
            rescale_intercept=intercept,
            modality_lut=_lut(
                modality_item or {},
                _LUT_DESCRIPTOR,
                _LUT_DATA,
                values,
                f"{_MODALITY_LUT_SEQUENCE}/0/{_LUT_DATA}",
            ),
            windows=windows,
            voi_lut=_lut(
                voi_item or {},
                _LUT_DESCRIPTOR,
                _LUT_DATA,
                values,
                f"{_VOI_LUT_SEQUENCE}/0/{_LUT_DATA}",
            ),
            palette=palette,
            frame_time_ms=frame_time if frame_time > 0 else None,
            patient=_annotation_lines(model, _PATIENT_LINES),
            technique=_annotation_lines(model, _TECHNIQUE_LINES),
        )


def bulk_paths(model: Mapping[str, Any]) -> list[str]:
    """Paths of the LUT values rendering needs that the metadata holds as BulkDataURIs."""
    found = []
    for path in (
        *_PALETTE_DATA,
        f"{_MODALITY_LUT_SEQUENCE}/0/{_LUT_DATA}",
        f"{_VOI_LUT_SEQUENCE}/0/{_LUT_DATA}",
    ):
        element = _element_at(model, path)
        if element is not None and "BulkDataURI" in element:
            found.append(path)
    return found


# -- DICOM JSON access -------------------------------------------------------------------------


def _values(model: Mapping[str, Any], tag: str) -> list[Any]:
    element = model.get(tag)
    if not isinstance(element, dict):
        return []
    value = element.get("Value")
    return value if isinstance(value, list) else []


def _number(model: Mapping[str, Any], tag: str, default: float) -> float:
    for value in _values(model, tag):
        try:
            number = float(value)
        except (TypeError, ValueError):
            return default
        return number if math.isfinite(number) else default
    return default


def _first_item(model: Mapping[str, Any], tag: str) -> dict[str, Any] | None:
    for item in _values(model, tag):
        return item if isinstance(item, dict) else None
    return None


def _element_at(model: Mapping[str, Any], path: str) -> dict[str, Any] | None:
    """The element at a BulkDataURI-style path (`tag` or `tag/item/tag`)."""
    parts = path.split("/")
    current: Any = model
    for index in range(0, len(parts) - 1, 2):
        items = _values(current, parts[index])
        item_number = int(parts[index + 1])
        if item_number >= len(items) or not isinstance(items[item_number], dict):
            return None
        current = items[item_number]
    element = current.get(parts[-1]) if isinstance(current, dict) else None
    return element if isinstance(element, dict) else None


def _windows(model: Mapping[str, Any]) -> tuple[Window, ...]:
    centers, widths = _values(model, _WINDOW_CENTER), _values(model, _WINDOW_WIDTH)
    functions = _values(model, _VOI_FUNCTION)
    function = str(functions[0]).strip().upper() if functions else "LINEAR"
    if function not in WINDOW_FUNCTIONS:
        function = "LINEAR"
    found = []
    for center, width in zip(centers, widths, strict=False):
        try:
            c, w = float(center), float(width)
        except (TypeError, ValueError):
            continue
        if math.isfinite(c) and math.isfinite(w) and w > 0:
            found.append(Window(c, w, function))
    return tuple(found)


def _lut(
    model: Mapping[str, Any],
    descriptor_tag: str,
    data_tag: str,
    bulk: Mapping[str, bytes],
    bulk_path: str,
) -> Lut | None:
    """A LUT from its descriptor (entries, first mapped, bits) and data (PS3.3 C.11.1.1)."""
    descriptor = _values(model, descriptor_tag)
    element = model.get(data_tag)
    if len(descriptor) < 3 or not isinstance(element, dict):
        return None
    entries = int(descriptor[0]) or 1 << 16
    first, bits = int(descriptor[1]), int(descriptor[2])
    if isinstance(element.get("Value"), list):
        data = np.asarray(element["Value"], dtype=np.int64)
    else:
        if "InlineBinary" in element:
            raw = base64.b64decode(element["InlineBinary"])
        elif "BulkDataURI" in element and bulk_path in bulk:
            raw = bulk[bulk_path]
        else:
            return None
        data = np.frombuffer(raw, dtype=np.uint8 if len(raw) == entries else "<u2").astype(np.int64)
    if len(data) < entries:
        raise CodecError(f"a lookup table has {len(data)} entries, its descriptor says {entries}")
    if bits not in range(1, 17):
        bits = 16 if int(data.max(initial=0)) > 255 else 8
    return Lut(first, bits, data[:entries])


def _person_name(values: list[Any]) -> str:
    for value in values:
        if isinstance(value, dict):
            return str(value.get("Alphabetic", "")).replace("^", " ").strip()
        return str(value)
    return ""


def _text(model: Mapping[str, Any], tag: str) -> str:
    values = _values(model, tag)
    if not values:
        return ""
    if isinstance(values[0], dict):
        return _person_name(values)
    return "\\".join(str(v) for v in values if v is not None).strip()


_Line = Callable[[Mapping[str, Any]], str]


def _joined(*parts: tuple[str, str]) -> _Line:
    """A line of `label value` pairs, leaving out the empty ones."""

    def line(model: Mapping[str, Any]) -> str:
        return "  ".join(f"{label}{value}" for label, tag in parts if (value := _text(model, tag)))

    return line


_PATIENT_LINES: tuple[_Line, ...] = (
    _joined(("", "00100010")),  # PatientName
    _joined(("ID ", "00100020")),  # PatientID
    _joined(("", "00100030"), ("", "00100040")),  # PatientBirthDate, PatientSex
    _joined(("", "00080020"), ("", "00081030")),  # StudyDate, StudyDescription
)
_TECHNIQUE_LINES: tuple[_Line, ...] = (
    _joined(("", "00080060"), ("", "0008103E")),  # Modality, SeriesDescription
    _joined(("Se ", "00200011"), ("Im ", "00200013")),  # SeriesNumber, InstanceNumber
    _joined(("kVp ", "00180060"), ("mA ", "00181151"), ("ST ", "00180050")),
)


def _annotation_lines(model: Mapping[str, Any], lines: tuple[_Line, ...]) -> tuple[str, ...]:
    return tuple(text for line in lines if (text := line(model)))
