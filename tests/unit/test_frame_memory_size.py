"""DICOMWEB_FRAME_MEMORY_CACHE_BYTES=auto (issue 22): frame memory scaled to the machine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dicomweb_server.config import Settings, SettingsError, machine_memory_bytes

MIB = 1 << 20
GIB = 1 << 30


def test_issue22_auto_is_an_eighth_of_memory_shared_by_the_workers() -> None:
    assert Settings().frame_memory_cache_bytes == "auto"
    assert Settings(workers=2).frame_memory_bytes(8 * GIB) == 512 * MIB
    assert Settings(workers=4).frame_memory_bytes(8 * GIB) == 256 * MIB


def test_issue22_auto_is_bounded_per_worker() -> None:
    assert Settings(workers=2).frame_memory_bytes(512 * MIB) == 64 * MIB  # a small container
    assert Settings(workers=1).frame_memory_bytes(256 * GIB) == GIB  # a large machine


def test_issue22_auto_with_one_worker_per_core() -> None:
    cores = os.cpu_count() or 1
    assert Settings(workers=0).frame_memory_bytes(cores * 8 * GIB) == GIB
    assert Settings(workers=0).frame_memory_bytes(cores * GIB) == 128 * MIB


def test_issue22_a_number_is_used_as_given() -> None:
    assert Settings(frame_memory_cache_bytes=0).frame_memory_bytes(64 * GIB) == 0
    assert Settings(frame_memory_cache_bytes=5 * MIB).frame_memory_bytes(64 * GIB) == 5 * MIB
    assert Settings.from_env(frame_memory_cache_bytes="12345").frame_memory_bytes() == 12345


@pytest.mark.parametrize("value", ["lots", "-1"])
def test_issue22_a_bad_value_names_the_variable_and_auto(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DICOMWEB_FRAME_MEMORY_CACHE_BYTES", value)
    with pytest.raises(SettingsError) as raised:
        Settings.from_env()
    message = str(raised.value)
    assert message.startswith("DICOMWEB_FRAME_MEMORY_CACHE_BYTES must ")
    assert "(or 'auto')" in message and repr(value) in message


def test_issue22_machine_memory_takes_the_container_limit(tmp_path: Path) -> None:
    physical = machine_memory_bytes(())
    assert physical > 0
    v2, v1 = tmp_path / "memory.max", tmp_path / "memory.limit_in_bytes"
    v2.write_text("max\n")  # cgroup v2 without a limit
    v1.write_text(f"{physical * 4}\n")  # v1 says "no limit" with a huge number
    assert machine_memory_bytes((v2, v1)) == physical
    v2.write_text(f"{2 * GIB}\n")
    assert machine_memory_bytes((v2, v1)) == min(physical, 2 * GIB)
    assert machine_memory_bytes((tmp_path / "absent",)) == physical
