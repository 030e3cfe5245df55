"""What the lifespan puts on `app.state.dicomweb`: settings and the services the web uses."""

from __future__ import annotations

from dataclasses import dataclass

from dicomweb_server.config import Settings
from dicomweb_server.services.audit import AuditService
from dicomweb_server.services.authn import Authenticator
from dicomweb_server.services.delete import DeleteService
from dicomweb_server.services.events import ChangeFeedService
from dicomweb_server.services.render import RenderService
from dicomweb_server.services.retrieve import RetrieveService
from dicomweb_server.services.search import SearchService
from dicomweb_server.services.sites import SiteService
from dicomweb_server.services.status import StatusService
from dicomweb_server.services.store import StoreService

__all__ = ["AppState"]


@dataclass(slots=True)
class AppState:
    """Shared per-app objects, created in the lifespan."""

    settings: Settings
    authenticator: Authenticator
    sites: SiteService
    store: StoreService
    search: SearchService
    retrieve: RetrieveService
    render: RenderService
    delete: DeleteService
    audit: AuditService
    changefeed: ChangeFeedService
    status: StatusService
