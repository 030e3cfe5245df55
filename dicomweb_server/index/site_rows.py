"""Site rows as both indexes store them (the `sites` table)."""

from __future__ import annotations

from typing import Any

from dicomweb_server.domain.sites import Site

__all__ = ["SITE_COLUMNS", "site_from_row", "site_values"]

SITE_COLUMNS = ("name", "description", "storage_url", "created", "retain_years", "min_retain_years")


def site_from_row(row: Any) -> Site:
    """A row of SITE_COLUMNS (a tuple or an asyncpg Record) as a Site."""
    return Site(
        name=row[0],
        description=row[1],
        storage_url=row[2],
        created=float(row[3]),
        retain_years=row[4],
        min_retain_years=row[5],
    )


def site_values(site: Site) -> tuple[Any, ...]:
    """A Site's values in SITE_COLUMNS order."""
    return (
        site.name,
        site.description,
        site.storage_url,
        site.created,
        site.retain_years,
        site.min_retain_years,
    )
