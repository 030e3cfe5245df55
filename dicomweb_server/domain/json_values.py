"""One element's value bytes → its DICOM JSON object, exactly as pydicom 3.0 makes it.

The fast header reader (`header_reader`) converts values itself instead of building pydicom
data elements. Each rule below mirrors pydicom's value converter for the VR (`values.py`)
followed by `DataElement.to_json_dict` and `jsonrep.convert_to_python_number`, with the
reading settings we use (lenient validation, no datetime or numpy conversion). Where pydicom
would take a detour (a number it cannot parse and retries as another VR, a value that fails
to convert and is left out, a length that is not a multiple of the value size, ISO 2022
escape sequences) we raise `FallBack` so the caller hands the instance to pydicom.
"""

from __future__ import annotations

import base64
import re
import struct
from typing import Any

__all__ = [
    "BINARY_VRS",
    "LONG_LENGTH_VRS",
    "NUMBER_FORMATS",
    "TEXT_VRS",
    "FallBack",
    "element_json",
]


class FallBack(Exception):
    """The fast reader cannot reproduce pydicom's result for this input: use pydicom."""


BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
# Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
LONG_LENGTH_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)
# Value struct formats and whether JSON holds them as float (FL, FD) or int.
NUMBER_FORMATS: dict[str, tuple[str, int, bool]] = {
    "US": ("H", 2, False),
    "SS": ("h", 2, False),
    "UL": ("L", 4, False),
    "SL": ("l", 4, False),
    "UV": ("Q", 8, False),
    "SV": ("q", 8, False),
    "FL": ("f", 4, True),
    "FD": ("d", 8, True),
}
# Decoded with (0008,0005) Specific Character Set; the others always as ISO 8859-1.
TEXT_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
_MULTI_TEXT_VRS = frozenset({"LO", "SH", "UC"})
_SINGLE_TEXT_VRS = frozenset({"LT", "ST", "UT"})
_PLAIN_VRS = frozenset({"AS", "CS", "DA", "DT", "TM"})
# pydicom adds 65536 to a negative first value of these multi-valued LUT descriptors.
_LUT_DESCRIPTORS = frozenset({0x00281101, 0x00281102, 0x00281103, 0x00283002})
# Numbers whose str → number conversion is the same in pydicom and here; anything else
# (pydicom's retry as another VR, ISfloat truncation, tabs, NULs) falls back.
# IS holds at most 15 digits here: pydicom turns an int that a float cannot hold exactly
# into an ISfloat, whose JSON number is then rounded.
_IS_RE = re.compile(r" *[+-]?[0-9]{1,15} *")
_DS_RE = re.compile(r" *[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)? *")


def element_json(vr: str, tag: int, value: bytes, encoding: str) -> dict[str, Any]:
    """The DICOM JSON object of a non-sequence element with a non-empty `value`.

    `encoding` is the Python codec of the data set's character set ("latin_1" or "utf_8").
    Raise `FallBack` where pydicom's result would differ from these rules.
    """
    fmt = NUMBER_FORMATS.get(vr)
    if fmt is not None:
        return {"vr": vr, "Value": _numbers(tag, value, fmt)}
    if vr in BINARY_VRS:
        return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}
    if vr in TEXT_VRS:
        if b"\x1b" in value:  # ISO 2022 code extensions: pydicom decodes per escape sequence
            raise FallBack
        if vr == "PN":
            return _person_names(value, encoding)
        text = value.decode(encoding, "replace")
        if vr in _SINGLE_TEXT_VRS:
            return _strings(vr, [text.rstrip("\0 ")])
        return _strings(vr, [v.rstrip("\0 ") for v in text.split("\\")])
    text = value.decode("latin_1")
    if vr in _PLAIN_VRS:
        return _strings(vr, text.rstrip(" \0").split("\\"))
    if vr == "UI":
        return _strings(vr, [v.strip() for v in text.rstrip("\0 ").split("\\")])
    if vr == "DS":
        return _numbers_from_text(vr, text.strip().rstrip(" \0").split("\\"), _DS_RE, float)
    if vr == "IS":
        return _numbers_from_text(vr, text.rstrip(" \0").split("\\"), _IS_RE, int)
    if vr == "AE":
        return _strings(vr, [v.strip() for v in text.split("\\")])
    if vr == "UR":
        return _strings(vr, [text.rstrip()])
    if vr == "AT":
        if len(value) % 4:
            raise FallBack
        pairs = struct.unpack(f"<{len(value) // 2}H", value)
        return {
            "vr": vr,
            "Value": [f"{pairs[i] << 16 | pairs[i + 1]:08X}" for i in range(0, len(pairs), 2)],
        }
    raise FallBack  # SQ is the caller's; nothing else is a VR pydicom converts


def _numbers(tag: int, value: bytes, fmt: tuple[str, int, bool]) -> list[Any]:
    char, width, is_float = fmt
    count, rest = divmod(len(value), width)
    if rest:  # pydicom raises BytesLengthException and leaves the element out
        raise FallBack
    numbers = list(struct.unpack(f"<{count}{char}", value))
    if tag in _LUT_DESCRIPTORS and count > 1 and numbers[0] < 0:
        numbers[0] += 65536
    return [float(n) for n in numbers] if is_float else numbers


def _strings(vr: str, values: list[str]) -> dict[str, Any]:
    """A single empty string is an empty element; multiple values are kept as they are."""
    if len(values) == 1 and not values[0]:
        return {"vr": vr}
    return {"vr": vr, "Value": values}


def _numbers_from_text(
    vr: str, values: list[str], pattern: re.Pattern[str], kind: type[int] | type[float]
) -> dict[str, Any]:
    if values == [""]:
        return {"vr": vr}  # pydicom keeps "" as the value: an empty element
    numbers: list[Any] = []
    for text in values:
        if pattern.fullmatch(text) is None:  # also "" among several: pydicom drops those
            raise FallBack
        numbers.append(kind(text))
    return {"vr": vr, "Value": numbers}


def _person_names(value: bytes, encoding: str) -> dict[str, Any]:
    """PN: component groups split on "=", trailing empty groups dropped (PS3.18 F.2.2)."""
    text = value.rstrip(b"\0 ").decode(encoding, "replace")
    names = text.split("\\")
    out: list[dict[str, str]] = []
    for name in names:
        groups = name.split("=")
        while groups and not groups[-1]:
            groups.pop()
        if not groups:
            if len(names) == 1:
                return {"vr": "PN"}
            raise FallBack  # pydicom fails on an empty name among several and drops the element
        entry = {"Alphabetic": groups[0]}
        if len(groups) > 1:
            entry["Ideographic"] = groups[1]
        if len(groups) > 2:
            entry["Phonetic"] = groups[2]
        out.append(entry)
    return {"vr": "PN", "Value": out}
