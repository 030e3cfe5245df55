"""The ApiKeyStore protocol: API key records kept by the index (only a hash of each secret)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from dicomweb_server.domain.grants import Grant, parse_grants

__all__ = [
    "API_KEY_COLUMNS",
    "ApiKeyRecord",
    "ApiKeyStore",
    "api_key_from_row",
    "api_key_values",
]


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """One API key as stored: never its secret, only `secret_hash` (services/apikeys.py).

    `key_id` is the public part of the key (`dwk_<key_id>_<secret>`), the lookup key;
    `name` is unique and is how people list and revoke keys. Times are timezone-aware UTC;
    `expires` None never expires, `revoked` None is not revoked.
    """

    key_id: str
    name: str
    secret_hash: str
    grants: frozenset[Grant]
    created: datetime
    expires: datetime | None = None
    revoked: datetime | None = None


class ApiKeyStore(Protocol):
    """Where API key records live; backend faults raise BackendUnavailableError."""

    async def add_api_key(self, record: ApiKeyRecord) -> None:
        """Store a new key; ConflictError if its name or key_id is taken (revoked keys too)."""
        ...

    async def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        """The key with this id, revoked or not, or None."""
        ...

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        """Every key, revoked and expired ones included, ordered by name."""
        ...

    async def revoke_api_key(self, name: str, when: datetime) -> ApiKeyRecord | None:
        """Mark the named key revoked at `when` (a revoked key keeps its first time);
        the updated record, or None if no key has that name."""
        ...


API_KEY_COLUMNS = ("key_id", "name", "secret_hash", "grants", "created", "expires", "revoked")


def api_key_values(record: ApiKeyRecord) -> tuple[object, ...]:
    """A record's values in API_KEY_COLUMNS order (times as seconds since the epoch)."""
    return (
        record.key_id,
        record.name,
        record.secret_hash,
        " ".join(sorted(str(grant) for grant in record.grants)),
        record.created.timestamp(),
        None if record.expires is None else record.expires.timestamp(),
        None if record.revoked is None else record.revoked.timestamp(),
    )


def api_key_from_row(row: Any) -> ApiKeyRecord:
    """A row of API_KEY_COLUMNS (a tuple or an asyncpg Record) as a record."""

    def when(value: float | None) -> datetime | None:
        return None if value is None else datetime.fromtimestamp(float(value), UTC)

    created = when(row[4])
    assert created is not None
    return ApiKeyRecord(
        key_id=row[0],
        name=row[1],
        secret_hash=row[2],
        grants=parse_grants(str(row[3]).split()),
        created=created,
        expires=when(row[5]),
        revoked=when(row[6]),
    )
