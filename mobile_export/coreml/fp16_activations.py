"""W8A8 with a few activations left in fp16, chosen by what their int8 rounding costs.

The W8A8 program runs on the calibration images (no labels) once as it is and once per
quantized tensor with only that tensor's quantize/dequantize pair passed through
(`mil.Program.float_values`), each scored by logits SQNR against the float program. Tensors
are then taken by dB gained, skipping those that gain < MIN_GAIN_DB, until PERCENT of the
quantized tensors stay fp16; the chosen set is measured again together. On the trained V2 1.0
photo model, 9 of 99 tensors in fp16 took held-out agreement with float from 98.53% to 99.22%
(median of 3 calibration draws; V4 Conv-S 98.92% -> 99.22%; docs/palettes.md). The rest of the
network keeps int8 activations on the Neural Engine."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: A tensor that gains less than this on the calibration images stays int8.
MIN_GAIN_DB = 0.05


@dataclass
class Fp16Choice:
    names: list[str]  # tensors whose quantize/dequantize pairs are removed, in program order
    gains_db: dict[str, float]  # tensor -> logits SQNR gained with it alone in fp16
    quantized: int  # tensors W8A8 quantizes before the choice
    percent: float
    int8_db: float  # logits SQNR vs float on the calibration images, all tensors int8
    chosen_db: float  # the same with the chosen tensors in fp16

    def record(self) -> dict:
        return {
            "percent": self.percent,
            "quantized_tensors": self.quantized,
            "fp16_tensors": list(self.names),
            "calibration_logits_sqnr_db": {
                "all_int8": round(self.int8_db, 2),
                "chosen": round(self.chosen_db, 2),
            },
            "gains_db": {n: round(g, 3) for n, g in self.gains_db.items()},
        }


def choose(
    program, samples: list[dict], reference: np.ndarray, logits_of, percent: float, log=lambda _m: None
):
    """The tensors of the W8A8 `program` to keep in fp16, within `percent` of its quantized
    tensors. `reference`: the float program's logits on `samples`; `logits_of(program, samples)`
    runs them."""
    from .sensitivity import noise_db

    def sqnr(logits: np.ndarray) -> float:
        return noise_db(float(np.sum((logits - reference) ** 2)) / max(float(np.sum(reference**2)), 1e-30))

    names = program.quantized_values()
    limit = int(len(names) * percent / 100)
    base = sqnr(logits_of(program, samples))
    log(
        f"coreml: measuring the int8 rounding of {len(names)} activation tensors on {len(samples)} "
        f"calibration image(s) (all int8: {base:.1f} dB)"
    )
    gains = {}
    for name in names:
        with program.float_values({name}):
            gains[name] = sqnr(logits_of(program, samples)) - base
    ranked = sorted((n for n in names if gains[n] >= MIN_GAIN_DB), key=lambda n: -gains[n])
    picked = set(ranked[:limit])
    chosen = [n for n in names if n in picked]
    with program.float_values(picked):
        together = sqnr(logits_of(program, samples)) if picked else base
    log(
        f"coreml: {len(chosen)} of {len(names)} activation tensors kept fp16: {base:.1f} -> {together:.1f} dB"
    )
    return Fp16Choice(chosen, gains, len(names), percent, base, together)
