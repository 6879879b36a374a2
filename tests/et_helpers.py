"""Weights for export tests that make parity checks mean something.

Pretrained checkpoints cannot be downloaded here, and untrained random weights are useless
for parity: the features die out and every image gives the same logits (the bias), so any
artifact that reproduces the bias "passes". Re-estimating BatchNorm statistics on real
photos revives the features but leaves a chaotic net that amplifies every rounding
difference ~1.2x per layer (int8 SQNR falls ~1.5 dB per conv to below 0 dB), unlike a
trained net. Near-identity convolutions plus seeded noise, with BatchNorm statistics from
real photos, give input-dependent outputs and trained-like numerical conditioning. The
architecture is the real one; only the parameter values are synthetic."""

from __future__ import annotations

from pathlib import Path

NOISE = 0.3  # std of the random part, relative to 1/sqrt(fan_in)


def well_conditioned_model(name: str, resolution: int, seed: int = 0):
    import torch

    from mobile_export.models import create_model
    from mobile_export.preprocess import default_images
    from mobile_export.quantize.calibration import to_tensor

    # plain: PyTorch's default init underneath, as when these weights were tuned (the CLI's random
    # weights are woken differently, models/synthetic.py)
    built = create_model(name, weights="random", seed=seed, resolution=resolution, random_init="plain")
    module = built.module
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.Conv2d):
                out_c, in_per_group, kh, kw = m.weight.shape
                w = torch.zeros_like(m.weight)
                idx = torch.arange(out_c)
                w[idx, idx % in_per_group, kh // 2, kw // 2] = 1.0
                w += NOISE * torch.randn(m.weight.shape, generator=gen) / (in_per_group * kh * kw) ** 0.5
                m.weight.copy_(w)
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the one batch
    batch = default_images(built.preprocess, normalized=True)
    module.train()
    with torch.no_grad():
        module(torch.cat([to_tensor(x) for x in batch.inputs]))
    module.eval()
    return built


def well_conditioned_state(name: str, resolution: int, seed: int = 0) -> dict:
    return well_conditioned_model(name, resolution, seed).module.state_dict()


def write_weights(name: str, resolution: int, directory: Path, seed: int = 0) -> Path:
    """The weights in our safetensors format, whose metadata states the preprocessing contract
    (the variant's default), so exports from them record a stated, not an assumed, contract."""
    from mobile_export.models.weights import save_weights

    path = Path(directory) / f"{name}_{resolution}_s{seed}.safetensors"
    if not path.exists():
        save_weights(well_conditioned_model(name, resolution, seed), path)
    return path


def photo_folder(directory: Path, unreadable: int = 1) -> Path:
    """A calibration/verification folder of real photos in nested subfolders, plus
    `unreadable` files with an image suffix that do not decode."""
    import shutil

    from mobile_export.preprocess import bundled_photos

    root = Path(directory)
    for i, photo in enumerate(bundled_photos()):
        sub = root / ("a" if i % 2 else "b") / ("deep" if i % 3 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, sub / photo.name)
    for i in range(unreadable):
        (root / f"broken_{i}.jpg").write_bytes(b"not a jpeg at all")
    return root
