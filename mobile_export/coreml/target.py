"""Core ML target: an ML Program `.mlpackage` for iOS (Neural Engine), with compression.

The graph that is converted is the model itself plus, straight-line:
  [subtract mean (tensor input)] -> model, std folded into the first conv -> [softmax]
- Image input (default): `ct.ImageType(RGB, scale=1/255, bias=-mean)` turns pixels into x - mean;
  1/std is folded into the first convolution's weights per input channel (a per-channel scale
  list crashes coremltools, #2461). Exact: zero padding of (x - mean) is zero padding of the
  normalized input. If the input does not go straight into one convolution, 1/std stays an
  explicit multiply in the model.
- Classifiers end in a softmax and a `classify` op (labels + probabilities), which Vision turns
  into `VNClassificationObservation`s; `classifier=False` gives raw logits; feature extractors
  (spec.output == "features") a plain tensor.

MobileNetV3 fp16 pitfalls on the Neural Engine, and what this file does about them:
- fp32 BatchNorm epsilon beside fp16 parameters (coremltools #2470): the converter folds every
  BatchNorm that follows a convolution into it (conv -> BN -> act is how every MobileNet block
  is built), so no `batch_norm` op with an epsilon is left; `pitfalls()` fails the export if a
  `batch_norm` directly after a `conv` survives, and the tests check V3 has no `batch_norm` at all.
- Linear followed by hardswish drifts on the ANE unless done as a 1x1 conv on a 4-D tensor: our
  V3 head is pool -> 1x1 conv -> hardswish, and the only `linear` left is the classifier, which
  feeds the softmax; `pitfalls()` fails the export if any `linear` feeds a hardswish/hardsigmoid.
- The SE broadcast multiply is slow on the ANE (#657): left as the architecture defines it (a
  (1, C, 1, 1) gate times the (1, C, H, W) features); its speed can only be measured on a Mac.

Reproducible bytes: coremltools writes the conversion date into the metadata, serializes
protobuf maps in hash order, gives Manifest.json random UUIDs and adds an ExecuTorch debug
file; `_make_reproducible` removes the date and the debug file, serializes deterministically
and derives the UUIDs from the item paths.

run(): on macOS with Core ML's predict, Core ML; elsewhere the Linux ML Program executor
(mobile_export.coreml.mil) reading the saved package. It returns the LOGITS (the softmax's input,
read from the executor) for classifiers, the features otherwise; see `output_quantity`."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import sys
import uuid
from pathlib import Path

import numpy as np

from ..errors import ArtifactError, ExportError, UsageError
from ..manifest import ArtifactEntry
from ..targets.base import ExportOptions, OpInfo, PerOpValues, StoredWeights, Target
from . import compress as cq
from .quiet import quiet as _quiet
from .spec import (
    PACKAGE_MANIFEST,
    SPEC_FILE,
    WEIGHTS_FILE,
    argument_names,
    blob_files,
    load_spec,
    op_types,
    operations,
    opset,
    producers,
)

__all__ = ["CoreMLTarget", "LABEL_NAME", "PROBS_NAME", "load_spec", "op_types", "pitfalls", "softmax_input"]

PRECISIONS = ("fp16", "fp32")
DEFAULT_PRECISION = "fp16"  # what the Neural Engine runs
INPUT_NAMES = {"image": "image", "tensor": "input"}
LOGITS_NAME = "logits"
FEATURES_NAME = "features"
LABEL_NAME = "classLabel"
PROBS_NAME = "classLabel_probs"
AUTHOR = "mobile-export"

_DATE_KEY = "com.github.apple.coremltools.conversion_date"
_DEBUG_FILE = "executorch_debug_handle_mapping.json"
_UUID_NAMESPACE = uuid.UUID("6b1f0a43-6f25-4d7a-9c55-3d0b9d0c1e77")  # any fixed namespace

# Hardswish / hardsigmoid as coremltools lowers them; a `linear` feeding one is the V3 pitfall.
_HARD_ACTIVATIONS = {"thresholded_relu", "sigmoid_hard"}


class CoreMLTarget(Target):
    name = "coreml"
    suffix = ".mlpackage"
    description = "Core ML ML Program .mlpackage (iOS)"

    # --- options ---------------------------------------------------------------------

    def variant_tag(self, options: ExportOptions) -> str:
        mode = cq.MODES.get(options.compress)
        parts = [str(options.precision or DEFAULT_PRECISION), mode.tag if mode else options.compress]
        if options.input_kind == "tensor":
            parts.append("tensor")
        if not options.classifier:
            parts.append("logits")
        if not options.normalize_in_model:
            parts.append("raw")
        return "_".join(p for p in parts if p)

    def validate(self, built, options: ExportOptions) -> None:
        precision = str(options.precision or DEFAULT_PRECISION)
        if precision not in PRECISIONS:
            raise UsageError(
                f"Core ML precision {precision!r} is not supported; choose one of: {', '.join(PRECISIONS)}"
            )
        cq.deployment_target(options.compress, options.deployment_target)  # raises with what works
        if options.input_kind not in INPUT_NAMES:
            raise UsageError(
                f"Core ML input {options.input_kind!r} is not supported; choose one of: {', '.join(INPUT_NAMES)}"
            )
        if options.input_kind == "image" and not options.normalize_in_model:
            raise UsageError(
                "an image input cannot leave normalization to the app (Core ML hands the model pixels); "
                "drop --normalize-outside or add --input tensor"
            )
        if options.compress == "w8a8" and not _executor_available():
            raise UsageError(
                "--compress w8a8 calibrates activations by running the model, which on Linux needs the ML Program "
                "executor (mobile_export.coreml.mil) that is not available here; use --compress int8"
            )

    # --- export ----------------------------------------------------------------------

    def export(self, built, options: ExportOptions, dest: Path, log) -> dict:
        precision = str(options.precision or DEFAULT_PRECISION)
        mode = cq.get_mode(options.compress)
        ios = cq.deployment_target(options.compress, options.deployment_target)
        plan = _Plan(built, options)
        wrapper, conv = _prepare(built, plan)
        exported = _export(wrapper, built)
        if conv is not None and not _input_feeds_only(exported, wrapper, conv):
            wrapper, conv = _prepare(built, plan, fold=False)  # keep 1/std as an explicit multiply
            exported = _export(wrapper, built)
        folded = conv is not None
        log(
            f"coreml: converting ({precision}, iOS{ios}, {plan.input_kind} input, std "
            f"{'folded into the first conv' if folded else 'as an in-model multiply'})"
        )
        mlmodel = _convert(exported, built, plan, precision, ios)
        stats, calib, choice, fp16 = None, None, None, None
        if mode.needs_calibration:
            stats, calib, fp16 = _activation_stats(mlmodel, built, options, plan, ios, dest, log)
        if mode.data_aware:
            choice, calib = _palette_bits(mlmodel, built, options, plan, dest, log)
        if mode.name != "none":
            log(f"coreml: compressing weights ({mode.name})")
            with _quiet():
                mlmodel = cq.compress(
                    mlmodel,
                    mode.name,
                    ios,
                    stats,
                    bits=choice.bits if choice else None,
                    fp16_activations=frozenset(fp16.names) if fp16 else frozenset(),
                )
        _describe(mlmodel, built, plan, precision, mode, ios)
        with _quiet():
            mlmodel.save(str(dest))
        _make_reproducible(dest)
        spec = load_spec(dest)
        problems = pitfalls(spec)
        if problems:
            raise ExportError(
                f"{built.spec.name}: the Core ML graph has a known Neural Engine pitfall ({problems[0]}); "
                "report this model, it needs a 1x1-conv head"
            )
        ops = op_types(spec)
        quant = {"mode": mode.name, "weights": mode.weights}
        if mode.activations:
            quant["activations"] = mode.activations
        if mode.palettizes:
            quant["palette_groups"] = list(cq.PALETTE_GROUPS)
        if choice is not None:
            quant["size_budget"] = options.size_budget
            quant["palette_bits"] = choice.record()
        if calib is not None:
            quant["calibration"] = calib
        if fp16 is not None:
            quant["activations"] += (
                f"; {len(fp16.names)} of {fp16.quantized} tensors left fp16 where int8 rounding cost most"
            )
            quant["fp16_activations"] = fp16.record()
        quant["guarded_passes_removed"] = list(cq.UNSAFE_PASSES)
        return {
            "target": self.name,
            "format": "mlpackage",
            "precision": "mixed" if mode.activations else precision,
            "quantization": quant,
            "input": plan.input_record(built),
            "output": plan.output_record(built),
            "coreml": {
                "deployment_target": f"iOS{ios}",
                "compute_precision": precision,
                "opset": opset(spec),
                "std_folded_into_first_conv": folded,
                "files": {
                    rel: (dest / rel).stat().st_size
                    for rel in (SPEC_FILE, WEIGHTS_FILE)
                    if (dest / rel).exists()
                },
                "ops": ops,
                "run_returns": "logits (the softmax input)" if plan.classifier else plan.output_kind,
            },
        }

    # --- reading ---------------------------------------------------------------------

    def check_file(self, artifact: Path) -> None:
        artifact = Path(artifact)
        if not artifact.is_dir():
            raise ArtifactError(f"{artifact.name}: not an .mlpackage folder; export it again")
        for rel in (PACKAGE_MANIFEST, SPEC_FILE):
            if not (artifact / rel).is_file():
                raise ArtifactError(
                    f"{artifact.name}: {rel} is missing; the package is incomplete, export it again"
                )
        try:
            json.loads((artifact / PACKAGE_MANIFEST).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ArtifactError(
                f"{artifact.name}: {PACKAGE_MANIFEST} is not valid JSON ({exc.__class__.__name__}); export it again"
            ) from None
        spec = load_spec(artifact)
        if spec.WhichOneof("Type") != "mlProgram":
            raise ArtifactError(
                f"{artifact.name}: not an ML Program (found {spec.WhichOneof('Type')}); export it again with mobile-export"
            )
        # A damaged model.mlmodel can still parse as a protobuf with parts missing.
        function = spec.mlProgram.functions.get("main")
        if (
            not spec.description.input
            or not spec.description.output
            or function is None
            or function.opset not in function.block_specializations
        ):
            raise ArtifactError(
                f"{artifact.name}: {SPEC_FILE} lacks its inputs, outputs or main function; the file is damaged, export it again"
            )
        blobs = blob_files(spec)
        for name in blobs:
            rel = name.replace("@model_path/", "Data/com.apple.CoreML/")
            if not (artifact / rel).is_file():
                raise ArtifactError(
                    f"{artifact.name}: weights file {rel} is missing; the package is incomplete, export it again"
                )

    def output_quantity(self, entry: dict) -> str:
        """What `run` returns for this artifact: "logits" (classifiers and logits artifacts on
        Linux), "log_probabilities" (classifiers under Core ML's own predict on macOS, which only
        exposes probabilities) or "features". The verifier compares the reference accordingly."""
        kind = ArtifactEntry.from_dict(entry).output_kind
        if kind == "features":
            return "features"
        if kind in ("classifier", "probabilities") and _use_coreml_predict():
            return "log_probabilities"
        return "logits"

    def per_op_values(self, artifact: Path, entry: dict, built, inputs, quantized, sink, log) -> PerOpValues:
        """Executor values of every conv/linear vs the PyTorch model's layers on the verification
        images (coreml/mil/per_layer.py), each row's loss against the row before it."""
        from .mil import load_program
        from .mil.per_layer import layer_values

        artifact = Path(artifact)
        program = load_program(artifact)
        info = program.inputs[0]
        in_model = ArtifactEntry.from_dict(entry).normalized_in_model
        raw = inputs.raw if in_model else inputs.normalized
        scale = 255.0 if info.kind == "image" else 1.0
        feeds = [{info.name: np.asarray(x, np.float32) * scale} for x in raw]
        ops = layer_values(program, built.module, feeds, inputs.normalized, sink)
        return PerOpValues(
            ops=ops,
            title=f"{artifact.name}: per-layer error ({len(feeds)} real images, Linux executor)",
            source="Linux ML Program executor vs the PyTorch layers, conv/linear by conv/linear",
            whole=OpInfo("output", "mlpackage vs PyTorch", "(whole program, Linux ML Program executor)"),
        )

    def stored_weights(self, artifact: Path, entry: dict, manifest: dict) -> StoredWeights | None:
        """For weight-only compression (int8 weights, palettes): every conv/linear weight as the
        package stores it, decompressed by the executor's loader (coremltools' own decompress)."""
        typed = ArtifactEntry.from_dict(entry)
        mode = typed.quantization_mode
        if mode not in cq.MODES or not cq.MODES[mode].changes_only_weights:
            return None
        from .mil import load_program
        from .mil.weights import anchor_weights

        folded = bool(typed.coreml and typed.coreml.get("std_folded_into_first_conv"))
        std = manifest["preprocess"]["std"]
        return StoredWeights(
            layers=anchor_weights(load_program(artifact)),
            input_scale=tuple(1.0 / float(s) for s in std) if folded else None,
            how=f"the PyTorch model with the {mode} weights this package stores (decompressed), "
            "BatchNorm and 1/std folds undone",
        )

    def benchmark(self, artifact: Path, entry: dict, threads: int, runs: int, warmup: int, log) -> dict:
        """Size, op counts and output precisions of the package: what Linux can tell (Core ML
        runs only on Apple platforms)."""
        from ..fsutil import size_bytes

        artifact = Path(artifact)
        self.check_file(artifact)
        spec = load_spec(artifact)
        with _quiet():
            from coremltools.proto import MIL_pb2
        ops: dict[str, int] = {}
        dtypes: dict[str, int] = {}
        for op in operations(spec):
            ops[op.type] = ops.get(op.type, 0) + 1
            for out in op.outputs:
                code = out.type.tensorType.dataType
                name = MIL_pb2.DataType.Name(code) if code else "unknown"
                dtypes[name] = dtypes.get(name, 0) + 1
        weight = artifact / WEIGHTS_FILE
        return {
            "bytes": size_bytes(artifact),
            "weight_bin_bytes": weight.stat().st_size if weight.exists() else 0,
            "opset": opset(spec),
            "ops": dict(sorted(ops.items(), key=lambda kv: -kv[1])),
            "output_dtypes": dtypes,
            "latency": "Core ML runs only on macOS; measure there (Xcode performance report)",
        }

    def run(self, artifact: Path, entry: dict, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return self.open_runner(artifact, entry)(inputs)

    def open_runner(self, artifact: Path, entry: dict, threads: int = 1):
        """`run` with the package loaded once: a callable inputs -> outputs (eval feeds it
        batch after batch)."""
        artifact = Path(artifact)
        self.check_file(artifact)
        spec = load_spec(artifact)
        input_name = spec.description.input[0].name
        is_image = spec.description.input[0].type.WhichOneof("Type") == "imageType"
        if _use_coreml_predict():
            return lambda inputs: _run_coreml(artifact, spec, input_name, is_image, inputs)
        from . import mil

        program = mil.load_program(artifact)
        wanted = softmax_input(spec) or spec.description.output[0].name

        def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
            outputs = []
            for x in inputs:
                feed = np.asarray(x, np.float32) * (255.0 if is_image else 1.0)
                result = program.run({input_name: feed}, capture={wanted})
                outputs.append(np.asarray(result[wanted], np.float32).reshape(x.shape[0], -1))
            return outputs

        return run


# --- what to build ---------------------------------------------------------------------


class _Plan:
    """The input/output contract of one export, decided once from the options."""

    def __init__(self, built, options: ExportOptions):
        self.input_kind = str(options.input_kind)
        self.input_name = INPUT_NAMES[options.input_kind]
        self.normalize = options.normalize_in_model
        self.features = built.spec.output == "features"
        self.classifier = options.classifier and not self.features
        self.output_kind = "features" if self.features else ("classifier" if self.classifier else "logits")
        self.labels = list(built.labels) if built.labels else [f"class_{i}" for i in range(built.num_classes)]
        pre = built.preprocess
        self.mean = tuple(float(m) for m in pre.mean)
        self.std = tuple(float(s) for s in pre.std)

    def input_record(self, built) -> dict:
        image = self.input_kind == "image"
        if image or self.normalize:
            low, high = (0.0, 255.0) if image else (0.0, 1.0)
        else:
            low = min((0.0 - m) / s for m, s in zip(self.mean, self.std))
            high = max((1.0 - m) / s for m, s in zip(self.mean, self.std))
        return {
            "name": self.input_name,
            "kind": self.input_kind,
            "shape": list(built.input_shape),
            "layout": "NCHW",
            "dtype": "uint8" if image else "float32",
            "color": "RGB",
            "value_range": [low, high],
            "normalized_in_model": self.normalize,
        }

    def output_record(self, built) -> dict:
        if self.features:
            return {"name": FEATURES_NAME, "kind": "features", "shape": None, "dtype": "float32"}
        if self.classifier:
            return {
                "name": PROBS_NAME,
                "kind": "classifier",
                "label": LABEL_NAME,
                "shape": [1, built.num_classes],
                "dtype": "float32",
            }
        return {"name": LOGITS_NAME, "kind": "logits", "shape": [1, built.num_classes], "dtype": "float32"}


def _prepare(built, plan: _Plan, fold: bool = True):
    """A copy of the model wrapped for conversion; returns (wrapper, the conv that absorbed
    1/std or None)."""
    import torch
    from torch import nn

    class Offset(nn.Module):
        def __init__(self, shift, scale):
            super().__init__()
            self.register_buffer("shift", torch.tensor(shift, dtype=torch.float32).view(1, -1, 1, 1))
            self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32).view(1, -1, 1, 1))

        def forward(self, x):
            return (x - self.shift) * self.scale

    class Subtract(Offset):
        def forward(self, x):
            return x - self.shift

    class Multiply(Offset):
        def forward(self, x):
            return x * self.scale

    class ForCoreML(nn.Module):
        """normalize -> body -> probabilities; each optional part is an nn.Identity."""

        def __init__(self, normalize, body, probabilities):
            super().__init__()
            self.normalize, self.body, self.probabilities = normalize, body, probabilities

        def forward(self, x):
            return self.probabilities(self.body(self.normalize(x)))

    body = copy.deepcopy(built.module).eval().float()
    conv = None
    inv_std = [1.0 / s for s in plan.std]
    if not plan.normalize:
        normalize = nn.Identity()
    else:
        conv = _first_conv(body, built.input_shape) if fold else None
        if conv is not None:
            with torch.no_grad():
                conv.weight.mul_(torch.tensor(inv_std, dtype=conv.weight.dtype).view(1, -1, 1, 1))
        if plan.input_kind == "image":  # the ImageType bias subtracts the mean
            normalize = nn.Identity() if conv is not None else Multiply([0.0] * 3, inv_std)
        else:
            normalize = Subtract(plan.mean, [1.0] * 3) if conv is not None else Offset(plan.mean, inv_std)
    probabilities = nn.Softmax(dim=1) if plan.classifier else nn.Identity()
    return ForCoreML(normalize, body, probabilities).eval(), conv


def _first_conv(module, input_shape):
    """The convolution the model input goes into first, if it can absorb 1/std exactly
    (3 input channels, no groups, zero padding) and nothing else reads the input at the module
    level; `_input_feeds_only` confirms on the exported graph."""
    import torch
    from torch import nn

    seen = []

    def hook(mod, args):
        seen.append((mod, args[0]))

    handles = [m.register_forward_pre_hook(hook) for m in module.modules() if isinstance(m, nn.Conv2d)]
    x = torch.zeros(input_shape)
    try:
        with torch.no_grad():
            module(x)
    finally:
        for h in handles:
            h.remove()
    consumers = [mod for mod, arg in seen if arg is x]
    if len(consumers) != 1:
        return None
    conv = consumers[0]
    if conv.in_channels != 3 or conv.groups != 1 or conv.padding_mode != "zeros":
        return None
    return conv


def _input_feeds_only(exported, wrapper, conv) -> bool:
    """True when, in the exported graph, the input (after the mean subtraction, if any) is
    used in exactly one place: a convolution with `conv`'s weight. Anything else would see
    an input without 1/std."""
    names = {id(p): n for n, p in wrapper.named_parameters()}
    param_of = dict(exported.graph_signature.inputs_to_parameters)
    user_inputs = [
        n
        for n in exported.graph.nodes
        if n.op == "placeholder" and n.name in exported.graph_signature.user_inputs
    ]
    if len(user_inputs) != 1:
        return False
    node = user_inputs[0]
    users = list(node.users)
    if type(wrapper.normalize).__name__ == "Subtract" and len(users) == 1 and "sub" in str(users[0].target):
        users = list(users[0].users)
    if len(users) != 1 or "conv" not in str(users[0].target):
        return False
    weight_arg = users[0].args[1]
    return param_of.get(getattr(weight_arg, "name", None)) == names.get(id(conv.weight))


def _export(wrapper, built):
    import torch

    example = torch.zeros(built.input_shape)
    try:
        with _quiet(), torch.no_grad():
            return torch.export.export(wrapper, (example,)).run_decompositions({})
    except Exception as exc:
        raise ExportError(
            f"{built.spec.name}: torch.export failed before Core ML conversion "
            f"({exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); report this model"
        ) from None


def _convert(exported, built, plan: _Plan, precision: str, ios: int):
    with _quiet():
        import coremltools as ct

        if plan.input_kind == "image":
            inputs = [
                ct.ImageType(
                    name=plan.input_name,
                    shape=built.input_shape,
                    scale=1.0 / 255.0,
                    bias=[-m for m in plan.mean] if plan.normalize else [0.0, 0.0, 0.0],
                    color_layout=ct.colorlayout.RGB,
                )
            ]
        else:
            inputs = [ct.TensorType(name=plan.input_name, shape=built.input_shape, dtype=np.float32)]
        kwargs = {}
        if plan.classifier:
            kwargs["classifier_config"] = ct.ClassifierConfig(plan.labels, predicted_feature_name=LABEL_NAME)
        else:
            kwargs["outputs"] = [
                ct.TensorType(name=FEATURES_NAME if plan.features else LOGITS_NAME, dtype=np.float32)
            ]
        from coremltools.converters.mil.converter import _reset_conversion_state

        from .converter_fixes import apply as fix_converter

        fix_converter()  # tanh GELU kept as tanh GELU (see converter_fixes)
        _reset_conversion_state()  # op-name counters: a failed conversion must not rename the next one
        try:
            return ct.convert(
                exported,
                inputs=inputs,
                convert_to="mlprogram",
                compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
                minimum_deployment_target=cq.ct_target(ios),
                pass_pipeline=cq.guarded_pipeline(),
                skip_model_load=True,
                **kwargs,
            )
        except Exception as exc:
            raise ExportError(
                f"{built.spec.name}: coremltools could not convert the model ({exc.__class__.__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); try --precision fp32 or report this model"
            ) from None


def _activation_stats(mlmodel, built, options: ExportOptions, plan: _Plan, ios: int, dest: Path, log):
    """The range of every activation over all calibration images, by running the float program
    saved beside `dest` through the Linux executor; returns (ranges, manifest record, and with
    `options.fp16_activations` the tensors to keep in fp16 (coreml.fp16_activations), else None).

    Which way of choosing ranges (mil.RANGE_METHODS) is measured, not assumed, by two-fold
    cross-validation: each is fitted on one half of the calibration images, the program
    quantized with it runs on the other half (and the other way round), and the one whose
    logits stay closest to the float program's is fitted again on all images. Clipping at the
    least squared error wins on four trained MobileNets by 0.5-3.2 dB; on V4 Conv-S it loses
    1-3 dB to plain min/max, and scoring on the images it was fitted to did not show it
    (docs/palettes.md)."""
    from . import mil
    from .sensitivity import noise_db

    calib, samples = _calibration_samples(built, options, plan, log)
    halves = (samples[0::2], samples[1::2])
    folds = [halves, halves[::-1]] if len(samples) > 1 else [(samples, samples)]
    signal, noise = 0.0, {}
    with _float_program(mlmodel, dest, ".calib.") as (program, tmp):
        log(
            f"coreml: choosing activation ranges ({' or '.join(mil.RANGE_METHODS)}) on {len(samples)} "
            "calibration image(s): fitted on one half, measured on the other, both ways"
        )
        for fit, check in folds:
            reference = _logits(program, check)
            signal += float(np.sum(reference**2))
            for method, stats in mil.candidate_ranges(program, fit).items():
                package = Path(tmp) / f"{method}.mlpackage"
                with _quiet():
                    cq.compress(mlmodel, "w8a8", ios, stats).save(str(package))
                error = reference - _logits(mil.load_program(package), check)
                noise[method] = noise.get(method, 0.0) + float(np.sum(error**2))
                shutil.rmtree(package)
        measured = {m: round(noise_db(n / max(signal, 1e-30)), 2) for m, n in noise.items()}
        best = max(measured, key=measured.get)  # a tie keeps the first (the default) method
        said = ", ".join(f"{m} {db:.1f} dB" for m, db in measured.items())
        log(
            f"coreml: {best} ranges kept (logits SQNR vs float: {said}); calibrating on all {len(samples)} image(s)"
        )
        stats = mil.activation_stats(program, samples, best)
        fp16 = None
        if options.fp16_activations:
            from . import fp16_activations

            package = Path(tmp) / "w8a8.mlpackage"
            with _quiet():
                cq.compress(mlmodel, "w8a8", ios, stats).save(str(package))
            fp16 = fp16_activations.choose(
                mil.load_program(package),
                samples,
                _logits(program, samples),
                _logits,
                options.fp16_activations,
                log,
            )
    return (
        stats,
        {
            **calib.record(),
            "activation_ranges": best,
            "ranges_logits_sqnr_db": measured,
            "ranges_folds": len(folds),
        },
        fp16,
    )


@contextlib.contextmanager
def _float_program(mlmodel, dest: Path, prefix: str):
    """(the executor's Program of `mlmodel`, the temporary folder it was saved in beside
    `dest`), for the passes that run the float model before compressing it."""
    import tempfile

    from . import mil

    with tempfile.TemporaryDirectory(prefix=prefix, dir=dest.parent) as tmp:
        package = Path(tmp) / "float.mlpackage"
        with _quiet():
            mlmodel.save(str(package))
        yield mil.load_program(package), Path(tmp)


def _logits(program, samples: list[dict]) -> np.ndarray:
    """The logits (the softmax input of a classifier, else the main output) for each sample."""
    from .sensitivity import output_of

    name = softmax_input(program.spec)
    return np.concatenate([output_of(program, feeds, name) for feeds in samples])


def _calibration_samples(built, options: ExportOptions, plan: _Plan, log):
    from ..quantize.calibration import load_calibration

    calib = load_calibration(
        options.calibration,
        built.preprocess,
        limit=options.calibration_limit,
        normalized=not plan.normalize,
        log=log,
    )
    scale = 255.0 if plan.input_kind == "image" else 1.0
    return calib, [{plan.input_name: np.asarray(x, np.float32) * scale} for x in calib.inputs]


#: Calibration images the sensitivity pass runs per weight and palette size (it runs the
#: program weights x 5 x this many times; the noise ranking is stable from ~8 images on).
SENSITIVITY_IMAGES = 16


def _palette_bits(mlmodel, built, options: ExportOptions, plan: _Plan, dest: Path, log):
    """Palette size per weight for palettize-auto: each weight's output noise at 2-8 bits,
    measured by running the float program on calibration images, then the least noisy
    choice that fits `options.size_budget` x the fp32 weights' bytes (coreml.sensitivity)."""
    from .sensitivity import WeightInfo, plan_bits

    calib, samples = _calibration_samples(built, options, plan, log)
    samples = samples[:SENSITIVITY_IMAGES]
    with _quiet():
        shapes = cq.palettized_weights(mlmodel)
    weights = [WeightInfo(name, shape, cq.palette_group_size(shape[0])) for name, shape in shapes.items()]
    with _float_program(mlmodel, dest, ".palette.") as (program, _):
        floats = {
            n: np.asarray(v)
            for n, v in program.consts.items()
            if isinstance(v, np.ndarray) and v.dtype.kind == "f"
        }
        missing = [w.name for w in weights if w.name not in floats]
        if missing:
            raise ExportError(
                f"{built.spec.name}: weight {missing[0]!r} is not a constant of the program; "
                "use --compress palettize4 or palettize6"
            )
        fp32_bytes = 4.0 * sum(v.size for v in floats.values())
        fixed = 2.0 * sum(v.size for n, v in floats.items() if n not in shapes)  # stays fp16
        log(
            f"coreml: measuring the sensitivity of {len(weights)} weights on {len(samples)} calibration image(s)"
        )
        choice = plan_bits(
            program,
            samples,
            weights,
            cq.kmeans_lut,
            options.size_budget * fp32_bytes,
            fixed,
            fp32_bytes,
            output=softmax_input(program.spec),
            log=log,
        )
    log(
        f"coreml: palette bits {choice.record()['layers_per_bits']} (layers per bits), "
        f"{choice.compressed_bytes / fp32_bytes:.3f}x the fp32 weights, predicted {choice.predicted_sqnr_db:.1f} dB"
    )
    return choice, calib.record()


def _describe(mlmodel, built, plan: _Plan, precision: str, mode, ios: int) -> None:
    """Author, license, descriptions, and the manifest's facts in user_defined_metadata."""
    from .. import __version__
    from ..manifest import new_manifest

    spec = built.spec
    source = (
        spec.weight_source(built.weights.get("tag")) if built.weights.get("source") == "imagenet" else None
    )
    pre = built.preprocess
    compression = "" if mode.name == "none" else f", {mode.name}"
    mlmodel.author = AUTHOR
    mlmodel.license = source.license if source else "Apache-2.0 (export); weights: see weights.source"
    mlmodel.short_description = (
        f"{spec.family} {spec.variant or ''} {spec.name} ({spec.paper}), "
        f"{built.resolution}x{built.resolution}, {precision}{compression}"
    ).replace("  ", " ")
    mlmodel.version = __version__
    if plan.input_kind == "image":
        text = (
            f"RGB image {built.resolution}x{built.resolution}: resize the shorter side to {pre.resize} "
            f"({pre.interpolation}) and center-crop (Vision: .centerCrop); mean/std are applied inside"
        )
    elif plan.normalize:
        text = f"float32 RGB NCHW 1x3x{built.resolution}x{built.resolution} in [0, 1]; mean/std are applied inside"
    else:
        text = f"float32 RGB NCHW 1x3x{built.resolution}x{built.resolution}, normalized: (x - {list(pre.mean)}) / {list(pre.std)}"
    mlmodel.input_description[plan.input_name] = text
    if plan.classifier:
        mlmodel.output_description[PROBS_NAME] = (
            f"probability of each of the {built.num_classes} labels (softmax)"
        )
        mlmodel.output_description[LABEL_NAME] = "the most probable label"
    elif plan.features:
        mlmodel.output_description[FEATURES_NAME] = "feature map (no classifier head)"
    else:
        mlmodel.output_description[LOGITS_NAME] = (
            f"raw logits over {built.num_classes} classes (apply softmax for probabilities)"
        )
    facts = new_manifest(built)
    meta = mlmodel.user_defined_metadata
    if _DATE_KEY in meta:
        del meta[_DATE_KEY]
    meta["mobile_export.format"] = f"{facts['format']}/{facts['version']}"
    meta["mobile_export.model"] = json.dumps(facts["model"], sort_keys=True)
    meta["mobile_export.preprocess"] = json.dumps(facts["preprocess"], sort_keys=True)
    meta["mobile_export.input"] = json.dumps(plan.input_record(built), sort_keys=True)
    meta["mobile_export.output"] = json.dumps(plan.output_record(built), sort_keys=True)
    meta["mobile_export.precision"] = precision
    meta["mobile_export.compression"] = mode.name
    meta["mobile_export.deployment_target"] = f"iOS{ios}"


# --- package files ---------------------------------------------------------------------


def _make_reproducible(package: Path) -> None:
    """Same inputs -> same bytes: no date, deterministic protobuf, UUIDs from the item paths."""
    package = Path(package)
    debug = package / _DEBUG_FILE
    if debug.exists():
        debug.unlink()
    spec = load_spec(package)
    meta = spec.description.metadata.userDefined
    if _DATE_KEY in meta:
        del meta[_DATE_KEY]
    (package / SPEC_FILE).write_bytes(spec.SerializeToString(deterministic=True))
    manifest_path = package / PACKAGE_MANIFEST
    doc = json.loads(manifest_path.read_text(encoding="utf-8"))
    renamed = {
        old: str(uuid.uuid5(_UUID_NAMESPACE, item["path"])) for old, item in doc["itemInfoEntries"].items()
    }
    doc["itemInfoEntries"] = {
        renamed[old]: item
        for old, item in sorted(doc["itemInfoEntries"].items(), key=lambda kv: kv[1]["path"])
    }
    doc["rootModelIdentifier"] = renamed[doc["rootModelIdentifier"]]
    manifest_path.write_text(json.dumps(doc, indent=4, sort_keys=True) + "\n", encoding="utf-8")


def softmax_input(spec) -> str | None:
    """Name of the logits: the input of the softmax that feeds the classify op (None if the
    program has no classify op)."""
    producers_of = producers(spec)
    for op in operations(spec):
        if op.type != "classify":
            continue
        name = (argument_names(op, "probabilities") or [None])[0]
        while name in producers_of and producers_of[name].type == "cast":  # fp16 -> fp32 before classify
            name = argument_names(producers_of[name], "x")[0]
        if name in producers_of and producers_of[name].type == "softmax":
            return argument_names(producers_of[name], "x")[0]
    return None


def pitfalls(spec) -> list[str]:
    """Known Neural Engine fp16 pitfalls present in a converted program (empty = none):
    a `linear` whose output feeds a hardswish/hardsigmoid, a `batch_norm` right after a conv."""
    producers_of = producers(spec)
    found = []
    for op in operations(spec):
        sources = [producers_of.get(n) for n in argument_names(op, "x")]
        for src in sources:
            if src is None:
                continue
            if op.type in _HARD_ACTIVATIONS and src.type == "linear":
                found.append(
                    f"linear {src.outputs[0].name} feeds {op.type} (2-D hardswish drifts on the ANE)"
                )
            if op.type == "batch_norm" and src.type == "conv":
                found.append(
                    f"batch_norm after conv {src.outputs[0].name} was not folded (fp32 epsilon beside fp16, #2470)"
                )
    return found


# --- running ---------------------------------------------------------------------------


def _executor_available() -> bool:
    import importlib.util

    try:
        if importlib.util.find_spec("mobile_export.coreml.mil") is None:
            return False
        from . import mil
    except ImportError:
        return False
    return hasattr(mil, "load_program") and hasattr(mil, "activation_stats")


def _use_coreml_predict() -> bool:
    if sys.platform != "darwin" or os.environ.get("MOBILE_EXPORT_COREML_EXECUTOR") == "1":
        return False
    try:
        with _quiet():
            import coremltools  # noqa: F401
            from coremltools import libcoremlpython  # noqa: F401
    except ImportError:
        return False
    return True


def _run_coreml(artifact: Path, spec, input_name: str, is_image: bool, inputs) -> list[np.ndarray]:
    """macOS: Core ML itself. Classifiers expose only probabilities: returns their log."""
    with _quiet():
        import coremltools as ct

        model = ct.models.MLModel(str(artifact), compute_units=ct.ComputeUnit.CPU_ONLY)
    labels = _labels(spec)
    outputs = []
    for x in inputs:
        if is_image:
            from PIL import Image

            pixels = np.clip(np.round(x[0].transpose(1, 2, 0) * 255.0), 0, 255).astype(np.uint8)
            feed = Image.fromarray(pixels, "RGB")
        else:
            feed = np.asarray(x, np.float32)
        result = model.predict({input_name: feed})
        if PROBS_NAME in result and labels:
            probs = np.array([result[PROBS_NAME][label] for label in labels], np.float64)
            outputs.append(np.log(np.maximum(probs, 1e-45)).astype(np.float32)[None])
        else:
            outputs.append(
                np.asarray(result[spec.description.output[0].name], np.float32).reshape(x.shape[0], -1)
            )
    return outputs


def _labels(spec) -> list[str]:
    """The class labels in output order, from the classify op's immediate list."""
    for op in operations(spec):
        if op.type == "classify" and "classes" in op.inputs:
            arg = op.inputs["classes"].arguments[0]
            return [v.immediateValue.tensor.strings.values[0] for v in arg.value.immediateValue.list.values]
    return []
