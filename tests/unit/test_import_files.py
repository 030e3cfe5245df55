"""Reading import sources: tar streams walked header by header, with every header bounded."""

from __future__ import annotations

import asyncio
import gzip
import io
import tarfile
import threading
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from dicomweb_server.services.import_files import ReadLimits, iter_file_items, scan_totals
from dicomweb_server.services.importer import ImportItem, ImportStats, Outcome

_LIMITS = ReadLimits(
    max_member_bytes=1 << 30,
    max_archive_bytes=1 << 34,
    spool_memory=1 << 20,
    max_part_bytes=1 << 30,
)
_DICOM = bytes(128) + b"DICM" + bytes(60)  # enough to pass the preamble check


def _items(*paths: Path, limits: ReadLimits = _LIMITS) -> list[ImportItem]:
    async def collect() -> list[ImportItem]:
        found = []
        async for item in iter_file_items(list(paths), limits, None, queue_size=4):
            if item.spool is not None:
                item.spool.close()
            found.append(item)
        return found

    return asyncio.run(collect())


def _header(name: str, size: int, kind: bytes) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.type = kind
    return info.tobuf(format=tarfile.GNU_FORMAT)


def _long_name_bomb(path: Path, declared: int) -> None:
    """A GNU long-name header declaring `declared` bytes of name, then one small member:
    gzip makes it about a thousandth of that on disk."""
    with gzip.open(path, "wb", compresslevel=1) as out:
        out.write(_header("././@LongLink", declared, tarfile.GNUTYPE_LONGNAME))
        block = b"a" * (1 << 20)
        for start in range(0, declared, len(block)):
            out.write(block[: declared - start])
        out.write(bytes(-declared % 512))
        out.write(_header("x.dcm", len(_DICOM), tarfile.REGTYPE))
        out.write(_DICOM + bytes(-len(_DICOM) % 512) + bytes(1024))


def test_a_long_name_header_of_many_megabytes_stops_the_archive_unread(tmp_path: Path) -> None:
    """tarfile read such a header whole (and copied it): 200 MB of name from a 194 KB
    .tar.gz held 1.3 GB, and 1.5 GB of it crashed the import."""
    bomb = tmp_path / "longname.tar.gz"
    _long_name_bomb(bomb, 64 << 20)
    assert bomb.stat().st_size < 1 << 20

    tracemalloc.start()
    try:
        items = _items(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert peak < 16 << 20, peak
    (item,) = items
    assert item.outcome is Outcome.FAILED and item.label == str(bomb)
    assert "extended headers" in item.reason and "at most 1048576" in item.reason
    assert "the rest is not read" in item.reason


def _pax_tar(path: Path, members: dict[str, bytes], mode: str = "w:gz") -> None:
    with tarfile.open(path, mode, format=tarfile.PAX_FORMAT) as archive:
        folder = tarfile.TarInfo("folder")
        folder.type = tarfile.DIRTYPE
        archive.addfile(folder)
        link = tarfile.TarInfo("link")
        link.type = tarfile.SYMTYPE
        link.linkname = "x" * 300  # a pax linkpath record
        archive.addfile(link)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz", ".tar.bz2", ".tar.xz"])
def test_tar_members_with_long_names_are_read_in_every_compression(
    tmp_path: Path, suffix: str
) -> None:
    archive = tmp_path / f"set{suffix}"
    deep = "/".join(["d" * 90] * 3) + "/IM1"  # over ustar's 100 + 155: a pax path record
    second = _DICOM + b"second"
    mode = {".tar": "w", ".tar.gz": "w:gz", ".tar.bz2": "w:bz2", ".tar.xz": "w:xz"}[suffix]
    _pax_tar(archive, {deep: _DICOM, "ünï/IM2": second, "notes.txt": b"hello"}, mode)

    items = _items(archive)

    assert [(item.label, item.size) for item in items] == [
        (f"{archive}!{deep}", len(_DICOM)),
        (f"{archive}!ünï/IM2", len(second)),
        (f"{archive}!notes.txt", 5),
    ]
    assert [item.outcome for item in items] == [None, None, Outcome.NOT_DICOM]
    stats = ImportStats()
    scan_totals([archive], stats, threading.Event())
    if suffix == ".tar":  # a plain tar is scanned for totals by the same walk
        assert (stats.files_total, stats.bytes_total) == (3, len(_DICOM) + len(second) + 5)


def test_a_name_longer_than_any_path_is_shortened_in_its_label(tmp_path: Path) -> None:
    """Labels go to the journal and the report: a 300 KB pax path is within the header bound,
    but no path; two such names stay two labels."""
    archive = tmp_path / "long.tar"
    first, second = "a" * 300_000, "a" * 299_999 + "b"
    _pax_tar(archive, {first: _DICOM, second: _DICOM + b"2"}, "w")

    labels = [item.label for item in _items(archive)]

    assert len(labels) == 2 and labels[0] != labels[1]
    assert all(len(label) < len(str(archive)) + 300 for label in labels), labels
    assert "(300000 characters, sha256 " in labels[0]


def _bytes_written() -> int:
    """What this process has written so far (a spool past its memory bound is a temp file)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError("no wchar in /proc/self/io")


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux's /proc/self/io")
def test_files_are_refused_by_their_head_and_stows_size_limit_before_they_are_read(
    tmp_path: Path,
) -> None:
    """A 2 GB video was copied whole into a temp spool before its missing 'DICM' refused it,
    and an instance over DICOMWEB_MAX_PART_BYTES, which STOW answers 413, was stored."""
    limits = ReadLimits(
        max_member_bytes=1 << 30, max_archive_bytes=1 << 34, spool_memory=0, max_part_bytes=3000
    )
    source = tmp_path / "in"
    source.mkdir()
    with open(source / "a-video.mp4", "wb") as video:
        video.truncate(256 << 20)  # sparse: costs no disk
    (source / "b-large.dcm").write_bytes(_DICOM + bytes(5000))
    (source / "c-small.dcm").write_bytes(_DICOM)
    with zipfile.ZipFile(source / "d.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("video.mp4", bytes(64 << 20))
        archive.writestr("large.dcm", _DICOM + bytes(5000))
        archive.writestr("small.dcm", _DICOM)
    with tarfile.open(source / "e.tar.gz", "w:gz") as archive:
        for name, data in [("video.mp4", bytes(64 << 20)), ("large.dcm", _DICOM + bytes(5000))]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))

    written = _bytes_written()
    items = _items(source, limits=limits)
    written = _bytes_written() - written

    assert written < 1 << 20, written  # nothing spooled but the small instances
    found = {Path(item.label).name: (item.outcome, item.reason) for item in items}
    too_large = "5192 bytes, over DICOMWEB_MAX_PART_BYTES (3000), the largest instance STOW takes"
    assert found == {
        "a-video.mp4": (Outcome.NOT_DICOM, "not a DICOM Part 10 file (no 'DICM' at byte 128)"),
        "b-large.dcm": (Outcome.FAILED, too_large),
        "c-small.dcm": (None, ""),
        "d.zip!video.mp4": (Outcome.NOT_DICOM, "not a DICOM Part 10 file (no 'DICM' at byte 128)"),
        "d.zip!large.dcm": (Outcome.FAILED, too_large),
        "d.zip!small.dcm": (None, ""),
        "e.tar.gz!video.mp4": (
            Outcome.NOT_DICOM,
            "not a DICOM Part 10 file (no 'DICM' at byte 128)",
        ),
        "e.tar.gz!large.dcm": (Outcome.FAILED, too_large),
    }
