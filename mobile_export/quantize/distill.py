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


def _fake_quant_learned_scale(x, log_scale, zero_point, qmin, qmax, _dtype):
    """quantize_per_tensor then dequantize with a learned scale (LSQ, Esser et al. 2020): the
    rounding passes gradients straight through, the clamp stops them, and the scale gets the
    gradient of the rounding error. The forward pass computes what the int8 ops compute with
    the same float32 scale: 1/scale in double, as the decomposed op's Python float does."""
    import torch

    scale = log_scale.exp()
    stored = scale.detach().float().double()  # the float32 scale the int8 graph stores
    inverse = (1.0 / stored).float() + (1.0 / scale - (1.0 / scale).detach())
    v = x * inverse
    q = torch.clamp(v + (torch.round(v) - v).detach() + zero_point, qmin, qmax)
    return (q - zero_point) * scale


def _pass_through(x, *_args, **_kwargs):
    return x


def _fake_quant_weight(w, scales, zero_points, axis, qmin, qmax, _dtype):
    shape = [1] * w.dim()
    shape[axis] = -1
    return _round_through(w, scales.reshape(shape), zero_points.reshape(shape), qmin, qmax)


def activation_groups(graph_module) -> list[list[str]]:
    """The activation quantize nodes (names) that must keep one scale: a quantize whose input op
    reads a dequantize of an equal (scale, zero point) is the quantizer's shared spec (pooling,
    reshapes, concatenation: XNNPACK runs them on the int8 values as they are)."""
    parent: dict[str, str] = {}

    def find(name):
        while parent[name] != name:
            name = parent[name]
        return name

    for node in graph_module.graph.nodes:
        if calls(node, ("quantize_per_tensor",)) and not calls(node, ("dequantize",)):
            parent[node.name] = node.name
            source = node.args[0]
            for arg in getattr(source, "all_input_nodes", ()):
                if calls(arg, ("dequantize_per_tensor",)) and arg.args[0].name in parent:
                    upstream = arg.args[0]
                    if tuple(upstream.args[1:3]) == tuple(node.args[1:3]):
                        parent[find(node.name)] = find(upstream.name)
    groups: dict[str, list[str]] = {}
    for name in parent:
        groups.setdefault(find(name), []).append(name)
    return list(groups.values())


def trainable_twin(converted, learn_scales: bool = False):
    """A copy of the converted graph that trains: int8 weights as float parameters (their
    dequantized values), float biases as parameters, quantize -> rounding with a straight-through
    gradient, dequantize -> identity. With `learn_scales`, each group of activation quantize
    nodes that share a scale gets it as a parameter (its log). Returns (twin, [(weight dequantize
    node name, weight param name)], [bias targets], {scale param name: [quantize node names]})."""
    import math

    import torch

    twin = copy.deepcopy(converted)
    weights = []
    biases = []
    scales = {}
    graph = twin.graph
    if learn_scales:
        nodes = {n.name: n for n in graph.nodes}
        for group in activation_groups(twin):
            name = f"distill_scale_{len(scales)}"
            first = nodes[group[0]]
            twin.register_parameter(
                name, torch.nn.Parameter(torch.tensor(math.log(float(first.args[1])), dtype=torch.float64))
            )
            scales[name] = group
            for q_name in group:
                q = nodes[q_name]
                with graph.inserting_before(q):
                    param = graph.get_attr(name)
                q.args = (q.args[0], param, *q.args[2:])
                q.target = _fake_quant_learned_scale
    for node in list(graph.nodes):
        if calls(node, ("dequantize_per_channel",)) and node.args[0].op == "get_attr":
            stored = node.args[0]
            channel_scales = attr(twin, node.args[1].target)
            zps = attr(twin, node.args[2].target)
            axis = int(node.args[3])
            shape = [1] * attr(twin, stored.target).dim()
            shape[axis] = -1
            start = (
                attr(twin, stored.target).to(torch.float32) - zps.reshape(shape)
            ) * channel_scales.reshape(shape)
            name = f"distill_weight_{len(weights)}"
            twin.register_parameter(name, torch.nn.Parameter(start))
            with graph.inserting_before(node):
                param = graph.get_attr(name)
            node.args = (param, *node.args[1:])
            node.target = _fake_quant_weight
            weights.append((node.name, name))
        elif node.target is _fake_quant_learned_scale:
            continue
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
    return twin, weights, biases, scales


def distill(
    converted,
    teacher,
    images: Sequence,
    *,
    epochs: int = DEFAULT_EPOCHS,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    scale_learning_rate: float = 0.0,
    seed: int = 0,
    progress: Callable[[int], None] = lambda _n: None,
) -> DistillReport:
    """Fine-tune `converted` (convert_pt2e output) in place so its logits follow `teacher`'s
    on `images` (arrays or tensors, batch 1, as the graph takes them). Deterministic for a given
    seed, images and thread count. `progress(n)` counts images. A `scale_learning_rate` > 0
    also learns the activation scales (their logs, at that rate) and writes them back."""
    import numpy as np
    import torch

    from .calibration import to_tensor

    t0 = time.perf_counter()
    with torch.no_grad():
        targets = [teacher(to_tensor(x)).detach() for x in images]
    twin, weights, biases, scales = trainable_twin(converted, learn_scales=scale_learning_rate > 0)
    params = [twin.get_parameter(name) for _t, name in weights]
    bias_tensors = []
    for target in biases:
        tensor = attr(twin, target)
        tensor.requires_grad_(True)
        bias_tensors.append(tensor)
    groups = [{"params": params + bias_tensors, "lr": learning_rate}]
    if scales:
        groups.append({"params": [twin.get_parameter(n) for n in scales], "lr": scale_learning_rate})
    generator = torch.Generator().manual_seed(seed)
    small = int(np.prod(np.shape(images[0]))) < ONE_THREAD_BELOW if len(images) else True
    with threads(1 if small else torch.get_num_threads()):
        losses, steps = _train(twin, groups, images, targets, epochs, generator, progress)
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
        for name, group in scales.items():
            _set_scale(nodes, group, float(twin.get_parameter(name).exp().float()))
    if scales:
        converted.recompile()
    return DistillReport(len(images), epochs, steps, losses[0], losses[-1], time.perf_counter() - t0)


def _set_scale(nodes: dict, group: list[str], scale: float) -> None:
    """Give the quantize nodes of `group` and the dequantize nodes reading them `scale`."""
    for q_name in group:
        q = nodes[q_name]
        q.args = (q.args[0], scale, *q.args[2:])
        for user in list(q.users):
            if calls(user, ("dequantize_per_tensor",)):
                user.args = (user.args[0], scale, *user.args[2:])


def _train(twin, param_groups, images, targets, epochs, generator, progress):
    """Adam on a cosine schedule, mean squared logit error; returns (loss per epoch, steps)."""
    import math

    import torch

    optimizer = torch.optim.Adam(param_groups)
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
