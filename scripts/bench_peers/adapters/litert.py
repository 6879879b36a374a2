"""LiteRT: converted by litert-torch inside its own venv (it pulls jax and more), timed in a
worker started with that venv's Python."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from ..common import LAUNCHER, LITERT_PACKAGES, RESOLUTION, SEED, _child_env, _ms_since, log


def convert_litert(python: Path, alias: str, out: Path, digest: str, reuse: bool, errors: dict) -> dict:
    paths = {"litert-fp32": out / "model_fp32.tflite", "litert-int8": out / "model_int8.tflite"}
    if reuse and all(p.exists() for p in paths.values()):
        return {k: str(v) for k, v in paths.items()}
    t0 = time.perf_counter()
    cmd = [str(python), str(LAUNCHER), "litert-convert", alias, str(out), digest]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=3600, env=_child_env()
    )
    (out / "litert_convert.log").write_text(proc.stdout + proc.stderr)
    done = {}
    for key, path in paths.items():
        if path.exists():
            done[key] = str(path)
        else:
            tail = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1:] or ["no output"]
            errors[key] = f"conversion failed: {tail[0][:200]}"
    log(
        f"{alias}: LiteRT conversion {'done' if len(done) == 2 else 'incomplete'} in {time.perf_counter() - t0:.0f}s"
    )
    return done


def convert_child(alias: str, out: Path, digest: str) -> int:
    """Runs inside the LiteRT venv: same architecture and seeded weights (checked by digest),
    fp32 conversion and litert-torch's PT2E int8 (symmetric, per-channel) calibrated on the
    same photos."""
    import litert_torch
    import numpy as np
    import torch
    from litert_torch.quantize import pt2e_quantizer
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import quantize_pt2e

    from mobile_export.executorch.lowering import with_normalization
    from mobile_export.models import create_model
    from mobile_export.models.weights import state_digest

    built = create_model(alias, weights="random", seed=SEED, resolution=RESOLUTION)
    if state_digest(built.module) != digest:
        print("the LiteRT venv built different random weights than the project venv", file=sys.stderr)
        return 2
    model = with_normalization(built.module, built.preprocess.mean, built.preprocess.std).eval()
    with np.load(out / "calibration.npz") as npz:
        calibration = [torch.from_numpy(npz[k].copy()) for k in npz.files]
    example = (calibration[0],)
    litert_torch.convert(model, example).export(str(out / "model_fp32.tflite"))
    print("fp32 done", file=sys.stderr, flush=True)
    captured = torch.export.export(model, example, strict=False).module()
    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True)
    )
    prepared = quantize_pt2e.prepare_pt2e(captured, quantizer)
    with torch.no_grad():
        for x in calibration:
            prepared(x)
    converted = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
    # quant_config tells the converter to fold the Q/DQ pairs into int8 kernels ("STATIC");
    # without it the file keeps float ops around explicit quantize/dequantize (30-60x slower).
    litert_torch.convert(converted, example, quant_config=QuantConfig(pt2e_quantizer=quantizer)).export(
        str(out / "model_int8.tflite")
    )
    print("int8 done", file=sys.stderr, flush=True)
    return 0


def ensure(venv: Path, install: bool) -> Path | None:
    """Python of the LiteRT venv; creates it (CPU torch first, so pip does not pull a CUDA
    build) when asked. None when it is not there or does not import."""
    python = venv / "bin" / "python"
    if install and not python.exists():
        log(f"creating {venv} for LiteRT (about 2 GB)...")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        torch_req = _cpu_torch_requirement()
        subprocess.run([str(python), "-m", "pip", "install", "-q", torch_req, *LITERT_PACKAGES], check=False)
    if not python.exists():
        return None
    probe = subprocess.run(
        [str(python), "-c", "import litert_torch, ai_edge_litert.interpreter"],
        capture_output=True,
        text=True,
        env=_child_env(),
    )
    if probe.returncode != 0:
        log(f"LiteRT venv does not import: {(probe.stderr.strip().splitlines() or [''])[-1][:200]}")
        return None
    return python


def _cpu_torch_requirement() -> str:
    import torch

    wheels = (
        sorted(Path("/opt/wheels").glob(f"torch-{torch.__version__.split('+')[0]}*cpu*.whl"))
        if Path("/opt/wheels").exists()
        else []
    )
    if wheels:
        return str(wheels[0])
    return f"torch=={torch.__version__.split('+')[0]}"  # add --index-url of the CPU wheels if PyPI gives CUDA


def versions(python: Path) -> str | None:
    proc = subprocess.run(
        [
            str(python),
            "-c",
            "from importlib.metadata import version as v; "
            "print('litert-torch', v('litert-torch'), ', ai-edge-litert', v('ai-edge-litert'))",
        ],
        capture_output=True,
        text=True,
    )
    return proc.stdout.strip().replace(" ,", ",") or None


def make_call(precision: str, artifact: str, alias: str, threads: int, x_np, keep_alive: list):
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    t0 = time.perf_counter()
    interp = Interpreter(model_path=artifact, num_threads=threads)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    outp = interp.get_output_details()[0]
    x = x_np if tuple(inp["shape"]) == x_np.shape else x_np.transpose(0, 2, 3, 1).copy()
    if inp["dtype"] != np.float32:  # int8 I/O: the converter moved the input quantize out of the graph
        scale, zero_point = inp["quantization"]
        info = np.iinfo(inp["dtype"])
        x = np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(inp["dtype"])
    out_scale, out_zero = outp["quantization"] if outp["dtype"] != np.float32 else (1.0, 0)

    def run():
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        return (interp.get_tensor(outp["index"]).astype(np.float32) - out_zero) * out_scale

    return run, _ms_since(t0)
