"""What every target is: a small interface, so the pipeline, verify and bench know targets
only through it. Implementations import their backend (executorch, coremltools) lazily."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np


@dataclass
class ExportOptions:
    """Everything a user can ask of an export. Each target reads the fields it knows and
    rejects combinations it cannot honour in `validate`."""

    precision: str | None = None  # fp32 | fp16; None = the target's default
    quantize: str = "none"  # executorch: none | int8
    compress: str = "none"  # coreml: none | int8 | palettize4 | palettize6 | palettize-auto | w8a8
    size_budget: float = 0.15  # coreml palettize-auto: weights' bytes as a fraction of their fp32 bytes
    calibration: Path | None = None  # folder of images for int8 / w8a8
    calibration_limit: int = 64
    normalize_in_model: bool = True  # app feeds plain RGB in [0, 1] (tensor) or pixels (image)
    input_kind: str = "image"  # coreml: image | tensor (executorch is always tensor)
    classifier: bool = True  # coreml: classify op with labels + probabilities vs raw logits
    deployment_target: str | None = None  # coreml: "16" | "17" | "18"; None = fit the compression
    allow_partial: bool = False  # executorch(-coreml): accept ops outside the delegate
    compute_units: str = "all"  # executorch-coreml: all | cpu_and_ne | cpu_only | cpu_and_gpu
    bundled: bool = False  # executorch: also write a .bpte with reference inputs/outputs
    seed: int = 0
    extra: dict = field(default_factory=dict)


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
        May write side files (e.g. a .bpte) and list them under "side_files": [paths]."""

    @abstractmethod
    def check_file(self, artifact: Path) -> None:
        """Cheap structural check before anything loads the file (magic, layout); raises
        ArtifactError with a one-line reason."""

    @abstractmethod
    def run(self, artifact: Path, entry: dict, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Run the artifact on each input (float32 1x3xHxW prepared per the manifest's
        preprocess, normalized unless the artifact normalizes inside) and return one
        output array per input. Untrusted files run isolated (child process)."""
