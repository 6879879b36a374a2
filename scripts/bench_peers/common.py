"""What every part of the peers benchmark shares: the table of cells, goals, logging, the
child-process environment."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = REPO / "scripts" / "bench_peers.py"  # workers and the LiteRT venv run the same entry point
MODELS = {"v2": "MobileNet V2 1.0", "v3-small": "MobileNet V3-Small 1.0"}
RESOLUTION = 224
SEED = 0
LITERT_VENV = Path("/tmp/litert-venv")
LITERT_PACKAGES = ["litert-torch", "ai-edge-litert"]
# (runtime, precision): label in the table; order = column order of the chart.
CELLS = [
    ("eager", "fp32", "PyTorch eager"),
    ("compile", "fp32", "torch.compile"),
    ("executorch", "fp32", "ExecuTorch XNNPACK"),
    ("executorch", "int8", "ExecuTorch XNNPACK"),
    ("onnxruntime", "fp32", "ONNX Runtime"),
    ("onnxruntime", "int8", "ONNX Runtime"),
    ("litert", "fp32", "LiteRT"),
    ("litert", "int8", "LiteRT"),
]
RUNTIME_LABEL = {r: label for r, _, label in CELLS}
GOALS = [  # (model, precision, minimum speed-up of the .pte over ONNX Runtime)
    ("v2", "int8", 1.3),
    ("v2", "fp32", 1.0),
]
SECTION = ("<!-- bench_peers:start -->", "<!-- bench_peers:end -->")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _child_env() -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _ms_since(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000
