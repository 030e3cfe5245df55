"""Fuzzing the multipart/related reader (hypothesis): round trips, chunking, garbage."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dicomweb_server.errors import MalformedRequestError, PayloadTooLargeError
from dicomweb_server.web import multipart
from dicomweb_server.web.multipart import iter_parts

FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
BOUNDARY_CHARS = st.sampled_from("abcXYZ0123456789'()+_,-./:=? ")
# Bodies built from pieces that look like framing, so delimiters are nearly hit often.
TRICKY = st.sampled_from([b"\r\n", b"--", b"\r", b"\n", b"-", b"b", b"x", b"\r\n--", b"\0"])
BODIES = st.lists(st.one_of(TRICKY, st.binary(max_size=16)), max_size=20).map(b"".join)


async def _chunks(data: bytes, cuts: list[int]) -> AsyncIterator[bytes]:
    last = 0
    for cut in sorted(set(c % (len(data) + 1) for c in cuts)):
        yield data[last:cut]
        last = cut
    yield data[last:]


def _read(data: bytes, boundary: str, cuts: list[int], max_parts: int = 50) -> list[bytes]:
    async def run() -> list[bytes]:
        bodies = []
        async for part in iter_parts(
            _chunks(data, cuts), boundary, max_part_size=1 << 16, max_parts=max_parts
        ):
            bodies.append(part.file.read())
            assert part.size == len(bodies[-1])
            part.close()
        return bodies

    return asyncio.run(run())


def _encode(bodies: list[bytes], boundary: str) -> bytes:
    out = b"preamble\r\n"
    for body in bodies:
        out += b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + body
        out += b"\r\n"
    return out + b"--" + boundary.encode() + b"--\r\nepilogue"


@FUZZ
@given(
    st.lists(BODIES, min_size=1, max_size=5),
    st.text(BOUNDARY_CHARS, min_size=1, max_size=70).filter(lambda b: not b.endswith(" ")),
    st.lists(st.integers(min_value=0), max_size=8),
)
def test_round_trip_in_any_chunking(bodies: list[bytes], boundary: str, cuts: list[int]) -> None:
    delimiter = b"\r\n--" + boundary.encode()
    assume(not any(delimiter in b"\r\n" + body + b"\r\n" for body in bodies))
    assert _read(_encode(bodies, boundary), boundary, cuts) == bodies


@FUZZ
@given(
    st.lists(st.one_of(TRICKY, st.binary(max_size=8), st.just(b"--b")), max_size=40).map(b"".join),
    st.lists(st.integers(min_value=0), max_size=6),
)
def test_garbage_is_parts_or_a_clean_error(data: bytes, cuts: list[int]) -> None:
    try:
        first = _read(data, "b", cuts, max_parts=5)
    except (MalformedRequestError, PayloadTooLargeError) as exc:
        assert exc.reason
        return
    assert first == _read(data, "b", [])  # the chunking never changes the outcome


@FUZZ
@given(st.binary(min_size=1, max_size=400), st.integers(min_value=1, max_value=399))
def test_mutated_valid_bodies(noise: bytes, at: int) -> None:
    data = bytearray(_encode([b"one\r\n-", b"two--b"], "b"))
    at %= len(data)
    data[at : at + len(noise)] = noise
    with contextlib.suppress(MalformedRequestError, PayloadTooLargeError):
        _read(bytes(data), "b", [at])


@FUZZ
@given(
    st.lists(st.lists(BODIES, max_size=40).map(b"".join), min_size=1, max_size=4),
    st.lists(st.integers(min_value=0), max_size=12),
    st.integers(min_value=1, max_value=9),
)
def test_round_trip_reading_headers_a_few_bytes_at_a_time(
    bodies: list[bytes], cuts: list[int], piece: int
) -> None:
    """Longer bodies, and the buffer filled `piece` bytes at a time after each delimiter, so
    delimiters fall across every kind of junction between the buffer and a chunk."""
    assume(not any(b"\r\n--b" in b"\r\n" + body + b"\r\n" for body in bodies))
    saved = multipart._PIECE
    multipart._PIECE = piece
    try:
        assert _read(_encode(bodies, "b"), "b", cuts) == bodies
    finally:
        multipart._PIECE = saved
