"""ExecuTorch .pte for Android: torch.export -> (int8 PT2E) -> to_edge_transform_and_lower
with the XNNPACK partitioner -> .pte; every compute op inside the XNNPACK delegate.

Input contract (the same numbers as the Core ML tensor input): float32 NCHW 1x3xRxR, RGB in
[0, 1]; mean/std are baked into the graph unless --normalize-outside. Output: float32
logits [1, classes] (or the feature tensor of backbone-only variants)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..errors import ArtifactError, DelegationError, ExportError, UsageError, first_line
from ..targets.base import ExportOptions, Target

MAGIC = b"ET12"  # flatbuffer file identifier of an ExecuTorch program, bytes 4..8
BUNDLED_MAGIC = b"BP08"  # the same for a BundledProgram
MIN_BYTES = 64  # smaller than any real program: header + one empty plan
BUNDLED_CASES = 3  # real photos embedded in a .bpte for the on-device self-check
BOOKKEEPING = {"getitem", "alloc", "executorch_call_delegate"}  # never delegated, no compute
QUANT_MODE = "pt2e-int8"


class ExecuTorchTarget(Target):
    name: ClassVar[str] = "executorch"
    suffix: ClassVar[str] = ".pte"
    description: ClassVar[str] = "ExecuTorch .pte, XNNPACK (Android)"

    def variant_tag(self, options: ExportOptions) -> str:
        return "int8" if options.quantize == "int8" else "fp32"

    def validate(self, built, options: ExportOptions) -> None:
        if options.quantize not in ("none", "int8"):
            raise UsageError(f"--quantize {options.quantize!r} is not supported for ExecuTorch; use none or int8")
        if options.extra.get("fast_gelu") and not uses_tanh_gelu(built.module):
            raise UsageError(f"--fast-gelu changes only tanh GELU, which {built.spec.name} does not use (V5 does); drop the flag")
        recipe = options.extra.get("quant_recipe")
        if recipe is not None:
            from ..quantize.pt2e import OBSERVERS, QuantRecipe

            r = QuantRecipe.from_dict(recipe)
            if r.observer not in OBSERVERS:
                raise UsageError(f"unknown activation observer {r.observer!r}; choose one of {', '.join(OBSERVERS)}")
            from ..quantize.pt2e import unmatched_modules

            missing = unmatched_modules(built.module, r.fp32_modules)
            if missing:
                raise UsageError(f"fp32 module(s) {', '.join(missing)} match no module of {built.spec.name}; "
                                 "name them as in its state dict (e.g. conv_stem, blocks.0, *.se)")

    # --- export -------------------------------------------------------------------------

    def export(self, built, options: ExportOptions, dest: Path, log) -> dict:
        import torch

        t0 = time.perf_counter()
        pre = built.preprocess
        model = with_normalization(built.module, pre.mean, pre.std) if options.normalize_in_model else built.module
        model.eval()
        example = torch.zeros(built.input_shape, dtype=torch.float32)
        with torch.no_grad():
            out_shape = list(model(example).shape)

        quantization: dict = {"mode": "none"}
        quantized = None
        if options.quantize == "int8":
            from ..quantize import QuantRecipe, load_calibration, quantize_pt2e

            recipe = QuantRecipe.from_dict(options.extra.get("quant_recipe"))
            calibration = load_calibration(options.calibration, pre, limit=options.calibration_limit,
                                           normalized=not options.normalize_in_model, log=log)
            quantized = quantize_pt2e(model, example, calibration.inputs, recipe, log)
            quantization = {
                "mode": QUANT_MODE,
                "scheme": "XNNPACKQuantizer symmetric int8, per-channel weights" if recipe.per_channel
                          else "XNNPACKQuantizer symmetric int8, per-tensor weights",
                **recipe.to_dict(),
                "calibration": {**calibration.record(), "limit": options.calibration_limit},
                "output_scale": quantized.output_scale,
                "output_zero_point": quantized.output_zero_point,
            }
            program_source = quantized.graph_module
        else:
            program_source = model

        manager, delegation = lower(program_source, example, log, exact_tanh_gelu=not options.extra.get("fast_gelu"))
        outside = delegation["outside"]
        if outside and not options.allow_partial:
            named = ", ".join(f"{op} x{n}" for op, n in sorted(outside.items()))
            raise DelegationError(
                f"{sum(outside.values())} compute op(s) left outside the XNNPACK delegate ({named}); "
                "rewrite them in delegable form (e.g. float constants, mean with keepdim) or pass --allow-partial"
            )
        buffer = manager.buffer
        dest.write_bytes(buffer)
        if quantized is not None:
            remember_quantized(buffer, quantized)

        fields = {
            "target": self.name,
            "format": "pte",
            "precision": "int8" if quantized is not None else "fp32",
            "quantization": quantization,
            "input": input_contract(built, options.normalize_in_model),
            "output": {"name": built.spec.output, "kind": built.spec.output, "shape": out_shape, "dtype": "float32"},
            "delegation": delegation,
            "runtime": runtime_record("XnnpackBackend"),
            "export": {
                "lowering": "torch.export -> to_edge_transform_and_lower(XnnpackPartitioner) -> to_executorch",
                "backend": "XnnpackBackend",
                "method": "forward",
                "lower_seconds": round(time.perf_counter() - t0, 2),
            },
        }
        if options.bundled:
            side = dest.with_suffix(".bpte")
            cases = write_bundled(manager, dest, built, options, side, quantized.output_scale if quantized else None)
            fields["export"]["bundled"] = cases
            fields["side_files"] = [side]
        return fields

    # --- checking and running -----------------------------------------------------------

    def check_file(self, artifact: Path) -> None:
        p = Path(artifact)
        if not p.exists():
            raise ArtifactError(f"{p} does not exist; check the path or export again")
        if not p.is_file():
            raise ArtifactError(f"{p.name} is not a file; an ExecuTorch program is a single .pte/.bpte file")
        size = p.stat().st_size
        if size < MIN_BYTES:
            raise ArtifactError(f"{p.name} is {size} bytes, too small to be an ExecuTorch program; it is truncated, export it again")
        with open(p, "rb") as fh:
            head = fh.read(8)
        expected = BUNDLED_MAGIC if p.suffix.lower() == ".bpte" else MAGIC
        if head[4:8] != expected:
            raise ArtifactError(
                f"{p.name} does not start like an ExecuTorch {'bundled program' if expected == BUNDLED_MAGIC else 'program'} "
                f"(bytes 4-8 are {head[4:8]!r}, expected {expected!r}); the file is damaged or of another format, export it again"
            )

    def run(self, artifact: Path, entry: dict, inputs: list[np.ndarray]) -> list[np.ndarray]:
        outputs, _ = self.run_with_extras(artifact, entry, inputs)
        return outputs

    def run_with_extras(self, artifact: Path, entry: dict, inputs: list[np.ndarray], threads: int = 1,
                        etdump_dir: Path | None = None) -> tuple[list[np.ndarray], dict]:
        """Outputs plus what the child reported besides them (for a .bpte, the result of
        each embedded self-check case)."""
        from .runtime import run_isolated

        self.check_file(Path(artifact))
        bundled = ((entry.get("export") or {}).get("bundled") or {}) if Path(artifact).suffix == ".bpte" else {}
        tolerance = (bundled["rtol"], bundled["atol"]) if "rtol" in bundled else None
        results = run_isolated(artifact, inputs, threads=threads, etdump_dir=etdump_dir,
                               bundled_cases=bundled.get("cases"), bundled_tolerance=tolerance)
        outputs = [results[f"out{i}"] for i in range(len(inputs))]
        extras = {k: v for k, v in results.items() if not k.startswith("out")}
        return outputs, extras


# --- building blocks (also used by verify's per-layer report) ---------------------------


def with_normalization(module, mean, std):
    """Wrap `module` so it takes RGB in [0, 1]: (x - mean) / std as x * (1/std) + (-mean/std),
    one multiply and one add that XNNPACK fuses cheaply, in float constants (integer
    scalars would leave copies outside the delegate)."""
    import torch

    class NormalizedInput(torch.nn.Module):
        def __init__(self, model, mean, std):
            super().__init__()
            std_t = torch.tensor(std, dtype=torch.float32).reshape(1, 3, 1, 1)
            mean_t = torch.tensor(mean, dtype=torch.float32).reshape(1, 3, 1, 1)
            self.register_buffer("inv_std", 1.0 / std_t)
            self.register_buffer("shift", -mean_t / std_t)
            self.model = model

        def forward(self, x):
            return self.model(x * self.inv_std + self.shift)

    return NormalizedInput(module, mean, std).eval()


def lower(module, example, log=lambda _m: None, per_op: bool = False, etrecord: bool = False,
          exact_tanh_gelu: bool = True):
    """torch.export + XNNPACK lowering; returns (ExecutorchProgramManager, delegation summary).
    `per_op`: one delegate per op (for per-layer numerics); `etrecord`: keep an ETRecord;
    `exact_tanh_gelu`: False lets XNNPACK run tanh GELU as its erf GELU (faster, see
    `spell_out_tanh_gelu`)."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.utils.configs import get_transform_passes
    from executorch.exir import to_edge_transform_and_lower

    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            exported = torch.export.export(module, (example,), strict=False)
            tanh_gelus = count_tanh_gelu(exported)
            if tanh_gelus and exact_tanh_gelu:
                exported = spell_out_tanh_gelu(exported)
            edge = to_edge_transform_and_lower(
                exported, partitioner=[XnnpackPartitioner(per_op_mode=per_op)],
                transform_passes=get_transform_passes(), generate_etrecord=etrecord,
            )
        delegation = delegation_summary(edge.exported_program().graph_module)
        if tanh_gelus:
            delegation["tanh_gelu"] = {"count": tanh_gelus, "runs_as": TANH_GELU_EXACT if exact_tanh_gelu else TANH_GELU_FAST}
        manager = edge.to_executorch()
    except (ExportError, MemoryError):
        raise
    except Exception as exc:  # torch.export / exir raise many types; keep one line
        raise ExportError(f"ExecuTorch lowering failed ({first_line(exc)}); the model uses an op torch.export/XNNPACK cannot take") from None
    log(f"lowered to XNNPACK in {time.perf_counter() - t0:.1f}s: {delegation['delegated_ops']} op(s) delegated in "
        f"{delegation['delegated_subgraphs']} subgraph(s), {sum(delegation['outside'].values())} outside"
        + (f"; {tanh_gelus} tanh GELU run as {delegation['tanh_gelu']['runs_as']}" if tanh_gelus else ""))
    return manager, delegation


GELU_SIGMOID_C0 = 1.5957691216057308  # 2 * sqrt(2 / pi): 0.5 * (1 + tanh(z)) = sigmoid(2 z)
GELU_SIGMOID_C1 = 0.07135481627260025  # 2 * sqrt(2 / pi) * 0.044715


TANH_GELU_EXACT = "tanh GELU, written out"
TANH_GELU_FAST = "erf GELU (XNNPACK's op, --fast-gelu)"


def uses_tanh_gelu(module) -> bool:
    import torch

    return any(isinstance(m, torch.nn.GELU) and m.approximate == "tanh" for m in module.modules())


def count_tanh_gelu(exported) -> int:
    import torch

    return sum(1 for n in exported.graph.nodes
               if n.target == torch.ops.aten.gelu.default and n.kwargs.get("approximate", "none") == "tanh")


def spell_out_tanh_gelu(exported):
    """ExecuTorch 1.5.1's XNNPACK delegate runs every aten.gelu as exact (erf) GELU and ignores
    approximate="tanh" (fixed upstream after 1.5.1 in pytorch/executorch#22851, which needs a
    newer runtime). V5 uses tanh GELU: delegated as is, each one is 74 dB off PyTorch (the erf vs
    tanh gap), and the 31 of v5-base take it under the 60 dB fp32 row at 64 px. Written as
    x * sigmoid(x * (c0 + c1 x^2)), the same function in 5 ops XNNPACK runs as written, it
    matches PyTorch to float rounding."""
    import torch

    gelu = torch.ops.aten.gelu.default
    if not count_tanh_gelu(exported):
        return exported

    def tanh_gelu(x, approximate="none"):
        if approximate != "tanh":
            return NotImplemented  # exact GELU: XNNPACK's own op is right
        return x * torch.sigmoid(x * (GELU_SIGMOID_C0 + GELU_SIGMOID_C1 * (x * x)))

    return exported.run_decompositions({gelu: tanh_gelu})


def _op_name(node) -> str:
    """"aten.convolution.default" for aten/edge ops, the function name otherwise."""
    target = getattr(node.target, "_op", node.target)  # EdgeOpOverload wraps an OpOverload
    if hasattr(target, "_schema"):
        return str(target).replace("torch.ops.", "")
    return getattr(target, "__name__", None) or str(target)


def delegation_summary(graph_module, backend: str = "XnnpackBackend") -> dict:
    """Per-op counts inside and outside the delegate (XNNPACK, or `backend`), from the
    lowered edge graph."""
    inside: dict[str, int] = {}
    outside: dict[str, int] = {}
    subgraphs = 0
    for node in graph_module.graph.nodes:
        if node.op == "get_attr" and node.name.startswith("lowered_module"):
            subgraphs += 1
            lowered = getattr(graph_module, node.target)
            for inner in lowered.original_module.graph.nodes:
                if inner.op == "call_function":
                    op = _op_name(inner)
                    if op.split(".")[-1] not in BOOKKEEPING and "getitem" not in op:
                        inside[op] = inside.get(op, 0) + 1
        elif node.op == "call_function":
            op = _op_name(node)
            if "getitem" in op or "executorch_call_delegate" in op or op.split(".")[-1] in BOOKKEEPING:
                continue
            outside[op] = outside.get(op, 0) + 1
    return {
        "backend": backend,
        "delegated_subgraphs": subgraphs,
        "delegated_ops": sum(inside.values()),
        "outside": dict(sorted(outside.items())),
        "complete": not outside,
        "by_operator": dict(sorted(inside.items())),
    }


def runtime_record(backend: str) -> dict:
    """Which runtime and backend the file needs on the device, and the ExecuTorch version
    that wrote it (no forward compatibility: the app's runtime must not be older)."""
    from importlib import metadata

    return {"name": "executorch", "version": metadata.version("executorch"), "backends": [backend]}


def input_contract(built, normalized_in_model: bool) -> dict:
    pre = built.preprocess
    if normalized_in_model:
        value_range = [0.0, 1.0]
    else:
        lows = [(0.0 - m) / s for m, s in zip(pre.mean, pre.std)]
        highs = [(1.0 - m) / s for m, s in zip(pre.mean, pre.std)]
        value_range = [round(min(lows), 6), round(max(highs), 6)]
    return {
        "name": "x", "kind": "tensor", "shape": list(built.input_shape), "layout": "NCHW", "dtype": "float32",
        "color": "RGB", "value_range": value_range, "normalized_in_model": normalized_in_model,
    }


def write_bundled(manager, program_path: Path, built, options: ExportOptions, dest: Path, output_scale) -> dict:
    """A .bpte: the same program plus BUNDLED_CASES real photos and the outputs this program
    gives for them in the desktop runtime (already checked against PyTorch by verify), so
    the app can check the runtime on the device itself. Tolerance: float kernels differ by
    device (rtol 1e-3); int8 may differ by one requantization step."""
    from executorch.devtools.bundled_program.config import MethodTestCase, MethodTestSuite
    from executorch.devtools.bundled_program.core import BundledProgram
    from executorch.devtools.bundled_program.serialize import serialize_from_bundled_program_to_flatbuffer

    from ..preprocess import default_images
    from ..quantize.calibration import to_tensor
    from .runtime import run_isolated

    batch = default_images(built.preprocess, normalized=not options.normalize_in_model)
    inputs = batch.inputs[:BUNDLED_CASES]
    results = run_isolated(program_path, inputs)
    cases = [MethodTestCase(inputs=[to_tensor(x)], expected_outputs=[to_tensor(results[f"out{i}"])])
             for i, x in enumerate(inputs)]
    suite = MethodTestSuite(method_name="forward", test_cases=cases)
    try:
        data = serialize_from_bundled_program_to_flatbuffer(BundledProgram(manager, [suite]))
    except Exception as exc:
        raise ExportError(f"could not build the bundled program ({first_line(exc)}); export without --bundled") from None
    dest.write_bytes(data)
    rtol, atol = (0.0, 1.01 * output_scale) if output_scale else (1e-3, 1e-4)
    return {"file": dest.name, "cases": len(cases), "images": [p.name for p in batch.paths[:BUNDLED_CASES]],
            "expected": "desktop ExecuTorch runtime outputs of this program", "rtol": rtol, "atol": atol}


# --- the quantized PyTorch model of an artifact made in this process --------------------

_QUANTIZED: dict[str, object] = {}


def remember_quantized(buffer: bytes, quantized) -> None:
    """Keep the convert_pt2e model of the last int8 exports, keyed by the .pte's sha256,
    so verify right after export compares against exactly the model that was lowered."""
    import hashlib

    _QUANTIZED[hashlib.sha256(buffer).hexdigest()] = quantized
    while len(_QUANTIZED) > 4:
        _QUANTIZED.pop(next(iter(_QUANTIZED)))


def quantized_for(sha256: str):
    return _QUANTIZED.get(sha256)
