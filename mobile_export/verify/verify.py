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


def verify_artifact(
    artifact,
    images=None,
    limit=None,
    per_layer=False,
    report_dir=None,
    weights=None,
    reference=None,
    quantized=None,
    cpus=None,
    log: Log = lambda _m: None,
    overrides: dict | None = None,
    min_agreement: float | None = None,
    accept_input_independent: bool = False,
) -> dict:
    """Compare `artifact` with its reference PyTorch model on real images.

    `reference`: the BuiltModel the pipeline just exported (else rebuilt from the manifest;
    `weights` overrides the recorded weights). `quantized`: the quantized PyTorch model that
    export lowered into the artifact (else the target rebuilds it from the manifest's recipe).
    `overrides`: {limit name: value or (value, where it came from)} on top of the threshold row
    (value None drops that limit), e.g. a project's [tool.mobile-export] table (mobile_export/gate);
    `min_agreement` (top-1 agreement) overrides that one limit. `accept_input_independent`: pass
    even when the reference outputs barely depend on the image (the check then cannot see
    image-dependent errors; reported as a warning). `cpus` (ArmCpu rows, .pte only): also run the
    file on those emulated ARM CPUs, one report row each (verify/arm.py).
    Returns metrics, thresholds and their sources, "passed" and "failures"; raises typed errors
    only when the check cannot be made at all."""
    from ..targets import QuantizedReference, target_for_artifact

    t0 = time.perf_counter()
    path = Path(artifact)
    target = target_for_artifact(path)
    if not path.exists():
        raise ArtifactError(f"{path} does not exist; check the path or export again")
    target.check_file(path)
    emulation, arm_kit = _arm_kit(target, path) if cpus else (None, None)
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
    ref = _as_quantity(ref, quantity)
    topk = kind != "features" and manifest["model"].get("output", "logits") != "features"

    plain, given_by = {}, {}
    for name, given in (overrides or {}).items():
        value, source = given if isinstance(given, tuple) else (given, "override")
        plain[name], given_by[name] = value, source
    if min_agreement is not None:
        plain["top1_agreement"], given_by["top1_agreement"] = min_agreement, "--min-agreement"
    key, limits = thresholds.limits_for(entry.to_dict(), plain)
    sources = {name: given_by.get(name, f"builtin {key}") for name in limits}
    vs_float = metrics.compare(ref, test, topk=topk, tie_tolerance=limits.get("tie_tolerance", 0.0))
    warnings = []
    if manifest["preprocess"].get("assumed"):  # version 2: a wrong contract passes parity, so say it
        warnings.append(
            f"the preprocessing contract was assumed ({manifest['preprocess'].get('source')}); this check "
            "feeds the reference the same input, so it cannot see a wrong contract"
        )
    independence = min(metrics.input_dependence_db(ref), metrics.SQNR_CAP_DB)  # NaN stays NaN
    dependence = {
        "sqnr_db_vs_own_mean": _finite(independence),
        "limit_db": limits.get("max_input_independence_db"),
        "accepted": bool(accept_input_independent),
    }
    values = dict(vs_float)
    if math.isnan(independence):
        warnings.append("one image cannot show whether the outputs depend on the image; verify on several")
    elif accept_input_independent:
        if independence > limits.get("max_input_independence_db", math.inf):
            warnings.append(
                f"the reference outputs barely depend on the image (SQNR against their own mean "
                f"{independence:.1f} dB), accepted with --accept-input-independent: this check cannot "
                "see input-dependent errors"
            )
    else:
        values["input_independence_db"] = independence
    report: dict = {
        "artifact": path.name,
        "target": entry.target,
        "precision": entry.precision,
        "quantization": entry.quantization_mode,
        "images": {"count": len(inputs.raw), "source": inputs.source, "skipped": inputs.skipped},
        "reference": "the exported model (this process)"
        if reference is not None
        else "rebuilt from the manifest",
        "vs_float": vs_float,
        "input_dependence": dependence,
    }

    quant = entry.quantization or {}
    qref = None
    if entry.quantized:
        qref = (
            QuantizedReference(quantized, LOWERED_HERE)
            if quantized is not None
            else target.quantized_reference(path, entry, built, manifest)
        )
        report.update(_int8_part(quant, qref, in_model, inputs, test, ref))
        if report.get("vs_quantized"):
            values["sqnr_db_vs_quantized"] = report["vs_quantized"]["sqnr_db"]
            values["steps_vs_quantized"] = report.get("steps_vs_quantized")

    stored = target.stored_weights(path, entry.to_dict(), manifest)
    if stored is not None:
        report["vs_stored_weights"] = _stored_weights_part(stored, built, inputs.normalized, quantity, test)
        values.update(stored_weights_values(report["vs_stored_weights"]))

    if extras.get("bundled_ok") is not None:
        ok = [int(v) for v in np.asarray(extras["bundled_ok"]).ravel()]
        report["bundled_self_check"] = {"cases": len(ok), "passed": sum(ok)}
    failures = thresholds.check(values, limits, key)
    if "bundled_self_check" in report:
        bc = report["bundled_self_check"]
        if bc["cases"] == 0 or bc["passed"] < bc["cases"]:
            failures.append(
                f"bundled self-check: {bc['passed']} of {bc['cases']} embedded cases match their expected outputs"
            )
    qref_outputs = report.pop("_qref_outputs", None)
    if cpus:
        from .arm import arm_rows

        report["arm"] = arm_rows(
            path,
            artifact_inputs,
            ref,
            test,
            cpus,
            key,
            limits,
            qref=qref_outputs,
            scale=quant.get("output_scale"),
            topk=topk,
            emulation=emulation,
            kit=arm_kit,
            log=log,
        )
        failures += report["arm"]["failures"]
    report["thresholds"] = {"key": key, **limits}
    report["threshold_sources"] = sources
    report["warnings"] = warnings
    report["passed"] = not failures
    report["failures"] = failures

    if per_layer:
        from .per_layer import per_layer_report

        report["per_layer"] = per_layer_report(
            path, target, entry, built, inputs, qref, report, report_dir, log=log
        )
    labels = _labels(path, manifest, built)
    if topk and labels and len(labels) == test.shape[1]:
        report["sample"] = _top5(test[0], quantity, labels, inputs.names[0])
        shown = ", ".join(f"{t['label']} {t['probability']:.0%}" for t in report["sample"]["top5"])
        log(f"verify {path.name}: {inputs.names[0]} -> {shown}")
    report["seconds"] = round(time.perf_counter() - t0, 2)
    log(
        f"verify {path.name}: {'passed' if report['passed'] else 'FAILED'} (SQNR {vs_float['sqnr_db']:.1f} dB)"
    )
    return report


def _labels(path: Path, manifest: dict, built) -> list[str] | None:
    if built.labels:
        return list(built.labels)
    record = manifest.get("labels") or {}
    file = path.parent / record["file"] if record.get("file") else None
    if file is None or not file.is_file():
        return None
    return [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]


def _top5(row: np.ndarray, quantity: str, labels: list[str], image: str) -> dict:
    """What the app would show for one image: the artifact's own top-5 as probabilities."""
    if quantity == "probabilities":
        probs = row
    elif quantity == "log_probabilities":
        probs = np.exp(row)
    else:
        probs = softmax(row[None])[0]
    order = np.argsort(-probs, kind="stable")[:5]
    return {
        "image": image,
        "top5": [{"label": labels[i], "probability": round(float(probs[i]), 4)} for i in order],
    }


def _int8_part(quant, qref, in_model, inputs, test, ref) -> dict:
    """Error in output-quantization steps against the float model and against the quantized
    PyTorch model (the convert_pt2e result), which the runtime should match to ~1 step."""
    scale = quant.get("output_scale")
    part: dict = {"output_scale": scale}
    part["steps_vs_float"] = (
        _finite(metrics.error_in_steps(ref, test, scale, thresholds.STEP_PERCENTILE)) if scale else None
    )
    part["quantized_reference"] = qref.how if qref is not None else NO_QUANTIZED_MODEL
    quantized = qref.model if qref is not None else None
    if quantized is None:
        part["vs_quantized"] = None
        part["steps_vs_quantized"] = None
        part["max_steps_vs_quantized"] = None
        return part
    # the quantized model as XNNPACK computes it (biases on its int32 grid, exact int8 means)
    qref = run_module(quantized.reference, inputs.raw if in_model else inputs.normalized)
    part["_qref_outputs"] = qref  # for the ARM rows; removed before returning
    part["vs_quantized"] = metrics.compare(qref, test, topk=False)
    pct = thresholds.STEP_PERCENTILE
    part["steps_vs_quantized"] = _finite(metrics.error_in_steps(qref, test, scale, pct)) if scale else None
    part["max_steps_vs_quantized"] = _finite(metrics.error_in_steps(qref, test, scale)) if scale else None
    return part


def _as_quantity(logits: np.ndarray, quantity: str) -> np.ndarray:
    """The reference's logits as the quantity the artifact's run returns."""
    if quantity == "probabilities":
        return softmax(logits)
    if quantity == "log_probabilities":
        return np.log(np.maximum(softmax(logits), 1e-45))
    return logits


def stored_weights_values(part: dict) -> dict:
    """The gated numbers of a report's "vs_stored_weights" part, by the names thresholds.check
    reads (verify and the CI gate both use it)."""
    weights = part["weights_vs_float"]
    return {
        "sqnr_db_vs_stored_weights": part["sqnr_db"],
        "min_weight_sqnr_db": weights["min_sqnr_db"],
        "layers_missing": len(weights["model_only"]),
    }


def _stored_weights_part(stored, built, normalized, quantity: str, test: np.ndarray) -> dict:
    """The artifact against PyTorch running the artifact's own weights (verify/stored_weights.py):
    what is left is the graph and the compute precision, not the compression."""
    from .stored_weights import module_with_stored_weights

    module, weights = module_with_stored_weights(built.module, stored, built.input_shape)
    ref = _as_quantity(run_module(module, normalized), quantity)
    return {
        **metrics.compare(ref, test, topk=False),
        "reference": stored.how,
        "weights_vs_float": {k: v for k, v in weights.items() if k != "layers"},
        "weights_by_layer": weights["layers"],
    }


def _arm_kit(target, path: Path):
    """The target's CPU emulation and its kit, checked before the slow part so a file that
    cannot run there, or a missing kit, fails in one line first."""
    emulation = target.require_cpu_emulation(path)
    return emulation, emulation.find_kit()


def _finite(v):
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else round(float(v), 4)
