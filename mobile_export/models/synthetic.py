"""Random weights whose outputs depend on the image, so a parity check on them means something.

PyTorch's default init makes every MobileNet fade: each layer shrinks the signal, and after a
few dozen layers every image gives the classifier bias, which any artifact "reproduces". The
recipe here is the one the tests use (tests/et_helpers.py), made data-free and reproducible:
- convolutions near identity plus seeded noise (0.3 / sqrt(fan_in)), so the signal neither
  fades nor explodes and rounding errors are not amplified layer after layer (trained-like);
- BatchNorm affine terms randomised (scale U(0.5, 1.5), shift N(0, 0.1)), layer scales
  U(0.05, 0.3) instead of 1e-5, RMS-norm scales U(0.5, 1.5): every part of every block counts;
- BatchNorm statistics measured on seeded synthetic images (1/f noise, like photos' spectrum)
  in float64 at a fixed size, so they do not depend on the export resolution, the thread count
  or the CPU, and the same seed gives the same bytes everywhere.
"""

from __future__ import annotations

NOISE = 0.3  # std of the random part of a conv kernel, relative to 1/sqrt(fan_in)
STATS_IMAGES = 8
STATS_SIZE = 96  # BN statistics are measured at this input size, whatever the export resolution
RECIPE = "input-dependent: near-identity convs + seeded noise, BN statistics from seeded synthetic images"


def synthetic_images(seed: int, count: int = STATS_IMAGES, size: int = STATS_SIZE, dtype=None):
    """`count` RGB images in [0, 1] (N x 3 x size x size) with a 1/f spectrum: noise drawn at
    4..size pixels and upsampled, each octave at half the amplitude of the one above."""
    import torch
    import torch.nn.functional as F

    dtype = dtype or torch.float64
    gen = torch.Generator().manual_seed(10_000 + seed)
    img = torch.zeros(count, 3, size, size, dtype=dtype)
    side, amplitude = 4, 1.0
    while side <= size:
        noise = torch.randn(count, 3, side, side, generator=gen, dtype=dtype)
        img += amplitude * F.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False)
        side, amplitude = side * 2, amplitude * 0.5
    img = (img - img.mean()) / img.std()
    return (0.5 + 0.2 * img).clamp(0.0, 1.0)


def wake(module, seed: int, mean, std) -> None:
    """Turn a freshly built (default-init) module into input-dependent random weights, in place.
    `mean`/`std` are the preprocessing contract the synthetic images are normalized with."""
    import torch
    from torch import nn

    from .blocks import LayerScale2d, RmsNormAct2d

    gen = torch.Generator().manual_seed(seed)
    norms = []
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                out_c, in_per_group, kh, kw = m.weight.shape
                w = torch.zeros_like(m.weight)
                idx = torch.arange(out_c)
                w[idx, idx % in_per_group, kh // 2, kw // 2] = 1.0
                w += NOISE * torch.randn(m.weight.shape, generator=gen) / (in_per_group * kh * kw) ** 0.5
                m.weight.copy_(w)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
                norms.append(m)
            elif isinstance(m, RmsNormAct2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
            elif isinstance(m, LayerScale2d):
                m.gamma.copy_(torch.rand(m.gamma.shape, generator=gen) * 0.25 + 0.05)
    if not norms:
        return
    images = synthetic_images(seed)
    m64 = torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)
    s64 = torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: one batch gives exactly its statistics
    module.double().train()
    try:
        with torch.no_grad():
            module((images - m64) / s64)
    finally:
        module.float().eval()
        for m in norms:
            m.momentum = 0.1
            m.num_batches_tracked.zero_()
