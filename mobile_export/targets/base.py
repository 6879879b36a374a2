"""What every target is: a small interface, so the pipeline, verify and bench know targets
only through it. Implementations import their backend (executorch, coremltools) lazily."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np

from ..errors import UsageError
from ..manifest import ArtifactEntry

# (op name, reference value, artifact value) of one op on one image: how a backend hands its
# raw per-op values to verify, which accumulates them into per-layer rows.
ValueSink = Callable[[str, np.ndarray, np.ndarray], None]


class Choice(str, Enum):
    """A mode chosen from a fixed set: compares and prints as its plain value ("int8")."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @classmethod
    def parse(cls, value, what: str):
        """`value` as a member, or UsageError naming `what` and the choices."""
        if value is None or isinstance(value, cls):
            return value
        try:
            return cls(value)
        except ValueError:
            raise UsageError(
                f"{what} {value!r} is not supported; choose one of: {', '.join(m.value for m in cls)}"
            ) from None


# The modes a user picks from, as data (members are UPPER-case names of their values).
QuantizeMode = Choice("QuantizeMode", {"NONE": "none", "INT8": "int8"}, module=__name__)
CompressMode = Choice(
    "CompressMode",
    {
        "NONE": "none",
        "INT8": "int8",
        "PALETTIZE4": "palettize4",
        "PALETTIZE6": "palettize6",
        "PALETTIZE_AUTO": "palettize-auto",
        "W8A8": "w8a8",
    },
    module=__name__,
)
Precision = Choice("Precision", {"FP16": "fp16", "FP32": "fp32"}, module=__name__)
InputKind = Choice("InputKind", {"IMAGE": "image", "TENSOR": "tensor"}, module=__name__)
# How an ExecuTorch .pte runs tanh GELU (V5): written out exactly, or as XNNPACK's erf GELU.
Gelu = Choice("Gelu", {"EXACT": "exact", "FAST": "fast"}, module=__name__)


@dataclass(frozen=True)
class ExecuTorchOptions:
    """What only the ExecuTorch target reads; checked when built."""

    quantize: QuantizeMode = QuantizeMode.NONE
    recipe: object | None = None  # quantize.QuantRecipe for int8 (None: the default recipe)
    distill_folder: Path | None = None  # unlabelled images for the recipe's distillation (--qat DIR)
    gelu: Gelu = Gelu.EXACT
    allow_partial: bool = False  # accept ops outside the XNNPACK delegate
    bundled: bool = False  # also write a .bpte with reference inputs/outputs

    def __post_init__(self):
        object.__setattr__(self, "quantize", QuantizeMode.parse(self.quantize, "--quantize"))
        object.__setattr__(self, "gelu", Gelu.parse(self.gelu, "GELU choice"))
        if self.recipe is not None:
            from ..errors import ExportError
            from ..quantize.pt2e import OBSERVERS, QuantRecipe

            try:
                recipe = (
                    self.recipe
                    if isinstance(self.recipe, QuantRecipe)
                    else QuantRecipe.from_dict(self.recipe)
                )
            except ExportError as exc:  # a recipe is options: its faults are usage errors
                raise UsageError(str(exc)) from None
            if recipe.observer not in OBSERVERS:
                raise UsageError(
                    f"unknown activation observer {recipe.observer!r}; choose one of {', '.join(OBSERVERS)}"
                )
            if self.quantize != QuantizeMode.INT8:
                raise UsageError(
                    "--keep-fp32, --bias-correction, --recipe and --qat shape int8 quantization; add --quantize int8"
                )
            if recipe.distill_epochs and self.distill_folder is None:
                raise UsageError("distillation needs a folder of unlabelled images; pass --qat DIR")
            object.__setattr__(self, "recipe", recipe)


#: Share (%) of W8A8 activation tensors `--keep-fp16 auto` leaves in fp16 (coreml.fp16_activations).
KEEP_FP16_DEFAULT_PERCENT = 10.0


@dataclass(frozen=True)
class CoreMLOptions:
    """What only the Core ML target reads; checked when built."""

    precision: Precision | None = None  # None: the target's default (fp16)
    compress: CompressMode = CompressMode.NONE
    input_kind: InputKind = InputKind.IMAGE
    classifier: bool = True  # classify op with labels + probabilities vs raw logits
    deployment_target: str | None = None  # "16" | "17" | "18"; None = fit the compression
    size_budget: float = 0.15  # palettize-auto: weights' bytes as a fraction of their fp32 bytes
    compute_units: str = (
        "all"  # executorch-coreml: all | cpu_and_ne | cpu_only | cpu_and_gpu (stored in the .pte)
    )
    fp16_activations: float | None = None  # w8a8: % of activation tensors left fp16 by sensitivity

    def __post_init__(self):
        if self.compute_units not in ("all", "cpu_and_ne", "cpu_only", "cpu_and_gpu"):
            raise UsageError(
                f"--compute-units {self.compute_units!r} is not supported; "
                "choose one of: all, cpu_and_ne, cpu_only, cpu_and_gpu"
            )
        if not 0.05 <= float(self.size_budget) <= 0.5:
            raise UsageError(
                f"--size-budget {self.size_budget} is outside 0.05-0.5 (a fraction of the fp32 size)"
            )
        object.__setattr__(self, "precision", Precision.parse(self.precision, "precision"))
        object.__setattr__(self, "compress", CompressMode.parse(self.compress, "--compress"))
        object.__setattr__(self, "input_kind", InputKind.parse(self.input_kind, "Core ML input"))
        if self.fp16_activations is not None:
            if self.compress != CompressMode.W8A8:
                raise UsageError("--keep-fp16 chooses which W8A8 activations stay fp16; add --compress w8a8")
            if not 0 < float(self.fp16_activations) <= 50:
                raise UsageError(
                    f"--keep-fp16 auto:{self.fp16_activations:g} is outside 0-50 (percent of the activation tensors)"
                )
        if self.deployment_target is not None and str(self.deployment_target) not in ("16", "17", "18"):
            raise UsageError(f"--ios {self.deployment_target!r} is not supported; choose one of: 16, 17, 18")


@dataclass
class ExportOptions:
    """Everything a user can ask of an export: what every target shares, and one option
    dataclass per backend (`executorch`, `coreml`). The flat fields below are the same
    values, kept so callers can still write ExportOptions(quantize="int8", ...); modes are
    enums, checked when the options are built."""

    precision: Precision | None = None  # fp32 | fp16; None = the target's default
    quantize: QuantizeMode = QuantizeMode.NONE  # executorch: none | int8
    compress: CompressMode = (
        CompressMode.NONE
    )  # coreml: none | int8 | palettize4 | palettize6 | palettize-auto | w8a8
    size_budget: float = 0.15  # coreml palettize-auto: weights' bytes as a fraction of their fp32 bytes
    calibration: Path | None = None  # folder of images for int8 / w8a8
    calibration_limit: int = 64
    normalize_in_model: bool = True  # app feeds plain RGB in [0, 1] (tensor) or pixels (image)
    input_kind: InputKind = InputKind.IMAGE  # coreml: image | tensor (executorch is always tensor)
    classifier: bool = True  # coreml: classify op with labels + probabilities vs raw logits
    deployment_target: str | None = None  # coreml: "16" | "17" | "18"; None = fit the compression
    allow_partial: bool = False  # executorch(-coreml): accept ops outside the delegate
    compute_units: str = "all"  # executorch-coreml: all | cpu_and_ne | cpu_only | cpu_and_gpu
    bundled: bool = False  # executorch: also write a .bpte with reference inputs/outputs
    seed: int = 0
    quant_recipe: object | None = None  # executorch int8: quantize.QuantRecipe (or its dict)
    distill_folder: Path | None = None  # executorch int8 --qat: unlabelled images to distill on
    gelu: Gelu = Gelu.EXACT  # executorch: tanh GELU written out, or XNNPACK's erf GELU
    fp16_activations: float | None = None  # coreml w8a8: % of activation tensors left fp16

    def __post_init__(self):
        et, cm = self.executorch, self.coreml  # validates, and normalizes the flat fields to enums
        self.quantize, self.quant_recipe, self.gelu = et.quantize, et.recipe, et.gelu
        self.precision, self.compress, self.input_kind = cm.precision, cm.compress, cm.input_kind

    @classmethod
    def of(cls, executorch: ExecuTorchOptions, coreml: CoreMLOptions, **shared) -> ExportOptions:
        """From the per-backend dataclasses plus the shared fields (calibration, seed, ...)."""
        return cls(
            quantize=executorch.quantize,
            quant_recipe=executorch.recipe,
            distill_folder=executorch.distill_folder,
            gelu=executorch.gelu,
            allow_partial=executorch.allow_partial,
            bundled=executorch.bundled,
            precision=coreml.precision,
            compress=coreml.compress,
            input_kind=coreml.input_kind,
            classifier=coreml.classifier,
            deployment_target=coreml.deployment_target,
            size_budget=coreml.size_budget,
            compute_units=coreml.compute_units,
            fp16_activations=coreml.fp16_activations,
            **shared,
        )

    @property
    def executorch(self) -> ExecuTorchOptions:
        return ExecuTorchOptions(
            quantize=self.quantize,
            recipe=self.quant_recipe,
            distill_folder=self.distill_folder,
            gelu=self.gelu,
            allow_partial=self.allow_partial,
            bundled=self.bundled,
        )

    @property
    def coreml(self) -> CoreMLOptions:
        return CoreMLOptions(
            self.precision,
            self.compress,
            self.input_kind,
            self.classifier,
            self.deployment_target,
            self.size_budget,
            self.compute_units,
            self.fp16_activations,
        )


@dataclass
class OpInfo:
    """One op of an artifact that a backend compared with the reference, for a per-layer row."""

    name: str  # unique within one report: the value name the backend passed to the sink
    op: str  # short op type: conv2d, linear, add ...
    module: str = ""  # source module path (what QuantRecipe.fp32_modules takes)
    # The ops (names) whose error reaches this op's input: () = exact inputs (the graph input,
    # constants); None = unknown (no loss is computed for this row).
    feeds: tuple[str, ...] | None = ()
    index: int | None = None  # position in graph order; None = its position among the rows


@dataclass
class PerOpValues:
    """What a backend measured per op (the values went to the sink), and how to present it."""

    ops: list[OpInfo]  # graph order
    title: str
    source: str
    whole: OpInfo | None = None  # the row for the artifact as a whole (name, op, module)
    exact_db: float | None = None  # loss = min(upstream, exact_db) - min(own, exact_db); None: uncapped


@dataclass
class QuantizedReference:
    """The quantized PyTorch model an artifact was lowered from (a second reference: the runtime
    must match it to about one output step), and one sentence saying where it came from or, with
    model None, why it is missing."""

    model: object | None
    how: str


@dataclass
class StoredWeights:
    """The weights a weight-compressed artifact stores for each conv/linear, decompressed, in the
    order its program runs them. PyTorch with these weights is a second reference: the artifact
    must match it to about its compute precision, so an error in the graph (a dropped
    activation) cannot hide inside the compression's own error (issue 21)."""

    layers: list[tuple[str, str, np.ndarray]]  # (op type "conv"/"linear", op name, weight as stored)
    # Per input channel factor the artifact folded into its first conv's weights (1/std), else None
    input_scale: tuple[float, ...] | None
    how: str


class CpuEmulation(ABC):
    """A target's artifacts on emulated phone CPUs (`verify --cpu`, `bench --cpu`, `setup-arm`):
    the phone's own kernels, run on this host under an emulator set up once (the "kit")."""

    @abstractmethod
    def setup(self, log) -> dict:
        """Fetch and build the kit; returns {"kit": {...}, "fetched": [...], "seconds": s}."""

    @abstractmethod
    def find_kit(self):
        """The installed kit; EmulationError naming the setup command when it is missing."""

    @abstractmethod
    def parse_cpus(self, text: str | None) -> list:
        """CPU rows from "a76,a55"; UsageError naming the known CPUs for an unknown one."""

    @abstractmethod
    def run_on_cpu(self, kit, artifact: Path, inputs, cpu) -> np.ndarray:
        """Outputs (one row per input) of `artifact` on the emulated `cpu`."""

    @abstractmethod
    def bench(self, artifacts: list[Path], cpus: list, log) -> dict:
        """Instructions per inference of each artifact on each CPU."""

    @abstractmethod
    def format_bench(self, result: dict) -> str:
        """`bench` as the lines a person reads."""


class Target(ABC):
    name: ClassVar[str]
    suffix: ClassVar[str]  # ".pte", ".mlpackage"
    description: ClassVar[str]

    def artifact_name(self, built, options: ExportOptions) -> str:
        """File name of the artifact, e.g. mobilenet_v2_100_int8.pte."""
        return f"{built.spec.name}_{self.variant_tag(options)}{self.suffix}"

    @abstractmethod
    def variant_tag(self, options: ExportOptions) -> str:
        """Short tag of precision/compression for the file name: fp32, int8, fp16_pal4, ..."""

    @abstractmethod
    def validate(self, built, options: ExportOptions) -> None:
        """Raise UsageError for what cannot work, before any heavy work starts."""

    @abstractmethod
    def export(self, built, options: ExportOptions, dest: Path, log) -> dict:
        """Write the artifact at `dest` (a temporary path the caller renames) and return the
        manifest fields that only the target knows: target, format, precision,
        quantization, input, output, delegation... (file/bytes/sha256 are added by the caller).
        May write side files (e.g. a .bpte) and list them under "side_files": [paths]. A target
        that quantizes returns the quantized PyTorch model it lowered under "quantized_model"
        (not written to the manifest): the caller hands it to verify."""

    @abstractmethod
    def check_file(self, artifact: Path) -> None:
        """Cheap structural check before anything loads the file (magic, layout); raises
        ArtifactError with a one-line reason."""

    @abstractmethod
    def run(self, artifact: Path, entry: dict, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Run the artifact on each input (float32 1x3xHxW prepared per the manifest's
        preprocess, normalized unless the artifact normalizes inside) and return one
        output array per input. Untrusted files run isolated (child process)."""

    # --- what verify and bench ask besides; the defaults fit a target with nothing more to say

    def open_runner(self, artifact: Path, entry: dict, threads: int = 1):
        """`run` as a callable inputs -> outputs, for callers that feed batch after batch (eval);
        a target that can load its artifact once overrides it."""
        return lambda inputs: self.run(artifact, entry, inputs)

    def run_with_extras(
        self, artifact: Path, entry: dict, inputs: list[np.ndarray]
    ) -> tuple[list[np.ndarray], dict]:
        """`run`, plus whatever else the run reported (e.g. a bundled program's self-check:
        {"bundled_ok": [0/1 per embedded case]})."""
        return self.run(artifact, entry, inputs), {}

    def output_quantity(self, entry: dict) -> str:
        """What `run` returns: "logits", "probabilities", "log_probabilities" or "features";
        verify turns the reference's logits into the same quantity."""
        kind = ArtifactEntry.from_dict(entry).output_kind
        return "probabilities" if kind in ("probabilities", "classifier") else kind

    def quantized_reference(
        self, artifact: Path, entry: dict, built, manifest: dict
    ) -> QuantizedReference | None:
        """The quantized PyTorch model behind a quantized artifact, rebuilt from the manifest's
        recipe; None when the target has no such model (e.g. weight-only compression)."""
        return None

    def stored_weights(self, artifact: Path, entry: dict, manifest: dict) -> StoredWeights | None:
        """The artifact's decompressed conv/linear weights when its compression changes only the
        weights (verify builds PyTorch with them); None when it does not apply."""
        return None

    def per_op_values(
        self,
        artifact: Path,
        entry: dict,
        built,
        inputs,
        quantized: QuantizedReference | None,
        sink: ValueSink,
        log,
    ) -> PerOpValues:
        """Compare the artifact with `built` op by op on `inputs` (verify.reference.Inputs):
        every (name, reference, artifact) value goes to `sink`; returns the ops in graph order."""
        raise UsageError(f"--per-layer is not available for {self.name} artifacts")

    def cpu_emulation(self) -> CpuEmulation | None:
        """How this target's files run on emulated phone CPUs; None when the backend has no way."""
        return None

    def require_cpu_emulation(self, artifact: Path) -> CpuEmulation:
        """`cpu_emulation()`, or the one-line refusal `--cpu` gives for a file that cannot run there."""
        emulation = self.cpu_emulation()
        if emulation is None:
            raise UsageError(
                f"--cpu runs XNNPACK .pte files on emulated ARM CPUs; {artifact.name} is not one "
                "(export --target executorch)"
            )
        return emulation

    def benchmark(self, artifact: Path, entry: dict, threads: int, runs: int, warmup: int, log) -> dict:
        """What `mobile-export bench` reports for the artifact itself (latency where this host can
        run it, else size and structure), as one JSON-ready dict."""
        return {}
