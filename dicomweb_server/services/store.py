"""Store Instances: validate, write the object, then index it; visible once both are durable."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import BinaryIO

from dicomweb_server.domain.part10 import (
    PREAMBLE_LENGTH,
    InvalidInstanceError,
    ParseLimits,
    parse_part10,
)
from dicomweb_server.domain.records import InstanceRecord
from dicomweb_server.domain.stow_result import (
    DATA_SET_DOES_NOT_MATCH,
    DUPLICATE_SOP_INSTANCE,
    StowResult,
)
from dicomweb_server.index.base import AddOutcome, InstanceIndex
from dicomweb_server.storage.base import DEFAULT_CHUNK_SIZE, BlobStore

__all__ = ["StoreService", "blob_key_for"]

log = logging.getLogger("dicomweb_server.store")


def blob_key_for(site: str, record: InstanceRecord, digest: str) -> str:
    """Object key: site/study/series/instance/digest, so different content never shares a key."""
    return (
        f"{site}/{record.study_instance_uid}/{record.series_instance_uid}/"
        f"{record.sop_instance_uid}/{digest[:32]}.dcm"
    )


def _prepare(file: BinaryIO, size: int, limits: ParseLimits) -> tuple[InstanceRecord, str]:
    """Parse the header, zero the 128-byte preamble (it can carry executables) and digest."""
    record = parse_part10(file, size, limits)
    file.seek(0)
    file.write(b"\0" * PREAMBLE_LENGTH)
    file.seek(0)
    digest = hashlib.sha256()
    while chunk := file.read(1 << 20):
        digest.update(chunk)
    return record, digest.hexdigest()


async def _iter_file(file: BinaryIO) -> AsyncIterator[bytes]:
    file.seek(0)
    while True:
        chunk = await asyncio.to_thread(file.read, DEFAULT_CHUNK_SIZE * 4)
        if not chunk:
            return
        yield chunk


@dataclass(slots=True)
class StoreService:
    """Stores one spooled part at a time into `blobs` then `index`."""

    index: InstanceIndex
    blobs: BlobStore
    limits: ParseLimits

    async def store_instance(
        self, site: str, file: BinaryIO, size: int, study_in_path: str | None, result: StowResult
    ) -> None:
        """Store one Part 10 file; failures become entries of `result`, not exceptions."""
        try:
            record, digest = await asyncio.to_thread(_prepare, file, size, self.limits)
        except InvalidInstanceError as exc:
            result.add_failed("", "", exc.failure_code, exc.reason)
            return
        if study_in_path is not None and record.study_instance_uid != study_in_path:
            result.add_failed(
                record.sop_class_uid,
                record.sop_instance_uid,
                DATA_SET_DOES_NOT_MATCH,
                f"StudyInstanceUID {record.study_instance_uid} differs from the request URL",
            )
            return
        key = blob_key_for(site, record, digest)
        stored_size = await self.blobs.put(key, _iter_file(file))
        outcome = await self.index.add_instance(site, record, key, stored_size, digest)
        if outcome is AddOutcome.CONFLICT:
            # Our object's key is unique to this content and place, so no row references it.
            await self.blobs.delete(key)
            result.add_failed(
                record.sop_class_uid,
                record.sop_instance_uid,
                DUPLICATE_SOP_INSTANCE,
                f"SOP Instance {record.sop_instance_uid} is already stored with different"
                " content or in another series; the stored copy is kept",
            )
            return
        log.info(
            "stored instance %s (%s)",
            record.sop_instance_uid,
            outcome.value,
        )
        result.add_stored(
            record.sop_class_uid,
            record.sop_instance_uid,
            record.study_instance_uid,
            record.series_instance_uid,
        )
