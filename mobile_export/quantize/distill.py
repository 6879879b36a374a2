"""Quantization-aware fine-tuning by distillation, on the graph that gets lowered.

PT2E's own QAT flow (`prepare_qat_pt2e`) trains a fake-quantized model whose BatchNorm is folded
and whose observers are re-placed only at `convert_pt2e`; measured here it lost 0.8-0.9 points
of agreement between the trained fake-quant model and the converted one (98.43% -> 97.55% on
MobileNetV2 0.35, docs/int8_quality.md round 3). This module trains the converted graph itself:
every int8 weight becomes a float parameter seen through its fixed per-channel scale, every
activation quantize/dequantize pair becomes the same rounding with a straight-through gradient,
and the scales stay the ones calibration chose (observers frozen from the start, BatchNorm
folded before training, as XNNPACK runs it). After training the weights are rounded back into
the int8 tensors: the forward pass that was trained is, operation for operation, the one the
converted graph computes, so there is no fake-quant/convert gap to lose.

The target is the float model's logits on the user's unlabelled images (the teacher); no labels."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from .adaround import dequantize_args, threads
from .graph_walk import attr, calls

DEFAULT_EPOCHS = 4
DEFAULT_LEARNING_RATE = 1e-4
BATCH_IMAGES = 16  # gradients accumulated image by image (graphs are exported at batch 1)
ONE_THREAD_BELOW = 100_000  # input values: smaller images train faster on one thread (adaround.py)


@dataclass
class DistillReport:
    images: int
    epochs: int
    steps: int
    first_loss: float  # mean squared logit error in the first epoch ...
    last_loss: float  # ... and in the last
    seconds: float

    def to_dict(self) -> dict:
        return {
            "images": self.images,
            "epochs": self.epochs,
            "steps": self.steps,
            "first_epoch_loss": round(self.first_loss, 6),
            "last_epoch_loss": round(self.last_loss, 6),
            "seconds": round(self.seconds, 1),
        }


def _round_through(x, scale, zero_point, qmin, qmax):
    """What quantize_per_tensor/channel then dequantize compute (the same expressions as
    torch's quantized_decomposed ops), with the identity as gradient: the straight-through
    estimator."""
    import torch

    q = torch.clamp(torch.round(x * (1.0 / scale)) + zero_point, qmin, qmax)
    return x + ((q - zero_point) * scale - x).detach()


def _fake_quant_per_tensor(x, scale, zero_point, qmin, qmax, _dtype):
    return _round_through(x, scale, zero_point, qmin, qmax)


def _pass_through(x, *_args, **_kwargs):
    return x


def _fake_quant_weight(w, scales, zero_points, axis, qmin, qmax, _dtype):
    shape = [1] * w.dim()
    shape[axis] = -1
    return _round_through(w, scales.reshape(shape), zero_points.reshape(shape), qmin, qmax)


def trainable_twin(converted):
    """A copy of the converted graph that trains: int8 weights as float parameters (their
    dequantized values), float biases as parameters, quantize -> rounding with a straight-through
    gradient, dequantize -> identity. Returns (twin, [(weight dequantize node name, weight
    param name)], [bias targets])."""
    import torch

    twin = copy.deepcopy(converted)
    weights = []
    biases = []
    graph = twin.graph
    for node in list(graph.nodes):
        if calls(node, ("dequantize_per_channel",)) and node.args[0].op == "get_attr":
            stored = node.args[0]
            scales = attr(twin, node.args[1].target)
            zps = attr(twin, node.args[2].target)
            axis = int(node.args[3])
            shape = [1] * attr(twin, stored.target).dim()
            shape[axis] = -1
            start = (attr(twin, stored.target).to(torch.float32) - zps.reshape(shape)) * scales.reshape(shape)
            name = f"distill_weight_{len(weights)}"
            twin.register_parameter(name, torch.nn.Parameter(start))
            with graph.inserting_before(node):
                param = graph.get_attr(name)
            node.args = (param, *node.args[1:])
            node.target = _fake_quant_weight
            weights.append((node.name, name))
        elif calls(node, ("quantize_per_tensor",)) and not calls(node, ("dequantize",)):
            node.target = _fake_quant_per_tensor
        elif calls(node, ("dequantize_per_tensor",)) and node.args[0].op == "call_function":
            node.target = _pass_through  # (int8 constants folded at convert keep their dequantize)
    for node in graph.nodes:
        if node.op == "call_function" and any(k in str(node.target) for k in ("conv2d", "linear")):
            b = node.args[2] if len(node.args) > 2 else None
            if getattr(b, "op", None) == "get_attr":
                tensor = attr(twin, b.target)
                if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
                    biases.append(b.target)
    graph.eliminate_dead_code()
    twin.recompile()
    return twin, weights, biases


def distill(
    converted,
    teacher,
    images: Sequence,
    *,
    epochs: int = DEFAULT_EPOCHS,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    seed: int = 0,
    progress: Callable[[int], None] = lambda _n: None,
) -> DistillReport:
    """Fine-tune `converted` (convert_pt2e output) in place so its logits follow `teacher`'s
    on `images` (arrays or tensors, batch 1, as the graph takes them). Deterministic for a given
    seed, images and thread count. `progress(n)` counts images."""
    import numpy as np
    import torch

    from .calibration import to_tensor

    t0 = time.perf_counter()
    with torch.no_grad():
        targets = [teacher(to_tensor(x)).detach() for x in images]
    twin, weights, biases = trainable_twin(converted)
    params = [twin.get_parameter(name) for _t, name in weights]
    bias_tensors = []
    for target in biases:
        tensor = attr(twin, target)
        tensor.requires_grad_(True)
        bias_tensors.append(tensor)
    generator = torch.Generator().manual_seed(seed)
    small = int(np.prod(np.shape(images[0]))) < ONE_THREAD_BELOW if len(images) else True
    with threads(1 if small else torch.get_num_threads()):
        losses, steps = _train(
            twin, params + bias_tensors, images, targets, epochs, learning_rate, generator, progress
        )
    with torch.no_grad():
        nodes = {n.name: n for n in converted.graph.nodes}
        for dq_name, name in weights:  # the same dequantize node name in both graphs
            dq = nodes[dq_name]
            stored = attr(converted, dq.args[0].target)
            scale, qmin, qmax = dequantize_args(converted, dq)
            w = twin.get_parameter(name)
            stored.copy_(torch.clamp(torch.round(w * (1.0 / scale)), qmin, qmax).to(stored.dtype))
        for target, tensor in zip(biases, bias_tensors):
            attr(converted, target).copy_(tensor.detach())
    return DistillReport(len(images), epochs, steps, losses[0], losses[-1], time.perf_counter() - t0)


def _train(twin, params, images, targets, epochs, learning_rate, generator, progress):
    """Adam on a cosine schedule, mean squared logit error; returns (loss per epoch, steps)."""
    import math

    import torch

    optimizer = torch.optim.Adam(params, lr=learning_rate)
    total_steps = epochs * math.ceil(len(images) / BATCH_IMAGES)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    )
    with torch.enable_grad():  # callers quantize under no_grad
        return _epochs(twin, optimizer, schedule, images, targets, epochs, generator, progress)


def _epochs(twin, optimizer, schedule, images, targets, epochs, generator, progress):
    """The passes over the images; gradients accumulated image by image over a batch."""
    import torch

    from .calibration import to_tensor

    losses = []
    steps = 0
    for _epoch in range(epochs):
        order = torch.randperm(len(images), generator=generator).tolist()
        running = 0.0
        for start in range(0, len(order), BATCH_IMAGES):
            picks = order[start : start + BATCH_IMAGES]
            optimizer.zero_grad()
            for i in picks:
                loss = (twin(to_tensor(images[i])) - targets[i]).pow(2).mean() / len(picks)
                loss.backward()
                running += float(loss.detach()) * len(picks)
            optimizer.step()
            schedule.step()
            steps += 1
            progress(len(picks))
        losses.append(running / len(images))
    return losses, steps
