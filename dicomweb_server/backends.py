"""The only place that picks concrete backends (by URL scheme): the index, the server's
blob store and the sites' own stores."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from dicomweb_server.config import Settings
from dicomweb_server.domain.sites import Site
from dicomweb_server.errors import ConflictError
from dicomweb_server.index.base import ServerIndex, SiteCatalog
from dicomweb_server.storage.base import BlobStore
from dicomweb_server.storage.routed import SiteBlobStores

__all__ = [
    "Backends",
    "ensure_site",
    "open_backends",
    "open_blob_store",
    "open_blob_store_at",
    "open_index",
]


async def open_index(settings: Settings) -> ServerIndex:
    """The index named by DICOMWEB_DATABASE_URL (default: SQLite under the data dir)."""
    url = settings.database_url
    if not url:
        from dicomweb_server.index.sqlite import SqliteInstanceIndex

        return await SqliteInstanceIndex.open(
            settings.data_dir / "index.sqlite", loop_read_max_seconds=_loop_read_max(settings)
        )
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        from dicomweb_server.index.sqlite import SqliteInstanceIndex

        return await SqliteInstanceIndex.open(
            Path(url.removeprefix("sqlite://")), loop_read_max_seconds=_loop_read_max(settings)
        )
    if scheme in ("postgresql", "postgres"):
        from dicomweb_server.index.postgres import PostgresInstanceIndex

        return await PostgresInstanceIndex.open(
            url, max_size=settings.database_pool_size, command_timeout=settings.backend_timeout
        )
    raise ValueError(
        f"DICOMWEB_DATABASE_URL scheme {scheme!r} is not supported"
        " (use postgresql://... or sqlite:///path)"
    )


def _loop_read_max(settings: Settings) -> float:
    return settings.sqlite_loop_read_max_ms / 1000


async def open_blob_store(settings: Settings) -> BlobStore:
    """The server's own blob store, DICOMWEB_STORAGE_URL (default: files under the data dir)."""
    if not settings.storage_url:
        from dicomweb_server.storage.filesystem import FilesystemBlobStore

        return FilesystemBlobStore(settings.data_dir / "objects")
    return await open_blob_store_at(settings.storage_url, settings)


async def open_blob_store_at(url: str, settings: Settings) -> BlobStore:
    """The blob store at `url` (`s3://bucket/prefix` or `file:///path`), with the S3 settings."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        from dicomweb_server.storage.filesystem import FilesystemBlobStore

        return FilesystemBlobStore(Path(parsed.path))
    if parsed.scheme == "s3":
        from dicomweb_server.storage.s3 import S3BlobStore

        return await S3BlobStore.create(
            bucket=parsed.netloc,
            prefix=parsed.path.strip("/"),
            endpoint_url=settings.s3_endpoint_url or None,
            region=settings.s3_region or None,
            multipart_threshold=settings.s3_multipart_threshold,
            part_size=settings.s3_part_size,
            backend_timeout=settings.backend_timeout,
            read_connections=settings.s3_read_connections,
        )
    raise ValueError(
        f"storage URL scheme {parsed.scheme!r} is not supported (use s3://bucket/prefix"
        " or file:///path)"
    )


@dataclass(slots=True)
class Backends:
    """The index and the blob store of one process, opened together, closed together."""

    index: ServerIndex
    blobs: BlobStore

    async def close(self) -> None:
        try:
            await self.blobs.close()
        finally:
            await self.index.close()


async def open_backends(settings: Settings) -> Backends:
    """Open the index (migrating it, and making sure the default site exists) and the blob
    stores: the server's own, and each site's own as its keys are first seen."""
    index = await open_index(settings)
    try:
        await ensure_site(index, settings.default_site, "the default site")
        server_store = await open_blob_store(settings)
    except BaseException:
        await index.close()
        raise

    async def opener(url: str) -> BlobStore:
        return await open_blob_store_at(url, settings)

    return Backends(index, SiteBlobStores(server_store, _Locations(index), opener))


async def ensure_site(catalog: SiteCatalog, name: str, description: str) -> None:
    """Add the site unless it exists (processes starting together may both try)."""
    if await catalog.get_site(name) is not None:
        return
    with contextlib.suppress(ConflictError):
        await catalog.add_site(Site(name, description=description, created=time.time()))


class _Locations:
    """The site catalogue as the routed blob store asks it: where each site keeps objects."""

    def __init__(self, catalog: SiteCatalog) -> None:
        self._catalog = catalog

    async def storage_url(self, site: str) -> str | None:
        found = await self._catalog.get_site(site)
        return None if found is None else found.storage_url

    async def storage_urls(self) -> dict[str, str]:
        return {s.name: s.storage_url for s in await self._catalog.list_sites() if s.storage_url}
