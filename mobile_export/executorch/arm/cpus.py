"""The emulated ARM CPUs we offer, as data: each QEMU cpu name with the XNNPACK kernel family
it makes the runtime pick. XNNPACK reads the CPU id that QEMU >= 8.2 emulates and dispatches
per microarchitecture, so each family below runs other int8 (and some fp32) microkernels."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import UsageError


@dataclass(frozen=True)
class ArmCpu:
    name: str  # QEMU's -cpu name
    family: str  # the int8 kernel family XNNPACK selects on it
    kernels: str  # what that family is, for people
    phones: str  # where such cores are found


CPUS: dict[str, ArmCpu] = {
    c.name: c
    for c in (
        ArmCpu("cortex-a53", "neon", "NEON smlal (ARMv8.0, no dot product)", "low-end phones 2014-2020"),
        ArmCpu("cortex-a72", "neon", "NEON smlal (ARMv8.0, no dot product)", "2016-2018 big cores"),
        ArmCpu("cortex-a55", "sdot", "ARMv8.2 dot product (sdot)", "little cores of 2018-2023 phones"),
        ArmCpu("cortex-a76", "sdot", "ARMv8.2 dot product (sdot)", "big cores of 2019-2021 phones"),
        ArmCpu("neoverse-n1", "sdot", "ARMv8.2 dot product (sdot)", "servers (A76-class)"),
        ArmCpu(
            "cortex-a710", "i8mm", "ARMv9 int8 matrix multiply (smmla, i8mm)", "big cores of 2022+ phones"
        ),
        ArmCpu("neoverse-v1", "i8mm", "ARMv8.4 int8 matrix multiply (smmla, i8mm)", "servers (X1-class)"),
    )
}

DEFAULT_CPUS = ("cortex-a55", "cortex-a76", "cortex-a710")


def parse_cpus(text: str | None) -> list[ArmCpu]:
    """ "cortex-a55,cortex-a76" -> the table rows, in the order given, without repeats.
    An unknown name is a usage error that lists the choices."""
    names = [n.strip().lower() for n in (text or "").split(",") if n.strip()]
    if not names:
        raise UsageError(f"--cpu needs at least one name; choose from {', '.join(CPUS)}")
    unknown = [n for n in names if n not in CPUS]
    if unknown:
        raise UsageError(f"unknown --cpu {', '.join(unknown)}; choose from {', '.join(CPUS)}")
    return [CPUS[n] for n in dict.fromkeys(names)]
