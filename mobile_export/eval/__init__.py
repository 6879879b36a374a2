"""Accuracy on labelled images: every artifact of one model, and its PyTorch reference, on the
same decoded inputs, with paired statistics on the drop.

    outcome = run_eval(["m_fp32.pte", "m.mlpackage"], EvalOptions(dataset=Path("val/")))
    report = build_report(outcome)

datasets: the three on-disk layouts; stats: bootstrap CI and exact McNemar; runner: streaming,
cached, executor-agnostic evaluation; report: JSON / Markdown / HTML. Ray lives only in
mobile_export/cluster.py (an executor for `run_eval`)."""

from __future__ import annotations

from .report import build_report, format_markdown, format_text, write_report
from .runner import EvalOptions, LocalExecutor, run_eval

__all__ = [
    "EvalOptions",
    "LocalExecutor",
    "run_eval",
    "build_report",
    "format_markdown",
    "format_text",
    "write_report",
]
