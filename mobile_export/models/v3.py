"""MobileNetV3 (arXiv:1905.02244): the paper's Tables 1 (Large) and 2 (Small) as rows, one builder.

Width multipliers follow the paper and timm: block widths scale, the expansion *ratio* of each
row is kept (timm's `e` column), and the 1280/1024 head is never narrowed (torchvision's
`width_mult` narrows it too, giving another model)."""

from __future__ import annotations

from typing import NamedTuple

from torch import nn

from .blocks import (
    BatchNormAct2d,
    ConvBnAct,
    DepthwiseSeparable,
    InvertedResidual,
    MobileNetEfficientHead,
    build_blocks,
    conv2d,
    make_divisible,
)


class BneckRow(NamedTuple):
    """The paper's columns (torchvision's bneck_conf): input channels, kernel, expansion size,
    output channels, squeeze-excite, nonlinearity (RE = ReLU, HS = hard swish), stride."""

    in_: int
    k: int
    exp: int
    out: int
    se: bool
    nl: str
    s: int


B = BneckRow
LARGE = (
    B(16, 3, 16, 16, False, "RE", 1),
    B(16, 3, 64, 24, False, "RE", 2),
    B(24, 3, 72, 24, False, "RE", 1),
    B(24, 5, 72, 40, True, "RE", 2),
    B(40, 5, 120, 40, True, "RE", 1),
    B(40, 5, 120, 40, True, "RE", 1),
    B(40, 3, 240, 80, False, "HS", 2),
    B(80, 3, 200, 80, False, "HS", 1),
    B(80, 3, 184, 80, False, "HS", 1),
    B(80, 3, 184, 80, False, "HS", 1),
    B(80, 3, 480, 112, True, "HS", 1),
    B(112, 3, 672, 112, True, "HS", 1),
    B(112, 5, 672, 160, True, "HS", 2),
    B(160, 5, 960, 160, True, "HS", 1),
    B(160, 5, 960, 160, True, "HS", 1),
)
SMALL = (
    B(16, 3, 16, 16, True, "RE", 2),
    B(16, 3, 72, 24, False, "RE", 2),
    B(24, 3, 88, 24, False, "RE", 1),
    B(24, 5, 96, 40, True, "HS", 2),
    B(40, 5, 240, 40, True, "HS", 1),
    B(40, 5, 240, 40, True, "HS", 1),
    B(40, 5, 120, 48, True, "HS", 1),
    B(48, 5, 144, 48, True, "HS", 1),
    B(48, 5, 288, 96, True, "HS", 2),
    B(96, 5, 576, 96, True, "HS", 1),
    B(96, 5, 576, 96, True, "HS", 1),
)


class Size(NamedTuple):
    rows: tuple[BneckRow, ...]
    last_conv: int  # conv2d 1x1 (+BN, HS) before the pool; scales with width
    head: int  # conv2d 1x1 NBN after the pool; fixed


SIZES = {"large": Size(LARGE, 960, 1280), "small": Size(SMALL, 576, 1024)}
STEM = 16  # conv2d 3x3 / s2, HS


def minimalistic(row: BneckRow) -> BneckRow:
    """The paper's minimalistic variants: no SE, ReLU everywhere, 3x3 kernels."""
    return row._replace(k=3, se=False, nl="RE")


def mobilenet_v3(
    num_classes: int = 1000,
    size: str = "large",
    width: float = 1.0,
    minimal: bool = False,
    *,
    bn_eps: float = 1e-5,
    dropout: float = 0.2,
) -> MobileNetEfficientHead:
    """`bn_eps`: timm's checkpoints use 1e-5, torchvision's 1e-3."""
    rows, last_conv, head = SIZES[size]
    rows = tuple(map(minimalistic, rows)) if minimal else rows
    act = "RE" if minimal else "HS"

    def block(row: BneckRow, in_chs: int) -> tuple[nn.Module, int]:
        out = make_divisible(row.out * width)
        if row.exp == row.in_:  # no expansion layer
            return DepthwiseSeparable(in_chs, out, row.k, row.s, row.nl, se=row.se, bn_eps=bn_eps), out
        mid = make_divisible(in_chs * row.exp / row.in_)
        return InvertedResidual(in_chs, mid, out, row.k, row.s, row.nl, se=row.se, bn_eps=bn_eps), out

    stem = STEM if width < 0.75 else make_divisible(STEM * width)  # timm keeps a narrow stem at 16
    blocks, in_chs = build_blocks(rows, stem, block)
    last = make_divisible(last_conv * width)
    blocks.append(nn.Sequential(ConvBnAct(in_chs, last, 1, 1, act, bn_eps)))
    return MobileNetEfficientHead(
        conv2d(3, stem, 3, stride=2),
        BatchNormAct2d(stem, act, bn_eps),
        blocks,
        last,
        head,
        act,
        num_classes,
        dropout,
    )
