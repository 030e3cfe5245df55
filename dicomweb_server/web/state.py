"""What the lifespan puts on `app.state.dicomweb`: settings, backends and services."""

from __future__ import annotations

from dataclasses import dataclass

from dicomweb_server.config import Settings
from dicomweb_server.index.base import InstanceIndex
from dicomweb_server.services.retrieve import RetrieveService
from dicomweb_server.services.search import SearchService
from dicomweb_server.services.store import StoreService
from dicomweb_server.storage.base import BlobStore

__all__ = ["AppState"]


@dataclass(slots=True)
class AppState:
    """Shared per-process objects, created in the lifespan."""

    settings: Settings
    index: InstanceIndex
    blobs: BlobStore
    store: StoreService
    search: SearchService
    retrieve: RetrieveService
