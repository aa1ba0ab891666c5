"""load_image: every mode converted or refused explicitly; broken files and bombs refused; ImageProcessor output."""

import struct
import zlib

import numpy as np
import pytest
import tifffile
import torch
import torchvision.transforms.v2.functional as F
from einops import rearrange, repeat
from PIL import Image

from rsfuse.data import CLIP_MEAN, CLIP_STD, ImageLoadError, ImageProcessor, load_image, stretch_to_uint8

MEAN_RGB = np.array([int(value * 255) for value in CLIP_MEAN])  # (122, 116, 104)


def _save(tmp_path, image, name):
    path = tmp_path / name
    image.save(path)
    return path


def _rgb(path, **kwargs):
    image = load_image(path, **kwargs)
    assert image.mode == "RGB"
    return np.asarray(image).astype(int)


def test_rgb_is_kept_as_is(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert np.array_equal(_rgb(_save(tmp_path, Image.fromarray(array, "RGB"), "a.png")), array)


def test_rgba_is_composited_on_the_clip_mean(tmp_path):
    array = np.zeros((1, 3, 4), dtype=np.uint8)
    array[0, :, :3] = (200, 40, 10)
    array[0, :, 3] = (0, 255, 128)
    out = _rgb(_save(tmp_path, Image.fromarray(array, "RGBA"), "a.png"))
    assert np.array_equal(out[0, 0], MEAN_RGB)
    assert np.array_equal(out[0, 1], [200, 40, 10])
    expected = (np.array([200, 40, 10]) * 128 + MEAN_RGB * 127) / 255
    assert np.abs(out[0, 2] - expected).max() <= 1


def test_la_is_composited_on_the_clip_mean(tmp_path):
    image = Image.fromarray(np.array([[[90, 0], [90, 255]]], dtype=np.uint8), "LA")
    out = _rgb(_save(tmp_path, image, "a.png"))
    assert np.array_equal(out[0, 0], MEAN_RGB) and np.array_equal(out[0, 1], [90, 90, 90])


def test_grey_and_bilevel_are_replicated(tmp_path):
    grey = np.array([[0, 77, 255]], dtype=np.uint8)
    assert np.array_equal(_rgb(_save(tmp_path, Image.fromarray(grey, "L"), "l.png"))[0, :, 1], grey[0])
    assert np.array_equal(_rgb(_save(tmp_path, Image.fromarray(grey, "L"), "l.png")).std(axis=-1), np.zeros((1, 3)))
    bilevel = Image.fromarray(grey > 100).convert("1")
    assert np.array_equal(_rgb(_save(tmp_path, bilevel, "b.png"))[0, :, 0], [0, 0, 255])


def test_palette_with_and_without_transparency(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette([10, 20, 30, 250, 240, 230] + [0] * 762)
    image.putpixel((1, 0), 1)
    assert _rgb(_save(tmp_path, image, "p.png")).tolist() == [[[10, 20, 30], [250, 240, 230]]]
    image.info["transparency"] = 0
    path = tmp_path / "pt.png"
    image.save(path, transparency=0)
    assert Image.open(path).mode == "P"
    assert _rgb(path).tolist() == [[MEAN_RGB.tolist(), [250, 240, 230]]]


def test_cmyk_is_converted(tmp_path):
    image = Image.new("CMYK", (3, 2), (0, 255, 255, 0))  # pure red in CMYK
    path = _save(tmp_path, image, "c.tif")
    assert Image.open(path).mode == "CMYK"
    assert np.array_equal(_rgb(path)[0, 0], [255, 0, 0])


def _ramp(dtype):
    return np.arange(100, dtype=np.float64).reshape(10, 10).astype(dtype)


@pytest.mark.parametrize(
    ("mode", "name", "make"),
    [
        ("I;16", "a.png", lambda: Image.fromarray((_ramp(np.uint16) * 600).astype(np.uint16))),
        ("I;16B", "a.tif", lambda: Image.frombytes("I;16B", (10, 10), (_ramp(">u2") * 600).astype(">u2").tobytes())),
        ("I", "a.tif", lambda: Image.fromarray((_ramp(np.int64) * 100_000 - 10**6).astype(np.int32))),
        ("F", "a.tif", lambda: Image.fromarray((_ramp(np.float32) / 7 - 3).astype(np.float32))),
    ],
)
def test_high_bit_depth_is_stretched_by_percentiles(tmp_path, mode, name, make):
    path = _save(tmp_path, make(), name)
    assert Image.open(path).mode == mode
    out = _rgb(path)
    grey = out[..., 0].ravel()
    assert np.array_equal(out[..., 0], out[..., 2])
    # ramp 0..99: the 2nd/98th percentiles are 1.98/97.02 -> values 0..1 clip to 0, 98..99 clip to 255
    assert grey[:2].tolist() == [0, 0] and grey[-2:].tolist() == [255, 255]
    assert np.all(np.diff(grey) >= 0) and grey[50] == round((50 - 1.98) / (97.02 - 1.98) * 255)


def test_float_nan_becomes_zero_and_constant_is_black():
    out = stretch_to_uint8(np.array([[np.nan, 1.0], [np.inf, 3.0]]))
    assert out[0, 0] == 0 and out[1, 0] == 0 and out[1, 1] == 255
    assert not stretch_to_uint8(np.full((3, 3), 7.0)).any()


def test_multiband_tiff_refused_without_bands_and_read_with_them(tmp_path):
    rng = np.random.default_rng(1)
    bands = rng.integers(0, 4000, (6, 8, 5)).astype(np.uint16)
    path = tmp_path / "s2.tif"
    tifffile.imwrite(path, bands, photometric="minisblack", planarconfig="contig")
    with pytest.raises(ImageLoadError, match=r"s2.tif: 5-band TIFF .*bands=\(r, g, b\)"):
        load_image(path)
    out = _rgb(path, bands=(3, 2, 1))
    assert np.array_equal(out, stretch_to_uint8(bands[..., [3, 2, 1]]))
    with pytest.raises(ImageLoadError, match="out of range"):
        load_image(path, bands=(5, 2, 1))


def test_planar_multiband_uint8_tiff_uses_bands_as_is(tmp_path):
    planes = np.random.default_rng(2).integers(0, 256, (4, 5, 6)).astype(np.uint8)  # [bands, H, W]
    path = tmp_path / "planar.tif"
    tifffile.imwrite(path, planes, photometric="minisblack", planarconfig="separate")
    assert np.array_equal(_rgb(path, bands=(0, 3, 1)), np.moveaxis(planes[[0, 3, 1]], 0, -1))


def test_rgb_plus_unspecified_band_is_not_silently_dropped(tmp_path):
    """PIL opens RGB + an unspecified 4th band (e.g. NIR) as plain RGB; we refuse unless bands are named."""
    array = np.random.default_rng(3).integers(0, 256, (4, 4, 4)).astype(np.uint8)
    path = tmp_path / "rgbn.tif"
    tifffile.imwrite(path, array, photometric="rgb", extrasamples=["unspecified"])
    assert Image.open(path).mode == "RGB"
    with pytest.raises(ImageLoadError, match="4-band TIFF"):
        load_image(path)
    assert np.array_equal(_rgb(path, bands=(3, 1, 0)), array[..., [3, 1, 0]])


def test_rgba_tiff_is_alpha_not_a_band(tmp_path):
    array = np.zeros((2, 2, 4), dtype=np.uint8)
    array[..., 0] = 255
    array[0, :, 3] = 255
    path = tmp_path / "rgba.tif"
    tifffile.imwrite(path, array, photometric="rgb", extrasamples=["unassalpha"])
    out = _rgb(path)
    assert np.array_equal(out[0, 0], [255, 0, 0]) and np.array_equal(out[1, 0], MEAN_RGB)


def test_unknown_mode_refused_naming_it(tmp_path):
    path = _save(tmp_path, Image.new("LAB", (3, 3), (50, 10, 10)), "lab.tif")
    with pytest.raises(ImageLoadError, match=r"lab.tif: unsupported image mode 'LAB'"):
        load_image(path)


def test_missing_corrupt_and_truncated_files(tmp_path):
    with pytest.raises(ImageLoadError, match=r"absent.png: file not found"):
        load_image(tmp_path / "absent.png")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG but not really" * 10)
    with pytest.raises(ImageLoadError, match="corrupt.png: not a recognised image"):
        load_image(corrupt)
    noise = np.random.default_rng(4).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    whole = _save(tmp_path, Image.fromarray(noise), "w.png")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(ImageLoadError, match="truncated.png: truncated or corrupt"):
        load_image(truncated)
    jpeg = _save(tmp_path, Image.open(whole).convert("RGB"), "w.jpg")
    cut_jpeg = tmp_path / "cut.jpg"
    cut_jpeg.write_bytes(jpeg.read_bytes()[:200])
    with pytest.raises(ImageLoadError, match="cut.jpg"):
        load_image(cut_jpeg)


def _png_header_only(width, height):
    """A PNG whose header claims ``width x height`` grey pixels with almost no data: a decompression bomb."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [10_000, 60_000])  # PIL warning range (as an error) and PIL error range
def test_decompression_bomb_is_refused(tmp_path, side):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(side, side))
    with pytest.raises(ImageLoadError, match="bomb.png: .*(decompression bomb|pixel limit)"):
        load_image(path)


def test_caller_pixel_limit(tmp_path):
    path = _save(tmp_path, Image.new("RGB", (40, 30)), "a.png")
    with pytest.raises(ImageLoadError, match="1200 pixels exceeds the limit of 1000"):
        load_image(path, max_pixels=1000)
    assert load_image(path, max_pixels=1200).size == (40, 30)


def test_processor_pads_centred_with_the_mean_and_normalises():
    processor = ImageProcessor(16)
    image = Image.new("RGB", (32, 16), (255, 0, 0))  # wide: padded top and bottom by 8 px each
    pixels = processor(image)
    assert pixels.shape == (3, 16, 16) and pixels.dtype == torch.float32
    mean, std = torch.tensor(CLIP_MEAN)[:, None], torch.tensor(CLIP_STD)[:, None]
    padding = (torch.tensor(MEAN_RGB, dtype=torch.float32)[:, None] / 255 - mean) / std
    red = (torch.tensor([1.0, 0.0, 0.0])[:, None] - mean) / std
    torch.testing.assert_close(pixels[:, 0, :], padding.expand(3, 16), atol=1e-5, rtol=0)
    torch.testing.assert_close(pixels[:, -1, :], padding.expand(3, 16), atol=1e-5, rtol=0)
    torch.testing.assert_close(pixels[:, 8, :], red.expand(3, 16), atol=1e-5, rtol=0)
    assert torch.allclose(padding, torch.zeros(3, 1), atol=0.02)


def test_processor_resize_matches_torchvision_bicubic_antialias(tmp_path):
    array = np.random.default_rng(5).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    pixels = ImageProcessor(20)(_save(tmp_path, Image.fromarray(array), "a.png"))
    channels_first = rearrange(torch.from_numpy(array), "height width channel -> channel height width")
    resized = F.resize(channels_first, [20, 20], interpolation=F.InterpolationMode.BICUBIC, antialias=True)
    expected = (resized.float() / 255 - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
    torch.testing.assert_close(pixels, expected)


def test_processor_converts_other_modes():
    grey = ImageProcessor(8)(Image.new("L", (8, 8), 128))
    expected = (torch.full((3,), 128 / 255) - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(grey, repeat(expected, "channel -> channel height width", height=8, width=8))


def test_processor_resized_then_normalize_is_the_call_exactly(tmp_path):
    array = np.random.default_rng(6).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    path = _save(tmp_path, Image.fromarray(array), "b.png")
    processor = ImageProcessor(24)
    stored = processor.resized(path)
    assert stored.dtype == torch.uint8 and stored.shape == (3, 24, 24)
    assert torch.equal(processor.normalize(stored), processor(path))
    batch = torch.stack([stored, stored.flip(-1)])  # a batch normalises row by row
    assert torch.equal(processor.normalize(batch)[1], processor.normalize(stored.flip(-1)))


# ---------------------------------------------------------------------------------------- 16-bit / float multi-band


def _twelve_bit_rgb() -> np.ndarray:
    rng = np.random.default_rng(12)
    array = rng.integers(0, 4096, (9, 11, 3)).astype(np.uint16)
    array[..., 2] //= 4  # a dimmer blue band: a joint stretch keeps it dimmer
    return array


def _write_png16(path, array: np.ndarray, *, alpha: np.ndarray | None = None) -> None:
    import png

    planes = array if alpha is None else np.concatenate([array, alpha[..., None]], axis=-1)
    height, width, channels = planes.shape
    writer = png.Writer(width, height, greyscale=False, alpha=alpha is not None, bitdepth=16)
    with open(path, "wb") as handle:
        writer.write(handle, planes.reshape(height, width * channels).tolist())


@pytest.mark.parametrize("kind", ["tiff", "png", "tiff_float"])
def test_16bit_and_float_rgb_are_stretched_jointly_not_cut_to_the_high_byte(tmp_path, kind):
    """Defect: 12-bit data in a 16-bit RGB file came out as values 1-15 of 255 (PIL keeps the high byte)."""
    array = _twelve_bit_rgb()
    path = tmp_path / ("a.png" if kind == "png" else "a.tif")
    if kind == "png":
        _write_png16(path, array)
    elif kind == "tiff":
        tifffile.imwrite(path, array, photometric="rgb")
    else:
        array = array.astype(np.float32) / 4095.0
        tifffile.imwrite(path, array, photometric="rgb")
    out = _rgb(path)
    assert np.array_equal(out, stretch_to_uint8(array))  # one stretch over all three bands
    assert out.max() == 255 and out[..., 2].mean() < out[..., 0].mean() / 2  # colour balance kept


def test_16bit_rgba_png_is_stretched_then_composited(tmp_path):
    array = _twelve_bit_rgb()
    alpha = np.full(array.shape[:2], 65535, dtype=np.uint16)
    alpha[0] = 0
    path = tmp_path / "rgba16.png"
    _write_png16(path, array, alpha=alpha)
    out = _rgb(path)
    assert np.array_equal(out[1:], stretch_to_uint8(array)[1:])
    assert np.array_equal(out[0, 0], MEAN_RGB)


def test_16bit_grey_alpha_png_keeps_its_stretch(tmp_path):
    import png

    grey = (np.arange(100, dtype=np.uint16).reshape(10, 10) * 40).astype(np.uint16)
    path = tmp_path / "la16.png"
    planes = np.stack([grey, np.full_like(grey, 65535)], axis=-1)
    with open(path, "wb") as handle:
        png.Writer(10, 10, greyscale=True, alpha=True, bitdepth=16).write(handle, planes.reshape(10, 20).tolist())
    out = _rgb(path)
    assert np.array_equal(out[..., 0], stretch_to_uint8(grey)) and np.array_equal(out[..., 0], out[..., 1])


def test_16bit_multiband_with_bands_is_the_same_joint_stretch(tmp_path):
    array = _twelve_bit_rgb()
    path = tmp_path / "rgb16.tif"
    tifffile.imwrite(path, array, photometric="rgb")
    assert np.array_equal(_rgb(path, bands=(2, 1, 0)), stretch_to_uint8(array[..., [2, 1, 0]]))


@pytest.mark.parametrize("size", [336, 112, 32])
def test_the_torchvision_free_preprocessing_gives_the_same_pixels_bit_for_bit(size):
    """``backend="torch"`` (used where torchvision is absent) equals torchvision's ``v2`` path: up- and downscaling,
    odd sides, already square, already the right size."""
    rng = np.random.default_rng(size)
    ours, theirs = ImageProcessor(size, backend="torch"), ImageProcessor(size, backend="torchvision")
    for height, width in [(50, 36), (400, 300), (17, 90), (size, size), (1000, 1000), (7, 7)]:
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        assert torch.equal(ours.resized(image), theirs.resized(image)), (height, width)
        assert torch.equal(ours(image), theirs(image)), (height, width)


def test_preprocessing_without_torchvision_installed(tmp_path):
    """In a process where ``import torchvision`` fails, ``ImageProcessor`` picks the torch backend and works."""
    import subprocess
    import sys

    image = tmp_path / "scene.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(image)
    code = (
        "import sys; sys.modules['torchvision'] = None\n"
        "from rsfuse.data import ImageProcessor\n"
        f"processor = ImageProcessor(32)\n"
        f"pixels = processor({str(image)!r})\n"
        "print(processor.backend, tuple(pixels.shape), float(pixels.sum()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    expected = ImageProcessor(32, backend="torchvision")(image)
    assert out[0] == "torch" and float(out[-1]) == pytest.approx(float(expected.sum()), abs=1e-3)
