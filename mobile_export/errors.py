"""Typed errors. The library raises these and never exits; only the CLI turns them
into one-line messages and exit codes."""


class MobileExportError(Exception):
    """Base class: the message is one line that names the problem and the fix."""

    exit_code = 1


class UsageError(MobileExportError):
    """The request cannot work as asked (unknown name, impossible combination)."""

    exit_code = 2


class UnknownModelError(UsageError):
    pass


class ConfigError(UsageError):
    """A project's [tool.mobile-export] table (or mobile-export.toml) is invalid."""


class WeightsError(MobileExportError):
    """A checkpoint is missing, unreadable, unsafe or for another architecture."""


class DownloadError(WeightsError):
    """A pretrained checkpoint could not be fetched (offline, bad hash)."""


class ImageError(MobileExportError):
    """Calibration or verification images are missing, empty or unreadable."""


class ManifestError(MobileExportError):
    """manifest.json is invalid, of an unknown version, or disagrees with its artifacts."""


class ArtifactError(MobileExportError):
    """An exported file is damaged, truncated or not what its manifest says."""


class ExportError(MobileExportError):
    """A backend could not lower or convert the model."""


class DelegationError(ExportError):
    """Compute ops were left outside the backend delegate."""


class ParityError(MobileExportError):
    """An artifact's outputs are too far from the reference model's."""


class UnsupportedOpError(MobileExportError):
    """The Core ML executor met a MIL op it does not implement."""


class RuntimeVersionError(MobileExportError):
    """An app pins an ExecuTorch runtime older than the one that wrote a .pte."""


class OutputExistsError(MobileExportError):
    """An artifact is already at the destination and --force was not given."""


class ArmSetupError(MobileExportError):
    """The ARM emulation kit (cross compiler, sysroot, QEMU, runner) is missing or unusable."""


class EmulationError(MobileExportError):
    """The ARM runner or the emulator crashed, failed or timed out on a file."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """ "Type: first line of the message", for wrapping a backend's exception in one line."""
    lines = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {(lines[0] if lines else exc.__class__.__name__)[:limit]}"
