"""PyTorch with an artifact's own weights: the second reference for weight-only compression.

Against the float model, a 4-bit palettized file loses about as much as one dropped activation
does (trained V2: correct 16.1 dB, activation dropped 15.4 dB), so no limit on that comparison
separates them. Against the same model running the weights the file stores, the correct file
differs only by its compute precision, and a graph error stands out (numbers:
docs/thresholds.md). The weights' own fidelity to the float model is reported beside it.

Pairing: each conv/linear weight the artifact stores goes to the nn.Conv2d/nn.Linear of the same
shape whose weight it resembles most (cosine, best pairs first). Program order alone is not
enough: the converter orders a hybrid's attention projections differently from the PyTorch
forward. Pairing by content cannot hide a bug: a weight placed in the wrong layer of the file
still runs in its own layer in the reference, so the outputs differ. The artifact stores a
conv's weight with what follows it per channel folded in (BatchNorm, a layer scale: per output
channel) and, for the first conv, 1/std (per input channel): both are divided out so the
PyTorch layers keep their own BatchNorm and layer scale and take normalized input."""

from __future__ import annotations

import copy
import math

import numpy as np

from ..errors import ArtifactError
from ..targets.base import StoredWeights
from .metrics import SQNR_CAP_DB

# Below this cosine a stored weight is not one of the model's layers: converters add convs of
# their own (coremltools turns RMSNorm's channel mean into a 1x1 conv of 1/C weights). A
# correct 2-bit palette keeps ~0.94 on Gaussian weights; a scrambled layer measures ~0 (and is
# reported as a model layer the file lacks), a sign-flipped one -1 (paired: its own layer).
MIN_PAIR_COSINE = 0.5


def _per_channel_gain(module) -> np.ndarray | None:
    """The per-output-channel factor a converter folds into the conv before `module`: a
    BatchNorm's scale, a layer scale's gamma; None for anything else."""
    import torch

    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
        scale = 1.0 / np.sqrt(module.running_var.detach().double().numpy() + module.eps)
        if module.weight is not None:
            scale = scale * module.weight.detach().double().numpy()
        return scale
    gamma = getattr(module, "gamma", None)
    if isinstance(gamma, torch.nn.Parameter) and gamma.ndim == 1 and not list(module.children()):
        return gamma.detach().double().numpy()  # LayerScale2d: x * gamma per channel
    return None


def _execution_order(module, input_shape):
    """(convs, linears in execution order, {conv: per-output-channel gain folded after it},
    the conv that reads the model input or None)."""
    import torch

    convs, linears, first = [], [], []
    gains: dict = {}
    tail: dict = {}  # the conv whose output a per-channel op may still fold into, and that output

    def on_layer(mod, args, out):
        (convs if isinstance(mod, torch.nn.Conv2d) else linears).append(mod)
        if args and args[0] is x and isinstance(mod, torch.nn.Conv2d):
            first.append(mod)
        tail.clear()
        if isinstance(mod, torch.nn.Conv2d):
            tail.update(out=out, conv=mod)

    def on_gain(mod, args, out):
        if not (args and tail and args[0] is tail["out"]):
            return
        conv, gain = tail["conv"], _per_channel_gain(mod)
        if gain.shape != (conv.out_channels,):
            tail.clear()
            return
        gains[conv] = gains.get(conv, 1.0) * gain
        activation = getattr(mod, "act", None)
        if activation is not None and not isinstance(activation, torch.nn.Identity):
            tail.clear()  # a BatchNorm with its activation: nothing after it folds into the conv
        else:
            tail["out"] = out

    hooks = []
    for m in module.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            hooks.append(m.register_forward_hook(on_layer))
        elif _per_channel_gain(m) is not None:
            hooks.append(m.register_forward_hook(on_gain))
    x = torch.zeros(input_shape)
    try:
        with torch.no_grad():
            module(x)
    finally:
        for h in hooks:
            h.remove()
    return convs, linears, gains, (first[0] if len(first) == 1 else None)


def _ratio_db(signal: float, noise: float) -> float:
    if noise == 0:
        return SQNR_CAP_DB
    return min(10.0 * math.log10(max(signal, 1e-300) / noise), SQNR_CAP_DB)


def _sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    return _ratio_db(float(np.sum(ref**2)), float(np.sum((test - ref) ** 2)))


def _fold(layer, gain, input_scale) -> np.ndarray:
    """The layer's weight as a converter stores it: `gain` per output channel, `input_scale`
    per input channel (the first conv only)."""
    w = layer.weight.detach().double().numpy()
    if gain is not None:
        w = w * np.asarray(gain).reshape(-1, *([1] * (w.ndim - 1)))
    if input_scale is not None:
        w = w * np.asarray(input_scale, np.float64).reshape(1, -1, 1, 1)
    return w


def _pair(stored: list[np.ndarray], folded: list[np.ndarray]) -> list[int]:
    """For each stored weight, the index of its layer (-1: none): same shape, |cosine| at least
    MIN_PAIR_COSINE, best pairs first."""
    scores = []
    for i, w in enumerate(stored):
        a = w.ravel().astype(np.float64)
        na = np.linalg.norm(a)
        for j, f in enumerate(folded):
            if f.shape == w.shape:
                b = f.ravel()
                denom = na * np.linalg.norm(b)
                cosine = abs(float(a @ b / denom)) if denom > 0 else 0.0  # a negated layer is still it
                if cosine >= MIN_PAIR_COSINE:
                    scores.append((cosine, -abs(i - j), i, j))
    scores.sort(reverse=True)  # best cosine first; ties go to the layer at the same position
    owner: dict[int, int] = {}
    taken: set[int] = set()
    for _score, _near, i, j in scores:
        if i not in owner and j not in taken:
            owner[i] = j
            taken.add(j)
    return [owner.get(i, -1) for i in range(len(stored))]


def module_with_stored_weights(module, stored: StoredWeights, input_shape) -> tuple[object, dict]:
    """A copy of `module` running the artifact's weights, and how far those weights are from
    the module's own: {"layers": [{module, op, sqnr_db}], "min_sqnr_db", "min_layer",
    "overall_sqnr_db", "file_only": [ops that are none of the model's layers], "model_only":
    [layers the file stores no weight for: they keep the model's own]}. ArtifactError when
    no layer pairs at all (the file is of another model)."""
    import torch

    model = copy.deepcopy(module).eval().float()
    convs, linears, gains, first = _execution_order(model, input_shape)
    names = {m: n for n, m in model.named_modules()}
    rows, file_only, model_only, signal, noise = [], [], [], 0.0, 0.0
    for kind, layers in (("conv", convs), ("linear", linears)):
        theirs = [(name, w) for k, name, w in stored.layers if k == kind]
        scales = [stored.input_scale if layer is first else None for layer in layers]
        folded = [_fold(layer, gains.get(layer), sc) for layer, sc in zip(layers, scales)]
        owners = _pair([w for _, w in theirs], folded)
        file_only += [name for (name, _), j in zip(theirs, owners) if j < 0]
        model_only += [names[layer] for j, layer in enumerate(layers) if j not in owners]
        for (op_name, weight), j in zip(theirs, owners):
            if j < 0:
                continue
            layer, own = layers[j], layers[j].weight.detach().double().numpy()
            w = weight.astype(np.float64)
            if scales[j] is not None:
                w = w / np.asarray(scales[j], np.float64).reshape(1, -1, 1, 1)
            if layer in gains:
                gain = np.asarray(gains[layer]).reshape(-1, *([1] * (w.ndim - 1)))
                w = np.where(np.abs(gain) > 1e-12, w / np.where(gain == 0, 1.0, gain), own)
            with torch.no_grad():
                layer.weight.copy_(torch.from_numpy(w).to(layer.weight.dtype))
            rows.append({"module": names[layer], "op": op_name, "sqnr_db": round(_sqnr_db(own, w), 2)})
            signal += float(np.sum(own**2))
            noise += float(np.sum((w - own) ** 2))
    if not rows:
        raise ArtifactError(
            "none of the file's conv/linear weights belongs to the model it names; "
            "it was not exported from this model, export it again"
        )
    worst = min(rows, key=lambda r: r["sqnr_db"])
    return model, {
        "layers": rows,
        "min_sqnr_db": worst["sqnr_db"],
        "min_layer": worst["module"],
        "overall_sqnr_db": round(_ratio_db(signal, noise), 2),
        "file_only": file_only,
        "model_only": model_only,
    }
