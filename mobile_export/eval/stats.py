"""Is an accuracy drop real? Paired statistics over the same images.

- drop_ci: 95% paired bootstrap interval of (reference top-1 - artifact top-1) in points.
  Each image contributes d = ref_correct - row_correct in {-1, 0, +1}; resampling N images
  with replacement only changes how many of each value are drawn, so one multinomial draw
  per resample is exactly the image bootstrap, in O(resamples) memory and time.
- mcnemar_exact: two-sided exact McNemar test on the discordant pairs (b: only the
  reference right, c: only the artifact right): p = min(1, 2 P[X <= min(b, c)]),
  X ~ Binomial(b + c, 1/2), computed with integers (no float underflow at n = 50,000)."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from math import comb

import numpy as np

RESAMPLES = 2000
SEED = 0
ALPHA = 0.05


@dataclass(frozen=True)
class Paired:
    n: int
    both: int  # both right
    only_ref: int  # b: the reference right, the artifact wrong (lost)
    only_row: int  # c: the artifact right, the reference wrong (gained)
    neither: int

    @classmethod
    def of(cls, ref_correct, row_correct) -> Paired:
        r = np.asarray(ref_correct, bool)
        a = np.asarray(row_correct, bool)
        return cls(len(r), int((r & a).sum()), int((r & ~a).sum()), int((~r & a).sum()), int((~r & ~a).sum()))

    @property
    def drop_points(self) -> float:
        return 100.0 * (self.only_ref - self.only_row) / self.n if self.n else 0.0


def mcnemar_exact(b: int, c: int) -> float:
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(comb(n, k) for k in range(min(b, c) + 1))
    return float(min(Fraction(1), Fraction(2 * tail, 2**n)))


def drop_ci(
    p: Paired, resamples: int = RESAMPLES, seed: int = SEED, level: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of the bootstrap distribution of the drop, in points."""
    if p.n == 0:
        return (0.0, 0.0)
    rng = np.random.default_rng(seed)
    probs = np.array([p.only_ref, p.n - p.only_ref - p.only_row, p.only_row], dtype=np.float64) / p.n
    counts = rng.multinomial(p.n, probs, size=resamples)
    drops = 100.0 * (counts[:, 0] - counts[:, 2]) / p.n
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(drops, [tail, 1.0 - tail], method="inverted_cdf")
    return float(lo), float(hi)


def verdict(p: Paired, p_value: float) -> str:
    if p.only_ref == p.only_row == 0:
        return f"identical answers on all {p.n:,} images"
    if p_value >= ALPHA:
        return f"not distinguishable from 0 at n={p.n:,} (McNemar p={p_value:.3g})"
    direction = "drop" if p.drop_points > 0 else "gain"
    return f"a real {direction} at n={p.n:,} (McNemar p={p_value:.3g})"
