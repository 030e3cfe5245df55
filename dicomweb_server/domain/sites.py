"""Sites: the hospitals (or archives) one store holds, each with its own DICOMweb root.

A site partitions everything: the same Study, Series and SOP Instance UIDs may exist in two
sites as two independent copies, and a site may keep its objects in its own bucket or folder
(data residency). Site names follow domain/grants.py's rule: they appear in URLs, object keys
and grant strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dicomweb_server.domain.grants import check_site_name

__all__ = ["Site", "choose_site"]


@dataclass(frozen=True, slots=True)
class Site:
    """A site as the catalogue holds it; `storage_url` empty: the server's own store."""

    name: str
    description: str = ""
    storage_url: str = ""
    created: float = 0.0  # seconds since the epoch
    retain_years: int | None = None  # studies older than this are deleted (issue 18)
    min_retain_years: int | None = None  # a younger study may not be deleted (issue 18)
    extra: dict[str, str] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        check_site_name(self.name)


def choose_site(holding: list[str], default_site: str) -> str | None:
    """The one site whose copy the enterprise root serves for a UID several sites hold:
    the default site's, else the first by name. None when no site holds it.

    An answer always comes whole from that one site, never mixed across sites.
    """
    if not holding:
        return None
    if default_site in holding:
        return default_site
    return min(holding)
