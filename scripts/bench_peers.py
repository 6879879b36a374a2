"""MobileNet V2 1.0 and V3-Small at 224 against their peers (PyTorch eager, torch.compile, ONNX
Runtime, LiteRT): the launcher of the scripts/bench_peers/ package (see its __init__ for how it
measures). `python3 scripts/bench_peers.py [run] [options]`; `--help` lists them."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the package beside this file
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # mobile_export, also in the LiteRT venv

from bench_peers.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
