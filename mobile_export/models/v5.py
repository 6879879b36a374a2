"""MobileNetV5, the vision encoder of Gemma 3n. No paper: the only public definition is timm's
`mobilenetv5.py` (`_gen_mobilenet_v5`), whose stage tables are below as rows.

V4 parts with four changes: RMSNorm over channels instead of BatchNorm, GELU (tanh), layer
scale 1e-5 on every UIB and attention block, and a multi-scale fusion adapter (MSFA) as the
head: the last two stages are fused at the finer one's resolution, projected to 2048 channels
and pooled to a fixed 16x16 grid of tokens for the language model."""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import UsageError
from .blocks import (
    MQA,
    UIB,
    BlockStyle,
    ConvNormAct,
    FusedIB,
    RmsNormAct2d,
    StageRow,
    UniversalInvertedResidual,
    build_stages,
    classifier,
    round_channels,
)

STEM = 64
MSFA_CHANNELS = 2048
MSFA_GRID = 16  # output tokens per side
ACT = "gelu_tanh"


def _stage0() -> tuple[StageRow, ...]:
    return (FusedIB(3, 2, 4, 128), FusedIB(3, 1, 4, 128), FusedIB(3, 1, 4, 128))


def _stage1() -> tuple[StageRow, ...]:
    return (
        UIB(3, 5, 2, 6, 256),
        UIB(5, 0, 1, 4, 256),
        UIB(3, 0, 1, 4, 256),
        UIB(5, 0, 1, 4, 256),
        UIB(3, 0, 1, 4, 256),
    )


def _attention_run(attn: MQA, out: int, pairs: int) -> tuple[StageRow, ...]:
    """`pairs` x (Mobile MQA, FFN-form UIB with expansion 2)."""
    return (attn, UIB(0, 0, 1, 2, out)) * pairs


STAGES_300M: Sequence[Sequence[StageRow]] = (
    _stage0(),
    _stage1(),
    (
        UIB(5, 5, 2, 6, 640),
        *[UIB(5, 0, 1, 4, 640)] * 7,
        UIB(0, 0, 1, 1, 640),
        *_attention_run(MQA(12, 64, 2, 640), 640, 14),
    ),
    (UIB(5, 5, 2, 6, 1280), *_attention_run(MQA(16, 96, 1, 1280), 1280, 19)),
)

# timm writes the base's stage-2 MQA rows with s2, but only a stage's first block may stride,
# so they run at stride 1 (and without key/value downsampling).
STAGES_BASE: Sequence[Sequence[StageRow]] = (
    _stage0(),
    _stage1(),
    (
        UIB(5, 5, 2, 6, 512),
        *[UIB(5, 0, 1, 4, 512)] * 2,
        UIB(0, 0, 1, 1, 512),
        *_attention_run(MQA(8, 64, 1, 512), 512, 6),
    ),
    (UIB(5, 5, 2, 6, 1024), *_attention_run(MQA(16, 64, 1, 1024), 1024, 7)),
)


class Variant(NamedTuple):
    stages: Sequence[Sequence[StageRow]]
    tf_same: bool  # TF 'SAME' padding on strided convs
    encoder: bool  # features out (no pooling, no classifier)


VARIANTS = {
    # The Gemma 3n encoder (timm mobilenetv5_300m_enc, the definition the published weights run in).
    "300m": Variant(STAGES_300M, tf_same=True, encoder=True),
    # timm mobilenetv5_base: an untrained classification config, symmetric padding.
    "base": Variant(STAGES_BASE, tf_same=False, encoder=False),
}


class MultiScaleFusionAdapter(nn.Module):
    """MSFA: nearest-upsample the coarser map to the finer one, concatenate channels, FFN-form
    UIB (expansion 2, no residual, no layer scale) to 2048, then average-pool to the 16x16 grid
    when the size divides (bilinear resize otherwise), then RMSNorm. Sizes are static under
    export, so the branches below are decided once at trace time."""

    def __init__(self, in_chs: Sequence[int], out_chs: int, grid: int, style: BlockStyle):
        super().__init__()
        self.grid = grid
        self.ffn = UniversalInvertedResidual(
            sum(in_chs), out_chs, 0, 0, 1, 2.0, replace(style, layer_scale=None), skip=False
        )
        self.norm = RmsNormAct2d(out_chs, None, style.eps)
        # Nearest 2x upsampling as a depthwise transposed conv with a ones kernel: the same
        # numbers, and XNNPACK has no nearest-neighbour resize (it would split the graph).
        self.register_buffer("nearest_2x", torch.ones(in_chs[-1], 1, 2, 2), persistent=False)

    def upsample(self, coarse: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        h, w = coarse.shape[-2:]
        if (h, w) == size:
            return coarse
        if size == (2 * h, 2 * w):
            return F.conv_transpose2d(coarse, self.nearest_2x, stride=2, groups=coarse.shape[1])
        return F.interpolate(coarse, size=size, mode="nearest")  # odd inputs with TF padding

    def forward(self, fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        h, w = fine.shape[-2:]
        coarse = self.upsample(coarse, (h, w))
        x = self.ffn(torch.cat([fine, coarse], dim=1))
        if (h, w) != (self.grid, self.grid):
            if h % self.grid or w % self.grid:
                x = F.interpolate(x, size=(self.grid, self.grid), mode="bilinear")
            else:
                x = F.avg_pool2d(x, kernel_size=(h // self.grid, w // self.grid))
        return self.norm(x)


class MobileNetV5(nn.Module):
    """stem -> 4 stages -> MSFA on the last two -> [pool -> linear] (the encoder stops at the
    MSFA: B x 2048 x 16 x 16 features)."""

    def __init__(self, variant: Variant, num_classes: int, width: float, dropout: float):
        super().__init__()
        style = BlockStyle(act=ACT, norm="rms", eps=1e-6, layer_scale=1e-5, tf_same=variant.tf_same)
        stem = round_channels(STEM, width) if width > 1.0 else STEM  # timm keeps the stem when narrowing
        self.conv_stem = ConvNormAct(3, stem, 3, style, stride=2, bias=True)
        self.blocks, widths = build_stages(stem, variant.stages, style, width)
        self.msfa = MultiScaleFusionAdapter(widths[-2:], MSFA_CHANNELS, MSFA_GRID, style)
        self.num_features = MSFA_CHANNELS
        pooled = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Dropout(dropout))
        self.head = nn.Identity() if variant.encoder else pooled
        self.classifier = nn.Identity() if variant.encoder else classifier(MSFA_CHANNELS, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_stem(x)
        x = self.blocks[0](x)
        x = self.blocks[1](x)
        fine = self.blocks[2](x)
        coarse = self.blocks[3](fine)
        x = self.msfa(fine, coarse)
        return self.classifier(self.head(x))


def mobilenet_v5(
    num_classes: int = 1000, kind: str = "300m", *, width: float = 1.0, dropout: float = 0.0
) -> MobileNetV5:
    """`width` < 1 is timm's channel_multiplier (stem and MSFA keep their size): a narrow model
    with the same structure, for fast tests only. The encoder ignores `num_classes` (features out)."""
    try:
        variant = VARIANTS[kind]
    except KeyError:
        raise UsageError(f"unknown MobileNetV5 kind {kind!r}; choose one of {', '.join(VARIANTS)}") from None
    return MobileNetV5(variant, num_classes, width, dropout)
