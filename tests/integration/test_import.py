"""Issue 19: `dicomweb-server import` stores folders, archives, DICOMDIR sets and another
server's studies through the STOW pipeline, resumes after an interruption, and refuses bombs."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cli_helpers import (
    analyze_counts,
    app_client,
    count,
    no_space,
    run_cli,
    tiny_disk,
    use_settings,
)
from dicomfiles import PREFIX, ct_dataset, multipart_body, to_part10, uid
from live import serving
from pydicom.fileset import FileSet
from starlette.applications import Starlette
from test_issue18_rejection import _kos

from dicomweb_server.cli.backends import refresh_statistics
from dicomweb_server.config import Settings
from dicomweb_server.domain.audit import AuditQuery, AuditStudy
from dicomweb_server.index.postgres import PostgresInstanceIndex, migrate
from dicomweb_server.services.import_journal import ImportJournal
from dicomweb_server.services.importer import Outcome
from dicomweb_server.services.pull import DicomwebSource

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom.*")


def _series(count_: int, *, study: str | None = None, patient: str = "PAT-1", rows: int = 8):
    study = study or uid()
    series = uid()
    datasets = (
        ct_dataset(study, series, rows=rows, columns=rows, patient_id=patient, instance_number=n)
        for n in range(1, count_ + 1)
    )
    return [to_part10(ds) for ds in datasets]


def _files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file())


def _zip(path: Path, members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> None:
    with zipfile.ZipFile(path, "w", compression=method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def _tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


async def _instances(client: httpx.AsyncClient) -> int:
    response = await client.get("/instances", params={"limit": "10000"})
    return 0 if response.status_code == 204 else len(response.json())


async def test_issue19_import_stores_folders_and_archives_as_stow_would(
    settings: Settings,
    client: httpx.AsyncClient,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    use_settings(settings, monkeypatch)
    first = _series(3)
    second = _series(2, patient="PAT-2")
    conflicting = ct_dataset(sop=_sop(first[0]), seed=99)
    source = tmp_path / "in"
    (source / "nested" / "deeper").mkdir(parents=True)
    (source / "a-first.dcm").write_bytes(first[0])
    (source / "b-identical-copy").write_bytes(first[0])
    (source / "c-conflict.dcm").write_bytes(to_part10(conflicting))
    (source / "d-notes.txt").write_text("not an image")
    (source / "e-truncated.dcm").write_bytes(first[1][: len(first[1]) // 2])
    (source / "nested" / "deeper" / "IM000001").write_bytes(first[1])
    _zip(source / "f-batch.zip", {"one/IMG": first[2], "readme.txt": b"hello"})
    _tar(source / "g-more.tar.gz", {"x/1": second[0], "x/2": second[1]})
    report = tmp_path / "report.jsonl"

    # One pipeline, so that the first of the files sharing a SOP Instance UID is the one kept.
    ran = await run_cli(capsys, "import", source, "--report", report, "--jobs", "1")

    assert ran.code == 1, ran  # a conflict and a truncated file are failures
    assert [count(ran.out, label) for label in ("stored", "identical", "conflicts")] == [5, 1, 1]
    assert [count(ran.out, label) for label in ("not DICOM", "failed", "skipped")] == [2, 1, 0]
    entries = [json.loads(line) for line in report.read_text().splitlines()]
    outcomes = sorted((Path(e["path"]).name, e["outcome"]) for e in entries)
    assert outcomes == [
        ("c-conflict.dcm", "conflict"),
        ("d-notes.txt", "not-dicom"),
        ("e-truncated.dcm", "failed"),
        ("f-batch.zip!readme.txt", "not-dicom"),
    ]
    assert all(entry["reason"] for entry in entries)
    assert await _instances(client) == 5
    stored = (await client.get(f"/studies/{_study(first[0])}/instances")).json()
    assert len(stored) == 3

    again = await run_cli(capsys, "import", source)  # a finished import runs again in full
    assert [count(again.out, label) for label in ("stored", "identical", "skipped")] == [0, 6, 0]
    assert await _instances(client) == 5


async def test_issue19_import_applies_a_rejection_note_as_stow_would(
    settings: Settings,
    app: Starlette,
    client: httpx.AsyncClient,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A folder holding a rejection note: the note is stored and hides what it names, which
    stays restorable, as after a STOW of it by a caller with every grant; a re-run changes
    nothing and reports the rejected file as rejected, not as a failure."""
    use_settings(settings, monkeypatch)
    study, series, kept, rejected = uid(), uid(), uid(), uid()
    source = tmp_path / "in"
    source.mkdir()
    (source / "a-kept.dcm").write_bytes(to_part10(ct_dataset(study, series, kept)))
    second = ct_dataset(study, series, rejected, instance_number=2)
    (source / "b-rejected.dcm").write_bytes(to_part10(second))
    (source / "c-note.dcm").write_bytes(_kos(study, [(series, rejected)]))
    report = tmp_path / "report.jsonl"

    # One pipeline, so that the instance is stored (then trashed) before its note comes.
    ran = await run_cli(capsys, "import", source, "--jobs", "1", "--report", report)

    assert ran.code == 0, ran
    labels = ("stored", "identical", "rejected", "failed")
    assert [count(ran.out, label) for label in labels] == [3, 0, 0, 0]
    listed = await client.get(f"/studies/{study}/series/{series}/instances")
    assert [i["00080018"]["Value"][0] for i in listed.json()] == [kept]
    found = (await client.get("/studies", params={"StudyInstanceUID": study})).json()
    assert found[0]["00080061"]["Value"] == ["CT", "KO"]  # the note stays, as over STOW
    audited = await app.state.dicomweb.audit.search(AuditQuery(user="cli:import"))
    (rejection,) = [r for r in audited.records if r.action == "reject"]  # by the operator
    assert (rejection.action, rejection.kind) == ("reject", "system")
    assert rejection.studies == (AuditStudy(study, "default", "PAT-1", None),)

    again = await run_cli(capsys, "import", source, "--jobs", "1", "--report", report)
    assert again.code == 0, again
    assert [count(again.out, label) for label in labels] == [0, 2, 1, 0]
    (entry,) = [json.loads(line) for line in report.read_text().splitlines()]
    assert (Path(entry["path"]).name, entry["outcome"]) == ("b-rejected.dcm", "rejected")
    assert "was rejected (113001^DCM)" in entry["reason"]

    assert await app.state.dicomweb.delete.restore("default", study) == 1
    listed = await client.get(f"/studies/{study}/series/{series}/instances")
    assert sorted(i["00080018"]["Value"][0] for i in listed.json()) == sorted([kept, rejected])


def _sop(data: bytes) -> str:
    from pydicom import dcmread

    return str(dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)


def _study(data: bytes) -> str:
    from pydicom import dcmread

    return str(dcmread(io.BytesIO(data), stop_before_pixels=True).StudyInstanceUID)


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
async def test_issue19_import_dicomdir_imports_the_files_it_references(
    settings: Settings,
    client: httpx.AsyncClient,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    use_settings(settings, monkeypatch)
    media = tmp_path / "media"
    file_set = FileSet()
    from pydicom import dcmread

    for data in _series(3):
        ds = dcmread(io.BytesIO(data))
        ds.StudyID = "1"
        file_set.add(ds)
    file_set.write(media)
    file_set._stage["t"].cleanup()  # its staging TemporaryDirectory, else a ResourceWarning
    referenced = [p for p in _files(media) if p.name != "DICOMDIR"]
    referenced[-1].unlink()  # referenced, but missing
    (media / "PT000000").rename(media / "pt000000")  # media mounted lower-case
    (media / "EXTRA").write_bytes(_series(1)[0])  # next to it, not referenced

    ran = await run_cli(capsys, "import", media / "DICOMDIR")

    assert [count(ran.out, label) for label in ("stored", "failed", "DICOMDIRs read")] == [2, 1, 1]
    assert await _instances(client) == 2
    walked = await run_cli(capsys, "import", media)  # walking the folder imports EXTRA too
    assert [count(walked.out, label) for label in ("stored", "identical", "failed")] == [1, 2, 1]
    assert await _instances(client) == 3
    archive = tmp_path / "media.zip"  # the same set in a zip: its DICOMDIR is checked too
    _zip(archive, {p.relative_to(media).as_posix(): p.read_bytes() for p in _files(media)})
    zipped = await run_cli(capsys, "import", archive)
    assert [count(zipped.out, label) for label in ("identical", "failed", "DICOMDIRs")] == [3, 1, 1]


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
async def test_issue19_import_refuses_zip_bombs_by_declared_and_counted_size(
    settings: Settings,
    client: httpx.AsyncClient,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    use_settings(settings, monkeypatch)
    monkeypatch.setenv("DICOMWEB_IMPORT_MAX_MEMBER_BYTES", "200000")
    monkeypatch.setenv("DICOMWEB_IMPORT_MAX_ARCHIVE_BYTES", "1000000")
    good, late = _series(2)
    zeros = bytes(190_000)
    source = tmp_path / "in"
    source.mkdir()
    _zip(source / "1-member.zip", {"big.bin": bytes(300_000), "ok.dcm": good})
    _zip(source / "2-archive.zip", {f"z{n}": zeros for n in range(6)})
    _tar(source / "3-stream.tar.gz", {**{f"z{n}": zeros for n in range(6)}, "late.dcm": late})
    _zip(source / "4-liar.zip", {"lie.dcm": late}, zipfile.ZIP_STORED)
    _shrink_declared_size(source / "4-liar.zip", len(late), 200)
    report = tmp_path / "report.jsonl"

    ran = await run_cli(capsys, "import", source, "--report", report)

    assert ran.code == 1
    assert count(ran.out, "stored") == 1  # only ok.dcm: the rest is past a limit or corrupt
    entries = map(json.loads, report.read_text().splitlines())
    reasons = {Path(e["path"]).name: e["reason"] for e in entries}
    assert "DICOMWEB_IMPORT_MAX_MEMBER_BYTES" in reasons["1-member.zip!big.bin"]
    assert "DICOMWEB_IMPORT_MAX_ARCHIVE_BYTES" in reasons["2-archive.zip"]
    assert "nothing read" in reasons["2-archive.zip"]
    assert "DICOMWEB_IMPORT_MAX_ARCHIVE_BYTES" in reasons["3-stream.tar.gz!z5"]
    assert "3-stream.tar.gz!late.dcm" not in reasons  # never reached, never read
    assert "CRC" in reasons["4-liar.zip!lie.dcm"] or "Bad" in reasons["4-liar.zip!lie.dcm"]
    assert await _instances(client) == 1


def _shrink_declared_size(path: Path, actual: int, declared: int) -> None:
    """Make a stored member declare fewer expanded bytes than it holds (local + central)."""
    data = bytearray(path.read_bytes())
    local = data.index(b"PK\x03\x04")
    struct.pack_into("<I", data, local + 22, declared)
    central = data.index(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, declared)
    path.write_bytes(bytes(data))
    assert actual != declared


def _many_files(folder: Path, number: int) -> None:
    folder.mkdir()
    study, series = uid(), uid()
    template = to_part10(ct_dataset(study, series, sop=f"{PREFIX}9.{10**9}", rows=4, columns=4))
    marker = f"{PREFIX}9.{10**9}".encode()
    for n in range(number):
        sop = f"{PREFIX}9.{10**9 + n}".encode()
        (folder / f"{n:05d}.dcm").write_bytes(template.replace(marker, sop))


def _journal_rows(data_dir: Path) -> int:
    total = 0
    for path in data_dir.glob(".import-journal-*.sqlite"):
        with sqlite3.connect(path) as conn:
            total += conn.execute("SELECT count(*) FROM done").fetchone()[0]
    return total


def _stored_instances(settings: Settings) -> int:
    async def run() -> int:
        async with app_client(settings) as local:
            return await _instances(local)

    return asyncio.run(run())


def test_issue19_import_stops_on_ctrl_c_and_resumes_after_a_kill(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    number = 2000
    source = tmp_path / "many"
    _many_files(source, number)
    command = [
        sys.executable, "-m", "dicomweb_server", "import", str(source),
        "--data-dir", str(settings.data_dir), "--progress-every", "0.05", "--jobs", "2",
    ]  # fmt: skip

    interrupted = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert interrupted.stderr is not None
    line = interrupted.stderr.readline()
    while line and not line.startswith("import:"):  # the first progress line: it is running
        line = interrupted.stderr.readline()
    assert line.startswith("import:"), line
    interrupted.send_signal(signal.SIGINT)
    out, err = interrupted.communicate(timeout=60)
    assert interrupted.returncode == 130, out + err
    assert "stopping after the work in flight" in err
    assert "interrupted after" in out and "run the same command again to resume" in out
    first = _journal_rows(settings.data_dir)
    assert 0 < first < number
    assert _stored_instances(settings) == count(out, "stored")  # nothing half-indexed

    killed = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while _journal_rows(settings.data_dir) <= first and killed.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    if killed.poll() is not None:  # it finished before a commit could be seen: no kill to test
        assert killed.returncode == 0 and _stored_instances(settings) == number
        return
    killed.kill()
    killed.wait()
    done_before = _journal_rows(settings.data_dir)

    finished = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    skipped = count(finished.stdout, "skipped")
    assert skipped == done_before > first
    total = sum(count(finished.stdout, label) for label in ("stored", "identical"))
    assert skipped + total == number
    assert _stored_instances(settings) == number
    assert _journal_rows(settings.data_dir) == 0  # a complete run leaves no journal


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
async def test_issue19_import_from_another_dicomweb_server(
    settings: Settings,
    client: httpx.AsyncClient,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    use_settings(settings, monkeypatch)
    remote = Settings(data_dir=tmp_path / "remote", port=_free_port())
    wanted = [_series(2, patient="PAT-A"), _series(3, patient="PAT-A")]
    other = _series(1, patient="PAT-B")
    with serving(remote):
        async with httpx.AsyncClient(base_url=remote.root_url) as http:
            for files in [*wanted, other]:
                body, content_type = multipart_body(files)
                reply = await http.post(
                    "/studies", content=body, headers={"Content-Type": content_type}
                )
                assert reply.status_code == 200

        async with DicomwebSource(remote.root_url, _no_parts, page_size=1) as source:
            assert len(await source.list_studies([])) == 3  # paged one study at a time

        pulled = await run_cli(
            capsys, "import", "--from", remote.root_url, "--query", "PatientID=PAT-A",
            "--header", "X-Test: yes",
        )  # fmt: skip
        assert pulled.code == 0, pulled
        assert [count(pulled.out, label) for label in ("studies", "stored")] == [2, 5]
        assert await _instances(client) == 5
        again = await run_cli(
            capsys, "import", "--from", remote.root_url, "--query", "PatientID=PAT-A"
        )
        assert [count(again.out, label) for label in ("stored", "identical")] == [0, 5]

    unreachable = f"http://127.0.0.1:{_free_port()}/dicomweb"
    failed = await run_cli(capsys, "import", "--from", unreachable)
    assert failed.code == 1
    assert f"cannot reach {unreachable}" in failed.err
    assert len(failed.err.strip().splitlines()) == 1  # one clear line, no traceback


@contextlib.asynccontextmanager
async def _slow_link(port: int) -> AsyncIterator[int]:
    """A TCP relay to `port` on a port of its own, handing answers on in 4 KiB pieces 2 ms
    apart, as a slow network would."""
    tasks: set[asyncio.Task[None]] = set()

    async def relay(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pause: float
    ) -> None:
        try:
            while data := await reader.read(4096):
                writer.write(data)
                await writer.drain()
                await asyncio.sleep(pause)
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", port)
        both = asyncio.gather(
            relay(reader, upstream_writer, 0), relay(upstream_reader, writer, 0.002)
        )
        tasks.add(both)  # type: ignore[arg-type]
        await both

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
async def test_issue19_import_from_reads_a_search_page_that_arrives_in_pieces(
    settings: Settings,
    client: httpx.AsyncClient,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A QIDO page is read to its end: one read took what had arrived so far, so over a slow
    link a page of more than a few studies was 'not DICOM JSON' and the import stopped."""
    use_settings(settings, monkeypatch)
    # uncompressed JSON, as Orthanc answers by default (gzip made the page one small piece)
    remote = Settings(data_dir=tmp_path / "remote", port=_free_port(), compress_json=False)
    files = [to_part10(ct_dataset(patient_id="PAT-SLOW", rows=2, columns=2)) for _ in range(40)]
    with serving(remote):
        async with httpx.AsyncClient(base_url=remote.root_url) as http:
            body, content_type = multipart_body(files)
            reply = await http.post(
                "/studies", content=body, headers={"Content-Type": content_type}
            )
            assert reply.status_code == 200
        async with _slow_link(remote.port) as port:
            root = f"http://127.0.0.1:{port}/dicomweb"
            pulled = await run_cli(
                capsys, "import", "--from", root, "--query", "PatientID=PAT-SLOW"
            )
    assert pulled.code == 0, pulled
    assert [count(pulled.out, label) for label in ("studies", "stored")] == [40, 40]
    assert await _instances(client) == 40


async def test_issue19_import_from_refuses_a_key_that_is_no_attribute(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Orthanc ignores a key it does not know: a misspelt key would pull every study."""
    monkeypatch.setenv("DICOMWEB_DATA_DIR", str(tmp_path / "data"))
    nowhere = f"http://127.0.0.1:{_free_port()}/dicomweb"  # refused before any request
    for key, reason in [
        ("PatientIdentifier=1", "unknown attribute 'PatientIdentifier'"),
        ("ReferencedStudySequence.Nonsense=1", "unknown attribute 'Nonsense'"),
        ("limit=5", "limit is set by the import"),
    ]:
        refused = await run_cli(capsys, "import", "--from", nowhere, "--query", key)
        assert refused.code == 2, refused
        assert reason in refused.err and "cannot reach" not in refused.err
    for key in ("00100020=1", "StudyDate=2024-", "fuzzymatching=true", "ModalitiesInStudy=CT"):
        reached = await run_cli(capsys, "import", "--from", nowhere, "--query", key)
        assert reached.code == 1 and "cannot reach" in reached.err, reached


def _no_parts(chunks, content_type):  # type: ignore[no-untyped-def]
    raise AssertionError("not called when only listing")


async def test_issue19_import_on_a_full_disk_stops_and_changes_nothing_stored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with tiny_disk(tmp_path, "1m") as tiny:
        objects = tiny or tmp_path / "objects"
        settings = Settings(
            data_dir=tmp_path / "data",
            database_url=f"sqlite://{tmp_path / 'index.sqlite'}",
            storage_url=f"file://{objects}",
        )
        use_settings(settings, monkeypatch)
        if tiny is None:  # not root: a write that fails the way a full disk does
            from dicomweb_server.storage import filesystem

            calls = iter(range(1000))

            def full(*args: object) -> None:
                if next(calls) >= 5:
                    raise no_space()
                real(*args)  # type: ignore[arg-type]

            real = filesystem._finish
            monkeypatch.setattr(filesystem, "_finish", full)
        source = tmp_path / "in"
        source.mkdir()
        for n, data in enumerate(_series(24, rows=180)):  # 65 KB each, 1.5 MB in all
            (source / f"{n:03d}.dcm").write_bytes(data)

        ran = await run_cli(capsys, "import", source)

        assert ran.code == 1
        assert "No space left on device" in ran.err
        assert "stopped:" in ran.err and "Traceback" not in ran.err
        stored = count(ran.out, "stored")
        async with app_client(settings) as local:
            assert await _instances(local) == stored < 24
            for row in (await local.get("/instances")).json() if stored else []:
                study, series, sop = (
                    row[t]["Value"][0] for t in ("0020000D", "0020000E", "00080018")
                )
                retrieved = await local.get(f"/studies/{study}/series/{series}/instances/{sop}")
                assert retrieved.status_code == 200  # every visible instance has its object
        assert os.listdir(objects / ".tmp") == []  # no partial object left behind


@pytest.mark.parametrize("backend", ["production"], indirect=True)
async def test_issue19_import_leaves_postgresql_statistics_fresh(
    settings: Settings,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bulk load outruns autovacuum: searches right after it planned as if the tables were
    empty (a page of studies sorted on disk, BENCHMARKS.md), so the import runs ANALYZE."""
    use_settings(settings, monkeypatch)
    assert settings.database_url
    source = tmp_path / "in"
    source.mkdir()
    for number, data in enumerate(_series(2)):
        (source / f"{number}.dcm").write_bytes(data)
    await migrate(settings.database_url)
    unanalyzed = {"studies": 0, "series": 0, "instances": 0}
    assert await analyze_counts(settings.database_url) == unanalyzed

    nothing = await run_cli(capsys, "import", tmp_path / "empty-folder-that-is-missing")
    assert nothing.code != 0
    assert await analyze_counts(settings.database_url) == unanalyzed  # nothing stored: no ANALYZE

    ran = await run_cli(capsys, "import", source)
    assert ran.code == 0, ran
    assert count(ran.out, "stored") == 2
    assert await analyze_counts(settings.database_url) == dict.fromkeys(unanalyzed, 1)

    # Two more instances are not enough to move the statistics of what is there (autovacuum's
    # bar: 50 rows plus a tenth of the table), so the next import does not sample again.
    more = tmp_path / "more"
    more.mkdir()
    for number, data in enumerate(_series(2, patient="PAT-2")):
        (more / f"{number}.dcm").write_bytes(data)
    again = await run_cli(capsys, "import", more)
    assert count(again.out, "stored") == 2
    assert await analyze_counts(settings.database_url) == dict.fromkeys(unanalyzed, 1)


async def test_issue19_statistics_that_cannot_be_refreshed_are_reported(
    pg_database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    index = await PostgresInstanceIndex.open(pg_database_url)
    await index.close()
    await refresh_statistics("import", index, 1)
    assert "dicomweb-server import: could not refresh the index's statistics: " in (
        capsys.readouterr().err
    )


async def test_import_into_a_site_nobody_added_is_refused_before_anything_is_read(
    settings: Settings,
    client: httpx.AsyncClient,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It stored out of every request's reach (a 404 at the site's root), exit 0, and the
    data surfaced whenever someone later added a site of that name."""
    use_settings(settings, monkeypatch)
    source = tmp_path / "in"
    source.mkdir()
    (source / "1.dcm").write_bytes(_series(1)[0])
    report = tmp_path / "report.jsonl"
    report.write_text("kept\n")

    refused = await run_cli(capsys, "import", source, "--site", "ghost", "--report", report)

    assert refused.code == 2, refused
    assert refused.err.strip().splitlines() == [
        "dicomweb-server import: unknown site 'ghost': add it first"
        " (dicomweb-server sites add ghost)"
    ]
    assert refused.out == "" and report.read_text() == "kept\n"
    assert _journal_rows(settings.data_dir) == 0
    assert not list(settings.data_dir.glob(".import-journal-*"))
    assert (await run_cli(capsys, "sites", "add", "ghost")).code == 0
    listed = await client.get("/sites/ghost/instances")
    assert listed.status_code == 204 or listed.json() == []  # nothing was stored
    stored = await run_cli(capsys, "import", source, "--site", "ghost")
    assert stored.code == 0 and count(stored.out, "stored") == 1, stored


async def test_import_records_each_study_it_stores_in_the_audit_trail(
    settings: Settings,
    app: Starlette,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As STOW's stores are: one record per study (not per instance), by the operator's
    command, with the patient; a run that stores nothing new records nothing."""
    use_settings(settings, monkeypatch)
    first, second = _series(3, patient="PAT-A"), _series(1, patient="PAT-B")
    source = tmp_path / "in"
    source.mkdir()
    for number, data in enumerate([*first, *second]):
        (source / f"{number}.dcm").write_bytes(data)

    ran = await run_cli(capsys, "import", source)
    again = await run_cli(capsys, "import", source)

    assert ran.code == again.code == 0 and count(again.out, "identical") == 4
    audited = await app.state.dicomweb.audit.search(AuditQuery(user="cli:import"))
    records = sorted(audited.records, key=lambda r: r.studies[0].patient_id or "")
    assert [(r.action, r.kind, r.subject, r.site) for r in records] == [
        ("store", "system", "cli:import", "default")
    ] * 2
    assert [r.studies for r in records] == [
        (AuditStudy(_study(first[0]), "default", "PAT-A", None),),
        (AuditStudy(_study(second[0]), "default", "PAT-B", None),),
    ]
    assert [r.detail for r in records] == [
        "import: 3 instance(s) stored",
        "import: 1 instance(s) stored",
    ]
    assert all(r.display_name.startswith("cli:import (") for r in records)


@contextlib.asynccontextmanager
async def _peer(routes: web.RouteTableDef) -> AsyncIterator[str]:
    """A DICOMweb source made of `routes` on a loopback port; its root URL, no trailing /."""
    application = web.Application()
    application.add_routes(routes)
    server = TestServer(application, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


def _study_rows(*studies: str) -> web.Response:
    rows = [{"0020000D": {"vr": "UI", "Value": [study]}} for study in studies]
    return web.json_response(rows, content_type="application/dicom+json")


async def test_import_from_a_url_with_a_password_never_shows_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The password of `--from http://alice:s3cret@host/` was sent as Basic authentication,
    then echoed in the "stopped:" message, every line of the report and the journal."""
    monkeypatch.setenv("DICOMWEB_DATA_DIR", str(tmp_path / "data"))
    study = f"{PREFIX}7.1"
    failing = {"qido": True}
    authorizations: list[str] = []
    routes = web.RouteTableDef()

    @routes.get("/studies")
    async def search(request: web.Request) -> web.Response:
        authorizations.append(request.headers.get("Authorization", ""))
        if failing["qido"]:
            return web.Response(status=500, text="boom")
        return _study_rows(study) if request.query["offset"] == "0" else _study_rows()

    @routes.get("/studies/{study}")
    async def retrieve(request: web.Request) -> web.Response:
        body = b"--xx\r\nContent-Type: application/dicom\r\n\r\nDICMjunk"
        content_type = 'multipart/related; type="application/dicom"; boundary=xx'
        return web.Response(body=body, headers={"Content-Type": content_type})

    report = tmp_path / "report.jsonl"
    async with _peer(routes) as root:
        with_password = root.replace("http://", "http://alice:s3cret@")
        shown = root.replace("http://", "http://alice:***@")
        stopped = await run_cli(capsys, "import", "--from", with_password, "--report", report)
        failing["qido"] = False
        pulled = await run_cli(capsys, "import", "--from", with_password, "--report", report)

        assert authorizations[0].startswith("Basic ")  # still sent, as before
        assert stopped.code == 1 and f"stopped: {shown}/studies?" in stopped.err, stopped
        assert pulled.code == 1 and count(pulled.out, "failed") == 1, pulled
        assert "s3cret" not in stopped.err + stopped.out + pulled.err + pulled.out
        entries = [json.loads(line) for line in report.read_text().splitlines()]
        assert entries and all(e["path"].startswith(f"{shown}/studies/{study}") for e in entries)
        assert "s3cret" not in report.read_text()

        # The journal names the study without the password: a run that resumes with another
        # password (rotated since) still finds what the first run finished.
        with ImportJournal(tmp_path / "journal.sqlite") as journal:
            journal.record((f"{shown}/studies/{study}", 0, 0), "done")
        with ImportJournal(tmp_path / "journal.sqlite") as journal:
            rotated = root.replace("http://", "http://alice:n3w@")
            async with DicomwebSource(rotated, _no_parts, journal=journal) as source:
                items = [item async for item in source.iter_items([study])]
        assert [(item.label, item.outcome) for item in items] == [
            (f"{shown}/studies/{study}", Outcome.SKIPPED)
        ]


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
async def test_import_applies_stows_part_limit_to_files(
    settings: Settings,
    client: httpx.AsyncClient,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """STOW answers 413 past DICOMWEB_MAX_PART_BYTES; import stored such a file."""
    use_settings(settings, monkeypatch)
    small, large = _series(1)[0], _series(1, rows=64)[0]
    monkeypatch.setenv("DICOMWEB_MAX_PART_BYTES", str(len(small) + 100))
    source = tmp_path / "in"
    source.mkdir()
    (source / "large.dcm").write_bytes(large)
    (source / "small.dcm").write_bytes(small)
    report = tmp_path / "report.jsonl"

    ran = await run_cli(capsys, "import", source, "--report", report)

    assert ran.code == 1 and [count(ran.out, n) for n in ("stored", "failed")] == [1, 1], ran
    (entry,) = [json.loads(line) for line in report.read_text().splitlines()]
    assert Path(entry["path"]).name == "large.dcm" and entry["outcome"] == "failed"
    assert f"over DICOMWEB_MAX_PART_BYTES ({len(small) + 100})" in entry["reason"]
    assert await _instances(client) == 1


async def test_import_from_a_source_that_ignores_offset_says_the_listing_is_cut(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Such a source answers every page with its first studies: 2 of 5 were pulled, exit 0,
    no word that the rest was never listed."""
    monkeypatch.setenv("DICOMWEB_DATA_DIR", str(tmp_path / "data"))
    studies = [f"{PREFIX}8.{n}" for n in range(5)]
    routes = web.RouteTableDef()

    @routes.get("/studies")
    async def search(request: web.Request) -> web.Response:
        return _study_rows(*studies[:2])  # capped at 2 a page, whatever the offset

    @routes.get("/studies/{study}")
    async def retrieve(request: web.Request) -> web.Response:
        content_type = 'multipart/related; type="application/dicom"; boundary=b'
        return web.Response(body=b"--b--\r\n", headers={"Content-Type": content_type})

    async with _peer(routes) as root:
        pulled = await run_cli(capsys, "import", "--from", root)

    assert pulled.code == 1, pulled
    assert count(pulled.out, "studies") == 2
    assert pulled.err.strip().splitlines() == [
        f"dicomweb-server import: incomplete: {root} answered offset 2 with studies it had"
        " listed before: it ignores offset, so only 2 studies were listed and it may hold more"
        " (narrow --query to pull the rest)"
    ]


async def test_import_from_refuses_what_is_no_http_url_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each was exit 1 with "stopped: cannot reach URL: URL" as the only reason."""
    monkeypatch.setenv("DICOMWEB_DATA_DIR", str(tmp_path / "data"))
    for url, reason in [
        ("file:///etc", "'file:///etc': give the http:// or https:// URL of a DICOMweb root"),
        ("127.0.0.1:8042/dicom-web", "give the http:// or https:// URL of a DICOMweb root"),
        ("http://[::1", "'http://[::1' is not a URL: Invalid IPv6 URL"),
        ("http://h:99999/x", "is not a URL: Port out of range 0-65535"),
        ("https:///dicomweb", "'https:///dicomweb' names no host"),
        ("ftp://alice:s3cret@h/", "'ftp://alice:***@h/': give the http:// or https:// URL"),
    ]:
        refused = await run_cli(capsys, "import", "--from", url)
        assert refused.code == 2, refused
        (line,) = refused.err.strip().splitlines()
        assert line.startswith("dicomweb-server import: --from ") and reason in line, line
        assert refused.out == ""


def test_import_piped_into_a_reader_that_stops_ends_quietly(tmp_path: Path) -> None:
    """`import ... | head`: the summary met a closed pipe, a BrokenPipeError traceback."""
    source = tmp_path / "in"
    source.mkdir()
    (source / "1.dcm").write_bytes(_series(1)[0])
    command = [
        sys.executable, "-m", "dicomweb_server", "import", str(source),
        "--data-dir", str(tmp_path / "data"),
    ]  # fmt: skip
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the summary is written
    try:
        ran = subprocess.run(command, stdout=write, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert ran.returncode == 0, ran.stderr
    assert "Traceback" not in ran.stderr and "BrokenPipe" not in ran.stderr, ran.stderr
    assert _stored_instances(Settings(data_dir=tmp_path / "data")) == 1


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
async def test_import_of_files_named_in_another_encoding(
    settings: Settings,
    client: httpx.AsyncClient,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A name that is not UTF-8 (Latin-1 media) crashed the journal's commit (a traceback,
    though the instances were stored), and the report could not write it."""
    use_settings(settings, monkeypatch)
    source = tmp_path / "in"
    source.mkdir()
    (source / os.fsdecode(b"caf\xe9.dcm")).write_bytes(_series(1)[0])
    (source / os.fsdecode(b"notes-\xe9.txt")).write_text("not an image")
    report = tmp_path / "report.jsonl"

    ran = await run_cli(capsys, "import", source, "--report", report)

    assert ran.code == 0 and "Traceback" not in ran.err, ran
    assert [count(ran.out, label) for label in ("stored", "not DICOM")] == [1, 1]
    (entry,) = [json.loads(line) for line in report.read_bytes().decode().splitlines()]
    assert os.fsencode(entry["path"]) == os.fsencode(source) + b"/notes-\xe9.txt"
    assert await _instances(client) == 1
    with ImportJournal(tmp_path / "journal.sqlite") as journal:  # a resume finds it done
        journal.record((os.fsdecode(b"caf\xe9.dcm"), 1, 2), "stored")
    with ImportJournal(tmp_path / "journal.sqlite") as journal:
        assert journal.is_done((os.fsdecode(b"caf\xe9.dcm"), 1, 2))
