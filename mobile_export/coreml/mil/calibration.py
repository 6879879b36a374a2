"""W8A8 activation calibration on Linux: the ranges coremltools' activation quantization
needs, collected by running the float ML Program through this executor.

Two ways in:
- `activation_stats(package, samples)` returns {tensor name: {"rmin", "rmax"}} (inputs
  included) for the compression passes `insert_prefix/suffix_quantize_dequantize_pair`;
- `coremltools_calibration()` patches coremltools' calibration (its ModelDebugger calls
  `MLModel.predict`, macOS only) to run this executor, so the shipped
  `linear_quantize_activations` works unchanged on Linux.
Both keep the min/max over ALL samples (coremltools 9.0 keeps only the last one, #2704)."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from pathlib import Path

import numpy as np

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


def activation_stats(package: str | Path | Program, samples: list[dict]) -> dict:
    """min/max of every activation and input over all `samples` (feeds as for Program.run)."""
    from coremltools.optimize._utils import _adjust_concat_surrounding_activation_stats

    program = package if isinstance(package, Program) else load_program(package)
    names = set(calibration_names(program))
    stats: dict = defaultdict(dict)
    for feeds in samples:
        for name, value in feeds.items():
            _merge(stats, name, np.asarray(value, np.float32))
        result = program.run(feeds, capture=names)
        for name in names:
            _merge(stats, name, result[name])
    _adjust_concat_surrounding_activation_stats(_concat_groups(program), stats)
    return {name: {"rmin": float(v["rmin"]), "rmax": float(v["rmax"])} for name, v in stats.items()}


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
