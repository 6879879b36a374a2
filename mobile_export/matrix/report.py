"""The matrix as tables: a compact grid (models x formats) in Markdown and colour-coded HTML,
a row per cell with every measurement, and the diff between two runs."""

from __future__ import annotations

import html
import re
from collections import Counter
from pathlib import Path

from ..fsutil import write_text_atomic
from .formats import FORMATS

BEGIN, END = "<!-- matrix:begin -->", "<!-- matrix:end -->"
PARITY_DROP_DB = 3.0  # a diff line when SQNR vs PyTorch falls by more than this
LATENCY_CHANGE = 0.10  # ... or the latency ratio to the fp32 .pte moves by more than this (relative)


def _mb(n) -> str:
    return f"{n / 1e6:.1f} MB" if n else "-"


def short(row: dict) -> str:
    """One grid cell: status, SQNR, size, latency ratio."""
    status = row["status"]
    if status == "not run":
        return status
    if not row.get("lowered"):
        return f"{'crash' if status == 'crashed' else 'no'}: {row.get('reason', status)[:60]}"
    sqnr = (row.get("parity") or {}).get("sqnr_db")
    parts = [
        "ok" if row.get("passed") else "FAIL",
        f"{sqnr:.1f} dB" if sqnr is not None else "-",
        _mb(row.get("bytes")),
    ]
    if row.get("latency_ratio") is not None:
        parts.append(f"{row['latency_ratio']:.2f}x")
    return " ".join(parts)


def _grid(doc: dict) -> tuple[list[str], list[str], dict]:
    formats = doc["formats"]
    models = list(dict.fromkeys(r["model"] for r in doc["cells"]))
    by = {(r["model"], r["format"]): r for r in doc["cells"]}
    return models, formats, by


def header_lines(doc: dict) -> list[str]:
    m = doc["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in doc["versions"].items() if v)
    lines = [
        f"Generated {doc['generated']} by `mobile-export matrix` ({doc['runner']}); wall time "
        f"{doc['wall_seconds'] / 60:.1f} min (cells from the cache count 0), cells' own time {doc['cell_seconds'] / 60:.1f} min.",
        f"Machine: {m.get('model')}, {m.get('cores')} cores. Versions: {versions}; code {doc['code']}.",
    ]
    earlier = Counter(r["code"] for r in doc["cells"] if r.get("code"))
    if earlier:
        made = ", ".join(f"{n} by code {code}" for code, n in sorted(earlier.items()))
        current = sum(not r.get("code") and r["status"] != "not run" for r in doc["cells"])
        lines.append(
            f"Cells made by earlier code and accepted with --accept-code: {made}; "
            f"{current} by code {doc['code']}."
        )
    missing = sum(r["status"] == "not run" for r in doc["cells"])
    if missing:
        lines.append(f"{missing} cell(s) not run: not in the cache, and --cached-only runs nothing.")
    return lines


def _resolution_label(doc: dict, model: str) -> str:
    """The size the model ran at, and its own beside it when the run chose a smaller one."""
    from ..models.registry import get_spec

    res = next(r["resolution"] for r in doc["cells"] if r["model"] == model)
    own = get_spec(model).resolution
    return str(res) if res == own else f"{res} (own {own})"


def _weights_label(doc: dict, model: str) -> str:
    """ "synthetic" for BN-woken random weights, else the checkpoint's file name."""
    weights = next(r.get("weights", "random") for r in doc["cells"] if r["model"] == model)
    return "synthetic" if weights == "random" else Path(weights).name


def markdown(doc: dict) -> str:
    models, formats, by = _grid(doc)
    lines = [
        *header_lines(doc),
        "",
        "Each cell: parity pass (ok) or FAIL against the threshold row, SQNR vs PyTorch on real photos, "
        "file size, host latency (1 thread) as a ratio to the fp32 .pte timed in the same worker; "
        "`no:` the one-line reason it did not lower.",
        "",
    ]
    lines.append("| model | res | weights | " + " | ".join(FORMATS[f].label for f in formats) + " |")
    lines.append("|---|---|---|" + "---|" * len(formats))
    for model in models:
        cells = [short(by[(model, f)]) if (model, f) in by else "not run" for f in formats]
        lines.append(
            f"| {model} | {_resolution_label(doc, model)} | {_weights_label(doc, model)} | "
            + " | ".join(c.replace("|", "/") for c in cells)
            + " |"
        )
    lines += [
        "",
        "Every cell (delegated ops / ops outside the delegate; latency median ms; export+verify wall s; "
        "peak RSS of the largest process):",
        "",
        "| model | format | status | delegated / outside | SQNR dB | cosine | top-1 agr. | size | latency ms | x fp32 | wall s | peak MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["cells"]:
        p = r.get("parity") or {}
        deleg = (
            f"{r.get('delegated_ops')} / {r.get('outside_ops')}"
            if r.get("delegated_ops") is not None
            else "-"
        )
        fmt = lambda v, f: f.format(v) if v is not None else "-"  # noqa: E731
        status = r["status"] if r.get("lowered") else f"{r['status']}: {r.get('reason', '')[:80]}"
        if r.get("code"):
            status += f" (code {r['code']})"
        lines.append(
            " | ".join(
                [
                    f"| {r['model']}",
                    r["format"],
                    status.replace("|", "/"),
                    deleg,
                    fmt(p.get("sqnr_db"), "{:.1f}"),
                    fmt(p.get("cosine"), "{:.5f}"),
                    fmt(p.get("top1_agreement"), "{:.3f}"),
                    _mb(r.get("bytes")),
                    fmt(r.get("latency_ms"), "{:.3f}"),
                    fmt(r.get("latency_ratio"), "{:.2f}"),
                    fmt(r.get("wall_seconds"), "{:.0f}"),
                    fmt(r.get("peak_rss_mb"), "{:.0f}"),
                ]
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def html_page(doc: dict) -> str:
    models, formats, by = _grid(doc)
    colour = {
        "passed": "#c8e6c9",
        "parity failed": "#ffe0b2",
        "not lowered": "#ffcdd2",
        "crashed": "#ef9a9a",
        "timed out": "#e0e0e0",
        "not run": "#f5f5f5",
    }
    head = "".join(f"<th>{html.escape(FORMATS[f].label)}</th>" for f in formats)
    rows = []
    for model in models:
        tds = []
        for f in formats:
            r = by.get((model, f))
            if r is None:
                tds.append('<td style="background:#f5f5f5">not run</td>')
                continue
            title = "; ".join(r.get("failures") or []) or r.get("reason", "")
            tds.append(
                f'<td style="background:{colour.get(r["status"], "#fff")}" title="{html.escape(title)}">'
                f"{html.escape(short(r))}</td>"
            )
        rows.append(
            f"<tr><th>{html.escape(model)}</th><td>{html.escape(_resolution_label(doc, model))}</td><td>{html.escape(_weights_label(doc, model))}</td>{''.join(tds)}</tr>"
        )
    about = "".join(f"<p>{html.escape(line)}</p>" for line in header_lines(doc))
    return (
        "<!doctype html><meta charset=utf-8><title>mobile-export matrix</title>"
        "<style>body{font:13px system-ui,sans-serif;margin:16px}table{border-collapse:collapse}"
        "td,th{border:1px solid #bbb;padding:3px 6px;white-space:nowrap}</style>"
        f"<h1>MobileNet x format</h1>{about}<table><tr><th>model</th><th>res</th><th>weights</th>{head}</tr>{''.join(rows)}</table>\n"
    )


def write_outputs(doc: dict, out: Path, publish: Path | None = None) -> list[Path]:
    """matrix.md and matrix.html beside matrix.json; with `publish`, the Markdown between the
    markers of that page (created with the markers when it does not exist)."""
    text = markdown(doc)
    written = [
        write_text_atomic(out / "matrix.md", text),
        write_text_atomic(out / "matrix.html", html_page(doc)),
    ]
    if publish is not None:
        page = (
            publish.read_text() if publish.is_file() else f"# The family x format matrix\n\n{BEGIN}\n{END}\n"
        )
        if BEGIN not in page or END not in page:
            page = page.rstrip() + f"\n\n{BEGIN}\n{END}\n"
        page = re.sub(
            re.escape(BEGIN) + ".*?" + re.escape(END), lambda _m: f"{BEGIN}\n{text}{END}", page, flags=re.S
        )
        written.append(write_text_atomic(publish, page))
        written.append(write_text_atomic(publish.with_suffix(".html"), html_page(doc)))
    return written


def diff(old: dict, new: dict) -> list[str]:
    """What changed between two runs, one line each: formats that stopped (or started)
    lowering, parity passes lost, SQNR drops > 3 dB, latency-ratio changes > 10%."""
    before = {(r["model"], r["format"]): r for r in old.get("cells", [])}
    lines = []
    for r in new.get("cells", []):
        key = (r["model"], r["format"])
        o = before.get(key)
        name = f"{r['model']} {r['format']}"
        if o is None or "not run" in (o["status"], r["status"]):
            continue  # a cell one side did not run says nothing about a change
        if o.get("lowered") and not r.get("lowered"):
            lines.append(f"{name}: stopped lowering ({r['status']}: {r.get('reason', '')})")
            continue
        if not o.get("lowered") and r.get("lowered"):
            lines.append(f"{name}: now lowers (was {o['status']}: {o.get('reason', '')})")
            continue
        if not r.get("lowered"):
            continue
        if o.get("passed") and not r.get("passed"):
            lines.append(f"{name}: parity now fails ({'; '.join(r.get('failures') or [])})")
        a, b = (o.get("parity") or {}).get("sqnr_db"), (r.get("parity") or {}).get("sqnr_db")
        if a is not None and b is not None and a - b > PARITY_DROP_DB:
            lines.append(f"{name}: SQNR vs PyTorch {a:.1f} -> {b:.1f} dB ({b - a:+.1f})")
        a, b = o.get("latency_ratio"), r.get("latency_ratio")
        if a and b and abs(b / a - 1) > LATENCY_CHANGE:
            lines.append(f"{name}: latency vs fp32 .pte {a:.2f}x -> {b:.2f}x ({(b / a - 1) * 100:+.0f}%)")
    gone = set(before) - {(r["model"], r["format"]) for r in new.get("cells", [])}
    lines += [f"{m} {f}: in the old run only" for m, f in sorted(gone)]
    return lines
