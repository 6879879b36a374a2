"""Where the side python with the real torchvision + timm lives (never a project dependency:
torchvision does not import beside torch 2.13 CPU). `.ci/run` builds one and sets
MOBILE_EXPORT_SIDECAR_PYTHON; a developer's /work/sidevenv is the fallback. Tests that need it
skip with SKIP_REASON when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

ENV = "MOBILE_EXPORT_SIDECAR_PYTHON"
_FALLBACKS = ("/tmp/mobile-export-sidecar/bin/python", "/work/sidevenv/bin/python")


def side_python() -> str | None:
    candidates = [os.environ[ENV]] if os.environ.get(ENV) else list(_FALLBACKS)
    return next((c for c in candidates if Path(c).exists()), None)


SIDE_PYTHON = side_python()
SKIP_REASON = (
    f"no side python with torchvision/timm (set {ENV}; .ci/run builds one at /tmp/mobile-export-sidecar)"
)

# fp32 agreement with the reference libraries. The side python runs another torch build
# (2.14.1, where CI's CPU may pick other kernels), which orders fp32 sums differently: CI
# measured up to 4.7e-5 on logits of magnitude ~10. A mapping bug (one wrong tensor, a
# missing eps, a swapped layer) moves logits by 1e-2 or more (tests/test_reference_outputs.py
# test_the_comparison_can_fail), so 2e-5 of the logits' range keeps three decades of margin.
RELATIVE_FP32 = 2e-5


def fp32_tolerance(reference) -> float:
    """The max abs difference allowed against `reference` (a tensor of logits)."""
    return RELATIVE_FP32 * max(1.0, float(reference.abs().max()))
