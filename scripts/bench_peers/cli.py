"""Entry point: `run` (the default: the whole benchmark) and the child programs it starts
(`worker`, `litert-convert`, `profile-ort`), as argparse subcommands."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from . import __doc__ as DOC
from .adapters import litert, onnxruntime
from .common import CELLS, LITERT_PACKAGES, LITERT_VENV, REPO, log
from .prepare import prepare_model
from .profiles import run_profile
from .report import _loadavg, goal_results, host_description, write_chart, write_markdown
from .workers import measure, worker_main

SUBCOMMANDS = ("run", "worker", "litert-convert", "profile-ort")


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="bench_peers.py [run]",
        description=DOC.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=DOC,
    )
    parser.add_argument("--models", default="v2,v3-small")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds (default 6)")
    parser.add_argument("--runs", type=int, default=50, help="timed calls per worker per round (default 50)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed calls after loading (default 20)")
    parser.add_argument(
        "--skip",
        default="",
        help="comma list of runtimes to leave out: executorch,eager,compile,onnxruntime,litert",
    )
    parser.add_argument("--workdir", type=Path, default=REPO / "build" / "bench_peers")
    parser.add_argument(
        "--reuse", action="store_true", help="reuse artifacts already in --workdir (debugging)"
    )
    parser.add_argument("--litert-venv", type=Path, default=LITERT_VENV)
    parser.add_argument(
        "--install-litert", action="store_true", help="create --litert-venv if missing (~2 GB)"
    )
    parser.add_argument(
        "--profile",
        choices=["auto", "always", "never"],
        default="always",
        help="per-operator profiles of the goal cells (V2 fp32/int8, 1 thread): "
        "auto = only where a goal is missed (default: always)",
    )
    parser.add_argument("--profile-runs", type=int, default=100)
    parser.add_argument("--docs", type=Path, default=REPO / "docs")
    args = parser.parse_args(argv)

    aliases = [a for a in args.models.split(",") if a]
    threads_list = [int(t) for t in args.threads.split(",")]
    runtimes = {r for r, _, _ in CELLS} - set(filter(None, args.skip.split(",")))
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    load_start = _loadavg()

    import warnings

    warnings.filterwarnings("ignore")
    litert_python = litert.ensure(args.litert_venv, args.install_litert) if "litert" in runtimes else None
    if "litert" in runtimes and litert_python is None:
        log(f"LiteRT skipped: no working venv at {args.litert_venv} (pass --install-litert to create it)")
    infos = {a: prepare_model(a, work, runtimes, litert_python, args.reuse) for a in aliases}
    for i in infos.values():
        if "litert" in runtimes and litert_python is None:
            i["errors"]["litert"] = (
                f"no working LiteRT venv at {args.litert_venv} (pip install {' '.join(LITERT_PACKAGES)} failed or was not run)"
            )
    rows = measure(infos, threads_list, runtimes, args.rounds, args.runs, args.warmup, litert_python, work)
    results = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "host": host_description(),
        "threads": threads_list,
        "rounds": args.rounds,
        "runs": args.runs,
        "warmup": args.warmup,
        "models": infos,
        "rows": rows,
        "goals": goal_results(rows, threads_list),
        "litert_versions": litert.versions(litert_python) if litert_python else None,
        "load_average": {"start": load_start, "end": _loadavg()},
    }
    missed = [g for g in results["goals"] if not g["met"]]
    profiles = {}
    if args.profile == "always" or (args.profile == "auto" and missed):
        wanted = {
            (g["model"], g["precision"]) for g in (results["goals"] if args.profile == "always" else missed)
        }
        for model, precision in sorted(wanted):
            t = 1
            pte = infos[model]["artifacts"].get(f"executorch-{precision}")
            onnx = infos[model]["artifacts"].get(f"onnxruntime-{precision}")
            if pte:
                log(f"profiling {Path(pte).name} with ETDump ({t} thread)...")
                profiles[f"ExecuTorch {model} {precision}, {t} thread"] = run_profile(
                    "pte", pte, work / model / "input.npy", t, args.profile_runs
                )
            if onnx:
                log(f"profiling {Path(onnx).name} with ONNX Runtime's profiler ({t} thread)...")
                profiles[f"ONNX Runtime {model} {precision}, {t} thread"] = run_profile(
                    "ort", onnx, work / model / "input.npy", t, args.profile_runs
                )
    results["profiles"] = profiles
    results["profile_runs"] = args.profile_runs
    results["seconds"] = round(time.perf_counter() - t_start, 1)
    from mobile_export.fsutil import write_text_atomic

    write_text_atomic(work / "results.json", json.dumps(results, indent=2, default=str))
    args.docs.mkdir(parents=True, exist_ok=True)
    write_markdown(args.docs / "benchmarks.md", results)
    write_chart(args.docs / "benchmarks.png", results)
    log(
        f"wrote {args.docs / 'benchmarks.md'}, {args.docs / 'benchmarks.png'}, {work / 'results.json'} "
        f"in {results['seconds']:.0f}s"
    )
    for g in results["goals"]:
        log(
            f"goal {g['model']} {g['precision']} {g['threads']}t: {g['speedup']:.2f}x (need {g['need']}) "
            f"{'met' if g['met'] else 'MISSED'}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS:
        argv = ["run", *argv]  # `bench_peers.py --rounds 2` = `bench_peers.py run --rounds 2`
    command, rest = argv[0], argv[1:]
    if command == "run":
        return run(rest)
    parser = argparse.ArgumentParser(prog=f"bench_peers.py {command}")
    if command == "worker":
        for name in ("kind", "precision", "artifact", "input_npy", "alias"):
            parser.add_argument(name)
        parser.add_argument("threads", type=int)
        parser.add_argument("warmup", type=int)
        a = parser.parse_args(rest)
        return worker_main(a.kind, a.precision, a.artifact, a.input_npy, a.alias, a.threads, a.warmup)
    if command == "litert-convert":
        for name in ("alias", "out", "digest"):
            parser.add_argument(name)
        a = parser.parse_args(rest)
        return litert.convert_child(a.alias, Path(a.out), a.digest)
    for name in ("artifact", "input_npy"):
        parser.add_argument(name)
    parser.add_argument("threads", type=int)
    parser.add_argument("runs", type=int)
    a = parser.parse_args(rest)
    return onnxruntime.profile_child(a.artifact, a.input_npy, a.threads, a.runs)
