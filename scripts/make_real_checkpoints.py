#!/usr/bin/env python3
"""Small checkpoints written by the REAL torchvision and timm, with the logits the real
library computes for a few real photos, so tests/test_real_checkpoints.py checks our loader
against the libraries themselves in the default test run (without torchvision or timm).

Runs ONLY in a side environment with torchvision and timm (they are never project
dependencies: PyPI's torchvision does not import beside the project's torch 2.13 CPU):

    python3 -m venv /tmp/side && /tmp/side/bin/pip install torch==2.14.1 torchvision==0.29.1 \\
        timm==1.0.31 safetensors
    /tmp/side/bin/python scripts/make_real_checkpoints.py --photos $(python3 -c \\
        "from mobile_export.preprocess import bundled_photos; print(*bundled_photos())")

Writes tests/fixtures/real/: one state dict per CASE exactly as a user of that library saves
it (torch.save(model.state_dict()) for .pth, safetensors' save_file for .safetensors), the
photos as uint8 crops (images.npy, cut by the real torchvision transforms), each model's
logits on them (<file stem>.logits.npy, float32, computed by the real library) and index.json
(versions, how each file was made, which of our models it is).

Weights: the library's own seeded init, then "woken": BatchNorm scales and shifts moved off
1/0 and running statistics measured on real photo crops, so every tensor shapes the logits
and the logits depend on the image (untrained random weights fade to the classifier bias,
which any key pairing reproduces). Narrow variants and 10 classes keep each file < 3 MB."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "real"
RESOLUTION = 96
NUM_CLASSES = 10
TEST_PHOTOS = 3  # the first photos given: their logits are committed; all photos feed BN statistics
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# file stem -> (library, how to build it, our model name, storage, fp16 values)
CASES = {
    "torchvision_mobilenet_v2_035": (
        "torchvision",
        "mobilenet_v2(width_mult=0.35)",
        "mobilenet_v2_035",
        "pth",
        False,
    ),
    "timm_mobilenetv1_025": (
        "timm",
        "efficientnet._gen_mobilenet_v1('mobilenetv1_025', 0.25)",
        "mobilenet_v1_025",
        "pth",
        False,
    ),
    "timm_mobilenetv3_small_075": (
        "timm",
        "create_model('mobilenetv3_small_075')",
        "mobilenet_v3_small_075",
        "safetensors",
        True,
    ),
}


def build(stem: str):
    library = CASES[stem][0]
    if library == "torchvision":
        import torchvision

        return torchvision.models.mobilenet_v2(weights=None, width_mult=0.35, num_classes=NUM_CLASSES)
    import timm

    if stem == "timm_mobilenetv1_025":  # timm registers V1 only at 1.0+; its own generator makes the 0.25
        from timm.models.efficientnet import _gen_mobilenet_v1

        return _gen_mobilenet_v1("mobilenetv1_025", 0.25, num_classes=NUM_CLASSES)
    return timm.create_model("mobilenetv3_small_075", pretrained=False, num_classes=NUM_CLASSES)


def crops(paths: list[Path], seed: int):
    """-> (uint8 N x R x R x 3 centre crops of every photo, float batch of random crops for
    the BN statistics), both by torchvision's own transforms on PIL images."""
    import numpy as np
    import torch
    from PIL import Image
    from torchvision import transforms as T

    centre = T.Compose([T.Resize(RESOLUTION), T.CenterCrop(RESOLUTION)])
    random_crop = T.RandomResizedCrop(RESOLUTION, scale=(0.1, 0.6))
    torch.manual_seed(seed)
    images = [Image.open(p).convert("RGB") for p in paths]
    fixed = np.stack([np.asarray(centre(img), dtype=np.uint8) for img in images])
    wake = np.stack([np.asarray(random_crop(img), dtype=np.uint8) for img in images for _ in range(6)])
    return fixed, wake


def to_input(pixels):
    """uint8 N x H x W x 3 -> normalized float32 N x 3 x H x W (the project's arithmetic)."""
    import numpy as np
    import torch

    x = pixels.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    mean = np.asarray(MEAN, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(STD, np.float32).reshape(1, 3, 1, 1)
    return torch.from_numpy(((x - mean) / std).astype(np.float32))


def wake(model, batch, seed: int) -> None:
    import torch

    gen = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for m in norms:
            m.weight.mul_(torch.empty(m.weight.shape).uniform_(0.5, 1.5, generator=gen))
            m.bias.add_(0.1 * torch.randn(m.bias.shape, generator=gen))
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the one batch
        model.train()
        model(batch)
    model.eval()
    for m in norms:
        m.momentum = 0.1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--photos", type=Path, nargs="+", required=True, help="real photos; the first 3 get logits"
    )
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import numpy as np
    import timm
    import torch
    import torchvision
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    fixed, wake_pixels = crops(args.photos, args.seed)
    test_pixels = fixed[:TEST_PHOTOS]
    np.save(args.out / "images.npy", test_pixels)
    index = {
        "versions": {
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "timm": timm.__version__,
        },
        "images": {
            "file": "images.npy",
            "photos": [p.name for p in args.photos[:TEST_PHOTOS]],
            "resolution": RESOLUTION,
            "mean": MEAN,
            "std": STD,
            "how": "torchvision Resize(R) + CenterCrop(R) on the PIL image, uint8 N x R x R x 3",
        },
        "weights": f"seed {args.seed} library init; BN scale x U(0.5, 1.5), shift + N(0, 0.1); BN statistics "
        f"from {len(wake_pixels)} random crops of {len(args.photos)} photos",
        "checkpoints": {},
    }
    for stem, (library, how, ours, storage, half) in CASES.items():
        torch.manual_seed(args.seed)
        model = build(stem)
        wake(model, to_input(wake_pixels), args.seed)
        state = model.state_dict()
        if half:  # stored in fp16; the logits are those of exactly the stored values
            model.load_state_dict(
                {k: v.half().float() if v.is_floating_point() else v for k, v in state.items()}
            )
            state = {
                k: (v.half() if v.is_floating_point() else v).contiguous()
                for k, v in model.state_dict().items()
            }
        with torch.no_grad():
            logits = model(to_input(test_pixels)).float().numpy()
        path = args.out / f"{stem}.{storage}"
        if storage == "pth":
            torch.save(state, path)
        else:
            save_file(state, str(path))
        np.save(args.out / f"{stem}.logits.npy", logits)
        spread = float(logits.std(axis=0).mean() / logits.std())
        index["checkpoints"][path.name] = {
            "library": library,
            "built_by": how,
            "model": ours,
            "num_classes": NUM_CLASSES,
            "saved_by": "torch.save(model.state_dict())"
            if storage == "pth"
            else "safetensors.torch.save_file(state_dict)",
            "fp16": half,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "bytes": path.stat().st_size,
            "logits": f"{stem}.logits.npy",
            "top1": logits.argmax(1).tolist(),
            "image_dependence": round(spread, 3),  # mean over classes of the std over images / overall std
        }
        print(
            f"{path.name}: {path.stat().st_size / 1e6:.2f} MB, top-1 {logits.argmax(1).tolist()}, "
            f"image dependence {spread:.2f}"
        )
    (args.out / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
