"""Parameter and MAC counts from torch itself (torch.utils.flop_counter), so the numbers in
`list`, the manifest and the tests come from the graph that runs, not from a formula."""

from __future__ import annotations

import torch
from torch import nn


def count_params(module: nn.Module) -> int:
    """Learnable parameters (BN running statistics are buffers and do not count)."""
    return sum(p.numel() for p in module.parameters())


# Ops of layers with weights (conv; linear as addmm/mm). The registry's MMACs, like the papers'
# tables, count these; attention's activation-by-activation matmuls (bmm, sdpa) are extra.
LAYER_OPS = ("aten.convolution", "aten.addmm", "aten.mm")


def count_macs(
    module: nn.Module, resolution: int | tuple[int, int], *, attention: bool = False, channels: int = 3
) -> int:
    """Multiply-accumulates of one forward pass on a 1 x C x H x W input: FLOPs / 2 as torch's
    FlopCounterMode counts them. By default conv and linear layers only (the registry's
    definition); `attention=True` adds the attention matmuls (all the counter sees).
    A model built on the meta device is counted without allocating or computing anything."""
    flops = flops_by_op(module, resolution, channels)
    return sum(v for op, v in flops.items() if attention or op in LAYER_OPS) // 2


def flops_by_op(module: nn.Module, resolution: int | tuple[int, int], channels: int = 3) -> dict[str, int]:
    """FLOPs of one forward pass per aten op, e.g. {"aten.convolution": ..., "aten.bmm": ...}."""
    from torch.utils.flop_counter import FlopCounterMode

    height, width = (resolution, resolution) if isinstance(resolution, int) else resolution
    tensor = next(iter(module.parameters()), None)
    device = tensor.device if tensor is not None else torch.device("cpu")
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(torch.zeros(1, channels, height, width, device=device))
    finally:
        module.train(was_training)
    return {str(op): int(v) for op, v in counter.get_flop_counts()["Global"].items()}


def build_on_meta(builder, *args, **kwargs) -> nn.Module:
    """Instantiate a model without memory or init cost (for counting)."""
    with torch.device("meta"):
        return builder(*args, **kwargs)
