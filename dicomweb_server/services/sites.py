"""Sites (issue 16): the catalogue, which site a request means, and managing sites.

Every resource exists at the DICOMweb root and at each site's root `/sites/{site}`. At a
site's root everything concerns that site. At the enterprise root, STOW stores into the
default site, QIDO searches every site (each result carries its site's RetrieveURL), and WADO
serves one site's copy of a study: the default site's when it holds the study, else the
first holding site by name (domain/sites.py `choose_site`), so an answer never mixes copies.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace

from dicomweb_server.domain.grants import check_site_name
from dicomweb_server.domain.sites import Site, choose_site
from dicomweb_server.errors import ConflictError, NotFoundError
from dicomweb_server.index.base import SiteCatalog

__all__ = ["SiteService"]

_KNOWN_TTL = 10.0  # seconds a process trusts its list of site names (sites added elsewhere)


class SiteService:
    """Site lookups for requests (cached briefly) and site management for the CLI."""

    def __init__(self, catalog: SiteCatalog, default_site: str) -> None:
        self._catalog = catalog
        self.default_site = default_site
        self._names: frozenset[str] = frozenset()
        self._fresh_until = 0.0
        self._lock = asyncio.Lock()

    async def names(self) -> frozenset[str]:
        """Every site name (re-read from the catalogue at most every few seconds)."""
        if time.monotonic() < self._fresh_until:
            return self._names
        async with self._lock:
            if time.monotonic() >= self._fresh_until:
                self._names = frozenset(site.name for site in await self._catalog.list_sites())
                self._fresh_until = time.monotonic() + _KNOWN_TTL
        return self._names

    def known(self, name: str) -> bool:
        """Whether `name` was a site when the names were last read (no lookup): for labels
        that must not grow with whatever names requests make up."""
        return name in self._names

    async def check_exists(self, name: str) -> None:
        """NotFoundError naming the site unless it exists (one re-read when not known yet)."""
        check_site_name(name)
        if name in await self.names():
            return
        self._fresh_until = 0.0  # added a moment ago, maybe: look again before refusing
        if name not in await self.names():
            raise NotFoundError(f"site {name!r} does not exist")

    async def site_for_study(
        self, study_instance_uid: str, allowed: Callable[[str], bool] | None = None
    ) -> str:
        """The site whose copy of the study the enterprise root serves, among the `allowed`
        sites (the caller's readable ones); the default site when none holds it: the
        answer is then its 404 (or 403 for a caller who may not read it)."""
        if await self.names() == {self.default_site}:
            # One site (most stores): no query per request. A site another process added
            # shows here within _KNOWN_TTL; until then the root serves the default site.
            return self.default_site
        holding = await self._catalog.sites_holding_study(study_instance_uid)
        if allowed is not None:
            holding = [site for site in holding if allowed(site)]
        return choose_site(holding, self.default_site) or self.default_site

    # -- management ------------------------------------------------------------------------

    async def list_sites(self) -> list[Site]:
        return await self._catalog.list_sites()

    async def get_site(self, name: str) -> Site:
        check_site_name(name)
        found = await self._catalog.get_site(name)
        if found is None:
            raise NotFoundError(f"site {name!r} does not exist")
        return found

    async def add_site(self, name: str, description: str = "", storage_url: str = "") -> Site:
        """Add a site; the caller has checked that `storage_url` (if any) is reachable."""
        site = Site(check_site_name(name), description, storage_url, created=time.time())
        await self._catalog.add_site(site)
        self._fresh_until = 0.0
        return site

    async def update_site(self, site: Site, **changes: object) -> Site:
        """Change a site's description or retention; never its storage URL (its objects live
        there: moving them is an export and an import into a new site)."""
        updated = replace(site, **changes)  # type: ignore[arg-type]
        if updated.storage_url != site.storage_url:
            raise ConflictError(
                f"site {site.name!r}: the storage URL cannot change; add a new site instead"
            )
        await self._catalog.update_site(updated)
        return updated

    async def remove_site(self, name: str) -> None:
        """Remove an empty site (ConflictError naming it when it holds studies)."""
        check_site_name(name)
        if name == self.default_site:
            raise ConflictError(f"site {name!r} is the default site (DICOMWEB_DEFAULT_SITE)")
        await self._catalog.remove_site(name)
        self._fresh_until = 0.0
