"""MobileNetV1 (arXiv:1704.04861): the paper's Table 1 as rows, one builder.

Activation is ReLU6 as in TF slim and timm's mobilenetv1_100 (the paper says ReLU); the
last depthwise conv has stride 1 as every implementation does (the table prints 2)."""

from __future__ import annotations

from typing import NamedTuple

from torch import nn

from .blocks import BatchNormAct2d, DepthwiseSeparable, MobileNet, build_blocks, conv2d, make_divisible


class DepthwiseSeparableRow(NamedTuple):
    """One 'Conv dw / s + Conv 1x1' pair of Table 1: pointwise output channels and dw stride."""

    out: int
    stride: int


STEM = 32  # Conv / s2, 3x3x3x32
ROWS = (
    DepthwiseSeparableRow(64, 1),
    DepthwiseSeparableRow(128, 2),
    DepthwiseSeparableRow(128, 1),
    DepthwiseSeparableRow(256, 2),
    DepthwiseSeparableRow(256, 1),
    DepthwiseSeparableRow(512, 2),
    *[DepthwiseSeparableRow(512, 1)] * 5,
    DepthwiseSeparableRow(1024, 2),
    DepthwiseSeparableRow(1024, 1),
)
ACT = "relu6"


def mobilenet_v1(
    num_classes: int = 1000, width: float = 1.0, *, bn_eps: float = 1e-5, dropout: float = 0.001
) -> MobileNet:
    """`width` scales every layer (the paper's alpha). Dropout 0.001 = slim's keep_prob 0.999."""

    def block(row: DepthwiseSeparableRow, in_chs: int) -> tuple[nn.Module, int]:
        out = make_divisible(row.out * width)
        return DepthwiseSeparable(
            in_chs, out, 3, row.stride, ACT, pw_act=True, residual=False, bn_eps=bn_eps
        ), out

    stem = make_divisible(STEM * width)
    blocks, features = build_blocks(ROWS, stem, block)
    return MobileNet(
        conv2d(3, stem, 3, stride=2),
        BatchNormAct2d(stem, ACT, bn_eps),
        blocks,
        nn.Identity(),
        nn.Identity(),
        features,
        num_classes,
        dropout,
    )
