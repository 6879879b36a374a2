"""verify_artifact: one parity check, returned as a JSON-ready dict (also stored in the
manifest's artifact entry)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import numpy as np

from .. import manifest as mf
from ..errors import ArtifactError
from . import metrics, thresholds
from .reference import load_inputs, preprocess_of, rebuild_reference, run_module, softmax

Log = Callable[[str], None]
LOWERED_HERE = "the model lowered into this .pte (same process)"
NO_QUANTIZED_MODEL = "none: this target has no quantized PyTorch model to compare with"


def verify_artifact(artifact, images=None, limit=None, per_layer=False, report_dir=None, weights=None,
                    reference=None, quantized=None, log: Log = lambda _m: None, min_agreement: float | None = None,
                    accept_input_independent: bool = False, overrides: dict | None = None) -> dict:
    """Compare `artifact` with its reference PyTorch model on real images.

    `reference`: the BuiltModel the pipeline just exported (else rebuilt from the manifest;
    `weights` overrides the recorded weights). `quantized`: the quantized PyTorch model that
    export lowered into the artifact (else the target rebuilds it from the manifest's recipe).
    `overrides` (metric -> limit) and `min_agreement` (top-1 agreement) replace the threshold
    row's numbers. `accept_input_independent`: pass even when the reference outputs barely
    depend on the image (the check then cannot see image-dependent errors; reported as a warning).
    Returns metrics, thresholds, "passed" and "failures"; raises typed errors only when the
    check cannot be made at all."""
    from ..targets import QuantizedReference, target_for_artifact

    t0 = time.perf_counter()
    path = Path(artifact)
    target = target_for_artifact(path)
    if not path.exists():
        raise ArtifactError(f"{path} does not exist; check the path or export again")
    target.check_file(path)
    manifest, entry = mf.entry_for(path)
    mf.check_sha256(path, entry)

    built = reference if reference is not None else rebuild_reference(manifest, weights)
    pre = preprocess_of(manifest)
    inputs = load_inputs(images, pre, limit)
    log(f"verify {path.name}: {len(inputs.raw)} real image(s) ({inputs.source})")

    in_model = entry.normalized_in_model
    artifact_inputs = inputs.raw if in_model else inputs.normalized
    ref = run_module(built.module, inputs.normalized)
    outs, extras = target.run_with_extras(path, entry, artifact_inputs)
    test = np.concatenate([np.asarray(o, dtype=np.float64).reshape(1, -1) for o in outs], axis=0)
    kind = entry.output_kind
    # What `run` returns is the target's call: Core ML gives a classifier's logits on Linux
    # (read before its softmax) and log-probabilities under Core ML's own predict.
    quantity = target.output_quantity(entry)
    if quantity == "probabilities":
        ref = softmax(ref)
    elif quantity == "log_probabilities":
        ref = np.log(np.maximum(softmax(ref), 1e-45))
    topk = kind != "features" and manifest["model"].get("output", "logits") != "features"

    if min_agreement is not None:
        overrides = {**(overrides or {}), "top1_agreement": min_agreement}
    key, limits = thresholds.limits_for(entry.to_dict(), overrides)
    vs_float = metrics.compare(ref, test, topk=topk, tie_tolerance=limits.get("tie_tolerance", 0.0))
    warnings = []
    independence = min(metrics.input_dependence_db(ref), metrics.SQNR_CAP_DB)  # NaN stays NaN
    dependence = {"sqnr_db_vs_own_mean": _finite(independence), "limit_db": limits.get("max_input_independence_db"),
                  "accepted": bool(accept_input_independent)}
    values = dict(vs_float)
    if math.isnan(independence):
        warnings.append("one image cannot show whether the outputs depend on the image; verify on several")
    elif accept_input_independent:
        if independence > limits.get("max_input_independence_db", math.inf):
            warnings.append(f"the reference outputs barely depend on the image (SQNR against their own mean "
                            f"{independence:.1f} dB), accepted with --accept-input-independent: this check cannot "
                            "see input-dependent errors")
    else:
        values["input_independence_db"] = independence
    report: dict = {
        "artifact": path.name,
        "target": entry.target,
        "precision": entry.precision,
        "quantization": entry.quantization_mode,
        "images": {"count": len(inputs.raw), "source": inputs.source, "skipped": inputs.skipped},
        "reference": "the exported model (this process)" if reference is not None else "rebuilt from the manifest",
        "vs_float": vs_float,
        "input_dependence": dependence,
    }

    quant = entry.quantization or {}
    qref = None
    if entry.quantized:
        qref = (QuantizedReference(quantized, LOWERED_HERE) if quantized is not None
                else target.quantized_reference(path, entry, built, manifest))
        report.update(_int8_part(quant, qref, in_model, inputs, test, ref))
        if report.get("vs_quantized"):
            values["sqnr_db_vs_quantized"] = report["vs_quantized"]["sqnr_db"]
            values["steps_vs_quantized"] = report.get("steps_vs_quantized")

    if extras.get("bundled_ok") is not None:
        ok = [int(v) for v in np.asarray(extras["bundled_ok"]).ravel()]
        report["bundled_self_check"] = {"cases": len(ok), "passed": sum(ok)}
    failures = thresholds.check(values, limits, key)
    if "bundled_self_check" in report:
        bc = report["bundled_self_check"]
        if bc["cases"] == 0 or bc["passed"] < bc["cases"]:
            failures.append(f"bundled self-check: {bc['passed']} of {bc['cases']} embedded cases match their expected outputs")
    report["thresholds"] = {"key": key, **limits}
    report["warnings"] = warnings
    report["passed"] = not failures
    report["failures"] = failures

    if per_layer:
        from .per_layer import per_layer_report

        report["per_layer"] = per_layer_report(path, target, entry, built, inputs, qref, report, report_dir, log=log)
    report["seconds"] = round(time.perf_counter() - t0, 2)
    log(f"verify {path.name}: {'passed' if report['passed'] else 'FAILED'} (SQNR {vs_float['sqnr_db']:.1f} dB)")
    return report


def _int8_part(quant, qref, in_model, inputs, test, ref) -> dict:
    """Error in output-quantization steps against the float model and against the quantized
    PyTorch model (the convert_pt2e result), which the runtime should match to ~1 step."""
    scale = quant.get("output_scale")
    part: dict = {"output_scale": scale}
    part["steps_vs_float"] = _finite(metrics.error_in_steps(ref, test, scale, thresholds.STEP_PERCENTILE)) if scale else None
    part["quantized_reference"] = qref.how if qref is not None else NO_QUANTIZED_MODEL
    quantized = qref.model if qref is not None else None
    if quantized is None:
        part["vs_quantized"] = None
        part["steps_vs_quantized"] = None
        part["max_steps_vs_quantized"] = None
        return part
    qref = run_module(quantized.graph_module, inputs.raw if in_model else inputs.normalized)
    part["vs_quantized"] = metrics.compare(qref, test, topk=False)
    pct = thresholds.STEP_PERCENTILE
    part["steps_vs_quantized"] = _finite(metrics.error_in_steps(qref, test, scale, pct)) if scale else None
    part["max_steps_vs_quantized"] = _finite(metrics.error_in_steps(qref, test, scale)) if scale else None
    return part


def _finite(v):
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else round(float(v), 4)
