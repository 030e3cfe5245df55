"""Our SQL leaves no session state behind, so a released pool connection needs no reset query.

`index/postgres.py` hands released connections back to asyncpg's pool as they are
(`_keep_session`), saving a round trip per call. That holds only while every setting, lock,
cursor and table we create ends with its transaction. These checks read the sources: a new
statement that would outlive its transaction fails here rather than leak into the next
request that borrows the connection.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

_PACKAGE = Path(__file__).resolve().parents[2] / "dicomweb_server"

# (what would outlive the transaction, a pattern that finds it in Python or SQL sources)
_SESSION_STATE = [
    ("a session setting (use SET LOCAL)", re.compile(r"""["']\s*SET\s+(?!LOCAL\b)""", re.I)),
    ("a session setting by set_config(..., false)", re.compile(r"set_config\([^)]*false\s*\)", re.I)),
    ("a session advisory lock (use the _xact_ form)", re.compile(r"pg_(try_)?advisory_lock", re.I)),
    ("a LISTEN registration", re.compile(r"\bLISTEN\s+\w|add_listener\(", re.I)),
    ("a cursor WITH HOLD", re.compile(r"\bWITH\s+HOLD\b", re.I)),
    ("a temporary table (needs ON COMMIT DROP)", re.compile(r"TEMP(ORARY)?\s+TABLE(?![^;]*ON\s+COMMIT\s+DROP)", re.I)),
    ("a named prepared statement", re.compile(r"""["']\s*PREPARE\s""", re.I)),
]  # fmt: skip


def _sources() -> list[Path]:
    return sorted([*_PACKAGE.rglob("*.py"), *_PACKAGE.rglob("*.sql")])


@pytest.mark.parametrize(("what", "pattern"), _SESSION_STATE, ids=[w for w, _ in _SESSION_STATE])
def test_no_sql_of_ours_leaves_session_state(what: str, pattern: re.Pattern[str]) -> None:
    found = [
        f"{path.relative_to(_PACKAGE.parent)}:{number}: {line.strip()}"
        for path in _sources()
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line) and not line.lstrip().startswith("#")
    ]
    assert not found, f"{what} would outlive its transaction:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("what", "line"),
    [
        ("a session setting (use SET LOCAL)", 'await conn.execute("SET statement_timeout = 5")'),
        ("a session setting by set_config(..., false)", "SELECT set_config('a.b', 'c', false)"),
        ("a session advisory lock (use the _xact_ form)", "SELECT pg_advisory_lock($1)"),
        ("a LISTEN registration", "await conn.add_listener('events', callback)"),
        ("a cursor WITH HOLD", "DECLARE c CURSOR WITH HOLD FOR SELECT 1"),
        ("a temporary table (needs ON COMMIT DROP)", "CREATE TEMP TABLE t (a int)"),
        ("a named prepared statement", 'await conn.execute("PREPARE q AS SELECT 1")'),
    ],
)
def test_each_check_finds_what_it_names(what: str, line: str) -> None:
    pattern = dict(_SESSION_STATE)[what]
    assert pattern.search(line)


@pytest.mark.parametrize(
    "line",
    [
        'await conn.execute(f"SET LOCAL statement_timeout = {budget_ms}")',
        '"UPDATE series SET number_of_instances = $3"',
        "PERFORM set_config('dicomweb.audit_expiry', '', true);",
        'await conn.execute("SELECT pg_advisory_xact_lock($1)", key)',
        "CREATE TEMP TABLE t (a int) ON COMMIT DROP",
    ],
)
def test_transaction_scoped_statements_pass(line: str) -> None:
    assert not any(pattern.search(line) for _, pattern in _SESSION_STATE)
