"""The export sinks create every file new and follow no symbolic link in DEST, whatever the
folder held when the export's own check ran (services/export_sinks.py)."""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dicomweb_server.services.export_sinks import FolderSink, SinkWriteError, ZipSink


async def _chunks() -> AsyncIterator[bytes | memoryview]:
    yield b"exported bytes"


async def test_folder_sink_does_not_follow_a_linked_file_or_folder(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "dest"
    root.mkdir()
    (root / "MANIFEST.csv").symlink_to(victim)
    (root / "DICOM").symlink_to(outside, target_is_directory=True)
    sink = FolderSink(root)

    with pytest.raises(SinkWriteError):
        await sink.write_with("MANIFEST.csv", lambda out: out.write(b"path,sha256\n"))
    with pytest.raises(SinkWriteError):
        await sink.write_file("DICOM/P0000001/S0000001/E0000001/I0000001", _chunks(), 14)

    assert victim.read_text() == "precious"
    assert list(outside.iterdir()) == []


async def test_folder_sink_never_writes_over_a_file(tmp_path: Path) -> None:
    sink = FolderSink(tmp_path / "dest")
    name = "DICOM/P0000001/S0000001/E0000001/I0000001"
    size, digest = await sink.write_file(name, _chunks(), 14)
    assert (size, digest) == (14, hashlib.sha256(b"exported bytes").hexdigest())
    await sink.write_file(name.replace("I0000001", "I0000002"), _chunks(), 14)  # same folders
    with pytest.raises(SinkWriteError, match="exists"):
        await sink.write_file(name, _chunks(), 14)


async def test_zip_sink_does_not_follow_a_linked_partial_file(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    dest = tmp_path / "media.zip"
    (tmp_path / "media.zip.partial").symlink_to(victim)
    sink = ZipSink(dest)

    await sink.write_with("DICOMDIR", lambda out: out.write(b"DICM"))
    await sink.close(complete=True)

    assert victim.read_text() == "precious"
    with zipfile.ZipFile(dest) as written:
        assert written.read("DICOMDIR") == b"DICM"
