"""The Store Instances response data set (PS3.18 10.5.3) and its reason codes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CANNOT_UNDERSTAND",
    "DATA_SET_DOES_NOT_MATCH",
    "DUPLICATE_SOP_INSTANCE",
    "NOT_AUTHORIZED",
    "OUT_OF_RESOURCES",
    "PROCESSING_FAILURE",
    "SUBSEQUENT_OCCURRENCE_OF_REJECTED_OBJECT",
    "StowResult",
]

# FailureReason values (PS3.18 Table 10.5.3-2 via PS3.4 B.2.3 and PS3.7 C.4.2).
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111  # same SOP Instance UID, different content: never overwritten
# "Refused: Not authorized" (PS3.7 C.4): a rejection note from a caller without the site's
# `delete` grant (storing one is a rejection, issue 18).
NOT_AUTHORIZED = 0x0124
OUT_OF_RESOURCES = 0xA700  # a part or image larger than a configured limit
DATA_SET_DOES_NOT_MATCH = 0xA900  # identity missing, or study differs from the request URL
CANNOT_UNDERSTAND = 0xC000  # not DICOM Part 10, truncated, malformed
# An instance an IOCM rejection named, sent again (issue 18). A refusal in PS3.4's A7xx range,
# the value dcm4chee-arc gives it ("Subsequent occurrence of rejected Object"; its 0xA770 is
# "Rejection Note already received").
SUBSEQUENT_OCCURRENCE_OF_REJECTED_OBJECT = 0xA771


@dataclass(slots=True)
class _Failure:
    sop_class_uid: str
    sop_instance_uid: str
    reason: int
    text: str


@dataclass(slots=True)
class StowResult:
    """Stored and failed instances of one STOW request, in arrival order."""

    stored: list[tuple[str, str, str, str]] = field(
        default_factory=list
    )  # class, sop, study, series
    failed: list[_Failure] = field(default_factory=list)
    studies: set[str] = field(default_factory=set)

    def add_stored(
        self, sop_class_uid: str, sop_instance_uid: str, study: str, series: str
    ) -> None:
        """Record an instance that is now (or already was, identically) stored."""
        self.stored.append((sop_class_uid, sop_instance_uid, study, series))
        self.studies.add(study)

    def add_failed(self, sop_class_uid: str, sop_instance_uid: str, reason: int, text: str) -> None:
        """Record a part that was not stored, with its FailureReason code and a readable text."""
        self.failed.append(_Failure(sop_class_uid, sop_instance_uid, reason, text))

    @property
    def status(self) -> int:
        """200 all stored, 202 some failed, 409 none stored (PS3.18 10.5.3.1)."""
        if not self.failed:
            return 200
        return 202 if self.stored else 409

    @property
    def failure_texts(self) -> list[str]:
        """Readable reasons of the failures, for Warning headers and logs."""
        return [f.text for f in self.failed]

    def to_json(self, root_url: str, study_in_path: str | None) -> dict[str, Any]:
        """The response data set as DICOM JSON, with RetrieveURLs under `root_url`."""
        body: dict[str, Any] = {}
        study = study_in_path or (next(iter(self.studies)) if len(self.studies) == 1 else None)
        if study is not None and self.stored:
            body["00081190"] = {"vr": "UR", "Value": [f"{root_url}/studies/{study}"]}
        if self.failed:
            body["00081198"] = {
                "vr": "SQ",
                "Value": [
                    {
                        "00081150": _ui(f.sop_class_uid),
                        "00081155": _ui(f.sop_instance_uid),
                        "00081197": {"vr": "US", "Value": [f.reason]},
                    }
                    for f in self.failed
                ],
            }
        if self.stored:
            body["00081199"] = {
                "vr": "SQ",
                "Value": [
                    {
                        "00081150": _ui(sop_class),
                        "00081155": _ui(sop),
                        "00081190": {
                            "vr": "UR",
                            "Value": [f"{root_url}/studies/{st}/series/{se}/instances/{sop}"],
                        },
                    }
                    for sop_class, sop, st, se in self.stored
                ],
            }
        return body


def _ui(value: str) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}
