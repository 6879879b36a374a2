"""Empirical bias correction, layer by layer: after convert_pt2e, shift each int8 conv/linear
bias so its mean output per channel on the calibration images equals the float model's.

Sequential on purpose: layer k is measured with layers 1..k-1 already corrected, so an
upstream shift is compensated once (correcting every layer from one pass double-counts it,
which made round 1's whole-graph version 3 dB worse)."""

from __future__ import annotations

from typing import Sequence

from .graph_walk import attr, record, walk

_LINEAR_OPS = ("conv2d", "linear")


def _is_quantized_linear_op(node) -> bool:
    if (
        node.op != "call_function"
        or not any(k in str(node.target) for k in _LINEAR_OPS)
        or len(node.args) < 3
    ):
        return False
    weight, bias = node.args[1], node.args[2]
    return (
        getattr(weight, "op", None) == "call_function"
        and "dequantize" in str(weight.target)
        and getattr(bias, "op", None) == "get_attr"
    )


def _channel_mean(outputs: list):
    import torch

    stacked = torch.cat(outputs)
    dims = [d for d in range(stacked.dim()) if d != 1]
    return stacked.mean(dim=dims)


def correct_biases(quantized, float_graph, inputs: Sequence) -> int:
    """Correct the biases of `quantized` (convert_pt2e output, same node names as the prepared
    `float_graph`) in place; returns how many layers were corrected."""
    import torch

    targets = {n.name for n in quantized.graph.nodes if _is_quantized_linear_op(n)}
    float_means = record(float_graph, inputs, targets, _channel_mean)
    with torch.no_grad():
        corrected = 0

        def correct(node, values, _env):
            nonlocal corrected
            if node.name not in targets or node.name not in float_means:
                return None
            shift = float_means[node.name] - _channel_mean(values)
            bias = attr(quantized, node.args[2].target)
            bias.add_(shift.to(bias.dtype))
            corrected += 1
            view = (1, -1) + (1,) * (values[0].dim() - 2)
            return [v + shift.reshape(view) for v in values]

        walk(quantized, inputs, correct)
    return corrected
