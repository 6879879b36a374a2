"""The quantized PyTorch model computes what XNNPACK computes (issue 18).

The convert_pt2e graph runs every int8 op as dequantize -> float op -> quantize. XNNPACK runs
the same ops on integers, and on a trained MobileNetV3-Small two of its kernels land on
another int8 value than that float path (measured op by op on the runtime's own inputs,
`scripts/v3gap_per_op.py`; everything else agreed to within 0.001% of values):

- conv / linear: ExecuTorch stores the bias as int32 on the grid input scale x weight scale
  (`QuantParams.from_bias`), the graph adds the float bias. 0.03-0.23% of each conv's outputs
  one step apart. `snap_biases` rounds the graph's biases onto that grid, in place: the lowered
  program is unchanged (the bias quantizes to the same int32 values), the reference now adds
  exactly what XNNPACK adds.
- mean / adaptive avg pool (qs8 global average pooling): XNNPACK takes the exact mean of the
  int8 values and rounds half to even; the float path lands 1 ulp off an exact .5 tie and
  breaks it either way (a 2x2 pool has ties on a quarter of its outputs: 3-10% of the pool's
  outputs one step apart). `exact_means` returns a reference graph whose quantized means do
  the integer computation. Means on float inputs (V3's squeeze-excite after hardswish, which
  XNNPACK runs in fp32) are left alone: they already agree.

Each one-step difference is small, but the next requantization turns a sub-step offset into
a whole step on a fraction of values, so they compound through the ~50 requantizations of the
network: 30.5 dB .pte vs quantized graph on V3-Small at 64 px before, 42.9 dB with both."""

from __future__ import annotations

from .graph_walk import attr, calls

_GEMM = ("aten.conv2d.", "aten.linear.", "aten.conv1d.")
_MEANS = ("aten.mean.dim", "aten.adaptive_avg_pool2d.")


def _dq_per_tensor(node) -> bool:
    return calls(node, ("dequantize_per_tensor",))


def _q_per_tensor(node) -> bool:
    return calls(node, ("quantize_per_tensor",)) and not calls(node, ("dequantize",))


def _scalar(graph_module, value) -> float:
    if getattr(value, "op", None) == "get_attr":
        return float(attr(graph_module, value.target).item())
    return float(value)


def snap_biases(graph_module) -> int:
    """Round, in place, the float bias of every int8 conv/linear (per-tensor int8 input,
    dequantized int8 weight) onto the int32 grid XNNPACK stores it on: scale = weight scale
    (per channel or per tensor, float32) x input scale, zero point 0, round half to even of
    bias * (1 / scale), as ExecuTorch's QuantParams.from_bias + quantize_per_channel do.
    Returns how many biases were snapped. Idempotent."""
    import torch

    count = 0
    for node in graph_module.graph.nodes:
        if not calls(node, _GEMM) or len(node.args) < 3:
            continue
        x, w, b = node.args[0], node.args[1], node.args[2]
        if not (
            _dq_per_tensor(x) and calls(w, ("dequantize_per_",)) and getattr(b, "op", None) == "get_attr"
        ):
            continue
        sx = _scalar(graph_module, x.args[1])
        sw_arg = w.args[1]
        if getattr(sw_arg, "op", None) == "get_attr":
            sw = attr(graph_module, sw_arg.target).to(torch.float32)
        else:
            sw = torch.tensor(float(sw_arg), dtype=torch.float32)
        bias = attr(graph_module, b.target)
        with torch.no_grad():
            scale = (sw * sx).to(torch.float32).reshape(-1)
            if scale.numel() not in (1, bias.numel()):
                continue
            q = torch.clamp(torch.round(bias.detach().float() * (1.0 / scale)), -(2**31), 2**31 - 1)
            bias.copy_((q * scale).to(bias.dtype))
        count += 1
    return count


def exact_int8_mean(t, dims, keepdim: bool, s_in: float, s_out: float):
    """XNNPACK's qs8 mean of a dequantized int8 tensor `t` (scale `s_in`), on the output grid
    (scale `s_out`): the exact mean of the integers, rounded half to even. A module-level
    function, so the reference graph pickles."""
    import torch

    k = torch.round(t / s_in)  # the int8 value minus its zero point, exactly
    m = torch.mean(k, dims, keepdim)  # exact: integer sums < 2**24, ties land on .5
    return torch.round(m * (s_in / s_out)) * s_out


def exact_means(graph_module):
    """A reference twin of `graph_module` (same attributes, no weight copies) whose int8 means
    and global average pools compute what XNNPACK's qs8 mean computes; `graph_module` itself,
    the source of the lowering, is not changed. Returns (module, how many means)."""
    import torch

    graph = torch.fx.Graph()
    env: dict = {}
    count = 0
    for node in graph_module.graph.nodes:
        users = list(node.users)
        x = node.args[0] if node.args else None
        if (
            calls(node, _MEANS)
            and _dq_per_tensor(x)
            and len(users) == 1
            and _q_per_tensor(users[0])
            and _reduces_hw(node)
        ):
            dims, keepdim = ((2, 3), True) if calls(node, ("adaptive_avg_pool2d",)) else _mean_args(node)
            s_in, s_out = _scalar(graph_module, x.args[1]), _scalar(graph_module, users[0].args[1])
            env[node] = graph.call_function(exact_int8_mean, (env[x], tuple(dims), keepdim, s_in, s_out))
            env[node].meta = dict(node.meta)
            count += 1
            continue
        env[node] = graph.node_copy(node, lambda n: env[n])
    graph._codegen = graph_module.graph._codegen
    twin = torch.fx.GraphModule(graph_module, graph)
    for name in ("_in_spec", "_out_spec"):
        if hasattr(graph_module, name):
            setattr(twin, name, getattr(graph_module, name))
    return twin, count


def _mean_args(node):
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    return tuple(dims), bool(keepdim)


def _reduces_hw(node) -> bool:
    if calls(node, ("adaptive_avg_pool2d",)):
        size = node.args[1] if len(node.args) > 1 else None
        return size is not None and list(size) == [1, 1]
    val = node.args[0].meta.get("val") if hasattr(node.args[0], "meta") else None
    dims, keepdim = _mean_args(node)
    # XNNPACK takes only this mean (op_mean_dim.py): rank 4, over H and W, keepdim
    return keepdim and (val is None or val.dim() == 4) and sorted(d % 4 for d in dims) == [2, 3]
