"""Frame header readers (codecs/frame_headers.py): real frames from the installed encoders,
and crafted malformed ones, which are a CodecError and never anything else."""

from __future__ import annotations

import contextlib
import random
import struct

import numpy as np
import pytest

from dicomweb_server.codecs.frame_headers import (
    HEADER_SYNTAXES,
    FrameHeader,
    FrameHeaderError,
    read_frame_header,
)
from dicomweb_server.codecs.registry import CodecError, FrameInfo, Pixels
from dicomweb_server.codecs.transcode import encode_frame

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.57"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR = "1.2.840.10008.1.2.4.81"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
J2K = "1.2.840.10008.1.2.4.91"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
HTJ2K = "1.2.840.10008.1.2.4.203"
RLE = "1.2.840.10008.1.2.5"

# (syntax, bits stored, samples, precision the encoder writes): 64 rows by 48 columns each,
# so a reader swapping width and height fails.
ENCODED = [
    (JPEG_BASELINE, 8, 1, 8),
    (JPEG_BASELINE, 8, 3, 8),
    (JPEG_EXTENDED, 12, 1, 12),
    (JPEG_LOSSLESS, 16, 1, 16),
    (JPEG_LOSSLESS_SV1, 12, 1, 12),
    (JPEG_LOSSLESS_SV1, 8, 3, 8),
    (JPEG_LS, 16, 1, 16),
    (JPEG_LS_NEAR, 8, 3, 8),
    (J2K_LOSSLESS, 12, 1, 12),
    (J2K, 8, 3, 8),
    (HTJ2K_LOSSLESS, 16, 1, 16),
    (HTJ2K, 8, 3, 8),
]


def _frame(syntax: str, bits: int, samples: int) -> bytes:
    """A 64x48 frame encoded by the codec registry (imagecodecs, pyjpegls, pylibjpeg)."""
    allocated = 8 if bits <= 8 else 16
    info = FrameInfo(
        rows=64,
        columns=48,
        samples_per_pixel=samples,
        bits_allocated=allocated,
        bits_stored=bits,
        photometric_interpretation="RGB" if samples == 3 else "MONOCHROME2",
    )
    shape = (64, 48, samples) if samples > 1 else (64, 48)
    array = (np.arange(np.prod(shape)).reshape(shape) * 7 % (1 << bits)).astype(
        f"u{allocated // 8}"
    )
    return encode_frame(Pixels(array, info.photometric_interpretation), syntax, info).data


@pytest.mark.parametrize(("syntax", "bits", "samples", "precision"), ENCODED)
def test_encoded_frames_declare_their_geometry(
    syntax: str, bits: int, samples: int, precision: int
) -> None:
    header = read_frame_header(syntax, _frame(syntax, bits, samples))
    assert (header.columns, header.rows, header.components) == (48, 64, samples)
    assert header.precision == precision or syntax in (HTJ2K_LOSSLESS, HTJ2K)  # OpenJPH: 16
    assert header.tiles == 1


@pytest.mark.parametrize(("bits", "samples", "segments"), [(8, 1, 1), (16, 1, 2), (8, 3, 3)])
def test_rle_frames_declare_one_segment_per_sample_byte(
    bits: int, samples: int, segments: int
) -> None:
    header = read_frame_header(RLE, _frame(RLE, bits, samples))
    assert header == FrameHeader("RLE", segments=segments)


def test_jpeg_reader_skips_app_com_and_fill_bytes_before_the_frame_header() -> None:
    frame = _frame(JPEG_BASELINE, 8, 1)
    exif = b"\xff\xe1" + struct.pack(">H", 2 + 5000) + b"\xff\xc0" * 2500  # a fake SOF inside
    comment = b"\xff\xfe" + struct.pack(">H", 2 + 3) + b"hi!"
    crafted = frame[:2] + exif + comment + b"\xff\xff\xff" + frame[2:]
    header = read_frame_header(JPEG_BASELINE, crafted)
    assert (header.columns, header.rows) == (48, 64)


def test_jp2_wrapped_codestream_is_read_from_its_jp2c_box() -> None:
    import imagecodecs

    array = np.zeros((64, 48), dtype=np.uint16)
    jp2 = bytes(imagecodecs.jpeg2k_encode(array, codecformat="JP2", bitspersample=12))
    assert jp2[4:8] == b"jP  "
    header = read_frame_header(J2K, jp2)
    assert (header.columns, header.rows, header.components, header.precision) == (48, 64, 1, 12)


def test_header_is_read_from_a_first_fragment_alone() -> None:
    """At ingest the store may pass the first fragment only: the header sits at its start."""
    for syntax, bits, samples, _ in ENCODED:
        frame = _frame(syntax, bits, samples)
        cut = 700 if syntax in (JPEG_BASELINE, JPEG_LOSSLESS_SV1) else 200
        assert read_frame_header(syntax, frame[:cut]).columns == 48


# -- malformed and truncated -------------------------------------------------------------------


def _sof(marker: int, precision: int, rows: int, columns: int, components: int) -> bytes:
    body = struct.pack(">BHHB", precision, rows, columns, components)
    body += b"".join(bytes([i + 1, 0x11, 0]) for i in range(components))
    return b"\xff" + bytes([marker]) + struct.pack(">H", 2 + len(body)) + body


SOS = b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "SOI"),
        (b"\x89PNG\r\n\x1a\n", "SOI"),
        (b"\xff\xd8" + SOS, "scan before its frame header"),
        (b"\xff\xd8" + _sof(0xC0, 8, 16, 16, 1) + _sof(0xC0, 8, 16, 16, 1) + SOS, "second"),
        (b"\xff\xd8" + _sof(0xC0, 8, 0, 16, 1) + SOS, "DNL"),
        (b"\xff\xd8" + _sof(0xC0, 8, 16, 0, 1) + SOS, "0 columns"),
        (b"\xff\xd8" + _sof(0xC0, 8, 16, 16, 0) + SOS, "0 components"),
        (b"\xff\xd8" + _sof(0xC0, 8, 16, 16, 1)[:9] + b"\x03\x01\x11\x00" + SOS, "malformed"),
        (b"\xff\xd8" + _sof(0xC0, 1, 16, 16, 1) + SOS, "1-bit"),
        (b"\xff\xd8" + _sof(0xC0, 8, 16, 16, 3)[:10], "truncated"),
        (b"\xff\xd8\xff\xe0\x00\x01" + SOS, "length 1"),
        (b"\xff\xd8\xff\xe0\x00\x10", "truncated"),
        (b"\xff\xd8\x00\x00", "no marker"),
        (b"\xff\xd8\xff\xd9", "FFD9"),
        (b"\xff\xd8" + _sof(0xF7, 8, 16, 16, 1) + SOS, "scan before"),  # SOF55 is not JPEG
    ],
)
def test_malformed_jpeg_headers_are_a_codec_error(data: bytes, reason: str) -> None:
    with pytest.raises(FrameHeaderError, match=reason):
        read_frame_header(JPEG_BASELINE, data)


def test_jpeg_ls_reads_sof55_only() -> None:
    header = read_frame_header(JPEG_LS, b"\xff\xd8" + _sof(0xF7, 12, 30, 20, 1) + SOS)
    assert (header.columns, header.rows, header.precision) == (20, 30, 12)
    with pytest.raises(FrameHeaderError, match="scan before"):
        read_frame_header(JPEG_LS, b"\xff\xd8" + _sof(0xC3, 12, 30, 20, 1) + SOS)


def _siz(
    width: int = 48,
    height: int = 64,
    offset: tuple[int, int] = (0, 0),
    tile: tuple[int, int, int, int] = (48, 64, 0, 0),
    depths: tuple[int, ...] = (11,),
    steps: tuple[int, int] = (1, 1),
) -> bytes:
    body = struct.pack(">H8IH", 0, width, height, *offset, *tile, len(depths))
    body += b"".join(bytes([depth, *steps]) for depth in depths)
    return b"\xff\x4f\xff\x51" + struct.pack(">H", 2 + len(body)) + body


def test_crafted_siz_gives_image_size_less_offsets() -> None:
    header = read_frame_header(J2K, _siz(100, 80, (4, 2), (32, 32, 0, 0), (7, 0x8F)))
    assert (header.columns, header.rows, header.components) == (96, 78, 2)
    assert header.precision == 16 and header.tiles == 4 * 3


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xff\xd8\xff\xe0", "SOC"),
        (_siz()[:30], "truncated"),
        (b"\xff\x4f\xff\x52" + _siz()[4:], "no SIZ"),
        (_siz()[:-1], "truncated or malformed"),
        (_siz(depths=()), "inconsistent"),
        (_siz(offset=(48, 0)), "inconsistent"),
        (_siz(tile=(0, 64, 0, 0)), "inconsistent"),
        (_siz(offset=(10, 0), tile=(4, 64, 0, 0)), "inconsistent"),
        (_siz(steps=(0, 1)), "zero subsampling"),
        (_siz(depths=(40,)), "41-bit"),
        (b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\x00\x00\x00\x08free", "no contiguous"),
        (b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\x00\x00\x00\x04jp2c", "length 4"),
    ],
)
def test_malformed_jpeg_2000_headers_are_a_codec_error(data: bytes, reason: str) -> None:
    with pytest.raises(FrameHeaderError, match=reason):
        read_frame_header(HTJ2K, data)


def _rle(count: int, offsets: list[int], size: int = 200) -> bytes:
    header = struct.pack("<16I", count, *offsets, *[0] * (15 - len(offsets)))
    return header + b"\0" * (size - 64)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x01\x00\x00\x00", "shorter than its header"),
        (_rle(0, []), "0 segments"),
        (_rle(16, [64] * 15), "16 segments"),
        (_rle(1, [60]), "starts at byte 60"),
        (_rle(2, [64, 64]), "do not rise"),
        (_rle(3, [64, 100, 90]), "do not rise"),
        (_rle(2, [64, 200]), "do not rise inside the 200-byte"),
    ],
)
def test_malformed_rle_headers_are_a_codec_error(data: bytes, reason: str) -> None:
    with pytest.raises(FrameHeaderError, match=reason):
        read_frame_header(RLE, data)


def test_unknown_syntax_has_no_reader() -> None:
    assert "1.2.840.10008.1.2.1" not in HEADER_SYNTAXES
    with pytest.raises(FrameHeaderError, match="no frame header reader"):
        read_frame_header("1.2.840.10008.1.2.4.110", b"\xff\x0a")


@pytest.mark.parametrize(("syntax", "bits", "samples", "precision"), ENCODED[::2])
def test_every_truncation_and_byte_flip_is_a_header_or_a_codec_error(
    syntax: str, bits: int, samples: int, precision: int
) -> None:
    """Fuzz the first bytes, where the headers live: no IndexError, struct.error or the like."""
    frame = _frame(syntax, bits, samples)
    for end in range(len(frame[:400])):
        _read_or_codec_error(syntax, frame[:end])
    rng = random.Random(syntax)
    for _ in range(2000):
        mutated = bytearray(frame[:400])
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        _read_or_codec_error(syntax, bytes(mutated))


def _read_or_codec_error(syntax: str, data: bytes) -> None:
    with contextlib.suppress(CodecError):
        read_frame_header(syntax, data)
