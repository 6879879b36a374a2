"""How far an artifact's outputs are from the reference's: pure numpy, so every number
can be checked by hand in the tests.

Conventions: `reference` and `test` are arrays of shape (N, C) (one row per image) or
anything that flattens to that. SQNR = 10 log10(sum ref^2 / sum (ref - test)^2), so
+20 dB is ten times less error; identical outputs give +inf."""

from __future__ import annotations

import math

import numpy as np

SQNR_CAP_DB = 300.0  # identical outputs: a finite number keeps the manifest strict JSON


def _rows(a) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a.reshape(a.shape[0], -1) if a.ndim > 1 else a.reshape(1, -1)


def max_abs_error(reference, test) -> float:
    return float(np.max(np.abs(_rows(reference) - _rows(test)))) if np.size(reference) else 0.0


def mean_abs_error(reference, test) -> float:
    return float(np.mean(np.abs(_rows(reference) - _rows(test)))) if np.size(reference) else 0.0


def sqnr_db(reference, test) -> float:
    """Signal-to-quantization-noise ratio in dB over all elements; inf when equal."""
    ref, tst = _rows(reference), _rows(test)
    return sqnr_from_powers(float(np.sum(ref**2)), float(np.sum((ref - tst) ** 2)))


def sqnr_from_powers(signal: float, noise: float) -> float:
    """SQNR in dB from summed squares (for running sums over images); inf when noise is 0."""
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def cosine_similarity(reference, test) -> float:
    """Mean over rows of the cosine between reference and test rows (1.0 = same direction).
    Two all-zero rows count as identical."""
    ref, tst = _rows(reference), _rows(test)
    dot = np.sum(ref * tst, axis=1)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(tst, axis=1)
    both_zero = (np.linalg.norm(ref, axis=1) == 0) & (np.linalg.norm(tst, axis=1) == 0)
    cos = np.where(norms > 0, dot / np.where(norms > 0, norms, 1.0), np.where(both_zero, 1.0, 0.0))
    return float(np.mean(cos))


def top1_agreement(reference, test) -> float:
    """Fraction of rows whose arg-max class is the same."""
    ref, tst = _rows(reference), _rows(test)
    return float(np.mean(np.argmax(ref, axis=1) == np.argmax(tst, axis=1)))


def topk_overlap(reference, test, k: int = 5) -> float:
    """Mean fraction of the reference's top-k classes that are also in the test's top-k."""
    ref, tst = _rows(reference), _rows(test)
    k = min(k, ref.shape[1])
    top_ref = np.argsort(-ref, axis=1, kind="stable")[:, :k]
    top_tst = np.argsort(-tst, axis=1, kind="stable")[:, :k]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(top_ref, top_tst)]))


def top1_ties(reference, tolerance: float) -> int:
    """Rows whose best and second-best reference scores differ by at most `tolerance`:
    at that precision their order is not decided, so a top-1 flip there is not a defect."""
    ref = _rows(reference)
    if ref.shape[1] < 2:
        return 0
    top2 = -np.sort(-ref, axis=1)[:, :2]
    return int(np.sum(top2[:, 0] - top2[:, 1] <= tolerance))


def decided_top1_agreement(reference, test, tolerance: float) -> float:
    """top-1 agreement over the rows whose reference top-2 margin exceeds `tolerance`
    (1.0 when every row is a tie)."""
    ref, tst = _rows(reference), _rows(test)
    if ref.shape[1] < 2:
        return 1.0
    top2 = -np.sort(-ref, axis=1)[:, :2]
    decided = top2[:, 0] - top2[:, 1] > tolerance
    if not decided.any():
        return 1.0
    return float(np.mean(np.argmax(ref[decided], axis=1) == np.argmax(tst[decided], axis=1)))


def error_in_steps(reference, test, scale: float) -> float:
    """Largest error measured in steps of a quantization scale (1.0 = one int8 step)."""
    if not scale or scale <= 0:
        return math.nan
    return max_abs_error(reference, test) / float(scale)


def input_independent(reference, rel_tol: float = 1e-4) -> bool:
    """True when every row is (nearly) the same: outputs that do not depend on the image,
    as untrained random weights give (the features die out and only the bias is left)."""
    ref = _rows(reference)
    if ref.shape[0] < 2:
        return False
    spread = float(np.max(np.std(ref, axis=0)))
    scale = float(np.max(np.abs(ref))) or 1.0
    return spread <= rel_tol * scale


def compare(reference, test, topk: bool = True) -> dict:
    """Every metric of one comparison, JSON-ready: SQNR is capped at SQNR_CAP_DB because
    JSON has no infinity and the apps parse the manifest strictly."""
    ref, tst = _rows(reference), _rows(test)
    if ref.shape != tst.shape:
        raise ValueError(f"reference has shape {ref.shape} but the artifact gave {tst.shape}")
    err = max_abs_error(ref, tst)
    result = {
        "images": int(ref.shape[0]),
        "max_abs": err,
        "mean_abs": mean_abs_error(ref, tst),
        "sqnr_db": max(-SQNR_CAP_DB, min(SQNR_CAP_DB, sqnr_db(ref, tst))),
        "cosine": cosine_similarity(ref, tst),
    }
    if topk:
        tie_tol = 2.0 * err
        result.update({
            "top1_agreement": top1_agreement(ref, tst),
            "top1_ties": top1_ties(ref, tie_tol),
            "top1_agreement_decided": decided_top1_agreement(ref, tst, tie_tol),
            "top5_overlap": topk_overlap(ref, tst, 5),
        })
    return result
