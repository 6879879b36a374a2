"""The artifacts of every runtime for one model, through each runtime's adapter."""

from __future__ import annotations

import json
from pathlib import Path

from .adapters import executorch, litert, onnxruntime
from .common import RESOLUTION, SEED, log


def prepare_model(
    alias: str, work: Path, runtimes: set[str], litert_python: Path | None, reuse: bool
) -> dict:
    """Build the model, write the .pte files through our pipeline, the ONNX files, and
    (through the LiteRT venv) the .tflite files. Returns {artifact key: path or error}."""
    import numpy as np

    from mobile_export.models import create_model
    from mobile_export.models.stats import count_macs
    from mobile_export.models.weights import state_digest
    from mobile_export.quantize import load_calibration

    out = work / alias
    out.mkdir(parents=True, exist_ok=True)
    built = create_model(alias, weights="random", seed=SEED, resolution=RESOLUTION)
    calibration = load_calibration(None, built.preprocess, normalized=False)  # the .pte normalizes inside
    np.savez(out / "calibration.npz", *[np.asarray(x, dtype=np.float32) for x in calibration.inputs])
    np.save(out / "input.npy", np.asarray(calibration.inputs[0], dtype=np.float32))
    info = {
        "model": built.spec.name,
        "alias": alias,
        "resolution": built.resolution,
        "params": sum(p.numel() for p in built.module.parameters()),
        "macs": count_macs(built.module, built.resolution),
        "weights_digest": state_digest(built.module),
        "calibration_images": len(calibration.inputs),
        "artifacts": {},
        "errors": {},
    }
    arts = info["artifacts"]
    if "executorch" in runtimes:
        for precision in ("fp32", "int8"):
            arts[f"executorch-{precision}"] = str(executorch.export(alias, out, precision, reuse))
    if "onnxruntime" in runtimes:
        try:
            arts.update(onnxruntime.export(built, calibration.inputs, out, reuse))
        except Exception as exc:  # a peer that fails to build is reported, not fatal
            info["errors"]["onnxruntime"] = (
                f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            )
            log(f"ONNX export failed: {info['errors']['onnxruntime']}")
    if "litert" in runtimes:
        if litert_python is None:
            info["errors"]["litert"] = "litert-torch/ai-edge-litert not installed (see --litert-venv)"
        else:
            arts.update(
                litert.convert_litert(
                    litert_python, alias, out, info["weights_digest"], reuse, info["errors"]
                )
            )
    (out / "prepared.json").write_text(json.dumps(info, indent=2))
    return info
