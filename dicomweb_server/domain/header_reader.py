"""The fast path of `parse_part10`: a little-endian header read straight from bytes.

pydicom builds a data element object per attribute and converts each to DICOM JSON; for a
CT slice that is most of a STOW's CPU. This reader walks the file meta and the data set
with `struct.unpack_from` over a few large reads, skips bulk values by offset, and makes
the DICOM JSON model itself (values by `json_values`). It handles Explicit VR Little Endian,
the encapsulated syntaxes that share its encoding, and Implicit VR Little Endian.

It promises the same record as pydicom's path, so it is deliberately narrow: anything it does
not reproduce exactly (another syntax, a character set other than the default, Latin-1 or
UTF-8, ambiguous or unknown VRs, tags out of order, odd nesting, values past the end of
their container, a header near the read budget) makes `read_header` return None, and the
caller parses the file with pydicom instead. Errors are never raised from here.
"""

from __future__ import annotations

import struct
from functools import lru_cache
from typing import Any, BinaryIO

from pydicom.datadict import dictionary_VR, private_dictionary_VR
from pydicom.filewriter import _AMBIGUOUS_US_SS_TAGS
from pydicom.uid import AllTransferSyntaxes, ImplicitVRLittleEndian
from pydicom.valuerep import STANDARD_VR

from dicomweb_server.domain.header_types import bulk_data_path
from dicomweb_server.domain.json_values import (
    BINARY_VRS,
    LONG_LENGTH_VRS,
    TEXT_VRS,
    FallBack,
    element_json,
)
from dicomweb_server.domain.records import BulkSpan

__all__ = [
    "DOUBLE_PIXEL_DATA",
    "EXTENDED_OFFSET_TABLE",
    "FLOAT_PIXEL_DATA",
    "PIXEL_DATA",
    "PIXEL_TAGS",
    "FastHeader",
    "read_header",
]

PIXEL_DATA = 0x7FE00010
FLOAT_PIXEL_DATA = 0x7FE00008
DOUBLE_PIXEL_DATA = 0x7FE00009
EXTENDED_OFFSET_TABLE = 0x7FE00001
PIXEL_TAGS = frozenset({PIXEL_DATA, FLOAT_PIXEL_DATA, DOUBLE_PIXEL_DATA})

# Every standard syntax whose data set is explicit VR little endian and not deflated.
_EXPLICIT_SYNTAXES = frozenset(
    str(uid)
    for uid in AllTransferSyntaxes
    if not uid.is_implicit_VR and uid.is_little_endian and not uid.is_deflated
)
_VR_NAMES = {str(vr.value).encode(): str(vr.value) for vr in STANDARD_VR}
_STRING_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UI", "UR"}) | (TEXT_VRS - {"PN"})
# (0008,0005) values read as ISO 8859-1 (pydicom's default is the same codec) or UTF-8.
_CHARSETS = {"": "latin_1", "ISO_IR 6": "latin_1", "ISO_IR 100": "latin_1", "ISO_IR 192": "utf_8"}
_CHARSET = 0x00080005
_AMBIGUOUS_US_SS = frozenset(_AMBIGUOUS_US_SS_TAGS)  # pydicom corrects these (filewriter)
# pydicom's LUT descriptor fix applies before that correction, i.e. never to these.
_LUT_DESCRIPTORS = frozenset({0x00281101, 0x00281102, 0x00281103, 0x00283002})
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_META_START = 132
_CHUNK = 16 << 10
_SLACK = 4096  # pydicom's peeks and re-reads, on top of what is counted per element
# Facts the record builder asks for, and the VRs under which their value is what it expects.
_TEXT_FACTS = {
    "StudyInstanceUID": 0x0020000D,
    "SeriesInstanceUID": 0x0020000E,
    "SOPInstanceUID": 0x00080018,
    "SOPClassUID": 0x00080016,
    "PhotometricInterpretation": 0x00280004,
}
_INT_FACTS = {
    "NumberOfFrames": (0x00280008, "IS"),
    "Rows": (0x00280010, "US"),
    "Columns": (0x00280011, "US"),
    "SamplesPerPixel": (0x00280002, "US"),
    "BitsAllocated": (0x00280100, "US"),
    "BitsStored": (0x00280101, "US"),
    "PixelRepresentation": (0x00280103, "US"),
}
_u16 = struct.Struct("<H").unpack_from
_u32 = struct.Struct("<I").unpack_from
_tag_and_length = struct.Struct("<HHI").unpack_from
_explicit_header = struct.Struct("<HH2sH").unpack_from


class FastHeader:
    """What `read_header` learned: the JSON model plus the few values the builder needs.

    Offers the same questions as part10's pydicom-backed header, answered from the model.
    """

    def __init__(self, fp: BinaryIO, transfer_syntax: str, reader: _Reader) -> None:
        self._fp = fp
        self.transfer_syntax = transfer_syntax
        self._model = reader.model
        self._bulk = reader.bulk
        self._uris = reader.uris
        self._pixel_data = reader.pixel_data
        self._offset_table = reader.offset_table
        for tag in _TEXT_FACTS.values():
            element = self._model.get(f"{tag:08X}")
            if element is not None and element["vr"] not in _STRING_VRS:
                raise FallBack
        for tag, vr in _INT_FACTS.values():
            element = self._model.get(f"{tag:08X}")
            if element is not None and element["vr"] != vr:
                raise FallBack

    def text(self, keyword: str) -> str:
        """pydicom's `str(ds.get(keyword, "") or "")` for the string facts."""
        values = self._model.get(f"{_TEXT_FACTS[keyword]:08X}", {}).get("Value", [""])
        return str(values[0]) if len(values) == 1 else "\\".join(map(str, values))

    def int_value(self, keyword: str) -> int | None:
        """The value as an int; None when absent, empty or multi-valued."""
        values = self._model.get(f"{_INT_FACTS[keyword][0]:08X}", {}).get("Value", [])
        return int(values[0]) if len(values) == 1 else None

    def has(self, tag: int) -> bool:
        """Whether the top-level data set holds `tag`."""
        return f"{tag:08X}" in self._model

    def pixel_data(self) -> tuple[int, int] | None:
        """(value offset, value length) of the top-level Pixel Data, if present."""
        return self._pixel_data

    def extended_offset_table(self) -> bytes | None:
        """The Extended Offset Table's value bytes, if present as a binary value."""
        if self._offset_table is None:
            return None
        vr, offset, length = self._offset_table
        if vr not in BINARY_VRS or length == 0:
            return None
        self._fp.seek(offset)
        return self._fp.read(length)

    def to_json(self, uids: tuple[str, str, str], bulk: list[BulkSpan]) -> dict[str, Any]:
        """The model with BulkDataURIs for these identifiers; appends the bulk spans."""
        for element, path in self._uris:
            element["BulkDataURI"] = bulk_data_path(*uids, path)
        bulk.extend(self._bulk)
        return self._model


def read_header(
    fp: BinaryIO, size: int, bulk_data_threshold: int, max_depth: int, budget: int
) -> FastHeader | None:
    """Read a Part 10 file's header if this reader can match pydicom exactly, else None."""
    try:
        reader = _Reader(fp, size, bulk_data_threshold, max_depth, budget)
        syntax, start = reader.meta()
        if syntax == ImplicitVRLittleEndian:
            reader.implicit = True
        elif syntax not in _EXPLICIT_SYNTAXES:
            return None
        if start >= size:
            return None
        reader.top_level(start)
        if reader.counted > budget:  # pydicom's path would refuse it: let it say so
            return None
        return FastHeader(fp, syntax, reader)
    except FallBack:
        return None


@lru_cache(maxsize=4096)
def _dictionary_vr(tag: int) -> str | None:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return None


def implicit_vr_shown(tag: int) -> str:
    """The VR an implicit-VR element is shown with: OW for Pixel Data and Overlay Data, which
    Implicit VR Little Endian always encodes as words (PS3.5 A.1), else its dictionary VR's
    first choice, or UN."""
    if tag == PIXEL_DATA or tag & 0xFF01FFFF == 0x60003000:
        return "OW"
    vr = _dictionary_vr(tag)
    return "UN" if vr is None else vr.split(" or ")[0]


@lru_cache(maxsize=1024)
def _private_vr(tag: int, creator: str) -> str | None:
    try:
        return str(private_dictionary_VR(tag, creator))
    except KeyError:
        return None


class _Reader:
    """A forward-only walk over the file with a window of bytes read in large chunks."""

    def __init__(
        self, fp: BinaryIO, size: int, threshold: int, max_depth: int, budget: int
    ) -> None:
        self.fp = fp
        self.size = size
        self.threshold = threshold
        self.max_depth = max_depth
        self.budget = budget
        self.implicit = False
        self.buf = b""
        self.base = 0  # file offset of buf[0]
        self.read_bytes = 0
        self.counted = _SLACK  # an upper bound of what pydicom's path would read
        self.encoding = "latin_1"
        self.model: dict[str, Any] = {}
        self.bulk: list[BulkSpan] = []
        self.uris: list[tuple[dict[str, Any], str]] = []
        self.pixel_data: tuple[int, int] | None = None
        self.offset_table: tuple[str, int, int] | None = None

    def need(self, pos: int, n: int) -> int:
        """Make bytes [pos, pos + n) available; return where pos is in `buf`."""
        rel = pos - self.base
        if rel >= 0 and rel + n <= len(self.buf):
            return rel
        if pos + n > self.size or n < 0:
            raise FallBack  # a value past the end of the file
        keep = self.buf[rel:] if 0 <= rel < len(self.buf) else b""
        start = pos + len(keep)
        want = min(max(n - len(keep), _CHUNK), self.size - start)
        self.read_bytes += want
        if self.read_bytes > self.budget:
            raise FallBack
        self.fp.seek(start)
        data = self.fp.read(want)
        if len(data) != want:
            raise FallBack
        self.buf = keep + data
        self.base = pos
        return 0

    def meta(self) -> tuple[str, int]:
        """The file meta group (always explicit VR): its TransferSyntaxUID and end."""
        pos, last, syntax = _META_START, -1, None
        while pos < self.size:
            rel = self.need(pos, min(8, self.size - pos))
            if self.size - pos < 8:
                raise FallBack
            group, element = _u16(self.buf, rel)[0], _u16(self.buf, rel + 2)[0]
            if group != 2:
                break
            tag = group << 16 | element
            vr, length, header = self.element_header(rel, pos)
            if tag <= last or length == 0xFFFFFFFF or vr == "SQ":
                raise FallBack
            last = tag
            if tag == 0x00020010:
                if vr != "UI":
                    raise FallBack
                rel = self.need(pos + header, length)
                text = self.buf[rel : rel + length].decode("latin_1").rstrip("\0 ")
                if "\\" in text:
                    raise FallBack
                syntax = text.strip()
            pos += header + length
        if syntax is None or pos > self.size:
            raise FallBack
        self.counted += pos
        return syntax, pos

    def element_header(self, rel: int, pos: int) -> tuple[str, int, int]:
        """(VR, value length, header length) of the explicit-VR element at buf[rel]."""
        vr = _VR_NAMES.get(self.buf[rel + 4 : rel + 6], "")
        if not vr:
            raise FallBack  # pydicom would switch to implicit VR or guess a length
        if vr in LONG_LENGTH_VRS:
            rel = self.need(pos, 12)
            return vr, _u32(self.buf, rel + 8)[0], 12
        return vr, _u16(self.buf, rel + 6)[0], 8

    def top_level(self, start: int) -> None:
        if self.implicit:
            rel = self.need(start, min(8, self.size - start))
            raw = self.buf[rel + 4 : rel + 6]
            if len(raw) == 2 and 0x40 < raw[0] < 0x5B and 0x40 < raw[1] < 0x5B:
                raise FallBack  # pydicom would read it as explicit VR
        self.model, _ = self.dataset(start, self.size, 0, "", top=True)

    def dataset(
        self, pos: int, end: int | None, depth: int, prefix: str, top: bool = False
    ) -> tuple[dict[str, Any], int]:
        """Elements from `pos` up to `end`, or to the item delimiter when `end` is None."""
        limit = self.size if end is None else end
        out: dict[str, Any] = {}
        last = 0x0002FFFF if top else -1  # no command or meta elements in the data set
        threshold = self.threshold
        while True:
            if end is not None and pos >= end:
                if pos != end:
                    raise FallBack
                return out, pos
            if pos + 8 > limit:
                raise FallBack
            rel = self.need(pos, 8)
            group, element, raw_vr, short_length = _explicit_header(self.buf, rel)
            tag = group << 16 | element
            if tag == _ITEM_END and end is None:
                if raw_vr != b"\0\0" or short_length != 0:
                    raise FallBack
                return out, pos + 8
            if tag <= last or group == 0xFFFE:
                raise FallBack
            last = tag
            if self.implicit:
                length, header = _u32(self.buf, rel + 4)[0], 8
                vr = self.implicit_vr(tag, length, pos, out)
                shown = vr if vr == "SQ" else implicit_vr_shown(tag)  # as pydicom_header's
            else:
                vr = _VR_NAMES.get(raw_vr, "")
                if not vr:
                    raise FallBack  # pydicom would switch to implicit VR or guess a length
                if vr in LONG_LENGTH_VRS:
                    rel = self.need(pos, 12)
                    length, header = _u32(self.buf, rel + 8)[0], 12
                else:
                    length, header = short_length, 8
                shown = vr
            key = f"{tag:08X}"
            path = prefix + key
            value_pos = pos + header
            if vr == "SQ":
                if top and tag < _CHARSET:
                    raise FallBack  # pydicom may decode its items before the character set
                items, pos = self.sequence(value_pos, length, limit, depth + 1, path)
                out[key] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
                if top:
                    self.counted += 2 * header + pos - value_pos
                continue
            if length == 0xFFFFFFFF:
                if not (top and tag == PIXEL_DATA) or shown not in ("OB", "OW"):
                    raise FallBack
                pos = self.encapsulated(value_pos)
                self.counted += header
                self.pixel_data = (value_pos, length)
                out[key] = self.bulk_uri(shown, path)
                continue
            pos = value_pos + length
            if pos > limit:
                raise FallBack
            is_pixels = tag in PIXEL_TAGS and (top or length > threshold)
            if is_pixels or (shown in BINARY_VRS and length > threshold):
                if shown not in BINARY_VRS:
                    raise FallBack
                if tag not in PIXEL_TAGS:
                    self.bulk.append(BulkSpan(path, value_pos, length))
                elif tag == PIXEL_DATA and top:
                    self.pixel_data = (value_pos, length)
                out[key] = self.bulk_uri(shown, path)
                if top:
                    self.counted += header + (length if length <= threshold else 0)
                continue
            if top:
                self.counted += header + length
                if tag == EXTENDED_OFFSET_TABLE:
                    self.offset_table = (vr, value_pos, length)
                    self.counted += 2 * (header + length)
                if self.counted > self.budget:
                    raise FallBack
            if " or " in vr:
                vr = self.resolve_ambiguous(tag, vr, top, out)
            if vr == "UN":
                self.check_unknown(tag, out)
            if tag == _CHARSET:
                if not top or vr != "CS":
                    raise FallBack
                rel = self.need(value_pos, length)
                self.charset(self.buf[rel : rel + length])
            elif top and tag < _CHARSET and vr in TEXT_VRS:
                raise FallBack  # decoded with a character set not yet known
            if length == 0:
                out[key] = {"vr": vr}
                continue
            rel = self.need(value_pos, length)
            out[key] = element_json(vr, tag, self.buf[rel : rel + length], self.encoding)

    def resolve_ambiguous(self, tag: int, vr: str, top: bool, out: dict[str, Any]) -> str:
        """US or SS by the data set's Pixel Representation, as pydicom corrects it.

        Anything else pydicom resolves from attributes we may not have read yet.
        """
        if vr != "US or SS" or not top or tag not in _AMBIGUOUS_US_SS or tag in _LUT_DESCRIPTORS:
            raise FallBack
        values = out.get("00280103", {}).get("Value")
        if not values or len(values) != 1 or out["00280103"]["vr"] != "US":
            raise FallBack
        return "US" if values[0] == 0 else "SS"

    def bulk_uri(self, vr: str, path: str) -> dict[str, Any]:
        """A BulkDataURI element; the URI is filled in once the identifiers are known."""
        element: dict[str, Any] = {"vr": vr, "BulkDataURI": path}
        self.uris.append((element, path))
        return element

    def charset(self, value: bytes) -> None:
        text = value.decode("latin_1").rstrip(" \0")
        encoding = _CHARSETS.get(text)
        if encoding is None:
            raise FallBack  # ISO 2022, other single-byte sets, several values
        self.encoding = encoding

    def check_unknown(self, tag: int, out: dict[str, Any]) -> None:
        """An explicit UN that pydicom would convert as the VR its dictionaries know."""
        if tag >> 16 & 1:
            if self.private_vr(tag, out) != "UN":
                raise FallBack
        elif _dictionary_vr(tag) is not None:
            raise FallBack

    def private_vr(self, tag: int, out: dict[str, Any]) -> str:
        """pydicom's VR of a private tag: LO for a creator, its private dictionary's, or UN."""
        element = tag & 0xFFFF
        if 0x0010 <= element <= 0x00FF:
            return "LO"
        if not element & 0xFF00:
            return "UN"
        creator = out.get(f"{tag >> 16 << 16 | element >> 8:08X}")
        if creator is None:
            return "UN"
        values = creator.get("Value")
        if creator["vr"] != "LO" or not values or len(values) != 1:
            raise FallBack
        if _private_vr(tag, values[0]) is not None:
            raise FallBack
        return "UN"

    def implicit_vr(self, tag: int, length: int, pos: int, out: dict[str, Any]) -> str:
        """The VR pydicom gives an implicit-VR element (dictionary, private rules, UL, UN)."""
        vr = _dictionary_vr(tag)
        if vr is not None:
            return vr
        if length == 0xFFFFFFFF:
            rel = self.need(pos + 8, 4)
            if _u32(self.buf, rel)[0] == 0xE000FFFE:
                return "SQ"  # pydicom looks ahead: undefined length holding items
            raise FallBack
        if tag >> 16 & 1:
            return self.private_vr(tag, out)
        return "UL" if tag & 0xFFFF == 0 else "UN"

    def sequence(
        self, pos: int, length: int, limit: int, depth: int, path: str
    ) -> tuple[list[dict[str, Any]], int]:
        """Items of a sequence value starting at `pos`; returns them and where it ends."""
        end = None if length == 0xFFFFFFFF else pos + length
        if end is not None and end > limit:
            raise FallBack
        items: list[dict[str, Any]] = []
        while True:
            if end is not None and pos >= end:
                if pos != end:
                    raise FallBack
                return items, pos
            if pos + 8 > limit:
                raise FallBack
            rel = self.need(pos, 8)
            group, element, item_length = _tag_and_length(self.buf, rel)
            tag = group << 16 | element
            if tag == _SEQUENCE_END and end is None:
                if item_length != 0:
                    raise FallBack
                return items, pos + 8
            if tag != _ITEM or depth > self.max_depth:
                raise FallBack
            prefix = f"{path}/{len(items)}/"
            if item_length == 0xFFFFFFFF:
                item, pos = self.dataset(pos + 8, None, depth, prefix)
            else:
                item_end = pos + 8 + item_length
                if item_end > limit:
                    raise FallBack
                item, pos = self.dataset(pos + 8, item_end, depth, prefix)
            if end is None and pos > limit:
                raise FallBack
            items.append(item)

    def encapsulated(self, pos: int) -> int:
        """Walk top-level encapsulated Pixel Data's items (PS3.5 A.4); return its end."""
        start, items, table = pos, 0, 0
        while True:
            if pos + 8 > self.size:
                raise FallBack  # pydicom would scan byte by byte for a delimiter
            rel = self.need(pos, 8)
            group, element, length = _tag_and_length(self.buf, rel)
            tag = group << 16 | element
            pos += 8
            if tag == _SEQUENCE_END:
                if length != 0:
                    raise FallBack
                break
            if tag != _ITEM or pos + length > self.size:
                raise FallBack
            if not items:
                table = length  # the Basic Offset Table, read again by the frame mapping
            items += 1
            pos += length
        value = pos - start
        self.counted += 16 * (items + 2) + table + (value if value <= self.threshold else 0)
        return pos
