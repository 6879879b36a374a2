"""Peak memory of calibration-image loading against the number of images in the folder.

Writes N small generated JPEGs (100 / 1,000 / 10,000 by default), then, each in a fresh
process, runs `quantize.load_calibration` on the folder with the model's real preprocessing,
consumes every input once (as an observer does) and records the process's peak resident
memory (VmHWM) before and after. Two regimes:
  - the default --calibration-limit (64): an even sample of 64 of the N files;
  - limit = N: every image is used (--calibration-limit 10000).
Streaming means neither grows with N: the set keeps file names, and each input is decoded
when it is consumed.
Prints a table and, with --json, writes the numbers (docs/robustness.md quotes them).

    python scripts/bench_calibration_memory.py [--counts 100 1000 10000] [--model v2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from pathlib import Path

def hwm_mb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

from mobile_export.models.registry import get_spec
from mobile_export.quantize.calibration import load_calibration

folder, model, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
pre = get_spec(model).preprocess
before = hwm_mb()
t0 = time.perf_counter()
calib = load_calibration(folder, pre, limit=limit, progress=False)
low, high = float("inf"), float("-inf")
for x in calib.inputs:  # consume every input once, as an observer does
    low, high = min(low, float(x.min())), max(high, float(x.max()))
seconds = time.perf_counter() - t0
print(json.dumps({"images_used": len(calib.inputs), "skipped": len(calib.skipped), "hwm_before_mb": before,
                  "hwm_after_mb": hwm_mb(), "seconds": seconds}))
"""


def write_jpegs(folder: Path, count: int, side: int, seed: int = 0) -> None:
    """`count` distinct small photos-like JPEGs (smooth gradients plus noise), in subfolders
    of 1,000 like a real dataset."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    existing = len(list(folder.rglob("*.jpg"))) if folder.exists() else 0
    for i in range(existing, count):
        sub = folder / f"{i // 1000:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        a, b, c = rng.random(3)
        img = np.stack([xx * a + yy * (1 - a), yy * b + (1 - xx) * (1 - b), (xx + yy) * 0.5 * c], axis=-1)
        img = np.clip(img * 255 + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(sub / f"img_{i:05d}.jpg", quality=85)


def measure(folder: Path, model: str, limit: int) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(folder), model, str(limit)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--counts", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument(
        "--all-images-up-to",
        type=int,
        default=10000,
        help="also run with limit = N (every image kept) for N up to this",
    )
    parser.add_argument("--model", default="v2", help="whose preprocessing to use (v2: resize 256, crop 224)")
    parser.add_argument("--side", type=int, default=128, help="generated JPEG size in pixels")
    parser.add_argument("--limit", type=int, default=64, help="the default --calibration-limit")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to write the JPEGs (default: a temp folder)"
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="calib-bench-") as tmp:
        root = args.dir or Path(tmp)
        for n in sorted(args.counts):
            folder = root / f"n{n}"
            t0 = time.perf_counter()
            write_jpegs(folder, n, args.side)
            made = time.perf_counter() - t0
            for limit in [args.limit] + ([n] if n <= args.all_images_up_to and n != args.limit else []):
                r = measure(folder, args.model, limit)
                r.update(
                    images_in_folder=n,
                    limit=limit,
                    growth_mb=round(r["hwm_after_mb"] - r["hwm_before_mb"], 1),
                    jpeg_write_seconds=round(made, 1),
                )
                rows.append(r)
                print(
                    f"N={n:>6}  limit={limit:>6}  used={r['images_used']:>6}  peak {r['hwm_after_mb']:7.1f} MB  "
                    f"(+{r['growth_mb']:6.1f} MB over imports)  {r['seconds']:6.1f} s",
                    flush=True,
                )
    if args.json:
        args.json.write_text(
            json.dumps({"model": args.model, "side": args.side, "rows": rows}, indent=2) + "\n"
        )


if __name__ == "__main__":
    main()
