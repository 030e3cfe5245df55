"""Webhook subscriptions: add (checked), list, remove, replay. Delivery is
services/webhook_delivery.py; what may be a target is services/webhook_targets.py.

A subscription names the environment variable that holds its signing secret, never the
secret: the server processes read it at delivery time (they share the CLI's environment),
so the secret is not stored in the index, not logged and not listed. Adding a subscription
whose variable is unset is refused: every delivery would fail.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from dicomweb_server.domain.events import (
    EVENT_TYPES,
    Webhook,
    parse_event_types,
    parse_modalities,
)
from dicomweb_server.domain.identifiers import validate_site
from dicomweb_server.errors import BadRequestError
from dicomweb_server.index.base import SiteCatalog, WebhookLedger, WebhookStatus
from dicomweb_server.services.webhook_targets import check_url, resolve_and_check

__all__ = ["WebhookService"]

_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


@dataclass(slots=True)
class WebhookService:
    """Manages subscriptions in `ledger`; `allow_private` is DICOMWEB_WEBHOOK_ALLOW_PRIVATE."""

    ledger: WebhookLedger
    allow_private: bool = False
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)
    # Where `--site` is checked to exist (None: not checked)
    sites: SiteCatalog | None = None

    async def add(
        self,
        url: str,
        secret_env: str,
        *,
        events: str | None = None,
        site: str | None = None,
        modalities: Iterable[str] = (),
        allow_private: bool = False,
    ) -> Webhook:
        """Check and store a subscription; BadRequestError says what is wrong."""
        if not _VARIABLE.fullmatch(secret_env):
            raise BadRequestError(f"{secret_env[:60]!r} is not an environment variable name")
        if not self.environ.get(secret_env):
            raise BadRequestError(
                f"environment variable {secret_env} is not set: set it to the signing secret"
                " here and in the environment of every server process"
            )
        allowed = allow_private or self.allow_private
        host = check_url(url, allowed)
        await resolve_and_check(host, allowed)
        if site is not None:
            validate_site(site)
            if self.sites is not None and await self.sites.get_site(site) is None:
                # It would never receive anything, and silently start if the site came later.
                raise BadRequestError(f"site {site!r} does not exist")
        webhook = Webhook(
            id=0,
            url=url,
            secret_env=secret_env,
            # "" is a list of no events (refused), not the default list
            events=parse_event_types(",".join(EVENT_TYPES) if events is None else events),
            site=site,
            modalities=parse_modalities(modalities),
            allow_private=allow_private,
        )
        return await self.ledger.add_webhook(webhook)

    async def list(self) -> list[WebhookStatus]:
        """Every subscription with its pending, delivered and dead counts."""
        return await self.ledger.list_webhooks()

    async def remove(self, webhook_id: int) -> bool:
        """Remove a subscription and its queued deliveries; False if there is none."""
        return await self.ledger.remove_webhook(webhook_id)

    async def replay(self, webhook_id: int, since: float) -> int | None:
        """Queue again the events since `since` the subscription matches (receivers see the
        same CloudEvents ids again); how many, or None without such a subscription."""
        return await self.ledger.replay_webhook(webhook_id, since)
