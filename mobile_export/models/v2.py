"""MobileNetV2 (arXiv:1801.04381): the paper's Table 2 as rows, one builder."""

from __future__ import annotations

from typing import NamedTuple

from torch import nn

from .blocks import (
    BatchNormAct2d,
    DepthwiseSeparable,
    InvertedResidual,
    MobileNet,
    build_blocks,
    conv2d,
    make_divisible,
)


class BottleneckRow(NamedTuple):
    """Table 2 columns: expansion t, output channels c, repeats n, stride s of the first repeat."""

    t: int
    c: int
    n: int
    s: int


STEM = 32  # conv2d 3x3 / s2
ROWS = (
    BottleneckRow(1, 16, 1, 1),
    BottleneckRow(6, 24, 2, 2),
    BottleneckRow(6, 32, 3, 2),
    BottleneckRow(6, 64, 4, 2),
    BottleneckRow(6, 96, 3, 1),
    BottleneckRow(6, 160, 3, 2),
    BottleneckRow(6, 320, 1, 1),
)
HEAD = 1280  # conv2d 1x1 before the pool; widened, never narrowed, by the multiplier
ACT = "relu6"


class Block(NamedTuple):
    t: int
    out: int
    stride: int


def blocks_of(rows=ROWS) -> list[Block]:
    """Unroll the n column: the first repeat strides, the rest keep the size."""
    return [Block(r.t, r.c, r.s if i == 0 else 1) for r in rows for i in range(r.n)]


def mobilenet_v2(
    num_classes: int = 1000, width: float = 1.0, *, bn_eps: float = 1e-5, dropout: float = 0.2
) -> MobileNet:
    """Width scales every layer; the head keeps at least 1280 channels (paper, section 6.1)."""

    def block(row: Block, in_chs: int) -> tuple[nn.Module, int]:
        out = make_divisible(row.out * width)
        if row.t == 1:  # no expansion layer at t=1
            return DepthwiseSeparable(in_chs, out, 3, row.stride, ACT, bn_eps=bn_eps), out
        mid = make_divisible(in_chs * row.t)
        return InvertedResidual(in_chs, mid, out, 3, row.stride, ACT, bn_eps=bn_eps), out

    stem = make_divisible(STEM * width)
    blocks, last = build_blocks(blocks_of(), stem, block)
    head = max(HEAD, make_divisible(HEAD * width))
    return MobileNet(
        conv2d(3, stem, 3, stride=2),
        BatchNormAct2d(stem, ACT, bn_eps),
        blocks,
        conv2d(last, head, 1),
        BatchNormAct2d(head, ACT, bn_eps),
        head,
        num_classes,
        dropout,
    )
