"""The reference side of a parity check: the PyTorch model an artifact was made from, the
real-image inputs in the artifact's contract, and the reference outputs.

The reference is the BuiltModel the pipeline just exported when there is one; otherwise it
is rebuilt from the manifest's model and weights record and checked against the recorded
weights hash, so a verify never compares against a different model by accident."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ImageError, WeightsError
from ..models.registry import Preprocess
from ..preprocess import bundled_photos, find_images, iter_inputs, normalize, sample_evenly


def preprocess_of(manifest: dict) -> Preprocess:
    p = manifest["preprocess"]
    return Preprocess(
        crop=int(p["crop"]),
        resize=int(p["resize"]),
        interpolation=p["interpolation"],
        mean=tuple(float(v) for v in p["mean"]),
        std=tuple(float(v) for v in p["std"]),
    )


def rebuild_reference(manifest: dict, weights: str | None = None):
    """A BuiltModel equal to the one the manifest describes. `weights` (the --weights
    argument) overrides the recorded source, e.g. when a checkpoint moved."""
    from ..models import create_from_manifest
    from ..models.weights import state_digest

    model = manifest["model"]
    record = model.get("weights") or {}
    source = record.get("source")
    seed = int(record.get("seed") or 0)
    if weights is None:
        if source in ("random", "example"):
            weights = source
        elif source == "imagenet":
            weights = "imagenet" + (f":{record['tag']}" if record.get("tag") else "")
        elif source == "file":
            path = record.get("path") or record.get("detail")
            if not path or not Path(path).exists():
                raise WeightsError(
                    f"the reference weights file {path!r} recorded in the manifest is not here; pass --weights FILE"
                )
            weights = path
        else:
            raise WeightsError(f"the manifest records no usable weights source ({source!r}); pass --weights")
    built = create_from_manifest(model, weights=weights, seed=seed)
    recorded = record.get("sha256")
    if source == "random" and weights == "random" and recorded and state_digest(built.module) != recorded:
        raise WeightsError(
            f"rebuilt random weights (seed {seed}) differ from the exported ones; pass --weights with the file that was exported"
        )
    return built


@dataclass
class Inputs:
    raw: list[np.ndarray]  # RGB in [0, 1], 1x3xHxW float32
    normalized: list[np.ndarray]  # (raw - mean) / std
    names: list[str]
    skipped: int
    source: str  # "folder" | "bundled"


def load_inputs(images: str | Path | None, pre: Preprocess, limit: int | None = None) -> Inputs:
    """Real photos from `images` (recursive) or the bundled sample photos; never noise."""
    if images is not None:
        paths = sample_evenly(find_images(images), limit)
        source = "folder"
    else:
        paths = bundled_photos()
        if not paths:
            raise ImageError(
                "no --images folder given and no sample photos found (install scikit-image); pass --images DIR"
            )
        paths = sample_evenly(paths, limit)
        source = "bundled"
    skipped: list = []
    pairs = list(iter_inputs(paths, pre, normalized=False, skipped=skipped))
    if not pairs:
        raise ImageError(
            f"none of the {len(paths)} images could be read; pass --images DIR with readable jpg/png/webp/bmp files"
        )
    raw = [x for _, x in pairs]
    return Inputs(
        raw, [normalize(x[0], pre)[None] for x in raw], [p.name for p, _ in pairs], len(skipped), source
    )


def run_module(module, inputs: list[np.ndarray]) -> np.ndarray:
    """Outputs of a PyTorch module (or convert_pt2e GraphModule), one row per input."""
    import torch

    from ..quantize.calibration import to_tensor

    rows = []
    with torch.no_grad():
        for x in inputs:
            out = module(to_tensor(x))
            if isinstance(out, (tuple, list)):
                out = out[0]
            rows.append(out.detach().numpy().reshape(1, -1))
    return np.concatenate(rows, axis=0).astype(np.float64)


def softmax(rows: np.ndarray) -> np.ndarray:
    z = rows - rows.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
