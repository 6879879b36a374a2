"""Per-layer comparison of a saved ML Program with its PyTorch model.

Anchors: the converter keeps one MIL `conv` per nn.Conv2d (BatchNorm folded in) and one
`linear`/`matmul` per nn.Linear, in execution order. So the k-th conv/linear op of the
program is matched with the k-th Conv2d/Linear the PyTorch forward executes, and compared
with that module's effective output (the BatchNorm right after it, if the conv feeds one).
When the counts differ (a graph the converter restructured), ops are matched greedily in
order by output shape. The values go to verify's sink (Target.per_op_values), which makes the
rows and writes them."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ...targets.base import OpInfo, ValueSink
from .program import Program

ANCHOR_OPS = ("conv", "linear", "matmul")


def _torch_layers(module, x) -> list[tuple[str, tuple, np.ndarray]]:
    """(module path, shape, effective output) of each Conv/Linear in execution order."""
    import torch

    names = {m: n for n, m in module.named_modules()}
    records: list[list] = []  # [name, output tensor, its copy (later in-place ops may change it)]

    def on_anchor(mod, args, out):
        records.append([names[mod], out, out.detach().clone()])

    def on_norm(mod, args, out):
        if records and args and args[0] is records[-1][1]:
            # The converter folds the BatchNorm into the conv; the activation a BatchNormAct
            # module may apply after it is a separate MIL op, so recompute the plain BatchNorm.
            plain = torch.nn.functional.batch_norm(
                args[0], mod.running_mean, mod.running_var, mod.weight, mod.bias, False, 0.0, mod.eps
            )
            records[-1][1:] = [out, plain.detach().clone()]

    hooks = []
    for m in module.modules():
        if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear)):
            hooks.append(m.register_forward_hook(on_anchor))
        elif isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            hooks.append(m.register_forward_hook(on_norm))
    try:
        with torch.no_grad():
            module(torch.from_numpy(np.asarray(x, np.float32)))
    finally:
        for h in hooks:
            h.remove()
    return [(name, tuple(copy.shape), copy.numpy()) for name, _, copy in records]


def _match(program: Program, torch_layers: list[tuple[str, tuple, np.ndarray]]) -> list[tuple[str, str, int]]:
    """[(MIL value name, op type, index into torch_layers)] in program order."""
    anchors = [op for op in program.compute_ops() if op.type in ANCHOR_OPS]
    convs = [op for op in anchors if op.type == "conv"]
    linears = [op for op in anchors if op.type == "linear"]
    n_conv = sum(1 for _, s, _ in torch_layers if len(s) >= 3)
    n_lin = len(torch_layers) - n_conv
    if len(convs) == n_conv and len(linears) == n_lin:
        t_conv = [i for i, (_, s, _) in enumerate(torch_layers) if len(s) >= 3]
        t_lin = [i for i, (_, s, _) in enumerate(torch_layers) if len(s) < 3]
        return [(op.outputs[0], op.type, t) for op, t in zip(convs, t_conv)] + [
            (op.outputs[0], op.type, t) for op, t in zip(linears, t_lin)
        ]
    pairs, start = [], 0
    for op in anchors:  # greedy, in order, by element count
        shape = program.shape_of(op.outputs[0])
        for j in range(start, len(torch_layers)):
            if shape is None or -1 in shape or int(np.prod(shape)) == int(np.prod(torch_layers[j][1])):
                pairs.append((op.outputs[0], op.type, j))
                start = j + 1
                break
    return pairs


def layer_values(
    program: Program,
    module,
    artifact_feeds: Sequence[dict],
    reference_inputs: Sequence[np.ndarray],
    sink: ValueSink,
) -> list[OpInfo]:
    """Each matched conv/linear's (PyTorch, executor) values go to `sink`, image by image:
    artifact_feeds[i] feeds the program, reference_inputs[i] the module. Returns the ops in
    program order; each is fed by the one before it (the first: unknown, no loss)."""
    meta: dict[str, tuple[str, str]] = {}
    order: list[str] = []
    for feeds, x in zip(artifact_feeds, reference_inputs):
        layers = _torch_layers(module, x)
        pairs = _match(program, layers)
        if not order:
            order = [name for name, _, _ in pairs]
        result = program.run(feeds, capture={name for name, _, _ in pairs})
        for name, op_type, j in pairs:
            ref = layers[j][2]
            got = np.asarray(result[name])
            if got.size != ref.size:
                continue
            sink(name, ref, got.reshape(ref.shape))
            meta[name] = (op_type, layers[j][0])
    ops, previous = [], None
    for name in (n for n in order if n in meta):
        op_type, module_name = meta[name]
        ops.append(
            OpInfo(name=name, op=op_type, module=module_name, feeds=None if previous is None else (previous,))
        )
        previous = name
    return ops
