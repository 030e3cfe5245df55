from __future__ import annotations

import io
import os
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import orjson
import pytest
from dicomfiles import to_part10
from video_samples import (
    H264,
    H264_FRAGMENTABLE,
    HEVC,
    MPEG2,
    decoded,
    encode,
    video_instance,
)

from dicomweb_server.codecs.annexb import (
    AccessUnit,
    H264Order,
    HevcOrder,
    iter_nal_units,
    presentation_ranks,
)
from dicomweb_server.codecs.registry import CodecError
from dicomweb_server.codecs.video import (
    MAX_DECODED_VIDEO_FRAMES,
    VIDEO_SYNTAXES,
    FragmentReader,
    VideoOffer,
    decode_frames,
    encapsulated_fragments,
    remux_to_mp4,
    sniff_container,
    video_codec,
    video_offers,
)
from dicomweb_server.domain.documents import video_timing
from dicomweb_server.domain.part10 import ParseLimits, parse_part10


class _CountingFile(io.BytesIO):
    """Records the largest read, to show the stream is read in blocks, never whole."""

    largest = 0

    def read(self, size: int | None = -1, /) -> bytes:
        data = super().read(size)
        self.largest = max(self.largest, len(data))
        return data


def _stored(stream: bytes, syntax: str, **kwargs: Any) -> tuple[_CountingFile, int, Any]:
    """A Part 10 object holding `stream`, as the server stores it: (file, Pixel Data value
    offset, the stored DICOM JSON metadata)."""
    frames = kwargs.pop("frames", 24)
    data = to_part10(video_instance(stream, syntax, frames=frames, **kwargs))
    record = parse_part10(io.BytesIO(data), len(data), ParseLimits())
    assert record.pixel is not None and record.pixel.encapsulated
    return _CountingFile(data), record.pixel.value_offset, orjson.loads(record.metadata)


def _reader(stream: bytes, syntax: str, **kwargs: Any) -> tuple[FragmentReader, Any]:
    fp, offset, metadata = _stored(stream, syntax, **kwargs)
    spans = encapsulated_fragments(fp, offset, len(fp.getvalue()))
    return FragmentReader(fp, spans), metadata


def _remux(tmp_path: Path, stream: bytes, syntax: str, **kwargs: Any) -> tuple[Any, Path]:
    reader, metadata = _reader(stream, syntax, **kwargs)
    out = tmp_path / "out.mp4"
    container = sniff_container(reader.read(512))
    reader.seek(0)
    rate = video_timing(metadata).frame_rate
    return remux_to_mp4(reader, str(out), syntax, container, rate), out


def _assert_plays_in_order(path: Path, frames: int, rate: Fraction) -> None:
    levels, times, duration, width, height = decoded(str(path))
    assert len(levels) == frames
    assert all(abs(level - 8 * i) <= 2 for i, level in enumerate(levels)), levels
    start = times[0]
    assert [round(t - start, 4) for t in times] == [
        round(float(i / rate), 4) for i in range(frames)
    ]
    assert duration == pytest.approx(float(frames / rate), abs=float(1 / rate))
    assert (width, height) == (64, 48)


def test_video_codec_names_every_video_syntax_and_nothing_else() -> None:
    assert {video_codec(uid) for uid in VIDEO_SYNTAXES} == {"mpeg2", "h264", "hevc"}
    assert video_codec("1.2.840.10008.1.2.4.106.1") == "h264"
    assert video_codec("1.2.840.10008.1.2.4.108") == "hevc"
    assert video_codec("1.2.840.10008.1.2.4.50") is None
    assert video_offers("1.2.840.10008.1.2.1", "es") == ()


def test_sniff_container_tells_the_stored_stream_kinds_apart() -> None:
    assert sniff_container(encode("h264", "es")[:400]) == "es"
    assert sniff_container(encode("h264", "ts")[:400]) == "ts"
    assert sniff_container(encode("h264", "mp4")[:400]) == "mp4"
    assert sniff_container(b"\x00\x00\x01\xba\x44" + bytes(20)) == "ps"
    assert sniff_container(b"\x47" + bytes(400)) == "unknown"  # one 0x47 is not a stream
    assert sniff_container(b"%PDF-1.4") == "unknown"


def test_offers_prefer_mp4_and_say_when_it_is_remuxed() -> None:
    assert video_offers(H264, "es") == (VideoOffer("video/mp4", remux=True),)
    assert video_offers(H264, "ts") == (VideoOffer("video/mp4", remux=True),)
    assert video_offers(H264, "mp4") == (VideoOffer("video/mp4", remux=False),)
    assert video_offers(H264, "unknown") == ()
    assert video_offers(HEVC, "es") == (
        VideoOffer("video/mp4", remux=True),
        VideoOffer("video/H265", remux=False),
    )
    assert video_offers(MPEG2, "es") == (
        VideoOffer("video/mpeg2", remux=False),
        VideoOffer("video/mpeg", remux=False),
    )
    assert VideoOffer("video/mp4", remux=False) in video_offers(MPEG2, "mp4")


def test_fragments_join_back_into_the_stored_stream() -> None:
    stream = encode("h264", "es")
    reader, _ = _reader(stream, H264_FRAGMENTABLE, fragment_size=300)
    assert reader.size == len(stream) + len(stream) % 2  # each fragment padded to even length
    assert reader.read()[: len(stream)] == stream
    reader.seek(-10, os.SEEK_END)
    assert len(reader.read(100)) == 10
    reader.seek(299)
    assert reader.read(3) == stream[299:302]  # across a fragment boundary
    reader.seek(5)
    reader.seek(5, os.SEEK_CUR)
    assert reader.tell() == 10 and reader.read(4) == stream[10:14]


def test_malformed_encapsulation_is_a_codec_error() -> None:
    with pytest.raises(CodecError, match="malformed item"):
        encapsulated_fragments(io.BytesIO(b"\x00" * 16), 0, 16)
    no_end = b"\xfe\xff\x00\xe0\x00\x00\x00\x00" + b"\xfe\xff\x00\xe0\x02\x00\x00\x00ab"
    with pytest.raises(CodecError, match="no sequence delimiter"):
        encapsulated_fragments(io.BytesIO(no_end), 0, len(no_end))
    short = FragmentReader(io.BytesIO(b"abc"), [(0, 10)])
    with pytest.raises(CodecError, match="ends inside a fragment"):
        short.read(10)


@pytest.mark.parametrize(
    ("codec", "container", "syntax"),
    [
        ("h264", "es", H264),
        ("h264", "ts", H264),
        ("h264", "es", H264_FRAGMENTABLE),
        ("hevc", "es", HEVC),
        ("hevc", "ts", HEVC),
    ],
)
def test_remuxed_mp4_plays_every_frame_in_order_at_the_dicom_rate(
    tmp_path: Path, codec: str, container: str, syntax: str
) -> None:
    rate = Fraction(25)
    stream = encode(codec, container, frames=24, rate=rate)
    kwargs = {"fragment_size": 400} if syntax == H264_FRAGMENTABLE else {}
    result, out = _remux(tmp_path, stream, syntax, **kwargs)
    assert (result.frames, result.width, result.height) == (24, 64, 48)
    assert result.duration == pytest.approx(24 / 25, abs=0.04)
    data = out.read_bytes()
    assert data[4:8] == b"ftyp" and data.find(b"moov") < data.find(b"mdat")  # plays while loading
    _assert_plays_in_order(out, 24, rate)


def test_an_elementary_stream_is_timed_by_frame_time_not_the_encoder(tmp_path: Path) -> None:
    stream = encode("h264", "es", frames=12, rate=Fraction(25))
    result, out = _remux(tmp_path, stream, H264, frames=12, frame_time=100.0, cine_rate=None)
    assert result.duration == pytest.approx(1.2, abs=0.1)
    _assert_plays_in_order(out, 12, Fraction(10))


def test_remuxing_reads_the_stored_object_in_blocks(tmp_path: Path) -> None:
    stream = encode("h264", "es", frames=24, width=320, height=240, noise=True)
    reader, _ = _reader(stream, H264, frames=24, width=320, height=240)
    fp = reader._fp
    assert isinstance(fp, _CountingFile)
    remux_to_mp4(reader, str(tmp_path / "out.mp4"), H264, "es", Fraction(25))
    assert 0 < fp.largest <= 64 << 10 < len(stream)


def test_what_is_not_remuxed_is_a_codec_error(tmp_path: Path) -> None:
    out = str(tmp_path / "out.mp4")
    with pytest.raises(CodecError, match="not remuxed"):
        remux_to_mp4(io.BytesIO(b""), out, MPEG2, "es", None)
    with pytest.raises(CodecError, match="not remuxed"):
        remux_to_mp4(io.BytesIO(b""), out, H264, "mp4", None)
    with pytest.raises(CodecError, match="not remuxed"):
        remux_to_mp4(io.BytesIO(b""), out, "1.2.840.10008.1.2.1", "es", None)
    with pytest.raises(CodecError, match="cannot be remuxed"):
        remux_to_mp4(io.BytesIO(b"\x00\x00\x01\x09" + bytes(64)), out, H264, "es", None)


# -- decoding frames for rendering (issue 15) ----------------------------------------------


@pytest.mark.parametrize(
    ("codec", "syntax", "container"),
    [
        ("h264", H264, "es"),
        ("hevc", HEVC, "es"),
        ("mpeg2", MPEG2, "es"),
        ("h264", H264, "ts"),
        ("h264", H264, "mp4"),
    ],
)
def test_issue15_frames_decode_in_presentation_order(
    codec: str, syntax: str, container: str
) -> None:
    """B-frames reorder decoding; frame n is the n-th shown (grey level 8*(n-1))."""
    stream = encode(codec, container)
    reader, _ = _reader(stream, syntax)
    arrays = decode_frames(reader, syntax, sniff_container(stream[:512]), [13, 1, 24], 1 << 30)
    assert [a.shape for a in arrays] == [(48, 64, 3)] * 3
    assert [round(float(a.mean()) / 8) for a in arrays] == [12, 0, 23]


def test_issue15_decoding_refuses_what_it_cannot_reach() -> None:
    stream = encode("h264", "es")
    reader, _ = _reader(stream, H264)
    with pytest.raises(CodecError, match="ends before frame 25"):
        decode_frames(reader, H264, "es", [25], 1 << 30)
    with pytest.raises(CodecError, match="decoded from its start"):
        decode_frames(reader, H264, "es", [MAX_DECODED_VIDEO_FRAMES + 1], 1 << 30)
    with pytest.raises(CodecError, match="decoding limit"):
        decode_frames(reader, H264, "es", [1], 100)
    with pytest.raises(CodecError, match="not a video"):
        decode_frames(reader, "1.2.840.10008.1.2.1", "es", [1], 1 << 30)
    with pytest.raises(CodecError):
        decode_frames(io.BytesIO(bytes(256)), H264, "es", [1], 1 << 30)


# -- presentation order of elementary streams (annexb) -------------------------------------


def _packets_with_pts(codec: str, **kwargs: Any) -> list[tuple[int, bytes]]:
    """The encoder's own (pts, access unit) pairs in decode order, read from MPEG-TS."""
    data = encode(codec, "ts", **kwargs)
    with av.open(io.BytesIO(data), format="mpegts") as source:
        return [
            (int(p.pts), bytes(p))
            for p in source.demux(source.streams.video[0])
            if p.size and p.pts is not None
        ]


@pytest.mark.parametrize(("codec", "order"), [("h264", H264Order), ("hevc", HevcOrder)])
def test_picture_order_count_gives_the_encoders_presentation_order(
    codec: str, order: type[H264Order] | type[HevcOrder]
) -> None:
    packets = _packets_with_pts(codec, frames=40)
    tracker = order()
    for _, unit in packets:
        tracker.feed(unit)
    ranks = presentation_ranks(tracker.units)
    expected = sorted(range(len(packets)), key=lambda i: packets[i][0])
    assert ranks != list(range(len(packets)))  # B-frames: decode order is not display order
    assert [ranks.index(r) for r in range(len(ranks))] == expected
    assert tracker.units[0].keyframe


def test_streams_without_reordering_keep_decode_order() -> None:
    tracker = H264Order()
    for unit in (b"\x00\x00\x00\x01\x09\xf0", b"\x00\x00\x01\x06\x05"):  # no slice at all
        tracker.feed(unit)
    assert presentation_ranks(tracker.units) == [0, 1]
    tracker.feed(b"\x00\x00\x01\x65\x88")  # an IDR slice whose PPS was never seen
    assert tracker.units[-1] == AccessUnit(0, 1, True)
    hevc = HevcOrder()
    hevc.feed(b"\x00\x00\x01\x26\x01\xaf")  # IDR_W_RADL: POC 0
    hevc.feed(b"\x00\x00\x01\x02\x01\xd0")  # TRAIL_R, unknown PPS: decode order
    hevc.feed(b"\x00\x00\x01\x46")  # too short to be anything
    assert [u.poc for u in hevc.units] == [0, 1, 2]


def test_presentation_ranks_order_runs_then_pictures() -> None:
    units = [AccessUnit(0, 0, True), AccessUnit(0, 4, False), AccessUnit(0, 2, False)]
    units += [AccessUnit(1, 0, True), AccessUnit(1, 2, False)]
    assert presentation_ranks(units) == [0, 2, 1, 3, 4]


def test_nal_units_drop_start_codes_and_trailing_zeros() -> None:
    data = b"\x00\x00\x00\x01\x67\x42\x00\x00\x00\x01\x68\xce\x00\x00\x01\x65\x88\x00"
    assert list(iter_nal_units(data)) == [b"\x67\x42", b"\x68\xce", b"\x65\x88"]
    assert list(iter_nal_units(b"\x00\x00\x01\x00\x00\x00\x01")) == []
