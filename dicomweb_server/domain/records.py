"""What ingest learns about an instance, as plain data the index and services share."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import overload

import orjson

from dicomweb_server.domain.identifiers import InstanceKey

__all__ = [
    "BulkSpan",
    "FrameSpans",
    "FrameTable",
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


class FrameTable(Sequence[FrameSpans]):
    """Where each frame lives, made on demand: a regular stride (native frames) or the raw
    `[[offset, length], ...]` lists read from the index. An object of 100,000 frames costs
    nothing until a frame is asked for (building every FrameSpans took 0.4-1.6 s a request).
    """

    __slots__ = ("_raw", "_regular")

    def __init__(
        self,
        raw: list[list[list[int]]] | None = None,
        regular: tuple[int, int, int] | None = None,
    ) -> None:
        self._raw = raw  # per frame, its fragments as [offset, length]
        self._regular = regular  # (first offset, frame length, count)

    @classmethod
    def regular(cls, offset: int, length: int, count: int) -> FrameTable:
        """`count` frames of `length` bytes one after another from `offset`."""
        return cls(regular=(offset, length, count))

    @property
    def stride(self) -> tuple[int, int, int] | None:
        """(first offset, frame length, count) when the frames are regular, else None."""
        return self._regular

    def __len__(self) -> int:
        if self._regular is not None:
            return self._regular[2]
        return len(self._raw or ())

    @overload
    def __getitem__(self, index: int) -> FrameSpans: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[FrameSpans, ...]: ...

    def __getitem__(self, index: int | slice) -> FrameSpans | tuple[FrameSpans, ...]:
        if isinstance(index, slice):
            return tuple(self[i] for i in range(*index.indices(len(self))))
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("frame index out of range")
        if self._regular is not None:
            offset, length, _ = self._regular
            return FrameSpans(((offset + index * length, length),))
        assert self._raw is not None
        return FrameSpans(tuple((int(o), int(n)) for o, n in self._raw[index]))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    def __hash__(self) -> int:
        return hash((len(self), self[0] if len(self) else None))

    def __repr__(self) -> str:
        return f"FrameTable({len(self)} frames)"


@dataclass(frozen=True, slots=True)
class PixelLayout:
    """Pixel Data as stored: native frames at fixed stride, or encapsulated fragments.

    `frames` is empty when the layout could not be recorded (deflated syntax, bit-packed
    1-bit frames, fragments we could not map to frames): serving then reads the whole object.
    """

    encapsulated: bool
    value_offset: int
    value_length: int  # 0xFFFFFFFF for undefined length (encapsulated)
    frames: Sequence[FrameSpans]
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
    }
    stride = pixel.frames.stride if isinstance(pixel.frames, FrameTable) else None
    if stride is not None:
        document["r"] = list(stride)  # native frames: three numbers, however many frames
    else:
        document["f"] = [list(map(list, frame.fragments)) for frame in pixel.frames]
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
        frames=FrameTable(regular=tuple(obj["r"])) if "r" in obj else FrameTable(raw=obj["f"]),
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
