"""A .pte on the phone's own kernels: ExecuTorch's aarch64 runtime (XNNPACK's ARM microkernels)
under QEMU user-mode emulation of a chosen Cortex CPU, for parity and instruction counts.
Nothing here imports torch or executorch; the kit (kit.py) is built by `mobile-export setup-arm`."""

from .cpus import CPUS, DEFAULT_CPUS, ArmCpu, parse_cpus
from .kit import ArmKit, find_kit, setup_arm

__all__ = ["CPUS", "DEFAULT_CPUS", "ArmCpu", "ArmKit", "find_kit", "parse_cpus", "setup_arm"]
