"""docs/arm.md's table: the MobileNet family x emulated phone CPUs x {fp32, int8}, through the
library (export, verify with cpus, instructions_per_inference).

    PYTHONPATH=. python3 scripts/arm_table.py [--models v1-050,v2] [--cpus cortex-a55,...] [--res 96]

Weights: the well-conditioned synthetic weights of tests/et_helpers.py (near-identity convs plus
noise, BatchNorm statistics from real photos), so outputs depend on the input; int8 is
calibrated on the bundled photos; parity is measured on the 11 bundled photos. Results are
kept in docs/arm_table.json after every cell (a rerun skips what is there) and the table is
rewritten between the markers in docs/arm.md. Needs `mobile-export setup-arm`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
RESULTS = ROOT / "docs" / "arm_table.json"
DOC = ROOT / "docs" / "arm.md"
START, END = "<!-- arm-table:start -->", "<!-- arm-table:end -->"
MODELS = ("v1-050", "v2", "v3-small", "v4-conv-small", "v3-large")
CPUS = ("cortex-a55", "cortex-a76", "cortex-a710")


def measure(model: str, res: int, precision: str, cpus: list, work: Path, photos: Path) -> dict:
    import numpy as np
    from et_helpers import write_weights

    from mobile_export.executorch.arm import find_kit
    from mobile_export.executorch.arm.emulate import instructions_per_inference
    from mobile_export.models import get_spec
    from mobile_export.pipeline import ExportRequest, run_export
    from mobile_export.targets import ExportOptions
    from mobile_export.verify import verify_artifact

    name = get_spec(model).name
    weights = write_weights(name, res, work)
    out = work / f"{name}_{res}_{precision}"
    quantize = "int8" if precision == "int8" else "none"
    manifest = run_export(
        ExportRequest(
            model=name,
            target="executorch",
            out=out,
            weights=str(weights),
            resolution=res,
            force=True,
            verify=False,
            options=ExportOptions(quantize=quantize, calibration=photos if quantize == "int8" else None),
        )
    )
    pte = out / next(a["file"] for a in manifest["artifacts"] if a["format"] == "pte")
    t0 = time.perf_counter()
    report = verify_artifact(pte, cpus=cpus, log=lambda m: print(m, file=sys.stderr))
    verify_s = time.perf_counter() - t0
    kit = find_kit()
    image = np.random.default_rng(0).random((1, 3, res, res), dtype=np.float32)
    counts = {cpu.name: instructions_per_inference(kit, pte, image, cpu) for cpu in cpus}
    return {
        "model": name,
        "alias": model,
        "resolution": res,
        "precision": precision,
        "passed": report["passed"],
        "failures": report["failures"],
        "x86_vs_float_db": report["vs_float"]["sqnr_db"],
        "vs_quantized_db": (report.get("vs_quantized") or {}).get("sqnr_db"),
        "arm": {row["cpu"]: row for row in report["arm"]["rows"]},
        "counts": counts,
        "verify_seconds": round(verify_s, 1),
        "kit": report["arm"]["kit"],
    }


def _db(v) -> str:
    return "bit-exact" if v is None else ("≥300 dB" if v >= 300 else f"{v:.1f} dB")


def _verdict(row: dict, report_failures: list[str]) -> str:
    """pass / FAIL; a FAIL whose every reason the x86 run has too is the file's, not ARM's."""
    if row["passed"]:
        return "pass"
    x86 = {f for f in report_failures if ": " not in f.split(" ")[0]}
    own = [f.split(": ", 1)[1] for f in row["failures"]]
    return "FAIL, as on x86" if own and all(f in x86 for f in own) else "FAIL"


def render(results: dict) -> str:
    rows = [
        "| model | px | precision | CPU (kernels) | vs PyTorch | vs x86 runtime | instructions / inference "
        "(repeat diff) | kernel instructions | verify |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key in sorted(
        results, key=lambda k: (MODELS.index(results[k]["alias"]) if results[k]["alias"] in MODELS else 99, k)
    ):
        r = results[key]
        for cpu, row in r["arm"].items():
            count = r["counts"].get(cpu, {})
            if "error" in row:
                rows.append(
                    f"| {r['model']} | {r['resolution']} | {r['precision']} | {cpu} | ERROR {row['error']} | | | | FAIL |"
                )
                continue
            vs_float = row["vs_float"]["sqnr_db"]
            vs_pt = (
                f"{_db(vs_float)}; int8 PT {_db(row['vs_quantized']['sqnr_db'])}"
                if row.get("vs_quantized")
                else _db(vs_float)
            )
            vs_x86 = "bit-exact" if row["bit_exact_vs_x86"] else _db(row["vs_x86"]["sqnr_db"])
            kernels = ", ".join(
                f"{m} {n / 1e6:.2f} M" for m, n in count.get("kernel_instructions", {}).items() if n
            )
            rows.append(
                f"| {r['model']} | {r['resolution']} | {r['precision']} | {cpu} ({row['kernels']}) | {vs_pt} | "
                f"{vs_x86} | {count.get('instructions', 0) / 1e6:.2f} M ({count.get('relative_difference', 0) * 1e6:.0f} ppm) | "
                f"{kernels or '-'} | {_verdict(row, r['failures'])} |"
            )
    ratio_rows = [
        "| model | px | " + " | ".join(f"int8/fp32 {c}" for c in CPUS) + " |",
        "|---|---|" + "---|" * len(CPUS),
    ]
    models = sorted(
        {(r["model"], r["resolution"], r["alias"]) for r in results.values()},
        key=lambda m: MODELS.index(m[2]) if m[2] in MODELS else 99,
    )
    for model, res, alias in models:
        cells = []
        for cpu in CPUS:
            fp32 = results.get(f"{alias}@{res}/fp32", {}).get("counts", {}).get(cpu, {}).get("instructions")
            int8 = results.get(f"{alias}@{res}/int8", {}).get("counts", {}).get(cpu, {}).get("instructions")
            cells.append(f"{int8 / fp32:.2f}" if fp32 and int8 else "-")
        ratio_rows.append(f"| {model} | {res} | " + " | ".join(cells) + " |")
    return (
        "\n".join(rows)
        + "\n\nint8 instructions as a fraction of fp32 ones (lower = int8 gains more):\n\n"
        + "\n".join(ratio_rows)
    )


def write_doc(results: dict) -> None:
    text = DOC.read_text() if DOC.exists() else f"# ARM\n\n{START}\n{END}\n"
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    DOC.write_text(f"{head}{START}\n{render(results)}\n{END}{tail}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--cpus", default=",".join(CPUS))
    ap.add_argument("--res", type=int, default=96)
    ap.add_argument("--precisions", default="int8,fp32")
    ap.add_argument("--work", type=Path, default=Path("/tmp/arm_table"))
    ap.add_argument("--render-only", action="store_true")
    ap.add_argument(
        "--results",
        type=Path,
        default=RESULTS,
        help="JSON of measured cells (another one for a parallel run)",
    )
    ap.add_argument(
        "--merge", type=Path, action="append", default=[], help="add the cells of these JSON files first"
    )
    args = ap.parse_args()

    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    for extra in args.merge:
        results.update({k: v for k, v in json.loads(extra.read_text()).items() if k not in results})
    if not args.render_only:
        from et_helpers import photo_folder

        from mobile_export.executorch.arm import parse_cpus

        cpus = parse_cpus(args.cpus)
        args.work.mkdir(parents=True, exist_ok=True)
        photos = args.work / "photos"
        if not photos.exists():
            photo_folder(photos, unreadable=0)
        for model in args.models.split(","):
            for precision in args.precisions.split(","):
                key = f"{model}@{args.res}/{precision}"
                if key in results:
                    continue
                t0 = time.perf_counter()
                results[key] = measure(model, args.res, precision, cpus, args.work, photos)
                results[key]["seconds"] = round(time.perf_counter() - t0, 1)
                args.results.write_text(json.dumps(results, indent=1, default=str) + "\n")
                if args.results == RESULTS:
                    write_doc(results)
                print(f"{key}: {results[key]['seconds']} s", file=sys.stderr)
    if args.results == RESULTS:
        args.results.write_text(json.dumps(results, indent=1, default=str) + "\n")
        write_doc(results)


if __name__ == "__main__":
    main()
