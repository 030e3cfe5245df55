"""Maintenance: find and remove objects no index row references (left by crashes or conflicts)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from dicomweb_server.domain.blob_keys import parse_instance_blob_key
from dicomweb_server.index.base import InstanceIndex, Lifecycle
from dicomweb_server.services.delete import delete_unneeded, referenced
from dicomweb_server.storage.base import BlobStore

__all__ = ["SweepReport", "sweep_orphans"]

log = logging.getLogger("dicomweb_server.maintenance")


@dataclass(slots=True)
class SweepReport:
    """What a sweep saw and did."""

    examined: int = 0
    referenced: int = 0
    too_recent: int = 0
    orphans: list[str] = field(default_factory=list)
    deleted: int = 0
    freed_bytes: int = 0


async def sweep_orphans(
    index: InstanceIndex, blobs: BlobStore, *, min_age_seconds: float = 3600, dry_run: bool = False
) -> SweepReport:
    """Delete instance objects older than `min_age_seconds` that no index row references.

    A STOW writes the object before its index row, so a young unreferenced object may be an
    upload still in flight: the age threshold keeps the sweep from racing live stores. The
    same bytes stored again write the same key (keys are content digests), which makes an old
    object young again after it was listed: each delete is marked first and the rows looked
    at again (services/delete.py `delete_unneeded`), so such a store writes it back.
    """
    report = SweepReport()
    now = time.time()
    async for info in blobs.iter_objects():
        key = parse_instance_blob_key(info.key)
        if key is None:
            continue  # caches and anything not an instance object are not ours to judge
        report.examined += 1
        stored = await index.get_instance(key)
        if stored is not None and stored.blob_key == info.key:
            report.referenced += 1
            continue
        if isinstance(index, Lifecycle) and await index.trash_references(info.key):
            report.referenced += 1  # a deleted instance's object: restorable until purged
            continue
        if now - info.modified < min_age_seconds:
            report.too_recent += 1
            continue
        if not dry_run and isinstance(index, Lifecycle):
            deleted, _ = await delete_unneeded(
                index, blobs, [info.key], lambda keys: referenced(index, keys)
            )
            if not deleted:
                report.referenced += 1  # stored again since it was listed
                continue
        report.orphans.append(info.key)
        if not dry_run:
            if not isinstance(index, Lifecycle):
                await blobs.delete(info.key)
            report.deleted += 1
            report.freed_bytes += info.size
            log.info("deleted orphaned object %s", info.key)
    return report
