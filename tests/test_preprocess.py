"""The input contract: the arithmetic the apps repeat, and every kind of image file."""

import numpy as np
import pytest
from PIL import Image

import mobile_export.preprocess as pp
from mobile_export.errors import ImageError
from mobile_export.models.registry import Preprocess
from mobile_export.preprocess import (
    bundled_photos,
    decode,
    find_images,
    load_folder,
    load_input,
    normalize,
    resize_crop,
    resized_size,
    sample_evenly,
)

PRE = Preprocess(crop=224, resize=256)


@pytest.fixture(scope="module")
def photo():
    paths = bundled_photos()
    assert paths, "scikit-image sample photos are a test dependency"
    return paths[0]


def test_bundled_photos_are_real_color_photos():
    paths = bundled_photos()
    assert len(paths) >= 5
    for p in paths[:5]:
        px = decode(p)
        assert px.dtype == np.uint8 and px.ndim == 3 and px.shape[2] == 3
        assert px.std() > 20  # real content, not a flat test card


def test_resize_crop_matches_pillow_within_rounding(photo):
    im = Image.open(photo).convert("RGB")
    w, h = im.size
    rh, rw = resized_size(h, w, PRE.resize)
    for interp, pil, tol in (("bilinear", Image.BILINEAR, 1.5 / 255), ("bicubic", Image.BICUBIC, 4 / 255)):
        ref = np.asarray(im.resize((rw, rh), pil), np.float32) / 255
        top, left = (rh - 224) // 2, (rw - 224) // 2
        ref = ref[top : top + 224, left : left + 224].transpose(2, 0, 1)
        ours = resize_crop(np.asarray(im), Preprocess(224, 256, interp))
        assert ours.shape == (3, 224, 224)
        # Pillow rounds to 8 bits between passes; ours does not: differences stay within rounding.
        assert np.abs(ref - ours).max() <= tol
        assert np.abs(ref - ours).mean() < 0.5 / 255


def test_resize_of_constant_image_is_exact():
    px = np.full((300, 500, 3), 200, np.uint8)
    out = resize_crop(px, PRE)
    assert np.allclose(out, 200 / 255, atol=1e-6)


def test_crop_is_centered_on_asymmetric_content():
    px = np.zeros((256, 400, 3), np.uint8)
    px[:, 200:] = 255  # right half white
    out = resize_crop(px, PRE)
    # the crop covers x in [88, 312) of 400: the white edge at 200 sits at column 112
    row = out[0, 100]
    assert row[:110].max() == 0 and row[114:].min() == 1.0


def test_normalize_uses_mean_and_std():
    x = np.ones((3, 2, 2), np.float32) * 0.5
    y = normalize(x, PRE)
    assert np.allclose(y[:, 0, 0], (0.5 - np.array(PRE.mean)) / np.array(PRE.std), atol=1e-6)


def test_load_input_shape_and_range(photo):
    x = load_input(photo, PRE, normalized=False)
    assert x.shape == (1, 3, 224, 224) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_exif_rotation_is_applied(tmp_path, photo):
    im = Image.open(photo).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    path = tmp_path / "rot.jpg"
    im.save(path, exif=exif, quality=95)
    px = decode(path)
    assert px.shape[:2] == (im.width, im.height)
    plain = tmp_path / "plain.jpg"
    im.transpose(Image.Transpose.ROTATE_270).save(plain, quality=95)
    assert np.abs(px.astype(int) - decode(plain).astype(int)).mean() < 3


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "RGBA", "LA", "I;16", "1"])
def test_every_mode_decodes_to_rgb8(tmp_path, photo, mode):
    im = Image.open(photo).convert("RGB").resize((64, 48))
    if mode == "I;16":
        arr = np.asarray(im.convert("L"), np.uint16) * 257
        im = Image.fromarray(arr)
        path = tmp_path / "x16.png"
    else:
        im = im.convert(mode)
        path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    im.save(path)
    px = decode(path)
    assert px.shape == (48, 64, 3) and px.dtype == np.uint8
    assert px.max() > 100  # not blanked


def test_sixteen_bit_png_scales_to_full_range(tmp_path):
    arr = np.linspace(0, 65535, 64 * 64).astype(np.uint16).reshape(64, 64)
    Image.fromarray(arr).save(tmp_path / "ramp.png")
    px = decode(tmp_path / "ramp.png")
    assert px.min() == 0 and px.max() == 255


def test_huge_image_is_refused_with_one_line(tmp_path, monkeypatch):
    Image.new("RGB", (400, 300)).save(tmp_path / "big.png")
    monkeypatch.setattr(pp, "MAX_PIXELS", 100_000)
    with pytest.raises(ImageError, match="too large") as err:
        decode(tmp_path / "big.png")
    assert "\n" not in str(err.value)


def test_large_jpeg_is_decoded_downscaled(tmp_path):
    Image.new("RGB", (4000, 3000), (10, 200, 30)).save(tmp_path / "big.jpg")
    x = load_input(tmp_path / "big.jpg", PRE, normalized=False)
    assert x.shape == (1, 3, 224, 224)
    assert abs(float(x[0, 1].mean()) - 200 / 255) < 0.02


def test_corrupt_and_missing_files_raise_image_error(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageError, match="not a readable image"):
        decode(bad)
    with pytest.raises(ImageError, match="does not exist"):
        decode(tmp_path / "missing.png")


def test_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(ImageError, match="does not exist"):
        find_images(tmp_path / "nope")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(ImageError, match="not a folder"):
        find_images(tmp_path / "f.txt")
    with pytest.raises(ImageError, match="no images"):
        find_images(tmp_path)
    (tmp_path / "a.png").write_bytes(b"garbage")
    with pytest.raises(ImageError, match="none of the 1 images"):
        load_folder(tmp_path, PRE)


def test_folder_is_recursive_and_skips_unreadable(tmp_path, photo):
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    im = Image.open(photo).convert("RGB").resize((80, 60))
    im.save(sub / "one.PNG")
    im.save(tmp_path / "two.webp")
    im.save(tmp_path / "three.bmp")
    (tmp_path / "broken.jpg").write_bytes(b"nope")
    batch = load_folder(tmp_path, Preprocess(48, 56))
    assert len(batch.inputs) == 3
    assert [p.name for p, _ in batch.skipped] == ["broken.jpg"]


def test_sample_evenly_is_bounded_and_deterministic():
    items = list(range(1000))
    s = sample_evenly(items, 10)
    assert s == sample_evenly(items, 10) and len(s) == 10 and s[0] == 0 and s[-1] >= 900
    assert sample_evenly(items[:5], 10) == items[:5]
