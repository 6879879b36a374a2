"""A parity report as a few lines a person can read (the dict itself is the JSON form)."""

from __future__ import annotations


def _num(v, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _metrics_line(m: dict) -> str:
    parts = [f"max abs {_num(m['max_abs'])}", f"mean abs {_num(m['mean_abs'])}",
             f"SQNR {m['sqnr_db']:.1f} dB", f"cosine {m['cosine']:.6f}"]
    if "top1_agreement" in m:
        ties = f" ({m['top1_ties']} tie{'s' if m['top1_ties'] != 1 else ''})" if m.get("top1_ties") else ""
        parts.append(f"top-1 {m['top1_agreement'] * 100:.1f}%{ties}")
        parts.append(f"top-5 overlap {m['top5_overlap'] * 100:.1f}%")
    return ", ".join(parts)


def format_report(report: dict) -> str:
    lines = [
        f"{report['artifact']}: {'PASSED' if report['passed'] else 'FAILED'} "
        f"({report.get('precision')}, {report.get('quantization')}; thresholds {report['thresholds']['key']})",
        f"  images      {report['images']['count']} real ({report['images']['source']}"
        + (f", {report['images']['skipped']} unreadable skipped" if report['images'].get('skipped') else "") + ")",
        f"  vs float    {_metrics_line(report['vs_float'])}",
    ]
    if report.get("quantization") not in (None, "none"):
        lines.append(f"  out scale   {_num(report.get('output_scale'))}; error vs float {_num(report.get('steps_vs_float'))} steps")
        if report.get("vs_quantized"):
            lines.append(f"  vs int8 PT  {_metrics_line(report['vs_quantized'])}; "
                         f"{_num(report.get('steps_vs_quantized'))} steps")
        lines.append(f"  int8 ref    {report.get('quantized_reference')}")
    if report.get("bundled_self_check"):
        bc = report["bundled_self_check"]
        lines.append(f"  self-check  {bc['passed']}/{bc['cases']} embedded cases match")
    if report.get("per_layer"):
        pl = report["per_layer"]
        lines.append(f"  per layer   {pl.get('layers', '?')} layers; worst {pl.get('worst', '-')}; "
                     + ", ".join(str(v) for k, v in pl.get("files", {}).items()))
    if report.get("arm"):
        from .arm import format_arm_rows

        lines.extend(format_arm_rows(report["arm"]))
    for warning in report.get("warnings", []):
        lines.append(f"  WARNING     {warning}")
    for failure in report.get("failures", []):
        lines.append(f"  FAIL        {failure}")
    return "\n".join(lines)
