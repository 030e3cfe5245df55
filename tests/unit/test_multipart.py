"""Tests for the streaming multipart/related reader and writer and media type parsing."""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Iterator
from contextlib import aclosing, contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dicomweb_server.errors import MalformedRequestError, PayloadTooLargeError
from dicomweb_server.services.spool import Spool
from dicomweb_server.web import multipart
from dicomweb_server.web.multipart import (
    MultipartPart,
    iter_multipart,
    iter_parts,
    multipart_content_type,
    new_boundary,
    parse_media_type,
)

BOUNDARY = "b0undary-XYZ"
T = TypeVar("T")
Part = tuple[dict[str, str], bytes]


async def _iter_chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    """Deliver `data` in fixed-size chunks, as a request body would arrive."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def _iter_pieces(pieces: Iterable[bytes]) -> AsyncIterator[bytes]:
    """Deliver exactly the given chunks, for cuts at chosen places."""
    for piece in pieces:
        yield piece


async def _read(
    chunks: AsyncIterator[bytes],
    boundary: str = BOUNDARY,
    *,
    max_part_size: int = 1 << 30,
    max_parts: int = 10_000,
    max_header_size: int = 16384,
    spool_memory: int = 1 << 20,
    max_boundary_length: int = 256,
) -> list[Part]:
    """Read every part back as (headers, body), closing each one."""
    result = []
    parts = _as_generator(
        iter_parts(
            chunks,
            boundary,
            max_part_size=max_part_size,
            max_parts=max_parts,
            max_header_size=max_header_size,
            spool_memory=spool_memory,
            max_boundary_length=max_boundary_length,
        )
    )
    async with aclosing(parts):
        async for part in parts:
            try:
                body = part.file.read()
                assert len(body) == part.size
                assert part.content_type == part.headers.get("content-type")
                result.append((part.headers, body))
            finally:
                part.close()
    return result


async def _write(parts: list[Part], boundary: str = BOUNDARY, body_chunk: int = 1000) -> bytes:
    """Serialize parts with iter_multipart, each body split into `body_chunk`-byte chunks."""

    async def iter_source() -> AsyncIterator[tuple[dict[str, str], AsyncIterator[bytes]]]:
        for headers, body in parts:
            yield headers, _iter_chunks(body, body_chunk)

    return b"".join([chunk async for chunk in iter_multipart(iter_source(), boundary)])


def _as_generator(items: AsyncIterator[T]) -> AsyncGenerator[T, None]:
    """Narrow an iter_ function's result so a test can close it early, as a caller may."""
    assert isinstance(items, AsyncGenerator)
    return items


def _lower(parts: list[Part]) -> list[Part]:
    """What the reader should return for `parts`: header names lower-cased."""
    return [({k.lower(): v for k, v in headers.items()}, body) for headers, body in parts]


def _payload(size: int, seed: int) -> bytes:
    """Deterministic bytes sprinkled with delimiter look-alikes."""
    pattern = bytes((seed * 31 + i * 7) % 256 for i in range(251)) + b"\r\n--b0undary-XY\r\n--"
    return (pattern * (size // len(pattern) + 1))[:size]


def _on_disk(part: MultipartPart) -> bool:
    """Whether the part's spool rolled over to a temporary file."""
    return not part.file.in_memory


# parse_media_type


def test_parse_media_type_quoted_and_unquoted_params() -> None:
    header = 'Multipart/Related; type="application/dicom"; Boundary=abc-123'
    assert parse_media_type(header) == (
        "multipart/related",
        {"type": "application/dicom", "boundary": "abc-123"},
    )


def test_parse_media_type_quoted_value_with_separators_and_escapes() -> None:
    header = r'multipart/related ;boundary="a;b,c d" ; x="say \"hi\" \\ ok" ;transfer-syntax=1.2.3'
    media_type, params = parse_media_type(header)
    assert media_type == "multipart/related"
    assert params == {"boundary": "a;b,c d", "x": 'say "hi" \\ ok', "transfer-syntax": "1.2.3"}


def test_parse_media_type_keeps_value_case_and_tolerates_empty_params() -> None:
    assert parse_media_type("  application/DICOM ;; q=0.5; ") == ("application/dicom", {"q": "0.5"})
    assert parse_media_type('text/plain; a=""') == ("text/plain", {"a": ""})
    assert parse_media_type("*/*") == ("*/*", {})


@pytest.mark.parametrize(
    "header",
    [
        "",
        "   ",
        "multipart",
        "multipart/",
        "/related",
        "multi part/related",
        "multipart/related boundary=x",
        "multipart/related; boundary",
        "multipart/related; boundary=",
        'multipart/related; boundary="unterminated',
        "multipart/related; boundary=a b",
        "multipart/related; boundary=x; Boundary=y",
        "application/dicom, application/json",
        'multipart/related; x="bad\x01char"',
    ],
)
def test_parse_media_type_rejects_garbage(header: str) -> None:
    with pytest.raises(MalformedRequestError, match="media type"):
        parse_media_type(header)


# Writer


def test_multipart_content_type() -> None:
    assert multipart_content_type("application/dicom", "XYZ") == (
        'multipart/related; type="application/dicom"; boundary=XYZ'
    )
    assert multipart_content_type("application/octet-stream", "XYZ", "1.2.840.10008.1.2.1") == (
        'multipart/related; type="application/octet-stream"; boundary=XYZ;'
        " transfer-syntax=1.2.840.10008.1.2.1"
    )


def test_multipart_content_type_quotes_a_non_token_boundary_and_round_trips() -> None:
    value = multipart_content_type("application/dicom", "a:b=c?")
    assert value.endswith('boundary="a:b=c?"')
    assert parse_media_type(value)[1]["boundary"] == "a:b=c?"


def test_new_boundary_is_random_and_valid() -> None:
    boundaries = {new_boundary() for _ in range(100)}
    assert len(boundaries) == 100
    assert all(1 <= len(boundary) <= 70 for boundary in boundaries)


async def test_iter_multipart_exact_bytes() -> None:
    data = await _write([({"Content-Type": "application/dicom"}, b"abc"), ({}, b"")], "XYZ")
    assert data == (
        b"--XYZ\r\nContent-Type: application/dicom\r\n\r\nabc\r\n--XYZ\r\n\r\n\r\n--XYZ--\r\n"
    )


async def test_iter_multipart_without_parts_yields_only_the_close_delimiter() -> None:
    assert await _write([], "XYZ") == b"--XYZ--\r\n"


async def test_iter_multipart_refuses_header_injection() -> None:
    with pytest.raises(ValueError, match="header"):
        await _write([({"Content-Type": "a/b\r\nX-Evil: 1"}, b"")])
    with pytest.raises(ValueError, match="header"):
        await _write([({"Bad Name": "x"}, b"")])


@pytest.mark.parametrize("boundary", ["", "x" * 71, "a\r\nb"])
async def test_iter_multipart_refuses_an_invalid_boundary(boundary: str) -> None:
    with pytest.raises(ValueError, match="boundary"):
        await _write([], boundary)


async def test_iter_multipart_passes_body_chunks_through_and_closes_bodies() -> None:
    chunks = [b"a" * 1000, b"", b"b" * 2000]
    finished = []

    async def iter_body() -> AsyncIterator[bytes]:
        try:
            for chunk in chunks:
                yield chunk
        finally:
            finished.append(True)

    async def iter_source() -> AsyncIterator[tuple[dict[str, str], AsyncIterator[bytes]]]:
        yield {}, iter_body()

    out = _as_generator(iter_multipart(iter_source(), "XYZ"))
    async with aclosing(out):
        assert await anext(out) == b"--XYZ\r\n\r\n"
        assert await anext(out) is chunks[0]
    # The consumer stopped mid-body: the body stream was closed, not left to the GC.
    assert finished == [True]


# Round trips


@pytest.mark.parametrize("count", [1, 2, 3, 17, 200])
@pytest.mark.parametrize("chunk_size", [1, 7, 64 * 1024])
async def test_round_trip(count: int, chunk_size: int) -> None:
    if chunk_size < 1024:
        count = min(count, 17)  # tiny chunks are slow to deliver; 17 parts already cover them
    sizes = [0, 1, 2, 100, 4097, 70_000]
    parts: list[Part] = [
        (
            {"Content-Type": "application/dicom", "Content-Location": f"/instances/{i}"},
            _payload(sizes[i % len(sizes)], i),
        )
        for i in range(count)
    ]
    data = await _write(parts)
    assert await _read(_iter_chunks(data, chunk_size)) == _lower(parts)


@pytest.mark.parametrize("cut", range(0, 40))
async def test_boundary_split_across_chunks_at_every_offset(cut: int) -> None:
    parts: list[Part] = [({"A": "1"}, b"first"), ({"B": "2"}, b"second")]
    data = await _write(parts)
    # Cuts every few bytes around the first inter-part delimiter.
    middle = data.index(b"\r\n--" + BOUNDARY.encode(), 5)
    pieces = [
        data[: middle + cut - 20],
        data[middle + cut - 20 : middle + cut],
        data[middle + cut :],
    ]
    assert await _read(_iter_pieces(pieces)) == _lower(parts)


async def test_empty_chunks_are_ignored() -> None:
    parts: list[Part] = [({}, b"x")]
    data = await _write(parts)
    pieces = [b"", *[data[i : i + 3] for i in range(0, len(data), 3)], b""]
    pieces = [piece for chunk in pieces for piece in (chunk, b"")]
    assert await _read(_iter_pieces(pieces)) == parts


@pytest.mark.parametrize(
    "body",
    [
        b"\r\n--b0undar",
        b"\r\n--b0undary-XY",
        b"\r\n--b0undary-X\r\n--b0undary-X",
        b"--b0undary-XYZ",  # no leading CRLF: not a delimiter inside a body
        b"\n--b0undary-XYZ",
        b"\r--b0undary-XYZ",
        b"\r\n-b0undary-XYZ",
        b"\r\r\n\r\n--",
        b"\r",
        b"\r\n",
        b"\r\n\r\n",
    ],
)
@pytest.mark.parametrize("chunk_size", [1, 7, 64 * 1024])
async def test_body_with_near_delimiter_text(body: bytes, chunk_size: int) -> None:
    parts: list[Part] = [({}, body), ({}, body + b"tail"), ({}, b"head" + body)]
    data = await _write(parts)
    assert await _read(_iter_chunks(data, chunk_size)) == parts


@pytest.mark.parametrize("chunk_size", [1, 7, 64 * 1024])
async def test_preamble_epilogue_and_transport_padding(chunk_size: int) -> None:
    data = (
        b"This is a preamble, with --b0undary-XYZ not after a CRLF.\r\n"
        b"--b0undary-XYZ \t \r\nContent-Type: text/plain\r\n\r\none"
        b"\r\n--b0undary-XYZ\t\r\n\r\ntwo"
        b"\r\n--b0undary-XYZ--  \r\nThis is the epilogue\r\n--b0undary-XYZ junk \x00\xff"
    )
    assert await _read(_iter_chunks(data, chunk_size)) == [
        ({"content-type": "text/plain"}, b"one"),
        ({}, b"two"),
    ]


async def test_first_delimiter_after_crlf_preamble() -> None:
    data = b"\r\n--b0undary-XYZ\r\n\r\nx\r\n--b0undary-XYZ--"
    assert await _read(_iter_chunks(data, 3)) == [({}, b"x")]


async def test_reading_stops_at_the_close_delimiter() -> None:
    consumed = []

    async def iter_tracked() -> AsyncIterator[bytes]:
        for piece in [b"--b0undary-XYZ\r\n\r\nx\r\n--b0undary-XYZ--\r\n", b"epilogue", b"more"]:
            consumed.append(piece)
            yield piece

    assert await _read(iter_tracked()) == [({}, b"x")]
    assert len(consumed) == 1


async def test_part_headers_are_parsed() -> None:
    data = (
        b"--b0undary-XYZ\r\n"
        b"Content-Type:application/dicom\r\n"
        b"X-Folded: first\r\n \t second\r\n"
        b"X-Twice: a\r\nx-twice: b\r\n"
        b"Content-Location:   /studies/1.2.3  \r\n"
        b"X-Latin: caf\xe9\r\n"
        b"\r\nbody\r\n--b0undary-XYZ--"
    )
    [(headers, body)] = await _read(_iter_chunks(data, 5))
    assert headers == {
        "content-type": "application/dicom",
        "x-folded": "first second",
        "x-twice": "a, b",
        "content-location": "/studies/1.2.3",
        "x-latin": "café",
    }
    assert body == b"body"


async def test_part_larger_than_spool_memory_goes_to_disk(tmp_path: Path) -> None:
    body = os.urandom(300_000)
    data = await _write([({}, body), ({}, b"small")])
    parts = _as_generator(
        iter_parts(
            _iter_chunks(data, 8192),
            BOUNDARY,
            max_part_size=1 << 20,
            max_parts=10,
            spool_memory=1024,
            spool_dir=str(tmp_path),
        )
    )
    async with aclosing(parts):
        big = await anext(parts)
        try:
            assert _on_disk(big)
            assert big.size == len(body)
            assert big.file.tell() == 0
            assert big.file.read() == body
        finally:
            big.close()
        small = await anext(parts)
        try:
            assert not _on_disk(small)
            assert small.file.read() == b"small"
        finally:
            small.close()
        with pytest.raises(StopAsyncIteration):
            await anext(parts)


async def test_part_of_exactly_the_size_limit_is_accepted() -> None:
    parts: list[Part] = [({}, b"x" * 100)]
    data = await _write(parts)
    assert await _read(_iter_chunks(data, 7), max_part_size=100) == parts


async def test_exactly_max_parts_is_accepted() -> None:
    parts: list[Part] = [({}, b"p")] * 5
    data = await _write(parts)
    assert await _read(_iter_chunks(data, 7), max_parts=5) == parts


async def test_header_block_of_exactly_max_header_size_is_accepted() -> None:
    line = b"X: " + b"v" * 97  # a 100-byte header block
    data = b"--b0undary-XYZ\r\n" + line + b"\r\n\r\nbody\r\n--b0undary-XYZ--"
    assert await _read(_iter_chunks(data, 7), max_header_size=100) == [({"x": "v" * 97}, b"body")]


# Errors


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "contains no parts"),
        (b"--b0undary-XYZ--\r\n", "contains no parts"),
        (b"preamble only, no delimiter at all", "no delimiter"),
        (b"--other\r\n\r\nx\r\n--other--", "no delimiter"),
        (b"--b0undary-XYZ", "ends before the close delimiter"),
        (b"--b0undary-XYZ-", "ends before the close delimiter"),
        (b"--b0undary-XYZ\r\n", "ends before the close delimiter"),
        (b"--b0undary-XYZ\r\nA: b\r\n", "ends before the close delimiter"),
        (b"--b0undary-XYZ\r\n\r\nbody", "ends before the close delimiter"),
        (b"--b0undary-XYZ\r\n\r\nbody\r\n--b0undary-XYZ", "ends before the close delimiter"),
        (b"--b0undary-XYZ\r\n\r\nbody\r\n--b0undary-XYZ\r\n", "ends before the close delimiter"),
        (b"--b0undary-XYZX\r\n\r\nbody\r\n--b0undary-XYZ--", "is followed by"),
        (b"--b0undary-XYZ \t x\r\n\r\nbody\r\n--b0undary-XYZ--", "is followed by"),
        (b"--b0undary-XYZ\n\nbody\r\n--b0undary-XYZ--", "is followed by"),
        (b"--b0undary-XYZ\r\nno colon\r\n\r\nx\r\n--b0undary-XYZ--", "expected 'Name: value'"),
        (b"--b0undary-XYZ\r\n: empty\r\n\r\nx\r\n--b0undary-XYZ--", "expected 'Name: value'"),
        (b"--b0undary-XYZ\r\nA b: c\r\n\r\nx\r\n--b0undary-XYZ--", "expected 'Name: value'"),
        (b"--b0undary-XYZ\r\n folded: c\r\n\r\nx\r\n--b0undary-XYZ--", "continuation line"),
        (b"--b0undary-XYZ\r\nA: b\nC: d\r\n\r\nx\r\n--b0undary-XYZ--", "control character"),
        (b"--b0undary-XYZ\r\nA: b\x00\r\n\r\nx\r\n--b0undary-XYZ--", "control character"),
    ],
)
@pytest.mark.parametrize("chunk_size", [1, 7, 64 * 1024])
async def test_malformed_bodies(data: bytes, reason: str, chunk_size: int) -> None:
    with pytest.raises(MalformedRequestError, match=reason):
        await _read(_iter_chunks(data, chunk_size))


@pytest.mark.parametrize("boundary", ["", "x" * 257, "trailing ", "caf\xe9", "a\r\nb", "a\x00"])
async def test_invalid_boundary(boundary: str) -> None:
    with pytest.raises(MalformedRequestError, match="boundary"):
        await _read(_iter_chunks(b"--x\r\n\r\n\r\n--x--", 64), boundary)


# Orthanc's DICOMweb plugin joins two UUIDs: 73 characters, over RFC 2046's 70.
ORTHANC_BOUNDARY = "568d6587-b4be-4912-919f-4a6cae7e9da1-568d6587-b4be-4912-919f-4a6cae7e9da1"


@pytest.mark.parametrize("boundary", ["x" * 71, ORTHANC_BOUNDARY, "y" * 255 + "z"])
async def test_boundaries_longer_than_rfc_2046_are_read_up_to_the_limit(boundary: str) -> None:
    marker = b"--" + boundary.encode()
    data = marker + b"\r\nA: 1\r\n\r\nfirst\r\n" + marker + b"\r\n\r\nsecond\r\n" + marker + b"--"
    for chunk_size in (1, 7, 64 * 1024):
        parts = await _read(_iter_chunks(data, chunk_size), boundary)
        assert parts == [({"a": "1"}, b"first"), ({}, b"second")]


@pytest.mark.parametrize(
    ("boundary", "limit", "reason"),
    [
        ("x" * 257, 256, "multipart boundary of 257 characters is longer than the limit of 256"),
        (
            ORTHANC_BOUNDARY,
            72,
            "multipart boundary of 73 characters is longer than the limit of 72",
        ),
    ],
)
async def test_a_boundary_over_the_limit_is_refused_naming_the_limit(
    boundary: str, limit: int, reason: str
) -> None:
    marker = b"--" + boundary.encode()
    data = marker + b"\r\n\r\nbody\r\n" + marker + b"--"
    with pytest.raises(MalformedRequestError, match=reason):
        await _read(_iter_chunks(data, 64), boundary, max_boundary_length=limit)


@pytest.mark.parametrize("boundary", ["x", "x" * 70, "a b", "'()+_,-./:=?"])
async def test_valid_boundary_extremes(boundary: str) -> None:
    parts: list[Part] = [({}, b"body")]
    data = await _write(parts, boundary)
    assert await _read(_iter_chunks(data, 3), boundary) == parts


@pytest.mark.parametrize("chunk_size", [1, 7, 64 * 1024])
async def test_headers_larger_than_max_header_size(chunk_size: int) -> None:
    data = await _write([({"X": "v" * 200}, b"body")])
    with pytest.raises(MalformedRequestError, match="headers are larger than 100 bytes"):
        await _read(_iter_chunks(data, chunk_size), max_header_size=100)


async def test_unterminated_header_block_is_bounded() -> None:
    async def iter_endless() -> AsyncIterator[bytes]:
        yield b"--b0undary-XYZ\r\nX: "
        while True:
            yield b"v" * 1000

    with pytest.raises(MalformedRequestError, match="headers are larger"):
        await _read(iter_endless())


async def test_endless_transport_padding_is_bounded() -> None:
    async def iter_endless() -> AsyncIterator[bytes]:
        yield b"--b0undary-XYZ"
        while True:
            yield b" " * 1000

    with pytest.raises(MalformedRequestError, match="boundary line is longer"):
        await _read(iter_endless())


@pytest.mark.parametrize("chunk_size", [1, 7, 64 * 1024])
async def test_part_larger_than_max_part_size(chunk_size: int) -> None:
    data = await _write([({}, b"ok"), ({}, b"x" * 101)])
    with pytest.raises(PayloadTooLargeError, match="part 2 is larger than the limit of 100 bytes"):
        await _read(_iter_chunks(data, chunk_size), max_part_size=100)


async def test_oversized_part_fails_before_the_body_ends() -> None:
    async def iter_endless() -> AsyncIterator[bytes]:
        yield b"--b0undary-XYZ\r\n\r\n"
        while True:
            yield b"x" * 1000

    with pytest.raises(PayloadTooLargeError, match="limit of 10000 bytes"):
        await _read(iter_endless(), max_part_size=10_000)


@pytest.mark.parametrize("chunk_size", [1, 7, 64 * 1024])
async def test_more_than_max_parts(chunk_size: int) -> None:
    data = await _write([({}, b"p")] * 6)
    with pytest.raises(PayloadTooLargeError, match="more parts than the limit of 5"):
        await _read(_iter_chunks(data, chunk_size), max_parts=5)


@contextmanager
def _track_spools() -> Iterator[list[Spool]]:
    """Record every spool the reader opens, to check that none is left open."""
    created: list[Spool] = []

    def factory(*args: Any, **kwargs: Any) -> Spool:
        spool = Spool(*args, **kwargs)
        created.append(spool)
        return spool

    patch = pytest.MonkeyPatch()
    patch.setattr(multipart, "Spool", factory)
    try:
        yield created
    finally:
        patch.undo()


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"--b0undary-XYZ\r\n\r\n" + b"x" * 3000, MalformedRequestError),
        (b"--b0undary-XYZ\r\n\r\n" + b"x" * 5000 + b"\r\n--b0undary-XYZ--", PayloadTooLargeError),
        (b"--b0undary-XYZ\r\n\r\nx\r\n--b0undary-XYZ\r\n\r\n" + b"y" * 300, MalformedRequestError),
    ],
)
async def test_reader_closes_unyielded_part_on_failure(data: bytes, error: type[Exception]) -> None:
    with _track_spools() as spools, pytest.raises(error):
        await _read(_iter_chunks(data, 1000), max_part_size=4000, spool_memory=100)
    assert spools
    assert all(spool.closed for spool in spools)


async def test_reader_closes_in_progress_part_when_the_body_stream_fails() -> None:
    data = await _write([({}, b"a"), ({}, b"b" * 10_000), ({}, b"c")])

    async def iter_disconnecting() -> AsyncIterator[bytes]:
        yield data[:5000]  # the first part and half of the second
        raise ConnectionResetError("client went away")

    with _track_spools() as spools, pytest.raises(ConnectionResetError):
        await _read(iter_disconnecting(), spool_memory=10)
    assert len(spools) == 2
    assert all(spool.closed for spool in spools)


async def test_reader_closes_nothing_it_yielded_when_consumer_stops() -> None:
    data = await _write([({}, b"a"), ({}, b"b" * 10_000)])
    parts = _as_generator(
        iter_parts(_iter_pieces([data]), BOUNDARY, max_part_size=1 << 20, max_parts=10)
    )
    first = await anext(parts)
    await parts.aclose()
    try:
        assert not first.file.closed
        assert first.file.read() == b"a"
    finally:
        first.close()


async def test_yielded_parts_stay_open_after_a_later_failure() -> None:
    data = b"--b0undary-XYZ\r\n\r\nfirst\r\n--b0undary-XYZ\r\n\r\nunterminated"
    held = []
    with pytest.raises(MalformedRequestError, match="ends before"):
        async for part in iter_parts(
            _iter_pieces([data]), BOUNDARY, max_part_size=100, max_parts=10
        ):
            held.append(part)
    try:
        assert len(held) == 1
        assert held[0].file.read() == b"first"
    finally:
        for part in held:
            part.close()


# Properties

_header_names = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_", min_size=1
)
_header_values = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E)).map(
    lambda value: value.strip(" ")
)
_fragments = [
    b"\r",
    b"\n",
    b"\r\n",
    b"-",
    b"--",
    b"\r\n--",
    b"b0undary",
    b"b0undary-XY",
    b"\r\n\r\n",
]
_bodies = st.lists(st.one_of(st.binary(max_size=40), st.sampled_from(_fragments)), max_size=12).map(
    b"".join
)
_part_lists = st.lists(
    st.tuples(
        st.dictionaries(_header_names, _header_values, max_size=3).filter(
            lambda headers: len({name.lower() for name in headers}) == len(headers)
        ),
        _bodies.filter(lambda body: b"\r\n--b0undary-XYZ" not in body),
    ),
    max_size=8,
)


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    """Split `data` at the given offsets (taken modulo its length)."""
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    return [data[start:end] for start, end in itertools.pairwise(points)]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=_part_lists, cuts=st.lists(st.integers(min_value=0), max_size=20))
async def test_property_round_trip(parts: list[Part], cuts: list[int]) -> None:
    data = await _write(parts, body_chunk=5)
    if not parts:
        with pytest.raises(MalformedRequestError, match="contains no parts"):
            await _read(_iter_pieces(_cut(data, cuts)))
        return
    assert await _read(_iter_pieces(_cut(data, cuts))) == _lower(parts)


_garbage_fragments = [
    b"--b0undary-XYZ",
    b"--b0undary-XYZ--",
    b"\r\n--b0undary-XYZ",
    b"\r\n",
    b"\r\n\r\n",
    b"Content-Type: a/b",
    b":",
    b" ",
    b"\t",
    b"-",
    b"\x00",
]
_garbage = st.lists(
    st.one_of(st.binary(max_size=30), st.sampled_from(_garbage_fragments)), max_size=30
).map(b"".join)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_garbage, cuts=st.lists(st.integers(min_value=0), max_size=10))
async def test_property_garbage_raises_only_request_errors(data: bytes, cuts: list[int]) -> None:
    with _track_spools() as spools, suppress(MalformedRequestError, PayloadTooLargeError):
        await _read(
            _iter_pieces(_cut(data, cuts)),
            max_part_size=40,
            max_parts=3,
            max_header_size=40,
            spool_memory=16,
        )
    assert all(spool.closed for spool in spools)


@settings(max_examples=200, deadline=None)
@given(header=st.text(max_size=60))
def test_property_parse_media_type_raises_only_malformed(header: str) -> None:
    try:
        media_type, params = parse_media_type(header)
    except MalformedRequestError:
        return
    assert media_type == media_type.lower()
    assert all(name == name.lower() for name in params)


@settings(max_examples=200, deadline=None)
@given(
    params=st.dictionaries(
        st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1),
        st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E)),
        max_size=4,
    )
)
def test_property_parse_media_type_round_trips_quoted_values(params: dict[str, str]) -> None:
    escaped = {
        name: value.replace("\\", "\\\\").replace('"', '\\"') for name, value in params.items()
    }
    header = "multipart/related" + "".join(f'; {name}="{value}"' for name, value in escaped.items())
    assert parse_media_type(header) == ("multipart/related", params)


async def test_body_bytes_stay_views_of_the_chunks_that_hold_delimiters() -> None:
    """A chunk that holds a delimiter is not copied into the reader's buffer: each part keeps
    views of the chunks it arrived in (only header blocks and delimiter ends are copied)."""
    bodies = [bytes([n]) * 20_000 for n in range(1, 4)]
    data = b""
    for body in bodies:
        data += b"--b\r\nContent-Type: application/dicom\r\n\r\n" + body + b"\r\n"
    data += b"--b--\r\n"
    chunks = [data[:30_000], data[30_000:]]

    async def stream() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    parts = [
        p async for p in multipart.iter_parts(stream(), "b", max_part_size=1 << 20, max_parts=9)
    ]
    try:
        assert [p.file.read() for p in parts] == bodies
        for part in parts:
            big = [b for b in part.file.buffers() if len(b) > 2_000]
            assert big
            assert all(isinstance(b, memoryview) and b.obj in chunks for b in big)
    finally:
        for part in parts:
            part.close()
