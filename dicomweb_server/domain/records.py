"""What ingest learns about an instance, as plain data the index and services share."""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from dicomweb_server.domain.identifiers import InstanceKey

__all__ = [
    "BulkSpan",
    "FrameSpans",
    "ImagePixel",
    "InstanceRecord",
    "PixelLayout",
    "StoredInstance",
    "bulk_to_json",
    "pixel_from_json",
    "pixel_to_json",
]

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
class ImagePixel:
    """The Image Pixel attributes (PS3.3 C.7.6.3) that decide what a codec can do with an
    instance; instances that share them share every transcoding decision."""

    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric_interpretation: str


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
    image: ImagePixel | None = None  # None for instances indexed before it was recorded


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
    study_columns: dict[str, str | int | None]
    series_columns: dict[str, str | int | None]
    instance_columns: dict[str, str | int | None]
    study_attributes: dict[str, object]
    series_attributes: dict[str, object]
    instance_attributes: dict[str, object]
    metadata: bytes
    number_of_frames: int
    pixel: PixelLayout | None
    bulk: tuple[BulkSpan, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class StoredInstance:
    """An indexed instance: where its object is and how its pixel data is laid out."""

    key: InstanceKey
    sop_class_uid: str
    transfer_syntax_uid: str
    blob_key: str
    size: int
    digest: str
    number_of_frames: int
    pixel: PixelLayout | None


def pixel_to_json(pixel: PixelLayout | None) -> bytes | None:
    """Serialise a layout for the index (compact: lists of [offset, length])."""
    if pixel is None:
        return None
    document: dict[str, object] = {
        "e": pixel.encapsulated,
        "o": pixel.value_offset,
        "l": pixel.value_length,
        "f": [list(map(list, frame.fragments)) for frame in pixel.frames],
    }
    if pixel.image is not None:
        image = pixel.image
        document["i"] = [
            image.rows,
            image.columns,
            image.samples_per_pixel,
            image.bits_allocated,
            image.bits_stored,
            image.pixel_representation,
            image.photometric_interpretation,
        ]
    return orjson.dumps(document)


def pixel_from_json(data: bytes | str | None) -> PixelLayout | None:
    """Inverse of `pixel_to_json`."""
    if data is None:
        return None
    obj = orjson.loads(data)
    return PixelLayout(
        encapsulated=bool(obj["e"]),
        value_offset=int(obj["o"]),
        value_length=int(obj["l"]),
        frames=tuple(FrameSpans(tuple((int(o), int(n)) for o, n in frame)) for frame in obj["f"]),
        image=_image_from_json(obj.get("i")),
    )


def _image_from_json(values: list[object] | None) -> ImagePixel | None:
    if not values:
        return None
    *numbers, photometric = values
    rows, columns, samples, allocated, stored, representation = (int(str(n)) for n in numbers)
    return ImagePixel(rows, columns, samples, allocated, stored, representation, str(photometric))


def bulk_to_json(bulk: tuple[BulkSpan, ...]) -> bytes:
    """Serialise bulk spans as {path: [offset, length]}."""
    return orjson.dumps({span.path: [span.offset, span.length] for span in bulk})
