"""Issue 19: `dicomweb-server export` writes PS3.10 media (generated names, a DICOMDIR pydicom
and dcmtk read back, MANIFEST.csv), selects by patient, study and date, de-identifies with a
key of its own, and stops cleanly on a full disk."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import re
import shutil
import subprocess
import warnings
import zipfile
from io import BytesIO
from pathlib import Path

import httpx
import pytest
from cli_helpers import count, no_space, run_cli, stow, tiny_disk, use_settings
from dicomfiles import ct_dataset, to_part10, uid
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.fileset import FileSet
from pydicom.uid import RLELossless

from dicomweb_server.config import Settings

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom.*")

LAYOUT = re.compile(r"^DICOM/P\d{7}/S\d{7}/E\d{7}/I\d{7}$")
KEY = "a-test-key-of-at-least-16-bytes"


def _study(patient: str, date: str, sizes: tuple[int, ...], **extra: object) -> list[Dataset]:
    study = uid()
    out = []
    for series_number, size in enumerate(sizes, 1):
        series = uid()
        for number in range(1, size + 1):
            ds = ct_dataset(
                study, series, patient_id=patient, patient_name=f"Doe^{patient}",
                study_date=date, instance_number=number, seed=number,
            )  # fmt: skip
            ds.SeriesNumber = series_number
            for keyword, value in extra.items():
                setattr(ds, keyword, value)
            out.append(ds)
    return out


def _corpus() -> tuple[list[Dataset], list[Dataset]]:
    """Patient A in January (two series), patient B in February (an RLE multi-frame, one
    with elements after Pixel Data, one without Pixel Data, one with burned-in text)."""
    first = _study("PAT-A", "20240110", (2, 1))
    second = _study("PAT-B", "20240220", (4,))
    rle = second[0]
    rle.NumberOfFrames = 2
    rle.PixelData = bytes(16 * 16 * 2 * 2)
    rle.compress(RLELossless, encoding_plugin="pydicom")
    trailing = second[1]
    trailing.add_new(0x7FE10010, "LO", "ACME")
    trailing.add_new(0x7FE11001, "LO", "Doe^PAT-B in a private tag")
    trailing.add_new(0xFFFCFFFC, "OB", bytes(4))
    del second[2].PixelData
    second[3].BurnedInAnnotation = "YES"
    return first, second


def _files(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file()]


def _exists(path: Path) -> bool:
    return path.exists()


def _manifest(dest: Path) -> list[dict[str, str]]:
    with open(dest / "MANIFEST.csv", newline="") as file:
        return list(csv.DictReader(file))


def _read_file_set(dicomdir: Path) -> FileSet:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        file_set = FileSet(dicomdir)
    return file_set


def _drop(file_set: FileSet) -> None:
    """Remove the staging TemporaryDirectory FileSet keeps (else a ResourceWarning later)."""
    file_set._stage["t"].cleanup()


async def test_issue19_export_writes_ps310_media_with_dicomdir_and_manifest(
    settings: Settings,
    client: httpx.AsyncClient,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    use_settings(settings, monkeypatch)
    first, second = _corpus()
    originals = {str(ds.SOPInstanceUID): to_part10(ds) for ds in first + second}
    await stow(client, list(originals.values()))
    dest = tmp_path / "media"

    ran = await run_cli(capsys, "export", dest)

    assert ran.code == 0, ran
    assert [count(ran.out, label) for label in ("studies", "written", "failed")] == [2, 7, 0]
    names = {p.relative_to(dest).as_posix() for p in _files(dest)}
    assert {"DICOMDIR", "MANIFEST.csv"} < names
    assert all(LAYOUT.match(name) for name in names - {"DICOMDIR", "MANIFEST.csv"})
    rows = _manifest(dest)
    assert len(rows) == 7 == len(names) - 2
    for row in rows:
        data = (dest / row["path"]).read_bytes()
        assert data == originals[row["sop_instance_uid"]]  # the stored bytes, as sent
        assert int(row["bytes"]) == len(data)
        assert row["sha256"] == hashlib.sha256(data).hexdigest()
    file_set = _read_file_set(dest / "DICOMDIR")
    try:
        assert len(file_set) == 7
        for instance in file_set:
            on_disk = dcmread(instance.path, stop_before_pixels=True)
            assert on_disk.SOPInstanceUID == instance.SOPInstanceUID
        patients = file_set.find_values("PatientID")
        assert sorted(patients) == ["PAT-A", "PAT-B"]
    finally:
        _drop(file_set)


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
async def test_issue19_export_dicomdir_reads_back_with_dcmdump(
    settings: Settings,
    client: httpx.AsyncClient,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dcmdump = shutil.which("dcmdump")
    if dcmdump is None:
        pytest.skip("dcmdump (dcmtk) is not installed: apt-get install -y dcmtk")
    use_settings(settings, monkeypatch)
    first, _ = _corpus()
    await stow(client, [to_part10(ds) for ds in first])
    assert (await run_cli(capsys, "export", tmp_path / "media")).code == 0
    dumped = await asyncio.to_thread(
        subprocess.run,
        [dcmdump, "-q", str(tmp_path / "media" / "DICOMDIR")],
        capture_output=True,
        text=True,
    )
    assert dumped.returncode == 0, dumped.stderr
    assert dumped.stdout.count('"Directory Record" IMAGE') == 3
    assert "PATIENT" in dumped.stdout and "[PAT-A]" in dumped.stdout


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
async def test_issue19_export_selects_by_patient_study_and_date_into_a_zip(
    settings: Settings,
    client: httpx.AsyncClient,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    use_settings(settings, monkeypatch)
    first, second = _corpus()
    await stow(client, [to_part10(ds) for ds in first + second])
    study_b = str(second[0].StudyInstanceUID)
    cases = {
        ("--patient", "PAT-A"): 3,
        ("--study", study_b): 4,
        ("--since", "2024-02-01"): 4,
        ("--until", "20240131"): 3,
        ("--since", "20240101", "--until", "2024-12-31"): 7,
    }
    for number, (flags, expected) in enumerate(cases.items()):
        dest = tmp_path / f"out-{number}"
        ran = await run_cli(capsys, "export", dest, *flags)
        assert ran.code == 0, (flags, ran)
        assert len(_manifest(dest)) == expected, flags

    archive = tmp_path / "study-b.zip"
    ran = await run_cli(capsys, "export", archive, "--zip", "--study", study_b)
    assert ran.code == 0, ran
    with zipfile.ZipFile(archive) as opened:
        names = opened.namelist()
        assert {"DICOMDIR", "MANIFEST.csv"} <= set(names)
        assert sum(bool(LAYOUT.match(name)) for name in names) == 4
        assert all(info.compress_type == zipfile.ZIP_STORED for info in opened.infolist())
        opened.extractall(tmp_path / "unzipped")
    file_set = _read_file_set(tmp_path / "unzipped" / "DICOMDIR")
    try:
        assert len(file_set) == 4
    finally:
        _drop(file_set)
    assert not _exists(Path(f"{archive}.partial"))
    nothing = await run_cli(capsys, "export", tmp_path / "none", "--patient", "NOBODY")
    assert nothing.code == 1 and "no study matches" in nothing.err
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
async def test_issue19_export_deidentifies_with_a_key_and_leaves_out_burned_in(
    settings: Settings,
    client: httpx.AsyncClient,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    use_settings(settings, monkeypatch)
    monkeypatch.setenv("EXPORT_KEY", KEY)
    first, second = _corpus()
    originals = [to_part10(ds) for ds in first + second]
    await stow(client, originals)
    keyed = ("--deidentify", "basic", "--deid-key-env", "EXPORT_KEY")

    one = await run_cli(capsys, "export", tmp_path / "one", *keyed)
    two = await run_cli(capsys, "export", tmp_path / "two", *keyed)
    random = await run_cli(capsys, "export", tmp_path / "random", "--deidentify", "basic")
    kept = await run_cli(
        capsys, "export", tmp_path / "kept", *keyed, "--include-burned-in"
    )  # fmt: skip

    assert one.code == two.code == random.code == kept.code == 0, (one, random)
    assert [count(one.out, label) for label in ("written", "excluded")] == [6, 1]
    assert count(kept.out, "written") == 7
    assert "the key in $EXPORT_KEY" in one.out and "a random key" in random.out
    secrets = [b"PAT-A", b"PAT-B", b"Doe^", b"ACME", str(first[0].StudyInstanceUID).encode()]
    secrets += [str(ds.SOPInstanceUID).encode() for ds in first + second]
    for path in _files(tmp_path / "one"):
        assert not [s for s in secrets if s in path.read_bytes()], path
    rows_one, rows_two = _manifest(tmp_path / "one"), _manifest(tmp_path / "two")
    assert [r["sop_instance_uid"] for r in rows_one] == [r["sop_instance_uid"] for r in rows_two]
    assert all(r["sop_instance_uid"].startswith("2.25.") for r in rows_one)
    random_uids = {r["sop_instance_uid"] for r in _manifest(tmp_path / "random")}
    assert not random_uids & {r["sop_instance_uid"] for r in rows_one}
    by_number = {}
    for row in rows_one:
        ds = dcmread(tmp_path / "one" / row["path"])
        assert ds.PatientIdentityRemoved == "YES"
        assert 0x7FE11001 not in ds  # the private element after Pixel Data is gone
        by_number[(str(ds.PatientID), int(ds.SeriesNumber), int(ds.InstanceNumber))] = ds
    pseudonyms = {key[0] for key in by_number}
    assert len(pseudonyms) == 2 and not pseudonyms & {"PAT-A", "PAT-B"}
    pixel_sources = [ds for ds in first + second[:2] if "PixelData" in ds]
    written_pixels = sorted(bytes(ds.PixelData) for ds in by_number.values() if "PixelData" in ds)
    assert written_pixels == sorted(bytes(ds.PixelData) for ds in pixel_sources)  # unchanged
    file_set = _read_file_set(tmp_path / "one" / "DICOMDIR")
    try:
        assert sorted(file_set.find_values("PatientID")) == sorted(pseudonyms)
    finally:
        _drop(file_set)


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
async def test_issue19_export_names_are_generated_and_dest_is_protected(
    settings: Settings,
    client: httpx.AsyncClient,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    use_settings(settings, monkeypatch)
    hostile = _study("../../escape/..\\x", "20240301", (2,))
    await stow(client, [to_part10(ds) for ds in hostile])
    dest = tmp_path / "media"
    dest.mkdir()
    (dest / "keep.txt").write_text("someone else's file")

    refused = await run_cli(capsys, "export", dest)
    assert refused.code == 2 and "not empty" in refused.err
    forced = await run_cli(capsys, "export", dest, "--force")
    assert forced.code == 0, forced
    outside = [p for p in _files(tmp_path) if dest not in p.parents]
    assert all(settings.data_dir in p.parents for p in outside)  # nothing escaped DEST
    assert all(LAYOUT.match(r["path"]) for r in _manifest(dest))
    assert (dest / "keep.txt").read_text() == "someone else's file"

    bad_profile = await run_cli(capsys, "export", tmp_path / "x", "--deidentify", "strict")
    assert bad_profile.code == 2 and "unknown de-identification profile" in bad_profile.err
    objects = sorted((settings.data_dir / "objects").rglob("*.dcm"))
    objects[0].unlink()  # lost from the store: reported, the rest is exported
    partial = await run_cli(capsys, "export", tmp_path / "partial")
    assert partial.code == 1
    assert count(partial.out, "failed") == 1 and "missing" in partial.out
    assert len(_manifest(tmp_path / "partial")) == 1


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
async def test_issue19_export_on_a_full_disk_stops_with_one_line(
    settings: Settings,
    client: httpx.AsyncClient,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    use_settings(settings, monkeypatch)
    big = [to_part10(ct_dataset(rows=200, columns=200, seed=n)) for n in range(4)]
    await stow(client, big)  # 80 KB each: more than the disk holds
    with tiny_disk(tmp_path, "128k") as tiny:
        if tiny is None:
            from dicomweb_server.services import export_sinks

            def full(*args: object) -> None:
                raise no_space()

            monkeypatch.setattr(export_sinks, "_write", full)
            tiny = tmp_path / "elsewhere"
        ran = await run_cli(capsys, "export", tiny / "media")
        assert ran.code == 1
        assert "No space left on device" in ran.err and "Traceback" not in ran.err
        zipped = await run_cli(capsys, "export", tiny / "media.zip", "--zip")
        assert zipped.code == 1 and "No space left on device" in zipped.err
        assert not _exists(tiny / "media.zip") and not _exists(tiny / "media.zip.partial")


def _implicit_vr_under_jpeg() -> bytes:
    """pydicom's SC_rgb_jpeg.dcm: JPEG Baseline declared, the data set written with implicit
    VR (pydicom reads it, so STOW and import accept it)."""
    return Path(get_testdata_file("SC_rgb_jpeg.dcm")).read_bytes()


def _with_stray_delimiter(ds: Dataset) -> bytes:
    """`ds` RLE-encoded, with a second Sequence Delimitation Item after Pixel Data's own (a
    writer that closed the sequence twice): a top-level (FFFE,E0DD) that STOW accepts."""
    ds.compress(RLELossless, encoding_plugin="pydicom")
    return to_part10(ds) + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
async def test_export_deidentifies_implicit_vr_under_jpeg_and_a_stray_delimiter(
    settings: Settings,
    client: httpx.AsyncClient,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    use_settings(settings, monkeypatch)
    normal = ct_dataset(patient_id="PAT-N", seed=1)
    stray = ct_dataset(patient_id="PAT-S", seed=2)
    sources = [to_part10(normal), _implicit_vr_under_jpeg(), _with_stray_delimiter(stray)]
    await stow(client, sources)
    originals = {str(ds.SOPInstanceUID): ds for ds in (dcmread(BytesIO(f)) for f in sources)}
    dest = tmp_path / "research"

    ran = await run_cli(capsys, "export", dest, "--deidentify", "basic")

    assert ran.code == 0, ran
    assert "Traceback" not in ran.err
    assert [count(ran.out, label) for label in ("written", "failed")] == [3, 0]
    rows = _manifest(dest)
    assert len(rows) == 3
    by_pixels = {}
    for row in rows:
        path = dest / row["path"]
        assert int(row["bytes"]) == path.stat().st_size
        ds = dcmread(path)
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.SOPInstanceUID.startswith("2.25.") and ds.SOPInstanceUID not in originals
        assert ds.PatientName == ds.PatientID and ds.StudyDate == ""  # pseudonym; Z: emptied
        assert not [tag for tag in ds.keys() if tag >> 16 == 0xFFFE]  # noqa: SIM118
        syntax = ds.file_meta.TransferSyntaxUID
        assert syntax.is_implicit_VR or ds.get_item(0x00080016).VR == "UI"  # read explicitly
        by_pixels[bytes(ds.PixelData)] = ds
    for original in originals.values():
        written = by_pixels[bytes(original.PixelData)]  # Pixel Data as it was
        assert written.get("ImageType") == original.get("ImageType")  # not in the profile: kept
        assert written.PatientID not in {"PAT-N", "PAT-S", original.PatientID}
        assert written.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        assert written.pixel_array.shape == original.pixel_array.shape
    file_set = _read_file_set(dest / "DICOMDIR")
    try:
        assert len(file_set) == 3
        assert {i.SOPInstanceUID for i in file_set} == {r["sop_instance_uid"] for r in rows}
    finally:
        _drop(file_set)


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
async def test_export_counts_an_instance_it_cannot_deidentify_and_goes_on(
    settings: Settings,
    client: httpx.AsyncClient,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    use_settings(settings, monkeypatch)
    study = uid()
    series = uid()
    files = [to_part10(ct_dataset(study, series, instance_number=n, seed=n)) for n in (1, 2, 3)]
    private = ct_dataset(study, series, instance_number=4, seed=4)
    private.file_meta.TransferSyntaxUID = "1.2.840.99999.1.2.1"  # a syntax no reader knows
    await stow(client, [*files, to_part10(private)])
    damaged = next(
        p for p in (settings.data_dir / "objects").rglob("*.dcm") if p.read_bytes() == files[1]
    )
    data = bytearray(damaged.read_bytes())
    data[128:132] = b"XXXX"  # damaged in the store after it was indexed: no longer Part 10
    damaged.write_bytes(bytes(data))
    dest = tmp_path / "research"

    ran = await run_cli(capsys, "export", dest, "--deidentify", "basic")

    assert ran.code == 1, ran
    assert "Traceback" not in ran.err
    summary = ran.out[ran.out.index("\nexported ") :]  # after the lines naming each failure
    assert [count(summary, label) for label in ("written", "failed")] == [2, 2], ran.out
    failed = sorted(line for line in ran.out.splitlines() if line.startswith("failed "))
    assert len(failed) == 2, ran.out
    assert any(line.endswith("a de-identified copy cannot be encoded") for line in failed)
    assert any(": it cannot be read: " in line for line in failed)
    assert count(summary, "DICOMDIR") > 0  # the media is complete for what was exported
    rows = _manifest(dest)
    assert len(rows) == 2
    numbers = sorted(int(dcmread(dest / row["path"]).InstanceNumber) for row in rows)
    assert numbers == [1, 3]
    file_set = _read_file_set(dest / "DICOMDIR")
    try:
        assert {i.SOPInstanceUID for i in file_set} == {r["sop_instance_uid"] for r in rows}
    finally:
        _drop(file_set)


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
async def test_export_force_never_writes_through_a_link_or_beside_an_earlier_export(
    settings: Settings,
    client: httpx.AsyncClient,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--force lets DEST hold other files, never an export's names: a MANIFEST.csv linked to
    a file outside is not written through, and an identified export is not left beside a
    de-identified one, outside its DICOMDIR and MANIFEST.csv."""
    use_settings(settings, monkeypatch)
    await stow(client, [to_part10(ds) for ds in _study("PAT-A", "20240110", (2,))])
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "MANIFEST.csv").symlink_to(victim)

    through_link = await run_cli(capsys, "export", linked, "--force")

    assert through_link.code == 2 and "already holds MANIFEST.csv" in through_link.err
    assert victim.read_text() == "precious"
    earlier = tmp_path / "media"
    assert (await run_cli(capsys, "export", earlier)).code == 0
    before = {p: p.read_bytes() for p in _files(earlier)}
    beside = await run_cli(capsys, "export", earlier, "--force", "--deidentify", "basic")
    assert beside.code == 2
    assert "already holds DICOM, DICOMDIR, MANIFEST.csv" in beside.err
    assert {p: p.read_bytes() for p in _files(earlier)} == before


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
async def test_export_is_audited_per_study_as_a_dicom_export(
    settings: Settings,
    client: httpx.AsyncClient,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PS3.15 A.5.3.6: each study exported is an Export (DCM 110106) record naming the
    patient, the operator's command and the destination; a de-identified one too."""
    use_settings(settings, monkeypatch)
    first, second = _corpus()
    await stow(client, [to_part10(ds) for ds in first + second])
    media, research = tmp_path / "media", tmp_path / "research.zip"

    assert (await run_cli(capsys, "export", media)).code == 0
    deidentified = await run_cli(capsys, "export", research, "--zip", "--deidentify", "basic")
    assert deidentified.code == 0, deidentified

    table = await run_cli(capsys, "audit", "--user", "cli:export")
    rows = [line for line in table.out.splitlines()[1:] if " export " in line]
    assert len(rows) == 4, table.out  # two studies, two exports
    assert sum(f"to {media}" in row for row in rows) == 2
    assert sum(f"to {research}, de-identified (basic)" in row for row in rows) == 2
    assert {"PAT-A", "PAT-B"} <= {cell for row in rows for cell in row.split()}
    events = await run_cli(capsys, "audit", "--user", "cli:export", "--format", "ndjson")
    codes = {json.loads(line)["type"]["code"] for line in events.out.splitlines()}
    assert codes == {"110106"}


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
@pytest.mark.parametrize(
    "options", [(), ("--zip",), ("--deidentify", "basic")], ids=["folder", "zip", "deidentified"]
)
async def test_export_fails_an_object_damaged_in_the_store_and_writes_nothing_of_it(
    settings: Settings,
    client: httpx.AsyncClient,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    options: tuple[str, ...],
) -> None:
    """One byte of Pixel Data flipped in the store after ingest: verify calls it corrupt, and
    export counts it failed (exit 1) instead of copying it with a SHA-256 in MANIFEST.csv."""
    use_settings(settings, monkeypatch)
    files = [to_part10(ds) for ds in _study("PAT-A", "20240110", (3,))]
    await stow(client, files)
    damaged = next(
        p for p in (settings.data_dir / "objects").rglob("*.dcm") if p.read_bytes() == files[1]
    )
    data = bytearray(damaged.read_bytes())
    data[-1] ^= 0xFF  # the last byte of Pixel Data
    damaged.write_bytes(bytes(data))
    dest = tmp_path / ("media.zip" if "--zip" in options else "media")

    ran = await run_cli(capsys, "export", dest, *options)

    assert ran.code == 1, ran
    summary = ran.out[ran.out.index("\nexported ") :]
    assert [count(summary, label) for label in ("written", "failed")] == [2, 1], ran.out
    (failed,) = [line for line in ran.out.splitlines() if line.startswith("failed ")]
    assert "no longer match the SHA-256" in failed and "run verify" in failed
    if "--zip" in options:
        with zipfile.ZipFile(dest) as archive:
            assert archive.testzip() is None
            names = archive.namelist()
        media = tmp_path / "unzipped"
        with zipfile.ZipFile(dest) as archive:
            archive.extractall(media)
    else:
        media = dest
        names = [p.relative_to(dest).as_posix() for p in _files(dest)]
    assert len(names) == 4  # two instances, DICOMDIR and MANIFEST.csv: nothing else
    rows = _manifest(media)
    assert sorted(row["path"] for row in rows) == sorted(set(names) - {"DICOMDIR", "MANIFEST.csv"})
    file_set = _read_file_set(media / "DICOMDIR")
    try:
        assert len(file_set) == 2
    finally:
        _drop(file_set)
    if not options:
        assert all((media / row["path"]).read_bytes() != bytes(data) for row in rows)


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
async def test_export_selection_means_what_its_help_says(
    settings: Settings,
    client: httpx.AsyncClient,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--patient is one Patient ID (no wildcards); a date off the calendar and a site that
    does not exist are usage errors (2); a lower-case Burned In Annotation "yes" is left out
    of a de-identified export like "YES"."""
    use_settings(settings, monkeypatch)
    first = _study("PAT-A", "20240110", (1,), BurnedInAnnotation="yes")
    second = _study("PAT-B", "20240220", (1,))
    await stow(client, [to_part10(ds) for ds in first + second])

    wildcard = await run_cli(capsys, "export", tmp_path / "w", "--patient", "PAT*")
    assert wildcard.code == 1 and "no study matches" in wildcard.err
    one = await run_cli(capsys, "export", tmp_path / "one", "--patient", "PAT-B")
    assert one.code == 0 and count(one.out, "studies") == 1
    not_a_date = await run_cli(capsys, "export", tmp_path / "d", "--since", "2024-13-45")
    assert not_a_date.code == 2 and "not a date" in not_a_date.err
    assert "stopped" not in not_a_date.err
    no_site = await run_cli(capsys, "export", tmp_path / "s", "--site", "nosuch")
    assert no_site.code == 2 and "unknown site 'nosuch'" in no_site.err
    assert not (tmp_path / "s").exists()
    deidentified = await run_cli(capsys, "export", tmp_path / "r", "--deidentify", "basic")
    assert deidentified.code == 0, deidentified
    assert [count(deidentified.out, label) for label in ("written", "excluded")] == [1, 1]
