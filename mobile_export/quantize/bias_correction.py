"""Empirical bias correction, layer by layer: after convert_pt2e, shift each int8 conv/linear
bias so its mean output per channel on the calibration images equals the float model's.

Sequential on purpose: layer k is measured with layers 1..k-1 already corrected, so an
upstream shift is compensated once (correcting every layer from one pass double-counts it,
which made round 1's whole-graph version 3 dB worse)."""

from __future__ import annotations

from typing import Sequence

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


def _attr(graph_module, target: str):
    obj = graph_module
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _channel_mean(outputs: list):
    import torch

    stacked = torch.cat(outputs)
    dims = [d for d in range(stacked.dim()) if d != 1]
    return stacked.mean(dim=dims)


def _run_per_node(graph_module, inputs: Sequence, on_node=None) -> None:
    """Walk the graph node by node with every input at once (one value list per node), so
    `on_node(node, values)` can see a layer's outputs over all images and return a
    replacement before later layers consume them."""
    env: dict = {}

    def value(arg, i):
        import torch.fx

        return torch.fx.node.map_arg(arg, lambda n: env[n][i])

    count = len(inputs)
    for node in graph_module.graph.nodes:
        if node.op == "placeholder":
            env[node] = list(inputs)
        elif node.op == "get_attr":
            env[node] = [_attr(graph_module, node.target)] * count
        elif node.op == "call_function":
            env[node] = [node.target(*value(node.args, i), **value(node.kwargs, i)) for i in range(count)]
        elif node.op == "call_module":
            module = graph_module.get_submodule(node.target)
            env[node] = [module(*value(node.args, i), **value(node.kwargs, i)) for i in range(count)]
        elif node.op == "call_method":
            env[node] = [
                getattr(value(node.args[0], i), node.target)(
                    *value(node.args[1:], i), **value(node.kwargs, i)
                )
                for i in range(count)
            ]
        elif node.op == "output":
            return
        if on_node is not None:
            replaced = on_node(node, env[node])
            if replaced is not None:
                env[node] = replaced


def correct_biases(quantized, float_graph, inputs: Sequence) -> int:
    """Correct the biases of `quantized` (convert_pt2e output, same node names as the prepared
    `float_graph`) in place; returns how many layers were corrected."""
    import torch

    targets = {n.name for n in quantized.graph.nodes if _is_quantized_linear_op(n)}
    float_means: dict = {}
    with torch.no_grad():
        _run_per_node(
            float_graph,
            inputs,
            lambda node, values: (
                float_means.__setitem__(node.name, _channel_mean(values)) if node.name in targets else None
            ),
        )
        corrected = 0

        def correct(node, values):
            nonlocal corrected
            if node.name not in targets or node.name not in float_means:
                return None
            shift = float_means[node.name] - _channel_mean(values)
            bias = _attr(quantized, node.args[2].target)
            bias.add_(shift.to(bias.dtype))
            corrected += 1
            view = (1, -1) + (1,) * (values[0].dim() - 2)
            return [v + shift.reshape(view) for v in values]

        _run_per_node(quantized, inputs, correct)
    return corrected
