"""Names of torch.fx graph nodes, one definition for every per-op table and count (ExecuTorch
delegation, the per-op twin, the quantized-vs-float layers). Pure Python: no torch import."""

from __future__ import annotations


def op_name(node) -> str:
    """ "aten.convolution.default" for aten/edge ops, the function's name otherwise."""
    target = getattr(node.target, "_op", node.target)  # EdgeOpOverload wraps an OpOverload
    if hasattr(target, "_schema"):
        return str(target).replace("torch.ops.", "")
    return getattr(target, "__name__", None) or str(target)


def short_op_name(node) -> str:
    """ "convolution" for aten.convolution.default: the op without namespace and overload."""
    target = getattr(node.target, "__name__", None) or str(node.target)
    return target.replace("aten.", "").split(".")[0]


def module_path(node) -> str:
    """The innermost module an exported graph node was traced in ("" outside any)."""
    stack = node.meta.get("nn_module_stack") or {}
    return str(list(stack.values())[-1][0]) if stack else ""


def measured_inputs(node, group_of: dict[str, str], seen: set, found: dict) -> None:
    """Collect into `found` (as keys) the measured nodes' value names (`group_of`: node name ->
    value name) that feed `node`, looking through unmeasured nodes (views, q/dq); constants and
    graph inputs feed nothing. `seen`: node names not to visit again."""
    for arg in node.all_input_nodes:
        if arg.name in seen:
            continue
        seen.add(arg.name)
        if arg.name in group_of:
            found[group_of[arg.name]] = None
        elif arg.op not in ("get_attr", "placeholder"):
            measured_inputs(arg, group_of, seen, found)
