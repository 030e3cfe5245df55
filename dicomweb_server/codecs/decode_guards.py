"""What a compressed frame must pass before a native decoder sees it, and at ingest.

Decoders allocate what the codestream declares, whatever Rows and Columns say: a 333-byte
JPEG whose SOF says 30000x30000 under a 16x16 DICOM header cost 36 s and 5.2 GB per
request. So every decode first reads the frame's header (`frame_headers`, microseconds),
requires it to agree with the DICOM attributes, and bounds the decoded size by a budget.
"""

from __future__ import annotations

from dicomweb_server.codecs.frame_headers import (
    HEADER_SYNTAXES,
    RLE,
    FrameHeader,
    FrameHeaderError,
    read_frame_header,
)
from dicomweb_server.codecs.registry import NATIVE_SYNTAXES, CodecError, FrameInfo

__all__ = [
    "MAX_DECODED_FRAME_BYTES",
    "MAX_JPEG_2000_TILES",
    "UNCOMPRESSED_SYNTAXES",
    "DecodeBudgetError",
    "FrameHeaderError",
    "check_frame",
    "decoded_frame_bytes",
    "validate_encapsulated_frame",
]

# Default bytes one decoded frame may take (Settings: DICOMWEB_MAX_DECODED_FRAME_BYTES):
# a 16384x16384 16-bit frame, or 8192x8192 16-bit RGB. Decoders may need a multiple of it
# while they work (openjpeg keeps 32-bit samples), so size the setting with headroom.
MAX_DECODED_FRAME_BYTES = 512 << 20
# Tiles in one JPEG 2000 frame: openjpeg builds structures per tile before decoding any, so
# 1x1 tiles over a large image cost far more than its pixels. Real frames use a few hundred.
MAX_JPEG_2000_TILES = 1 << 16
# Uncompressed syntaxes: the decoded frame is the stored bytes, there is nothing to inflate.
UNCOMPRESSED_SYNTAXES = NATIVE_SYNTAXES | {"1.2.840.10008.1.2.2"}  # and explicit VR big endian


class DecodeBudgetError(CodecError):
    """A frame would decode to more bytes (or JPEG 2000 tiles) than the configured budget."""


def decoded_frame_bytes(rows: int, columns: int, samples_per_pixel: int, bits: int) -> int:
    """Bytes of one decoded frame: every sample takes whole bytes."""
    return rows * columns * samples_per_pixel * -(-bits // 8)


def check_frame(
    data: bytes, syntax: str, info: FrameInfo, max_decoded_bytes: int = MAX_DECODED_FRAME_BYTES
) -> None:
    """Refuse a stored frame, before decoding it, whose header contradicts `info` or whose
    decoded size exceeds `max_decoded_bytes`; syntaxes with no header reader are refused."""
    if syntax in UNCOMPRESSED_SYNTAXES:
        return
    header = read_frame_header(syntax, data)
    _check_agreement(header, info.rows, info.columns, info.samples_per_pixel, info.bits_allocated)
    _check_budget(
        header,
        info.rows,
        info.columns,
        info.samples_per_pixel,
        info.bits_allocated,
        max_decoded_bytes,
    )


def validate_encapsulated_frame(
    syntax_uid: str,
    data: bytes,
    rows: int,
    columns: int,
    samples_per_pixel: int,
    bits_allocated: int,
    *,
    max_decoded_bytes: int | None = None,
) -> FrameHeader | None:
    """At ingest: the header of a frame (or its first fragment) if it agrees with the DICOM
    attributes, else FrameHeaderError; None for syntaxes whose frames have no header here.

    No budget by default: a frame too large to decode here can still be stored and served
    as stored; pass `max_decoded_bytes` to refuse it anyway.
    """
    if syntax_uid not in HEADER_SYNTAXES:
        return None
    header = read_frame_header(syntax_uid, data)
    _check_agreement(header, rows, columns, samples_per_pixel, bits_allocated)
    if max_decoded_bytes is not None:
        _check_budget(header, rows, columns, samples_per_pixel, bits_allocated, max_decoded_bytes)
    return header


def _check_agreement(
    header: FrameHeader, rows: int, columns: int, samples: int, bits_allocated: int
) -> None:
    """The frame's own geometry must be the DICOM one: decoders trust the frame's."""
    dicom = f"{columns}x{rows}, {samples} sample(s) of {bits_allocated} bits allocated"
    if header.format == RLE:
        # PS3.5 G.2: one segment per byte of each sample, most significant byte first.
        expected = samples * -(-bits_allocated // 8)
        if header.segments != expected:
            raise FrameHeaderError(
                f"the RLE header declares {header.segments} segment(s), the DICOM header"
                f" ({dicom}) needs {expected}"
            )
        return
    agrees = (
        header.columns == columns
        and header.rows == rows
        and header.components == samples
        and (header.precision or 0) <= bits_allocated
    )
    if not agrees:
        raise FrameHeaderError(
            f"the {header.format} frame header declares {header.describe()}, the DICOM header"
            f" {dicom}"
        )


def _check_budget(
    header: FrameHeader,
    rows: int,
    columns: int,
    samples: int,
    bits_allocated: int,
    max_decoded_bytes: int,
) -> None:
    size = decoded_frame_bytes(rows, columns, samples, bits_allocated)
    if size > max_decoded_bytes:
        raise DecodeBudgetError(
            f"a {columns}x{rows} frame of {samples} sample(s) of {bits_allocated} bits decodes"
            f" to {size} bytes, over the {max_decoded_bytes}-byte limit"
        )
    if header.tiles > MAX_JPEG_2000_TILES:
        raise DecodeBudgetError(
            f"the JPEG 2000 frame has {header.tiles} tiles, over the {MAX_JPEG_2000_TILES} limit"
        )
