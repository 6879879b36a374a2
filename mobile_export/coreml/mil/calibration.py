"""W8A8 activation calibration on Linux: the ranges coremltools' activation quantization
needs, collected by running the float ML Program through this executor.

Two ways in:
- `activation_stats(package, samples, ranges)` returns {tensor name: {"rmin", "rmax"}} (inputs
  included) for the compression passes `insert_prefix/suffix_quantize_dequantize_pair`;
- `coremltools_calibration()` patches coremltools' calibration (its ModelDebugger calls
  `MLModel.predict`, macOS only) to run this executor, so the shipped
  `linear_quantize_activations` works unchanged on Linux.
Both keep the min/max over ALL samples (coremltools 9.0 keeps only the last one, #2704).

Ranges (`RANGE_METHODS`): "minmax" keeps the largest value seen and spends int8's 255
symmetric steps on a range one rare activation may set; "mse" clips each tensor where the
expected squared error over the calibration images is least (the trade XNNPACK's int8 recipe
makes with its histogram observer), except the input, whose range the image format sets.
Neither wins on every trained MobileNet (docs/palettes.md), so the W8A8 export measures both
(coreml.target)."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from pathlib import Path

import numpy as np

from ...errors import UsageError
from .program import Program, load_program, program_from_spec


def _merge(stats: dict, name: str, value) -> None:
    arr = np.asarray(value, dtype=np.float64)
    if arr.size == 0 or arr.dtype.kind not in "fiub":
        return
    lo, hi = float(arr.min()), float(arr.max())
    entry = stats[name]
    entry["rmin"] = min(lo, entry.get("rmin", lo))
    entry["rmax"] = max(hi, entry.get("rmax", hi))


def calibration_names(program: Program) -> list[str]:
    """What coremltools calibrates: every float output of a non-const op that is not a model output."""
    outputs = set(program.outputs)
    return [
        name
        for name in program.value_names()
        if name not in outputs and program.value_type(name) in ("fp16", "fp32")
    ]


#: How a W8A8 activation range is chosen from the calibration images; the first is the default.
RANGE_METHODS = ("mse", "minmax")

#: Histogram bins of |x| per tensor for the "mse" ranges (the threshold is searched on bin edges
#: from 1/8 of the largest value up: 0.05% steps of the range).
HISTOGRAM_BINS = 2048

#: int8 symmetric quantization's positive levels (scale = range / LEVELS).
LEVELS = 127


def activation_stats(package: str | Path | Program, samples: list[dict], ranges: str = "mse") -> dict:
    """The range of every activation and input over all `samples` (feeds as for Program.run),
    chosen by `ranges` (one of RANGE_METHODS)."""
    return candidate_ranges(package, samples, (ranges,))[ranges]


def candidate_ranges(
    package: str | Path | Program, samples: list[dict], methods: tuple[str, ...] = RANGE_METHODS
) -> dict[str, dict]:
    """{method: {tensor name: {"rmin", "rmax"}}} for each of `methods`, from one pass over the
    samples for the min/max and one more for the histograms that "mse" clips by."""
    from coremltools.optimize._utils import _adjust_concat_surrounding_activation_stats

    unknown = [m for m in methods if m not in RANGE_METHODS]
    if unknown:
        raise UsageError(
            f"unknown activation range method {unknown[0]!r}; choose one of: {', '.join(RANGE_METHODS)}"
        )
    program = package if isinstance(package, Program) else load_program(package)
    names = set(calibration_names(program))
    minmax: dict = defaultdict(dict)
    for values in _runs(program, samples, names):
        for name, value in values.items():
            _merge(minmax, name, value)
    found = {}
    for method in methods:
        stats = (
            _clipped(program, samples, names, minmax)
            if method == "mse"
            else {n: dict(v) for n, v in minmax.items()}
        )
        _adjust_concat_surrounding_activation_stats(_concat_groups(program), stats)
        found[method] = {
            name: {"rmin": float(v["rmin"]), "rmax": float(v["rmax"])} for name, v in stats.items()
        }
    return found


def _runs(program: Program, samples: list[dict], names: set[str]):
    """{name: value} per sample: the inputs and every calibrated activation."""
    for feeds in samples:
        result = program.run(feeds, capture=names)
        values = {name: np.asarray(value, np.float32) for name, value in feeds.items()}
        values.update((name, result[name]) for name in names)
        yield values


def _clipped(program: Program, samples: list[dict], names: set[str], stats: dict) -> dict:
    """`stats` with each range clipped at its least-squared-error threshold: a second pass over
    the samples histograms |x| of every tensor on [0, its largest |x|]."""
    largest = {name: max(abs(v["rmin"]), abs(v["rmax"])) for name, v in stats.items()}
    fixed = input_side(program)
    histograms = {
        name: np.zeros(HISTOGRAM_BINS) for name, top in largest.items() if top > 0 and name not in fixed
    }
    for values in _runs(program, samples, names):
        for name, value in values.items():
            if name in histograms:
                magnitude = np.abs(np.asarray(value, np.float64).reshape(-1))
                # exact zeros (ReLU's) are exact at every scale: they cost nothing
                counts, _ = np.histogram(magnitude[magnitude > 0], HISTOGRAM_BINS, (0.0, largest[name]))
                histograms[name] += counts
    clipped = {}
    for name, v in stats.items():
        if name not in histograms:
            clipped[name] = dict(v)
            continue
        t = mse_threshold(histograms[name], largest[name])
        clipped[name] = {"rmin": max(v["rmin"], -t), "rmax": min(v["rmax"], t)}
    return clipped


#: Ops that only rescale or shift the input on its way to the first layer (ImageType scale and
#: bias, the mean subtracted, dtype casts).
_INPUT_SIDE_OPS = {"cast", "add", "sub", "mul", "real_div"}


def input_side(program: Program) -> set[str]:
    """The inputs and the values computed from them alone by input-side ops: their range is set
    by the image format, not by statistics, so it is never clipped (clipping the brightest
    pixels cost V4 Conv-S 5 dB at its first convolution)."""
    side = {info.name for info in program.inputs}
    for op in program.compute_ops():
        dynamic = [v for names in op.inputs.values() for v in names if v not in program.consts]
        if op.type in _INPUT_SIDE_OPS and dynamic and all(v in side for v in dynamic):
            side.update(op.outputs)
    return side


def mse_threshold(histogram: np.ndarray, largest: float, levels: int = LEVELS) -> float:
    """The clipping threshold t in [largest/8, largest] that minimises the expected squared error
    of symmetric quantization with scale t/levels, for values whose |x| histogram over
    [0, largest] is `histogram`: a value inside costs the rounding noise step**2/12, a value
    beyond costs its distance to t (values sit at their bin's centre)."""
    counts = np.asarray(histogram, np.float64)
    bins = len(counts)
    if largest <= 0 or counts.sum() == 0:
        return float(largest)
    centres = (np.arange(bins) + 0.5) * largest / bins
    edges = np.arange(bins // 8, bins + 1)  # t = edges * largest / bins
    t = edges * largest / bins

    def beyond(x):  # sum over the bins at and beyond each edge: the clipped values
        return np.concatenate([np.cumsum(x[::-1])[::-1], [0.0]])[edges]

    n, s1, s2 = beyond(counts), beyond(counts * centres), beyond(counts * centres**2)
    inside = counts.sum() - n
    error = inside * (t / levels) ** 2 / 12 + np.maximum(s2 - 2 * t * s1 + t * t * n, 0.0)
    return float(t[int(np.argmin(error))])


def _concat_groups(program: Program) -> list[list[str]]:
    """[inputs..., output] of each concat, which coremltools gives one shared range."""
    return [
        [*op.inputs.get("values", []), op.outputs[0]] for op in program.compute_ops() if op.type == "concat"
    ]


@contextlib.contextmanager
def coremltools_calibration():
    """Within this block coremltools' activation calibration runs through this executor:
    `ModelDebugger.predict_intermediate_outputs` executes the float program from its spec
    and weights folder, and the running min/max is merged correctly across samples."""
    from coremltools.optimize.coreml.experimental import _model_debugger as md

    debugger = md.ModelDebugger
    saved = {
        name: debugger.__dict__[name]
        for name in ("predict_intermediate_outputs", "record_intermediate_output")
    }

    def predict_intermediate_outputs(self, inputs, intermediate_output_names, compute_units=None):
        program = getattr(self, "_mil_program", None)
        if program is None:
            program = program_from_spec(self.model_info.spec, self.weights_dir)
            self._mil_program = program
        known = set(program.value_names())
        wanted = [n for n in intermediate_output_names if n in known]
        result = program.run(dict(inputs), capture=set(wanted))
        return {k: v for k, v in result.items() if isinstance(v, np.ndarray)}

    def record_intermediate_output(output_value, output_name, activation_stats_dict):
        _merge(activation_stats_dict, output_name, output_value)

    debugger.predict_intermediate_outputs = predict_intermediate_outputs
    debugger.record_intermediate_output = staticmethod(record_intermediate_output)
    try:
        yield
    finally:
        for name, original in saved.items():
            setattr(debugger, name, original)
