"""Shared by test_eval.py and test_eval_ray.py: a trained fixture exported through the real
pipeline (fp32 .pte, int8 .pte, fp16 .mlpackage in one folder with its manifest), and the
held-out split of the data it was trained on written as labelled image trees."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TRAINED = ROOT / "tests" / "fixtures" / "trained"
DIGITS = TRAINED / "mobilenet_v2_035_digits_64.safetensors"
PHOTOS = TRAINED / "mobilenet_v2_100_photos_64.safetensors"
if str(ROOT / "scripts") not in sys.path:
    sys.path.insert(0, str(ROOT / "scripts"))


def held_out(checkpoint: Path):
    """(classes, uint8 N x H x W x 3 held-out images, labels)."""
    import train_small

    _, meta, _ = train_small.load_checkpoint(checkpoint)
    data = train_small.load_dataset(meta["dataset"], meta["resolution"], seed=0)
    return data.classes, data.test_x, data.test_y, data.train_x


def export_artifacts(checkpoint: Path, work: Path, targets=("fp32", "int8", "fp16")) -> dict[str, Path]:
    """Export the checkpoint with mobile_export's own pipeline; returns {tag: artifact path}."""
    import int8_quality
    import train_small

    from mobile_export.models.weights import save_weights
    from mobile_export.pipeline import ExportRequest, run_export
    from mobile_export.targets import ExportOptions

    model, meta, pre = train_small.load_checkpoint(checkpoint)
    built = train_small.as_built(model, meta, pre, checkpoint.name)
    work.mkdir(parents=True, exist_ok=True)
    weights = save_weights(built, work / "weights.safetensors")  # our format: carries the 64px contract
    labels = work / "labels.txt"
    labels.write_text("\n".join(meta["classes"]) + "\n")
    out = work / "export"
    options = {"fp32": ("executorch", ExportOptions()), "fp16": ("coreml", ExportOptions(precision="fp16"))}
    if "int8" in targets:
        _, _, _, train_x = held_out(checkpoint)
        calib = work / "calibration"
        int8_quality.write_calibration_folder(calib, train_x, 32, seed=0)
        options["int8"] = (
            "executorch",
            ExportOptions(quantize="int8", calibration=calib, calibration_limit=32),
        )
    paths = {}
    for tag in targets:
        target, opts = options[tag]
        manifest = run_export(
            ExportRequest(
                model=meta["model"],
                target=target,
                out=out,
                weights=str(weights),
                labels_file=labels,
                resolution=meta["resolution"],
                verify=False,
                options=opts,
            )
        )
        name = next(
            a["file"]
            for a in manifest["artifacts"]
            if (a["file"].endswith(".mlpackage") if tag == "fp16" else f"_{tag}." in a["file"])
        )
        paths[tag] = out / name
    return paths


def write_png(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def write_imagefolder(root: Path, classes, x, y) -> Path:
    for i, (img, label) in enumerate(zip(x, y)):
        write_png(root / classes[label] / f"img_{i:04d}.png", img)
    return root


def write_csv_set(root: Path, classes, x, y, by_name: bool = True) -> Path:
    lines = ["file,label"]
    for i, (img, label) in enumerate(zip(x, y)):
        write_png(root / f"img_{i:04d}.png", img)
        lines.append(f"img_{i:04d}.png,{classes[label] if by_name else int(label)}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root
