"""Fuzzing parse_part10 (hypothesis): any bytes give a record or an InvalidInstanceError."""

from __future__ import annotations

import io

from dicomfiles import ct_dataset, to_part10
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dicomweb_server.domain.part10 import InvalidInstanceError, ParseLimits, parse_part10

# Bounded so `make test` stays fast: a few hundred examples, no example database on disk.
FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
LIMITS = ParseLimits(max_header_bytes=1 << 20, max_pixel_bytes=1 << 24)
SEEDS = [
    to_part10(ct_dataset(rows=4, columns=4)),
    to_part10(ct_dataset(rows=4, columns=4, frames=2), implicit=True),
]
LYING_LENGTHS = [b"\xff\xff\xff\xff", b"\xf0\xff\xff\xff", b"\xff\xff\xff\x7f", b"\x00\x00\x00\x00"]


def _parse(data: bytes) -> None:
    try:
        record = parse_part10(io.BytesIO(data), len(data), LIMITS)
    except InvalidInstanceError as exc:
        assert exc.failure_code in (0xA700, 0xA900, 0xC000)
        assert exc.reason
        return
    assert record.sop_instance_uid
    assert record.number_of_frames >= 0


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid seed with flipped bytes, lying lengths, a cut or an insertion past byte 132."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(132, len(data) - 1))
        action = draw(st.sampled_from(["flip", "length", "cut", "insert"]))
        if action == "flip":
            data[at] = draw(st.integers(0, 255))
        elif action == "length":
            data[at : at + 4] = draw(st.sampled_from(LYING_LENGTHS))
        elif action == "cut":
            del data[at:]
            if len(data) <= 133:
                break
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
    return bytes(data)


@FUZZ
@given(mutated())
def test_mutated_instances_never_raise_anything_else(data: bytes) -> None:
    _parse(data)


@FUZZ
@given(st.binary(max_size=2048))
def test_random_data_sets_after_the_prefix(body: bytes) -> None:
    _parse(b"\0" * 128 + b"DICM" + body)


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    _parse(data)
