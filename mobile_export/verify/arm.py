"""Parity on the phone's own kernels: one row per emulated ARM CPU, each compared with the
PyTorch reference (the artifact's own threshold row) and with the x86 runtime's output.

Against x86 the same book applies: fp32/fp16 files must meet their row's limits; an int8 file
must meet the limits it meets against the quantized PyTorch model (the x86 runtime is another
implementation of that model, so ARM may differ from it by requantization steps, not more).
A runner crash, timeout or emulator failure is an error row that fails the check."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import EmulationError
from . import metrics, thresholds


def x86_limits(limits: dict[str, float]) -> dict[str, float]:
    """The limits of the ARM-vs-x86 comparison: int8 rows use their vs-quantized limits,
    every other row its own."""
    if "sqnr_db_vs_quantized" not in limits:
        return dict(limits)
    out = {"sqnr_db": limits["sqnr_db_vs_quantized"]}
    if "steps_vs_quantized" in limits:
        out["steps_vs_quantized"] = limits["steps_vs_quantized"]
    return out


def arm_rows(
    path: Path,
    artifact_inputs,
    ref,
    x86,
    cpus,
    key: str,
    limits: dict[str, float],
    *,
    qref=None,
    scale: float | None = None,
    topk: bool = True,
    emulation,
    kit,
    log=lambda _m: None,
) -> dict:
    """Run `path` on each CPU of `cpus` (ArmCpu rows) and judge it.

    `ref`: the PyTorch reference outputs in the artifact's output quantity; `x86`: the x86
    runtime's outputs for the same inputs; `qref`: the quantized PyTorch model's (int8 only).
    `emulation`, `kit`: the target's CpuEmulation and its installed kit.
    Returns {"kit": ..., "rows": [...], "failures": [...]}; each failure names its CPU."""
    expected = np.asarray(ref).reshape(len(artifact_inputs), -1).shape
    rows = []
    for cpu in cpus:
        log(
            f"verify on {cpu.name} ({cpu.family} kernels, QEMU {kit.qemu_version}): {len(artifact_inputs)} image(s)"
        )
        row: dict = {"cpu": cpu.name, "kernels": cpu.family, "kernel_detail": cpu.kernels}
        try:
            arm = emulation.run_on_cpu(kit, path, artifact_inputs, cpu)
            if arm.shape != expected:
                raise EmulationError(
                    f"{cpu.name}: the runner gave outputs of shape {arm.shape}, expected {expected}"
                )
        except EmulationError as exc:
            error = str(exc).splitlines()[0]
            row.update({"error": error, "passed": False, "failures": [error]})
        else:
            row.update(_judge(cpu.name, arm, ref, x86, qref, scale, topk, key, limits))
        rows.append(row)
    return {
        "kit": {"qemu": kit.qemu_version, "executorch": kit.executorch_version, "threads": 1},
        "rows": rows,
        "failures": [f for row in rows for f in row["failures"]],
    }


def _judge(cpu: str, arm, ref, x86, qref, scale, topk: bool, key: str, limits: dict[str, float]) -> dict:
    """Metrics of one CPU's outputs against PyTorch (and the quantized model) and against x86,
    with the failures of each comparison prefixed by the CPU's name."""
    row: dict = {"vs_float": metrics.compare(ref, arm, topk=topk)}
    values = dict(row["vs_float"])
    if qref is not None:
        row["vs_quantized"] = metrics.compare(qref, arm, topk=False)
        values["sqnr_db_vs_quantized"] = row["vs_quantized"]["sqnr_db"]
        if scale:
            values["steps_vs_quantized"] = round(
                metrics.error_in_steps(qref, arm, scale, thresholds.STEP_PERCENTILE), 4
            )
    row["vs_x86"] = metrics.compare(x86, arm, topk=topk)
    x86_values = dict(row["vs_x86"])
    if scale:
        x86_values["steps_vs_quantized"] = row["vs_x86"]["steps"] = round(
            metrics.error_in_steps(x86, arm, scale, thresholds.STEP_PERCENTILE), 4
        )
    row["bit_exact_vs_x86"] = bool(row["vs_x86"]["max_abs"] == 0.0)
    failures = thresholds.check(values, limits, key)
    failures += thresholds.check(x86_values, x86_limits(limits), key, against="the x86 runtime")
    row["failures"] = [f"{cpu}: {f}" for f in failures]
    row["passed"] = not failures
    return row


def format_arm_rows(arm: dict) -> list[str]:
    """Report lines: one per CPU."""
    lines = [
        f"  ARM         ExecuTorch {arm['kit']['executorch']} aarch64 runtime under QEMU {arm['kit']['qemu']} "
        "(emulated CPUs; parity, not speed)"
    ]
    for row in arm["rows"]:
        head = f"  {row['cpu']:<12}{row['kernels']:<6}"
        if "error" in row:
            lines.append(f"{head}ERROR {row['error']}")
            continue
        x86 = "bit-exact" if row["bit_exact_vs_x86"] else f"{row['vs_x86']['sqnr_db']:.1f} dB"
        status = "ok" if row["passed"] else "FAILED"
        extra = f", vs int8 PT {row['vs_quantized']['sqnr_db']:.1f} dB" if row.get("vs_quantized") else ""
        top1 = (
            f", top-1 {row['vs_float']['top1_agreement'] * 100:.0f}%"
            if "top1_agreement" in row["vs_float"]
            else ""
        )
        lines.append(
            f"{head}{status}: vs float {row['vs_float']['sqnr_db']:.1f} dB{top1}{extra}; vs x86 {x86}"
        )
    return lines
