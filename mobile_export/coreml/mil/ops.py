"""What each MIL operation computes, written from the MIL op definitions (coremltools
`converters/mil/mil/ops/defs`), in torch on the CPU.

Every implementation takes the op's named inputs (torch tensors, str, or lists for
variadic inputs) and returns one value or a tuple. Floating inputs arrive as float32
holding the declared precision's values; the program rounds each output to its declared
type (fp16 outputs to fp16), so the ops themselves are precision-agnostic."""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

OPS: dict[str, Callable[[dict], object]] = {}


def op(*names: str):
    def register(fn):
        for name in names:
            OPS[name] = fn
        return fn

    return register


# --- argument helpers ------------------------------------------------------------------


def ints(v) -> list[int]:
    if isinstance(v, torch.Tensor):
        return [int(x) for x in v.reshape(-1).tolist()]
    if isinstance(v, (list, tuple)):
        return [int(x) for x in v]
    return [int(v)]


def num(v) -> float:
    return float(v.item()) if isinstance(v, torch.Tensor) else float(v)


def flag(v, default: bool = False) -> bool:
    if v is None:
        return default
    return bool(v.item()) if isinstance(v, torch.Tensor) else bool(v)


def axis_of(v, rank: int) -> int:
    a = int(num(v))
    return a + rank if a < 0 else a


def _f(x: torch.Tensor) -> torch.Tensor:
    return x if x.is_floating_point() else x.float()


# --- activations -----------------------------------------------------------------------


op("relu")(lambda a: torch.relu(a["x"]))
op("relu6")(lambda a: torch.clamp(a["x"], 0.0, 6.0))
op("sigmoid")(lambda a: torch.sigmoid(a["x"]))
op("tanh")(lambda a: torch.tanh(a["x"]))
op("silu")(lambda a: F.silu(a["x"]))
op("softplus")(lambda a: F.softplus(a["x"]))
op("softsign")(lambda a: F.softsign(a["x"]))
op("erf")(lambda a: torch.erf(a["x"]))
op("clip")(lambda a: torch.clamp(a["x"], num(a["alpha"]), num(a["beta"])))
op("sigmoid_hard")(
    lambda a: torch.clamp(num(a.get("alpha", 0.2)) * a["x"] + num(a.get("beta", 0.5)), 0.0, 1.0)
)
op("thresholded_relu")(
    lambda a: torch.where(a["x"] > num(a.get("alpha", 1.0)), a["x"], torch.zeros_like(a["x"]))
)
op("threshold")(lambda a: torch.clamp(a["x"], min=num(a["alpha"])))
op("leaky_relu")(lambda a: F.leaky_relu(a["x"], num(a.get("alpha", 0.01))))
op("elu")(lambda a: F.elu(a["x"], num(a.get("alpha", 1.0))))
op("linear_activation")(lambda a: num(a["alpha"]) * a["x"] + num(a.get("beta", 0.0)))
op("scaled_tanh")(lambda a: num(a.get("alpha", 1.0)) * torch.tanh(num(a.get("beta", 1.0)) * a["x"]))


@op("gelu")
def gelu(a):
    mode = a.get("mode", "EXACT")
    x = a["x"]
    if mode == "TANH_APPROXIMATION":
        return F.gelu(x, approximate="tanh")
    if mode == "SIGMOID_APPROXIMATION":
        return x * torch.sigmoid(1.702 * x)
    return F.gelu(x)


@op("prelu")
def prelu(a):
    x, alpha = a["x"], a["alpha"]  # alpha per channel (axis 1)
    shape = [1, -1] + [1] * (x.dim() - 2)
    return torch.where(x >= 0, x, x * alpha.reshape(shape))


# --- elementwise -----------------------------------------------------------------------

_BINARY = {
    "add": torch.add,
    "sub": torch.sub,
    "mul": torch.mul,
    "maximum": torch.maximum,
    "minimum": torch.minimum,
    "equal": torch.eq,
    "not_equal": torch.ne,
    "less": torch.lt,
    "less_equal": torch.le,
    "greater": torch.gt,
    "greater_equal": torch.ge,
    "logical_and": torch.logical_and,
    "logical_or": torch.logical_or,
    "logical_xor": torch.logical_xor,
}
for _name, _fn in _BINARY.items():
    op(_name)(lambda a, _fn=_fn: _fn(a["x"], a["y"]))


@op("real_div")
def real_div(a):
    return torch.div(_f(a["x"]), a["y"])


@op("floor_div")
def floor_div(a):
    return torch.div(a["x"], a["y"], rounding_mode="floor")


@op("mod")
def mod(a):
    return torch.remainder(a["x"], a["y"])


@op("pow")
def pow_(a):
    return torch.pow(a["x"], a["y"])


_UNARY = {
    "abs": torch.abs,
    "exp": torch.exp,
    "exp2": torch.exp2,
    "sqrt": torch.sqrt,
    "square": torch.square,
    "floor": torch.floor,
    "ceil": torch.ceil,
    "round": torch.round,
    "sign": torch.sign,
    "sin": torch.sin,
    "cos": torch.cos,
    "tan": torch.tan,
    "logical_not": torch.logical_not,
    "identity": lambda x: x,
}
for _name, _fn in _UNARY.items():
    op(_name)(lambda a, _fn=_fn: _fn(a["x"]))


@op("rsqrt")
def rsqrt(a):
    return 1.0 / torch.sqrt(a["x"] + num(a.get("epsilon", 1e-12)))


@op("inverse")
def inverse(a):
    return 1.0 / (a["x"] + num(a.get("epsilon", 1e-4)))


@op("log")
def log(a):
    return torch.log(a["x"] + num(a.get("epsilon", 1e-45)))


@op("select")
def select(a):
    return torch.where(a["cond"].bool(), a["a"], a["b"])


# --- reductions ------------------------------------------------------------------------


def _reduce(fn):
    def run(a):
        x = a["x"]
        axes = a.get("axes")
        keep = flag(a.get("keep_dims"), False)
        dims = list(range(x.dim())) if axes is None else [d % x.dim() for d in ints(axes)]
        return fn(x, dims, keep)

    return run


op("reduce_mean")(_reduce(lambda x, d, k: torch.mean(_f(x), dim=d, keepdim=k)))
op("reduce_sum")(_reduce(lambda x, d, k: torch.sum(x, dim=d, keepdim=k)))
op("reduce_max")(_reduce(lambda x, d, k: torch.amax(x, dim=d, keepdim=k)))
op("reduce_min")(_reduce(lambda x, d, k: torch.amin(x, dim=d, keepdim=k)))
op("reduce_prod")(_reduce(lambda x, d, k: _prod(x, d, k)))
op("reduce_l2_norm")(_reduce(lambda x, d, k: torch.sqrt(torch.sum(x * x, dim=d, keepdim=k))))
op("reduce_sum_square")(_reduce(lambda x, d, k: torch.sum(x * x, dim=d, keepdim=k)))
op("reduce_log_sum_exp")(_reduce(lambda x, d, k: torch.logsumexp(x, dim=d, keepdim=k)))


def _prod(x, dims, keep):
    for d in sorted(dims, reverse=True):
        x = torch.prod(x, dim=d, keepdim=keep)
    return x


def _arg(fn):
    def run(a):
        x = a["x"]
        axis = axis_of(a.get("axis", -1), x.dim())
        return fn(x, dim=axis, keepdim=flag(a.get("keep_dims"), False)).to(torch.int32)

    return run


OPS["reduce_argmax"] = _arg(torch.argmax)
OPS["reduce_argmin"] = _arg(torch.argmin)


@op("softmax")
def softmax(a):
    x = a["x"]
    return torch.softmax(x, dim=axis_of(a.get("axis", -1), x.dim()))


# --- linear algebra --------------------------------------------------------------------


@op("linear")
def linear(a):
    return F.linear(a["x"], a["weight"], a.get("bias"))


@op("matmul")
def matmul(a):
    x, y = a["x"], a["y"]
    if flag(a.get("transpose_x")):
        x = x.transpose(-1, -2)
    if flag(a.get("transpose_y")):
        y = y.transpose(-1, -2)
    return torch.matmul(x, y)


@op("scaled_dot_product_attention")
def sdpa(a):
    mask = a.get("attn_mask")
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.float()
    return F.scaled_dot_product_attention(a["query"], a["key"], a["value"], attn_mask=mask)


# --- convolution and pooling -------------------------------------------------------------


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    effective = (kernel - 1) * dilation + 1
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def spatial_padding(
    a, x: torch.Tensor, kernel: list[int], strides: list[int], dilations: list[int]
) -> list[int]:
    """[begin_0, end_0, begin_1, end_1, ...] over the spatial dims, per MIL pad_type."""
    pad_type = a.get("pad_type", "valid")
    spatial = x.shape[2:]
    if pad_type == "custom":
        return ints(a["pad"])
    if pad_type == "valid":
        return [0] * (2 * len(spatial))
    pads: list[int] = []
    for size, k, s, d in zip(spatial, kernel, strides, dilations):
        lo, hi = _same_padding(size, k, s, d)
        pads += [hi, lo] if pad_type == "same_lower" else [lo, hi]
    return pads


def _torch_pad(pads: list[int]) -> list[int]:
    """MIL order (first spatial dim first) -> F.pad order (last dim first)."""
    out: list[int] = []
    for i in reversed(range(len(pads) // 2)):
        out += [pads[2 * i], pads[2 * i + 1]]
    return out


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


@op("conv")
def conv(a):
    x, w = a["x"], a["weight"]
    n = x.dim() - 2
    strides = ints(a["strides"]) if a.get("strides") is not None else [1] * n
    dilations = ints(a["dilations"]) if a.get("dilations") is not None else [1] * n
    groups = int(num(a["groups"])) if a.get("groups") is not None else 1
    pads = spatial_padding(a, x, list(w.shape[2:]), strides, dilations)
    if any(pads):
        symmetric = all(pads[2 * i] == pads[2 * i + 1] for i in range(n))
        if symmetric:
            return _CONV[n](x, w, a.get("bias"), strides, [pads[2 * i] for i in range(n)], dilations, groups)
        x = F.pad(x, _torch_pad(pads))
    return _CONV[n](x, w, a.get("bias"), strides, 0, dilations, groups)


_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


@op("conv_transpose")
def conv_transpose(a):
    """Weight [C_in, C_out/groups, *K] (torch's layout). The full ("valid") result is computed,
    then cropped to what pad_type / pad / output_shape declare (TF's SAME split: the smaller
    half of the crop at the start)."""
    x, w = a["x"], a["weight"]
    n = x.dim() - 2
    strides = ints(a["strides"]) if a.get("strides") is not None else [1] * n
    dilations = ints(a["dilations"]) if a.get("dilations") is not None else [1] * n
    groups = int(num(a["groups"])) if a.get("groups") is not None else 1
    full = _CONV_T[n](x, w, a.get("bias"), strides, 0, 0, groups, dilations)
    size = list(full.shape[2:])
    pad_type = a.get("pad_type", "valid")
    pads = ints(a["pad"]) if pad_type == "custom" and a.get("pad") is not None else None
    if a.get("output_shape") is not None:
        target = ints(a["output_shape"])[2:]
    elif pad_type == "same":
        target = [d * s for d, s in zip(x.shape[2:], strides)]
    elif pads is not None:
        target = [size[i] - pads[2 * i] - pads[2 * i + 1] for i in range(n)]
    else:
        return full
    begins = [pads[2 * i] if pads is not None else (size[i] - target[i]) // 2 for i in range(n)]
    index = (slice(None), slice(None)) + tuple(slice(b, b + t) for b, t in zip(begins, target))
    return full[index]


def _pool(kind: str):
    def run(a):
        x = a["x"]
        n = x.dim() - 2
        kernel = ints(a["kernel_sizes"])
        strides = ints(a["strides"]) if a.get("strides") is not None else [1] * n
        pads = spatial_padding(a, x, kernel, strides, [1] * n)
        ceil_mode = flag(a.get("ceil_mode"), False)
        if kind == "max":
            if any(pads):
                x = F.pad(x, _torch_pad(pads), value=-math.inf)
            fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[n]
            return fn(x, kernel, strides, 0, ceil_mode=ceil_mode)
        exclude = flag(a.get("exclude_padding_from_average"), False)
        unpadded = x
        if any(pads):
            x = F.pad(x, _torch_pad(pads))
        fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[n]
        out = fn(x, kernel, strides, 0, ceil_mode=ceil_mode, count_include_pad=True)
        if exclude and any(pads):  # divide by the count of real (unpadded) elements instead
            ones = F.pad(torch.ones_like(unpadded[:1, :1]), _torch_pad(pads))
            counts = fn(ones, kernel, strides, 0, ceil_mode=ceil_mode, count_include_pad=True)
            out = out / counts
        return out

    return run


op("avg_pool")(_pool("avg"))
op("max_pool")(_pool("max"))


# --- normalization ---------------------------------------------------------------------


def _per_channel(v: torch.Tensor, rank: int) -> torch.Tensor:
    return v.reshape([1, -1] + [1] * (rank - 2))


@op("batch_norm")
def batch_norm(a):
    x = a["x"]
    r = x.dim()
    out = (x - _per_channel(a["mean"], r)) / torch.sqrt(
        _per_channel(a["variance"], r) + num(a.get("epsilon", 1e-5))
    )
    if a.get("gamma") is not None:
        out = out * _per_channel(a["gamma"], r)
    if a.get("beta") is not None:
        out = out + _per_channel(a["beta"], r)
    return out


@op("instance_norm")
def instance_norm(a):
    x = a["x"]
    dims = list(range(2, x.dim()))
    mean = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, keepdim=True, unbiased=False)
    out = (x - mean) / torch.sqrt(var + num(a.get("epsilon", 1e-5)))
    if a.get("gamma") is not None:
        out = out * _per_channel(a["gamma"], x.dim())
    if a.get("beta") is not None:
        out = out + _per_channel(a["beta"], x.dim())
    return out


@op("layer_norm")
def layer_norm(a):
    x = a["x"]
    dims = [d % x.dim() for d in ints(a["axes"])] if a.get("axes") is not None else list(range(x.dim()))
    mean = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, keepdim=True, unbiased=False)
    out = (x - mean) / torch.sqrt(var + num(a.get("epsilon", 1e-5)))
    # gamma/beta have the shape of the normalized axes; broadcast by placing them there.
    shape = [x.shape[d] if d in dims else 1 for d in range(x.dim())]
    if a.get("gamma") is not None:
        out = out * a["gamma"].reshape(shape)
    if a.get("beta") is not None:
        out = out + a["beta"].reshape(shape)
    return out


# --- shapes ----------------------------------------------------------------------------


@op("reshape")
def reshape(a):
    x = a["x"]
    shape = ints(a["shape"])
    shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


op("transpose")(lambda a: a["x"].permute(ints(a["perm"])))


@op("squeeze")
def squeeze(a):
    x = a["x"]
    if a.get("axes") is None:
        return x.squeeze()
    axes = sorted((d % x.dim() for d in ints(a["axes"])), reverse=True)
    for d in axes:
        x = x.squeeze(d)
    return x


@op("expand_dims")
def expand_dims(a):
    x = a["x"]
    axes = ints(a["axes"])
    rank = x.dim() + len(axes)
    for d in sorted(ax % rank for ax in axes):
        x = x.unsqueeze(d)
    return x


@op("flatten2d")
def flatten2d(a):
    x = a["x"]
    axis = axis_of(a.get("axis", 1), x.dim())
    lead = math.prod(x.shape[:axis])
    return x.reshape(lead, -1)


@op("concat")
def concat(a):
    values = a["values"]
    axis = axis_of(a["axis"], values[0].dim())
    if flag(a.get("interleave"), False):
        return torch.stack(values, dim=axis + 1).flatten(axis, axis + 1)
    return torch.cat(values, dim=axis)


@op("stack")
def stack(a):
    values = a["values"]
    return torch.stack(values, dim=axis_of(a["axis"], values[0].dim() + 1))


@op("split")
def split(a):
    x = a["x"]
    axis = axis_of(a["axis"], x.dim())
    if a.get("split_sizes") is not None:
        return tuple(torch.split(x, ints(a["split_sizes"]), dim=axis))
    n = int(num(a["num_splits"]))
    return tuple(torch.split(x, math.ceil(x.shape[axis] / n), dim=axis))


@op("slice_by_index")
def slice_by_index(a):
    x = a["x"]
    r = x.dim()
    begin, end = ints(a["begin"]), ints(a["end"])
    stride = ints(a["stride"]) if a.get("stride") is not None else [1] * r
    bmask = [bool(v) for v in ints(a["begin_mask"])] if a.get("begin_mask") is not None else [False] * r
    emask = [bool(v) for v in ints(a["end_mask"])] if a.get("end_mask") is not None else [False] * r
    smask = [bool(v) for v in ints(a["squeeze_mask"])] if a.get("squeeze_mask") is not None else [False] * r
    index = []
    for d in range(r):
        size, s = x.shape[d], stride[d]
        if smask[d]:
            index.append(begin[d] % size)
            continue
        if s > 0:
            b = 0 if bmask[d] else _clampi(begin[d], size, 0, size)
            e = size if emask[d] else _clampi(end[d], size, 0, size)
            index.append(slice(b, e, s))
        else:  # negative stride: walk backwards by flipping
            b = size - 1 if bmask[d] else _clampi(begin[d], size, -1, size - 1)
            e = -1 if emask[d] else _clampi(end[d], size, -1, size - 1)
            idx = torch.arange(b, e, s)
            index.append(idx)
    out = x
    # Apply dims one at a time so index tensors on several dims do not broadcast together.
    for d in reversed(range(r)):
        ix = index[d]
        if isinstance(ix, int):
            out = out.select(d, ix)
        elif isinstance(ix, slice):
            out = out[(slice(None),) * d + (ix,)]
        else:
            out = out.index_select(d, ix)
    return out


def _clampi(v: int, size: int, lo: int, hi: int) -> int:
    if v < 0:
        v += size
    return max(lo, min(v, hi))


@op("slice_by_size")
def slice_by_size(a):
    x = a["x"]
    begin, size = ints(a["begin"]), ints(a["size"])
    index = tuple(slice(b, x.shape[d] if s == -1 else b + s) for d, (b, s) in enumerate(zip(begin, size)))
    return x[index]


op("tile")(lambda a: a["x"].repeat(ints(a["reps"])))


@op("pad")
def pad(a):
    x = a["x"]
    pads = ints(a["pad"])
    mode = a.get("mode", "constant")
    fpad = _torch_pad(pads)
    if mode == "constant":
        return F.pad(x, fpad, value=num(a.get("constant_val", 0.0)))
    return F.pad(x, fpad, mode={"reflect": "reflect", "replicate": "replicate"}[mode])


@op("gather")
def gather(a):
    x, idx = a["x"], a["indices"].long()
    axis = axis_of(a.get("axis", 0), x.dim())
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    return torch.index_select(x, axis, idx.reshape(-1)).reshape(
        x.shape[:axis] + idx.shape + x.shape[axis + 1 :]
    )


@op("gather_along_axis")
def gather_along_axis(a):
    x, idx = a["x"], a["indices"].long()
    return torch.gather(x, axis_of(a.get("axis", 0), x.dim()), idx)


@op("upsample_nearest_neighbor")
def upsample_nearest(a):
    sh, sw = num(a.get("scale_factor_height", 1)), num(a.get("scale_factor_width", 1))
    return F.interpolate(a["x"], scale_factor=(sh, sw), mode="nearest")


def _bilinear_matrix(n_in: int, n_out: int, align_corners: bool, half_pixel: bool, dtype) -> torch.Tensor:
    """(n_out x n_in) interpolation weights on the MIL grid: align_corners spaces the corners
    exactly; half-pixel centers sample (i + 0.5) * n_in / n_out - 0.5; else i * n_in / n_out.
    Grid points are clamped to [0, n_in - 1]."""
    i = torch.arange(n_out, dtype=torch.float64)
    if align_corners:
        grid = i * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
    elif half_pixel:
        grid = (i + 0.5) * (n_in / n_out) - 0.5
    else:
        grid = i * (n_in / n_out)
    grid = grid.clamp(0, n_in - 1)
    lo = grid.floor().long()
    hi = (lo + 1).clamp(max=n_in - 1)
    frac = grid - lo
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    m[torch.arange(n_out), lo] += 1 - frac
    m[torch.arange(n_out), hi] += frac
    return m.to(dtype)


@op("upsample_bilinear")
def upsample_bilinear(a):
    """Output size floor(H * scale_h) x floor(W * scale_w). align_corners defaults to True
    (iOS15 op); half_pixel_centers (iOS16 op) defaults to not align_corners."""
    x = a["x"]
    sh, sw = num(a.get("scale_factor_height", 1)), num(a.get("scale_factor_width", 1))
    align = flag(a.get("align_corners"), True)
    half = flag(a.get("half_pixel_centers"), not align)
    h, w = x.shape[-2], x.shape[-1]
    mh = _bilinear_matrix(h, int(math.floor(h * sh)), align, half, x.dtype)
    mw = _bilinear_matrix(w, int(math.floor(w * sw)), align, half, x.dtype)
    return torch.einsum("yh,...hw,xw->...yx", mh, x, mw)


# --- dtypes and quantization -----------------------------------------------------------

DTYPE_NAMES = {
    "fp16": torch.float16,
    "fp32": torch.float32,
    "fp64": torch.float64,
    "int32": torch.int32,
    "int64": torch.int64,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}


@op("cast")
def cast(a):
    # The declared output type does the rounding; int casts truncate toward zero as MIL does.
    target = DTYPE_NAMES[a["dtype"]]
    x = a["x"]
    if not target.is_floating_point and x.is_floating_point() and target != torch.bool:
        return torch.trunc(x).to(target)
    return x.to(target)


def _along(v: torch.Tensor, x: torch.Tensor, axis) -> torch.Tensor:
    """A scalar or per-axis vector of quantization parameters, shaped to broadcast on x."""
    if v.dim() == 0 or axis is None:
        return v
    shape = [1] * x.dim()
    shape[axis_of(axis, x.dim())] = -1
    return v.reshape(shape)


_QRANGE = {"int8": (-128, 127), "uint8": (0, 255)}


@op("quantize")
def quantize(a):
    x = a["input"]
    axis = a.get("axis")
    scale = _along(a["scale"].float(), x, axis)
    zp = a.get("zero_point")
    lo, hi = _QRANGE[a["output_dtype"]]
    q = torch.round(x / scale)
    if zp is not None:
        q = q + _along(zp.float(), x, axis)
    return torch.clamp(q, lo, hi).to(DTYPE_NAMES[a["output_dtype"]])


@op("dequantize")
def dequantize(a):
    x = a["input"].float()
    axis = a.get("axis")
    zp = a.get("zero_point")
    if zp is not None:
        x = x - _along(zp.float(), x, axis)
    return x * _along(a["scale"].float(), x, axis)


# --- classifier ------------------------------------------------------------------------


@op("classify")
def classify(a):
    """-> (label, {label: probability}) exactly as Core ML's classifier outputs."""
    probs = a["probabilities"].reshape(-1)
    classes = [c.item() if hasattr(c, "item") else c for c in a["classes"]]
    values = probs.double().tolist()
    best = int(torch.argmax(probs).item())
    return classes[best], dict(zip(classes, values))
