"""When a study may be deleted: legal holds, a site's minimum retention, and expiry.

A study's age counts from its StudyDate, or, when it has none (or one that is not a date),
from the day it was received. Retention deletes studies older than a site's `retain_years`;
a DELETE of a study younger than its site's `min_retain_years` is refused; a study under a
legal hold is never deleted, rejected or expired. All of it is decided here, from the facts
the index reads under the study row's lock, so a check and the change it allows are atomic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime

from dicomweb_server.errors import ConflictError

__all__ = [
    "DeleteTarget",
    "Hold",
    "HoldConflictError",
    "RetentionConflictError",
    "StudyFacts",
    "check_deletable",
    "is_expired",
    "study_day",
    "years_before",
]

_DATE = re.compile(r"[0-9]{8}")


class HoldConflictError(ConflictError):
    """The study is under a legal hold."""


class RetentionConflictError(ConflictError):
    """The study is younger than its site's minimum retention."""


@dataclass(frozen=True, slots=True)
class DeleteTarget:
    """What a delete names: a study, a series of it, or some of its instances."""

    site: str
    study_instance_uid: str
    series_instance_uid: str | None = None
    sop_instance_uids: tuple[str, ...] | None = None  # None: every instance of the above


@dataclass(frozen=True, slots=True)
class StudyFacts:
    """What deciding about a study needs, read from its row."""

    site: str
    study_instance_uid: str
    patient_id: str | None
    issuer_of_patient_id: str | None
    study_date: str | None
    received: float  # seconds since the epoch


@dataclass(frozen=True, slots=True)
class Hold:
    """A legal hold on one study, or on every study of a patient; `site` None: every site."""

    id: int
    reason: str
    created: float
    created_by: str
    site: str | None = None
    patient_id: str | None = None
    issuer_of_patient_id: str | None = None
    study_instance_uid: str | None = None

    def covers(self, facts: StudyFacts) -> bool:
        """True when the hold applies to this study."""
        if self.site is not None and self.site != facts.site:
            return False
        if self.study_instance_uid is not None:
            return self.study_instance_uid == facts.study_instance_uid
        if self.patient_id is None or self.patient_id != facts.patient_id:
            return False
        return self.issuer_of_patient_id in (None, facts.issuer_of_patient_id)

    @property
    def subject(self) -> str:
        """What the hold is on, in words."""
        if self.study_instance_uid is not None:
            what = f"study {self.study_instance_uid}"
        else:
            issuer = f" (issuer {self.issuer_of_patient_id})" if self.issuer_of_patient_id else ""
            what = f"patient {self.patient_id}{issuer}"
        return f"{what} in {'site ' + self.site if self.site else 'every site'}"

    @property
    def logged_subject(self) -> str:
        """What the hold is on, for a log line: a study's UID, never a Patient ID."""
        what = f"study {self.study_instance_uid}" if self.study_instance_uid else "a patient"
        return f"{what} in {'site ' + self.site if self.site else 'every site'}"


def study_day(facts: StudyFacts) -> date:
    """The day a study's age counts from: its StudyDate, else the day it was received (UTC)."""
    text = (facts.study_date or "").strip()
    if _DATE.fullmatch(text):
        try:
            return date(int(text[:4]), int(text[4:6]), int(text[6:]))
        except ValueError:
            pass
    return datetime.fromtimestamp(facts.received, UTC).date()


def years_before(now: float, years: int) -> date:
    """The day `years` calendar years before `now` (29 February becomes the 28th)."""
    today = datetime.fromtimestamp(now, UTC).date()
    year = today.year - years
    try:
        return today.replace(year=year)
    except ValueError:
        return today.replace(year=year, day=28)


def is_expired(facts: StudyFacts, retain_years: int, now: float) -> bool:
    """True when the study is older than `retain_years`."""
    return study_day(facts) < years_before(now, retain_years)


def check_deletable(
    facts: StudyFacts,
    holds: list[Hold],
    *,
    now: float,
    min_retain_years: int | None = None,
) -> None:
    """Raise a ConflictError naming the reason when the study may not be removed: a hold that
    covers it, or (with `min_retain_years`) an age under the site's minimum retention."""
    for hold in holds:
        if hold.covers(facts):
            raise HoldConflictError(
                f"study {facts.study_instance_uid} is under legal hold {hold.id}"
                f" ({hold.subject}): {hold.reason}"
            )
    if min_retain_years and study_day(facts) > years_before(now, min_retain_years):
        raise RetentionConflictError(
            f"study {facts.study_instance_uid} is younger than site {facts.site}'s minimum"
            f" retention of {min_retain_years} years"
        )
