"""One gate check: an artifact verified under its project's limits, and, when it fails, the
one screen that says why (which artifact, which limit, by how much, and the command that
shows the per-layer report). Used by `verify` and by the pytest plugin alike."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Callable

from ..verify.thresholds import LABELS, VALUE_OF
from ..verify.verify import stored_weights_values
from .config import GateConfig, discover, load_config, verify_overrides

Log = Callable[[str], None]

_UNITS = {
    "sqnr_db": "dB",
    "sqnr_db_vs_quantized": "dB",
    "steps_vs_quantized": "steps",
    "sqnr_db_vs_stored_weights": "dB",
    "min_weight_sqnr_db": "dB",
}


def config_for(
    artifact: str | Path, config_file: str | Path | None = None, cwd: str | Path | None = None
) -> GateConfig:
    return load_config(config_file) if config_file else discover(artifact, cwd)


def check_artifact(
    artifact: str | Path,
    config: GateConfig | None = None,
    cli_limits: dict | None = None,
    images: str | Path | None = None,
    limit: int | None = None,
    weights: str | None = None,
    per_layer: bool = False,
    report_dir: str | Path | None = None,
    cpus=None,
    accept_input_independent: bool = False,
    log: Log = lambda _m: None,
) -> dict:
    """verify_artifact under the project's limits. A skipped artifact returns a report with
    "skipped" (the glob and file) and no metrics; otherwise verify's report plus "gate": the
    config file, the project limits and their sources, and "max_top1_drop" for `eval`."""
    from ..verify import verify_artifact

    path = Path(artifact)
    config = config if config is not None else discover(path)
    where = str(config.path) if config.path else None
    skip = config.skipped(path.name)
    if skip is not None:
        return {
            "artifact": path.name,
            "path": str(path),
            "skipped": f"matches skip {skip!r} in {where}",
            "passed": True,
            "failures": [],
            "gate": {"config": where},
        }
    project = config.limits_for(path.name, cli_limits)
    use_images = images if images is not None else config.images
    report = verify_artifact(
        path,
        images=use_images,
        limit=limit,
        per_layer=per_layer,
        report_dir=report_dir,
        weights=weights,
        cpus=cpus,
        accept_input_independent=accept_input_independent,
        log=log,
        overrides=verify_overrides(project),
    )
    report["path"] = str(path)
    drop = project.get("max-top1-drop")
    report["gate"] = {
        "config": where,
        "images": str(use_images) if use_images is not None else None,
        "project_limits": {k: {"value": v.value, "source": v.source} for k, v in project.items()},
        "max_top1_drop": {"value": drop.value, "source": drop.source, "checked_by": "eval"} if drop else None,
    }
    return report


def values_of(report: dict) -> dict:
    """The measured value of every limit name in a verify report."""
    values = dict(report.get("vs_float") or {})
    if report.get("vs_quantized"):
        values["sqnr_db_vs_quantized"] = report["vs_quantized"].get("sqnr_db")
    values["steps_vs_quantized"] = report.get("steps_vs_quantized")
    if report.get("vs_stored_weights"):
        values.update(stored_weights_values(report["vs_stored_weights"]))
    return values


def shortfalls(report: dict) -> list[dict]:
    """Each missed limit: name, value, limit, by how much, and where the limit came from."""
    values = values_of(report)
    sources = report.get("threshold_sources", {})
    out = []
    for name, limit in (report.get("thresholds") or {}).items():
        value = values.get(VALUE_OF.get(name, name))
        if name == "key" or value is None:
            continue
        at_most = not LABELS.get(name, ("", "", True))[2]  # the table says which way is better
        if (value > limit) if at_most else (value < limit):
            out.append(
                {
                    "limit": name,
                    "value": value,
                    "required": limit,
                    "op": "<=" if at_most else ">=",
                    "short_by": abs(value - limit),
                    "unit": _UNITS.get(name, ""),
                    "source": sources.get(name, "builtin"),
                }
            )
    return out


def per_layer_command(report: dict, report_dir: str = "parity-report") -> str:
    """The one command that shows where the error enters, layer by layer."""
    target = report.get("path") or report["artifact"]
    cmd = [
        "mobile-export",
        "verify",
        str(target),
        "--per-layer",
        "--report-dir",
        f"{report_dir}/{Path(target).stem}",
    ]
    images = (report.get("gate") or {}).get("images")
    if images:
        cmd += ["--images", images]
    return shlex.join(cmd)


def explain(report: dict) -> str:
    """One screen for a failed check: artifact, each missed limit with its margin and source,
    other failures (self-check), and the per-layer command."""
    name = report.get("path") or report["artifact"]
    lines = [
        f"parity gate FAILED: {name} ({report.get('precision')}, {report.get('quantization', 'none')}; "
        f"built-in row {(report.get('thresholds') or {}).get('key')})"
    ]
    missed = shortfalls(report)
    for s in missed:
        unit = f" {s['unit']}" if s["unit"] else ""
        lines.append(
            f"  {s['limit']:<24} {_fmt(s['value'])}{unit}, needs {s['op']} {_fmt(s['required'])}{unit}: "
            f"off by {_fmt(s['short_by'], 3)}{unit}  [limit from {s['source']}]"
        )
    # failures thresholds.check did not derive from a limit row (e.g. the bundled self-check)
    listed = len(missed)
    for failure in report.get("failures", [])[listed:]:
        lines.append(f"  {failure}")
    vf = report.get("vs_float") or {}
    if vf:
        lines.append(
            f"  measured on {report.get('images', {}).get('count', '?')} image(s): SQNR {_fmt(vf.get('sqnr_db'))} dB, "
            f"cosine {_fmt(vf.get('cosine'))}, top-1 agreement {_fmt(vf.get('top1_agreement'))}"
        )
    lines.append(f"  per-layer report: {per_layer_command(report)}")
    return "\n".join(lines)


def _fmt(v, digits: int | None = None) -> str:
    """Enough digits to tell a value from its limit: cosine 0.99999 must not print as 1."""
    if v is None:
        return "-"
    if not isinstance(v, float):
        return str(v)
    return f"{v:.{digits or (7 if abs(v) <= 1.0 else 4)}g}"
