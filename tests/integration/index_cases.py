"""Helpers for the index contract: real Part 10 instances with fresh UIDs, and a cuttable proxy."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import FileDataset
from pydicom.uid import UID, generate_uid

from dicomweb_server.domain.part10 import ParseLimits, parse_part10
from dicomweb_server.domain.records import InstanceRecord

__all__ = ["Built", "InstanceFactory", "TcpProxy"]

# pydicom's bundled test files, one per modality we need. CT_small carries a private OB value
# above the bulk threshold (a BulkSpan); "CT-lean" is the same file without private tags, three
# times faster to write and parse where many instances are needed.
_TEMPLATES = {
    "CT": "CT_small.dcm",
    "CT-lean": "CT_small.dcm",
    "MR": "MR_small.dcm",
    "NM": "JPEG2000.dcm",
}
_KEEP = object()  # "leave the template's value"


@dataclass(frozen=True)
class Built:
    """An instance ready for `add_instance`: its record and the blob it was stored as."""

    record: InstanceRecord
    blob_key: str
    size: int
    digest: str

    @property
    def sop(self) -> str:
        return self.record.sop_instance_uid


class InstanceFactory:
    """Writes variants of pydicom's test files into `folder` and parses them with parse_part10."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._templates: dict[str, bytes] = {}
        self._written = 0

    def _template(self, modality: str) -> FileDataset:
        """A fresh, independent copy of the modality's template (Dataset.copy is shallow)."""
        if modality not in self._templates:
            path = get_testdata_file(_TEMPLATES[modality])
            assert path is not None, _TEMPLATES[modality]
            ds = pydicom.dcmread(path)
            if modality.endswith("-lean"):
                ds.remove_private_tags()
            buffer = io.BytesIO()
            ds.save_as(buffer)
            self._templates[modality] = buffer.getvalue()
        return pydicom.dcmread(io.BytesIO(self._templates[modality]))

    def make(
        self,
        study: str,
        series: str,
        sop: str | None = None,
        *,
        modality: str = "CT",
        instance_number: int | object | None = _KEEP,
        series_number: int | None = None,
        patient_name: str | None = None,
        patient_id: str | None = None,
        study_date: str | None = None,
        accession_number: str | None = None,
        series_description: str | None = None,
    ) -> Built:
        """One instance; any argument left as None keeps the template's value."""
        ds = self._template(modality)
        sop = sop or generate_uid()
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = sop
        ds.file_meta.MediaStorageSOPInstanceUID = UID(sop)
        if instance_number is None:
            del ds.InstanceNumber
        elif instance_number is not _KEEP:
            ds.InstanceNumber = instance_number
        for keyword, value in (
            ("SeriesNumber", series_number),
            ("PatientName", patient_name),
            ("PatientID", patient_id),
            ("StudyDate", study_date),
            ("AccessionNumber", accession_number),
            ("SeriesDescription", series_description),
        ):
            if value is not None:
                setattr(ds, keyword, value)
        if any(isinstance(v, str) and not v.isascii() for v in (patient_name, series_description)):
            ds.SpecificCharacterSet = "ISO_IR 192"
        self._written += 1
        path = self._folder / f"{self._written:05d}.dcm"
        ds.save_as(path)
        data = path.read_bytes()
        with path.open("rb") as fp:
            record = parse_part10(fp, len(data), ParseLimits())
        digest = hashlib.sha256(data).hexdigest()
        return Built(record, f"objects/{sop}/{digest[:16]}", len(data), digest)


class TcpProxy:
    """A loopback TCP relay to PostgreSQL that a test can cut (refusing and resetting) and mend.

    It stands in for a server outage without stopping the session's shared PostgreSQL.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self) -> int:
        """Listen (on the same port as before, if any); return the port."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        """Stop listening and reset every relayed connection."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._relay(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        upstream: asyncio.StreamWriter | None = None
        try:
            up_reader, upstream = await asyncio.open_connection(*self._target)
            self._writers.add(upstream)
            await asyncio.gather(_pump(reader, upstream), _pump(up_reader, writer))
        except OSError:
            pass
        finally:
            for w in (writer, upstream):
                if w is not None:
                    self._writers.discard(w)
                    w.transport.abort()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.transport.abort()
