"""One cell: export one model to one format through the CLI in a child process, read the
manifest it wrote (delegation, parity, size), and time the file against the fp32 .pte of the
same model in the same worker. Every outcome is a row: lowered or the one-line reason, parity
passed or the failed limits, crashed (signal) or timed out."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .formats import BASELINE, FORMATS

CELL_TIMEOUT_S = 3 * 3600
BENCH_ROUNDS = 3  # cell and baseline alternate this many times; medians of the medians


@dataclass(frozen=True)
class CellSpec:
    model: str  # canonical model name
    format: str  # a key of FORMATS
    resolution: int
    weights: str = "random"  # "random" (BN-woken synthetic), "example", or a checkpoint file
    weights_sha256: str | None = None  # a checkpoint file's digest: a changed file is a new cell
    seed: int = 0
    images: str | None = None
    calibration: str | None = None

    def cache_key(self, versions: dict, code: str) -> str:
        """Changes when anything that could change the result changes: the cell's options,
        the format's flags, the library versions and our own code."""
        doc = {"cell": asdict(self), "flags": FORMATS[self.format].flags, "versions": versions, "code": code}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:20]


def cli_args(spec: CellSpec, out: Path) -> list[str]:
    fmt = FORMATS[spec.format]
    args = [
        spec.model,
        "--target",
        fmt.target,
        *fmt.flags,
        "--weights",
        spec.weights,
        "--seed",
        str(spec.seed),
        "--resolution",
        str(spec.resolution),
        "--out",
        str(out),
        "--force",
        "--json",
    ]
    if spec.images:
        args += ["--images", spec.images]
    if spec.calibration and ("--quantize" in fmt.flags or "w8a8" in fmt.flags):
        args += ["--calibration", spec.calibration]
    return args


def cell_command(spec: CellSpec, out: Path) -> list[str]:
    """The process a cell runs: the public CLI, so a cell is what a user would type."""
    return [sys.executable, "-m", "mobile_export.cli", *cli_args(spec, out)]


def run_child(cmd: list[str], timeout: float, stdout: Path, stderr: Path) -> tuple[int | None, float, float]:
    """(returncode or None on timeout, wall seconds, peak RSS in MB of the process tree's
    largest process as the kernel accounts it in wait4)."""
    t0 = time.perf_counter()
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = t0 + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                return proc.returncode, time.perf_counter() - t0, usage.ru_maxrss / 1024
            if time.perf_counter() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                _, status, usage = os.wait4(proc.pid, 0)
                proc.returncode = -signal.SIGKILL
                return None, time.perf_counter() - t0, usage.ru_maxrss / 1024
            time.sleep(0.1)


def _last_line(path: Path) -> str:
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    line = lines[-1] if lines else "no output"
    return line.removeprefix("Error: ")[:300]


def run_cell(
    spec: CellSpec,
    work: Path,
    baseline: Path | None,
    key: str,
    timeout: float = CELL_TIMEOUT_S,
    bench_runs: int = 20,
    keep_artifact: bool = False,
) -> dict:
    """Export, verify and time one cell; never raises for what the backends do."""
    out = work / spec.model / spec.format
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    code, wall, peak_mb = run_child(cell_command(spec, out), timeout, out / "stdout.json", out / "stderr.txt")
    row: dict = {
        **asdict(spec),
        "key": key,
        "command": "mobile-export " + " ".join(cli_args(spec, Path("OUT"))),
        "wall_seconds": round(wall, 1),
        "peak_rss_mb": round(peak_mb, 1),
        "exit_code": code,
    }
    if code is None:
        return {**row, "status": "timed out", "lowered": False, "reason": f"no result within {timeout:.0f} s"}
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals.__members__.values() else str(-code)
        return {**row, "status": "crashed", "lowered": False, "reason": f"the export process died ({name})"}
    entry = _entry(out, FORMATS[spec.format].target)
    if entry is None:
        return {**row, "status": "not lowered", "lowered": False, "reason": _last_line(out / "stderr.txt")}
    parity = entry.get("parity") or {}
    delegation = entry.get("delegation") or {}
    vs_float = parity.get("vs_float") or {}
    row.update(
        status="passed" if parity.get("passed") else "parity failed",
        lowered=True,
        artifact=entry["file"],
        bytes=entry["bytes"],
        delegated_ops=delegation.get("delegated_ops"),
        outside_ops=sum((delegation.get("outside") or {}).values()) if delegation else None,
        parity={
            k: vs_float.get(k) for k in ("sqnr_db", "cosine", "top1_agreement", "top5_overlap", "images")
        },
        passed=bool(parity.get("passed")),
        failures=parity.get("failures", []),
        threshold=(parity.get("thresholds") or {}).get("key"),
        export_seconds=(entry.get("export") or {}).get("seconds"),
    )
    artifact = out / entry["file"]
    if FORMATS[spec.format].runs_on_host:
        row.update(_latency(artifact, entry, baseline if spec.format != BASELINE else None, bench_runs))
    if spec.format == BASELINE:
        row["baseline_file"] = str(artifact)  # the next cells of this model time against it
    elif not keep_artifact:
        artifact.unlink() if artifact.is_file() else shutil.rmtree(artifact, ignore_errors=True)
    return row


def _entry(out: Path, target: str) -> dict | None:
    path = out / "manifest.json"
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    entries = [
        a for a in manifest.get("artifacts", []) if a.get("target") == target and a.get("format") != "bpte"
    ]
    return entries[0] if entries else None


def _latency(artifact: Path, entry: dict, baseline: Path | None, runs: int) -> dict:
    """Median latency (1 thread) of the file, and of the fp32 .pte in the same worker,
    alternating so that a drift of the machine's speed hits both alike."""
    from ..errors import MobileExportError
    from ..targets import get_target

    target = get_target("executorch")

    def median_ms(path: Path) -> float:
        times = target.benchmark(path, entry, 1, runs, 3, lambda _m: None)["times_ms"]
        return statistics.median(times)

    mine, theirs = [], []
    try:
        for _ in range(BENCH_ROUNDS):
            mine.append(median_ms(artifact))
            if baseline is not None:
                theirs.append(median_ms(baseline))
    except MobileExportError as exc:
        return {"latency_error": str(exc)}
    median = statistics.median(mine)
    result = {"latency_ms": round(median, 4)}
    if baseline is None:
        result["latency_ratio"] = 1.0
    elif theirs:
        result["baseline_ms"] = round(statistics.median(theirs), 4)
        result["latency_ratio"] = round(median / statistics.median(theirs), 4)
    return result
