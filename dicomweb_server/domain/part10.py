"""A Part 10 file's header → an `InstanceRecord`, plus pixel and bulk byte offsets.

Only the header is materialised: Pixel Data and binary values above the bulk threshold are
deferred by pydicom and recorded as (offset, length) spans in the file, so WADO can serve
frames and bulk data by ranged reads of the stored object.
"""

from __future__ import annotations

import struct
import warnings
import zlib
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol, cast

import orjson
import pydicom
import pydicom.config
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from pydicom.uid import DeflatedExplicitVRLittleEndian

from dicomweb_server.domain.attributes import LEVEL_ATTRIBUTES, NESTED_MATCH_KEYS, Level, tag_hex
from dicomweb_server.domain.header_reader import EXTENDED_OFFSET_TABLE, PIXEL_DATA, read_header
from dicomweb_server.domain.header_reader import PIXEL_TAGS as _PIXEL_TAGS
from dicomweb_server.domain.identifiers import is_valid_uid
from dicomweb_server.domain.records import BulkSpan, FrameSpans, InstanceRecord, PixelLayout

__all__ = [
    "PIXEL_DATA",
    "PREAMBLE_LENGTH",
    "InvalidInstanceError",
    "ParseLimits",
    "bulk_data_path",
    "parse_part10",
]

# Parse leniently and quietly: pydicom's warnings can quote values (PHI) into logs.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom\..*")

EXTENDED_OFFSET_TABLE_LENGTHS = 0x7FE00002
PREAMBLE_LENGTH = 128
_BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
# Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
_LONG_LENGTH_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_ITEM = 0xE000FFFE  # (FFFE,E000) read as little-endian uint32 of group, element
_SEQUENCE_DELIMITER = 0xE0DDFFFE


class InvalidInstanceError(Exception):
    """The bytes are not an instance we can store; `reason` is for the STOW response."""

    def __init__(self, reason: str, failure_code: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.failure_code = failure_code


@dataclass(frozen=True, slots=True)
class ParseLimits:
    """Bounds applied while parsing untrusted input."""

    bulk_data_threshold: int = 1024
    max_sequence_depth: int = 64
    max_frames: int = 100_000
    max_pixel_bytes: int = 4 << 30
    max_header_bytes: int = 64 << 20  # bytes read into memory per instance (bulk is skipped)


def bulk_data_path(study: str, series: str, sop: str, tag_path: str) -> str:
    """The BulkDataURI of a value, relative to the DICOMweb root (PS3.18 8.6.1.2)."""
    return f"/studies/{study}/series/{series}/instances/{sop}/bulkdata/{tag_path}"


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


def read_fast_header(fp: BinaryIO, size: int, limits: ParseLimits) -> _Header | None:
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
    syntax, meta_end = _meta_transfer_syntax(fp)
    if syntax == DeflatedExplicitVRLittleEndian:
        _check_inflated_size(fp, meta_end, limits.max_header_bytes)  # pydicom inflates it all
    fp.seek(0)
    reader = _BudgetedReader(fp, size, limits.max_header_bytes)
    try:
        ds = pydicom.dcmread(cast(BinaryIO, reader), defer_size=limits.bulk_data_threshold)
        if reader.exceeded:  # pydicom may have swallowed the reader's error
            raise reader.over_budget()
        header = _PydicomHeader(ds, reader, size, limits)
        _check_depth(ds, limits.max_sequence_depth)
        return _build(header, cast(BinaryIO, reader), size, limits)
    except InvalidInstanceError:
        raise
    except RecursionError as exc:
        raise InvalidInstanceError("sequences nested too deeply to parse", 0xC000) from exc
    except Exception as exc:  # pydicom raises many types on garbage; all mean "cannot understand"
        if reader.exceeded:
            raise reader.over_budget() from exc
        raise InvalidInstanceError(f"cannot parse DICOM data set: {_short(exc)}", 0xC000) from exc


class _Header(Protocol):
    """A parsed header as the record builder sees it, whichever reader made it."""

    transfer_syntax: str

    def text(self, keyword: str) -> str:
        """`str(ds.get(keyword, "") or "")` of a top-level string attribute."""
        ...

    def int_value(self, keyword: str) -> int | None:
        """A top-level attribute as an int; None when absent, empty or not one number."""
        ...

    def has(self, tag: int) -> bool:
        """Whether the top-level data set holds `tag`."""
        ...

    def pixel_data(self) -> tuple[int, int] | None:
        """(value offset, value length) of the top-level Pixel Data, if present."""
        ...

    def extended_offset_table(self) -> bytes | None:
        """The Extended Offset Table's bytes, if present."""
        ...

    def to_json(self, uids: tuple[str, str, str], bulk: list[BulkSpan]) -> dict[str, Any]:
        """The DICOM JSON model with BulkDataURIs; appends bulk spans to `bulk`."""
        ...


def _build(header: _Header, fp: BinaryIO, size: int, limits: ParseLimits) -> InstanceRecord:
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
    has_pixels = any(header.has(tag) for tag in _PIXEL_TAGS)
    if not has_pixels:
        number_of_frames = 0

    bulk: list[BulkSpan] = []
    json_model = header.to_json((study, series, sop), bulk)
    levels = {
        level: {
            tag_hex(a.tag): json_model[tag_hex(a.tag)]
            for a in LEVEL_ATTRIBUTES[level]
            if tag_hex(a.tag) in json_model
        }
        for level in Level
    }
    return InstanceRecord(
        study_instance_uid=study,
        series_instance_uid=series,
        sop_instance_uid=sop,
        sop_class_uid=sop_class,
        transfer_syntax_uid=transfer_syntax,
        study_columns={
            a.column: _column_value(json_model, a.tag, a.vr)
            for a in LEVEL_ATTRIBUTES[Level.STUDY]
            if a.column
        },
        series_columns={
            **{
                a.column: _column_value(json_model, a.tag, a.vr)
                for a in LEVEL_ATTRIBUTES[Level.SERIES]
                if a.column
            },
            **_nested_columns(json_model),
        },
        instance_columns={
            a.column: _column_value(json_model, a.tag, a.vr)
            for a in LEVEL_ATTRIBUTES[Level.INSTANCE]
            if a.column
        },
        study_attributes=levels[Level.STUDY],
        series_attributes=levels[Level.SERIES],
        instance_attributes=levels[Level.INSTANCE],
        metadata=_dumps(json_model),
        number_of_frames=number_of_frames,
        pixel=pixel,
        bulk=tuple(bulk),
    )


class _PydicomHeader:
    """A `_Header` over a data set pydicom read with deferred bulk values."""

    def __init__(self, ds: Dataset, fp: _BudgetedReader, size: int, limits: ParseLimits) -> None:
        self._ds = ds
        self._fp = cast(BinaryIO, fp)
        self._size = size
        self._limits = limits
        self.transfer_syntax = str(ds.file_meta.get("TransferSyntaxUID", "") or "")

    def text(self, keyword: str) -> str:
        return str(self._ds.get(keyword, "") or "")

    def int_value(self, keyword: str) -> int | None:
        return _int_value(self._ds, keyword)

    def has(self, tag: int) -> bool:
        return tag in self._ds

    def pixel_data(self) -> tuple[int, int] | None:
        raw = self._ds._dict.get(BaseTag(PIXEL_DATA))
        if raw is None or not isinstance(raw, RawDataElement):
            return None
        return raw.value_tell, raw.length

    def extended_offset_table(self) -> bytes | None:
        if EXTENDED_OFFSET_TABLE not in self._ds:
            return None
        value = self._ds[EXTENDED_OFFSET_TABLE].value
        return value if isinstance(value, bytes) else None

    def to_json(self, uids: tuple[str, str, str], bulk: list[BulkSpan]) -> dict[str, Any]:
        deflated = self.transfer_syntax == DeflatedExplicitVRLittleEndian
        try:
            return _to_json(self._ds, self._fp, self._size, uids, bulk, deflated, self._limits)
        except InvalidInstanceError:
            raise
        except Exception as exc:
            raise InvalidInstanceError(f"cannot convert data set: {_short(exc)}", 0xC000) from exc


class _BudgetedReader:
    """A read-only view of a file that refuses to read more than `budget` bytes in total.

    pydicom reads every value below the defer size into memory; this bounds that memory no
    matter how many small elements a hostile header holds. Seeks (skipped bulk) are free.
    """

    def __init__(self, fp: BinaryIO, size: int, budget: int) -> None:
        self._fp = fp
        self._size = size
        self._budget = budget
        self._read = 0
        self.exceeded = False

    def over_budget(self) -> InvalidInstanceError:
        return InvalidInstanceError(
            f"data set header is larger than the limit of {self._budget} bytes", 0xA700
        )

    def read(self, size: int | None = -1) -> bytes:
        # A length past the end of the file (a lying value length) reads only what is there.
        available = max(0, self._size - self._fp.tell())
        wanted = available if size is None or size < 0 else min(size, available)
        if self._read + wanted > self._budget:
            self.exceeded = True
            raise self.over_budget()
        data = self._fp.read(wanted)
        self._read += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._fp.seek(offset, whence)

    def tell(self) -> int:
        return self._fp.tell()


def _meta_transfer_syntax(fp: BinaryIO) -> tuple[str | None, int]:
    """(0002,0010) of the explicit-VR file meta group (PS3.10 7.1), and where the group ends.

    Read without pydicom, to decide before pydicom runs whether the rest needs inflating.
    """
    position = PREAMBLE_LENGTH + 4
    syntax = None
    for _ in range(64):  # the meta group has a dozen elements; more is not a real file
        fp.seek(position)
        head = fp.read(8)
        if len(head) < 8 or struct.unpack("<H", head[:2])[0] != 0x0002:
            break
        if head[4:6] in _LONG_LENGTH_VRS:
            extra = fp.read(4)
            if len(extra) < 4:
                break
            (length,) = struct.unpack("<I", extra)
            position += 12
        else:
            (length,) = struct.unpack("<H", head[6:8])
            position += 8
        if length > 1 << 16:
            break
        if struct.unpack("<H", head[2:4])[0] == 0x0010:
            syntax = fp.read(length).rstrip(b"\0 ").decode("ascii", "replace")
        position += length
    return syntax, position


def _check_inflated_size(fp: BinaryIO, start: int, budget: int) -> None:
    """Refuse a deflated data set (PS3.5 A.5) that inflates past `budget`, without keeping it."""
    fp.seek(start)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    try:
        while chunk := fp.read(1 << 20):
            while chunk:
                total += len(inflater.decompress(chunk, budget + 1 - total))
                if total > budget:
                    raise InvalidInstanceError(
                        f"deflated data set inflates past the limit of {budget} bytes", 0xA700
                    )
                chunk = inflater.unconsumed_tail
            if inflater.eof:
                return
    except zlib.error as exc:
        raise InvalidInstanceError(f"deflated data set is corrupt: {_short(exc)}", 0xC000) from exc


def _dumps(model: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(model)
    except orjson.JSONEncodeError as exc:  # e.g. nesting past orjson's own depth limit
        raise InvalidInstanceError(f"cannot encode metadata: {_short(exc)}", 0xC000) from exc


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:200]


def _identity(header: _Header) -> tuple[str, str, str]:
    values = []
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        value = header.text(keyword).strip()
        if not is_valid_uid(value):
            raise InvalidInstanceError(f"{keyword} is missing or not a valid UID", 0xA900)
        values.append(value)
    return values[0], values[1], values[2]


def _check_depth(ds: Dataset, max_depth: int, depth: int = 0) -> None:
    if depth > max_depth:
        raise InvalidInstanceError(f"sequences nested deeper than {max_depth} levels", 0xC000)
    for tag in ds.keys():  # noqa: SIM118 - iterating a Dataset converts every element
        raw = ds._dict.get(BaseTag(tag))
        if raw is not None and raw.VR == "SQ":
            for item in ds[tag].value:
                _check_depth(item, max_depth, depth + 1)


def _int_value(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _nested_columns(model: dict[str, Any]) -> dict[str, str | int | None]:
    """Sequence match keys: the distinct values of every item, joined by backslash."""
    columns: dict[str, str | int | None] = {}
    for (sequence_tag, tag), attribute in NESTED_MATCH_KEYS.items():
        items = model.get(tag_hex(sequence_tag), {}).get("Value", [])
        values = sorted(
            {
                str(value).strip()
                for item in items
                if isinstance(item, dict)
                for value in item.get(tag_hex(tag), {}).get("Value", [])
                if str(value).strip()
            }
        )
        columns[attribute.column or ""] = "\\".join(values) or None
    return columns


def _column_value(model: dict[str, Any], tag: int, vr: str) -> str | int | None:
    """A match value for the index: first value, PN as its alphabetic form, IS as int."""
    element = model.get(tag_hex(tag))
    if not element or not element.get("Value"):
        return None
    first = element["Value"][0]
    if vr == "PN":
        # Trailing empty components carry nothing: "Doe^Jane^^" is "Doe^Jane" (PS3.5 6.2.1).
        return str(first.get("Alphabetic", "")).rstrip("^ ") if isinstance(first, dict) else None
    if vr == "IS":
        try:
            return int(first)
        except (TypeError, ValueError):
            return None
    if isinstance(first, str):
        return first.strip()
    if isinstance(first, (int, float)):
        return str(first)
    return None


def _to_json(
    ds: Dataset,
    fp: BinaryIO,
    size: int,
    uids: tuple[str, str, str],
    bulk: list[BulkSpan],
    deflated: bool,
    limits: ParseLimits,
    prefix: str = "",
    base: int = 0,
) -> dict[str, Any]:
    """A data set as DICOM JSON; large binary values become BulkDataURIs with spans.

    Nested values are addressed by `tag/item/tag` paths (PS3.18 leaves BulkDataURIs opaque).
    pydicom parses a defined-length sequence from a buffer of its value, so positions inside
    it are relative to that value: `base` carries the absolute offset of the buffer.
    """
    out: dict[str, Any] = {}
    for tag in ds.keys():  # noqa: SIM118 - iterating a Dataset converts every element
        raw = ds._dict.get(BaseTag(tag))  # get_item() would read deferred values into memory
        if raw is None:
            continue
        key = tag_hex(int(tag))
        path = f"{prefix}{key}"
        vr = _vr_of(raw, int(tag))
        if vr == "SQ":
            tell = raw.value_tell if isinstance(raw, RawDataElement) else raw.file_tell
            sequence = ds[tag]
            child_base = base if sequence.is_undefined_length else base + (tell or 0)
            items = [
                _to_json(
                    item, fp, size, uids, bulk, deflated, limits, f"{path}/{index}/", child_base
                )
                for index, item in enumerate(sequence.value)
            ]
            out[key] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
            continue
        if isinstance(raw, RawDataElement):
            deferred = raw.value is None and raw.length > 0
            offset, length = base + raw.value_tell, raw.length
        else:
            deferred = False
            offset = base + raw.file_tell if raw.file_tell is not None else -1
            length = len(raw.value) if isinstance(raw.value, bytes) else 0
        defined = length != 0xFFFFFFFF
        is_pixels = int(tag) in _PIXEL_TAGS and (not prefix or length > limits.bulk_data_threshold)
        if is_pixels or (vr in _BULK_VRS and defined and length > limits.bulk_data_threshold):
            if defined and not deflated and offset + length > size:
                raise InvalidInstanceError(
                    f"value of ({key}) runs past the end of the file", 0xC000
                )
            if defined and offset >= 0 and not deflated and int(tag) not in _PIXEL_TAGS:
                bulk.append(BulkSpan(path, offset, length))
            out[key] = {"vr": vr, "BulkDataURI": bulk_data_path(*uids, path)}
            continue
        if deferred:
            assert isinstance(raw, RawDataElement)
            if offset + length > size:
                raise InvalidInstanceError(
                    f"value of ({key}) runs past the end of the file", 0xC000
                )
            fp.seek(offset)
            raw = raw._replace(value=fp.read(length))
            element = convert_raw_data_element(raw, encoding=ds._character_set, ds=ds)
        else:
            try:
                element = ds[tag]
            except Exception:  # a value pydicom cannot convert (e.g. IS "1A") is left out
                continue
        try:
            out[key] = element.to_json_dict(
                bulk_data_element_handler=None, bulk_data_threshold=1 << 62
            )
        except Exception:
            continue
    return out


def _vr_of(raw: Any, tag: int) -> str:
    vr = getattr(raw, "VR", None)
    if vr:
        return str(vr)
    from pydicom.datadict import dictionary_VR

    try:
        return str(dictionary_VR(tag)).split(" or ")[0]
    except KeyError:
        return "UN"


def _pixel_layout(
    header: _Header, fp: BinaryIO, size: int, frames: int, limits: ParseLimits
) -> PixelLayout | None:
    span = header.pixel_data()
    if span is None:
        return None
    offset, length = span
    if length != 0xFFFFFFFF:
        if offset + length > size:
            raise InvalidInstanceError("Pixel Data runs past the end of the file", 0xC000)
        return _native_layout(header, offset, length, frames, limits)
    _check_declared_size(header, frames, limits)  # decoding allocates what the header declares
    return _encapsulated_layout(header, fp, offset, size, frames)


def _check_declared_size(header: _Header, frames: int, limits: ParseLimits) -> None:
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
    header: _Header, offset: int, length: int, frames: int, limits: ParseLimits
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
    frame_length = pixel_bits // 8
    spans = tuple(FrameSpans(((offset + i * frame_length, frame_length),)) for i in range(frames))
    return PixelLayout(False, offset, length, spans)


def _read_item_header(fp: BinaryIO) -> tuple[int, int]:
    data = fp.read(8)
    if len(data) < 8:
        raise InvalidInstanceError("encapsulated Pixel Data is truncated", 0xC000)
    tag, length = struct.unpack("<II", data)
    return tag, length


def _encapsulated_layout(
    header: _Header, fp: BinaryIO, offset: int, size: int, frames: int
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
    header: _Header, fragments: list[tuple[int, int, int]], bot: tuple[int, ...], frames: int
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
