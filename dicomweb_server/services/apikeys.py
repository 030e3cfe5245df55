"""API keys for machines: `dwk_<key_id>_<secret>`, shown once when created, stored as a hash.

Format: the prefix `dwk_` makes a leaked key recognisable (secret scanners, logs); `key_id` is
16 hex digits (64 random bits), public, and finds the record without scanning; `secret` is
`secrets.token_urlsafe(32)`, 256 random bits. The whole key is sent as `Authorization: Bearer`.

Stored: only `sha256:` + SHA-256 of the whole key, compared with `hmac.compare_digest`. A slow
password hash (bcrypt, argon2) makes guessing a low-entropy password expensive; a 256-bit random
secret cannot be guessed whatever the hash, so a fast hash gives up nothing, and it keeps each
request's check to microseconds instead of handing callers a CPU-burning lever. An unknown id
and a wrong secret give the same reason; revoked and expired are said only to a caller who
holds the right secret.

Cache: a record read from the store is reused for API_KEY_CACHE_SECONDS (5 s) in this process,
so a busy viewer does not cost an index query per request. Revoking through this service drops
it from this process's cache at once; other processes (other workers, the CLI) see a revocation
within those 5 s. Expiry is checked on every request, cached or not.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from dicomweb_server.domain.grants import Grant, parse_grant
from dicomweb_server.errors import InvalidNameError, NotFoundError, UnauthorizedError
from dicomweb_server.index.api_keys import ApiKeyRecord, ApiKeyStore
from dicomweb_server.services.principal import Principal

__all__ = [
    "API_KEY_CACHE_ENTRIES",
    "API_KEY_CACHE_SECONDS",
    "KEY_PREFIX",
    "ApiKeyService",
    "IssuedApiKey",
    "hash_api_key",
]

KEY_PREFIX = "dwk_"
API_KEY_CACHE_SECONDS = 5.0  # a stored record is reused this long; revocation elsewhere lags it
API_KEY_CACHE_ENTRIES = 1024  # records cached per process; the least recently read go first
MAX_EXPIRY_DAYS = 36_500
_KEY = re.compile(r"dwk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


@dataclass(frozen=True, slots=True)
class IssuedApiKey:
    """A key just created: its record, and the key itself, which is never shown again."""

    record: ApiKeyRecord
    key: str = field(repr=False)  # kept out of repr so a logged object leaks nothing


def hash_api_key(key: str) -> str:
    """The stored form of a key: `sha256:` and the hex digest of the whole key."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def _utcnow() -> datetime:
    return datetime.now(UTC)


class ApiKeyService:
    """Creates, lists, revokes and verifies API keys kept in an ApiKeyStore."""

    def __init__(
        self,
        store: ApiKeyStore,
        *,
        cache_seconds: float = API_KEY_CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._store = store
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._now = now
        self._cache: OrderedDict[str, tuple[ApiKeyRecord, float]] = OrderedDict()

    async def create_api_key(
        self, name: str, grants: Iterable[Grant | str], expires_days: int | None = None
    ) -> IssuedApiKey:
        """A new key named `name` with `grants` (SITE:ROLE), valid `expires_days` or forever.

        InvalidNameError for a bad name or grant, ConflictError if the name is taken."""
        if not _NAME.fullmatch(name):
            raise InvalidNameError(
                f"API key name {name[:80]!r} must be 1 to 63 characters of A-Z, a-z, 0-9,"
                " '.', '_' and '-', starting with a letter or digit"
            )
        parsed = frozenset(g if isinstance(g, Grant) else parse_grant(g) for g in grants)
        if not parsed:
            raise InvalidNameError("an API key needs at least one SITE:ROLE grant")
        if expires_days is not None and not 1 <= expires_days <= MAX_EXPIRY_DAYS:
            raise InvalidNameError(f"an API key expires after 1 to {MAX_EXPIRY_DAYS} days")
        key_id = secrets.token_hex(8)
        key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        created = self._now()
        expires = None if expires_days is None else created + timedelta(days=expires_days)
        record = ApiKeyRecord(key_id, name, hash_api_key(key), parsed, created, expires)
        await self._store.add_api_key(record)
        return IssuedApiKey(record, key)

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        """Every key, revoked and expired ones included, ordered by name."""
        return await self._store.list_api_keys()

    async def revoke_api_key(self, name: str) -> ApiKeyRecord:
        """Revoke the named key now (in this process at once, elsewhere within the cache TTL);
        NotFoundError if there is none."""
        record = await self._store.revoke_api_key(name, self._now())
        if record is None:
            raise NotFoundError(f"no API key is named {name[:80]!r}")
        self._cache.pop(record.key_id, None)
        return record

    async def verify(self, key: str) -> Principal:
        """The principal of a valid key; UnauthorizedError with the reason otherwise."""
        match = _KEY.fullmatch(key)
        if match is None:
            raise UnauthorizedError("the API key is malformed")
        record = await self._record(match[1])
        # Constant time: how much of the hash matched must not show in the answer's timing.
        if record is None or not hmac.compare_digest(
            record.secret_hash.encode(), hash_api_key(key).encode()
        ):
            raise UnauthorizedError("the API key is not known")
        if record.revoked is not None:
            raise UnauthorizedError("the API key has been revoked")
        if record.expires is not None and record.expires <= self._now():
            raise UnauthorizedError("the API key has expired")
        return Principal(record.name, "apikey", record.grants, record.name)

    async def _record(self, key_id: str) -> ApiKeyRecord | None:
        """The stored record, from the cache when read within the TTL (misses are not cached,
        so a key works as soon as it is created)."""
        cached = self._cache.get(key_id)
        if cached is not None and self._clock() - cached[1] < self._cache_seconds:
            self._cache.move_to_end(key_id)
            return cached[0]
        record = await self._store.get_api_key(key_id)
        if record is None:
            self._cache.pop(key_id, None)
            return None
        self._cache[key_id] = (record, self._clock())
        self._cache.move_to_end(key_id)
        while len(self._cache) > API_KEY_CACHE_ENTRIES:
            self._cache.popitem(last=False)
        return record
