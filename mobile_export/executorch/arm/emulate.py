"""Run a .pte on one emulated ARM CPU through the kit's runner, and count the guest instructions
it executes. A crash, a non-zero exit, a timeout or an emulator failure is an EmulationError:
never an empty or partial result.

Counting: QEMU logs every translated block's guest instructions (`-d in_asm`) and, with block
chaining off (`nochain`), every execution of a block (`-d exec`); the sum over executions of
the block's length is the number of guest instructions executed. This is ~6x faster than one
log line per instruction (`-one-insn-per-tb`), which it matches to within ~10 per 13 million
(blocks cut short by a signal or exit). Debian's static QEMU cannot load TCG plugins."""

from __future__ import annotations

import signal
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from ...errors import EmulationError
from .cpus import ArmCpu
from .kit import ArmKit

RUN_TIMEOUT_S = 1800.0
COUNT_TIMEOUT_S = 1800.0
_EXIT_MEANINGS = {
    2: "usage error",
    3: "input/output file error",
    4: "the program did not load",
    5: "forward failed",
    6: "an output is not a float32 tensor",
}


def _command(kit: ArmKit, cpu: ArmCpu, args: list[str], log_exec: bool = False) -> list[str]:
    trace = ["-d", "in_asm,exec,nochain", "-D", "/dev/stdout"] if log_exec else []
    return [str(kit.qemu), "-cpu", cpu.name, "-L", str(kit.sysroot), *trace, str(kit.runner), *args]


def _failure(cpu: ArmCpu, returncode: int, stderr: str) -> EmulationError:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip() and not ln.startswith("I ")]
    detail = lines[-1][:200] if lines else "no message"
    if returncode < 0 or returncode >= 128:
        signum = -returncode if returncode < 0 else returncode - 128
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        return EmulationError(f"{cpu.name}: the runner crashed under QEMU ({name}): {detail}")
    meaning = _EXIT_MEANINGS.get(returncode, "failed")
    return EmulationError(f"{cpu.name}: the runner exited {returncode} ({meaning}): {detail}")


def _images_file(inputs, path: Path) -> int:
    """Write the 1x3xSxS inputs back to back as raw float32; return S."""
    arrays = [np.ascontiguousarray(np.asarray(x, dtype=np.float32)) for x in inputs]
    if not arrays:
        raise EmulationError("no input images to run")
    shape = arrays[0].shape
    if len(shape) != 4 or shape[0] != 1 or shape[1] != 3 or shape[2] != shape[3]:
        raise EmulationError(f"the ARM runner takes 1x3xSxS float inputs, not {tuple(shape)}")
    if any(a.shape != shape for a in arrays):
        raise EmulationError("the ARM runner takes inputs of one shape per run")
    with open(path, "wb") as fh:
        for a in arrays:
            fh.write(a.tobytes())
    return int(shape[2])


def run_on_cpu(kit: ArmKit, pte: Path, inputs, cpu: ArmCpu, timeout: float = RUN_TIMEOUT_S) -> np.ndarray:
    """The .pte's float32 outputs for each input, shape (N, outputs), computed by ExecuTorch's
    aarch64 runtime on emulated `cpu` (one thread)."""
    with tempfile.TemporaryDirectory(prefix="arm-run-") as tmp:
        images, out = Path(tmp) / "in.f32", Path(tmp) / "out.f32"
        size = _images_file(inputs, images)
        count = len(inputs)
        try:
            done = subprocess.run(
                _command(kit, cpu, [str(Path(pte).resolve()), str(images), str(out), str(size)]),
                capture_output=True,
                text=True,
                errors="replace",
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise EmulationError(
                f"{cpu.name}: the runner did not finish in {timeout:.0f} s under QEMU"
            ) from None
        except OSError as exc:
            raise EmulationError(
                f"{cpu.name}: cannot start QEMU {kit.qemu} ({exc.strerror}); run `mobile-export setup-arm`"
            ) from None
        if done.returncode != 0:
            raise _failure(cpu, done.returncode, done.stderr)
        data = np.fromfile(out, dtype=np.float32) if out.exists() else np.zeros(0, np.float32)
    if data.size == 0 or data.size % count:
        raise EmulationError(f"{cpu.name}: the runner wrote {data.size} floats for {count} image(s)")
    if not np.all(np.isfinite(data)):
        raise EmulationError(f"{cpu.name}: the runner's outputs contain NaN or infinity")
    return data.reshape(count, -1)


def count_instructions(
    kit: ArmKit, pte: Path, image, cpu: ArmCpu, repeat: int, timeout: float = COUNT_TIMEOUT_S
) -> tuple[int, dict[str, int]]:
    """Guest instructions executed by one whole runner process (load, `repeat` inferences on
    `image`, exit), and how many of them were each KERNEL_MNEMONICS. Differences of two such
    counts cancel the load and exit."""
    with tempfile.TemporaryDirectory(prefix="arm-count-") as tmp:
        images, out = Path(tmp) / "in.f32", Path(tmp) / "out.f32"
        size = _images_file([image], images)
        args = [str(Path(pte).resolve()), str(images), str(out), str(size), str(repeat)]
        with open(Path(tmp) / "stderr", "w+") as err:
            try:
                proc = subprocess.Popen(
                    _command(kit, cpu, args, log_exec=True), stdout=subprocess.PIPE, stderr=err
                )
            except OSError as exc:
                raise EmulationError(f"{cpu.name}: cannot start QEMU {kit.qemu} ({exc.strerror})") from None
            try:
                total, kernel_counts = _sum_executed(proc.stdout, cpu)
            finally:
                proc.stdout.close()
                try:
                    returncode = proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                    raise EmulationError(
                        f"{cpu.name}: the counting run did not finish in {timeout:.0f} s"
                    ) from None
            err.seek(0)
            if returncode != 0:
                raise _failure(cpu, returncode, err.read())
    return total, kernel_counts


# Instructions that tell which kernel family ran: int8 dot products (sdot), int8 matrix
# multiplies (smmla, i8mm), widening multiply-accumulates of the NEON int8 kernels (smlal,
# smlal2) and fp32 fused multiply-adds (fmla).
KERNEL_MNEMONICS = (b"sdot", b"smmla", b"smlal", b"smlal2", b"fmla")


def _sum_executed(stream, cpu: ArmCpu) -> tuple[int, dict[str, int]]:
    """Sum of block lengths over the exec log, and executions of KERNEL_MNEMONICS. Block
    lengths come from the in_asm listing that precedes a block's first execution; a
    re-translated block replaces the earlier length."""
    blocks: dict[bytes, tuple[int, dict | None]] = {}
    total = 0
    kernel_counts = dict.fromkeys(KERNEL_MNEMONICS, 0)
    in_block, start, n, marks = False, b"", 0, {}
    for line in stream:
        if line.startswith(b"Trace "):
            # "Trace 0: 0xHOST [cs_base/PC/flags/cflags] symbol"
            first = line.index(b"/", 10)
            pc = line[first + 1 : line.index(b"/", first + 1)].lstrip(b"0")
            try:
                length, found = blocks[pc]
            except KeyError:
                raise EmulationError(
                    f"{cpu.name}: QEMU's log executed block {pc.decode()} before listing it; "
                    "cannot count instructions"
                ) from None
            total += length
            if found:
                for mnemonic, k in found.items():
                    kernel_counts[mnemonic] += k
        elif in_block:
            if line.startswith(b"0x"):
                if n == 0:
                    start = line[2 : line.index(b":")].lstrip(b"0")
                n += 1
                parts = line.split(None, 3)
                if len(parts) > 2 and parts[2] in kernel_counts:
                    marks[parts[2]] = marks.get(parts[2], 0) + 1
            else:
                if n:
                    blocks[start] = (n, marks or None)
                in_block = False
        elif line.startswith(b"IN:"):
            in_block, n, marks = True, 0, {}
    return total, {m.decode(): k for m, k in kernel_counts.items()}


def instructions_per_inference(kit: ArmKit, pte: Path, image, cpu: ArmCpu) -> dict:
    """count(2 inferences) - count(1 inference), measured twice: the per-inference count and
    how far the two measurements differ (ASLR moves buffers between processes, which can
    change alignment paths in memcpy and the kernels)."""
    t0 = time.perf_counter()
    measured, kernels = [], {}
    for _ in range(2):
        one, kernels_one = count_instructions(kit, pte, image, cpu, repeat=1)
        two, kernels_two = count_instructions(kit, pte, image, cpu, repeat=2)
        measured.append(two - one)
        kernels = {m: kernels_two[m] - kernels_one[m] for m in kernels_two}
    mean = sum(measured) / len(measured)
    return {
        "cpu": cpu.name,
        "kernels": cpu.family,
        "instructions": int(round(mean)),
        "measurements": measured,
        "relative_difference": abs(measured[0] - measured[1]) / mean if mean else 0.0,
        "kernel_instructions": kernels,
        "seconds": round(time.perf_counter() - t0, 2),
    }
