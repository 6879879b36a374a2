"""How fast the Linux ML Program executor runs a real MobileNet (issue 5: V2 at 224 in fp32
under 2 s). Converts the model with coremltools, saves the .mlpackage, loads it with the
executor and times `Program.run` on a bundled photo; also prints the agreement with PyTorch.

    python3 scripts/bench_mil.py [--model v2] [--resolution 224] [--precision fp32] [--runs 5]

A benchmark, not a test: the machine is shared, so it reports the best and the median run."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="v2")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--precision", choices=["fp32", "fp16"], default="fp32")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args()

    import numpy as np
    import torch

    from mobile_export import preprocess as pp
    from mobile_export.coreml.mil import load_program
    from mobile_export.models import create_model

    if args.threads:
        torch.set_num_threads(args.threads)
    built = create_model(args.model, weights="random", resolution=args.resolution)
    module = built.module.eval()
    photo = pp.bundled_photos()[0]
    x = pp.load_input(photo, built.preprocess)
    with tempfile.TemporaryDirectory() as tmp:
        package = Path(tmp) / "bench.mlpackage"
        t0 = time.perf_counter()
        _convert(module, x.shape, args.precision, package)
        convert_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        program = load_program(package)
        load_s = time.perf_counter() - t0
        feeds = {"x": x}
        times = []
        for _ in range(args.runs + 1):  # the first run pays torch's one-time kernel setup
            t0 = time.perf_counter()
            out = program.run(feeds)
            times.append(time.perf_counter() - t0)
        y = np.asarray(out[program.outputs[0]], np.float32)
        with torch.no_grad():
            ref = module(torch.from_numpy(x)).numpy()
    rel = float(np.abs(y - ref).max() / max(np.abs(ref).max(), 1e-12))
    print(
        f"{built.spec.name} {args.resolution}px {args.precision}: convert {convert_s:.1f}s, load {load_s:.2f}s, "
        f"first run {times[0]:.3f}s, best {min(times[1:]):.3f}s, median {statistics.median(times[1:]):.3f}s "
        f"over {args.runs} runs ({program.threads} thread(s)); max rel error vs PyTorch {rel:.2e} (random weights); "
        f"{len(program.compute_ops())} ops"
    )


def _convert(module, shape, precision: str, dest: Path) -> None:
    import contextlib
    import os
    import warnings

    import torch

    with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import coremltools as ct

        exported = torch.export.export(module, (torch.zeros(shape),)).run_decompositions({})
        ml = ct.convert(
            exported,
            convert_to="mlprogram",
            inputs=[ct.TensorType(name="x", shape=shape)],
            compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16,
            minimum_deployment_target=ct.target.iOS17,
        )
        ml.save(str(dest))


if __name__ == "__main__":
    main()
