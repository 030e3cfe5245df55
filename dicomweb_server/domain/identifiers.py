"""UID validation and the immutable keys that name studies, series and instances."""

from __future__ import annotations

import re
from dataclasses import dataclass

from dicomweb_server.errors import InvalidIdentifierError

__all__ = [
    "DEFAULT_SITE",
    "InstanceKey",
    "SeriesKey",
    "StudyKey",
    "is_valid_uid",
    "validate_site",
    "validate_uid",
]

DEFAULT_SITE = "default"

# PS3.5 9.1: components of digits separated by dots, no leading zero in a multi-digit
# component, at most 64 characters. We accept leading zeros (real modalities send them)
# but never anything that could act as a path segment.
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_SITE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def is_valid_uid(value: str) -> bool:
    """True when `value` is digits and dots only, at most 64 characters."""
    return len(value) <= 64 and _UID_RE.match(value) is not None


def validate_uid(value: str, what: str = "UID") -> str:
    """Return `value` if it is a valid UID, else raise InvalidIdentifierError naming `what`."""
    if not is_valid_uid(value):
        shown = value[:80].encode("unicode_escape").decode("ascii")
        raise InvalidIdentifierError(
            f"{what} {shown!r} is not a valid UID (digits and dots, at most 64 characters)"
        )
    return value


def validate_site(value: str) -> str:
    """Return `value` if it is a valid site (partition) name."""
    if not _SITE_RE.match(value):
        raise InvalidIdentifierError(f"site {value[:80]!r} is not a valid site name")
    return value


@dataclass(frozen=True, slots=True)
class StudyKey:
    """A study within a site."""

    site: str
    study_instance_uid: str


@dataclass(frozen=True, slots=True)
class SeriesKey:
    """A series within a study."""

    site: str
    study_instance_uid: str
    series_instance_uid: str

    @property
    def study(self) -> StudyKey:
        return StudyKey(self.site, self.study_instance_uid)


@dataclass(frozen=True, slots=True)
class InstanceKey:
    """An instance within a series."""

    site: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str

    @property
    def series(self) -> SeriesKey:
        return SeriesKey(self.site, self.study_instance_uid, self.series_instance_uid)

    @property
    def study(self) -> StudyKey:
        return StudyKey(self.site, self.study_instance_uid)
