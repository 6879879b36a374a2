"""The input contract, in arithmetic that the phone apps repeat exactly.

decode (Pillow, EXIF orientation applied, any mode -> 8-bit RGB)
  -> resize so the shorter side is `resize` (separable, antialiased filter; float32 weights
     and pixels summed in float64, one rounding to float32) and center-crop `crop` x `crop`
     (offset = (size - crop) // 2)
  -> scale to [0, 1] -> optionally (x - mean) / std.

Pillow's own `resize` rounds to 8 bits between its two passes, which no app reproduces
bit for bit, so the resampling is written out here; `android_demo` and `ios_demo` carry the
same filter in plain code and are tested against vectors made by this module."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import ImageError
from .models.registry import Preprocess

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
MAX_PIXELS = 200_000_000  # refuse decompression bombs; JPEGs are decoded downscaled anyway


def _triangle(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def _cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    return np.where(
        x < 1.0,
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0,
        np.where(x < 2.0, (((x - 5.0) * x + 8.0) * x - 4.0) * a, 0.0),
    )


_FILTERS = {"bilinear": (_triangle, 1.0), "bicubic": (_cubic, 2.0)}


def resample_weights(
    in_size: int, out_size: int, interpolation: str, first: int = 0, count: int | None = None
) -> np.ndarray:
    """Rows of the (out x in) resampling matrix for outputs first..first+count, in float64.

    Output pixel i samples around center (i + 0.5) * in/out; when shrinking, the filter is
    widened by the scale (antialiasing), as in Pillow. Each row is normalized to sum 1."""
    count = out_size - first if count is None else count
    scale = in_size / out_size
    if interpolation == "nearest":
        rows = np.zeros((count, in_size))
        src = np.minimum(np.floor((np.arange(first, first + count) + 0.5) * scale).astype(int), in_size - 1)
        rows[np.arange(count), src] = 1.0
        return rows
    kernel, support = _FILTERS[interpolation]
    stretch = max(scale, 1.0)
    centers = (np.arange(first, first + count) + 0.5) * scale
    src = np.arange(in_size) + 0.5
    weights = kernel((src[None, :] - centers[:, None]) / stretch)
    weights[np.abs(src[None, :] - centers[:, None]) >= support * stretch] = 0.0
    totals = weights.sum(axis=1, keepdims=True)
    return weights / np.where(totals == 0.0, 1.0, totals)


def resized_size(height: int, width: int, shorter: int) -> tuple[int, int]:
    """Size after scaling the shorter side to `shorter` (the longer side rounded down)."""
    if height <= width:
        return shorter, max(shorter, int(width * shorter / height))
    return max(shorter, int(height * shorter / width)), shorter


def resize_crop(pixels: np.ndarray, pre: Preprocess) -> np.ndarray:
    """uint8 HxWx3 RGB -> float32 3 x crop x crop in [0, 1]."""
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ImageError(f"expected an RGB image of shape HxWx3, got {pixels.shape}")
    h, w = pixels.shape[:2]
    rh, rw = resized_size(h, w, pre.resize)
    crop = pre.crop
    if crop > min(rh, rw):
        raise ImageError(f"crop {crop} is larger than the resized image {rw}x{rh}; use resize >= crop")
    top, left = (rh - crop) // 2, (rw - crop) // 2
    wy = resample_weights(h, rh, pre.interpolation, top, crop).astype(np.float32)
    wx = resample_weights(w, rw, pre.interpolation, left, crop).astype(np.float32)
    img = pixels.astype(np.float32) / 255.0
    # float32 operands summed in float64 and rounded once: a float32 sum depends on numpy's
    # (unspecified) order and drifts past 1e-6 over many taps; the apps sum the same way.
    f64 = np.float64
    out = np.einsum("yh,hwc,xw->cyx", wy.astype(f64), img.astype(f64), wx.astype(f64), optimize=True).astype(
        np.float32
    )
    return np.ascontiguousarray(np.clip(out, 0.0, 1.0), dtype=np.float32)


def normalize(x: np.ndarray, pre: Preprocess) -> np.ndarray:
    mean = np.asarray(pre.mean, np.float32).reshape(-1, 1, 1)
    std = np.asarray(pre.std, np.float32).reshape(-1, 1, 1)
    return ((x - mean) / std).astype(np.float32)


def decode(path: str | Path, max_side_hint: int | None = None) -> np.ndarray:
    """Read any common image as 8-bit RGB with its EXIF orientation applied.

    Handles grayscale, palette, alpha, CMYK and 16-bit files. `max_side_hint` lets JPEG
    decode at a reduced scale (draft mode) when the image is far larger than needed."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    p = Path(path)
    try:
        with Image.open(p) as im:
            if im.width * im.height > MAX_PIXELS:
                raise ImageError(
                    f"{p.name}: {im.width}x{im.height} is too large to decode safely (limit {MAX_PIXELS} pixels); downscale it first"
                )
            if max_side_hint and im.format == "JPEG":
                im.draft("RGB", (max_side_hint * 2, max_side_hint * 2))
            im = ImageOps.exif_transpose(im)
            return _to_rgb8(im)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"image {str(p)!r} does not exist") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{p.name}: not a readable image ({exc.__class__.__name__})") from None


def _to_rgb8(im) -> np.ndarray:
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        peak = 65535.0 if arr.max(initial=0) > 255 else 255.0
        arr = np.clip(np.round(arr / peak * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(arr[:, :, None], 3, axis=2)
    if im.mode == "F":
        arr = np.clip(np.round(np.asarray(im) * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(arr[:, :, None], 3, axis=2)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im)
    rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return np.ascontiguousarray(rgb)


def load_input(path: str | Path, pre: Preprocess, normalized: bool = True) -> np.ndarray:
    """One image file -> float32 1x3xHxW, ready for the reference model or an artifact."""
    x = resize_crop(decode(path, max_side_hint=pre.resize), pre)
    if normalized:
        x = normalize(x, pre)
    return x[None].copy()  # fresh strides: a stride-0 batch axis trips ExecuTorch's serializer


# --- image folders ---------------------------------------------------------------------


@dataclass
class ImageBatch:
    inputs: list[np.ndarray]  # each float32 1x3xHxW
    paths: list[Path]
    skipped: list[tuple[Path, str]]  # unreadable files and why


def find_images(folder: str | Path) -> list[Path]:
    """All image files below `folder`, recursively, in a stable order."""
    root = Path(folder)
    if not root.exists():
        raise ImageError(
            f"image folder {str(root)!r} does not exist; pass a folder of jpg/png/webp/bmp files"
        )
    if not root.is_dir():
        raise ImageError(f"{str(root)!r} is not a folder; pass a folder of jpg/png/webp/bmp files")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ImageError(
            f"no images (jpg/png/webp/bmp) in {str(root)!r}; add some or point to another folder"
        )
    return files


def iter_inputs(
    paths: list[Path], pre: Preprocess, normalized: bool = True, skipped: list | None = None
) -> Iterator[tuple[Path, np.ndarray]]:
    """Stream inputs one image at a time, so memory does not grow with the folder size.
    Unreadable files are appended to `skipped` (path, reason) and passed over."""
    for path in paths:
        try:
            yield path, load_input(path, pre, normalized)
        except ImageError as exc:
            if skipped is not None:
                skipped.append((path, str(exc)))


def sample_evenly(paths: list[Path], limit: int | None) -> list[Path]:
    """A bounded, deterministic sample spread over the sorted list."""
    if limit is None or len(paths) <= limit:
        return list(paths)
    step = len(paths) / limit
    return [paths[int(i * step)] for i in range(limit)]


def load_folder(
    folder: str | Path, pre: Preprocess, limit: int | None = None, normalized: bool = True
) -> ImageBatch:
    paths = sample_evenly(find_images(folder), limit)
    skipped: list = []
    pairs = list(iter_inputs(paths, pre, normalized, skipped))
    if not pairs:
        raise ImageError(
            f"none of the {len(paths)} images in {str(folder)!r} could be read; add readable jpg/png/webp/bmp files"
        )
    return ImageBatch([x for _, x in pairs], [p for p, _ in pairs], skipped)


def bundled_photos() -> list[Path]:
    """Real photographs that ship inside installed packages (scikit-image, scikit-learn),
    used when no --images/--calibration folder is given. Never only random noise."""
    found: list[Path] = []
    try:
        import importlib.util

        spec = importlib.util.find_spec("skimage")
        if spec and spec.origin:
            data = Path(spec.origin).parent / "data"
            for name in (
                "astronaut.png",
                "chelsea.png",
                "coffee.png",
                "rocket.jpg",
                "motorcycle_left.png",
                "hubble_deep_field.jpg",
                "retina.jpg",
                "color.png",
                "immunohistochemistry.png",
                "ihc.png",
            ):
                if (data / name).is_file():
                    found.append(data / name)
        spec = importlib.util.find_spec("sklearn")
        if spec and spec.origin:
            data = Path(spec.origin).parent / "datasets" / "images"
            found.extend(sorted(data.glob("*.jpg")))
    except (ImportError, ValueError):
        pass
    return found


def default_images(pre: Preprocess, normalized: bool = True) -> ImageBatch:
    paths = bundled_photos()
    if not paths:
        raise ImageError(
            "no --images folder given and no sample photos found (install scikit-image); pass --images DIR"
        )
    skipped: list = []
    pairs = list(iter_inputs(paths, pre, normalized, skipped))
    return ImageBatch([x for _, x in pairs], [p for p, _ in pairs], skipped)
