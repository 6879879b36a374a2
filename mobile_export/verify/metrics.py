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
    if not np.all(np.isfinite(tst)):
        return -math.inf  # NaN or inf in the artifact's output: no signal survives
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


def logit_scale(reference) -> float:
    """The spread of the scores within an image (RMS of each row around its own mean, over all
    rows): the unit a tie tolerance is written in, so "0.01" means 1% of a typical logit gap
    whatever the model's temperature."""
    ref = _rows(reference)
    centred = ref - ref.mean(axis=1, keepdims=True)
    return float(np.sqrt(np.mean(centred**2))) if ref.size else 0.0


def top1_ties(reference, tolerance: float) -> np.ndarray:
    """Boolean per row: the best and second-best reference scores differ by at most
    `tolerance`, so at the artifact's precision their order is not decided. The tolerance
    comes from the precision's EXPECTED error (a constant of the threshold row), never from
    the observed error, so ties are reported, not used to excuse a broken file."""
    ref = _rows(reference)
    if ref.shape[1] < 2:
        return np.zeros(ref.shape[0], dtype=bool)
    top2 = -np.sort(-ref, axis=1)[:, :2]
    return top2[:, 0] - top2[:, 1] <= tolerance


def error_in_steps(reference, test, scale: float, percentile: float = 100.0) -> float:
    """The `percentile` of the absolute error over all output elements, in steps of a
    quantization scale (1.0 = one int8 step). A high percentile (99.9) instead of the maximum
    keeps the number from growing with the number of images."""
    if not scale or scale <= 0:
        return math.nan
    if not np.size(reference):
        return 0.0
    err = np.abs(_rows(reference) - _rows(test)).ravel()
    return float(np.percentile(err, percentile)) / float(scale)


def input_dependence_db(reference) -> float:
    """How little the reference's outputs depend on the image: the SQNR of the reference
    against its own mean over images, in dB. 0 dB: the image-dependent part is as large as the
    outputs; 40 dB: it is 1% of their amplitude; +inf: every image gives the same output
    (untrained random weights fade to the classifier bias). A file that ignores the image
    scores this SQNR against the reference, so a check whose SQNR floor is below it proves
    nothing about the image-dependent part. NaN with fewer than two images (not measurable)."""
    ref = _rows(reference)
    if ref.shape[0] < 2:
        return math.nan
    return sqnr_db(ref, np.broadcast_to(ref.mean(axis=0, keepdims=True), ref.shape))


def compare(reference, test, topk: bool = True, tie_tolerance: float = 0.0) -> dict:
    """Every metric of one comparison, JSON-ready: SQNR is capped at SQNR_CAP_DB because
    JSON has no infinity and the apps parse the manifest strictly. `tie_tolerance` is relative
    to the reference's logit_scale (the threshold row's constant for the precision)."""
    ref, tst = _rows(reference), _rows(test)
    if ref.shape != tst.shape:
        raise ValueError(f"reference has shape {ref.shape} but the artifact gave {tst.shape}")
    result = {
        "images": int(ref.shape[0]),
        "max_abs": max_abs_error(ref, tst),
        "mean_abs": mean_abs_error(ref, tst),
        "sqnr_db": _cap(sqnr_db(ref, tst)),
        "non_finite": int(np.size(tst) - np.count_nonzero(np.isfinite(tst))),
        "cosine": cosine_similarity(ref, tst),
    }
    if result["non_finite"]:  # JSON has no NaN: the SQNR (-cap) and the count say it all
        result.update(max_abs=None, mean_abs=None, cosine=None)
    if topk:
        ties = top1_ties(ref, tie_tolerance * logit_scale(ref))
        agree = np.argmax(ref, axis=1) == np.argmax(tst, axis=1)
        result.update(
            {
                "top1_agreement": float(np.mean(agree)),
                "top1_ties": int(np.sum(ties)),
                "top1_flips": int(np.sum(~agree)),
                "top1_flips_on_ties": int(np.sum(~agree & ties)),
                "tie_tolerance": float(tie_tolerance),
                "top5_overlap": topk_overlap(ref, tst, 5),
            }
        )
    return result


def _cap(db: float) -> float:
    return max(-SQNR_CAP_DB, min(SQNR_CAP_DB, db))
