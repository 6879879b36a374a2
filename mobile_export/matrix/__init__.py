"""The family x format matrix: every MobileNet exported to every format, verified and timed,
with one cached, resumable cell per (model, format), a diff between two runs, and an
optional Ray runner for when one machine is too slow.

    results = run_matrix(MatrixRequest(models=["v2*"], formats=["et-fp32", "coreml-fp16"]))

A cell runs the public CLI in a child process (`mobile-export MODEL --target ... --json`), so it
exercises exactly what a user runs, and a backend that crashes the process is recorded as a
crashed cell while the run goes on."""

from .formats import FORMATS, Format, resolve_formats
from .run import MatrixRequest, run_matrix

__all__ = ["FORMATS", "Format", "MatrixRequest", "resolve_formats", "run_matrix"]
