"""Decode guards (codecs/decode_guards.py): a frame's header must agree with the DICOM
attributes and fit the byte budget before any decoder runs, on every decoding path."""

from __future__ import annotations

import io
import struct
import time
import tracemalloc
from collections.abc import Iterator

import numpy as np
import pytest
from dicomfiles import ct_dataset, to_part10
from pydicom.encaps import encapsulate

from dicomweb_server.codecs import transcode
from dicomweb_server.codecs.decode_guards import (
    MAX_DECODED_FRAME_BYTES,
    DecodeBudgetError,
    FrameHeaderError,
    check_frame,
    decoded_frame_bytes,
    validate_encapsulated_frame,
)
from dicomweb_server.codecs.registry import CodecError, FrameInfo, Pixels
from dicomweb_server.codecs.rendering import ImageAttributes, RenderOptions, Viewport, render
from dicomweb_server.codecs.transcode import (
    decode_frame,
    encode_frame,
    pixels_from_file,
    transcode_frame,
    transcode_instance,
)

EVRLE = "1.2.840.10008.1.2.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
RLE = "1.2.840.10008.1.2.5"
GREY_16 = FrameInfo(rows=16, columns=16, bits_allocated=8, bits_stored=8)


def _jpeg(rows: int = 16, columns: int = 16, declared: tuple[int, int] | None = None) -> bytes:
    """A real 8-bit JPEG baseline frame; `declared` rewrites its SOF to (rows, columns)."""
    import imagecodecs

    data = bytearray(imagecodecs.jpeg8_encode(np.full((rows, columns), 128, np.uint8), level=90))
    if declared is not None:
        sof = data.index(b"\xff\xc0")
        struct.pack_into(">HH", data, sof + 5, *declared)
    return bytes(data)


BOMB = _jpeg(declared=(30000, 30000))  # 333 bytes; decoding it took 36 s and 5.2 GB


@pytest.fixture
def decoders_untouched(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """Every registry decoder replaced by one that records its calls: none may happen."""
    calls: list[bytes] = []

    def decoder(data: bytes, info: FrameInfo) -> Pixels:
        calls.append(data)
        raise AssertionError("the decoder ran")

    monkeypatch.setattr(transcode, "decoder_for", lambda uid: decoder)
    yield calls
    assert calls == []


def _fast_and_small(call: object) -> str:
    """Run `call`, which must raise a CodecError in well under a second with little memory."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        call()  # type: ignore[operator]
    except CodecError as exc:
        reason = str(exc)
    else:
        raise AssertionError("no CodecError")
    finally:
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert elapsed < 0.25, elapsed
    assert peak < 1 << 20, peak
    return reason


def test_decode_bomb_sof_30000x30000_over_16x16_header_fails_fast() -> None:
    """Red team: a 333-byte JPEG whose SOF says 30000x30000 under Rows = Columns = 16 took
    36 s and 5.2 GB per request; through the real decoders it now fails in microseconds."""
    decode_frame(_jpeg(), JPEG_BASELINE, GREY_16)  # warm up: lazy imports are not the guard
    reason = _fast_and_small(lambda: decode_frame(BOMB, JPEG_BASELINE, GREY_16))
    assert "30000x30000" in reason and "16x16" in reason


def test_decode_bomb_never_reaches_a_decoder(decoders_untouched: list[bytes]) -> None:
    with pytest.raises(FrameHeaderError, match="30000x30000"):
        decode_frame(BOMB, JPEG_BASELINE, GREY_16)
    with pytest.raises(FrameHeaderError, match="30000x30000"):
        transcode_frame(BOMB, JPEG_BASELINE, EVRLE, GREY_16)
    options = RenderOptions(viewport=Viewport(128, 128), upscale=False)
    reason = _fast_and_small(
        lambda: render([BOMB], JPEG_BASELINE, ImageAttributes(GREY_16), options)
    )
    assert "30000x30000" in reason


def _bomb_instance() -> io.BytesIO:
    ds = ct_dataset(rows=16, columns=16)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = encapsulate([BOMB])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEG_BASELINE
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True, implicit_vr=False, little_endian=True)
    return io.BytesIO(buffer.getvalue())


def test_decode_bomb_is_refused_by_whole_instance_paths() -> None:
    """transcode_instance decodes frame by frame; pixels_from_file goes through pydicom."""
    started = time.perf_counter()
    with pytest.raises(FrameHeaderError, match="30000x30000"):
        transcode_instance(_bomb_instance(), EVRLE, io.BytesIO())
    with pytest.raises(FrameHeaderError, match="30000x30000"):
        pixels_from_file(_bomb_instance(), [1])
    assert time.perf_counter() - started < 1.0


def test_honest_frame_over_the_budget_is_refused_before_decoding(
    decoders_untouched: list[bytes],
) -> None:
    info = FrameInfo(rows=64, columns=48, bits_allocated=8, bits_stored=8)
    frame = _jpeg(64, 48)
    assert decoded_frame_bytes(64, 48, 1, 8) == 3072
    with pytest.raises(DecodeBudgetError, match="decodes to 3072 bytes, over the 3071-byte"):
        decode_frame(frame, JPEG_BASELINE, info, 3071)
    check_frame(frame, JPEG_BASELINE, info, 3072)  # exactly at the limit passes


def test_default_budget_takes_a_16_bit_16000_square_frame() -> None:
    assert decoded_frame_bytes(16000, 16000, 1, 16) <= MAX_DECODED_FRAME_BYTES
    assert decoded_frame_bytes(8192, 8192, 3, 16) <= MAX_DECODED_FRAME_BYTES
    assert decoded_frame_bytes(30000, 30000, 1, 8) > MAX_DECODED_FRAME_BYTES


def _encoded(syntax: str, info: FrameInfo) -> bytes:
    shape = (info.rows, info.columns, info.samples_per_pixel)
    array = np.zeros(shape, dtype=info.dtype).squeeze(axis=2 if shape[2] == 1 else None)
    return encode_frame(Pixels(array, info.photometric_interpretation), syntax, info).data


@pytest.mark.parametrize(
    ("stored", "dicom", "reason"),
    [
        (FrameInfo(32, 40), FrameInfo(40, 32), "declares 40x32.*DICOM header 32x40"),
        (
            FrameInfo(32, 32, 3, photometric_interpretation="RGB"),
            FrameInfo(32, 32, 1),
            "3 component",
        ),
        (FrameInfo(32, 32, 1, 16, 16), FrameInfo(32, 32, 1, 8, 8), "16 bits.*8 bits allocated"),
    ],
)
def test_jpeg_2000_frame_contradicting_the_dicom_header_is_refused(
    stored: FrameInfo, dicom: FrameInfo, reason: str
) -> None:
    frame = _encoded(J2K_LOSSLESS, stored)
    check_frame(frame, J2K_LOSSLESS, stored)
    with pytest.raises(FrameHeaderError, match=reason):
        check_frame(frame, J2K_LOSSLESS, dicom)


def test_rle_segments_must_match_samples_and_bytes() -> None:
    frame = _encoded(RLE, FrameInfo(8, 8, 1, 16, 16))  # two segments
    check_frame(frame, RLE, FrameInfo(8, 8, 1, 16, 16))
    with pytest.raises(FrameHeaderError, match=r"2 segment.*needs 1"):
        check_frame(frame, RLE, FrameInfo(8, 8, 1, 8, 8))
    with pytest.raises(DecodeBudgetError):
        check_frame(frame, RLE, FrameInfo(8, 8, 1, 16, 16), 100)


def test_uncompressed_frames_pass_and_unknown_compressed_syntaxes_are_refused() -> None:
    check_frame(b"\0" * 4, EVRLE, FrameInfo(2, 2), max_decoded_bytes=0)
    check_frame(b"\0" * 4, "1.2.840.10008.1.2.2", FrameInfo(2, 2), max_decoded_bytes=0)
    with pytest.raises(CodecError, match="no frame header reader"):
        check_frame(b"\xff\x0a", "1.2.840.10008.1.2.4.110", FrameInfo(2, 2))


def test_too_many_jpeg_2000_tiles_are_refused() -> None:
    # SIZ: 300x300 in 1x1 tiles (90000), one 8-bit component.
    body = struct.pack(">H8IH", 0, 300, 300, 0, 0, 1, 1, 0, 0, 1) + bytes([7, 1, 1])
    frame = b"\xff\x4f\xff\x51" + struct.pack(">H", 2 + len(body)) + body
    with pytest.raises(DecodeBudgetError, match="90000 tiles"):
        check_frame(frame, J2K_LOSSLESS, FrameInfo(300, 300))


def test_ingest_validation_refuses_a_contradicting_first_frame() -> None:
    frame = _jpeg()
    first_bytes = frame[: frame.index(b"\xff\xc0") + 13]  # up to the end of the SOF
    header = validate_encapsulated_frame(JPEG_BASELINE, first_bytes, 16, 16, 1, 8)
    assert header is not None and (header.columns, header.rows) == (16, 16)
    with pytest.raises(FrameHeaderError, match=r"30000x30000.*16x16"):
        validate_encapsulated_frame(JPEG_BASELINE, BOMB, 16, 16, 1, 8)
    with pytest.raises(FrameHeaderError, match="RLE frame is 4 bytes"):
        validate_encapsulated_frame(RLE, b"\0" * 4, 16, 16, 1, 8)
    assert validate_encapsulated_frame(EVRLE, b"", 16, 16, 1, 8) is None


def test_ingest_validation_applies_a_budget_only_when_asked() -> None:
    """A frame too large to decode here can still be stored and served as stored."""
    frame = _jpeg(64, 48)
    assert validate_encapsulated_frame(JPEG_BASELINE, frame, 64, 48, 1, 8) is not None
    with pytest.raises(DecodeBudgetError):
        validate_encapsulated_frame(JPEG_BASELINE, frame, 64, 48, 1, 8, max_decoded_bytes=100)


def test_native_instance_transcodes_unchanged_under_the_guards() -> None:
    """Guards cost nothing to honest data: a native 16-bit CT round-trips through RLE."""
    source = io.BytesIO(to_part10(ct_dataset(rows=20, columns=24)))
    compressed = io.BytesIO()
    transcode_instance(source, RLE, compressed)
    back = io.BytesIO()
    transcode_instance(compressed, EVRLE, back)
    from pydicom import dcmread

    source.seek(0)
    assert dcmread(io.BytesIO(back.getvalue())).PixelData == dcmread(source, force=True).PixelData


def test_every_compressed_syntax_a_decoder_takes_has_a_header_reader() -> None:
    """check_frame refuses compressed syntaxes it cannot read: a new decoder needs a reader."""
    from dicomweb_server.codecs import registry
    from dicomweb_server.codecs.decode_guards import UNCOMPRESSED_SYNTAXES
    from dicomweb_server.codecs.frame_headers import HEADER_SYNTAXES

    decodable = {uid for module in registry._DECODER_MODULES for uid in registry._table(module)[0]}
    assert decodable - UNCOMPRESSED_SYNTAXES <= HEADER_SYNTAXES
