"""Issue 19: `verify` finds missing and corrupt objects; `reindex` rebuilds a lost index from
the objects alone, so that QIDO answers the same (both backend pairs)."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import services
from cli_helpers import analyze_counts, app_client, run_cli, stow, use_settings
from dicomfiles import ct_dataset, multipart_body, to_part10, uid
from test_issue18_rejection import _kos

from dicomweb_server.app import open_backends
from dicomweb_server.config import Settings

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom.*")

QUERIES = (
    "/studies",
    "/studies?PatientID=PAT-R1",
    "/studies?StudyDate=20240101-20240131&includefield=all",
    "/series?Modality=CT",
    "/instances?includefield=all",
)


def _files() -> list[bytes]:
    out = []
    for patient, date, series_count in (("PAT-R1", "20240105", 2), ("PAT-R2", "20240301", 1)):
        study = uid()
        for _ in range(series_count):
            series = uid()
            for number in (1, 2):
                ds = ct_dataset(study, series, patient_id=patient, study_date=date, seed=number)
                ds.InstanceNumber = number
                out.append(to_part10(ds))
    return out


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _blob_keys(settings: Settings) -> list[str]:
    backends = await open_backends(settings)
    try:
        return sorted([key async for key in backends.index.iter_blob_keys()])
    finally:
        await backends.close()


def _canonical(answer: httpx.Response) -> list[str]:
    """A QIDO or metadata answer as sorted JSON texts (a rebuilt index may list in another
    order: results come in insertion order, and reindex inserts in key order)."""
    if answer.status_code == 204:
        return []
    assert answer.status_code == 200, answer.text
    rows: list[Any] = answer.json()
    return sorted(json.dumps(row, sort_keys=True) for row in rows)


def _lose_index(settings: Settings, backend: str, request: pytest.FixtureRequest) -> Settings:
    """The settings of an empty index in place of `settings`' (the disaster)."""
    if backend == "embedded":  # the index file is lost
        for path in settings.data_dir.glob("index.sqlite*"):
            path.unlink()
        return settings
    # an empty database in place of the lost one
    server = request.getfixturevalue("postgres_url")
    database = services.create_database(server)
    request.addfinalizer(lambda: services.drop_database(server, database))
    return settings.replace(database_url=database)


async def _answers(client: httpx.AsyncClient, studies: list[str]) -> dict[str, list[str]]:
    paths = [*QUERIES, *(f"/studies/{study}/metadata" for study in studies)]
    return {path: _canonical(await client.get(path)) for path in paths}


async def test_issue19_verify_lists_missing_and_corrupt_objects(
    settings: Settings,
    client: httpx.AsyncClient,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    use_settings(settings, monkeypatch)
    await stow(client, _files())

    clean = await run_cli(capsys, "verify", "--jobs", "3")
    assert clean.code == 0, clean
    assert "checked 6 objects" in clean.out and "0 missing, 0 corrupt" in clean.out

    keys = await _blob_keys(settings)
    backends = await open_backends(settings)
    try:
        await backends.blobs.put(keys[0], _chunks(b"\0" * 128 + b"DICM tampered with"))
        await backends.blobs.delete(keys[1])
    finally:
        await backends.close()

    found = await run_cli(capsys, "verify")
    assert found.code == 1
    assert f"corrupt {keys[0]}: " in found.out and f"missing {keys[1]}: " in found.out
    assert "checked 6 objects" in found.out and "1 missing, 1 corrupt" in found.out
    unknown = await run_cli(capsys, "verify", "--site", "elsewhere")
    assert unknown.code == 2 and "unknown site 'elsewhere'" in unknown.err
    assert "checked" not in unknown.out  # not "checked 0 objects", a clean bill of health


async def test_issue19_reindex_rebuilds_the_same_qido_answers_from_the_objects(
    settings: Settings,
    backend: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    files = _files()
    async with app_client(settings) as client:
        await stow(client, files)
        studies = [row["0020000D"]["Value"][0] for row in (await client.get("/studies")).json()]
        thumbnail = await client.get(f"/studies/{studies[0]}/thumbnail")
        assert thumbnail.status_code == 200  # derived data under {site}/cache/, skipped later
        before = await _answers(client, studies)
    backends = await open_backends(settings)
    try:  # an object that is not an instance, under an instance key: reported, left alone
        garbage = f"default/{uid()}/{uid()}/{uid()}/{'ab' * 16}.dcm"
        await backends.blobs.put(garbage, _chunks(b"not DICOM at all"))
    finally:
        await backends.close()

    rebuilt = _lose_index(settings, backend, request)
    use_settings(rebuilt, monkeypatch)

    ran = await run_cli(capsys, "reindex", "--jobs", "2")

    assert ran.code == 1  # the garbage object
    assert f"unreadable {garbage}: " in ran.out
    assert "6 indexed, 0 already indexed, 0 conflicts, 1 unreadable" in ran.out
    assert "0 other objects" not in ran.out  # the thumbnail was skipped, not parsed
    async with app_client(rebuilt) as client:
        assert await _answers(client, studies) == before
    if rebuilt.database_url:  # the rebuilt index's statistics are fresh (as after an import)
        assert await analyze_counts(rebuilt.database_url) == dict.fromkeys(
            ("studies", "series", "instances"), 1
        )
    again = await run_cli(capsys, "reindex", "--site", "default")
    assert "0 indexed, 6 already indexed" in again.out
    assert garbage in await _all_objects(rebuilt)  # nothing in the store was touched


async def _all_objects(settings: Settings) -> list[str]:
    backends = await open_backends(settings)
    try:
        return [info.key async for info in backends.blobs.iter_objects()]
    finally:
        await backends.close()


async def test_issue19_reindex_never_brings_back_a_deleted_instance_awaiting_purge(
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with app_client(settings) as client:
        await stow(client, _files())
        row = (await client.get("/series?PatientID=PAT-R2")).json()[0]
        study, series = row["0020000D"]["Value"][0], row["0020000E"]["Value"][0]
        deleted = await client.delete(f"/studies/{study}/series/{series}")
        assert deleted.status_code == 204, deleted.text
    use_settings(settings, monkeypatch)

    ran = await run_cli(capsys, "reindex")

    assert ran.code == 0, ran
    assert "0 indexed, 4 already indexed" in ran.out and "2 in the trash left out" in ran.out
    async with app_client(settings) as client:
        assert _canonical(await client.get("/series?PatientID=PAT-R2")) == []
        assert _canonical(await client.get(f"/studies/{study}/series/{series}/instances")) == []
        assert len(_canonical(await client.get("/instances"))) == 4


async def test_reindex_applies_the_rejection_notes_among_the_objects_and_says_what_it_cannot_rebuild(
    settings: Settings,
    backend: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    """A lost index rebuilt: what a stored rejection note rejected stays hidden (and
    restorable), the note stays; a legal hold and a plain DELETE are not in the objects, and
    the summary says so."""
    files = _files()
    rejected_study = _study_of(files[0])
    rejected_series, rejected_sop = _series_of(files[0]), _sop_of(files[0])
    note = _kos(rejected_study, [(rejected_series, rejected_sop)])
    async with app_client(settings) as client:
        await stow(client, files)
        await stow(client, [note])
        before = await _answers(client, [rejected_study])
        assert rejected_sop not in await _sops(client)
    rebuilt = _lose_index(settings, backend, request)
    use_settings(rebuilt, monkeypatch)

    ran = await run_cli(capsys, "reindex")

    assert ran.code == 0, ran
    assert "7 indexed" in ran.out and "1 rejection notes applied" in ran.out
    assert "legal holds" in ran.out and "audit trail" in ran.out and "redo them" in ran.out
    async with app_client(rebuilt) as client:
        assert await _answers(client, [rejected_study]) == before
        assert rejected_sop not in await _sops(client)
    audited = await run_cli(capsys, "audit", "--user", "cli:reindex")
    (rejection,) = audited.out.splitlines()[1:]  # the rejection, by the operator's command
    assert "reject" in rejection and rejected_study in rejection
    again = await run_cli(capsys, "reindex")  # the note is indexed: not applied twice
    assert again.code == 0, again
    assert "0 indexed, 6 already indexed" in again.out and "0 rejection notes applied" in again.out
    assert "1 in the trash left out" in again.out and "redo them" not in again.out
    restored = await run_cli(capsys, "restore", "--study", rejected_study)
    assert restored.code == 0 and "restored 1 instance(s)" in restored.out


async def test_reindex_of_a_site_the_registry_lost_says_to_add_it_first(
    settings: Settings,
    backend: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    use_settings(settings, monkeypatch)
    assert (await run_cli(capsys, "sites", "add", "ward")).code == 0
    async with app_client(settings) as client:
        body, content_type = multipart_body(_files()[:2])
        stored = await client.post(
            "/sites/ward/studies", content=body, headers={"Content-Type": content_type}
        )
        assert stored.status_code == 200, stored.text
    rebuilt = _lose_index(settings, backend, request)
    use_settings(rebuilt, monkeypatch)

    unknown = await run_cli(capsys, "reindex", "--site", "ward")
    assert unknown.code == 2
    assert "unknown site 'ward'" in unknown.err and "sites add" in unknown.err
    every = await run_cli(capsys, "reindex")
    assert every.code == 1, every
    assert "0 indexed" in every.out
    assert "2 objects of site 'ward' left out" in every.out

    assert (await run_cli(capsys, "sites", "add", "ward")).code == 0
    added = await run_cli(capsys, "reindex", "--site", "ward")
    assert added.code == 0, added
    assert "2 indexed" in added.out


async def _sops(client: httpx.AsyncClient) -> list[str]:
    return [row["00080018"]["Value"][0] for row in (await client.get("/instances")).json()]


def _dataset_of(data: bytes) -> Any:
    from pydicom import dcmread

    return dcmread(io.BytesIO(data), stop_before_pixels=True)


def _study_of(data: bytes) -> str:
    return str(_dataset_of(data).StudyInstanceUID)


def _series_of(data: bytes) -> str:
    return str(_dataset_of(data).SeriesInstanceUID)


def _sop_of(data: bytes) -> str:
    return str(_dataset_of(data).SOPInstanceUID)
