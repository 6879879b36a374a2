"""Golden vectors for the apps' platform-free code (android_demo/core, ios_demo DemoLogic).

Each case starts from a real photograph as an app's decoder hands it over (raw pixels before
the EXIF rotation, gray or with alpha where the file is), and carries what this package makes
of the same file: the upright decoded pixels, the [0, 1] and normalized input tensors from
`preprocess`, a real model's logits and their top 5 with labels. The apps must reproduce them
(tensor within 1e-6, same top 5). Also: a manifest as the exporter writes it, manifests the
apps must refuse, a labels file with awkward lines, and JPEG draft scales.

`python -m mobile_export.golden OUT [--small]` writes them; tests write them at test time, and
a small copy is committed for the XCTest (ios_demo/DemoLogic/Tests/DemoLogicTests/Golden), which
`gradle :core:test` in android_demo reads too."""

from __future__ import annotations

import base64
import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np

from . import manifest as mf
from .fsutil import atomic_path
from .models.registry import INCEPTION_MEAN, INCEPTION_STD, Preprocess
from .preprocess import bundled_photos, decode, normalize, resize_crop

FORMAT = "mobile-export.golden"
VERSION = 1
MODEL = "mobilenet_v3_small_100"  # a real architecture of the family, fast on CPU
ORIENTATION_TAG = 0x0112

# Input contracts the cases use: the registry's real ones, plus nearest and upscaling.
CONTRACTS = {
    "torchvision": Preprocess(224, 256, "bilinear"),
    "timm_v1": Preprocess(224, 236, "bicubic", INCEPTION_MEAN, INCEPTION_STD),
    "nearest": Preprocess(160, 182, "nearest"),
    "small_bicubic": Preprocess(32, 37, "bicubic"),
    "tiny_up": Preprocess(16, 28, "bicubic"),
}

# Lines that Python's splitlines/strip treat specially; the apps must count labels the same way.
AWKWARD_LABELS = {
    3: "  café au lait \t",
    5: "日本語 ラベル",
    8: "\u00a0non-breaking padded\u00a0",
    13: "tab\tinside",
}


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def _f32(array: np.ndarray) -> str:
    return _b64(np.asarray(array, dtype="<f4"))


def _raw_pixels(path: Path, pre: Preprocess) -> tuple[dict, dict | None]:
    """Pixels as a platform decoder gives them: before EXIF rotation, with the same JPEG
    draft reduction as `preprocess.decode` (Android: inSampleSize)."""
    from PIL import Image

    with Image.open(path) as im:
        raw_size = im.size
        draft = None
        if im.format == "JPEG":
            im.draft("RGB", (pre.resize * 2, pre.resize * 2))
            draft = {
                "raw_width": raw_size[0],
                "raw_height": raw_size[1],
                "scale": _scale_of(im),
                "width": im.size[0],
                "height": im.size[1],
            }
        orientation = int(im.getexif().get(ORIENTATION_TAG, 1))
        if im.mode == "L":
            kind, arr = "gray", np.asarray(im, dtype=np.uint8)
        elif im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            kind, arr = "rgba", np.asarray(im.convert("RGBA"), dtype=np.uint8)
        else:
            kind, arr = "rgb", np.asarray(im.convert("RGB"), dtype=np.uint8)
    h, w = arr.shape[:2]
    return {"kind": kind, "width": w, "height": h, "orientation": orientation, "data": _b64(arr)}, draft


def _labels(count: int) -> tuple[str, list[str]]:
    """labels.txt text (with blank and awkward lines) and the labels Python reads from it."""
    from .models import read_labels

    lines = []
    for i in range(count):
        lines.append(AWKWARD_LABELS.get(i, f"n{i:08d} class {i}"))
        if i % 250 == 7:
            lines.append("   ")  # blank lines are skipped, not counted
    text = "\r\n".join(lines[:10]) + "\n" + "\n".join(lines[10:]) + "\n"
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "labels.txt"
        p.write_bytes(text.encode("utf-8"))
        parsed = read_labels(p)
    return text, parsed


def top_k(logits: np.ndarray, k: int = 5) -> list[tuple[int, float]]:
    """Softmax in float64 and a stable descending order (ties: lower index first)."""
    z = np.asarray(logits, dtype=np.float64)
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")[:k]
    return [(int(i), float(p[i])) for i in order]


class _Model:
    """The reference network: real architecture, seeded weights (no download offline)."""

    def __init__(self):
        from .models import create_model

        self.built = create_model(MODEL, weights="random", seed=0)

    def logits(self, x: np.ndarray) -> np.ndarray:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # one image at a time: extra threads only contend on a shared CPU
        try:
            with torch.no_grad():
                return (
                    self.built.module(torch.from_numpy(np.ascontiguousarray(x[None])))
                    .numpy()[0]
                    .astype(np.float32)
                )
        finally:
            torch.set_num_threads(threads)


def _case(name: str, path: Path, pre: Preprocess, model: _Model | None, labels: list[str], note: str) -> dict:
    raw, draft = _raw_pixels(path, pre)
    rgb = decode(path, max_side_hint=pre.resize)
    unit = resize_crop(rgb, pre)
    normalized = normalize(unit, pre)
    case = {
        "name": name,
        "source": path.name,
        "note": note,
        "image": raw,
        "jpeg": draft,
        "decoded": {
            "width": int(rgb.shape[1]),
            "height": int(rgb.shape[0]),
            "sha256": hashlib.sha256(rgb.tobytes()).hexdigest(),
        },
        "preprocess": pre.to_dict(),
        "unit": _f32(unit),
        "normalized": _f32(normalized),
        "logits": None,
        "output_kind": "logits",
        "top5": None,
    }
    if model is not None and pre.crop >= 32:
        logits = model.logits(normalized)
        case["logits"] = _f32(logits)
        case["top5"] = [{"index": i, "label": labels[i], "probability": p} for i, p in top_k(logits)]
    return case


def _sources(tmp: Path, small: bool) -> list[tuple[str, Path, str, str]]:
    """(name, file, contract, note) for every case; derived files are written into `tmp`."""
    from PIL import Image

    photos = {p.name: p for p in bundled_photos()}
    for needed in ("chelsea.png", "astronaut.png", "rocket.jpg", "coffee.png"):
        if needed not in photos:
            raise RuntimeError(f"sample photo {needed} not found; install scikit-image")
    data = photos["chelsea.png"].parent
    out = []

    chelsea = Image.open(photos["chelsea.png"]).convert("RGB")
    # EXIF orientations 1..8 on a small crop (upscaled by the contract): every transpose.
    small_crop = chelsea.crop((150, 60, 187, 83))  # 37 x 23, not square: a swap shows
    for k in range(1, 9):
        p = tmp / f"chelsea_small_exif{k}.jpg"
        exif = Image.Exif()
        exif[ORIENTATION_TAG] = k
        small_crop.save(p, quality=95, exif=exif)
        out.append((f"exif{k}_tiny", p, "tiny_up", f"EXIF orientation {k}, upscaling"))

    gray = Image.open(data / "camera.png")  # a real grayscale photograph (mode L)
    logo = Image.open(data / "logo.png")  # real RGBA with soft alpha edges
    if small:
        p = tmp / "camera_small.png"
        gray.resize((60, 50), Image.BILINEAR).save(p)
        out.append(("gray_small", p, "small_bicubic", "grayscale PNG"))
        p = tmp / "logo_small.png"
        logo.resize((56, 50), Image.BILINEAR).save(p)
        out.append(("rgba_small", p, "small_bicubic", "RGBA PNG composited over white"))
        p = tmp / "chelsea_exif6.jpg"
        exif = Image.Exif()
        exif[ORIENTATION_TAG] = 6
        chelsea.resize((72, 48), Image.BILINEAR).save(p, quality=90, exif=exif)
        out.append(("exif6_small", p, "small_bicubic", "camera-style JPEG rotated by EXIF"))
        return out

    out.append(
        ("astronaut_timm_v1", photos["astronaut.png"], "timm_v1", "RGB PNG, bicubic, Inception mean/std")
    )
    out.append(("chelsea_torchvision", photos["chelsea.png"], "torchvision", "landscape RGB PNG, bilinear"))
    out.append(("rocket_nearest", photos["rocket.jpg"], "nearest", "portrait JPEG, nearest"))
    out.append(("camera_gray", data / "camera.png", "torchvision", "grayscale PNG"))
    out.append(("logo_rgba", data / "logo.png", "timm_v1", "RGBA PNG composited over white"))
    for k in (6, 8, 3):
        p = tmp / f"chelsea_exif{k}.jpg"
        exif = Image.Exif()
        exif[ORIENTATION_TAG] = k
        chelsea.save(p, quality=92, exif=exif)
        out.append((f"chelsea_exif{k}", p, "torchvision", f"camera-style JPEG, EXIF orientation {k}"))
    p = tmp / "coffee_big.jpg"
    Image.open(photos["coffee.png"]).convert("RGB").resize((2400, 1600), Image.BICUBIC).save(p, quality=90)
    out.append(("coffee_big_draft", p, "torchvision", "large JPEG decoded at 1/2 (draft / inSampleSize)"))
    return out


def _manifests(model: _Model | None, labels_text: str, labels: list[str]) -> tuple[dict, list[dict]]:
    """A valid manifest as the exporter writes it, broken ones with the error the apps show,
    and a feature-model variant."""
    from .models import BuiltModel, get_spec

    if model is not None:
        built = model.built
    else:  # shape of the manifest only; params counted from a stand-in
        import torch

        spec = get_spec(MODEL)
        built = BuiltModel(
            module=torch.nn.Linear(1, 1),
            spec=spec,
            preprocess=spec.preprocess,
            num_classes=1000,
            resolution=224,
            weights={"source": "random", "seed": 0},
        )
    built_labels = built.labels
    built.labels = labels
    doc = mf.new_manifest(built)
    built.labels = built_labels
    doc["labels"] = {
        "file": "labels.txt",
        "count": len(labels),
        "sha256": hashlib.sha256(labels_text.encode()).hexdigest(),
    }
    pre = built.preprocess
    lows = [(0.0 - m) / s for m, s in zip(pre.mean, pre.std)]
    highs = [(1.0 - m) / s for m, s in zip(pre.mean, pre.std)]
    common = {
        "bytes": 1234567,
        "precision": "fp32",
        "quantization": {"mode": "none"},
        "output": {"name": "logits", "kind": "logits", "shape": [1, built.num_classes], "dtype": "float32"},
    }
    tensor_in = {
        "name": "x",
        "kind": "tensor",
        "shape": [1, 3, pre.crop, pre.crop],
        "layout": "NCHW",
        "dtype": "float32",
        "color": "RGB",
        "value_range": [round(min(lows), 6), round(max(highs), 6)],
        "normalized_in_model": False,
    }
    doc["artifacts"] = [
        dict(
            common,
            file=f"{built.spec.name}_fp32.pte",
            target="executorch",
            format="pte",
            sha256="a" * 64,
            input=tensor_in,
        ),
        dict(
            common,
            file=f"{built.spec.name}_fp32.bpte",
            target="executorch",
            format="bpte",
            sha256="b" * 64,
            input=tensor_in,
        ),
        dict(
            common,
            file=f"{built.spec.name}_fp16.mlpackage",
            target="coreml",
            format="mlpackage",
            sha256="c" * 64,
            precision="fp16",
            input={
                "name": "image",
                "kind": "image",
                "shape": [1, 3, pre.crop, pre.crop],
                "layout": "NCHW",
                "dtype": "uint8",
                "color": "RGB",
                "value_range": [0.0, 255.0],
                "normalized_in_model": True,
            },
            output={
                "name": "classLabel_probs",
                "kind": "classifier",
                "shape": [1, built.num_classes],
                "dtype": "float32",
            },
        ),
    ]
    mf.validate(doc)

    def broken(name, error, edit):
        d = json.loads(json.dumps(doc))
        edit(d)
        return {"name": name, "error": error, "manifest": d}

    features = json.loads(json.dumps(doc))  # a backbone (MobileNetV5): the apps show the output shape
    features["model"].update(output="features", output_shape=None)
    for a in features["artifacts"]:
        a["output"] = {"name": "features", "kind": "features", "shape": None, "dtype": "float32"}
    mf.validate(features)

    bad = [
        broken("version_3", "version 3 is not supported", lambda d: d.update(version=3)),
        broken("version_0", "version 0 is not supported", lambda d: d.update(version=0)),
        broken("other_format", "not a mobile-export manifest", lambda d: d.update(format="something-else")),
        broken("no_preprocess", "'preprocess'", lambda d: d.pop("preprocess")),
        broken(
            "unknown_interpolation",
            "interpolation 'lanczos'",
            lambda d: d["preprocess"].update(interpolation="lanczos"),
        ),
        broken("zero_std", "std must be positive", lambda d: d["preprocess"].update(std=[0.2, 0.0, 0.2])),
        broken("labels_escape", "not a plain file name", lambda d: d["labels"].update(file="../secrets.txt")),
        broken("artifact_escape", "not a plain file name", lambda d: d["artifacts"][0].update(file="..")),
        broken("crop_over_resize", "larger than resize", lambda d: d["preprocess"].update(crop=300)),
    ]
    return doc, bad, features


def write_golden(out: str | Path, small: bool = False, with_model: bool = True) -> Path:
    """Write every golden file into `out` (replaced atomically); returns `out`."""
    out = Path(out)
    model = _Model() if with_model else None
    labels_text, labels = _labels(1000)
    with atomic_path(out, force=True) as tmp, tempfile.TemporaryDirectory() as work:
        (tmp / "cases").mkdir(parents=True)
        names = []
        for name, path, contract, note in _sources(Path(work), small):
            case = _case(name, path, CONTRACTS[contract], model, labels, note)
            (tmp / "cases" / f"{name}.json").write_text(
                json.dumps(case, ensure_ascii=False) + "\n", encoding="utf-8"
            )
            names.append(name)
        (tmp / "labels.txt").write_bytes(labels_text.encode("utf-8"))
        manifest, bad, features = _manifests(model, labels_text, labels)
        (tmp / "manifest.json").write_text(
            json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        sizes = [(4032, 3024), (3024, 4032), (2048, 1536), (1000, 700), (511, 511), (640, 480), (8000, 600)]
        index = {
            "format": FORMAT,
            "version": VERSION,
            "model": MODEL if model else None,
            "tolerance": 1e-6,
            "cases": names,
            "labels": {"file": "labels.txt", "parsed": labels},
            "manifest": {
                "file": "manifest.json",
                "model": manifest["model"]["name"],
                "crop": manifest["preprocess"]["crop"],
                "resize": manifest["preprocess"]["resize"],
                "labels_count": len(labels),
                "artifacts": [a["file"] for a in manifest["artifacts"]],
            },
            "bad_manifests": bad,
            "features_manifest": features,
            "jpeg_draft": [
                {"width": w, "height": h, "resize": r, "scale": _draft_scale(w, h, r)}
                for (w, h) in sizes
                for r in (224, 256, 64)
            ],
        }
        (tmp / "index.json").write_text(
            json.dumps(index, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
        )
    return out


def write_photo_cases(out: str | Path, paths: list[Path], pre: Preprocess) -> Path:
    """Cases (raw pixels + Python's tensors, no logits) for given photos under one contract,
    e.g. the photos an export embedded in its .bpte; index.json lists them in order."""
    out = Path(out)
    with atomic_path(out, force=True) as tmp:
        (tmp / "cases").mkdir(parents=True)
        names = []
        for i, path in enumerate(paths):
            name = f"{i:02d}_{Path(path).stem}"
            case = _case(name, Path(path), pre, None, [], "photo bundled by the exporter")
            (tmp / "cases" / f"{name}.json").write_text(json.dumps(case) + "\n", encoding="utf-8")
            names.append(name)
        (tmp / "index.json").write_text(
            json.dumps({"format": FORMAT, "version": VERSION, "tolerance": 1e-6, "cases": names}) + "\n"
        )
    return out


def _draft_scale(width: int, height: int, resize: int) -> int:
    """The reduction Pillow's JPEG draft picks for `decode(max_side_hint=resize)`, measured
    on a real JPEG header of that size (not re-derived)."""
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "x.jpg"
        Image.new("RGB", (width, height), (120, 80, 40)).save(p, quality=50)
        with Image.open(p) as im:
            im.draft("RGB", (resize * 2, resize * 2))
            return _scale_of(im)


def _scale_of(im) -> int:
    """The DCT scale Pillow's draft chose (its decoder configuration)."""
    config = getattr(im, "decoderconfig", None) or (1,)
    return int(config[0]) if config[0] else 1


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--small", action="store_true", help="only small images (the committed copy)")
    args = parser.parse_args(argv)
    write_golden(args.out, small=args.small)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
