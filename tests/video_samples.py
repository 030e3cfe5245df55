"""Small synthetic videos for tests: encoded here with PyAV's bundled encoders, wrapped in
Video Photographic Image Storage instances. Frame i is a flat grey of level 8*i, so decoded
frames show whether presentation order survived remuxing."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
import pytest
from dicomfiles import uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate

VIDEO_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4.1"
H264 = "1.2.840.10008.1.2.4.102"
H264_FRAGMENTABLE = "1.2.840.10008.1.2.4.102.1"
HEVC = "1.2.840.10008.1.2.4.107"
MPEG2 = "1.2.840.10008.1.2.4.100"
# Our codec name → (PyAV encoder, elementary stream muxer).
ENCODERS = {
    "h264": ("libx264", "h264"),
    "hevc": ("libx265", "hevc"),
    "mpeg2": ("mpeg2video", "mpeg2video"),
}
_OPTIONS = {
    "libx264": {"bf": "2", "g": "12"},  # B-frames, so decode order is not presentation order
    "libx265": {"x265-params": "log-level=error:bframes=3:keyint=12"},
    "mpeg2video": {"bf": "2"},
}


def need_encoder(codec: str) -> str:
    """The PyAV encoder for `codec`, or skip: a PyAV build without it cannot make samples."""
    name = ENCODERS[codec][0]
    try:
        av.codec.Codec(name, "w")
    except Exception:
        pytest.skip(f"this PyAV build has no {name} encoder to make a sample video")
    return name


def encode(
    codec: str,
    container: str = "es",
    *,
    frames: int = 24,
    width: int = 64,
    height: int = 48,
    rate: Fraction = Fraction(25),
    noise: bool = False,
    moving_bar: bool = False,
) -> bytes:
    """`frames` grey frames as an elementary stream ("es"), MPEG-TS ("ts") or MP4 ("mp4");
    with `noise`, random pixels instead (a stream that does not compress); with
    `moving_bar`, a left-to-right ramp crossed by a white bar that moves each frame (a video
    whose every frame, the first too, shows something)."""
    encoder = need_encoder(codec)
    fmt = {"es": ENCODERS[codec][1], "ts": "mpegts", "mp4": "mp4"}[container]
    out = io.BytesIO()
    with av.open(out, "w", format=fmt) as sink:
        stream = sink.add_stream(encoder, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = _OPTIONS[encoder]
        rng = np.random.default_rng(0)
        for i in range(frames):
            level = np.full((height, width, 3), (8 * i) % 256, np.uint8)
            if noise:
                level = rng.integers(0, 256, (height, width, 3), np.uint8)
            elif moving_bar:
                ramp = np.linspace(32, 160, width, dtype=np.float64).astype(np.uint8)
                level = np.broadcast_to(ramp[None, :, None], (height, width, 3)).copy()
                left = (i * 4) % width
                level[:, left : left + max(2, width // 16)] = 255
            frame = av.VideoFrame.from_ndarray(level, format="rgb24")
            frame.pts, frame.time_base = i, 1 / rate
            for packet in stream.encode(frame):
                sink.mux(packet)
        for packet in stream.encode():
            sink.mux(packet)
    return out.getvalue()


def video_instance(
    stream: bytes,
    syntax: str,
    *,
    frames: int,
    width: int = 64,
    height: int = 48,
    frame_time: float | None = 40.0,
    cine_rate: int | None = 25,
    fragment_size: int | None = None,
) -> Dataset:
    """A Video Photographic Image instance whose Pixel Data encapsulates `stream`."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = VIDEO_PHOTOGRAPHIC
    ds.SOPClassUID = VIDEO_PHOTOGRAPHIC
    ds.SOPInstanceUID = uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = syntax
    ds.StudyInstanceUID = uid()
    ds.SeriesInstanceUID = uid()
    ds.PatientID = "PAT-VIDEO"
    ds.PatientName = "Video^Test"
    ds.Modality = "ES"
    ds.StudyDate = "20240115"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_PARTIAL_420"
    ds.PlanarConfiguration = 0
    ds.Rows = height
    ds.Columns = width
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = 0x00181063
    if frame_time is not None:
        ds.FrameTime = frame_time
    if cine_rate is not None:
        ds.CineRate = cine_rate
    size = fragment_size or len(stream) + (len(stream) % 2)
    pieces = [stream[i : i + size] for i in range(0, len(stream), size)]
    # One fragment holds the whole stream; the fragmentable syntaxes split it (PS3.5 8.2.7).
    ds.PixelData = encapsulate([b"".join(pieces)]) if len(pieces) == 1 else _fragments(pieces)
    ds["PixelData"].VR = "OB"
    return ds


def _fragments(pieces: list[bytes]) -> bytes:
    """An encapsulated value of several fragments of one frame, empty offset table."""
    out = b"\xfe\xff\x00\xe0\x00\x00\x00\x00"
    for piece in pieces:
        piece += b"\x00" * (len(piece) % 2)
        out += b"\xfe\xff\x00\xe0" + len(piece).to_bytes(4, "little") + piece
    return out


def decoded(path_or_bytes: str | bytes) -> tuple[list[int], list[float], float, int, int]:
    """(grey level per frame in presentation order, each frame's time, duration, width, height)
    of an MP4 as a player sees it: frames sorted by their presentation timestamps."""
    source = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    with av.open(source) as container:
        video = container.streams.video[0]
        shown = sorted(
            (float(frame.pts * frame.time_base), int(frame.to_ndarray(format="gray").mean()))
            for frame in container.decode(video)
        )
        duration = float(video.duration * video.time_base) if video.duration else 0.0
        width, height = video.codec_context.width, video.codec_context.height
    return [level for _, level in shown], [time for time, _ in shown], duration, width, height
