"""Settings.check and field validation: a setting that cannot work is one readable line."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomweb_server.config import Settings, SettingsError


def test_a_certificate_that_is_not_pem_is_one_line_before_serving(tmp_path: Path) -> None:
    garbage = tmp_path / "bad.pem"
    garbage.write_text("garbage\n")
    settings = Settings(ssl_certfile=str(garbage), ssl_keyfile=str(garbage))
    with pytest.raises(SettingsError, match=r"DICOMWEB_SSL_CERTFILE .* not a PEM certificate"):
        settings.check()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("base_url", "notaurl"),
        ("base_url", "ftp://x/y"),
        ("base_url", "https://pacs.example.org/dicomweb?x=1"),
        ("cors_origins", "not an origin"),
        ("cors_write_origins", "https://a.example/path"),
    ],
)
def test_a_url_or_origin_setting_that_is_not_one_is_one_line(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=f"^DICOMWEB_{name.upper()} must .*, got"):
        Settings.from_env(**{name: value})


def test_urls_and_origins_in_use_are_accepted() -> None:
    settings = Settings.from_env(
        base_url="https://PACS.example.org:443/dicomweb",
        cors_origins="https://viewer.example.org, http://localhost:3000/, http://[::1]:8080",
        cors_write_origins="*",
    )
    assert settings.root_url == "https://PACS.example.org:443/dicomweb"
    assert Settings.from_env(cors_origins="", base_url="").cors_origins == ""


def test_webhook_secret_variables_are_not_warned_about_but_misspellings_are() -> None:
    from dicomweb_server.config import unknown_variables

    warnings = unknown_variables(
        {
            "DICOMWEB_WEBHOOK_SECRET": "x",
            "DICOMWEB_WEBHOOK_SECRET_AI": "y",
            "DICOMWEB_WEBHOOK_CONCURENCY": "4",
        }
    )
    assert len(warnings) == 1
    assert warnings[0].startswith("DICOMWEB_WEBHOOK_CONCURENCY is not a setting")
