"""`dicomweb-server hold`, `restore` and `purge` as an operator runs them (issue 18), on both
index backends."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from dicomfiles import ct_dataset, to_part10, uid

from dicomweb_server.backends import Backends, open_backends
from dicomweb_server.config import Settings
from dicomweb_server.domain.audit import AuditQuery
from dicomweb_server.domain.lifecycle import DeleteTarget
from dicomweb_server.domain.part10 import ParseLimits
from dicomweb_server.domain.stow_result import StowResult
from dicomweb_server.services.audit import AuditService
from dicomweb_server.services.delete import DeleteService
from dicomweb_server.services.spool import Spool
from dicomweb_server.services.store import StoreService


@pytest.fixture(params=["sqlite", "postgresql"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    values = {k: v for k, v in os.environ.items() if not k.startswith("DICOMWEB_")}
    values["DICOMWEB_DATA_DIR"] = str(tmp_path / "data")
    values["USER"] = values["LOGNAME"] = "operator7"
    if request.param == "postgresql":
        values["DICOMWEB_DATABASE_URL"] = request.getfixturevalue("pg_database_url")
    return values


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicomweb_server", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _settings(env: dict[str, str]) -> Settings:
    """The settings the CLI runs read from `env`, for the test's own backends."""
    return Settings(
        data_dir=Path(env["DICOMWEB_DATA_DIR"]),
        database_url=env.get("DICOMWEB_DATABASE_URL", ""),
    )


async def _store_one(backends: Backends, study: str, patient_id: str = "PAT-1") -> None:
    """One CT of `study` stored through the store service, as a STOW would."""
    spool = Spool(1 << 20)
    spool.write(to_part10(ct_dataset(study, patient_id=patient_id)))
    async with StoreService(backends.index, backends.blobs, ParseLimits()).request(
        "default", None, StowResult()
    ) as store:
        await store.add(spool)


async def test_issue18_hold_restore_and_purge_from_the_command_line(env: dict[str, str]) -> None:
    study = uid()
    added = _run(env, "hold", "add", "--study", study, "--reason", "case 9")
    assert added.returncode == 0, added.stderr
    assert f"added legal hold 1 on study {study} in every site: case 9" in added.stdout
    assert "legal hold 1 added by operator7" in added.stderr  # the log line for the audit trail
    assert "case 9" in _run(env, "hold", "list").stdout
    settings = _settings(env)
    backends = await open_backends(settings)
    try:
        await _store_one(backends, study)
        index = backends.index
        deleter = DeleteService(index, index, index, backends.blobs)
        with pytest.raises(Exception, match="legal hold 1"):
            await deleter.delete(DeleteTarget("default", study), who="test")
        assert _run(env, "hold", "remove", "1").returncode == 0
        assert await deleter.delete(DeleteTarget("default", study), who="test") == 1
    finally:
        await backends.close()
    restored = _run(env, "restore", "--study", study)
    assert restored.returncode == 0, restored.stderr
    assert f"restored 1 instance(s) of study {study} at site default" in restored.stdout
    again = _run(env, "restore", "--study", study)
    assert again.returncode == 1 and "holds nothing of study" in again.stderr
    assert _run(env, "hold", "remove", "1").returncode == 1
    purged = _run(env, "purge", "--older-than", "0")
    assert purged.returncode == 0 and "purged 0 trashed instance(s)" in purged.stdout
    assert (
        _run(env, "hold", "add", "--study", study, "--patient", "P", "--reason", "x").returncode
        == 2
    )


async def test_issue18_purge_from_the_command_line_keeps_a_held_study(
    env: dict[str, str],
) -> None:
    """A study deleted, then held (a litigation hold arriving in the grace period): `purge`
    keeps it and says so, `restore` still brings it back; after `hold remove`, a purge takes
    it."""
    study = uid()
    settings = _settings(env)
    backends = await open_backends(settings)
    try:
        await _store_one(backends, study, "HELD-7")
        index = backends.index
        deleter = DeleteService(index, index, index, backends.blobs)
        assert await deleter.delete(DeleteTarget("default", study), who="test") == 1
    finally:
        await backends.close()
    added = _run(env, "hold", "add", "--patient", "HELD-7", "--reason", "litigation")
    assert added.returncode == 0, added.stderr
    hold_id = added.stdout.split()[3]
    kept = _run(env, "purge")
    assert kept.returncode == 0, kept.stderr
    assert "purged 0 trashed instance(s)" in kept.stdout
    assert f"kept 1 trashed instance(s) under legal hold {hold_id}" in kept.stdout
    assert "1 kept under legal hold" in kept.stderr  # the log line
    restored = _run(env, "restore", "--study", study)
    assert restored.returncode == 0, restored.stderr
    assert _run(env, "hold", "remove", hold_id).returncode == 0
    backends = await open_backends(settings)
    try:
        index = backends.index
        deleter = DeleteService(index, index, index, backends.blobs)
        assert await deleter.delete(DeleteTarget("default", study), who="test") == 1
    finally:
        await backends.close()
    purged = _run(env, "purge")
    assert "purged 1 trashed instance(s): deleted 1 object(s)" in purged.stdout
    assert "under legal hold" not in purged.stdout
    gone = _run(env, "restore", "--study", study)
    assert gone.returncode == 1 and "holds nothing of study" in gone.stderr


async def test_issue18_a_patient_hold_leaves_no_patient_id_in_the_log(env: dict[str, str]) -> None:
    """The log says a hold is on "a patient"; the Patient ID and the reason (free text) are
    in the audit trail, which is where patient data may be."""
    added = _run(env, "hold", "add", "--patient", "SECRET-PID-777", "--reason", "Doe v. Clinic")
    assert added.returncode == 0, added.stderr
    assert "legal hold 1 added by operator7 on a patient in every site" in added.stderr
    removed = _run(env, "hold", "remove", "1")
    assert removed.returncode == 0, removed.stderr
    for logged in (added.stderr, removed.stderr):
        assert "SECRET-PID-777" not in logged and "Doe v. Clinic" not in logged
    backends = await open_backends(_settings(env))
    try:
        page = await AuditService(backends.index).search(AuditQuery(user="cli:hold"))
    finally:
        await backends.close()
    details = sorted(r.detail for r in page.records)
    assert details == [
        "added legal hold 1 on patient SECRET-PID-777 in every site: Doe v. Clinic",
        "removed legal hold 1 on patient SECRET-PID-777 in every site: Doe v. Clinic",
    ]
