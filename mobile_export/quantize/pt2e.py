"""int8 post-training static quantization for XNNPACK through PT2E (torchao):
export -> prepare_pt2e(XNNPACKQuantizer) -> calibrate on real images -> convert_pt2e.

The knobs that matter for accuracy are parameters of `QuantRecipe`, so they can be tuned
on trained models without touching the exporter: the activation observer and the layers
kept in fp32 (often the first conv, squeeze-excite gates, the classifier)."""

from __future__ import annotations

import copy
import dataclasses
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np

from ..errors import ExportError, first_line
from .sensitivity import module_inside

# Activation observers by name. "histogram" searches the clipping range that minimizes the
# L2 quantization error (XNNPACKQuantizer's default); "minmax" takes the raw extremes;
# "moving_average" smooths the extremes over calibration batches.
OBSERVERS = ("histogram", "minmax", "moving_average")

#: Smallest activation scale an observer may choose. XNNPACKQuantizer's default, 2**-12,
#: rounds every tensor whose values stay below 127 * 2**-12 = 0.031 to a coarse grid, and a
#: tensor below half a step to zero: MobileNetV5's layer scale (timm initializes it at 1e-5)
#: makes block outputs of ~4e-5, so the whole int8 network collapsed to 0 dB. 2**-24 keeps such
#: tensors alive; XNNPACK accepts it (scales must be normal floats, requantization ratios below 256).
MIN_ACTIVATION_SCALE = 2**-24

#: Weight rounding: "nearest" (convert_pt2e's) or "adaround" (learned, adaround.py).
ROUNDINGS = ("nearest", "adaround")
DEFAULT_ROUNDING_ITERATIONS = 500
DEFAULT_DISTILL_LEARNING_RATE = 1e-4

#: Activation quantization. "static": every activation on one int8 grid chosen at calibration,
#: int8 from op to op (XNNPACK qs8). "dynamic": each conv/linear input quantized to int8 per image
#: at run time from its own range, int8 weights, float between (XNNPACK qd8-f32-qc8w; depthwise
#: convs and the ops between convs run in fp32). Dynamic needs no calibration images and keeps
#: the low-margin V2 0.35 photo model at 99.41% agreement where static stops at 98.1% (docs/int8_quality.md).
ACTIVATIONS = ("static", "dynamic")


@dataclass(frozen=True)
class QuantRecipe:
    observer: str = "histogram"
    per_channel: bool = True  # per-output-channel weight scales (the XNNPACK sweet spot)
    fp32_modules: tuple[str, ...] = ()  # module names (prefixes or globs) of the model kept in float
    bias_correction: bool = False  # layer-by-layer empirical bias correction on the calibration images
    rounding: str = "nearest"  # "adaround": each weight's rounding learned on the calibration images
    rounding_iterations: int = DEFAULT_ROUNDING_ITERATIONS  # AdaRound steps per layer
    distill_epochs: int = 0  # > 0: fine-tune the int8 graph on unlabelled images (distill.py)
    distill_learning_rate: float = DEFAULT_DISTILL_LEARNING_RATE
    seed: int = 0  # AdaRound's and distillation's sampling
    fp32_auto: float | None = None  # percent of weights a sensitivity sweep may keep in float
    # (sensitivity.py); quantize_pt2e resolves it into fp32_modules
    float_input: bool = True  # the input normalization (FLOAT_INPUT_MODULE) stays in float;
    # manifests from before it did rebuild with False (executorch.quantized_reference)
    activations: str = "static"  # ACTIVATIONS

    def __post_init__(self):
        if self.rounding not in ROUNDINGS:
            raise ExportError(
                f"unknown weight rounding {self.rounding!r}; choose one of {', '.join(ROUNDINGS)}"
            )
        if self.rounding_iterations < 1:
            raise ExportError(
                f"AdaRound needs at least 1 iteration per layer, not {self.rounding_iterations}"
            )
        if self.distill_epochs < 0 or not 0 < self.distill_learning_rate < 1:
            raise ExportError(
                f"distillation needs epochs >= 0 and a learning rate in (0, 1), not "
                f"{self.distill_epochs} / {self.distill_learning_rate}"
            )
        if self.fp32_auto is not None and not 0 < self.fp32_auto <= 100:
            raise ExportError(
                f"--keep-fp32 auto:PERCENT takes a share of the weights in (0, 100], not {self.fp32_auto}"
            )
        if self.activations not in ACTIVATIONS:
            raise ExportError(
                f"unknown activation quantization {self.activations!r}; choose one of {', '.join(ACTIVATIONS)}"
            )
        if self.dynamic:
            calibrated = [
                name
                for name, used in (
                    ("--recipe adaround", self.rounding != "nearest"),
                    ("--bias-correction", self.bias_correction),
                    ("--qat", self.distill_epochs > 0),
                    ("--keep-fp32 auto", self.fp32_auto is not None),
                )
                if used
            ]
            if calibrated:
                raise ExportError(
                    f"--recipe dynamic quantizes activations per image at run time and takes no "
                    f"calibration-based option; drop {', '.join(calibrated)}"
                )

    @property
    def dynamic(self) -> bool:
        return self.activations == "dynamic"

    @property
    def learned(self) -> bool:
        """Whether the int8 weights are learned (not only calibrated): they must be rebuilt
        bit for bit, which the manifest's weights digest checks."""
        return self.rounding != "nearest" or self.distill_epochs > 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fp32_modules"] = list(self.fp32_modules)
        # manifests of calibrated-only files stay as they were before learned recipes existed
        if self.rounding == "nearest":
            del d["rounding"], d["rounding_iterations"]
        if self.distill_epochs == 0:
            del d["distill_epochs"], d["distill_learning_rate"]
        if not self.learned:
            del d["seed"]
        if self.fp32_auto is None:
            del d["fp32_auto"]
        if not self.dynamic:  # manifests of static files stay as they were before dynamic existed
            del d["activations"]
        return d

    @classmethod
    def from_dict(cls, d: dict | None) -> QuantRecipe:
        d = dict(d or {})
        return cls(
            observer=d.get("observer", "histogram"),
            per_channel=bool(d.get("per_channel", True)),
            fp32_modules=tuple(d.get("fp32_modules", ())),
            bias_correction=bool(d.get("bias_correction", False)),
            rounding=d.get("rounding", "nearest"),
            rounding_iterations=int(d.get("rounding_iterations", DEFAULT_ROUNDING_ITERATIONS)),
            distill_epochs=int(d.get("distill_epochs", 0)),
            distill_learning_rate=float(d.get("distill_learning_rate", DEFAULT_DISTILL_LEARNING_RATE)),
            seed=int(d.get("seed", 0)),
            fp32_auto=None if d.get("fp32_auto") is None else float(d["fp32_auto"]),
            float_input=bool(d.get("float_input", True)),
            activations=d.get("activations", "static"),
        )


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
    learned: dict = field(default_factory=dict)  # what AdaRound / distillation did, and the
    # sha256 of the int8 weights they produced (rebuilds must land on the same)
    sensitivity: dict = field(default_factory=dict)  # --keep-fp32 auto: the sweep and its choice
    reference_module: object = None  # graph_module with XNNPACK's exact int8 means (xnnpack_exact.py):
    # what the runtime is compared against; graph_module itself is what gets lowered

    @property
    def reference(self):
        """The quantized PyTorch model as XNNPACK computes it (falls back to graph_module)."""
        return self.reference_module if self.reference_module is not None else self.graph_module


def quantization_config(recipe: QuantRecipe):
    """XNNPACK's symmetric int8 config with the recipe's activation observer swapped in (static),
    or its dynamic config (activations quantized per image at run time, no observer)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config
    from torchao.quantization.pt2e import HistogramObserver, MinMaxObserver, MovingAverageMinMaxObserver

    if recipe.dynamic:  # XNNPACK picks each range at run time without a floor; so does the reference
        from torchao.quantization.pt2e import PlaceholderObserver

        config = get_symmetric_quantization_config(is_per_channel=recipe.per_channel, is_dynamic=True)
        act = dataclasses.replace(
            config.input_activation,
            observer_or_fake_quant_ctr=PlaceholderObserver.with_args(eps=MIN_ACTIVATION_SCALE),
        )
        return dataclasses.replace(config, input_activation=act)
    if recipe.observer not in OBSERVERS:
        raise ExportError(
            f"unknown activation observer {recipe.observer!r}; choose one of {', '.join(OBSERVERS)}"
        )
    config = get_symmetric_quantization_config(is_per_channel=recipe.per_channel)
    ctor = {
        "histogram": HistogramObserver,
        "minmax": MinMaxObserver,
        "moving_average": MovingAverageMinMaxObserver,
    }[recipe.observer]
    act = dataclasses.replace(
        config.input_activation, observer_or_fake_quant_ctr=ctor.with_args(eps=MIN_ACTIVATION_SCALE)
    )
    return dataclasses.replace(config, input_activation=act, output_activation=act)


#: A module of this name stays in float in every recipe: the input normalization the .pte
#: wraps around the model (executorch.lowering.with_normalization). In int8 it was three
#: quantizations (the image, x * 1/std, + shift) with 1/std and the shift rounded to int8 as
#: well; in float the image is quantized once, at the first conv. Quantized PyTorch vs float,
#: 1,020 held-out crops: V2 0.35 photos 25.71 -> 26.48 dB and 25.90 -> 26.45 dB (calibration
#: seeds 0, 1), V3-Small 26.02 -> 26.34 dB.
FLOAT_INPUT_MODULE = "input_normalization"


def quantizer_for(recipe: QuantRecipe):
    """XNNPACKQuantizer with the recipe's config, the fp32 module filter, and one pattern
    it lacks: conv/linear followed by a clamp (ReLU6 = hardtanh(0, 6)).

    XNNPACKQuantizer fuses only relu into a conv's output; a hardtanh shares its input's
    quantization, so the int8 grid spans the conv's raw range, negatives included, and
    MobileNetV1/V2 (ReLU6 after nearly every conv) lose up to 4x of their resolution.
    Quantizing after the clamp is what XNNPACK runs anyway: its FuseActivationPass folds
    the clamp into the conv's output min/max. On the trained V2 0.35 photo model this moved
    quantized-PyTorch logits SQNR from 21.7-23.7 dB to 26.0-26.9 dB (3 calibration seeds)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer

    class _Quantizer(XNNPACKQuantizer):
        def annotate(self, model):
            if recipe.dynamic:
                annotate_dynamic_conv_relu(model, self.global_config, self.filter_fn)
            else:
                annotate_conv_clamp(model, self.global_config, self.filter_fn)
            return super().annotate(model)

    quantizer = _Quantizer().set_global(quantization_config(recipe))
    in_float = (*recipe.fp32_modules, *((FLOAT_INPUT_MODULE,) if recipe.float_input else ()))
    if in_float:
        quantizer.set_filter_function(_module_filter(in_float))
    return quantizer


def annotate_conv_clamp(graph_module, config, filter_fn=None) -> int:
    """Annotate conv/linear -> hardtanh pairs like XNNPACKQuantizer's conv -> relu: int8
    inputs and weights at the conv, the output quantized after the clamp. Returns how many."""
    import torch
    from executorch.backends.xnnpack.quantizer import xnnpack_quantizer_utils as xq
    from torch.fx import Node
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    clamps = (torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default)
    producers = (torch.ops.aten.conv2d.default, torch.ops.aten.conv1d.default, torch.ops.aten.linear.default)
    count = 0
    for clamp in graph_module.graph.nodes:
        if clamp.op != "call_function" or clamp.target not in clamps:
            continue
        conv = clamp.args[0]
        if not (
            isinstance(conv, Node)
            and conv.op == "call_function"
            and conv.target in producers
            and len(conv.users) == 1
            and isinstance(conv.args[1], Node)
        ):
            continue
        if not _annotate_conv_inputs(conv, config, filter_fn, also=[clamp]):
            continue
        clamp.meta[xq.Q_ANNOTATION_KEY] = QuantizationAnnotation(
            output_qspec=xq.get_output_act_qspec(config), _annotated=True
        )
        count += 1
    return count


def _annotate_conv_inputs(conv, config, filter_fn, also=()) -> bool:
    """Give a conv/linear int8 input, weight and bias specs, unless it (or a node in `also`,
    annotated with it) is annotated already or filtered out. Returns whether it did."""
    from executorch.backends.xnnpack.quantizer import xnnpack_quantizer_utils as xq
    from torch.fx import Node
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    weight = conv.args[1]
    bias = conv.args[2] if len(conv.args) > 2 and isinstance(conv.args[2], Node) else None
    partition = [*also, conv, weight] + ([bias] if bias is not None else [])
    if xq._is_annotated(partition) or (filter_fn is not None and not all(filter_fn(n) for n in partition)):
        return False
    inputs = {conv.args[0]: xq.get_input_act_qspec(config), weight: xq.get_weight_qspec(config)}
    if bias is not None:
        inputs[bias] = xq.get_bias_qspec(config)
    conv.meta[xq.Q_ANNOTATION_KEY] = QuantizationAnnotation(input_qspec_map=inputs, _annotated=True)
    xq._mark_nodes_as_annotated(partition)
    return True


def annotate_dynamic_conv_relu(graph_module, config, filter_fn=None) -> int:
    """Annotate the conv of each conv -> relu pair for dynamic quantization (int8 input
    quantized at run time, int8 weight; the relu runs on the float output). Returns how many.

    XNNPACKQuantizer has no dynamic conv -> relu pattern and its dynamic conv pattern skips a
    conv whose one user is a relu, so with the dynamic config every conv followed by ReLU
    stayed fp32: MobileNetV4 Conv-S's .pte was 8.4 MB instead of ~3 MB, V3-Small's early
    blocks and squeeze-excite convs were float. Depthwise convs stay float (XNNPACK has no
    dynamic depthwise kernel), as in XNNPACKQuantizer's own dynamic conv pattern."""
    from executorch.backends.xnnpack.quantizer import xnnpack_quantizer_utils as xq
    from executorch.backends.xnnpack.utils.utils import is_depthwise_conv
    from torch.fx import Node

    count = 0
    for relu in graph_module.graph.nodes:
        if not xq.is_relu_node(relu):
            continue
        conv = relu.args[0]
        if not (isinstance(conv, Node) and xq._is_conv_node(conv) and len(conv.users) == 1):
            continue
        shape = getattr(conv.args[1].meta.get("val"), "shape", None)
        if (
            shape is None
            or len(shape) != 4
            or is_depthwise_conv(shape, conv.args[6] if len(conv.args) > 6 else 1)
        ):
            continue
        count += _annotate_conv_inputs(conv, config, filter_fn)
    return count


def unmatched_modules(module, patterns: Sequence[str]) -> list[str]:
    """The fp32_modules entries that name no submodule of `module` (typos fail early)."""
    names = [name for name, _ in module.named_modules() if name]
    return [p for p in patterns if not any(module_inside(n, p) for n in names)]


def _module_filter(prefixes: Sequence[str]) -> Callable:
    """Node filter for XNNPACKQuantizer: False for nodes inside any excluded module.
    Matches the module path with or without the wrapper's leading attribute name; a prefix
    may be a glob ("*.se" = every squeeze-excite gate) so a family of modules is one entry."""

    def keep(node) -> bool:
        stack = node.meta.get("nn_module_stack") or {}
        for path, _type in stack.values():
            path = str(path)
            for prefix in prefixes:
                if any(module_inside(p, prefix) for p in (path, path.split(".", 1)[-1])):
                    return False
        return True

    return keep


def quantize_pt2e(
    module,
    example_input,
    calibration_inputs: Sequence[np.ndarray],
    recipe: QuantRecipe = QuantRecipe(),
    log: Callable[[str], None] = lambda _m: None,
    distill_inputs: Sequence[np.ndarray] | None = None,
) -> QuantizedModel:
    """Quantize `module` (fp32, eval) with observers calibrated on `calibration_inputs`; with
    a learned recipe, AdaRound on the calibration images and/or distillation from `module` on
    `distill_inputs` follow. Deterministic: the same module, inputs and thread count give the
    same scales and bytes."""
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from .calibration import to_tensor
    from .xnnpack_exact import exact_means, snap_biases

    if recipe.dynamic:  # nothing to calibrate: one pass through the observers, weights only
        calibration_inputs = [example_input.detach().numpy()]
    if not calibration_inputs:
        raise ExportError("int8 quantization needs at least one calibration image; pass --calibration DIR")
    if recipe.distill_epochs and not distill_inputs:
        raise ExportError("distillation needs a folder of unlabelled images; pass --qat DIR")
    sensitivity = {}
    if recipe.fp32_auto is not None:
        recipe, sensitivity = _keep_fp32_auto(module, example_input, calibration_inputs, recipe, log)
    quantizer = quantizer_for(recipe)
    try:
        with torch.no_grad():
            # A copy: the exported graph shares the module's parameters, and snapping, AdaRound
            # and distillation write into the graph's tensors. On the module itself they would
            # move the float model's classifier bias, the reference every later check uses.
            float_copy = copy.deepcopy(module).eval()
            captured = torch.export.export(float_copy, (example_input,), strict=False).module()
            prepared = prepare_pt2e(captured, quantizer)
            for x in calibration_inputs:
                prepared(to_tensor(x))
            float_graph = copy.deepcopy(prepared)
            converted = convert_pt2e(prepared)
            learned = {}
            if recipe.rounding == "adaround":
                learned["rounding"] = _learn_rounding(converted, float_graph, calibration_inputs, recipe, log)
            if recipe.distill_epochs:
                learned["distillation"] = _distill(converted, module, distill_inputs, recipe, log)
            if recipe.bias_correction:
                from .bias_correction import correct_biases

                corrected = correct_biases(
                    converted, copy.deepcopy(float_graph), [to_tensor(x) for x in calibration_inputs]
                )
                log(f"int8: bias correction on {corrected} layer(s)")
            # The graph adds each bias as XNNPACK stores it (int32 on input x weight scale), so
            # the reference and the runtime add the same bias; the lowered program is unchanged.
            # Dynamic convs keep a float bias (qd8-f32-qc8w adds it in fp32).
            if not recipe.dynamic:
                snap_biases(converted)
            if recipe.learned:
                from .adaround import weights_digest

                learned["weights_sha256"] = weights_digest(converted)
            reference, _means = exact_means(converted)
    except ExportError:
        raise
    except Exception as exc:  # torch.export / torchao raise many types; name the stage
        raise ExportError(
            f"int8 quantization failed ({first_line(exc)}); try --quantize none or report the model"
        ) from None
    scale, zero_point = output_qparams(converted)
    kept = _count_float_compute(converted) if recipe.fp32_modules else 0
    if recipe.fp32_modules and kept == 0:
        raise ExportError(
            f"fp32 modules {', '.join(recipe.fp32_modules)} match no conv or linear layer; "
            "name modules as in the model's state dict (e.g. conv_stem, blocks.0, *.se)"
        )
    if recipe.dynamic:
        log("int8: dynamic activations (quantized per image at run time), int8 weights, float output")
    else:
        log(
            f"int8: calibrated on {len(calibration_inputs)} image(s), observer {recipe.observer}, output scale {scale}"
        )
    return QuantizedModel(
        converted,
        scale,
        zero_point,
        recipe,
        float_graph_module=float_graph,
        kept_fp32_nodes=kept,
        reference_module=reference,
        learned=learned,
        sensitivity=sensitivity,
    )


@contextmanager
def _progress(total: int, desc: str, unit: str):
    """An update(n) callable drawing a tqdm bar on stderr when it is a terminal."""
    import sys

    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a dependency, but a missing bar must not stop an export
        yield lambda _n: None
        return
    bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=None, leave=False)
    try:
        yield bar.update
    finally:
        bar.close()


def _learn_rounding(converted, float_graph, calibration_inputs, recipe: QuantRecipe, log) -> dict:
    from .adaround import int8_layers, learn_rounding
    from .calibration import to_tensor

    with _progress(int8_layers(converted), "adaround", "layer") as progress:
        report = learn_rounding(
            converted,
            float_graph,
            [to_tensor(x) for x in calibration_inputs],
            iterations=recipe.rounding_iterations,
            seed=recipe.seed,
            progress=progress,
        )
    log(
        f"int8: AdaRound learned {report.layers} layer(s) ({report.flipped} of {report.weights} weights "
        f"rounded the other way than nearest, {report.kept_nearest} kept nearest) in {report.seconds:.0f}s"
    )
    return report.to_dict()


def _keep_fp32_auto(module, example_input, calibration_inputs, recipe: QuantRecipe, log):
    """Resolve `fp32_auto` into module names by a sensitivity sweep (sensitivity.py)."""
    from .calibration import to_tensor
    from .sensitivity import sweep, units_to_measure

    def plain(candidate: QuantRecipe) -> QuantizedModel:
        return quantize_pt2e(module, example_input, calibration_inputs, candidate)

    images = [to_tensor(x) for x in calibration_inputs]
    units = units_to_measure(module, recipe)
    with _progress(len(units) + 2, "fp32 sensitivity", "quantization") as progress:
        resolved, report = sweep(module, units, plain, recipe, images, recipe.fp32_auto, progress)
    kept = ", ".join(report.chosen) or "nothing"
    log(
        f"int8: sensitivity sweep over {len(report.units)} unit(s) in {report.seconds:.0f}s keeps {kept} in fp32 "
        f"({100 * report.chosen_weights / max(report.total_weights, 1):.1f}% of weights, budget "
        f"{report.budget_percent:g}%): logits SQNR {report.base_sqnr_db:.2f} -> {report.chosen_sqnr_db:.2f} dB "
        "on the calibration images"
    )
    return resolved, report.to_dict()


def _distill(converted, teacher, images, recipe: QuantRecipe, log) -> dict:
    from .distill import distill

    with _progress(recipe.distill_epochs * len(images), "distilling", "img") as progress:
        report = distill(
            converted,
            teacher,
            images,
            epochs=recipe.distill_epochs,
            learning_rate=recipe.distill_learning_rate,
            seed=recipe.seed,
            progress=progress,
        )
    log(
        f"int8: distilled on {report.images} image(s) x {report.epochs} epoch(s) in {report.seconds:.0f}s, "
        f"logit MSE {report.first_loss:.4g} -> {report.last_loss:.4g}"
    )
    return report.to_dict()


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
