"""Study, series and instance answers (PS3.18 10.4.1.1.1-3), decided before the first byte.

Each instance's transfer syntax is decided before the status is sent (PS3.18 8.7.3): the
first acceptable one we can produce. Whether a transcode works depends on the stored syntax
and the Image Pixel attributes (bit depth, sign, colour), so the first instance of each such
kind is transcoded while planning (its result is kept and sent); when it fails, the next
acceptable syntax is tried, and an instance nothing acceptable can be made of is a 406 that
names it. Instances of a kind already decided share the decision. Should a later instance
still fail to transcode (its own pixel data is broken) and the client accepts the stored
form (no syntax asked for, or `*`, or the stored one), it is sent as stored, its part's
Content-Type saying so; otherwise the answer is cut and the failure logged.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import IO

from dicomweb_server.codecs.registry import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    NATIVE_SYNTAXES,
    CodecError,
)
from dicomweb_server.codecs.transcode import transcode_instance
from dicomweb_server.domain.identifiers import InstanceKey, StudyKey
from dicomweb_server.domain.records import ImagePixel, StoredInstance
from dicomweb_server.errors import NotAcceptableError, NotFoundError
from dicomweb_server.index.base import InstanceIndex
from dicomweb_server.services.bodies import InstanceBody, InstancesPlan, PlannedInstance
from dicomweb_server.services.codec_pool import CodecPool
from dicomweb_server.services.frame_formats import default_syntax, why_not
from dicomweb_server.services.read_ahead import iter_read_ahead
from dicomweb_server.services.streams import close_stream, iter_spool, one_view, opened
from dicomweb_server.storage.base import BlobStore, FileRegion, local_region, read_sendable

__all__ = ["InstanceAnswers", "ReadAhead"]

log = logging.getLogger("dicomweb_server.retrieve")
_SPOOL_MEMORY = 8 << 20  # a stored or transcoded instance above this spools to disk
_STREAM_CHUNK = 1 << 20  # chunk size of a stored object streamed rather than read whole
# What decides whether a transcode of an instance works: (stored syntax, pixels, any pixels).
_Kind = tuple[str, ImagePixel | None, bool]


@dataclass(frozen=True, slots=True)
class ReadAhead:
    """How far a study or series answer reads ahead of the instance being sent."""

    objects: int = 8
    bytes: int = 16 << 20
    sized_max_instances: int = 2000  # listed before the first byte, for a Content-Length


def _accepts_stored(wanted: Sequence[str | None], stored: str) -> bool:
    """True when the client takes the stored form: no syntax named, `*`, or the stored one."""
    return any(syntax in (None, "*", stored) for syntax in wanted)


@dataclass(slots=True)
class _Decisions:
    """The transcoding decisions of one answer, per kind of instance, with trial results."""

    answers: InstanceAnswers
    wanted: Sequence[str | None]
    keep_trials: bool
    known: dict[_Kind, PlannedInstance] = field(default_factory=dict)
    trials: dict[InstanceKey, IO[bytes]] = field(default_factory=dict)

    async def decide(self, instance: StoredInstance) -> PlannedInstance:
        pixel = instance.pixel
        kind = (
            instance.transfer_syntax_uid,
            None if pixel is None else pixel.image,
            instance.number_of_frames > 0,
        )
        known = self.known.get(kind)
        if known is None:
            planned, shared = await self._first_of_kind(instance)
            if not shared:
                return planned
            known = self.known[kind] = planned
        return PlannedInstance(instance, known.transfer_syntax_uid, known.as_stored)

    async def _first_of_kind(self, instance: StoredInstance) -> tuple[PlannedInstance, bool]:
        """The instance's plan, and whether others of its kind can share it: a plan made
        because this instance's own pixel data failed (sent as stored) is its alone."""
        refused: dict[str, str] = {}
        while True:
            try:
                planned = self.answers.plan(instance, self.wanted, refused)
            except NotAcceptableError:
                stored = instance.transfer_syntax_uid
                if not refused or not _accepts_stored(self.wanted, stored):
                    raise
                log.warning(
                    "instance %s sent as stored (%s): %s",
                    instance.key.sop_instance_uid,
                    stored,
                    "; ".join(refused.values())[:300],
                )
                return PlannedInstance(instance, stored, as_stored=True), False
            if planned.as_stored or instance.number_of_frames == 0:
                return planned, True
            target = planned.transfer_syntax_uid
            try:
                spool = await self.answers.transcode(instance, target)
            except CodecError as exc:
                refused[target] = str(exc)
                continue
            if self.keep_trials:
                self.trials[instance.key] = spool
            else:
                spool.close()
            return planned, True

    def close(self) -> None:
        """Drop trial results nobody sent (the answer failed or was abandoned)."""
        for spool in self.trials.values():
            spool.close()
        self.trials.clear()


@dataclass(slots=True)
class InstanceAnswers:
    """Plans and opens the instances of WADO-RS answers."""

    index: InstanceIndex
    blobs: BlobStore
    codecs: CodecPool
    read_ahead: ReadAhead = field(default_factory=ReadAhead)

    def plan(
        self,
        instance: StoredInstance,
        wanted: Sequence[str | None],
        refused: dict[str, str] | None = None,
    ) -> PlannedInstance:
        """The first acceptable syntax we can produce, skipping `refused` ones (with reasons).

        `wanted` items are UIDs, "*" (as stored) or None (PS3.18 8.7.3.4 default: explicit VR
        little endian, unless the stored data is lossy-compressed: then as stored). An
        instance without Pixel Data asked for in a compressed syntax is sent in explicit VR
        little endian: there is nothing to compress, and its part's Content-Type says so.
        NotAcceptableError names the instance when nothing acceptable can be produced.
        """
        stored = instance.transfer_syntax_uid
        refused = refused or {}
        reasons: list[str] = []
        for syntax in wanted:
            target = default_syntax(stored) if syntax is None else syntax
            if target == "*":
                target = stored
            elif instance.number_of_frames == 0 and target not in NATIVE_SYNTAXES:
                target = EXPLICIT_VR_LITTLE_ENDIAN  # no Pixel Data: nothing to compress
            if target == stored:
                return PlannedInstance(instance, stored, as_stored=True)
            reason = refused.get(target)
            if reason is None and instance.number_of_frames > 0:
                reason = why_not(stored, target)
            if reason is None:
                return PlannedInstance(instance, target, as_stored=False)
            reasons.append(f"{target}: {reason}")
        raise NotAcceptableError(
            f"instance {instance.key.sop_instance_uid} (stored as {stored}) cannot be served"
            " in any accepted transfer syntax: " + "; ".join(reasons[:4])
        )

    async def plan_instances(
        self,
        study: StudyKey,
        series_instance_uid: str | None,
        wanted: Sequence[str | None],
        *,
        regions: bool,
    ) -> InstancesPlan:
        """A study's or series' instances, each decided before the first byte.

        Up to `read_ahead.sized_max_instances` are listed (and their sizes summed, when sent
        as stored); a larger answer is checked in a first pass over the index and streamed
        in a second, so no instance is found unsendable after the status is sent. With
        `regions`, an answer of local files sent as stored becomes framing plus file regions.
        """
        limit = self.read_ahead.sized_max_instances
        decisions = _Decisions(self, wanted, keep_trials=True)
        listed: list[PlannedInstance] = []
        seen = 0
        instances = aiter(self.index.iter_instances(study, series_instance_uid))
        try:
            async for instance in instances:
                seen += 1
                if len(listed) == limit:
                    decisions.keep_trials = False  # streamed later, from a second listing
                    await decisions.decide(instance)
                    async for later in instances:
                        await decisions.decide(later)  # checked; nothing kept
                    break
                listed.append(await decisions.decide(instance))
            if not seen:
                raise NotFoundError(not_found(study, series_instance_uid))
            complete = decisions.keep_trials
            if complete:
                return await self._plan_listed(listed, regions, decisions)

            async def relisted() -> AsyncIterator[PlannedInstance]:
                async for again in self.index.iter_instances(study, series_instance_uid):
                    yield await decisions.decide(again)

            bodies = await self._open_bodies(relisted(), decisions)
            return InstancesPlan(listed, False, None, bodies)
        except BaseException:
            decisions.close()
            raise
        finally:
            await close_stream(instances)

    async def plan_instance(
        self, instance: StoredInstance, wanted: Sequence[str | None], *, regions: bool
    ) -> InstancesPlan:
        """One instance's answer, decided before the first byte."""
        decisions = _Decisions(self, wanted, keep_trials=True)
        try:
            return await self._plan_listed([await decisions.decide(instance)], regions, decisions)
        except BaseException:
            decisions.close()
            raise

    async def _plan_listed(
        self, listed: list[PlannedInstance], regions: bool, decisions: _Decisions
    ) -> InstancesPlan:
        files = self._local_files(listed) if regions else None
        if files is not None:
            # A missing object is an error before the status, as on the streaming path.
            first = listed[0].instance
            await read_sendable(self.blobs, first.blob_key, 0, first.size)
            return InstancesPlan(listed, True, files, None)

        async def planned() -> AsyncIterator[PlannedInstance]:
            for item in listed:
                yield item

        return InstancesPlan(listed, True, None, await self._open_bodies(planned(), decisions))

    def _local_files(self, listed: list[PlannedInstance]) -> list[FileRegion] | None:
        """Each instance's object as a region of a local file, if all are sent as stored."""
        found = []
        for planned in listed:
            instance = planned.instance
            region = local_region(self.blobs, instance.blob_key, 0, instance.size)
            if region is None or not planned.as_stored:
                return None
            found.append(region)
        return found

    async def _open_bodies(
        self, items: AsyncIterator[PlannedInstance], decisions: _Decisions
    ) -> AsyncIterator[InstanceBody]:
        """Each instance's bytes in order, the next ones read ahead (ReadAhead bounds); the
        first is opened before this returns.

        An object sent as stored that fits in the read-ahead bytes is read whole, in one read;
        a larger one is opened ahead and streamed; a transcode runs at its turn, alone.
        """
        bounds = self.read_ahead

        def whole(planned: PlannedInstance) -> bool:
            return planned.as_stored and planned.instance.size <= bounds.bytes

        def cost(planned: PlannedInstance) -> int:
            if whole(planned):
                return planned.instance.size
            return _STREAM_CHUNK if planned.as_stored else bounds.bytes

        async def fetch(planned: PlannedInstance) -> InstanceBody:
            instance = planned.instance
            if whole(planned):
                data = await read_sendable(self.blobs, instance.blob_key, 0, instance.size)
                return planned, one_view(data)
            return await self._open(planned, decisions)

        opened_ahead = iter_read_ahead(
            items, fetch, cost, max_items=bounds.objects, max_bytes=bounds.bytes
        )
        try:
            first = await anext(opened_ahead)
        except BaseException:
            await opened_ahead.aclose()
            raise

        async def bodies() -> AsyncIterator[InstanceBody]:
            try:
                yield first[1]
                async for _, body in opened_ahead:
                    yield body
            finally:
                await opened_ahead.aclose()
                decisions.close()

        return bodies()

    async def _open(self, planned: PlannedInstance, decisions: _Decisions) -> InstanceBody:
        """The planned instance's bytes: the stored stream, a trial's result, or a transcode."""
        instance = planned.instance
        if planned.as_stored:
            # Read the first chunk now: a store that is down is a 503, not a cut-off 200.
            return planned, await opened(self.iter_object(instance))
        trial = decisions.trials.pop(instance.key, None)
        if trial is not None:
            return planned, iter_spool(trial)
        try:
            return planned, iter_spool(await self.transcode(instance, planned.transfer_syntax_uid))
        except CodecError as exc:
            stored = instance.transfer_syntax_uid
            if not _accepts_stored(decisions.wanted, stored):
                raise NotAcceptableError(
                    f"instance {instance.key.sop_instance_uid} (stored as {stored}) cannot be"
                    f" transcoded to {planned.transfer_syntax_uid}: {exc}"
                ) from exc
            log.warning(
                "instance %s sent as stored (%s): cannot be transcoded to %s: %s",
                instance.key.sop_instance_uid,
                stored,
                planned.transfer_syntax_uid,
                exc,
            )
            as_stored = PlannedInstance(instance, stored, as_stored=True)
            return as_stored, await opened(self.iter_object(instance))

    def iter_object(self, instance: StoredInstance) -> AsyncIterator[bytes]:
        """The stored Part 10 bytes, streamed."""
        return self.blobs.iter_get(instance.blob_key, chunk_size=_STREAM_CHUNK)

    async def transcode(self, instance: StoredInstance, target: str) -> IO[bytes]:
        """The whole instance rewritten in `target`, spooled (memory, then disk)."""
        source = tempfile.SpooledTemporaryFile(_SPOOL_MEMORY)  # noqa: SIM115 - closed below
        try:
            async for chunk in self.blobs.iter_get(instance.blob_key):
                await asyncio.to_thread(source.write, chunk)
            out = tempfile.SpooledTemporaryFile(_SPOOL_MEMORY)  # noqa: SIM115 - caller closes
            try:
                written = await self.codecs.run(
                    transcode_instance,
                    source,
                    target,
                    out,
                    self.codecs.max_decoded_bytes,
                    kind="transcode",
                )
                if written != target:
                    raise CodecError(f"the instance came out as {written}, not {target}")
            except BaseException:
                out.close()
                raise
        finally:
            source.close()
        out.seek(0)
        return out


def not_found(study: StudyKey, series_instance_uid: str | None) -> str:
    """What a 404 for a study (or a series of it) with no instance says."""
    if series_instance_uid is None:
        return f"study {study.study_instance_uid} not found"
    return f"series {series_instance_uid} not found in study {study.study_instance_uid}"
