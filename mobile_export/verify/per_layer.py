"""Where the error enters, layer by layer: a target-neutral row type, one writer (Markdown +
CSV table, self-contained HTML picture with inline SVG), and the ExecuTorch producer.

Rows are sorted by SQNR loss: the SQNR of a layer's input minus the SQNR of its output,
i.e. how many dB of fidelity this layer itself costs. A layer with a low SQNR but no loss
only inherits the damage from above; the top rows of the table are where to act (e.g. keep
them in fp32 via QuantRecipe.fp32_modules).

Core ML produces its rows elsewhere (coreml/mil) and calls `write_per_layer_report`."""

from __future__ import annotations

import csv
import html
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from ..errors import MobileExportError, first_line
from ..fsutil import atomic_path, ensure_writable_dir
from .metrics import SQNR_CAP_DB

EXACT_DB = 100.0  # an input this clean counts as exact when computing a layer's loss


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
    return sorted(rows, key=lambda r: (-(r.sqnr_loss_db if r.sqnr_loss_db is not None else -math.inf), r.index))


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
    lines = [f"# {title}", "", "Sorted by SQNR loss (dB of fidelity lost in this layer itself).", "",
             "| # | layer | op | module | SQNR dB | loss dB | max abs | cosine |",
             "|---|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.index} | {r.name} | {r.op} | {r.module} | {_cell(r.sqnr_db)} | {_cell(r.sqnr_loss_db)} "
                     f"| {_cell(r.max_abs)} | {_cell(r.cosine)} |")
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
        bars.append(f'<text x="{label_w - 6}" y="{y + 12}" text-anchor="end">{html.escape(r.name)} ({html.escape(r.op)})</text>'
                    f'<rect x="{label_w}" y="{y + 2}" width="{w:.1f}" height="{bar_h - 4}" fill="#c0392b"/>'
                    f'<text x="{label_w + w + 4:.1f}" y="{y + 12}">{r.sqnr_loss_db:.2f} dB</text>')
    loss_svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{len(shown) * bar_h + 4}" '
                f'font-family="sans-serif" font-size="11">{"".join(bars)}</svg>')
    finite = [min(r.sqnr_db, SQNR_CAP_DB) for r in by_order]
    h, pad = 220, 30
    hi = max(finite or [1.0])
    lo = min(finite or [0.0] + [0.0])
    span = (hi - lo) or 1.0
    step = (width - 2 * pad) / max(1, len(finite) - 1)
    points = " ".join(f"{pad + i * step:.1f},{h - pad - (v - lo) / span * (h - 2 * pad):.1f}" for i, v in enumerate(finite))
    line_svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" font-family="sans-serif" font-size="11">'
                f'<polyline fill="none" stroke="#2c3e50" stroke-width="1.5" points="{points}"/>'
                f'<text x="{pad}" y="14">SQNR along the graph: {hi:.1f} dB (max) .. {lo:.1f} dB (min), {len(finite)} layers</text></svg>')
    rows_html = "".join(
        f"<tr><td>{r.index}</td><td>{html.escape(r.name)}</td><td>{html.escape(r.op)}</td><td>{html.escape(r.module)}</td>"
        f"<td>{_cell(r.sqnr_db)}</td><td>{_cell(r.sqnr_loss_db)}</td><td>{_cell(r.max_abs)}</td><td>{_cell(r.cosine)}</td></tr>"
        for r in by_loss)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:1em}td,th{padding:2px 8px;font-size:12px}"
            "tr:nth-child(even){background:#f4f4f4}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><h2>SQNR loss per layer (where the error enters)</h2>{loss_svg}"
            f"<h2>SQNR along the graph</h2>{line_svg}<h2>Table</h2><table><tr><th>#</th><th>layer</th><th>op</th>"
            f"<th>module</th><th>SQNR dB</th><th>loss dB</th><th>max abs</th><th>cosine</th></tr>{rows_html}</table>"
            "</body></html>\n")


# --- ExecuTorch producer: float graph vs quantized graph, node by node ---------------------

_SKIP = ("getitem", "quantize_per", "dequantize_per", "choose_qparams", "view", "reshape", "flatten",
         "permute", "transpose", "squeeze", "unsqueeze", "expand", "contiguous", "clone", "_assert")


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
        if self.noise == 0.0:
            return SQNR_CAP_DB
        if self.signal == 0.0:
            return -SQNR_CAP_DB
        return max(-SQNR_CAP_DB, min(SQNR_CAP_DB, 10.0 * math.log10(self.signal / self.noise)))


def _short(target) -> str:
    name = getattr(target, "__name__", None) or str(target)
    return name.replace("aten.", "").split(".")[0]


def _tracked(node) -> bool:
    if node.op == "placeholder":
        return True
    if node.op != "call_function":
        return False
    return not any(k in str(node.target) for k in _SKIP)


def _after_qdq(node):
    """The dequantize that re-expresses `node`'s output in int8, if there is one: what the
    next layer really receives."""
    for user in node.users:
        if "quantize_per_tensor" in str(user.target) and "dequantize" not in str(user.target):
            deq = [u for u in user.users if "dequantize_per_tensor" in str(u.target)]
            if deq:
                return deq[0]
    return node


def _capture(graph_module, inputs: Sequence[np.ndarray], wanted: dict) -> list[dict]:
    """Run `graph_module` on each input with an fx Interpreter; keep the values of the
    nodes named in `wanted` (name -> the node whose value stands for it)."""
    import torch

    from ..quantize.calibration import to_tensor

    keep = {v for v in wanted.values()}
    results = []

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            value = super().run_node(n)
            if n.name in keep and isinstance(value, torch.Tensor):
                self.seen[n.name] = value.detach().numpy().copy()
            return value

    for x in inputs:
        rec = Recorder(graph_module)
        rec.seen = {}
        with torch.no_grad():
            rec.run(to_tensor(x))
        results.append({name: rec.seen.get(src) for name, src in wanted.items()})
    return results


def module_path(node) -> str:
    """The innermost module an exported graph node was traced in ("" outside any)."""
    stack = node.meta.get("nn_module_stack") or {}
    return str(list(stack.values())[-1][0]) if stack else ""


def upstream_sqnr(node, sqnr: dict[str, float], seen: set | None = None) -> float:
    """Lowest SQNR among the measured nodes (names in `sqnr`) feeding `node`, looking through
    the unmeasured ones (views, q/dq); inf when only constants and graph inputs feed it."""
    seen = seen if seen is not None else set()
    best = math.inf
    for arg in node.all_input_nodes:
        if arg.name in seen:
            continue
        seen.add(arg.name)
        if arg.name in sqnr:
            best = min(best, sqnr[arg.name])
        elif arg.op not in ("get_attr", "placeholder"):
            best = min(best, upstream_sqnr(arg, sqnr, seen))
    return best


def quantized_layer_rows(quantized, inputs: Sequence[np.ndarray]) -> list[LayerRow]:
    """Compare the convert_pt2e graph with its float twin (the prepared graph: same node
    names, BN folded, observers pass-through) on real inputs, layer by layer."""
    qgm, fgm = quantized.graph_module, quantized.float_graph_module
    fnodes = {n.name: n for n in fgm.graph.nodes}
    order = [n for n in qgm.graph.nodes if _tracked(n) and n.name in fnodes]
    q_wanted = {n.name: _after_qdq(n).name for n in order}
    f_wanted = {n.name: n.name for n in order}
    q_vals = _capture(qgm, inputs, q_wanted)
    f_vals = _capture(fgm, inputs, f_wanted)
    stats = {n.name: LayerStats() for n in order}
    for qv, fv in zip(q_vals, f_vals):
        for name, st in stats.items():
            if qv.get(name) is not None and fv.get(name) is not None and qv[name].shape == fv[name].shape:
                st.add(fv[name], qv[name])
                st.shape = "x".join(str(d) for d in fv[name].shape)
    sqnr = {name: st.sqnr for name, st in stats.items() if st.n}

    rows = []
    for i, node in enumerate(order):
        st = stats[node.name]
        if not st.n:
            continue
        up = upstream_sqnr(node, sqnr) if node.op != "placeholder" else math.inf
        loss = min(up, EXACT_DB) - min(st.sqnr, EXACT_DB)  # fed by exact values: all its error is its own
        module = module_path(node)
        if module.startswith("model."):
            module = module[len("model."):]
        rows.append(LayerRow(name=node.name, op="input" if node.op == "placeholder" else _short(node.target),
                             sqnr_db=round(st.sqnr, 4), max_abs=st.max_abs, cosine=round(st.cos_sum / st.n, 8),
                             sqnr_loss_db=round(loss, 4), module=module,
                             shape=st.shape, index=i))
    return rows


def per_layer_report(path: Path, entry: dict, built, inputs, quantized, report: dict, report_dir,
                     log: Callable[[str], None] = lambda _m: None) -> dict:
    """Rows for an ExecuTorch artifact, written next to it (or into `report_dir`).

    int8: the quantized PyTorch model vs its float twin, layer by layer (where quantization
    error enters). fp32: the shipped .pte is one XNNPACK delegate and cannot give per-op
    values, so its per-op twin (executorch/etdump: the same model lowered one delegate per op)
    runs with ETDump and the Inspector compares every op with PyTorch; if that fails, the
    reason is logged and only the whole-program row is written. Both end with one row for
    the shipped runtime itself (the .pte vs the quantized / float model)."""
    in_model = bool(entry["input"].get("normalized_in_model"))
    feed = inputs.raw if in_model else inputs.normalized
    rows: list[LayerRow] = []
    title = f"{path.name}: per-layer error ({len(feed)} real images)"
    source = "quantized PyTorch model vs its float twin, layer by layer"
    if quantized is not None:
        rows = quantized_layer_rows(quantized, feed)
    elif (entry.get("quantization") or {}).get("mode", "none") != "none":
        raise MobileExportError(f"--per-layer needs the quantized PyTorch model, which is {report.get('quantized_reference')}")
    else:
        rows, title, source = _fp32_twin_rows(path, entry, built, feed, log)
    runtime = report.get("vs_quantized") or report["vs_float"]
    rows.append(whole_program_row("runtime", f"{path.suffix.lstrip('.')} vs PyTorch", runtime,
                                  "(whole program, XNNPACK kernels)", len(rows)))
    return {**publish(rows, path, report_dir, title, log), "source": source}


def _fp32_twin_rows(path: Path, entry: dict, built, feed, log) -> tuple[list[LayerRow], str, str]:
    """Per-op rows from the per-op twin, or none (and why) when ETRecord/ETDump/Inspector fail."""
    from ..executorch.etdump import TWIN_IMAGES, twin_rows

    images = list(feed[:TWIN_IMAGES])
    try:
        rows = twin_rows(built, entry, images, log)
    except Exception as exc:  # lowering, the child, ETRecord and the Inspector raise many types
        why = f"per-op twin of {path.name} failed ({first_line(exc)}); whole-program row only"
        log(why)
        return [], f"{path.name}: whole-program error only ({len(feed)} real images)", why
    return rows, (f"{path.name}: per-op twin of the .pte (one XNNPACK delegate per op, ETDump on {len(images)} "
                  f"real images) + the shipped .pte as the last row"), "per-op twin of the .pte, ETDump + Inspector"


def whole_program_row(name: str, op: str, metrics: dict, module: str, index: int) -> LayerRow:
    """The artifact as a whole against its reference, as the last row of a per-layer table."""
    return LayerRow(name=name, op=op, sqnr_db=round(min(metrics["sqnr_db"], SQNR_CAP_DB), 4),
                    max_abs=metrics["max_abs"], cosine=metrics["cosine"], sqnr_loss_db=None, module=module,
                    index=index)


def publish(rows: Sequence[LayerRow], path: Path, report_dir, title: str, log) -> dict:
    """Write the table and picture (beside the artifact unless --report names a folder) and
    summarize the worst layers for the verify report. Shared by the .pte and .mlpackage paths."""
    out_dir = Path(report_dir) if report_dir else path.parent / f"{path.stem}_per_layer"
    files = write_per_layer_report(rows, out_dir, title)
    ranked = [r for r in sort_by_loss(rows) if r.sqnr_loss_db is not None]
    worst = f"{ranked[0].name} ({ranked[0].op}, {ranked[0].module}) loses {ranked[0].sqnr_loss_db:.2f} dB" if ranked else "-"
    log(f"per-layer report: {files['markdown']}")
    return {"layers": len(rows), "worst": worst, "files": {k: str(v) for k, v in files.items()},
            "top": [asdict(r) for r in ranked[:5]]}
