"""Study and series metadata (WADO-RS, PS3.18 10.4.1.1.2) built once per content, kept per process.

A metadata answer is the stored DICOM JSON of each instance in order. It is kept by the
study's version (`InstanceIndex.study_versions`): a number every store, delete, rejection or
restore in the study replaces with one never used before. A viewer opening a series again, or
another viewer opening it, is answered from memory after that one point query, with the entity
tag computed once. The version is read before the rows, so what is kept under it is never
older than it.

Bounds: a study or series of more than `listed_most` instances is streamed as before without
being listed whole; a document is built in memory up to the cache's largest entry, and one
that grows past that is streamed from there on (built chunks first, then the rest of its rows).
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from dicomweb_server.domain.dicom_json import absolute_bulk_uris
from dicomweb_server.domain.identifiers import StudyKey
from dicomweb_server.errors import NotFoundError
from dicomweb_server.index.base import InstanceIndex
from dicomweb_server.services.instance_answers import not_found
from dicomweb_server.services.memory_cache import MemoryCache

__all__ = ["LISTED_MOST", "MetadataDocument", "MetadataDocuments"]

LISTED_MOST = 5000  # instances of a study or series listed before its answer, at most
_BATCH = 64  # rows of metadata read per index query
_SMALLEST_BUILT = 1 << 20  # a document is built whole up to this, even with no cache


class MetadataDocument(bytes):
    """A whole metadata answer; `digest` is the SHA-256 (hex) of its bytes."""

    digest: str


@dataclass(slots=True)
class MetadataDocuments:
    """Metadata answers of studies and series: whole documents when small, kept by content."""

    index: InstanceIndex
    memory_bytes: int = 0
    listed_most: int = LISTED_MOST
    _kept: MemoryCache = field(init=False)

    def __post_init__(self) -> None:
        self._kept = MemoryCache(self.memory_bytes)

    async def answer(
        self, study: StudyKey, series_instance_uid: str | None, root_url: str
    ) -> MetadataDocument | AsyncIterator[bytes]:
        """The answer as one document, or streamed when it is too large; NotFoundError when the
        study (or series) has no instance."""
        version = (await self.index.study_versions((study.site,), study.study_instance_uid)).get(
            study.site
        )
        if version is None:
            raise NotFoundError(not_found(study, series_instance_uid))
        key = _key(study, series_instance_uid, root_url, version)
        kept = self._kept.get(key)
        if kept is not None:
            assert isinstance(kept, MetadataDocument)
            return kept
        listed = await self.index.list_instances(study, series_instance_uid, self.listed_most)
        if listed is None:
            return await self._streamed(study, series_instance_uid, root_url)
        if not listed:
            raise NotFoundError(not_found(study, series_instance_uid))
        batches = _batches(self.index, [row for row, _ in listed], root_url)
        bound = max(self._kept.limit // 4, _SMALLEST_BUILT)
        parts: list[bytes] = []
        size = 0
        complete = True
        async for found, whole in batches:
            complete = complete and whole
            parts += found
            size += sum(len(part) + 1 for part in found)
            if size > bound:  # too large to hold: send what is built, then stream the rest
                return _continued(parts, batches)
        if not parts:  # every row deleted since it was listed
            raise NotFoundError(not_found(study, series_instance_uid))
        document = MetadataDocument(b"[" + b",".join(parts) + b"]")
        document.digest = hashlib.sha256(document).hexdigest()
        if complete:  # a row deleted meanwhile: this answer is right now, but kept by nothing
            self._kept.put(key, document)
        return document

    async def _streamed(
        self, study: StudyKey, series_instance_uid: str | None, root_url: str
    ) -> AsyncIterator[bytes]:
        iterator = aiter(self.index.iter_metadata(study, series_instance_uid))
        first = await anext(iterator, None)
        if first is None:
            raise NotFoundError(not_found(study, series_instance_uid))

        async def generate() -> AsyncIterator[bytes]:
            yield b"[" + absolute_bulk_uris(first, root_url)
            async for metadata in iterator:
                yield b"," + absolute_bulk_uris(metadata, root_url)
            yield b"]"

        return generate()


async def _batches(
    index: InstanceIndex, rows: Sequence[int], root_url: str
) -> AsyncIterator[tuple[list[bytes], bool]]:
    """The metadata of `rows`, `_BATCH` rows per index query, with absolute BulkDataURIs; each
    batch says whether all of its rows were found (none deleted since they were listed)."""
    for start in range(0, len(rows), _BATCH):
        batch = rows[start : start + _BATCH]
        found = await index.metadata_by_row(batch)
        pieces = [absolute_bulk_uris(found[row], root_url) for row in batch if row in found]
        yield pieces, len(found) == len(batch)


async def _continued(
    built: list[bytes], rest: AsyncIterator[tuple[list[bytes], bool]]
) -> AsyncIterator[bytes]:
    """An answer begun in memory (`built`, not empty) and finished from the batches left."""
    yield b"[" + b",".join(built)
    built.clear()
    async for pieces, _ in rest:
        if pieces:
            yield b"," + b",".join(pieces)
    yield b"]"


def _key(study: StudyKey, series_instance_uid: str | None, root_url: str, version: int) -> str:
    return (
        f"{study.site}\n{study.study_instance_uid}\n{series_instance_uid or ''}\n{root_url}"
        f"\n{version}"
    )
