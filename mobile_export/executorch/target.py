"""ExecuTorch .pte for Android: torch.export -> (int8 PT2E) -> to_edge_transform_and_lower
with the XNNPACK partitioner -> .pte; every compute op inside the XNNPACK delegate.

Input contract (the same numbers as the Core ML tensor input): float32 NCHW 1x3xRxR, RGB in
[0, 1]; mean/std are baked into the graph unless --normalize-outside. Output: float32
logits [1, classes] (or the feature tensor of backbone-only variants)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..errors import ArtifactError, DelegationError, ExportError, MobileExportError, UsageError, first_line
from ..manifest import ArtifactEntry
from ..targets.base import ExportOptions, Gelu, OpInfo, PerOpValues, QuantizedReference, QuantizeMode, Target
from .lowering import (
    TANH_GELU_EXACT,
    TANH_GELU_FAST,
    export_module,
    lower,
    runtime_record,
    uses_tanh_gelu,
    with_normalization,
)

__all__ = [
    "ExecuTorchTarget",
    "MAGIC",
    "BUNDLED_MAGIC",
    "TANH_GELU_EXACT",
    "TANH_GELU_FAST",
    "lower",
    "with_normalization",
    "input_contract",
    "write_bundled",
]

MAGIC = b"ET12"  # flatbuffer file identifier of an ExecuTorch program, bytes 4..8
BUNDLED_MAGIC = b"BP08"  # the same for a BundledProgram
MIN_BYTES = 64  # smaller than any real program: header + one empty plan
BUNDLED_CASES = 3  # real photos embedded in a .bpte for the on-device self-check
QUANT_MODE = "pt2e-int8"
BENCH_TIMEOUT_S = 900.0
DISTILL_IMAGE_LIMIT = 4096  # --qat: an even sample of at most this many images, decoded as used


def quant_scheme(recipe) -> str:
    """The manifest's one-line description of what the int8 file computes."""
    weights = "per-channel weights" if recipe.per_channel else "per-tensor weights"
    if recipe.dynamic:
        return f"XNNPACKQuantizer symmetric int8, {weights}, dynamic activations (per image at run time)"
    return f"XNNPACKQuantizer symmetric int8, {weights}"


class ExecuTorchTarget(Target):
    name: ClassVar[str] = "executorch"
    suffix: ClassVar[str] = ".pte"
    description: ClassVar[str] = "ExecuTorch .pte, XNNPACK (Android)"

    def variant_tag(self, options: ExportOptions) -> str:
        return "int8" if options.executorch.quantize == QuantizeMode.INT8 else "fp32"

    def validate(self, built, options: ExportOptions) -> None:
        opts = options.executorch  # modes and the recipe's observer are checked when it is built
        if opts.gelu == Gelu.FAST and not uses_tanh_gelu(built.module):
            raise UsageError(
                f"--fast-gelu changes only tanh GELU, which {built.spec.name} does not use (V5 does); drop the flag"
            )
        if opts.recipe is not None:
            from ..quantize.pt2e import unmatched_modules

            missing = unmatched_modules(built.module, opts.recipe.fp32_modules)
            if missing:
                raise UsageError(
                    f"fp32 module(s) {', '.join(missing)} match no module of {built.spec.name}; "
                    "name them as in its state dict (e.g. conv_stem, blocks.0, *.se)"
                )

    # --- export -------------------------------------------------------------------------

    def export(self, built, options: ExportOptions, dest: Path, log) -> dict:

        t0 = time.perf_counter()
        pre = built.preprocess
        model, example, out_shape = export_module(built, options.normalize_in_model)

        opts = options.executorch
        quantization: dict = {"mode": "none"}
        quantized = None
        if opts.quantize == QuantizeMode.INT8:
            from ..quantize import QuantRecipe, load_calibration, quantize_pt2e

            recipe = opts.recipe or QuantRecipe()
            if recipe.dynamic and options.calibration is not None:
                log(
                    "calibration: --calibration is not used by --recipe dynamic (no activation ranges to choose)"
                )
            calibration = (
                None  # activations are quantized per image at run time: nothing to calibrate
                if recipe.dynamic
                else load_calibration(
                    options.calibration,
                    pre,
                    limit=options.calibration_limit,
                    normalized=not options.normalize_in_model,
                    log=log,
                )
            )
            distill_images = None
            if recipe.learned:  # the export's --seed drives AdaRound's and distillation's sampling
                recipe = dataclasses.replace(recipe, seed=options.seed)
            if recipe.distill_epochs:
                distill_images = load_calibration(
                    opts.distill_folder,
                    pre,
                    limit=DISTILL_IMAGE_LIMIT,
                    normalized=not options.normalize_in_model,
                    log=log,
                )
            quantized = quantize_pt2e(
                model,
                example,
                calibration.inputs if calibration is not None else [],
                recipe,
                log,
                distill_inputs=distill_images.inputs if distill_images is not None else None,
            )
            quantization = {
                "mode": QUANT_MODE,
                "scheme": quant_scheme(recipe),
                **quantized.recipe.to_dict(),  # --keep-fp32 auto resolved into module names
                "calibration": {**calibration.record(), "limit": options.calibration_limit}
                if calibration is not None
                else {"source": "none", "images": 0},
                "output_scale": quantized.output_scale,
                "output_zero_point": quantized.output_zero_point,
            }
            if distill_images is not None:
                quantization["distillation_images"] = distill_images.digest_record()
            if quantized.learned:
                quantization["learned"] = quantized.learned
            if quantized.sensitivity:
                quantization["fp32_sensitivity"] = quantized.sensitivity
            program_source = quantized.graph_module
        else:
            program_source = model

        manager, delegation = lower(program_source, example, log, exact_tanh_gelu=opts.gelu == Gelu.EXACT)
        outside = delegation["outside"]
        if outside and not opts.allow_partial:
            named = ", ".join(f"{op} x{n}" for op, n in sorted(outside.items()))
            raise DelegationError(
                f"{sum(outside.values())} compute op(s) left outside the XNNPACK delegate ({named}); "
                "rewrite them in delegable form (e.g. float constants, mean with keepdim) or pass --allow-partial"
            )
        dest.write_bytes(manager.buffer)

        fields = {
            "target": self.name,
            "format": "pte",
            "precision": "int8" if quantized is not None else "fp32",
            "quantization": quantization,
            "input": input_contract(built, options.normalize_in_model),
            "output": {
                "name": built.spec.output,
                "kind": built.spec.output,
                "shape": out_shape,
                "dtype": "float32",
            },
            "delegation": delegation,
            "runtime": runtime_record("XnnpackBackend"),
            "export": {
                "lowering": "torch.export -> to_edge_transform_and_lower(XnnpackPartitioner) -> to_executorch",
                "backend": "XnnpackBackend",
                "method": "forward",
                "lower_seconds": round(time.perf_counter() - t0, 2),
            },
        }
        if opts.bundled:
            side = dest.with_suffix(".bpte")
            cases = write_bundled(
                manager, dest, built, options, side, quantized.output_scale if quantized else None
            )
            fields["export"]["bundled"] = cases
            fields["side_files"] = [side]
        if quantized is not None:  # handed to verify by the caller, never written to the manifest
            fields["quantized_model"] = quantized
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
            raise ArtifactError(
                f"{p.name} is {size} bytes, too small to be an ExecuTorch program; it is truncated, export it again"
            )
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

    def open_runner(self, artifact: Path, entry: dict, threads: int = 1):
        """One child process per batch (each untrusted file runs isolated), `threads` each."""
        return lambda inputs: self.run_with_extras(artifact, entry, inputs, threads=threads)[0]

    def run_with_extras(
        self,
        artifact: Path,
        entry: dict,
        inputs: list[np.ndarray],
        threads: int = 1,
        etdump_dir: Path | None = None,
    ) -> tuple[list[np.ndarray], dict]:
        """Outputs plus what the child reported besides them (for a .bpte, the result of
        each embedded self-check case)."""
        from .runtime import run_isolated

        self.check_file(Path(artifact))
        bundled = ArtifactEntry.from_dict(entry).bundled if Path(artifact).suffix == ".bpte" else {}
        tolerance = (bundled["rtol"], bundled["atol"]) if "rtol" in bundled else None
        results = run_isolated(
            artifact,
            inputs,
            threads=threads,
            etdump_dir=etdump_dir,
            bundled_cases=bundled.get("cases"),
            bundled_tolerance=tolerance,
        )
        outputs = [results[f"out{i}"] for i in range(len(inputs))]
        extras = {k: v for k, v in results.items() if not k.startswith("out")}
        return outputs, extras

    # --- what verify and bench ask besides ----------------------------------------------

    def cpu_emulation(self):
        from .arm import ArmEmulation

        return ArmEmulation()

    def benchmark(self, artifact: Path, entry: dict, threads: int, runs: int, warmup: int, log) -> dict:
        """Latency in the ExecuTorch runtime (the same child process verify uses): load time,
        first call, and one time per timed call, on a fixed random input of the entry's shape."""
        from .runtime import run_isolated

        self.check_file(Path(artifact))
        log(f"timing {Path(artifact).name} in the ExecuTorch runtime ({threads} thread(s), {runs} runs)...")
        x = np.random.default_rng(0).random(
            tuple(ArtifactEntry.from_dict(entry).input["shape"]), dtype=np.float32
        )
        results = run_isolated(
            artifact, [x], threads=threads, time_runs=runs, warmup=warmup, timeout=BENCH_TIMEOUT_S
        )
        return {
            "load_ms": round(float(results["load_ms"]), 3),
            "first_run_ms": round(float(results["first_ms"]), 3),
            "times_ms": [float(t) for t in results["times_ms"]],
        }

    # --- what verify asks besides ------------------------------------------------------

    def quantized_reference(
        self, artifact: Path, entry: dict, built, manifest: dict
    ) -> QuantizedReference | None:
        if not ArtifactEntry.from_dict(entry).quantized:
            return None
        from .quantized_reference import rebuild

        return rebuild(entry, built)

    def per_op_values(
        self, artifact: Path, entry: dict, built, inputs, quantized: QuantizedReference | None, sink, log
    ) -> PerOpValues:
        """int8: the quantized PyTorch model vs its float twin, layer by layer (where quantization
        error enters). fp32: the shipped .pte is one XNNPACK delegate and cannot give per-op
        values, so its per-op twin (etdump.py: the same model lowered one delegate per op) runs
        with ETDump and the Inspector compares every op with PyTorch; if that fails, the reason is
        logged and only the whole-program row is written."""
        artifact = Path(artifact)
        feed = inputs.raw if ArtifactEntry.from_dict(entry).normalized_in_model else inputs.normalized
        whole = OpInfo(
            "runtime", f"{artifact.suffix.lstrip('.')} vs PyTorch", "(whole program, XNNPACK kernels)"
        )
        if quantized is not None and quantized.model is not None:
            from .quantized_layers import EXACT_DB, quantized_layer_values

            return PerOpValues(
                ops=quantized_layer_values(quantized.model, feed, sink),
                title=f"{artifact.name}: per-layer error ({len(feed)} real images)",
                source="quantized PyTorch model vs its float twin, layer by layer",
                whole=whole,
                exact_db=EXACT_DB,
            )
        if quantized is not None:
            raise MobileExportError(
                f"--per-layer needs the quantized PyTorch model, which is {quantized.how}"
            )
        from .etdump import FP32_EXACT_DB, TWIN_IMAGES, twin_values

        images = list(feed[:TWIN_IMAGES])
        try:
            ops = twin_values(built, entry, images, sink, log)
        except Exception as exc:  # lowering, the child, ETRecord and the Inspector raise many types
            why = f"per-op twin of {artifact.name} failed ({first_line(exc)}); whole-program row only"
            log(why)
            return PerOpValues(
                ops=[],
                title=f"{artifact.name}: whole-program error only ({len(feed)} real images)",
                source=why,
                whole=whole,
            )
        return PerOpValues(
            ops=ops,
            title=(
                f"{artifact.name}: per-op twin of the .pte (one XNNPACK delegate per op, ETDump "
                f"on {len(images)} real images) + the shipped .pte as the last row"
            ),
            source="per-op twin of the .pte, ETDump + Inspector",
            whole=whole,
            exact_db=FP32_EXACT_DB,
        )


def input_contract(built, normalized_in_model: bool) -> dict:
    pre = built.preprocess
    if normalized_in_model:
        value_range = [0.0, 1.0]
    else:
        lows = [(0.0 - m) / s for m, s in zip(pre.mean, pre.std)]
        highs = [(1.0 - m) / s for m, s in zip(pre.mean, pre.std)]
        value_range = [round(min(lows), 6), round(max(highs), 6)]
    return {
        "name": "x",
        "kind": "tensor",
        "shape": list(built.input_shape),
        "layout": "NCHW",
        "dtype": "float32",
        "color": "RGB",
        "value_range": value_range,
        "normalized_in_model": normalized_in_model,
    }


def write_bundled(
    manager, program_path: Path, built, options: ExportOptions, dest: Path, output_scale
) -> dict:
    """A .bpte: the same program plus BUNDLED_CASES real photos and the outputs this program
    gives for them in the desktop runtime (already checked against PyTorch by verify), so
    the app can check the runtime on the device itself. Tolerance: float kernels differ by
    device (rtol 1e-3); int8 may differ by one requantization step.

    Why the runtime's outputs and not PyTorch's: the embedded check is an element-wise
    allclose run on the phone, and its question is "does this device's runtime compute what
    the desktop runtime computed for this very file". Export-vs-PyTorch is verify's question,
    answered on many images with the precision's statistics (SQNR, agreement), which an
    element-wise tolerance cannot express: PyTorch outputs would need a tolerance as wide as
    the int8 error itself (many output steps), and a device kernel that is off by a few
    steps would then pass. On the desktop the check is equal by construction; what proves it
    can fail is tests/test_bundled_self_check.py (an edited expected output is reported)."""
    from executorch.devtools.bundled_program.config import MethodTestCase, MethodTestSuite
    from executorch.devtools.bundled_program.core import BundledProgram
    from executorch.devtools.bundled_program.serialize import serialize_from_bundled_program_to_flatbuffer

    from ..preprocess import default_images
    from ..quantize.calibration import to_tensor
    from .runtime import run_isolated

    batch = default_images(built.preprocess, normalized=not options.normalize_in_model)
    inputs = batch.inputs[:BUNDLED_CASES]
    results = run_isolated(program_path, inputs)
    cases = [
        MethodTestCase(inputs=[to_tensor(x)], expected_outputs=[to_tensor(results[f"out{i}"])])
        for i, x in enumerate(inputs)
    ]
    suite = MethodTestSuite(method_name="forward", test_cases=cases)
    try:
        data = serialize_from_bundled_program_to_flatbuffer(BundledProgram(manager, [suite]))
    except Exception as exc:
        raise ExportError(
            f"could not build the bundled program ({first_line(exc)}); export without --bundled"
        ) from None
    dest.write_bytes(data)
    rtol, atol = (0.0, 1.01 * output_scale) if output_scale else (1e-3, 1e-4)
    return {
        "file": dest.name,
        "cases": len(cases),
        "images": [p.name for p in batch.paths[:BUNDLED_CASES]],
        "expected": "desktop ExecuTorch runtime outputs of this program",
        "rtol": rtol,
        "atol": atol,
    }
