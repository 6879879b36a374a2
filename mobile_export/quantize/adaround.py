"""AdaRound: learn, layer by layer, whether each int8 weight rounds up or down (Nagel et al.,
"Up or Down? Adaptive Rounding for Post-Training Quantization", ICML 2020), on the
calibration images and the float model's outputs; no labels.

Nearest rounding minimizes each weight's own error, not the layer's output error. AdaRound
keeps the scales convert_pt2e chose and relaxes each weight's rounding to a soft choice
h in [0, 1] (rectified sigmoid), minimizing

    || act(conv(x_q, s * (floor(W / s) + h))) - act(conv_float(x)) ||^2 + lambda * sum(1 - |2h - 1|^beta)

where x_q is the layer's input in the quantized graph with the earlier layers already rounded
(the paper's asymmetric reconstruction: a layer also makes up for the error it is given) and
beta anneals from 20 to 2 so every h ends at 0 or 1. The result is written into the graph's
int8 weight tensors in place: the lowered program is the same graph with other integers, so
XNNPACK runs exactly what was learned.

Layers with fewer output samples on the calibration images than weights per output channel
(a classifier fed by 64 images) would fit the images rather than the layer; they keep nearest
rounding and are counted."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Sequence

from .graph_walk import attr, calls, steps, walk

# The paper's (and AIMET's) constants: rectified-sigmoid stretch, regularizer weight, beta
# schedule, and the share of iterations without the regularizer.
ZETA, GAMMA = 1.1, -0.1
REG_WEIGHT = 0.01
BETA_START, BETA_END = 20.0, 2.0
WARMUP = 0.2
LEARNING_RATE = 1e-2
BATCH_IMAGES = 8
#: Below this many input values per step a layer runs on one thread: its kernels are too small
#: for intra-op threads to pay, and on a busy machine their spin-waits made a 64 px V2 0.35 run
#: take minutes instead of 30 s.
ONE_THREAD_BELOW = 1_000_000

_GEMM = ("aten.conv2d.", "aten.linear.", "aten.conv1d.")
_ACTIVATIONS = ("aten.relu.", "aten.relu_.", "aten.hardtanh.", "aten.hardtanh_.")


@dataclass
class RoundingReport:
    layers: int  # int8 conv/linear layers whose rounding was learned
    kept_nearest: int  # too few samples for their weights: nearest rounding kept
    flipped: int  # weights rounded the other way than nearest
    weights: int  # weights in the learned layers
    seconds: float
    digest: str  # sha256 of every int8 weight in graph order: rebuilds must land on the same

    def to_dict(self) -> dict:
        return {
            "layers": self.layers,
            "kept_nearest": self.kept_nearest,
            "flipped_weights": self.flipped,
            "weights": self.weights,
            "seconds": round(self.seconds, 1),
            "digest": self.digest,
        }


def _int8_weight(node):
    """The dequantize node feeding `node`'s weight from a stored int8 tensor, or None."""
    if not calls(node, _GEMM) or len(node.args) < 2:
        return None
    dq = node.args[1]
    if not calls(dq, ("dequantize_per_channel", "dequantize_per_tensor")):
        return None
    if getattr(dq.args[0], "op", None) != "get_attr":
        return None
    return dq


def _activation(node):
    """The ReLU / clamp right after `node` (its only user), which the objective applies too:
    what the clamp removes needs no precision."""
    users = list(node.users)
    if len(users) == 1 and calls(users[0], _ACTIVATIONS):
        return users[0]
    return None


def _float_weight(float_graph, name: str):
    """The BN-folded float weight of the same-named conv/linear in the prepared graph (it goes
    through a weight observer there)."""
    node = next((n for n in float_graph.graph.nodes if n.name == name), None)
    if node is None:
        return None
    w = node.args[1]
    while getattr(w, "op", None) == "call_module":
        w = w.args[0]
    if getattr(w, "op", None) != "get_attr":
        return None
    return attr(float_graph, w.target).detach()


class _FloatTargets:
    """Each layer's float output (over all images), computed when asked for by walking the
    float graph alongside the quantized one: only the float graph's live values and the targets
    not yet taken are held, not every layer's output at once (V2 1.0 at 224 px, 64 images:
    4.5 GB before)."""

    def __init__(self, float_graph, inputs, recorded: dict):
        self._steps = steps(float_graph, inputs)
        self._recorded = recorded  # float node name -> layer name
        self._layers = set(recorded.values())
        self._ready: dict = {}

    def take(self, layer: str):
        """The layer's float output, or None when the float graph has no such node."""
        import torch

        while layer not in self._ready:
            step = next(self._steps, None)
            if step is None:
                return None
            node, env = step
            if self._recorded.get(node.name) in self._layers:
                self._ready[self._recorded[node.name]] = torch.cat(env[node])
        self._layers.discard(layer)
        return self._ready.pop(layer)

    def skip(self, layer: str) -> None:
        """The layer needs no target: do not hold its output."""
        self._layers.discard(layer)
        self._ready.pop(layer, None)


def dequantize_args(graph_module, dq):
    """(scale broadcast to the weight, quant_min, quant_max) of a weight dequantize."""
    import torch

    scale = dq.args[1]
    scale = attr(graph_module, scale.target) if getattr(scale, "op", None) == "get_attr" else scale
    scale = torch.as_tensor(scale, dtype=torch.float32)
    weight = attr(graph_module, dq.args[0].target)
    if scale.numel() > 1:
        axis = int(dq.args[3])
        shape = [1] * weight.dim()
        shape[axis] = -1
        scale = scale.reshape(shape)
        qmin, qmax = int(dq.args[4]), int(dq.args[5])
    else:
        qmin, qmax = int(dq.args[3]), int(dq.args[4])
    return scale, qmin, qmax


def int8_layers(graph_module) -> int:
    """How many conv/linear layers read stored int8 weights (the progress bar's length)."""
    return sum(1 for n in graph_module.graph.nodes if _int8_weight(n) is not None)


def learn_rounding(
    quantized,
    float_graph,
    inputs: Sequence,
    *,
    iterations: int,
    seed: int,
    progress: Callable[[int], None] = lambda _n: None,
) -> RoundingReport:
    """Learn the rounding of every int8 conv/linear weight of `quantized` (convert_pt2e output,
    same node names as the prepared `float_graph`) in place. Deterministic for a given seed,
    inputs and thread count. `progress(n)` is called once per finished layer."""
    import time

    import torch

    t0 = time.perf_counter()
    targets = {n.name: n for n in quantized.graph.nodes if _int8_weight(n) is not None}
    recorded = {}  # layer name -> the node whose float output is the target (the activation, if any)
    for name, node in targets.items():
        act = _activation(node)
        recorded[act.name if act is not None else name] = name
    float_out = _FloatTargets(float_graph, inputs, recorded)
    generator = torch.Generator().manual_seed(seed)
    totals = {"layers": 0, "kept": 0, "flipped": 0, "weights": 0}

    def on_node(node, values, env):
        if node.name not in targets:
            return None
        w_float = _float_weight(float_graph, node.name)
        if w_float is None:
            float_out.skip(node.name)
            return None
        dq = node.args[1]
        scale, qmin, qmax = dequantize_args(quantized, dq)
        x = torch.cat(env[node.args[0]])
        samples = values[0][0, 0].numel() * len(values) if values[0].dim() > 2 else len(values)
        fan_in = w_float[0].numel()
        act = _activation(node)
        target = float_out.take(node.name) if samples >= fan_in else None
        if target is None:
            float_out.skip(node.name)
            totals["kept"] += samples < fan_in
            progress(1)
            return None
        bias = env[node.args[2]][0] if len(node.args) > 2 and node.args[2] is not None else None
        rest = tuple(node.args[3:])
        with threads(1 if x[:BATCH_IMAGES].numel() < ONE_THREAD_BELOW else torch.get_num_threads()):
            ints = _optimize(
                node.target,
                act,
                x,
                target,
                w_float,
                bias,
                rest,
                scale,
                qmin,
                qmax,
                iterations,
                generator,
            )
        stored = attr(quantized, dq.args[0].target)
        nearest = torch.clamp(torch.round(w_float / scale), qmin, qmax).to(stored.dtype)
        totals["flipped"] += int((ints != nearest).sum())
        totals["weights"] += ints.numel()
        totals["layers"] += 1
        stored.copy_(ints)
        progress(1)
        w = ints.to(torch.float32) * scale
        with torch.no_grad():
            return [node.target(v, w, bias, *rest) for v in env[node.args[0]]]

    with torch.no_grad():
        walk(quantized, inputs, on_node)
    return RoundingReport(
        totals["layers"],
        totals["kept"],
        totals["flipped"],
        totals["weights"],
        time.perf_counter() - t0,
        weights_digest(quantized),
    )


def _optimize(op, act, x, target, w_float, bias, rest, scale, qmin, qmax, iterations, generator):
    """One layer's rounding: Adam on the soft rounding variables, then the hard choice."""
    import torch

    floor = torch.floor(w_float / scale)
    frac = (w_float / scale - floor).clamp(1e-4, 1 - 1e-4)
    # h(v) = clip(sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1) starts at the fractional part
    v = (-torch.log((ZETA - GAMMA) / (frac - GAMMA) - 1)).requires_grad_(True)
    optimizer = torch.optim.Adam([v], lr=LEARNING_RATE)
    apply_act = (lambda y: act.target(y, *act.args[1:])) if act is not None else (lambda y: y)
    count = x.shape[0]
    batch = min(BATCH_IMAGES, count)
    warm = int(WARMUP * iterations)

    def soft():
        return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)

    with torch.enable_grad():
        for step in range(iterations):
            pick = torch.randperm(count, generator=generator)[:batch]
            h = soft()
            w = torch.clamp(floor + h, qmin, qmax) * scale
            y = apply_act(op(x[pick], w, bias, *rest))
            loss = (y - target[pick]).pow(2).sum(1).mean()
            if step >= warm:
                progress_share = (step - warm) / max(1, iterations - warm)
                beta = BETA_END + (BETA_START - BETA_END) * (1 - progress_share)
                loss = loss + REG_WEIGHT * (1 - (2 * h - 1).abs().pow(beta)).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        up = (soft() >= 0.5).to(floor.dtype)
        return torch.clamp(floor + up, qmin, qmax).to(torch.int8)


class threads:
    """torch's intra-op thread count for a block, restored after."""

    def __init__(self, count: int):
        self.count = count

    def __enter__(self):
        import torch

        self.saved = torch.get_num_threads()
        torch.set_num_threads(self.count)

    def __exit__(self, *_exc):
        import torch

        torch.set_num_threads(self.saved)


def weights_digest(graph_module) -> str:
    """sha256 over the int8 weights of every quantized conv/linear, in graph order."""
    digest = hashlib.sha256()
    for node in graph_module.graph.nodes:
        dq = _int8_weight(node)
        if dq is not None:
            digest.update(attr(graph_module, dq.args[0].target).detach().contiguous().numpy().tobytes())
    return digest.hexdigest()
