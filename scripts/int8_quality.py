"""The int8 quality bar, measured: trained MobileNets (scripts/train_small.py), quantized
with the project's own int8 path (ExecuTorchTarget.export: PT2E + XNNPACK, calibrated from
a folder of real images), run as .pte in the ExecuTorch runtime, compared with the fp32
PyTorch model on held-out images.

Bar (issue 3): int8 loses at most 0.3 points of top-1 and agrees with fp32 on >= 99% of
held-out images.

Usage:
  python scripts/int8_quality.py runs/*.safetensors --recipes plain,fp32-classifier \
      --seeds 0,1,2 --out docs/int8_quality.md
Calibration images come from the TRAINING split (written as PNG files, read back through the
exporter's --calibration path); held-out images are never used for calibration.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_small  # noqa: E402  (sibling script: datasets and checkpoints)

from mobile_export.verify.metrics import sqnr_db  # noqa: E402  (one SQNR for the library and the scripts)

MAX_DROP_POINTS = 0.3
MIN_AGREEMENT_PCT = 99.0

# Recipes: QuantRecipe fields (mobile_export.quantize.pt2e), by name. "plain" is the
# XNNPACKQuantizer default (histogram activation observer, per-channel weights).
RECIPES: dict[str, dict] = {
    "minmax": {"observer": "minmax"},
    "plain": {"observer": "histogram"},
    "fp32-first-block": {"observer": "histogram", "fp32_modules": ["blocks.0"]},
    "fp32-classifier": {"observer": "histogram", "fp32_modules": ["classifier"]},
    "fp32-stem-classifier": {"observer": "histogram", "fp32_modules": ["conv_stem", "classifier"]},
    # Round 2: per-group sensitivity (one group kept in fp32) and combinations of the winners.
    "fp32-stem": {"observer": "histogram", "fp32_modules": ["conv_stem", "bn1"]},
    "fp32-stem-first-block": {"observer": "histogram", "fp32_modules": ["conv_stem", "bn1", "blocks.0"]},
    "fp32-head": {
        "observer": "histogram",
        "fp32_modules": ["conv_head", "norm_head", "act2", "bn2", "classifier"],
    },
    "fp32-se": {"observer": "histogram", "fp32_modules": ["*.se"]},
    "fp32-last-block": {"observer": "histogram", "fp32_modules": ["blocks.5", "blocks.6"]},
    "fp32-first-block-head": {
        "observer": "histogram",
        "fp32_modules": ["blocks.0", "conv_head", "norm_head", "act2", "bn2", "classifier"],
    },
    "fp32-first-block-se": {"observer": "histogram", "fp32_modules": ["blocks.0", "*.se"]},
    "bias-corr": {"observer": "histogram", "bias_correction": True},
    "fp32-se-bias-corr": {"observer": "histogram", "fp32_modules": ["*.se"], "bias_correction": True},
    "fp32-first-block-bias-corr": {
        "observer": "histogram",
        "fp32_modules": ["blocks.0"],
        "bias_correction": True,
    },
    "fp32-stem-first-block-se": {
        "observer": "histogram",
        "fp32_modules": ["conv_stem", "bn1", "blocks.0", "*.se"],
    },
    "fp32-stem-first-block-bias-corr": {
        "observer": "histogram",
        "fp32_modules": ["conv_stem", "bn1", "blocks.0"],
        "bias_correction": True,
    },
    # Round 6: learned weight rounding (AdaRound) alone, with bias correction, with the fp32 stem.
    "adaround": {"observer": "histogram", "rounding": "adaround"},
    "adaround-bias-corr": {"observer": "histogram", "rounding": "adaround", "bias_correction": True},
    "fp32-stem-first-block-adaround": {
        "observer": "histogram",
        "fp32_modules": ["conv_stem", "bn1", "blocks.0"],
        "rounding": "adaround",
    },
    # Round 7: the modules kept in float chosen by a sensitivity sweep (--keep-fp32 auto[:PERCENT]).
    "fp32-auto": {"observer": "histogram", "fp32_auto": 5.0},
    "fp32-auto-10": {"observer": "histogram", "fp32_auto": 10.0},
    "fp32-auto-adaround": {"observer": "histogram", "fp32_auto": 5.0, "rounding": "adaround"},
    # Round 9: activations quantized per image at run time (XNNPACK qd8), no calibration.
    "dynamic": {"activations": "dynamic"},
    "fp32-first-block-se-bias-corr": {
        "observer": "histogram",
        "fp32_modules": ["blocks.0", "*.se"],
        "bias_correction": True,
    },
}


@dataclass
class Measurement:
    checkpoint: str
    model: str
    dataset: str
    recipe: str
    seed: int
    calibration_images: int
    held_out: int
    fp32_top1: float
    int8_top1: float
    agreement: float
    sqnr_db: float
    pte_vs_quantized_pytorch_agreement: float | None
    pte_bytes: int
    seconds: float

    @property
    def drop(self) -> float:
        return self.fp32_top1 - self.int8_top1

    @property
    def passed(self) -> bool:
        return self.drop <= MAX_DROP_POINTS and self.agreement >= MIN_AGREEMENT_PCT


def rgb01(pixels: np.ndarray) -> np.ndarray:
    """uint8 N x H x W x 3 -> float32 N x 3 x H x W in [0, 1]: the .pte's input contract
    (normalization is baked into the graph by default)."""
    return np.ascontiguousarray(pixels.astype(np.float32).transpose(0, 3, 1, 2) / 255.0)


def write_calibration_folder(folder: Path, pixels: np.ndarray, count: int, seed: int) -> int:
    """`count` training images, drawn with `seed`, as PNG files: the exporter reads them
    back exactly (a res x res PNG through resize/crop at res is the identity)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    picks = rng.choice(len(pixels), size=min(count, len(pixels)), replace=False)
    folder.mkdir(parents=True, exist_ok=True)
    for i, idx in enumerate(sorted(picks)):
        Image.fromarray(pixels[idx]).save(folder / f"calib_{i:04d}.png")
    return len(picks)


def measure(
    checkpoint: Path,
    recipe_name: str,
    seed: int,
    calibration_images: int,
    work: Path,
    data_cache: dict,
    log=lambda m: None,
    quantized_pytorch: bool = False,
) -> Measurement:
    """One export + run. `quantized_pytorch`: stop before lowering and score the convert_pt2e
    model instead of the .pte (the same calibration path; minutes faster, for recipe sweeps)."""
    import torch

    from mobile_export.executorch.target import ExecuTorchTarget
    from mobile_export.targets.base import ExportOptions

    t0 = time.perf_counter()
    model, meta, pre = train_small.load_checkpoint(checkpoint)
    key = (meta["dataset"], meta["resolution"])
    if key not in data_cache:
        data_cache[key] = train_small.load_dataset(*key)
    data = data_cache[key]

    x_test = rgb01(data.test_x)
    reference = train_small.logits_of(model, train_small.to_inputs(data.test_x, pre))
    built = train_small.as_built(model, meta, pre, checkpoint.name)
    calib_dir = work / f"calib_{meta['dataset']}_{meta['resolution']}_{seed}_{calibration_images}"
    if not calib_dir.exists():
        write_calibration_folder(calib_dir, data.train_x, calibration_images, seed)
    options = ExportOptions(
        quantize="int8",
        calibration=calib_dir,
        calibration_limit=calibration_images,
        seed=seed,
        quant_recipe=RECIPES[recipe_name],
    )
    target = ExecuTorchTarget()
    dest = work / f"{checkpoint.stem}_{recipe_name}_{seed}.pte"
    if quantized_pytorch:
        return _score_quantized_pytorch(
            built,
            options,
            checkpoint,
            meta,
            recipe_name,
            seed,
            calibration_images,
            data,
            x_test,
            reference,
            t0,
            log,
        )
    fields = target.export(built, options, dest, log)
    q = fields.pop("quantized_model", None)  # the convert_pt2e model lowered into the .pte
    int8 = np.concatenate(target.run(dest, fields, [x[None] for x in x_test]))

    # The .pte should match the quantized PyTorch model it was lowered from (one output step).
    pte_vs_q = None
    if q is not None:
        with torch.no_grad():
            qout = np.concatenate([q.graph_module(torch.from_numpy(x[None])).numpy() for x in x_test])
        pte_vs_q = 100.0 * float((qout.argmax(1) == int8.argmax(1)).mean())

    y = data.test_y
    return Measurement(
        checkpoint=checkpoint.name,
        model=meta["model"],
        dataset=meta["dataset"],
        recipe=recipe_name,
        seed=seed,
        calibration_images=calibration_images,
        held_out=len(y),
        fp32_top1=100.0 * float((reference.argmax(1) == y).mean()),
        int8_top1=100.0 * float((int8.argmax(1) == y).mean()),
        agreement=100.0 * float((int8.argmax(1) == reference.argmax(1)).mean()),
        sqnr_db=sqnr_db(reference, int8),
        pte_vs_quantized_pytorch_agreement=pte_vs_q,
        pte_bytes=dest.stat().st_size,
        seconds=round(time.perf_counter() - t0, 1),
    )


def read_runs(paths: list[Path]) -> list[Measurement]:
    """Measurements printed by earlier runs (one JSON object a line); other lines are ignored.
    Long sweeps on a busy machine run as several processes; this joins them."""
    names = set(Measurement.__dataclass_fields__)
    rows = []
    for path in paths:
        text = path.read_text()
        if text.lstrip().startswith("{\n") or text.lstrip().startswith('{"summary"'):  # a --json file
            docs = json.loads(text)["runs"]
        else:
            docs = [
                json.loads(line) for line in text.splitlines() if line.startswith("{") and '"recipe"' in line
            ]
        rows += [Measurement(**{k: v for k, v in doc.items() if k in names}) for doc in docs]
    return rows


def _score_quantized_pytorch(
    built, options, checkpoint, meta, recipe_name, seed, calibration_images, data, x_test, reference, t0, log
) -> Measurement:
    import torch

    from mobile_export.executorch.lowering import with_normalization
    from mobile_export.quantize import load_calibration, quantize_pt2e

    model = with_normalization(built.module, built.preprocess.mean, built.preprocess.std)
    calibration = load_calibration(
        options.calibration, built.preprocess, limit=calibration_images, normalized=False, log=log
    )
    q = quantize_pt2e(
        model, torch.zeros(built.input_shape), calibration.inputs, options.executorch.recipe, log
    )
    with torch.no_grad():
        int8 = np.concatenate([q.graph_module(torch.from_numpy(x[None])).numpy() for x in x_test])
    y = data.test_y
    return Measurement(
        checkpoint=checkpoint.name,
        model=meta["model"],
        dataset=meta["dataset"],
        recipe=recipe_name + " (quantized PyTorch)",
        seed=seed,
        calibration_images=calibration_images,
        held_out=len(y),
        fp32_top1=100.0 * float((reference.argmax(1) == y).mean()),
        int8_top1=100.0 * float((int8.argmax(1) == y).mean()),
        agreement=100.0 * float((int8.argmax(1) == reference.argmax(1)).mean()),
        sqnr_db=sqnr_db(reference, int8),
        pte_vs_quantized_pytorch_agreement=None,
        pte_bytes=0,
        seconds=round(time.perf_counter() - t0, 1),
    )


def summarize(rows: list[Measurement]) -> list[dict]:
    """Median over seeds for each (checkpoint, recipe, calibration size)."""
    groups: dict[tuple, list[Measurement]] = {}
    seen = set()
    for r in rows:
        if (
            r.checkpoint,
            r.recipe,
            r.calibration_images,
            r.seed,
        ) in seen:  # a repeated run (same bytes) counts once
            continue
        seen.add((r.checkpoint, r.recipe, r.calibration_images, r.seed))
        groups.setdefault((r.checkpoint, r.recipe, r.calibration_images), []).append(r)
    out = []
    for (ckpt, recipe, n), ms in groups.items():

        def med(f, ms=ms):
            return statistics.median(f(m) for m in ms)

        drop, agree = med(lambda m: m.drop), med(lambda m: m.agreement)
        out.append(
            {
                "checkpoint": ckpt,
                "model": ms[0].model,
                "dataset": ms[0].dataset,
                "recipe": recipe,
                "calibration_images": n,
                "seeds": len(ms),
                "held_out": ms[0].held_out,
                "fp32_top1": ms[0].fp32_top1,
                "int8_top1": med(lambda m: m.int8_top1),
                "drop": drop,
                "agreement": agree,
                "agreement_min": min(m.agreement for m in ms),
                "sqnr_db": med(lambda m: m.sqnr_db),
                "passed": drop <= MAX_DROP_POINTS and agree >= MIN_AGREEMENT_PCT,
            }
        )
    return out


def markdown(summary: list[dict], rows: list[Measurement], command: str) -> str:
    lines = [
        "# int8 quality on trained models",
        "",
        f"Bar (issue 3): int8 `.pte` loses at most {MAX_DROP_POINTS} points of top-1 against fp32 and agrees with "
        f"fp32 on at least {MIN_AGREEMENT_PCT:.0f}% of held-out images.",
        "",
        "How: `scripts/train_small.py` trains this project's MobileNets on real images shipped in installed "
        "packages; `scripts/int8_quality.py` exports each with the project's int8 path "
        "(`ExecuTorchTarget.export`, PT2E + XNNPACKQuantizer, per-channel weights, calibration images read from "
        "a folder of training-split PNGs), runs the `.pte` in the ExecuTorch runtime (child process), and compares "
        "with the fp32 PyTorch model on the held-out split. Medians over calibration seeds (a seed draws a "
        "different calibration sample).",
        "",
        f"Command: `{command}`",
        "",
        "| model | dataset | held-out | recipe | calib imgs | seeds | fp32 top-1 | int8 top-1 | drop (pts) | agreement % (min) | logits SQNR dB | bar |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s in summary:
        lines.append(
            f"| {s['model']} | {s['dataset']} | {s['held_out']} | {s['recipe']} | {s['calibration_images']} | {s['seeds']} | "
            f"{s['fp32_top1']:.2f} | {s['int8_top1']:.2f} | {s['drop']:+.2f} | {s['agreement']:.2f} ({s['agreement_min']:.2f}) | "
            f"{s['sqnr_db']:.1f} | {'pass' if s['passed'] else 'FAIL'} |"
        )
    lines += ["", "Recipes:", ""]
    for name, fields in RECIPES.items():
        lines.append(f"- `{name}`: {json.dumps(fields)}")
    lines += [
        "",
        "<details><summary>Every run</summary>",
        "",
        "| checkpoint | recipe | seed | calib | fp32 | int8 | agreement | SQNR dB | .pte vs quantized PyTorch top-1 agreement | s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        pq = (
            "n/a"
            if r.pte_vs_quantized_pytorch_agreement is None
            else f"{r.pte_vs_quantized_pytorch_agreement:.2f}"
        )
        lines.append(
            f"| {r.checkpoint} | {r.recipe} | {r.seed} | {r.calibration_images} | {r.fp32_top1:.2f} | "
            f"{r.int8_top1:.2f} | {r.agreement:.2f} | {r.sqnr_db:.1f} | {pq} | {r.seconds} |"
        )
    lines += ["", "</details>", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="*", type=Path)
    ap.add_argument(
        "--report-from",
        nargs="*",
        type=Path,
        default=[],
        help="rebuild the report from the JSON lines of earlier runs (their stdout) instead of measuring",
    )
    ap.add_argument("--recipes", default="plain", help=f"comma-separated, from: {', '.join(RECIPES)}")
    ap.add_argument("--seeds", default="0", help="calibration sample seeds, comma-separated")
    ap.add_argument("--calibration-images", default="64", help="comma-separated sizes")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--quantized-pytorch",
        action="store_true",
        help="score the convert_pt2e model instead of lowering to .pte (fast recipe sweeps)",
    )
    ap.add_argument("--out", type=Path, default=None, help="write the Markdown report here")
    ap.add_argument("--json", type=Path, default=None, help="also write every measurement as JSON")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        raise SystemExit(f"unknown recipe(s) {unknown}; choose from {', '.join(RECIPES)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    sizes = [int(s) for s in args.calibration_images.split(",")]
    rows: list[Measurement] = read_runs(args.report_from)
    cache: dict = {}
    with tempfile.TemporaryDirectory(prefix="int8-quality-") as tmp:
        for ckpt in args.checkpoints:
            for recipe in recipes:
                for n in sizes:
                    for seed in seeds:
                        m = measure(
                            ckpt,
                            recipe,
                            seed,
                            n,
                            Path(tmp),
                            cache,
                            log=lambda msg: print(f"  {msg}", file=sys.stderr, flush=True),
                            quantized_pytorch=args.quantized_pytorch,
                        )
                        rows.append(m)
                        print(
                            json.dumps({**m.__dict__, "drop": round(m.drop, 3), "passed": m.passed}),
                            flush=True,
                        )
    summary = summarize(rows)
    command = "python scripts/int8_quality.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.out:
        from mobile_export.fsutil import write_text_atomic

        write_text_atomic(args.out, markdown(summary, rows, command))
    if args.json:
        from mobile_export.fsutil import write_text_atomic

        write_text_atomic(
            args.json, json.dumps({"summary": summary, "runs": [{**r.__dict__} for r in rows]}, indent=1)
        )
    for s in summary:
        print(
            f"{s['model']:<22} {s['dataset']:<8} {s['recipe']:<22} n={s['calibration_images']:<4} fp32 {s['fp32_top1']:.2f} "
            f"int8 {s['int8_top1']:.2f} drop {s['drop']:+.2f} agree {s['agreement']:.2f} SQNR {s['sqnr_db']:.1f} "
            f"{'pass' if s['passed'] else 'FAIL'}",
            file=sys.stderr,
        )
    return 0 if all(s["passed"] for s in summary) else 1


if __name__ == "__main__":
    raise SystemExit(main())
