"""An eval Outcome -> a JSON-ready report, and its Markdown / HTML / CSV renderings.

Per row: top-1, top-5, agreement of top-1 with the reference; per artifact also the drop in
points against the reference with its 95% paired bootstrap interval, the exact McNemar p on
the discordant images, the classes that lost most and the images whose answer flipped.
The HTML page draws the per-class drop as inline SVG (no scripts, no libraries)."""

from __future__ import annotations

import csv
import html
import io
import json
from pathlib import Path

import numpy as np

from ..fsutil import write_text_atomic
from . import stats
from .runner import REFERENCE, Outcome, labels_array

CLASS_ROWS = 5  # classes with the largest drop, per artifact
FLIPS_SHOWN = 20  # in Markdown/HTML; JSON lists them all


def build_report(outcome: Outcome, options=None) -> dict:
    plan, data = outcome.plan, outcome.dataset
    y = labels_array(data)
    ref_key = plan.rows[0].key
    valid = np.array([i not in outcome.skipped for i in range(len(y))], bool)
    ref = outcome.top5[ref_key][valid]
    yv = y[valid]
    names = [it.name for it, ok in zip(data.items, valid) if ok]
    labels = plan.labels
    ref_correct = ref[:, 0] == yv
    rows = []
    for row in plan.rows:
        top5 = outcome.top5[row.key][valid]
        correct = top5[:, 0] == yv
        doc = {
            "name": row.name,
            "kind": row.kind,
            "file": row.path,
            "sha256": row.sha256,
            "precision": (row.entry or {}).get("precision", "fp32" if row.kind == REFERENCE else None),
            "images": int(valid.sum()),
            "top1_correct": int(correct.sum()),
            "top1": _pct(correct.mean()),
            "top5": _pct((top5 == yv[:, None]).any(axis=1).mean()),
            "agreement": _pct((top5[:, 0] == ref[:, 0]).mean()),
            "evaluated_now": outcome.computed[row.key],
        }
        if row.kind != REFERENCE:
            paired = stats.Paired.of(ref_correct, correct)
            p = stats.mcnemar_exact(paired.only_ref, paired.only_row)
            lo, hi = stats.drop_ci(paired)
            doc.update(
                {
                    "drop_points": round(paired.drop_points, 4),
                    "drop_ci95": [round(lo, 4), round(hi, 4)],
                    "mcnemar_p": p,
                    "discordant": {"lost": paired.only_ref, "gained": paired.only_row},
                    "verdict": stats.verdict(paired, p),
                    "class_drops": _class_drops(yv, ref_correct, correct, labels),
                    "flips": {
                        "lost": [n for n, a, b in zip(names, ref_correct, correct) if a and not b],
                        "gained": [n for n, a, b in zip(names, ref_correct, correct) if b and not a],
                    },
                }
            )
        rows.append(doc)
    skipped = sorted(outcome.skipped.items())
    return {
        "model": plan.manifest["model"]["name"],
        "num_classes": plan.manifest["model"]["num_classes"],
        "preprocess": plan.preprocess.to_dict(),
        "dataset": {
            "root": str(data.root),
            "layout": data.layout,
            "ground_truth": data.ground_truth,
            "labelled": data.total,
            "selected": len(data.items),
            "evaluated": int(valid.sum()),
            "every": getattr(options, "every", 1),
            "limit": getattr(options, "limit", None),
            "skipped": len(skipped),
            "skipped_examples": [why for _, why in skipped[:10]],
        },
        "rows": rows,
        "executor": outcome.executor,
        "seconds": round(outcome.seconds, 2),
    }


def _pct(v) -> float:
    return round(100.0 * float(v), 4)


def _class_drops(y, ref_correct, correct, labels) -> list[dict]:
    out = []
    for c in np.unique(y):
        mask = y == c
        ref_acc, row_acc = 100.0 * ref_correct[mask].mean(), 100.0 * correct[mask].mean()
        out.append(
            {
                "class": int(c),
                "label": labels[c] if labels and c < len(labels) else str(int(c)),
                "images": int(mask.sum()),
                "reference": round(ref_acc, 2),
                "artifact": round(row_acc, 2),
                "drop_points": round(ref_acc - row_acc, 2),
            }
        )
    out.sort(key=lambda d: (-d["drop_points"], d["class"]))
    return out


# --- renderings ------------------------------------------------------------------------


def _ci(r) -> str:
    lo, hi = r["drop_ci95"]
    return f"{r['drop_points']:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def format_markdown(report: dict) -> str:
    d = report["dataset"]
    lines = [
        f"# eval: {report['model']} on {Path(d['root']).name}",
        "",
        f"{d['evaluated']:,} images ({d['layout']}{', ' + d['ground_truth'] if d['ground_truth'] else ''}; "
        f"{d['labelled']:,} labelled, every {d['every']}{', limit ' + str(d['limit']) if d['limit'] else ''}; "
        f"{d['skipped']} unreadable skipped), {report['num_classes']} classes, "
        f"{report['executor']['executor']}, {report['seconds']:.1f} s",
        "",
        "| row | top-1 % | top-5 % | agrees with ref % | drop, points [95% CI] | McNemar p | verdict |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["rows"]:
        if r["kind"] == REFERENCE:
            lines.append(f"| {r['name']} | {r['top1']:.2f} | {r['top5']:.2f} | - | - | - | reference |")
        else:
            lines.append(
                f"| {r['name']} | {r['top1']:.2f} | {r['top5']:.2f} | {r['agreement']:.2f} | {_ci(r)} | "
                f"{r['mcnemar_p']:.3g} | {r['verdict']} |"
            )
    for r in report["rows"]:
        if r["kind"] == REFERENCE:
            continue
        worst = [c for c in r["class_drops"] if c["drop_points"] > 0][:CLASS_ROWS]
        lines += ["", f"## {r['name']}", ""]
        if worst:
            lines.append(
                "Largest class drops: "
                + ", ".join(
                    f"{c['label']} {c['reference']:.1f} -> {c['artifact']:.1f} ({c['images']} images)"
                    for c in worst
                )
            )
        else:
            lines.append("No class lost accuracy.")
        for what in ("lost", "gained"):
            names = r["flips"][what]
            if names:
                more = (
                    f" (+{len(names) - FLIPS_SHOWN} more in report.json)" if len(names) > FLIPS_SHOWN else ""
                )
                lines.append(
                    f"\nFlipped, {what} ({len(names)}): "
                    + ", ".join(f"`{n}`" for n in names[:FLIPS_SHOWN])
                    + more
                )
    if d["skipped_examples"]:
        lines += ["", "Skipped: " + "; ".join(d["skipped_examples"])]
    return "\n".join(lines) + "\n"


def format_text(report: dict) -> str:
    """The terminal summary: the table only."""
    out = []
    for r in report["rows"]:
        if r["kind"] == REFERENCE:
            out.append(f"{r['name']:<48} top-1 {r['top1']:6.2f}%  top-5 {r['top5']:6.2f}%")
        else:
            out.append(
                f"{r['name']:<48} top-1 {r['top1']:6.2f}%  top-5 {r['top5']:6.2f}%  agree {r['agreement']:6.2f}%  "
                f"drop {_ci(r)}  {r['verdict']}"
            )
    d = report["dataset"]
    out.append(f"{d['evaluated']:,} images, {d['skipped']} skipped, {report['seconds']:.1f} s")
    return "\n".join(out)


def _svg_chart(r: dict, width: int = 640, bar_h: int = 16) -> str:
    classes = [c for c in r["class_drops"] if c["drop_points"] != 0] or r["class_drops"][:1]
    classes = sorted(classes, key=lambda c: -abs(c["drop_points"]))[:30]
    span = max(1.0, max(abs(c["drop_points"]) for c in classes))
    label_w, mid = 180, 180 + (width - 180) // 2
    half = (width - label_w) // 2 - 50
    height = bar_h * len(classes) + 30
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="per-class drop in points">',
        f'<line x1="{mid}" y1="0" x2="{mid}" y2="{height - 20}" stroke="#888"/>',
        f'<text x="{mid}" y="{height - 5}" font-size="11" text-anchor="middle">0 (right: lost points, left: gained)</text>',
    ]
    for i, c in enumerate(classes):
        y = i * bar_h + 2
        w = abs(c["drop_points"]) / span * half
        x = mid if c["drop_points"] > 0 else mid - w
        color = "#c0392b" if c["drop_points"] > 0 else "#27ae60"
        parts.append(
            f'<text x="{label_w - 6}" y="{y + bar_h - 5}" font-size="11" text-anchor="end">'
            f"{html.escape(c['label'][:28])}</text>"
        )
        parts.append(
            f'<rect x="{x:.1f}" y="{y}" width="{max(w, 0.5):.1f}" height="{bar_h - 3}" fill="{color}">'
            f"<title>{html.escape(c['label'])}: {c['reference']:.1f} -> {c['artifact']:.1f} % "
            f"({c['images']} images)</title></rect>"
        )
        tx = x + w + 4 if c["drop_points"] > 0 else x - 4
        anchor = "start" if c["drop_points"] > 0 else "end"
        parts.append(
            f'<text x="{tx:.1f}" y="{y + bar_h - 5}" font-size="10" text-anchor="{anchor}">'
            f"{c['drop_points']:+.1f}</text>"
        )
    parts.append("</svg>")
    return "\n".join(parts)


def format_html(report: dict) -> str:
    e = html.escape
    d = report["dataset"]
    head = ["row", "top-1 %", "top-5 %", "agrees with ref %", "drop, points [95% CI]", "McNemar p", "verdict"]
    body = []
    for r in report["rows"]:
        if r["kind"] == REFERENCE:
            cells = [r["name"], f"{r['top1']:.2f}", f"{r['top5']:.2f}", "-", "-", "-", "reference"]
        else:
            cells = [
                r["name"],
                f"{r['top1']:.2f}",
                f"{r['top5']:.2f}",
                f"{r['agreement']:.2f}",
                _ci(r),
                f"{r['mcnemar_p']:.3g}",
                r["verdict"],
            ]
        body.append("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in cells) + "</tr>")
    sections = []
    for r in report["rows"]:
        if r["kind"] == REFERENCE:
            continue
        lost = r["flips"]["lost"]
        gained = r["flips"]["gained"]
        sections.append(
            f"<h2>{e(r['name'])}</h2><p>{e(r['verdict'])}</p><h3>Per-class drop (points)</h3>"
            + _svg_chart(r)
            + f"<h3>Flipped images</h3><p>lost ({len(lost)}): {e(', '.join(lost[:FLIPS_SHOWN]))}"
            + (" ..." if len(lost) > FLIPS_SHOWN else "")
            + f"</p><p>gained ({len(gained)}): {e(', '.join(gained[:FLIPS_SHOWN]))}"
            + (" ..." if len(gained) > FLIPS_SHOWN else "")
            + "</p>"
        )
    return (
        '<!doctype html><html><head><meta charset="utf-8"><title>eval: ' + e(report["model"]) + "</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child,td:last-child{text-align:left}"
        "</style></head><body>"
        f"<h1>eval: {e(report['model'])} on {e(Path(d['root']).name)}</h1>"
        f"<p>{d['evaluated']:,} images ({e(d['layout'])}), {d['skipped']} unreadable skipped, "
        f"{report['num_classes']} classes, {e(report['executor']['executor'])}, {report['seconds']:.1f} s</p>"
        "<table><tr>"
        + "".join(f"<th>{e(h)}</th>" for h in head)
        + "</tr>"
        + "".join(body)
        + "</table>"
        + "".join(sections)
        + "</body></html>\n"
    )


def predictions_csv(outcome: Outcome) -> str:
    """file,label, then the top-1 of every row per image (empty where skipped)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["file", "label", *[r.name for r in outcome.plan.rows]])
    for i, item in enumerate(outcome.dataset.items):
        skipped = i in outcome.skipped
        w.writerow(
            [
                item.name,
                item.label,
                *["" if skipped else int(outcome.top5[r.key][i, 0]) for r in outcome.plan.rows],
            ]
        )
    return buf.getvalue()


def write_report(report: dict, outcome: Outcome, directory: str | Path) -> list[Path]:
    """report.json, report.md, report.html and predictions.csv; each file written whole or not at all."""
    d = Path(directory)
    return [
        write_text_atomic(d / "report.json", json.dumps(report, indent=2) + "\n"),
        write_text_atomic(d / "report.md", format_markdown(report)),
        write_text_atomic(d / "report.html", format_html(report)),
        write_text_atomic(d / "predictions.csv", predictions_csv(outcome)),
    ]
