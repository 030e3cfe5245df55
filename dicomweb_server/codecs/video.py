"""Video Pixel Data (MPEG-2, H.264, HEVC) → the media types PS3.18 serves it as.

The stored stream is the encapsulated Pixel Data fragments joined (PS3.5 A.4; one fragment,
or several for the "fragmentable" syntaxes). PS3.5 8.2.5-8.2.6 leave MPEG-2's container open
(transport, program or elementary stream, or MP4); 8.2.7-8.2.11 require MPEG-TS or MP4 for
H.264 and HEVC, but elementary (Annex B) streams are met in practice, so all are sniffed.

A stream is served as stored when the media type names what is stored, or remuxed (never
re-encoded) into MP4 for `video/mp4`: by PyAV (ffmpeg's demuxers and MP4 muxer), imported
lazily so that without it only remuxing is unavailable. Timestamps come from the container
(PTS/DTS of a transport stream, PS3.5 8.2.7) or, for an elementary stream, from the picture
order count (`annexb`) and the frame rate the DICOM attributes give.

Memory: the stored stream is read through `FragmentReader`, a file-like view of the fragment
spans of the stored object (read in ffmpeg's 32 KiB blocks, never joined), and the MP4 is
written to a file the caller provides (a temporary file). In memory are at most ffmpeg's I/O
buffers, one access unit, and per frame a sample table entry (ffmpeg) plus 3 small ints here
(elementary streams): tens of bytes per frame, so about 5 MB for a 100,000-frame video.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, BinaryIO, Literal

from dicomweb_server.codecs.annexb import H264Order, HevcOrder, presentation_ranks
from dicomweb_server.codecs.registry import CodecError

__all__ = [
    "H264_SYNTAXES",
    "HEVC_SYNTAXES",
    "MAX_DECODED_VIDEO_FRAMES",
    "MPEG2_SYNTAXES",
    "VIDEO_MEDIA_TYPES",
    "VIDEO_SYNTAXES",
    "Container",
    "FragmentReader",
    "Mp4Result",
    "VideoOffer",
    "can_remux",
    "decode_frames",
    "encapsulated_fragments",
    "remux_to_mp4",
    "sniff_container",
    "video_codec",
    "video_offers",
]

Codec = Literal["mpeg2", "h264", "hevc"]
Container = Literal["mp4", "ts", "ps", "es", "unknown"]

MPEG2_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.4.100",  # MPEG2 Main Profile / Main Level
        "1.2.840.10008.1.2.4.100.1",  # ... fragmentable
        "1.2.840.10008.1.2.4.101",  # MPEG2 Main Profile / High Level
        "1.2.840.10008.1.2.4.101.1",
    }
)
H264_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.4.102",  # High Profile / Level 4.1
        "1.2.840.10008.1.2.4.102.1",
        "1.2.840.10008.1.2.4.103",  # BD-compatible High Profile / Level 4.1
        "1.2.840.10008.1.2.4.103.1",
        "1.2.840.10008.1.2.4.104",  # High Profile / Level 4.2 for 2D video
        "1.2.840.10008.1.2.4.104.1",
        "1.2.840.10008.1.2.4.105",  # High Profile / Level 4.2 for 3D video
        "1.2.840.10008.1.2.4.105.1",
        "1.2.840.10008.1.2.4.106",  # Stereo High Profile / Level 4.2
        "1.2.840.10008.1.2.4.106.1",
    }
)
HEVC_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.4.107",  # HEVC/H.265 Main Profile / Level 5.1
        "1.2.840.10008.1.2.4.108",  # HEVC/H.265 Main 10 Profile / Level 5.1
    }
)
VIDEO_SYNTAXES = MPEG2_SYNTAXES | H264_SYNTAXES | HEVC_SYNTAXES
# Bulk data (PS3.18 Table 8.7.3-5) and rendered (Table 8.7.4-1) media types of video, by codec,
# in our order of preference. "video/mpeg2" is the bulk data name, "video/mpeg" the rendered one.
VIDEO_MEDIA_TYPES: dict[Codec, tuple[str, ...]] = {
    "mpeg2": ("video/mpeg2", "video/mpeg", "video/mp4"),
    "h264": ("video/mp4",),
    "hevc": ("video/mp4", "video/H265"),
}
_TS_PACKET = 188
_ITEM = 0xE000FFFE
_SEQUENCE_DELIMITER = 0xE0DDFFFE
# Demuxer names (ffmpeg) of the containers and elementary streams we read.
_DEMUXERS: dict[tuple[Codec, Container], str] = {
    ("h264", "es"): "h264",
    ("hevc", "es"): "hevc",
    ("h264", "ts"): "mpegts",
    ("hevc", "ts"): "mpegts",
    ("h264", "ps"): "mpeg",
    ("hevc", "ps"): "mpeg",
}
# Demuxers that decoding reads with (MPEG-2 too); an unknown container is probed.
_DECODE_DEMUXERS: dict[Container, str] = {"ts": "mpegts", "ps": "mpeg", "mp4": "mov"}
_ELEMENTARY: dict[Codec, str] = {"mpeg2": "mpegvideo", "h264": "h264", "hevc": "hevc"}
# Frames decoded from the start to reach a requested one: a rendered frame or thumbnail of a
# video costs at most this many decodes (about 10 s of 30 Hz video).
MAX_DECODED_VIDEO_FRAMES = 300


def video_codec(transfer_syntax_uid: str) -> Codec | None:
    """The video codec a transfer syntax names, or None when it is not a video syntax."""
    if transfer_syntax_uid in MPEG2_SYNTAXES:
        return "mpeg2"
    if transfer_syntax_uid in H264_SYNTAXES:
        return "h264"
    if transfer_syntax_uid in HEVC_SYNTAXES:
        return "hevc"
    return None


def sniff_container(head: bytes) -> Container:
    """What the stored stream is, from its first bytes (at least 377 for a transport stream).

    `ts`: 188-byte packets with sync byte 0x47; `mp4`: an ISO BMFF `ftyp` box; `ps`: an MPEG
    program stream pack header; `es`: an elementary stream (a start code first).
    """
    if len(head) >= 8 and head[4:8] == b"ftyp":
        return "mp4"
    if head[:1] == b"\x47" and all(
        head[i] == 0x47 for i in range(_TS_PACKET, min(len(head), 3 * _TS_PACKET), _TS_PACKET)
    ):
        return "ts"
    if head.startswith(b"\x00\x00\x01\xba"):
        return "ps"
    if head.startswith((b"\x00\x00\x01", b"\x00\x00\x00\x01")):
        return "es"
    return "unknown"


@dataclass(frozen=True, slots=True)
class VideoOffer:
    """A media type the stream can be served as: the stored bytes, or remuxed into MP4."""

    media_type: str
    remux: bool


def video_offers(transfer_syntax_uid: str, container: Container) -> tuple[VideoOffer, ...]:
    """The media types a stored stream can be served as, in our order of preference.

    MPEG-2 is served as stored (`video/mpeg2`, `video/mpeg`), and as `video/mp4` only when
    stored in MP4. H.264 and HEVC are `video/mp4`: as stored when in MP4, remuxed from a
    transport, program or elementary stream; HEVC is also `video/H265` as stored. Remuxing is
    offered only when PyAV is installed (`can_remux`). Empty for a syntax that is not video.
    """
    codec = video_codec(transfer_syntax_uid)
    if codec is None:
        return ()
    offers = []
    for media_type in VIDEO_MEDIA_TYPES[codec]:
        if media_type != "video/mp4" or container == "mp4":
            offers.append(VideoOffer(media_type, remux=False))
        elif (codec, container) in _DEMUXERS and can_remux():
            offers.append(VideoOffer(media_type, remux=True))
    return tuple(offers)


def can_remux() -> bool:
    """True when PyAV (and so ffmpeg's muxers) can be imported."""
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def encapsulated_fragments(fp: BinaryIO, value_offset: int, size: int) -> list[tuple[int, int]]:
    """(offset, length) of each fragment of encapsulated Pixel Data, Basic Offset Table skipped.

    `value_offset` is where the Pixel Data value starts in `fp` (PixelLayout.value_offset);
    only the 8-byte item headers are read (PS3.5 A.4).
    """
    position = value_offset
    spans: list[tuple[int, int]] = []
    first = True
    while position + 8 <= size:
        fp.seek(position)
        tag, length = struct.unpack("<II", fp.read(8))
        if tag == _SEQUENCE_DELIMITER:
            return spans
        if tag != _ITEM or length == 0xFFFFFFFF or position + 8 + length > size:
            raise CodecError("encapsulated Pixel Data has a malformed item")
        if not first and length:
            spans.append((position + 8, length))
        first = False
        position += 8 + length
    raise CodecError("encapsulated Pixel Data has no sequence delimiter")


class FragmentReader(io.RawIOBase):
    """A read-only, seekable file over byte spans of another file: the fragments, joined."""

    def __init__(self, fp: BinaryIO, spans: Sequence[tuple[int, int]]) -> None:
        super().__init__()
        self._fp = fp
        self._spans = list(spans)
        self._starts = []
        total = 0
        for _, length in self._spans:
            self._starts.append(total)
            total += length
        self._size = total
        self._position = 0

    @property
    def size(self) -> int:
        return self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._position < self._size:
            index = self._span_at(self._position)
            offset, length = self._spans[index]
            inside = self._position - self._starts[index]
            count = min(len(view) - done, length - inside)
            self._fp.seek(offset + inside)
            chunk = self._fp.read(count)
            if not chunk:
                raise CodecError("the stored object ends inside a fragment")
            view[done : done + len(chunk)] = chunk
            done += len(chunk)
            self._position += len(chunk)
        return done

    def _span_at(self, position: int) -> int:
        low, high = 0, len(self._starts) - 1
        while low < high:
            middle = (low + high + 1) // 2
            if self._starts[middle] <= position:
                low = middle
            else:
                high = middle - 1
        return low


@dataclass(frozen=True, slots=True)
class Mp4Result:
    """What was written: frames (samples), duration in seconds, picture size."""

    frames: int
    duration: float
    width: int
    height: int


def remux_to_mp4(
    stream: BinaryIO,
    out_path: str,
    transfer_syntax_uid: str,
    container: Container,
    frame_rate: Fraction | None,
) -> Mp4Result:
    """Write the stored video `stream` as an MP4 file at `out_path`, without re-encoding.

    `stream` is seekable (a `FragmentReader`); `out_path` a path, as the MP4 muxer rewrites
    the file to move its index (`moov`) before the media data, so browsers can play it while
    it downloads. `frame_rate` (`documents.video_timing`) times an elementary stream (30 fps
    when None). Synchronous and CPU-light (demuxing and muxing only); raises CodecError when
    the stream cannot be remuxed.
    """
    codec = video_codec(transfer_syntax_uid)
    demuxer = _DEMUXERS.get((codec, container)) if codec is not None else None
    if codec is None or demuxer is None:
        raise CodecError(f"{transfer_syntax_uid} video stored as {container} is not remuxed")
    try:
        import av
    except ImportError as exc:
        raise CodecError("video remuxing needs PyAV (the 'av' package)") from exc
    try:
        ranks: list[int] | None = None
        if container == "es":
            ranks = _elementary_ranks(av, stream, demuxer, codec)
        stream.seek(0)
        return _mux(av, stream, out_path, demuxer, ranks, frame_rate or Fraction(30))
    except av.FFmpegError as exc:
        raise CodecError(f"video stream cannot be remuxed: {exc}") from exc


def _elementary_ranks(av: Any, stream: BinaryIO, demuxer: str, codec: Codec) -> list[int]:
    """Pass 1 over an elementary stream: each access unit's presentation index."""
    order = H264Order() if codec == "h264" else HevcOrder()
    with av.open(stream, "r", format=demuxer) as source:
        for packet in source.demux(source.streams.video[0]):
            if packet.size:
                order.feed(bytes(packet))
    return presentation_ranks(order.units)


def _mux(
    av: Any,
    stream: BinaryIO,
    out_path: str,
    demuxer: str,
    ranks: list[int] | None,
    frame_rate: Fraction,
) -> Mp4Result:
    """Pass 2: copy the packets into MP4, timed by `ranks` when the input has no timestamps."""
    tick = 1 / frame_rate
    # Decode times trail presentation times by the deepest reordering, so none exceeds its pts.
    delay = max((i - rank for i, rank in enumerate(ranks)), default=0) if ranks else 0
    frames = 0
    with av.open(stream, "r", format=demuxer) as source:
        video = source.streams.video[0]
        with av.open(out_path, "w", format="mp4", options={"movflags": "+faststart"}) as sink:
            track = sink.add_stream_from_template(video)
            for packet in source.demux(video):
                if not packet.size:
                    continue
                if ranks is not None:
                    if frames >= len(ranks):
                        break
                    packet.time_base = tick
                    packet.pts = ranks[frames]
                    packet.dts = frames - delay
                    packet.duration = 1
                packet.stream = track
                sink.mux(packet)
                frames += 1
    if frames == 0:
        raise CodecError("the video stream holds no frames")
    return _probe(av, out_path)


def _probe(av: Any, path: str) -> Mp4Result:
    """Frames, duration and size as the written MP4 declares them (its `moov` only)."""
    with av.open(path) as written:
        video = written.streams.video[0]
        duration = float(video.duration * video.time_base) if video.duration else 0.0
        return Mp4Result(
            video.frames, duration, video.codec_context.width, video.codec_context.height
        )


def decode_frames(
    stream: BinaryIO,
    transfer_syntax_uid: str,
    container: Container,
    numbers: Sequence[int],
    max_decoded_bytes: int,
) -> list[Any]:
    """Frames `numbers` (from 1, in presentation order) of the stored video `stream` as RGB
    arrays (rows × columns × 3, uint8), in the order asked for; for rendered images and
    thumbnails.

    Decoding runs from the start of the stream up to the last frame asked for, so at most
    MAX_DECODED_VIDEO_FRAMES frames in; one decoded frame is held at a time besides those
    asked for. Raises CodecError when the stream cannot be decoded or ends first.
    """
    codec = video_codec(transfer_syntax_uid)
    if codec is None:
        raise CodecError(f"{transfer_syntax_uid} is not a video transfer syntax")
    last = max(numbers)
    if last > MAX_DECODED_VIDEO_FRAMES:
        raise CodecError(
            f"frame {last} of a video is decoded from its start; frames up to"
            f" {MAX_DECODED_VIDEO_FRAMES} are rendered"
        )
    try:
        import av
    except ImportError as exc:
        raise CodecError("video decoding needs PyAV (the 'av' package)") from exc
    demuxer = _ELEMENTARY[codec] if container == "es" else _DECODE_DEMUXERS.get(container)
    wanted = set(numbers)
    found: dict[int, Any] = {}
    try:
        with av.open(stream, "r", format=demuxer) as source:
            video = source.streams.video[0]
            for number, frame in enumerate(source.decode(video), start=1):
                if number in wanted:
                    if frame.width * frame.height * 3 > max_decoded_bytes:
                        raise CodecError(
                            f"a {frame.width}x{frame.height} video frame is over the"
                            f" {max_decoded_bytes}-byte decoding limit"
                        )
                    found[number] = frame.to_ndarray(format="rgb24")
                if number >= last:
                    break
    except av.FFmpegError as exc:
        raise CodecError(f"video stream cannot be decoded: {exc}") from exc
    except IndexError as exc:
        raise CodecError("the stored stream holds no video") from exc
    missing = sorted(wanted - set(found))
    if missing:
        raise CodecError(f"the video ends before frame {missing[0]}")
    return [found[n] for n in numbers]
