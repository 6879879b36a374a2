"""MobileNet V2 1.0 and V3-Small at 224 side by side in one run: our ExecuTorch .pte (fp32 and
int8, made by mobile_export.pipeline) against PyTorch eager, torch.compile, ONNX Runtime fp32
and int8 (static QDQ, per-channel, the same calibration photos) and LiteRT (litert-torch in a
separate venv, if it installs). Writes docs/benchmarks.md (its peers section), docs/benchmarks.png
and WORKDIR/results.json.

    python3 scripts/bench_peers.py                      # everything, defaults below
    python3 scripts/bench_peers.py --rounds 2 --runs 10 --skip compile   # a quick check

How it measures, and why:
- Every runtime/precision/thread-count runs in its own worker process, loaded and warmed up
  once; the parent then asks the workers in turn for a batch of `--runs` timed calls, for
  `--rounds` rounds, rotating the order each round. Only one worker computes at a time, so
  one runtime's spinning thread pool cannot steal the other's cores, and slow drifts of a
  shared machine hit every runtime alike. A cell is the median of its per-round medians.
- Threads: ExecuTorch `_unsafe_reset_threadpool(n)` before loading; torch `set_num_threads`;
  ONNX Runtime `intra_op_num_threads`; LiteRT `num_threads`.
- All runtimes run the same network: the registry's architecture with seeded random weights
  (latency does not depend on weight values), with mean/std baked in as the .pte has it, on
  the same input (a bundled photo, RGB in [0, 1]). int8 everywhere: static post-training,
  per-channel weights, calibrated on the same bundled photos.
- Ratios (ONNX Runtime time / ExecuTorch time) are the result; absolute times on a shared
  machine are not.
- A goal missed -> per-operator ETDump timings of the .pte (XNNPACK's own profiling events,
  read with the ExecuTorch Inspector) and ONNX Runtime's node profile for the same model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
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


# --- preparing the artifacts (parent, project environment) ------------------------------


def prepare_model(alias: str, work: Path, runtimes: set[str], litert_python: Path | None, reuse: bool) -> dict:
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
        "model": built.spec.name, "alias": alias, "resolution": built.resolution,
        "params": sum(p.numel() for p in built.module.parameters()),
        "macs": count_macs(built.module, built.resolution), "weights_digest": state_digest(built.module),
        "calibration_images": len(calibration.inputs), "artifacts": {}, "errors": {},
    }
    arts = info["artifacts"]
    if "executorch" in runtimes:
        for precision in ("fp32", "int8"):
            arts[f"executorch-{precision}"] = str(export_pte(alias, out, precision, reuse))
    if "onnxruntime" in runtimes:
        try:
            arts.update(export_onnx(built, calibration.inputs, out, reuse))
        except Exception as exc:  # a peer that fails to build is reported, not fatal
            info["errors"]["onnxruntime"] = f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            log(f"ONNX export failed: {info['errors']['onnxruntime']}")
    if "litert" in runtimes:
        if litert_python is None:
            info["errors"]["litert"] = "litert-torch/ai-edge-litert not installed (see --litert-venv)"
        else:
            arts.update(convert_litert(litert_python, alias, out, info["weights_digest"], reuse, info["errors"]))
    (out / "prepared.json").write_text(json.dumps(info, indent=2))
    return info


def export_pte(alias: str, out: Path, precision: str, reuse: bool) -> Path:
    """Our own export path, exactly as `mobile-export ALIAS --target executorch --weights random
    [--quantize int8]` runs it (int8 calibrated on the bundled photos), without the parity check."""
    from mobile_export.pipeline import ExportRequest, run_export
    from mobile_export.targets import ExportOptions

    folder = out / f"pte_{precision}"
    existing = sorted(folder.glob("*.pte")) if folder.exists() else []
    if reuse and existing:
        return existing[0]
    t0 = time.perf_counter()
    options = ExportOptions(quantize="int8" if precision == "int8" else "none", seed=SEED)
    request = ExportRequest(model=alias, target="executorch", out=folder, weights="random", seed=SEED,
                            resolution=RESOLUTION, force=True, verify=False, options=options)
    manifest = run_export(request, log=lambda m: log(f"  {m}"))
    path = folder / manifest["artifacts"][0]["file"]
    log(f"{alias}: exported {path.name} in {time.perf_counter() - t0:.0f}s")
    return path


class _Calibration:
    """onnxruntime.quantization.CalibrationDataReader over the same inputs the .pte saw."""

    def __init__(self, inputs, name: str):
        self._items = iter([{name: x} for x in inputs])

    def get_next(self):
        return next(self._items, None)


def export_onnx(built, calibration_inputs, out: Path, reuse: bool) -> dict:
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
            program = torch.onnx.export(model, (example,), dynamo=True, input_names=["x"], output_names=["logits"],
                                        verbose=False)
        program.save(str(fp32))
        log(f"{built.spec.name}: ONNX export in {time.perf_counter() - t0:.0f}s")
    if not (reuse and int8.exists()):
        t0 = time.perf_counter()
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=False)
        quantize_static(str(pre), str(int8), _Calibration(calibration_inputs, "x"), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        log(f"{built.spec.name}: ONNX Runtime int8 QDQ in {time.perf_counter() - t0:.0f}s")
    return {"onnxruntime-fp32": str(fp32), "onnxruntime-int8": str(int8)}


def convert_litert(python: Path, alias: str, out: Path, digest: str, reuse: bool, errors: dict) -> dict:
    paths = {"litert-fp32": out / "model_fp32.tflite", "litert-int8": out / "model_int8.tflite"}
    if reuse and all(p.exists() for p in paths.values()):
        return {k: str(v) for k, v in paths.items()}
    t0 = time.perf_counter()
    cmd = [str(python), str(Path(__file__).resolve()), "--litert-convert", alias, str(out), digest]
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=3600,
                          env=_child_env())
    (out / "litert_convert.log").write_text(proc.stdout + proc.stderr)
    done = {}
    for key, path in paths.items():
        if path.exists():
            done[key] = str(path)
        else:
            tail = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1:] or ["no output"]
            errors[key] = f"conversion failed: {tail[0][:200]}"
    log(f"{alias}: LiteRT conversion {'done' if len(done) == 2 else 'incomplete'} in {time.perf_counter() - t0:.0f}s")
    return done


def _child_env() -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def litert_convert_child(alias: str, out: Path, digest: str) -> int:
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
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True))
    prepared = quantize_pt2e.prepare_pt2e(captured, quantizer)
    with torch.no_grad():
        for x in calibration:
            prepared(x)
    converted = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
    # quant_config tells the converter to fold the Q/DQ pairs into int8 kernels ("STATIC");
    # without it the file keeps float ops around explicit quantize/dequantize (30-60x slower).
    litert_torch.convert(converted, example, quant_config=QuantConfig(pt2e_quantizer=quantizer)).export(
        str(out / "model_int8.tflite"))
    print("int8 done", file=sys.stderr, flush=True)
    return 0


def ensure_litert(venv: Path, install: bool) -> Path | None:
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
    probe = subprocess.run([str(python), "-c", "import litert_torch, ai_edge_litert.interpreter"],
                           capture_output=True, text=True, env=_child_env())
    if probe.returncode != 0:
        log(f"LiteRT venv does not import: {(probe.stderr.strip().splitlines() or [''])[-1][:200]}")
        return None
    return python


def _cpu_torch_requirement() -> str:
    import torch

    wheels = sorted(Path("/opt/wheels").glob(f"torch-{torch.__version__.split('+')[0]}*cpu*.whl")) if Path("/opt/wheels").exists() else []
    if wheels:
        return str(wheels[0])
    return f"torch=={torch.__version__.split('+')[0]}"  # add --index-url of the CPU wheels if PyPI gives CUDA


# --- workers: one per runtime x precision x threads -------------------------------------


def worker_main(kind: str, precision: str, artifact: str, input_npy: str, alias: str, threads: int, warmup: int) -> int:
    """Load, warm up, say `ready`, then answer `run N` with N timed calls until `quit`.
    The protocol uses a private copy of stdout; library chatter goes to stderr."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    import numpy as np

    x_np = np.load(input_npy)
    call, load_ms = _make_call(kind, precision, artifact, alias, threads, x_np)
    t0 = time.perf_counter()
    out = call()
    first_ms = (time.perf_counter() - t0) * 1000
    for _ in range(warmup):
        call()
    out = np.asarray(out, dtype=np.float32).reshape(-1)
    proto.write(json.dumps({"ready": True, "load_ms": round(load_ms, 2), "first_ms": round(first_ms, 2),
                            "output": [round(float(v), 6) for v in out]}) + "\n")
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        n = int(cmd[1])
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            call()
            times.append((time.perf_counter() - t0) * 1000)
        proto.write(json.dumps({"times_ms": times}) + "\n")
    return 0


def _make_call(kind, precision, artifact, alias, threads, x_np):
    if kind == "executorch":
        import torch
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime

        portable_lib._unsafe_reset_threadpool(threads)
        t0 = time.perf_counter()
        data = Path(artifact).read_bytes()
        program = Runtime.get().load_program(data)
        method = program.load_method("forward")
        x = torch.from_numpy(x_np.copy())
        _KEEP_ALIVE.extend([data, program, method])  # the method points into both
        return (lambda: method.execute((x,))[0]), _ms_since(t0)
    if kind in ("eager", "compile"):
        import torch

        from mobile_export.executorch.lowering import with_normalization
        from mobile_export.models import create_model

        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        built = create_model(alias, weights="random", seed=SEED, resolution=RESOLUTION)
        model = with_normalization(built.module, built.preprocess.mean, built.preprocess.std).eval()
        if kind == "compile":
            model = torch.compile(model)
        x = torch.from_numpy(x_np.copy())

        def run():
            with torch.no_grad():
                return model(x)

        return run, _ms_since(t0)  # torch.compile compiles at the first call, not here
    if kind == "onnxruntime":
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
    if kind == "litert":
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
    raise ValueError(kind)


_KEEP_ALIVE: list = []


def _ms_since(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000


class Worker:
    def __init__(self, key: str, cmd: list[str], log_path: Path):
        self.key = key
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                     text=True, bufsize=1, env=_child_env())
        self.ready: dict | None = None
        self.error: str | None = None

    def wait_ready(self) -> None:
        line = self.proc.stdout.readline()
        if not line:
            self.error = self._tail()
            return
        self.ready = json.loads(line)

    def run(self, n: int) -> list[float]:
        self.proc.stdin.write(f"run {n}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            self.error = self._tail()
            raise RuntimeError(self.error)
        return json.loads(line)["times_ms"]

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        self._log.close()

    def _tail(self) -> str:
        self.proc.wait(timeout=60)
        self._log.flush()
        lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines()
                 if ln.strip() and not ln.startswith(("[cpuinfo", "[threadpool", "I0000", "W0000", "INFO:"))]
        code = self.proc.returncode
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        return f"worker {how}: {(lines[-1] if lines else 'no output')[:200]}"


def measure(infos: dict, threads_list: list[int], runtimes: set[str], rounds: int, runs: int, warmup: int,
            litert_python: Path | None, work: Path) -> list[dict]:
    """Alternating rounds per (model, threads); returns one row per cell."""
    rows = []
    for alias, info in infos.items():
        for threads in threads_list:
            workers: list[tuple[tuple[str, str], Worker]] = []
            failed: dict[tuple[str, str], str] = {}
            for kind, precision, _label in CELLS:
                if kind not in runtimes:
                    continue
                key = f"{kind}-{precision}"
                artifact = info["artifacts"].get(key, "-")  # eager/compile build the model themselves
                if kind in ("executorch", "onnxruntime", "litert") and key not in info["artifacts"]:
                    failed[(kind, precision)] = info["errors"].get(key) or info["errors"].get(kind) or "not built"
                    continue
                python = str(litert_python) if kind == "litert" else sys.executable
                cmd = [python, str(Path(__file__).resolve()), "--worker", kind, precision, artifact,
                       str(work / alias / "input.npy"), alias, str(threads), str(warmup)]
                workers.append(((kind, precision), Worker(key, cmd, work / alias / f"worker_{key}_{threads}t.log")))
            log(f"{alias}, {threads} thread(s): loading {len(workers)} workers (torch.compile compiles now)...")
            live = []
            for cell, w in workers:
                w.wait_ready()
                if w.error:
                    failed[cell] = w.error
                    log(f"  {w.key}: {w.error}")
                    w.close()
                else:
                    live.append((cell, w))
            samples: dict[tuple[str, str], list[list[float]]] = {cell: [] for cell, _ in live}
            eager_out = next((w.ready["output"] for c, w in live if c == ("eager", "fp32")), None)
            for r in range(rounds):
                order = live[r % len(live):] + live[:r % len(live)] if live else []
                for cell, w in order:
                    try:
                        samples[cell].append(w.run(runs))
                    except RuntimeError as exc:
                        failed[cell] = str(exc)
                    time.sleep(0.05)  # let the last runtime's spinning threads go to sleep
                log(f"  round {r + 1}/{rounds}: " + ", ".join(
                    f"{c[0]}-{c[1]} {statistics.median(samples[c][-1]):.2f}" for c, _ in live if samples[c]))
            for cell, w in live:
                w.close()
                if cell in failed:
                    continue
                per_round = [statistics.median(t) for t in samples[cell]]
                all_times = [t for batch in samples[cell] for t in batch]
                rows.append({
                    "model": alias, "runtime": cell[0], "precision": cell[1], "threads": threads,
                    "sqnr_db_vs_eager": _sqnr_db(w.ready["output"], eager_out) if eager_out and cell != ("eager", "fp32") else None,
                    "median_ms": round(statistics.median(per_round), 4),
                    "round_medians_ms": [round(v, 4) for v in per_round],
                    "p10_ms": round(_quantile(all_times, 0.1), 4), "p90_ms": round(_quantile(all_times, 0.9), 4),
                    "calls": len(all_times), "load_ms": w.ready["load_ms"], "first_ms": w.ready["first_ms"],
                })
            for cell, why in failed.items():
                rows.append({"model": alias, "runtime": cell[0], "precision": cell[1], "threads": threads,
                             "error": why})
    return rows


def _sqnr_db(test: list[float], reference: list[float]) -> float:
    """Signal-to-quantization-noise ratio of one output against the eager one for the same
    input: every runtime must compute the same network (fp32: > 50 dB; int8: 15-35 dB)."""
    import math

    signal_power = sum(r * r for r in reference)
    noise = sum((t - r) ** 2 for t, r in zip(test, reference))
    return round(10 * math.log10(signal_power / noise), 1) if noise else float("inf")


def _quantile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


# --- profiles (only where a goal is missed, or with --profile) ---------------------------


def profile_pte_child(path: str, input_npy: str, threads: int, runs: int) -> int:
    """Per-operator times of a .pte from ETDump: XNNPACK emits one profiling event per
    operator it runs; the Inspector averages them over `runs` executions."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    import tempfile

    import numpy as np
    import torch
    from executorch.devtools import Inspector
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    portable_lib._unsafe_reset_threadpool(threads)
    program = Runtime.get().load_program(Path(path).read_bytes(), enable_etdump=True, debug_buffer_size=0)
    method = program.load_method("forward")
    x = torch.from_numpy(np.load(input_npy))
    for _ in range(runs):
        method.execute((x,))
    with tempfile.TemporaryDirectory() as tmp:
        etdump = Path(tmp) / "etdump.etdp"
        program.write_etdump_result_to_file(str(etdump), str(Path(tmp) / "debug.bin"))
        inspector = Inspector(etdump_path=str(etdump))
    ops = []
    for block in inspector.event_blocks:
        if block.name != "Execute":
            continue
        for event in block.events:
            if event.perf_data is None or not event.is_delegated_op:
                continue
            ops.append({"name": event.name, "median_ms": float(event.perf_data.p50), "avg_ms": float(event.perf_data.avg)})
    proto.write(json.dumps({"ops": ops}) + "\n")
    return 0


def profile_ort_child(path: str, input_npy: str, threads: int, runs: int) -> int:
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
    ops = [{"name": f"{kinds[n]} {n}", "kind": kinds[n], "median_ms": statistics.median(v),
            "avg_ms": statistics.fmean(v)} for n, v in per_node.items()]
    proto.write(json.dumps({"ops": ops}) + "\n")
    return 0


def run_profile(kind: str, artifact: str, input_npy: Path, threads: int, runs: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), f"--profile-{kind}", artifact, str(input_npy), str(threads), str(runs)]
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, env=_child_env(), timeout=1800)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]}
    ops = json.loads(proc.stdout.strip().splitlines()[-1])["ops"]
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
    return {"total_ms": round(total, 4), "ops": len(ops), "by_kind": kinds,
            "top": [{"name": o["name"], "ms": round(o["median_ms"], 4)} for o in top]}


# --- report ------------------------------------------------------------------------------


def find(rows, model, runtime, precision, threads):
    for r in rows:
        if (r["model"], r["runtime"], r["precision"], r["threads"]) == (model, runtime, precision, threads) and "median_ms" in r:
            return r
    return None


def goal_results(rows, threads_list) -> list[dict]:
    out = []
    for model, precision, need in GOALS:
        for t in threads_list:
            et, ort_ = find(rows, model, "executorch", precision, t), find(rows, model, "onnxruntime", precision, t)
            if not (et and ort_):
                continue
            ratio = ort_["median_ms"] / et["median_ms"]
            out.append({"model": model, "precision": precision, "threads": t, "need": need,
                        "speedup": round(ratio, 3), "met": ratio >= need,
                        "executorch_ms": et["median_ms"], "onnxruntime_ms": ort_["median_ms"]})
    return out


def host_description() -> dict:
    from mobile_export.bench import cpu_info, peak_gmacs

    cpu = cpu_info()
    return {"cpu": cpu, "peak": {f"{d}_{t}t": peak_gmacs(t, d) for d in ("fp32", "int8") for t in (1, 2)},
            "python": platform.python_version(), "versions": _versions()}


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "executorch", "onnxruntime", "onnx"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def write_markdown(doc_path: Path, results: dict) -> None:
    rows, infos, host = results["rows"], results["models"], results["host"]
    threads_list = results["threads"]
    cpu = host["cpu"]
    lines = [SECTION[0], "## Peers: latency side by side (generated by `scripts/bench_peers.py`)", ""]
    lines.append(f"Run {results['when']} on {cpu['model']} (vendor {cpu['vendor']}, family {cpu['family']}), "
                 f"{cpu['cores']} cores visible, AVX-512 {'yes' if cpu['avx512'] else 'no'}, VNNI "
                 f"{'yes' if cpu['vnni'] else 'no'}; clock measured {cpu['clock_ghz_measured']} GHz "
                 f"(reported {cpu['clock_ghz_reported']} GHz). Python {host['python']}, "
                 + ", ".join(f"{k} {v}" for k, v in host["versions"].items() if v)
                 + (f", LiteRT venv: {results['litert_versions']}" if results.get("litert_versions") else "") + ".")
    lines.append("")
    lines.append("Peak from `mobile_export.bench.peak_gmacs` (cores x clock x lanes x FMA pipes x MACs per lane):")
    for key, p in host["peak"].items():
        lines.append(f"- {key.replace('_', ', ').replace('1t', '1 thread').replace('2t', '2 threads')}: "
                     f"{p['gmacs']} GMAC/s = {p['how']}")
    lines.append("")
    described = ", ".join(f"{MODELS[a]} ({i['model']}, {i['params']:,} params, {i['macs'] / 1e6:.1f} MMACs)"
                          for a, i in infos.items())
    lines.append(f"Models: {described}, "
                 f"{RESOLUTION}x{RESOLUTION}, batch 1, **random weights** (seed {SEED}; latency does not depend on the values), "
                 "mean/std inside the graph in every runtime. int8: static post-training, per-channel weights, "
                 f"calibrated on the same {next(iter(infos.values()))['calibration_images']} bundled photos everywhere "
                 "(ExecuTorch: our pipeline, XNNPACKQuantizer symmetric int8; ONNX Runtime: `quantize_static` QDQ, "
                 "u8 activations / s8 weights, MinMax; LiteRT: litert-torch PT2EQuantizer symmetric int8).")
    lines.append("")
    lines.append(f"Each cell: median of {results['rounds']} alternating rounds of {results['runs']} calls each "
                 f"(per-round medians), after {results['warmup']} warm-up calls; every runtime in its own process, "
                 "one at a time. ms, lower is better; `1t / 2t` = 1 thread / 2 threads. Load average (1/5/15 min) "
                 f"at the start {results.get('load_average', {}).get('start')}, at the end "
                 f"{results.get('load_average', {}).get('end')}: "
                 "above ~1 on these 2 cores, other jobs shared the machine and single-thread times stretch with "
                 "their share of a core; compare ratios within one run, not absolute times across runs.")
    lines.append("")
    header = "| runtime | " + " | ".join(f"{a} {p}" for a in infos for p in ("fp32", "int8")) + " |"
    lines += [header, "|---" * (1 + 2 * len(infos)) + "|"]
    for runtime in dict.fromkeys(r for r, _, _ in CELLS):
        cells = []
        any_value = False
        for a in infos:
            for p in ("fp32", "int8"):
                vals = []
                for t in threads_list:
                    r = find(rows, a, runtime, p, t)
                    vals.append(f"{r['median_ms']:.2f}" if r else "–")
                    any_value |= r is not None
                cells.append(" / ".join(vals))
        errs = sorted({r["error"] for r in rows if r["runtime"] == runtime and "error" in r})
        if any_value or errs:
            lines.append(f"| {RUNTIME_LABEL[runtime]} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Speed-up of the .pte over ONNX Runtime in this run (ONNX Runtime ms / ExecuTorch ms; > 1 = the .pte is faster):")
    lines.append("")
    lines.append("| model | precision | " + " | ".join(f"{t} thread(s)" for t in threads_list) + " |")
    lines.append("|---|---|" + "---|" * len(threads_list))
    for a in infos:
        for p in ("fp32", "int8"):
            vals = []
            for t in threads_list:
                et, o = find(rows, a, "executorch", p, t), find(rows, a, "onnxruntime", p, t)
                vals.append(f"{o['median_ms'] / et['median_ms']:.2f}x" if et and o else "–")
            lines.append(f"| {a} | {p} | " + " | ".join(vals) + " |")
    lines.append("")
    lines.append("Fraction of the CPU's peak (MACs / median time / peak; int8 rows against the int8 peak):")
    lines.append("")
    lines.append("| runtime | " + " | ".join(f"{a} {p}" for a in infos for p in ("fp32", "int8")) + " |")
    lines.append("|---" * (1 + 2 * len(infos)) + "|")
    for runtime in dict.fromkeys(r for r, _, _ in CELLS):
        cells, any_value = [], False
        for a in infos:
            for p in ("fp32", "int8"):
                vals = []
                for t in threads_list:
                    r = find(rows, a, runtime, p, t)
                    peak = host["peak"][f"{p}_{t}t"]["gmacs"]
                    if r and peak:
                        pct = infos[a]["macs"] / (r["median_ms"] / 1000) / 1e9 / peak * 100
                        vals.append(f"{pct:.0f}%" if pct >= 10 else f"{pct:.1f}%")
                        any_value = True
                    else:
                        vals.append("–")
                cells.append(" / ".join(vals))
        if any_value:
            lines.append(f"| {RUNTIME_LABEL[runtime]} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Same network everywhere: SQNR (dB) of each runtime's output against PyTorch eager fp32 on the "
                 "timing input, 1 thread (fp32: rounding only; int8: the quantization error, not a different model):")
    lines.append("")
    lines.append("| runtime | " + " | ".join(f"{a} {p}" for a in infos for p in ("fp32", "int8")) + " |")
    lines.append("|---" * (1 + 2 * len(infos)) + "|")
    for runtime in dict.fromkeys(r for r, _, _ in CELLS):
        cells = []
        for a in infos:
            for p in ("fp32", "int8"):
                r = find(rows, a, runtime, p, threads_list[0])
                cells.append(f"{r['sqnr_db_vs_eager']:.1f}" if r and r.get("sqnr_db_vs_eager") is not None else "–")
        if any(c != "–" for c in cells):
            lines.append(f"| {RUNTIME_LABEL[runtime]} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Goals (the .pte against ONNX Runtime, same run):")
    lines.append("")
    for g in results["goals"]:
        lines.append(f"- {g['model']} {g['precision']}, {g['threads']} thread(s): need >= {g['need']:.1f}x, "
                     f"measured {g['speedup']:.2f}x ({g['executorch_ms']:.2f} vs {g['onnxruntime_ms']:.2f} ms): "
                     f"**{'met' if g['met'] else 'missed'}**")
    errors = [r for r in rows if "error" in r]
    notes = {f"{k} ({a})": v for a, i in infos.items() for k, v in i["errors"].items()}
    if errors or notes:
        lines += ["", "Not measured:"]
        for k, v in notes.items():
            lines.append(f"- {k}: {v}")
        for r in errors:
            lines.append(f"- {r['runtime']} {r['precision']} {r['model']} {r['threads']}t: {r['error']}")
    if results.get("profiles"):
        lines += ["", "### Per-operator profile (generated)", ""]
        lines.append(f"ExecuTorch: XNNPACK's per-operator events from ETDump, read with the ExecuTorch Inspector; "
                     f"ONNX Runtime: its node profile (`enable_profiling`), grouped by op type. Each operator's median "
                     f"over {results['profile_runs']} runs, summed (medians shrug off a preempted call; the gap to the "
                     "latency table is work outside the operators). XNNPACK runs 1x1 convolutions as "
                     "\"Fully Connected\" GEMMs.")
        for name, prof in results["profiles"].items():
            lines += ["", f"**{name}**" + (f": {prof['error']}" if "error" in prof else
                                           f": {prof['ops']} operators, {prof['total_ms']:.3f} ms in operators"), ""]
            if "error" in prof:
                continue
            lines += ["| operator kind | count | ms | share |", "|---|---|---|---|"]
            for d in prof["by_kind"][:10]:
                lines.append(f"| {d['kind']} | {d['count']} | {d['ms']:.3f} | {d['share'] * 100:.1f}% |")
            lines += ["", "Slowest single operators: " + ", ".join(f"{t['name']} {t['ms']:.3f} ms" for t in prof["top"][:6]) + "."]
    lines.append(SECTION[1])
    _replace_section(doc_path, SECTION, "\n".join(lines))


def _replace_section(doc_path: Path, markers: tuple[str, str], body: str) -> None:
    """Swap one generated section of docs/benchmarks.md, keeping every other part (the other
    script's section and the hand-written analysis) as it is. Written through atomic_path."""
    from mobile_export.fsutil import write_text_atomic

    text = doc_path.read_text() if doc_path.exists() else "# Benchmarks\n"
    start, end = markers
    if start in text and end in text:
        head, rest = text.split(start, 1)
        tail = rest.split(end, 1)[1]
        text = head + body + tail
    else:
        text = text.rstrip("\n") + "\n\n" + body + "\n"
    write_text_atomic(doc_path, text)


def write_chart(png: Path, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mobile_export.fsutil import atomic_path

    rows, infos, threads_list = results["rows"], results["models"], results["threads"]
    panels = [(a, p) for a in infos for p in ("fp32", "int8")]
    ncols = min(2, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.0 * ncols, 4.2 * nrows), squeeze=False)
    axes = [list(axes.flat)]
    colors = {1: "#4c72b0", 2: "#dd8452"}
    for ax, (a, p) in zip(axes[0], panels):
        labels = []
        for runtime in dict.fromkeys(r for r, _, _ in CELLS):
            if any(find(rows, a, runtime, p, t) for t in threads_list):
                labels.append(runtime)
        width = 0.8 / max(1, len(threads_list))
        for i, t in enumerate(threads_list):
            vals = [(find(rows, a, r, p, t) or {}).get("median_ms", float("nan")) for r in labels]
            xs = [j + (i - (len(threads_list) - 1) / 2) * width for j in range(len(labels))]
            bars = ax.bar(xs, vals, width, label=f"{t} thread{'s' if t > 1 else ''}", color=colors.get(t))
            ax.bar_label(bars, labels=[f"{v:.2f}" if v == v else "" for v in vals], fontsize=7, padding=1)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels([RUNTIME_LABEL[r].replace(" ", "\n", 1) for r in labels], fontsize=8)
        ax.set_title(f"{MODELS[a]} {p}", fontsize=10)
        ax.set_ylabel("ms per image (median, log scale)")
        ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend()
    cpu = results["host"]["cpu"]
    fig.suptitle(f"Batch 1, {RESOLUTION}px, {cpu['model']} @ {cpu['clock_ghz_measured']} GHz (lower is better)", fontsize=11)
    fig.tight_layout()
    with atomic_path(png, force=True) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


# --- main ------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--models", default="v2,v3-small")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds (default 6)")
    parser.add_argument("--runs", type=int, default=50, help="timed calls per worker per round (default 50)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed calls after loading (default 20)")
    parser.add_argument("--skip", default="", help="comma list of runtimes to leave out: executorch,eager,compile,onnxruntime,litert")
    parser.add_argument("--workdir", type=Path, default=REPO / "build" / "bench_peers")
    parser.add_argument("--reuse", action="store_true", help="reuse artifacts already in --workdir (debugging)")
    parser.add_argument("--litert-venv", type=Path, default=LITERT_VENV)
    parser.add_argument("--install-litert", action="store_true", help="create --litert-venv if missing (~2 GB)")
    parser.add_argument("--profile", choices=["auto", "always", "never"], default="always",
                        help="per-operator profiles of the goal cells (V2 fp32/int8, 1 thread): "
                             "auto = only where a goal is missed (default: always)")
    parser.add_argument("--profile-runs", type=int, default=100)
    parser.add_argument("--docs", type=Path, default=REPO / "docs")
    args = parser.parse_args()

    aliases = [a for a in args.models.split(",") if a]
    threads_list = [int(t) for t in args.threads.split(",")]
    runtimes = {r for r, _, _ in CELLS} - set(filter(None, args.skip.split(",")))
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    load_start = _loadavg()

    import warnings

    warnings.filterwarnings("ignore")
    litert_python = ensure_litert(args.litert_venv, args.install_litert) if "litert" in runtimes else None
    if "litert" in runtimes and litert_python is None:
        log(f"LiteRT skipped: no working venv at {args.litert_venv} (pass --install-litert to create it)")
    infos = {a: prepare_model(a, work, runtimes, litert_python, args.reuse) for a in aliases}
    for i in infos.values():
        if "litert" in runtimes and litert_python is None:
            i["errors"]["litert"] = f"no working LiteRT venv at {args.litert_venv} (pip install {' '.join(LITERT_PACKAGES)} failed or was not run)"
    rows = measure(infos, threads_list, runtimes, args.rounds, args.runs, args.warmup, litert_python, work)
    results = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "host": host_description(),
        "threads": threads_list, "rounds": args.rounds, "runs": args.runs, "warmup": args.warmup,
        "models": infos, "rows": rows, "goals": goal_results(rows, threads_list),
        "litert_versions": _litert_versions(litert_python) if litert_python else None,
        "load_average": {"start": load_start, "end": _loadavg()},
    }
    missed = [g for g in results["goals"] if not g["met"]]
    profiles = {}
    if args.profile == "always" or (args.profile == "auto" and missed):
        wanted = {(g["model"], g["precision"]) for g in (results["goals"] if args.profile == "always" else missed)}
        for model, precision in sorted(wanted):
            t = 1
            pte = infos[model]["artifacts"].get(f"executorch-{precision}")
            onnx = infos[model]["artifacts"].get(f"onnxruntime-{precision}")
            if pte:
                log(f"profiling {Path(pte).name} with ETDump ({t} thread)...")
                profiles[f"ExecuTorch {model} {precision}, {t} thread"] = run_profile("pte", pte, work / model / "input.npy", t, args.profile_runs)
            if onnx:
                log(f"profiling {Path(onnx).name} with ONNX Runtime's profiler ({t} thread)...")
                profiles[f"ONNX Runtime {model} {precision}, {t} thread"] = run_profile("ort", onnx, work / model / "input.npy", t, args.profile_runs)
    results["profiles"] = profiles
    results["profile_runs"] = args.profile_runs
    results["seconds"] = round(time.perf_counter() - t_start, 1)
    from mobile_export.fsutil import write_text_atomic

    write_text_atomic(work / "results.json", json.dumps(results, indent=2, default=str))
    args.docs.mkdir(parents=True, exist_ok=True)
    write_markdown(args.docs / "benchmarks.md", results)
    write_chart(args.docs / "benchmarks.png", results)
    log(f"wrote {args.docs / 'benchmarks.md'}, {args.docs / 'benchmarks.png'}, {work / 'results.json'} "
        f"in {results['seconds']:.0f}s")
    for g in results["goals"]:
        log(f"goal {g['model']} {g['precision']} {g['threads']}t: {g['speedup']:.2f}x (need {g['need']}) "
            f"{'met' if g['met'] else 'MISSED'}")
    return 0


def _loadavg() -> str | None:
    p = Path("/proc/loadavg")
    return " ".join(p.read_text().split()[:3]) if p.exists() else None


def _litert_versions(python: Path) -> str | None:
    proc = subprocess.run([str(python), "-c", "from importlib.metadata import version as v; "
                           "print('litert-torch', v('litert-torch'), ', ai-edge-litert', v('ai-edge-litert'))"],
                          capture_output=True, text=True)
    return proc.stdout.strip().replace(" ,", ",") or None


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        a = sys.argv[2:]
        sys.exit(worker_main(a[0], a[1], a[2], a[3], a[4], int(a[5]), int(a[6])))
    if len(sys.argv) > 1 and sys.argv[1] == "--litert-convert":
        sys.exit(litert_convert_child(sys.argv[2], Path(sys.argv[3]), sys.argv[4]))
    if len(sys.argv) > 1 and sys.argv[1] in ("--profile-pte", "--profile-ort"):
        fn = profile_pte_child if sys.argv[1] == "--profile-pte" else profile_ort_child
        sys.exit(fn(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])))
    sys.exit(main())
