from __future__ import annotations

import pytest

from dicomweb_server.domain.identifiers import (
    InstanceKey,
    is_valid_uid,
    validate_site,
    validate_uid,
)
from dicomweb_server.errors import InvalidIdentifierError


@pytest.mark.parametrize("value", ["1", "1.2.840.10008.1.2.1", "1." * 31 + "12"])
def test_valid_uids(value: str) -> None:
    assert is_valid_uid(value)
    assert validate_uid(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "1.2.",
        ".1",
        "1..2",
        "1.2a",
        "../etc",
        "%2e%2e",
        "1.2/3",
        "1 2",
        "1." * 32 + "1",
        "1.2\r\n3",
    ],
)
def test_invalid_uids_are_refused_with_a_reason(value: str) -> None:
    assert not is_valid_uid(value)
    with pytest.raises(InvalidIdentifierError, match="not a valid UID"):
        validate_uid(value, "StudyInstanceUID")


def test_reason_escapes_control_characters() -> None:
    with pytest.raises(InvalidIdentifierError) as caught:
        validate_uid("1.2\r\nX-Forged: yes")
    assert "\r" not in caught.value.reason and "\n" not in caught.value.reason


def test_site_names() -> None:
    assert validate_site("default") == "default"
    with pytest.raises(InvalidIdentifierError):
        validate_site("../x")


def test_keys_navigate_up() -> None:
    key = InstanceKey("default", "1.2", "1.2.3", "1.2.3.4")
    assert key.series.series_instance_uid == "1.2.3"
    assert key.study.study_instance_uid == "1.2"
