"""Measure what verify's threshold rows must separate: for each supported mode, the metrics of
the correct file and of each injected bug (tests/mutation_helpers.py), on the trained colour
fixtures (V2 1.0 and V3-Small on the photo task, 64 px), verified on held-out photo crops.

Usage: PYTHONPATH=$PWD python scripts/threshold_measurements.py [--models v2 v3s] [--modes ...]
           [--images 48] [--out runs/thresholds.jsonl]
Prints one line per (model, mode, variant) and appends it as JSON to --out; docs/thresholds.md
holds the output that set the rows in mobile_export/verify/thresholds.py."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))


def row(model: str, mode: str, variant: str, report: dict) -> dict:
    vf = report["vs_float"]
    vq = report.get("vs_quantized") or {}
    vw = report.get("vs_stored_weights") or {}
    return {
        "model": model,
        "mode": mode,
        "variant": variant,
        "images": report["images"]["count"],
        "sqnr_db": round(vf["sqnr_db"], 2),
        "cosine": None if vf["cosine"] is None else round(vf["cosine"], 6),
        "top1": round(vf.get("top1_agreement", float("nan")), 4),
        "top5": round(vf.get("top5_overlap", float("nan")), 4),
        "ties": vf.get("top1_ties"),
        "flips_on_ties": vf.get("top1_flips_on_ties"),
        "sqnr_vs_q": round(vq["sqnr_db"], 2) if vq else None,
        "steps_p999": report.get("steps_vs_quantized"),
        "steps_max": report.get("max_steps_vs_quantized"),
        "sqnr_vs_w": round(vw["sqnr_db"], 2) if vw else None,
        "weights_min": vw["weights_vs_float"]["min_sqnr_db"] if vw else None,
        "layers_missing": len(vw["weights_vs_float"]["model_only"]) if vw else None,
        "indep_db": (report.get("input_dependence") or {}).get("sqnr_db_vs_own_mean"),
        "key": report["thresholds"]["key"],
        "passed": report["passed"],
        "failures": report["failures"],
        "seconds": report.get("seconds"),
    }


def fmt(r: dict) -> str:
    q = (
        f" vsQ {r['sqnr_vs_q']:6.2f} dB p99.9 {r['steps_p999']} max {r['steps_max']} steps"
        if r["sqnr_vs_q"] is not None
        else ""
    )
    if r.get("sqnr_vs_w") is not None:
        q += f" vsW {r['sqnr_vs_w']:6.2f} dB weights min {r['weights_min']} dB missing {r['layers_missing']}"
    return (
        f"{r['model']:4s} {r['mode']:18s} {r['variant']:20s} SQNR {r['sqnr_db']:7.2f} dB cos {r['cosine']} "
        f"top1 {r['top1']:.3f} top5 {r['top5']:.3f} ties {r['ties']}{q} indep {r['indep_db']} dB "
        f"{'PASS' if r['passed'] else 'FAIL'}"
    )


def verdict(r: dict) -> str:
    """pass/FAIL under the rows as they are now (the run may have used earlier ones)."""
    from mobile_export.verify import thresholds

    values = {
        "sqnr_db": r["sqnr_db"],
        "top1_agreement": r["top1"],
        "top5_overlap": r["top5"],
        "sqnr_db_vs_quantized": r.get("sqnr_vs_q"),
        "steps_vs_quantized": r.get("steps_p999"),
        "input_independence_db": r.get("indep_db"),
        "sqnr_db_vs_stored_weights": r.get("sqnr_vs_w"),
        "min_weight_sqnr_db": r.get("weights_min"),
        "layers_missing": r.get("layers_missing"),
    }
    limits = thresholds.THRESHOLDS[r["key"]]
    return (
        "FAIL"
        if thresholds.check({k: v for k, v in values.items() if v is not None}, limits, r["key"])
        else "pass"
    )


def markdown(rows: list[dict]) -> str:
    head = (
        "| model | mode | file | images | SQNR dB | top-1 | top-5 | ties | vs int8 PT dB | p99.9 / max steps "
        "| vs own weights dB | weakest layer's weights dB | layers missing | indep. dB | row | verify (rows now) |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        steps = f"{r['steps_p999']} / {r['steps_max']}" if r.get("steps_p999") is not None else ""
        vq = "" if r.get("sqnr_vs_q") is None else r["sqnr_vs_q"]
        vw = "" if r.get("sqnr_vs_w") is None else r["sqnr_vs_w"]
        wmin = "" if r.get("weights_min") is None else r["weights_min"]
        missing = "" if r.get("layers_missing") is None else r["layers_missing"]
        lines.append(
            f"| {r['model']} | {r['mode']} | {r['variant']} | {r['images']} | {r['sqnr_db']} | {r['top1']} "
            f"| {r['top5']} | {r['ties']} | {vq} | {steps} | {vw} | {wmin} | {missing} | {r['indep_db']} | {r['key']} "
            f"| {verdict(r)} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    import mutation_helpers as mh
    import train_small

    from mobile_export.verify import verify_artifact

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(mh.CHECKPOINTS), choices=list(mh.CHECKPOINTS))
    ap.add_argument("--modes", nargs="+", default=list(mh.MODES), choices=list(mh.MODES))
    ap.add_argument("--mutations", nargs="+", default=list(mh.MUTATIONS), choices=list(mh.MUTATIONS))
    ap.add_argument("--images", type=int, default=48, help="held-out photo crops to verify on")
    ap.add_argument("--calibration", type=int, default=32, help="training crops to calibrate int8 / w8a8 on")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None, help="append one JSON line per measurement")
    ap.add_argument(
        "--markdown", type=Path, default=None, help="only print the table of an earlier --out file"
    )
    args = ap.parse_args(argv)
    if args.markdown:
        print(markdown([json.loads(line) for line in args.markdown.read_text().splitlines() if line.strip()]))
        return 0

    work = args.work or Path(tempfile.mkdtemp(prefix="thresholds-"))
    calib, held = mh.photo_folders(work, args.calibration, args.images)
    for model in args.models:
        _, _, pre = train_small.load_checkpoint(mh.TRAINED / mh.CHECKPOINTS[model])
        for mode_name in args.modes:
            mode = mh.MODES[mode_name]
            t0 = time.perf_counter()
            correct = mh.export_correct(
                model, mode, work / model / mode_name / "correct", calib, args.calibration
            )
            _report(model, mode_name, "correct", correct, held, args.out, verify_artifact)
            for mutation in args.mutations:
                mutant = mh.make_mutant(
                    correct, mode, mutation, work / model, model, calib, args.calibration, pre.mean, pre.std
                )
                _report(model, mode_name, mutation, mutant, held, args.out, verify_artifact)
            print(f"# {model} {mode_name}: {time.perf_counter() - t0:.0f}s", flush=True)
    return 0


def _report(model, mode_name, variant, path, held, out, verify_artifact):
    report = verify_artifact(path, images=held)
    r = row(model, mode_name, variant, report)
    print(fmt(r), flush=True)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "a") as fh:
            fh.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
