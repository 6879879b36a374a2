"""int8 post-training static quantization for XNNPACK through PT2E (torchao):
export -> prepare_pt2e(XNNPACKQuantizer) -> calibrate on real images -> convert_pt2e.

The knobs that matter for accuracy are parameters of `QuantRecipe`, so they can be tuned
on trained models without touching the exporter: the activation observer and the layers
kept in fp32 (often the first conv, squeeze-excite gates, the classifier)."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np

from ..errors import ExportError

# Activation observers by name. "histogram" searches the clipping range that minimizes the
# L2 quantization error (XNNPACKQuantizer's default); "minmax" takes the raw extremes;
# "moving_average" smooths the extremes over calibration batches.
OBSERVERS = ("histogram", "minmax", "moving_average")


@dataclass(frozen=True)
class QuantRecipe:
    observer: str = "histogram"
    per_channel: bool = True  # per-output-channel weight scales (the XNNPACK sweet spot)
    fp32_modules: tuple[str, ...] = ()  # module names (prefixes or globs) of the model kept in float
    bias_correction: bool = False  # layer-by-layer empirical bias correction on the calibration images

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fp32_modules"] = list(self.fp32_modules)
        return d

    @classmethod
    def from_dict(cls, d: dict | None) -> "QuantRecipe":
        d = dict(d or {})
        return cls(observer=d.get("observer", "histogram"), per_channel=bool(d.get("per_channel", True)),
                   fp32_modules=tuple(d.get("fp32_modules", ())),
                   bias_correction=bool(d.get("bias_correction", False)))


@dataclass
class QuantizedModel:
    graph_module: object  # torch.fx.GraphModule after convert_pt2e: runs in PyTorch, q/dq explicit
    output_scale: float | None  # scale of the int8 output (None when the output stays float)
    output_zero_point: int | None
    recipe: QuantRecipe
    float_graph_module: object = None  # the prepared graph (BN folded, observers pass-through):
    # same node names as graph_module, float arithmetic; the per-layer report compares the two
    calibration: dict = field(default_factory=dict)
    kept_fp32_nodes: int = 0


def quantization_config(recipe: QuantRecipe):
    """XNNPACK's symmetric int8 config with the recipe's activation observer swapped in."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config
    from torchao.quantization.pt2e import HistogramObserver, MinMaxObserver, MovingAverageMinMaxObserver

    if recipe.observer not in OBSERVERS:
        raise ExportError(f"unknown activation observer {recipe.observer!r}; choose one of {', '.join(OBSERVERS)}")
    config = get_symmetric_quantization_config(is_per_channel=recipe.per_channel)
    ctor = {"histogram": HistogramObserver, "minmax": MinMaxObserver,
            "moving_average": MovingAverageMinMaxObserver}[recipe.observer]
    act = dataclasses.replace(config.input_activation, observer_or_fake_quant_ctr=ctor.with_args(eps=2**-12))
    return dataclasses.replace(config, input_activation=act, output_activation=act)


def _module_filter(prefixes: Sequence[str]) -> Callable:
    """Node filter for XNNPACKQuantizer: False for nodes inside any excluded module.
    Matches the module path with or without the wrapper's leading attribute name; a prefix
    may be a glob ("*.se" = every squeeze-excite gate) so a family of modules is one entry."""
    from fnmatch import fnmatchcase

    def inside(path: str, prefix: str) -> bool:
        return fnmatchcase(path, prefix) or fnmatchcase(path, prefix + ".*")

    def keep(node) -> bool:
        stack = node.meta.get("nn_module_stack") or {}
        for path, _type in stack.values():
            path = str(path)
            for prefix in prefixes:
                if any(inside(p, prefix) for p in (path, path.split(".", 1)[-1])):
                    return False
        return True

    return keep


def quantize_pt2e(
    module,
    example_input,
    calibration_inputs: Sequence[np.ndarray],
    recipe: QuantRecipe = QuantRecipe(),
    log: Callable[[str], None] = lambda _m: None,
) -> QuantizedModel:
    """Quantize `module` (fp32, eval) with observers calibrated on `calibration_inputs`.
    Deterministic: the same module and inputs give the same scales and bytes."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from .calibration import to_tensor

    if not calibration_inputs:
        raise ExportError("int8 quantization needs at least one calibration image; pass --calibration DIR")
    quantizer = XNNPACKQuantizer().set_global(quantization_config(recipe))
    if recipe.fp32_modules:
        quantizer.set_filter_function(_module_filter(recipe.fp32_modules))
    try:
        with torch.no_grad():
            captured = torch.export.export(module.eval(), (example_input,), strict=False).module()
            prepared = prepare_pt2e(captured, quantizer)
            for x in calibration_inputs:
                prepared(to_tensor(x))
            float_graph = copy.deepcopy(prepared)
            converted = convert_pt2e(prepared)
            if recipe.bias_correction:
                from .bias_correction import correct_biases

                corrected = correct_biases(converted, copy.deepcopy(float_graph), [to_tensor(x) for x in calibration_inputs])
                log(f"int8: bias correction on {corrected} layer(s)")
    except ExportError:
        raise
    except Exception as exc:  # torch.export / torchao raise many types; name the stage
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise ExportError(f"int8 quantization failed ({exc.__class__.__name__}: {first[:200]}); try --quantize none or report the model") from None
    scale, zero_point = output_qparams(converted)
    kept = _count_float_compute(converted) if recipe.fp32_modules else 0
    log(f"int8: calibrated on {len(calibration_inputs)} image(s), observer {recipe.observer}, output scale {scale}")
    return QuantizedModel(converted, scale, zero_point, recipe, float_graph_module=float_graph, kept_fp32_nodes=kept)


_DEQUANT = ("dequantize_per_tensor",)


def output_qparams(graph_module) -> tuple[float | None, int | None]:
    """Scale and zero point of the dequantize that feeds the graph output, if any."""
    out = next(n for n in graph_module.graph.nodes if n.op == "output")
    first = out.args[0]
    while isinstance(first, (tuple, list)):
        first = first[0]
    if getattr(first, "op", None) == "call_function" and any(k in str(first.target) for k in _DEQUANT):
        scale, zero_point = first.args[1], first.args[2]
        scale = _constant(graph_module, scale)
        zero_point = _constant(graph_module, zero_point)
        return (float(scale), int(zero_point)) if scale is not None else (None, None)
    return None, None


def _constant(graph_module, value):
    if isinstance(value, (int, float)):
        return value
    if getattr(value, "op", None) == "get_attr":
        tensor = graph_module
        for part in value.target.split("."):
            tensor = getattr(tensor, part)
        return tensor.item()
    return None


_COMPUTE = ("conv", "linear")


def _count_float_compute(graph_module) -> int:
    """Convs/linears whose weight is not a dequantized int8 tensor: the layers kept fp32."""
    count = 0
    for node in graph_module.graph.nodes:
        if node.op == "call_function" and any(k in str(node.target) for k in _COMPUTE) and len(node.args) > 1:
            weight = node.args[1]
            if not (getattr(weight, "op", None) == "call_function" and "dequantize" in str(weight.target)):
                count += 1
    return count

