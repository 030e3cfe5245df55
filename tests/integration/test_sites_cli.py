"""`dicomweb-server sites ...` as an operator runs it (issue 16), on both index backends."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from dicomfiles import ct_dataset, to_part10

from dicomweb_server.backends import open_backends
from dicomweb_server.config import Settings


@pytest.fixture(params=["sqlite", "postgresql"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    values = {k: v for k, v in os.environ.items() if not k.startswith("DICOMWEB_")}
    values["DICOMWEB_DATA_DIR"] = str(tmp_path / "data")
    if request.param == "postgresql":
        values["DICOMWEB_DATABASE_URL"] = request.getfixturevalue("pg_database_url")
    return values


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicomweb_server", "sites", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_issue16_sites_add_list_show_set_remove(env: dict[str, str], tmp_path: Path) -> None:
    added = _run(env, "add", "hospital-a", "--description", "Hospital A")
    assert added.returncode == 0, added.stderr
    assert "added site hospital-a: http://127.0.0.1:8080/dicomweb/sites/hospital-a" in added.stdout
    own = _run(env, "add", "eu", "--storage-url", f"file://{tmp_path}/eu-objects")
    assert own.returncode == 0, own.stderr
    listed = _run(env, "list")
    assert listed.returncode == 0
    lines = listed.stdout.splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["default", "eu", "hospital-a"]
    assert f"file://{tmp_path}/eu-objects" in listed.stdout
    shown = _run(env, "show", "hospital-a")
    assert "description:      Hospital A" in shown.stdout
    assert _run(env, "set", "hospital-a", "--retain-years", "10").returncode == 0
    assert "retain years:     10" in _run(env, "show", "hospital-a").stdout
    assert _run(env, "remove", "hospital-a").returncode == 0
    assert "hospital-a" not in _run(env, "list").stdout


def test_issue16_sites_bad_input_is_one_line_and_changes_nothing(
    env: dict[str, str], tmp_path: Path
) -> None:
    bad = _run(env, "add", "Bad_Name")
    assert bad.returncode == 1
    assert "Bad_Name" in bad.stderr and "Traceback" not in bad.stderr
    assert _run(env, "add", "twice").returncode == 0
    again = _run(env, "add", "twice")
    assert again.returncode == 1 and "already exists" in again.stderr
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    unreachable = _run(env, "add", "nowhere", "--storage-url", f"file://{blocked}/objects")
    assert unreachable.returncode == 1
    assert "cannot be used" in unreachable.stderr and "Traceback" not in unreachable.stderr
    scheme = _run(env, "add", "ftp-site", "--storage-url", "ftp://host/x")
    assert scheme.returncode == 1 and "not supported" in scheme.stderr
    assert "nowhere" not in _run(env, "list").stdout
    missing = _run(env, "show", "absent")
    assert missing.returncode == 1 and "site 'absent' does not exist" in missing.stderr
    default = _run(env, "remove", "default")
    assert default.returncode == 1 and "default site" in default.stderr


async def test_issue16_a_site_holding_studies_cannot_be_removed(env: dict[str, str]) -> None:
    assert _run(env, "add", "busy").returncode == 0
    settings = Settings(
        data_dir=Path(env["DICOMWEB_DATA_DIR"]),
        database_url=env.get("DICOMWEB_DATABASE_URL", ""),
    )
    backends = await open_backends(settings)
    try:
        from dicomweb_server.domain.part10 import ParseLimits
        from dicomweb_server.domain.stow_result import StowResult
        from dicomweb_server.services.spool import Spool
        from dicomweb_server.services.store import StoreService

        spool = Spool(1 << 20)
        spool.write(to_part10(ct_dataset()))
        result = StowResult()
        async with StoreService(backends.index, backends.blobs, ParseLimits()).request(
            "busy", None, result
        ) as store:
            await store.add(spool)
        assert len(result.stored) == 1
    finally:
        await backends.close()
    refused = _run(env, "remove", "busy")
    assert refused.returncode == 1
    assert "site 'busy' holds studies: it cannot be removed" in refused.stderr
    assert "busy" in _run(env, "list").stdout
