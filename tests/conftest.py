import os

import pytest
import torch

# Keep tests off the network and deterministic.
os.environ.setdefault("MOBILE_EXPORT_OFFLINE", "1")
# The default run has two pytest-xdist workers (pyproject addopts) on a 2-core machine: one
# PyTorch thread each, or four threads spin on two cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture
def cli():
    """Run the CLI in-process through click's CliRunner; returns (exit_code, stdout, stderr)."""
    from click.testing import CliRunner

    from mobile_export.cli import main

    runner = CliRunner()

    def invoke(*args):
        result = runner.invoke(main, [str(a) for a in args], catch_exceptions=False)
        return result.exit_code, result.stdout, result.stderr

    return invoke


@pytest.fixture
def one_thread():
    """PyTorch on one thread: on a shared 2-core machine a second thread mostly spins."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- tests that need something this machine may lack -------------------------------------
# (group, how its tests are recognised, what makes them run). The summary below names every
# group that was skipped, so a short run says what it did not check instead of hiding it.
def _in_app_logic(report) -> bool:
    return report.nodeid.startswith("tests/test_app_logic.py")


SKIP_GROUPS = (
    (
        "JVM app tests (android_demo/core, JUnit)",
        _in_app_logic,
        "apt-get install default-jdk-headless junit4",
    ),
    (
        "sidecar tests (real torchvision/timm)",
        lambda r: "sidecar" in r.keywords,
        "python3 -m venv /tmp/mobile-export-sidecar && /tmp/mobile-export-sidecar/bin/pip install torch==2.14.1 "
        "torchvision==0.29.1 timm==1.0.31 safetensors  (or set MOBILE_EXPORT_SIDECAR_PYTHON; .ci/run does this)",
    ),
    (
        "macOS Core ML tests",
        lambda r: "macos" in r.keywords,
        "run on macOS (.github/workflows/macos-coreml.yml)",
    ),
)


def pytest_collection_modifyitems(config, items):
    """`sidecar` skips by itself when there is no side python, so a test needs only the marker."""
    from sidecar import SIDE_PYTHON, SKIP_REASON

    if SIDE_PYTHON:
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if "sidecar" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter):
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if hasattr(r, "nodeid")]
    for group, member, fix in SKIP_GROUPS:
        count = sum(1 for r in skipped if member(r))
        if count:
            terminalreporter.write_line(f"NOT RUN: {count} {group} skipped; to run them: {fix}", yellow=True)
