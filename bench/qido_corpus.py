"""The QIDO corpus: many small instances across thousands of patients, loaded fast.

One Part 10 template holds fixed-width placeholder values. Each synthetic instance is the
template with its placeholders replaced (same lengths, so the bytes stay valid DICOM), and
its index record is the template's `parse_part10` record with the same replacements. That
lets the loader call `InstanceIndex.add_instance` directly, tens of thousands of times a
minute, instead of storing each instance over HTTP; `check_templating` proves on a sample
that the varied record is exactly what `parse_part10` makes of the varied file. Orthanc has
no such door, so it gets the same files over STOW-RS.

Shape: study s belongs to patient s // 2, has 1 + s % 4 series of `instances_per_series`
instances, and is dated `start + (s % days)` where days = studies / studies_per_day, so a
7-day StudyDate range returns 7 × studies_per_day studies (1,400 by default). With
`sites` > 1 (issue 16, `bench scale --sites`) each patient's studies live in one of the sites
`site-01`.., chosen by a hash of the patient number so that every site holds its share of
every day, name and page; with one site everything is in the default site.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import orjson
from pydicom.dataset import Dataset, FileMetaDataset

from dicomweb_server.domain.identifiers import DEFAULT_SITE
from dicomweb_server.domain.part10 import ParseLimits, parse_part10
from dicomweb_server.domain.records import BulkSpan, InstanceRecord
from dicomweb_server.index.base import AddOutcome, InstanceIndex, SiteCatalog
from dicomweb_server.index.batch import NewInstance, add_instances

__all__ = [
    "QROOT",
    "QidoInstance",
    "QidoSizes",
    "QidoTemplate",
    "add_corpus_sites",
    "check_templating",
    "checked_template",
    "corpus_sites",
    "iter_instances",
    "load_index",
    "new_instance",
    "patient_id",
    "patient_name",
    "study_date",
    "study_site",
    "study_uid",
]

QROOT = "1.2.826.0.1.3680043.10.1234.78"
SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
MODALITIES = ("CT", "MR", "CR", "US", "DX")
_SYLLABLES = (
    "KA", "MO", "RI", "TA", "NE", "SU", "LO", "BI", "DA", "FE",
    "GU", "HO", "JI", "KU", "LE", "MA", "NO", "PA", "RE", "SO",
)  # fmt: skip
_GIVEN = ("ANNA", "BORI", "CARL", "DINA", "EMIL", "FRED", "GINA", "HANS", "IRIS", "JOHN")
_START = datetime.date(2024, 1, 1)

# Placeholders: each as wide as every value that replaces it.
_P_STUDY = f"{QROOT}.19999999"
_P_SERIES = f"{QROOT}.2999999999"
_P_SOP = f"{QROOT}.39999999999999"
_P_PATIENT_ID = "P99999999"
_P_NAME = "ZZFAMZ^ZGVZ"
_P_DATE = "20991231"
_P_ACCESSION = "A999999999"
_P_MODALITY = "ZQ"
_IS_INSTANCE = (b"\x20\x00\x13\x00IS\x04\x00", b"9999", b'"00200013":{"vr":"IS","Value":[9999]}')
_IS_SERIES = (b"\x20\x00\x11\x00IS\x02\x00", b"99", b'"00200011":{"vr":"IS","Value":[99]}')


@dataclass(frozen=True, slots=True)
class QidoSizes:
    """Corpus shape; the default is 6,000 studies, 3,000 patients, 30,000 instances, all in
    the default site."""

    studies: int = 6000
    instances_per_series: int = 2
    studies_per_day: int = 200
    sites: int = 1

    @property
    def days(self) -> int:
        return max(1, self.studies // self.studies_per_day)

    @property
    def instances(self) -> int:
        return sum(series_count(s) for s in range(self.studies)) * self.instances_per_series

    @property
    def patients(self) -> int:
        return (self.studies + 1) // 2

    def key(self) -> str:
        """Names a cached corpus: the shape, and the sites when more than one (so a corpus
        spread over sites is never taken for a one-site corpus, nor the other way round)."""
        spread = f"-s{self.sites}" if self.sites > 1 else ""
        return f"{self.studies}-{self.instances_per_series}-{self.studies_per_day}{spread}-v2"

    def describe(self) -> str:
        where = f" in {self.sites} sites" if self.sites > 1 else ""
        return (
            f"{self.instances:,} small instances in {self.studies:,} studies of"
            f" {self.patients:,} patients over {self.days} days{where}"
        )


def series_count(study: int) -> int:
    return 1 + study % 4


def corpus_sites(sizes: QidoSizes) -> tuple[str, ...]:
    """The sites the corpus's studies live in: `site-01`.. for several, else the default."""
    if sizes.sites <= 1:
        return (DEFAULT_SITE,)
    width = max(2, len(str(sizes.sites)))
    return tuple(f"site-{n:0{width}d}" for n in range(1, sizes.sites + 1))


def study_site(sizes: QidoSizes, s: int) -> str:
    """The site of study s: its patient's, by a multiplicative hash of the patient number
    (a plain modulo would tie sites to days, which cycle with the study number too)."""
    if sizes.sites <= 1:
        return DEFAULT_SITE
    mixed = ((s // 2) * 2654435761) & 0xFFFFFFFF
    return corpus_sites(sizes)[(mixed >> 16) % sizes.sites]


def study_uid(s: int) -> str:
    return f"{QROOT}.1{s:07d}"


def series_uid(s: int, k: int) -> str:
    return f"{QROOT}.2{s:07d}{k:02d}"


def sop_uid(s: int, k: int, j: int) -> str:
    return f"{QROOT}.3{s:07d}{k:02d}{j:04d}"


def patient_id(p: int) -> str:
    return f"P{p:08d}"


def patient_name(p: int) -> str:
    family = _SYLLABLES[p % 20] + _SYLLABLES[(p // 20) % 20] + _SYLLABLES[(p // 400) % 20]
    return f"{family}^{_GIVEN[p % 10]}"


def study_date(sizes: QidoSizes, s: int) -> str:
    return (_START + datetime.timedelta(days=s % sizes.days)).strftime("%Y%m%d")


def accession(s: int) -> str:
    return f"A{s:09d}"


@dataclass(frozen=True, slots=True)
class QidoInstance:
    """The values that make one synthetic instance different from the template."""

    study: str
    series: str
    sop: str
    patient_id: str
    patient_name: str
    date: str
    accession: str
    modality: str
    series_number: int
    instance_number: int
    site: str = DEFAULT_SITE  # where it is indexed; not in the file

    def substitutions(self) -> list[tuple[str, str]]:
        return [
            (_P_STUDY, self.study),
            (_P_SERIES, self.series),
            (_P_SOP, self.sop),
            (_P_PATIENT_ID, self.patient_id),
            (_P_NAME, self.patient_name),
            (_P_DATE, self.date),
            (_P_ACCESSION, self.accession),
            (_P_MODALITY, self.modality),
        ]


def iter_instances(sizes: QidoSizes, first_study: int = 0) -> Iterator[QidoInstance]:
    """Every instance of the corpus, study by study, series by series."""
    for s in range(first_study, sizes.studies):
        p = s // 2
        site = study_site(sizes, s)
        for k in range(series_count(s)):
            for j in range(sizes.instances_per_series):
                yield QidoInstance(
                    study_uid(s),
                    series_uid(s, k),
                    sop_uid(s, k, j),
                    patient_id(p),
                    patient_name(p),
                    study_date(sizes, s),
                    accession(s),
                    MODALITIES[(s + k) % len(MODALITIES)],
                    k + 1,
                    j + 1,
                    site,
                )


def _template_dataset() -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SC_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = _P_SOP
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    ds.file_meta.ImplementationClassUID = f"{QROOT}.1"
    ds.file_meta.ImplementationVersionName = "DWBENCH1"
    ds.SOPClassUID = SC_STORAGE
    ds.SOPInstanceUID = _P_SOP
    ds.StudyInstanceUID = _P_STUDY
    ds.SeriesInstanceUID = _P_SERIES
    ds.PatientID = _P_PATIENT_ID
    ds.PatientName = _P_NAME
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    # Study attributes without an index column (issue 15: QIDO on any attribute).
    ds.PatientAge = "045Y"
    ds.PatientWeight = "70.5"
    ds.StudyDate = _P_DATE
    ds.StudyTime = "101500"
    ds.AccessionNumber = _P_ACCESSION
    ds.StudyID = "1"
    ds.StudyDescription = "Bench worklist study"
    ds.ReferringPhysicianName = "Bench^Referrer"
    ds.Modality = _P_MODALITY
    ds.SeriesNumber = "99"
    ds.SeriesDescription = "Bench series"
    ds.InstanceNumber = "9999"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = 8
    ds.Columns = 8
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = np.arange(64, dtype=np.uint16).tobytes()
    return ds


class QidoTemplate:
    """The template's Part 10 bytes and record, and both varied per instance."""

    def __init__(self) -> None:
        buffer = io.BytesIO()
        _template_dataset().save_as(buffer, enforce_file_format=True)
        self.part10 = buffer.getvalue()
        for placeholder, _ in QidoInstance("", "", "", "", "", "", "", "", 0, 0).substitutions():
            if self.part10.count(placeholder.encode()) < 1:
                raise AssertionError(f"placeholder {placeholder} missing from the template")
        for tag_header, value, _ in (_IS_INSTANCE, _IS_SERIES):
            if self.part10.count(tag_header + value) != 1:
                raise AssertionError("an IS placeholder is not where the template expects it")
        self.record = parse_part10(io.BytesIO(self.part10), len(self.part10), ParseLimits())

    def part10_for(self, item: QidoInstance) -> bytes:
        """The template file with this instance's values (same length)."""
        data = self.part10
        for placeholder, value in item.substitutions():
            data = data.replace(placeholder.encode(), value.encode())
        data = data.replace(
            _IS_INSTANCE[0] + _IS_INSTANCE[1], _IS_INSTANCE[0] + b"%04d" % item.instance_number
        )
        data = data.replace(
            _IS_SERIES[0] + _IS_SERIES[1], _IS_SERIES[0] + b"%02d" % item.series_number
        )
        if len(data) != len(self.part10):
            raise AssertionError("a substitution changed the template's length")
        return data

    def record_for(self, item: QidoInstance) -> InstanceRecord:
        """What parse_part10 makes of `part10_for(item)`, without parsing."""
        pairs = [(a.encode(), b.encode()) for a, b in item.substitutions()]
        pairs.append(
            (_IS_INSTANCE[2], _IS_INSTANCE[2].replace(b"9999", b"%d" % item.instance_number))
        )
        pairs.append((_IS_SERIES[2], _IS_SERIES[2].replace(b"99", b"%d" % item.series_number)))

        def text(value: Any) -> Any:
            if not isinstance(value, str):
                return value
            for a, b in item.substitutions():
                value = value.replace(a, b)
            return value

        def blob(data: bytes) -> bytes:
            for a, b in pairs:
                data = data.replace(a, b)
            return data

        def attributes(model: dict[str, object]) -> dict[str, object]:
            varied: dict[str, object] = orjson.loads(blob(orjson.dumps(model)))
            return varied

        record = self.record
        return replace(
            record,
            study_instance_uid=item.study,
            series_instance_uid=item.series,
            sop_instance_uid=item.sop,
            study_columns={k: text(v) for k, v in record.study_columns.items()},
            series_columns={
                **{k: text(v) for k, v in record.series_columns.items()},
                "series_number": item.series_number,
            },
            instance_columns={
                **{k: text(v) for k, v in record.instance_columns.items()},
                "instance_number": item.instance_number,
            },
            study_attributes=attributes(record.study_attributes),
            series_attributes=attributes(record.series_attributes),
            instance_attributes=attributes(record.instance_attributes),
            metadata=blob(record.metadata),
            bulk=tuple(BulkSpan(text(b.path), b.offset, b.length) for b in record.bulk),
        )


def checked_template() -> QidoTemplate:
    """The template, its record templating checked against the parser on a sample."""
    template = QidoTemplate()
    check_templating(template, list(iter_instances(QidoSizes(studies=3, instances_per_series=2))))
    return template


def new_instance(template: QidoTemplate, item: QidoInstance) -> NewInstance:
    """What the index is handed for `item`: its record, and a key, size and digest of its own
    (the key names no object: the corpus is for QIDO only)."""
    return NewInstance(
        record=template.record_for(item),
        blob_key=f"{item.site}/bench-qido/{item.sop}.dcm",
        size=len(template.part10),
        digest=hashlib.sha256(item.sop.encode()).hexdigest(),
    )


def check_templating(template: QidoTemplate, items: list[QidoInstance]) -> None:
    """Raise unless the varied record equals parse_part10 of the varied file, for each item."""
    for item in items:
        data = template.part10_for(item)
        parsed = parse_part10(io.BytesIO(data), len(data), ParseLimits())
        if parsed != template.record_for(item):
            raise AssertionError(f"templated record differs from the parsed one for {item.sop}")


async def add_corpus_sites(catalog: SiteCatalog, sizes: QidoSizes) -> list[str]:
    """Add the corpus's sites to the catalogue (the ones missing), as `sites add` does;
    return the names added."""
    from dicomweb_server.services.sites import SiteService

    service = SiteService(catalog, DEFAULT_SITE)
    known = {site.name for site in await service.list_sites()}
    added = []
    for name in corpus_sites(sizes):
        if name not in known:
            await service.add_site(name, "bench QIDO corpus")
            added.append(name)
    return added


async def load_index(
    index: InstanceIndex,
    sizes: QidoSizes,
    *,
    concurrency: int = 16,
    first_study: int = 0,
    limit: int | None = None,
    progress: Any = None,
    batch: int = 50,
) -> int:
    """Index every corpus instance (from `first_study`) as STOW-RS does, `batch` instances of
    one site per transaction (`dicomweb_server.index.batch.add_instances`); return how many
    were created. The sites must exist (`add_corpus_sites`)."""
    template = checked_template()
    queue: asyncio.Queue[tuple[str, list[QidoInstance]] | None]
    queue = asyncio.Queue(maxsize=concurrency * 2)
    created = 0

    async def worker() -> None:
        nonlocal created
        while (work := await queue.get()) is not None:
            site, items = work
            outcomes = await add_instances(index, site, [new_instance(template, i) for i in items])
            created += sum(1 for outcome in outcomes if outcome is AddOutcome.CREATED)

    workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
    count = 0
    pending: dict[str, list[QidoInstance]] = {}
    try:
        for item in iter_instances(sizes, first_study):
            if limit is not None and count >= limit:
                break
            items = pending.setdefault(item.site, [])
            items.append(item)
            count += 1
            if len(items) >= batch:
                await queue.put((item.site, pending.pop(item.site)))
            if progress is not None and count % 50_000 == 0:
                progress(count)
        for site, items in pending.items():
            await queue.put((site, items))
        for _ in workers:
            await queue.put(None)
        await asyncio.gather(*workers)
    finally:
        for task in workers:
            task.cancel()
    return created
