"""A Part 10 file's header → an `InstanceRecord`, plus pixel and bulk byte offsets.

Only the header is materialised: Pixel Data and binary values above the bulk threshold are
skipped and recorded as (offset, length) spans in the file, so WADO can serve frames and
bulk data by ranged reads of the stored object. Two readers parse headers (`header_reader`
for the common little-endian syntaxes, `pydicom_header` for everything else) and one
builder here turns either into the record.
"""

from __future__ import annotations

import struct
from dataclasses import replace
from typing import Any, BinaryIO, cast

import orjson
from pydicom.uid import DeflatedExplicitVRLittleEndian

from dicomweb_server.domain.attributes import LEVEL_ATTRIBUTES, NESTED_MATCH_KEYS, Level, tag_hex
from dicomweb_server.domain.header_reader import PIXEL_DATA, PIXEL_TAGS, read_header
from dicomweb_server.domain.header_types import (
    PREAMBLE_LENGTH,
    Header,
    InvalidInstanceError,
    ParseLimits,
    bulk_data_path,
    short_reason,
)
from dicomweb_server.domain.identifiers import is_valid_uid
from dicomweb_server.domain.pydicom_header import (
    BudgetedReader,
    PydicomHeader,
    check_inflated_size,
    meta_transfer_syntax,
)
from dicomweb_server.domain.records import (
    BulkSpan,
    FrameSpans,
    FrameTable,
    ImagePixel,
    InstanceRecord,
    PixelLayout,
)

__all__ = [
    "PIXEL_DATA",
    "PREAMBLE_LENGTH",
    "InvalidInstanceError",
    "ParseLimits",
    "bulk_data_path",
    "parse_part10",
]

_ITEM = 0xE000FFFE  # (FFFE,E000) read as little-endian uint32 of group, element
_SEQUENCE_DELIMITER = 0xE0DDFFFE
# Per level: the JSON keys it stores, and (column, key, VR) of its match keys.
_LEVEL_KEYS = {level: tuple(tag_hex(a.tag) for a in LEVEL_ATTRIBUTES[level]) for level in Level}
_COLUMNS = {
    level: tuple((a.column, tag_hex(a.tag), a.vr) for a in LEVEL_ATTRIBUTES[level] if a.column)
    for level in Level
}


def parse_part10(fp: BinaryIO, size: int, limits: ParseLimits) -> InstanceRecord:
    """Parse a seekable Part 10 file of `size` bytes; raise InvalidInstanceError if unusable.

    Cannot-understand failures carry code 0xC000, missing identity 0xA900. The common
    little-endian syntaxes are read by `header_reader`; whatever it does not reproduce
    exactly is parsed by pydicom, with the same result.
    """
    _check_prefix(fp)
    try:
        header = read_fast_header(fp, size, limits)
        if header is not None:
            return _build(header, fp, size, limits)
    except InvalidInstanceError:
        raise
    except Exception:  # a fast-path bug must not fail a store: pydicom decides instead
        pass
    return _parse_with_pydicom(fp, size, limits)


def read_fast_header(fp: BinaryIO, size: int, limits: ParseLimits) -> Header | None:
    """The header by `header_reader`, or None when only pydicom can parse it identically."""
    return read_header(
        fp, size, limits.bulk_data_threshold, limits.max_sequence_depth, limits.max_header_bytes
    )


def _check_prefix(fp: BinaryIO) -> None:
    fp.seek(0)
    head = fp.read(PREAMBLE_LENGTH + 4)
    if len(head) < PREAMBLE_LENGTH + 4 or head[PREAMBLE_LENGTH:] != b"DICM":
        raise InvalidInstanceError(
            "not a DICOM Part 10 file (no 'DICM' prefix at byte 128)", 0xC000
        )


def _parse_with_pydicom(fp: BinaryIO, size: int, limits: ParseLimits) -> InstanceRecord:
    """parse_part10 by pydicom, for every file (tests compare it with the fast path)."""
    _check_prefix(fp)
    syntax, meta_end = meta_transfer_syntax(fp)
    if syntax == DeflatedExplicitVRLittleEndian:
        check_inflated_size(fp, meta_end, limits.max_header_bytes)  # pydicom inflates it all
    fp.seek(0)
    reader = BudgetedReader(fp, size, limits.max_header_bytes)
    try:
        header = PydicomHeader.read(reader, size, limits)
        if reader.cut:
            raise reader.truncated()
        record = _build(header, cast(BinaryIO, reader), size, limits)
        if reader.cut:
            raise reader.truncated()
        return record
    except InvalidInstanceError:
        raise
    except RecursionError as exc:
        raise InvalidInstanceError("sequences nested too deeply to parse", 0xC000) from exc
    except Exception as exc:  # pydicom raises many types on garbage; all mean "cannot understand"
        if reader.exceeded:
            raise reader.over_budget() from exc
        raise InvalidInstanceError(
            f"cannot parse DICOM data set: {short_reason(exc)}", 0xC000
        ) from exc


def _build(header: Header, fp: BinaryIO, size: int, limits: ParseLimits) -> InstanceRecord:
    """The record from a parsed header; a failure names the instance by its SOP UIDs."""
    try:
        return _record(header, fp, size, limits)
    except InvalidInstanceError as exc:
        _name_instance(exc, header)
        raise


def _name_instance(exc: InvalidInstanceError, header: Header) -> None:
    """Give the failure the header's SOP Class and Instance UIDs, those that are valid
    UIDs: the STOW failure entry identifies the instance by them (PS3.18 10.5.3)."""
    try:
        sop_class, sop = (header.text(key).strip() for key in ("SOPClassUID", "SOPInstanceUID"))
    except Exception:  # a value that cannot be read names nothing
        return
    exc.sop_class_uid = sop_class if is_valid_uid(sop_class) else ""
    exc.sop_instance_uid = sop if is_valid_uid(sop) else ""


def _record(header: Header, fp: BinaryIO, size: int, limits: ParseLimits) -> InstanceRecord:
    """The record from a parsed header: identity checks, pixel layout, columns, levels."""
    transfer_syntax = header.transfer_syntax
    if not is_valid_uid(transfer_syntax):
        raise InvalidInstanceError("file meta has no valid TransferSyntaxUID", 0xC000)
    study, series, sop = _identity(header)
    sop_class = header.text("SOPClassUID")
    if not is_valid_uid(sop_class):
        raise InvalidInstanceError("SOPClassUID is missing or invalid", 0xA900)

    deflated = transfer_syntax == DeflatedExplicitVRLittleEndian
    number_of_frames = header.int_value("NumberOfFrames") or 1
    if number_of_frames < 1:
        raise InvalidInstanceError(f"NumberOfFrames {number_of_frames} is not positive", 0xC000)
    if number_of_frames > limits.max_frames:
        raise InvalidInstanceError(
            f"NumberOfFrames {number_of_frames} exceeds the limit of {limits.max_frames}", 0xA700
        )
    pixel = None if deflated else _pixel_layout(header, fp, size, number_of_frames, limits)
    has_pixels = any(header.has(tag) for tag in PIXEL_TAGS)
    if not has_pixels:
        number_of_frames = 0

    bulk: list[BulkSpan] = []
    json_model = header.to_json((study, series, sop), bulk)
    levels = {
        level: {key: json_model[key] for key in keys if key in json_model}
        for level, keys in _LEVEL_KEYS.items()
    }
    return InstanceRecord(
        study_instance_uid=study,
        series_instance_uid=series,
        sop_instance_uid=sop,
        sop_class_uid=sop_class,
        transfer_syntax_uid=transfer_syntax,
        study_columns=_columns(json_model, Level.STUDY),
        series_columns={
            **_columns(json_model, Level.SERIES),
            **_nested_columns(json_model),
        },
        instance_columns=_columns(json_model, Level.INSTANCE),
        study_attributes=levels[Level.STUDY],
        series_attributes=levels[Level.SERIES],
        instance_attributes=levels[Level.INSTANCE],
        metadata=_dumps(json_model),
        number_of_frames=number_of_frames,
        pixel=pixel,
        bulk=tuple(bulk),
    )


def _dumps(model: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(model)
    except orjson.JSONEncodeError as exc:  # e.g. nesting past orjson's own depth limit
        raise InvalidInstanceError(f"cannot encode metadata: {short_reason(exc)}", 0xC000) from exc


def _identity(header: Header) -> tuple[str, str, str]:
    values = []
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        value = header.text(keyword).strip()
        if not is_valid_uid(value):
            raise InvalidInstanceError(f"{keyword} is missing or not a valid UID", 0xA900)
        values.append(value)
    return values[0], values[1], values[2]


def _nested_columns(model: dict[str, Any]) -> dict[str, str | int | None]:
    """Sequence match keys: the distinct values of every item, joined by backslash."""
    columns: dict[str, str | int | None] = {}
    for (sequence_tag, tag), attribute in NESTED_MATCH_KEYS.items():
        items = model.get(tag_hex(sequence_tag), {}).get("Value", [])
        values = sorted(
            {
                _match_text(str(value))
                for item in items
                if isinstance(item, dict)
                for value in item.get(tag_hex(tag), {}).get("Value", [])
                if _match_text(str(value))
            }
        )
        columns[attribute.column or ""] = "\\".join(values) or None
    return columns


def _columns(model: dict[str, Any], level: Level) -> dict[str, str | int | None]:
    return {column: _column_value(model, key, vr) for column, key, vr in _COLUMNS[level]}


def _column_value(model: dict[str, Any], key: str, vr: str) -> str | int | None:
    """A match value for the index: first value, PN as its alphabetic form, IS as int."""
    element = model.get(key)
    if not element or not element.get("Value"):
        return None
    first = element["Value"][0]
    if vr == "PN":
        # Trailing empty components carry nothing: "Doe^Jane^^" is "Doe^Jane" (PS3.5 6.2.1).
        name = str(first.get("Alphabetic", "")) if isinstance(first, dict) else None
        return None if name is None else name.replace("\0", "").rstrip("^ ")
    if vr == "IS":
        try:
            return int(first)
        except (TypeError, ValueError):
            return None
    if isinstance(first, str):
        return _match_text(first)
    if isinstance(first, (int, float)):
        return str(first)
    return None


def _match_text(value: str) -> str:
    """A value as the index matches it: NUL is no character of any text VR (PS3.5 6.1.2; only
    a UID's padding), and PostgreSQL text cannot hold it, so it is dropped, not refused."""
    return value.replace("\0", "").strip()


def _pixel_layout(
    header: Header, fp: BinaryIO, size: int, frames: int, limits: ParseLimits
) -> PixelLayout | None:
    span = header.pixel_data()
    if span is None:
        return None
    offset, length = span
    if length != 0xFFFFFFFF:
        if offset + length > size:
            raise InvalidInstanceError("Pixel Data runs past the end of the file", 0xC000)
        layout = _native_layout(header, offset, length, frames, limits)
    else:
        _check_declared_size(header, frames, limits)  # decoding allocates what it declares
        layout = _encapsulated_layout(header, fp, offset, size, frames)
    return replace(layout, image=_image_pixel(header))


def _image_pixel(header: Header) -> ImagePixel:
    """The Image Pixel attributes transcoding decisions depend on (absent ones as 0 or "")."""
    return ImagePixel(
        rows=header.int_value("Rows") or 0,
        columns=header.int_value("Columns") or 0,
        samples_per_pixel=header.int_value("SamplesPerPixel") or 1,
        bits_allocated=header.int_value("BitsAllocated") or 0,
        bits_stored=header.int_value("BitsStored") or header.int_value("BitsAllocated") or 0,
        pixel_representation=header.int_value("PixelRepresentation") or 0,
        photometric_interpretation=header.text("PhotometricInterpretation") or "",
    )


def _check_declared_size(header: Header, frames: int, limits: ParseLimits) -> None:
    """Refuse an image whose declared decoded size exceeds the pixel budget (a bomb)."""
    rows = header.int_value("Rows") or 0
    columns = header.int_value("Columns") or 0
    samples = header.int_value("SamplesPerPixel") or 1
    bits = header.int_value("BitsAllocated") or 0
    declared = (rows * columns * samples * bits * frames + 7) // 8
    if declared > limits.max_pixel_bytes:
        raise InvalidInstanceError(
            f"declared image of {declared} bytes exceeds the pixel budget", 0xA700
        )


def _native_layout(
    header: Header, offset: int, length: int, frames: int, limits: ParseLimits
) -> PixelLayout:
    rows = header.int_value("Rows") or 0
    columns = header.int_value("Columns") or 0
    samples = header.int_value("SamplesPerPixel") or 1
    bits = header.int_value("BitsAllocated") or 0
    if header.text("PhotometricInterpretation") == "YBR_FULL_422":
        samples = 2  # PS3.3 C.7.6.3.1.2: two chroma values shared by each pair of pixels
    pixel_bits = rows * columns * samples * bits
    expected = (pixel_bits * frames + 7) // 8
    if rows <= 0 or columns <= 0 or bits <= 0:
        raise InvalidInstanceError(
            "Pixel Data without valid Rows, Columns and BitsAllocated", 0xA900
        )
    if expected > limits.max_pixel_bytes:
        raise InvalidInstanceError(
            f"declared image of {expected} bytes exceeds the pixel budget", 0xA700
        )
    if length < expected:
        raise InvalidInstanceError(
            f"Pixel Data has {length} bytes but Rows×Columns×Frames need {expected}", 0xC000
        )
    if pixel_bits % 8:
        return PixelLayout(False, offset, length, ())  # bit-packed frames are not byte-aligned
    return PixelLayout(False, offset, length, FrameTable.regular(offset, pixel_bits // 8, frames))


def _read_item_header(fp: BinaryIO) -> tuple[int, int]:
    data = fp.read(8)
    if len(data) < 8:
        raise InvalidInstanceError("encapsulated Pixel Data is truncated", 0xC000)
    tag, length = struct.unpack("<II", data)
    return tag, length


def _encapsulated_layout(
    header: Header, fp: BinaryIO, offset: int, size: int, frames: int
) -> PixelLayout:
    """Walk the item headers (PS3.5 A.4) and map fragments to frames."""
    fp.seek(offset)
    tag, bot_length = _read_item_header(fp)
    if tag != _ITEM:
        raise InvalidInstanceError("encapsulated Pixel Data does not start with an item", 0xC000)
    if bot_length % 4 or offset + 8 + bot_length > size:
        raise InvalidInstanceError("encapsulated Pixel Data has a malformed offset table", 0xC000)
    bot = struct.unpack(f"<{bot_length // 4}I", fp.read(bot_length)) if bot_length else ()
    first_item = offset + 8 + bot_length
    fragments: list[tuple[int, int, int]] = []  # (item start relative to first item, offset, len)
    position = first_item
    while True:
        fp.seek(position)
        tag, length = _read_item_header(fp)
        if tag == _SEQUENCE_DELIMITER:
            position += 8
            break
        if tag != _ITEM or length == 0xFFFFFFFF or position + 8 + length > size:
            raise InvalidInstanceError("encapsulated Pixel Data has a malformed fragment", 0xC000)
        fragments.append((position - first_item, position + 8, length))
        position += 8 + length
    value_length = position - offset
    if not fragments:
        raise InvalidInstanceError("encapsulated Pixel Data has no fragments", 0xC000)
    spans = _map_fragments(header, fragments, bot, frames)
    return PixelLayout(True, offset, value_length, spans)


def _map_fragments(
    header: Header, fragments: list[tuple[int, int, int]], bot: tuple[int, ...], frames: int
) -> tuple[FrameSpans, ...]:
    """Frames from fragments: one frame; the Basic or Extended Offset Table; or one per frame."""
    if frames == 1:
        return (FrameSpans(tuple((off, ln) for _, off, ln in fragments)),)
    starts: list[int] | None = None
    if len(bot) == frames:
        starts = list(bot)
    elif (table := header.extended_offset_table()) is not None and len(table) == 8 * frames:
        starts = list(struct.unpack(f"<{frames}Q", table))
    if starts is not None:
        result: list[FrameSpans] = []
        for i, start in enumerate(starts):
            end = starts[i + 1] if i + 1 < len(starts) else None
            parts = tuple(
                (off, ln)
                for rel, off, ln in fragments
                if rel >= start and (end is None or rel < end)
            )
            if not parts:
                return ()
            result.append(FrameSpans(parts))
        return tuple(result)
    if len(fragments) == frames:
        return tuple(FrameSpans(((off, ln),)) for _, off, ln in fragments)
    return ()  # unmappable without decoding: serving falls back to a full parse
