"""Adding many instances in one index transaction, for indexes that can; one by one otherwise."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from dicomweb_server.domain.records import InstanceRecord
from dicomweb_server.index.base import AddOutcome, InstanceIndex

__all__ = ["BatchInstanceIndex", "NewInstance", "add_instances"]


@dataclass(frozen=True, slots=True)
class NewInstance:
    """An instance whose object is durable, ready for the index: `add_instance`'s arguments."""

    record: InstanceRecord
    blob_key: str
    size: int
    digest: str


@runtime_checkable
class BatchInstanceIndex(Protocol):
    """An index that adds a batch in one transaction, with `add_instance`'s outcome for each.

    Each instance is judged as if added alone, in order (a repeated SOP Instance UID within
    the batch sees the earlier one), and the created ones become visible together.
    """

    async def add_instances(
        self, site: str, instances: Sequence[NewInstance]
    ) -> list[AddOutcome]: ...


async def add_instances(
    index: InstanceIndex, site: str, instances: Sequence[NewInstance]
) -> list[AddOutcome]:
    """Add `instances` in one transaction if `index` can, else one transaction each."""
    if not instances:
        return []
    if isinstance(index, BatchInstanceIndex):
        return await index.add_instances(site, instances)
    return [
        await index.add_instance(site, new.record, new.blob_key, new.size, new.digest)
        for new in instances
    ]
