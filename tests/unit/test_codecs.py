"""Codec registry and frame transcoding (PS3.5 8.2): lossless pairs are pixel-identical."""

from __future__ import annotations

import numpy as np
import pytest

from dicomweb_server.codecs import registry
from dicomweb_server.codecs.registry import CodecError, FrameInfo
from dicomweb_server.codecs.transcode import decode_frame, encode_frame, transcode_frame

EVRLE = "1.2.840.10008.1.2.1"
LOSSLESS = [
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.5",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.201",
]
LOSSY = {  # syntax: largest mean absolute error allowed, as a fraction of the range
    "1.2.840.10008.1.2.4.50": 0.01,
    "1.2.840.10008.1.2.4.51": 0.01,
    "1.2.840.10008.1.2.4.81": 0.01,
    "1.2.840.10008.1.2.4.91": 0.01,
    "1.2.840.10008.1.2.4.203": 0.01,
}


def _image(bits: int, samples: int = 1, signed: bool = False) -> tuple[np.ndarray, FrameInfo]:
    y, x = np.mgrid[0:64, 0:48]
    top = (1 << bits) - 1
    plane = (top / 2 + top / 3 * np.sin(x / 6.0) * np.cos(y / 9.0)).astype(np.int64)
    array = np.stack([plane, top - plane, plane // 2], axis=-1)[..., :samples].squeeze()
    allocated = 8 if bits <= 8 else 16
    if signed:
        array = array - (1 << (bits - 1))
    dtype = f"{'i' if signed else 'u'}{allocated // 8}"
    info = FrameInfo(
        rows=64,
        columns=48,
        samples_per_pixel=samples,
        bits_allocated=allocated,
        bits_stored=bits,
        pixel_representation=int(signed),
        photometric_interpretation="RGB" if samples == 3 else "MONOCHROME2",
    )
    return array.astype(dtype), info


@pytest.mark.parametrize("target", LOSSLESS)
@pytest.mark.parametrize(
    ("bits", "samples", "signed"), [(8, 1, False), (12, 1, False), (16, 1, True), (8, 3, False)]
)
def test_lossless_round_trip_is_pixel_identical(target, bits, samples, signed) -> None:  # type: ignore[no-untyped-def]
    array, info = _image(bits, samples, signed)
    encoded = transcode_frame(array.tobytes(), EVRLE, target, info)
    decoded = decode_frame(
        encoded.data, target, info.with_photometric(encoded.photometric_interpretation)
    )
    assert decoded.array.shape == array.shape
    assert np.array_equal(decoded.array, array)


LOSSY_CASES = [
    (target, bits, samples)
    for target in sorted(LOSSY)
    for bits, samples in [(8, 1), (8, 3), (12, 1)]
    if not (target == "1.2.840.10008.1.2.4.50" and bits > 8)  # baseline holds 8 bits
]


@pytest.mark.parametrize(("target", "bits", "samples"), LOSSY_CASES)
def test_lossy_round_trip_is_within_tolerance(target, bits, samples) -> None:  # type: ignore[no-untyped-def]
    array, info = _image(bits, samples)
    encoded = transcode_frame(array.tobytes(), EVRLE, target, info)
    decoded = decode_frame(
        encoded.data, target, info.with_photometric(encoded.photometric_interpretation)
    )
    error = np.abs(decoded.array.astype(float) - array.astype(float))
    assert error.mean() <= LOSSY[target] * (1 << bits)


@pytest.mark.parametrize(
    ("target", "bits", "signed"),
    [
        ("1.2.840.10008.1.2.4.50", 12, False),
        ("1.2.840.10008.1.2.4.51", 16, False),
        ("1.2.840.10008.1.2.4.51", 12, True),
    ],
)
def test_jpeg_lossy_refuses_what_it_cannot_hold_ps3_5_8_2_1(target, bits, signed) -> None:  # type: ignore[no-untyped-def]
    array, info = _image(bits, 1, signed)
    with pytest.raises(CodecError):
        transcode_frame(array.tobytes(), EVRLE, target, info)


def test_native_planar_configuration_is_read_and_written_by_pixel() -> None:
    array, info = _image(8, 3)
    planar = np.ascontiguousarray(array.transpose(2, 0, 1)).tobytes()
    pixels = decode_frame(planar, EVRLE, FrameInfo(**{**_fields(info), "planar_configuration": 1}))
    assert np.array_equal(pixels.array, array)
    assert encode_frame(pixels, EVRLE, info).data == array.tobytes()


def _fields(info: FrameInfo) -> dict[str, object]:
    return {name: getattr(info, name) for name in info.__slots__}


def test_frame_info_from_dicom_json() -> None:
    model = {
        "00280010": {"vr": "US", "Value": [4]},
        "00280011": {"vr": "US", "Value": [5]},
        "00280100": {"vr": "US", "Value": [16]},
        "00280101": {"vr": "US", "Value": [12]},
        "00280004": {"vr": "CS", "Value": ["MONOCHROME1"]},
    }
    info = FrameInfo.from_json(model)
    assert info == FrameInfo(4, 5, 1, 16, 12, 0, "MONOCHROME1", 0)
    assert info.frame_length == 40
    assert FrameInfo.from_json({}) is None


def test_missing_codec_disables_its_syntaxes_only(monkeypatch: pytest.MonkeyPatch) -> None:
    real = registry.importlib.import_module

    def without_imagecodecs(name: str):  # type: ignore[no-untyped-def]
        if name.endswith(".imagecodecs"):
            raise ImportError("imagecodecs is not installed")
        return real(name)

    monkeypatch.setattr(registry.importlib, "import_module", without_imagecodecs)
    monkeypatch.setattr(registry, "_tables", {})
    assert not registry.can_encode("1.2.840.10008.1.2.4.70")  # only imagecodecs encodes it
    assert registry.can_decode("1.2.840.10008.1.2.4.70")  # pylibjpeg still decodes it
    assert registry.is_available("1.2.840.10008.1.2.5")
    assert registry.can_encode("1.2.840.10008.1.2.4.50")  # Pillow takes over baseline JPEG


def test_unknown_syntax_is_unavailable() -> None:
    assert not registry.is_available("1.2.3.4")
    with pytest.raises(CodecError):
        transcode_frame(b"\0" * 4, EVRLE, "1.2.3.4", FrameInfo(2, 2))


@pytest.mark.parametrize(
    "name",
    [
        "SC_rgb_dcmtk_+eb+cy+n1.dcm",  # YBR_FULL
        "SC_rgb_dcmtk_+eb+cy+s2.dcm",  # YBR_FULL_422
        "SC_rgb_dcmtk_+eb+cr.dcm",  # RGB, no colour transform
        "SC_jpeg_no_color_transform.dcm",
        "JPGExtended.dcm",  # 12-bit extended: pylibjpeg decodes it behind imagecodecs
    ],
)
def test_jpeg_frames_decode_like_pydicom_through_libjpeg_turbo(name: str) -> None:
    """The fast 8-bit JPEG decoder (imagecodecs) gives pydicom's pixels, within the rounding
    two YCbCr → RGB conversions may differ by."""
    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from pydicom.encaps import generate_frames

    from dicomweb_server.codecs.transcode import frame_info

    path = get_testdata_file(name)
    assert path is not None
    ds = dcmread(path)
    ds.pixel_array_options(decoding_plugin="pylibjpeg")
    expected = ds.pixel_array  # pydicom converts YBR to RGB (as_rgb)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    pixels = decode_frame(frame, str(ds.file_meta.TransferSyntaxUID), frame_info(ds))
    assert pixels.array.shape == expected.shape
    difference = np.abs(pixels.array.astype(int) - expected.astype(int))
    assert difference.max() <= 2
    if ds.SamplesPerPixel == 3:
        assert pixels.photometric_interpretation == "RGB"
