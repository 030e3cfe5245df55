"""`dicomweb-server import --from` pulling from a real Orthanc (issue 19 item 2).

Two fresh synthetic studies go into Orthanc over its REST API; our CLI then pulls from
Orthanc's DICOMweb root (QIDO-RS `/studies`, then WADO-RS per study) into the data dir of our
running server, first one patient (`--query PatientID=...`), then everything Orthanc holds.
Every file must arrive byte for byte (checked through a zip download from our server), and the
summary must count what Orthanc holds. The studies are removed from Orthanc afterwards, so the
other interop tests see only their own.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from studies import Study, build_studies

REPO = Path(__file__).resolve().parents[1]
PREFIX = "PULL"  # patient IDs PULL-A and PULL-B: apart from the other interop tests' patients


@pytest.fixture(scope="module")
def studies(orthanc: httpx.Client) -> Iterator[list[Study]]:
    """Both studies stored in Orthanc; deleted from it when the module is done."""
    built = build_studies(PREFIX)
    ids = set()
    for study in built:
        for instance in study.instances:
            response = orthanc.post("/instances", content=instance.data)
            assert response.status_code == 200, response.text
            assert response.json()["Status"] == "Success", response.text
            ids.add(response.json()["ParentStudy"])
    yield built
    for orthanc_id in ids:
        orthanc.delete(f"/studies/{orthanc_id}")


@pytest.fixture(scope="module")
def source(orthanc: httpx.Client) -> str:
    """Orthanc's own DICOMweb root (`DicomWeb.Root` in interop/conftest.py)."""
    return f"{orthanc.base_url}".rstrip("/") + "/dicom-web"


def _import(data_dir: Path, source: str, *options: str) -> tuple[int, str, dict[str, int]]:
    """Run `dicomweb-server import --from` on our server's data dir: (status, output, counts)."""
    argv = [sys.executable, "-m", "dicomweb_server", "import", "--from", source]
    argv += ["--data-dir", str(data_dir), "--progress-every", "0", *options]
    done = subprocess.run(
        argv, cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=300
    )
    output = done.stdout + done.stderr
    counts = {
        name: int(value.replace(",", ""))
        for name, value in re.findall(r"^  ([a-zA-Z ]+?) +([\d,]+)", done.stdout, re.MULTILINE)
    }
    return done.returncode, output, counts


def _zip_entries(ours: str, study: str) -> dict[str, bytes]:
    response = httpx.get(f"{ours}/studies/{study}", headers={"Accept": "application/zip"})
    assert response.status_code == 200, response.text
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        assert archive.testzip() is None
        return {name.rsplit("/", 1)[-1]: archive.read(name) for name in archive.namelist()}


def _assert_arrived_unchanged(ours: str, study: Study) -> None:
    entries = _zip_entries(ours, study.uid)
    assert set(entries) == {f"{instance.sop}.dcm" for instance in study.instances}
    for instance in study.instances:
        assert entries[f"{instance.sop}.dcm"] == instance.data, (
            f"{instance.modality} {instance.sop} ({instance.transfer_syntax}) changed"
        )


def test_import_from_orthanc_one_patient_then_everything(
    ours: str, scratch: Path, orthanc: httpx.Client, source: str, studies: list[Study]
) -> None:
    data_dir = scratch / "ours"  # the running server's: an import works beside it
    first, second = studies
    for study in studies:
        assert httpx.get(f"{ours}/studies/{study.uid}/metadata").status_code == 404

    status, output, counts = _import(data_dir, source, "--query", f"PatientID={PREFIX}-B")
    assert status == 0, output
    assert counts["studies"] == 1, output
    assert counts["stored"] == len(second.instances), output
    assert counts["failed"] == counts["conflicts"] == counts["not DICOM"] == 0, output
    _assert_arrived_unchanged(ours, second)
    assert httpx.get(f"{ours}/studies/{first.uid}/metadata").status_code == 404

    held = orthanc.get("/statistics").json()  # the other interop tests' studies too, if any
    status, output, counts = _import(data_dir, source)
    assert status == 0, output
    assert counts["studies"] == held["CountStudies"], output
    assert counts["stored"] + counts["identical duplicates"] == held["CountInstances"], output
    assert counts["stored"] >= len(first.instances), output
    assert counts["failed"] == counts["conflicts"] == counts["not DICOM"] == 0, output
    for study in studies:
        _assert_arrived_unchanged(ours, study)
    # the summary's first line counts every part it read
    head = output.splitlines()[0]
    assert head.startswith(f"imported {held['CountInstances']} parts"), output
