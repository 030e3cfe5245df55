"""Retrieve (WADO-RS): instances, metadata, frames and bulk data from the index and blob store."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import BinaryIO

from dicomweb_server.domain.dicom_json import absolute_bulk_uris
from dicomweb_server.domain.identifiers import InstanceKey, StudyKey
from dicomweb_server.domain.part10 import PIXEL_DATA
from dicomweb_server.errors import BadRequestError, NotAcceptableError, NotFoundError
from dicomweb_server.index.base import InstanceIndex, StoredInstance
from dicomweb_server.storage.base import BlobStore

__all__ = ["NATIVE_SYNTAXES", "RetrieveService"]

# Syntaxes whose frames are the stored bytes as they are (little endian, not compressed).
NATIVE_SYNTAXES = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"})
_SPOOL_MEMORY = 8 << 20


@dataclass(slots=True)
class RetrieveService:
    """WADO-RS reads; every method raises NotFoundError for what does not exist."""

    index: InstanceIndex
    blobs: BlobStore

    async def iter_instances(
        self, study: StudyKey, series_instance_uid: str | None = None
    ) -> AsyncIterator[StoredInstance]:
        """Instances of a study or series; NotFoundError before the first byte if none."""
        iterator = aiter(self.index.iter_instances(study, series_instance_uid))
        first = await anext(iterator, None)
        if first is None:
            raise NotFoundError(_not_found(study, series_instance_uid))
        return _chain(first, iterator)

    async def get_instance(self, key: InstanceKey) -> StoredInstance:
        """One instance, or NotFoundError."""
        found = await self.index.get_instance(key)
        if found is None:
            raise NotFoundError(f"instance {key.sop_instance_uid} not found")
        return found

    def iter_object(self, instance: StoredInstance) -> AsyncIterator[bytes]:
        """The stored Part 10 bytes, streamed."""
        return self.blobs.iter_get(instance.blob_key)

    async def iter_metadata(
        self, study: StudyKey, series_instance_uid: str | None, root_url: str
    ) -> AsyncIterator[bytes]:
        """A JSON array of stored instance metadata, streamed without re-parsing DICOM."""
        iterator = aiter(self.index.iter_metadata(study, series_instance_uid))
        first = await anext(iterator, None)
        if first is None:
            raise NotFoundError(_not_found(study, series_instance_uid))

        async def generate() -> AsyncIterator[bytes]:
            yield b"[" + absolute_bulk_uris(first, root_url)
            async for metadata in iterator:
                yield b"," + absolute_bulk_uris(metadata, root_url)
            yield b"]"

        return generate()

    async def instance_metadata(self, key: InstanceKey, root_url: str) -> bytes:
        """One instance's metadata as a JSON array of one object."""
        metadata = await self.index.get_metadata(key)
        if metadata is None:
            raise NotFoundError(f"instance {key.sop_instance_uid} not found")
        return b"[" + absolute_bulk_uris(metadata, root_url) + b"]"

    async def read_native_frames(self, instance: StoredInstance, numbers: list[int]) -> list[bytes]:
        """Frames as native little-endian pixels (PS3.18 8.7.3.5.2), by ranged reads when stored
        natively and by decoding off the event loop otherwise."""
        self._check_frames(instance, numbers)
        pixel = instance.pixel
        if (
            pixel is not None
            and not pixel.encapsulated
            and pixel.frames
            and instance.transfer_syntax_uid in NATIVE_SYNTAXES
        ):
            return list(
                await asyncio.gather(
                    *(
                        self.blobs.read_range(instance.blob_key, *pixel.frames[n - 1].fragments[0])
                        for n in numbers
                    )
                )
            )
        return await self._decode_frames(instance, numbers)

    @staticmethod
    def _check_frames(instance: StoredInstance, numbers: list[int]) -> None:
        if instance.number_of_frames == 0 or (
            instance.pixel is None and instance.number_of_frames == 0
        ):
            raise NotFoundError(f"instance {instance.key.sop_instance_uid} has no pixel data")
        for n in numbers:
            if n < 1:
                raise BadRequestError(f"frame number {n} is invalid: frames are numbered from 1")
            if n > instance.number_of_frames:
                raise NotFoundError(
                    f"frame {n} does not exist: the instance has {instance.number_of_frames}"
                )

    async def _decode_frames(self, instance: StoredInstance, numbers: list[int]) -> list[bytes]:
        with tempfile.SpooledTemporaryFile(_SPOOL_MEMORY) as spool:
            async for chunk in self.blobs.iter_get(instance.blob_key):
                await asyncio.to_thread(spool.write, chunk)
            return await asyncio.to_thread(_decode, spool, numbers)  # type: ignore[arg-type]

    async def read_bulk(self, key: InstanceKey, path: str) -> tuple[StoredInstance, list[bytes]]:
        """A bulk data value: one span, or the frames of encapsulated Pixel Data."""
        instance = await self.get_instance(key)
        if path == f"{PIXEL_DATA:08X}":
            pixel = instance.pixel
            if pixel is None:
                raise NotFoundError("the instance has no pixel data")
            if not pixel.encapsulated:
                return instance, [
                    await self.blobs.read_range(
                        instance.blob_key, pixel.value_offset, pixel.value_length
                    )
                ]
            if pixel.frames:
                parts = []
                for frame in pixel.frames:
                    pieces = [
                        await self.blobs.read_range(instance.blob_key, *f) for f in frame.fragments
                    ]
                    parts.append(b"".join(pieces))
                return instance, parts
            raise NotAcceptableError("this Pixel Data's fragments cannot be mapped to frames")
        span = await self.index.get_bulk_span(key, path)
        if span is None:
            raise NotFoundError(f"no bulk data at {path[:80]!r} for this instance")
        return instance, [await self.blobs.read_range(instance.blob_key, *span)]


def _decode(spool: BinaryIO, numbers: list[int]) -> list[bytes]:
    from pydicom import dcmread
    from pydicom.pixels.utils import pixel_array

    spool.seek(0)
    ds = dcmread(spool)
    frames = []
    for n in numbers:
        try:
            array = pixel_array(ds, index=n - 1)
        except (NotImplementedError, RuntimeError, ValueError) as exc:
            raise NotAcceptableError(
                f"cannot decode {ds.file_meta.TransferSyntaxUID} pixel data: {str(exc)[:120]}"
            ) from exc
        frames.append(array.astype(array.dtype.newbyteorder("<")).tobytes())
    return frames


async def _chain(
    first: StoredInstance, rest: AsyncIterator[StoredInstance]
) -> AsyncIterator[StoredInstance]:
    yield first
    async for item in rest:
        yield item


def _not_found(study: StudyKey, series_instance_uid: str | None) -> str:
    if series_instance_uid is None:
        return f"study {study.study_instance_uid} not found"
    return f"series {series_instance_uid} not found in study {study.study_instance_uid}"
