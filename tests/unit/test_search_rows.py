"""index/rows.py: search rows parse each stored attribute blob once per process, are built
once per study version, and a changed study is never answered from an older row."""

from __future__ import annotations

import orjson
import pytest

from dicomweb_server.domain.attributes import Level
from dicomweb_server.index import rows


def _study_columns(name: str, instances: int) -> tuple[object, ...]:
    attributes = {
        "0020000D": {"vr": "UI", "Value": ["1.2.3"]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": name}]},
    }
    return (orjson.dumps(attributes), "CT\\MR", "1.2.840.10008.5.1.4.1.1.2", 2, instances)


def _study_row(
    name: str, instances: int = 3, *, version: int = 1, row_id: int = 1
) -> tuple[object, ...]:
    """A study search row as index/sql.py's `rows_by_id` selects it."""
    columns = _study_columns(name, instances)
    return (*columns, "1.2.3", None, None, None, None, None, "site", version, row_id)


def test_issue16_a_study_row_reads_its_stored_attributes_and_aggregates() -> None:
    (row,) = rows.search_rows(Level.STUDY, [_study_row("Doe^Jane")])
    assert row["00100010"]["Value"] == [{"Alphabetic": "Doe^Jane"}]
    assert row["00080061"] == {"vr": "CS", "Value": ["CT", "MR"]}
    assert row["00201208"] == {"vr": "IS", "Value": [3]}


def test_issue16_a_changed_study_is_built_anew_never_answered_from_the_old_row() -> None:
    first = rows.search_rows(Level.STUDY, [_study_row("Doe^Jane", version=10)])[0]
    renamed = rows.search_rows(Level.STUDY, [_study_row("Roe^Rick", version=11)])[0]
    assert first["00100010"]["Value"] == [{"Alphabetic": "Doe^Jane"}]
    assert renamed["00100010"]["Value"] == [{"Alphabetic": "Roe^Rick"}]
    assert renamed is not first


def test_issue16_study_rows_are_shared_read_only_and_a_copy_is_the_callers() -> None:
    one, two = rows.search_rows(
        Level.STUDY, [_study_row("Doe^Jane", version=20), _study_row("Doe^Jane", 9, version=21)]
    )
    (again,) = rows.search_rows(Level.STUDY, [_study_row("Doe^Jane", version=20)])
    assert again is one  # the same study version found again: built once
    assert two is not one and two["00201208"]["Value"] == [9]  # a later version: another row
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


def _instance_row(
    sop: str, series_count: int = 2, name: str = "Doe^Jane", *, version: int = 30
) -> tuple[object, ...]:
    series = {"0020000E": {"vr": "UI", "Value": ["1.2.3.4"]}}
    instance = {"00080018": {"vr": "UI", "Value": [sop]}}
    row_id = int(sop.rsplit(".", 1)[1])
    return (
        *_study_columns(name, 3),
        "1.2.3",
        orjson.dumps(series),
        series_count,
        "1.2.3.4",
        orjson.dumps(instance),
        sop,
        "site",
        version,
        row_id,
    )


def test_issue22_instance_rows_are_shared_by_study_version_and_id() -> None:
    """A series' instance list asked again is built once; a new instance in the series (a new
    study version), another study name (the same) or another instance is another row."""
    one, two = rows.search_rows(Level.INSTANCE, [_instance_row("1.9.1"), _instance_row("1.9.2")])
    assert one["00080018"]["Value"] == ["1.9.1"] and two["00080018"]["Value"] == ["1.9.2"]
    assert one["00201209"]["Value"] == [2]
    (again,) = rows.search_rows(Level.INSTANCE, [_instance_row("1.9.1")])
    assert again is one and isinstance(one, rows.SharedRow)
    (grown,) = rows.search_rows(Level.INSTANCE, [_instance_row("1.9.1", 3, version=31)])
    assert grown is not one and grown["00201209"]["Value"] == [3]
    renamed_row = _instance_row("1.9.1", name="Roe^Rick", version=32)
    (renamed,) = rows.search_rows(Level.INSTANCE, [renamed_row])
    assert renamed["00100010"]["Value"] == [{"Alphabetic": "Roe^Rick"}]
    with pytest.raises(TypeError, match="shared between requests"):
        one["00081190"] = {}
    # A study row of the same study version is a row of its own level.
    (study,) = rows.search_rows(Level.STUDY, [_study_row("Doe^Jane", version=30)])
    assert "00080018" not in study and study.key[1] is Level.STUDY


async def test_issue22_a_page_fetches_only_the_rows_not_built_yet() -> None:
    """The search's keys decide: rows built for this version are answered as they are, the
    others fetched by id; a row deleted between the two reads is left out, and each row
    keeps its site."""
    built = _study_row("Built^One", version=40, row_id=400)
    rows.search_rows(Level.STUDY, [built])
    stored = {401: _study_row("Fetched^Two", version=41, row_id=401)}
    asked: list[list[int]] = []

    async def fetch(ids: list[int]) -> list[tuple[object, ...]]:
        asked.append(ids)
        return [stored[i] for i in ids if i in stored]

    keys = [(40, 400, "a"), (41, 401, "b"), (42, 402, "c")]  # 402: deleted meanwhile
    page, sites = await rows.found_rows(Level.STUDY, keys, fetch, 0)
    assert asked == [[401, 402]]
    assert [row["00100010"]["Value"][0]["Alphabetic"] for row in page] == [
        "Built^One",
        "Fetched^Two",
    ]
    assert sites == ["a", "b"]

    again, _ = await rows.found_rows(Level.STUDY, keys[:2], fetch, 0)
    assert asked == [[401, 402]]  # both built now: no read
    assert again[0] is page[0] and again[1] is page[1]
    # The study changed (a new version): read again, never answered from the old row.
    stored[401] = _study_row("Changed^Two", version=43, row_id=401)
    changed, _ = await rows.found_rows(Level.STUDY, [(43, 401, "b")], fetch, 0)
    assert asked[-1] == [401]
    assert changed[0]["00100010"]["Value"] == [{"Alphabetic": "Changed^Two"}]
    # Another database's row with the same version and id is its own row.
    other = {401: _study_row("Other^Database", version=43, row_id=401)}

    async def fetch_other(ids: list[int]) -> list[tuple[object, ...]]:
        return [other[i] for i in ids]

    (elsewhere,), _ = await rows.found_rows(Level.STUDY, [(43, 401, "b")], fetch_other, 1)
    assert elsewhere["00100010"]["Value"] == [{"Alphabetic": "Other^Database"}]
