"""Parity: does an artifact compute what its PyTorch model computes, on real images?

    report = verify_artifact("exports/v2/mobilenet_v2_100_fp32.pte")
    print(format_report(report)); report["passed"]

Order of checks, cheapest first: the file's structure (target.check_file), the manifest's
sha256, then the reference model, real-image inputs, the artifact run through its target's
`run` (a child process for .pte), metrics and the one threshold table. Heavy imports happen
inside the functions."""

from __future__ import annotations

from .report import format_report
from .verify import verify_artifact

__all__ = ["verify_artifact", "format_report"]
