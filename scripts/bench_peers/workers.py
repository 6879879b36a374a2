"""Timing: one worker process per runtime x precision x threads, loaded and warmed up once,
asked in turn for batches of timed calls (the protocol: `ready` line, then `run N` -> times,
`quit`)."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from .adapters import make_call
from .common import CELLS, LAUNCHER, _child_env, log

_KEEP_ALIVE: list = []


def worker_main(
    kind: str, precision: str, artifact: str, input_npy: str, alias: str, threads: int, warmup: int
) -> int:
    """Load, warm up, say `ready`, then answer `run N` with N timed calls until `quit`.
    The protocol uses a private copy of stdout; library chatter goes to stderr."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    import numpy as np

    x_np = np.load(input_npy)
    call, load_ms = make_call(kind, precision, artifact, alias, threads, x_np, _KEEP_ALIVE)
    t0 = time.perf_counter()
    out = call()
    first_ms = (time.perf_counter() - t0) * 1000
    for _ in range(warmup):
        call()
    out = np.asarray(out, dtype=np.float32).reshape(-1)
    proto.write(
        json.dumps(
            {
                "ready": True,
                "load_ms": round(load_ms, 2),
                "first_ms": round(first_ms, 2),
                "output": [round(float(v), 6) for v in out],
            }
        )
        + "\n"
    )
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


class Worker:
    def __init__(self, key: str, cmd: list[str], log_path: Path):
        self.key = key
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            bufsize=1,
            env=_child_env(),
        )
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
        lines = [
            ln
            for ln in self.log_path.read_text(errors="replace").splitlines()
            if ln.strip() and not ln.startswith(("[cpuinfo", "[threadpool", "I0000", "W0000", "INFO:"))
        ]
        code = self.proc.returncode
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        return f"worker {how}: {(lines[-1] if lines else 'no output')[:200]}"


def measure(
    infos: dict,
    threads_list: list[int],
    runtimes: set[str],
    rounds: int,
    runs: int,
    warmup: int,
    litert_python: Path | None,
    work: Path,
) -> list[dict]:
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
                    failed[(kind, precision)] = (
                        info["errors"].get(key) or info["errors"].get(kind) or "not built"
                    )
                    continue
                python = str(litert_python) if kind == "litert" else sys.executable
                cmd = [
                    python,
                    str(LAUNCHER),
                    "worker",
                    kind,
                    precision,
                    artifact,
                    str(work / alias / "input.npy"),
                    alias,
                    str(threads),
                    str(warmup),
                ]
                workers.append(
                    ((kind, precision), Worker(key, cmd, work / alias / f"worker_{key}_{threads}t.log"))
                )
            log(
                f"{alias}, {threads} thread(s): loading {len(workers)} workers (torch.compile compiles now)..."
            )
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
                order = live[r % len(live) :] + live[: r % len(live)] if live else []
                for cell, w in order:
                    try:
                        samples[cell].append(w.run(runs))
                    except RuntimeError as exc:
                        failed[cell] = str(exc)
                    time.sleep(0.05)  # let the last runtime's spinning threads go to sleep
                log(
                    f"  round {r + 1}/{rounds}: "
                    + ", ".join(
                        f"{c[0]}-{c[1]} {statistics.median(samples[c][-1]):.2f}"
                        for c, _ in live
                        if samples[c]
                    )
                )
            for cell, w in live:
                w.close()
                if cell in failed:
                    continue
                per_round = [statistics.median(t) for t in samples[cell]]
                all_times = [t for batch in samples[cell] for t in batch]
                rows.append(
                    {
                        "model": alias,
                        "runtime": cell[0],
                        "precision": cell[1],
                        "threads": threads,
                        "sqnr_db_vs_eager": _sqnr_db(w.ready["output"], eager_out)
                        if eager_out and cell != ("eager", "fp32")
                        else None,
                        "median_ms": round(statistics.median(per_round), 4),
                        "round_medians_ms": [round(v, 4) for v in per_round],
                        "p10_ms": round(_quantile(all_times, 0.1), 4),
                        "p90_ms": round(_quantile(all_times, 0.9), 4),
                        "calls": len(all_times),
                        "load_ms": w.ready["load_ms"],
                        "first_ms": w.ready["first_ms"],
                    }
                )
            for cell, why in failed.items():
                rows.append(
                    {
                        "model": alias,
                        "runtime": cell[0],
                        "precision": cell[1],
                        "threads": threads,
                        "error": why,
                    }
                )
    return rows


def _sqnr_db(test: list[float], reference: list[float]) -> float:
    """SQNR of one output against the eager one for the same input (the library's one SQNR):
    every runtime must compute the same network (fp32: > 50 dB; int8: 15-35 dB)."""
    from mobile_export.verify.metrics import sqnr_db

    return round(sqnr_db([reference], [test]), 1)


def _quantile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]
