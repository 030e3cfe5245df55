"""IHE IOCM rejection notes: a Key Object Selection Document whose title is a rejection code.

A rejection note (IHE RAD TF-3 4.66, PS3.16 CID 7011 "Rejected for Quality Reasons" and its
siblings) names, in its Current Requested Procedure Evidence Sequence, the instances it
rejects: study → ReferencedSeriesSequence → ReferencedSOPSequence. `rejection_note` reads
that from the instance's DICOM JSON metadata (as domain/part10.py produces it at ingest);
`parse_rejection_code` reads the `{CodeValue}^{CodingSchemeDesignator}` of the reject
resource dcm4chee defines (`POST .../reject/113001^DCM`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dicomweb_server.domain.identifiers import is_valid_uid
from dicomweb_server.errors import BadRequestError

__all__ = [
    "DATA_RETENTION_POLICY_EXPIRED",
    "KEY_OBJECT_SELECTION_DOCUMENT",
    "REJECTION_CODES",
    "RejectedReference",
    "RejectionCode",
    "RejectionNote",
    "parse_rejection_code",
    "rejection_note",
]

KEY_OBJECT_SELECTION_DOCUMENT = "1.2.840.10008.5.1.4.1.1.88.59"


@dataclass(frozen=True, slots=True, order=True)
class RejectionCode:
    """A coded rejection reason, `113001^DCM` in its text form."""

    value: str
    scheme: str

    def __str__(self) -> str:
        return f"{self.value}^{self.scheme}"

    @property
    def meaning(self) -> str:
        return REJECTION_CODES[self]


# PS3.16 CID 7011 (Rejected for Quality Reasons and the other IOCM titles), scheme DCM.
REJECTION_CODES: dict[RejectionCode, str] = {
    RejectionCode("113001", "DCM"): "Rejected for Quality Reasons",
    RejectionCode("113037", "DCM"): "Rejected for Patient Safety Reasons",
    RejectionCode("113038", "DCM"): "Incorrect Modality Worklist Entry",
    RejectionCode("113039", "DCM"): "Data Retention Policy Expired",
}
# The one rejection that removes data for its age: a study's minimum retention applies to it.
DATA_RETENTION_POLICY_EXPIRED = RejectionCode("113039", "DCM")


@dataclass(frozen=True, slots=True)
class RejectedReference:
    """One instance a rejection note names."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str


@dataclass(frozen=True, slots=True)
class RejectionNote:
    """What a rejection note says: why, and which instances."""

    code: RejectionCode
    references: tuple[RejectedReference, ...]

    def studies(self) -> list[str]:
        """The studies the note names, in the order first named."""
        return list(dict.fromkeys(ref.study_instance_uid for ref in self.references))


def parse_rejection_code(text: str) -> RejectionCode:
    """`113001^DCM` → its RejectionCode; BadRequestError for anything but a CID 7011 code."""
    value, caret, scheme = text.partition("^")
    code = RejectionCode(value, scheme)
    if not caret or code not in REJECTION_CODES:
        known = ", ".join(f"{c} ({m})" for c, m in REJECTION_CODES.items())
        raise BadRequestError(f"rejection code {text[:40]!r} is not one of {known}")
    return code


def _items(model: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    element = model.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    return [item for item in values or () if isinstance(item, dict)]


def _text(model: dict[str, Any], tag: str) -> str:
    element = model.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    if not values or not isinstance(values[0], str):
        return ""
    return values[0].strip()


def rejection_note(metadata: dict[str, Any]) -> RejectionNote | None:
    """The rejection an instance's DICOM JSON carries, or None when it is not a rejection note
    (another SOP Class, or a Key Object Selection whose title is no rejection code).

    References with a malformed UID are left out: they could never match a stored instance.
    """
    if _text(metadata, "00080016") != KEY_OBJECT_SELECTION_DOCUMENT:
        return None
    titles = _items(metadata, "0040A043")  # ConceptNameCodeSequence
    if not titles:
        return None
    code = RejectionCode(_text(titles[0], "00080100"), _text(titles[0], "00080102"))
    if code not in REJECTION_CODES:
        return None
    own = _text(metadata, "00080018")
    references: dict[str, RejectedReference] = {}
    for study in _items(metadata, "0040A375"):  # CurrentRequestedProcedureEvidenceSequence
        study_uid = _text(study, "0020000D")
        for series in _items(study, "00081115"):  # ReferencedSeriesSequence
            series_uid = _text(series, "0020000E")
            for sop in _items(series, "00081199"):  # ReferencedSOPSequence
                sop_uid = _text(sop, "00081155")
                uids = (study_uid, series_uid, sop_uid)
                if sop_uid == own or not all(is_valid_uid(uid) for uid in uids):
                    continue
                references.setdefault(sop_uid, RejectedReference(*uids))
    return RejectionNote(code, tuple(references.values()))
