"""Run a saved Core ML ML Program (.mlpackage) on Linux, where Core ML itself cannot run.

    from mobile_export.coreml.mil import load_program
    program = load_program("model.mlpackage")          # reads model.mlmodel + weights/weight.bin
    outputs = program.run({"image": rgb_pixels})       # numpy in, numpy (or label + dict) out
    program.run(feeds, capture={"relu6_cast_fp16"})    # also returns intermediate values

Input semantics: an image input takes RGB pixel values 0..255 (PIL image, HxWx3 array, or
1x3xHxW float array), is put into the declared colour layout, and the ImageType scale and
bias are applied by the program's own `mul`/`add` ops, exactly where the converter put them.
Tensor inputs take arrays of the declared shape and are rounded to the declared dtype.

What it proves: what the saved program computes, op by op, with fp16 storage and rounding
as the program declares it. It does not model the Neural Engine's or GPU's arithmetic.
Heavy modules (torch, coremltools) load only when a program is loaded."""

from __future__ import annotations

from pathlib import Path

from .calibration import RANGE_METHODS, activation_stats, candidate_ranges, coremltools_calibration
from .program import InputInfo, OpInfo, Program, load_program, program_from_spec


def __getattr__(name: str):
    if name == "SUPPORTED_OPS":  # computed lazily so importing this package stays cheap
        from .program import supported_ops

        return supported_ops()
    raise AttributeError(name)


def run_mlpackage(path: str | Path, feeds: dict, capture=None) -> dict:
    """Load and run once (for repeated runs keep the Program from load_program)."""
    return load_program(path).run(feeds, capture=capture)


__all__ = [
    "InputInfo",
    "OpInfo",
    "Program",
    "RANGE_METHODS",
    "SUPPORTED_OPS",
    "activation_stats",
    "candidate_ranges",
    "coremltools_calibration",
    "load_program",
    "program_from_spec",
    "run_mlpackage",
]
