"""Access decisions (issue 17): may this principal do this at this site, and why not.

`web/auth.py` only turns a request into a Principal; every decision is made here. Grants are
per site and role (domain/grants.py): `read` for QIDO and WADO, `write` for STOW, `delete` for
deletion and rejection, `admin` for sites, keys and the audit trail. At the enterprise root a
search covers only the sites the caller may read (never a 403 for the others), and WADO
serves a copy only from a site the caller may read.
"""

from __future__ import annotations

from collections.abc import Iterable

from dicomweb_server.domain.grants import Role
from dicomweb_server.errors import ForbiddenError
from dicomweb_server.services.principal import Principal

__all__ = ["check", "readable_sites", "role_for_method"]

_ROLE_BY_METHOD = {
    "GET": Role.READ,
    "HEAD": Role.READ,
    "POST": Role.WRITE,
    "PUT": Role.WRITE,
    "DELETE": Role.DELETE,
}


def role_for_method(method: str, path: str = "") -> Role:
    """The role a request needs: by its method, except the resources that say otherwise
    (the audit trail needs `admin`, IOCM rejection `delete`)."""
    if "/audit" in path:
        return Role.ADMIN
    if "/reject/" in path:
        return Role.DELETE
    return _ROLE_BY_METHOD.get(method.upper(), Role.ADMIN)


def check(principal: Principal, site: str, role: Role) -> None:
    """ForbiddenError naming the missing grant unless `principal` may act as `role` at `site`."""
    if not principal.allows(site, role):
        raise ForbiddenError(
            f"{principal.display_name or principal.subject} has no {site}:{role.value} grant"
        )


def readable_sites(principal: Principal, sites: Iterable[str]) -> list[str]:
    """The sites (of `sites`) the principal may read, in their order."""
    return [site for site in sites if principal.allows(site, Role.READ)]
