"""Core ML palettes on trained models: agreement with the float model and size, per mode.

For each trained checkpoint (tests/fixtures/trained/, photo task by default) the script
exports Core ML fp16 packages with --compress palettize4, palettize6 and palettize-auto (the
data-aware mix under a size budget), or w8a8, through CoreMLTarget, with calibration images from the
training split, runs each package with the Linux ML Program executor on every held-out image,
and prints top-1 agreement with the float PyTorch model, logits SQNR and the weights' size as a
fraction of their fp32 size. No labels are used by any mode.

    python scripts/palette_quality.py [--checkpoint PATH] [--modes palettize4,w8a8,w8a8-fp16] [--budget 0.15]
        [--seeds 0,1,2] [--keep-fp16 10]

Mode w8a8-fp16 is --compress w8a8 --keep-fp16 auto:PERCENT.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
DEFAULT = ROOT / "tests" / "fixtures" / "trained" / "mobilenet_v2_100_photos_64.safetensors"


def measure(
    checkpoint: Path,
    mode: str,
    budget: float,
    work: Path,
    calibration_images: int = 64,
    seed: int = 0,
    keep_fp16: float = 10.0,
) -> dict:
    import int8_quality
    import train_small

    from mobile_export.coreml import mil
    from mobile_export.coreml.target import CoreMLTarget
    from mobile_export.targets.base import ExportOptions

    model, meta, pre = train_small.load_checkpoint(checkpoint)
    data = train_small.load_dataset(meta["dataset"], meta["resolution"], seed=0, cache=False)
    calib = work / "calibration"
    if not calib.exists():
        int8_quality.write_calibration_folder(calib, data.train_x, calibration_images, seed=seed)
    built = train_small.as_built(model, meta, pre, checkpoint.name)
    dest = work / f"{mode}.mlpackage"
    t0 = time.perf_counter()
    fields = CoreMLTarget().export(
        built,
        ExportOptions(
            compress="w8a8" if mode == "w8a8-fp16" else mode,
            fp16_activations=keep_fp16 if mode == "w8a8-fp16" else None,
            calibration=calib,
            calibration_limit=calibration_images,
            size_budget=budget,
            classifier=False,
            input_kind="tensor",
        ),
        dest,
        lambda m: print("  " + m, file=sys.stderr),
    )
    seconds = time.perf_counter() - t0
    program = mil.load_program(dest)
    x = int8_quality.rgb01(data.test_x)
    name = program.inputs[0].name
    out = np.concatenate(
        [np.asarray(program.output_vector(program.run({name: xi[None]})), np.float64) for xi in x]
    )
    fp32 = train_small.logits_of(model, train_small.to_inputs(data.test_x, pre))
    weights = dest / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    fp32_bytes = 4 * sum(p.numel() for p in model.parameters())
    agreement = 100.0 * float((out.argmax(1) == fp32.argmax(1)).mean())
    sqnr = 10 * np.log10(float((fp32**2).sum()) / float(((fp32 - out) ** 2).sum()))
    return {
        "checkpoint": checkpoint.name,
        "mode": mode,
        "budget": budget if mode == "palettize-auto" else None,
        "images": len(x),
        "agreement_pct": round(agreement, 2),
        "logits_sqnr_db": round(float(sqnr), 2),
        "top1_fp32": round(100.0 * float((fp32.argmax(1) == data.test_y).mean()), 2),
        "top1": round(100.0 * float((out.argmax(1) == data.test_y).mean()), 2),
        "weight_bin_bytes": weights.stat().st_size,
        "fraction_of_fp32": round(weights.stat().st_size / fp32_bytes, 4),
        "export_seconds": round(seconds, 1),
        "palette_bits": fields["quantization"].get("palette_bits", {}).get("layers_per_bits"),
        "seed": seed,
        "activation_ranges": fields["quantization"].get("calibration", {}).get("activation_ranges"),
        "ranges_logits_sqnr_db": fields["quantization"].get("calibration", {}).get("ranges_logits_sqnr_db"),
        "fp16_activations": {
            k: v for k, v in fields["quantization"].get("fp16_activations", {}).items() if k != "gains_db"
        }
        or None,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, action="append")
    parser.add_argument("--modes", default="palettize4,palettize6,palettize-auto")
    parser.add_argument("--budget", type=float, default=0.15)
    parser.add_argument("--seeds", default="0", help="calibration draws, comma-separated")
    parser.add_argument(
        "--keep-fp16",
        type=float,
        default=10.0,
        help="mode w8a8-fp16: percent of activation tensors left fp16",
    )
    args = parser.parse_args(argv)
    for checkpoint in args.checkpoint or [DEFAULT]:
        for seed in (int(s) for s in args.seeds.split(",")):
            with tempfile.TemporaryDirectory() as tmp:
                for mode in args.modes.split(","):
                    print(
                        json.dumps(
                            measure(
                                checkpoint, mode, args.budget, Path(tmp), seed=seed, keep_fp16=args.keep_fp16
                            )
                        ),
                        flush=True,
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
