"""Who is calling: a `Principal`, the authenticated subject with its grants."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dicomweb_server.domain.grants import EVERY_GRANT, Grant, Role, allows

__all__ = ["ANONYMOUS", "Principal", "PrincipalKind"]

PrincipalKind = Literal["oidc", "apikey", "anonymous"]


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: `subject` is stable and unique within its `kind` (the token's
    `sub`, the API key's name); `display_name` is for people and audit, never for decisions."""

    subject: str
    kind: PrincipalKind
    grants: frozenset[Grant]
    display_name: str = ""

    def allows(self, site: str, role: Role) -> bool:
        """True if a grant gives `role` on `site` (roles never imply each other)."""
        return allows(self.grants, site, role)


# DICOMWEB_AUTH=none: no access control, so the one caller there is holds every grant.
ANONYMOUS = Principal("anonymous", "anonymous", EVERY_GRANT, "anonymous")
