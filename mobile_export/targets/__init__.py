"""Target registry: names the available choices when one is unknown."""

from __future__ import annotations

import importlib
from pathlib import Path

from ..errors import UsageError
from .base import (
    CompressMode,
    CoreMLOptions,
    CpuEmulation,
    ExecuTorchOptions,
    ExportOptions,
    Gelu,
    InputKind,
    OpInfo,
    PerOpValues,
    Precision,
    QuantizedReference,
    QuantizeMode,
    StoredWeights,
    Target,
    ValueSink,
)

_TARGETS = {
    "executorch": (
        "mobile_export.executorch.target:ExecuTorchTarget",
        ".pte",
        "ExecuTorch .pte, XNNPACK (Android)",
    ),
    "coreml": (
        "mobile_export.coreml.target:CoreMLTarget",
        ".mlpackage",
        "Core ML ML Program .mlpackage (iOS)",
    ),
    "executorch-coreml": (
        "mobile_export.executorch.coreml_delegate:ExecuTorchCoreMLTarget",
        ".pte",
        "ExecuTorch .pte, Core ML delegate (iOS)",
    ),
}
ALL = ("executorch", "coreml")  # what "all" exports (executorch-coreml only when named)
_SUFFIXES = {".pte": "executorch", ".bpte": "executorch", ".mlpackage": "coreml"}

__all__ = [
    "CompressMode",
    "CoreMLOptions",
    "CpuEmulation",
    "ExecuTorchOptions",
    "ExportOptions",
    "Gelu",
    "InputKind",
    "Precision",
    "QuantizeMode",
    "OpInfo",
    "PerOpValues",
    "QuantizedReference",
    "StoredWeights",
    "Target",
    "ValueSink",
    "available",
    "get_target",
    "target_for_artifact",
    "expand",
]


def available() -> dict[str, str]:
    return {name: desc for name, (_, _, desc) in _TARGETS.items()}


def expand(name: str) -> list[str]:
    """ "all" -> the XNNPACK .pte and the .mlpackage; otherwise the one name, checked."""
    if name == "all":
        return list(ALL)
    if name not in _TARGETS:
        raise UsageError(f"unknown target {name!r}; choose one of: {', '.join([*_TARGETS, 'all'])}")
    return [name]


def get_target(name: str) -> Target:
    expand(name)
    path, _, _ = _TARGETS[name]
    module_name, cls_name = path.split(":")
    return getattr(importlib.import_module(module_name), cls_name)()


def target_for_artifact(path: str | Path) -> Target:
    """The target that wrote `path`: by suffix, and for a .pte (XNNPACK or Core ML delegate)
    by the `target` of its manifest entry; entries from before the Core ML delegate, and
    files without a readable manifest, are XNNPACK."""
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIXES:
        raise UsageError(
            f"{Path(path).name}: unknown artifact type {suffix or '(none)'!r}; expected one of {', '.join(_SUFFIXES)}"
        )
    name = _SUFFIXES[suffix]
    if suffix == ".pte":
        name = _recorded_target(Path(path)) or name
    return get_target(name)


def _recorded_target(path: Path) -> str | None:
    from ..errors import MobileExportError
    from ..manifest import manifest_for

    try:
        _, entry = manifest_for(path)
    except MobileExportError:
        return None  # verify/bench report the missing manifest themselves
    recorded = entry.get("target")
    return recorded if recorded in _TARGETS and _TARGETS[recorded][1] == ".pte" else None
