"""Layers shared by every generation. Module and attribute names follow timm
(`conv_dw`, `bn1`, `se.conv_reduce`, `conv_pwl`, ...) so timm checkpoints load with no
renaming; torchvision's map onto them one to one by order. Optional parts are nn.Identity
so each forward is a straight line, which is also what exporters like best."""

from __future__ import annotations

from typing import Callable, Iterable, Sequence, TypeVar

import torch
from torch import nn
from torch.nn import functional as F

Row = TypeVar("Row")


def make_divisible(
    value: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9
) -> int:
    """Round a channel count to a multiple of `divisor` without losing more than 10% (TF/timm rule);
    every width multiplier goes through this so counts match the reference implementations."""
    min_value = min_value or divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < round_limit * value else rounded


class HardSigmoid(nn.Module):
    """relu6(x + 3) / 6: the same function as nn.Hardsigmoid, written with ops XNNPACK takes
    whole (nn.Hardsigmoid decomposes into ops that stay outside the delegate)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(x + 3.0) / 6.0


# The paper's NL column and timm's act names, to module factories.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "RE": nn.ReLU,
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "HS": nn.Hardswish,
    "hardswish": nn.Hardswish,
}


def activation(name: str) -> nn.Module:
    return ACTIVATIONS[name]()


class BatchNormAct2d(nn.BatchNorm2d):
    """BatchNorm followed by an activation, as timm's BatchNormAct2d: the activation is a
    child without parameters, so the state-dict names stay `bnX.weight`, `bnX.running_mean`, ..."""

    def __init__(self, channels: int, act: str | None = None, eps: float = 1e-5):
        super().__init__(channels, eps=eps)
        self.act = activation(act) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(x))


def conv2d(
    in_chs: int, out_chs: int, kernel: int, stride: int = 1, groups: int = 1, bias: bool = False
) -> nn.Conv2d:
    """Symmetric 'same'-style padding (k // 2), as torchvision and timm's non-TF models use."""
    return nn.Conv2d(in_chs, out_chs, kernel, stride, padding=kernel // 2, groups=groups, bias=bias)


class SqueezeExcite(nn.Module):
    """Channel attention of V3: mean over space, 1x1 reduce + ReLU, 1x1 expand, hard sigmoid gate."""

    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, reduced, 1, bias=True)
        self.act1 = nn.ReLU()
        self.conv_expand = nn.Conv2d(reduced, channels, 1, bias=True)
        self.gate = HardSigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)
        scale = self.gate(self.conv_expand(self.act1(self.conv_reduce(scale))))
        return x * scale


def squeeze_excite(channels: int, use: bool, ratio: float = 0.25) -> nn.Module:
    return SqueezeExcite(channels, make_divisible(channels * ratio)) if use else nn.Identity()


class DepthwiseSeparable(nn.Module):
    """dw kxk + BN + act [+ SE] -> 1x1 + BN [+ act]. V1's block (pw act, never residual), and
    the first block of V2/V3 where the expansion is 1 (linear projection, residual if shapes allow)."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel: int,
        stride: int,
        act: str,
        *,
        pw_act: bool = False,
        se: bool = False,
        residual: bool = True,
        bn_eps: float = 1e-5,
    ):
        super().__init__()
        self.has_skip = residual and stride == 1 and in_chs == out_chs
        self.conv_dw = conv2d(in_chs, in_chs, kernel, stride, groups=in_chs)
        self.bn1 = BatchNormAct2d(in_chs, act, bn_eps)
        self.se = squeeze_excite(in_chs, se)
        self.conv_pw = conv2d(in_chs, out_chs, 1)
        self.bn2 = BatchNormAct2d(out_chs, act if pw_act else None, bn_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn1(self.conv_dw(x))
        y = self.se(y)
        y = self.bn2(self.conv_pw(y))
        return x + y if self.has_skip else y


class InvertedResidual(nn.Module):
    """1x1 expand + BN + act -> dw kxk + BN + act [+ SE] -> 1x1 project + BN (linear
    bottleneck, no act) -> residual iff stride 1 and in == out (V2 paper, section 3.3)."""

    def __init__(
        self,
        in_chs: int,
        mid_chs: int,
        out_chs: int,
        kernel: int,
        stride: int,
        act: str,
        *,
        se: bool = False,
        bn_eps: float = 1e-5,
    ):
        super().__init__()
        self.has_skip = stride == 1 and in_chs == out_chs
        self.conv_pw = conv2d(in_chs, mid_chs, 1)
        self.bn1 = BatchNormAct2d(mid_chs, act, bn_eps)
        self.conv_dw = conv2d(mid_chs, mid_chs, kernel, stride, groups=mid_chs)
        self.bn2 = BatchNormAct2d(mid_chs, act, bn_eps)
        self.se = squeeze_excite(mid_chs, se)
        self.conv_pwl = conv2d(mid_chs, out_chs, 1)
        self.bn3 = BatchNormAct2d(out_chs, None, bn_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn1(self.conv_pw(x))
        y = self.bn2(self.conv_dw(y))
        y = self.se(y)
        y = self.bn3(self.conv_pwl(y))
        return x + y if self.has_skip else y


class ConvBnAct(nn.Module):
    """Plain conv + BN + act: V3's last 1x1 conv before pooling (timm block `cn`)."""

    def __init__(self, in_chs: int, out_chs: int, kernel: int, stride: int, act: str, bn_eps: float = 1e-5):
        super().__init__()
        self.conv = conv2d(in_chs, out_chs, kernel, stride)
        self.bn1 = BatchNormAct2d(out_chs, act, bn_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn1(self.conv(x))


def group_stages(rows: Iterable[Row], out_channels: Callable[[Row], int]) -> list[list[Row]]:
    """timm numbers blocks `blocks.<stage>.<index>`, a stage being a run of rows with the same
    output width (the paper's widths, before any multiplier). Grouping the same way keeps names equal."""
    stages: list[list[Row]] = []
    for row in rows:
        if stages and out_channels(stages[-1][-1]) == out_channels(row):
            stages[-1].append(row)
        else:
            stages.append([row])
    return stages


def classifier(in_features: int, num_classes: int) -> nn.Module:
    """num_classes=0 leaves pooled features (a backbone)."""
    return nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()


class MobileNet(nn.Module):
    """V1/V2 layout: stem -> blocks -> [1x1 conv head + BN + act] -> pool -> dropout -> linear."""

    def __init__(
        self,
        conv_stem: nn.Module,
        bn1: nn.Module,
        blocks: nn.Sequential,
        conv_head: nn.Module,
        bn2: nn.Module,
        num_features: int,
        num_classes: int,
        dropout: float,
    ):
        super().__init__()
        self.conv_stem, self.bn1, self.blocks = conv_stem, bn1, blocks
        self.conv_head, self.bn2 = conv_head, bn2
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(dropout)
        self.num_features = num_features
        self.classifier = classifier(num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.conv_stem(x))
        x = self.blocks(x)
        x = self.bn2(self.conv_head(x))
        x = self.flatten(self.global_pool(x))
        return self.classifier(self.dropout(x))


class MobileNetEfficientHead(nn.Module):
    """V3/V4 layout (the 'efficient last stage'): stem -> blocks -> pool -> 1x1 conv head
    [+ norm] + act -> dropout -> linear. Pooling before the wide head saves its MACs at 7x7; a
    1x1 conv on a 1x1 map is what Core ML and XNNPACK run best."""

    def __init__(
        self,
        conv_stem: nn.Module,
        bn1: nn.Module,
        blocks: nn.Sequential,
        head_in: int,
        head_out: int,
        act: str | None,
        num_classes: int,
        dropout: float,
        head_bias: bool = True,
        norm_head: nn.Module | None = None,
    ):
        super().__init__()
        self.conv_stem, self.bn1, self.blocks = conv_stem, bn1, blocks
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_head = nn.Conv2d(head_in, head_out, 1, bias=head_bias)
        self.norm_head = norm_head if norm_head is not None else nn.Identity()
        self.act2 = activation(act) if act else nn.Identity()
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(dropout)
        self.num_features = head_out
        self.classifier = classifier(head_out, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.conv_stem(x))
        x = self.blocks(x)
        x = self.global_pool(x)
        x = self.act2(self.norm_head(self.conv_head(x)))
        return self.classifier(self.dropout(self.flatten(x)))


def build_blocks(
    rows: Sequence[Row],
    in_chs: int,
    block: Callable[[Row, int], tuple[nn.Module, int]],
    paper_width: Callable[[Row], int] = lambda row: row.out,
) -> tuple[nn.Sequential, int]:
    """Walk a generation's table: `block(row, in_chs)` -> (module, out_chs) for each row, grouped
    into timm's stages. Returns `blocks` (a Sequential of Sequentials) and the last width."""
    stages = []
    for rows_of_stage in group_stages(rows, paper_width):
        stage = []
        for row in rows_of_stage:
            module, in_chs = block(row, in_chs)
            stage.append(module)
        stages.append(nn.Sequential(*stage))
    return nn.Sequential(*stages), in_chs


# --- V4 / V5 blocks

# (V4 / V5 section: UIB, Mobile MQA, RMSNorm, layer scale, TF 'same' padding, stage rows.
#  Attribute names are timm's (`dw_start.conv`, `attn.key.down_conv`, `layer_scale.gamma`, ...),
#  so mobilenetv4_* / mobilenetv5_* checkpoints load with no renaming.)
from dataclasses import dataclass  # noqa: E402  (this section reads as its own module)
from typing import NamedTuple  # noqa: E402

ACTIVATIONS.update(
    {
        "gelu": nn.GELU,  # exact erf GELU: V4 Hybrid-Large
        "gelu_tanh": lambda: nn.GELU(approximate="tanh"),  # V5 (Gemma 3n)
    }
)


class RmsNormAct2d(nn.Module):
    """RMS norm over the channels of an NCHW map (timm RmsNorm2d: no mean, no bias), then an
    optional activation. V5 uses it where V4 has BatchNorm; the state dict holds only `weight`.

    The mean over channels is a 1x1 conv with a constant 1/C kernel (a buffer outside the
    state dict): XNNPACK's mean only reduces H and W, so `mean(dim=1)` would split the graph at
    every norm, while a conv stays in the delegate and in its channels-last layout."""

    def __init__(self, channels: int, act: str | None = None, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.register_buffer(
            "channel_mean", torch.full((1, channels, 1, 1), 1.0 / channels), persistent=False
        )
        self.act = activation(act) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = F.conv2d(x * x, self.channel_mean)
        x = x * torch.rsqrt(variance + self.eps) * self.weight.view(1, -1, 1, 1)
        return self.act(x)


class Conv2dSame(nn.Conv2d):
    """Conv with TensorFlow 'SAME' padding: out = ceil(in / stride), the odd pixel padded at the
    bottom/right. The amount depends on the input size, so it is computed per call; under
    export the shapes are static and this becomes one constant pad."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((-(-size // s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


def conv2d_same(
    in_chs: int,
    out_chs: int,
    kernel: int,
    stride: int = 1,
    groups: int = 1,
    bias: bool = False,
    tf_same: bool = False,
) -> nn.Conv2d:
    """timm's create_conv2d: with TF padding only a strided conv differs from symmetric k // 2."""
    if tf_same and stride > 1:
        return Conv2dSame(in_chs, out_chs, kernel, stride, padding=0, groups=groups, bias=bias)
    return conv2d(in_chs, out_chs, kernel, stride, groups, bias)


@dataclass(frozen=True)
class BlockStyle:
    """What a generation sets once for all its blocks: activation, norm, layer scale, padding."""

    act: str
    norm: str = "batch"  # "batch" (V4) | "rms" (V5)
    eps: float = 1e-5
    layer_scale: float | None = None  # init value; None = no layer scale (V4 conv models)
    tf_same: bool = False  # TF 'SAME' padding on strided convs (the Gemma 3n encoder)

    def norm_act(self, channels: int, act: str | None = None) -> nn.Module:
        if self.norm == "rms":
            return RmsNormAct2d(channels, act, self.eps)
        return BatchNormAct2d(channels, act, self.eps)

    def layer_scale_for(self, channels: int) -> nn.Module:
        return LayerScale2d(channels, self.layer_scale) if self.layer_scale is not None else nn.Identity()


class LayerScale2d(nn.Module):
    """Per-channel gain on a residual branch (CaiT); hybrids start it at 1e-5 so deep stacks
    of attention train stably."""

    def __init__(self, channels: int, init: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((channels,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma.view(1, -1, 1, 1)


class ConvNormAct(nn.Module):
    """conv -> norm [-> act], children `conv` / `bn` as timm's ConvNormAct."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel: int,
        style: BlockStyle,
        *,
        stride: int = 1,
        groups: int = 1,
        act: bool = True,
        bias: bool = False,
    ):
        super().__init__()
        self.conv = conv2d_same(in_chs, out_chs, kernel, stride, groups, bias, style.tf_same)
        self.bn = style.norm_act(out_chs, style.act if act else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


def dw_or_identity(channels: int, kernel: int, stride: int, style: BlockStyle, act: bool) -> nn.Module:
    return (
        ConvNormAct(channels, channels, kernel, style, stride=stride, groups=channels, act=act)
        if kernel
        else nn.Identity()
    )


class EdgeResidual(nn.Module):
    """FusedIB: kxk conv expand (strided) + norm + act -> 1x1 project + norm; residual if shapes allow."""

    def __init__(
        self, in_chs: int, out_chs: int, kernel: int, stride: int, expansion: float, style: BlockStyle
    ):
        super().__init__()
        mid_chs = make_divisible(in_chs * expansion)
        self.has_skip = stride == 1 and in_chs == out_chs
        self.conv_exp = conv2d_same(in_chs, mid_chs, kernel, stride, tf_same=style.tf_same)
        self.bn1 = style.norm_act(mid_chs, style.act)
        self.conv_pwl = conv2d(mid_chs, out_chs, 1)
        self.bn2 = style.norm_act(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv_pwl(self.bn1(self.conv_exp(x))))
        return x + y if self.has_skip else y


class UniversalInvertedResidual(nn.Module):
    """UIB (V4 paper, Fig. 4): [dw start + norm] -> 1x1 expand + norm + act -> [dw mid + norm +
    act] -> 1x1 project + norm -> [layer scale] -> residual. A kernel of 0 drops that dw conv
    (ExtraDW: both, IB: mid, ConvNext: start, FFN: neither); the stride sits on the mid dw when
    there is one, else on the start dw."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        start_kernel: int,
        mid_kernel: int,
        stride: int,
        expansion: float,
        style: BlockStyle,
        *,
        skip: bool = True,
    ):
        super().__init__()
        mid_chs = make_divisible(in_chs * expansion)
        self.has_skip = skip and stride == 1 and in_chs == out_chs
        self.dw_start = dw_or_identity(in_chs, start_kernel, 1 if mid_kernel else stride, style, act=False)
        self.pw_exp = ConvNormAct(in_chs, mid_chs, 1, style)
        self.dw_mid = dw_or_identity(mid_chs, mid_kernel, stride, style, act=True)
        self.pw_proj = ConvNormAct(mid_chs, out_chs, 1, style, act=False)
        self.layer_scale = style.layer_scale_for(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pw_exp(self.dw_start(x))
        y = self.pw_proj(self.dw_mid(y))
        y = self.layer_scale(y)
        return x + y if self.has_skip else y


def named_sequential(**children: nn.Module) -> nn.Sequential:
    """nn.Sequential whose children have timm's names (`attn.key.down_conv`, `attn.key.proj`)."""
    seq = nn.Sequential()
    for name, module in children.items():
        seq.add_module(name, module)
    return seq


class MultiQueryAttention2d(nn.Module):
    """Mobile MQA: `heads` query heads share one key and one value head, each optionally
    downsampled by a strided dw conv + norm. Because K/V are shared, all heads stack into the
    rows of one plain matmul -> softmax -> matmul (no broadcast, no 5-D tensors), which is what
    XNNPACK and Core ML lower whole. Numerically equal to timm's SDPA path."""

    def __init__(
        self, dim: int, dim_out: int, heads: int, key_dim: int, kv_stride: int, kernel: int, style: BlockStyle
    ):
        super().__init__()
        self.heads, self.key_dim, self.scale = heads, key_dim, key_dim**-0.5
        self.query = named_sequential(proj=conv2d(dim, heads * key_dim, 1))
        self.key = self._shared_head(dim, key_dim, kv_stride, kernel, style)
        self.value = self._shared_head(dim, key_dim, kv_stride, kernel, style)
        self.output = named_sequential(proj=conv2d(heads * key_dim, dim_out, 1))

    @staticmethod
    def _shared_head(dim: int, key_dim: int, stride: int, kernel: int, style: BlockStyle) -> nn.Sequential:
        if stride == 1:
            return named_sequential(proj=conv2d(dim, key_dim, 1))
        return named_sequential(
            down_conv=conv2d_same(dim, dim, kernel, stride, groups=dim, tf_same=style.tf_same),
            norm=style.norm_act(dim),
            proj=conv2d(dim, key_dim, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q = self.query(x).reshape(b, self.heads, self.key_dim, h * w).transpose(2, 3)
        q = q.reshape(b, self.heads * h * w, self.key_dim) * self.scale  # (b, heads*hw, d)
        k = self.key(x).flatten(2)  # (b, d, p)
        v = self.value(x).flatten(2).transpose(1, 2)  # (b, p, d)
        o = torch.softmax(q @ k, dim=-1) @ v  # (b, heads*hw, d)
        o = o.reshape(b, self.heads, h * w, self.key_dim).transpose(2, 3)
        return self.output(o.reshape(b, self.heads * self.key_dim, h, w))


class MobileAttention(nn.Module):
    """norm -> Mobile MQA -> [layer scale] -> residual (timm MobileAttention, multi-query)."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        heads: int,
        key_dim: int,
        kv_stride: int,
        kernel: int,
        style: BlockStyle,
    ):
        super().__init__()
        self.has_skip = in_chs == out_chs
        self.norm = style.norm_act(in_chs)
        self.attn = MultiQueryAttention2d(in_chs, out_chs, heads, key_dim, kv_stride, kernel, style)
        self.layer_scale = style.layer_scale_for(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layer_scale(self.attn(self.norm(x)))
        return x + y if self.has_skip else y


# One row of a V4/V5 stage table per block, in the column order of timm's block strings
# (`uir_a3_k5_s2_e4_c80` is UIB(start=3, mid=5, stride=2, expand=4, out=80)).


class Conv(NamedTuple):
    """`cn`: conv + BN + act, as in V4 Conv-S's first stages and every V4's 1x1 to 960."""

    kernel: int
    stride: int
    out: int

    def build(self, in_chs: int, out_chs: int, style: BlockStyle) -> nn.Module:
        if style.norm != "batch":
            raise ValueError("Conv rows are defined with BatchNorm (timm ConvBnAct)")
        return ConvBnAct(in_chs, out_chs, self.kernel, self.stride, style.act, style.eps)


class FusedIB(NamedTuple):
    """`er`: EdgeResidual / FusedIB."""

    kernel: int
    stride: int
    expand: float
    out: int

    def build(self, in_chs: int, out_chs: int, style: BlockStyle) -> nn.Module:
        return EdgeResidual(in_chs, out_chs, self.kernel, self.stride, self.expand, style)


class UIB(NamedTuple):
    """`uir`: start / mid dw kernels (0 = absent), stride, expansion, out channels."""

    start: int
    mid: int
    stride: int
    expand: float
    out: int

    def build(self, in_chs: int, out_chs: int, style: BlockStyle) -> nn.Module:
        return UniversalInvertedResidual(
            in_chs, out_chs, self.start, self.mid, self.stride, self.expand, style
        )


class MQA(NamedTuple):
    """`mqa`: query heads, key/value dim, key/value downsampling stride, out channels."""

    heads: int
    key_dim: int
    kv_stride: int
    out: int
    kernel: int = 3  # of the key/value downsampling dw conv

    def build(self, in_chs: int, out_chs: int, style: BlockStyle) -> nn.Module:
        return MobileAttention(in_chs, out_chs, self.heads, self.key_dim, self.kv_stride, self.kernel, style)


StageRow = Conv | FusedIB | UIB | MQA


def round_channels(channels: int, width: float = 1.0) -> int:
    """timm's channel multiplier: widths other than 1 go through make_divisible."""
    return make_divisible(channels * width) if width != 1.0 else channels


def build_stages(
    in_chs: int, stages: Sequence[Sequence[StageRow]], style: BlockStyle, width: float = 1.0
) -> tuple[nn.Sequential, list[int]]:
    """`blocks.<stage>.<index>` from a table of stages; returns the blocks and each stage's width."""
    built, widths = [], []
    for stage in stages:
        blocks = []
        for row in stage:
            out_chs = round_channels(row.out, width)
            blocks.append(row.build(in_chs, out_chs, style))
            in_chs = out_chs
        built.append(nn.Sequential(*blocks))
        widths.append(in_chs)
    return nn.Sequential(*built), widths
