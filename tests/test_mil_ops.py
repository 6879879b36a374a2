"""Every MIL op the Linux executor supports, against an independent torch/numpy reference.

Each group of cases becomes ONE small ML Program built with coremltools' MIL builder (one
input set and one output per case), converted and saved as an .mlpackage, loaded from disk
by the executor and run once; each case then compares its output with the reference written
here from the op's definition (not with the executor's own code)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ct = pytest.importorskip("coremltools")
import torch.nn.functional as F  # noqa: E402
from coremltools.converters.mil import Builder as mb  # noqa: E402
from coremltools.converters.mil.mil import Function, Program, types  # noqa: E402

from mobile_export.coreml.mil import SUPPORTED_OPS, load_program  # noqa: E402
from mobile_export.errors import ArtifactError, UnsupportedOpError  # noqa: E402

S = (2, 3, 4, 5)


@dataclass
class Case:
    id: str
    shapes: list
    mil: Callable  # (name, *input vars) -> var | tuple of vars
    ref: Callable  # (*float64 torch tensors) -> tensor | tuple | other
    gen: str = "normal"  # normal | positive | round | small
    exact: bool = False  # outputs compared for equality (ints, bools, fp16 rounding)


def _c(v, dtype=np.float32):
    return np.asarray(v, dtype=dtype)


RNG = np.random.RandomState(1234)
W_LIN, B_LIN = RNG.randn(4, 8).astype(np.float32), RNG.randn(4).astype(np.float32)
W_CONV, B_CONV = RNG.randn(6, 4, 3, 3).astype(np.float32), RNG.randn(6).astype(np.float32)
W_DW = RNG.randn(4, 1, 3, 3).astype(np.float32)
W_DIL = RNG.randn(5, 3, 3, 3).astype(np.float32)
W_1D = RNG.randn(4, 3, 5).astype(np.float32)
W_LOW = RNG.randn(2, 2, 2, 2).astype(np.float32)
BN = [
    RNG.randn(3).astype(np.float32),
    RNG.uniform(0.5, 2, 3).astype(np.float32),
    RNG.randn(3).astype(np.float32),
    RNG.randn(3).astype(np.float32),
]
LN_G, LN_B = RNG.randn(8).astype(np.float32), RNG.randn(8).astype(np.float32)
ALPHA = _c([0.1, 0.2, 0.3])
Q_SCALE, Q_ZP = _c([0.02, 0.05, 0.1]), np.array([0, 3, -5], np.int8)
T = torch.tensor
_RNG_CT = np.random.RandomState(99)  # own stream: the values above stay as they were
W_CT, B_CT = _RNG_CT.randn(4, 3, 3, 3).astype(np.float32), _RNG_CT.randn(3).astype(np.float32)
W_CT_DW = _RNG_CT.randn(4, 1, 2, 2).astype(np.float32)


def _pad_ref(x, torch_pad, w, **kw):
    return F.conv2d(F.pad(x, torch_pad), T(w, dtype=torch.float64), **kw)


def _slice_ref(x):
    return T(x.numpy()[1:3, 0::2, 7:0:-2].copy())


def _cmp(fn):
    return lambda n, x, y: fn(x=x, y=y, name=n)


CASES_FP32 = [
    # activations
    Case("relu", [S], lambda n, x: mb.relu(x=x, name=n), F.relu),
    Case("relu6", [S], lambda n, x: mb.relu6(x=x, name=n), F.relu6),
    Case("sigmoid", [S], lambda n, x: mb.sigmoid(x=x, name=n), torch.sigmoid),
    Case("tanh", [S], lambda n, x: mb.tanh(x=x, name=n), torch.tanh),
    Case("silu", [S], lambda n, x: mb.silu(x=x, name=n), F.silu),
    Case("softplus", [S], lambda n, x: mb.softplus(x=x, name=n), F.softplus),
    Case("softsign", [S], lambda n, x: mb.softsign(x=x, name=n), F.softsign),
    Case("erf", [S], lambda n, x: mb.erf(x=x, name=n), torch.special.erf),
    Case(
        "clip",
        [S],
        lambda n, x: mb.clip(x=x, alpha=-0.5, beta=0.7, name=n),
        lambda x: torch.clip(x, -0.5, 0.7),
    ),
    Case(
        "sigmoid_hard", [S], lambda n, x: mb.sigmoid_hard(x=x, alpha=1 / 6, beta=0.5, name=n), F.hardsigmoid
    ),
    Case(
        "thresholded_relu",
        [S],
        lambda n, x: mb.thresholded_relu(x=x, alpha=-0.5, name=n),
        lambda x: F.threshold(x, -0.5, 0.0),
    ),
    Case(
        "threshold",
        [S],
        lambda n, x: mb.threshold(x=x, alpha=0.3, name=n),
        lambda x: torch.maximum(x, T(0.3, dtype=x.dtype)),
    ),
    Case(
        "leaky_relu", [S], lambda n, x: mb.leaky_relu(x=x, alpha=0.1, name=n), lambda x: F.leaky_relu(x, 0.1)
    ),
    Case("elu", [S], lambda n, x: mb.elu(x=x, alpha=0.7, name=n), lambda x: F.elu(x, 0.7)),
    Case("gelu", [S], lambda n, x: mb.gelu(x=x, mode="EXACT", name=n), F.gelu),
    Case(
        "gelu_tanh",
        [S],
        lambda n, x: mb.gelu(x=x, mode="TANH_APPROXIMATION", name=n),
        lambda x: F.gelu(x, approximate="tanh"),
    ),
    Case(
        "prelu",
        [S],
        lambda n, x: mb.prelu(x=x, alpha=ALPHA, name=n),
        lambda x: F.prelu(x, T(ALPHA, dtype=x.dtype)),
    ),
    Case(
        "linear_activation",
        [S],
        lambda n, x: mb.linear_activation(x=x, alpha=1.5, beta=-0.2, name=n),
        lambda x: 1.5 * x - 0.2,
    ),
    Case(
        "scaled_tanh",
        [S],
        lambda n, x: mb.scaled_tanh(x=x, alpha=2.0, beta=0.5, name=n),
        lambda x: 2.0 * torch.tanh(0.5 * x),
    ),
    # elementwise binary, with broadcasting
    Case("add", [S, (1, 3, 1, 1)], _cmp(mb.add), torch.add),
    Case("sub", [S, (1, 3, 1, 1)], _cmp(mb.sub), torch.sub),
    Case("mul", [S, (1, 3, 1, 1)], _cmp(mb.mul), torch.mul),
    Case("real_div", [S, (1, 3, 1, 1)], _cmp(mb.real_div), torch.div, gen="positive"),
    Case("maximum", [S, S], _cmp(mb.maximum), torch.maximum),
    Case("minimum", [S, S], _cmp(mb.minimum), torch.minimum),
    Case("pow", [S, (1, 1, 1, 5)], _cmp(mb.pow), torch.pow, gen="positive"),
    Case("floor_div", [S, S], _cmp(mb.floor_div), lambda x, y: torch.floor(x / y), gen="positive"),
    Case("mod", [S, S], _cmp(mb.mod), torch.remainder, gen="positive"),
    Case("equal", [S, S], _cmp(mb.equal), torch.eq, gen="round", exact=True),
    Case("not_equal", [S, S], _cmp(mb.not_equal), torch.ne, gen="round", exact=True),
    Case("less", [S, S], _cmp(mb.less), torch.lt, gen="round", exact=True),
    Case("less_equal", [S, S], _cmp(mb.less_equal), torch.le, gen="round", exact=True),
    Case("greater", [S, S], _cmp(mb.greater), torch.gt, gen="round", exact=True),
    Case("greater_equal", [S, S], _cmp(mb.greater_equal), torch.ge, gen="round", exact=True),
    Case(
        "logical_and",
        [S, S],
        lambda n, x, y: mb.logical_and(x=mb.greater(x=x, y=0.0), y=mb.greater(x=y, y=0.0), name=n),
        lambda x, y: (x > 0) & (y > 0),
        exact=True,
    ),
    Case(
        "logical_or",
        [S, S],
        lambda n, x, y: mb.logical_or(x=mb.greater(x=x, y=0.0), y=mb.greater(x=y, y=0.0), name=n),
        lambda x, y: (x > 0) | (y > 0),
        exact=True,
    ),
    Case(
        "logical_xor",
        [S, S],
        lambda n, x, y: mb.logical_xor(x=mb.greater(x=x, y=0.0), y=mb.greater(x=y, y=0.0), name=n),
        lambda x, y: (x > 0) ^ (y > 0),
        exact=True,
    ),
    Case(
        "logical_not",
        [S],
        lambda n, x: mb.logical_not(x=mb.greater(x=x, y=0.0), name=n),
        lambda x: ~(x > 0),
        exact=True,
    ),
    Case(
        "select",
        [S, S],
        lambda n, x, y: mb.select(cond=mb.greater(x=x, y=0.0), a=x, b=y, name=n),
        lambda x, y: torch.where(x > 0, x, y),
    ),
    # elementwise unary
    Case("abs", [S], lambda n, x: mb.abs(x=x, name=n), torch.abs),
    Case("exp", [S], lambda n, x: mb.exp(x=x, name=n), torch.exp),
    Case("exp2", [S], lambda n, x: mb.exp2(x=x, name=n), lambda x: 2.0**x),
    Case("sqrt", [S], lambda n, x: mb.sqrt(x=x, name=n), torch.sqrt, gen="positive"),
    Case(
        "rsqrt",
        [S],
        lambda n, x: mb.rsqrt(x=x, epsilon=1e-3, name=n),
        lambda x: 1.0 / torch.sqrt(x + 1e-3),
        gen="positive",
    ),
    Case("log", [S], lambda n, x: mb.log(x=x, name=n), torch.log, gen="positive"),
    Case(
        "inverse",
        [S],
        lambda n, x: mb.inverse(x=x, epsilon=1e-2, name=n),
        lambda x: 1.0 / (x + 1e-2),
        gen="positive",
    ),
    Case("square", [S], lambda n, x: mb.square(x=x, name=n), torch.square),
    Case("floor", [S], lambda n, x: mb.floor(x=x, name=n), torch.floor),
    Case("ceil", [S], lambda n, x: mb.ceil(x=x, name=n), torch.ceil),
    Case("round", [S], lambda n, x: mb.round(x=x, name=n), torch.round),
    Case("sign", [S], lambda n, x: mb.sign(x=x, name=n), torch.sign),
    Case("sin", [S], lambda n, x: mb.sin(x=x, name=n), torch.sin),
    Case("cos", [S], lambda n, x: mb.cos(x=x, name=n), torch.cos),
    Case("tan", [S], lambda n, x: mb.tan(x=x, name=n), torch.tan, gen="small"),
    Case("identity", [S], lambda n, x: mb.identity(x=x, name=n), lambda x: x),
    # reductions
    Case(
        "reduce_mean",
        [S],
        lambda n, x: mb.reduce_mean(x=x, axes=[2, 3], keep_dims=True, name=n),
        lambda x: x.mean((2, 3), keepdim=True),
    ),
    Case("reduce_sum", [S], lambda n, x: mb.reduce_sum(x=x, axes=[1], name=n), lambda x: x.sum(1)),
    Case("reduce_max", [S], lambda n, x: mb.reduce_max(x=x, axes=[-1], name=n), lambda x: x.amax(-1)),
    Case(
        "reduce_min",
        [S],
        lambda n, x: mb.reduce_min(x=x, axes=[0, 2], keep_dims=True, name=n),
        lambda x: x.amin((0, 2), keepdim=True),
    ),
    Case("reduce_prod", [S], lambda n, x: mb.reduce_prod(x=x, axes=[3], name=n), lambda x: x.prod(3)),
    Case(
        "reduce_l2_norm",
        [S],
        lambda n, x: mb.reduce_l2_norm(x=x, axes=[2, 3], name=n),
        lambda x: torch.linalg.vector_norm(x, dim=(2, 3)),
    ),
    Case(
        "reduce_sum_square",
        [S],
        lambda n, x: mb.reduce_sum_square(x=x, axes=[1], name=n),
        lambda x: (x * x).sum(1),
    ),
    Case(
        "reduce_log_sum_exp",
        [S],
        lambda n, x: mb.reduce_log_sum_exp(x=x, axes=[1], name=n),
        lambda x: torch.logsumexp(x, 1),
    ),
    Case(
        "reduce_argmax",
        [S],
        lambda n, x: mb.reduce_argmax(x=x, axis=1, name=n),
        lambda x: x.argmax(1),
        exact=True,
    ),
    Case(
        "reduce_argmin",
        [S],
        lambda n, x: mb.reduce_argmin(x=x, axis=-1, keep_dims=True, name=n),
        lambda x: x.argmin(-1, keepdim=True),
        exact=True,
    ),
    Case("softmax", [S], lambda n, x: mb.softmax(x=x, axis=1, name=n), lambda x: torch.softmax(x, 1)),
    # linear algebra (attention pieces)
    Case(
        "linear",
        [(2, 8)],
        lambda n, x: mb.linear(x=x, weight=W_LIN, bias=B_LIN, name=n),
        lambda x: x @ T(W_LIN, dtype=x.dtype).T + T(B_LIN, dtype=x.dtype),
    ),
    Case(
        "matmul",
        [(2, 3, 4, 5), (2, 3, 6, 5)],
        lambda n, x, y: mb.matmul(x=x, y=y, transpose_y=True, name=n),
        lambda x, y: torch.einsum("bhik,bhjk->bhij", x, y),
    ),
    Case(
        "matmul_tx",
        [(2, 5, 4), (2, 5, 3)],
        lambda n, x, y: mb.matmul(x=x, y=y, transpose_x=True, name=n),
        lambda x, y: torch.einsum("bki,bkj->bij", x, y),
    ),
    # convolution and pooling; padding written out by hand
    Case(
        "conv",
        [(1, 4, 9, 9)],
        lambda n, x: mb.conv(x=x, weight=W_CONV, bias=B_CONV, pad_type="custom", pad=[1, 1, 2, 0], name=n),
        lambda x: _pad_ref(x, (2, 0, 1, 1), W_CONV, bias=T(B_CONV, dtype=x.dtype)),
    ),
    Case(
        "conv_same_dw_s2",
        [(1, 4, 8, 8)],
        lambda n, x: mb.conv(x=x, weight=W_DW, strides=[2, 2], pad_type="same", groups=4, name=n),
        lambda x: _pad_ref(x, (0, 1, 0, 1), W_DW, stride=2, groups=4),
    ),
    Case(
        "conv_same_lower",
        [(1, 2, 8, 8)],
        lambda n, x: mb.conv(x=x, weight=W_LOW, pad_type="same_lower", name=n),
        lambda x: _pad_ref(x, (1, 0, 1, 0), W_LOW),
    ),
    Case(
        "conv_dilated",
        [(1, 3, 10, 10)],
        lambda n, x: mb.conv(x=x, weight=W_DIL, dilations=[2, 2], pad_type="valid", name=n),
        lambda x: F.conv2d(x, T(W_DIL, dtype=x.dtype), dilation=2),
    ),
    Case(
        "conv1d",
        [(1, 3, 12)],
        lambda n, x: mb.conv(x=x, weight=W_1D, pad_type="same", name=n),
        lambda x: F.conv1d(x, T(W_1D, dtype=x.dtype), padding=2),
    ),
    Case(
        "conv_transpose",
        [(1, 4, 5, 5)],
        lambda n, x: mb.conv_transpose(x=x, weight=W_CT, bias=B_CT, strides=[2, 2], name=n),
        lambda x: F.conv_transpose2d(x, T(W_CT, dtype=x.dtype), T(B_CT, dtype=x.dtype), stride=2),
    ),
    Case(
        "conv_transpose_dw_pad",
        [(1, 4, 6, 6)],
        lambda n, x: mb.conv_transpose(
            x=x, weight=W_CT_DW, strides=[2, 2], groups=4, pad_type="custom", pad=[1, 0, 0, 1], name=n
        ),
        lambda x: F.conv_transpose2d(x, T(W_CT_DW, dtype=x.dtype), stride=2, groups=4)[:, :, 1:, :-1],
    ),
    Case(
        "avg_pool",
        [(1, 3, 9, 9)],
        lambda n, x: mb.avg_pool(
            x=x,
            kernel_sizes=[3, 3],
            strides=[2, 2],
            pad_type="custom",
            pad=[1, 1, 1, 1],
            exclude_padding_from_average=True,
            name=n,
        ),
        lambda x: F.avg_pool2d(x, 3, 2, padding=1, count_include_pad=False),
    ),
    Case(
        "avg_pool_incl",
        [(1, 3, 9, 9)],
        lambda n, x: mb.avg_pool(
            x=x,
            kernel_sizes=[3, 3],
            strides=[2, 2],
            pad_type="custom",
            pad=[1, 1, 1, 1],
            exclude_padding_from_average=False,
            name=n,
        ),
        lambda x: F.avg_pool2d(x, 3, 2, padding=1, count_include_pad=True),
    ),
    Case(
        "max_pool",
        [(1, 3, 9, 9)],
        lambda n, x: mb.max_pool(x=x, kernel_sizes=[3, 3], strides=[2, 2], pad_type="same", name=n),
        lambda x: F.max_pool2d(x, 3, 2, padding=1),
    ),
    # normalization
    Case(
        "batch_norm",
        [S],
        lambda n, x: mb.batch_norm(
            x=x, mean=BN[0], variance=BN[1], gamma=BN[2], beta=BN[3], epsilon=1e-3, name=n
        ),
        lambda x: F.batch_norm(
            x,
            *(T(v, dtype=x.dtype) for v in BN[:2]),
            T(BN[2], dtype=x.dtype),
            T(BN[3], dtype=x.dtype),
            False,
            0.0,
            1e-3,
        ),
    ),
    Case(
        "layer_norm",
        [(2, 5, 8)],
        lambda n, x: mb.layer_norm(x=x, axes=[-1], gamma=LN_G, beta=LN_B, epsilon=1e-5, name=n),
        lambda x: F.layer_norm(x, (8,), T(LN_G, dtype=x.dtype), T(LN_B, dtype=x.dtype), 1e-5),
    ),
    Case(
        "instance_norm",
        [S],
        lambda n, x: mb.instance_norm(x=x, gamma=BN[2], beta=BN[3], epsilon=1e-5, name=n),
        lambda x: F.instance_norm(x, weight=T(BN[2], dtype=x.dtype), bias=T(BN[3], dtype=x.dtype), eps=1e-5),
    ),
    # shapes
    Case(
        "reshape", [S], lambda n, x: mb.reshape(x=x, shape=[0, -1, 5], name=n), lambda x: x.reshape(2, 12, 5)
    ),
    Case(
        "transpose",
        [S],
        lambda n, x: mb.transpose(x=x, perm=[0, 2, 3, 1], name=n),
        lambda x: x.permute(0, 2, 3, 1),
    ),
    Case(
        "squeeze", [(2, 1, 4, 1)], lambda n, x: mb.squeeze(x=x, axes=[1, 3], name=n), lambda x: x[:, 0, :, 0]
    ),
    Case(
        "expand_dims",
        [(2, 3)],
        lambda n, x: mb.expand_dims(x=x, axes=[0, -1], name=n),
        lambda x: x[None, :, :, None],
    ),
    Case("flatten2d", [S], lambda n, x: mb.flatten2d(x=x, axis=2, name=n), lambda x: x.reshape(6, 20)),
    Case(
        "concat",
        [(2, 3, 4), (2, 2, 4)],
        lambda n, x, y: mb.concat(values=[x, y], axis=1, name=n),
        lambda x, y: torch.cat([x, y], 1),
    ),
    Case(
        "concat_interleave",
        [(2, 3, 4), (2, 3, 4)],
        lambda n, x, y: mb.concat(values=[x, y], axis=1, interleave=True, name=n),
        lambda x, y: torch.stack([x, y], 2).reshape(2, 6, 4),
    ),
    Case(
        "stack",
        [(2, 3), (2, 3)],
        lambda n, x, y: mb.stack(values=[x, y], axis=1, name=n),
        lambda x, y: torch.stack([x, y], 1),
    ),
    Case(
        "split",
        [(2, 6, 4)],
        lambda n, x: tuple(mb.split(x=x, num_splits=3, axis=1, name=n)),
        lambda x: torch.chunk(x, 3, 1),
    ),
    Case(
        "split_sizes",
        [(2, 6, 4)],
        lambda n, x: tuple(mb.split(x=x, split_sizes=[1, 5], axis=-1 + 2, name=n)),
        lambda x: torch.split(x, [1, 5], 1),
    ),
    Case(
        "slice_by_index",
        [(4, 6, 8)],
        lambda n, x: mb.slice_by_index(
            x=x, begin=[1, 0, 7], end=[3, 6, 0], stride=[1, 2, -2], end_mask=[False, True, False], name=n
        ),
        _slice_ref,
    ),
    Case(
        "slice_squeeze",
        [(4, 6, 8)],
        lambda n, x: mb.slice_by_index(
            x=x, begin=[0, 1, 0], end=[1, 3, 8], squeeze_mask=[True, False, False], name=n
        ),
        lambda x: x[0, 1:3, 0:8],
    ),
    Case(
        "slice_by_size",
        [(4, 6, 8)],
        lambda n, x: mb.slice_by_size(x=x, begin=[1, 0, 2], size=[2, -1, 3], name=n),
        lambda x: x[1:3, :, 2:5],
    ),
    Case("tile", [(2, 3, 4)], lambda n, x: mb.tile(x=x, reps=[1, 2, 3], name=n), lambda x: x.repeat(1, 2, 3)),
    Case(
        "pad",
        [(1, 2, 4, 5)],
        lambda n, x: mb.pad(x=x, pad=[1, 2, 0, 3], mode="constant", constant_val=0.5, name=n),
        lambda x: F.pad(x, (0, 3, 1, 2), value=0.5),
    ),
    Case(
        "pad_reflect",
        [(1, 2, 4, 5)],
        lambda n, x: mb.pad(x=x, pad=[1, 1, 2, 2], mode="reflect", name=n),
        lambda x: F.pad(x, (2, 2, 1, 1), mode="reflect"),
    ),
    Case(
        "pad_replicate",
        [(1, 2, 4, 5)],
        lambda n, x: mb.pad(x=x, pad=[0, 2, 1, 0], mode="replicate", name=n),
        lambda x: F.pad(x, (1, 0, 0, 2), mode="replicate"),
    ),
    Case(
        "gather",
        [(5, 4)],
        lambda n, x: mb.gather(x=x, indices=np.array([3, 0, 4, 1], np.int32), axis=0, name=n),
        lambda x: x[[3, 0, 4, 1]],
    ),
    Case(
        "gather_along_axis",
        [(3, 4)],
        lambda n, x: mb.gather_along_axis(
            x=x, indices=np.array([[0, 3], [1, 1], [2, 0]], np.int32), axis=1, name=n
        ),
        lambda x: torch.gather(x, 1, T([[0, 3], [1, 1], [2, 0]])),
    ),
    Case(
        "upsample_nearest_neighbor",
        [(1, 2, 3, 4)],
        lambda n, x: mb.upsample_nearest_neighbor(x=x, scale_factor_height=2, scale_factor_width=2, name=n),
        lambda x: x.repeat_interleave(2, -1).repeat_interleave(2, -2),
    ),
    Case(
        "upsample_bilinear",
        [(1, 2, 3, 4)],
        lambda n, x: mb.upsample_bilinear(
            x=x, scale_factor_height=2.0, scale_factor_width=1.5, align_corners=False, name=n
        ),
        lambda x: F.interpolate(x, size=(6, 6), mode="bilinear", align_corners=False),
    ),
    Case(
        "upsample_bilinear_corners",
        [(1, 2, 3, 4)],
        lambda n, x: mb.upsample_bilinear(
            x=x, scale_factor_height=2.0, scale_factor_width=2.0, align_corners=True, name=n
        ),
        lambda x: F.interpolate(x, size=(6, 8), mode="bilinear", align_corners=True),
    ),
    # dtypes and quantization
    Case(
        "cast",
        [S],
        lambda n, x: mb.cast(x=x, dtype="fp16", name=n),
        lambda x: x.to(torch.float16),
        exact=True,
    ),
    Case(
        "cast_int32",
        [S],
        lambda n, x: mb.cast(x=x, dtype="int32", name=n),
        lambda x: torch.trunc(x).to(torch.int32),
        exact=True,
    ),
    Case(
        "quantize",
        [S],
        lambda n, x: mb.quantize(
            input=x, scale=np.float32(0.05), zero_point=np.int8(3), output_dtype="int8", name=n
        ),
        lambda x: torch.quantize_per_tensor(x.float(), 0.05, 3, torch.qint8).int_repr(),
        exact=True,
    ),
    Case(
        "quantize_per_channel",
        [S],
        lambda n, x: mb.quantize(
            input=x, scale=Q_SCALE, zero_point=Q_ZP, axis=1, output_dtype="int8", name=n
        ),
        lambda x: torch.quantize_per_channel(
            x.float(), T(Q_SCALE, dtype=torch.float64), T(Q_ZP, dtype=torch.int64), 1, torch.qint8
        ).int_repr(),
        exact=True,
    ),
    Case(
        "quantize_uint8",
        [S],
        lambda n, x: mb.quantize(
            input=x, scale=np.float32(0.03), zero_point=np.uint8(128), output_dtype="uint8", name=n
        ),
        lambda x: torch.quantize_per_tensor(x.float(), 0.03, 128, torch.quint8).int_repr(),
        exact=True,
    ),
    Case(
        "dequantize",
        [S],
        lambda n, x: mb.dequantize(
            input=mb.quantize(input=x, scale=Q_SCALE, zero_point=Q_ZP, axis=1, output_dtype="int8"),
            scale=Q_SCALE,
            zero_point=Q_ZP,
            axis=1,
            name=n,
        ),
        lambda x: torch.quantize_per_channel(
            x.float(), T(Q_SCALE, dtype=torch.float64), T(Q_ZP, dtype=torch.int64), 1, torch.qint8
        ).dequantize(),
    ),
]

# fp16 programs: the reference computes in float64 from the same fp16 inputs and rounds once to
# fp16; an executor that forgot the declared fp16 rounding (or rounded twice) fails.
H = (1, 4, 6, 6)
CASES_FP16 = [
    Case("add", [H, H], _cmp(mb.add), torch.add, exact=True),
    Case("mul", [H, H], _cmp(mb.mul), torch.mul, exact=True),
    Case("sub", [H, H], _cmp(mb.sub), torch.sub, exact=True),
    Case("relu", [H], lambda n, x: mb.relu(x=x, name=n), F.relu, exact=True),
    Case(
        "clip",
        [H],
        lambda n, x: mb.clip(x=x, alpha=np.float16(0.0), beta=np.float16(6.0), name=n),
        lambda x: torch.clip(x, 0, 6),
        exact=True,
    ),
    Case(
        "sigmoid_hard",
        [H],
        lambda n, x: mb.sigmoid_hard(x=x, alpha=np.float16(1 / 6), beta=np.float16(0.5), name=n),
        lambda x: torch.clip(float(np.float16(1 / 6)) * x + 0.5, 0, 1),
    ),  # the program's alpha is the fp16 one
    Case(
        "conv",
        [(1, 4, 9, 9)],
        lambda n, x: mb.conv(
            x=x,
            weight=W_CONV.astype(np.float16),
            bias=B_CONV.astype(np.float16),
            pad_type="custom",
            pad=[1, 1, 2, 0],
            name=n,
        ),
        lambda x: _pad_ref(
            x, (2, 0, 1, 1), W_CONV.astype(np.float16), bias=T(B_CONV.astype(np.float16), dtype=x.dtype)
        ),
    ),
    Case(
        "linear",
        [(2, 8)],
        lambda n, x: mb.linear(x=x, weight=W_LIN.astype(np.float16), bias=B_LIN.astype(np.float16), name=n),
        lambda x: (
            x @ T(W_LIN.astype(np.float16), dtype=x.dtype).T + T(B_LIN.astype(np.float16), dtype=x.dtype)
        ),
    ),
    Case(
        "matmul",
        [(1, 2, 5, 8), (1, 2, 6, 8)],
        lambda n, x, y: mb.matmul(x=x, y=y, transpose_y=True, name=n),
        lambda x, y: x @ y.transpose(-1, -2),
    ),
    Case("softmax", [H], lambda n, x: mb.softmax(x=x, axis=1, name=n), lambda x: torch.softmax(x, 1)),
    Case(
        "reduce_mean",
        [H],
        lambda n, x: mb.reduce_mean(x=x, axes=[2, 3], keep_dims=True, name=n),
        lambda x: x.mean((2, 3), keepdim=True),
    ),
    Case(
        "avg_pool",
        [H],
        lambda n, x: mb.avg_pool(x=x, kernel_sizes=[2, 2], strides=[2, 2], pad_type="valid", name=n),
        lambda x: F.avg_pool2d(x, 2),
    ),
    Case("cast", [H], lambda n, x: mb.cast(x=x, dtype="fp32", name=n), lambda x: x, exact=True),
    # two ops: the product is stored in fp16 before the add, as the program declares
    Case(
        "mul_then_add",
        [H, H, H],
        lambda n, x, y, z: mb.add(x=mb.mul(x=x, y=y), y=z, name=n),
        lambda x, y, z: torch.from_numpy((x * y).numpy().astype(np.float16).astype(np.float64)) + z,
        exact=True,
    ),
]


def _inputs(case: Case, rng: np.random.RandomState, dtype) -> list[np.ndarray]:
    arrays = []
    for shape in case.shapes:
        if case.gen == "positive":
            a = rng.uniform(0.2, 3.0, shape)
        elif case.gen == "round":
            a = np.round(rng.randn(*shape))
        elif case.gen == "small":
            a = rng.uniform(-1.0, 1.0, shape)
        else:
            a = rng.randn(*shape) * 2.0
        arrays.append(a.astype(dtype))
    return arrays


def _build(cases: list[Case], dtype, opset, tmp_path_factory, tag: str):
    """One program for a group of cases; returns (loaded Program, feeds, output names per case)."""
    rng = np.random.RandomState(7)
    mil_dtype = types.fp16 if dtype == np.float16 else types.fp32
    feeds, specs = {}, {}
    for case in cases:
        for i, arr in enumerate(_inputs(case, rng, dtype)):
            name = f"{case.id}_in{i}"
            feeds[name] = arr
            specs[name] = mb.placeholder(shape=arr.shape, dtype=mil_dtype)
    names: dict[str, list[str]] = {}
    with Function(specs, opset_version=opset) as func:
        outs = []
        for case in cases:
            ins = [func.inputs[f"{case.id}_in{i}"] for i in range(len(case.shapes))]
            result = case.mil(case.id, *ins)
            result = list(result) if isinstance(result, (tuple, list)) else [result]
            names[case.id] = [v.name for v in result]
            outs += result
        func.set_outputs(outs)
    prog = Program()
    prog.add_function("main", func)
    path = tmp_path_factory.mktemp("mil_ops") / f"{tag}.mlpackage"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ml = ct.convert(
            prog,
            convert_to="mlprogram",
            pass_pipeline=ct.PassPipeline.EMPTY,
            minimum_deployment_target=opset,
            compute_precision=ct.precision.FLOAT32,
        )
    ml.save(str(path))
    program = load_program(path)
    return program, feeds, names, program.run(feeds)


@pytest.fixture(scope="session")
def fp32_group(tmp_path_factory):
    return _build(CASES_FP32, np.float32, ct.target.iOS17, tmp_path_factory, "fp32")


@pytest.fixture(scope="session")
def fp16_group(tmp_path_factory):
    return _build(CASES_FP16, np.float16, ct.target.iOS17, tmp_path_factory, "fp16")


def _reference(case: Case, feeds: dict):
    ins = [torch.from_numpy(feeds[f"{case.id}_in{i}"].astype(np.float64)) for i in range(len(case.shapes))]
    ref = case.ref(*ins)
    return [r.numpy() for r in ref] if isinstance(ref, (tuple, list)) else [ref.numpy()]


@pytest.mark.parametrize("case", CASES_FP32, ids=lambda c: c.id)
def test_op_fp32_matches_torch(case, fp32_group):
    program, feeds, names, outputs = fp32_group
    refs = _reference(case, feeds)
    assert len(refs) == len(names[case.id])
    for name, ref in zip(names[case.id], refs):
        got = outputs[name]
        assert got.shape == ref.shape, (case.id, got.shape, ref.shape)
        if case.exact:
            if ref.dtype == bool:  # Core ML outputs cannot be bool: the backend casts them to fp32
                assert program.value_type(name) == "fp32" and set(np.unique(got)) <= {0.0, 1.0}
            else:
                assert got.dtype.kind in "iu" if ref.dtype.kind in "iu" else got.dtype == ref.dtype, (
                    got.dtype,
                    ref.dtype,
                )
            np.testing.assert_array_equal(got, ref.astype(got.dtype))
        else:
            assert got.dtype == np.float32
            scale = max(float(np.abs(ref).max()), 1e-6)
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("case", CASES_FP16, ids=lambda c: c.id)
def test_op_fp16_rounds_as_declared(case, fp16_group):
    program, feeds, names, outputs = fp16_group
    name = names[case.id][0]
    got = outputs[name]
    ref = _reference(case, feeds)[0]
    if case.id == "cast":
        assert got.dtype == np.float32 and program.value_type(name) == "fp32"
        np.testing.assert_array_equal(got, ref.astype(np.float32))
        return
    assert got.dtype == np.float16 and program.value_type(name) == "fp16"
    rounded = ref.astype(np.float16)
    if case.exact:  # one op on exact fp16 inputs: fp32 arithmetic then one rounding is exact
        np.testing.assert_array_equal(got, rounded)
    else:  # accumulations: within one fp16 step of the correctly rounded result
        step = np.spacing(np.abs(rounded).astype(np.float16)).astype(np.float64)
        assert np.all(np.abs(got.astype(np.float64) - ref) <= 1.5 * step + 1e-7), np.abs(got - ref).max()


def test_fp16_rounding_is_not_a_no_op(fp16_group):
    """The fp16 results differ from fp32 arithmetic: the emulation really rounds, after
    every op (rounding only the final output would give fp16(x*y + z) instead)."""
    program, feeds, names, outputs = fp16_group
    a, b = (feeds["mul_in0"].astype(np.float64), feeds["mul_in1"].astype(np.float64))
    assert np.any(outputs[names["mul"][0]].astype(np.float64) != a * b)
    x, y, z = (feeds[f"mul_then_add_in{i}"].astype(np.float64) for i in range(3))
    once = (x * y + z).astype(np.float16)
    assert np.any(outputs[names["mul_then_add"][0]] != once)


# --- constexpr decompression (the weight formats of the compression modes) -------------------


def _pack_lsb(values: np.ndarray, nbits: int) -> np.ndarray:
    """Bit-pack unsigned values, least significant bit first (the MIL blob order)."""
    bits = ((values.reshape(-1, 1).astype(np.uint16) >> np.arange(nbits)) & 1).astype(np.uint8)
    return np.packbits(bits.reshape(-1), bitorder="little")


CX = np.random.RandomState(99)
Q8 = CX.randint(-128, 128, (4, 8)).astype(np.int8)
SC, ZP = CX.uniform(0.01, 0.1, 4).astype(np.float32), CX.randint(-10, 10, 4).astype(np.int8)
IDX4 = CX.randint(0, 16, (4, 8)).astype(np.uint8)
LUT16 = CX.randn(16).astype(np.float32)
MASK = CX.rand(4, 8) > 0.5
NZ = CX.randn(int(MASK.sum())).astype(np.float32)
BLOCK_DATA = CX.randint(-8, 8, (4, 8)).astype(np.int8)
BLOCK_SC = CX.uniform(0.01, 0.1, (4, 2)).astype(np.float32)
BLOCK_OFF = CX.randint(-3, 3, (4, 2)).astype(np.int8)
LUT_G = CX.randn(2, 1, 16, 1).astype(np.float16)  # two groups of two rows
SP_Q = CX.randint(-128, 128, int(MASK.sum())).astype(np.int8)
SP_SC = CX.uniform(0.01, 0.1, (4, 1)).astype(np.float32)


def _np_sparse(mask, nonzero):
    dense = np.zeros(mask.shape, nonzero.dtype)
    dense[mask] = nonzero
    return dense


CONSTEXPR_16 = {  # iOS16 ops: parameters as attributes, bit-packed uint8 indices / masks
    "constexpr_affine_dequantize": (
        lambda: mb.constexpr_affine_dequantize(quantized_data=Q8, zero_point=ZP, scale=SC, axis=0),
        (Q8.astype(np.float64) - ZP[:, None]) * SC[:, None],
    ),
    "constexpr_lut_to_dense": (
        lambda: mb.constexpr_lut_to_dense(
            lut=LUT16, indices=_pack_lsb(IDX4, 4), shape=np.array([4, 8], np.uint32)
        ),
        LUT16[IDX4],
    ),
    "constexpr_sparse_to_dense": (
        lambda: mb.constexpr_sparse_to_dense(
            nonzero_data=NZ, mask=_pack_lsb(MASK.reshape(-1), 1), shape=np.array([4, 8], np.uint32)
        ),
        _np_sparse(MASK, NZ),
    ),
    "constexpr_cast": (
        lambda: mb.constexpr_cast(
            source_val=NZ.astype(np.float16)[:8].reshape(1, 8).repeat(4, 0), output_dtype="fp32"
        ),
        NZ.astype(np.float16)[:8].reshape(1, 8).repeat(4, 0).astype(np.float64),
    ),
}
CONSTEXPR_18 = {  # iOS18 ops: parameters as inputs, sub-byte dtypes
    "constexpr_blockwise_shift_scale": (
        lambda: mb.constexpr_blockwise_shift_scale(
            data=BLOCK_DATA.astype(types.np_int4_dtype),
            scale=BLOCK_SC,
            offset=BLOCK_OFF.astype(types.np_int4_dtype),
        ),
        (BLOCK_DATA.astype(np.float64) - np.repeat(BLOCK_OFF, 4, 1)) * np.repeat(BLOCK_SC, 4, 1),
    ),
    "constexpr_lut_to_dense": (
        lambda: mb.constexpr_lut_to_dense(indices=IDX4.astype(types.np_uint4_dtype), lut=LUT_G),
        np.stack([LUT_G[r // 2, 0, IDX4[r], 0] for r in range(4)]).astype(np.float64),
    ),
    "constexpr_sparse_to_dense": (
        lambda: mb.constexpr_sparse_to_dense(nonzero_data=NZ, mask=MASK.astype(types.np_uint1_dtype)),
        _np_sparse(MASK, NZ),
    ),
    "constexpr_lut_to_sparse": (
        lambda: _dense(
            mb.constexpr_lut_to_sparse(
                indices_mask=MASK.astype(types.np_uint1_dtype),
                indices_nonzero_data=IDX4[MASK].astype(types.np_uint4_dtype),
                lut=LUT16.reshape(1, 1, 16, 1),
            )
        ),
        _np_sparse(MASK, LUT16[IDX4[MASK]]),
    ),
    "constexpr_sparse_blockwise_shift_scale": (
        lambda: _dense(
            mb.constexpr_sparse_blockwise_shift_scale(
                data_mask=MASK.astype(types.np_uint1_dtype), nonzero_data=SP_Q, scale=SP_SC
            )
        ),
        _np_sparse(MASK, SP_Q.astype(np.float64) * np.broadcast_to(SP_SC, (4, 8))[MASK]),
    ),
}


def _dense(mask_and_data):
    mask, data = mask_and_data
    return mb.constexpr_sparse_to_dense(nonzero_data=data, mask=mask)


def _constexpr_program(table: dict, opset, tmp_path_factory, tag: str):
    with Function({"x": mb.placeholder(shape=(4, 8), dtype=types.fp32)}, opset_version=opset) as func:
        outs, names = [], {}
        for key, (make, _) in table.items():
            weight = make()
            if weight.dtype != types.fp32:
                weight = mb.cast(x=weight, dtype="fp32")
            out = mb.add(x=func.inputs["x"], y=weight, name=f"out_{key}")
            names[key] = out.name
            outs.append(out)
        func.set_outputs(outs)
    prog = Program()
    prog.add_function("main", func)
    path = tmp_path_factory.mktemp("mil_cx") / f"{tag}.mlpackage"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ml = ct.convert(
            prog,
            convert_to="mlprogram",
            pass_pipeline=ct.PassPipeline.EMPTY,
            minimum_deployment_target=opset,
            compute_precision=ct.precision.FLOAT32,
        )
    ml.save(str(path))
    program = load_program(path)
    x = np.random.RandomState(3).randn(4, 8).astype(np.float32)
    return program, x, names, program.run({"x": x})


@pytest.fixture(scope="session")
def constexpr16(tmp_path_factory):
    return _constexpr_program(CONSTEXPR_16, ct.target.iOS16, tmp_path_factory, "cx16")


@pytest.fixture(scope="session")
def constexpr18(tmp_path_factory):
    return _constexpr_program(CONSTEXPR_18, ct.target.iOS18, tmp_path_factory, "cx18")


@pytest.mark.parametrize("key", list(CONSTEXPR_16))
def test_constexpr_ios16(key, constexpr16):
    program, x, names, outputs = constexpr16
    assert key in program.op_types()
    np.testing.assert_allclose(outputs[names[key]], x + CONSTEXPR_16[key][1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("key", list(CONSTEXPR_18))
def test_constexpr_ios18(key, constexpr18):
    program, x, names, outputs = constexpr18
    assert key in program.op_types()
    np.testing.assert_allclose(outputs[names[key]], x + CONSTEXPR_18[key][1], rtol=1e-3, atol=1e-3)


# --- iOS18 attention and the classifier ---------------------------------------------------


@pytest.fixture(scope="session")
def ios18_group(tmp_path_factory):
    rng = np.random.RandomState(5)
    mask = np.triu(np.full((5, 6), -1e4, np.float32), 2)[None, None]
    specs = {
        "q": mb.placeholder(shape=(1, 2, 5, 8)),
        "k": mb.placeholder(shape=(1, 2, 6, 8)),
        "v": mb.placeholder(shape=(1, 2, 6, 4)),
        "logits": mb.placeholder(shape=(1, 4)),
    }
    with Function(specs, opset_version=ct.target.iOS18) as func:
        q, k, v = (func.inputs[n] for n in "qkv")
        plain = mb.scaled_dot_product_attention(query=q, key=k, value=v, name="sdpa")
        masked = mb.scaled_dot_product_attention(query=q, key=k, value=v, attn_mask=mask, name="sdpa_masked")
        probs = mb.softmax(x=func.inputs["logits"], axis=-1, name="probs")
        func.set_outputs([plain, masked, probs])
    prog = Program()
    prog.add_function("main", func)
    path = tmp_path_factory.mktemp("mil18") / "attn.mlpackage"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ml = ct.convert(
            prog,
            convert_to="mlprogram",
            pass_pipeline=ct.PassPipeline.EMPTY,
            minimum_deployment_target=ct.target.iOS18,
            compute_precision=ct.precision.FLOAT32,
            classifier_config=ct.ClassifierConfig(
                ["cat", "dog", "eel", "fox"], predicted_probabilities_output="probs"
            ),
        )
    ml.save(str(path))
    feeds = {
        n: rng.randn(*shape).astype(np.float32)
        for n, shape in zip("qkv", [(1, 2, 5, 8), (1, 2, 6, 8), (1, 2, 6, 4)])
    }
    feeds["logits"] = np.array([[0.1, 2.0, -1.0, 0.5]], np.float32)
    program = load_program(path)
    return program, feeds, mask, program.run(feeds)


def _attention(q, k, v, mask=None):
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores + mask
    return torch.softmax(scores, -1) @ v


def test_scaled_dot_product_attention(ios18_group):
    program, feeds, mask, outputs = ios18_group
    q, k, v = (torch.from_numpy(feeds[n]).double() for n in "qkv")
    np.testing.assert_allclose(outputs["sdpa"], _attention(q, k, v).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        outputs["sdpa_masked"],
        _attention(q, k, v, torch.from_numpy(mask).double()).numpy(),
        rtol=1e-5,
        atol=1e-5,
    )
    assert not np.allclose(outputs["sdpa"], outputs["sdpa_masked"])


def test_classify_gives_label_and_probabilities(ios18_group):
    program, feeds, _, outputs = ios18_group
    classify = next(op for op in program.ops if op.type == "classify")
    label_name, probs_name = classify.outputs
    assert set(classify.outputs) <= set(program.outputs)
    assert outputs[label_name] == "dog"
    probs = outputs[probs_name]
    assert list(probs) == ["cat", "dog", "eel", "fox"]
    expected = torch.softmax(torch.from_numpy(feeds["logits"]).double(), -1).numpy()[0]
    np.testing.assert_allclose(list(probs.values()), expected, rtol=1e-5)
    np.testing.assert_allclose(program.output_vector(outputs)[0], expected, rtol=1e-5)


# --- coverage and refusal -------------------------------------------------------------------


def test_every_supported_op_has_a_case(fp32_group, constexpr16, constexpr18, ios18_group):
    seen = set()
    for program in (fp32_group[0], constexpr16[0], constexpr18[0], ios18_group[0]):
        seen |= set(program.op_types())
    assert SUPPORTED_OPS - seen == set(), f"supported but never tested: {sorted(SUPPORTED_OPS - seen)}"


def test_unsupported_op_is_named(tmp_path):
    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 6))], opset_version=ct.target.iOS17)
    def prog(x):
        return mb.cumsum(x=mb.relu(x=x), axis=1, name="running_total")

    path = tmp_path / "cumsum.mlpackage"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ct.convert(
            prog,
            convert_to="mlprogram",
            pass_pipeline=ct.PassPipeline.EMPTY,
            minimum_deployment_target=ct.target.iOS17,
        ).save(str(path))
    with pytest.raises(UnsupportedOpError, match=r"'cumsum' \('running_total'"):
        load_program(path)


def test_not_a_package(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        load_program(tmp_path / "missing.mlpackage")
    (tmp_path / "empty.mlpackage").mkdir()
    with pytest.raises(ArtifactError, match="not a complete .mlpackage"):
        load_program(tmp_path / "empty.mlpackage")
