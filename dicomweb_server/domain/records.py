"""What ingest learns about an instance, as plain data the index and services share."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["BulkSpan", "FrameSpans", "InstanceRecord", "PixelLayout"]

# One fragment or frame as (byte offset in the stored object, length).
Span = tuple[int, int]


@dataclass(frozen=True, slots=True)
class BulkSpan:
    """A bulk data value's place in the stored object; `path` is its BulkDataURI suffix."""

    path: str
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class FrameSpans:
    """Where frame `i` lives: one or more fragments (encapsulated) or one span (native)."""

    fragments: tuple[Span, ...]


@dataclass(frozen=True, slots=True)
class PixelLayout:
    """Pixel Data as stored: native frames at fixed stride, or encapsulated fragments.

    `frames` is empty when the layout could not be recorded (deflated syntax, bit-packed
    1-bit frames, fragments we could not map to frames): serving then reads the whole object.
    """

    encapsulated: bool
    value_offset: int
    value_length: int  # 0xFFFFFFFF for undefined length (encapsulated)
    frames: tuple[FrameSpans, ...]


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """An instance's identity, match values per level, DICOM JSON per level and byte layout.

    `*_columns` map index column names (snake_case keywords) to normalised match values;
    `*_attributes` are DICOM JSON objects of the attributes each level returns;
    `metadata` is the whole instance as DICOM JSON bytes with BulkDataURIs relative to the
    DICOMweb root (made absolute when served).
    """

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    study_columns: dict[str, str | None]
    series_columns: dict[str, str | int | None]
    instance_columns: dict[str, str | int | None]
    study_attributes: dict[str, object]
    series_attributes: dict[str, object]
    instance_attributes: dict[str, object]
    metadata: bytes
    number_of_frames: int
    pixel: PixelLayout | None
    bulk: tuple[BulkSpan, ...] = field(default=())
