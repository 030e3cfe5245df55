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
