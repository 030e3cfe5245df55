"""A worklist's keys from the date index alone on SQLite (issue 22: the study QIDO)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from dicomweb_server.domain.attributes import Level
from dicomweb_server.domain.query import parse_query
from dicomweb_server.index.sql import build_search
from dicomweb_server.index.sqlite import SqliteInstanceIndex


def _plan(path: Path, study_date: str) -> list[str]:
    query = parse_query([("StudyDate", study_date), ("limit", "1000")], Level.STUDY, "default")
    sql = build_search(query, "sqlite")
    with sqlite3.connect(path) as conn:
        return [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql.text, sql.params)]


@pytest.mark.parametrize(
    ("study_date", "sorted_after"),
    [("20240105", False), ("20240101-20240107", True)],
)
async def test_issue22_study_date_search_reads_the_index_only(
    tmp_path: Path, study_date: str, sorted_after: bool
) -> None:
    path = tmp_path / "index.sqlite"
    index = await SqliteInstanceIndex.open(path)
    await index.close()
    plan = _plan(path, study_date)
    assert any("COVERING INDEX studies_study_date" in step for step in plan), plan
    # One day's studies come out of the index in id order; a range is sorted after.
    assert any("TEMP B-TREE" in step for step in plan) is sorted_after, plan
