"""ExecuTorch .pte for iOS whose compute runs in ExecuTorch's Core ML delegate (Neural Engine,
GPU or CPU, as Core ML decides within the compute units).

Export: the same wrapped model and input contract as the XNNPACK .pte (float32 NCHW RGB in
[0, 1], mean/std inside unless --normalize-outside) -> torch.export -> [int8] ->
to_edge_transform_and_lower(CoreMLPartitioner(compile specs)) -> .pte. Compile specs: compute
precision, minimum iOS, compute units, MODEL_TYPE.MODEL (an .mlpackage the device compiles on
first load; COMPILED_MODEL needs macOS's compiler and is refused here).

int8 (--compress):
- int8: weight-only, per-channel symmetric, through the compile spec op_linear_quantizer_config
  (coremltools' linear_quantize_weights inside the delegate's conversion).
- w8a8: refused (W8A8_REFUSAL). The path exists behind ExecuTorchCoreMLTarget.w8a8_experimental:
  CoreMLQuantizer (uint8 activations, int8 per-channel weights) calibrated on real images, lowered
  with two coremltools passes removed (W8A8_PASSES_REMOVED: with the default pipeline the
  conversion fails, see there); its parity on a trained model is too low to ship (measured).

Verify on Linux: ExecuTorch's Linux runtime has no CoreMLBackend, so the Core ML payload is
read out of the .pte (pte_reader), unpacked with our reader of the flattened-directory format
(flatfs) and its model.mlpackage runs in the Linux ML Program executor (coreml/mil): the same
program the phone's Core ML gets. What only a device shows: the Neural Engine's arithmetic,
placement and latency.

Reproducible bytes: upstream names each payload "executorch_<uuid4>" and coremltools writes a
date and random UUIDs into the package; `_normalize_payload` derives the identifier from the
model's bytes, drops the date, serializes the protobuf deterministically, derives the
Manifest.json UUIDs from item paths and re-flattens with sorted names."""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..errors import ArtifactError, DelegationError, ExportError, UsageError, first_line
from ..manifest import ArtifactEntry
from ..targets.base import ExportOptions, OpInfo, PerOpValues, StoredWeights, Target
from . import flatfs, pte_reader
from .lowering import delegation_summary, export_module, runtime_record
from .target import MAGIC, MIN_BYTES, input_contract

BACKEND = "CoreMLBackend"
PRECISIONS = ("fp16", "fp32")
DEFAULT_PRECISION = "fp16"
COMPUTE_UNITS = {
    "all": "ALL",
    "cpu_and_ne": "CPU_AND_NE",
    "cpu_only": "CPU_ONLY",
    "cpu_and_gpu": "CPU_AND_GPU",
}
DEFAULT_COMPUTE_UNITS = "all"
IOS_VERSIONS = (16, 17, 18)
DEFAULT_IOS = 17
COMPRESS = ("none", "int8", "w8a8")
PACKAGE_DIR = "model.mlpackage"  # inside the payload's root directory (lowered_module)
COMPILED_DIR = "model.mlmodelc"
WEIGHT_OP_CONFIG = {
    "mode": "linear_symmetric",
    "dtype": "int8",
    "granularity": "per_channel",
    "weight_threshold": 2048,
}
# coremltools' dequantize_quantize_pair_elimination treats dequantize(uint8) -> quantize(int8)
# with the same scale as a no-op (it compares scale, zero point and axis, not the integer type;
# the torch frontend drops all-zero zero points, so the two look alike) and replaces an int8
# value with a uint8 one, which fails ("doesn't have compatible subtype"). CoreMLQuantizer
# quantizes activations to uint8 and weights to int8, so MobileNets meet this pattern.
# int_op_canonicalization: the scale-blind reshape rewrite (coreml/compress.py UNSAFE_PASSES).
W8A8_PASSES_REMOVED = ("common::dequantize_quantize_pair_elimination", "common::int_op_canonicalization")
W8A8_REFUSAL = (
    "--compress w8a8 is not offered for executorch-coreml: CoreMLQuantizer's uint8-activation/int8-weight graph fails "
    "in coremltools' dequantize_quantize_pair_elimination pass (it takes a uint8/int8 dequantize->quantize pair with "
    "equal scales for a no-op and swaps the types); with that pass removed it lowers fully but measured 9.8 dB / "
    "cosine 0.95 against float on the trained MobileNetV2 (the W8A8 row needs 20 dB); use --compress int8 "
    "(weight-only) or --target coreml --compress w8a8"
)
_DATE_KEY = "com.github.apple.coremltools.conversion_date"
COREML_DELEGATE_LATENCY = (
    "not measured: ExecuTorch's Linux runtime has no CoreMLBackend and Core ML runs only on Apple "
    "devices; measure on an iPhone (demo app) or a Mac"
)
_UUID_NAMESPACE = uuid.UUID("0d6bd5b0-4f6a-4f21-9b3c-6c3a4b1e2f70")


class ExecuTorchCoreMLTarget(Target):
    name: ClassVar[str] = "executorch-coreml"
    suffix: ClassVar[str] = ".pte"
    description: ClassVar[str] = "ExecuTorch .pte, Core ML delegate (iOS)"
    # Not user options: MODEL_TYPE.COMPILED_MODEL needs a Mac (refused here), and W8A8 is refused
    # (W8A8_REFUSAL); both stay reachable so a test or a Mac can measure them again.
    model_type: ClassVar[str] = "model"
    w8a8_experimental: ClassVar[bool] = False

    # --- options ---------------------------------------------------------------------

    def variant_tag(self, options: ExportOptions) -> str:
        parts = ["coreml", options.precision or DEFAULT_PRECISION]
        if options.compress != "none":
            parts.append(options.compress)
        if options.compute_units != DEFAULT_COMPUTE_UNITS:
            parts.append(options.compute_units)
        if not options.normalize_in_model:
            parts.append("raw")
        return "_".join(parts)

    def validate(self, built, options: ExportOptions) -> None:
        precision = options.precision or DEFAULT_PRECISION
        if precision not in PRECISIONS:
            raise UsageError(
                f"precision {precision!r} is not supported by the Core ML delegate; choose one of: {', '.join(PRECISIONS)}"
            )
        if options.compute_units not in COMPUTE_UNITS:
            raise UsageError(
                f"--compute-units {options.compute_units!r} is not supported; choose one of: {', '.join(COMPUTE_UNITS)}"
            )
        if options.quantize != "none":
            raise UsageError(
                "--quantize int8 is XNNPACK's int8; for the Core ML delegate use --compress int8 (weight-only int8)"
            )
        if options.compress not in COMPRESS:
            raise UsageError(
                f"--compress {options.compress} is not available through ExecuTorch's Core ML delegate; "
                "use --compress int8 (weight-only), or --target coreml for palettized .mlpackage files"
            )
        if options.compress == "w8a8" and not self.w8a8_experimental:
            raise UsageError(W8A8_REFUSAL)  # the path stays reachable (w8a8_experimental) to measure it again
        if self.model_type == "compiled_model":
            raise UsageError(
                "MODEL_TYPE.COMPILED_MODEL needs Core ML's compiler, which runs only on macOS; "
                "export MODEL_TYPE.MODEL here (the device compiles it on first load) or export on a Mac"
            )
        ios_of(options)

    # --- export ----------------------------------------------------------------------

    def export(self, built, options: ExportOptions, dest: Path, log) -> dict:

        t0 = time.perf_counter()
        precision = options.precision or DEFAULT_PRECISION
        ios = ios_of(options)
        model, example, out_shape = export_module(built, options.normalize_in_model)
        specs = compile_specs(precision, ios, options.compute_units, options.compress)
        calibration = None
        if options.compress == "w8a8":
            model, calibration = quantize_w8a8(model, example, built, options, log)
        manager, delegation, normalized = lower(model, example, specs, log)
        outside = delegation["outside"]
        if outside and not options.allow_partial:
            named = ", ".join(f"{op} x{n}" for op, n in sorted(outside.items()))
            raise DelegationError(
                f"{sum(outside.values())} compute op(s) left outside the Core ML delegate ({named}); "
                "they would run on ExecuTorch's portable CPU kernels; rewrite them or pass --allow-partial"
            )
        buffer = manager.buffer
        dest.write_bytes(buffer)
        ops = payload_ops(buffer)
        if options.compress == "int8":
            quantization = {
                "mode": "int8",
                "weights": "int8 linear symmetric, one scale per output channel (weights >= 2048 elements)",
                "how": "compile spec op_linear_quantizer_config (coremltools linear_quantize_weights)",
                "op_linear_quantizer_config": WEIGHT_OP_CONFIG,
            }
        elif options.compress == "w8a8":
            quantization = {
                "mode": "w8a8",
                "weights": "int8 symmetric, one scale per output channel",
                "activations": "uint8 symmetric (CoreMLQuantizer's only integer activation type), min/max observers",
                "how": "CoreMLQuantizer + prepare_pt2e/convert_pt2e; Core ML pass pipeline without "
                + ", ".join(W8A8_PASSES_REMOVED),
                "passes_removed": list(W8A8_PASSES_REMOVED),
                "calibration": {**calibration.record(), "limit": options.calibration_limit},
            }
        else:
            quantization = {"mode": "none"}
        return {
            "target": self.name,
            "format": "pte",
            "precision": "mixed" if options.compress == "w8a8" else precision,
            "quantization": quantization,
            "input": input_contract(built, options.normalize_in_model),
            "output": {
                "name": built.spec.output,
                "kind": built.spec.output,
                "shape": out_shape,
                "dtype": "float32",
            },
            "delegation": delegation,
            "runtime": runtime_record(BACKEND),
            "coreml": {
                "deployment_target": f"iOS{ios}",
                "compute_precision": precision,
                "compute_units": options.compute_units,
                "model_type": "model",
                "payload_bytes": ops["payload_bytes"],
                "opset": ops["opset"],
                "ops": ops["ops"],
                "identifier": ops["identifier"],
                "payload_normalized": normalized,
            },
            "export": {
                "lowering": "torch.export -> to_edge_transform_and_lower(CoreMLPartitioner) -> to_executorch",
                "backend": BACKEND,
                "method": "forward",
                "lower_seconds": round(time.perf_counter() - t0, 2),
            },
        }

    # --- checking and running --------------------------------------------------------

    def check_file(self, artifact: Path) -> None:
        """ET12 magic, exactly one CoreMLBackend delegate and nothing else, a payload whose
        directory index parses and holds model.mlpackage."""
        p = Path(artifact)
        if not p.is_file():
            raise ArtifactError(f"{p} is not a file; check the path or export again")
        data = p.read_bytes()
        if len(data) < MIN_BYTES or data[4:8] != MAGIC:
            raise ArtifactError(
                f"{p.name} does not start like an ExecuTorch program (bytes 4-8 are {data[4:8]!r}, expected "
                f"{MAGIC!r}); the file is damaged or of another format, export it again"
            )
        core_ml_payload(data, p.name)

    def output_quantity(self, entry: dict) -> str:
        return "features" if ArtifactEntry.from_dict(entry).output_kind == "features" else "logits"

    def run(self, artifact: Path, entry: dict, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """The Core ML program inside the .pte, run by the Linux ML Program executor (the
        ExecuTorch Linux runtime has no CoreMLBackend)."""
        from ..coreml import mil

        with unpacked(artifact) as package:
            program = mil.load_program(package)
            name = program.inputs[0].name
            outputs = []
            for x in inputs:
                result = program.run({name: np.ascontiguousarray(x, dtype=np.float32)})
                outputs.append(program.output_vector(result).reshape(x.shape[0], -1))
        return outputs

    def stored_weights(self, artifact: Path, entry: dict, manifest: dict) -> StoredWeights | None:
        """For --compress int8 (weight-only): the payload's conv/linear weights, decompressed.
        The normalization stays in the graph as a multiply and an add, so no weight carries 1/std."""
        if ArtifactEntry.from_dict(entry).quantization_mode != "int8":
            return None
        from ..coreml import mil
        from ..coreml.mil.weights import anchor_weights

        with unpacked(artifact) as package:
            layers = anchor_weights(mil.load_program(package))
        return StoredWeights(
            layers=layers,
            input_scale=None,
            how="the PyTorch model with the int8 weights of the .pte's Core ML payload (decompressed), "
            "BatchNorm folds undone",
        )

    def benchmark(self, artifact: Path, entry: dict, threads: int, runs: int, warmup: int, log) -> dict:
        """Size, ops per backend and the load time of the Core ML payload (what Linux can tell):
        load = read the file, find the payload, unflatten it and parse the ML Program (the
        executor's load), `repeats` times. No latency: nothing here runs the Core ML delegate."""
        from ..coreml import mil

        log(
            f"reading {Path(artifact).name}'s Core ML payload (no latency: nothing here runs the Core ML delegate)..."
        )
        data = Path(artifact).read_bytes()
        ops = payload_ops(data)
        times = []
        for _ in range(max(2, min(runs, 5))):
            with tempfile.TemporaryDirectory(prefix="bench_pte_coreml_") as tmp:
                t0 = time.perf_counter()
                _, payload = core_ml_payload(Path(artifact).read_bytes(), Path(artifact).name)
                root = flatfs.unflatten(payload, tmp)
                mil.load_program(root / PACKAGE_DIR)
                times.append((time.perf_counter() - t0) * 1000)
        delegation = ArtifactEntry.from_dict(entry).to_dict().get("delegation") or {}
        outside = delegation.get("outside") or {}
        return {
            "bytes": len(data),
            "payload_bytes": ops["payload_bytes"],
            "opset": ops["opset"],
            "compile_specs": ops["compile_specs"],
            "ops_by_backend": {
                delegation.get("backend", "CoreMLBackend"): delegation.get("delegated_ops"),
                "portable CPU (outside the delegate)": sum(outside.values()),
            },
            "core_ml_ops": ops["ops"],
            "payload_load_ms": sorted(times)[len(times) // 2],
            "latency": COREML_DELEGATE_LATENCY,
        }

    def per_op_values(self, artifact: Path, entry: dict, built, inputs, quantized, sink, log) -> PerOpValues:
        """Same rows as an .mlpackage's (coreml/mil/per_layer): executor values of the
        payload's program vs the PyTorch model's layers."""
        from ..coreml import mil
        from ..coreml.mil.per_layer import layer_values

        artifact = Path(artifact)
        raw = inputs.raw if ArtifactEntry.from_dict(entry).normalized_in_model else inputs.normalized
        with unpacked(artifact) as package:
            program = mil.load_program(package)
            name = program.inputs[0].name
            feeds = [{name: np.ascontiguousarray(x, dtype=np.float32)} for x in raw]
            ops = layer_values(program, built.module, feeds, inputs.normalized, sink)
        return PerOpValues(
            ops=ops,
            title=f"{artifact.name}: per-layer error of its Core ML payload ({len(feeds)} real images, "
            "Linux executor)",
            source="Linux ML Program executor (the .pte's Core ML payload) vs the PyTorch layers",
            whole=OpInfo(
                "output", "Core ML payload vs PyTorch", "(whole program, Linux ML Program executor)"
            ),
        )


# --- building blocks ---------------------------------------------------------------------


def ios_of(options: ExportOptions) -> int:
    if options.deployment_target is None:
        return DEFAULT_IOS
    try:
        ios = int(options.deployment_target)
    except (TypeError, ValueError):
        ios = -1
    if ios not in IOS_VERSIONS:
        raise UsageError(
            f"--ios {options.deployment_target} is not supported; choose one of: {', '.join(map(str, IOS_VERSIONS))}"
        )
    return ios


def compile_specs(precision: str, ios: int, compute_units: str, compress: str = "none"):
    from ..coreml.target import _quiet

    with _quiet():  # coremltools prints version warnings on import
        import coremltools as ct
        from executorch.backends.apple.coreml.compiler import CoreMLBackend

    return CoreMLBackend.generate_compile_specs(
        compute_unit=getattr(ct.ComputeUnit, COMPUTE_UNITS[compute_units]),
        minimum_deployment_target={16: ct.target.iOS16, 17: ct.target.iOS17, 18: ct.target.iOS18}[ios],
        compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
        model_type=CoreMLBackend.MODEL_TYPE.MODEL,
        op_linear_quantizer_config=dict(WEIGHT_OP_CONFIG) if compress == "int8" else None,
    ) + ([CoreMLBackend.generate_pass_pipeline_compile_spec(w8a8_pass_names())] if compress == "w8a8" else [])


def w8a8_pass_names() -> list[str]:
    """coremltools' default pass pipeline without W8A8_PASSES_REMOVED."""
    import coremltools as ct

    pipeline = ct.PassPipeline.DEFAULT
    pipeline.remove_passes(set(W8A8_PASSES_REMOVED))
    return list(pipeline.passes)


def quantize_w8a8(model, example, built, options: ExportOptions, log):
    """CoreMLQuantizer (uint8 activations, int8 per-channel weights) calibrated on real
    images; returns (convert_pt2e model, CalibrationSet)."""
    import torch

    from ..coreml.target import _quiet
    from ..quantize.calibration import load_calibration, to_tensor

    calibration = load_calibration(
        options.calibration,
        built.preprocess,
        limit=options.calibration_limit,
        normalized=not options.normalize_in_model,
        log=log,
    )
    with _quiet():
        from coremltools.optimize.torch.quantization.quantization_config import (
            LinearQuantizerConfig,
            QuantizationScheme,
        )
        from executorch.backends.apple.coreml.quantizer import CoreMLQuantizer
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        config = LinearQuantizerConfig.from_dict(
            {
                "global_config": {
                    "quantization_scheme": QuantizationScheme.symmetric,
                    "activation_dtype": torch.quint8,
                    "weight_dtype": torch.qint8,
                    "weight_per_channel": True,
                }
            }
        )
        try:
            with torch.no_grad():
                exported = torch.export.export(model, (example,), strict=False)
                prepared = prepare_pt2e(exported.module(), CoreMLQuantizer(config))
                for x in calibration.inputs:
                    prepared(to_tensor(x))
                converted = convert_pt2e(prepared)
        except Exception as exc:
            raise ExportError(
                f"CoreMLQuantizer failed ({first_line(exc)}); use --compress int8 (weight-only)"
            ) from None
    log(f"w8a8: CoreMLQuantizer calibrated on {len(calibration.inputs)} image(s)")
    return converted, calibration


def lower(module, example, specs, log=lambda _m: None):
    """torch.export + Core ML lowering; returns (ExecutorchProgramManager, delegation
    summary, whether the payloads were normalized for reproducible bytes)."""
    import torch
    from executorch.backends.apple.coreml.partition import CoreMLPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from ..coreml.converter_fixes import apply as fix_converter
    from ..coreml.target import _quiet

    fix_converter()  # the delegate converts through coremltools too: tanh GELU kept (converter_fixes)
    t0 = time.perf_counter()
    try:
        with _quiet(), torch.no_grad():
            exported = torch.export.export(module, (example,), strict=False)
            edge = to_edge_transform_and_lower(exported, partitioner=[CoreMLPartitioner(compile_specs=specs)])
            graph_module = edge.exported_program().graph_module
            delegation = delegation_summary(graph_module, backend=BACKEND)
            normalized = 0
            for node in graph_module.graph.nodes:
                if node.op == "get_attr" and node.name.startswith("lowered_module"):
                    lowered = getattr(graph_module, node.target)
                    # The emitter reads the payload from here; replacing it before to_executorch
                    # is the one place a payload can be changed without re-serializing the file.
                    lowered._processed_bytes = normalize_payload(lowered.processed_bytes)
                    normalized += 1
            manager = edge.to_executorch()
    except (ExportError, ArtifactError, MemoryError):
        raise
    except Exception as exc:  # torch.export / exir / coremltools raise many types; keep one line
        raise ExportError(
            f"Core ML delegate lowering failed ({first_line(exc)}); try --precision fp32, --allow-partial "
            "or --target coreml"
        ) from None
    log(
        f"lowered to the Core ML delegate in {time.perf_counter() - t0:.1f}s: {delegation['delegated_ops']} op(s) in "
        f"{delegation['delegated_subgraphs']} partition(s), {sum(delegation['outside'].values())} outside"
    )
    return manager, delegation, normalized == delegation["delegated_subgraphs"]


def normalize_payload(payload: bytes) -> bytes:
    """The same payload with everything that differs between two identical exports removed
    (see the module docstring); the program and weights are untouched."""
    from coremltools.proto import Model_pb2  # imported (quietly) by the lowering already

    root = flatfs.root_name(payload)
    files = flatfs.read_files(payload)
    spec_rel = f"{PACKAGE_DIR}/Data/com.apple.CoreML/model.mlmodel"
    if spec_rel not in files:
        return payload  # a compiled model or another layout: leave it as upstream wrote it
    spec = Model_pb2.Model()
    spec.ParseFromString(files[spec_rel])
    meta = spec.description.metadata.userDefined
    if _DATE_KEY in meta:
        del meta[_DATE_KEY]
    files[spec_rel] = spec.SerializeToString(deterministic=True)
    manifest_rel = f"{PACKAGE_DIR}/Manifest.json"
    if manifest_rel in files:
        doc = json.loads(files[manifest_rel])
        renamed = {
            old: str(uuid.uuid5(_UUID_NAMESPACE, item["path"]))
            for old, item in doc["itemInfoEntries"].items()
        }
        doc["itemInfoEntries"] = {
            renamed[old]: item
            for old, item in sorted(doc["itemInfoEntries"].items(), key=lambda kv: kv[1]["path"])
        }
        doc["rootModelIdentifier"] = renamed[doc["rootModelIdentifier"]]
        files[manifest_rel] = (json.dumps(doc, indent=4, sort_keys=True) + "\n").encode("utf-8")
    if "metadata.json" in files:
        # The iOS runtime caches the compiled model under this identifier: derived from the
        # program and weights, two files share it only when they hold the same model.
        digest = hashlib.sha256()
        for rel in sorted(files):
            if rel.startswith(f"{PACKAGE_DIR}/Data/"):
                digest.update(rel.encode() + b"\0" + files[rel])
        doc = json.loads(files["metadata.json"])
        doc["identifier"] = "executorch_" + str(uuid.UUID(bytes=digest.digest()[:16]))
        files["metadata.json"] = json.dumps(doc, sort_keys=True).encode("utf-8")
    return flatfs.flatten(files, root)


def core_ml_payload(pte: bytes, name: str = "program") -> tuple[pte_reader.Delegate, bytes]:
    """The one CoreMLBackend delegate of a .pte and its payload; ArtifactError otherwise."""
    found = pte_reader.delegates(pte)
    core_ml = [d for d in found if d.backend == BACKEND]
    others = sorted({d.backend for d in found if d.backend != BACKEND})
    if len(core_ml) != 1 or others:
        raise ArtifactError(
            f"{name} has {len(core_ml)} {BACKEND} delegate(s)"
            + (f" and {', '.join(others)}" if others else "")
            + f"; an executorch-coreml program has exactly one {BACKEND} delegate, export it again"
        )
    payload = pte_reader.payload(pte, core_ml[0])
    root, _ = flatfs.read_index(payload)
    if PACKAGE_DIR not in root.children:
        hint = " (a compiled model: not readable on Linux)" if COMPILED_DIR in root.children else ""
        raise ArtifactError(
            f"{name}'s Core ML payload has no {PACKAGE_DIR}{hint}; export it again with --target executorch-coreml"
        )
    return core_ml[0], payload


class unpacked:
    """Context manager: the .pte's model.mlpackage unpacked into a temporary folder."""

    def __init__(self, artifact):
        self.artifact = Path(artifact)

    def __enter__(self) -> Path:
        _, payload = core_ml_payload(self.artifact.read_bytes(), self.artifact.name)
        self._tmp = tempfile.TemporaryDirectory(prefix="pte_coreml_")
        try:
            root = flatfs.unflatten(payload, self._tmp.name)
        except BaseException:
            self._tmp.cleanup()
            raise
        return root / PACKAGE_DIR

    def __exit__(self, *exc):
        self._tmp.cleanup()
        return False


def payload_ops(pte: bytes) -> dict:
    """Op counts (by MIL type) of the Core ML program inside a .pte, its opset and size."""
    from ..coreml.spec import operations
    from ..coreml.spec import opset as _opset
    from ..coreml.target import _quiet

    with _quiet():
        from coremltools.proto import Model_pb2

    delegate, payload = core_ml_payload(pte)
    files = flatfs.read_files(payload)
    spec = Model_pb2.Model()
    spec.ParseFromString(files[f"{PACKAGE_DIR}/Data/com.apple.CoreML/model.mlmodel"])
    counts: dict[str, int] = {}

    def walk(ops):
        for op in ops:
            counts[op.type] = counts.get(op.type, 0) + 1
            for block in op.blocks:
                walk(block.operations)

    walk(operations(spec))
    meta = json.loads(files.get("metadata.json", b"{}") or b"{}")
    return {
        "payload_bytes": delegate.size,
        "opset": _opset(spec),
        "ops": dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
        "identifier": meta.get("identifier"),
        "compile_specs": {k: v.decode("utf-8", "replace") for k, v in delegate.compile_specs.items()},
    }
