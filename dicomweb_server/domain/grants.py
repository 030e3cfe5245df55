"""Grants: `SITE:ROLE` strings saying what a caller may do on which site.

A grant is `site:role`, where the site is a site name or `*` (every site) and the role one of:

    read     QIDO-RS, WADO-RS (instances, frames, bulk data, metadata, rendered, thumbnails)
    write    STOW-RS
    delete   deletion and rejection
    admin    sites, API keys, audit

Roles are separate: none implies another (`*:admin` may manage keys but not read a study, and
`write` does not include `read`). An administrator who also reads is granted both. This keeps
every permission visible in the grant list and lets a machine key be write-only.

Site names are `[a-z0-9][a-z0-9-]{0,62}`: they appear in URLs, object keys and grant strings,
so they are lowercase, need no escaping and never contain `:` or `*`.

In identity-provider role lists (Keycloak's `realm_access.roles`), grants sit among unrelated
roles: `find_grants` keeps the entries that carry the prefix (if any) and are valid grants after
it, and ignores the rest (`offline_access`, `dicomweb:typo`), so a stray role never fails a login.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from dicomweb_server.errors import InvalidNameError

__all__ = [
    "ALL_SITES",
    "EVERY_GRANT",
    "Grant",
    "Role",
    "allows",
    "check_site_name",
    "find_grants",
    "is_valid_site_name",
    "parse_grant",
    "parse_grants",
]

ALL_SITES = "*"
_SITE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


class Role(StrEnum):
    """What a grant permits; each role is separate (none implies another)."""

    READ = "read"
    WRITE = "write"
    DELETE = "delete"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True, order=True)
class Grant:
    """One permission: `role` on `site` (`*`: every site)."""

    site: str
    role: Role

    def __str__(self) -> str:
        return f"{self.site}:{self.role}"


# What `DICOMWEB_AUTH=none` gives every caller: no access control at all.
EVERY_GRANT = frozenset(Grant(ALL_SITES, role) for role in Role)


def is_valid_site_name(name: str) -> bool:
    """True for `[a-z0-9][a-z0-9-]{0,62}`."""
    return _SITE_NAME.fullmatch(name) is not None


def check_site_name(name: str) -> str:
    """The name itself, or InvalidNameError naming the rule it breaks."""
    if not is_valid_site_name(name):
        raise InvalidNameError(
            f"site name {name[:80]!r} must be 1 to 63 characters of a-z, 0-9 and '-',"
            " not starting with '-'"
        )
    return name


def parse_grant(text: str) -> Grant:
    """`SITE:ROLE` → a Grant, or InvalidNameError."""
    site, colon, role = text.partition(":")
    if not colon:
        raise InvalidNameError(f"grant {text[:80]!r} must be SITE:ROLE")
    if site != ALL_SITES:
        check_site_name(site)
    try:
        return Grant(site, Role(role))
    except ValueError:
        choices = ", ".join(Role)
        raise InvalidNameError(f"grant {text[:80]!r} has no role ({choices})") from None


def parse_grants(texts: Iterable[str]) -> frozenset[Grant]:
    """Every `SITE:ROLE` string as a Grant; the first invalid one raises InvalidNameError."""
    return frozenset(parse_grant(text) for text in texts)


def find_grants(entries: Iterable[str], prefix: str = "") -> frozenset[Grant]:
    """The grants among `entries` (strings starting with `prefix`, then `SITE:ROLE`); others
    are ignored, as identity providers mix grants with unrelated roles."""
    found = set()
    for entry in entries:
        if not entry.startswith(prefix):
            continue
        try:
            found.add(parse_grant(entry[len(prefix) :]))
        except InvalidNameError:
            continue
    return frozenset(found)


def allows(grants: Iterable[Grant], site: str, role: Role) -> bool:
    """True if a grant gives `role` on `site` (its own or `*`); roles never imply each other.

    `site="*"` asks for every site at once, which only a `*` grant answers."""
    return any(grant.role == role and grant.site in (site, ALL_SITES) for grant in grants)
