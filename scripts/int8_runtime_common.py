"""Shared setup for the issue-18 investigation (V3-Small .pte vs its own quantized graph):
the trained fixture, 32 calibration crops from train_x (seed 0, written as PNG and read back
through the exporter's calibration path), 200 held-out crops from test_x (seed 1), the
default recipe, lowering with the project's own `lower`, and the ExecuTorch runtime."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import int8_quality  # noqa: E402
import train_small  # noqa: E402

FIXTURES = {
    "v3s": ROOT / "tests" / "fixtures" / "trained" / "mobilenet_v3_small_100_photos_64.safetensors",
    "v2": ROOT / "tests" / "fixtures" / "trained" / "mobilenet_v2_100_photos_64.safetensors",
}
WORK = Path("/tmp/int8_runtime_work")
N_CALIB, N_HELD = 32, 200


def setup(name: str):
    """-> (wrapped float module (normalization inside), calibration inputs, held-out inputs
    (200 x 1x3x64x64 RGB in [0,1]), example input)."""
    import torch

    from mobile_export.executorch.lowering import with_normalization
    from mobile_export.quantize import load_calibration

    torch.set_num_threads(1)
    model, meta, pre = train_small.load_checkpoint(FIXTURES[name])
    data = train_small.load_dataset("photos", 64, seed=0)
    calib_dir = WORK / f"calib_{N_CALIB}"
    if not calib_dir.exists():
        int8_quality.write_calibration_folder(calib_dir, data.train_x, N_CALIB, seed=0)
    rng = np.random.default_rng(1)
    picks = np.sort(rng.choice(len(data.test_x), size=N_HELD, replace=False))
    held = int8_quality.rgb01(data.test_x[picks])
    wrapped = with_normalization(model, pre.mean, pre.std)
    cal = load_calibration(calib_dir, pre, limit=N_CALIB, normalized=False)
    example = torch.zeros((1, 3, 64, 64))
    return wrapped, list(cal.inputs), [np.ascontiguousarray(x[None]) for x in held], example


def torch_outputs(gm, inputs) -> np.ndarray:
    import torch

    with torch.no_grad():
        return np.concatenate([gm(torch.from_numpy(x)).detach().numpy().reshape(1, -1) for x in inputs])


def lower_bytes(gm, example, per_op=False) -> bytes:
    from mobile_export.executorch.lowering import lower

    manager, delegation = lower(gm, example, per_op=per_op)
    return bytes(manager.buffer), delegation


_RT = {}


def run_pte(buf: bytes, inputs) -> list[np.ndarray]:
    """In-process runtime, one thread (our own freshly lowered programs only)."""
    import torch
    from executorch.runtime import Runtime

    if "rt" not in _RT:
        from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

        _unsafe_reset_threadpool(1)
        _RT["rt"] = Runtime.get()
    method = _RT["rt"].load_program(buf).load_method("forward")
    outs = []
    for x in inputs:
        res = method.execute((torch.from_numpy(np.ascontiguousarray(x)),))
        outs.append([r.detach().numpy().copy() for r in res])
    return outs


def sqnr(ref, test) -> float:
    ref = np.asarray(ref, np.float64)
    diff = ref - np.asarray(test, np.float64)
    return float(10 * np.log10((ref * ref).sum() / max((diff * diff).sum(), 1e-30)))


def agree(a, b) -> float:
    return 100.0 * float((np.asarray(a).argmax(1) == np.asarray(b).argmax(1)).mean())


def three_way(fl, q, pte) -> dict:
    return {
        "pte_vs_float_db": round(sqnr(fl, pte), 2),
        "pte_vs_float_agree": agree(fl, pte),
        "q_vs_float_db": round(sqnr(fl, q), 2),
        "q_vs_float_agree": agree(fl, q),
        "pte_vs_q_db": round(sqnr(q, pte), 2),
        "pte_vs_q_agree": agree(q, pte),
    }
