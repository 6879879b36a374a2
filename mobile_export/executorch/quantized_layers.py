"""Where int8 error enters: the quantized PyTorch model (convert_pt2e graph) against its float
twin (the prepared graph: same node names, BN folded, observers pass-through), node by node on
real inputs. The values go to verify's sink, which turns them into per-layer rows."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..fxgraph import measured_inputs, module_path, short_op_name
from ..targets.base import OpInfo, ValueSink

EXACT_DB = 100.0  # an input this clean counts as exact when computing a layer's loss

_SKIP = (
    "getitem",
    "quantize_per",
    "dequantize_per",
    "choose_qparams",
    "view",
    "reshape",
    "flatten",
    "permute",
    "transpose",
    "squeeze",
    "unsqueeze",
    "expand",
    "contiguous",
    "clone",
    "_assert",
)


def _tracked(node) -> bool:
    if node.op == "placeholder":
        return True
    if node.op != "call_function":
        return False
    return not any(k in str(node.target) for k in _SKIP)


def _after_qdq(node):
    """The dequantize that re-expresses `node`'s output in int8, if there is one: what the
    next layer really receives."""
    for user in node.users:
        if "quantize_per_tensor" in str(user.target) and "dequantize" not in str(user.target):
            deq = [u for u in user.users if "dequantize_per_tensor" in str(u.target)]
            if deq:
                return deq[0]
    return node


def _capture(graph_module, inputs: Sequence[np.ndarray], wanted: dict) -> list[dict]:
    """Run `graph_module` on each input with an fx Interpreter; keep the values of the
    nodes named in `wanted` (name -> the node whose value stands for it)."""
    import torch

    from ..quantize.calibration import to_tensor

    keep = set(wanted.values())
    results = []

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            value = super().run_node(n)
            if n.name in keep and isinstance(value, torch.Tensor):
                self.seen[n.name] = value.detach().numpy().copy()
            return value

    for x in inputs:
        rec = Recorder(graph_module)
        rec.seen = {}
        with torch.no_grad():
            rec.run(to_tensor(x))
        results.append({name: rec.seen.get(src) for name, src in wanted.items()})
    return results


def quantized_layer_values(quantized, inputs: Sequence[np.ndarray], sink: ValueSink) -> list[OpInfo]:
    """Float twin (reference) vs quantized graph values of every tracked node go to `sink`;
    returns the measured nodes in graph order."""
    qgm, fgm = quantized.graph_module, quantized.float_graph_module
    fnodes = {n.name: n for n in fgm.graph.nodes}
    order = [n for n in qgm.graph.nodes if _tracked(n) and n.name in fnodes]
    q_vals = _capture(qgm, inputs, {n.name: _after_qdq(n).name for n in order})
    f_vals = _capture(fgm, inputs, {n.name: n.name for n in order})
    measured: set[str] = set()
    for qv, fv in zip(q_vals, f_vals):
        for node in order:
            q, f = qv.get(node.name), fv.get(node.name)
            if q is not None and f is not None and q.shape == f.shape:
                sink(node.name, f, q)
                measured.add(node.name)
    ops = []
    for i, node in enumerate(order):
        if node.name not in measured:
            continue
        feeds: dict[str, None] = {}
        if node.op != "placeholder":  # fed by exact values: all its error is its own
            measured_inputs(node, {name: name for name in measured}, set(), feeds)
        module = module_path(node)
        if module.startswith("model."):
            module = module[len("model.") :]
        ops.append(
            OpInfo(
                name=node.name,
                op="input" if node.op == "placeholder" else short_op_name(node),
                module=module,
                feeds=tuple(feeds),
                index=i,
            )
        )
    return ops
