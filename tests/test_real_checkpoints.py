"""Files written by the REAL torchvision and timm load into our models and give the logits the
real library computed, in the default run (no side venv needed).

tests/fixtures/real/ was made by scripts/make_real_checkpoints.py in a side venv with torch
2.14.1, torchvision 0.29.1 and timm 1.0.31: torchvision's MobileNetV2 (width 0.35) saved with
torch.save(state_dict), timm's MobileNetV1 0.25 (torch.save) and MobileNetV3-Small 0.75
(safetensors, fp16 values), each with 10 classes, BatchNorm woken on real photos, and the
library's own logits on 3 real photos (uint8 crops in images.npy). Unlike the round trips in
test_weights.py, nothing here was written with our key pairing: a wrong pairing, a wrong BN
eps or a dropped tensor changes these logits."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

REAL = Path(__file__).parent / "fixtures" / "real"
INDEX = json.loads((REAL / "index.json").read_text())
CHECKPOINTS = INDEX["checkpoints"]
# their torch 2.14 vs our torch, CPU float32: measured 1.4e-7 (V1), 4.6e-7 (V2) and 2.5e-6
# (V3-Small) of the largest logit
REL_TOL = 1e-4


def inputs() -> torch.Tensor:
    """The generator's arithmetic: uint8 -> [0, 1] -> (x - mean) / std, float32."""
    meta = INDEX["images"]
    pixels = np.load(REAL / meta["file"], allow_pickle=False)
    x = pixels.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    mean = np.asarray(meta["mean"], np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(meta["std"], np.float32).reshape(1, 3, 1, 1)
    return torch.from_numpy(((x - mean) / std).astype(np.float32))


def our_logits(name: str, path: Path) -> tuple[np.ndarray, dict]:
    from mobile_export.models import create_model

    info = CHECKPOINTS[name]
    built = create_model(info["model"], weights=str(path), resolution=INDEX["images"]["resolution"])
    with torch.no_grad():
        return built.module(inputs()).numpy(), built.weights | {"num_classes": built.num_classes}


def test_fixtures_are_small_and_cover_both_libraries():
    assert {c["library"] for c in CHECKPOINTS.values()} == {"torchvision", "timm"}
    for name, info in CHECKPOINTS.items():
        path = REAL / name
        assert path.stat().st_size < 3_000_000
        assert hashlib.sha256(path.read_bytes()).hexdigest() == info["sha256"]
    assert np.load(REAL / INDEX["images"]["file"]).shape == (3, 96, 96, 3)


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_real_file_gives_the_real_library_logits(one_thread, name):
    info = CHECKPOINTS[name]
    theirs = np.load(REAL / info["logits"], allow_pickle=False)
    assert theirs.shape == (3, info["num_classes"])
    # the logits depend on the image, so only the right weights in the right places match them
    assert theirs.std(axis=0).mean() > 0.2 * theirs.std()
    ours, weights = our_logits(name, REAL / name)
    assert weights["format"] == info["library"] and weights["num_classes"] == info["num_classes"]
    error = float(np.abs(ours - theirs).max())
    assert error <= REL_TOL * float(np.abs(theirs).max()), f"{name}: max |ours - theirs| {error:.3g}"
    assert ours.argmax(1).tolist() == theirs.argmax(1).tolist() == info["top1"]


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_a_swapped_pair_of_tensors_is_seen(one_thread, tmp_path, name):
    """The comparison above can fail: the same file with two same-shaped tensors exchanged
    (the last two depthwise kernels of one shape: a pairing mistake a loader could make) loads
    without complaint and must miss the library's logits by far more than REL_TOL."""
    from safetensors.torch import load_file, save_file

    path = REAL / name
    state = torch.load(path, weights_only=True) if path.suffix == ".pth" else load_file(str(path))
    depthwise = [k for k, v in state.items() if v.dim() == 4 and v.shape[1] == 1]
    pair = next(
        (a, b)
        for a in reversed(depthwise)
        for b in reversed(depthwise)
        if a != b and state[a].shape == state[b].shape
    )
    state[pair[0]], state[pair[1]] = state[pair[1]], state[pair[0]]
    swapped = tmp_path / name
    torch.save(state, swapped) if path.suffix == ".pth" else save_file(state, str(swapped))
    theirs = np.load(REAL / CHECKPOINTS[name]["logits"], allow_pickle=False)
    ours, _ = our_logits(name, swapped)
    assert float(np.abs(ours - theirs).max()) > 100 * REL_TOL * float(np.abs(theirs).max()), pair
