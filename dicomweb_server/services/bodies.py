"""What the retrieve service hands the web layer to send: body plans of bytes and file regions.

A study, series or instance answer is planned before its first byte (PS3.18 8.7.3: every
instance's transfer syntax is decided then, and one that cannot be produced is a 406 naming
it, never a cut-off 200). The web layer frames the plan as multipart and sends it; it never
reads a store itself. A `FileRegion` is a span of a local file a server may send by the
kernel (sendfile); anywhere else it is sent as a mapped view.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from dicomweb_server.domain.records import StoredInstance
from dicomweb_server.storage.base import FileRegion, map_view

__all__ = ["FileRegion", "InstanceBody", "InstancesPlan", "PlannedInstance", "map_view"]


@dataclass(frozen=True, slots=True)
class PlannedInstance:
    """One instance of an answer, and how it will be sent."""

    instance: StoredInstance
    transfer_syntax_uid: str  # of the bytes sent
    as_stored: bool  # the stored bytes, unchanged (their size is known ahead)

    @property
    def size(self) -> int | None:
        """Bytes this instance's part body will hold, when known before sending."""
        return self.instance.size if self.as_stored else None


# One part of an instances answer: the instance as planned, and its bytes.
InstanceBody = tuple[PlannedInstance, AsyncIterator[bytes]]


@dataclass(slots=True)
class InstancesPlan:
    """A study, series or instance answer, every instance decided before the first byte.

    `listed` holds every instance when `complete`, else the first ones. `regions` is set when
    the caller can send file regions, the answer is complete, every instance is sent as stored
    and each is a local file (the first one checked to exist): the answer is then framing plus
    file regions. Otherwise `bodies` streams each instance, the next ones read ahead, the first
    one already opened (a store that is down is an error before the status, not a cut body).
    """

    listed: list[PlannedInstance]
    complete: bool
    regions: list[FileRegion] | None
    bodies: AsyncIterator[InstanceBody] | None

    @property
    def content_length_known(self) -> bool:
        """True when the size of every instance's bytes is known before sending."""
        return self.complete and all(planned.as_stored for planned in self.listed)
