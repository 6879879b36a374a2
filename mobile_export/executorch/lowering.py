"""Lowering to XNNPACK and its workarounds, shared by export, the per-op twin (etdump.py) and
the quantized reference: the normalization wrapper, torch.export + to_edge_transform_and_lower,
the tanh-GELU rewrite, and the delegation summary written to the manifest."""

from __future__ import annotations

import time

from ..errors import ExportError, first_line
from ..fxgraph import op_name

BOOKKEEPING = {"getitem", "alloc", "executorch_call_delegate"}  # never delegated, no compute


def with_normalization(module, mean, std):
    """Wrap `module` so it takes RGB in [0, 1]: (x - mean) / std as x * (1/std) + (-mean/std),
    one multiply and one add that XNNPACK fuses cheaply, in float constants (integer
    scalars would leave copies outside the delegate). They sit in a submodule named
    quantize.FLOAT_INPUT_MODULE, which int8 keeps in float: the image is quantized once, after
    them."""
    import torch

    from ..quantize.pt2e import FLOAT_INPUT_MODULE

    class Normalize(torch.nn.Module):
        def __init__(self, mean, std):
            super().__init__()
            std_t = torch.tensor(std, dtype=torch.float32).reshape(1, 3, 1, 1)
            mean_t = torch.tensor(mean, dtype=torch.float32).reshape(1, 3, 1, 1)
            self.register_buffer("inv_std", 1.0 / std_t)
            self.register_buffer("shift", -mean_t / std_t)

        def forward(self, x):
            return x * self.inv_std + self.shift

    class NormalizedInput(torch.nn.Module):
        def __init__(self, model, mean, std):
            super().__init__()
            self.add_module(FLOAT_INPUT_MODULE, Normalize(mean, std))
            self.model = model

        def forward(self, x):
            return self.model(getattr(self, FLOAT_INPUT_MODULE)(x))

    return NormalizedInput(module, mean, std).eval()


def export_module(built, normalize_in_model: bool):
    """The module both .pte exports trace, in eval mode, with its example input and output
    shape: the normalization folded in when the program takes RGB in [0, 1]."""
    import torch

    pre = built.preprocess
    model = with_normalization(built.module, pre.mean, pre.std) if normalize_in_model else built.module
    model.eval()
    example = torch.zeros(built.input_shape, dtype=torch.float32)
    with torch.no_grad():
        out_shape = list(model(example).shape)
    return model, example, out_shape


def lower(
    module,
    example,
    log=lambda _m: None,
    per_op: bool = False,
    etrecord: bool = False,
    exact_tanh_gelu: bool = True,
):
    """torch.export + XNNPACK lowering; returns (ExecutorchProgramManager, delegation summary).
    `per_op`: one delegate per op (for per-layer numerics); `etrecord`: keep an ETRecord;
    `exact_tanh_gelu`: False lets XNNPACK run tanh GELU as its erf GELU (faster, see
    `spell_out_tanh_gelu`)."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.utils.configs import get_transform_passes
    from executorch.exir import to_edge_transform_and_lower

    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            exported = torch.export.export(module, (example,), strict=False)
            tanh_gelus = count_tanh_gelu(exported)
            if tanh_gelus and exact_tanh_gelu:
                exported = spell_out_tanh_gelu(exported)
            edge = to_edge_transform_and_lower(
                exported,
                partitioner=[XnnpackPartitioner(per_op_mode=per_op)],
                transform_passes=get_transform_passes(),
                generate_etrecord=etrecord,
            )
        delegation = delegation_summary(edge.exported_program().graph_module)
        if tanh_gelus:
            delegation["tanh_gelu"] = {
                "count": tanh_gelus,
                "runs_as": TANH_GELU_EXACT if exact_tanh_gelu else TANH_GELU_FAST,
            }
        manager = edge.to_executorch()
    except (ExportError, MemoryError):
        raise
    except Exception as exc:  # torch.export / exir raise many types; keep one line
        raise ExportError(
            f"ExecuTorch lowering failed ({first_line(exc)}); the model uses an op torch.export/XNNPACK cannot take"
        ) from None
    log(
        f"lowered to XNNPACK in {time.perf_counter() - t0:.1f}s: {delegation['delegated_ops']} op(s) delegated in "
        f"{delegation['delegated_subgraphs']} subgraph(s), {sum(delegation['outside'].values())} outside"
        + (f"; {tanh_gelus} tanh GELU run as {delegation['tanh_gelu']['runs_as']}" if tanh_gelus else "")
    )
    return manager, delegation


GELU_SIGMOID_C0 = 1.5957691216057308  # 2 * sqrt(2 / pi): 0.5 * (1 + tanh(z)) = sigmoid(2 z)
GELU_SIGMOID_C1 = 0.07135481627260025  # 2 * sqrt(2 / pi) * 0.044715


TANH_GELU_EXACT = "tanh GELU, written out"
TANH_GELU_FAST = "erf GELU (XNNPACK's op, --fast-gelu)"


def uses_tanh_gelu(module) -> bool:
    import torch

    return any(isinstance(m, torch.nn.GELU) and m.approximate == "tanh" for m in module.modules())


def count_tanh_gelu(exported) -> int:
    import torch

    return sum(
        1
        for n in exported.graph.nodes
        if n.target == torch.ops.aten.gelu.default and n.kwargs.get("approximate", "none") == "tanh"
    )


def spell_out_tanh_gelu(exported):
    """ExecuTorch 1.5.1's XNNPACK delegate runs every aten.gelu as exact (erf) GELU and ignores
    approximate="tanh" (fixed upstream after 1.5.1 in pytorch/executorch#22851, which needs a
    newer runtime). V5 uses tanh GELU: delegated as is, each one is 74 dB off PyTorch (the erf vs
    tanh gap), and the 31 of v5-base take it under the 60 dB fp32 row at 64 px. Written as
    x * sigmoid(x * (c0 + c1 x^2)), the same function in 5 ops XNNPACK runs as written, it
    matches PyTorch to float rounding."""
    import torch

    gelu = torch.ops.aten.gelu.default
    if not count_tanh_gelu(exported):
        return exported

    def tanh_gelu(x, approximate="none"):
        if approximate != "tanh":
            return NotImplemented  # exact GELU: XNNPACK's own op is right
        return x * torch.sigmoid(x * (GELU_SIGMOID_C0 + GELU_SIGMOID_C1 * (x * x)))

    return exported.run_decompositions({gelu: tanh_gelu})


def delegation_summary(graph_module, backend: str = "XnnpackBackend") -> dict:
    """Per-op counts inside and outside the delegate (XNNPACK, or `backend`), from the
    lowered edge graph."""
    inside: dict[str, int] = {}
    outside: dict[str, int] = {}
    subgraphs = 0
    for node in graph_module.graph.nodes:
        if node.op == "get_attr" and node.name.startswith("lowered_module"):
            subgraphs += 1
            lowered = getattr(graph_module, node.target)
            for inner in lowered.original_module.graph.nodes:
                if inner.op == "call_function":
                    op = op_name(inner)
                    if op.split(".")[-1] not in BOOKKEEPING and "getitem" not in op:
                        inside[op] = inside.get(op, 0) + 1
        elif node.op == "call_function":
            op = op_name(node)
            if "getitem" in op or "executorch_call_delegate" in op or op.split(".")[-1] in BOOKKEEPING:
                continue
            outside[op] = outside.get(op, 0) + 1
    return {
        "backend": backend,
        "delegated_subgraphs": subgraphs,
        "delegated_ops": sum(inside.values()),
        "outside": dict(sorted(outside.items())),
        "complete": not outside,
        "by_operator": dict(sorted(inside.items())),
    }


def runtime_record(backend: str) -> dict:
    """Which runtime and backend the file needs on the device, and the ExecuTorch version
    that wrote it (no forward compatibility: the app's runtime must not be older)."""
    from importlib import metadata

    return {"name": "executorch", "version": metadata.version("executorch"), "backends": [backend]}
