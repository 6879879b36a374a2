"""Images per second of `mobile-export eval`: in-process vs Ray with 1 and 2 workers, and what
one Ray task costs on its own.

    PYTHONPATH=$PWD python scripts/bench_eval.py --prepare /tmp/bench_eval           # digits fixture
    PYTHONPATH=$PWD python scripts/bench_eval.py ART... --dataset DIR [--every K] [--address HOST:PORT]

--prepare exports the trained digit fixture (tests/fixtures/trained) as fp32 .pte and fp16
.mlpackage and writes its 539 held-out scans as class folders, then benchmarks those.
Without --address a local Ray instance with 2 CPUs is started (ray.init). Every run uses a
fresh cache, so every image is evaluated. Prints one JSON document (docs/eval.md has numbers)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def prepare(work: Path) -> tuple[list[Path], Path]:
    sys.path.insert(0, str(ROOT / "tests"))
    import eval_helpers as h

    arts = h.export_artifacts(h.DIGITS, work, targets=("fp32", "fp16"))
    classes, x, y, _ = h.held_out(h.DIGITS)
    folder = work / "folder"
    if not folder.exists():
        h.write_imagefolder(folder, classes, x, y)
    return [arts["fp32"], arts["fp16"]], folder


def timed(artifacts, dataset, every, batch, executor=None) -> dict:
    from mobile_export.eval import EvalOptions, run_eval

    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        outcome = run_eval(
            artifacts,
            EvalOptions(dataset=dataset, every=every, batch=batch, cache_dir=Path(cache)),
            executor=executor,
        )
        seconds = time.perf_counter() - t0
    n = len(outcome.dataset.items)
    return {
        "images": n,
        "batch": batch,
        "seconds": round(seconds, 2),
        "images_per_s": round(n / seconds, 2),
        "executor": outcome.executor,
    }


def task_overhead(calls: int = 200) -> dict:
    """Round trip of an empty actor call and of a 64 kB argument, after warm-up."""
    import ray

    @ray.remote(num_cpus=1)
    class Echo:
        def ping(self, x=None):
            return 0

    actor = Echo.remote()
    ray.get(actor.ping.remote())
    t0 = time.perf_counter()
    ray.get([actor.ping.remote() for _ in range(calls)])
    empty = (time.perf_counter() - t0) / calls
    payload = b"x" * 65536
    t0 = time.perf_counter()
    for _ in range(calls // 4):
        ray.get(actor.ping.remote(payload))
    sequential = (time.perf_counter() - t0) / (calls // 4)
    ray.kill(actor)
    return {
        "empty_call_ms_pipelined": round(1000 * empty, 2),
        "64kB_call_ms_sequential": round(1000 * sequential, 2),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifacts", nargs="*", type=Path)
    ap.add_argument("--dataset", type=Path)
    ap.add_argument("--prepare", type=Path, help="work folder for the digits fixture")
    ap.add_argument("--every", type=int, default=1)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--address", default=None)
    args = ap.parse_args(argv)
    if args.prepare:
        artifacts, dataset = prepare(args.prepare)
    else:
        artifacts, dataset = args.artifacts, args.dataset
    import os

    import ray

    from mobile_export.cluster import RayExecutor

    results = {
        "artifacts": [a.name for a in artifacts],
        "load_average_at_start": os.getloadavg()[0],
        "in_process": timed(artifacts, dataset, args.every, args.batch),
    }
    print(json.dumps(results["in_process"]), file=sys.stderr)
    if args.address:
        ray.init(address=args.address, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        results["task_overhead"] = task_overhead()
        print(json.dumps(results["task_overhead"]), file=sys.stderr)
        small = max(1, args.batch // 4)  # 4x the units: the difference is what the per-unit cost adds
        for workers, batch in ((1, args.batch), (2, args.batch), (2, small)):
            key = f"ray_{workers}_workers_batch_{batch}"
            results[key] = timed(
                artifacts, dataset, args.every, batch, RayExecutor(args.address, workers=workers)
            )
            print(key, json.dumps(results[key]), file=sys.stderr)
    finally:
        ray.shutdown()
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
