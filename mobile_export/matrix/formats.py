"""The formats a cell can be: one row each, as data. A format is the CLI flags that make it,
so a cell is exactly what a user would type; a new backend adds a row here."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from ..errors import UsageError


@dataclass(frozen=True)
class Format:
    key: str  # short name used on the command line and in tables
    target: str  # the --target it exports with
    flags: tuple[str, ...]  # further export flags
    label: str  # column heading
    runs_on_host: bool  # a host latency can be measured here (ExecuTorch XNNPACK .pte)


FORMATS: dict[str, Format] = {
    f.key: f
    for f in (
        Format("et-fp32", "executorch", (), "ExecuTorch fp32", True),
        Format("et-int8", "executorch", ("--quantize", "int8"), "ExecuTorch int8", True),
        Format("coreml-fp16", "coreml", ("--precision", "fp16"), "Core ML fp16", False),
        Format("coreml-fp32", "coreml", ("--precision", "fp32"), "Core ML fp32", False),
        Format("coreml-int8", "coreml", ("--compress", "int8"), "Core ML int8 weights", False),
        Format("coreml-palettize6", "coreml", ("--compress", "palettize6"), "Core ML 6-bit palettes", False),
        Format("coreml-palettize4", "coreml", ("--compress", "palettize4"), "Core ML 4-bit palettes", False),
        Format(
            "coreml-palettize-auto",
            "coreml",
            ("--compress", "palettize-auto"),
            "Core ML data-aware palettes (0.15x)",
            False,
        ),
        Format("coreml-w8a8", "coreml", ("--compress", "w8a8"), "Core ML W8A8", False),
        Format(
            "et-coreml-fp16",
            "executorch-coreml",
            ("--precision", "fp16"),
            "ExecuTorch Core ML delegate fp16",
            False,
        ),
    )
}
BASELINE = "et-fp32"  # latency ratios are against this format, measured in the same worker


def available_formats() -> dict[str, Format]:
    """The formats whose target this installation has (the Core ML delegate may be absent)."""
    from ..targets import available

    targets = available()
    return {k: f for k, f in FORMATS.items() if f.target in targets}


def resolve_formats(patterns: list[str] | None) -> list[Format]:
    """Names or globs -> formats, in table order; an unknown name is a usage error naming the choices."""
    known = available_formats()
    if not patterns:
        return list(known.values())
    chosen: list[str] = []
    for pattern in patterns:
        hits = [k for k in known if fnmatch.fnmatchcase(k, pattern)]
        if not hits:
            raise UsageError(f"format {pattern!r} matches nothing; choose from: {', '.join(known)}")
        chosen += [k for k in hits if k not in chosen]
    return [known[k] for k in known if k in chosen]
