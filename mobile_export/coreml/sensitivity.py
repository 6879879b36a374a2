"""Data-aware palette sizes: how many bits each weight gets, from measured sensitivity.

For every compressible weight and every palette size, the float program runs on the
calibration images (no labels) with only that weight replaced by its palettized copy (the
same grouped 1-D k-means the export writes), and the output noise it adds is measured
against the float outputs. Noises of different layers add (independent rounding), so the
choice under a size budget is a knapsack solved by a Lagrange multiplier: each weight takes
the palette size minimising noise + lambda x bytes, and lambda is bisected until the whole
model fits the budget. Sensitive layers (the first conv, projections feeding residuals, the
classifier) end up with 6-8 bits, the rest with 2-4."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

#: Palette sizes considered (coremltools' grouped-channel palettization supports 1-8, not 5/7).
CANDIDATE_BITS = (2, 3, 4, 6, 8)


@dataclass
class WeightInfo:
    name: str
    shape: tuple[int, ...]
    group_size: int

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def bytes_at(self, nbits: int) -> float:
        """Packed indices plus one fp16 palette of 2**nbits entries per group of channels."""
        groups = self.shape[0] // self.group_size
        return self.size * nbits / 8 + groups * (2**nbits) * 2


@dataclass
class BitChoice:
    bits: dict[str, int]
    noise: dict[str, dict[int, float]]  # weight -> bits -> relative output noise energy
    budget_bytes: float
    compressed_bytes: float
    fp32_bytes: float
    predicted_sqnr_db: float
    counts: dict[int, int] = field(default_factory=dict)

    def record(self) -> dict:
        return {
            "candidate_bits": list(CANDIDATE_BITS),
            "layers_per_bits": {str(k): v for k, v in sorted(self.counts.items())},
            "palettized_bytes": round(self.compressed_bytes),
            "budget_bytes": round(self.budget_bytes),
            "predicted_sqnr_db": round(self.predicted_sqnr_db, 2),
            "bits": dict(sorted(self.bits.items())),
        }


def palettized(weight: np.ndarray, nbits: int, group_size: int, lut_function) -> np.ndarray:
    """The weight as the export will store it: per group of `group_size` output channels, a
    palette of 2**nbits values from `lut_function` and each element replaced by its entry."""
    out = np.empty_like(weight)
    for start in range(0, weight.shape[0], group_size):
        group = weight[start : start + group_size]
        lut, index = lut_function(group)
        out[start : start + group_size] = np.asarray(lut)[np.asarray(index).reshape(-1)].reshape(group.shape)
    return out


def measure_noise(
    program, samples: list[dict], weights: list[WeightInfo], lut_for, output: str | None, log=lambda _m: None
) -> dict:
    """{weight: {bits: output noise energy / output signal energy}} over `samples`, each weight
    palettized alone in the loaded `program` (restored afterwards).

    Weights are visited in program order, and each image's run is kept as a checkpoint just
    before the first op reading the weight: the ops before it compute the same values for
    every palette, so only the rest of the program runs again (MobileNetV5-300m: 283 weights
    x 5 palettes x the images; 0.63x the CPU time on V2 1.0, and no number changes)."""
    import torch

    points = [program.start(feeds) for feeds in samples]
    outputs = [output_of(program, point, output) for point in points]
    signal = float(sum(np.sum(o**2) for o in outputs)) or 1.0
    first_reader = {w.name: program.first_reader(w.name) or 0 for w in weights}
    noise: dict[str, dict[int, float]] = {}
    for i, w in enumerate(sorted(weights, key=lambda w: first_reader[w.name])):
        for point in points:
            program.advance(point, first_reader[w.name])
        tensor = program._static[w.name]
        original = tensor.clone()
        values = np.asarray(program.consts[w.name])
        noise[w.name] = {}
        for nbits in CANDIDATE_BITS:
            approx = palettized(values, nbits, w.group_size, lut_for(nbits))
            tensor.copy_(torch.from_numpy(np.ascontiguousarray(approx)).to(tensor.dtype))
            err = sum(
                float(np.sum((output_of(program, point, output) - ref) ** 2))
                for point, ref in zip(points, outputs)
            )
            noise[w.name][nbits] = err / signal
        tensor.copy_(original)
        log(
            f"coreml: sensitivity {i + 1}/{len(weights)} {w.name}: "
            + ", ".join(f"{b}-bit {noise_db(noise[w.name][b]):.1f} dB" for b in CANDIDATE_BITS)
        )
    return {w.name: noise[w.name] for w in weights}


def choose_bits(
    noise: dict, weights: list[WeightInfo], budget_bytes: float, fixed_bytes: float
) -> dict[str, int]:
    """Per weight, the palette size minimising total noise with the palettized weights plus
    `fixed_bytes` (what stays uncompressed) within `budget_bytes`; the smallest palettes
    everywhere when even those do not fit."""
    by_name = {w.name: w for w in weights}

    def pick(lam: float) -> dict[str, int]:
        return {
            n: min(CANDIDATE_BITS, key=lambda b: noise[n][b] + lam * by_name[n].bytes_at(b)) for n in noise
        }

    def size(bits: dict[str, int]) -> float:
        return fixed_bytes + sum(by_name[n].bytes_at(b) for n, b in bits.items())

    lo, hi = 0.0, 1.0
    while size(pick(hi)) > budget_bytes and hi < 1e6:
        hi *= 4
    if size(pick(hi)) > budget_bytes:
        return {n: CANDIDATE_BITS[0] for n in noise}
    for _ in range(60):  # lambda: larger is smaller and noisier
        mid = math.sqrt(lo * hi) if lo > 0 else hi / 1e9 if _ == 0 else (lo + hi) / 2
        if size(pick(mid)) > budget_bytes:
            lo = mid
        else:
            hi = mid
    return pick(hi)


def plan_bits(
    program,
    samples: list[dict],
    weights: list[WeightInfo],
    lut_for,
    budget_bytes: float,
    fixed_bytes: float,
    fp32_bytes: float,
    output: str | None = None,
    log=lambda _m: None,
) -> BitChoice:
    """Measure every weight's noise at every palette size, then choose under the budget.
    `output`: the value to measure noise on (the logits of a classifier); None: the main output."""
    noise = measure_noise(program, samples, weights, lut_for, output, log)
    bits = choose_bits(noise, weights, budget_bytes, fixed_bytes)
    by_name = {w.name: w for w in weights}
    total_noise = sum(noise[n][b] for n, b in bits.items())
    counts: dict[int, int] = {}
    for b in bits.values():
        counts[b] = counts.get(b, 0) + 1
    return BitChoice(
        bits=bits,
        noise=noise,
        budget_bytes=budget_bytes,
        compressed_bytes=fixed_bytes + sum(by_name[n].bytes_at(b) for n, b in bits.items()),
        fp32_bytes=fp32_bytes,
        predicted_sqnr_db=noise_db(total_noise),
        counts=counts,
    )


def noise_db(relative_noise: float) -> float:
    """SQNR in dB from noise energy / signal energy; 300 dB when there is no noise."""
    return -10 * math.log10(relative_noise) if relative_noise > 0 else 300.0


def output_of(program, run_from, output: str | None) -> np.ndarray:
    """The value named `output` (a classifier's logits) for one sample, else the main output.
    run_from: the sample's feeds, or a `Checkpoint` of its run (left as it was)."""
    from .mil.program import Checkpoint

    point = run_from if isinstance(run_from, Checkpoint) else program.start(run_from)
    if output is not None:
        return np.asarray(program.resume(point, capture={output})[output], dtype=np.float64).reshape(1, -1)
    return np.asarray(program.output_vector(program.resume(point)), dtype=np.float64)
