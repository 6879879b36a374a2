"""MobileNetV4 (arXiv:2404.10518): the per-stage block specs of the paper's Tables 11-15 as
rows (the same lists as TF `MNV4*_BLOCK_SPECS` and timm `_gen_mobilenet_v4`), one builder.

Every model ends with a 1x1 conv to 960 (the last stage), global pooling, a 1x1 conv to 1280
without bias + BN + act, and the classifier. Hybrids add Mobile MQA blocks and layer scale
(1e-5) on every UIB and attention block. ReLU everywhere except Hybrid-Large (GELU)."""

from __future__ import annotations

from typing import NamedTuple, Sequence

from ..errors import UsageError
from .blocks import (
    MQA,
    UIB,
    BatchNormAct2d,
    BlockStyle,
    Conv,
    FusedIB,
    MobileNetEfficientHead,
    StageRow,
    build_stages,
    conv2d,
)

HEAD_IN, HEAD_OUT = 960, 1280
TO_960 = (Conv(1, 1, HEAD_IN),)  # the last stage of every variant


class Variant(NamedTuple):
    stem: int
    act: str
    layer_scale: float | None
    stages: Sequence[Sequence[StageRow]]


CONV_SMALL = Variant(
    32,
    "relu",
    None,
    (
        (Conv(3, 2, 32), Conv(1, 1, 32)),
        (Conv(3, 2, 96), Conv(1, 1, 64)),
        (UIB(5, 5, 2, 3, 96), *[UIB(0, 3, 1, 2, 96)] * 4, UIB(3, 0, 1, 4, 96)),
        (
            UIB(3, 3, 2, 6, 128),
            UIB(5, 5, 1, 4, 128),
            UIB(0, 5, 1, 4, 128),
            UIB(0, 5, 1, 3, 128),
            *[UIB(0, 3, 1, 4, 128)] * 2,
        ),
        TO_960,
    ),
)

CONV_MEDIUM = Variant(
    32,
    "relu",
    None,
    (
        (FusedIB(3, 2, 4, 48),),
        (UIB(3, 5, 2, 4, 80), UIB(3, 3, 1, 2, 80)),
        (
            UIB(3, 5, 2, 6, 160),
            *[UIB(3, 3, 1, 4, 160)] * 2,
            UIB(3, 5, 1, 4, 160),
            UIB(3, 3, 1, 4, 160),
            UIB(3, 0, 1, 4, 160),
            UIB(0, 0, 1, 2, 160),
            UIB(3, 0, 1, 4, 160),
        ),
        (
            UIB(5, 5, 2, 6, 256),
            UIB(5, 5, 1, 4, 256),
            *[UIB(3, 5, 1, 4, 256)] * 2,
            UIB(0, 0, 1, 4, 256),
            UIB(3, 0, 1, 4, 256),
            UIB(3, 5, 1, 2, 256),
            UIB(5, 5, 1, 4, 256),
            *[UIB(0, 0, 1, 4, 256)] * 2,
            UIB(5, 0, 1, 2, 256),
        ),
        TO_960,
    ),
)

CONV_LARGE = Variant(
    24,
    "relu",
    None,
    (
        (FusedIB(3, 2, 4, 48),),
        (UIB(3, 5, 2, 4, 96), UIB(3, 3, 1, 4, 96)),
        (
            UIB(3, 5, 2, 4, 192),
            *[UIB(3, 3, 1, 4, 192)] * 3,
            UIB(3, 5, 1, 4, 192),
            *[UIB(5, 3, 1, 4, 192)] * 5,
            UIB(3, 0, 1, 4, 192),
        ),
        (
            UIB(5, 5, 2, 4, 512),
            *[UIB(5, 5, 1, 4, 512)] * 3,
            UIB(5, 0, 1, 4, 512),
            UIB(5, 3, 1, 4, 512),
            *[UIB(5, 0, 1, 4, 512)] * 2,
            UIB(5, 3, 1, 4, 512),
            UIB(5, 5, 1, 4, 512),
            *[UIB(5, 0, 1, 4, 512)] * 3,
        ),
        TO_960,
    ),
)

HYBRID_MEDIUM = Variant(
    32,
    "relu",
    1e-5,
    (
        (FusedIB(3, 2, 4, 48),),
        (UIB(3, 5, 2, 4, 80), UIB(3, 3, 1, 2, 80)),
        (
            UIB(3, 5, 2, 6, 160),
            UIB(0, 0, 1, 2, 160),
            UIB(3, 3, 1, 4, 160),
            UIB(3, 5, 1, 4, 160),
            MQA(4, 64, 2, 160),
            UIB(3, 3, 1, 4, 160),
            MQA(4, 64, 2, 160),
            UIB(3, 0, 1, 4, 160),
            MQA(4, 64, 2, 160),
            UIB(3, 3, 1, 4, 160),
            MQA(4, 64, 2, 160),
            UIB(3, 0, 1, 4, 160),
        ),
        (
            UIB(5, 5, 2, 6, 256),
            UIB(5, 5, 1, 4, 256),
            *[UIB(3, 5, 1, 4, 256)] * 2,
            UIB(0, 0, 1, 2, 256),
            UIB(3, 5, 1, 2, 256),
            UIB(0, 0, 1, 2, 256),
            UIB(0, 0, 1, 4, 256),
            MQA(4, 64, 1, 256),
            UIB(3, 0, 1, 4, 256),
            MQA(4, 64, 1, 256),
            UIB(5, 5, 1, 4, 256),
            MQA(4, 64, 1, 256),
            UIB(5, 0, 1, 4, 256),
            MQA(4, 64, 1, 256),
            UIB(5, 0, 1, 4, 256),
        ),
        TO_960,
    ),
)

HYBRID_LARGE = Variant(
    24,
    "gelu",
    1e-5,
    (
        (FusedIB(3, 2, 4, 48),),
        (UIB(3, 5, 2, 4, 96), UIB(3, 3, 1, 4, 96)),
        (
            UIB(3, 5, 2, 4, 192),
            *[UIB(3, 3, 1, 4, 192)] * 3,
            UIB(3, 5, 1, 4, 192),
            *[UIB(5, 3, 1, 4, 192)] * 2,
            MQA(8, 48, 2, 192),
            UIB(5, 3, 1, 4, 192),
            MQA(8, 48, 2, 192),
            UIB(5, 3, 1, 4, 192),
            MQA(8, 48, 2, 192),
            UIB(5, 3, 1, 4, 192),
            MQA(8, 48, 2, 192),
            UIB(3, 0, 1, 4, 192),
        ),
        (
            UIB(5, 5, 2, 4, 512),
            *[UIB(5, 5, 1, 4, 512)] * 3,
            UIB(5, 0, 1, 4, 512),
            UIB(5, 3, 1, 4, 512),
            *[UIB(5, 0, 1, 4, 512)] * 2,
            UIB(5, 3, 1, 4, 512),
            UIB(5, 5, 1, 4, 512),
            MQA(8, 64, 1, 512),
            UIB(5, 0, 1, 4, 512),
            MQA(8, 64, 1, 512),
            UIB(5, 0, 1, 4, 512),
            MQA(8, 64, 1, 512),
            UIB(5, 0, 1, 4, 512),
            MQA(8, 64, 1, 512),
            UIB(5, 0, 1, 4, 512),
        ),
        TO_960,
    ),
)

VARIANTS = {
    "conv_small": CONV_SMALL,
    "conv_medium": CONV_MEDIUM,
    "conv_large": CONV_LARGE,
    "hybrid_medium": HYBRID_MEDIUM,
    "hybrid_large": HYBRID_LARGE,
}


def mobilenet_v4(
    num_classes: int = 1000, kind: str = "conv_small", *, bn_eps: float = 1e-5, dropout: float = 0.0
) -> MobileNetEfficientHead:
    """BN eps 1e-5 and no dropout at inference, as timm's mobilenetv4_* (the checkpoints' source)."""
    try:
        variant = VARIANTS[kind]
    except KeyError:
        raise UsageError(f"unknown MobileNetV4 kind {kind!r}; choose one of {', '.join(VARIANTS)}") from None
    style = BlockStyle(act=variant.act, eps=bn_eps, layer_scale=variant.layer_scale)
    blocks, widths = build_stages(variant.stem, variant.stages, style)
    return MobileNetEfficientHead(
        conv2d(3, variant.stem, 3, stride=2),
        BatchNormAct2d(variant.stem, variant.act, bn_eps),
        blocks,
        widths[-1],
        HEAD_OUT,
        None,
        num_classes,
        dropout,
        head_bias=False,
        norm_head=BatchNormAct2d(HEAD_OUT, variant.act, bn_eps),
    )
