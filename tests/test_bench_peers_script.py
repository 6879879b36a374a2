"""scripts/bench_peers/ (the peers benchmark as a package): the documented launcher still
parses its options and subcommands, and its SQNR is the library's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAUNCHER = ROOT / "scripts" / "bench_peers.py"


@pytest.mark.parametrize(
    "args, words",
    [
        (["--help"], ["--rounds", "--skip", "--install-litert", "--profile"]),  # `run` is the default command
        (["run", "--help"], ["--models", "--threads"]),
        (["worker", "--help"], ["kind", "precision", "artifact", "threads", "warmup"]),
        (["profile-ort", "--help"], ["artifact", "input_npy", "runs"]),
    ],
)
def test_launcher_parses_the_documented_commands(args, words):
    out = subprocess.run([sys.executable, str(LAUNCHER), *args], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    for word in words:
        assert word in out.stdout


def test_peer_sqnr_is_the_library_sqnr():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from bench_peers.workers import _sqnr_db
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    assert _sqnr_db([1.0, 0.1], [1.0, 0.0]) == pytest.approx(20.0)  # noise 0.01 of signal 1: 20 dB
    assert _sqnr_db([2.0, 0.0], [1.0, 0.0]) == pytest.approx(0.0)
