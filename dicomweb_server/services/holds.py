"""Legal holds (issue 18): studies, or a patient's studies, that must not be removed.

A held study cannot be deleted, rejected or expired: the delete transaction reads the holds
under the study row's lock (domain/lifecycle.py decides) and refuses with a 409 naming the
hold's id and reason. What of a held study is already in the trash stays there, restorable:
purge skips it (services/delete.py) until the hold is removed. Hold ids are never reused, so
"hold N" in a message or log names one hold. Adding and removing a hold is logged with who
did it, so the audit trail can pick it up.
"""

from __future__ import annotations

import logging
import time

from dicomweb_server.domain.grants import check_site_name
from dicomweb_server.domain.identifiers import validate_uid
from dicomweb_server.domain.lifecycle import Hold
from dicomweb_server.errors import BadRequestError, NotFoundError
from dicomweb_server.index.base import LegalHolds

__all__ = ["HoldService"]

log = logging.getLogger("dicomweb_server.holds")


class HoldService:
    """Add, list and remove legal holds."""

    def __init__(self, holds: LegalHolds) -> None:
        self._holds = holds

    async def add(
        self,
        *,
        reason: str,
        who: str,
        patient_id: str | None = None,
        issuer_of_patient_id: str | None = None,
        study_instance_uid: str | None = None,
        site: str | None = None,
    ) -> Hold:
        """Hold a study or a patient's studies (in one site, or every site)."""
        if (patient_id is None) == (study_instance_uid is None):
            raise BadRequestError("a hold is on a patient (--patient) or on a study (--study)")
        if issuer_of_patient_id is not None and patient_id is None:
            raise BadRequestError("--issuer qualifies --patient")
        if not reason.strip():
            raise BadRequestError("a hold needs a reason")
        if study_instance_uid is not None:
            validate_uid(study_instance_uid, "StudyInstanceUID")
        if site is not None:
            check_site_name(site)
        hold = await self._holds.add_hold(
            Hold(
                0,
                reason.strip(),
                time.time(),
                who,
                site,
                patient_id,
                issuer_of_patient_id,
                study_instance_uid,
            )
        )
        # Neither the Patient ID nor the reason (free text) goes to the log: the audit trail
        # has them (cli/lifecycle.py records each change).
        log.info("legal hold %d added by %s on %s", hold.id, who, hold.logged_subject)
        return hold

    async def list(self) -> list[Hold]:
        """Every hold, oldest first."""
        return await self._holds.list_holds()

    async def remove(self, hold_id: int, *, who: str) -> Hold:
        """Lift a hold (NotFoundError when there is none with this id)."""
        removed = await self._holds.remove_hold(hold_id)
        if removed is None:
            raise NotFoundError(f"there is no legal hold {hold_id}")
        log.info("legal hold %d removed by %s (was on %s)", removed.id, who, removed.logged_subject)
        return removed
