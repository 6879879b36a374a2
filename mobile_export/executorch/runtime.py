"""Run an ExecuTorch program in a child process.

A damaged .pte can abort or segfault the process that loads it (the C++ runtime's error
path is not always survivable from Python), so the CLI never loads one itself: the parent
writes the inputs to an .npz, starts `python -m mobile_export.executorch.runtime`, and turns any
failure of the child into a one-line ArtifactError.

Child protocol: argv = PROGRAM INPUTS.npz OUTPUTS.npz [--threads N] [--etdump DIR [--debug-buffer BYTES]]
[--time RUNS --warmup N] [--profile RUNS --etdump DIR];
inputs are arrays in0, in1, ... (each 1x3xHxW float32); outputs are out0, out1, ...
With --time (bench), input 0 runs on a program loaded once: first call, N untimed calls, RUNS
timed calls; load_ms, first_ms and times_ms (one per timed call) come back beside out0.
With --profile (per-operator times), input 0 runs RUNS times with ETDump profiling events and
no debug buffer; the dump goes to DIR/etdump_profile.etdp.
With --etdump, input i runs on a freshly loaded program and its ETDump and debug buffer go to
DIR/etdump_i.etdp and DIR/debug_i.bin: the Inspector keeps one value per op, so one dump per
image is what lets every image be compared.
For a .bpte the child also checks the bundled expected outputs (key bundled_ok, one 0/1
per embedded case; --bundled-cases N says how many there are, from the manifest).
A Python-level failure is reported as one line starting with ERROR_PREFIX, exit code 3."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ArtifactError

ERROR_PREFIX = "mobile-export-runner-error: "
DEFAULT_TIMEOUT_S = 600.0
MAX_BUNDLED_CASES = 64
DEBUG_BUFFER_BYTES = 64 << 20  # default room for every intermediate output of one run
BUNDLED_RTOL, BUNDLED_ATOL = 1e-3, 1e-4  # defaults; the manifest records the tolerance of each .bpte


def run_isolated(
    program: str | Path,
    inputs: Sequence[np.ndarray],
    *,
    threads: int = 1,
    timeout: float = DEFAULT_TIMEOUT_S,
    etdump_dir: str | Path | None = None,
    debug_buffer_bytes: int | None = None,
    bundled_cases: int | None = None,
    bundled_tolerance: tuple[float, float] | None = None,
    time_runs: int | None = None,
    warmup: int = 0,
    profile_runs: int | None = None,
) -> dict[str, np.ndarray]:
    """Execute `program` on every input in a child process; return the child's arrays
    (out0, out1, ..., for a .bpte bundled_ok, with `time_runs` load_ms/first_ms/times_ms).
    Any crash, abort, timeout or runtime error becomes an ArtifactError naming the file."""
    program = Path(program)
    with tempfile.TemporaryDirectory(prefix="mobile-export-run-") as tmp:
        in_path, out_path = Path(tmp) / "inputs.npz", Path(tmp) / "outputs.npz"
        np.savez(
            in_path,
            **{f"in{i}": np.array(x, dtype=np.float32, order="C", copy=True) for i, x in enumerate(inputs)},
        )
        cmd = [
            sys.executable,
            "-m",
            "mobile_export.executorch.runtime",
            str(program),
            str(in_path),
            str(out_path),
            "--threads",
            str(threads),
        ]
        if etdump_dir is not None:
            cmd += [
                "--etdump",
                str(etdump_dir),
                "--debug-buffer",
                str(int(debug_buffer_bytes or DEBUG_BUFFER_BYTES)),
            ]
        if bundled_cases is not None:
            cmd += ["--bundled-cases", str(int(bundled_cases))]
        if bundled_tolerance is not None:
            cmd += [
                "--bundled-rtol",
                repr(float(bundled_tolerance[0])),
                "--bundled-atol",
                repr(float(bundled_tolerance[1])),
            ]
        if time_runs is not None:
            cmd += ["--time", str(int(time_runs)), "--warmup", str(int(warmup))]
        if profile_runs is not None:
            cmd += ["--profile", str(int(profile_runs))]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        try:
            proc = subprocess.run(
                cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, env=env
            )
        except subprocess.TimeoutExpired:
            raise ArtifactError(
                f"{program.name}: the ExecuTorch runtime did not finish within {timeout:.0f}s; the file may be damaged, export it again"
            ) from None
        if proc.returncode != 0 or not out_path.exists():
            raise ArtifactError(
                f"{program.name}: {_why(proc.returncode, proc.stderr)}; the file is damaged or not an ExecuTorch program, export it again"
            )
        with np.load(out_path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}


def _why(code: int, stderr: bytes) -> str:
    text = stderr.decode("utf-8", errors="replace")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    ours = [ln[len(ERROR_PREFIX) :] for ln in lines if ln.startswith(ERROR_PREFIX)]
    if ours:
        return "the ExecuTorch runtime rejected it (" + ours[-1][:300] + ")"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"the ExecuTorch runtime crashed ({name}) while loading or running it"
    hint = next(
        (ln for ln in reversed(lines) if "error" in ln.lower() or "fail" in ln.lower()),
        lines[-1] if lines else "",
    )
    return f"the ExecuTorch runtime failed (exit code {code}{': ' + hint[:200] if hint else ''})"


# --- child side -------------------------------------------------------------------------


def _child(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="mobile_export.executorch.runtime")
    parser.add_argument("program")
    parser.add_argument("inputs")
    parser.add_argument("outputs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--etdump", default=None)
    parser.add_argument("--debug-buffer", type=int, default=DEBUG_BUFFER_BYTES)
    parser.add_argument("--bundled-cases", type=int, default=None)
    parser.add_argument("--bundled-rtol", type=float, default=BUNDLED_RTOL)
    parser.add_argument("--bundled-atol", type=float, default=BUNDLED_ATOL)
    parser.add_argument("--time", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--profile", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        import torch
        from executorch.extension.pybindings import portable_lib

        portable_lib._unsafe_reset_threadpool(max(1, args.threads))
        data = Path(args.program).read_bytes()
        with np.load(args.inputs, allow_pickle=False) as npz:
            inputs = [torch.from_numpy(npz[f"in{i}"]) for i in range(len(npz.files))]
        results: dict[str, np.ndarray] = {}
        if args.time is not None:
            outputs = _time_program(data, inputs[0], args.time, args.warmup, results)
        elif args.profile is not None:
            outputs = _profile_program(data, inputs[0], args.profile, Path(args.etdump))
        elif Path(args.program).suffix.lower() == ".bpte":
            outputs, results["bundled_ok"] = _run_bundled(
                portable_lib, data, inputs, args.bundled_cases, args.bundled_rtol, args.bundled_atol
            )
        else:
            outputs = _run_program(data, inputs, args.etdump, args.debug_buffer)
        for i, out in enumerate(outputs):
            results[f"out{i}"] = out
        tmp = Path(args.outputs).with_suffix(".part.npz")
        np.savez(tmp, **results)
        os.replace(tmp, args.outputs)
        return 0
    except Exception as exc:  # one line for the parent; the parent owns the wording
        msg = " ".join(str(exc).split()) or exc.__class__.__name__
        sys.stderr.write(f"{ERROR_PREFIX}{exc.__class__.__name__}: {msg[:300]}\n")
        sys.stderr.flush()
        return 3


def _run_program(
    data: bytes, inputs, etdump_dir: str | None, debug_buffer: int = DEBUG_BUFFER_BYTES
) -> list[np.ndarray]:
    from executorch.runtime import Runtime

    if etdump_dir is not None:
        return [
            _run_with_etdump(Runtime.get(), data, x, Path(etdump_dir), i, debug_buffer)
            for i, x in enumerate(inputs)
        ]
    method = _forward(Runtime.get().load_program(data))
    return [method.execute((x,))[0].detach().numpy().copy() for x in inputs]


def _forward(program):
    method = program.load_method("forward")
    if method is None:
        raise RuntimeError("the program has no forward method")
    return method


def load_forward(data: bytes, threads: int | None = None, **load_options):
    """Child side: (program, forward method, load milliseconds). The caller keeps `data` and the
    program alive while it uses the method (the method points into both). Also what
    scripts/bench_peers.py's ExecuTorch worker loads its program with."""
    import time

    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    if threads is not None:
        portable_lib._unsafe_reset_threadpool(max(1, threads))
    t0 = time.perf_counter()
    program = Runtime.get().load_program(data, **load_options)
    method = _forward(program)
    return program, method, (time.perf_counter() - t0) * 1000


def _time_program(data: bytes, x, runs: int, warmup: int, results: dict) -> list[np.ndarray]:
    import time

    _program, method, load_ms = load_forward(data)
    t0 = time.perf_counter()
    out = method.execute((x,))[0].detach().numpy().copy()
    first_ms = (time.perf_counter() - t0) * 1000
    for _ in range(warmup):
        method.execute((x,))
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        method.execute((x,))
        times.append((time.perf_counter() - t0) * 1000)
    results.update(
        load_ms=np.float64(load_ms), first_ms=np.float64(first_ms), times_ms=np.asarray(times, np.float64)
    )
    return [out]


def _profile_program(data: bytes, x, runs: int, etdump_dir: Path) -> list[np.ndarray]:
    program, method, _ = load_forward(data, enable_etdump=True, debug_buffer_size=0)
    out = None
    for _ in range(runs):
        out = method.execute((x,))[0]
    etdump_dir.mkdir(parents=True, exist_ok=True)
    program.write_etdump_result_to_file(
        str(etdump_dir / "etdump_profile.etdp"), str(etdump_dir / "debug_profile.bin")
    )
    return [out.detach().numpy().copy()]


def _run_with_etdump(runtime, data: bytes, x, etdump_dir: Path, index: int, debug_buffer: int) -> np.ndarray:
    program = runtime.load_program(data, enable_etdump=True, debug_buffer_size=debug_buffer)
    out = _forward(program).execute((x,))[0].detach().numpy().copy()
    etdump_dir.mkdir(parents=True, exist_ok=True)
    program.write_etdump_result_to_file(
        str(etdump_dir / f"etdump_{index}.etdp"), str(etdump_dir / f"debug_{index}.bin")
    )
    return out


def _run_bundled(portable_lib, data: bytes, inputs, cases: int | None, rtol: float, atol: float):
    """Run the program inside a .bpte on the given inputs, and check every embedded test
    case against its embedded expected outputs (the on-device self-check)."""
    bundled = portable_lib._load_bundled_program_from_buffer(data)
    module = portable_lib._load_for_executorch_from_bundled_program(bundled)
    outputs = [module.forward((x,))[0].detach().numpy().copy() for x in inputs]
    checks = []
    for index in range(cases if cases is not None else MAX_BUNDLED_CASES):
        try:
            bundled.verify_result_with_bundled_expected_output("forward", index, rtol, atol)
            checks.append(1)
        except Exception as exc:  # mismatch: "Result verification failed"; no such case: execution fails
            if "verification failed" in str(exc).lower():
                checks.append(0)
            elif cases is None:
                break
            else:
                raise RuntimeError(f"embedded test case {index} of {cases} cannot run ({exc})") from None
    return outputs, np.asarray(checks, dtype=np.int8)


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
