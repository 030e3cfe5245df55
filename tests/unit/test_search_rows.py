"""index/rows.py: search rows parse each stored attribute blob once per process, and a
changed study is never answered from an older parse."""

from __future__ import annotations

import orjson
import pytest

from dicomweb_server.domain.attributes import Level
from dicomweb_server.index import rows


def _study_row(name: str, instances: int = 3) -> tuple[object, ...]:
    attributes = {
        "0020000D": {"vr": "UI", "Value": ["1.2.3"]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": name}]},
    }
    return (orjson.dumps(attributes), "CT\\MR", "1.2.840.10008.5.1.4.1.1.2", 2, instances)


def test_issue16_a_study_row_reads_its_stored_attributes_and_aggregates() -> None:
    (row,) = rows.search_rows(Level.STUDY, [_study_row("Doe^Jane")])
    assert row["00100010"]["Value"] == [{"Alphabetic": "Doe^Jane"}]
    assert row["00080061"] == {"vr": "CS", "Value": ["CT", "MR"]}
    assert row["00201208"] == {"vr": "IS", "Value": [3]}


def test_issue16_a_changed_blob_is_parsed_anew_never_answered_from_the_old_parse() -> None:
    first = rows.search_rows(Level.STUDY, [_study_row("Doe^Jane")])[0]
    renamed = rows.search_rows(Level.STUDY, [_study_row("Roe^Rick")])[0]
    assert first["00100010"]["Value"] == [{"Alphabetic": "Doe^Jane"}]
    assert renamed["00100010"]["Value"] == [{"Alphabetic": "Roe^Rick"}]


def test_issue16_study_rows_are_shared_read_only_and_a_copy_is_the_callers() -> None:
    one, two = rows.search_rows(Level.STUDY, [_study_row("Doe^Jane"), _study_row("Doe^Jane", 9)])
    (again,) = rows.search_rows(Level.STUDY, [_study_row("Doe^Jane")])
    assert again is one  # the same study found again: built once
    assert two is not one and two["00201208"]["Value"] == [9]  # other aggregates: another row
    for change in (
        lambda: one.pop("00100010"),
        lambda: one.__setitem__("00081190", {}),
        lambda: one.update({}),
        lambda: one.setdefault("x", 1),
        lambda: one.clear(),
    ):
        with pytest.raises(TypeError, match="shared between requests"):
            change()
    copy = dict(one)  # what the search service shapes (drop keys, add RetrieveURL)
    copy.pop("00100010")
    copy["00081190"] = {"vr": "UR", "Value": ["http://x/studies/1.2.3"]}
    assert one["00100010"]["Value"] == [{"Alphabetic": "Doe^Jane"}]
    assert "00081190" not in one
    assert orjson.loads(orjson.dumps(one)) == dict(one)  # serialised as the dict it is


def test_issue16_the_parse_cache_keeps_a_bounded_number_of_blobs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rows, "_PARSED_KEPT", 4)
    cache = rows._ParsedAttributes()
    for n in range(10):
        assert cache(orjson.dumps({"n": n})) == {"n": n}
    assert len(cache._kept) == 4
    kept = len(cache._kept)
    assert cache(orjson.dumps({"n": 9}).decode()) == {"n": 9}  # a str (asyncpg) is the same key
    assert len(cache._kept) == kept


def _instance_row(sop: str, series_count: int = 2, name: str = "Doe^Jane") -> tuple[object, ...]:
    series = {"0020000E": {"vr": "UI", "Value": ["1.2.3.4"]}}
    instance = {"00080018": {"vr": "UI", "Value": [sop]}}
    study = _study_row(name)
    return (*study, "1.2.3", orjson.dumps(series), series_count, "1.2.3.4", orjson.dumps(instance))


def test_issue22_instance_rows_are_shared_by_what_makes_them() -> None:
    """A series' instance list asked again is built once; a new instance in the series (its
    count), another study name or another instance is another row."""
    one, two = rows.search_rows(Level.INSTANCE, [_instance_row("1.9.1"), _instance_row("1.9.2")])
    assert one["00080018"]["Value"] == ["1.9.1"] and two["00080018"]["Value"] == ["1.9.2"]
    assert one["00201209"]["Value"] == [2]
    (again,) = rows.search_rows(Level.INSTANCE, [_instance_row("1.9.1")])
    assert again is one and isinstance(one, rows.SharedRow)
    (grown,) = rows.search_rows(Level.INSTANCE, [_instance_row("1.9.1", series_count=3)])
    assert grown is not one and grown["00201209"]["Value"] == [3]
    (renamed,) = rows.search_rows(Level.INSTANCE, [_instance_row("1.9.1", name="Roe^Rick")])
    assert renamed["00100010"]["Value"] == [{"Alphabetic": "Roe^Rick"}]
    with pytest.raises(TypeError, match="shared between requests"):
        one["00081190"] = {}
    # A study row of the same stored study is a row of its own level.
    (study,) = rows.search_rows(Level.STUDY, [_study_row("Doe^Jane")])
    assert "00080018" not in study and study.key[0] is Level.STUDY
