"""Orphan sweep: objects without index rows (a crash between blob and index) are found and removed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from dicomfiles import ct_dataset, multipart_body, to_part10

from dicomweb_server.config import Settings
from dicomweb_server.index.sqlite import SqliteInstanceIndex
from dicomweb_server.services.maintenance import sweep_orphans
from dicomweb_server.storage.filesystem import FilesystemBlobStore


async def _chunks(data: bytes):  # type: ignore[no-untyped-def]
    yield data


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)  # ages are set on files
async def test_sweep_removes_only_old_unreferenced_instance_objects(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    body, content_type = multipart_body([to_part10(ct_dataset())])
    assert (
        await client.post("/studies", content=body, headers={"Content-Type": content_type})
    ).status_code == 200
    blobs = FilesystemBlobStore(settings.data_dir / "objects")
    index = await SqliteInstanceIndex.open(settings.data_dir / "index.sqlite")
    try:
        old_orphan = "default/1.2.3/1.2.3.4/1.2.3.4.5/" + "ab" * 16 + ".dcm"
        new_orphan = "default/1.2.3/1.2.3.4/1.2.3.4.6/" + "cd" * 16 + ".dcm"
        cache = "default/cache/1.2.3/frame.bin"
        for key in (old_orphan, new_orphan, cache):
            await blobs.put(key, _chunks(b"x" * 10))
        old = time.time() - 7200
        os.utime(settings.data_dir / "objects" / old_orphan, (old, old))
        os.utime(settings.data_dir / "objects" / cache, (old, old))

        dry = await sweep_orphans(index, blobs, min_age_seconds=3600, dry_run=True)
        assert dry.orphans == [old_orphan] and dry.deleted == 0
        report = await sweep_orphans(index, blobs, min_age_seconds=3600)
        assert (report.examined, report.referenced, report.too_recent, report.deleted) == (
            3,
            1,
            1,
            1,
        )
        assert report.freed_bytes == 10
        remaining = {info.key async for info in blobs.iter_objects()}
        assert old_orphan not in remaining and {new_orphan, cache} <= remaining
    finally:
        await index.close()
    assert len((await client.get("/instances")).json()) == 1


def test_sweep_command(tmp_path: Path) -> None:
    orphan = tmp_path / "objects" / "default/1.2/1.2.3/1.2.3.4" / ("ef" * 16 + ".dcm")
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"left behind by a crash")
    old = time.time() - 7200
    os.utime(orphan, (old, old))
    command = [
        sys.executable,
        "-m",
        "dicomweb_server",
        "sweep-orphans",
        "--data-dir",
        str(tmp_path),
    ]
    result = subprocess.run([*command, "--dry-run"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "would delete" in result.stdout and orphan.exists()
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert "1 orphaned" in result.stdout and not orphan.exists()
