"""ExecuTorch .pte: made by our pipeline, loaded and timed with the library's runtime
(mobile_export.executorch.runtime: the same loading code verify and bench use), profiled
through the runtime's child process with ETDump."""

from __future__ import annotations

import time
from pathlib import Path

from ..common import RESOLUTION, SEED, log


def export(alias: str, out: Path, precision: str, reuse: bool) -> Path:
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
    request = ExportRequest(
        model=alias,
        target="executorch",
        out=folder,
        weights="random",
        seed=SEED,
        resolution=RESOLUTION,
        force=True,
        verify=False,
        options=options,
    )
    manifest = run_export(request, log=lambda m: log(f"  {m}"))
    path = folder / manifest["artifacts"][0]["file"]
    log(f"{alias}: exported {path.name} in {time.perf_counter() - t0:.0f}s")
    return path


def make_call(precision: str, artifact: str, alias: str, threads: int, x_np, keep_alive: list):
    """Worker side: the program loaded once with `threads` XNNPACK threads; returns (call, load ms)."""
    import torch

    from mobile_export.executorch.runtime import load_forward

    data = Path(artifact).read_bytes()
    program, method, load_ms = load_forward(data, threads)
    x = torch.from_numpy(x_np.copy())
    keep_alive.extend([data, program, method])  # the method points into both
    return (lambda: method.execute((x,))[0]), load_ms


def profile(path: str, input_npy: Path, threads: int, runs: int) -> list[dict]:
    """Per-operator times from ETDump: XNNPACK emits one profiling event per operator it runs;
    the runtime's child process runs the program `runs` times, the Inspector reads the dump."""
    import tempfile

    import numpy as np
    from executorch.devtools import Inspector

    from mobile_export.executorch.runtime import run_isolated

    with tempfile.TemporaryDirectory() as tmp:
        run_isolated(
            path, [np.load(input_npy)], threads=threads, profile_runs=runs, etdump_dir=tmp, timeout=1800
        )
        inspector = Inspector(etdump_path=str(Path(tmp) / "etdump_profile.etdp"))
    ops = []
    for block in inspector.event_blocks:
        if block.name != "Execute":
            continue
        for event in block.events:
            if event.perf_data is None or not event.is_delegated_op:
                continue
            ops.append(
                {
                    "name": event.name,
                    "median_ms": float(event.perf_data.p50),
                    "avg_ms": float(event.perf_data.avg),
                }
            )
    return ops
