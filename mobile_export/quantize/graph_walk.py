"""Walking a convert_pt2e graph image by image, for the passes that fix one layer at a time
(bias correction, AdaRound): layer k is measured with layers 1..k-1 already fixed.

Image by image because exported graphs carry batch 1 in their reshapes; the values of one node
are a list with one tensor per image."""

from __future__ import annotations

from typing import Callable, Sequence


def calls(node, names) -> bool:
    """`node` calls an op whose name contains one of `names` (e.g. "dequantize_per_channel")."""
    return getattr(node, "op", None) == "call_function" and any(k in str(node.target) for k in names)


def attr(graph_module, target: str):
    """The tensor a get_attr node names (dotted paths included)."""
    obj = graph_module
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def steps(graph_module, inputs: Sequence):
    """Run `graph_module` on every input at once, node by node, yielding (node, env) after each
    node (env: node -> values over all images). The consumer may replace env[node] before
    asking for the next step. Values no later node reads are then dropped, so memory stays one
    stage deep, and two graphs can be walked side by side."""
    import torch.fx

    env: dict = {}

    def value(arg, i):
        return torch.fx.node.map_arg(arg, lambda n: env[n][i])

    count = len(inputs)
    nodes = list(graph_module.graph.nodes)
    last_use = {}
    for index, node in enumerate(nodes):
        for used in node.all_input_nodes:
            last_use[used] = index
    for index, node in enumerate(nodes):
        if node.op == "placeholder":
            env[node] = list(inputs)
        elif node.op == "get_attr":
            env[node] = [attr(graph_module, node.target)] * count
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
        yield node, env
        for used in node.all_input_nodes:
            if last_use[used] == index:
                del env[used]


def walk(graph_module, inputs: Sequence, on_node: Callable | None = None) -> None:
    """Run `graph_module` on every input at once, node by node. `on_node(node, values, env)`
    sees a node's values over all images and may return a replacement before later nodes
    consume them."""
    for node, env in steps(graph_module, inputs):
        if on_node is not None:
            replaced = on_node(node, env[node], env)
            if replaced is not None:
                env[node] = replaced


def record(graph_module, inputs: Sequence, names, reduce: Callable) -> dict:
    """{name: reduce(values over all images)} for the named nodes, in one walk."""
    import torch

    seen: dict = {}
    with torch.no_grad():
        walk(
            graph_module,
            inputs,
            lambda node, values, _env: (
                seen.__setitem__(node.name, reduce(values)) if node.name in names else None
            ),
        )
    return seen
