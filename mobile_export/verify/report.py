"""A parity report as a few lines a person can read (the dict itself is the JSON form)."""

from __future__ import annotations


def _num(v, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _metrics_line(m: dict) -> str:
    parts = [
        f"max abs {_num(m['max_abs'])}",
        f"mean abs {_num(m['mean_abs'])}",
        f"SQNR {m['sqnr_db']:.1f} dB",
        f"cosine {_num(m['cosine'], 7)}",
    ]
    if m.get("non_finite"):
        parts.append(f"{m['non_finite']} NaN/inf values")
    if "top1_agreement" in m:
        flips = m.get("top1_flips")
        ties = m.get("top1_ties") or 0
        detail = []
        if flips:
            detail.append(
                f"{flips} flip{'s' if flips != 1 else ''}, {m.get('top1_flips_on_ties', 0)} at near-ties"
            )
        if ties:
            detail.append(f"{ties} near-tie{'s' if ties != 1 else ''}")
        parts.append(
            f"top-1 {m['top1_agreement'] * 100:.1f}%" + (f" ({'; '.join(detail)})" if detail else "")
        )
        parts.append(f"top-5 overlap {m['top5_overlap'] * 100:.1f}%")
    return ", ".join(parts)


def format_report(report: dict) -> str:
    lines = [
        f"{report['artifact']}: {'PASSED' if report['passed'] else 'FAILED'} "
        f"({report.get('precision')}, {report.get('quantization')}; thresholds {report['thresholds']['key']})",
        f"  images      {report['images']['count']} real ({report['images']['source']}"
        + (f", {report['images']['skipped']} unreadable skipped" if report["images"].get("skipped") else "")
        + ")",
        f"  vs float    {_metrics_line(report['vs_float'])}",
    ]
    dep = report.get("input_dependence") or {}
    if dep.get("sqnr_db_vs_own_mean") is not None:
        lines.append(
            f"  image dep.  reference vs its own mean {dep['sqnr_db_vs_own_mean']:.1f} dB "
            f"(limit {_num(dep.get('limit_db'))} dB; lower = outputs depend more on the image)"
        )
    stored = report.get("vs_stored_weights")
    if stored:
        w = stored["weights_vs_float"]
        lines.append(f"  vs own wts  {_metrics_line(stored)} (PyTorch running the weights this file stores)")
        lines.append(
            f"  weights     vs float: least faithful layer {_num(w['min_sqnr_db'])} dB ({w['min_layer']}), "
            f"all layers {_num(w['overall_sqnr_db'])} dB"
        )
        if w.get("model_only"):
            shown = ", ".join(w["model_only"][:3]) + (" ..." if len(w["model_only"]) > 3 else "")
            lines.append(
                f"  missing     {len(w['model_only'])} model layer(s) the file holds no weights for: {shown}"
            )
    if report.get("quantization") not in (None, "none") and report.get("output_scale") is not None:
        lines.append(
            f"  out scale   {_num(report.get('output_scale'))}; error vs float {_num(report.get('steps_vs_float'))} steps"
        )
        if report.get("vs_quantized"):
            lines.append(
                f"  vs int8 PT  {_metrics_line(report['vs_quantized'])}; "
                f"p99.9 {_num(report.get('steps_vs_quantized'))} steps, max {_num(report.get('max_steps_vs_quantized'))}"
            )
        lines.append(f"  int8 ref    {report.get('quantized_reference')}")
    if report.get("bundled_self_check"):
        bc = report["bundled_self_check"]
        lines.append(f"  self-check  {bc['passed']}/{bc['cases']} embedded cases match")
    if report.get("per_layer"):
        pl = report["per_layer"]
        lines.append(
            f"  per layer   {pl.get('layers', '?')} layers; worst {pl.get('worst', '-')}; "
            + ", ".join(str(v) for k, v in pl.get("files", {}).items())
        )
    if report.get("arm"):
        from .arm import format_arm_rows

        lines.extend(format_arm_rows(report["arm"]))
    for warning in report.get("warnings", []):
        lines.append(f"  WARNING     {warning}")
    for failure in report.get("failures", []):
        lines.append(f"  FAIL        {failure}")
    return "\n".join(lines)
