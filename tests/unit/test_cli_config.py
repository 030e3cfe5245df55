"""`dicomweb-server config` and README's configuration table (issue 21): one source for both."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomweb_server.cli import main
from dicomweb_server.cli.config import ROWS, markdown_table, masked, readme_table
from dicomweb_server.config import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_issue21_readme_configuration_table_is_the_generated_one() -> None:
    assert readme_table(README) == markdown_table(), (
        "README.md's configuration table differs from the settings: run"
        " `python tools/settings_table.py`"
    )


def test_issue21_every_setting_is_documented_exactly_once() -> None:
    documented = [name for row in ROWS for name in row.names]
    assert sorted(documented) == sorted(Settings.model_fields)
    assert all(row.meaning for row in ROWS)


def test_issue21_secrets_and_url_passwords_are_masked() -> None:
    assert masked("database_url", "postgresql://dicomweb:hunter2@db:5432/x") == (
        "postgresql://dicomweb:****@db:5432/x"
    )
    assert masked("database_url", "postgresql://db/x?user=u&password=hunter2&sslmode=require") == (
        "postgresql://db/x?user=u&password=****&sslmode=require"
    )
    assert masked("oidc_client_secret", "abc") == "****"
    assert masked("api_token", "abc") == "****"
    assert masked("max_token_bytes", 8192) == "8192"  # a number, not a secret
    assert masked("storage_url", "s3://bucket/prefix") == "s3://bucket/prefix"
    assert masked("database_url", "") == ""


def test_issue21_config_prints_each_setting_default_and_value(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(__import__("os").environ):
        if name.startswith("DICOMWEB_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DICOMWEB_DATABASE_URL", "postgresql://u:hunter2@db/x")
    monkeypatch.setenv("DICOMWEB_WORKERS", "3")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "never-shown")
    assert main(["config"]) == 0
    output = capsys.readouterr().out
    assert "hunter2" not in output and "never-shown" not in output
    lines = {line[2:].split()[0]: line for line in output.splitlines()[1:]}
    assert set(lines) == {f"DICOMWEB_{name.upper()}" for name in Settings.model_fields}
    assert lines["DICOMWEB_WORKERS"].startswith("* ")  # changed from its default
    assert lines["DICOMWEB_WORKERS"].split()[-2:] == ["0", "3"]
    assert lines["DICOMWEB_DATABASE_URL"].endswith("postgresql://u:****@db/x")
    assert lines["DICOMWEB_PORT"].startswith("  ")
    # auto frame memory: what it comes to on this machine with these 3 workers (issue 22)
    resolved = Settings(workers=3).frame_memory_bytes()
    assert lines["DICOMWEB_FRAME_MEMORY_CACHE_BYTES"].startswith("  ")  # the default
    assert lines["DICOMWEB_FRAME_MEMORY_CACHE_BYTES"].endswith(f"auto: {resolved} per worker here")


def test_issue21_config_markdown_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--markdown"]) == 0
    assert capsys.readouterr().out == markdown_table()
