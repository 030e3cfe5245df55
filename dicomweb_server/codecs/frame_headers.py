"""A compressed frame's own header → the geometry it declares, read without decoding.

Decoders size their buffers from the codestream, not from the DICOM attributes: a frame
whose header contradicts Rows and Columns is read here, in microseconds, so that it can be
refused before any native decoder allocates (see `decode_guards`). Covered: JPEG (ISO 10918
SOFn and DHP, PS3.5 A.4.1), JPEG-LS (ISO 14495 SOF55, A.4.3), JPEG 2000 and HTJ2K (ISO 15444
SIZ, optionally inside a JP2 box wrapper, A.4.4 and A.4.6) and RLE (the segment header,
PS3.5 G.5). Anything malformed or truncated is a CodecError.
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass

from dicomweb_server.codecs.registry import CodecError

__all__ = ["HEADER_SYNTAXES", "FrameHeader", "FrameHeaderError", "read_frame_header"]

JPEG = "JPEG"
JPEG_LS = "JPEG-LS"
JPEG_2000 = "JPEG 2000"
RLE = "RLE"

_FORMATS = {
    "1.2.840.10008.1.2.4.50": JPEG,  # Baseline (Process 1)
    "1.2.840.10008.1.2.4.51": JPEG,  # Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.57": JPEG,  # Lossless (Process 14)
    "1.2.840.10008.1.2.4.70": JPEG,  # Lossless SV1
    "1.2.840.10008.1.2.4.80": JPEG_LS,
    "1.2.840.10008.1.2.4.81": JPEG_LS,
    "1.2.840.10008.1.2.4.90": JPEG_2000,
    "1.2.840.10008.1.2.4.91": JPEG_2000,
    "1.2.840.10008.1.2.4.201": JPEG_2000,  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202": JPEG_2000,  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203": JPEG_2000,  # HTJ2K
    "1.2.840.10008.1.2.5": RLE,
}
HEADER_SYNTAXES = frozenset(_FORMATS)

# ISO 10918-1 B.1.1.3: SOF0-3, 5-7, 9-11, 13-15 (C4 is DHT, C8 JPG, CC DAC), and DHP
# (hierarchical mode), whose segment has the same layout and bounds every frame after it.
_JPEG_FRAME_MARKERS = frozenset({*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC)})
_JPEG_FRAME_MARKERS |= frozenset({*range(0xCD, 0xD0), 0xDE})
_JPEG_LS_FRAME_MARKERS = frozenset({0xF7})  # ISO 14495-1 C.2.2: SOF55
_SOS = 0xDA
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RSTn: no length field
_SOC, _SIZ = b"\xff\x4f", 0xFF51
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_RLE_HEADER = 64
_RLE_MAX_SEGMENTS = 15


class FrameHeaderError(CodecError):
    """A frame's header is malformed, truncated or contradicts the DICOM attributes."""


@dataclass(frozen=True, slots=True)
class FrameHeader:
    """What a frame declares about itself; RLE declares its segments only (PS3.5 G.5)."""

    format: str  # "JPEG", "JPEG-LS", "JPEG 2000" or "RLE"
    columns: int | None = None
    rows: int | None = None
    components: int | None = None
    precision: int | None = None  # bits per sample, the largest over the components
    tiles: int = 1  # JPEG 2000 tiles: each one costs the decoder its own structures
    segments: int | None = None  # RLE: one per byte of each sample

    def describe(self) -> str:
        """The declared geometry as text, for error reasons."""
        if self.format == RLE:
            return f"{self.segments} RLE segment(s)"
        return (
            f"{self.columns}x{self.rows}, {self.components} component(s) of {self.precision} bits"
        )


def read_frame_header(syntax: str, data: bytes) -> FrameHeader:
    """The geometry the frame (or at least its first fragment) declares, without decoding."""
    kind = _FORMATS.get(syntax)
    if kind is None:
        raise FrameHeaderError(f"no frame header reader for transfer syntax {syntax}")
    view = memoryview(data)
    if kind == JPEG:
        return _jpeg(view, _JPEG_FRAME_MARKERS, JPEG)
    if kind == JPEG_LS:
        return _jpeg(view, _JPEG_LS_FRAME_MARKERS, JPEG_LS)
    if kind == JPEG_2000:
        return _jpeg_2000(view)
    return _rle(view)


# -- JPEG and JPEG-LS: marker segments up to the first scan ------------------------------------


def _jpeg(data: memoryview, frame_markers: frozenset[int], kind: str) -> FrameHeader:
    """Walk the marker segments (ISO 10918-1 B.1.1.2) up to SOS; exactly one frame header."""
    if bytes(data[:2]) != b"\xff\xd8":
        raise FrameHeaderError(f"{kind} frame does not start with SOI (FFD8)")
    found: FrameHeader | None = None
    position, end = 2, len(data)
    while position < end:
        if data[position] != 0xFF:
            raise FrameHeaderError(f"{kind} frame has no marker at byte {position}")
        while position < end and data[position] == 0xFF:  # fill bytes (B.1.1.2)
            position += 1
        if position >= end:
            break
        marker = data[position]
        position += 1
        if marker in _STANDALONE:
            continue
        if marker in (0x00, 0xD8, 0xD9):
            raise FrameHeaderError(f"{kind} frame has FF{marker:02X} before its first scan")
        if position + 2 > end:
            break
        length = int.from_bytes(data[position : position + 2], "big")
        if length < 2:
            raise FrameHeaderError(f"{kind} marker FF{marker:02X} has length {length}")
        if marker == _SOS:
            if found is None:
                raise FrameHeaderError(f"{kind} frame starts a scan before its frame header")
            return found
        if marker in frame_markers:
            if found is not None:
                raise FrameHeaderError(f"{kind} frame has a second frame header (FF{marker:02X})")
            found = _jpeg_frame(data[position : position + length], marker, kind)
        position += length
    if found is None:
        raise FrameHeaderError(f"{kind} frame is truncated before its frame header")
    return found  # the scans are the decoder's business; the geometry is known


def _jpeg_frame(segment: memoryview, marker: int, kind: str) -> FrameHeader:
    """SOFn (ISO 10918-1 B.2.2) or SOF55 (ISO 14495-1 C.2.2): Lf P Y X Nf, then 3 bytes each."""
    if len(segment) < 8:
        raise FrameHeaderError(f"{kind} frame header (FF{marker:02X}) is truncated")
    length, precision, rows, columns, components = struct.unpack(">HBHHB", segment[:8])
    if length != 8 + 3 * components or len(segment) < length:
        raise FrameHeaderError(
            f"{kind} frame header (FF{marker:02X}) is {len(segment)} bytes for"
            f" {components} component(s): truncated or malformed"
        )
    if components == 0 or columns == 0 or not 2 <= precision <= 16:
        raise FrameHeaderError(
            f"{kind} frame header declares {columns} columns, {components} components and"
            f" {precision}-bit precision"
        )
    if rows == 0:
        # The height would come in a DNL marker after the first scan: unknowable before
        # decoding, so no budget can be checked.
        raise FrameHeaderError(f"{kind} frame defines its height later (DNL): refused")
    return FrameHeader(kind, columns, rows, components, precision)


# -- JPEG 2000 and HTJ2K: the SIZ marker segment -----------------------------------------------


def _jpeg_2000(data: memoryview) -> FrameHeader:
    """A codestream (SOC then SIZ), or a JP2 file whose contiguous codestream box holds one."""
    if bytes(data[:12]) == _JP2_SIGNATURE:
        return _siz(_jp2_codestream(data))
    return _siz(data)


def _jp2_codestream(data: memoryview) -> memoryview:
    """The contents of the first `jp2c` box (ISO 15444-1 I.4), walking top-level boxes."""
    position, end = 0, len(data)
    while position + 8 <= end:
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        header = 8
        if length == 1:  # XLBox: a 64-bit length follows
            if position + 16 > end:
                break
            length = int.from_bytes(data[position + 8 : position + 16], "big")
            header = 16
        elif length == 0:  # the box runs to the end of the data
            length = end - position
        if length < header:
            raise FrameHeaderError(f"JP2 box {kind!r} has length {length}")
        if kind == b"jp2c":
            return data[position + header :]  # may run past a first fragment: SIZ comes first
        position += length
    raise FrameHeaderError("JP2 data has no contiguous codestream box (jp2c) in reach")


def _siz(data: memoryview) -> FrameHeader:
    """SIZ (ISO 15444-1 A.5.1), which must follow SOC: image and tile sizes, components."""
    if bytes(data[:2]) != _SOC:
        raise FrameHeaderError("JPEG 2000 codestream does not start with SOC (FF4F)")
    if len(data) < 4 + 38:
        raise FrameHeaderError("JPEG 2000 codestream is truncated before its SIZ marker")
    marker, length, _capabilities, *sizes, components = struct.unpack(">HHH8IH", data[2 : 2 + 40])
    if marker != _SIZ:
        raise FrameHeaderError("JPEG 2000 codestream has no SIZ marker after SOC")
    width, height, x_offset, y_offset, tile_width, tile_height, tile_x, tile_y = sizes
    if length != 38 + 3 * components or len(data) < 2 + 2 + length:
        raise FrameHeaderError(
            f"JPEG 2000 SIZ is {len(data) - 4} bytes for {components} component(s):"
            " truncated or malformed"
        )
    if not (
        0 < components <= 16384
        and x_offset < width
        and y_offset < height
        and tile_width > 0
        and tile_height > 0
        and tile_x <= x_offset < tile_x + tile_width
        and tile_y <= y_offset < tile_y + tile_height
    ):
        raise FrameHeaderError(
            f"JPEG 2000 SIZ is inconsistent: image {width}x{height} at ({x_offset},{y_offset}),"
            f" tiles {tile_width}x{tile_height} at ({tile_x},{tile_y}), {components} components"
        )
    precision = 0
    for index in range(components):
        start = 2 + 40 + 3 * index
        depth, x_step, y_step = data[start], data[start + 1], data[start + 2]
        if x_step == 0 or y_step == 0:
            raise FrameHeaderError(f"JPEG 2000 component {index} has a zero subsampling step")
        precision = max(precision, (depth & 0x7F) + 1)
    if precision > 38:
        raise FrameHeaderError(f"JPEG 2000 SIZ declares {precision}-bit components")
    tiles = -(-(width - tile_x) // tile_width) * -(-(height - tile_y) // tile_height)
    return FrameHeader(
        JPEG_2000, width - x_offset, height - y_offset, components, precision, tiles=tiles
    )


# -- RLE: the segment header -------------------------------------------------------------------


def _rle(data: memoryview) -> FrameHeader:
    """PS3.5 G.5: segment count, then 15 offsets; used ones start at 64, rise, stay inside."""
    if len(data) < _RLE_HEADER:
        raise FrameHeaderError(f"RLE frame is {len(data)} bytes, shorter than its header")
    count, *offsets = struct.unpack("<16I", data[:_RLE_HEADER])
    if not 1 <= count <= _RLE_MAX_SEGMENTS:
        raise FrameHeaderError(f"RLE header declares {count} segments (1 to 15 allowed)")
    used = offsets[:count]
    if used[0] != _RLE_HEADER:
        raise FrameHeaderError(f"RLE first segment starts at byte {used[0]}, not 64")
    if any(b <= a for a, b in itertools.pairwise(used)) or used[-1] >= len(data):
        raise FrameHeaderError(
            f"RLE segment offsets {used} do not rise inside the {len(data)}-byte frame"
        )
    return FrameHeader(RLE, segments=count)
