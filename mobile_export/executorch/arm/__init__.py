"""A .pte on the phone's own kernels: ExecuTorch's aarch64 runtime (XNNPACK's ARM microkernels)
under QEMU user-mode emulation of a chosen Cortex CPU, for parity and instruction counts.
Nothing here imports torch or executorch; the kit (kit.py) is built by `mobile-export setup-arm`."""

from ...targets.base import CpuEmulation
from .cpus import CPUS, DEFAULT_CPUS, ArmCpu, parse_cpus
from .kit import ArmKit, find_kit, setup_arm

__all__ = ["CPUS", "DEFAULT_CPUS", "ArmCpu", "ArmEmulation", "ArmKit", "find_kit", "parse_cpus", "setup_arm"]


class ArmEmulation(CpuEmulation):
    """What ExecuTorchTarget.cpu_emulation hands verify and the CLI: XNNPACK .pte files on
    emulated Cortex CPUs."""

    def setup(self, log) -> dict:
        return setup_arm(log=log)

    def find_kit(self) -> ArmKit:
        return find_kit()

    def parse_cpus(self, text: str | None) -> list[ArmCpu]:
        return parse_cpus(text)

    def run_on_cpu(self, kit, artifact, inputs, cpu):
        from .emulate import run_on_cpu

        return run_on_cpu(kit, artifact, inputs, cpu)

    def bench(self, artifacts, cpus, log) -> dict:
        from .bench import arm_bench

        return arm_bench(artifacts, cpus, log=log)

    def format_bench(self, result: dict) -> str:
        from .bench import format_arm_bench

        return format_arm_bench(result)
