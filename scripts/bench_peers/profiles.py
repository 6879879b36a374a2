"""Per-operator profiles of the goal cells: where the time goes, per operator kind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .adapters import executorch
from .common import LAUNCHER, _child_env


def run_profile(kind: str, artifact: str, input_npy: Path, threads: int, runs: int) -> dict:
    """Per-operator profile of one artifact: the .pte through the library's runtime child,
    ONNX Runtime in a child of this script."""
    try:
        if kind == "pte":
            ops = executorch.profile(artifact, input_npy, threads, runs)
        else:
            cmd = [
                sys.executable,
                str(LAUNCHER),
                "profile-ort",
                artifact,
                str(input_npy),
                str(threads),
                str(runs),
            ]
            proc = subprocess.run(
                cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, env=_child_env(), timeout=1800
            )
            if proc.returncode != 0:
                return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]}
            ops = json.loads(proc.stdout.strip().splitlines()[-1])["ops"]
    except Exception as exc:  # a failed profile is reported in the table, not fatal
        return {"error": f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"}
    return summarize_ops(ops, kind)


def op_kind(name: str, kind: str) -> str:
    """'Convolution (NHWC, QC8) DWConv #12' -> 'Convolution (NHWC, QC8) DWConv';
    ONNX Runtime: the node's op type."""
    if kind == "ort":
        return name.split(" ", 1)[0]
    return name.rsplit(" #", 1)[0]


def summarize_ops(ops: list[dict], kind: str) -> dict:
    total = sum(o["median_ms"] for o in ops)
    by_kind: dict[str, dict] = {}
    for o in ops:
        k = op_kind(o["name"], kind)
        d = by_kind.setdefault(k, {"kind": k, "count": 0, "ms": 0.0})
        d["count"] += 1
        d["ms"] += o["median_ms"]
    kinds = sorted(by_kind.values(), key=lambda d: -d["ms"])
    for d in kinds:
        d["ms"] = round(d["ms"], 4)
        d["share"] = round(d["ms"] / total, 4) if total else 0.0
    top = sorted(ops, key=lambda o: -o["median_ms"])[:12]
    return {
        "total_ms": round(total, 4),
        "ops": len(ops),
        "by_kind": kinds,
        "top": [{"name": o["name"], "ms": round(o["median_ms"], 4)} for o in top],
    }
