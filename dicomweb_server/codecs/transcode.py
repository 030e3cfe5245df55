"""Frame and whole-instance transcoding between transfer syntaxes (PS3.5 8.2, PS3.18 8.7.3.4).

Synchronous and CPU-bound: callers run these in a worker thread, one frame or one instance
at a time.
"""

from __future__ import annotations

from typing import Any, BinaryIO

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import UID

from dicomweb_server.codecs.decode_guards import (
    MAX_DECODED_FRAME_BYTES,
    UNCOMPRESSED_SYNTAXES,
    check_frame,
)
from dicomweb_server.codecs.registry import (
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    NATIVE_SYNTAXES,
    CodecError,
    Encoded,
    FrameInfo,
    Pixels,
    decoder_for,
    encoder_for,
    lossy_method,
)

__all__ = [
    "decode_frame",
    "encode_frame",
    "frame_info",
    "pixels_from_file",
    "transcode_frame",
    "transcode_instance",
]

_EXTENDED_OFFSET_TABLES = (0x7FE00001, 0x7FE00002)


def decode_frame(
    data: bytes, source: str, info: FrameInfo, max_decoded_bytes: int = MAX_DECODED_FRAME_BYTES
) -> Pixels:
    """One stored frame (native bytes or the frame's fragments joined) → pixels, once its
    header agrees with `info` and fits the budget (decoders trust the frame's header)."""
    decoder = decoder_for(source)
    if decoder is None:
        raise CodecError(f"no installed codec decodes transfer syntax {source}")
    check_frame(data, source, info, max_decoded_bytes)
    return decoder(data, info)


def encode_frame(pixels: Pixels, target: str, info: FrameInfo) -> Encoded:
    """Pixels → one frame in `target`; native targets give little-endian bytes."""
    encoder = encoder_for(target)
    if encoder is None:
        raise CodecError(f"no installed codec encodes transfer syntax {target}")
    return encoder(pixels, info)


def transcode_frame(
    data: bytes,
    source: str,
    target: str,
    info: FrameInfo,
    max_decoded_bytes: int = MAX_DECODED_FRAME_BYTES,
) -> Encoded:
    """One stored frame in `source` → the same frame in `target`."""
    return encode_frame(decode_frame(data, source, info, max_decoded_bytes), target, info)


def frame_info(ds: Dataset) -> FrameInfo:
    """The Image Pixel attributes of a data set."""
    return FrameInfo(
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        samples_per_pixel=int(ds.get("SamplesPerPixel", 1) or 1),
        bits_allocated=int(ds.BitsAllocated),
        bits_stored=int(ds.get("BitsStored", ds.BitsAllocated) or ds.BitsAllocated),
        pixel_representation=int(ds.get("PixelRepresentation", 0) or 0),
        photometric_interpretation=str(ds.get("PhotometricInterpretation", "MONOCHROME2")),
        planar_configuration=int(ds.get("PlanarConfiguration", 0) or 0),
    )


def pixels_from_file(
    src: BinaryIO, numbers: list[int], max_decoded_bytes: int = MAX_DECODED_FRAME_BYTES
) -> list[Pixels]:
    """Frames decoded from a whole Part 10 file (when frame offsets were not recorded)."""
    from pydicom.pixels.utils import pixel_array

    src.seek(0)
    ds = dcmread(src)
    source = str(ds.file_meta.TransferSyntaxUID)
    out = []
    for n in numbers:
        _check_file_frame(ds, source, n, max_decoded_bytes)
        try:
            array = pixel_array(ds, index=n - 1)
        except Exception as exc:  # pydicom's handlers raise many types
            raise CodecError(f"cannot decode {source} pixel data: {str(exc)[:120]}") from exc
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
        if photometric.startswith("YBR_FULL") or photometric in ("YBR_RCT", "YBR_ICT"):
            photometric = "RGB"  # pixel_array converts to RGB (as_rgb)
        out.append(Pixels(array, photometric))
    return out


def _check_file_frame(ds: Dataset, source: str, number: int, max_decoded_bytes: int) -> None:
    """check_frame for a frame pydicom is about to decode from a whole data set."""
    if source not in UNCOMPRESSED_SYNTAXES and "PixelData" in ds:
        from pydicom.encaps import get_frame

        try:
            info = frame_info(ds)
            frame = get_frame(
                ds.PixelData,
                number - 1,
                number_of_frames=int(ds.get("NumberOfFrames", 1) or 1),
                extended_offsets=_extended_offsets(ds),
            )
        except Exception as exc:  # missing attributes, a broken offset table: pydicom varies
            raise CodecError(f"cannot find frame {number}: {str(exc)[:120]}") from exc
        check_frame(frame, source, info, max_decoded_bytes)


def _extended_offsets(ds: Dataset) -> tuple[bytes, bytes] | None:
    if all(tag in ds for tag in _EXTENDED_OFFSET_TABLES):
        return ds[_EXTENDED_OFFSET_TABLES[0]].value, ds[_EXTENDED_OFFSET_TABLES[1]].value
    return None


def _iter_stored_frames(ds: Dataset, source: str, info: FrameInfo, count: int) -> Any:
    if source in NATIVE_SYNTAXES:
        data = ds.PixelData
        length = info.frame_length
        if info.bits_allocated not in (8, 16, 32):
            raise CodecError(f"BitsAllocated {info.bits_allocated} cannot be transcoded")
        for i in range(count):
            yield data[i * length : (i + 1) * length]
        return
    from pydicom.encaps import generate_frames

    yield from generate_frames(ds.PixelData, number_of_frames=count)


def transcode_instance(
    src: BinaryIO, target: str, out: BinaryIO, max_decoded_bytes: int = MAX_DECODED_FRAME_BYTES
) -> str:
    """Rewrite a Part 10 file in `target`; returns the syntax written.

    Instances without Pixel Data asked for in a compressed syntax are written in explicit VR
    little endian: there is nothing to compress, and each part's Content-Type says so.
    """
    src.seek(0)
    ds = dcmread(src)
    source = str(ds.file_meta.TransferSyntaxUID)
    if source == EXPLICIT_VR_BIG_ENDIAN:
        _swap_words(ds)  # from here on, the data set is explicit VR little endian
        source = EXPLICIT_VR_LITTLE_ENDIAN
    if "PixelData" not in ds:
        if target not in NATIVE_SYNTAXES:
            target = EXPLICIT_VR_LITTLE_ENDIAN
    elif not (source in NATIVE_SYNTAXES and target in NATIVE_SYNTAXES):
        _transcode_pixels(ds, source, target, max_decoded_bytes)
    ds.file_meta.TransferSyntaxUID = UID(target)
    dcmwrite(  # not save_as: that refuses to leave big endian (_swap_words did the bytes)
        out,
        ds,
        enforce_file_format=True,
        implicit_vr=target == IMPLICIT_VR_LITTLE_ENDIAN,
        little_endian=True,
    )
    return target


# Bytes per word of the VRs whose values pydicom keeps as raw bytes in the file's byte order.
_WORD_SIZES = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


def _swap_words(ds: Dataset) -> None:
    """Turn the raw word values of a data set read from explicit VR big endian (retired,
    PS3.5 A.3) into little endian, nested sequences included; pydicom converts the others
    itself when the data set is written.

    Native Pixel Data is swapped by its pixel cell (Bits Allocated), not by its VR's word:
    32-bit pixels (a dose grid) are OW, and swapping their 16-bit halves would scramble every
    value.
    """
    bits = ds.get("BitsAllocated")
    for element in ds:
        if element.VR == "SQ":
            for item in element.value:
                _swap_words(item)
            continue
        size = _WORD_SIZES.get(str(element.VR))
        if element.tag == 0x7FE00010 and size is not None and bits in (32, 64):
            size = int(bits) // 8
        value = element.value
        if size is None or not isinstance(value, bytes) or len(value) % size:
            continue
        element.value = np.frombuffer(value, dtype=f">u{size}").astype(f"<u{size}").tobytes()


def _transcode_pixels(ds: Dataset, source: str, target: str, max_decoded_bytes: int) -> None:
    info = frame_info(ds)
    count = int(ds.get("NumberOfFrames", 1) or 1)
    encoded: list[bytes] = []
    photometric = info.photometric_interpretation
    for frame in _iter_stored_frames(ds, source, info, count):
        result = transcode_frame(frame, source, target, info, max_decoded_bytes)
        encoded.append(result.data)
        photometric = result.photometric_interpretation
    if target in NATIVE_SYNTAXES:
        data = b"".join(encoded)
        ds.PixelData = data + b"\0" * (len(data) % 2)
        ds["PixelData"].VR = "OB" if info.bits_allocated <= 8 else "OW"
        ds["PixelData"].is_undefined_length = False
    else:
        from pydicom.encaps import encapsulate

        ds.PixelData = encapsulate(encoded, has_bot=len(encoded) > 1)
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    for tag in _EXTENDED_OFFSET_TABLES:
        if tag in ds:
            del ds[tag]
    ds.PhotometricInterpretation = photometric
    if info.samples_per_pixel > 1:
        ds.PlanarConfiguration = 0
    method = lossy_method(target)
    if method is not None and method != lossy_method(source):
        # PS3.3 C.7.6.1.1.5: once lossy, always marked lossy, with every method applied.
        ds.LossyImageCompression = "01"
        methods = [str(m) for m in (ds.get("LossyImageCompressionMethod") or [])]
        ds.LossyImageCompressionMethod = [*methods, method]
