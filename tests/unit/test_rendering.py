"""Rendering pipeline (codecs/rendering.py): LUTs, windows, colour, geometry, encoders."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file

from dicomweb_server.codecs.registry import CodecError, FrameInfo, Pixels
from dicomweb_server.codecs.rendering import (
    MAX_RENDER_PIXELS,
    ImageAttributes,
    Lut,
    RenderBudgetError,
    RenderOptions,
    RenderParameterError,
    Viewport,
    Window,
    bulk_paths,
    check_render_budget,
    present,
    render,
    render_pixels,
)
from dicomweb_server.codecs.transcode import frame_info

EVRLE = "1.2.840.10008.1.2.1"
RLE = "1.2.840.10008.1.2.5"


def _attrs(rows: int = 4, columns: int = 4, **kwargs: object) -> ImageAttributes:
    info = FrameInfo(
        rows=rows,
        columns=columns,
        bits_allocated=int(kwargs.pop("bits_allocated", 16)),  # type: ignore[call-overload]
        bits_stored=int(kwargs.pop("bits_stored", 12)),  # type: ignore[call-overload]
        pixel_representation=int(kwargs.pop("pixel_representation", 0)),  # type: ignore[call-overload]
        photometric_interpretation=str(kwargs.pop("photometric", "MONOCHROME2")),
        samples_per_pixel=int(kwargs.pop("samples", 1)),  # type: ignore[call-overload]
        planar_configuration=int(kwargs.pop("planar", 0)),  # type: ignore[call-overload]
    )
    return ImageAttributes(info=info, **kwargs)  # type: ignore[arg-type]


def _grey(array: np.ndarray, attrs: ImageAttributes, **options: object) -> np.ndarray:
    image = present(
        Pixels(array, attrs.info.photometric_interpretation), attrs, RenderOptions(**options)
    )  # type: ignore[arg-type]
    return np.asarray(image)


def test_linear_window_follows_ps3_3_c_11_2_1_2() -> None:
    """c=100, w=11: x <= 94.5 → 0, x > 105.5 → 255, linear in between."""
    attrs = _attrs(1, 5)
    values = np.array([[94, 95, 100, 105, 106]], dtype=np.uint16)
    out = _grey(values, attrs, window=Window(100, 11, "LINEAR"))
    expected = [0, round(((95 - 99.5) / 10 + 0.5) * 255), 140, 255, 255]
    assert out.tolist() == [expected]


_EXTREME_WINDOWS = [
    # center, width, function: the image of 99, 100, 101 and of -1e308, 100, 1e308
    (1e308, 1e308, "LINEAR", [0, 0, 0], [0, 0, 128]),  # far above the values
    (1e308, 1e308, "SIGMOID", [0, 0, 0], [0, 0, 128]),
    (-1e308, 2.0, "LINEAR_EXACT", [255, 255, 255], [128, 255, 255]),  # far below them
    (-1e308, 2.0, "SIGMOID", [255, 255, 255], [128, 255, 255]),
    (100.0, 1.0000001, "LINEAR", [0, 255, 255], [0, 255, 255]),  # a step at 99.5
    (100.0, 1e-300, "LINEAR_EXACT", [0, 128, 255], [0, 128, 255]),
    (100.0, 1e-300, "SIGMOID", [0, 128, 255], [0, 128, 255]),
]


@pytest.mark.parametrize(("center", "width", "function", "near", "far"), _EXTREME_WINDOWS)
def test_extreme_windows_saturate_without_numpy_warnings(
    center: float, width: float, function: str, near: list[int], far: list[int]
) -> None:
    """`window=1e308,...` sent numpy's "overflow encountered in divide" to the log (with
    warnings as errors here, a failure): the arithmetic saturates to black or white."""
    window = Window(center, width, function)
    values = np.array([[99, 100, 101]], dtype=np.uint16)  # one lookup table
    assert _grey(values, _attrs(1, 3), window=window).tolist() == [near]
    floats = np.array([[-1e308, 100.0, 1e308]])  # float frames: the row-block path
    attrs = _attrs(1, 3, bits_allocated=64, bits_stored=64)
    assert _grey(floats, attrs, window=window).tolist() == [far]


def test_linear_exact_and_sigmoid_windows() -> None:
    attrs = _attrs(1, 3)
    values = np.array([[50, 100, 150]], dtype=np.uint16)
    exact = _grey(values, attrs, window=Window(100, 100, "LINEAR_EXACT"))
    assert exact.tolist() == [[0, 128, 255]]
    sigmoid = _grey(values, attrs, window=Window(100, 100, "SIGMOID"))
    assert sigmoid[0, 1] == 128
    assert sigmoid[0, 0] == round(255 / (1 + np.exp(2)))
    assert sigmoid[0, 2] == round(255 / (1 + np.exp(-2)))


def test_rescale_then_dataset_window_then_monochrome1_inversion() -> None:
    """Modality LUT (slope/intercept) before the window; MONOCHROME1 inverts the output."""
    attrs = _attrs(1, 2, rescale_slope=2.0, rescale_intercept=-1000.0, windows=(Window(0, 100),))
    values = np.array([[450, 550]], dtype=np.uint16)  # → -100, +100 HU
    assert _grey(values, attrs).tolist() == [[0, 255]]
    mono1 = _attrs(
        1,
        2,
        rescale_slope=2.0,
        rescale_intercept=-1000.0,
        windows=(Window(0, 100),),
        photometric="MONOCHROME1",
    )
    assert _grey(values, mono1).tolist() == [[255, 0]]


def test_requested_window_wins_over_the_dataset_window() -> None:
    attrs = _attrs(1, 2, windows=(Window(0, 10),))
    values = np.array([[1000, 3000]], dtype=np.uint16)
    assert _grey(values, attrs).tolist() == [[255, 255]]
    assert _grey(values, attrs, window=Window(2000, 2000, "LINEAR_EXACT")).tolist() == [[0, 255]]


def test_without_a_window_the_data_range_is_used() -> None:
    attrs = _attrs(1, 3)
    values = np.array([[1000, 1500, 2000]], dtype=np.uint16)
    assert _grey(values, attrs).tolist() == [[0, 128, 255]]


def test_modality_and_voi_lut_sequences() -> None:
    modality = Lut(first_mapped=10, bits=16, data=np.array([0, 100, 200, 300], dtype=np.int64))
    voi = Lut(first_mapped=0, bits=8, data=np.arange(0, 301, dtype=np.int64) * 255 // 300)
    attrs = _attrs(1, 4, modality_lut=modality, voi_lut=voi)
    values = np.array([[5, 11, 12, 99]], dtype=np.uint16)  # clamps below and above the table
    assert _grey(values, attrs).tolist() == [[0, 85, 170, 255]]


def test_high_bits_above_bits_stored_are_masked_and_signed_values_extended() -> None:
    attrs = _attrs(1, 2, windows=(Window(2048, 4096, "LINEAR_EXACT"),))
    overlay_bit = 1 << 13
    values = np.array([[0 | overlay_bit, 4095 | overlay_bit]], dtype=np.uint16)
    assert _grey(values, attrs).tolist() == [[0, 255]]
    signed = _attrs(1, 2, pixel_representation=1, windows=(Window(0, 4096, "LINEAR_EXACT"),))
    raw = np.array([[0xF800, 0x07FF]], dtype=np.uint16).view(np.int16)  # -2048, 2047 in 12 bits
    assert _grey(raw, signed).tolist() == [[0, 255]]


def test_eight_bit_and_float_paths() -> None:
    attrs = _attrs(1, 2, bits_allocated=8, bits_stored=8)
    assert _grey(np.array([[0, 255]], dtype=np.uint8), attrs).tolist() == [[0, 255]]
    floats = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    assert _grey(floats, _attrs(1, 3), window=Window(0.5, 1.0, "LINEAR_EXACT")).tolist() == [
        [0, 128, 255]
    ]


def test_palette_colour_maps_each_index_through_its_lut() -> None:
    red = Lut(0, 16, np.array([0, 0xFFFF, 0], dtype=np.int64))
    green = Lut(0, 16, np.array([0, 0, 0xFFFF], dtype=np.int64))
    blue = Lut(0, 16, np.array([0xFFFF, 0, 0], dtype=np.int64))
    attrs = _attrs(
        1,
        3,
        bits_allocated=8,
        bits_stored=8,
        photometric="PALETTE COLOR",
        palette=(red, green, blue),
    )
    out = _grey(np.array([[0, 1, 2]], dtype=np.uint8), attrs)
    assert out.tolist() == [[[0, 0, 255], [255, 0, 0], [0, 255, 0]]]


def test_ybr_full_is_converted_to_rgb() -> None:
    attrs = _attrs(1, 1, bits_allocated=8, bits_stored=8, samples=3, photometric="YBR_FULL")
    ybr = np.array([[[76, 85, 255]]], dtype=np.uint8)  # pure red in YCbCr
    (pixel,) = _grey(ybr, attrs)[0]
    assert abs(int(pixel[0]) - 255) <= 2 and pixel[1] <= 2 and pixel[2] <= 2


def test_native_ybr_full_422_and_planar_rgb_decode_for_rendering() -> None:
    attrs = _attrs(1, 2, bits_allocated=8, bits_stored=8, samples=3, photometric="YBR_FULL_422")
    data = bytes([76, 76, 85, 255])  # two red pixels: Y0 Y1 Cb Cr
    png = render([data], EVRLE, attrs, RenderOptions(media_type="image/png"))
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert image.shape == (1, 2, 3) and image[0, 0, 0] >= 253 and image[0, 1, 1] <= 2
    planar = _attrs(1, 2, bits_allocated=8, bits_stored=8, samples=3, photometric="RGB", planar=1)
    data = bytes([255, 0, 0, 255, 0, 0])  # R plane, G plane, B plane
    png = render([data], EVRLE, planar, RenderOptions(media_type="image/png"))
    assert np.asarray(Image.open(io.BytesIO(png))).tolist() == [[[255, 0, 0], [0, 255, 0]]]


def test_sixteen_bit_rgb_scales_to_eight_bits() -> None:
    attrs = _attrs(1, 1, samples=3, photometric="RGB", bits_stored=16)
    out = _grey(np.array([[[65535, 0, 32768]]], dtype=np.uint16), attrs)
    assert out.tolist() == [[[255, 0, 128]]]


def test_viewport_scales_with_aspect_kept_crops_and_flips() -> None:
    attrs = _attrs(100, 200)
    values = np.tile(np.arange(200, dtype=np.uint16), (100, 1))
    scaled = _grey(values, attrs, viewport=Viewport(50, 50))
    assert scaled.shape == (25, 50)
    cropped = _grey(values, attrs, viewport=Viewport(100, 100, (0, 0, 100, 100)))
    assert cropped.shape == (100, 100) and cropped[0, 0] < cropped[0, -1]
    flipped = _grey(values, attrs, viewport=Viewport(100, 100, (100, 0, -100, None)))
    assert flipped.shape == (100, 100) and flipped[0, 0] > flipped[0, -1]
    small = _grey(values, attrs, viewport=Viewport(400, 400), upscale=False)
    assert small.shape == (100, 200)
    with pytest.raises(RenderParameterError):
        _grey(values, attrs, viewport=Viewport(10, 10, (500, 500, 10, 10)))


def test_annotations_burn_text_into_the_image() -> None:
    attrs = _attrs(128, 128, patient=("Doe Jane", "ID PAT-1"), technique=("CT Axial",))
    values = np.zeros((128, 128), dtype=np.uint16)
    plain = _grey(values, attrs, window=Window(1000, 100))
    annotated = _grey(values, attrs, window=Window(1000, 100), annotations=("patient", "technique"))
    assert plain.max() == 0
    assert annotated[:40].max() > 200 and annotated[-40:].max() > 200


def test_encoders_jpeg_png_and_animated_gif() -> None:
    attrs = _attrs(32, 32, frame_time_ms=40.0)
    frames = [np.full((32, 32), value, dtype=np.uint16) for value in (0, 4095)]
    pixels = [Pixels(f, "MONOCHROME2") for f in frames]
    options = RenderOptions(window=Window(2048, 4096))
    jpeg = render_pixels(pixels[:1], attrs, options)
    assert jpeg.startswith(b"\xff\xd8")
    low = render_pixels(pixels[:1], attrs, RenderOptions(window=Window(2048, 4096), quality=5))
    assert low != jpeg
    png = render_pixels(pixels[:1], attrs, RenderOptions(media_type="image/png"))
    assert png.startswith(b"\x89PNG")
    gif = Image.open(
        io.BytesIO(
            render_pixels(
                pixels, attrs, RenderOptions(media_type="image/gif", window=Window(2048, 4096))
            )
        )
    )
    assert gif.n_frames == 2 and gif.info["duration"] == 40
    gif.seek(1)
    assert np.asarray(gif.convert("L")).min() == 255


def test_attributes_from_dicom_json_with_inline_and_bulk_luts() -> None:
    lut = np.array([0, 1000, 2000, 3000], dtype="<u2").tobytes()
    model = {
        "00280010": {"vr": "US", "Value": [2]},
        "00280011": {"vr": "US", "Value": [2]},
        "00280100": {"vr": "US", "Value": [16]},
        "00280101": {"vr": "US", "Value": [12]},
        "00280004": {"vr": "CS", "Value": ["MONOCHROME2"]},
        "00281050": {"vr": "DS", "Value": [40, 50]},
        "00281051": {"vr": "DS", "Value": [400, 500]},
        "00281056": {"vr": "CS", "Value": ["SIGMOID"]},
        "00281053": {"vr": "DS", "Value": [1]},
        "00281052": {"vr": "DS", "Value": [-1024]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
        "00080060": {"vr": "CS", "Value": ["CT"]},
        "00283000": {
            "vr": "SQ",
            "Value": [
                {
                    "00283002": {"vr": "US", "Value": [4, 0, 16]},
                    "00283006": {"vr": "OW", "InlineBinary": base64.b64encode(lut).decode()},
                }
            ],
        },
        "00283010": {
            "vr": "SQ",
            "Value": [
                {
                    "00283002": {"vr": "US", "Value": [4, 0, 8]},
                    "00283006": {"vr": "OW", "BulkDataURI": "x"},
                }
            ],
        },
    }
    assert bulk_paths(model) == ["00283010/0/00283006"]
    attrs = ImageAttributes.from_json(model, {"00283010/0/00283006": bytes([0, 10, 20, 30])})
    assert attrs.windows == (Window(40, 400, "SIGMOID"), Window(50, 500, "SIGMOID"))
    assert attrs.rescale_intercept == -1024
    assert attrs.modality_lut is not None and attrs.modality_lut.data.tolist() == [
        0,
        1000,
        2000,
        3000,
    ]
    assert attrs.voi_lut is not None and attrs.voi_lut.data.tolist() == [0, 10, 20, 30]
    assert attrs.patient[0] == "Doe Jane" and attrs.technique[0] == "CT"
    with pytest.raises(CodecError):
        ImageAttributes.from_json({"00280004": {"vr": "CS", "Value": ["MONOCHROME2"]}})


@pytest.mark.parametrize(
    ("name", "syntax"),
    [
        ("CT_small.dcm", EVRLE),
        ("MR_small_jpeg_ls_lossless.dcm", "1.2.840.10008.1.2.4.80"),
        ("SC_rgb_jpeg_dcmtk.dcm", "1.2.840.10008.1.2.4.50"),
        ("SC_rgb_rle_2frame.dcm", "1.2.840.10008.1.2.5"),
        ("examples_palette.dcm", EVRLE),
        ("SC_ybr_full_422_uncompressed.dcm", EVRLE),
        ("SC_rgb_rle_16bit.dcm", "1.2.840.10008.1.2.5"),
    ],
)
def test_pydicom_test_files_render_through_the_codec_registry(name: str, syntax: str) -> None:
    """Compressed sources decode through the codec registry; colour matches pydicom's RGB."""
    from pydicom.encaps import generate_frames
    from pydicom.pixels import apply_color_lut

    ds = dcmread(get_testdata_file(name))
    attrs = ImageAttributes.from_json(ds.to_json_dict(bulk_data_threshold=1 << 30))
    info = frame_info(ds)
    if syntax == EVRLE:
        frame = ds.PixelData[: info.frame_length]
    else:
        frame = next(
            generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1)))
        )
    png = render([frame], syntax, attrs, RenderOptions(media_type="image/png"))
    image = np.asarray(Image.open(io.BytesIO(png)))
    assert image.shape[:2] == (ds.Rows, ds.Columns)
    expected = ds.pixel_array if int(ds.get("NumberOfFrames", 1)) == 1 else ds.pixel_array[0]
    if info.photometric_interpretation == "PALETTE COLOR":
        expected = apply_color_lut(expected, ds) >> 8
    elif info.bits_stored > 8:
        expected = np.rint(expected / 257.0)
    if expected.ndim == 3:
        assert np.abs(image.astype(int) - expected.astype(int)).max() <= 3
    else:
        assert image.std() > 10  # a windowed greyscale image, not a flat one


# -- memory and budgets --------------------------------------------------------------------------


def _present_array(array: np.ndarray, attrs: ImageAttributes, **options: object) -> np.ndarray:
    pixels = Pixels(array, attrs.info.photometric_interpretation)
    return np.asarray(present(pixels, attrs, RenderOptions(**options)))  # type: ignore[arg-type]


_rng = np.random.default_rng(7)
_U16 = _rng.integers(0, 1 << 16, (90, 77), dtype=np.uint16)
_RGB8 = _rng.integers(0, 256, (90, 77, 3), dtype=np.uint8)
BLOCK_CASES = [
    ("12 of 16 bits, overlay bits set", _U16, {}),
    ("signed, rescaled", _U16.view(np.int16), {"pixel_representation": 1, "rescale_slope": 0.5}),
    ("no window: data range", _U16, {"bits_stored": 16, "rescale_intercept": -1024.0}),
    ("sigmoid", _U16, {"bits_stored": 16, "windows": (Window(30000, 9000, "SIGMOID"),)}),
    ("monochrome1", _U16, {"photometric": "MONOCHROME1"}),
    (
        "modality and VOI LUTs",
        _U16 % 4000,
        {
            "modality_lut": Lut(100, 16, _rng.integers(0, 4000, 3000)),
            "voi_lut": Lut(0, 12, np.arange(4096)),
        },
    ),
    ("float32, data range", _rng.normal(0, 100, (90, 77)).astype(np.float32), {}),
    ("int32", _rng.integers(-(1 << 30), 1 << 30, (90, 77), dtype=np.int32), {"bits_stored": 32}),
    ("16-bit RGB", _rng.integers(0, 1 << 16, (90, 77, 3), dtype=np.uint16), {"samples": 3}),
    ("YBR_FULL", _RGB8, {"samples": 3, "bits_stored": 8, "photometric": "YBR_FULL"}),
    (
        "palette",
        _RGB8[:, :, 0],
        {
            "bits_allocated": 8,
            "bits_stored": 8,
            "photometric": "PALETTE COLOR",
            "palette": tuple(Lut(0, 16, _rng.integers(0, 1 << 16, 256)) for _ in range(3)),
        },
    ),
]


@pytest.mark.parametrize(("name", "array", "attributes"), BLOCK_CASES)
def test_row_blocks_leave_output_pixels_unchanged(
    name: str, array: np.ndarray, attributes: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pixel work runs in row blocks; one row per block gives the whole-frame result."""
    from dicomweb_server.codecs import display

    kwargs = dict(attributes)
    if "photometric" not in kwargs and array.ndim == 3:
        kwargs["photometric"] = "RGB"
    attrs = _attrs(*array.shape[:2], **kwargs)
    whole = _present_array(array, attrs)
    monkeypatch.setattr(display, "_BLOCK_PIXELS", 1)
    assert np.array_equal(_present_array(array, attrs), whole), name


def test_large_16_bit_frame_renders_without_whole_frame_int64_copies() -> None:
    """A 16000x16000 16-bit frame peaked at 2.7 GB over its 0.5 GB source (int64 indices and
    float64 copies); now the 8-bit output plus a few megabytes. Here at 4096x4096."""
    import tracemalloc

    array = np.random.default_rng(1).integers(0, 1 << 16, (4096, 4096), dtype=np.uint16)
    attrs = _attrs(4096, 4096, rescale_intercept=-1024.0)
    tracemalloc.start()
    try:
        _present_array(array, attrs, viewport=Viewport(128, 128))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < array.nbytes, f"{peak / 2**20:.0f} MiB for a {array.nbytes / 2**20:.0f} MiB frame"


def test_frames_are_decoded_and_presented_one_at_a_time() -> None:
    """An animated GIF holds the small presented images, not every decoded frame at once."""
    import tracemalloc

    from dicomweb_server.codecs.transcode import encode_frame

    attrs = _attrs(512, 512)
    rng = np.random.default_rng(3)
    frames = [
        encode_frame(
            Pixels(rng.integers(0, 4096, (512, 512), dtype=np.uint16), "MONOCHROME2"),
            RLE,
            attrs.info,
        ).data
        for _ in range(32)
    ]
    options = RenderOptions(media_type="image/gif", viewport=Viewport(64, 64))
    render(frames[:1], RLE, attrs, options)  # warm up the codec imports
    tracemalloc.start()
    try:
        render(frames, RLE, attrs, options)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 512 * 512 * 2, f"{peak / 2**20:.1f} MiB: half the decoded frames or more"


def test_render_budget_refuses_256_gif_frames_at_4096_before_decoding() -> None:
    """Red team: 256 frames at viewport=4096,4096 (12.8 GB, two minutes measured) → refused
    before the first frame is decoded: these frames are not even valid RLE."""
    attrs = _attrs(256, 256, number_of_frames=256)
    options = RenderOptions(media_type="image/gif", viewport=Viewport(4096, 4096))
    with pytest.raises(RenderBudgetError, match=r"256 frame\(s\) at 4096x4096 outputs"):
        render([b"not RLE"] * 256, RLE, attrs, options)
    assert MAX_RENDER_PIXELS == 1 << 28


def test_render_budget_counts_decoded_and_fitted_output_pixels() -> None:
    info = _attrs(100, 200).info
    check_render_budget(5, info, RenderOptions(), 5 * 100 * 200)  # exactly at the limit
    with pytest.raises(RenderBudgetError, match=r"decodes 100000 pixels.*fewer frames"):
        check_render_budget(5, info, RenderOptions(), 5 * 100 * 200 - 1)
    big = RenderOptions(viewport=Viewport(1000, 1000))  # fitted: 1000x500, aspect kept
    with pytest.raises(RenderBudgetError, match="at 1000x500 outputs 500000"):
        check_render_budget(1, info, big, 400_000)
    check_render_budget(
        1, info, RenderOptions(viewport=Viewport(1000, 1000), upscale=False), 20_000
    )
    region = RenderOptions(viewport=Viewport(1000, 1000, (0, 0, 10, 10)))  # 10x10 → 1000x1000
    with pytest.raises(RenderBudgetError, match="at 1000x1000"):
        check_render_budget(1, info, region, 999_999)
    with pytest.raises(RenderParameterError):
        check_render_budget(1, info, RenderOptions(viewport=Viewport(9, 9, (900, 0, 5, 5))))
