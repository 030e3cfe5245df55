"""The pydicom path of `parse_part10`: dcmread with deferred bulk values, and its DICOM JSON.

Every file `header_reader` does not take comes here (other syntaxes, deflate, big endian,
other character sets, anything unusual), and the tests compare the two paths on every case.
"""

from __future__ import annotations

import struct
import warnings
import zlib
from typing import Any, BinaryIO, cast

import pydicom
import pydicom.config
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from pydicom.uid import DeflatedExplicitVRLittleEndian

from dicomweb_server.domain.attributes import tag_hex
from dicomweb_server.domain.header_reader import (
    EXTENDED_OFFSET_TABLE,
    PIXEL_DATA,
    PIXEL_TAGS,
    implicit_vr_shown,
)
from dicomweb_server.domain.header_types import (
    PREAMBLE_LENGTH,
    InvalidInstanceError,
    ParseLimits,
    bulk_data_path,
    short_reason,
)
from dicomweb_server.domain.records import BulkSpan

__all__ = [
    "BudgetedReader",
    "PydicomHeader",
    "check_depth",
    "check_inflated_size",
    "meta_transfer_syntax",
]

# Parse leniently and quietly: pydicom's warnings can quote values (PHI) into logs.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom\..*")

_BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
# Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
_LONG_LENGTH_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)


class PydicomHeader:
    """A `Header` over a data set pydicom read with deferred bulk values."""

    @classmethod
    def read(cls, reader: BudgetedReader, size: int, limits: ParseLimits) -> PydicomHeader:
        """dcmread through `reader`; the data set's sequences no deeper than the limit."""
        ds = pydicom.dcmread(cast(BinaryIO, reader), defer_size=limits.bulk_data_threshold)
        if reader.exceeded:  # pydicom may have swallowed the reader's error
            raise reader.over_budget()
        header = cls(ds, reader, size, limits)
        check_depth(ds, limits.max_sequence_depth)
        return header

    def __init__(self, ds: Dataset, fp: BudgetedReader, size: int, limits: ParseLimits) -> None:
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
            raise InvalidInstanceError(
                f"cannot convert data set: {short_reason(exc)}", 0xC000
            ) from exc


class BudgetedReader:
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
        # pydicom ends a data set quietly where the file ends, even inside an element: a read
        # the end of the file cuts short says the file was cut (a copy interrupted), except
        # the one read of the next element's header that finds nothing (or zero padding).
        self.cut = False
        self._ended = False

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
        if size is not None and size > 0 and len(data) < size:
            if self._ended or data.strip(b"\0"):
                self.cut = True
            self._ended = True
        return data

    def truncated(self) -> InvalidInstanceError:
        return InvalidInstanceError(
            "the file ends inside a data element: it is truncated (an interrupted copy?)",
            0xC000,
        )

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._fp.seek(offset, whence)

    def tell(self) -> int:
        return self._fp.tell()


def meta_transfer_syntax(fp: BinaryIO) -> tuple[str | None, int]:
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


def check_inflated_size(fp: BinaryIO, start: int, budget: int) -> None:
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
        raise InvalidInstanceError(
            f"deflated data set is corrupt: {short_reason(exc)}", 0xC000
        ) from exc


def check_depth(ds: Dataset, max_depth: int, depth: int = 0) -> None:
    if depth > max_depth:
        raise InvalidInstanceError(f"sequences nested deeper than {max_depth} levels", 0xC000)
    for tag in ds.keys():  # noqa: SIM118 - iterating a Dataset converts every element
        raw = ds._dict.get(BaseTag(tag))
        if raw is not None and raw.VR == "SQ":
            for item in ds[tag].value:
                check_depth(item, max_depth, depth + 1)


def _int_value(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
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
        is_pixels = int(tag) in PIXEL_TAGS and (not prefix or length > limits.bulk_data_threshold)
        if is_pixels or (vr in _BULK_VRS and defined and length > limits.bulk_data_threshold):
            if defined and not deflated and offset + length > size:
                raise InvalidInstanceError(
                    f"value of ({key}) runs past the end of the file", 0xC000
                )
            if defined and offset >= 0 and not deflated and int(tag) not in PIXEL_TAGS:
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
    if vr and " or " not in vr:
        return str(vr)
    return implicit_vr_shown(tag)  # read without a VR
