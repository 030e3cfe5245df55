"""A released PostgreSQL connection goes back to the pool without a reset round trip, clean."""

from __future__ import annotations

import asyncpg

from dicomweb_server.index.postgres import PostgresInstanceIndex


async def test_release_sends_no_reset_query_and_rolls_back(pg_database_url: str) -> None:
    index = await PostgresInstanceIndex.open(pg_database_url, min_size=1, max_size=1)
    sent: list[str] = []

    def record(query: asyncpg.connection.LoggedQuery) -> None:
        sent.append(query.query)

    try:

        async def leave_transaction_open(conn: asyncpg.Connection) -> int:
            conn.add_query_logger(record)
            await conn.execute("BEGIN")
            await conn.execute("SET LOCAL statement_timeout = 1234")
            return int(await conn.fetchval("SELECT 1"))

        assert await index._with_connection(leave_transaction_open) == 1
        # Only the pool's rollback of the transaction left open follows our statements:
        # none of asyncpg's default reset (RESET ALL, UNLISTEN, CLOSE ALL, advisory unlock).
        assert sent[:3] == ["BEGIN", "SET LOCAL statement_timeout = 1234", "SELECT 1"]
        assert sent[3:] == ["ROLLBACK"]
        sent.clear()

        async def state(conn: asyncpg.Connection) -> tuple[bool, str]:
            conn.add_query_logger(record)
            timeout = await conn.fetchval("SHOW statement_timeout")
            return conn.is_in_transaction(), str(timeout)

        # The one pooled connection comes back outside any transaction, settings as they were.
        assert await index._with_connection(state) == (False, "0")
        assert sent == ["SHOW statement_timeout"]
    finally:
        await index.close()
