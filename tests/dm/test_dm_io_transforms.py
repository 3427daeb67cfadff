"""Decoding (modes, EXIF, corrupt files), the short-side resize rule and the label LUTs."""

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from datamodules import (DataFileError, MissingFileError, ResizeShortSide, apply_label_transform,
                         build_test_transform, label_lut, read_image, read_label, rescale_size,
                         resize_short_side)
from datamodules.synthetic import voc_palette


# ---------------------------------------------------------------- resize rule
@pytest.mark.parametrize("hw,short,expected", [
    ((375, 500), 336, (336, 448)),     # docs/method_notes.md, 'Image preprocessing'
    ((427, 640), 336, (336, 504)),
    ((333, 500), 336, (336, 505)),     # upscaled
    ((512, 683), 448, (448, 598)),
    ((1024, 2048), 448, (448, 896)),
    ((336, 448), 336, (336, 448)),     # unchanged
    ((100, 5000), 336, (41, 2048)),    # long side capped: sf = 2048/5000
    ((5000, 100), 448, (2048, 41)),
])
def test_rescale_size_follows_mmcv_rule(hw, short, expected):
    assert rescale_size(*hw, short_side=short) == expected


def test_rescale_size_rounds_half_up_and_never_zero():
    # 500 * 336/333 = 504.504.. -> 505 ; 1 x 10000 with cap: h = 1*0.2048 -> max(1, 0) = 1
    assert rescale_size(333, 500, 336)[1] == int(500 * (336 / 333) + 0.5)
    assert rescale_size(1, 10000, 336) == (1, 2048)
    with pytest.raises(ValueError):
        rescale_size(0, 10, 336)


def test_resize_short_side_is_cv2_inter_linear_on_uint8():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(333, 500, 3), dtype=np.uint8)
    out = resize_short_side(img, 336)
    assert out.dtype == np.uint8 and out.shape == (336, 505, 3)
    np.testing.assert_array_equal(out, cv2.resize(img, (505, 336), interpolation=cv2.INTER_LINEAR))
    same = rng.integers(0, 256, size=(336, 448, 3), dtype=np.uint8)
    assert resize_short_side(same, 336) is same  # no resampling when the size is unchanged


def test_albumentations_transform_resizes_image_only():
    img = np.zeros((375, 500, 3), np.uint8)
    t = build_test_transform(336)
    assert isinstance(t.transforms[0], ResizeShortSide)
    assert t(image=img)["image"].shape == (336, 448, 3)
    assert build_test_transform(448)(image=img)["image"].shape == (448, 597, 3)


# ---------------------------------------------------------------- label LUTs
def test_label_luts_match_spec():
    ident = label_lut(False)
    np.testing.assert_array_equal(ident, np.arange(256))
    red = label_lut(True)
    assert red[0] == 255 and red[255] == 255
    assert [int(red[v]) for v in (1, 2, 21, 150, 254)] == [0, 1, 20, 149, 253]
    raw = np.array([[0, 1, 20, 255]], np.uint8)
    np.testing.assert_array_equal(apply_label_transform(raw, True), [[255, 0, 19, 255]])
    np.testing.assert_array_equal(apply_label_transform(raw, False), raw)


# ---------------------------------------------------------------- image decoding
def _save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "RGB"])
def test_read_image_converts_modes_to_rgb_uint8(tmp_path, mode):
    rgb = Image.fromarray(np.full((4, 6, 3), (10, 200, 30), np.uint8))
    src = rgb.convert(mode) if mode != "LA" else rgb.convert("L").convert("LA")
    path = _save(src, tmp_path / ("x.tif" if mode == "CMYK" else "x.png"))
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == (4, 6, 3)
    if mode in ("L", "LA"):
        assert (out == out[..., :1]).all()  # grey expanded to 3 equal channels
    else:
        assert tuple(out[0, 0]) == tuple(np.asarray(src.convert("RGB"))[0, 0])


def test_read_image_16bit_and_float_scale_full_range(tmp_path):
    arr16 = np.array([[0, 256, 65535]], np.uint16)
    path = _save(Image.fromarray(arr16), tmp_path / "g16.png")
    assert Image.open(path).mode.startswith("I")
    np.testing.assert_array_equal(read_image(path)[0, :, 0], [0, 1, 255])
    arr32 = np.array([[0, 32768, 65535]], np.int32)
    path = _save(Image.fromarray(arr32, ), tmp_path / "g32.tif")
    np.testing.assert_array_equal(read_image(path)[0, :, 1], [0, 128, 255])
    arrf = np.array([[0.0, 0.5, 1.0]], np.float32)
    path = _save(Image.fromarray(arrf), tmp_path / "f.tif")
    np.testing.assert_array_equal(read_image(path)[0, :, 2], [0, 128, 255])


def test_read_image_grayscale_jpeg(tmp_path):
    path = _save(Image.fromarray(np.full((8, 8), 77, np.uint8)), tmp_path / "g.jpg", quality=100)
    out = read_image(path)
    assert out.shape == (8, 8, 3) and abs(int(out[4, 4, 0]) - 77) <= 1


@pytest.mark.parametrize("orientation,expected_shape", [(1, (20, 40)), (3, (20, 40)), (6, (40, 20)), (8, (40, 20))])
def test_read_image_applies_exif_orientation(tmp_path, orientation, expected_shape):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _save(Image.fromarray(arr), tmp_path / "e.jpg", quality=100, exif=exif.tobytes())
    out = read_image(path)
    assert out.shape[:2] == expected_shape
    if orientation == 1:
        assert out[10, 5].mean() > 200 and out[10, 35].mean() < 50
    if orientation == 3:  # rotated 180°: white half is now on the right
        assert out[10, 5].mean() < 50 and out[10, 35].mean() > 200
    # Same result as OpenCV IMREAD_COLOR (which applies EXIF too), up to JPEG decoder noise.
    ref = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert ref.shape == out.shape and np.abs(ref.astype(int) - out).max() <= 2


def test_read_image_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(MissingFileError, match="nope.jpg"):
        read_image(missing)
    with pytest.raises(FileNotFoundError):
        read_image(missing)
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not an image")
    with pytest.raises(DataFileError, match=str(garbage)):
        read_image(garbage)
    buf = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(buf, format="JPEG")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(DataFileError, match="truncated.jpg"):
        read_image(truncated)


# ---------------------------------------------------------------- label decoding
def test_read_label_palette_gives_indices_not_colours(tmp_path):
    idx = np.array([[0, 1, 15, 255]], np.uint8)
    im = Image.frombytes("P", (4, 1), idx.tobytes())
    im.putpalette(voc_palette())
    path = _save(im, tmp_path / "p.png")
    out = read_label(path)
    assert out.dtype == np.uint8 and out.shape == (1, 4)
    np.testing.assert_array_equal(out, idx)  # colour of 15 is (192,128,128), never returned


def test_read_label_rejects_colour_labels_and_names_files(tmp_path):
    rgb = _save(Image.fromarray(np.zeros((2, 2, 3), np.uint8)), tmp_path / "rgb.png")
    with pytest.raises(DataFileError, match="rgb.png"):
        read_label(rgb)
    with pytest.raises(MissingFileError, match="absent.png"):
        read_label(tmp_path / "absent.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DataFileError, match="bad.png"):
        read_label(bad)
    big = _save(Image.fromarray(np.array([[0, 300]], np.uint16)), tmp_path / "big16.png")
    with pytest.raises(DataFileError, match="big16.png"):
        read_label(big)
