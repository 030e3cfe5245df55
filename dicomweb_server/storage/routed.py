"""One BlobStore over the server's store and the sites' own: each key goes to its site's store.

Every key starts with its site (domain/blob_keys.py). A site created with a storage URL (its
own bucket, prefix or folder, for data residency) keeps its objects there; every other site
lives in the server's store. Sites are looked up in the catalogue the first time a key of
theirs is seen, and their stores opened then; a site's storage URL never changes once it
holds data, so the mapping is kept for the life of the process.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol, cast

from dicomweb_server.storage.base import (
    DEFAULT_CHUNK_SIZE,
    BlobInfo,
    BlobStore,
    LocalFiles,
    is_local_files,
)

__all__ = ["SiteBlobStores", "SiteLocations"]

StoreOpener = Callable[[str], Awaitable[BlobStore]]


class SiteLocations(Protocol):
    """Where each site keeps its objects (the site catalogue, seen from storage)."""

    async def storage_url(self, site: str) -> str | None:
        """The site's own storage URL, "" for the server's store, None when no such site."""
        ...

    async def storage_urls(self) -> dict[str, str]:
        """Every site with its own storage URL."""
        ...


class SiteBlobStores:
    """BlobStore routing by site; LocalFiles where the site's store has local files."""

    def __init__(self, default: BlobStore, catalog: SiteLocations, opener: StoreOpener) -> None:
        self._default = default
        self._catalog = catalog
        self._opener = opener
        self._by_site: dict[str, BlobStore] = {}
        self._by_url: dict[str, BlobStore] = {}
        self._lock = asyncio.Lock()

    async def store_of(self, site: str) -> BlobStore:
        """The store a site's objects live in (opened on first use)."""
        found = self._by_site.get(site)
        if found is not None:
            return found
        async with self._lock:
            found = self._by_site.get(site)
            if found is not None:
                return found
            url = await self._catalog.storage_url(site)
            if url is None:
                return self._default  # not a site (yet): nothing is remembered
            store = self._default
            if url:
                store = self._by_url.get(url) or await self._opener(url)
                self._by_url[url] = store
            self._by_site[site] = store
            return store

    async def _for_key(self, key: str) -> BlobStore:
        return await self.store_of(key.split("/", 1)[0])

    async def put(self, key: str, chunks: AsyncIterator[bytes | memoryview]) -> int:
        return await (await self._for_key(key)).put(key, chunks)

    async def iter_get(
        self,
        key: str,
        start: int = 0,
        length: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> AsyncIterator[bytes]:
        store = await self._for_key(key)
        async for chunk in store.iter_get(key, start, length, chunk_size):
            yield chunk

    async def read_range(self, key: str, start: int, length: int) -> bytes:
        return await (await self._for_key(key)).read_range(key, start, length)

    async def delete(self, key: str) -> None:
        await (await self._for_key(key)).delete(key)

    async def iter_objects(self, prefix: str = "") -> AsyncIterator[BlobInfo]:
        """The server store's objects, then those of each site with its own store (each
        store listed once, and only the keys of the sites that live in it)."""
        async for info in self._default.iter_objects(prefix):
            if self._by_site.get(info.key.split("/", 1)[0], self._default) is self._default:
                yield info
        own: dict[str, list[str]] = {}
        for site, url in (await self._catalog.storage_urls()).items():
            await self.store_of(site)
            own.setdefault(url, []).append(site + "/")
        for url, sites in own.items():
            async for info in self._by_url[url].iter_objects(prefix):
                if info.key.startswith(tuple(sites)):
                    yield info

    def local_path(self, key: str) -> str | None:
        """The object's file when its site's store is local and already known, else None."""
        store = self._by_site.get(key.split("/", 1)[0])
        if store is not None and is_local_files(store):
            return cast(LocalFiles, store).local_path(key)
        return None

    async def ping(self) -> None:
        await self._default.ping()
        for store in self._by_url.values():
            await store.ping()

    async def close(self) -> None:
        try:
            for store in self._by_url.values():
                await store.close()
        finally:
            await self._default.close()
