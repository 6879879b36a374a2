"""PyTorch eager and torch.compile: the registry's model with the same seeded weights and the
normalization wrapper the .pte has; nothing to prepare."""

from __future__ import annotations

import time

from ..common import RESOLUTION, SEED, _ms_since


def make_call(kind: str, precision: str, artifact: str, alias: str, threads: int, x_np, keep_alive: list):
    import torch

    from mobile_export.executorch.lowering import with_normalization
    from mobile_export.models import create_model

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    built = create_model(alias, weights="random", seed=SEED, resolution=RESOLUTION)
    model = with_normalization(built.module, built.preprocess.mean, built.preprocess.std).eval()
    if kind == "compile":
        model = torch.compile(model)
    x = torch.from_numpy(x_np.copy())

    def run():
        with torch.no_grad():
            return model(x)

    return run, _ms_since(t0)  # torch.compile compiles at the first call, not here
