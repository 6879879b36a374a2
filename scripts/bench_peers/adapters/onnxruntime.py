"""ONNX Runtime: fp32 through torch.onnx, int8 with its own static QDQ quantizer; timed in a
worker, profiled with its node profiler in a child process."""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

from ..common import _ms_since, log


class _Calibration:
    """onnxruntime.quantization.CalibrationDataReader over the same inputs the .pte saw."""

    def __init__(self, inputs, name: str):
        self._items = iter([{name: x} for x in inputs])

    def get_next(self):
        return next(self._items, None)


def export(built, calibration_inputs, out: Path, reuse: bool) -> dict:
    """fp32 ONNX through torch.onnx (dynamo exporter), then ONNX Runtime's own static QDQ int8:
    pre-processing (shape inference + graph optimization), per-channel int8 weights, uint8
    activations (the x86 VNNI fast path, u8 x s8), MinMax calibration on the same photos."""
    import torch
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from mobile_export.executorch.lowering import with_normalization
    from mobile_export.quantize.calibration import to_tensor

    fp32, pre, int8 = out / "model_fp32.onnx", out / "model_fp32_pre.onnx", out / "model_int8.onnx"
    if not (reuse and fp32.exists()):
        model = with_normalization(built.module, built.preprocess.mean, built.preprocess.std)
        example = to_tensor(calibration_inputs[0])
        t0 = time.perf_counter()
        with torch.no_grad():
            program = torch.onnx.export(
                model, (example,), dynamo=True, input_names=["x"], output_names=["logits"], verbose=False
            )
        program.save(str(fp32))
        log(f"{built.spec.name}: ONNX export in {time.perf_counter() - t0:.0f}s")
    if not (reuse and int8.exists()):
        t0 = time.perf_counter()
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=False)
        quantize_static(
            str(pre),
            str(int8),
            _Calibration(calibration_inputs, "x"),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        log(f"{built.spec.name}: ONNX Runtime int8 QDQ in {time.perf_counter() - t0:.0f}s")
    return {"onnxruntime-fp32": str(fp32), "onnxruntime-int8": str(int8)}


def make_call(precision: str, artifact: str, alias: str, threads: int, x_np, keep_alive: list):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    t0 = time.perf_counter()
    session = ort.InferenceSession(artifact, so, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return (lambda: session.run(None, {name: x_np})[0]), _ms_since(t0)


def profile_child(path: str, input_npy: str, threads: int, runs: int) -> int:
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    import tempfile

    import numpy as np
    import onnxruntime as ort

    x = np.load(input_npy)
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        for _ in range(runs):
            session.run(None, {name: x})
        trace = json.loads(Path(session.end_profiling()).read_text())
    per_node: dict[str, list[float]] = {}
    kinds: dict[str, str] = {}
    for ev in trace:
        if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time"):
            node = ev["name"][: -len("_kernel_time")]
            per_node.setdefault(node, []).append(ev["dur"] / 1000)
            kinds[node] = ev.get("args", {}).get("op_name", "?")
    ops = [
        {
            "name": f"{kinds[n]} {n}",
            "kind": kinds[n],
            "median_ms": statistics.median(v),
            "avg_ms": statistics.fmean(v),
        }
        for n, v in per_node.items()
    ]
    proto.write(json.dumps({"ops": ops}) + "\n")
    return 0
