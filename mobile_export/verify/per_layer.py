"""Where the error enters, layer by layer: a target-neutral row type, the rows made from the
raw per-op values a target measures (`Target.per_op_values`), and one writer (Markdown + CSV
table, self-contained HTML picture with inline SVG).

Rows are sorted by SQNR loss: the SQNR of a layer's input minus the SQNR of its output,
i.e. how many dB of fidelity this layer itself costs. A layer with a low SQNR but no loss
only inherits the damage from above; the top rows of the table are where to act (e.g. keep
them in fp32 via QuantRecipe.fp32_modules).

Backends produce values (executorch/etdump.py, executorch/quantized_layers.py, coreml/mil/
per_layer.py); they never import this module."""

from __future__ import annotations

import csv
import html
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from ..fsutil import atomic_path, ensure_writable_dir
from .metrics import SQNR_CAP_DB, sqnr_from_powers


@dataclass
class LayerRow:
    name: str  # node / op name in the artifact's graph
    op: str  # op type, e.g. conv2d, linear, add
    sqnr_db: float  # output of this layer vs the reference's same layer
    max_abs: float
    cosine: float
    sqnr_loss_db: float | None = None  # input SQNR - output SQNR: error entering here
    module: str = ""  # source module path (what QuantRecipe.fp32_modules takes)
    shape: str = ""
    index: int = 0  # position in graph order


def sort_by_loss(rows: Iterable[LayerRow]) -> list[LayerRow]:
    return sorted(
        rows, key=lambda r: (-(r.sqnr_loss_db if r.sqnr_loss_db is not None else -math.inf), r.index)
    )


def write_per_layer_report(rows: Sequence[LayerRow], out_dir: str | Path, title: str) -> dict[str, Path]:
    """Write per_layer.md, per_layer.csv and per_layer.html into `out_dir`; return the paths."""
    out = ensure_writable_dir(out_dir)
    ordered = sort_by_loss(rows)
    paths = {"markdown": out / "per_layer.md", "csv": out / "per_layer.csv", "html": out / "per_layer.html"}
    with atomic_path(paths["markdown"]) as tmp:
        tmp.write_text(_markdown(ordered, title), encoding="utf-8")
    with atomic_path(paths["csv"]) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            fields = list(LayerRow.__dataclass_fields__)
            writer.writerow(fields)
            for r in ordered:
                writer.writerow([_cell(getattr(r, f)) for f in fields])
    with atomic_path(paths["html"]) as tmp:
        tmp.write_text(_html(ordered, sorted(rows, key=lambda r: r.index), title), encoding="utf-8")
    return paths


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _markdown(rows: Sequence[LayerRow], title: str) -> str:
    lines = [
        f"# {title}",
        "",
        "Sorted by SQNR loss (dB of fidelity lost in this layer itself).",
        "",
        "| # | layer | op | module | SQNR dB | loss dB | max abs | cosine |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.index} | {r.name} | {r.op} | {r.module} | {_cell(r.sqnr_db)} | {_cell(r.sqnr_loss_db)} "
            f"| {_cell(r.max_abs)} | {_cell(r.cosine)} |"
        )
    return "\n".join(lines) + "\n"


def _html(by_loss: Sequence[LayerRow], by_order: Sequence[LayerRow], title: str) -> str:
    """Two inline SVG charts: loss per layer (sorted) and SQNR along the graph."""
    bar_h, width, label_w = 16, 900, 320
    shown = [r for r in by_loss if r.sqnr_loss_db is not None][:60]
    top = max([r.sqnr_loss_db for r in shown if r.sqnr_loss_db and r.sqnr_loss_db > 0] or [1.0])
    bars = []
    for i, r in enumerate(shown):
        w = max(0.0, r.sqnr_loss_db) / top * (width - label_w - 80)
        y = i * bar_h
        bars.append(
            f'<text x="{label_w - 6}" y="{y + 12}" text-anchor="end">{html.escape(r.name)} ({html.escape(r.op)})</text>'
            f'<rect x="{label_w}" y="{y + 2}" width="{w:.1f}" height="{bar_h - 4}" fill="#c0392b"/>'
            f'<text x="{label_w + w + 4:.1f}" y="{y + 12}">{r.sqnr_loss_db:.2f} dB</text>'
        )
    loss_svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{len(shown) * bar_h + 4}" '
        f'font-family="sans-serif" font-size="11">{"".join(bars)}</svg>'
    )
    finite = [min(r.sqnr_db, SQNR_CAP_DB) for r in by_order]
    h, pad = 220, 30
    hi = max(finite or [1.0])
    lo = min(finite or [0.0] + [0.0])
    span = (hi - lo) or 1.0
    step = (width - 2 * pad) / max(1, len(finite) - 1)
    points = " ".join(
        f"{pad + i * step:.1f},{h - pad - (v - lo) / span * (h - 2 * pad):.1f}" for i, v in enumerate(finite)
    )
    line_svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" font-family="sans-serif" font-size="11">'
        f'<polyline fill="none" stroke="#2c3e50" stroke-width="1.5" points="{points}"/>'
        f'<text x="{pad}" y="14">SQNR along the graph: {hi:.1f} dB (max) .. {lo:.1f} dB (min), {len(finite)} layers</text></svg>'
    )
    rows_html = "".join(
        f"<tr><td>{r.index}</td><td>{html.escape(r.name)}</td><td>{html.escape(r.op)}</td><td>{html.escape(r.module)}</td>"
        f"<td>{_cell(r.sqnr_db)}</td><td>{_cell(r.sqnr_loss_db)}</td><td>{_cell(r.max_abs)}</td><td>{_cell(r.cosine)}</td></tr>"
        for r in by_loss
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:1em}td,th{padding:2px 8px;font-size:12px}"
        "tr:nth-child(even){background:#f4f4f4}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><h2>SQNR loss per layer (where the error enters)</h2>{loss_svg}"
        f"<h2>SQNR along the graph</h2>{line_svg}<h2>Table</h2><table><tr><th>#</th><th>layer</th><th>op</th>"
        f"<th>module</th><th>SQNR dB</th><th>loss dB</th><th>max abs</th><th>cosine</th></tr>{rows_html}</table>"
        "</body></html>\n"
    )


# --- rows from the values a target measured ----------------------------------------------


class LayerStats:
    """Running SQNR / max-abs / cosine sums over images, so memory does not grow with the
    number of images. Shared by the ExecuTorch and the Core ML per-layer producers."""

    def __init__(self):
        self.signal = self.noise = 0.0
        self.max_abs = 0.0
        self.cos_sum = 0.0
        self.n = 0
        self.shape = ""

    def add(self, ref: np.ndarray, test: np.ndarray) -> None:
        ref = np.asarray(ref, np.float64).ravel()
        test = np.asarray(test, np.float64).ravel()
        diff = ref - test
        self.signal += float(ref @ ref)
        self.noise += float(diff @ diff)
        self.max_abs = max(self.max_abs, float(np.max(np.abs(diff))) if diff.size else 0.0)
        norms = float(np.linalg.norm(ref) * np.linalg.norm(test))
        self.cos_sum += float(ref @ test) / norms if norms > 0 else 1.0
        self.n += 1

    @property
    def sqnr(self) -> float:
        return max(-SQNR_CAP_DB, min(SQNR_CAP_DB, sqnr_from_powers(self.signal, self.noise)))


def layer_rows(ops: Sequence, stats: dict[str, LayerStats], exact_db: float | None = None) -> list[LayerRow]:
    """One row per op (targets.base.OpInfo) that has values: its SQNR, and its loss, the lowest
    SQNR among the ops feeding it minus its own (both capped at `exact_db` when given); an op
    fed only by exact values loses all its error itself, one whose feeds are unknown gets no loss."""
    sqnr = {name: st.sqnr for name, st in stats.items() if st.n}
    rows = []
    for position, info in enumerate(o for o in ops if o.name in sqnr):
        st = stats[info.name]
        if info.feeds is None:
            loss = None
        else:
            up = min((sqnr[f] for f in info.feeds if f in sqnr), default=math.inf)
            loss = min(up, exact_db) - min(st.sqnr, exact_db) if exact_db is not None else up - st.sqnr
        rows.append(
            LayerRow(
                name=info.name,
                op=info.op,
                sqnr_db=round(st.sqnr, 4),
                max_abs=st.max_abs,
                cosine=round(st.cos_sum / st.n, 8),
                sqnr_loss_db=None if loss is None else round(loss, 4),
                module=info.module,
                shape=st.shape,
                index=info.index if info.index is not None else position,
            )
        )
    return rows


def collect(produce: Callable, exact_db: float | None = None) -> tuple[list[LayerRow], object]:
    """Run a producer `produce(sink)` (a backend's per-op values: returns a list of OpInfo, or a
    PerOpValues whose exact_db wins) with a sink that accumulates LayerStats; returns (rows,
    what it returned)."""
    stats: dict[str, LayerStats] = {}

    def sink(name: str, reference: np.ndarray, value: np.ndarray) -> None:
        st = stats.setdefault(name, LayerStats())
        st.add(reference, value)
        st.shape = "x".join(str(d) for d in np.shape(reference))

    result = produce(sink)
    ops = result if isinstance(result, list) else result.ops
    exact = exact_db if isinstance(result, list) else result.exact_db
    return layer_rows(ops, stats, exact), result


def per_layer_report(
    path: Path,
    target,
    entry: dict,
    built,
    inputs,
    quantized,
    report: dict,
    report_dir,
    log: Callable[[str], None] = lambda _m: None,
) -> dict:
    """Rows from the target's per-op values (`Target.per_op_values`), plus one row for the
    artifact as a whole (vs the quantized model when there is one, else vs float), written next
    to the artifact (or into `report_dir`)."""
    rows, values = collect(
        lambda sink: target.per_op_values(path, entry, built, inputs, quantized, sink, log)
    )
    if values.whole is not None:
        whole = report.get("vs_quantized") or report["vs_float"]
        rows.append(
            whole_program_row(values.whole.name, values.whole.op, whole, values.whole.module, len(rows))
        )
    return {**publish(rows, path, report_dir, values.title, log), "source": values.source}


def whole_program_row(name: str, op: str, metrics: dict, module: str, index: int) -> LayerRow:
    """The artifact as a whole against its reference, as the last row of a per-layer table."""
    return LayerRow(
        name=name,
        op=op,
        sqnr_db=round(min(metrics["sqnr_db"], SQNR_CAP_DB), 4),
        max_abs=metrics["max_abs"],
        cosine=metrics["cosine"],
        sqnr_loss_db=None,
        module=module,
        index=index,
    )


def publish(rows: Sequence[LayerRow], path: Path, report_dir, title: str, log) -> dict:
    """Write the table and picture (beside the artifact unless --report names a folder) and
    summarize the worst layers for the verify report. Shared by the .pte and .mlpackage paths."""
    out_dir = Path(report_dir) if report_dir else path.parent / f"{path.stem}_per_layer"
    files = write_per_layer_report(rows, out_dir, title)
    ranked = [r for r in sort_by_loss(rows) if r.sqnr_loss_db is not None]
    worst = (
        f"{ranked[0].name} ({ranked[0].op}, {ranked[0].module}) loses {ranked[0].sqnr_loss_db:.2f} dB"
        if ranked
        else "-"
    )
    log(f"per-layer report: {files['markdown']}")
    return {
        "layers": len(rows),
        "worst": worst,
        "files": {k: str(v) for k, v in files.items()},
        "top": [asdict(r) for r in ranked[:5]],
    }
