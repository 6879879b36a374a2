"""The weights each conv/linear of a loaded ML Program reads, decompressed (palettes, int8 and
their scales already applied at load time, exactly as coremltools defines them), in program
order: what the file multiplies with, to build PyTorch with the file's own weights."""

from __future__ import annotations

import numpy as np

from ...errors import ArtifactError
from .program import Program

WEIGHT_OPS = {"conv": "weight", "linear": "weight"}


def anchor_weights(program: Program) -> list[tuple[str, str, np.ndarray]]:
    """[(op type, op name, weight as float32)] for every conv/linear, in program order. A weight
    cast to another float type on the way (fp16 storage for an fp32 op) is followed back to the
    constant; a weight computed from the input is an error (such a program is not one of ours)."""
    producer = {out: op for op in program.compute_ops() for out in op.outputs}
    layers = []
    for op in program.compute_ops():
        param = WEIGHT_OPS.get(op.type)
        if param is None:
            continue
        names = op.inputs.get(param) or []
        if not names:
            raise ArtifactError(f"{program.source}: {op.type} {op.name!r} has no named weight input")
        name = names[0]
        while name not in program.consts and name in producer and producer[name].type == "cast":
            name = producer[name].inputs["x"][0]
        if name not in program.consts:
            raise ArtifactError(
                f"{program.source}: {op.type} {op.name!r} reads its weight from {name!r}, which is not a constant"
            )
        layers.append((op.type, op.name, np.asarray(program.consts[name], dtype=np.float32)))
    return layers
