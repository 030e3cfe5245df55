"""Import from another DICOMweb server: QIDO-RS for the studies, WADO-RS for their instances.

Studies are listed with `limit`/`offset` paging until a page comes back empty (a page of
only studies listed already means the source ignores `offset`: the listing stops there and
says so, as the source may hold more), then each is
retrieved as `multipart/related; type="application/dicom"` in its stored transfer syntax
(`transfer-syntax=*`) and read part by part as it streams in; each part is an `ImportItem`
for the store pipeline. A study is journaled once all its parts are final, so a re-run
retrieves only the studies an earlier run did not finish.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Sequence
from types import TracebackType
from typing import Any, Protocol
from urllib.parse import urlencode, urlsplit

import aiohttp
import orjson

from dicomweb_server.domain.attributes import resolve_tag
from dicomweb_server.domain.identifiers import is_valid_uid
from dicomweb_server.errors import DicomwebError, InvalidQueryError
from dicomweb_server.services.import_journal import ImportJournal, JournalKey
from dicomweb_server.services.importer import (
    ImportItem,
    ImportSourceError,
    ImportStats,
    ItemGroup,
    Outcome,
)
from dicomweb_server.services.spool import Spool

__all__ = [
    "DicomwebSource",
    "PartsReader",
    "ReceivedPart",
    "check_query",
    "check_root_url",
    "hide_password",
]

STUDY_INSTANCE_UID = "0020000D"
_ACCEPT_INSTANCES = 'multipart/related; type="application/dicom"; transfer-syntax=*'
_CHUNK = 1 << 20  # bytes read from the response at a time
_MAX_QIDO_BYTES = 64 << 20  # a page of study results larger than this is refused


# The password of a URL's user information (`scheme://user:password@host`)
_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^/?#@\s:]*):[^/?#\s]*@")
_QIDO_PARAMETERS = ("fuzzymatching", "includefield")
_PAGING = ("limit", "offset")


def hide_password(text: str) -> str:
    """`text` with the password of every URL in it masked (`http://alice:***@host/`): a
    `--from` URL may carry credentials (sent as Basic authentication), and its text goes
    to messages, the report and the journal."""
    return _PASSWORD.sub(r"\1:***@", text)


def check_root_url(url: str) -> None:
    """ValueError saying why `url` is no DICOMweb root to pull from (an http or https URL
    of a host), before anything is sent: otherwise the only reason given was the URL."""
    shown = hide_password(url)[:200]
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port out of range or not a number)
    except ValueError as exc:
        raise ValueError(f"--from {shown!r} is not a URL: {exc}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(f"--from {shown!r}: give the http:// or https:// URL of a DICOMweb root")
    if not parts.hostname:
        raise ValueError(f"--from {shown!r} names no host")


def check_query(query: Sequence[tuple[str, str]]) -> None:
    """Refuse a match key that is no attribute before anything is sent: many servers
    (Orthanc among them) ignore a key they do not know, so a misspelt one would pull every
    study of the source. `limit` and `offset` are the pager's own."""
    for name, _ in query:
        if name in _PAGING:
            raise InvalidQueryError(f"{name} is set by the import, which pages through results")
        if name not in _QIDO_PARAMETERS:
            for part in name.split("."):
                resolve_tag(part)  # a keyword or a tag, else InvalidQueryError


class ReceivedPart(Protocol):
    """A body part as the multipart reader spooled it."""

    content_type: str | None
    file: Spool
    size: int

    def close(self) -> None: ...


# (body chunks, Content-Type) → parts; the caller binds its limits (web/multipart.iter_parts).
PartsReader = Callable[[AsyncIterator[bytes], str], AsyncIterator[ReceivedPart]]


class DicomwebSource:
    """One remote DICOMweb root, listed and retrieved over one HTTP connection pool."""

    def __init__(
        self,
        root_url: str,
        read_parts: PartsReader,
        *,
        headers: dict[str, str] | None = None,
        journal: ImportJournal | None = None,
        stats: ImportStats | None = None,
        timeout: float = 60,
        page_size: int = 1000,
    ) -> None:
        self.root = root_url.rstrip("/")
        self.shown = hide_password(self.root)  # what labels, messages and the journal name
        self._read_parts = read_parts
        self._headers = dict(headers or {})
        self._journal = journal
        self._stats = stats
        self._timeout = timeout
        self._page_size = page_size
        self._session: aiohttp.ClientSession | None = None
        # Why the listing may lack studies the source holds ("": it does not)
        self.listing_incomplete = ""

    async def __aenter__(self) -> DicomwebSource:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=self._timeout, sock_read=self._timeout
            ),
            headers=self._headers,
            auto_decompress=True,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use DicomwebSource as an async context manager")
        return self._session

    def _journal_key(self, study: str) -> JournalKey:
        return (f"{self.shown}/studies/{study}", 0, 0)  # the same whatever the password

    async def list_studies(self, query: Sequence[tuple[str, str]]) -> list[str]:
        """The Study Instance UIDs matching `query`, every page of them, in the server's order."""
        found: list[str] = []
        seen: set[str] = set()
        offset = 0
        while True:
            params = [*query, ("limit", str(self._page_size)), ("offset", str(offset))]
            url = f"{self.root}/studies?{urlencode(params)}"
            rows = await self._get_json(url)
            if not rows:
                return found
            new = 0
            for row in rows:
                uid = _study_uid(row)
                if uid is not None and uid not in seen:
                    seen.add(uid)
                    found.append(uid)
                    new += 1
            if new == 0:  # a server that ignores offset would page forever
                self.listing_incomplete = (
                    f"{self.shown} answered offset {offset} with studies it had listed before:"
                    f" it ignores offset, so only {len(found)} studies were listed and it may"
                    " hold more (narrow --query to pull the rest)"
                )
                return found
            offset += len(rows)

    async def _get_json(self, url: str) -> list[Any]:
        try:
            async with self.session.get(url, headers={"Accept": "application/dicom+json"}) as reply:
                if reply.status == 204:
                    return []
                if reply.status != 200:
                    reason = _status_reason(hide_password(url), reply.status, reply.reason)
                    raise ImportSourceError(reason)
                # to the end: one read(n) returns what has arrived so far, part of a page
                body = bytearray()
                async for chunk in reply.content.iter_chunked(_CHUNK):
                    body += chunk
                    if len(body) > _MAX_QIDO_BYTES:
                        raise ImportSourceError(
                            f"{hide_password(url)} answered more than {_MAX_QIDO_BYTES}"
                            " bytes of JSON"
                        )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ImportSourceError(f"cannot reach {self.shown}: {_describe(exc)}") from exc
        try:
            rows = orjson.loads(body) if body.strip() else []
        except orjson.JSONDecodeError as exc:
            raise ImportSourceError(
                f"{hide_password(url)} did not answer DICOM JSON: {exc}"
            ) from exc
        if not isinstance(rows, list):
            raise ImportSourceError(f"{hide_password(url)} did not answer a JSON array")
        return rows

    async def iter_items(self, studies: Sequence[str]) -> AsyncIterator[ImportItem]:
        """Every part of every study as an item; a study that fails is a failed item."""
        for study in studies:
            key = self._journal_key(study)
            label = f"{self.shown}/studies/{study}"
            if self._journal is not None and self._journal.is_done(key):
                yield ImportItem(label, 0, outcome=Outcome.SKIPPED)
                self._study_done()
                continue
            group = ItemGroup(key)
            async for item in self._iter_study(study, label, group):
                yield item
            self._study_done()

    def _study_done(self) -> None:
        if self._stats is not None:
            self._stats.studies_done += 1

    async def _iter_study(
        self, study: str, label: str, group: ItemGroup
    ) -> AsyncIterator[ImportItem]:
        number = 0
        url = f"{self.root}/studies/{study}"
        try:
            async with self.session.get(url, headers={"Accept": _ACCEPT_INSTANCES}) as reply:
                if reply.status != 200:
                    reason = _status_reason(label, reply.status, reply.reason)
                    yield ImportItem(label, 0, outcome=Outcome.FAILED, reason=reason, group=group)
                    return
                content_type = reply.headers.get("Content-Type", "")
                chunks = reply.content.iter_chunked(_CHUNK)
                async for part in self._read_parts(chunks, content_type):
                    number += 1
                    part_label = f"{label} part {number}"
                    media = (part.content_type or "").split(";", 1)[0].strip().lower()
                    if media != "application/dicom":
                        part.close()
                        yield ImportItem(
                            part_label,
                            part.size,
                            outcome=Outcome.FAILED,
                            reason=f"part has Content-Type {media or '(none)'!r}",
                            group=group,
                        )
                        continue
                    yield ImportItem(part_label, part.size, spool=part.file, group=group)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            reason = f"transfer failed after {number} parts: {_describe(exc)}"
            yield ImportItem(label, 0, outcome=Outcome.FAILED, reason=reason, group=group)
            return
        except DicomwebError as exc:  # a malformed or oversized multipart body
            reason = f"unreadable answer after {number} parts: {exc.reason}"
            yield ImportItem(label, 0, outcome=Outcome.FAILED, reason=reason, group=group)
            return
        yield ImportItem(label, 0, group=group, group_end=True)


def _study_uid(row: Any) -> str | None:
    try:
        value = row[STUDY_INSTANCE_UID]["Value"][0]
    except (KeyError, IndexError, TypeError):
        return None
    return value if isinstance(value, str) and is_valid_uid(value) else None


def _status_reason(url: str, status: int, reason: str | None) -> str:
    text = f"{url} answered {status} {reason or ''}".rstrip()
    if status in (401, 403):
        text += " (pass credentials with --header 'Authorization: ...')"
    return text


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return hide_password(text.splitlines()[0][:300])
