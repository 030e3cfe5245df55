"""domain/sites.py: site records and the enterprise root's choice of copy (issue 16)."""

from __future__ import annotations

import pytest

from dicomweb_server.domain.sites import Site, choose_site
from dicomweb_server.errors import InvalidNameError


def test_site_names_are_checked() -> None:
    assert Site("hospital-a").storage_url == ""
    for bad in ("", "A", "-x", "x_y", "a" * 64, "a/b"):
        with pytest.raises(InvalidNameError):
            Site(bad)


@pytest.mark.parametrize(
    ("holding", "chosen"),
    [
        ([], None),
        (["b"], "b"),
        (["c", "b"], "b"),
        (["c", "default", "b"], "default"),
    ],
)
def test_issue16_enterprise_root_serves_the_default_copy_else_the_first_by_name(
    holding: list[str], chosen: str | None
) -> None:
    assert choose_site(holding, "default") == chosen
