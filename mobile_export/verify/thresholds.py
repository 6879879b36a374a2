"""Pass/fail limits for a parity check: ONE table, one row per precision (and quantization
mode where it changes what to expect). Core ML rows live here too, so every target is
judged by the same book.

Why these numbers:
- fp32: the artifact runs the same float arithmetic with other kernels (XNNPACK, Core ML
  fp32); only summation order differs, so ~1e-6 relative error, i.e. SQNR well above 60 dB.
  top-1 must agree wherever the reference's top-2 margin exceeds the error (ties excluded).
- fp16: 10-bit mantissa, errors accumulate over ~50 layers: ~40-60 dB on real images.
- int8 (PT2E, XNNPACK): the runtime must reproduce the quantized PyTorch model (the
  convert_pt2e graph) far better than quantization matches float: XNNPACK requantizes in
  fixed point where PyTorch rounds in float, so single elements differ by one step per
  layer and that propagates with depth (measured with synthetic well-conditioned weights at
  64 px: 5 steps / 28 dB for V1 0.25, 9 steps for V2); more than 16 steps (6% of the
  output range) or under 20 dB means a different computation (wrong scale, op, layout).
  Against the float model the loss is quantization itself; those limits catch a broken
  export (uncalibrated ranges), not a small accuracy loss: the accuracy bar (top-1 within
  0.3 points) is measured on trained models (README), and top-1 limits would be noise on
  untrained weights.
- Core ML weight compression (fp16 compute, compressed weights): the artifact computes with
  approximated weights, so these rows, like int8 against float, catch a broken export (a wrong
  palette, scale or layout gives ~0 dB) and accept the compression's own loss, measured on V2 /
  V3-Small: int8 weights 30-47 dB, 6-bit palettes 22-35 dB, 4-bit palettes 12-23 dB.
Keys: precision, or "precision/mode" when the quantization mode matters."""

from __future__ import annotations

THRESHOLDS: dict[str, dict[str, float]] = {
    # key              vs the float reference model                                        vs the quantized PyTorch model
    "fp32":           {"sqnr_db": 60.0, "cosine": 0.99999, "top1_agreement_decided": 1.0, "top5_overlap": 0.9},
    "fp16":           {"sqnr_db": 30.0, "cosine": 0.999, "top1_agreement_decided": 0.9, "top5_overlap": 0.8},
    "int8/pt2e-int8": {"sqnr_db": 10.0, "cosine": 0.9, "sqnr_db_vs_quantized": 20.0, "steps_vs_quantized": 16.0},
    "int8":           {"sqnr_db": 10.0, "cosine": 0.9},
    "fp16/int8":       {"sqnr_db": 25.0, "cosine": 0.99},
    "fp32/int8":       {"sqnr_db": 25.0, "cosine": 0.99},  # int8 weights, fp32 compute: the weights dominate
    "fp16/palettize6": {"sqnr_db": 18.0, "cosine": 0.98},
    "fp16/palettize4": {"sqnr_db": 10.0, "cosine": 0.9},
    # palettize-auto (data-aware 2-8-bit palettes at 0.15x): V2 1.0 photo model 24.6 dB / 99.3% agreement on 1,020
    # held-out crops; V2 0.35 digit model 16.2 dB on the bundled photos; an R/B swap of a trained colour model ~11 dB.
    "fp16/palettize-auto": {"sqnr_db": 14.0, "cosine": 0.95},
    "mixed":          {"sqnr_db": 20.0, "cosine": 0.99, "top1_agreement_decided": 0.5, "top5_overlap": 0.5},
}

# How each limit reads in a failure message, and whether higher is better.
_LABELS = {
    "sqnr_db": ("SQNR vs float", "dB", True),
    "cosine": ("cosine vs float", "", True),
    "top1_agreement_decided": ("top-1 agreement vs float (ties excluded)", "", True),
    "top5_overlap": ("top-5 overlap vs float", "", True),
    "steps_vs_quantized": ("max error vs the quantized PyTorch model", "output steps", False),
    "sqnr_db_vs_quantized": ("SQNR vs the quantized PyTorch model", "dB", True),
}


def key_for(entry: dict) -> str:
    """The table row of an artifact entry: "precision/mode", falling back to "precision"."""
    precision = entry.get("precision", "fp32")
    mode = (entry.get("quantization") or {}).get("mode", "none")
    key = f"{precision}/{mode}" if mode not in (None, "none") else precision
    if key in THRESHOLDS:
        return key
    if precision in THRESHOLDS:
        return precision
    return "mixed"


def limits_for(entry: dict) -> tuple[str, dict[str, float]]:
    key = key_for(entry)
    return key, dict(THRESHOLDS[key])


def check(values: dict, limits: dict[str, float], key: str) -> list[str]:
    """One line per limit that `values` misses. A metric that does not apply (e.g. top-k
    for feature outputs, steps when there is no quantized reference) is absent and skipped."""
    failures = []
    for name, limit in limits.items():
        value = values.get(name)
        if value is None:
            continue
        label, unit, higher = _LABELS[name]
        ok = value >= limit if higher else value <= limit
        if not ok:
            sign = "<" if higher else ">"
            u = f" {unit}" if unit else ""
            failures.append(f"{label} {_fmt(value)}{u} {sign} {_fmt(limit)}{u} ({key})")
    return failures


def _fmt(v: float) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
