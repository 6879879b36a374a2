import os

import pytest
import torch

# Keep tests off the network and deterministic.
os.environ.setdefault("MOBILE_EXPORT_OFFLINE", "1")


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
