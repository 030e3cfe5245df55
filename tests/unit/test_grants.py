"""Grants (issue 17): `SITE:ROLE` parsing, site names, and roles that never imply each other."""

from __future__ import annotations

import pytest

from dicomweb_server.domain.grants import (
    ALL_SITES,
    EVERY_GRANT,
    Grant,
    Role,
    allows,
    check_site_name,
    find_grants,
    is_valid_site_name,
    parse_grant,
    parse_grants,
)
from dicomweb_server.errors import BadRequestError, InvalidNameError


@pytest.mark.parametrize("name", ["a", "0", "hospital-a", "a-", "x" * 63, "site-2024", "9lives"])
def test_issue17_valid_site_names(name: str) -> None:
    assert is_valid_site_name(name)
    assert check_site_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "-a", "A", "Hospital", "x" * 64, "a_b", "a.b", "a b", "*", "a:b", "é", "a\n", "a/b"],
)
def test_issue17_invalid_site_names(name: str) -> None:
    assert not is_valid_site_name(name)
    with pytest.raises(InvalidNameError, match="site name") as caught:
        check_site_name(name)
    assert caught.value.status == 400
    assert isinstance(caught.value, BadRequestError)


def test_issue17_grant_parses_site_and_role() -> None:
    assert parse_grant("hospital-a:read") == Grant("hospital-a", Role.READ)
    assert parse_grant("*:admin") == Grant(ALL_SITES, Role.ADMIN)
    assert str(Grant("hospital-a", Role.DELETE)) == "hospital-a:delete"
    assert parse_grants(["a:read", "a:write", "a:read"]) == {
        Grant("a", Role.READ),
        Grant("a", Role.WRITE),
    }


@pytest.mark.parametrize(
    "text",
    ["", "read", "a", ":read", "a:", "a:READ", "a:owner", "A:read", "a:read:x", "**:read",
     "a*:read", " a:read", "a:read "],
)  # fmt: skip
def test_issue17_malformed_grants_are_refused(text: str) -> None:
    with pytest.raises(InvalidNameError):
        parse_grant(text)


def test_issue17_parse_grants_stops_at_the_first_bad_one() -> None:
    with pytest.raises(InvalidNameError, match="no role"):
        parse_grants(["a:read", "a:rwx"])


def test_issue17_grant_reason_is_bounded() -> None:
    with pytest.raises(InvalidNameError) as caught:
        parse_grant("x" * 10_000)
    assert len(caught.value.reason) < 200


def test_issue17_roles_are_separate() -> None:
    admin = {Grant(ALL_SITES, Role.ADMIN)}
    assert allows(admin, "hospital-a", Role.ADMIN)
    for role in (Role.READ, Role.WRITE, Role.DELETE):
        assert not allows(admin, "hospital-a", role)
    writer = {Grant("a", Role.WRITE)}
    assert allows(writer, "a", Role.WRITE)
    assert not allows(writer, "a", Role.READ)


def test_issue17_star_is_every_site_and_a_site_is_only_itself() -> None:
    grants = {Grant(ALL_SITES, Role.READ), Grant("a", Role.WRITE)}
    assert allows(grants, "a", Role.READ)
    assert allows(grants, "b", Role.READ)
    assert allows(grants, "a", Role.WRITE)
    assert not allows(grants, "b", Role.WRITE)
    # "every site at once" is only answered by a `*` grant
    assert allows(grants, ALL_SITES, Role.READ)
    assert not allows(grants, ALL_SITES, Role.WRITE)
    assert not allows(set(), "a", Role.READ)


def test_issue17_allows_takes_role_strings() -> None:
    assert allows({Grant("a", Role.READ)}, "a", Role("read"))


def test_issue17_every_grant_allows_everything() -> None:
    for role in Role:
        assert allows(EVERY_GRANT, "any-site", role)
    assert len(EVERY_GRANT) == len(Role)


def test_issue17_find_grants_ignores_unrelated_roles() -> None:
    keycloak_roles = [
        "offline_access",
        "uma_authorization",
        "default-roles-hospital",
        "dicomweb:hospital-a:read",
        "dicomweb:*:write",
        "dicomweb:typo",
        "dicomweb:Hospital:read",
        "other:hospital-b:read",
    ]
    assert find_grants(keycloak_roles, "dicomweb:") == {
        Grant("hospital-a", Role.READ),
        Grant(ALL_SITES, Role.WRITE),
    }
    # Without a prefix every entry is a candidate: only valid grants count
    assert find_grants(["hospital-a:read", "offline_access", "other:hospital-b:read"]) == {
        Grant("hospital-a", Role.READ)
    }
    assert find_grants([]) == frozenset()
