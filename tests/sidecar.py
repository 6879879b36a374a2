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
