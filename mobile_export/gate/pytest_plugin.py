"""pytest plugin: `pytest --mobile-export PATH` turns every artifact listed in a
manifest.json under PATH into a test item, `test_parity[<file name>]`, that runs the same
check as `mobile-export verify` under the project's [tool.mobile-export] limits.

Works with -k, -x, --junitxml and pytest-xdist: an item holds only paths, so any worker can
run it alone. A failure prints the missed limits in one block (no traceback of our code).
Under GitHub Actions (GITHUB_ACTIONS=true) each failed artifact is also an `::error` annotation.
Registered through the `pytest11` entry point; this module imports nothing heavy, because
every pytest session of a project with mobile-export installed loads it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

MANIFEST = "manifest.json"
_COULD_NOT_RUN = "parity check could not run"
_PATHS = pytest.StashKey[list]()


def pytest_addoption(parser):
    group = parser.getgroup("mobile-export", "parity gate for exported models (mobile-export)")
    group.addoption(
        "--mobile-export",
        dest="mobile_export_paths",
        action="append",
        default=[],
        metavar="PATH",
        help="Check every artifact of every manifest.json under PATH against its PyTorch model.",
    )
    group.addoption(
        "--mobile-export-config",
        dest="mobile_export_config",
        default=None,
        metavar="FILE",
        help="Project limits file (default: nearest mobile-export.toml / pyproject.toml [tool.mobile-export]).",
    )
    group.addoption(
        "--mobile-export-images",
        dest="mobile_export_images",
        default=None,
        metavar="DIR",
        help="Folder of real images (default: the config's images, else the bundled photos).",
    )
    group.addoption(
        "--mobile-export-report-dir",
        dest="mobile_export_report_dir",
        default=None,
        metavar="DIR",
        help="For each failed artifact, also write its per-layer report to DIR/<artifact stem>/.",
    )


def pytest_configure(config):
    paths = [Path(p).resolve() for p in config.getoption("mobile_export_paths") or []]
    config.stash[_PATHS] = paths
    if not paths:
        return
    for p in paths:
        if not p.exists():
            raise pytest.UsageError(f"--mobile-export {p}: no such file or folder")
    # `pytest --mobile-export PATH` alone runs the gate only; with test paths given, both.
    given = config.args if config.args_source == pytest.Config.ArgsSource.ARGS else []
    known = {Path(a.split("::")[0]).resolve() for a in given}
    config.args[:] = list(given) + [str(p) for p in paths if p not in known]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Under GitHub Actions (GITHUB_ACTIONS=true), one `::error file=...` annotation per failed
    artifact, as `mobile-export verify` writes: the run's summary and the pull request show
    them. Runs on the xdist controller too; items are recognised by their node id."""
    if not config.stash.get(_PATHS, []):
        return
    from . import annotations

    if not annotations.enabled():
        return
    for report in terminalreporter.stats.get("failed", []) + terminalreporter.stats.get("error", []):
        artifact = _artifact_of(getattr(report, "nodeid", ""))
        if artifact is None:
            continue
        text = report.longreprtext
        could_not_run = text.startswith(_COULD_NOT_RUN)
        title = f"{_COULD_NOT_RUN if could_not_run else 'parity gate failed'}: {Path(artifact).name}"
        terminalreporter.write_line(annotations.annotation(text, file=artifact, title=title))


def _artifact_of(nodeid: str) -> str | None:
    """`app/models/manifest.json::test_parity[m.pte]` -> `app/models/m.pte` (rootdir-relative)."""
    file, _, name = nodeid.partition("::")
    if Path(file).name != MANIFEST or not (name.startswith("test_parity[") and name.endswith("]")):
        return None
    return (Path(file).parent / name[len("test_parity[") : -1]).as_posix()


def _under_gate(path: Path, roots: list[Path]) -> bool:
    return any(path == r or r in path.parents for r in roots)


def pytest_collect_file(file_path: Path, parent):
    roots = parent.config.stash.get(_PATHS, [])
    if not roots or file_path.name != MANIFEST or not _under_gate(file_path.resolve(), roots):
        return None
    if any(part.endswith(".mlpackage") for part in file_path.parts):  # a package's own Manifest.json
        return None
    return ManifestFile.from_parent(parent, path=file_path)


class ManifestFile(pytest.File):
    """A manifest.json: one item per artifact it lists (read as JSON only: cheap, no torch)."""

    def collect(self):
        try:
            doc = json.loads(self.path.read_text())
            files = [a["file"] for a in doc["artifacts"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise self.CollectError(
                f"{self.path}: not a mobile-export manifest ({exc.__class__.__name__}: {exc})"
            ) from None
        for name in files:
            yield ParityItem.from_parent(
                self, name=f"test_parity[{name}]", artifact=str(self.path.parent / name)
            )


class ParityFailed(Exception):
    """The artifact ran but missed a limit; carries the one-screen explanation."""

    def __init__(self, explanation: str, failures: list[str]):
        super().__init__(explanation)
        self.explanation = explanation
        self.failures = failures


class CheckError(Exception):
    """The check could not run (damaged file, sha256 mismatch, missing weights, bad config)."""


class ParityItem(pytest.Item):
    def __init__(self, *, artifact: str, **kwargs):
        super().__init__(**kwargs)
        self.artifact = artifact  # a path: the only state an item carries (xdist ships nothing else)

    def runtest(self):
        from ..errors import MobileExportError
        from .check import check_artifact, config_for, explain

        opts = self.config.option
        try:
            config = config_for(self.artifact, opts.mobile_export_config)
            report = check_artifact(self.artifact, config=config, images=opts.mobile_export_images)
        except MobileExportError as exc:
            raise CheckError(
                f"{Path(self.artifact).name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            ) from None
        if report.get("skipped"):
            pytest.skip(f"{Path(self.artifact).name} {report['skipped']}")
        vf = report.get("vs_float") or {}
        for key in ("sqnr_db", "cosine", "top1_agreement"):
            if key in vf:
                self.user_properties.append((key, vf[key]))
        self.user_properties.append(("thresholds", json.dumps(report.get("thresholds"))))
        self.user_properties.append(("threshold_sources", json.dumps(report.get("threshold_sources"))))
        if not report["passed"]:
            text = explain(report)
            if opts.mobile_export_report_dir:
                text += "\n" + self._per_layer(config, Path(opts.mobile_export_report_dir))
            raise ParityFailed(text, report.get("failures", []))

    def _per_layer(self, config, report_dir: Path) -> str:
        """Re-run the failed check with the per-layer report (only failures pay for it)."""
        from ..errors import MobileExportError
        from .check import check_artifact

        dest = report_dir / Path(self.artifact).stem
        try:
            check_artifact(
                self.artifact,
                config=config,
                images=self.config.option.mobile_export_images,
                per_layer=True,
                report_dir=dest,
            )
        except MobileExportError as exc:
            return f"  per-layer report could not be made: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        return f"  per-layer report written to {dest}"

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, ParityFailed):
            return excinfo.value.explanation
        if isinstance(excinfo.value, CheckError):
            return f"{_COULD_NOT_RUN}: {excinfo.value}"
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        return self.path, None, self.name
