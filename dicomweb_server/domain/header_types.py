"""What parsing a Part 10 header promises, whichever reader parses it.

The limits applied to untrusted input, the one error a parse raises, the BulkDataURI form,
and `Header`: the questions `part10`'s record builder asks of a parsed header. `header_reader`
(the fast path) and `pydicom_header` (pydicom) each answer them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from dicomweb_server.domain.records import BulkSpan

__all__ = [
    "PREAMBLE_LENGTH",
    "Header",
    "InvalidInstanceError",
    "ParseLimits",
    "bulk_data_path",
    "short_reason",
]

PREAMBLE_LENGTH = 128


class InvalidInstanceError(Exception):
    """The bytes are not an instance we can store; `reason` is for the STOW response.

    `sop_class_uid` and `sop_instance_uid` name the instance when they were read before the
    failure (a STOW failure entry identifies it by them, PS3.18 10.5.3); else they are "".
    """

    def __init__(
        self,
        reason: str,
        failure_code: int,
        *,
        sop_class_uid: str = "",
        sop_instance_uid: str = "",
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.failure_code = failure_code
        self.sop_class_uid = sop_class_uid
        self.sop_instance_uid = sop_instance_uid


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


def short_reason(exc: BaseException) -> str:
    """An exception as a reason for a STOW response, at most 200 characters."""
    text = str(exc) or type(exc).__name__
    return text[:200]


class Header(Protocol):
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
